"""Waves recorded in the history database by activities (the workflow itself never touches it)."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from patchflow.control.waves import act
from patchflow.core.wavemodel import ExecutorRef, StageInput, WaveInput
from patchflow.core.windows import WindowSpec
from patchflow.errors import NotFoundError
from patchflow.service.worker import build_worker
from patchflow.store import db
from tests.workflows.conftest import instance_id
from tests.workflows.test_wave import PATCHES, settle
from workflows.wave import WaveWorkflow


async def test_a_wave_is_recorded_with_results_and_audit(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'history.db'}"
    db.upgrade(url)
    fleet = make_fleet({"dev": 2, "prod": 2}, behaviours={instance_id("prod", 2): {"fail": True}})
    now = WindowSpec("now")
    inp = WaveInput(
        wave_id=f"wave-hist-{uuid.uuid4().hex[:8]}",
        plan_name="history",
        patch_set_id="ps-000000000000000000000000",
        patches=list(PATCHES),
        executor=ExecutorRef(kind="simulated", fleet_path=str(fleet), state_path=str(tmp_path / "s.sqlite")),
        stages=[
            StageInput(name="dev", window=now, max_concurrency="2", max_errors="0", patch_group="dev"),
            StageInput(
                name="prod", window=now, max_concurrency="1", max_errors="1", patch_group="prod",
                gate="approval", approvers=["alice"],
            ),
        ],
        started_by="carol",
        record_history=True,
    )  # fmt: skip
    task_queue = f"tq-{uuid.uuid4()}"
    async with build_worker(dev_env.client, task_queue, database_url=url):
        handle = await dev_env.client.start_workflow(
            WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue
        )
        await settle(dev_env.client, inp.wave_id, {"waiting_approval"})
        # The wave's outbox records the snapshot without holding the wave up: it arrives a moment later.
        for _ in range(100):
            with db.open_session(db.get_engine(url)) as session, contextlib.suppress(NotFoundError):
                if db.get_wave(session, wave_id=inp.wave_id).state == "waiting_approval":
                    break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError("the snapshot at the gate never reached the history database")
        await act(dev_env.client, inp.wave_id, "approve", who="alice", stage="prod", comment="CAB-7")
        await handle.result()

    with db.open_session(db.get_engine(url)) as session:
        wave = db.get_wave(session, wave_id=inp.wave_id)
        assert wave.state == "succeeded" and wave.finished_at is not None
        assert [s.name for s in wave.stages] == ["dev", "prod"]
        results = db.list_instance_results(session, wave_id=inp.wave_id)
        assert len(results) == 4  # one row per instance, no duplicates from retries or repeated snapshots
        ok = next(r for r in results if r.instance_id == instance_id("dev", 1))
        assert ok.status == "succeeded"
        assert ok.versions_before["openssl.amd64"] == "3.0.2-0ubuntu1.10"
        assert ok.versions_after["openssl.amd64"] == "3.0.2-0ubuntu1.16"
        failed = next(r for r in results if r.instance_id == instance_id("prod", 2))
        assert failed.status == "failed" and failed.versions_after == {}
        actions = [(a.action, a.actor) for a in db.list_audit(session, wave_id=inp.wave_id)]
        assert ("start", "carol") in actions and ("approve", "alice") in actions
