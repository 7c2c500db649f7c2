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
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowFailureError, WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from activities.patching import build_executor
from patchflow.control.waves import wave_status
from patchflow.core.freezes import FreezePeriod
from patchflow.core.wavemodel import WaveInput, WaveResult
from patchflow.core.windows import WindowSpec
from patchflow.service.worker import WORKFLOWS, build_worker
from patchflow.store import db
from tests.workflows.conftest import instance_id, running_worker
from tests.workflows.helpers import (
    HALT_AND_RESUME,
    HALTED_THEN_RESUMED,
    FlakyFleet,
    SlowDiscovery,
    SlowSend,
    Step,
    do,
    drive,
    first_stage,
    in_flight,
    instance_states,
    pause,
    schedule_check,
    scheduled_settings,
    scheduled_worker,
    settle,
    stage,
    start_scheduled,
    until_state,
    until_status,
    wave_input,
)
from tests.workflows.test_durability import HISTORIES
from tests.workflows.test_freeze_wave import TimedInstalls
from tests.workflows.test_schedules import write_plan
from workflows.scheduled import ScheduledWaveWorkflow

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


async def record(
    client: Client, path: str, inp: WaveInput, *steps: Step, expect: str = "succeeded", **options: Any
) -> tuple[WaveResult, list[WorkflowHistory]]:
    """Drive the wave along ``steps`` (:func:`drive`, with its ``options``) to its end in state ``expect``; replay
    its histories and keep them under ``path`` (:func:`keep`)."""
    result = await drive(client, inp, *steps, **options)
    assert result.status.state == expect
    return result, await keep(client, path, inp.wave_id)


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
    # Installs that take time (send, then wait): a zero-time one is over within its send, half the events.
    inp = wave_input(
        make_fleet({"prod": 12}, duration=0.05),
        tmp_path,
        [stage("prod", max_concurrency="1")],
        history_event_limit=40,
    )
    _, histories = await record(dev_env.client, "stage-runs-continue-as-new", inp)
    assert run_count(histories, "StageRunWorkflow") >= 3


async def test_halt_and_resume(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    inp = wave_input(make_fleet({"prod": 5}, duration=0.4), tmp_path, [stage("prod", max_concurrency="1")])
    halt = do("halt", who="alice", comment="pager")
    result, _ = await record(dev_env.client, "halt-resume", inp, pause(0.6), halt, *HALTED_THEN_RESUMED)
    assert [a.action for a in result.status.audit] == ["start", "halt", "resume"]


async def test_operator_rollback_then_resume(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"prod": 4}, behaviours={instance_id("prod", 3): {"fail": True}})
    inp = wave_input(fleet, tmp_path, [stage("prod", max_concurrency="1", max_errors="0")])
    first = instance_id("prod", 1)
    rolled_back = until_status(
        lambda s: instance_states(s, "prod")[first] == "rolled_back", tries=100, every=0.1
    )
    rollback = (until_state("halted"), do("rollback", who="alice"), rolled_back, do("resume", who="alice"))
    result, _ = await record(dev_env.client, "halt-rollback-resume", inp, *rollback)
    assert [a.action for a in result.status.audit] == ["start", "rollback", "resume"]


async def test_automatic_rollback_then_cancel(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"prod": 3}, behaviours={instance_id("prod", 2): {"fail": True}})
    inp = wave_input(fleet, tmp_path, [stage("prod", max_concurrency="1", on_failure="rollback")])

    async def halted_with_the_first_rolled_back(client: Client, wave_id: str) -> None:
        status = await settle(client, wave_id, {"halted"})
        assert instance_states(status, "prod")[instance_id("prod", 1)] == "rolled_back"

    cancel = do("cancel", who="alice")
    await record(
        dev_env.client, "rollback-cancel", inp, halted_with_the_first_rolled_back, cancel, expect="cancelled"
    )


async def test_cancel_with_installs_in_flight(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    inp = wave_input(make_fleet({"prod": 3}, duration=60.0), tmp_path, [stage("prod", max_concurrency="2")])
    steps = (until_status(in_flight(2)), do("cancel", who="alice"))
    await record(dev_env.client, "cancel-in-flight", inp, *steps, expect="cancelled", result_timeout=30)


async def test_rejected_gate(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    inp = wave_input(
        make_fleet({"dev": 1, "prod": 1}),
        tmp_path,
        [stage("dev"), stage("prod", gate="approval", approvers=["alice"])],
    )
    reject = do("reject", who="alice", stage="prod", comment="no")
    await record(
        dev_env.client, "gate-rejected", inp, until_state("waiting_approval"), reject, expect="failed"
    )


async def test_health_gate_halts_and_is_resumed(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"dev": 2, "prod": 1}, behaviours={instance_id("dev", 1): {"fail_health": True}})
    inp = wave_input(fleet, tmp_path, [stage("dev"), stage("prod", gate="health")])
    await record(dev_env.client, "health-gate-resume", inp, *HALTED_THEN_RESUMED)


async def test_halt_during_soak_and_resume(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    inp = wave_input(
        make_fleet({"dev": 1, "prod": 1}), tmp_path, [stage("dev", soak_seconds=4), stage("prod")]
    )
    soaking = until_status(first_stage("soaking"))
    await record(dev_env.client, "soak-halt-resume", inp, soaking, *HALT_AND_RESUME)


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
    worker = running_worker(dev_env.client, database_url=url)
    await record(dev_env.client, "recorded-history", inp, *HALTED_THEN_RESUMED, worker=worker)


async def test_a_halt_before_the_stage_run_starts(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    inp = wave_input(make_fleet({"prod": 2}), tmp_path, [stage("prod")])
    running = until_status(first_stage("running"), tries=100)
    await record(
        dev_env.client, "halt-before-run", inp, running, *HALT_AND_RESUME, factory=SlowDiscovery.factory(1.5)
    )


async def test_a_cancel_during_the_send(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    inp = wave_input(make_fleet({"prod": 2}, duration=60.0), tmp_path, [stage("prod", max_concurrency="2")])
    inp.heartbeat_timeout_seconds = 2
    steps = (until_status(in_flight(2)), do("cancel", who="alice"))
    await record(
        dev_env.client,
        "cancel-during-send",
        inp,
        *steps,
        expect="cancelled",
        factory=SlowSend.factory(4.0),
        result_timeout=60,
    )


async def test_a_cancel_through_temporal(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    inp = wave_input(make_fleet({"prod": 3}, duration=60.0), tmp_path, [stage("prod", max_concurrency="2")])

    async def cancel_through_temporal(client: Client, wave_id: str) -> None:
        await client.get_workflow_handle(wave_id).cancel()

    with pytest.raises(WorkflowFailureError):
        await drive(
            dev_env.client, inp, until_status(in_flight(2)), cancel_through_temporal, result_timeout=30
        )
    await keep(dev_env.client, "temporal-cancel", inp.wave_id)


async def test_a_failed_look_up_halts(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    flaky: list[FlakyFleet] = []

    def factory(ref: Any) -> Any:
        flaky.append(FlakyFleet(build_executor(ref), "discover"))
        return flaky[-1]

    async def fix_the_fleet(client: Client, wave_id: str) -> None:
        for fleet in flaky:
            fleet.fixed = True

    inp = wave_input(make_fleet({"prod": 1}), tmp_path, [stage("prod")])
    steps = (until_state("halted"), fix_the_fleet, do("resume", who="alice"))
    await record(dev_env.client, "lookup-failed-halt", inp, *steps, factory=factory)


# ---------------------------------------------------------------------------------------------- time-skipping


async def test_an_expiring_gate(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    gated = stage("prod", gate="approval", approvers=["alice"], expire_after_seconds=7200)
    inp = wave_input(make_fleet({"dev": 1, "prod": 1}), tmp_path, [stage("dev"), gated])
    await record(skip_env.client, "gate-expired", inp, expect="failed")


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
    _, histories = await record(skip_env.client, "windows-freeze", inp, factory=factory)
    assert run_count(histories, "StageRunWorkflow") >= 2  # the cutoff carried an instance over


async def test_scheduled_firing_through_the_schedule_check(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    plan_path = write_plan(tmp_path, make_fleet({"dev": 1, "prod": 1}))
    settings = scheduled_settings(tmp_path)
    async with scheduled_worker(skip_env.client, settings, schedule_check(True)):
        handle = await start_scheduled(
            skip_env.client,
            settings.task_queue,
            plan_path,
            wait_days=2,
            at="02:00",
            timezone="UTC",
            check_schedule=True,
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
    settings = scheduled_settings(tmp_path)
    client = skip_env.client
    async with build_worker(client, settings.task_queue, settings=settings):
        handle = await start_scheduled(client, settings.task_queue, plan_path)
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
