"""CLI commands that operate the rollout engine: plan dry runs, waves, the simulated fleet, windows, and the
embedded stack (``worker``, ``dev``, ``demo``). Registered on the main app by :mod:`patchflow.cli`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from patchflow import versions
from patchflow.config import Settings, get_settings
from patchflow.errors import InputError, PatchflowError
from patchflow.plans import Plan, load_plan
from patchflow.timeutil import parse_instant

wave_app = typer.Typer(help="Start and operate staged rollouts (waves).", no_args_is_help=True)
fleet_app = typer.Typer(help="The simulated fleet (demos and scale tests).", no_args_is_help=True)
window_app = typer.Typer(help="Maintenance-window schedules.", no_args_is_help=True)

out = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, width=None if sys.stderr.isatty() else 200)


class Fmt(StrEnum):
    table = "table"
    json = "json"


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _client(settings: Settings) -> Any:
    from patchflow.worker import connect

    return await connect(settings.temporal_address)


# ---------------------------------------------------------------------------------------------- plan


def plan_command(
    plan_file: Annotated[
        Path, typer.Argument(metavar="PLAN", help="Rollout plan (YAML).", show_default=False)
    ],
    fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table,
    at: Annotated[
        str, typer.Option("--at", help="Evaluate the baseline and windows as of this time.")
    ] = "now",
) -> None:
    """Dry run: per stage the resolved targets, the windows it will use, and each instance's patches."""
    try:
        moment = parse_instant(at, allow_now=True)
    except ValueError as exc:
        raise InputError(f"--at: {exc}") from None
    result = _run(dry_run(load_plan(plan_file), get_settings(), moment))
    if fmt is Fmt.json:
        _emit_json(result)
        if result["problems"]:
            raise typer.Exit(1)
        return
    out.print(
        f"plan [bold]{result['plan']}[/]: patch set {result['patch_set_id']} ({result['patch_set_size']} package versions)"
    )
    for freeze in result["freezes"]:
        out.print(f"change freeze [yellow]{freeze['name']}[/]: {freeze['start']} → {freeze['end']}")
    for stage in result["stages"]:
        out.print(
            f"\n[bold]{stage['name']}[/]: {len(stage['targets'])} target(s), max_concurrency {stage['max_concurrency']}, "
            f"max_errors {stage['max_errors']}, gate {stage['gate']}, on_failure {stage['on_failure']}, soak {stage['soak_seconds']}s"
        )
        for window in stage["windows"]:
            for skipped in window["skipped"]:
                out.print(
                    f"  [yellow]skipped[/] window {skipped['start']}: inside change freeze {skipped['freeze']}"
                )
            if window["start"] == "now":
                cut = f" until {window['cutoff']} ({window['note']})" if window["cutoff"] else ""
                out.print(f"  window: now (starts as soon as the gate passes){cut}")
            else:
                note = f" [yellow]{window['note']}[/]" if window["note"] and not window["skipped"] else ""
                out.print(
                    f"  window {window['start']} → {window['end']} (no new starts after {window['cutoff']}){note}"
                )
        for problem in stage["problems"]:
            out.print(f"  [red]problem[/]: {problem}")
        table = Table(show_header=True)
        for column in ("instance", "online", "upgrades"):
            table.add_column(column, overflow="fold")
        for target in stage["targets"]:
            upgrades = (
                ", ".join(f"{u['name']} {u['from']} → {u['to']}" for u in target["upgrades"])
                or "(nothing to do)"
            )
            table.add_row(target["id"], "yes" if target["online"] else "[red]no[/]", upgrades)
        out.print(table)
    if result["problems"]:
        raise typer.Exit(1)


async def dry_run(plan: Plan, settings: Settings, at: datetime) -> dict[str, Any]:
    from activities.patching import build_executor
    from patchflow.baselines import load_baseline
    from patchflow.catalog import load_catalog
    from patchflow.evaluation import evaluate
    from patchflow.executors.base import Package
    from patchflow.freezes import first_allowed_window, freeze_at, freeze_note
    from patchflow.freezes import preview as freeze_preview
    from patchflow.waves import executor_ref, plan_freezes

    # A dry run evaluates but stores nothing and changes nothing.
    freezes = plan_freezes(plan, settings, at)
    baseline = load_baseline(plan.baseline)
    pinned = evaluate(baseline, load_catalog(plan.catalog), at, catalog_source=str(plan.catalog)).patch_set
    family = pinned.family
    pins = {(p.name, p.arch): p.version for p in pinned.patches}
    executor = build_executor(executor_ref(plan, settings))
    instances = {i.instance_id: i for i in await executor.discover()}
    stages = []
    all_problems: list[tuple[str, list[str]]] = []
    for stage in plan.stages:
        if stage.targets.instance_ids:
            ids = [i for i in stage.targets.instance_ids if i in instances]
            missing = [i for i in stage.targets.instance_ids if i not in instances]
        else:
            ids = sorted(i for i, info in instances.items() if info.patch_group == stage.targets.patch_group)
            missing = []
        targets = []
        for instance_id in ids:
            installed: list[Package] = await executor.scan(instance_id)
            upgrades = [
                {"name": p.name, "arch": p.arch, "from": p.version, "to": pins[(p.name, p.arch)]}
                for p in installed
                if (p.name, p.arch) in pins
                and versions.compare(family, p.version, pins[(p.name, p.arch)]) < 0
            ]
            targets.append({"id": instance_id, "online": instances[instance_id].online, "upgrades": upgrades})
        problems: list[str] = []
        windows: list[dict[str, Any]]
        if stage.window.schedule.strip().lower() == "now" and freeze_at(freezes, at) is None:
            upcoming = first_allowed_window(stage.window, at, freezes)
            cut = upcoming.cutoff if upcoming is not None else None
            windows = [
                {
                    "start": "now",
                    "end": None,
                    "cutoff": cut.isoformat() if cut else None,
                    "skipped": [],
                    "note": freeze_note(upcoming) if upcoming is not None else "",
                }
            ]
        else:
            windows = [
                {
                    "start": w.start.astimezone(zone).isoformat(),
                    "end": w.end.astimezone(zone).isoformat() if w.end else None,
                    "cutoff": w.cutoff.astimezone(zone).isoformat() if w.cutoff else None,
                    "skipped": [
                        {"start": start.astimezone(zone).isoformat(), "freeze": name}
                        for start, name in w.skipped
                    ],
                    "note": freeze_note(w),
                }
                for zone in [ZoneInfo(stage.window.timezone)]
                for w in freeze_preview(stage.window, at, 3, freezes)
            ]
            if not windows:
                problems.append(
                    f"the window schedule {stage.window.schedule} never opens after {at.isoformat()}"
                    + (" outside the change freezes" if freezes else "")
                )
        if not targets and not missing:
            what = (
                f"patch group {stage.targets.patch_group!r}"
                if stage.targets.patch_group
                else "its instance ids"
            )
            problems.append(f"no targets: {what} matched no instance (the wave would halt here)")
        if missing:
            problems.append(f"unknown instance ids: {', '.join(missing)}")
        all_problems.append((stage.name, problems))
        stages.append(
            {
                "name": stage.name,
                "targets": targets,
                "missing": missing,
                "windows": windows,
                "max_concurrency": str(stage.max_concurrency),
                "max_errors": str(stage.max_errors),
                "gate": stage.gate.kind,
                "approvers": list(stage.gate.approvers),
                "on_failure": stage.on_failure,
                "soak_seconds": stage.soak_seconds,
                "problems": problems,
            }
        )
    return {
        "plan": plan.name,
        "patch_set_id": pinned.id,
        "patch_set_size": len(pinned.patches),
        "evaluated_at": at.isoformat(),
        "stages": stages,
        "freezes": [
            {"name": f.name, "start": f.start.isoformat(), "end": f.end.isoformat()}
            for f in freezes
            if f.end > at
        ][:10],
        "problems": [f"{name}: {p}" for name, found in all_problems for p in found],
    }


# ---------------------------------------------------------------------------------------------- waves


@wave_app.command("start")
def wave_start(
    plan_file: Annotated[Path, typer.Argument(metavar="PLAN", help="Rollout plan.", show_default=False)],
    patch_set: Annotated[
        str | None,
        typer.Option("--patch-set", help="Install this pinned set (id or file) instead of evaluating."),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Return once the wave finished, halted or waits at a gate.")
    ] = False,
    fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table,
) -> None:
    """Pin the patch set and start a wave; prints the wave id."""
    from patchflow.waves import pin_patch_set, start_wave, status_json, wave_input

    settings = get_settings()
    plan = load_plan(plan_file)
    pinned = pin_patch_set(plan, settings, patch_set=patch_set)
    inp = wave_input(plan, settings, pinned)

    async def go() -> dict[str, Any] | None:
        client = await _client(settings)
        await start_wave(client, settings, inp)
        # Say the id before waiting: whatever happens next, the operator can find the wave.
        err.print(f"started wave {inp.wave_id} (patch set {pinned.id})")
        if not wait:
            return None
        return status_json(await _wait_settled(client, inp.wave_id, progress=True))

    try:
        status = _run(go())
    except KeyboardInterrupt:
        err.print(f"interrupted; wave {inp.wave_id} keeps running: patchflow wave status {inp.wave_id}")
        raise typer.Exit(130) from None
    if fmt is Fmt.json:
        _emit_json(status if status is not None else {"wave_id": inp.wave_id, "patch_set_id": pinned.id})
    else:
        out.print(inp.wave_id)
        if status is not None:
            _print_status(status)
    if status is not None and status["state"] not in ("succeeded", "waiting_approval"):
        raise typer.Exit(1)


async def _wait_settled(
    client: Any,
    wave_id: str,
    timeout: float | None = None,
    progress: bool = False,
    until: Callable[[Any], bool] | None = None,
) -> Any:
    """Poll the wave until it settles (finished, halted, at a gate) or ``until(status)`` holds."""
    from patchflow.waves import is_settled, wave_status

    deadline = None if timeout is None else time.monotonic() + timeout
    failures = 0
    last = ""
    while True:
        try:
            status = await wave_status(client, wave_id)
        except PatchflowError as exc:
            failures += 1
            if failures >= 40:  # ~20 s without an answer: say so instead of waiting forever
                raise PatchflowError(f"stopped waiting for wave {wave_id}: {exc}") from None
        else:
            failures = 0
            if is_settled(status) or (until is not None and until(status)):
                return status
            summary = ", ".join(f"{s.name} {s.state}" for s in status.stages)
            if progress and summary != last:
                err.print(f"  {status.state}: {summary}")
                last = summary
        if deadline is not None and time.monotonic() > deadline:
            raise PatchflowError(
                f"wave {wave_id} did not settle within {timeout:.0f}s; it keeps running: "
                f"patchflow wave status {wave_id}"
            )
        await asyncio.sleep(0.5)


@wave_app.command("status")
def wave_status_cmd(
    wave_id: Annotated[str, typer.Argument(metavar="ID", help="Wave id.", show_default=False)],
    fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table,
) -> None:
    """A wave's state, per stage and per instance."""
    from patchflow.waves import status_json, wave_status

    async def go() -> dict[str, Any]:
        return status_json(await wave_status(await _client(get_settings()), wave_id))

    status = _run(go())
    if fmt is Fmt.json:
        _emit_json(status)
    else:
        _print_status(status)


def _print_status(status: dict[str, Any]) -> None:
    out.print(
        f"wave [bold]{status['wave_id']}[/] ({status['plan']}): [bold]{status['state']}[/]  patch set {status['patch_set_id']}"
    )
    if status.get("reason"):
        out.print(f"  {status['reason']}")
    out.print(_stage_table(status))


_COUNT_COLUMNS = ("pending", "in_flight", "succeeded", "failed", "not_attempted", "rolled_back")


def _stage_table(status: dict[str, Any]) -> Table:
    table = Table()
    table.add_column("stage")
    table.add_column("state")
    for column in _COUNT_COLUMNS:
        table.add_column(column.replace("_", " "), justify="right")
    table.add_column("errors / budget", justify="right")
    table.add_column("note", overflow="fold")
    for stage in status["stages"]:
        counts = Counter(i["state"] for i in stage["instances"])
        budget = "" if stage["max_errors"] is None else f"{stage['errors']} / {stage['max_errors']}"
        table.add_row(
            stage["name"],
            stage["state"],
            *(str(counts.get(c, 0)) for c in _COUNT_COLUMNS),
            budget,
            stage["note"],
        )
    return table


@wave_app.command("list")
def wave_list(fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table) -> None:
    """Recent waves."""
    from patchflow.waves import list_waves

    async def go() -> list[dict[str, Any]]:
        return await list_waves(await _client(get_settings()))

    rows = _run(go())
    if fmt is Fmt.json:
        _emit_json(rows)
        return
    table = Table()
    for column in ("wave", "plan", "state", "started"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["wave_id"],
            row.get("plan") or "",
            row["state"] or row["workflow_status"] or "",
            row["started"] or "",
        )
    out.print(table)


def _action(action: str, wave_id: str, who: str | None, stage: str | None, comment: str) -> None:
    from patchflow.waves import act, local_user

    settings = get_settings()
    actor = local_user() if who is None else who

    async def go() -> str:
        return await act(await _client(settings), wave_id, action, who=actor, stage=stage, comment=comment)

    out.print(_run(go()))
    if action in ("approve", "reject") and stage:
        _remember_decision(settings, wave_id, stage, actor, action, comment)


def _remember_decision(
    settings: Settings, wave_id: str, stage: str, who: str, action: str, comment: str
) -> None:
    """Keep the gate decision (who, when, how: cli) in the history database; best effort, the wave has it."""
    from patchflow import db

    try:
        url = settings.database_url_resolved
        with db.translate_errors(url), db.open_session(db.get_engine(url)) as session:
            db.record_decision(
                session,
                wave_id=wave_id,
                stage=stage,
                who=who,
                decision=action,
                via="cli",
                at=datetime.now(UTC),
                comment=comment,
            )
    except Exception as exc:  # noqa: BLE001 - the decision is already in the wave; history is a copy
        err.print(f"note: the decision was applied but not recorded in the history database ({exc})")


AsOpt = Annotated[str | None, typer.Option("--as", help="Who acts (default: the local user).")]
CommentOpt = Annotated[str, typer.Option("--comment", "-m", help="Why (kept in the wave's audit log).")]
IdArg = Annotated[str, typer.Argument(metavar="ID", help="Wave id.", show_default=False)]


@wave_app.command("approve")
def wave_approve(
    wave_id: IdArg,
    stage: Annotated[
        str, typer.Option("--stage", help="The stage whose gate you answer.", show_default=False)
    ],
    who: AsOpt = None,
    comment: CommentOpt = "",
) -> None:
    """Approve promotion into a stage (refused unless you are one of its approvers)."""
    _action("approve", wave_id, who, stage, comment)


@wave_app.command("reject")
def wave_reject(
    wave_id: IdArg,
    stage: Annotated[
        str, typer.Option("--stage", help="The stage whose gate you answer.", show_default=False)
    ],
    who: AsOpt = None,
    comment: CommentOpt = "",
) -> None:
    """Reject promotion into a stage: the wave ends failed."""
    _action("reject", wave_id, who, stage, comment)


@wave_app.command("halt")
def wave_halt(wave_id: IdArg, who: AsOpt = None, comment: CommentOpt = "") -> None:
    """Stop dispatching (in-flight instances finish) and wait for resume, rollback or cancel."""
    _action("halt", wave_id, who, None, comment)


@wave_app.command("resume")
def wave_resume(wave_id: IdArg, who: AsOpt = None, comment: CommentOpt = "") -> None:
    """Continue a halted wave: not-attempted and rolled-back instances are dispatched with a fresh error budget."""
    _action("resume", wave_id, who, None, comment)


@wave_app.command("cancel")
def wave_cancel(wave_id: IdArg, who: AsOpt = None, comment: CommentOpt = "") -> None:
    """End the wave: nothing new starts; in-flight instances finish."""
    _action("cancel", wave_id, who, None, comment)


@wave_app.command("rollback")
def wave_rollback(wave_id: IdArg, who: AsOpt = None, comment: CommentOpt = "") -> None:
    """Restore the halted stage's patched instances to their previous versions (the wave stays halted)."""
    _action("rollback", wave_id, who, None, comment)


# ---------------------------------------------------------------------------------------------- fleet


def _simulated(fleet_file: Path) -> Any:
    from patchflow.executors.simulated import SimulatedExecutor, default_state_path
    from patchflow.fleet import load_fleet

    fleet = load_fleet(fleet_file)
    return SimulatedExecutor(fleet, default_state_path(get_settings().data_dir, fleet))


@fleet_app.command("status")
def fleet_status(
    fleet_file: Annotated[Path, typer.Argument(metavar="FLEET", help="Fleet file.", show_default=False)],
    fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table,
) -> None:
    """The simulated fleet's current state: per instance its packages and install count."""
    status = _simulated(fleet_file).status()
    if fmt is Fmt.json:
        _emit_json(status)
        return
    table = Table(title=f"simulated fleet {status['fleet']} ({status['state_path']})")
    for column in ("instance", "patch group", "installs", "restores", "packages"):
        table.add_column(column, overflow="fold")
    for inst in status["instances"]:
        packages = ", ".join(f"{p['name']} {p['version']}" for p in inst["installed"])
        table.add_row(
            inst["id"],
            inst.get("patch_group") or "",
            str(inst["install_count"]),
            str(inst["restore_count"]),
            packages,
        )
    out.print(table)


@fleet_app.command("reset")
def fleet_reset(
    fleet_file: Annotated[Path, typer.Argument(metavar="FLEET", help="Fleet file.", show_default=False)],
) -> None:
    """Put the simulated fleet back to the state its file describes."""
    executor = _simulated(fleet_file)
    executor.reset()
    out.print(f"reset {executor.status()['state_path']}")


# ---------------------------------------------------------------------------------------------- windows


@window_app.command("preview")
def window_preview(
    schedule: Annotated[
        str, typer.Argument(help="cron(...), rate(...), at(...) or now.", show_default=False)
    ],
    timezone: Annotated[str, typer.Option("--timezone", help="IANA time zone of the schedule.")] = "UTC",
    offset_days: Annotated[int, typer.Option("--offset-days", help="ScheduleOffset (cron only, 1–6).")] = 0,
    duration_hours: Annotated[int, typer.Option("--duration-hours", help="Duration (1–24).")] = 4,
    cutoff_hours: Annotated[int, typer.Option("--cutoff-hours", help="Cutoff (0–23, < duration).")] = 1,
    after: Annotated[
        str, typer.Option("--after", help="List windows starting at or after this time.")
    ] = "now",
    count: Annotated[int, typer.Option("--count", min=1, max=1000, help="How many windows.")] = 5,
    fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table,
) -> None:
    """The next windows of a schedule, like DescribeMaintenanceWindowSchedule."""
    from patchflow.windows import WindowSpec, next_windows, validate_spec

    spec = WindowSpec(
        schedule=schedule,
        timezone=timezone,
        offset_days=offset_days,
        duration_hours=duration_hours,
        cutoff_hours=cutoff_hours,
    )
    validate_spec(spec)
    try:
        start = parse_instant(after, allow_now=True)
    except ValueError as exc:
        raise InputError(f"--after: {exc}") from None
    windows = [w.to_json() for w in next_windows(spec, start, count)]
    if fmt is Fmt.json:
        _emit_json({"windows": windows})
        return
    table = Table(title=f"{schedule} ({timezone})")
    for column in ("start", "end", "cutoff"):
        table.add_column(column)
    for w in windows:
        table.add_row(w["start"], w["end"], w["cutoff"])
    out.print(table)


# ---------------------------------------------------------------------------------------------- stack


def history_database(settings: Settings, *, migrate: bool = False) -> str:
    """The history database for this worker, ready to use.

    ``patchflow dev`` and ``demo`` (``migrate=True``) and the embedded default (a SQLite file under the data
    directory) are migrated on the spot; a worker on a shared database (PostgreSQL) requires it to be at this
    patchflow's schema already — migrations are an operator's step there (``patchflow db upgrade``).
    """
    from patchflow import db

    url = settings.database_url_resolved
    if migrate or url.startswith("sqlite"):
        db.upgrade(url)
    else:
        db.require_current(url)
    return url


async def _serve_until_stopped(worker: Any, *others: Any) -> None:
    """Run the worker (and e.g. the API) until SIGINT/SIGTERM, then stop them gracefully.

    A plain cancellation would cut the worker's in-flight RPCs and print their tracebacks; instead the API is
    cancelled first and the worker shuts down as Temporal intends (in-flight activities finish or heartbeat-time
    out and are retried elsewhere).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker_task = asyncio.create_task(worker.run())
    other_tasks = [asyncio.ensure_future(o) for o in others]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({worker_task, stopper, *other_tasks}, return_when=asyncio.FIRST_COMPLETED)
    for task in other_tasks:
        task.cancel()
    for task in other_tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if not worker_task.done():
        await worker.shutdown()
    stopper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stopper
    for task in (worker_task, *other_tasks):
        if task in done and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    await worker_task


def _terminate_like_interrupt() -> None:
    """SIGTERM (systemd, Kubernetes, plain ``kill``) stops cleanly, exactly like Ctrl-C."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)


def worker_command() -> None:
    """Run a worker against PATCHFLOW_TEMPORAL_ADDRESS (production: run several, on one task queue)."""
    from patchflow.worker import build_worker, connect

    _terminate_like_interrupt()
    settings = get_settings()

    from patchflow.metrics import serve_worker_metrics

    serve_worker_metrics(settings)  # the SDK runtime must exist before the first client

    async def go() -> None:
        client = await connect(settings.temporal_address, attempts=10)
        worker = build_worker(
            client, settings.task_queue, database_url=history_database(settings), settings=settings
        )
        err.print(
            f"worker polling task queue {settings.task_queue!r} at {settings.temporal_address}; Ctrl-C stops"
        )
        await _serve_until_stopped(worker)

    with contextlib.suppress(KeyboardInterrupt):
        _run(go())


EXAMPLE_FLEET = Path(__file__).resolve().parent.parent / "baselines" / "examples" / "fleet.yaml"
FAKE_AWS_BUCKET = "patchflow-demo"


@contextlib.contextmanager
def _fake_aws(fleet_file: Path) -> Any:
    """Start patchflow's local FAKE SSM endpoint (a test fixture and demo backend, nothing is patched) serving
    ``fleet_file``, and point this process's SSM settings and AWS credentials at it."""
    import os

    from patchflow.fleet import load_fleet
    from patchflow.testing.ssm_endpoint import SsmEndpoint, Timings

    endpoint = SsmEndpoint(timings=Timings(not_found_seconds=0.3, pending_seconds=0.2, run_seconds=1.0))
    with endpoint:
        endpoint.client("s3").create_bucket(Bucket=FAKE_AWS_BUCKET)
        count = len(endpoint.register_fleet(load_fleet(fleet_file)))
        exports = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "PATCHFLOW_SSM_ENDPOINT_URL": endpoint.url,
            "PATCHFLOW_SSM_REGION": endpoint.region,
            "PATCHFLOW_SSM_BUCKET": FAKE_AWS_BUCKET,
        }
        os.environ.update(exports)
        err.print(
            f"fake AWS (SSM/EC2/S3, a simulation: nothing is patched) at {endpoint.url} with {count} instance(s)"
        )
        err.print("  other terminals: export " + " ".join(f"{k}={v}" for k, v in exports.items()))
        yield endpoint


def dev_command(
    ui_port: Annotated[int, typer.Option("--ui-port", help="Temporal Web UI port.")] = 8233,
    fake_aws: Annotated[
        bool, typer.Option("--fake-aws", help="Also serve a local fake SSM endpoint with the example fleet.")
    ] = False,
) -> None:
    """The embedded single-machine stack: Temporal dev server (persisted under the data directory), a worker and the REST API."""
    from patchflow.devserver import start_dev_server
    from patchflow.worker import build_worker, connect

    _terminate_like_interrupt()
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

    from patchflow.metrics import serve_worker_metrics

    serve_worker_metrics(settings)

    async def go() -> None:
        from patchflow.api import serve as serve_api

        client = await connect(settings.temporal_address, attempts=20)
        worker = build_worker(
            client,
            settings.task_queue,
            database_url=history_database(settings, migrate=True),
            settings=settings,
        )
        await _serve_until_stopped(worker, serve_api(settings, announce=err.print, handle_signals=False))

    with stack, contextlib.suppress(KeyboardInterrupt):
        _run(go())


DEMO_PLAN = Path(__file__).resolve().parent.parent / "baselines" / "examples" / "demo-plan.yaml"
DEMO_SSM_PLAN = DEMO_PLAN.with_name("demo-plan-ssm.yaml")


def demo_command(
    approve: Annotated[
        bool, typer.Option("--approve", help="Answer the Prod approval gate automatically.")
    ] = False,
    plan_file: Annotated[Path | None, typer.Option("--plan", help="The plan to run.")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Give up after this many seconds.")] = 600,
    fake_aws: Annotated[
        bool,
        typer.Option("--fake-aws", help="Drive the wave through the SSM executor against a local fake AWS."),
    ] = False,
) -> None:
    """Run a complete wave Dev → Test → Prod on the example fleet, on the embedded stack."""
    if fake_aws:
        with _fake_aws(EXAMPLE_FLEET):
            _demo(approve, plan_file or DEMO_SSM_PLAN, timeout)
    else:
        _demo(approve, plan_file or DEMO_PLAN, timeout)


def _demo_api(settings: Settings, database_url: str) -> asyncio.Task[None] | None:
    """Serve the REST API (with /metrics) while the demo runs, with a viewer token to look with."""
    from patchflow import db
    from patchflow.api import serve as serve_api
    from patchflow.devserver import port_open

    if port_open(settings.api_host, settings.api_port):
        err.print(f"API port {settings.api_host}:{settings.api_port} is taken; the demo runs without the API")
        return None
    with db.open_session(db.get_engine(database_url)) as session:
        _, token = db.create_token(session, name="demo-viewer", role="viewer")
    base = f"http://{settings.api_host}:{settings.api_port}"
    err.print(f"watch it: curl -H 'Authorization: Bearer {token}' {base}/waves   (and {base}/metrics)")
    return asyncio.create_task(serve_api(settings, announce=err.print, handle_signals=False))


def _demo(approve: bool, plan_file: Path, timeout: float) -> None:
    from patchflow.devserver import port_open, split_address, start_dev_server
    from patchflow.waves import act, pin_patch_set, start_wave, status_json, wave_input, wave_status
    from patchflow.worker import build_worker, connect

    _terminate_like_interrupt()
    settings = get_settings()
    plan = load_plan(plan_file)
    server = None
    host, port = split_address(settings.temporal_address)
    if not port_open(host, port):
        err.print(f"starting the embedded Temporal dev server on {settings.temporal_address} …")
        server = start_dev_server(settings.temporal_address, settings.data_dir, ui=False)
    if plan.executor.kind == "simulated":
        _simulated(plan.executor.fleet).reset()  # type: ignore[arg-type]

    async def go() -> dict[str, Any]:
        client = await connect(settings.temporal_address, attempts=20)
        database_url = history_database(settings, migrate=True)
        worker = build_worker(client, settings.task_queue, database_url=database_url, settings=settings)
        worker_task = asyncio.create_task(worker.run())
        api_task = _demo_api(settings, database_url)
        try:
            pinned = pin_patch_set(plan, settings)
            inp = wave_input(plan, settings, pinned)
            await start_wave(client, settings, inp)
            err.print(f"wave {inp.wave_id}: patch set {pinned.id} ({len(pinned.patches)} package versions)")
            deadline = time.monotonic() + timeout
            approved: set[str] = set()
            hinted = False
            # Transient: the final summary below prints the table once, the live view only animates it.
            with Live(console=out, refresh_per_second=4, transient=True) as live:
                while True:
                    status = status_json(await wave_status(client, inp.wave_id))
                    live.update(_stage_table(status))
                    if status["state"] in ("succeeded", "failed", "cancelled", "halted"):
                        return status
                    if status["state"] == "waiting_approval":
                        stage = next(s for s in status["stages"] if s["state"] == "waiting_approval")
                        approver = next(s for s in plan.stages if s.name == stage["name"]).gate.approvers[0]
                        if approve and stage["name"] not in approved:
                            message = await act(
                                client,
                                inp.wave_id,
                                "approve",
                                who=approver,
                                stage=stage["name"],
                                comment="demo --approve",
                            )
                            approved.add(stage["name"])
                            live.console.print(f"{message}")
                        elif not approve and not hinted:
                            hinted = True
                            live.console.print(
                                f"waiting for approval of {stage['name']}: run "
                                f"'patchflow wave approve {inp.wave_id} --stage {stage['name']} --as {approver}'"
                            )
                    if time.monotonic() > deadline:
                        raise PatchflowError(f"the demo wave did not finish within {timeout:.0f}s")
                    await asyncio.sleep(0.25)
        finally:
            if api_task is not None:
                api_task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await api_task
            worker_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker.shutdown()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await worker_task

    try:
        status = _run(go())
    finally:
        if server is not None:
            server.stop()
    _print_status(status)
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

ssm_app = typer.Typer(
    help="AWS Systems Manager: scan a fleet into patchflow's catalog and inventory.", no_args_is_help=True
)


class Family(StrEnum):
    deb = "deb"
    rpm = "rpm"


@ssm_app.command("collect")
def ssm_collect(
    catalog: Annotated[
        Path, typer.Option("--catalog", help="Write the catalog (JSON) here.", show_default=False)
    ],
    inventory: Annotated[
        Path, typer.Option("--inventory", help="Write the inventory (JSON) here.", show_default=False)
    ],
    family: Annotated[
        Family | None,
        typer.Option("--family", help="Keep one package family (needed when the fleet mixes deb and rpm)."),
    ] = None,
    instance: Annotated[
        list[str] | None,
        typer.Option("--instance", help="Scan only these instance ids (repeatable); default: all."),
    ] = None,
    bucket: Annotated[
        str | None, typer.Option("--bucket", help="S3 bucket (default PATCHFLOW_SSM_BUCKET).")
    ] = None,
    region: Annotated[
        str | None, typer.Option("--region", help="AWS region (default PATCHFLOW_SSM_REGION / boto3 chain).")
    ] = None,
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="SSM endpoint (a local fake, a VPC endpoint).")
    ] = None,
) -> None:
    """Scan instances (AWS-RunPatchBaseline Operation=Scan, DescribeInstancePatches, package listings) and write
    patchflow's catalog and inventory, so patchflow's baseline engine decides (``baseline evaluate|compliance``)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from patchflow.executors.ssm import SsmExecutor, make_clients

    settings = get_settings()
    try:
        ssm, s3, ec2 = make_clients(
            region=region or settings.ssm_region, endpoint_url=endpoint_url or settings.ssm_endpoint_url
        )
    except BotoCoreError as exc:
        raise InputError(
            f"cannot create AWS clients: {exc}; set --region or PATCHFLOW_SSM_REGION and check credentials"
        ) from None
    executor = SsmExecutor(
        ssm,
        s3,
        ec2_client=ec2,
        bucket=bucket or settings.ssm_bucket or "",
        prefix=settings.ssm_prefix,
        max_requests_per_second=settings.ssm_max_requests_per_second,
        poll_initial_seconds=settings.ssm_poll_initial_seconds,
        poll_max_seconds=settings.ssm_poll_max_seconds,
    )
    try:
        collection = _run(executor.collect(instance or None))
    except (BotoCoreError, ClientError) as exc:
        raise PatchflowError(f"AWS refused the scan: {exc}") from None
    families = {i["platform"]["family"] for i in collection.inventory}
    if family is None and len(families) > 1:
        raise InputError(
            f"the fleet mixes {' and '.join(sorted(families))} instances; choose one with --family"
        )
    chosen = collection.only(family.value) if family is not None else collection
    chosen.write(catalog, inventory)
    out.print(
        f"wrote {len(chosen.catalog)} catalog entries to {catalog} and {len(chosen.inventory)} instance(s) to {inventory}"
    )
    for instance_id, why in sorted(collection.skipped.items()):
        err.print(f"skipped {instance_id}: {why}")
    for note in collection.notes:
        err.print(f"note: {note}")


# ---------------------------------------------------------------------------------------------- api


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
    from patchflow import db
    from patchflow.api import serve

    _terminate_like_interrupt()
    settings = get_settings()
    overrides = {k: v for k, v in {"api_host": host, "api_port": port}.items() if v is not None}
    if overrides:
        settings = settings.model_copy(update=overrides)
    try:
        db.require_current(settings.database_url_resolved)
    except PatchflowError as exc:
        # Serve anyway (health and readiness answer, and say the same); requests needing a token get 503.
        err.print(f"warning: {exc}")
    with contextlib.suppress(KeyboardInterrupt):
        _run(serve(settings, announce=err.print))
