"""A temporary local Prefect server that cannot outlive the process that started it.

With no ``PREFECT_API_URL``, Prefect starts a temporary server (uvicorn in a subprocess) on the
first flow run and stops it at interpreter exit. A CLI killed mid-flow never gets there: on
SIGTERM Prefect marks the run crashed and re-raises the signal, on SIGKILL nothing runs at all,
and the server (~260 MB) stays up. :func:`temporary_server` starts the same server (Prefect's
app factory and settings, as ``SubprocessASGIServer`` does), but asks the kernel to send it
SIGTERM when its parent dies (Linux ``PR_SET_PDEATHSIG``), and stops it when the block exits.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

from editflow.errors import EditflowError

# Runs in the child before it becomes uvicorn: ask for SIGTERM when the parent dies (Linux; the
# setting survives exec), and give up if the parent is already gone. Elsewhere it just execs.
_TIED = """\
import os, signal, sys
if sys.platform.startswith("linux"):
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM), 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(0)
os.execv(sys.executable, [sys.executable, "-m", "uvicorn", *sys.argv[2:]])
"""
PORT_IN_USE = 3  # uvicorn's exit code when it cannot bind


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(port: int) -> subprocess.Popen:
    import prefect
    from prefect.settings import get_current_settings

    env = {**os.environ, **get_current_settings().to_environment_variables(exclude_unset=True),
           # as Prefect's own temporary server: no UI, ephemeral mode
           "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
    env.pop("PREFECT_API_URL", None)
    args = ["--app-dir", str(prefect.__module_path__.parent), "--factory", "prefect.server.api.server:create_app",
            "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on"]
    return subprocess.Popen([sys.executable, "-c", _TIED, str(os.getpid()), *args], env=env,
                            stdin=subprocess.DEVNULL)


def _drain_prefect_workers(timeout: float = 10) -> None:
    """Send the logs and events Prefect still queues for the server: stopped first, its log worker
    retries for over a minute at exit ("Error logging to API") and the command hangs that long."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        try:
            worker.drain_all(timeout=timeout, at_exit=False)
        except Exception:  # a worker that never started, or one that already failed: nothing to send
            pass


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def temporary_server(timeout: float, meanwhile: Callable[[], None] | None = None) -> Iterator[str]:
    """Start Prefect's temporary server tied to this process; yields its API URL (``.../api``).

    ``meanwhile`` runs once the server process is launched, before waiting for it to answer: the
    server's start (6 s, 13 s with a fresh database, on 2 cores) then overlaps with work of this
    process that does not need it. Call it from a thread that outlives the block (the main thread):
    the kernel signals the server when the thread that started it exits. Raises
    :class:`EditflowError` when it does not answer its health check within ``timeout`` seconds.
    """
    import httpx

    deadline = time.monotonic() + timeout
    proc, url = None, None
    try:
        while url is None:
            if proc is None or proc.poll() == PORT_IN_USE:  # another process took the port: next one
                port = _free_port()
                first, proc = proc is None, _start(port)
                if first and meanwhile is not None:
                    meanwhile()
                    deadline = max(deadline, time.monotonic() + 1)
            if proc.poll() not in (None, PORT_IN_USE):
                raise EditflowError(f"Prefect's temporary server exited with code {proc.returncode} "
                                    "(set PREFECT_API_URL to use a running server)")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/api/health", timeout=5, trust_env=False).status_code == 200:
                    url = f"http://127.0.0.1:{port}/api"  # local: never through a proxy from the environment
                    continue
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise EditflowError(f"Prefect's temporary server did not start within {timeout:.0f} s "
                                    "(raise PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS)")
            time.sleep(0.2)
        yield url
    finally:
        if url is not None:
            _drain_prefect_workers()
        if proc is not None:
            _stop(proc)
