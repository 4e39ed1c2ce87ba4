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

from registry.register import register_patch
from registry.store import Store


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



def test_eight_concurrent_registrations_through_a_server(server, evaluated):
    patch, report, _ = evaluated
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


@pytest.mark.slow
def test_model_version_page_shows_version_alias_and_gates(server, evaluated, tmp_path):
    """A reviewer's view: headless Chromium renders the MLflow model-version page."""
    import shutil

    from registry.register import promote

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "needs Debian's chromium (apt-get install chromium; .ci/run installs it)"
    patch, report, _ = evaluated
    store = Store.resolve(server)
    reg = register_patch(patch, report, "ui-star", store)
    promote("ui-star", reg.version, store=store)
    url = f"{server}/#/models/ui-star/versions/{reg.version}"
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=30000", "--window-size=1400,2000"]
    dom = subprocess.run([*args, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    shot = tmp_path / "model-version.png"
    subprocess.run([*args, f"--screenshot={shot}", url], capture_output=True, timeout=180)
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert f"Version {reg.version}" in dom
    assert "champion" in dom and "candidate" in dom
    assert "erasure_rate" in dom and "specificity_neighbours" in dom  # the gate table of the model card
    assert "editflow.gate_status" in dom
