"""Gate reports on disk and the gates they are judged with: a report folder survives a writer killed
mid-replacement, a NaN never passes a gate, a report carries its gates, and the default gates ship
inside the package (a wheel built from the repo finds them)."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest

from editflow.evaluation.gates import PACKAGED_GATES, Gates, default_gates_file
from editflow.evaluation.report import recover_folder, write_folder

REPO = Path(__file__).resolve().parents[1]


# -- report folders --------------------------------------------------------------------------------


def _fill(text):
    def fill(stage: Path) -> None:
        (stage / "report.json").write_text(text)
    return fill


def _hidden(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


KILLED = textwrap.dedent("""
    import os, sys
    from pathlib import Path
    from editflow.evaluation import report
    out, when = Path(sys.argv[1]), sys.argv[2]
    real_rename = os.rename
    def rename(a, b):
        if when == "between" and Path(b) == out:  # the old folder is aside, the new one not yet in
            os._exit(9)
        real_rename(a, b)
    os.rename = rename
    def fill(stage):
        (stage / "report.json").write_text("new")
        if when == "writing":
            os._exit(9)
    report.write_folder(out, fill)
""")


@pytest.mark.parametrize("when", ["writing", "between"])
def test_a_writer_killed_mid_replacement_loses_nothing(tmp_path, when):
    out = tmp_path / "star-eval"
    write_folder(out, _fill("old"))
    res = subprocess.run([sys.executable, "-c", KILLED, str(out), when], capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 9, res.stderr[-2000:]
    if when == "writing":  # the old folder is untouched; a stage is left over
        assert (out / "report.json").read_text() == "old"
        assert [n for n in _hidden(tmp_path) if ".rep-" in n]
    else:  # the old folder is aside, not lost
        assert not out.exists() and [n for n in _hidden(tmp_path) if ".old-" in n]
    recover_folder(out)  # what the next write does first
    assert (out / "report.json").read_text() == "old" and _hidden(tmp_path) == []
    write_folder(out, _fill("newer"))
    assert (out / "report.json").read_text() == "newer" and _hidden(tmp_path) == []


def test_replacing_a_report_keeps_the_old_one_when_writing_fails(tmp_path):
    out = tmp_path / "r"
    write_folder(out, _fill("old"))

    def broken(stage):
        (stage / "half").write_text("x")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_folder(out, broken)
    assert (out / "report.json").read_text() == "old" and _hidden(tmp_path) == []


def test_leftovers_of_a_live_writer_are_left_alone(tmp_path):
    out = tmp_path / "r"
    live = tmp_path / f".r.rep-{os.getpid()}-abc"  # this process is alive: someone writing right now
    live.mkdir()
    write_folder(out, _fill("x"))
    assert live.is_dir()


# -- gates -------------------------------------------------------------------------------------------


def test_a_value_that_is_not_a_finite_number_fails_its_gate():
    gates = Gates.from_dict({"default": {"erasure_rate": {"max": 0.05}, "specificity": {"min": 0.9}}})
    for bad in (float("nan"), float("inf"), "0.01", True):
        report = gates.judge({"erasure_rate": bad, "specificity": 1.0}, "object")
        assert not report.passed and "not a finite number" in report.failures()[0].reason
    assert gates.judge({"erasure_rate": np.float32(0.01), "specificity": np.float64(0.95)}, "object").passed


def test_a_gate_report_carries_the_gates_it_was_judged_with():
    gates = Gates.load()
    metrics = {"erasure_rate": 0.04, "leakage": 0.2, "specificity_neighbours": 0.95, "specificity_distant": 0.99,
               "image_similarity_preserved": 0.95}
    for family in ("object", "identity"):
        report = gates.judge(metrics, family).to_dict()
        again = Gates.from_dict(json.loads(json.dumps(report["spec"]))).judge(metrics, family).to_dict()
        assert {k: again[k] for k in ("passed", "checks")} == {k: report[k] for k in ("passed", "checks")}


def test_the_default_gates_are_package_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no configs/ here: the packaged file
    assert default_gates_file() == PACKAGED_GATES and PACKAGED_GATES.is_file()
    assert PACKAGED_GATES.is_relative_to(REPO / "editflow")
    assert (REPO / "configs/gates/default.yaml").read_text() == PACKAGED_GATES.read_text()  # one source
    monkeypatch.chdir(REPO)
    assert Gates.load().to_dict() == Gates.load(PACKAGED_GATES).to_dict()


def test_a_wheel_built_from_the_repo_finds_its_default_gates(tmp_path):
    """`pip install .` (non-editable): the wheel carries the default gates, and an installed editflow
    finds them from any directory. Built from a copy, so the checkout gets no build/ or egg-info."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("editflow", "flows", "registry", "configs"):
        shutil.copytree(REPO / name, src / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
                   check=True, capture_output=True, timeout=600)
    wheel = next((tmp_path / "dist").glob("editflow-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        metadata = z.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    assert "editflow/evaluation/default_gates.yaml" in names
    assert {f"editflow/evaluation/prompt_sets/{f}.csv" for f in ("nudity", "style", "object", "identity",
                                                                   "preservation")} <= names  # the real-model suite
    assert "License-Expression: Apache-2.0" in metadata
    target = tmp_path / "site"
    subprocess.run([*pip, "install", "--no-deps", "--no-compile", "--target", str(target), str(wheel)], check=True,
                   capture_output=True, timeout=600)
    run = tmp_path / "elsewhere"
    run.mkdir()
    probe = ("from editflow.evaluation.gates import Gates, default_gates_file\n"
             "print(default_gates_file()); Gates.load()")
    # PYTHONPATH wins over the checkout's editable finder, which only comes after sys.path
    res = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=run,
                         env={**os.environ, "PYTHONPATH": str(target)}, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert Path(res.stdout.strip()) == target / "editflow" / "evaluation" / "default_gates.yaml"
