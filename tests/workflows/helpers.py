"""Builders and drivers shared by the wave tests: a wave's input (simulated fleet or the fake SSM endpoint), starting
it, waiting on its status, and driving it through a script of operator steps.

A driver script is a list of :data:`Step` — ``(client, wave_id) -> awaitable`` — run in order between the start and
the result (:func:`drive`), so a test reads as the path it takes: ``drive(client, inp, halt, until_state("halted"),
resume)``.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

from temporalio import activity
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Worker

from activities.patching import ExecutorFactory, WaveActivities, build_executor
from activities.scheduling import ScheduleActivities
from patchflow.config import Settings
from patchflow.control.waves import act, executor_ref, wave_status
from patchflow.core.freezes import FreezePeriod
from patchflow.core.plans import load_plan
from patchflow.core.wavemodel import (
    ExecutorRef,
    ScheduleCheckInput,
    ScheduleCheckResult,
    ScheduledWaveInput,
    StageInput,
    WaveInput,
    WaveResult,
    WaveStatus,
)
from patchflow.core.windows import WindowSpec
from patchflow.errors import InventoryError
from patchflow.executors.base import Package
from patchflow.executors.simulated import SimulatedExecutor
from patchflow.executors.simulated.fleet import load_fleet
from patchflow.service.worker import WORKFLOWS
from tests.conftest import BASELINES_DIR, EXAMPLES_DIR
from tests.workflows.conftest import SSM_BUCKET, running_worker
from workflows.scheduled import ScheduledWaveWorkflow
from workflows.wave import WaveWorkflow

# ---------------------------------------------------------------------------------------------- simulated waves

PATCHES = [
    Package("openssl", "amd64", "3.0.2-0ubuntu1.16"),
    Package("curl", "amd64", "7.81.0-1ubuntu1.18"),
]
NOW = WindowSpec(schedule="now")


def stage(name: str, **fields: Any) -> StageInput:
    """A stage named after its patch group, window now, ten at a time, no failure tolerated, unless overridden."""
    base: dict[str, Any] = {
        "name": name,
        "window": NOW,
        "max_concurrency": "10",
        "max_errors": "0",
        "patch_group": name,
    }
    base.update(fields)
    return StageInput(**base)


def wave_input(fleet: Path, tmp_path: Path, stages: list[StageInput], **fields: Any) -> WaveInput:
    """A wave of :data:`PATCHES` over the simulated ``fleet`` (its state kept under ``tmp_path``)."""
    return WaveInput(
        wave_id=f"wave-test-{uuid.uuid4().hex[:8]}",
        plan_name="test",
        patch_set_id="ps-000000000000000000000000",
        patches=list(PATCHES),
        executor=ExecutorRef(
            kind="simulated", fleet_path=str(fleet), state_path=str(tmp_path / "fleet.sqlite"), time_scale=1.0
        ),
        stages=stages,
        heartbeat_timeout_seconds=5,
        **fields,
    )


def fleet_of(inp: WaveInput) -> SimulatedExecutor:
    """The simulated fleet the wave patches, to look at what it did."""
    assert inp.executor.fleet_path and inp.executor.state_path
    return SimulatedExecutor(load_fleet(inp.executor.fleet_path), Path(inp.executor.state_path))


# ---------------------------------------------------------------------------------------------- misbehaving fleets


class Slowed:
    """The real executor, with one operation (a subclass's method) taking ``seconds`` longer."""

    def __init__(self, inner: Any, seconds: float) -> None:
        self.inner, self.seconds = inner, seconds

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    @classmethod
    def factory(cls, seconds: float) -> ExecutorFactory:
        """An executor factory for a worker: the real executor of the wave, slowed."""
        return lambda ref: cls(build_executor(ref), seconds)  # type: ignore[return-value]


class SlowSend(Slowed):
    """Every install is sent for real, then its send activity lingers ``seconds``: a cancel arrives while the
    installs are being sent. Shorter than the heartbeat timeout, the send completes before it learns of the cancel;
    longer, the activity hears of the cancel (heartbeats deliver it) before it completes."""

    async def start_install(self, instance: str, patches: Any, *, operation_id: str) -> Any:
        result = await self.inner.start_install(instance, patches, operation_id=operation_id)
        await asyncio.sleep(self.seconds)
        return result


class SlowDiscovery(Slowed):
    """Target resolution (``discover``) takes ``seconds``."""

    async def discover(self) -> Any:
        await asyncio.sleep(self.seconds)
        return await self.inner.discover()


class SlowRestore(Slowed):
    """Restores (rollbacks) take ``seconds``."""

    async def restore(self, instance: str, packages: Any, *, operation_id: str) -> Any:
        await asyncio.sleep(self.seconds)
        return await self.inner.restore(instance, packages, operation_id=operation_id)


class FlakyFleet:
    """The real simulated executor whose ``operation`` (discover / health_check / restore) fails until ``fixed``
    — with an error Temporal does not retry, so the activity fails for good at once, as a transient outage
    does once its retries are used up."""

    def __init__(self, inner: Any, operation: str) -> None:
        self.inner, self.operation, self.fixed = inner, operation, False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if name != self.operation:
            return attr

        async def failing(*args: Any, **kwargs: Any) -> Any:
            if not self.fixed:
                raise InventoryError(f"{name}: the fleet's API is unreachable")
            return await attr(*args, **kwargs)

        return failing


# ---------------------------------------------------------------------------------------------- SSM waves

BUCKET = SSM_BUCKET
OLD, NEW = "3.0.2-0ubuntu1.10", "3.0.2-0ubuntu1.16"


def write_ssm_plan(tmp_path: Path, executor: str) -> Path:
    """A one-stage plan ``ssm-demo`` (Ubuntu staged baseline, example catalog) with the ``executor`` given as YAML."""
    path = tmp_path / "plan.yaml"
    path.write_text(
        f"name: ssm-demo\nbaseline: {BASELINES_DIR / 'ubuntu-staged.yaml'}\n"
        f"catalog: {EXAMPLES_DIR / 'ubuntu-catalog.json'}\nexecutor: {executor}\n"
        "stages:\n  - name: dev\n    targets: {patch_group: dev}\n    window: now\n"
    )
    return path


def ssm_settings(tmp_path: Path, **fields: object) -> Settings:
    """Settings polling SSM quickly and without a request limit worth the name."""
    return Settings(
        data_dir=tmp_path / "data",
        ssm_poll_initial_seconds=0.05,
        ssm_poll_max_seconds=0.2,
        ssm_max_requests_per_second=100,
        **fields,  # type: ignore[arg-type]
    )


def ssm_prod_wave(
    endpoint_url: str,
    tmp_path: Path,
    *,
    name: str = "ssm-prod",
    max_concurrency: str = "1",
    heartbeat_timeout_seconds: int = 5,
    cutoff_behavior: str = "carry_over",
    freezes: list[FreezePeriod] | None = None,
) -> WaveInput:
    """One stage ``prod`` (patch group prod, window now, no error tolerated) patching openssl to :data:`NEW`
    through the SSM endpoint at ``endpoint_url``; its id is ``wave-<name>-…``."""
    plan = load_plan(
        write_ssm_plan(tmp_path, f"{{kind: ssm, region: us-east-1, endpoint_url: '{endpoint_url}'}}")
    )
    prod = StageInput(
        name="prod",
        window=WindowSpec("now"),
        max_concurrency=max_concurrency,
        max_errors="0",
        patch_group="prod",
        cutoff_behavior=cutoff_behavior,
    )
    return WaveInput(
        wave_id=f"wave-{name}-{uuid.uuid4().hex[:8]}",
        plan_name=plan.name,
        patch_set_id="ps-000000000000000000000000",
        patches=[Package("openssl", "amd64", NEW)],
        executor=executor_ref(plan, ssm_settings(tmp_path, ssm_bucket=BUCKET)),
        stages=[prod],
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
        freezes=freezes or [],
    )


# ---------------------------------------------------------------------------------------------- waiting


async def start(client: Client, task_queue: str, inp: WaveInput) -> WorkflowHandle[Any, Any]:
    return await client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue)


async def settle(client: Client, wave_id: str, states: set[str], timeout: float = 60) -> WaveStatus:
    """The wave's status once it is in one of ``states``; fails when it ends otherwise or takes too long."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await wave_status(client, wave_id)
        if status.state in states:
            return status
        assert status.state not in {"succeeded", "failed", "cancelled"} - states, (
            f"wave ended {status.state}: {status}"
        )
        assert asyncio.get_running_loop().time() < deadline, f"wave stuck in {status.state}: {status}"
        await asyncio.sleep(0.2)


async def status_when(
    client: Client,
    wave_id: str,
    done: Callable[[WaveStatus], bool],
    *,
    tries: int | None = 200,
    every: float = 0.05,
) -> WaveStatus:
    """Poll the wave's status until ``done`` holds, ``tries`` times at the most (None: until the test's timeout);
    the last status either way — the caller asserts what it needs."""
    attempt = 0
    while True:
        status = await wave_status(client, wave_id)
        attempt += 1
        if done(status) or (tries is not None and attempt >= tries):
            return status
        await asyncio.sleep(every)


async def until(condition: Callable[[], bool], *, tries: int = 300, every: float = 0.1) -> None:
    """Wait until ``condition()`` holds, ``tries`` times at the most; the caller asserts what it needs."""
    for _ in range(tries):
        if condition():
            return
        await asyncio.sleep(every)


def instance_states(status: WaveStatus, stage_name: str) -> dict[str, str]:
    return next(s for s in status.stages if s.name == stage_name).instances


def succeeded(status: WaveStatus, stage_name: str = "prod") -> int:
    """How many instances of the stage have succeeded."""
    return list(instance_states(status, stage_name).values()).count("succeeded")


def in_flight(count: int, stage_name: str = "prod") -> Callable[[WaveStatus], bool]:
    """A :func:`status_when` condition: ``count`` instances of the stage are in flight."""
    return lambda status: list(instance_states(status, stage_name).values()).count("in_flight") == count


def first_stage(state: str) -> Callable[[WaveStatus], bool]:
    """A :func:`status_when` condition: the wave's first stage is in ``state``."""
    return lambda status: status.stages[0].state == state


# ---------------------------------------------------------------------------------------------- driving

#: One step of a driver script: it acts on, or waits for, the wave ``wave_id``.
Step = Callable[[Client, str], Awaitable[object]]


def do(action: str, **fields: Any) -> Step:
    """The operator action ``action`` (halt, resume, approve, reject, rollback, cancel) with its fields."""
    return lambda client, wave_id: act(client, wave_id, action, **fields)


def until_state(*states: str) -> Step:
    """Wait until the wave is in one of ``states`` (:func:`settle`)."""
    return lambda client, wave_id: settle(client, wave_id, set(states))


def until_status(done: Callable[[WaveStatus], bool], *, tries: int | None = 200, every: float = 0.05) -> Step:
    """Poll until ``done`` holds (:func:`status_when`)."""
    return lambda client, wave_id: status_when(client, wave_id, done, tries=tries, every=every)


def pause(seconds: float) -> Step:
    return lambda client, wave_id: asyncio.sleep(seconds)


#: Wait until the wave is halted, resume it as alice.
HALTED_THEN_RESUMED: tuple[Step, ...] = (until_state("halted"), do("resume", who="alice"))
#: Halt the wave, wait until it is halted, resume it — as alice.
HALT_AND_RESUME: tuple[Step, ...] = (do("halt", who="alice"), *HALTED_THEN_RESUMED)


async def drive(
    client: Client,
    inp: WaveInput,
    *steps: Step,
    factory: ExecutorFactory = build_executor,
    worker: AbstractAsyncContextManager[str] | None = None,
    result_timeout: float | None = None,
) -> WaveResult:
    """Start the wave on a fresh worker (``worker``, or :func:`running_worker` with ``factory``), run ``steps`` in
    order and return the wave's result (waited for ``result_timeout`` seconds at the most; None: no limit)."""
    async with worker or running_worker(client, factory) as task_queue:
        handle = await start(client, task_queue, inp)
        for step in steps:
            await step(client, inp.wave_id)
        result: WaveResult = await asyncio.wait_for(handle.result(), result_timeout)
    return result


# ---------------------------------------------------------------------------------------------- scheduled waves


def scheduled_settings(tmp_path: Path) -> Settings:
    """Settings for a scheduled firing: the data directory under ``tmp_path``, a task queue of its own."""
    return Settings(data_dir=tmp_path / "data", task_queue=f"tq-{uuid.uuid4()}")


def schedule_check(allowed: bool, reason: str = "", *, asked: list[str] | None = None) -> Any:
    """A stand-in ``scheduled_wave_allowed`` activity answering ``allowed`` (the time-skipping test server has no
    Schedules API; the real one is tested against the dev server in test_schedules.py). Appends the schedule ids
    it is asked about to ``asked``."""

    @activity.defn(name="scheduled_wave_allowed")
    async def check(inp: ScheduleCheckInput) -> ScheduleCheckResult:
        if asked is not None:
            asked.append(inp.schedule_id)
        return ScheduleCheckResult(allowed, reason)

    return check


def scheduled_worker(client: Client, settings: Settings, check: Any) -> Worker:
    """A worker on ``settings.task_queue`` serving every workflow, the activities a simulated wave needs, the real
    scheduled-wave activities and ``check`` (:func:`schedule_check`) as the schedule check."""
    waves = WaveActivities()
    scheduling = ScheduleActivities(settings, client)
    return Worker(
        client,
        task_queue=settings.task_queue,
        workflows=list(WORKFLOWS),
        activities=[
            waves.resolve_targets,
            waves.next_window,
            waves.send_patch_batch,
            waves.wait_patch_batch,
            waves.record_wave,
            scheduling.scheduled_wave_start,
            scheduling.prepare_scheduled_wave,
            check,
        ],
    )


async def start_scheduled(
    client: Client, task_queue: str, plan_path: Path, **fields: Any
) -> WorkflowHandle[Any, Any]:
    """Start the scheduled firing of schedule ``patchflow-sched`` of plan ``sched`` at ``plan_path`` (further
    :class:`ScheduledWaveInput` fields in ``fields``) as the schedule would."""
    return await client.start_workflow(
        ScheduledWaveWorkflow.run,
        ScheduledWaveInput(
            schedule_id="patchflow-sched", plan_path=str(plan_path), plan_name="sched", **fields
        ),
        id=f"scheduled-{uuid.uuid4().hex[:8]}",
        task_queue=task_queue,
    )
