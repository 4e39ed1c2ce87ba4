"""End-to-end `editflow erase --register` on the embedded model, flow overhead separated from compute,
and registry write latency (local SQLite store and a `mlflow server` on loopback).

    python bench/end_to_end.py [--concept star] [--registrations 5] [--baseline 155337d]

Each part starts from empty Prefect/MLflow homes in a temporary folder (a first run: no cached
images, a fresh Prefect database). "Before the flow" is process start, imports and Prefect's
temporary server, up to the flow run's first log line; "after the flow" is the rest of the wall
time beyond the three stages (task orchestration, teardown). ``--baseline REV`` first runs another
commit's code (a git worktree, this environment) on the same machine, for a before/after table.
Prints markdown tables; results go to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def _env(home: Path) -> dict:
    return {**os.environ, "EDITFLOW_HOME": str(home / "editflow"), "PREFECT_HOME": str(home / "prefect"),
            "EDITFLOW_CACHE": str(home / "cache"), "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true", "EDITFLOW_QUIET": "1"}


def _clock(line: str) -> float:
    """Seconds since midnight of a Prefect log line's ``HH:MM:SS.mmm`` stamp."""
    h, m, sec = line[:12].split(":")
    return int(h) * 3600 + int(m) * 60 + float(sec)


def end_to_end(concept: str, home: Path, source: Path | None = None) -> dict:
    """One ``editflow erase --register`` from empty homes; ``source``: run that checkout's code
    (a worktree of another commit) in this environment instead of the installed one."""
    home.mkdir(parents=True, exist_ok=True)
    env = _env(home)
    if source is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(source), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    started, t = time.time(), time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "editflow", "erase", "--concept", concept, "--register",
                          f"bench-{concept}", "--out", str(home / f"{concept}.safetensors")],
                         capture_output=True, text=True, env=env, cwd=source or Path.cwd())
    wall = time.perf_counter() - t
    if out.returncode not in (0, 3):
        raise RuntimeError(out.stderr[-2000:])
    result = json.loads(out.stdout[out.stdout.index("{\n"):])
    begun = next(line for line in out.stderr.splitlines() if "Beginning flow run" in line)
    local = time.localtime(started)
    before = (_clock(begun) - (local.tm_hour * 3600 + local.tm_min * 60 + local.tm_sec + started % 1)) % 86400
    ev = json.loads((home / f"{concept}-eval" / "report.json").read_text())["seconds"]
    stages = sum(result["seconds"].values())
    return {"wall": wall, **result["seconds"], "passed": result["passed"], "before_flow": before,
            "after_flow": wall - before - stages, "original": ev["original"], "patched": ev["patched"],
            "attack": ev.get("attack", 0.0)}


def registry_latency(tracking_uri: str, n: int, patch: Path, report: Path) -> list[float]:
    from registry.register import register_patch
    from registry.store import Store

    store = Store.resolve(tracking_uri)
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            # a distinct report each time (its bookkeeping differs): the registry returns the existing
            # version for a patch + report it has seen, which would time a lookup, not a registration
            copy = Path(tmp) / f"report-{i}"
            shutil.copytree(report, copy)
            data = json.loads((copy / "report.json").read_text())
            data["bench_repeat"] = i
            (copy / "report.json").write_text(json.dumps(data))
            t = time.perf_counter()
            register_patch(patch, copy, "bench-latency", store)
            times.append(time.perf_counter() - t)
    return times


def worktree(rev: str, where: Path) -> Path:
    """A checkout of ``rev`` (git worktree, detached) under ``where``."""
    path = where / f"src-{rev}"
    subprocess.run(["git", "worktree", "add", "--detach", "-q", str(path), rev], check=True)
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--concept", default="star")
    ap.add_argument("--registrations", type=int, default=5)
    ap.add_argument("--baseline", default=None, help="also run this commit's code first (e.g. 155337d), same machine")
    args = ap.parse_args()
    home = Path(tempfile.mkdtemp(prefix="editflow-e2e-"))
    runs = []
    if args.baseline:
        src = worktree(args.baseline, home)
        try:
            runs.append((f"{args.baseline} (before)", end_to_end(args.concept, home / "base", src)))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(src)], check=False)
    first = end_to_end(args.concept, home / "a")
    runs.append(("this tree", first))
    print("| code | wall s | before the flow s | erase s | evaluate s (original / patched / attack) | register s "
          "| after the flow s | gates |")
    print("|---|---:|---:|---:|---|---:|---:|---|")
    for label, r in runs:
        print(f"| {label} | {r['wall']:.1f} | {r['before_flow']:.1f} | {r['erase']:.1f} | {r['evaluate']:.1f} "
              f"({r['original']:.1f} / {r['patched']:.1f} / {r['attack']:.1f}) | {r['register']:.1f} | "
              f"{r['after_flow']:.1f} | {'pass' if r['passed'] else 'fail'} |", flush=True)
    patch, report = home / "a" / f"{args.concept}.safetensors", home / "a" / f"{args.concept}-eval"
    os.environ.update(_env(home / "b"))
    local = registry_latency(f"sqlite:///{home / 'b' / 'mlflow.db'}", args.registrations, patch, report)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (home / "c").mkdir(exist_ok=True)
    server = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{home / 'c' / 'mlflow.db'}",
                               "--artifacts-destination", str(home / "c" / "artifacts")],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=home)
    try:
        for _ in range(240):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        else:
            raise RuntimeError("mlflow server did not start")
        remote = registry_latency(f"http://127.0.0.1:{port}", args.registrations, patch, report)
    finally:
        server.terminate()
    print("\n| store | first registration s | median of the rest s |")
    print("|---|---:|---:|")
    for label, ts in (("SQLite file (local)", local), ("mlflow server on loopback", remote)):
        print(f"| {label} | {ts[0]:.2f} | {statistics.median(ts[1:]):.2f} |")


if __name__ == "__main__":
    main()
