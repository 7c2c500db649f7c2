"""Maintenance windows over days, on Temporal's time-skipping test server.

The simulated executor does the patching; a thin wrapper makes every install also consume server time
(``env.sleep`` skips the test server's clock), so a window's cutoff can really pass mid-stage.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.testing import WorkflowEnvironment

from activities.patching import build_executor
from patchflow.core.wavemodel import ExecutorRef, StageInput, WaveInput
from patchflow.core.windows import WindowSpec
from patchflow.executors.base import Package
from tests.workflows.conftest import instance_id, running_worker
from workflows.wave import WaveWorkflow

PATCHES = [Package("openssl", "amd64", "3.0.2-0ubuntu1.16")]


class ServerTimeInstalls:
    """Wraps the real simulated executor; each install takes ``minutes`` of (skipped) server time."""

    def __init__(self, inner: Any, env: WorkflowEnvironment, minutes: int, log: dict[str, datetime]):
        self.inner, self.env, self.minutes, self.log = inner, env, minutes, log

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def start_install(self, instance: str, patches: Any, *, operation_id: str) -> Any:
        self.log[instance] = await self.env.get_current_time()
        return await self.inner.start_install(instance, patches, operation_id=operation_id)

    async def finish_install(self, instance: str, *, operation_id: str) -> Any:
        await self.env.sleep(timedelta(minutes=self.minutes))
        return await self.inner.finish_install(instance, operation_id=operation_id)


def wave(fleet: Path, tmp_path: Path, window: WindowSpec, **stage_fields: Any) -> WaveInput:
    fields: dict[str, Any] = {"max_concurrency": "1", "max_errors": "0", "patch_group": "prod"}
    fields.update(stage_fields)
    return WaveInput(
        wave_id=f"wave-ts-{uuid.uuid4().hex[:8]}",
        plan_name="timeskip",
        patch_set_id="ps-000000000000000000000000",
        patches=PATCHES,
        executor=ExecutorRef(kind="simulated", fleet_path=str(fleet), state_path=str(tmp_path / "s.sqlite")),
        stages=[StageInput(name="prod", window=window, **fields)],
        # Installs consume skipped server time: heartbeats (real time) must not time out meanwhile.
        heartbeat_timeout_seconds=4 * 3600,
    )


async def test_stage_waits_for_its_window_and_carries_over_past_the_cutoff(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    started: dict[str, datetime] = {}
    fleet = make_fleet({"prod": 3})

    def factory(ref: ExecutorRef) -> Any:
        return ServerTimeInstalls(build_executor(ref), skip_env, 35, started)

    # Daily 02:00–03:00 UTC, no new starts after 03:00.
    window = WindowSpec(schedule="cron(0 2 * * ? *)", timezone="UTC", duration_hours=1, cutoff_hours=0)
    inp = wave(fleet, tmp_path, window)
    before = await skip_env.get_current_time()
    async with running_worker(skip_env.client, factory) as tq:
        result = await skip_env.client.execute_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)

    assert result.status.state == "succeeded"
    first, second, third = (started[instance_id("prod", n)].astimezone(UTC) for n in (1, 2, 3))
    day_one = (before + timedelta(days=1) if before.hour >= 2 else before).date()
    # 1 starts when the window opens, 2 at 02:35 (before the 03:00 cutoff), 3 would start at 03:10: carried over
    assert (first.date(), first.hour, first.minute) == (day_one, 2, 0)
    assert second.date() == day_one and second.hour == 2 and 30 <= second.minute <= 40
    assert third.date() == day_one + timedelta(days=1) and third.hour == 2
    assert set(result.status.stages[0].instances.values()) == {"succeeded"}


async def test_patch_tuesday_offset_window_is_slept_through_durably(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    started: dict[str, datetime] = {}
    fleet = make_fleet({"prod": 1})

    def factory(ref: ExecutorRef) -> Any:
        return ServerTimeInstalls(build_executor(ref), skip_env, 1, started)

    # Second Tuesday + 3 days, 02:00 Berlin time: weeks away, slept through on the server.
    window = WindowSpec(
        schedule="cron(0 2 ? * TUE#2 *)",
        timezone="Europe/Berlin",
        offset_days=3,
        duration_hours=4,
        cutoff_hours=1,
    )
    inp = wave(fleet, tmp_path, window)
    async with running_worker(skip_env.client, factory) as tq:
        result = await skip_env.client.execute_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)
    assert result.status.state == "succeeded"
    start = started[instance_id("prod", 1)]
    from zoneinfo import ZoneInfo

    local = start.astimezone(ZoneInfo("Europe/Berlin"))
    assert (
        local.weekday() == 4 and 11 <= local.day <= 17 + 3 and local.hour == 2
    )  # Friday after Patch Tuesday
    assert result.status.stages[0].window_start is not None
