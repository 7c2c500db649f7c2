"""Reboot orchestration in running waves (dev server, simulated fleet): a stage with ``reboot:`` installs with
``NoReboot`` and patchflow reboots — right after the install, in the instance's batch, or in a separate reboot
window — or leaves reboot debt.

Semantics followed: AWS-RunPatchBaseline's ``RebootOption`` (AWS Systems Manager User Guide, "SSM Command document
for patching: AWS-RunPatchBaseline", "Parameter name: RebootOption"): ``NoReboot`` leaves installed patches
``INSTALLED_PENDING_REBOOT``, and such instances are non-compliant until rebooted (User Guide, "Understanding patch
compliance state values"). The simulated fleet's ``reboot: true`` instances need a reboot after an install.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client import CollectorRegistry
from temporalio.testing import WorkflowEnvironment

from patchflow.control.waves import act, status_json, wave_status
from patchflow.core.reboots import RebootSpec
from patchflow.core.windows import WindowSpec
from patchflow.executors.simulated import SimulatedExecutor
from patchflow.executors.simulated.fleet import load_fleet
from patchflow.metrics import Metrics
from tests.workflows.conftest import instance_id, running_worker
from tests.workflows.helpers import fleet_of, settle, stage, start, wave_input
from tests.workflows.test_histories import keep

NEEDS_REBOOT = {instance_id("dev", n): {"reboot": True} for n in (1, 3)}


def boots(inp: object) -> dict[str, tuple[str, bool]]:
    """instance id → (boot id, pending_reboot) of the wave's simulated fleet."""
    status = fleet_of(inp).status()  # type: ignore[arg-type]
    return {i["id"]: (i["boot_id"], i["pending_reboot"]) for i in status["instances"]}


async def test_if_needed_reboots_exactly_the_instances_whose_install_needs_it(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"dev": 4}, behaviours=NEEDS_REBOOT)
    inp = wave_input(
        fleet, tmp_path, [stage("dev", max_concurrency="2", reboot=RebootSpec(policy="if_needed"))]
    )
    before = boots(inp)
    async with running_worker(dev_env.client) as tq:
        result = await (await start(dev_env.client, tq, inp)).result()
    assert result.status.state == "succeeded"
    dev = result.status.stages[0]
    assert set(dev.instances.values()) == {"succeeded"}
    after = boots(inp)
    changed = {i for i in after if after[i][0] != before[i][0]}
    assert changed == set(NEEDS_REBOOT)  # boot ids changed there only
    assert not any(pending for _, pending in after.values())
    assert dev.reboot_debt == {} and dev.reboot_debt_count == 0
    assert all("simulated reboot" in dev.details[i] for i in NEEDS_REBOOT)
    await keep(dev_env.client, "reboot-in-batch", inp.wave_id)  # replays (and records) its histories


async def test_always_reboots_every_patched_instance_once(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"dev": 3}, behaviours={instance_id("dev", 1): {"reboot": True}})
    inp = wave_input(fleet, tmp_path, [stage("dev", reboot=RebootSpec(policy="always"))])
    async with running_worker(dev_env.client) as tq:
        result = await (await start(dev_env.client, tq, inp)).result()
    assert result.status.state == "succeeded"
    assert {boot for boot, _ in boots(inp).values()} == {
        f"{i}-boot-1" for i in result.status.stages[0].instances
    }


async def test_never_leaves_pending_reboot_and_reports_the_debt(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"dev": 4}, behaviours=NEEDS_REBOOT)
    inp = wave_input(fleet, tmp_path, [stage("dev", reboot=RebootSpec(policy="never", deadline_days=7))])
    before = boots(inp)
    async with running_worker(dev_env.client) as tq:
        result = await (await start(dev_env.client, tq, inp)).result()
    assert result.status.state == "succeeded"
    after = boots(inp)
    assert {i: b for i, (b, _) in after.items()} == {i: b for i, (b, _) in before.items()}  # nobody rebooted
    assert {i for i, (_, pending) in after.items() if pending} == set(NEEDS_REBOOT)
    dev = result.status.stages[0]
    assert set(dev.reboot_debt) == set(NEEDS_REBOOT) and dev.reboot_debt_count == 2
    assert all("reboot pending since" in dev.details[i] for i in NEEDS_REBOOT)
    # wave status: the debt, since when, and its deadline (7 days later; not overdue yet).
    debt = status_json(result.status)["stages"][0]["reboot_debt"]
    assert debt["instances"] == 2 and not debt["overdue"]
    assert datetime.fromisoformat(debt["deadline"]) - datetime.fromisoformat(debt["since"]) == timedelta(
        days=7
    )
    # The Prometheus gauge, per wave and stage.
    metrics = Metrics(CollectorRegistry())
    metrics.update_from_status(result.status)
    labels = {"wave_id": inp.wave_id, "stage": "dev"}
    assert metrics.registry.get_sample_value("patchflow_reboot_debt_instances", labels) == 2
    since = metrics.registry.get_sample_value("patchflow_reboot_debt_since_timestamp_seconds", labels)
    assert since == datetime.fromisoformat(debt["since"]).timestamp()


async def test_reboot_window_defers_the_reboots_and_the_wave_waits_for_it(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"dev": 4, "prod": 2}, behaviours=NEEDS_REBOOT)
    opens = (datetime.now(UTC) + timedelta(seconds=20)).replace(microsecond=0)  # room for a busy machine
    window = WindowSpec(schedule=f"at({opens:%Y-%m-%dT%H:%M:%S})", duration_hours=1)
    reboot = RebootSpec(policy="if_needed", window=window, max_concurrency="1")
    inp = wave_input(fleet, tmp_path, [stage("dev", reboot=reboot), stage("prod")])
    before = boots(inp)
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        # prod is promoted and patched while dev's debt waits for its reboot window.
        for _ in range(150):
            status = await wave_status(dev_env.client, inp.wave_id)
            if status.stages[1].state == "succeeded":
                break
            await asyncio.sleep(0.1)
        assert status.stages[1].state == "succeeded" and datetime.now(UTC) < opens
        dev = status.stages[0]
        assert dev.reboot_state == "waiting_window" and dev.reboot_debt_count == 2
        assert status.state == "running"  # the wave does not finish before its reboot window
        assert boots(inp) == before | {i: (before[i][0], True) for i in NEEDS_REBOOT}
        result = await handle.result()
    assert datetime.now(UTC) >= opens
    assert result.status.state == "succeeded"
    dev = result.status.stages[0]
    assert dev.reboot_state == "done" and dev.reboot_debt == {} and dev.reboot_debt_count == 0
    assert dev.reboot_window_start == opens
    after = boots(inp)
    assert {i for i in after if after[i][0] != before[i][0]} == set(NEEDS_REBOOT)
    assert not any(pending for _, pending in after.values())
    histories = await keep(dev_env.client, "reboot-window", inp.wave_id)
    kinds = [h.events[0].workflow_execution_started_event_attributes.workflow_type.name for h in histories]
    assert kinds.count("RebootWindowWorkflow") == 1


async def test_always_with_a_reboot_window_reboots_every_patched_instance_there(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"dev": 3}, behaviours={instance_id("dev", 1): {"reboot": True}})
    opens = (datetime.now(UTC) + timedelta(seconds=6)).replace(microsecond=0)
    window = WindowSpec(schedule=f"at({opens:%Y-%m-%dT%H:%M:%S})", duration_hours=1)
    inp = wave_input(fleet, tmp_path, [stage("dev", reboot=RebootSpec(policy="always", window=window))])
    async with running_worker(dev_env.client) as tq:
        result = await (await start(dev_env.client, tq, inp)).result()
    assert datetime.now(UTC) >= opens and result.status.state == "succeeded"
    dev = result.status.stages[0]
    assert dev.reboot_window_start == opens and dev.reboot_debt == {}
    assert {boot for boot, _ in boots(inp).values()} == {f"{i}-boot-1" for i in dev.instances}


async def test_a_host_that_does_not_come_back_counts_against_max_errors(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    broken = instance_id("dev", 2)
    fleet = make_fleet({"dev": 4}, behaviours={broken: {"reboot": True, "fail_reboot": True}})
    inp = wave_input(
        fleet,
        tmp_path,
        [stage("dev", max_concurrency="1", max_errors="0", reboot=RebootSpec(policy="always"))],
    )
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        status = await settle(dev_env.client, inp.wave_id, {"halted"})
        dev = status.stages[0]
        assert [dev.instances[instance_id("dev", n)] for n in range(1, 5)] == [
            "succeeded",
            "failed",
            "not_attempted",
            "not_attempted",
        ]
        assert "did not come back" in dev.details[broken]
        assert "1 failure(s) exceeded max_errors 0" in status.reason
        await act(dev_env.client, inp.wave_id, "cancel", who="alice")
        await handle.result()


async def test_a_retried_reboot_never_reboots_twice(make_fleet: Callable[..., Path], tmp_path: Path) -> None:
    fleet = load_fleet(make_fleet({"dev": 1}))
    executor = SimulatedExecutor(fleet, tmp_path / "s.sqlite", time_scale=0)
    target = instance_id("dev", 1)
    first, again = await asyncio.gather(
        executor.reboot(target, operation_id="op-1"), executor.reboot(target, operation_id="op-1")
    )
    assert first == again and first.status == "succeeded" and first.boot_id == f"{target}-boot-1"
    assert await executor.reboot(target, operation_id="op-1") == first
    assert executor.boot_state(target) == (f"{target}-boot-1", False)
    assert (await executor.reboot(target, operation_id="op-2")).boot_id == f"{target}-boot-2"


async def test_reboot_debt_is_non_compliant_until_rebooted(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """User Guide, "Understanding patch compliance state values": ``INSTALLED_PENDING_REBOOT`` — installed, and
    the node must reboot for the patch to apply — counts as non-compliant; so do instances a ``never`` stage
    left pending, until a reboot."""
    from patchflow.cli.compliance import scan_fleet
    from patchflow.core.compliance import judge
    from patchflow.core.evaluation import PinnedPatch

    fleet = make_fleet({"dev": 2}, behaviours={instance_id("dev", 1): {"reboot": True}})
    inp = wave_input(fleet, tmp_path, [stage("dev", reboot=RebootSpec(policy="never"))])
    async with running_worker(dev_env.client) as tq:
        assert (await (await start(dev_env.client, tq, inp)).result()).status.state == "succeeded"
    executor = SimulatedExecutor(load_fleet(fleet), Path(inp.executor.state_path or ""))
    targets = [PinnedPatch(p.name, p.arch, p.version) for p in inp.patches]

    async def report() -> dict[str, tuple[str, int]]:
        scanned, _ = await scan_fleet(executor, family="deb", group="dev", concurrency=2)
        results, _ = judge(
            scanned,
            family="deb",
            candidates=targets,
            rejected_patches=[],
            rejected_action="ALLOW_AS_DEPENDENCY",
            package_manager="apt",
        )
        return {r.instance_id: (r.status, r.counts["InstalledPendingRebootCount"]) for r in results}

    pending, clean = instance_id("dev", 1), instance_id("dev", 2)
    assert await report() == {pending: ("NON_COMPLIANT", 2), clean: ("COMPLIANT", 0)}
    await executor.reboot(pending, operation_id="by-hand")
    assert await report() == {pending: ("COMPLIANT", 0), clean: ("COMPLIANT", 0)}
