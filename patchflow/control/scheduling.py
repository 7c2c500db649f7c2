"""Temporal Schedules for recurring waves: create, list, describe, pause, unpause, trigger and delete.

One schedule per plan (id ``patchflow-<plan>`` unless given). Each firing starts a
:class:`~workflows.scheduled.ScheduledWaveWorkflow`, which builds a fresh wave from the plan. Settings chosen
for patching (see ``../shared/reference/temporal.md`` §1.4):

* a **structured calendar** (:func:`patchflow.core.schedules.calendar_plan`), never a cron string: the server reads
  ``#`` in a cron string as a comment, so ``TUE#2`` would silently mean every Tuesday;
* overlap policy **SKIP**: a firing while the previous wave of the plan still runs is dropped (the wrapper
  workflow lives as long as its wave), so two waves of one plan never run at once;
* a **short catch-up window** (1 hour by default): after a Temporal outage, a firing missed by more than that
  is not released late; start it deliberately with ``patchflow schedule trigger``.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleHandle,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
)
from temporalio.service import RPCError, RPCStatusCode

from patchflow.config import Settings
from patchflow.core.freezes import first_allowed_window
from patchflow.core.plans import Plan, load_plan
from patchflow.core.schedules import (
    WaveSchedule,
    calendar_plan,
    check_daylight_saving,
    check_schedule_id,
    firings,
)
from patchflow.core.wavemodel import ScheduledWaveInput
from patchflow.errors import InputError, NotFoundError, PatchflowError
from workflows.scheduled import ScheduledWaveWorkflow

MEMO_KEY = "patchflow"
ID_PREFIX = "patchflow-"
DEFAULT_CATCHUP = timedelta(hours=1)
MIN_CATCHUP = timedelta(seconds=10)
MAX_CATCHUP = timedelta(days=1)


@dataclass(frozen=True)
class ScheduleRequest:
    plan: Plan
    schedule: WaveSchedule
    schedule_id: str = ""
    catchup_window: timedelta = DEFAULT_CATCHUP
    note: str = ""
    who: str = ""
    paused: bool = False


def schedule_id_for(plan: Plan) -> str:
    return f"{ID_PREFIX}{plan.name}"


def temporal_spec(schedule: WaveSchedule) -> ScheduleSpec:
    """The structured calendar, read by the server in the schedule's time zone."""
    cal = calendar_plan(schedule)
    fields: dict[str, Any] = {
        "second": [ScheduleRange(0)],
        "minute": [ScheduleRange(cal.minute)],
        "hour": [ScheduleRange(cal.hour)],
        "comment": schedule.describe(),
    }
    if cal.day_of_month is not None:
        fields["day_of_month"] = [ScheduleRange(*cal.day_of_month)]
    if cal.day_of_week is not None:
        fields["day_of_week"] = [ScheduleRange(cal.day_of_week)]
    return ScheduleSpec(calendars=[ScheduleCalendarSpec(**fields)], time_zone_name=schedule.timezone)


def _not_found(schedule_id: str, exc: RPCError) -> PatchflowError:
    if exc.status == RPCStatusCode.NOT_FOUND:
        return NotFoundError(f"no schedule {schedule_id!r}; list them with 'patchflow schedule list'")
    return PatchflowError(f"schedule {schedule_id}: {exc.message}")


async def create_schedule(client: Client, settings: Settings, request: ScheduleRequest) -> str:
    """Create the plan's schedule; refuses (clearly) when one with that id exists."""
    if not MIN_CATCHUP <= request.catchup_window <= MAX_CATCHUP:
        raise InputError(
            "--catchup-window must be between 10s and 1d; a late wave is worse than a skipped one"
        )
    plan, schedule = request.plan, request.schedule
    check_daylight_saving(schedule, datetime.now(UTC))
    schedule_id = check_schedule_id(request.schedule_id) if request.schedule_id else schedule_id_for(plan)
    # One schedule per plan: two would start two waves of one plan on the same fleet.
    for row in await list_schedules(client):
        if row["plan"] == plan.name and row["id"] != schedule_id:
            raise InputError(
                f"plan {plan.name!r} already has schedule {row['id']!r}; a plan gets one schedule (two would run "
                f"two waves on the same fleet): change it with 'patchflow schedule delete {shlex.quote(row['id'])}' first"
            )
    cal = calendar_plan(schedule)
    action = ScheduleActionStartWorkflow(
        ScheduledWaveWorkflow.run,
        ScheduledWaveInput(
            schedule_id=schedule_id,
            plan_path=str(plan.source),
            wait_days=cal.wait_days,
            at=f"{schedule.at:%H:%M}",
            timezone=schedule.timezone,
            started_by=request.who,
            plan_name=plan.name,
        ),
        id=f"scheduled-{schedule_id}",
        task_queue=plan.task_queue or settings.task_queue,
    )
    memo = {
        MEMO_KEY: {
            "plan": plan.name,
            "plan_path": str(plan.source),
            "schedule": schedule.to_json(),
            "created_by": request.who,
            "wait_days": cal.wait_days,
        }
    }
    try:
        await client.create_schedule(
            schedule_id,
            Schedule(
                action=action,
                spec=temporal_spec(schedule),
                policy=SchedulePolicy(
                    overlap=ScheduleOverlapPolicy.SKIP,
                    catchup_window=request.catchup_window,
                    pause_on_failure=False,
                ),
                state=ScheduleState(
                    note=request.note or f"created by {request.who or 'patchflow'}", paused=request.paused
                ),
            ),
            memo=memo,
        )
    except ScheduleAlreadyRunningError:
        raise InputError(
            f"schedule {schedule_id!r} already exists; change it by deleting it first "
            f"('patchflow schedule delete {shlex.quote(schedule_id)}') or give another --id"
        ) from None
    return schedule_id


async def _handle(client: Client, schedule_id: str) -> ScheduleHandle:
    handle = client.get_schedule_handle(schedule_id)
    try:
        await handle.describe()
    except RPCError as exc:
        raise _not_found(schedule_id, exc) from None
    return handle


async def _memo(description: Any) -> dict[str, Any]:
    try:
        memo = await description.memo()
    except Exception:  # noqa: BLE001 - a schedule created by someone else may carry any memo
        return {}
    value = memo.get(MEMO_KEY) if isinstance(memo, dict) else None
    return value if isinstance(value, dict) else {}


async def list_schedules(client: Client) -> list[dict[str, Any]]:
    """patchflow's schedules (those carrying its memo), with state and next firing."""
    rows: list[dict[str, Any]] = []
    async for item in await client.list_schedules():
        memo = await _memo(item)
        if not memo:
            continue
        state = item.schedule.state if item.schedule else None
        next_times = item.info.next_action_times if item.info else []
        rows.append(
            {
                "id": item.id,
                "plan": memo.get("plan"),
                "schedule": memo.get("schedule", {}).get("description"),
                "paused": bool(state.paused) if state else False,
                "note": state.note if state else None,
                "next_fire": next_times[0].isoformat() if next_times else None,
            }
        )
    return sorted(rows, key=lambda r: str(r["id"]))


async def describe_schedule(
    client: Client, settings: Settings, schedule_id: str, *, count: int = 12, now: datetime | None = None
) -> dict[str, Any]:
    """The schedule, its recent and running waves, and a preview of the next ``count`` firings with the first
    window of each stage in local time (the plan as it is now, with its change freezes)."""
    handle = await _handle(client, schedule_id)
    description = await handle.describe()
    memo = await _memo(description)
    if not memo:
        raise NotFoundError(
            f"schedule {schedule_id!r} was not created by patchflow; use 'temporal schedule describe'"
        )
    schedule = WaveSchedule.from_json(memo["schedule"])
    now = now or datetime.now(UTC)
    state = description.schedule.state
    info = description.info
    problems: list[str] = []
    plan: Plan | None = None
    try:
        plan = load_plan(memo["plan_path"])
    except InputError as exc:
        problems.append(f"the plan cannot be loaded, so firings will fail: {exc}")
    server_fires = [t.astimezone(UTC) for t in info.next_action_times]
    previews = []
    freezes = []
    if plan is not None:
        from patchflow.control.waves import plan_freezes

        freezes = plan_freezes(plan, settings, now)
    zone_name = schedule.timezone
    for firing in firings(schedule, now, count):
        stages = []
        if plan is not None:
            moment = firing.starts_at
            for stage in plan.stages:
                window = first_allowed_window(stage.window, moment, freezes)
                # `now` windows have no zone of their own: show them in the schedule's.
                shown_in = (
                    zone_name if stage.window.schedule.strip().lower() == "now" else stage.window.timezone
                )
                if window is None:
                    stages.append({"stage": stage.name, "window_start": None, "note": "no allowed window"})
                    break
                stages.append(
                    {
                        "stage": stage.name,
                        "window_start": _local(window.start, shown_in),
                        "window_end": _local(window.end, shown_in) if window.end else None,
                        "note": _note(window),
                    }
                )
                moment = window.start + timedelta(seconds=stage.soak_seconds)
        previews.append(
            {
                "fires_at": _local(firing.fires_at, zone_name),
                "wave_starts_at": _local(firing.starts_at, zone_name),
                "stages": stages,
            }
        )
    running = [getattr(a, "workflow_id", "") for a in info.running_actions]
    running_waves: dict[str, str] = {}
    for wrapper_id in running:
        try:
            running_waves[wrapper_id] = str(
                await client.get_workflow_handle(wrapper_id).query(ScheduledWaveWorkflow.wave)
            )
        except RPCError:
            running_waves[wrapper_id] = ""  # no worker answered: the wave id is unknown for now
    recent = [
        {
            "scheduled_at": a.scheduled_at.isoformat(),
            "started_at": a.started_at.isoformat(),
            "workflow_id": getattr(a.action, "workflow_id", None),
        }
        for a in info.recent_actions
    ]
    return {
        "id": schedule_id,
        "plan": memo.get("plan"),
        "plan_path": memo.get("plan_path"),
        "schedule": schedule.to_json(),
        "wait_days": memo.get("wait_days", 0),
        "paused": state.paused,
        "note": state.note,
        "created_by": memo.get("created_by"),
        "catchup_window_seconds": (
            description.schedule.policy.catchup_window.total_seconds()
            if description.schedule.policy.catchup_window
            else None
        ),
        "overlap": description.schedule.policy.overlap.name,
        "running": running,
        "running_waves": running_waves,
        "recent": recent,
        "server_next_fires": [t.isoformat() for t in server_fires],
        "firings": previews,
        "problems": problems,
    }


def _local(moment: datetime, zone: str) -> str:
    from zoneinfo import ZoneInfo

    return moment.astimezone(ZoneInfo(zone)).isoformat()


def _note(window: Any) -> str:
    from patchflow.core.freezes import freeze_note

    return freeze_note(window)


async def pause_schedule(client: Client, schedule_id: str, note: str) -> None:
    handle = await _handle(client, schedule_id)
    await handle.pause(note=note or "paused by patchflow")


async def unpause_schedule(client: Client, schedule_id: str, note: str) -> None:
    handle = await _handle(client, schedule_id)
    await handle.unpause(note=note or "unpaused by patchflow")


async def trigger_schedule(client: Client, schedule_id: str) -> None:
    """Fire now; the overlap policy SKIP still applies (nothing starts while the plan's last wave runs)."""
    handle = await _handle(client, schedule_id)
    await handle.trigger(overlap=ScheduleOverlapPolicy.SKIP)


async def delete_schedule(client: Client, schedule_id: str) -> None:
    """Delete the schedule; waves it started go on (stop them with 'patchflow wave cancel')."""
    handle = await _handle(client, schedule_id)
    await handle.delete()


def resolve_plan(path: str | Path) -> Plan:
    return load_plan(Path(path).resolve())
