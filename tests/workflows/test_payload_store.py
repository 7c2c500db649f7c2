"""A whole wave with every payload past 1 KiB travelling by reference, and pruning the payload directory.

With the inline limit at its minimum, the wave's input, the target lists, the stage runs' inputs and results, the
wave's result and its status pages all go through the claim-check codec (:mod:`patchflow.control.payloads`):
the wave must behave exactly as inline. Pruning must then remove only blobs no kept history refers to.
"""

from __future__ import annotations

import dataclasses
import os
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from patchflow.config import Settings
from patchflow.control.connection import data_converter
from patchflow.control.payloads import BlobStore, claimed_digests, prune
from patchflow.control.waves import wave_status
from patchflow.core.wavemodel import ExecutorRef, StageInput, WaveInput
from patchflow.core.windows import WindowSpec
from patchflow.service.worker import build_worker
from tests.workflows.test_wave import PATCHES
from workflows.wave import WaveWorkflow


def by_reference_client(env: WorkflowEnvironment, data_dir: Path) -> Client:
    config = env.client.config()
    config["data_converter"] = data_converter(Settings(data_dir=data_dir, payload_inline_bytes=1024))
    return Client(**config)


async def test_a_wave_with_its_payloads_by_reference_runs_as_inline_and_prune_keeps_what_histories_name(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"dev": 30, "prod": 40})
    client = by_reference_client(dev_env, tmp_path)
    store = BlobStore(tmp_path / "payloads")
    inp = WaveInput(
        wave_id=f"wave-refs-{uuid.uuid4().hex[:8]}",
        plan_name="refs",
        patch_set_id="ps-000000000000000000000000",
        patches=list(PATCHES),
        executor=ExecutorRef(
            kind="simulated", fleet_path=str(fleet), state_path=str(tmp_path / "fleet.sqlite")
        ),
        stages=[
            StageInput(name=g, window=WindowSpec("now"), max_concurrency="5", max_errors="0", patch_group=g)
            for g in ("dev", "prod")
        ],
    )
    task_queue = f"tq-{uuid.uuid4()}"
    async with build_worker(client, task_queue):
        handle = await client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue)
        result = await handle.result()
        status = await wave_status(client, inp.wave_id)
    assert result.status.state == "succeeded", result.status.reason
    assert [len(s.instances) for s in result.status.stages] == [30, 40]
    assert all(set(s.instances.values()) == {"succeeded"} for s in result.status.stages)
    assert status == result.status

    # The history holds references, not the data: the wave's result (70 instances) is one of them.
    referenced: set[str] = set()
    async for event in handle.fetch_history_events():
        referenced |= claimed_digests(event)
        if event.HasField("workflow_execution_completed_event_attributes"):
            [completed] = event.workflow_execution_completed_event_attributes.result.payloads
            assert completed.ByteSize() < 300
    blobs = {p.name for p in store.directory.glob("??/*")}
    assert referenced and referenced <= blobs

    # An orphan (old, referenced by nothing), a young orphan, and an old blob a history names.
    orphan, young = store.put(b"orphan"), store.put(b"young orphan")
    old = time.time() - 7200
    os.utime(store.path(orphan), (old, old))
    named = sorted(referenced)[0]
    os.utime(store.path(named), (old, old))
    dry = await prune(client, store, min_age=timedelta(hours=1), dry_run=True)
    assert dry.removed == 1 and store.path(orphan).exists()
    report = await prune(client, store, min_age=timedelta(hours=1))
    assert (report.removed, report.removed_bytes) == (1, len(b"orphan"))
    assert report.workflows >= 3  # the wave and its stage runs
    assert not store.path(orphan).exists()
    assert store.path(young).exists() and store.path(named).exists()
    # Everything a finished wave is read from survives: its result decodes whole.
    again = await client.get_workflow_handle_for(WaveWorkflow.run, inp.wave_id).result()
    assert dataclasses.asdict(again.status) == dataclasses.asdict(result.status)
