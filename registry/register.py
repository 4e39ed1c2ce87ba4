"""Patches into the MLflow registry: one run per evaluated patch, one model version per passing one.

:func:`register_patch` logs a run with the patch, its gate report (JSON, markdown, grids),
params, metrics and tags, and a model card. Only when every gate passed does it log the pyfunc
model (:mod:`registry.pyfunc_model`) and create a model version, tagged and aliased
``candidate``; a failed gate leaves the run and no version. An ungated patch on a local base is
also logged with the ``mlflow.diffusers`` LoRA flavor (tag ``editflow.lora_model_uri``). The version is created last, in
one call that carries all its tags and its model card; if setting the alias then fails, the
version is deleted again, so the registry never holds a half-made version.

:func:`promote` moves an alias (``champion`` by default); :func:`resolve_model_uri` turns
``models:/name@alias`` or ``models:/name/3`` into (base, local patch file) for the CLI.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.diffusers
import numpy as np
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from editflow.errors import EditflowError
from registry.store import Store

CANDIDATE, CHAMPION = "candidate", "champion"
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),  # a list of prompts
    outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
    params=ParamSchema([ParamSpec("seed", "long", 0), ParamSpec("steps", "long", 25),
                        ParamSpec("guidance", "double", 5.0)]),
)


@dataclass
class Registration:
    run_id: str
    name: str
    passed: bool
    version: str | None = None

    @property
    def model_uri(self) -> str | None:
        return f"models:/{self.name}/{self.version}" if self.version else None

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "name": self.name, "passed": self.passed, "version": self.version,
                "model_uri": self.model_uri}


@contextlib.contextmanager
def _using(store: Store):
    """Point MLflow's fluent API at ``store`` for the block, then put the previous URIs back."""
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    names = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")
    env = {k: os.environ.get(k) for k in names}  # mlflow.set_*_uri also writes these variables
    # the values as set (None when unset), not get_*_uri()'s resolved defaults: putting a resolved
    # default back would pin ./mlflow.db for the rest of the process
    prev_t, prev_r = tracking_utils._tracking_uri, registry_utils._registry_uri
    mlflow.set_tracking_uri(store.tracking_uri)
    mlflow.set_registry_uri(store.tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(prev_t)
        mlflow.set_registry_uri(prev_r)
        for k, v in env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def base_reference(meta: dict) -> str:
    """``embedded`` for the shipped model, else the base's path or id as the patch recorded it."""
    from editflow.models.pipeline import embedded_dir

    base = meta.get("base_model") or "embedded"
    with contextlib.suppress(OSError):
        if Path(base).resolve() == (embedded_dir() / "pipeline").resolve():
            return "embedded"
    return base


def _flat(prefix: str, d: dict) -> dict[str, str]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(f"{prefix}{k}.", v))
        else:
            out[f"{prefix}{k}"] = str(v)[:500]
    return out


def model_card(meta: dict, report: dict, base: str) -> str:
    concepts = ", ".join(c["name"] for c in meta.get("concepts", []))
    words = [w for c in meta.get("concepts", []) for w in c.get("aliases", []) if not w.startswith("<adv-")]
    lines = [f"# Erasure patch: {concepts}", "",
             f"- **method**: {meta.get('method')} (editflow {meta.get('editflow_version')})",
             f"- **base model**: {base} (target hash `{str(meta.get('base_hash', ''))[:16]}`)",
             f"- **concepts erased**: {concepts}",
             f"- **words covered**: {', '.join(words)}",
             f"- **preserved**: {', '.join(meta.get('preserve', []))}",
             f"- **gates**: {'passed' if report.get('passed') else 'FAILED'} ({report.get('gates', {}).get('source')})"]
    ft = meta.get("finetune")
    if ft:
        if ft["config"]["mode"] == "minmax":
            lines.append(f"- **fine-tuning**: minmax, {ft['config']['minmax_steps']} steps of a rank-"
                         f"{ft['config']['lora_rank']} LoRA against {ft['config'].get('attackers', 1)} persistent "
                         "concept-inversion attacker(s) per concept")
        else:
            lines.append(f"- **fine-tuning**: {ft['config']['mode']}, {ft['config']['steps']} steps, "
                         f"{len(ft.get('adversarial', []))} adversarial embeddings in the erase set")
    metrics = report.get("metrics", {})
    if metrics.get("attack_success") is not None:
        lines.append(f"- **concept-inversion attack**: brings the concept back in "
                     f"{metrics['attack_success']:.0%} of images (best of the evaluation's tries; "
                     + (f"{metrics['attack_baseline']:.0%} before inversion; "
                        if metrics.get("attack_baseline") is not None else "")
                     + f"memorization score {metrics.get('memorization_score') or 0:.2f})")
    lines += ["", "## Gate results", "", "| metric | value | bound | result |", "|---|---:|---|---|"]
    for c in report.get("gates", {}).get("checks", []):
        value = "—" if c["value"] is None else f"{c['value']:.3f}"
        lines.append(f"| {c['metric']} | {value} | {c['bound']} | {'pass' if c['passed'] else 'FAIL'} |")
    lines += ["", "## Use", "", "```python",
              "import mlflow", "model = mlflow.pyfunc.load_model(\"models:/<name>@champion\")",
              "images = model.predict([\"a prompt\"], params={\"seed\": 0})  # uint8 (N, H, W, 3)", "```", "",
              "Before/after grids and the full report are in the source run's `report/` artifacts."]
    for k, why in report.get("absent", {}).items():
        lines.append(f"\n`{k}` was not measured: {why}.")
    return "\n".join(lines) + "\n"


def _set_alias(client, name: str, alias: str, version, attempts: int = 6) -> None:
    """Move ``alias`` to ``version``. MLflow's SQL store moves an alias by check-then-insert, so two
    writers moving the same alias at once can collide on its unique key (seen with eight
    concurrent registrations through one server); the move is retried then, last writer wins."""
    from mlflow.exceptions import MlflowException

    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, str(version))
            return
        except MlflowException as exc:
            if "UNIQUE constraint" not in str(exc) and "IntegrityError" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


def _log_lora(patch, base: str) -> str | None:
    """Where it fits, also log the patch as ``mlflow.diffusers`` LoRA: an ungated patch (its LoRA
    export is exact) on a base that is a local folder (the flavor stores a reference to the base,
    and resolves hub ids online). Returns the logged model's URI."""
    from editflow.edits.export import export_lora
    from editflow.models.pipeline import embedded_dir

    base_dir = embedded_dir() / "pipeline" if base == "embedded" else Path(base)
    if patch.gate is not None or not base_dir.is_dir():
        return None
    with tempfile.TemporaryDirectory() as tmp:
        adapter = export_lora(patch, tmp)
        info = mlflow.diffusers.log_model(adapter_path=str(adapter), base_model=str(base_dir.resolve()), name="lora")
    return info.model_uri


def register_patch(patch_path: str | Path, report_dir: str | Path, name: str, store: Store | None = None,
                   alias: str = CANDIDATE) -> Registration:
    """Log the evaluated patch as a run; register it as a new version of ``name`` if its gates passed."""
    from editflow.edits import Patch

    patch_path, report_dir = Path(patch_path), Path(report_dir)
    patch = Patch.load(patch_path)
    report_file = report_dir / "report.json"
    if not report_file.is_file():
        raise EditflowError(f"no gate report at {report_file}: run `editflow eval` first")
    report = json.loads(report_file.read_text())
    meta = patch.metadata
    concepts = [c["name"] for c in meta.get("concepts", [])]
    if sorted(report.get("concepts", [])) != sorted(concepts):
        raise EditflowError(f"report {report_file} judged {report.get('concepts')}, the patch erases {concepts}")
    store = store or Store.resolve()
    base = base_reference(meta)
    passed = bool(report.get("passed"))
    tags = {"editflow.base_model": base, "editflow.base_hash": meta.get("base_hash", ""),
            "editflow.concepts": ",".join(concepts), "editflow.method": meta.get("method", ""),
            "editflow.gate_status": "passed" if passed else "failed",
            "editflow.version": meta.get("editflow_version", "")}
    card = model_card(meta, report, base)
    client = store.client()
    with _using(store):
        exp = store.experiment_id()
        with mlflow.start_run(experiment_id=exp, run_name=f"erase-{'-'.join(concepts)}") as run:
            mlflow.set_tags(tags)
            mlflow.log_params({"method": meta.get("method"), "concepts": ",".join(concepts),
                               "token_policy": meta.get("token_policy"), "base_model": base,
                               **_flat("config.", meta.get("config", {}))})
            metrics = {k: float(v) for k, v in report.get("metrics", {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)}
            mlflow.log_metrics(metrics)
            mlflow.log_metrics({f"gate.{c['metric']}": float(c["passed"]) for c in report["gates"]["checks"]})
            mlflow.log_artifacts(str(report_dir), artifact_path="report")
            mlflow.log_artifact(str(patch_path), artifact_path="patch")
            mlflow.log_text(card, "model_card.md")
            if not passed:
                return Registration(run.info.run_id, name, False)
            with warnings.catch_warnings():  # MLflow's hints about type hints / input examples
                warnings.simplefilter("ignore", UserWarning)
                info = mlflow.pyfunc.log_model(name="model", python_model=str(MODEL_CODE),
                                               artifacts={"patch": str(patch_path)}, model_config={"base": base},
                                               signature=SIGNATURE, pip_requirements=["editflow"])
                lora_uri = _log_lora(patch, base)
            if lora_uri:
                tags["editflow.lora_model_uri"] = lora_uri
        with contextlib.suppress(Exception):  # exists already (or another writer made it first)
            client.create_registered_model(name, description="Concept-erasure patches made by editflow.")
        version = client.create_model_version(name, source=info.model_uri, run_id=run.info.run_id,
                                              tags=tags, description=card, model_id=info.model_id)
        try:
            _set_alias(client, name, alias, version.version)
        except BaseException:
            client.delete_model_version(name, version.version)  # never leave a version half made
            raise
    return Registration(run.info.run_id, name, True, str(version.version))


def promote(name: str, version: str | int, alias: str = CHAMPION, store: Store | None = None) -> None:
    client = (store or Store.resolve()).client()
    try:
        mv = client.get_model_version(name, str(version))
    except Exception:
        raise EditflowError(f"no version {version} of registered model {name!r}") from None
    if mv.tags.get("editflow.gate_status") != "passed":
        raise EditflowError(f"{name} version {version} did not pass its gates; it cannot be promoted")
    _set_alias(client, name, alias, version)


def _version(client, name: str, ref: str):
    try:
        if ref.isdigit():
            return client.get_model_version(name, ref)
        return client.get_model_version_by_alias(name, ref)
    except Exception:
        raise EditflowError(f"registered model {name!r} has no version or alias {ref!r}") from None


def describe(name: str | None = None, store: Store | None = None) -> list[dict]:
    """Registered models (``name=None``) or one model's versions, with aliases, tags and metrics."""
    client = (store or Store.resolve()).client()
    if name is None:
        out = []
        for m in client.search_registered_models():
            latest = max((int(v.version) for v in m.latest_versions), default=None)
            out.append({"name": m.name, "aliases": {a: str(v) for a, v in (m.aliases or {}).items()},
                        "latest": None if latest is None else str(latest)})
        return out
    try:
        model = client.get_registered_model(name)
    except Exception:
        raise EditflowError(f"no registered model {name!r}") from None
    aliases: dict[str, list[str]] = {}
    for a, v in (model.aliases or {}).items():
        aliases.setdefault(str(v), []).append(a)
    out = []
    for v in sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version)):
        run = client.get_run(v.run_id)
        out.append({"version": str(v.version), "aliases": sorted(aliases.get(str(v.version), [])),
                    "tags": {k: t for k, t in v.tags.items() if k.startswith("editflow.")},
                    "metrics": {k: run.data.metrics[k] for k in ("erasure_rate", "leakage", "specificity",
                                                                  "harmonic_score", "attack_success")
                                if k in run.data.metrics},
                    "run_id": v.run_id})
    return out


def resolve_model_uri(uri: str, store: Store | None = None, dst: str | Path | None = None) -> tuple[str | None, Path]:
    """``models:/name@alias`` or ``models:/name/3`` -> (base for ``load_pipeline``, local patch file)."""
    if not uri.startswith("models:/"):
        raise EditflowError(f"not a registry URI: {uri!r} (expected models:/NAME@ALIAS or models:/NAME/VERSION)")
    ref = uri[len("models:/"):]
    name, sep, alias = ref.partition("@")
    if not sep:
        name, _, alias = ref.rpartition("/")
    if not name or not alias:
        raise EditflowError(f"bad registry URI {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    store = store or Store.resolve()
    client = store.client()
    mv = _version(client, name, alias)
    with _using(store):
        local = Path(mlflow.artifacts.download_artifacts(run_id=mv.run_id, artifact_path="patch",
                                                         dst_path=str(dst or tempfile.mkdtemp(prefix="editflow-"))))
    files = sorted(local.glob("*.safetensors"))
    if not files:
        raise EditflowError(f"{uri}: the version's run holds no patch")
    base = mv.tags.get("editflow.base_model", "embedded")
    return (None if base == "embedded" else base), files[0]
