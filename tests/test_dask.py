"""Scale-out: the evaluation's generation on a Dask LocalCluster (worker processes that load the model
and patch themselves) gives the same results as in process, directly and through prefect-dask."""

import json
from dataclasses import asdict

import pytest
from distributed import Client, LocalCluster
from typer.testing import CliRunner

from editflow.cli import app
from editflow.jobs.evaluate import EvalJob, run_eval

runner = CliRunner()


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as c:
        yield c


@pytest.fixture(scope="module")
def star_patch(tmp_path_factory):
    path = tmp_path_factory.mktemp("patch") / "star.safetensors"
    args = ["erase", "--concept", "star", "--patch-only", "--no-check", "--out", str(path)]
    assert runner.invoke(app, args).exit_code == 0
    return path


def test_dask_generation_matches_in_process(cluster, star_patch, tmp_path):
    job = dict(patch=str(star_patch), images=4, steps=8, attack=False)
    local = run_eval(EvalJob(**job, out=str(tmp_path / "local")))
    with Client(cluster) as client:
        used = set()

        def dask_map(fn, shards):
            futures = client.map(fn, list(shards), pure=False)
            images = client.gather(futures)
            used.update(addr for addrs in client.who_has(futures).values() for addr in addrs)
            return images

        spread = run_eval(EvalJob(**job, out=str(tmp_path / "dask")), map_fn=dask_map, remote=True, shard_size=8)
    workers = {w.worker_address for w in cluster.workers.values()}
    assert used and used <= workers  # the shards ran on the cluster's worker processes
    assert spread.result.rows == local.result.rows  # every detection, prompt by prompt
    for k, v in local.result.metrics.items():  # other batch sizes move pixels by at most a level
        assert spread.result.metrics[k] == (None if v is None else pytest.approx(v, rel=1e-3, abs=1e-3)), k
    assert spread.passed == local.passed


@pytest.mark.slow  # ~130 s on 2 cores: the whole flow through a Dask cluster (CI runs it)
def test_erase_flow_on_dask_through_prefect_dask(cluster, tmp_path, monkeypatch):
    from prefect.testing.utilities import prefect_test_harness

    import flows.erase as erase_flows
    from editflow.jobs.erase import EraseJob
    from registry.store import Store

    store = Store(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri())
    job = asdict(EraseJob(["star"], cache_dir=str(tmp_path / "cache")))
    with prefect_test_harness(server_startup_timeout=90):
        flow = erase_flows.on_dask(erase_flows.erase_flow, cluster.scheduler_address)
        result = flow(job, str(tmp_path / "star.safetensors"), "erase-star", images=4,
                      tracking_uri=store.tracking_uri, fan_out=True)
    assert result["passed"] and result["registration"]["version"] == "1"
    report = json.loads((tmp_path / "star-eval" / "report.json").read_text())
    assert report["metrics"]["erasure_rate"] <= 0.05
