"""Waves that survive operations (issue 18): rolling deploys of the workers, concurrent operator actions,
Temporal-level cancels — each on the real dev server, with real worker processes where a deploy is the point."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from temporalio.activity import ActivityCancellationDetails
from temporalio.api.enums.v1 import EventType, PendingActivityState
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.patching import WaveActivities
from patchflow.control.waves import executor_ref, wave_status
from patchflow.core.plans import load_plan
from patchflow.core.wavemodel import ExecutorRef, PatchBatchInput, StageInput, WaveInput
from patchflow.core.windows import WindowSpec
from patchflow.executors.base import Package
from patchflow.testing.ssm_endpoint import SsmEndpoint, Timings
from tests.conftest import REPO_ROOT
from tests.workflows.test_ssm_wave import BUCKET, NEW, OLD, settings, write_plan
from workflows.wave import WaveWorkflow


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[SsmEndpoint]:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with SsmEndpoint(timings=Timings(not_found_seconds=0.1, pending_seconds=0.05, run_seconds=0.1)) as ep:
        ep.client("s3").create_bucket(Bucket=BUCKET)
        yield ep


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
    for instance_id in ids:
        endpoint.register_instance(instance_id, tags={"Patch Group": "prod"}, packages=installed)
        endpoint.script(instance_id, "slow", seconds=25)
    plan = load_plan(
        write_plan(tmp_path, f"{{kind: ssm, region: us-east-1, endpoint_url: '{endpoint.url}'}}")
    )
    inp = WaveInput(
        wave_id=f"wave-rolling-{uuid.uuid4().hex[:8]}",
        plan_name=plan.name,
        patch_set_id="ps-000000000000000000000000",
        patches=[Package("openssl", "amd64", NEW)],
        executor=executor_ref(plan, settings(tmp_path, ssm_bucket=BUCKET)),
        stages=[
            StageInput(
                name="prod", window=WindowSpec("now"), max_concurrency="4", max_errors="0", patch_group="prod"
            )
        ],
        heartbeat_timeout_seconds=5,
    )
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
        for _ in range(300):  # every command sent: the installs run on the instances now
            if endpoint.command_count(None, "AWS-RunPatchBaseline") == 4:
                break
            await asyncio.sleep(0.1)
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
        status = await wave_status(client, inp.wave_id)
        for _ in range(600):
            if status.state != "running":
                break
            await asyncio.sleep(0.1)
            status = await wave_status(client, inp.wave_id)
    finally:
        for worker in workers:
            await worker.stop()

    assert status.state == "succeeded", status
    assert status.stages[0].instances == dict.fromkeys(ids, "succeeded")
    assert status.stages[0].errors == 0
    assert endpoint.requests["CancelCommand"] == 0
    for instance_id in ids:
        assert endpoint.command_count(instance_id, "AWS-RunPatchBaseline") == 1  # never sent twice
        assert endpoint.packages(instance_id)["openssl.amd64"] == NEW
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
