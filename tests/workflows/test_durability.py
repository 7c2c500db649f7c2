"""Durability: kill the worker process (SIGKILL) several times during a wave; the wave completes, no
instance is patched twice and no result is lost. Also: recorded histories still replay."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from temporalio.client import WorkflowHistory
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from patchflow.core.wavemodel import ExecutorRef, StageInput, WaveInput
from patchflow.core.windows import WindowSpec
from patchflow.executors.simulated import SimulatedExecutor
from patchflow.executors.simulated.fleet import load_fleet
from tests.conftest import REPO_ROOT
from tests.workflows.conftest import running_worker
from tests.workflows.test_wave import PATCHES, settle
from workflows.reboot import RebootWindowWorkflow
from workflows.scheduled import ScheduledWaveWorkflow
from workflows.stage import StageRunWorkflow
from workflows.wave import WaveWorkflow

HISTORIES = Path(__file__).resolve().parent.parent / "histories"


def start_worker(address: str, task_queue: str, data_dir: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PATCHFLOW_TEMPORAL_ADDRESS": address,
        "PATCHFLOW_TASK_QUEUE": task_queue,
        "PATCHFLOW_DATA_DIR": str(data_dir),
        "PATCHFLOW_WORKER_METRICS_PORT": "none",
        "PATCHFLOW_TEMPORAL_METRICS_PORT": "none",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "patchflow", "worker"], cwd=REPO_ROOT, env=env, stdout=out, stderr=out
        )


async def test_worker_killed_repeatedly_mid_wave(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"dev": 4, "prod": 12}, duration=[0.8, 1.6])
    state = tmp_path / "fleet.sqlite"
    inp = WaveInput(
        wave_id=f"wave-kill-{uuid.uuid4().hex[:8]}",
        plan_name="durability",
        patch_set_id="ps-000000000000000000000000",
        patches=list(PATCHES),
        executor=ExecutorRef(kind="simulated", fleet_path=str(fleet), state_path=str(state)),
        stages=[
            StageInput(
                name="dev", window=WindowSpec("now"), max_concurrency="2", max_errors="0", patch_group="dev"
            ),
            StageInput(
                name="prod", window=WindowSpec("now"), max_concurrency="4", max_errors="0", patch_group="prod"
            ),
        ],
        heartbeat_timeout_seconds=2,
    )
    address = dev_env.client.service_client.config.target_host
    task_queue = f"tq-{uuid.uuid4()}"
    log = tmp_path / "worker.log"
    worker = start_worker(address, task_queue, tmp_path, log)
    handle = await dev_env.client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue)
    kills = 0
    try:
        for delay in (3.0, 3.5, 4.0):
            await asyncio.sleep(delay)
            status = await handle.query(WaveWorkflow.status)
            if status.state == "succeeded":
                break
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            kills += 1
            worker = start_worker(address, task_queue, tmp_path, log)
        # A worker killed inside a short activity without heartbeats (start-to-close QUICK_TIMEOUT, 2 minutes)
        # leaves it to that timeout before the server retries it elsewhere: allow for one such stall.
        result = await asyncio.wait_for(handle.result(), timeout=300)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=10)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
    assert kills >= 2, "the wave finished before the worker could be killed twice; slow the fleet down"
    assert result.status.state == "succeeded", result.status
    states = {i: s for st in result.status.stages for i, s in st.instances.items()}
    assert len(states) == 16 and set(states.values()) == {"succeeded"}
    fleet_state = SimulatedExecutor(load_fleet(fleet), state).status()
    counts = {i["id"]: i["install_count"] for i in fleet_state["instances"]}
    assert counts == dict.fromkeys(counts, 1), counts  # nobody patched twice, nobody skipped
    for inst in fleet_state["instances"]:
        assert {p["name"]: p["version"] for p in inst["installed"]}["openssl"] == "3.0.2-0ubuntu1.16"


async def test_a_fresh_history_replays_deterministically(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    from patchflow.control.waves import act

    fleet = make_fleet({"dev": 2, "prod": 3}, behaviours={"i-prod0000000000002": {"fail": True}})
    inp = WaveInput(
        wave_id=f"wave-replay-{uuid.uuid4().hex[:8]}",
        plan_name="replay",
        patch_set_id="ps-000000000000000000000000",
        patches=list(PATCHES),
        executor=ExecutorRef(kind="simulated", fleet_path=str(fleet), state_path=str(tmp_path / "s.sqlite")),
        stages=[
            StageInput(
                name="dev",
                window=WindowSpec("now"),
                max_concurrency="1",
                max_errors="0",
                patch_group="dev",
                soak_seconds=1,
            ),
            StageInput(
                name="prod",
                window=WindowSpec("now"),
                max_concurrency="1",
                max_errors="1",
                patch_group="prod",
                gate="approval",
                approvers=["alice"],
            ),
        ],
    )
    async with running_worker(dev_env.client) as tq:
        handle = await dev_env.client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)
        await settle(dev_env.client, inp.wave_id, {"waiting_approval"})
        await act(dev_env.client, inp.wave_id, "approve", who="alice", stage="prod")
        await handle.result()
    history = await handle.fetch_history()
    replayer = Replayer(workflows=[WaveWorkflow, StageRunWorkflow])
    await replayer.replay_workflow(history)
    if os.environ.get("PATCHFLOW_RECORD_HISTORIES"):
        HISTORIES.mkdir(exist_ok=True)
        # Each workflow version keeps its history: v1 = one patch activity, v2 = send then wait.
        (HISTORIES / "wave-approval-failure-v2.json").write_text(history.to_json())


async def test_recorded_histories_replay() -> None:
    """Guards workflow changes: a change that breaks running waves fails here (use workflow.patched()).

    Every history ever released stays here (``*.json`` and ``<path>-<release>/*.json``, recorded by
    ``test_histories.py``), including ``scheduled-wave-wait-v0.json``, the firing recorded before the
    scheduled workflow's prepare activity changed its result type."""
    files = sorted(HISTORIES.rglob("*.json"))
    assert files, "no recorded histories; record them with PATCHFLOW_RECORD_HISTORIES=1"
    replayer = Replayer(
        workflows=[WaveWorkflow, StageRunWorkflow, ScheduledWaveWorkflow, RebootWindowWorkflow]
    )
    for path in files:
        workflow_id = json.loads(path.read_text())["events"][0][
            "workflowExecutionStartedEventAttributes"
        ].get("workflowId", path.stem)
        try:
            await replayer.replay_workflow(WorkflowHistory.from_json(workflow_id, path.read_text()))
        except Exception as exc:
            raise AssertionError(f"{path.relative_to(HISTORIES)} no longer replays: {exc}") from exc
