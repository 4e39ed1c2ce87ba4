"""``erase_flow``: erase -> evaluate -> gate -> register, as a Prefect 3 flow.

Each stage is a task over plain, JSON-able inputs (:class:`~editflow.jobs.erase.EraseJob`,
:class:`~editflow.jobs.evaluate.EvalJob`), so Prefect can cache it: the erase and evaluation
tasks are keyed on their inputs and their code (``INPUTS + TASK_SOURCE``) and persist their
results, so a re-run after a crash (say, the registry was unreachable) resumes at the stage that
failed instead of recomputing. Registration retries on transient failures. The flow publishes a
table artifact with the gate checks and a markdown artifact pointing at the MLflow version.

With no ``PREFECT_API_URL`` the flow runs against Prefect's temporary local server; with one,
runs show in the Prefect UI. ``editflow erase ... --register NAME`` runs it.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import asdict
from datetime import timedelta
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import INPUTS, TASK_SOURCE

from editflow.jobs.erase import EraseJob
from editflow.jobs.evaluate import EvalJob

SHARD = 16  # prompts per Dask task: small enough to spread a default evaluation over a few workers
CACHE = dict(cache_policy=INPUTS + TASK_SOURCE, cache_expiration=timedelta(days=7), persist_result=True)


@task(name="erase", **CACHE)
def erase_task(job: dict, out: str, images_hash: str | None = None) -> dict:
    """Compute the patch and write it to ``out``; returns its path and summary.

    ``images_hash`` keys the cache on the content of ``job["images"]`` (a folder the user may refill).
    """
    from editflow.jobs.erase import run_erase

    patch, request = run_erase(EraseJob(**job))
    path = patch.save(out)
    return {"patch": str(path), "rank": patch.edit.rank, "concepts": [c.name for c in request.concepts],
            "seconds": patch.metadata["seconds"]}


@task(name="evaluate", **CACHE)
def evaluate_task(job: dict, patch_bytes_hash: str, fan_out: bool = False) -> dict:
    """Evaluate the patch and judge the gates; ``patch_bytes_hash`` keys the cache on the patch's content.

    ``fan_out``: the task runs on a Dask cluster (``DaskTaskRunner``); its generation shards are
    spread over the cluster's workers, each loading the model and patch once.
    """
    from editflow.jobs.evaluate import run_eval

    if fan_out:
        from prefect_dask import get_dask_client

        with get_dask_client() as client:
            def dask_map(fn, shards):
                return client.gather(client.map(fn, list(shards), pure=False))

            outcome = run_eval(EvalJob(**job), map_fn=dask_map, remote=True, shard_size=SHARD)
    else:
        outcome = run_eval(EvalJob(**job))
    return {"report_dir": str(outcome.report_dir), "passed": outcome.passed,
            "checks": [c.to_dict() for c in outcome.gates.checks], "seconds": outcome.result.seconds}


@task(name="register", retries=2, retry_delay_seconds=[2, 10])
def register_task(patch: str, report_dir: str, name: str, tracking_uri: str | None, gates: str | None = None) -> dict:
    from registry.register import register_patch
    from registry.store import Store

    return register_patch(patch, report_dir, name, Store.resolve(tracking_uri), gates=gates).to_dict()


def _run(task_fn, *args):
    """Submit to the flow's task runner (threads, or Dask workers) and wait: the final state."""
    future = task_fn.submit(*args)
    future.wait()
    return future.state


def _sha256(path: str) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _folder_hash(folder: str | None) -> str | None:
    """sha256 over the names and bytes of a folder's files (``None`` for no folder)."""
    if folder is None or not Path(folder).is_dir():
        return None
    import hashlib

    h = hashlib.sha256()
    for f in sorted(p for p in Path(folder).iterdir() if p.is_file()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


@flow(name="editflow-erase", log_prints=True)
def erase_flow(job: dict, out: str, name: str, gates: str | None = None, images: int = 24,
               tracking_uri: str | None = None, eval_cache_dir: str | None = None, fan_out: bool = False,
               eval_options: dict | None = None) -> dict:
    """Erase ``job``'s concepts, evaluate the patch against ``gates``, register it as ``name`` if it passes.

    The evaluation runs where the erasure did (``job``'s ``device``, ``dtype``, ``offload``).
    ``eval_options`` are further :class:`~editflow.jobs.evaluate.EvalJob` fields (``attack_steps``, ...).
    """
    clock = {"start": time.perf_counter()}
    images_hash = _folder_hash(job.get("images"))
    erased_state = _run(erase_task, job, out, images_hash)
    erased = erased_state.result()
    if not Path(erased["patch"]).is_file():  # a cached result whose file is gone: recompute
        erased_state = _run(erase_task.with_options(refresh_cache=True), job, out, images_hash)
        erased = erased_state.result()
    clock["erase"] = time.perf_counter()
    eval_job = EvalJob(patch=erased["patch"], model=job.get("model"), gates=gates, images=images,
                       cache_dir=eval_cache_dir or job.get("cache_dir"),
                       out=str(Path(out).with_name(Path(out).stem + "-eval")),
                       device=job.get("device"), dtype=job.get("dtype"), offload=job.get("offload", False),
                       **(eval_options or {}))
    evaluated_state = _run(evaluate_task, asdict(eval_job), _sha256(erased["patch"]), fan_out)
    evaluated = evaluated_state.result()
    if not (Path(evaluated["report_dir"]) / "report.json").is_file():
        evaluated_state = _run(evaluate_task.with_options(refresh_cache=True), asdict(eval_job),
                               _sha256(erased["patch"]), fan_out)
        evaluated = evaluated_state.result()
    clock["evaluate"] = time.perf_counter()
    create_table_artifact(key="gate-checks", table=[{k: c[k] for k in ("metric", "value", "bound", "passed", "reason")}
                                                    for c in evaluated["checks"]],
                          description=f"Gates for {', '.join(erased['concepts'])}")
    stages = {"erase": erased_state.name, "evaluate": evaluated_state.name}
    result = {"passed": evaluated["passed"], "patch": erased["patch"], "report": evaluated["report_dir"],
              "concepts": erased["concepts"], "stages": stages, "registration": None}
    # a failed gate is logged too (a run with the report), it just gets no model version
    registration = register_task(erased["patch"], evaluated["report_dir"], name, tracking_uri, gates)
    result["registration"] = registration
    stages["register"] = "Completed"
    clock["register"] = time.perf_counter()
    result["seconds"] = {k: round(clock[k] - clock[prev], 2)
                         for prev, k in (("start", "erase"), ("erase", "evaluate"), ("evaluate", "register"))}
    ui = (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or "").rstrip("/")
    if registration["version"]:
        where = f"version **{registration['version']}** of `{name}` (alias `candidate`): `{registration['model_uri']}`"
        if ui.startswith("http"):
            where += f"\n\n[Open it in MLflow]({ui}/#/models/{name}/versions/{registration['version']})"
    else:
        where = f"no version: gates failed; MLflow run `{registration['run_id']}` holds the report"
    create_markdown_artifact(key="registration", markdown=f"# {name}\n\n{where}\n")
    print(json.dumps({"passed": result["passed"], "stages": stages}))
    return result


@contextlib.contextmanager
def local_defaults():
    """Settings for running flows from the CLI on a fresh machine, unless the user set them:
    time for the temporary server's first database migration (Prefect's 20 s is too short on
    2 cores), no analytics (no internet here), and an existing ``PREFECT_HOME`` (Prefect does not
    create it, and its temporary server then waits out the timeout on "unable to open database").

    With no API URL, the temporary server is :func:`flows.server.temporary_server`'s, which dies
    with this process even when it is killed (Prefect's own is stopped only at a normal exit)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ANALYTICS_ENABLED,
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS,
        PREFECT_UI_URL,
        temporary_settings,
    )

    from flows.server import temporary_server

    updates = {}
    if "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS" not in os.environ:
        updates[PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS] = 120
    if "PREFECT_SERVER_ANALYTICS_ENABLED" not in os.environ:
        updates[PREFECT_SERVER_ANALYTICS_ENABLED] = False
    with temporary_settings(updates=updates) as settings:
        Path(settings.home).expanduser().mkdir(parents=True, exist_ok=True)  # its SQLite db goes there
        if settings.api.url:
            warm_imports()
            yield
            return
        with temporary_server(settings.server.ephemeral.startup_timeout_seconds, meanwhile=warm_imports) as url, \
                temporary_settings(updates={PREFECT_API_URL: url, PREFECT_UI_URL: ""}):  # it has no UI
            yield


def warm_imports() -> None:
    """Import the libraries the flow's tasks use (diffusers' pipelines, transformers, open_clip, mlflow)
    and silence their loading bars: about 6 s on 2 cores, spent while the temporary server starts
    in its own process instead of after it answered."""
    import open_clip  # noqa: F401

    import editflow.models.pipeline  # noqa: F401  (diffusers' pipelines, transformers)
    import registry.register  # noqa: F401  (mlflow)
    from editflow.cli.common import quiet_libraries

    quiet_libraries()


def on_dask(flow_fn, address: str | None):
    """``flow_fn`` with its tasks on the Dask scheduler at ``address`` (prefect-dask), or as it is."""
    if not address:
        return flow_fn
    from prefect_dask import DaskTaskRunner

    return flow_fn.with_options(task_runner=DaskTaskRunner(address=address))


def run_from_cli(job: EraseJob, out: str, name: str, gates: str | None = None, images: int = 24,
                 dask_address: str | None = None, eval_options: dict | None = None) -> dict:
    """Entry point ``editflow.flows:erase`` (``editflow erase --register NAME [--dask-address ...]``)."""
    from registry.names import check_name

    check_name(name)  # before any stage runs: a bad name would fail only at registration, minutes later
    with local_defaults():
        return on_dask(erase_flow, dask_address)(asdict(job), out, name, gates, images, fan_out=bool(dask_address),
                                                 eval_options=eval_options)
