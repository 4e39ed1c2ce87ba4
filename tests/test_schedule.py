"""Policies against a real `prefect server start`: `editflow policy serve` gets its cron's runs created by
Prefect's scheduler and completed from any working directory, and stops on SIGTERM; a flow run from the
CLI takes its temporary Prefect server down with it when it is killed."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI")}
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="true", EDITFLOW_QUIET="1", **extra)
    return env


def _tail(path: Path, n: int = 40) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-n:]) if path.is_file() else ""


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory):
    """A real Prefect server (scheduler included) on a free port, with its own PREFECT_HOME: its API URL."""
    home = tmp_path_factory.mktemp("prefect-server")
    port, log = _free_port(), home / "server.log"
    proc = subprocess.Popen([str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port),
                             "--no-ui", "--analytics-off"],
                            env=_env(PREFECT_HOME=str(home)), stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}/api"
    try:
        deadline = time.monotonic() + 90
        while True:
            assert proc.poll() is None, f"prefect server exited:\n{_tail(log)}"
            try:
                if httpx.get(f"{url}/health", timeout=5, trust_env=False).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, f"prefect server did not start:\n{_tail(log)}"
            time.sleep(0.5)
        yield url, log
    finally:
        _stop(proc)


def _policy(folder: Path, **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "policy.yaml"
    path.write_text(yaml.safe_dump({"name": "world-stars", "concepts": ["star"], "eval_images": 4, **extra}))
    return path


def _champion(home: Path, name: str, concepts: str) -> None:
    """A champion of ``name`` that erases ``concepts`` in the registry under EDITFLOW_HOME=home."""
    from registry.store import Store

    home.mkdir(parents=True, exist_ok=True)
    client = Store(f"sqlite:///{home / 'mlflow.db'}", (home / "artifacts").as_uri()).client()
    client.create_registered_model(name)
    (home / "src").mkdir()
    mv = client.create_model_version(name, str(home / "src"), tags={"editflow.concepts": concepts})
    client.set_registered_model_alias(name, "champion", mv.version)


def test_policy_serve_gets_scheduled_runs_completed_and_stops_on_sigterm(prefect_api, tmp_path):
    url, server_log = prefect_api
    home = tmp_path / "home"
    _champion(home, "world-stars", "star")  # the served run has nothing to erase: cheap
    policy = _policy(tmp_path / "policies", schedule="* * * * *")
    elsewhere = tmp_path / "elsewhere"  # not the checkout: the deployment's entrypoint must not depend on it
    elsewhere.mkdir()
    log = tmp_path / "serve.log"
    serve = subprocess.Popen([str(BIN / "editflow"), "policy", "serve", str(policy)], cwd=elsewhere,
                             env=_env(PREFECT_API_URL=url, EDITFLOW_HOME=str(home),
                                      PREFECT_HOME=str(tmp_path / "prefect-client"),
                                      PREFECT_RUNNER_POLL_FREQUENCY="2"),
                             stdout=log.open("w"), stderr=subprocess.STDOUT, start_new_session=True)
    api = httpx.Client(base_url=url, timeout=10, trust_env=False)
    try:
        deadline, dep, done = time.monotonic() + 150, None, None
        while done is None:
            assert serve.poll() is None, f"policy serve exited:\n{_tail(log)}"
            # the scheduler's failure on SQLAlchemy 2.1 ("Can't evaluate bulk DML statement"): no run would come
            assert "InvalidRequestError" not in server_log.read_text(errors="replace"), _tail(server_log)
            assert time.monotonic() < deadline, (f"no scheduled run completed\nserve:\n{_tail(log)}\n"
                                                 f"server:\n{_tail(server_log)}")
            time.sleep(2)
            if dep is None:
                res = api.get("/deployments/name/editflow-policy/policy-world-stars")
                if res.status_code != 200:
                    continue
                dep = res.json()
                assert dep["entrypoint"] == "flows.policy.policy_flow"
            runs = api.post("/flow_runs/filter", json={"flow_runs": {"deployment_id": {"any_": [dep["id"]]}}}).json()
            assert all(r["state_type"] not in ("FAILED", "CRASHED") for r in runs), f"{runs}\n{_tail(log)}"
            done = next((r for r in runs if r["auto_scheduled"] and r["state_type"] == "COMPLETED"), None)
        for _ in range(20):  # the run's logs arrive in batches, the last one as its process exits
            logs = [e["message"] for e in
                    api.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [done["id"]]}}}).json()]
            if any("already erases star" in m for m in logs):  # the policy ran, and found nothing to do
                break
            time.sleep(1)
        else:
            pytest.fail(f"the policy's message is not in the run's logs: {logs}")

        start = time.monotonic()
        serve.send_signal(signal.SIGTERM)
        try:
            rc = serve.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pytest.fail(f"policy serve still running 10 s after SIGTERM:\n{_tail(log)}")
        assert rc == 0, _tail(log)
        assert time.monotonic() - start < 10
        assert api.get(f"/deployments/{dep['id']}").json()["paused"]  # it shut down the way Ctrl-C does
    finally:
        api.close()
        _stop(serve)


def _server_children(pid: int) -> list[psutil.Process]:
    try:
        kids = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for kid in kids:
        try:
            if "prefect.server.api.server:create_app" in " ".join(kid.cmdline()):
                found.append(kid)
        except psutil.Error:
            pass
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_killed_flow_takes_its_temporary_prefect_server_with_it(tmp_path, sig):
    log = tmp_path / "run.log"
    run = subprocess.Popen([str(BIN / "editflow"), "policy", "run", str(_policy(tmp_path / "policies"))],
                           env=_env(EDITFLOW_HOME=str(tmp_path / "home"), PREFECT_HOME=str(tmp_path / "prefect")),
                           stdout=log.open("w"), stderr=subprocess.STDOUT)
    servers: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + 120
        while "Beginning flow run" not in log.read_text(errors="replace"):  # killed mid-flow
            assert run.poll() is None, _tail(log)
            assert time.monotonic() < deadline, _tail(log)
            servers = _server_children(run.pid) or servers
            time.sleep(0.5)
        servers = _server_children(run.pid) or servers
        assert servers, "no temporary server found"
        run.send_signal(sig)
        run.wait(timeout=30)
        gone, alive = psutil.wait_procs(servers, timeout=15)
        assert not alive, f"the temporary server outlived its CLI: {alive}"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        for p in servers:
            if p.is_running():
                p.kill()


def test_a_flow_on_the_temporary_server_completes_and_leaves_no_server(tmp_path):
    home = tmp_path / "home"
    _champion(home, "world-stars", "star")
    run = subprocess.Popen([str(BIN / "editflow"), "policy", "run", str(_policy(tmp_path / "policies"))],
                           env=_env(EDITFLOW_HOME=str(home), PREFECT_HOME=str(tmp_path / "prefect")),
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, psutil.Process] = {}
    try:
        while run.poll() is None:
            seen.update((p.pid, p) for p in _server_children(run.pid))
            time.sleep(0.2)
        out, err = run.communicate(timeout=30)
        assert run.returncode == 0, err
        assert '"result": null' in out and "already erases star" in err
        assert "Error logging to API" not in err  # logs reached the server before it stopped
        servers = list(seen.values())
        assert len(servers) == 1  # ours only: Prefect did not start one of its own besides
        gone, alive = psutil.wait_procs(servers, timeout=15)
        assert not alive
    finally:
        if run.poll() is None:
            run.kill()
            run.communicate()
        for p in seen.values():
            if p.is_running():
                p.kill()


_MEANWHILE = """
import os, sys, time, psutil
from flows.server import temporary_server

seen = []
def meanwhile():  # the caller's own work (the flow's imports) while the server starts
    kids = psutil.Process(os.getpid()).children(recursive=True)
    seen.append(sum("create_app" in " ".join(k.cmdline()) for k in kids))
with temporary_server(120, meanwhile=meanwhile) as url:
    import httpx
    print(seen, httpx.get(url + "/health", trust_env=False).status_code)
"""


def test_the_temporary_server_starts_while_the_caller_works(tmp_path):
    """``meanwhile`` runs once, with the server process already launched, before waiting for it."""
    out = subprocess.run([sys.executable, "-c", _MEANWHILE], env=_env(PREFECT_HOME=str(tmp_path / "prefect")),
                         capture_output=True, text=True, timeout=180, cwd=Path(__file__).parents[1])
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["[1]", "200"]
