"""Rate control and cutoff behaviour of stages in running waves (dev server and time-skipping server).

A thin wrapper around the simulated executor records, for every install it starts, which installs had finished
and how many were running at that moment — the orders a ramp and a cutoff must respect, without timing.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
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
    order = [s.instance for s in executor.starts]
    assert order == [instance_id("prod", n) for n in range(1, 10)]
    first, second_step, window = executor.starts[0], executor.starts[1:3], executor.starts[3:]
    assert first.running == 0
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
