"""Waves that survive operations (issue 18): rolling deploys of the workers, concurrent operator actions,
Temporal-level cancels — each on the real dev server, with real worker processes where a deploy is the point."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from temporalio.activity import ActivityCancellationDetails
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowExecutionStatus,
    WorkflowFailureError,
)
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import ApplicationError, CancelledError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.patching import WaveActivities, build_executor
from activities.scheduling import ScheduleActivities
from patchflow.config import Settings
from patchflow.control.waves import WaveActionRefused, act, wave_status
from patchflow.core.instances import RepoSource
from patchflow.core.plans import load_plan
from patchflow.core.wavemodel import (
    ExecutorRef,
    OperatorAction,
    PatchBatchInput,
    PrepareWaveInput,
)
from patchflow.executors.base import InstallResult, Package, PackageChange
from patchflow.metrics import Metrics
from patchflow.service.worker import build_worker
from patchflow.store import db
from patchflow.testing.ssm_endpoint import SsmEndpoint
from tests.conftest import REPO_ROOT
from tests.workflows.conftest import instance_id, running_worker
from tests.workflows.helpers import (
    NEW,
    OLD,
    FlakyFleet,
    SlowDiscovery,
    SlowRestore,
    SlowSend,
    first_stage,
    fleet_of,
    in_flight,
    settle,
    ssm_prod_wave,
    stage,
    start,
    status_when,
    until,
    wave_input,
)
from workflows.wave import WaveWorkflow


class WorkerProcess:
    """``patchflow worker`` in its own process, as a deployment runs it; stopped with SIGTERM like a rolling
    deploy stops a pod."""

    def __init__(
        self, address: str, task_queue: str, data_dir: Path, log: Path, grace_seconds: float
    ) -> None:
        env = {
            **os.environ,
            "PATCHFLOW_TEMPORAL_ADDRESS": address,
            "PATCHFLOW_TASK_QUEUE": task_queue,
            "PATCHFLOW_DATA_DIR": str(data_dir),
            "PATCHFLOW_WORKER_METRICS_PORT": "none",
            "PATCHFLOW_TEMPORAL_METRICS_PORT": "none",
            "PATCHFLOW_WORKER_SHUTDOWN_GRACE_SECONDS": str(grace_seconds),
        }
        self.log = log
        with log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "patchflow", "worker"], cwd=REPO_ROOT, env=env, stdout=out, stderr=out
            )

    async def polling(self, timeout: float = 30) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while "worker polling" not in self.log.read_text(errors="replace"):
            assert self.process.poll() is None, self.log.read_text(errors="replace")
            assert asyncio.get_running_loop().time() < deadline, "the worker did not start"
            await asyncio.sleep(0.1)

    async def stop(self) -> int:
        """SIGTERM, then wait for the process to exit by itself (its graceful shutdown)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        for _ in range(300):
            if self.process.poll() is not None:
                return self.process.returncode
            await asyncio.sleep(0.1)
        self.process.kill()
        self.process.wait(timeout=10)
        raise AssertionError("the worker did not stop within 30 s of SIGTERM")


async def pending_waits(client: Client, run_id: str) -> list[Any]:
    """The stage run's pending ``wait_patch_batch`` activities (attempt, state, last worker)."""
    description = await client.get_workflow_handle(run_id).describe()
    return [
        a
        for a in description.raw_description.pending_activities
        if a.activity_type.name == "wait_patch_batch"
    ]


async def test_a_rolling_restart_of_the_workers_mid_install_cancels_and_repeats_nothing(
    dev_env: WorkflowEnvironment, endpoint: SsmEndpoint, tmp_path: Path
) -> None:
    """Workers are replaced one after the other (start the new one, SIGTERM the old one) while SSM commands
    run — nothing cancelled, nothing failed, nothing installed twice.

    Step 1 stops a worker without a grace period: its wait activities are cancelled by the shutdown
    (``activity.cancellation_details().worker_shutdown``), which must leave the commands alone, and the retry on
    the new worker waits for the very same commands. Step 2 stops a worker with a grace period longer than the
    installs: it finishes the waits it holds before it exits (sdk-python ``Worker(graceful_shutdown_timeout=)``,
    README "Worker Shutdown")."""
    installed = [Package("openssl", "amd64", OLD)]
    ids = [f"i-0prod00000000000{n}" for n in range(1, 5)]
    for iid in ids:
        endpoint.register_instance(iid, tags={"Patch Group": "prod"}, packages=installed)
        endpoint.script(iid, "slow", seconds=25)
    inp = ssm_prod_wave(endpoint.url, tmp_path, name="rolling", max_concurrency="4")
    client = dev_env.client
    address = client.service_client.config.target_host
    task_queue = f"tq-{uuid.uuid4()}"
    logs = tmp_path / "workers"
    logs.mkdir()
    workers: list[WorkerProcess] = []

    async def new_worker(grace_seconds: float) -> WorkerProcess:
        worker = WorkerProcess(
            address, task_queue, tmp_path / "data", logs / f"{len(workers)}.log", grace_seconds
        )
        workers.append(worker)
        await worker.polling()
        return worker

    try:
        first = await new_worker(0)
        await client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue)
        # every command sent: the installs run on the instances now
        await until(lambda: endpoint.command_count(None, "AWS-RunPatchBaseline") == 4)
        assert endpoint.command_count(None, "AWS-RunPatchBaseline") == 4
        run_id = (await wave_status(client, inp.wave_id)).stages[0].active_run_id
        assert run_id is not None

        # Step 1: no grace — the shutdown cancels the waits; another worker takes them over.
        second = await new_worker(30)
        assert await first.stop() == 0, first.log.read_text(errors="replace")
        for _ in range(300):
            waits = await pending_waits(client, run_id)
            if waits and all(
                w.attempt >= 2
                and w.last_worker_identity.startswith(f"{second.process.pid}@")
                and w.state == PendingActivityState.PENDING_ACTIVITY_STATE_STARTED
                for w in waits
            ):
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"the waits were not taken over: {await pending_waits(client, run_id)}")

        # Step 2: a grace longer than the installs — the stopping worker finishes the waits it holds.
        await new_worker(0)
        assert await second.stop() == 0, second.log.read_text(errors="replace")
        status = await status_when(client, inp.wave_id, lambda s: s.state != "running", tries=601, every=0.1)
    finally:
        for worker in workers:
            await worker.stop()

    assert status.state == "succeeded", status
    assert status.stages[0].instances == dict.fromkeys(ids, "succeeded")
    assert status.stages[0].errors == 0
    assert endpoint.requests["CancelCommand"] == 0
    for iid in ids:
        assert endpoint.command_count(iid, "AWS-RunPatchBaseline") == 1  # never sent twice
        assert endpoint.packages(iid)["openssl.amd64"] == NEW
    history = await client.get_workflow_handle(run_id).fetch_history()
    finished_on = {
        e.activity_task_started_event_attributes.identity.split("@")[0]
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED
        and e.activity_task_started_event_attributes.attempt >= 2
    }
    assert finished_on == {str(second.process.pid)}  # completed by the worker that was stopping meanwhile


class WaitingFleet:
    """An executor whose installs never finish by themselves; records what it was asked to cancel."""

    def __init__(self) -> None:
        self.cancelled: list[str] = []
        self.waiting = asyncio.Event()

    async def finish_install(self, instance_id: str, *, operation_id: str) -> Any:
        self.waiting.set()
        await asyncio.Event().wait()

    async def cancel(self, operation_id: str) -> bool:
        self.cancelled.append(operation_id)
        return True


@pytest.mark.parametrize(
    ("why", "cancels_commands"),
    [
        (ActivityCancellationDetails(cancel_requested=True), True),
        (ActivityCancellationDetails(worker_shutdown=True), False),
        (ActivityCancellationDetails(not_found=True), False),
        (ActivityCancellationDetails(timed_out=True), False),
        (ActivityCancellationDetails(paused=True), False),
    ],
)
async def test_only_a_cancel_the_wave_asked_for_cancels_the_fleets_commands(
    why: ActivityCancellationDetails, cancels_commands: bool
) -> None:
    """sdk-python ``activity.cancellation_details()``: a cancel the workflow requested, a worker shutdown, a
    heartbeat/start-to-close timeout (``not_found``/``timed_out``: the server already retries elsewhere) and a
    pause all reach the activity as ``CancelledError``; only the first may cancel the installs."""
    fleet = WaitingFleet()
    acts = WaveActivities(lambda ref: fleet)  # type: ignore[arg-type,return-value]
    env = ActivityEnvironment()
    inp = PatchBatchInput(
        executor=ExecutorRef(kind="fake"), wave_id="w", stage="prod", instance_ids=["i-1", "i-2"], patches=[]
    )
    task = asyncio.ensure_future(env.run(acts.wait_patch_batch, inp))
    await fleet.waiting.wait()
    env.cancel(why)
    if why.worker_shutdown:
        with pytest.raises(ApplicationError, match="worker is shutting down") as raised:
            await task
        assert raised.value.type == "WorkerShutdown" and not raised.value.non_retryable
    else:
        with pytest.raises(asyncio.CancelledError):
            await task
    assert fleet.cancelled == (["w/prod/i-1/install/0", "w/prod/i-2/install/0"] if cancels_commands else [])


class QuickFleet:
    """An executor whose start finishes some installs at once (the SSH executor's start waits briefly)."""

    async def start_install(self, instance_id: str, patches: Any, *, operation_id: str, **_: Any) -> Any:
        if instance_id == "i-1":
            return InstallResult(instance_id, "succeeded", changed=(PackageChange("app", "all", "1", "2"),))
        return None


async def test_installs_finished_by_the_send_are_final_and_counted() -> None:
    registry = CollectorRegistry()
    acts = WaveActivities(lambda ref: QuickFleet(), Metrics(registry))  # type: ignore[arg-type,return-value]
    inp = PatchBatchInput(
        executor=ExecutorRef(kind="ssh"), wave_id="w", stage="dev", instance_ids=["i-1", "i-2"], patches=[]
    )
    result = await ActivityEnvironment().run(acts.send_patch_batch, inp)
    assert [(o.instance_id, o.status) for o in result.outcomes] == [("i-1", "succeeded"), ("i-2", "started")]
    labels = {"executor": "ssh", "outcome": "succeeded"}
    assert (
        registry.get_sample_value("patchflow_patch_duration_seconds_count", labels) == 1
    )  # only the finished


# ---------------------------------------------------------------------------------------------- decisions


async def outcomes(*calls: Awaitable[str]) -> tuple[list[str], list[str]]:
    """Run operator actions at the same moment: (answers of the accepted ones, reasons of the refused ones)."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException) and not isinstance(r, WaveActionRefused):
            raise r
    return [r for r in results if isinstance(r, str)], [
        str(r) for r in results if isinstance(r, WaveActionRefused)
    ]


async def test_a_gate_takes_exactly_one_decision_among_concurrent_updates(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """Issue 12: approve and reject sent at the same moment were both accepted (the last one won). Per gate, eight
    approvers act at once (Temporal admits 10 Updates in flight per execution: dynamic config
    ``history.maxInFlightUpdates``); exactly one decision is accepted, every other is refused naming who decided
    and when — also after the gate has moved on."""
    gates = [f"g{n}" for n in range(1, 7)]
    approvers = [f"op{n}" for n in range(8)]
    fleet = make_fleet({"dev": 1, **dict.fromkeys(gates, 1)})
    stages = [stage("dev")] + [stage(g, gate="approval", approvers=approvers) for g in gates]
    inp = wave_input(fleet, tmp_path, stages)
    client = dev_env.client
    winners: dict[str, str] = {}
    async with running_worker(client) as tq:
        handle = await start(client, tq, inp)
        for round_no, gate in enumerate(gates):
            status = await settle(client, inp.wave_id, {"waiting_approval"})
            assert status.stages[round_no + 1].state == "waiting_approval"
            last = gate == gates[-1]  # the last gate also sees rejections racing the approvals
            calls = [
                act(client, inp.wave_id, "reject" if last and n % 2 else "approve", who=who, stage=gate)
                for n, who in enumerate(approvers)
            ]
            accepted, refused = await outcomes(*calls)
            assert len(accepted) == 1, (gate, accepted)
            winner = accepted[0].rsplit(" by ", 1)[1]
            winners[gate] = accepted[0]
            assert len(refused) == len(approvers) - 1
            for reason in refused:
                assert re.search(
                    rf"stage '{gate}' was already (approved|rejected) by {winner} at \d{{4}}-\d\d-\d\d "
                    r"\d\d:\d\d:\d\d UTC; a gate takes one decision",
                    reason,
                ), reason
            if not last:  # a late decision, after the gate has moved on, hears the same
                with pytest.raises(WaveActionRefused, match=f"already approved by {winner}"):
                    await act(client, inp.wave_id, "reject", who=approvers[0], stage=gate)
        result = await handle.result()
    decisions = [(a.stage, a.action, a.who) for a in result.status.audit if a.action in ("approve", "reject")]
    assert [d[0] for d in decisions] == gates  # one audited decision per gate
    for gate, answer in winners.items():
        if "approved" in answer:
            note = next(s.note for s in result.status.stages if s.name == gate)
            assert note == f"approved by {answer.rsplit(' by ', 1)[1]}"
    assert result.status.state == ("failed" if "rejected" in winners[gates[-1]] else "succeeded"), (
        winners[gates[-1]],
        refused,
        [(s.name, s.state, s.note) for s in result.status.stages],
        decisions,
    )


async def test_resume_and_rollback_are_one_decision_at_a_time(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """Issue 18: a resume sent while an operator's rollback ran was answered "resumed" and then dropped (the wave
    stayed halted), and two decisions sent together were both accepted. Now a decision is refused while a
    rollback runs, exactly one of two concurrent decisions is accepted, and the accepted one is carried out."""
    fleet = make_fleet({"prod": 4}, behaviours={instance_id("prod", 3): {"fail": True}})
    inp = wave_input(fleet, tmp_path, [stage("prod", max_concurrency="1", max_errors="0")])
    client = dev_env.client
    async with running_worker(client, SlowRestore.factory(3.0)) as tq:
        handle = await start(client, tq, inp)
        await settle(client, inp.wave_id, {"halted"})
        assert await act(client, inp.wave_id, "rollback", who="alice") == "rollback requested"
        with pytest.raises(WaveActionRefused, match="a rollback of stage 'prod' is running"):
            await act(client, inp.wave_id, "resume", who="bob")
        status = await status_when(
            client,
            inp.wave_id,
            lambda s: s.stages[0].instances[instance_id("prod", 1)] == "rolled_back",
            every=0.1,
        )
        assert status.state == "halted"
        accepted, refused = await outcomes(
            act(client, inp.wave_id, "resume", who="bob"), act(client, inp.wave_id, "resume", who="carol")
        )
        assert accepted == ["resumed"] and len(refused) == 1, (accepted, refused)
        assert re.search(
            r"resume refused: (a resume was already accepted|the wave is already resuming)", refused[0]
        )
        result = await asyncio.wait_for(handle.result(), timeout=60)
    assert result.status.state == "succeeded"
    assert [a.action for a in result.status.audit] == ["start", "rollback", "resume"]
    states = result.status.stages[0].instances
    assert {states[instance_id("prod", n)] for n in (1, 2, 4)} == {
        "succeeded"
    }  # re-dispatched after the rollback


async def test_an_update_in_the_first_workflow_task_sees_the_initialised_wave(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """An Update delivered with the workflow's first task (update-with-start here; the same happens when a new
    worker replays a wave after a restart) is validated before ``run`` has executed a line: the state comes
    from ``@workflow.init`` (sdk-python README "Workflow Init"), not from ``run``. Before, the halt was refused
    with "the wave has not initialised yet"."""
    inp = wave_input(make_fleet({"prod": 2}), tmp_path, [stage("prod")])
    client = dev_env.client
    async with running_worker(client) as tq:
        start_op = WithStartWorkflowOperation(
            WaveWorkflow.run,
            inp,
            id=inp.wave_id,
            task_queue=tq,
            id_conflict_policy=WorkflowIDConflictPolicy.FAIL,
        )
        answer = await client.execute_update_with_start_workflow(
            WaveWorkflow.halt,
            OperatorAction(who="alice", reason="hold it"),
            start_workflow_operation=start_op,
        )
        assert answer.startswith("halt requested")
        status = await settle(client, inp.wave_id, {"halted"})
        assert [a.action for a in status.audit] == ["halt", "start"]
        await act(client, inp.wave_id, "cancel", who="alice")
        result = await (await start_op.workflow_handle()).result()
    assert result.status.state == "cancelled"


# ---------------------------------------------------------------------------------------------- halts


async def test_a_halt_accepted_before_the_stage_run_starts_patches_nothing(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """Issue 18: a halt accepted while the stage's targets were resolved was passed to the stage run only after
    it had started — and dispatched its first instance. The flags are checked before the run starts."""
    inp = wave_input(make_fleet({"prod": 3}), tmp_path, [stage("prod", max_concurrency="1")])
    client = dev_env.client
    async with running_worker(client, SlowDiscovery.factory(2.0)) as tq:
        handle = await start(client, tq, inp)
        status = await status_when(client, inp.wave_id, first_stage("running"), tries=100)
        assert not status.stages[0].instances  # still resolving the targets
        await act(client, inp.wave_id, "halt", who="alice")
        halted = await settle(client, inp.wave_id, {"halted"})
        assert set(halted.stages[0].instances.values()) == {"pending"}
        assert all(i["install_count"] == 0 for i in fleet_of(inp).status()["instances"])
        await act(client, inp.wave_id, "resume", who="alice")
        result = await handle.result()
    assert result.status.state == "succeeded"
    assert all(i["install_count"] == 1 for i in fleet_of(inp).status()["instances"])


async def test_resuming_a_halt_during_the_soak_returns_the_wave_to_soaking(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """Issue 18: after a resume during the soak the wave went on soaking but said "halted" (and took another
    resume, refused a new halt). Now it says soaking again, and can be halted again."""
    inp = wave_input(
        make_fleet({"dev": 1, "prod": 1}), tmp_path, [stage("dev", soak_seconds=6), stage("prod")]
    )
    client = dev_env.client
    async with running_worker(client) as tq:
        handle = await start(client, tq, inp)
        await status_when(client, inp.wave_id, first_stage("soaking"))
        await act(client, inp.wave_id, "halt", who="alice")
        await settle(client, inp.wave_id, {"halted"})
        await act(client, inp.wave_id, "resume", who="alice")
        status = await settle(client, inp.wave_id, {"running"})
        assert (status.state, status.stages[0].state, status.reason) == ("running", "soaking", "")
        with pytest.raises(WaveActionRefused, match="cannot resume a wave that is running"):
            await act(client, inp.wave_id, "resume", who="alice")
        await act(client, inp.wave_id, "halt", who="bob")  # a halt applies again
        await settle(client, inp.wave_id, {"halted"})
        await act(client, inp.wave_id, "resume", who="bob")
        result = await handle.result()
    assert result.status.state == "succeeded"
    assert [a.action for a in result.status.audit] == ["start", "halt", "resume", "halt", "resume"]


# ---------------------------------------------------------------------------------------------- cancels


async def test_a_cancel_during_the_send_cancels_the_commands_already_sent(
    dev_env: WorkflowEnvironment, endpoint: SsmEndpoint, tmp_path: Path
) -> None:
    """Issue 18: a cancel that reached a send activity half-way cancelled the activity, and the SSM commands it
    had already sent ran on, unrecorded, while the instances were reported "cancelled by an operator". The send
    is now let finish, and the abort path cancels what it sent (SSM ``CancelCommand``)."""
    installed = [Package("openssl", "amd64", OLD)]
    ids = [f"i-0prod00000000000{n}" for n in (1, 2)]
    for iid in ids:
        endpoint.register_instance(iid, tags={"Patch Group": "prod"}, packages=installed)
        endpoint.script(iid, "slow", seconds=60)
    inp = ssm_prod_wave(
        endpoint.url,
        tmp_path,
        name="send-cancel",
        max_concurrency="2",
        heartbeat_timeout_seconds=2,  # heartbeats (and so the cancel) reach the send within ~2 s
    )
    client = dev_env.client
    async with running_worker(client, SlowSend.factory(8.0)) as tq:
        handle = await client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)
        # both commands sent; the send activity is still running
        await until(lambda: endpoint.command_count(None, "AWS-RunPatchBaseline") == 2, every=0.05)
        assert endpoint.command_count(None, "AWS-RunPatchBaseline") == 2
        await act(client, inp.wave_id, "cancel", who="alice", comment="wrong patch set")
        result = await asyncio.wait_for(handle.result(), timeout=60)
    assert result.status.state == "cancelled"
    stage_status = result.status.stages[0]
    assert stage_status.instances == dict.fromkeys(
        ids, "cancelled"
    )  # reported, never counted (issue 11 item 5)
    assert set(stage_status.details.values()) == {"cancelled by an operator"}
    assert endpoint.requests["CancelCommand"] >= 2  # what was sent was cancelled
    for iid in ids:
        assert endpoint.command_count(iid, "AWS-RunPatchBaseline") == 1
        assert endpoint.packages(iid)["openssl.amd64"] == OLD


async def test_a_cancel_through_temporal_ends_the_wave_cancelled_and_recorded(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """Issue 18: after ``temporal workflow cancel`` (or the UI's cancel) the wave and its stage run were cancelled
    in Temporal while ``wave status`` said "running" forever and the history database never heard of the end.
    Now the wave aborts its stage run (in-flight installs cancelled and recorded), finalises its status and
    history, and then ends Cancelled in Temporal (sdk-python README "Workflow cancellation": a workflow may
    catch ``asyncio.CancelledError``, clean up, and re-raise)."""
    url = f"sqlite:///{tmp_path / 'history.db'}"
    db.upgrade(url)
    inp = wave_input(
        make_fleet({"prod": 3}, duration=60.0),
        tmp_path,
        [stage("prod", max_concurrency="2")],
        record_history=True,
    )
    client = dev_env.client
    task_queue = f"tq-{uuid.uuid4()}"
    async with build_worker(client, task_queue, database_url=url):
        handle = await start(client, task_queue, inp)
        status = await status_when(client, inp.wave_id, in_flight(2))
        run_id = status.stages[0].active_run_id
        assert run_id is not None
        await handle.cancel()
        with pytest.raises(WorkflowFailureError) as failure:
            await asyncio.wait_for(handle.result(), timeout=30)
        assert isinstance(failure.value.cause, CancelledError)
        status = await wave_status(client, inp.wave_id)
        run = await client.get_workflow_handle(run_id).describe()
    assert status.state == "cancelled" and "cancelled through Temporal" in status.reason
    prod = status.stages[0]
    assert prod.state == "cancelled" and prod.active_run_id is None
    assert sorted(prod.instances.values()) == ["cancelled", "cancelled", "not_attempted"]
    assert {prod.details[i] for i, s in prod.instances.items() if s == "cancelled"} == {
        "cancelled by an operator"
    }
    assert ("cancel", "temporal") in {(a.action, a.who) for a in status.audit}
    assert run.status == WorkflowExecutionStatus.COMPLETED  # aborted by its wave, not left cancelled
    with db.open_session(db.get_engine(url)) as session:
        recorded = db.get_wave(session, wave_id=inp.wave_id)
        assert recorded.state == "cancelled" and recorded.finished_at is not None


async def test_a_stage_run_cancelled_through_temporal_halts_its_wave(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """Cancelling only the stage run (its own workflow in the Temporal UI) aborts it like a cancel — in-flight
    installs cancelled and recorded — and the wave halts on it instead of failing."""
    inp = wave_input(make_fleet({"prod": 3}, duration=60.0), tmp_path, [stage("prod", max_concurrency="2")])
    client = dev_env.client
    async with running_worker(client) as tq:
        handle = await start(client, tq, inp)
        status = await status_when(client, inp.wave_id, in_flight(2))
        assert status.stages[0].active_run_id is not None
        await client.get_workflow_handle(status.stages[0].active_run_id).cancel()
        halted = await settle(client, inp.wave_id, {"halted"}, timeout=30)
        assert sorted(halted.stages[0].instances.values()) == ["cancelled", "cancelled", "pending"]
        await act(client, inp.wave_id, "cancel", who="alice")
        assert (await handle.result()).status.state == "cancelled"


# ---------------------------------------------------------------------------------------------- look-ups


@pytest.mark.parametrize("operation", ["discover", "health_check", "restore"])
async def test_a_look_up_that_fails_for_good_halts_the_wave_with_the_reason(
    operation: str, dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """Issue 18: a failed resolve_targets, health_check, next_window or rollback batch failed the whole wave.
    Now the wave halts and says why; a resume tries again."""
    behaviours = {instance_id("prod", 2): {"fail": True}} if operation == "restore" else {}
    fleet = make_fleet({"dev": 1, "prod": 2}, behaviours=behaviours)
    stages = [
        stage("dev"),
        stage("prod", gate="health" if operation == "health_check" else "auto", max_concurrency="1",
              on_failure="rollback" if operation == "restore" else "halt"),
    ]  # fmt: skip
    inp = wave_input(fleet, tmp_path, stages)
    flaky: list[FlakyFleet] = []

    def factory(ref: ExecutorRef) -> Any:
        flaky.append(FlakyFleet(build_executor(ref), operation))
        return flaky[-1]

    client = dev_env.client
    async with running_worker(client, factory) as tq:
        handle = await start(client, tq, inp)
        status = await settle(client, inp.wave_id, {"halted"})
        if operation == "restore":  # the budget halt, whose automatic rollback failed
            note = next(s.note for s in status.stages if s.name == "prod")
            assert "rollback failed: restore: the fleet's API is unreachable" in note
        else:
            what = "resolving its targets" if operation == "discover" else "the health check"
            assert status.reason.startswith(f"stage dev: {what} failed:" if operation == "discover" else
                                            f"stage prod: {what} failed:"), status.reason  # fmt: skip
            assert "the fleet's API is unreachable" in status.reason
        for fleet_client in flaky:
            fleet_client.fixed = True
        await act(client, inp.wave_id, "resume", who="alice")
        result = await handle.result()
    assert result.status.state == "succeeded"


async def test_preparing_a_scheduled_wave_blocks_no_event_loop(
    make_fleet: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 18: prepare_scheduled_wave read files, evaluated the catalog and wrote the patch set on the
    worker's event loop, starving every other activity's heartbeats meanwhile (sdk-python README "Activities":
    async activities must not block; use a thread or a sync activity). The blocking steps run in threads."""
    from activities import scheduling
    from patchflow.control import waves
    from tests.workflows.test_schedules import write_plan as write_scheduled_plan

    loop_thread = threading.get_ident()
    ran_on: dict[str, int] = {}

    def recording(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            ran_on[name] = threading.get_ident()
            return real(*args, **kwargs)

        return call

    monkeypatch.setattr(scheduling, "load_plan", recording("load_plan", scheduling.load_plan))
    monkeypatch.setattr(waves, "pin_patch_set", recording("pin_patch_set", waves.pin_patch_set))
    plan = write_scheduled_plan(tmp_path, make_fleet({"dev": 1, "prod": 1}))
    acts = ScheduleActivities(Settings(data_dir=tmp_path / "data"), client=None)
    result = await ActivityEnvironment().run(
        acts.prepare_scheduled_wave, PrepareWaveInput(plan_path=str(plan), wave_id="wave-x", started_by="s")
    )
    assert result.wave is not None and result.wave.patches
    assert set(ran_on) == {"load_plan", "pin_patch_set"}
    assert loop_thread not in ran_on.values()


# ---------------------------------------------------------------------------------------------- gate expiry


async def test_an_approval_gate_reminds_once_and_expires(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """Issue 18: approval gates waited forever. With ``expire_after`` (2 days here; Temporal's time-skipping test
    server skips them) the approvers are reminded once (``remind_after``: 1 day) and the gate then expires: the
    wave ends failed, as if rejected."""
    inp = wave_input(
        make_fleet({"dev": 1, "prod": 1}),
        tmp_path,
        [
            stage("dev"),
            stage(
                "prod",
                gate="approval",
                approvers=["alice", "bob"],
                expire_after_seconds=2 * 86400,
                remind_after_seconds=86400,
            ),
        ],
    )
    client = skip_env.client
    began = await skip_env.get_current_time()
    async with running_worker(client) as tq:
        handle = await start(client, tq, inp)
        result = await asyncio.wait_for(handle.result(), timeout=60)
    ended = await skip_env.get_current_time()
    assert result.status.state == "failed"
    assert (
        result.status.reason
        == "stage prod: the approval gate expired (no decision within 2d; the gate expired)"
    )
    prod = result.status.stages[1]
    assert prod.state == "not_started" and not prod.instances
    audit = [(a.action, a.who, a.stage) for a in result.status.audit]
    assert audit[-2:] == [("remind", "patchflow", "prod"), ("expire", "patchflow", "prod")]
    assert "waiting 1d for a decision by alice, bob; the gate expires at " in result.status.audit[-2].comment
    assert ended - began >= timedelta(days=2)
    history = await handle.fetch_history()
    reminders = [
        e
        for e in history.events
        if e.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_SCHEDULED
        and e.activity_task_scheduled_event_attributes.activity_type.name == "remind_gate"
    ]
    assert len(reminders) == 1


def test_plans_set_the_gate_expiry_and_refuse_a_reminder_after_it(
    tmp_path: Path, make_fleet: Callable[..., Path]
) -> None:
    """The plan's ``gate: {approval: {approvers, expire_after, remind_after}}`` reaches the wave's input; a
    reminder that would come after the expiry, or an unknown key, is refused with its location."""
    from patchflow.control.waves import wave_input as plan_wave_input
    from patchflow.core.plans import PlanError
    from tests.workflows.test_schedules import write_plan as write_scheduled_plan

    fleet = make_fleet({"dev": 1, "prod": 1})
    path = write_scheduled_plan(
        tmp_path, fleet, prod_gate={"approval": {"approvers": ["alice"], "expire_after": "3d"}}
    )
    plan = load_plan(path)
    pinned = SimpleNamespace(  # all wave_input reads of a set
        id="ps-000000000000000000000000",
        patches=(),
        sources=lambda: (RepoSource("m", ("Debian12",), "deb x y"),),
    )
    inp = plan_wave_input(plan, Settings(data_dir=tmp_path / "data"), pinned, wave_id="w")  # type: ignore[arg-type]
    prod = inp.stages[1]
    assert (prod.expire_after_seconds, prod.remind_after_seconds) == (3 * 86400, 0)
    assert inp.sources == [
        RepoSource("m", ("Debian12",), "deb x y")
    ]  # the set's baseline Sources travel along
    bad = write_scheduled_plan(
        tmp_path,
        fleet,
        prod_gate={
            "approval": {"approvers": ["a"], "expire_after": "1d", "remind_after": "2d", "expires": "x"}
        },
    )
    with pytest.raises(PlanError) as refused:
        load_plan(bad)
    message = str(refused.value)
    assert "stages[1].gate.approval.remind_after" in message and "shorter than expire_after" in message
    assert "stages[1].gate.approval.expires" in message and "unknown key" in message
