"""The package layering: each part of ``editflow`` imports only parts below it (``jobs`` is the one
layer that composes them), at module level and inside functions alike; the core never imports the
registry's or the flows' libraries. An AST read of every module, so it needs nothing installed."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "editflow"
# bottom to top; a package may import its own modules and those of any lower layer
LAYERS = [
    {"errors"},
    {"configfile", "tensorfile", "families", "progress", "plugins"},
    {"world"},
    {"models"},
    {"edits"},
    {"inversion"},
    {"finetune"},
    {"evaluation", "training"},
    {"jobs"},
    {"cli"},
    {"__main__"},
]
RANK = {name: i for i, layer in enumerate(LAYERS) for name in layer}
EDGE_LIBRARIES = ("mlflow", "prefect", "registry", "flows")


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return names


def _modules():
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        yield rel, (rel.parts[0] if len(rel.parts) > 1 else rel.stem)


def test_every_package_has_a_layer():
    assert {pkg for _, pkg in _modules()} - {"__init__"} <= set(RANK)


def test_parts_import_only_downward():
    upward = set()
    for rel, pkg in _modules():
        if pkg == "__init__":
            continue
        for name in _imports(ROOT / rel):
            parts = name.split(".")
            if parts[0] != "editflow" or len(parts) < 2 or parts[1] == pkg:
                continue
            if RANK[parts[1]] >= RANK[pkg]:
                upward.add((rel.as_posix(), parts[1]))
    assert upward == set()


def test_the_core_never_imports_the_registry_or_flow_libraries():
    found = [(rel.as_posix(), name) for rel, _ in _modules() for name in _imports(ROOT / rel)
             if name.split(".")[0] in EDGE_LIBRARIES]
    assert found == []
    code = "import sys, editflow, editflow.jobs.erase, editflow.jobs.evaluate; " \
           "print(sorted(m for m in ('mlflow', 'prefect') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
