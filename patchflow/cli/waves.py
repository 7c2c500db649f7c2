"""``patchflow plan`` (a dry run) and ``patchflow wave …``: start and operate staged rollouts."""

from __future__ import annotations

import asyncio
import shlex
import time
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from patchflow.cli import remote
from patchflow.cli.common import (
    AllowConcurrentOpt,
    Fmt,
    emit_json,
    err,
    out,
    run_sync,
    temporal_client,
)
from patchflow.cli.db import audit_refusal
from patchflow.cli.remote import refuse_as, remote_api
from patchflow.config import Settings, get_settings
from patchflow.control.dryrun import dry_run
from patchflow.core.plans import Plan, load_plan
from patchflow.core.timeutil import parse_instant
from patchflow.core.wavemodel import MAX_PAGE_INSTANCES
from patchflow.errors import InputError, PatchflowError, Problem

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
    api = remote_api(get_settings())
    if api is not None:  # PLAN names a file of the API's plans directory
        result = remote.dry_run(api, str(plan_file), None if at == "now" else moment)
    else:
        result = run_sync(dry_run(load_plan(plan_file), get_settings(), moment))
    if fmt is Fmt.json:
        emit_json(result)
        if result["problems"]:
            raise typer.Exit(1)
        return
    out.print(
        f"plan [bold]{result['plan']}[/]: patch set {result['patch_set_id']} ({result['patch_set_size']} package versions)"
    )
    for freeze in result.get("freezes", []):  # the API's dry run does not list freezes
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
        if stage.get("disruption"):
            out.print(f"  {disruption_line(stage['disruption'])}")
        for line in rollout_control_lines(stage):
            out.print(f"  {line}", markup=False, highlight=False)
        for window in stage["windows"]:
            for skipped in window.get("skipped", []):
                out.print(
                    f"  [yellow]skipped[/] window {skipped['start']}: inside change freeze {skipped['freeze']}"
                )
            if window["start"] == "now":
                cut = f" until {window['cutoff']} ({window.get('note', '')})" if window["cutoff"] else ""
                out.print(f"  window: now (starts as soon as the gate passes){cut}")
            elif window["end"] is None:  # a `now` window a freeze delays: open-ended once it starts
                cut = f", no new starts after {window['cutoff']}" if window["cutoff"] else ""
                note = f" [yellow]{window['note']}[/]" if window.get("note") else ""
                out.print(f"  window: from {window['start']} (as soon as the gate passes){cut}{note}")
            else:
                note = (
                    f" [yellow]{window['note']}[/]"
                    if window.get("note") and not window.get("skipped")
                    else ""
                )
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
        typer.Option(
            "--patch-set",
            help="Install this pinned set (id, or in local mode a file) instead of evaluating.",
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="Return once the wave finished, halted or waits at a gate.")
    ] = False,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=1,
            metavar="SECONDS",
            help="With --wait: stop waiting after this many seconds (exit 1; the wave goes on).",
            show_default=False,
        ),
    ] = None,
    allow_concurrent: AllowConcurrentOpt = False,
    fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table,
) -> None:
    """Pin the patch set and start a wave; prints the wave id."""
    if timeout is not None and not wait:
        raise InputError("--timeout limits --wait: give both, or neither")

    settings = get_settings()
    api = remote_api(settings)
    if api is not None:  # PLAN names a file of the API's plans directory
        started, status = _start_remote(api, str(plan_file), patch_set, allow_concurrent, wait, timeout)
    else:
        started, status = _start_local(settings, plan_file, patch_set, allow_concurrent, wait, timeout)
    if fmt is Fmt.json:
        emit_json(status if status is not None else started)
    else:
        out.print(started["wave_id"])
        if status is not None:
            print_status(status)
    if status is not None and status["state"] not in ("succeeded", "waiting_approval"):
        raise typer.Exit(1)


def _start_remote(
    api: remote.RemoteApi,
    plan: str,
    patch_set: str | None,
    allow_concurrent: bool,
    wait: bool,
    timeout: float | None,
) -> tuple[dict[str, str], dict[str, Any] | None]:
    """``wave start`` through the API: (``{wave_id, patch_set_id}``, the settled status under ``--wait``)."""
    started = remote.start_wave(api, plan, patch_set=patch_set, allow_concurrent=allow_concurrent)
    wave_id = started["wave_id"]
    err.print(f"started wave {wave_id} (patch set {started['patch_set_id']})")
    if not wait:
        return started, None
    try:
        return started, remote.wait_settled(api, wave_id, timeout=timeout, progress=err.print)
    except KeyboardInterrupt:
        err.print(f"interrupted; wave {wave_id} keeps running: patchflow wave status {wave_id}")
        raise typer.Exit(130) from None


def _start_local(
    settings: Settings,
    plan_file: Path,
    patch_set: str | None,
    allow_concurrent: bool,
    wait: bool,
    timeout: float | None,
) -> tuple[dict[str, str], dict[str, Any] | None]:
    """``wave start`` against Temporal: (``{wave_id, patch_set_id}``, the settled status under ``--wait``)."""
    from patchflow.control.waves import (
        no_worker_message,
        pin_patch_set,
        refuse_second_wave,
        start_wave,
        status_json,
        wave_input,
        worker_polls,
    )

    plan = load_plan(plan_file)
    refuse_broken_plan(plan, plan_file, settings)
    started: dict[str, str] = {}

    async def go() -> dict[str, Any] | None:
        client = await temporal_client(settings)
        if not allow_concurrent:
            await refuse_second_wave(
                client,
                plan.name,
                lambda running: (
                    f"follow it with 'patchflow wave status {running}' (or cancel it), or start a "
                    "second wave anyway with --allow-concurrent"
                ),
            )
        pinned = pin_patch_set(plan, settings, patch_set=patch_set)
        inp = wave_input(plan, settings, pinned)
        await start_wave(client, settings, inp)
        started.update(wave_id=inp.wave_id, patch_set_id=pinned.id)
        # Say the id before waiting: whatever happens next, the operator can find the wave.
        err.print(f"started wave {inp.wave_id} (patch set {pinned.id})")
        task_queue = inp.task_queue or settings.task_queue
        if not wait:
            if not await worker_polls(client, task_queue):
                err.print(
                    f"note: it waits until a worker comes: {no_worker_message(task_queue, inp.wave_id)}"
                )
            return None
        return status_json(await wait_settled(client, inp.wave_id, timeout=timeout, progress=True))

    try:
        status = run_sync(go())
    except KeyboardInterrupt:
        if started:
            wave_id = started["wave_id"]
            err.print(f"interrupted; wave {wave_id} keeps running: patchflow wave status {wave_id}")
        raise typer.Exit(130) from None
    return started, status


def refuse_broken_plan(plan: Plan, plan_file: Path, settings: Settings) -> None:
    """Run ``patchflow plan``'s checks and refuse (exit 2) before anything starts: a wave whose Prod window
    never opens would patch Dev and Test and then fail."""
    from patchflow.control.dryrun import check_plan

    found = run_sync(check_plan(plan, settings, datetime.now(UTC)))
    for note in found.notes:
        err.print(f"note: {note}")
    if found.problems:
        raise InputError(
            f"not starting a wave of plan {plan.name}: it would not get through its stages; fix the plan "
            f"('patchflow plan {plan_file}' shows the details)",
            source=str(plan_file),
            problems=[Problem(path="", message=problem) for problem in found.problems],
        )


#: How long ``--wait`` gives a worker that is just starting to poll the wave's task queue.
NO_WORKER_GRACE_SECONDS = 10


async def wait_settled(
    client: Any,
    wave_id: str,
    timeout: float | None = None,
    progress: bool = False,
    until: Callable[[Any], bool] | None = None,
) -> Any:
    """Poll the wave until it settles (finished, halted, at a gate) or ``until(status)`` holds; when no worker
    polls the wave's task queue for :data:`NO_WORKER_GRACE_SECONDS`, say so instead of waiting for one."""
    from patchflow.control.waves import NoWorkerError, is_settled, wave_status

    deadline = None if timeout is None else time.monotonic() + timeout
    failures = 0
    last = ""
    workerless_since: float | None = None
    while True:
        try:
            status = await wave_status(client, wave_id)
        except NoWorkerError as exc:
            # A worker started a moment ago has not polled yet: give it a few seconds, then say so.
            workerless_since = workerless_since or time.monotonic()
            if time.monotonic() - workerless_since > NO_WORKER_GRACE_SECONDS:
                raise
            if progress and last != str(exc):
                err.print("  waiting for a worker to poll the wave's task queue …")
                last = str(exc)
        except PatchflowError as exc:
            failures += 1
            if failures >= 40:  # ~20 s without an answer: say so instead of waiting forever
                raise PatchflowError(f"stopped waiting for wave {wave_id}: {exc}") from None
        else:
            failures = 0
            workerless_since = None
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
    limit: Annotated[
        int | None,
        typer.Option(
            "--limit",
            min=1,
            max=MAX_PAGE_INSTANCES,
            help="One page per stage: at most this many instances, with the stage's instance count and "
            "counts per state (a few queries whatever the size of the wave). Default: every instance.",
        ),
    ] = None,
    offset: Annotated[
        int, typer.Option("--offset", min=0, help="With --limit: instances of each stage to skip.")
    ] = 0,
) -> None:
    """A wave's state, per stage and per instance."""
    from patchflow.control.waves import gate_approvers, status_json, wave_status

    async def go() -> tuple[dict[str, Any], list[str]]:
        client = await temporal_client(get_settings())
        status = status_json(await wave_status(client, wave_id, limit=limit, offset=offset))
        waiting = _waiting_stage(status)
        approvers = await gate_approvers(client, wave_id, waiting) if waiting and fmt is Fmt.table else []
        return status, approvers

    api = remote_api(get_settings())
    # Through the API the gate's approvers are not known here: the hint names none (and never --as).
    status, approvers = (
        (remote.wave_status(api, wave_id, limit=limit, offset=offset), [])
        if api is not None
        else run_sync(go())
    )
    if fmt is Fmt.json:
        emit_json(status)
        return
    print_status(status)
    waiting = _waiting_stage(status)
    if waiting:
        out.print(approval_hint(status["wave_id"], waiting, approvers))


def _waiting_stage(status: dict[str, Any]) -> str | None:
    return next((s["name"] for s in status["stages"] if s["state"] == "waiting_approval"), None)


def approval_hint(wave_id: str, stage: str, approvers: list[str]) -> str:
    """What to run to answer a gate: who may approve and the command (shell-quoted)."""
    who = " or ".join(approvers) if approvers else "one of its approvers"
    command = f"patchflow wave approve {shlex.quote(wave_id)} --stage {shlex.quote(stage)}"
    if approvers:
        command += f" --as {shlex.quote(approvers[0])}"
    return f"waiting for approval of {stage} by {who}: {command}"


def disruption_line(disruption: dict[str, Any]) -> str:
    """``disruption budget 1 per tag:Cluster: web ≤ 1 of 7, …; zones in order: a, b``: a dry run's preview."""
    parts = []
    if disruption["budget"]:
        groups = [f"{g} ≤ {v['limit']} of {v['size']}" for g, v in disruption["groups"].items()]
        shown = ", ".join(groups[:8]) + (f" and {len(groups) - 8} more group(s)" if len(groups) > 8 else "")
        parts.append(f"disruption budget {disruption['budget']}: {shown or 'no targets'}")
    if disruption["zones"]:
        parts.append(f"zone_by_zone, zones in order: {', '.join(disruption['zones'])}")
    return "; ".join(parts)


def rollout_control_lines(stage: dict[str, Any]) -> list[str]:
    """A dry run's stage, compactly: its lifecycle hooks (steps per phase), reboots, canary and analysis queries,
    and alert blocking (one line each, only what the plan sets)."""
    lines: list[str] = []
    hooks = stage.get("hooks")
    if hooks:
        phases = ", ".join(f"{phase} {count}" for phase, count in hooks["phases"].items())
        lines.append(f"hooks: {phases} step(s); on_hook_failure {hooks['on_hook_failure']}")
    reboot = stage.get("reboot")
    if reboot:
        where = f"in the reboot window {reboot['window']}" if reboot["window"] else "right after the install"
        line = f"reboot: {reboot['policy']}, {where}"
        if reboot["max_concurrency"]:
            line += f", {reboot['max_concurrency']} at once"
        if reboot["deadline_days"]:
            line += f", overdue after {reboot['deadline_days']} day(s)"
        lines.append(
            line if reboot["policy"] != "never" else "reboot: never (instances needing one stay reboot debt)"
        )
    canary = stage.get("canary")
    if canary:
        lines.append(
            f"canary: the first {canary['count']} target(s), soak {canary['soak_seconds']}s, then the analysis"
        )
    analysis = stage.get("analysis")
    if analysis:
        queries = "; ".join(
            f"{q['name']} `{q['query']}` {q['success']}, {q['count']}x every {q['interval_seconds']}s"
            + (f", failure_limit {q['failure_limit']}" if q["failure_limit"] else "")
            for q in analysis["queries"]
        )
        compare = f", compare {analysis['compare']}" if analysis["compare"] else ""
        lines.append(
            f"analysis at {analysis['prometheus']}: {queries}{compare}; inconclusive: {analysis['inconclusive']}"
        )
    block = stage.get("block_on_alerts")
    if block:
        lines.append(
            f"block_on_alerts: no dispatch while an alert matching {block['match']} fires at "
            f"{block['prometheus']} (checked every {block['check_seconds']}s)"
        )
    return lines


def print_status(status: dict[str, Any]) -> None:
    out.print(
        f"wave [bold]{status['wave_id']}[/] ({status['plan']}): [bold]{status['state']}[/]  patch set {status['patch_set_id']}"
    )
    if status.get("reason"):
        out.print(f"  {status['reason']}")
    out.print(stage_table(status))
    for line in hook_lines(status):
        out.print(line, markup=False, highlight=False)
    for stage in status["stages"]:
        for line in analysis_lines(stage):
            out.print(line, markup=False)
    for stage in status["stages"]:
        debt = stage.get("reboot_debt")
        if debt:
            out.print(f"  {stage['name']}: {reboot_debt_line(debt)}")


#: Most instances ``wave status`` lists with their hook steps (failed ones first); ``--format json`` has all.
MAX_HOOK_LINES = 50


def hook_lines(status: dict[str, Any]) -> list[str]:
    """One compact line per instance with lifecycle hook steps (``prod i-1: pre_install ok 3/3 2.1s; …``),
    failed instances first, at most :data:`MAX_HOOK_LINES`."""
    from patchflow.core.hooks import HookStepRecord, compact

    rows = [
        (stage["name"], instance)
        for stage in status["stages"]
        for instance in stage["instances"]
        if instance.get("hooks")
    ]
    if not rows:
        return []
    rows.sort(key=lambda row: not any(step["status"] == "failed" for step in row[1]["hooks"]))
    lines = ["lifecycle hooks:"]
    for name, instance in rows[:MAX_HOOK_LINES]:
        records = [HookStepRecord(**step) for step in instance["hooks"]]
        lines.append(f"  {name} {instance['id']}: {compact(records)}")
    if len(rows) > MAX_HOOK_LINES:
        lines.append(
            f"  … and {len(rows) - MAX_HOOK_LINES} more instance(s) (--format json shows every step)"
        )
    return lines


#: Measurements ``wave status`` lists per stage (the newest; ``--format json`` has every one kept).
SHOWN_MEASUREMENTS = 5


def analysis_lines(stage: dict[str, Any]) -> list[str]:
    """A stage's alert blocking and analysis, compactly: the result, per query its tally, the newest
    measurements."""
    lines: list[str] = []
    if stage.get("blocked_by"):
        lines.append(f"  {stage['name']}: dispatch blocked: {stage['blocked_by']}")
    analysis = stage.get("analysis")
    if analysis:
        result = analysis["result"] or "running"
        tallies = ", ".join(
            f"{name} {t['successful']} ok / {t['failed']} failed / {t['inconclusive']} inconclusive"
            for name, t in analysis["queries"].items()
        )
        lines.append(
            f"  {stage['name']}: analysis {result} over {analysis['instances']} instance(s): {tallies}"
        )
    for m in stage.get("measurements", [])[-SHOWN_MEASUREMENTS:]:
        values = ", ".join("NaN" if v is None else f"{v:g}" for v in m["values"]) or "no value"
        baseline = f" (baseline {m['baseline']:g})" if m.get("baseline") is not None else ""
        detail = f": {m['detail']}" if m.get("detail") else ""
        lines.append(f"    {m['at'][11:19]} {m['query']} {m['verdict']} {values}{baseline}{detail}")
    return lines


def reboot_debt_line(debt: dict[str, Any]) -> str:
    """One stage's reboot debt for ``wave status`` (which instances: their details, ``--format json``)."""
    if not debt["instances"]:
        return f"no reboot debt (reboot window {debt['reboot_window'] or 'none'})"
    line = f"reboot debt: {debt['instances']} instance(s) pending a reboot since {debt['since']}"
    if debt["deadline"]:
        line += (
            f", [bold red]overdue[/] since {debt['deadline']}"
            if debt["overdue"]
            else f", due by {debt['deadline']}"
        )
    if debt["reboot_window"] == "waiting_window":
        line += "; waiting for the reboot window" + (
            f" ({debt['reboot_window_start']})" if debt["reboot_window_start"] else ""
        )
    return line


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
        # A paged status (--limit) carries the counts of all the stage's instances; otherwise they are all here.
        counts = Counter(stage.get("state_counts") or {}) or Counter(i["state"] for i in stage["instances"])
        budget = "" if stage["max_errors"] is None else f"{stage['errors']} / {stage['max_errors']}"
        table.add_row(
            stage["name"],
            stage["state"],
            *(str(counts.get(c, 0)) for c in _COUNT_COLUMNS),
            budget,
            "\n".join(n for n in (stage["note"], stage.get("disruption_budget", "")) if n),
        )
    return table


@wave_app.command("list")
def wave_list(fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table) -> None:
    """Recent waves."""
    from patchflow.control.waves import list_waves

    async def go() -> list[dict[str, Any]]:
        return await list_waves(await temporal_client(get_settings()))

    api = remote_api(get_settings())
    rows = remote.list_waves(api) if api is not None else run_sync(go())
    if fmt is Fmt.json:
        emit_json(rows)
        return
    table = Table()
    for column in ("wave", "plan", "state", "started"):
        table.add_column(column)
    for row in rows:
        state = row["state"] or row["workflow_status"] or ""
        table.add_row(
            row["wave_id"],
            row.get("plan") or "",
            f"{state} ({row['note']})" if row.get("note") else state,
            row["started"] or "",
        )
    out.print(table)


def _action(action: str, wave_id: str, who: str | None, stage: str | None, comment: str) -> None:
    from patchflow.control.waves import act, local_user

    settings = get_settings()
    api = remote_api(settings)
    if api is not None:  # the token's name acts; the API audits the call and records the decision
        refuse_as(who)
        out.print(remote.act(api, wave_id, action, stage=stage, comment=comment))
        return
    if who is not None and not who.strip():
        raise InputError("--as needs a name (who acts); leave --as out to act as the local user")
    actor = local_user() if who is None else who.strip()

    async def go() -> str:
        return await act(
            await temporal_client(settings), wave_id, action, who=actor, stage=stage, comment=comment
        )

    try:
        out.print(run_sync(go()))
    except PatchflowError as exc:
        audit_refusal(settings, exc, action=action, wave_id=wave_id, stage=stage, claimed=actor)
        raise
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


AsOpt = Annotated[
    str | None,
    typer.Option(
        "--as", help="Who acts (default: the local user). Refused through the API: the token's name acts."
    ),
]
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
