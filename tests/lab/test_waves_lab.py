"""Whole waves on the lab's real Debian hosts through the SSH executor and the real Temporal dev server.

The promise under test is patchflow's: "what Dev tested is exactly what Prod gets". AWS's own
``AWS-RunPatchBaseline`` recomputes approvals on each node at run time (SSM user guide,
"patch-manager-aws-runpatchbaseline": approvals are evaluated when the document runs, unless an explicit
``SnapshotId`` is passed), so a version published between stages would reach Prod; a pinned set must not.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import subprocess
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client
from temporalio.service import RPCError
from temporalio.testing import WorkflowEnvironment

from activities.patching import build_executor
from patchflow.control.waves import act, wave_status
from patchflow.core.baselines import load_baseline
from patchflow.core.catalog import load_catalog
from patchflow.core.evaluation import evaluate
from patchflow.core.wavemodel import ExecutorRef, StageInput, WaveInput, WaveStatus
from patchflow.core.windows import WindowSpec
from patchflow.executors.base import Executor, Package
from patchflow.executors.ssh import SshExecutor
from patchflow.testing.lab.fleet import Lab
from tests.conftest import BASELINES_DIR
from tests.lab.conftest import Hosts
from tests.workflows.conftest import running_worker
from tests.workflows.test_durability import start_worker
from workflows.wave import WaveWorkflow

pytestmark = pytest.mark.lab
APP_SET = [Package("app", "all", "1.1-1"), Package("libfoo", "all", "1.1-1")]


def stage(name: str, **fields: Any) -> StageInput:
    base: dict[str, Any] = {
        "name": name,
        "window": WindowSpec(schedule="now"),
        "max_concurrency": "10",
        "max_errors": "0",
        "patch_group": name,
    }
    base.update(fields)
    return StageInput(**base)


def wave(inventory: Path, patches: list[Package], stages: list[StageInput]) -> WaveInput:
    return WaveInput(
        wave_id=f"wave-lab-{uuid.uuid4().hex[:8]}",
        plan_name="lab",
        patch_set_id="ps-000000000000000000000000",
        patches=patches,
        executor=ExecutorRef(kind="ssh", inventory_path=str(inventory), reboot_option="RebootIfNeeded"),
        stages=stages,
        heartbeat_timeout_seconds=20,
    )


@contextlib.asynccontextmanager
async def lab_worker(client: Client) -> AsyncIterator[str]:
    """A worker with the production executor factory; its SSH connections are closed afterwards."""
    built: list[Executor] = []

    def factory(ref: ExecutorRef) -> Executor:
        built.append(build_executor(ref))
        return built[-1]

    try:
        async with running_worker(client, factory) as task_queue:
            yield task_queue
    finally:
        for executor in built:
            if isinstance(executor, SshExecutor):
                await executor.close()


async def settle(client: Client, wave_id: str, states: set[str], timeout: float = 180) -> WaveStatus:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status = await wave_status(client, wave_id)
        if status.state in states:
            return status
        assert status.state not in {"succeeded", "failed", "cancelled", "halted"} - states, status
        assert asyncio.get_running_loop().time() < deadline, f"wave stuck in {status.state}: {status}"
        await asyncio.sleep(0.3)


async def test_pinning_holds_when_newer_versions_are_published_mid_wave(
    lab_temporal: WorkflowEnvironment, lab: Lab, lab_hosts: Hosts, inventory: Path, tmp_path: Path
) -> None:
    hosts = {g: [h.id for h in lab.hosts() if g in h.groups] for g in ("dev", "test", "prod", "control")}
    for group in hosts.values():
        for host in group:
            lab_hosts.taken.add(host)
    catalog = tmp_path / "lab-catalog.json"
    catalog.write_text(json.dumps(lab.catalog()))
    evaluation = evaluate(
        load_baseline(BASELINES_DIR / "debian-default.yaml"), load_catalog(catalog), datetime.now(UTC)
    )
    pinned = {p.name: p.version for p in evaluation.patch_set.patches}
    assert pinned["app"] == "1.1-1" and pinned["libfoo"] == "1.1-1" and pinned["linux-image-lab"] == "6.1.0-2"
    patches = [Package(p.name, p.arch, p.version) for p in evaluation.patch_set.patches]
    inp = wave(
        inventory,
        patches,
        [stage("dev"), stage("test"), stage("prod", gate="approval", approvers=["ops-lead"])],
    )
    boots = {h["id"]: h["boot_id"] for h in lab.status()}
    async with lab_worker(lab_temporal.client) as tq:
        handle = await lab_temporal.client.start_workflow(
            WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq
        )
        await settle(lab_temporal.client, inp.wave_id, {"waiting_approval"})
        for host in hosts["dev"] + hosts["test"]:
            installed = lab.installed(host)
            assert {n: installed[n] for n in pinned} == pinned

        # Between the stages the repository moves on: newer app and libfoo in the security pocket.
        lab.publish("libfoo", "1.3-1", security=True)
        lab.publish("app", "1.3-1", security=True, depends=["libfoo (>= 1.3-1)"])
        control = hosts["control"][0]
        # (flaky 1.1-1 in lab-updates fails its postinst: held, as an operator would)
        upgrade = lab.run(control, "apt-mark hold flaky && apt-get update -q && apt-get -y -q upgrade")
        assert upgrade.returncode == 0, upgrade.stdout + upgrade.stderr
        assert lab.installed(control)["app"] == "1.3-1" and lab.installed(control)["libfoo"] == "1.3-1"

        await act(lab_temporal.client, inp.wave_id, "approve", who="ops-lead", stage="prod")
        result = await asyncio.wait_for(handle.result(), 240)
    assert result.status.state == "succeeded", result.status
    for host in hosts["prod"]:
        installed = lab.installed(host)
        assert {n: installed[n] for n in pinned} == pinned, host  # app 1.1-1, libfoo 1.1-1: not 1.3-1
        assert lab.run(host, "dpkg --audit").stdout.strip() == ""
    status = {h["id"]: h for h in lab.status()}
    for host in hosts["dev"] + hosts["test"] + hosts["prod"]:
        assert status[host]["boot_id"] != boots[host]  # the kernel-like package rebooted each patched host
        assert not status[host]["reboot_pending"]
    assert status[control]["boot_id"] == boots[control]


async def test_failing_postinst_spends_the_budget_and_rollback_restores_previous_versions(
    lab_temporal: WorkflowEnvironment, lab: Lab, lab_hosts: Hosts
) -> None:
    first, second = lab_hosts.take("rb"), lab_hosts.take("rb")
    assert first < second  # dispatch order is by instance id
    lab.run(first, "dpkg -r flaky")  # so only the second host runs flaky's failing postinst
    patches = [Package("flaky", "all", "1.1-1"), Package("editor-lab", "all", "9.1-1")]
    inp = wave(
        lab.inventory_path, patches, [stage("rb", max_concurrency="1", max_errors="0", on_failure="rollback")]
    )
    async with lab_worker(lab_temporal.client) as tq:
        await lab_temporal.client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)
        status = await settle(lab_temporal.client, inp.wave_id, {"halted"})
    instances = status.stages[0].instances
    assert instances[first] == "rolled_back" and instances[second] == "failed"
    assert "exceeded max_errors 0" in status.reason
    assert lab.installed(first)["editor-lab"] == "9.0-1"  # rolled back by the wave
    assert lab.installed(second)["editor-lab"] == "9.0-1"  # the failed transaction was reverted on the host
    assert lab.installed(second)["flaky"] == "1.0-1"
    for host in (first, second):
        assert lab.run(host, "dpkg --audit").stdout.strip() == ""


async def test_worker_killed_repeatedly_every_host_transaction_happens_once(
    lab_temporal: WorkflowEnvironment, lab: Lab, lab_hosts: Hosts, tmp_path: Path
) -> None:
    hosts = [lab_hosts.take("kill") for _ in range(4)]
    patches = [
        *APP_SET,
        Package("linux-image-lab", "all", "6.1.0-2"),
    ]  # the kernel reboots: hosts take a while
    inp = wave(lab.inventory_path, patches, [stage("kill", max_concurrency="2")])
    inp.heartbeat_timeout_seconds = 5  # a dead worker's batch is resumed elsewhere after this
    address = lab_temporal.client.service_client.config.target_host
    task_queue = f"tq-{uuid.uuid4()}"
    log = tmp_path / "worker.log"
    worker = start_worker(address, task_queue, tmp_path, log)
    handle = await lab_temporal.client.start_workflow(
        WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue
    )
    kills = 0
    try:
        # Kill while a host transaction is in flight (not on a timer: an install takes about a second now),
        # each time once the replacement worker has had a moment to pick the work up again.
        loop = asyncio.get_running_loop()
        started, deadline = loop.time(), loop.time() + 120
        while kills < 3 and loop.time() < deadline:
            await asyncio.sleep(0.2)
            try:  # the wave's status merged with its running stage's live instance states
                status = await asyncio.wait_for(wave_status(lab_temporal.client, inp.wave_id), 10)
            except (TimeoutError, RPCError):
                continue  # the replacement worker is not answering queries yet
            if status.state == "succeeded":
                break
            in_flight = status.stages and "in_flight" in status.stages[0].instances.values()
            if not in_flight or loop.time() - started < 1.5:
                continue
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=10)
            kills += 1
            worker = start_worker(address, task_queue, tmp_path, log)
            started = loop.time()
        result = await asyncio.wait_for(handle.result(), timeout=240)
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(timeout=10)
    assert kills >= 2, "the wave finished before the worker could be killed twice"
    assert result.status.state == "succeeded", result.status
    assert set(result.status.stages[0].instances.values()) == {"succeeded"}
    for host in hosts:
        log_lines = lab.run(host, "cat /var/log/dpkg.log").stdout.splitlines()
        for name in ("app", "libfoo", "linux-image-lab"):
            assert sum(f" upgrade {name}:all " in line for line in log_lines) == 1, (host, name)
        installed = lab.installed(host)
        assert {p.name: installed[p.name] for p in patches} == {p.name: p.version for p in patches}
