"""Rate control and cutoff behaviour of stages in running waves (dev server and time-skipping server).

A thin wrapper around the simulated executor records, for every install it starts, which installs had finished
and how many were running at that moment — the orders a ramp and a cutoff must respect, without timing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.patching import WaveActivities, build_executor
from patchflow.core.freezes import FreezePeriod
from patchflow.core.wavemodel import ExecutorRef, StageInput, WaveInput, WindowInput
from patchflow.core.windows import WindowSpec
from patchflow.executors.base import Package
from tests.workflows.conftest import instance_id, running_worker
from tests.workflows.test_freeze_wave import factory_for  # installs that take (skipped) server time
from workflows.wave import WaveWorkflow

PATCHES = [Package("openssl", "amd64", "3.0.2-0ubuntu1.16")]


@dataclass
class Start:
    instance: str
    finished: frozenset[str]
    """Installs finished when this one started."""
    running: int
    """Installs running when this one started (itself excluded)."""


@dataclass
class Tracking:
    """Wraps the real simulated executor and records every install's start (see the module docstring)."""

    inner: Any
    starts: list[Start] = field(default_factory=list)
    finished: set[str] = field(default_factory=set)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def start_install(self, instance: str, patches: Any, *, operation_id: str) -> Any:
        running = len(self.starts) - len(self.finished)
        self.starts.append(Start(instance, frozenset(self.finished), running))
        return await self.inner.start_install(instance, patches, operation_id=operation_id)

    async def finish_install(self, instance: str, *, operation_id: str) -> Any:
        result = await self.inner.finish_install(instance, operation_id=operation_id)
        self.finished.add(instance)
        return result


def wave(fleet: Path, tmp_path: Path, **stage_fields: Any) -> WaveInput:
    fields: dict[str, Any] = {
        "name": "prod",
        "window": WindowSpec(schedule="now"),
        "max_concurrency": "1",
        "max_errors": "0",
        "patch_group": "prod",
    }
    fields.update(stage_fields)
    return WaveInput(
        wave_id=f"wave-rate-{uuid.uuid4().hex[:8]}",
        plan_name="rate",
        patch_set_id="ps-000000000000000000000000",
        patches=PATCHES,
        executor=ExecutorRef(kind="simulated", fleet_path=str(fleet), state_path=str(tmp_path / "s.sqlite")),
        stages=[StageInput(**fields)],
        heartbeat_timeout_seconds=5,
    )


async def test_an_exponential_ramp_starts_one_then_two_then_the_full_window(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """User Guide, "Run commands at scale": "The queueing system delivers the command to a single node and waits
    until the system acknowledges the initial invocation before sending the command to two more nodes. The system
    exponentially sends commands to more nodes until the system meets the value of max-concurrency." With
    ``max_concurrency: 4``: one install, then two once it finished, then (the next step, 4, reaches
    max_concurrency) the sliding window of four once both finished."""
    fleet = make_fleet({"prod": 9}, duration=0.3)
    tracking: list[Tracking] = []

    def factory(ref: ExecutorRef) -> Any:
        tracking.append(Tracking(build_executor(ref)))
        return tracking[-1]

    inp = wave(fleet, tmp_path, max_concurrency="4", ramp="exponential")
    async with running_worker(dev_env.client, factory) as tq:
        result = await dev_env.client.execute_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)

    assert result.status.state == "succeeded", result.status
    (executor,) = tracking
    first, second_step, window = executor.starts[0], executor.starts[1:3], executor.starts[3:]
    # Dispatch order is the target order; installs dispatched together may reach the executor in any order.
    assert first.instance == instance_id("prod", 1) and first.running == 0
    assert {s.instance for s in second_step} == {instance_id("prod", n) for n in (2, 3)}
    assert len(window) == 6
    assert all(s.finished == {first.instance} for s in second_step)  # after the first, before each other
    step_two = {s.instance for s in second_step}
    assert all(step_two <= s.finished for s in window)  # the window opens once the whole step finished
    assert max(s.running for s in window) <= 3 and max(s.running for s in executor.starts) <= 3


async def test_without_a_ramp_the_whole_window_starts_at_once(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """patchflow's default (no ramp) keeps its sliding window from the first dispatch: ``max_concurrency: 3``
    starts three installs before any finished."""
    fleet = make_fleet({"prod": 3}, duration=0.5)
    tracking: list[Tracking] = []

    def factory(ref: ExecutorRef) -> Any:
        tracking.append(Tracking(build_executor(ref)))
        return tracking[-1]

    inp = wave(fleet, tmp_path, max_concurrency="3")
    async with running_worker(dev_env.client, factory) as tq:
        result = await dev_env.client.execute_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)
    assert result.status.state == "succeeded"
    assert all(not s.finished for s in tracking[0].starts)


# ------------------------------------------------------------------------------------------ cutoff behaviour

CUTOFF_BEHAVIOR = """botocore's SSM service model, RegisterTaskWithMaintenanceWindow ``CutoffBehavior``: "CONTINUE_TASK:
When the cutoff time is reached, any tasks that are running continue. The default value." and "CANCEL_TASK: ...
For Run Command tasks: When the cutoff time is reached, the system sends a CancelCommand operation that attempts
to cancel the command associated with the task." """


async def test_continue_dispatches_past_the_cutoff_and_the_window_end_but_not_into_a_freeze(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """``cutoff_behavior: continue`` is AWS's default CONTINUE_TASK (quoted in CUTOFF_BEHAVIOR): a stage that
    started in its window goes on with its rate control past the cutoff and the window's end, as a Run Command
    started inside a window does. A change freeze still stops new starts: they carry over. Window 14:00–15:00
    (cutoff 15:00), installs of 35 minutes one at a time, a freeze from 15:30: instances 1–3 start at 14:00,
    14:35 and 15:10 (past the end), instance 4 (due 15:45, in the freeze) in the next day's window."""
    started: dict[str, datetime] = {}
    fleet = make_fleet({"prod": 4})

    # Other tests moved the server's clock on: skip to the next midnight, so day one's window is ahead.
    now = (await skip_env.get_current_time()).astimezone(UTC)
    day_one = now.date() + timedelta(days=1)
    await skip_env.sleep(datetime.combine(day_one, time(0), tzinfo=UTC) - now)
    freeze_from = datetime.combine(day_one, time(15, 30), tzinfo=UTC)
    window = WindowSpec(schedule="cron(0 14 * * ? *)", timezone="UTC", duration_hours=1, cutoff_hours=0)
    inp = wave(fleet, tmp_path, window=window, cutoff_behavior="continue")
    inp.heartbeat_timeout_seconds = 4 * 3600  # installs consume skipped server time, heartbeats real time
    inp.freezes = [FreezePeriod("night", freeze_from, freeze_from + timedelta(hours=20))]
    async with running_worker(skip_env.client, factory_for(skip_env, started, minutes=35)) as tq:
        result = await skip_env.client.execute_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)

    assert result.status.state == "succeeded", result.status
    assert set(result.status.stages[0].instances.values()) == {"succeeded"}
    first, second, third, fourth = (started[instance_id("prod", n)] for n in (1, 2, 3, 4))
    assert (first.date(), first.hour, first.minute) == (day_one, 14, 0)
    assert second.date() == day_one and second.hour == 14 and 30 <= second.minute <= 40
    assert third.date() == day_one and third.hour == 15 and third.minute < 30  # past the cutoff and the end
    assert fourth.date() == day_one + timedelta(days=1) and fourth.hour == 14  # not into the freeze


async def test_next_window_says_where_a_freeze_cuts_the_window() -> None:
    """A stage with ``continue`` runs past its window, never into a change freeze: the window says where the
    next freeze begins, whether it cuts the window (cutoff and end move there) or comes later."""
    daily = WindowSpec(schedule="cron(0 2 * * ? *)", duration_hours=4, cutoff_hours=1)
    after = datetime(2026, 11, 30, 12, tzinfo=UTC)
    cut = FreezePeriod("launch", datetime(2026, 12, 1, 4, tzinfo=UTC), datetime(2026, 12, 3, tzinfo=UTC))
    env = ActivityEnvironment()
    result = await env.run(WaveActivities().next_window, WindowInput(spec=daily, after=after, freezes=[cut]))
    assert (result.cutoff, result.freeze_start) == (cut.start, cut.start)
    result = await env.run(WaveActivities().next_window, WindowInput(spec=daily, after=after))
    assert result.freeze_start is None and result.cutoff == datetime(2026, 12, 1, 5, tzinfo=UTC)
    later = FreezePeriod("later", datetime(2026, 12, 9, tzinfo=UTC), datetime(2026, 12, 10, tzinfo=UTC))
    result = await env.run(
        WaveActivities().next_window, WindowInput(spec=daily, after=after, freezes=[later])
    )
    assert result.freeze_start == later.start and result.end == datetime(2026, 12, 1, 6, tzinfo=UTC)
