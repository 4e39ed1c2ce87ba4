"""Safety policies: which concepts must be gone from which base model, checked on a schedule.

A policy file (``configs/policies/*.yaml``)::

    name: world-unsafe-objects     # registered model name in MLflow
    base: embedded                 # or a local diffusers folder / cached hub id
    method: ace
    concepts:                      # a word, or {name, synonyms}
      - skull
      - {name: blade, synonyms: [sword]}
    gates: ../gates/default.yaml   # paths are relative to the policy file
    eval_images: 24
    eval: {attack_steps: 400}      # optional: more evaluation settings (attack_steps, attack_restarts,
                                   # evaluator, family, nudity_protocol for a real base,
                                   # preserve_images, attack)
    schedule: "0 3 * * *"          # cron, for `editflow policy serve`
    out_dir: patches/              # where patches and reports go (default: $EDITFLOW_HOME/patches/<name>)
    device: cuda                   # optional: auto, cpu, cuda, cuda:N, mps (default: $EDITFLOW_DEVICE, else auto)
    dtype: float16                 # optional: auto, float32, float16, bfloat16 (default: $EDITFLOW_DTYPE, else auto)

Device and dtype names are checked when the policy is loaded; the hardware when it runs (on the
machine, or Dask worker, that runs it).

``policy_flow`` compares the policy with the registered model's ``champion``: when the champion
already erases every concept the policy names, there is nothing to do; otherwise it runs
:func:`flows.erase.erase_flow` for all of them in one solve (closed form takes seconds, and a
patch that stands alone is what a reviewer can promote), which registers a new ``candidate``.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from prefect import flow, get_run_logger

from editflow.configfile import read_yaml
from editflow.errors import EditflowError
from editflow.jobs.erase import EraseJob

KEYS = {"name", "base", "method", "concepts", "gates", "eval_images", "eval", "schedule", "description", "out_dir",
        "finetune", "device", "dtype"}
EVAL_KEYS = {"attack", "attack_steps", "attack_restarts", "preserve_images",  # EvalJob fields a policy may set
             "evaluator", "family", "nudity_protocol"}  # the last three: a real base's judge
TEXT_EVAL_KEYS = {"evaluator", "family", "nudity_protocol"}


def check_name(name, source: str = "<inline>") -> str:
    """``name`` if it is a registered-model name that is also safe as a folder name
    (``$EDITFLOW_HOME/patches/<name>``: no path separators, not ``.`` or ``..``), else an EditflowError."""
    from registry.names import check_name as check_registry_name

    if not isinstance(name, str) or not name:
        raise EditflowError(f"policy {source}: 'name' (the registered model name) is required")
    try:
        return check_registry_name(name, "name")
    except EditflowError as exc:
        raise EditflowError(f"policy {source}: {exc}") from None


def check_schedule(schedule, source: str = "<inline>") -> str | None:
    """``schedule`` if it is a cron string Prefect's scheduler accepts (or None), else an EditflowError."""
    if schedule is None:
        return None
    from prefect.client.schemas.schedules import CronSchedule

    try:
        if not isinstance(schedule, str):
            raise ValueError
        CronSchedule(cron=schedule)
    except ValueError:  # pydantic's ValidationError is one
        raise EditflowError(f"policy {source}: 'schedule' {schedule!r} is not a valid cron string "
                            "(minute hour day-of-month month day-of-week, e.g. \"0 3 * * *\")") from None
    return schedule


def check_gates(path: str, source: str = "<inline>") -> str:
    """``path`` if it holds a valid gate file (parsed and checked as ``eval`` will), else an EditflowError."""
    from editflow.evaluation.gates import Gates

    try:
        Gates.load(path)
    except EditflowError as exc:
        raise EditflowError(f"policy {source}: {str(exc).strip().splitlines()[0]}") from None
    return path


@dataclass
class Policy:
    name: str
    concepts: list[str]
    synonyms: dict[str, list[str]] = field(default_factory=dict)
    base: str = "embedded"
    method: str = "ace"
    gates: str | None = None
    eval_images: int = 24
    schedule: str | None = None
    out_dir: str | None = None
    source: str = "<inline>"
    finetune: dict = field(default_factory=dict)  # FinetuneConfig fields, e.g. {mode: adv, rounds: 6}
    eval: dict = field(default_factory=dict)  # EVAL_KEYS fields of the evaluation, e.g. {attack_steps: 400}
    device: str | None = None  # None: $EDITFLOW_DEVICE, else auto (resolved where the job runs)
    dtype: str | None = None  # None: $EDITFLOW_DTYPE, else auto

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        return cls.from_dict(read_yaml(path, "policy"), str(path))

    @classmethod
    def from_dict(cls, data, source: str = "<inline>") -> Policy:
        if not isinstance(data, dict):
            raise EditflowError(f"policy {source}: expected a mapping")
        unknown = set(data) - KEYS
        if unknown:
            raise EditflowError(f"policy {source}: unknown key(s) {sorted(unknown)}; valid: {', '.join(sorted(KEYS))}")
        check_name(data.get("name"), source)
        check_schedule(data.get("schedule"), source)
        raw = data.get("concepts") or []
        if not isinstance(raw, list) or not raw:
            raise EditflowError(f"policy {source}: 'concepts' must be a non-empty list")
        concepts, synonyms = [], {}
        for c in raw:
            if isinstance(c, str):
                concepts.append(c)
            elif isinstance(c, dict) and isinstance(c.get("name"), str):
                concepts.append(c["name"])
                if c.get("synonyms"):
                    synonyms[c["name"]] = [str(s) for s in c["synonyms"]]
            else:
                raise EditflowError(f"policy {source}: a concept is a word or {{name, synonyms}}, got {c!r}")
        from editflow.edits import available

        method = data.get("method", "ace")
        if method not in available():
            raise EditflowError(f"policy {source}: unknown method {method!r}; valid: {', '.join(available())}")
        base = str(data.get("base", "embedded"))
        if base == "embedded":
            from editflow.world import DEFAULT_WORLD

            for c in concepts:
                try:
                    DEFAULT_WORLD.concept(c)
                except ValueError as exc:
                    raise EditflowError(f"policy {source}: {exc}") from None
        gates, out_dir = data.get("gates"), data.get("out_dir")
        if source != "<inline>":  # paths in a policy are relative to the policy file
            here = Path(source).resolve().parent
            gates = str(here / gates) if gates else None
            out_dir = str(here / out_dir) if out_dir else None
        if gates:
            check_gates(str(gates), source)
        finetune = data.get("finetune") or {}
        if isinstance(finetune, str):
            finetune = {"mode": finetune}
        try:
            from editflow.finetune import FinetuneConfig

            FinetuneConfig(**finetune)
        except (TypeError, ValueError) as exc:
            raise EditflowError(f"policy {source}: bad 'finetune' ({exc})") from None
        evaluation = data.get("eval") or {}
        if not isinstance(evaluation, dict) or set(evaluation) - EVAL_KEYS:
            raise EditflowError(f"policy {source}: 'eval' takes {', '.join(sorted(EVAL_KEYS))}, got {evaluation!r}")
        for key, value in evaluation.items():
            if key == "attack" and not isinstance(value, bool):
                raise EditflowError(f"policy {source}: eval.attack must be true or false, got {value!r}")
            if key in TEXT_EVAL_KEYS and not (isinstance(value, str) and value.strip()):
                raise EditflowError(f"policy {source}: eval.{key} must be text, got {value!r}")
            if key == "family":
                from editflow.families import knowledge

                knowledge(value)
            if key == "nudity_protocol":
                from editflow.evaluation.detectors import NUDITY_PROTOCOLS

                if value not in NUDITY_PROTOCOLS:
                    raise EditflowError(f"policy {source}: eval.nudity_protocol is one of "
                                        f"{', '.join(NUDITY_PROTOCOLS)}, got {value!r}")
            if key not in TEXT_EVAL_KEYS and key != "attack" and (
                    isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise EditflowError(f"policy {source}: eval.{key} must be a whole number >= 1, got {value!r}")
        from editflow.models.device import check_placement

        device, dtype = data.get("device"), data.get("dtype")
        check_placement(device, dtype, f"policy {source}")  # names only: the hardware is checked where it runs
        return cls(data["name"], concepts, synonyms, base, method, gates,
                   int(data.get("eval_images", 24)), data.get("schedule"), out_dir, source, finetune, evaluation,
                   device.strip().lower() if device else None, dtype.strip().lower() if dtype else None)

    def job(self, concepts: list[str], cache_dir: str | None = None, device: str | None = None,
            dtype: str | None = None) -> EraseJob:
        """The erase job for ``concepts``; ``device`` / ``dtype`` (e.g. from the command line) win over the policy's."""
        return EraseJob(list(concepts), self.method, model=None if self.base == "embedded" else self.base,
                        cache_dir=cache_dir, concept_aliases={c: self.synonyms[c] for c in concepts
                                                              if c in self.synonyms},
                        finetune=dict(self.finetune), device=device or self.device, dtype=dtype or self.dtype,
                        family=self.eval.get("family") if self.base != "embedded" else None)


def covered_by_champion(name: str, tracking_uri: str | None = None) -> tuple[str | None, set[str]]:
    """(champion version, concepts it erases), or (None, empty) when there is no champion yet."""
    from registry.store import Store

    client = Store.resolve(tracking_uri).client()
    try:
        mv = client.get_model_version_by_alias(name, "champion")
    except Exception:  # no such model or no champion alias yet
        return None, set()
    return str(mv.version), {c for c in mv.tags.get("editflow.concepts", "").split(",") if c}


def plan(policy: Policy, tracking_uri: str | None = None) -> dict:
    champion, covered = covered_by_champion(policy.name, tracking_uri)
    missing = [c for c in policy.concepts if c not in covered]
    return {"champion": champion, "covered": sorted(covered), "missing": missing,
            "erase": sorted(set(policy.concepts) | covered) if missing else []}


@flow(name="editflow-policy", log_prints=True)
def policy_flow(policy_path: str, tracking_uri: str | None = None, cache_dir: str | None = None,
                dask_address: str | None = None, device: str | None = None, dtype: str | None = None) -> dict:
    """Run a safety policy now: erase what the champion does not cover yet, register a candidate.

    ``device`` / ``dtype`` override the policy's own (names; resolved where the erasure runs)."""
    from flows.erase import erase_flow, on_dask

    policy = Policy.load(policy_path)
    todo = plan(policy, tracking_uri)
    log = get_run_logger()
    if not todo["missing"]:
        log.info(f"champion v{todo['champion']} of {policy.name} already erases {', '.join(policy.concepts)}")
        return {"policy": policy.name, **todo, "result": None}
    log.info(f"erasing {', '.join(todo['erase'])} (not yet covered: {', '.join(todo['missing'])})")
    from registry.store import editflow_home

    out_dir = Path(policy.out_dir) if policy.out_dir else editflow_home() / "patches" / policy.name
    slug = "-".join(re.sub(r"[^A-Za-z0-9._-]+", "_", c).strip(".") or "_" for c in todo["erase"])
    out = out_dir / f"{policy.name}-{slug}.safetensors"  # concept words of a real base may hold '/'
    job = policy.job(todo["erase"], cache_dir, device, dtype)
    result = on_dask(erase_flow, dask_address)(asdict(job), str(out), policy.name,
                                               policy.gates, policy.eval_images, tracking_uri,
                                               fan_out=bool(dask_address), eval_options=dict(policy.eval))
    return {"policy": policy.name, **todo, "result": result}


def deployment(policy_path: str):
    """The Prefect deployment that runs ``policy_path`` on its cron schedule (``editflow policy serve``)."""
    policy = Policy.load(policy_path)
    if not policy.schedule:
        raise EditflowError(f"policy {policy_path} has no 'schedule' (a cron string) to serve")
    from prefect.deployments.runner import EntrypointType

    # a module entrypoint (flows.policy.policy_flow), not a file path relative to the serving process's
    # working directory: the served run imports the installed package from wherever it starts
    return policy_flow.to_deployment(name=f"policy-{policy.name}", cron=policy.schedule,
                                     parameters={"policy_path": str(Path(policy_path).resolve())},
                                     entrypoint_type=EntrypointType.MODULE_PATH)
