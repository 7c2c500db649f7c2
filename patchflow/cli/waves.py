"""``patchflow plan`` (a dry run) and ``patchflow wave …``: start and operate staged rollouts."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from patchflow.cli.common import (
    Fmt,
    emit_json,
    err,
    out,
    run_sync,
    temporal_client,
)
from patchflow.config import Settings, get_settings
from patchflow.control.dryrun import dry_run
from patchflow.core.plans import load_plan
from patchflow.core.timeutil import parse_instant
from patchflow.errors import InputError, PatchflowError

wave_app = typer.Typer(help="Start and operate staged rollouts (waves).", no_args_is_help=True)


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
    result = run_sync(dry_run(load_plan(plan_file), get_settings(), moment))
    if fmt is Fmt.json:
        emit_json(result)
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
            + (f", ramp {stage['ramp']}" if stage["ramp"] != "none" else "")
            + (
                f", cutoff_behavior {stage['cutoff_behavior']}"
                if stage["cutoff_behavior"] != "carry_over"
                else ""
            )
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
                cutoff = {
                    "carry_over": f"no new starts after {window['cutoff']}",
                    "continue": f"cutoff {window['cutoff']}: the stage goes on past it, never into a change freeze",
                    "cancel": f"at {window['cutoff']} in-flight instances are cancelled",
                }.get(stage["cutoff_behavior"], f"cutoff {window['cutoff']}")
                out.print(f"  window {window['start']} → {window['end']} ({cutoff}){note}")
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
    from patchflow.control.waves import pin_patch_set, start_wave, status_json, wave_input

    settings = get_settings()
    plan = load_plan(plan_file)
    pinned = pin_patch_set(plan, settings, patch_set=patch_set)
    inp = wave_input(plan, settings, pinned)

    async def go() -> dict[str, Any] | None:
        client = await temporal_client(settings)
        await start_wave(client, settings, inp)
        # Say the id before waiting: whatever happens next, the operator can find the wave.
        err.print(f"started wave {inp.wave_id} (patch set {pinned.id})")
        if not wait:
            return None
        return status_json(await wait_settled(client, inp.wave_id, progress=True))

    try:
        status = run_sync(go())
    except KeyboardInterrupt:
        err.print(f"interrupted; wave {inp.wave_id} keeps running: patchflow wave status {inp.wave_id}")
        raise typer.Exit(130) from None
    if fmt is Fmt.json:
        emit_json(status if status is not None else {"wave_id": inp.wave_id, "patch_set_id": pinned.id})
    else:
        out.print(inp.wave_id)
        if status is not None:
            print_status(status)
    if status is not None and status["state"] not in ("succeeded", "waiting_approval"):
        raise typer.Exit(1)


async def wait_settled(
    client: Any,
    wave_id: str,
    timeout: float | None = None,
    progress: bool = False,
    until: Callable[[Any], bool] | None = None,
) -> Any:
    """Poll the wave until it settles (finished, halted, at a gate) or ``until(status)`` holds."""
    from patchflow.control.waves import is_settled, wave_status

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
    from patchflow.control.waves import status_json, wave_status

    async def go() -> dict[str, Any]:
        return status_json(await wave_status(await temporal_client(get_settings()), wave_id))

    status = run_sync(go())
    if fmt is Fmt.json:
        emit_json(status)
    else:
        print_status(status)


def print_status(status: dict[str, Any]) -> None:
    out.print(
        f"wave [bold]{status['wave_id']}[/] ({status['plan']}): [bold]{status['state']}[/]  patch set {status['patch_set_id']}"
    )
    if status.get("reason"):
        out.print(f"  {status['reason']}")
    out.print(stage_table(status))


_COUNT_COLUMNS = ("pending", "in_flight", "succeeded", "failed", "not_attempted", "rolled_back", "cancelled")


def stage_table(status: dict[str, Any]) -> Table:
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
    from patchflow.control.waves import list_waves

    async def go() -> list[dict[str, Any]]:
        return await list_waves(await temporal_client(get_settings()))

    rows = run_sync(go())
    if fmt is Fmt.json:
        emit_json(rows)
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
    from patchflow.control.waves import act, local_user

    settings = get_settings()
    actor = local_user() if who is None else who

    async def go() -> str:
        return await act(
            await temporal_client(settings), wave_id, action, who=actor, stage=stage, comment=comment
        )

    out.print(run_sync(go()))
    if action in ("approve", "reject") and stage:
        _remember_decision(settings, wave_id, stage, actor, action, comment)


def _remember_decision(
    settings: Settings, wave_id: str, stage: str, who: str, action: str, comment: str
) -> None:
    """Keep the gate decision (who, when, how: cli) in the history database; best effort, the wave has it."""
    from patchflow.store import db

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
