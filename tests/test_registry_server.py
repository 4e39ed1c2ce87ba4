"""Many writers, one store: a real `mlflow server` process on 127.0.0.1 (SQLite behind it), eight
registrations at once, eight consistent versions."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from typer.testing import CliRunner

from editflow.cli import app
from registry.register import register_patch
from registry.store import Store

runner = CliRunner()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("server")
    port = _free_port()
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{d / 'mlflow.db'}", "--artifacts-destination", str(d / "artifacts"),
         "--workers", "2"],
        stdout=open(d / "server.log", "w"), stderr=subprocess.STDOUT, env=env, cwd=d)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError((d / "server.log").read_text()[-2000:]) from None
            time.sleep(0.5)
    else:
        proc.kill()
        raise RuntimeError("mlflow server did not come up in 120 s")
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    d = tmp_path_factory.mktemp("evaluated")
    patch = d / "star.safetensors"
    assert runner.invoke(app, ["erase", "--concept", "star", "--no-check", "--out", str(patch)]).exit_code == 0
    res = runner.invoke(app, ["eval", "--patch", str(patch), "--out", str(d / "pass"), "--images", "4",
                              "--steps", "8"])
    assert res.exit_code == 0, res.output
    return patch, d / "pass"


def test_eight_concurrent_registrations_through_a_server(server, evaluated):
    patch, report = evaluated
    store = Store.resolve(server)
    assert store.artifact_root is None  # the server decides where artifacts go
    with ThreadPoolExecutor(8) as pool:
        regs = list(pool.map(lambda i: register_patch(patch, report, "erase-star", store), range(8)))
    assert sorted(int(r.version) for r in regs) == list(range(1, 9))
    assert len({r.run_id for r in regs}) == 8
    client = store.client()
    versions = client.search_model_versions("name='erase-star'")
    assert sorted(int(v.version) for v in versions) == list(range(1, 9))
    for v in versions:  # each version complete: its tags and its own run's patch
        assert v.tags["editflow.gate_status"] == "passed" and v.run_id in {r.run_id for r in regs}
        assert [a.path for a in client.list_artifacts(v.run_id, "patch")] == ["patch/star.safetensors"]
    # the candidate alias points at one of them
    assert int(client.get_model_version_by_alias("erase-star", "candidate").version) in range(1, 9)
