"""Many writers, one store: a real `mlflow server` process on 127.0.0.1 (SQLite behind it), eight
registrations at once, eight consistent versions."""

import json
import os
import shutil
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



def _reports(report, tmp_path, n):
    """``n`` equally valid reports of the same patch (their bookkeeping differs, so their hashes do)."""
    out = []
    for i in range(n):
        dst = tmp_path / f"report{i}"
        shutil.copytree(report, dst)
        data = json.loads((dst / "report.json").read_text())
        (dst / "report.json").write_text(json.dumps({**data, "seconds": {"copy": i}}))
        out.append(dst)
    return out


def test_eight_concurrent_registrations_through_a_server(server, evaluated, tmp_path):
    patch, report, _ = evaluated
    store = Store.resolve(server)
    assert store.artifact_root is None  # the server decides where artifacts go
    reports = _reports(report, tmp_path, 8)
    with ThreadPoolExecutor(8) as pool:
        regs = list(pool.map(lambda r: register_patch(patch, r, "erase-star", store), reports))
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


def test_the_same_registration_four_times_at_once_makes_one_version(server, evaluated):
    """Duplicates racing each other converge: the later versions delete themselves, every caller gets
    the first."""
    patch, report, _ = evaluated
    store = Store.resolve(server)
    with ThreadPoolExecutor(4) as pool:
        regs = list(pool.map(lambda _: register_patch(patch, report, "dup-star", store), range(4)))
    versions = store.client().search_model_versions("name='dup-star'")
    assert len(versions) == 1
    assert {r.version for r in regs} == {str(versions[0].version)}
    again = register_patch(patch, report, "dup-star", store)
    assert again.existing and again.version == str(versions[0].version)


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
