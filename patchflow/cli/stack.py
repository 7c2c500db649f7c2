"""The embedded stack and the long-running processes: ``patchflow worker``, ``dev``, ``demo`` and ``api``."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from temporalio.service import RPCError

from patchflow.cli.common import (
    err,
    history_database,
    out,
    run_sync,
    run_until_interrupted,
    serve_until_stopped,
    shipped_file,
    terminate_like_interrupt,
)
from patchflow.cli.fleet import simulated_executor
from patchflow.cli.waves import approval_hint, print_status, stage_table
from patchflow.config import Settings, get_settings
from patchflow.control.connection import TemporalSettingsError
from patchflow.core.plans import Plan, load_plan
from patchflow.errors import InputError, PatchflowError


def worker_command() -> None:
    """Run a worker against PATCHFLOW_TEMPORAL_ADDRESS (production: run several, on one task queue)."""
    from patchflow.control.connection import connect
    from patchflow.service.worker import build_worker

    terminate_like_interrupt()
    settings = get_settings()

    from patchflow.metrics import serve_worker_metrics

    serve_worker_metrics(settings)  # the SDK runtime must exist before the first client

    async def go() -> None:
        database_url = await _worker_history_database(settings)

        async def start() -> Any:
            client = await connect(settings)
            return build_worker(
                client,
                settings.task_queue,
                database_url=database_url,
                settings=settings,
                graceful_shutdown=timedelta(seconds=settings.worker_shutdown_grace_seconds),
            )

        await serve_through_outages(settings, start)

    with contextlib.suppress(KeyboardInterrupt):
        run_sync(go())


async def _worker_history_database(settings: Settings, timeout: float = 30.0) -> str:
    """The worker's history database URL — also when the database is down or hangs: the worker starts anyway
    and says so (log, stderr, ``patchflow_history_database_up 0``); waves record their history through their
    outbox once it answers. A malformed URL still stops the worker (that is configuration, not an outage)."""
    import logging

    from patchflow.metrics import DEFAULT_METRICS
    from patchflow.store.db import DatabaseError, display_url

    url = settings.database_url_resolved
    try:
        url = await asyncio.wait_for(asyncio.to_thread(history_database, settings), timeout)
    except (DatabaseError, TimeoutError) as exc:
        DEFAULT_METRICS.history_database(reachable=False, write=False)
        reason = str(exc) or f"no answer within {timeout:.0f} s"
        message = (
            f"the history database at {display_url(url)} is unavailable ({reason}); the worker starts without "
            "it and waves record their history when it answers again"
        )
        logging.getLogger("patchflow.worker").warning(message)
        err.print(f"[yellow]warning:[/yellow] {message}", markup=True, highlight=False)
        return url
    DEFAULT_METRICS.history_database(reachable=True, write=False)
    return url


OUTAGE_BACKOFF_SECONDS = (1.0, 30.0)
"""First and longest wait between attempts to reach Temporal (doubling in between)."""


async def serve_through_outages(settings: Settings, start: Callable[[], Awaitable[Any]]) -> None:
    """Run the worker ``start`` builds until SIGINT/SIGTERM, through Temporal outages.

    A Temporal frontend that cannot be reached — at start-up, or later, when the worker fails on it — is an
    outage, not a bug: the worker says so, waits (1 s doubling to 30 s; back to 1 s once it ran a minute) and
    tries again, for as long as it takes. Ctrl-C or SIGTERM stop it at any point. TLS settings that cannot
    work (:class:`~patchflow.control.connection.TemporalSettingsError`) stop it at once.
    """
    first, longest = OUTAGE_BACKOFF_SECONDS
    delay = first
    while True:
        began = time.monotonic()
        try:
            worker = await start()
            err.print(
                f"worker polling task queue {settings.task_queue!r} at {settings.temporal_address}; Ctrl-C stops"
            )
            await serve_until_stopped(worker)
            return
        except TemporalSettingsError:
            raise  # configuration, not an outage: waiting will not fix a missing certificate file
        except (PatchflowError, RuntimeError, RPCError) as exc:
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            _stop_on_signals_again()
        if time.monotonic() - began > 60:
            delay = first
        err.print(
            f"Temporal at {settings.temporal_address} is not available; retrying in {delay:.0f}s ({reason})",
            soft_wrap=True,
        )
        await asyncio.sleep(delay)
        delay = min(delay * 2, longest)


def _stop_on_signals_again() -> None:
    """After a failed run, SIGINT/SIGTERM interrupt the wait again (the run's own handlers are gone with it)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.remove_signal_handler(sig)
    terminate_like_interrupt()


EXAMPLE_FLEET = shipped_file("examples", "fleet.yaml")
FAKE_AWS_BUCKET = "patchflow-demo"


@contextlib.contextmanager
def _fake_aws(fleet_file: Path | None = None, *, ssh_inventory: Path | None = None) -> Any:
    """Start patchflow's local FAKE SSM endpoint (a test fixture and demo backend) serving the simulated
    instances of ``fleet_file`` (nothing is patched) or the real hosts of ``ssh_inventory`` (the lab: commands
    run on them), and point this process's SSM settings and AWS credentials at it."""
    import os

    from patchflow.executors.simulated.fleet import load_fleet
    from patchflow.executors.ssh import load_inventory
    from patchflow.testing.ssm_endpoint import SsmEndpoint, Timings

    endpoint = SsmEndpoint(timings=Timings(not_found_seconds=0.3, pending_seconds=0.2, run_seconds=1.0))
    with endpoint:
        endpoint.client("s3").create_bucket(Bucket=FAKE_AWS_BUCKET)
        exports = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "PATCHFLOW_SSM_ENDPOINT_URL": endpoint.url,
            "PATCHFLOW_SSM_REGION": endpoint.region,
            "PATCHFLOW_SSM_BUCKET": FAKE_AWS_BUCKET,
        }
        what = f"no instances) at {endpoint.url}"
        if fleet_file is not None:
            count = len(endpoint.register_fleet(load_fleet(fleet_file)))
            what = f"a simulation: nothing is patched) at {endpoint.url} with {count} instance(s)"
        if ssh_inventory is not None:
            try:
                real = endpoint.register_ssh_inventory(load_inventory(ssh_inventory))
            except ValueError as exc:
                raise InputError(f"{ssh_inventory}: {exc}") from exc
            what = f"managed instances backed by real hosts over SSH) at {endpoint.url}: " + ", ".join(
                f"{instance_id} = {host}" for host, instance_id in real.items()
            )
            # Real commands take seconds, not the simulation's fractions: poll them often enough to follow.
            exports |= {"PATCHFLOW_SSM_POLL_INITIAL_SECONDS": "0.5", "PATCHFLOW_SSM_POLL_MAX_SECONDS": "2"}
        os.environ.update(exports)
        err.print(f"fake AWS (SSM/EC2/S3, {what}", soft_wrap=True)
        err.print("  other terminals: export " + " ".join(f"{k}={v}" for k, v in exports.items()))
        yield endpoint


def dev_command(
    ui_port: Annotated[int, typer.Option("--ui-port", help="Temporal Web UI port.")] = 8233,
    fake_aws: Annotated[
        bool, typer.Option("--fake-aws", help="Also serve a local fake SSM endpoint with the example fleet.")
    ] = False,
) -> None:
    """The embedded single-machine stack: Temporal dev server (persisted under the data directory), a worker and the REST API."""
    from patchflow.control.connection import connect
    from patchflow.control.devserver import start_dev_server
    from patchflow.service.worker import build_worker

    terminate_like_interrupt()
    stack = contextlib.ExitStack()
    if fake_aws:
        stack.enter_context(_fake_aws(EXAMPLE_FLEET))
    settings = get_settings()
    stack.callback(err.print, "stopped")
    try:
        server = start_dev_server(settings.temporal_address, settings.data_dir, ui_port=ui_port)
    except BaseException:
        stack.close()
        raise
    stack.callback(server.stop)
    err.print(
        f"Temporal dev server on {settings.temporal_address} (UI http://127.0.0.1:{ui_port}), "
        f"state in {settings.data_dir}; Ctrl-C stops everything"
    )
    err.print(
        f"web console: http://{settings.api_host}:{settings.api_port}/ui (sign in with 'patchflow token create')"
    )

    from patchflow.metrics import serve_worker_metrics

    serve_worker_metrics(settings)

    async def go() -> None:
        from patchflow.service.api import serve as serve_api

        client = await connect(settings, attempts=20)
        worker = build_worker(
            client,
            settings.task_queue,
            database_url=history_database(settings, migrate=True),
            settings=settings,
        )
        await serve_until_stopped(worker, serve_api(settings, announce=err.print, handle_signals=False))

    with stack, contextlib.suppress(KeyboardInterrupt):
        run_sync(go())


DEMO_PLAN = shipped_file("examples", "demo-plan.yaml")
DEMO_SSM_PLAN = DEMO_PLAN.with_name("demo-plan-ssm.yaml")


def demo_command(
    approve: Annotated[
        bool, typer.Option("--approve", help="Answer the Prod approval gate automatically.")
    ] = False,
    plan_file: Annotated[Path | None, typer.Option("--plan", help="The plan to run.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Give up after this many seconds.")] = 600,
    fake_aws: Annotated[
        bool,
        typer.Option(
            "--fake-aws",
            help="Drive the wave through the SSM executor against a local fake AWS (with --lab: the fake "
            "endpoint serves the lab's real hosts as managed instances).",
        ),
    ] = False,
    lab: Annotated[
        bool,
        typer.Option(
            "--lab",
            help="Patch the lab fleet: real Debian hosts, over SSH or with --fake-aws through SSM "
            "(`patchflow lab`; needs root).",
        ),
    ] = False,
) -> None:
    """Run a complete wave Dev → Test → Prod on the example fleet, on the embedded stack."""
    if lab and fake_aws:
        from patchflow.cli.lab import demo_lab, lab_inventory

        executor = {"kind": "ssm", "bucket": FAKE_AWS_BUCKET, "reboot_option": "RebootIfNeeded"}
        with (
            demo_lab(executor, analysis=plan_file is None) as lab_plan,
            _fake_aws(ssh_inventory=lab_inventory()),
        ):
            _demo(approve, plan_file or lab_plan, timeout)
    elif lab:
        from patchflow.cli.lab import demo_lab

        with demo_lab(analysis=plan_file is None) as lab_plan:
            _demo(approve, plan_file or lab_plan, timeout)
    elif fake_aws:
        with _fake_aws(EXAMPLE_FLEET):
            _demo(approve, plan_file or DEMO_SSM_PLAN, timeout)
    else:
        _demo(approve, plan_file or DEMO_PLAN, timeout)


@contextlib.asynccontextmanager
async def _demo_api(settings: Settings, database_url: str) -> AsyncIterator[None]:
    """Serve the REST API (with /metrics) while the demo runs, with a viewer token to look with; the token is
    revoked when the demo ends, so runs do not pile up live tokens."""
    from patchflow.control.devserver import port_open
    from patchflow.service.api import serve as serve_api
    from patchflow.store import db

    if port_open(settings.api_host, settings.api_port):
        err.print(f"API port {settings.api_host}:{settings.api_port} is taken; the demo runs without the API")
        yield
        return
    engine = db.get_engine(database_url)
    with db.open_session(engine) as session:
        for earlier in db.list_tokens(session, include_revoked=False):
            if earlier.name == "demo-viewer":  # one active token per name: an interrupted demo's goes
                db.revoke_token(session, token_id=earlier.id)
        token_id, token = db.create_token(session, name="demo-viewer", role="viewer")
    base = f"http://{settings.api_host}:{settings.api_port}"
    err.print(f"watch it: curl -H 'Authorization: Bearer {token}' {base}/waves   (and {base}/metrics)")
    err.print(
        f"or in a browser: {base}/ui/login#token={token}   (the web console, as demo-viewer)", soft_wrap=True
    )
    _quiet_uvicorn()
    task = asyncio.create_task(serve_api(settings, announce=err.print, handle_signals=False))
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        with db.open_session(engine) as session:
            db.revoke_token(session, token_id=token_id)


def _quiet_uvicorn() -> None:
    """Keep uvicorn's INFO lines ("Started server process …") out of the demo's live table; warnings and
    errors still show."""
    import logging

    class _WarningsOnly(logging.Filter):
        def filter(self, record: logging.LogRecord) -> bool:
            return record.levelno >= logging.WARNING

    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _WarningsOnly) for f in logger.filters):
        logger.addFilter(_WarningsOnly())


def _demo(approve: bool, plan_file: Path, timeout: float) -> None:
    from patchflow.control.connection import connect
    from patchflow.control.devserver import port_open, split_address, start_dev_server
    from patchflow.service.worker import build_worker

    terminate_like_interrupt()
    settings = get_settings()
    plan = load_plan(plan_file)
    server = None
    host, port = split_address(settings.temporal_address)
    if not port_open(host, port):
        err.print(f"starting the embedded Temporal dev server on {settings.temporal_address} …")
        server = start_dev_server(settings.temporal_address, settings.data_dir, ui=False)
    if plan.executor.kind == "simulated":
        simulated_executor(plan.executor.fleet).reset()  # type: ignore[arg-type]

    async def go() -> dict[str, Any]:
        client = await connect(settings, attempts=20)
        database_url = history_database(settings, migrate=True)
        worker = build_worker(client, settings.task_queue, database_url=database_url, settings=settings)
        worker_task = asyncio.create_task(worker.run())
        try:
            async with _demo_api(settings, database_url):
                return await _run_demo_wave(client, settings, plan, approve, timeout)
        finally:
            worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker.shutdown()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker_task

    try:
        status = run_until_interrupted(go())
    except KeyboardInterrupt:
        status = None
    finally:
        if server is not None:
            server.stop()
    if status is None:
        what = "its worker, API and Temporal dev server" if server is not None else "its worker and API"
        err.print(f"interrupted: the demo stopped {what}")
        raise typer.Exit(130)
    _print_summary(status)


async def _run_demo_wave(
    client: Any, settings: Settings, plan: Plan, approve: bool, timeout: float
) -> dict[str, Any]:
    """Pin, start and follow the demo wave with a live table (approving the gate with ``--approve``)."""
    from patchflow.control.waves import pin_patch_set, start_wave, status_json, wave_input, wave_status

    pinned = pin_patch_set(plan, settings)
    inp = wave_input(plan, settings, pinned)
    await start_wave(client, settings, inp)
    err.print(f"wave {inp.wave_id}: patch set {pinned.id} ({len(pinned.patches)} package versions)")
    deadline = time.monotonic() + timeout
    answered: set[str] = set()
    # Transient: the final summary prints the table once, the live view only animates it.
    with Live(console=out, refresh_per_second=4, transient=True) as live:
        while True:
            try:
                status = status_json(await wave_status(client, inp.wave_id))
            except PatchflowError:
                # The demo's own worker is starting or busy: ask again, until the deadline.
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
                continue
            live.update(stage_table(status))
            if status["state"] in ("succeeded", "failed", "cancelled", "halted"):
                return status
            if status["state"] == "waiting_approval":
                await _answer_gate(client, plan, inp.wave_id, status, approve, answered, live.console)
            if time.monotonic() > deadline:
                raise PatchflowError(f"the demo wave did not finish within {timeout:.0f}s")
            await asyncio.sleep(0.25)


async def _answer_gate(
    client: Any,
    plan: Plan,
    wave_id: str,
    status: dict[str, Any],
    approve: bool,
    answered: set[str],
    console: Any,
) -> None:
    """Approve the waiting stage as its first approver (``--approve``), or say once how to."""
    from patchflow.control.waves import act

    stage = next(s for s in status["stages"] if s["state"] == "waiting_approval")
    if stage["name"] in answered:
        return
    answered.add(stage["name"])
    gate = next(s for s in plan.stages if s.name == stage["name"]).gate
    # An approval gate, or an analysis whose inconclusive result an approver decides.
    approvers = list(gate.approvers or (gate.analysis.approvers if gate.analysis else []))
    if approve:
        message = await act(
            client, wave_id, "approve", who=approvers[0], stage=stage["name"], comment="demo --approve"
        )
        console.print(message)
    else:
        console.print(approval_hint(wave_id, stage["name"], approvers))


def _print_summary(status: dict[str, Any]) -> None:
    print_status(status)
    failures = [
        f"{s['name']}: {i['id']} {i['state']}" + (f" ({i['detail']})" if i.get("detail") else "")
        for s in status["stages"]
        for i in s["instances"]
        if i["state"] not in ("succeeded",)
    ]
    for line in failures:
        out.print(f"  {line}")
    out.print(f"wave {status['state']} at {datetime.now(UTC).isoformat(timespec='seconds')}")
    if status["state"] != "succeeded":
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------- ssm


def api_command(
    host: Annotated[
        str | None, typer.Option("--host", help="Listen address (default PATCHFLOW_API_HOST: 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None,
        typer.Option("--port", min=0, max=65535, help="Port (default PATCHFLOW_API_PORT: 8000)."),
    ] = None,
) -> None:
    """Serve the REST API and /metrics against PATCHFLOW_TEMPORAL_ADDRESS and the history database."""
    from patchflow.service.api import run_api

    settings = get_settings()
    overrides = {k: v for k, v in {"api_host": host, "api_port": port}.items() if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    run_api(settings, announce=err.print)
