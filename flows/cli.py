"""``editflow policy run|serve|plan``: safety policies through Prefect (entry point ``editflow.cli``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from editflow.cli.common import DeviceOpt, DtypeOpt, cli_errors, dtype_name, placement
from editflow.errors import EditflowError
from registry.cli import UriOpt

app = typer.Typer(help="Safety policies: erase what a policy names, on demand or on a schedule.",
                  no_args_is_help=True)
PolicyArg = Annotated[Path, typer.Argument(help="Policy file (configs/policies/*.yaml).")]


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="policy")


@app.command("plan")
@cli_errors
def plan_cmd(policy: PolicyArg, tracking_uri: UriOpt = None):
    """What a run would do: the champion, what it covers, what is missing."""
    from flows.policy import Policy, plan

    typer.echo(json.dumps(plan(Policy.load(policy), tracking_uri), indent=2))


@app.command("run")
@cli_errors
def run_cmd(policy: PolicyArg, tracking_uri: UriOpt = None,
            dask_address: Annotated[str | None, typer.Option(
                help="Spread the evaluation's generation over this Dask scheduler (tcp://host:8786).")] = None,
            device: DeviceOpt = None, dtype: DtypeOpt = None):
    """Run the policy now (Prefect flow): erase what the champion misses, gate, register a candidate.

    --device / --dtype win over the policy's `device` / `dtype` keys. Exit 3 when the new patch fails a
    gate (its run is logged, no version is made).
    """
    from flows.erase import local_defaults
    from flows.policy import Policy, policy_flow

    loaded = Policy.load(policy)  # validate before starting Prefect
    device, dtype = device or loaded.device, dtype_name(dtype) or loaded.dtype
    if not dask_address:  # on Dask, the workers resolve the device; here, a missing one fails now
        placement(device, dtype)
    with local_defaults():
        result = policy_flow(str(policy), tracking_uri, dask_address=dask_address, device=device, dtype=dtype)
    typer.echo(json.dumps(result, indent=2, default=str))
    if result["result"] is not None and not result["result"]["passed"]:
        raise typer.Exit(3)


@app.command("serve")
@cli_errors
def serve_cmd(policy: list[Path] = typer.Argument(..., help="Policy files to serve.")):
    """Serve policies on their cron schedules against a Prefect server (blocks; Ctrl-C or SIGTERM stops).

    Needs a real server: `prefect server start`, then PREFECT_API_URL=http://127.0.0.1:4200/api.
    """
    from flows.policy import deployment

    if not os.environ.get("PREFECT_API_URL"):
        raise EditflowError("policy serve needs a Prefect server: run `prefect server start` and set "
                            "PREFECT_API_URL=http://127.0.0.1:4200/api")
    serve(*[deployment(str(p)) for p in policy])


def serve(*deployments) -> None:
    """``prefect.serve`` that also stops on SIGTERM (``docker stop``, systemd, Kubernetes).

    Prefect's runner handles SIGTERM by calling its sync ``stop()`` from inside its own event loop,
    where it only creates a coroutine that is never awaited, and the process hangs until SIGKILL.
    Here SIGTERM schedules the async stop on the loop instead: the poller stops, in-flight runs are
    cancelled, schedules are paused (as on Ctrl-C) and the command returns.
    """
    import asyncio

    from prefect.runner import Runner

    class _Runner(Runner):
        def handle_sigterm(self, *args) -> None:
            self._logger.info("SIGTERM received, shutting down...")
            if not self.started or self._loop is None:  # not polling yet: leave as Ctrl-C would
                raise KeyboardInterrupt
            self._loop.call_soon_threadsafe(lambda: setattr(self, "_stop_task", asyncio.ensure_future(self.astop())))

    runner = _Runner(pause_on_shutdown=True)
    for d in deployments:
        runner.add_deployment(d)
        typer.echo(f"serving {d.name} ({d.schedules[0].schedule.cron})" if d.schedules else f"serving {d.name}")
    try:
        asyncio.run(runner.start())
    except KeyboardInterrupt:
        pass
    typer.echo("stopped")
