"""The Prefect erase flow on a real (test-harness) Prefect server and a real SQLite MLflow store:
erase -> evaluate -> register, resume after a crash from the cache, and `editflow erase --register`."""

import json
from dataclasses import asdict

import pytest
from prefect.testing.utilities import prefect_test_harness
from typer.testing import CliRunner

import flows.erase as erase_flows
from editflow.cli import app
from editflow.edits.erase import EraseJob
from registry.store import Store

runner = CliRunner()


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def store(tmp_path):
    return Store(f"sqlite:///{tmp_path / 'mlflow.db'}", (tmp_path / "artifacts").as_uri())


def _job(tmp_path):
    return asdict(EraseJob(["star"], "ace", cache_dir=str(tmp_path / "cache")))


def test_flow_erases_evaluates_registers_and_resumes_after_a_crash(tmp_path, store, monkeypatch):
    import registry.register

    def unreachable(*a, **k):
        raise ConnectionError("registry unreachable")

    monkeypatch.setattr(registry.register, "register_patch", unreachable)
    monkeypatch.setattr(erase_flows, "register_task", erase_flows.register_task.with_options(retries=0))
    out = str(tmp_path / "star.safetensors")
    with pytest.raises(ConnectionError):
        erase_flows.erase_flow(_job(tmp_path), out, "erase-star", images=4, tracking_uri=store.tracking_uri)
    assert (tmp_path / "star.safetensors").is_file() and (tmp_path / "star-eval" / "report.json").is_file()
    mtime = (tmp_path / "star.safetensors").stat().st_mtime_ns
    monkeypatch.undo()
    result = erase_flows.erase_flow(_job(tmp_path), out, "erase-star", images=4, tracking_uri=store.tracking_uri)
    assert result["stages"] == {"erase": "Cached", "evaluate": "Cached", "register": "Completed"}
    assert (tmp_path / "star.safetensors").stat().st_mtime_ns == mtime  # not recomputed
    assert result["passed"] and result["registration"]["version"] == "1"
    mv = store.client().get_model_version_by_alias("erase-star", "candidate")
    assert mv.tags["editflow.gate_status"] == "passed"


def test_erase_register_cli_runs_the_flow_and_exits_3_on_a_failed_gate(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    (tmp_path / "strict.yaml").write_text("default: {clip_score_preserved: {min: 99.0}}\n")
    res = runner.invoke(app, ["erase", "--concept", "star", "--register", "erase-star", "--gates",
                              str(tmp_path / "strict.yaml"), "--eval-images", "4", "--out",
                              str(tmp_path / "p.safetensors"), "--cache-dir", str(tmp_path / "cache")])
    assert res.exit_code == 3, res.output
    result = json.loads(res.stdout[res.stdout.index("{\n"):])
    assert not result["passed"] and result["registration"]["version"] is None
    store = Store.resolve()
    assert store.client().search_model_versions("name='erase-star'") == []
    run = store.client().get_run(result["registration"]["run_id"])
    assert run.data.tags["editflow.gate_status"] == "failed"
