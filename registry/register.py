"""Patches into the MLflow registry: one run per evaluated patch, one model version per passing one.

:func:`register_patch` first checks the evidence, before anything is written (no run, no
version, no store when it refuses): the name (:func:`registry.names.check_name`), every tensor
of the patch finite, the report bound to this very patch (``report.json`` records the sha256 of
the patch file ``editflow eval`` judged) and its verdict judged again from its metrics with the
gates it records (a report that says "passed" over failing numbers is refused). It then logs a
run with the patch, its gate report (JSON, markdown, grids), params, metrics and tags, and a
model card. Only when every gate passed does it log the pyfunc model (:mod:`registry.pyfunc_model`,
carrying the ``editflow`` package itself, see :func:`serve_requirements`) and create a model
version, tagged and aliased ``candidate``; a failed gate leaves the run and no version. The same
patch with the same report registers once: a second call returns the existing version (version
tags ``editflow.patch_sha256`` + ``editflow.report_sha256``). An ungated patch on a local base is
also logged with the ``mlflow.diffusers`` LoRA flavor (tag ``editflow.lora_model_uri``). The
version is created last, in one call that carries all its tags and its model card; if setting
the alias then fails, the version is deleted again, so the registry never holds a half-made
version.

Everything goes through an ``MlflowClient`` bound to the store (no global tracking URI is set),
so registrations to different stores, or from several threads, do not interfere.

:func:`promote` moves an alias (``champion`` by default); :func:`resolve_model_uri` turns
``models:/name@alias`` or ``models:/name/3`` into (base, local patch file) for the CLI;
:func:`load_model` loads a version's pyfunc model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import mlflow
import mlflow.diffusers
import numpy as np
from mlflow.entities import LoggedModelOutput, Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.models.signature import ModelSignature
from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema, TensorSpec

from editflow.errors import EditflowError
from registry.names import check_name
from registry.store import Store

CANDIDATE, CHAMPION = "candidate", "champion"
MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string")]),  # a list of prompts
    outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
    params=ParamSchema([ParamSpec("seed", "long", 0), ParamSpec("steps", "long", 25),
                        ParamSpec("guidance", "double", 5.0),
                        # None: where the model was loaded (model_config, EDITFLOW_DEVICE/_DTYPE, else auto)
                        ParamSpec("device", "string", None), ParamSpec("dtype", "string", None)]),
)
# What the served model imports besides mlflow (which MLflow pins itself) and editflow (which the
# model carries as code): the distributions editflow's patch and pipeline modules import
# (tests/test_registry_packaging.py checks this list against those imports).
SERVE_DISTRIBUTIONS = ("diffusers", "numpy", "pillow", "safetensors", "torch", "transformers")
REGISTERED_MODEL_DESCRIPTION = (
    "Concept-erasure patches made by editflow. Each version is one patch (low-rank edits of a base "
    "model's cross-attention, in safetensors) whose gates passed; its description is the model card, its "
    "tags name the base model and its hash, the concepts, the method, the gates and the hashes of the patch "
    "and of its report. `mlflow.pyfunc.load_model(\"models:/{name}@champion\")` loads base + patch and "
    "generates images.")


@dataclass
class Registration:
    run_id: str
    name: str
    passed: bool
    version: str | None = None
    existing: bool = False  # the same patch and report were registered before: this is that version

    @property
    def model_uri(self) -> str | None:
        return f"models:/{self.name}/{self.version}" if self.version else None

    def to_dict(self) -> dict:
        return {"run_id": self.run_id, "name": self.name, "passed": self.passed, "version": self.version,
                "model_uri": self.model_uri, "existing": self.existing}


def _error_code(exc: MlflowException) -> str:
    return str(getattr(exc, "error_code", ""))  # MlflowException keeps the code's name, e.g. RESOURCE_DOES_NOT_EXIST


def _one_line(exc: BaseException) -> str:
    text = str(getattr(exc, "message", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


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


def gates_sha256(spec: dict) -> str:
    """sha256 of the gates as data (canonical JSON): the same bounds give the same hash."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def gates_name(gates: dict) -> str:
    """The gate file's name, never the absolute path of the machine that ran the evaluation."""
    source = str(gates.get("source") or "<inline>")
    return source if source.startswith("<") else Path(source).name


def gates_label(gates: dict) -> str:
    """The gate file's name and the hash of the bounds it held: ``default_gates.yaml, sha256 1a2b3c4d5e6f``."""
    name, spec = gates_name(gates), gates.get("spec")
    return f"{name}, sha256 {gates_sha256(spec)[:12]}" if isinstance(spec, dict) else name


def model_card(meta: dict, report: dict, base: str) -> str:
    concepts = ", ".join(c["name"] for c in meta.get("concepts", []))
    words = [w for c in meta.get("concepts", []) for w in c.get("aliases", []) if not w.startswith("<adv-")]
    lines = [f"# Erasure patch: {concepts}", "",
             f"- **method**: {meta.get('method')} (editflow {meta.get('editflow_version')})",
             f"- **base model**: {base} (target hash `{str(meta.get('base_hash', ''))[:16]}`)",
             f"- **concepts erased**: {concepts}",
             f"- **words covered**: {', '.join(words)}",
             f"- **preserved**: {', '.join(meta.get('preserve', []))}",
             f"- **gates**: {'passed' if report.get('passed') else 'FAILED'} ({gates_label(report.get('gates', {}))})"]
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
    for attempt in range(attempts):
        try:
            client.set_registered_model_alias(name, alias, str(version))
            return
        except MlflowException as exc:
            if "UNIQUE constraint" not in str(exc) and "IntegrityError" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.1 * (attempt + 1))


# -- the evidence: checked before anything is written -------------------------------------------


@dataclass
class Evidence:
    patch: object  # editflow.edits.Patch
    report: dict  # report.json, its verdict replaced by the one judged again here
    gates: object  # GateReport judged again from the report's metrics and recorded gates
    patch_sha256: str
    report_sha256: str

    @property
    def passed(self) -> bool:
        return self.gates.passed


def check_finite(patch_path: Path) -> None:
    """Refuse a patch file holding any NaN or Inf value (in any tensor, not only the ones a Patch reads)."""
    import torch
    from safetensors import safe_open

    try:
        with safe_open(patch_path, framework="pt") as f:
            for key in f.keys():
                t = f.get_tensor(key)
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    raise EditflowError(f"{patch_path}: tensor {key} holds NaN or Inf values; refusing to register it")
    except EditflowError:
        raise
    except Exception as exc:  # safetensors' own error types
        raise EditflowError(f"{patch_path} is not a safetensors patch: {_one_line(exc)}") from None


def check_evidence(patch_path: str | Path, report_dir: str | Path, gates: str | Path | None = None) -> Evidence:
    """The patch and its gate report, checked to belong together and to have passed what they say
    they passed. Every refusal is one :class:`EditflowError`; nothing is written.

    The verdict is judged again from the report's metrics twice: with the gates the report records
    (they must agree with its ``passed``) and with the registry's own gates file ``gates`` (default:
    the default gates), which a hand-edited report cannot loosen. It passes only if both pass."""
    from editflow.edits import Patch
    from editflow.evaluation.gates import Gates
    from editflow.evaluation.report import sha256_file

    patch_path, report_dir = Path(patch_path), Path(report_dir)
    if not patch_path.is_file():
        raise EditflowError(f"patch not found: {patch_path}")
    report_file = report_dir / "report.json"
    if not report_file.is_file():
        raise EditflowError(f"no gate report at {report_file}: run `editflow eval` first")
    check_finite(patch_path)
    patch = Patch.load(patch_path)
    raw = report_file.read_bytes()
    try:
        report = json.loads(raw)
    except ValueError as exc:
        raise EditflowError(f"{report_file} is not JSON: {exc}") from None
    if not isinstance(report, dict):
        raise EditflowError(f"{report_file} is not a gate report (not a JSON object)")
    patch_sha = sha256_file(patch_path)
    recorded = report.get("patch_sha256")
    if not recorded:
        raise EditflowError(f"{report_file} records no patch hash, so it cannot vouch for {patch_path}: "
                            f"run `editflow eval --patch {patch_path}`")
    if recorded != patch_sha:
        raise EditflowError(f"{report_file} judged another patch (sha256 {str(recorded)[:12]}), not {patch_path} "
                            f"(sha256 {patch_sha[:12]}): run `editflow eval --patch {patch_path}`")
    concepts = [c["name"] for c in patch.metadata.get("concepts", [])]
    if sorted(report.get("concepts") or []) != sorted(concepts):
        raise EditflowError(f"report {report_file} judged {report.get('concepts')}, the patch erases {concepts}")
    recorded_gates = report.get("gates")
    if not isinstance(recorded_gates, dict) or not isinstance(recorded_gates.get("spec"), dict):
        raise EditflowError(f"{report_file} records no gates to judge it by: run `editflow eval --patch {patch_path}`")
    metrics = report.get("metrics")
    if not isinstance(metrics, dict):
        raise EditflowError(f"{report_file} holds no metrics")
    family = recorded_gates.get("family") or report.get("family") or "object"
    source = str(recorded_gates.get("source") or "<report>")
    judged = Gates.from_dict(recorded_gates["spec"], source).judge(metrics, family, report.get("absent") or {})
    if not judged.checks:
        raise EditflowError(f"{report_file}: its gates hold no bound for family {family!r}; nothing was judged")
    claimed = report.get("passed")
    if claimed is not judged.passed or recorded_gates.get("passed", claimed) is not judged.passed:
        failed = ", ".join(c.metric for c in judged.failures()) or "none"
        raise EditflowError(f"{report_file} says passed={claimed}, but its metrics judged by its gates say "
                            f"passed={judged.passed} (failing: {failed}); refusing a report that does not add up")
    trusted = Gates.load(gates).judge(metrics, family, report.get("absent") or {})
    if judged.passed and not trusted.passed:
        judged = trusted  # the registry's gates have the last word: logged as failed, no version
    report = {**report, "passed": judged.passed, "gates": {**judged.to_dict(), "source": source}}
    return Evidence(patch, report, judged, patch_sha, hashlib.sha256(raw).hexdigest())


# -- the models a version carries ------------------------------------------------------------------


def serve_requirements() -> list[str]:
    """pip requirements of the served pyfunc model: :data:`SERVE_DISTRIBUTIONS` pinned to the
    versions installed here (public version: ``torch==2.14.1`` for a local ``2.14.1+cpu`` build).
    ``editflow`` is never among them: the model carries the package as code (``code_paths``), so
    ``mlflow models serve`` / ``build-docker`` cannot install a foreign "editflow" from an index."""
    from importlib.metadata import version

    from packaging.version import Version

    return [f"{d}=={Version(version(d)).public}" for d in SERVE_DISTRIBUTIONS]


def stage_code(dst: Path, base: str) -> Path:
    """A copy of the ``editflow`` package for a served model: no caches, no evaluator weights (the
    judge is not needed to generate), the embedded pipeline's weights only for the embedded base."""
    import editflow

    src = Path(editflow.__file__).resolve().parent
    assets = src / "assets" / "embedded"

    def ignore(folder: str, names: list[str]) -> set[str]:
        skip = {n for n in names if n == "__pycache__" or n.endswith((".pyc", ".pyo"))}
        if Path(folder).resolve() == assets:
            skip |= {"evaluator"} | (set() if base == "embedded" else {"pipeline"})
        return skip

    return Path(shutil.copytree(src, dst / "editflow", ignore=ignore))


def tree_sha256(folder: Path) -> str:
    """sha256 over the relative paths and bytes of every file below ``folder`` (sorted)."""
    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        h.update(f.relative_to(folder).as_posix().encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def _log_model(client, experiment_id: str, run_id: str, name: str, save):
    """Log a model to the run through the client: a LoggedModel, ``save(path, mlflow_model)``
    writing its files, uploaded and marked ready. Returns the LoggedModel."""
    model = client.create_logged_model(experiment_id, name=name, source_run_id=run_id)
    try:
        with tempfile.TemporaryDirectory(prefix="editflow-model-") as tmp:
            local = Path(tmp) / "model"
            save(str(local), Model(artifact_path=model.artifact_location, run_id=run_id, model_uuid=model.model_id,
                                   model_id=model.model_id))
            client.log_model_artifacts(model.model_id, str(local))
        client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
        client.finalize_logged_model(model.model_id, "READY")
    except BaseException:
        with contextlib.suppress(Exception):
            client.finalize_logged_model(model.model_id, "FAILED")
        raise
    return model


def _log_pyfunc(client, experiment_id: str, run_id: str, patch_path: Path, base: str) -> tuple[object, dict]:
    """The pyfunc model, and the pin of the editflow code it carries: ``{"editflow.code_version",
    "editflow.code_sha256"}`` (also in its ``model_config``), for the version's tags."""
    import editflow

    pin: dict[str, str] = {}

    def save(path: str, mlflow_model: Model) -> None:
        with tempfile.TemporaryDirectory(prefix="editflow-code-") as code, warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # MLflow's hints about type hints / input examples
            staged = stage_code(Path(code), base)
            pin.update({"editflow.code_version": editflow.__version__, "editflow.code_sha256": tree_sha256(staged)})
            mlflow.pyfunc.save_model(path, python_model=str(MODEL_CODE), artifacts={"patch": str(patch_path)},
                                     model_config={"base": base, **pin}, signature=SIGNATURE,
                                     pip_requirements=serve_requirements(),
                                     code_paths=[str(staged)], mlflow_model=mlflow_model)

    return _log_model(client, experiment_id, run_id, "model", save), pin


def _log_lora(client, experiment_id: str, run_id: str, patch, base: str) -> str | None:
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

        def save(path: str, mlflow_model: Model) -> None:
            mlflow.diffusers.save_model(adapter_path=str(adapter), path=path, base_model=str(base_dir.resolve()),
                                        mlflow_model=mlflow_model)

        return f"models:/{_log_model(client, experiment_id, run_id, 'lora', save).model_id}"


# -- registration ------------------------------------------------------------------------------------


def _same_versions(client, name: str, patch_sha: str, report_sha: str) -> list:
    """Versions of ``name`` made from this patch and this report, oldest first."""
    found = client.search_model_versions(f"name = '{name}' AND tags.`editflow.patch_sha256` = '{patch_sha}' "
                                         f"AND tags.`editflow.report_sha256` = '{report_sha}'")
    return sorted(found, key=lambda v: int(v.version))


def _ensure_registered_model(client, name: str) -> None:
    description = REGISTERED_MODEL_DESCRIPTION.replace("{name}", name)
    try:
        client.create_registered_model(name, description=description)
        return
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_ALREADY_EXISTS" and "already exists" not in str(exc):
            raise
    if not client.get_registered_model(name).description:  # made by another tool, or an older editflow
        client.update_registered_model(name, description=description)


def register_patch(patch_path: str | Path, report_dir: str | Path, name: str, store: Store | None = None,
                   alias: str = CANDIDATE, gates: str | Path | None = None) -> Registration:
    """Log the evaluated patch as a run; register it as a new version of ``name`` if its gates passed
    (or return the version this same patch and report already are)."""
    check_name(name)
    patch_path, report_dir = Path(patch_path), Path(report_dir)
    ev = check_evidence(patch_path, report_dir, gates)  # refusals happen here: nothing written yet
    meta, report = ev.patch.metadata, ev.report
    concepts = [c["name"] for c in meta.get("concepts", [])]
    base = base_reference(meta)
    tags = {"editflow.base_model": base, "editflow.base_hash": meta.get("base_hash", ""),
            "editflow.concepts": ",".join(concepts), "editflow.method": meta.get("method", ""),
            "editflow.gate_status": "passed" if ev.passed else "failed",
            "editflow.gates": gates_name(report["gates"]),
            "editflow.gates_sha256": gates_sha256(report["gates"]["spec"]),
            "editflow.patch_sha256": ev.patch_sha256, "editflow.report_sha256": ev.report_sha256,
            "editflow.version": meta.get("editflow_version", "")}
    store = store or Store.resolve()
    client = store.client()  # a local store is created (once, under a lock) only now
    if ev.passed:
        same = _same_versions(client, name, ev.patch_sha256, ev.report_sha256)
        if same:
            return Registration(same[0].run_id, name, True, str(same[0].version), existing=True)
    card = model_card(meta, report, base)
    experiment = store.experiment_id()
    run = client.create_run(experiment, run_name=f"erase-{'-'.join(concepts)}", tags=tags)
    run_id, status = run.info.run_id, "FAILED"
    try:
        now = int(time.time() * 1000)
        params = {"method": meta.get("method"), "concepts": ",".join(concepts),
                  "token_policy": meta.get("token_policy"), "base_model": base,
                  **_flat("config.", meta.get("config", {}))}
        metrics = {k: float(v) for k, v in report.get("metrics", {}).items()
                   if isinstance(v, (int, float)) and not isinstance(v, bool)}
        metrics.update({f"gate.{c.metric}": float(c.passed) for c in ev.gates.checks})
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in metrics.items()],
                         params=[Param(k, str(v)) for k, v in params.items()])
        client.log_artifacts(run_id, str(report_dir), artifact_path="report")
        client.log_artifact(run_id, str(patch_path), artifact_path="patch")
        client.log_text(run_id, card, "model_card.md")
        if not ev.passed:
            status = "FINISHED"
            return Registration(run_id, name, False)
        model, pin = _log_pyfunc(client, experiment, run_id, patch_path, base)
        tags.update(pin)  # the editflow code the served model carries: version and content hash
        lora_uri = _log_lora(client, experiment, run_id, ev.patch, base)
        if lora_uri:
            tags["editflow.lora_model_uri"] = lora_uri
            client.set_tag(run_id, "editflow.lora_model_uri", lora_uri)
        status = "FINISHED"
    finally:
        client.set_terminated(run_id, status)
    _ensure_registered_model(client, name)
    # source: where the model's files are. MLflow's SQL registry resolves a "models:/<id>" source through
    # the process-wide tracking URI (its own TODO), not this client's store; model_id links the LoggedModel.
    version = client.create_model_version(name, source=model.artifact_location, run_id=run_id, tags=tags,
                                          description=card, model_id=model.model_id)
    try:
        same = _same_versions(client, name, ev.patch_sha256, ev.report_sha256)
        if same and str(same[0].version) != str(version.version):  # a concurrent writer registered it first
            client.delete_model_version(name, version.version)
            return Registration(same[0].run_id, name, True, str(same[0].version), existing=True)
        _set_alias(client, name, alias, version.version)
    except BaseException:
        with contextlib.suppress(MlflowException):
            client.delete_model_version(name, version.version)  # never leave a version half made
        raise
    return Registration(run_id, name, True, str(version.version))


# -- reading the registry -----------------------------------------------------------------------------


def promote(name: str, version: str | int, alias: str = CHAMPION, store: Store | None = None) -> None:
    store = store or Store.resolve()
    if not store.exists():
        raise EditflowError(f"no version {version} of registered model {name!r} (the registry is empty)")
    client = store.client(create=False)
    try:
        mv = client.get_model_version(name, str(version))
    except MlflowException as exc:
        if _error_code(exc) not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise EditflowError(f"registry error: {_one_line(exc)}") from None
        raise EditflowError(f"no version {version} of registered model {name!r}") from None
    if mv.tags.get("editflow.gate_status") != "passed":
        raise EditflowError(f"{name} version {version} did not pass its gates; it cannot be promoted")
    _set_alias(client, name, alias, version)


def describe(name: str | None = None, store: Store | None = None) -> list[dict]:
    """Registered models (``name=None``) or one model's versions, with aliases, tags and metrics."""
    store = store or Store.resolve()
    if name is not None:
        check_name(name)
    if not store.exists():
        if name is None:
            return []
        raise EditflowError(f"no registered model {name!r} (the registry is empty)")
    client = store.client(create=False)
    if name is None:
        out = []
        for m in client.search_registered_models():
            latest = max((int(v.version) for v in m.latest_versions), default=None)
            out.append({"name": m.name, "aliases": {a: str(v) for a, v in (m.aliases or {}).items()},
                        "latest": None if latest is None else str(latest)})
        return out
    try:
        model = client.get_registered_model(name)
    except MlflowException as exc:
        if _error_code(exc) != "RESOURCE_DOES_NOT_EXIST":
            raise EditflowError(f"registry error: {_one_line(exc)}") from None
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


def _registered_version(uri: str, store: Store):
    """The model version ``models:/NAME@ALIAS`` / ``models:/NAME/VERSION`` names (MLflow parses it)."""
    from mlflow.store.artifact.utils.models import get_model_name_and_version

    if not uri.startswith("models:/"):
        raise EditflowError(f"not a registry URI: {uri!r} (expected models:/NAME@ALIAS or models:/NAME/VERSION)")
    if not store.exists():  # nothing to find, and looking must not create a store
        raise EditflowError(f"no registered model for {uri}: nothing was registered at {store.database} yet")
    client = store.client(create=False)
    try:
        found = get_model_name_and_version(client, uri)
        if len(found) != 2:
            raise EditflowError(f"{uri} names a logged model, not a registered version: "
                                "use models:/NAME@ALIAS or models:/NAME/VERSION")
        return client, client.get_model_version(*found)
    except MlflowException as exc:
        code = _error_code(exc)
        if _one_line(exc).startswith("Not a proper"):  # MLflow's parser: the URI itself is malformed
            raise EditflowError(f"bad registry URI {uri!r}: expected models:/NAME@ALIAS or models:/NAME/VERSION") \
                from None
        if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):  # no such model / version / alias
            raise EditflowError(f"no registered version for {uri}: {_one_line(exc)}") from None
        raise EditflowError(f"registry error for {uri}: {_one_line(exc)}") from None


def resolve_model_uri(uri: str, store: Store | None = None, dst: str | Path | None = None) -> tuple[str | None, Path]:
    """``models:/name@alias`` or ``models:/name/3`` -> (base for ``load_pipeline``, local patch file)."""
    from editflow.evaluation.report import sha256_file

    store = store or Store.resolve()
    client, mv = _registered_version(uri, store)
    try:
        local = Path(mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path="patch", dst_path=str(dst or tempfile.mkdtemp(prefix="editflow-")),
            tracking_uri=store.tracking_uri))
    except MlflowException as exc:
        raise EditflowError(f"{uri}: cannot download the version's patch: {_one_line(exc)}") from None
    files = sorted(local.glob("*.safetensors"))
    if not files:
        raise EditflowError(f"{uri}: the version's run holds no patch")
    want = mv.tags.get("editflow.patch_sha256")
    if want and sha256_file(files[0]) != want:
        raise EditflowError(f"{uri}: the downloaded patch does not match the version's hash {want[:12]}")
    base = mv.tags.get("editflow.base_model", "embedded")
    return (None if base == "embedded" else base), files[0]


def load_model(uri: str, store: Store | None = None, dst: str | Path | None = None):
    """The pyfunc model of a registered version (``models:/NAME@ALIAS``), read from ``store``
    without touching MLflow's global tracking URI."""
    store = store or Store.resolve()
    _, mv = _registered_version(uri, store)
    local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst) if dst else None,
                                                tracking_uri=store.tracking_uri, registry_uri=store.tracking_uri)
    return mlflow.pyfunc.load_model(local)
