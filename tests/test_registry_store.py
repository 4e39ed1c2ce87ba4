"""The registry's store: names checked first, several processes starting on a fresh store, an
unreachable server, and reads that never create a store (no evaluated patch needed here)."""

import os
import socket
import subprocess
import sys
import textwrap
import time

import pytest
from typer.testing import CliRunner

from editflow.cli import app
from editflow.cli.app import load_extensions
from editflow.errors import EditflowError
from registry.names import MAX_LENGTH, check_name
from registry.store import Store

runner = CliRunner()


def test_check_name_accepts_plain_names_and_refuses_the_rest():
    for ok in ["erase-star", "world.unsafe_v2", "A", "x" * MAX_LENGTH, "a..b"]:
        assert check_name(ok) == ok
    for bad in ["", ".", "..", "../../x", "a/b", "a b", "x'y", "é", "x" * (MAX_LENGTH + 1), "a\nb"]:
        with pytest.raises(EditflowError, match="policy name"):
            check_name(bad, "policy name")


def test_resolving_a_store_creates_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    store = Store.resolve()
    assert store.database == tmp_path / "home" / "mlflow.db" and not store.exists()
    with pytest.raises(EditflowError, match="no registry at"):
        store.client(create=False)
    assert not (tmp_path / "home").exists()
    store.client()  # a writer creates it
    assert store.exists() and store.experiment_id()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_server_is_one_line_within_seconds(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_free_port()}")  # nothing listens there
    monkeypatch.chdir(tmp_path)
    cli = load_extensions(app)
    for args in (["registry", "list"], ["registry", "show", "x"],
                 ["generate", "--model", "models:/x@champion", "--prompt", "a star", "--out", "g.png"]):
        start = time.perf_counter()
        res = runner.invoke(cli, args)
        assert time.perf_counter() - start < 15, args
        assert res.exit_code == 1, (args, res.output)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "cannot reach the MLflow tracking server" in lines[0], res.stderr
    assert not (tmp_path / "g.png").exists() and not (tmp_path / "mlflow.db").exists()


def test_reading_a_missing_registered_model_creates_no_store(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    cli = load_extensions(app)
    res = runner.invoke(cli, ["generate", "--model", "models:/nonexistent@champion", "--prompt", "a star",
                              "--out", "g.png"])
    assert res.exit_code == 1 and "no registered model for models:/nonexistent@champion" in res.stderr
    assert runner.invoke(cli, ["registry", "list"]).stdout.strip() == "[]"
    res = runner.invoke(cli, ["registry", "show", "nonexistent"])
    assert res.exit_code == 1 and "no registered model 'nonexistent'" in res.stderr
    assert runner.invoke(cli, ["registry", "promote", "nonexistent", "1"]).exit_code == 1
    assert not (tmp_path / "home").exists() and not (tmp_path / "mlflow.db").exists()  # nor MLflow's default
    Store.resolve().client()  # once a store exists, the model is still missing: one line, no traceback
    res = runner.invoke(cli, ["generate", "--model", "models:/nonexistent@champion", "--prompt", "a star",
                              "--out", "g.png"])
    assert res.exit_code == 1 and "no registered version for models:/nonexistent@champion" in res.stderr
    for uri, message in (("models:/nonexistent", "names a logged model"), ("models:/a/b/c", "bad registry URI")):
        res = runner.invoke(cli, ["generate", "--model", uri, "--prompt", "a", "--out", "g.png"])
        assert res.exit_code == 1 and message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "mlflow.db").exists()


FIRST_USE = textwrap.dedent("""
    import sys, time, pathlib
    import mlflow  # the slow import happens before the start line
    from registry.store import Store
    ready, go = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    ready.touch()
    while not go.exists():
        time.sleep(0.005)
    store = Store.resolve()
    client = store.client()
    client.search_registered_models()
    print(store.experiment_id())
""")


def test_processes_starting_together_on_a_fresh_store_all_succeed(tmp_path):
    """Four writers resolve a store nobody created yet, at the same moment: one creates and migrates
    it under the lock, the others wait and use it (without the lock they fail inside MLflow's
    schema migration)."""
    env = {**os.environ, "EDITFLOW_HOME": str(tmp_path / "home"), "MLFLOW_DISABLE_TELEMETRY": "true"}
    env.pop("MLFLOW_TRACKING_URI", None)
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_USE, str(tmp_path / f"ready{i}"), str(go)], env=env,
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(4)]
    try:
        deadline = time.time() + 180
        while not all((tmp_path / f"ready{i}").exists() for i in range(4)):
            assert time.time() < deadline and all(p.poll() is None for p in procs), "a process did not start"
            time.sleep(0.05)
        go.touch()
        outs = [p.communicate(timeout=180) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    assert len({out.strip() for out, _ in outs}) == 1  # one experiment, seen by all
