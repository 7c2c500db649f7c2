"""``patchflow schedule …``: recurring waves on Temporal Schedules (see :mod:`patchflow.control.scheduling`)."""

from __future__ import annotations

import shlex
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from patchflow.cli.common import Fmt, emit_json, err, out, run_sync, temporal_client
from patchflow.config import get_settings
from patchflow.control.scheduling import (
    ScheduleRequest,
    create_schedule,
    delete_schedule,
    describe_schedule,
    list_schedules,
    pause_schedule,
    trigger_schedule,
    unpause_schedule,
)
from patchflow.core.plans import load_plan, parse_duration
from patchflow.core.schedules import calendar_plan, check_daylight_saving, check_schedule_id, parse_schedule
from patchflow.errors import InputError

schedule_app = typer.Typer(
    help="Recurring waves: a plan's monthly (Patch Tuesday + N days), weekly or daily schedule on Temporal.",
    no_args_is_help=True,
)

IdArg = Annotated[str, typer.Argument(metavar="SCHEDULE_ID", help="Schedule id (see 'schedule list').")]
NoteOpt = Annotated[str, typer.Option("--note", help="Why (kept with the schedule's state).")]


@schedule_app.command("create")
def schedule_create(
    plan_file: Annotated[
        Path, typer.Argument(metavar="PLAN", help="Rollout plan (YAML).", show_default=False)
    ],
    monthly: Annotated[
        str | None,
        typer.Option("--monthly", help='"second Tuesday" (Patch Tuesday), "first Monday", … or "day 15".'),
    ] = None,
    weekly: Annotated[str | None, typer.Option("--weekly", help="A day of the week, e.g. Saturday.")] = None,
    daily: Annotated[bool, typer.Option("--daily", help="Every day.")] = False,
    offset_days: Annotated[
        int,
        typer.Option("--offset-days", help="Calendar days after the base day (monthly 0–27, weekly 0–6)."),
    ] = 0,
    at: Annotated[str, typer.Option("--at", help="Wall-clock start time HH:MM in --timezone.")] = "02:00",
    timezone: Annotated[str, typer.Option("--timezone", help="IANA time zone of --at.")] = "UTC",
    schedule_id: Annotated[
        str | None, typer.Option("--id", help="Schedule id (default patchflow-<plan name>).")
    ] = None,
    catchup: Annotated[
        str,
        typer.Option(
            "--catchup-window",
            help="A firing missed (Temporal down) by more than this is skipped, not released late.",
        ),
    ] = "1h",
    paused: Annotated[bool, typer.Option("--paused", help="Create it paused.")] = False,
    note: NoteOpt = "",
    fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table,
) -> None:
    """Create a plan's schedule: each firing evaluates the baseline afresh and starts a wave."""
    from datetime import timedelta

    from patchflow.control.waves import local_user

    schedule = parse_schedule(
        monthly=monthly, weekly=weekly, daily=daily, offset_days=offset_days, at=at, timezone=timezone
    )
    # Checked here too, before anything connects: bad input is said without Temporal.
    check_daylight_saving(schedule, datetime.now(UTC))
    if schedule_id is not None:
        check_schedule_id(schedule_id)
    try:
        catchup_window = timedelta(seconds=parse_duration(catchup))
    except ValueError as exc:
        raise InputError(f"--catchup-window: {exc}") from None
    plan = load_plan(plan_file)
    settings = get_settings()
    request = ScheduleRequest(
        plan=plan,
        schedule=schedule,
        schedule_id=schedule_id or "",
        catchup_window=catchup_window,
        note=note,
        who=local_user(),
        paused=paused,
    )

    async def go() -> dict[str, Any]:
        client = await temporal_client(settings)
        created = await create_schedule(client, settings, request)
        return await describe_schedule(client, settings, created, count=3)

    result = run_sync(go())
    if fmt is Fmt.json:
        emit_json(result)
        return
    wait = calendar_plan(schedule).wait_days
    out.print(f"schedule [bold]{result['id']}[/] created: plan {plan.name}, {schedule.describe()}")
    if wait:
        out.print(
            f"  fires on the base day and the wave waits {wait} days inside Temporal (the calendar cannot "
            "express that offset)"
        )
    for firing in result["firings"]:
        out.print(f"  next wave: {firing['wave_starts_at']}")


@schedule_app.command("list")
def schedule_list(fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table) -> None:
    """patchflow's schedules, paused or not, with their next firing."""
    settings = get_settings()

    async def go() -> list[dict[str, Any]]:
        return await list_schedules(await temporal_client(settings))

    rows = run_sync(go())
    if fmt is Fmt.json:
        emit_json(rows)
        return
    if not rows:
        out.print(
            "no schedules; create one with 'patchflow schedule create PLAN --monthly \"second Tuesday\"'"
        )
        return
    table = Table()
    for column in ("id", "plan", "schedule", "state", "next firing"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["id"],
            row["plan"] or "",
            row["schedule"] or "",
            "[yellow]paused[/]" if row["paused"] else "active",
            row["next_fire"] or "",
        )
    out.print(table)


@schedule_app.command("describe")
def schedule_describe(
    schedule_id: IdArg,
    count: Annotated[int, typer.Option("--count", min=1, max=60, help="How many firings to preview.")] = 12,
    fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table,
) -> None:
    """The schedule, its waves, and the next firings with each stage's first window in local time."""
    settings = get_settings()

    async def go() -> dict[str, Any]:
        return await describe_schedule(await temporal_client(settings), settings, schedule_id, count=count)

    result = run_sync(go())
    if fmt is Fmt.json:
        emit_json(result)
        return
    state = "[yellow]paused[/]" if result["paused"] else "active"
    out.print(f"schedule [bold]{result['id']}[/] ({state}): plan {result['plan']} ({result['plan_path']})")
    out.print(
        f"  {result['schedule']['description']}; overlap {result['overlap']}, catch-up window "
        f"{int(result['catchup_window_seconds'] or 0)}s; note: {result['note'] or '-'}"
    )
    if result["wait_days"]:
        out.print(f"  fires on the base day; the wave waits {result['wait_days']} days inside Temporal")
    for problem in result["problems"]:
        out.print(f"  [red]problem[/]: {problem}")
    for wrapper_id in result["running"]:
        wave = result["running_waves"].get(wrapper_id) or "waiting to start its wave"
        out.print(f"  running: {wrapper_id} → {wave}")
    for recent in result["recent"][-5:]:
        out.print(f"  fired {recent['scheduled_at']}: {recent['workflow_id']}")
    table = Table(title="next firings (stage windows: the earliest each stage may start)")
    table.add_column("wave starts")
    stage_names = [s["stage"] for s in (result["firings"][0]["stages"] if result["firings"] else [])]
    for name in stage_names:
        table.add_column(name)
    for firing in result["firings"]:
        cells = []
        for stage in firing["stages"]:
            text = stage["window_start"] or "no window"
            if stage.get("note"):
                text += f"\n[yellow]{stage['note']}[/]"
            cells.append(text)
        table.add_row(firing["wave_starts_at"], *cells, *[""] * (len(stage_names) - len(cells)))
    out.print(table)


@schedule_app.command("pause")
def schedule_pause(schedule_id: IdArg, note: NoteOpt = "") -> None:
    """Stop firing (running waves go on)."""
    settings = get_settings()
    run_sync(_then(settings, pause_schedule, schedule_id, note))
    out.print(f"schedule {schedule_id} paused")


@schedule_app.command("unpause")
def schedule_unpause(schedule_id: IdArg, note: NoteOpt = "") -> None:
    """Fire again from the next calendar time (missed firings are not released)."""
    settings = get_settings()
    run_sync(_then(settings, unpause_schedule, schedule_id, note))
    out.print(f"schedule {schedule_id} active")


@schedule_app.command("trigger")
def schedule_trigger(schedule_id: IdArg) -> None:
    """Fire now (skipped while the plan's previous scheduled wave still runs)."""
    settings = get_settings()
    run_sync(_then(settings, trigger_schedule, schedule_id))
    out.print(
        f"schedule {schedule_id} triggered; follow it with 'patchflow schedule describe {shlex.quote(schedule_id)}'"
    )


@schedule_app.command("delete")
def schedule_delete(schedule_id: IdArg) -> None:
    """Delete the schedule (waves it started go on; cancel them with 'patchflow wave cancel')."""
    settings = get_settings()
    run_sync(_then(settings, delete_schedule, schedule_id))
    err.print(f"schedule {schedule_id} deleted")


async def _then(settings: Any, action: Any, *args: Any) -> None:
    await action(await temporal_client(settings), *args)
