"""Scheduled waves over months on Temporal's time-skipping test server.

The test server has no Schedules API, so each test starts :class:`ScheduledWaveWorkflow` itself at the instant
the schedule would fire (the server clock is skipped forward to it) — the workflow then waits out an offset the
calendar cannot express (Patch Tuesday + 21 days), across a daylight-saving change, and runs the wave.
"""

from __future__ import annotations

import calendar
import os
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from patchflow.core.schedules import calendar_plan, parse_schedule
from patchflow.service.worker import build_worker
from tests.workflows.helpers import schedule_check, scheduled_settings, scheduled_worker, start_scheduled
from tests.workflows.test_durability import HISTORIES
from tests.workflows.test_schedules import write_plan
from workflows.scheduled import ScheduledWaveWorkflow
from workflows.stage import StageRunWorkflow
from workflows.wave import WaveWorkflow

BERLIN = ZoneInfo("Europe/Berlin")


def patch_tuesday(year: int, month: int) -> date:
    tuesdays = [week[1] for week in calendar.monthcalendar(year, month) if week[1]]
    return date(year, month, tuesdays[1])


async def test_patch_tuesday_plus_21_days_across_months_and_dst(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    schedule = parse_schedule(monthly="second Tuesday", offset_days=21, at="02:00", timezone="Europe/Berlin")
    wait_days = calendar_plan(schedule).wait_days
    assert wait_days == 21
    plan_path = write_plan(tmp_path, make_fleet({"dev": 2, "prod": 2}))
    settings = scheduled_settings(tmp_path)
    client = skip_env.client

    # The next two March Patch Tuesdays after the server's clock, and one firing in a winter month before:
    # each wave must start 21 days after its firing at 02:00 Berlin time — in March that is after the clocks
    # went forward (00:00 UTC instead of 01:00 UTC).
    started: list[datetime] = []
    firings: list[date] = []
    async with build_worker(client, settings.task_queue, settings=settings):
        for month in (1, 3):
            # The next January (winter) and March (the wave starts after the clocks go forward) Patch Tuesday
            # after the server's clock, wherever a previous test left it.
            current = await skip_env.get_current_time()
            year = current.year
            while (day := patch_tuesday(year, month)) and datetime(
                day.year, day.month, day.day, 2, tzinfo=BERLIN
            ) <= current + timedelta(hours=1):
                year += 1
            firings.append(day)
            fire_at = datetime(day.year, day.month, day.day, 2, 0, tzinfo=BERLIN).astimezone(UTC)
            await skip_env.sleep(fire_at - current)
            handle = await start_scheduled(
                client,
                settings.task_queue,
                plan_path,
                wait_days=wait_days,
                at="02:00",
                timezone="Europe/Berlin",
            )
            result = await handle.result()
            assert result.state == "succeeded"
            child = await client.get_workflow_handle(result.wave_id).describe()
            started.append(child.start_time.astimezone(UTC))
            history = await handle.fetch_history()
            await Replayer(workflows=[ScheduledWaveWorkflow, WaveWorkflow, StageRunWorkflow]).replay_workflow(
                history
            )
            if os.environ.get("PATCHFLOW_RECORD_HISTORIES"):
                (HISTORIES / "scheduled-wave-wait-v1.json").write_text(history.to_json())

    expected = [
        datetime.combine(day + timedelta(days=21), datetime.min.time(), tzinfo=BERLIN).replace(hour=2)
        for day in firings
    ]
    # Each wave started at its planned local start (to the second; the test server skips straight to it).
    for got, want in zip(started, expected, strict=True):
        assert want.astimezone(UTC) <= got < want.astimezone(UTC) + timedelta(seconds=5), (got, want)
    assert started[0].astimezone(BERLIN).hour == 2 and started[0].hour == 1  # CET
    assert started[1].astimezone(BERLIN).hour == 2 and started[1].hour == 0  # CEST, after the March change


async def test_a_firing_without_offset_starts_its_wave_at_once_with_a_fresh_patch_set(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    plan_path = write_plan(tmp_path, make_fleet({"dev": 1, "prod": 1}))
    settings = scheduled_settings(tmp_path)
    client = skip_env.client
    async with build_worker(client, settings.task_queue, settings=settings):
        begin = await skip_env.get_current_time()
        result = await (await start_scheduled(client, settings.task_queue, plan_path)).result()
    assert result.state == "succeeded"
    assert result.wave_id.startswith("wave-sched-")
    child = await client.get_workflow_handle(result.wave_id).describe()
    assert child.start_time - begin < timedelta(minutes=1)
    from patchflow.core.patchsets import PatchSetStore

    pinned = PatchSetStore(settings.patch_set_dir).resolve(result.patch_set_id)
    assert pinned.patches, "the firing pinned the plan's evaluated patch set"


async def test_a_firing_whose_schedule_was_paused_during_the_wait_starts_no_wave(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    checked: list[str] = []
    paused_meanwhile = schedule_check(
        False, "schedule patchflow-sched was paused during the wait (audit)", asked=checked
    )
    plan_path = write_plan(tmp_path, make_fleet({"dev": 1, "prod": 1}))
    settings = scheduled_settings(tmp_path)
    async with scheduled_worker(skip_env.client, settings, paused_meanwhile):
        begin = await skip_env.get_current_time()
        handle = await start_scheduled(
            skip_env.client,
            settings.task_queue,
            plan_path,
            wait_days=15,
            at="02:00",
            timezone="Europe/Berlin",
            check_schedule=True,
        )
        result = await handle.result()
        end = await skip_env.get_current_time()
    assert checked == ["patchflow-sched"]
    assert (result.state, result.wave_id) == ("skipped", "")
    assert "paused during the wait" in result.reason
    assert end - begin >= timedelta(days=14)  # it did wait before checking
    from patchflow.core.patchsets import PatchSetStore

    assert PatchSetStore(settings.patch_set_dir).list_ids() == []  # nothing was evaluated or pinned
