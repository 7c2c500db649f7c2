"""Histories of every path a running wave can take, recorded so that workflow changes are replayed against them.

Each test drives one path (stage runs continuing as new, halt and resume, rollback, cancel, reject, the health
gate, a soak interrupted by a halt, maintenance windows, change freezes, a scheduled firing through the schedule
check), replays the fresh histories of the workflow and of every child run (continue-as-new runs included), and
— with ``PATCHFLOW_RECORD_HISTORIES=1`` — keeps them under ``tests/histories/<path>-<RELEASE>/``, where
``test_durability.test_recorded_histories_replay`` replays them for every later change of the workflow code
(sdk-python ``tests/worker/test_replayer.py``: "Replayer.replay_workflow raises on non-determinism").

A release's files are never overwritten: when workflow code changes, bump :data:`RELEASE` and record again, so
both the old and the new histories stay (Temporal "Versioning - Python SDK": running executions replay the
history they were started with).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker

from activities.patching import WaveActivities, build_executor
from activities.scheduling import ScheduleActivities
from patchflow.config import Settings
from patchflow.control.waves import act, wave_status
from patchflow.core.freezes import FreezePeriod
from patchflow.core.wavemodel import ScheduleCheckInput, ScheduleCheckResult, ScheduledWaveInput
from patchflow.core.windows import WindowSpec
from patchflow.service.worker import WORKFLOWS, build_worker
from patchflow.store import db
from tests.workflows.conftest import instance_id, running_worker
from tests.workflows.test_durability import HISTORIES
from tests.workflows.test_freeze_wave import TimedInstalls
from tests.workflows.test_operations import FlakyFleet, SlowDiscovery, SlowSendAfterEach
from tests.workflows.test_schedules import write_plan
from tests.workflows.test_wave import instance_states, settle, stage, start, wave_input
from workflows.scheduled import ScheduledWaveWorkflow
from workflows.wave import WaveWorkflow

#: The workflow code the histories are recorded with: bump it whenever workflows/ changes.
RELEASE = "r2"


async def histories_of(client: Client, workflow_id: str, run_id: str | None = None) -> list[WorkflowHistory]:
    """The history of the run, of its continue-as-new successors, and of every child run, recursively."""
    history = await client.get_workflow_handle(workflow_id, run_id=run_id).fetch_history()
    found = [history]
    for event in history.events:
        if event.event_type == EventType.EVENT_TYPE_CHILD_WORKFLOW_EXECUTION_STARTED:
            child = event.child_workflow_execution_started_event_attributes.workflow_execution
            found += await histories_of(client, child.workflow_id, child.run_id)
    last = history.events[-1]
    if last.event_type == EventType.EVENT_TYPE_WORKFLOW_EXECUTION_CONTINUED_AS_NEW:
        successor = last.workflow_execution_continued_as_new_event_attributes.new_execution_run_id
        found += await histories_of(client, workflow_id, successor)
    return found


async def keep(client: Client, path: str, workflow_id: str) -> list[WorkflowHistory]:
    """Replay the histories of ``workflow_id`` with today's workflow code, and keep them when recording."""
    histories = await histories_of(client, workflow_id)
    replayer = Replayer(workflows=list(WORKFLOWS))
    for history in histories:
        await replayer.replay_workflow(history)
    if os.environ.get("PATCHFLOW_RECORD_HISTORIES"):
        directory = HISTORIES / f"{path}-{RELEASE}"
        directory.mkdir(parents=True, exist_ok=True)
        for number, history in enumerate(histories):
            kind = history.events[0].workflow_execution_started_event_attributes.workflow_type.name
            (directory / f"{number:02d}-{kind}.json").write_text(history.to_json())
    return histories


def run_count(histories: list[WorkflowHistory], kind: str) -> int:
    return sum(
        1
        for h in histories
        if h.events[0].workflow_execution_started_event_attributes.workflow_type.name == kind
    )


# ---------------------------------------------------------------------------------------------- dev server


async def test_stage_runs_continuing_as_new(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    inp = wave_input(
        make_fleet({"prod": 12}), tmp_path, [stage("prod", max_concurrency="1")], history_event_limit=40
    )
    async with running_worker(dev_env.client) as tq:
        result = await (await start(dev_env.client, tq, inp)).result()
    assert result.status.state == "succeeded"
    histories = await keep(dev_env.client, "stage-runs-continue-as-new", inp.wave_id)
    assert run_count(histories, "StageRunWorkflow") >= 3


async def test_halt_and_resume(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    inp = wave_input(make_fleet({"prod": 5}, duration=0.4), tmp_path, [stage("prod", max_concurrency="1")])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        await asyncio.sleep(0.6)
        await act(dev_env.client, inp.wave_id, "halt", who="alice", comment="pager")
        await settle(dev_env.client, inp.wave_id, {"halted"})
        await act(dev_env.client, inp.wave_id, "resume", who="alice")
        result = await handle.result()
    assert result.status.state == "succeeded"
    assert [a.action for a in result.status.audit] == ["start", "halt", "resume"]
    await keep(dev_env.client, "halt-resume", inp.wave_id)


async def test_operator_rollback_then_resume(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"prod": 4}, behaviours={instance_id("prod", 3): {"fail": True}})
    inp = wave_input(fleet, tmp_path, [stage("prod", max_concurrency="1", max_errors="0")])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        await settle(dev_env.client, inp.wave_id, {"halted"})
        await act(dev_env.client, inp.wave_id, "rollback", who="alice")
        for _ in range(100):
            states = instance_states(await wave_status(dev_env.client, inp.wave_id), "prod")
            if states[instance_id("prod", 1)] == "rolled_back":
                break
            await asyncio.sleep(0.1)
        await act(dev_env.client, inp.wave_id, "resume", who="alice")
        result = await handle.result()
    assert result.status.state == "succeeded"
    assert [a.action for a in result.status.audit] == ["start", "rollback", "resume"]
    await keep(dev_env.client, "halt-rollback-resume", inp.wave_id)


async def test_automatic_rollback_then_cancel(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"prod": 3}, behaviours={instance_id("prod", 2): {"fail": True}})
    inp = wave_input(fleet, tmp_path, [stage("prod", max_concurrency="1", on_failure="rollback")])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        status = await settle(dev_env.client, inp.wave_id, {"halted"})
        assert instance_states(status, "prod")[instance_id("prod", 1)] == "rolled_back"
        await act(dev_env.client, inp.wave_id, "cancel", who="alice")
        result = await handle.result()
    assert result.status.state == "cancelled"
    await keep(dev_env.client, "rollback-cancel", inp.wave_id)


async def test_cancel_with_installs_in_flight(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    inp = wave_input(make_fleet({"prod": 3}, duration=60.0), tmp_path, [stage("prod", max_concurrency="2")])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        for _ in range(200):
            states = instance_states(await wave_status(dev_env.client, inp.wave_id), "prod")
            if list(states.values()).count("in_flight") == 2:
                break
            await asyncio.sleep(0.05)
        await act(dev_env.client, inp.wave_id, "cancel", who="alice")
        result = await asyncio.wait_for(handle.result(), timeout=30)
    assert result.status.state == "cancelled"
    await keep(dev_env.client, "cancel-in-flight", inp.wave_id)


async def test_rejected_gate(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    inp = wave_input(
        make_fleet({"dev": 1, "prod": 1}),
        tmp_path,
        [stage("dev"), stage("prod", gate="approval", approvers=["alice"])],
    )
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        await settle(dev_env.client, inp.wave_id, {"waiting_approval"})
        await act(dev_env.client, inp.wave_id, "reject", who="alice", stage="prod", comment="no")
        result = await handle.result()
    assert result.status.state == "failed"
    await keep(dev_env.client, "gate-rejected", inp.wave_id)


async def test_health_gate_halts_and_is_resumed(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"dev": 2, "prod": 1}, behaviours={instance_id("dev", 1): {"fail_health": True}})
    inp = wave_input(fleet, tmp_path, [stage("dev"), stage("prod", gate="health")])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        await settle(dev_env.client, inp.wave_id, {"halted"})
        await act(dev_env.client, inp.wave_id, "resume", who="alice")
        result = await handle.result()
    assert result.status.state == "succeeded"
    await keep(dev_env.client, "health-gate-resume", inp.wave_id)


async def test_halt_during_soak_and_resume(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    inp = wave_input(
        make_fleet({"dev": 1, "prod": 1}), tmp_path, [stage("dev", soak_seconds=4), stage("prod")]
    )
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        for _ in range(200):
            if (await wave_status(dev_env.client, inp.wave_id)).stages[0].state == "soaking":
                break
            await asyncio.sleep(0.05)
        await act(dev_env.client, inp.wave_id, "halt", who="alice")
        await settle(dev_env.client, inp.wave_id, {"halted"})
        await act(dev_env.client, inp.wave_id, "resume", who="alice")
        result = await handle.result()
    assert result.status.state == "succeeded"
    await keep(dev_env.client, "soak-halt-resume", inp.wave_id)


async def test_a_wave_recording_its_history(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """record_history: snapshots and instance results in the history database, through a halt and a resume."""
    url = f"sqlite:///{tmp_path / 'history.db'}"
    db.upgrade(url)
    fleet = make_fleet({"dev": 2, "prod": 3}, behaviours={instance_id("prod", 2): {"fail": True}})
    inp = wave_input(
        fleet,
        tmp_path,
        [stage("dev", soak_seconds=1), stage("prod", max_concurrency="1", max_errors="0")],
        record_history=True,
    )
    task_queue = f"tq-{uuid.uuid4()}"
    async with build_worker(dev_env.client, task_queue, database_url=url):
        handle = await start(dev_env.client, task_queue, inp)
        await settle(dev_env.client, inp.wave_id, {"halted"})
        await act(dev_env.client, inp.wave_id, "resume", who="alice")
        result = await handle.result()
    assert result.status.state == "succeeded"
    await keep(dev_env.client, "recorded-history", inp.wave_id)


async def test_a_halt_before_the_stage_run_starts(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    inp = wave_input(make_fleet({"prod": 2}), tmp_path, [stage("prod")])
    async with running_worker(dev_env.client, lambda ref: SlowDiscovery(build_executor(ref), 1.5)) as tq:
        handle = await start(dev_env.client, tq, inp)
        for _ in range(100):
            if (await wave_status(dev_env.client, inp.wave_id)).stages[0].state == "running":
                break
            await asyncio.sleep(0.05)
        await act(dev_env.client, inp.wave_id, "halt", who="alice")
        await settle(dev_env.client, inp.wave_id, {"halted"})
        await act(dev_env.client, inp.wave_id, "resume", who="alice")
        result = await handle.result()
    assert result.status.state == "succeeded"
    await keep(dev_env.client, "halt-before-run", inp.wave_id)


async def test_a_cancel_during_the_send(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    inp = wave_input(make_fleet({"prod": 2}, duration=60.0), tmp_path, [stage("prod", max_concurrency="2")])
    inp.heartbeat_timeout_seconds = 2
    async with running_worker(dev_env.client, lambda ref: SlowSendAfterEach(build_executor(ref), 4.0)) as tq:
        handle = await start(dev_env.client, tq, inp)
        for _ in range(200):
            states = instance_states(await wave_status(dev_env.client, inp.wave_id), "prod")
            if list(states.values()).count("in_flight") == 2:
                break
            await asyncio.sleep(0.05)
        await act(dev_env.client, inp.wave_id, "cancel", who="alice")
        result = await asyncio.wait_for(handle.result(), timeout=60)
    assert result.status.state == "cancelled"
    await keep(dev_env.client, "cancel-during-send", inp.wave_id)


async def test_a_cancel_through_temporal(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    inp = wave_input(make_fleet({"prod": 3}, duration=60.0), tmp_path, [stage("prod", max_concurrency="2")])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        for _ in range(200):
            states = instance_states(await wave_status(dev_env.client, inp.wave_id), "prod")
            if list(states.values()).count("in_flight") == 2:
                break
            await asyncio.sleep(0.05)
        await handle.cancel()
        with pytest.raises(WorkflowFailureError):
            await asyncio.wait_for(handle.result(), timeout=30)
    await keep(dev_env.client, "temporal-cancel", inp.wave_id)


async def test_a_failed_look_up_halts(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    flaky: list[FlakyFleet] = []

    def factory(ref: Any) -> Any:
        flaky.append(FlakyFleet(build_executor(ref), "discover"))
        return flaky[-1]

    inp = wave_input(make_fleet({"prod": 1}), tmp_path, [stage("prod")])
    async with running_worker(dev_env.client, factory) as tq:
        handle = await start(dev_env.client, tq, inp)
        await settle(dev_env.client, inp.wave_id, {"halted"})
        for fleet in flaky:
            fleet.fixed = True
        await act(dev_env.client, inp.wave_id, "resume", who="alice")
        result = await handle.result()
    assert result.status.state == "succeeded"
    await keep(dev_env.client, "lookup-failed-halt", inp.wave_id)


# ---------------------------------------------------------------------------------------------- time-skipping


async def test_an_expiring_gate(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    gated = stage("prod", gate="approval", approvers=["alice"], expire_after_seconds=7200)
    inp = wave_input(make_fleet({"dev": 1, "prod": 1}), tmp_path, [stage("dev"), gated])
    async with running_worker(skip_env.client) as tq:
        result = await skip_env.client.execute_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)
    assert result.status.state == "failed"
    await keep(skip_env.client, "gate-expired", inp.wave_id)


async def test_windows_and_a_freeze(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """A daily window waited for, its cutoff carrying an instance over to the next day, and a change freeze
    that skips the windows inside it."""
    started: dict[str, Any] = {}

    def factory(ref: Any) -> Any:
        return TimedInstalls(build_executor(ref), skip_env, 35, started)

    now = await skip_env.get_current_time()
    freeze = FreezePeriod("launch", now + timedelta(hours=6), now + timedelta(days=2))
    window = WindowSpec(schedule="cron(0 2 * * ? *)", timezone="UTC", duration_hours=1, cutoff_hours=0)
    inp = wave_input(
        make_fleet({"prod": 3}),
        tmp_path,
        [stage("prod", window=window, max_concurrency="1")],
        freezes=[freeze],
    )
    inp.heartbeat_timeout_seconds = 4 * 3600  # installs consume skipped server time, heartbeats real time
    async with running_worker(skip_env.client, factory) as tq:
        result = await skip_env.client.execute_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)
    assert result.status.state == "succeeded"
    histories = await keep(skip_env.client, "windows-freeze", inp.wave_id)
    assert run_count(histories, "StageRunWorkflow") >= 2  # the cutoff carried an instance over


async def test_scheduled_firing_through_the_schedule_check(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    @activity.defn(name="scheduled_wave_allowed")
    async def still_active(inp: ScheduleCheckInput) -> ScheduleCheckResult:
        return ScheduleCheckResult(True)

    plan_path = write_plan(tmp_path, make_fleet({"dev": 1, "prod": 1}))
    settings = Settings(data_dir=tmp_path / "data", task_queue=f"tq-{uuid.uuid4()}")
    real = ScheduleActivities(settings, skip_env.client)
    acts = WaveActivities()
    worker = Worker(
        skip_env.client,
        task_queue=settings.task_queue,
        workflows=list(WORKFLOWS),
        activities=[
            acts.resolve_targets,
            acts.next_window,
            acts.send_patch_batch,
            acts.wait_patch_batch,
            acts.record_wave,
            real.scheduled_wave_start,
            real.prepare_scheduled_wave,
            still_active,
        ],
    )
    async with worker:
        handle = await skip_env.client.start_workflow(
            ScheduledWaveWorkflow.run,
            ScheduledWaveInput(
                schedule_id="patchflow-sched",
                plan_path=str(plan_path),
                wait_days=2,
                at="02:00",
                timezone="UTC",
                plan_name="sched",
                check_schedule=True,
            ),
            id=f"scheduled-{uuid.uuid4().hex[:8]}",
            task_queue=settings.task_queue,
        )
        result = await handle.result()
    assert result.state == "succeeded"
    histories = await keep(skip_env.client, "scheduled-check", handle.id)
    assert run_count(histories, "WaveWorkflow") == 1


async def test_a_scheduled_firing_whose_wave_is_cancelled_through_temporal(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """The firing reports a wave cancelled through Temporal as ``cancelled`` instead of failing."""
    plan_path = write_plan(
        tmp_path, make_fleet({"dev": 1, "prod": 1}), prod_gate={"approval": {"approvers": ["alice"]}}
    )
    settings = Settings(data_dir=tmp_path / "data", task_queue=f"tq-{uuid.uuid4()}")
    client = skip_env.client
    async with build_worker(client, settings.task_queue, settings=settings):
        handle = await client.start_workflow(
            ScheduledWaveWorkflow.run,
            ScheduledWaveInput(schedule_id="patchflow-sched", plan_path=str(plan_path), plan_name="sched"),
            id=f"scheduled-{uuid.uuid4().hex[:8]}",
            task_queue=settings.task_queue,
        )
        wave_id = ""
        for _ in range(200):
            wave_id = await handle.query(ScheduledWaveWorkflow.wave)
            if wave_id and (await wave_status(client, wave_id)).state == "waiting_approval":
                break
            await asyncio.sleep(0.05)
        await client.get_workflow_handle(wave_id).cancel()
        result = await asyncio.wait_for(handle.result(), timeout=30)
    assert (result.state, result.wave_id) == ("cancelled", wave_id)
    await keep(client, "scheduled-wave-cancelled", handle.id)
