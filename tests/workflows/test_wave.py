"""Waves on the real Temporal dev server (Updates need it): gates, rate control, halt, rollback, pinning."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.patching import build_executor
from patchflow.config import Settings
from patchflow.control.waves import WaveActionRefused, act, status_json, wave_status
from patchflow.core.instances import RepoSource
from patchflow.core.wavemodel import ExecutorRef, WaveStatus
from tests.workflows.conftest import instance_id, running_worker
from tests.workflows.helpers import (
    PATCHES,  # noqa: F401 - other test modules import it from here
    SlowSend,
    fleet_of,
    in_flight,
    instance_states,
    settle,
    stage,
    start,
    status_when,
    succeeded,
    wave_input,
)


def prod_in_order(status: WaveStatus, count: int) -> list[str]:
    """The states of prod's instances 1 to ``count``, in order."""
    states = instance_states(status, "prod")
    return [states[instance_id("prod", n)] for n in range(1, count + 1)]


async def test_wave_pins_one_patch_set_across_stages(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"dev": 2, "test": 3, "prod": 4})
    inp = wave_input(fleet, tmp_path, [stage("dev"), stage("test"), stage("prod", max_concurrency="50%")])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        result = await handle.result()
    assert result.status.state == "succeeded"
    assert [s.state for s in result.status.stages] == ["succeeded"] * 3
    status = fleet_of(inp).status()
    for inst in status["instances"]:
        versions = {p["name"]: p["version"] for p in inst["installed"]}
        assert versions["openssl"] == "3.0.2-0ubuntu1.16" and versions["curl"] == "7.81.0-1ubuntu1.18"
        assert versions["coreutils"] == "8.32-4.1ubuntu1"  # not in the set: untouched
        assert inst["install_count"] == 1
    report = status_json(result.status)
    assert {i["state"] for s in report["stages"] for i in s["instances"]} == {"succeeded"}
    assert report["kind"] == "standard"


async def test_error_budget_stops_at_failure_n_plus_one(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    # concurrency 1 makes the order exact: instances 2, 4 and 5 fail; max_errors 1 tolerates one failure,
    # so the second failure (instance 4) stops dispatch and 5..8 are never attempted.
    failing = {instance_id("prod", n): {"fail": True} for n in (2, 4, 5)}
    fleet = make_fleet({"prod": 8}, behaviours=failing)
    inp = wave_input(fleet, tmp_path, [stage("prod", max_concurrency="1", max_errors="1")])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        status = await settle(dev_env.client, inp.wave_id, {"halted"})
        assert prod_in_order(status, 8) == [
            "succeeded",
            "failed",
            "succeeded",
            "failed",
            *["not_attempted"] * 4,
        ]
        assert "2 failure(s) exceeded max_errors 1" in status.reason
        assert status.stages[0].state == "halted"
        # Nothing moves on its own while halted.
        await asyncio.sleep(1)
        assert (await wave_status(dev_env.client, inp.wave_id)).state == "halted"
        # resume: the not-attempted instances run with a fresh budget of 1, so instance 5's failure is tolerated
        await act(dev_env.client, inp.wave_id, "resume", who="alice")
        result = await handle.result()
    states = result.status.stages[0].instances
    assert states[instance_id("prod", 5)] == "failed"
    assert {states[instance_id("prod", n)] for n in (6, 7, 8)} == {"succeeded"}
    assert result.status.state == "succeeded"
    assert [a.action for a in result.status.audit] == ["start", "resume"]


async def test_in_flight_work_finishes_after_the_budget_is_exceeded(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    # Three instances in flight at once, all failing, max_errors 0: the first failure stops dispatch, the
    # other two in-flight installs still finish (and fail), the rest is not attempted.
    failing = {instance_id("prod", n): {"fail": True} for n in (1, 2, 3)}
    fleet = make_fleet({"prod": 9}, behaviours=failing, duration=0.5)
    inp = wave_input(fleet, tmp_path, [stage("prod", max_concurrency="3", max_errors="0")])
    async with running_worker(dev_env.client) as tq:
        await start(dev_env.client, tq, inp)
        status = await settle(dev_env.client, inp.wave_id, {"halted"})
    states = instance_states(status, "prod")
    assert [states[instance_id("prod", n)] for n in (1, 2, 3)] == ["failed"] * 3
    assert {states[instance_id("prod", n)] for n in range(4, 10)} == {"not_attempted"}
    assert status.stages[0].errors == 3


async def test_max_concurrency_is_a_sliding_window(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    peak = 0
    current = 0
    started: list[str] = []

    class Counting:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        async def start_install(self, instance: str, patches: Any, *, operation_id: str) -> Any:
            nonlocal peak, current
            current += 1  # in flight from the send until the wait returns
            peak = max(peak, current)
            started.append(instance)
            return await self.inner.start_install(instance, patches, operation_id=operation_id)

        async def finish_install(self, instance: str, *, operation_id: str) -> Any:
            nonlocal current
            try:
                return await self.inner.finish_install(instance, operation_id=operation_id)
            finally:
                current -= 1

    def factory(ref: ExecutorRef) -> Any:
        return Counting(build_executor(ref))

    fleet = make_fleet({"prod": 12}, duration=[0.1, 0.6])
    inp = wave_input(fleet, tmp_path, [stage("prod", max_concurrency="25%")])  # 25 % of 12 = 3
    async with running_worker(dev_env.client, factory) as tq:
        result = await (await start(dev_env.client, tq, inp)).result()
    assert result.status.state == "succeeded"
    assert peak == 3
    assert started == sorted(started)  # a patch group is dispatched in instance-id order


async def test_approval_gate_refuses_others_and_records_the_approver(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"dev": 1, "prod": 2})
    inp = wave_input(
        fleet, tmp_path, [stage("dev"), stage("prod", gate="approval", approvers=["alice", "bob"])]
    )
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        status = await settle(dev_env.client, inp.wave_id, {"waiting_approval"})
        assert status.stages[1].state == "waiting_approval"
        assert set(instance_states(status, "prod")) == set()  # prod has not started
        with pytest.raises(WaveActionRefused, match="'mallory' may not approve stage 'prod'"):
            await act(dev_env.client, inp.wave_id, "approve", who="mallory", stage="prod")
        with pytest.raises(WaveActionRefused, match="no stage 'prd'"):
            await act(dev_env.client, inp.wave_id, "approve", who="alice", stage="prd")
        with pytest.raises(WaveActionRefused, match="has no approval gate"):
            await act(dev_env.client, inp.wave_id, "approve", who="alice", stage="dev")
        with pytest.raises(WaveActionRefused, match="cannot resume a wave that is waiting_approval"):
            await act(dev_env.client, inp.wave_id, "resume", who="alice")
        with pytest.raises(WaveActionRefused, match="answer the gate with reject, or cancel"):
            await act(dev_env.client, inp.wave_id, "halt", who="alice")
        with pytest.raises(WaveActionRefused, match="say who acts"):
            await act(dev_env.client, inp.wave_id, "approve", who=" ", stage="prod")
        with pytest.raises(WaveActionRefused, match="keep it under 1000"):
            await act(dev_env.client, inp.wave_id, "approve", who="bob", stage="prod", comment="x" * 5000)
        # still waiting: the refusals changed nothing
        assert (await wave_status(dev_env.client, inp.wave_id)).state == "waiting_approval"
        assert "approved by bob" in await act(dev_env.client, inp.wave_id, "approve", who="bob", stage="prod")
        result = await handle.result()
    assert result.status.state == "succeeded"
    assert result.status.stages[1].note == "approved by bob"
    assert [(a.action, a.who) for a in result.status.audit][-1] == ("approve", "bob")


async def test_rejected_promotion_ends_the_wave_before_prod(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"dev": 1, "prod": 2})
    inp = wave_input(fleet, tmp_path, [stage("dev"), stage("prod", gate="approval", approvers=["alice"])])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        await settle(dev_env.client, inp.wave_id, {"waiting_approval"})
        await act(
            dev_env.client, inp.wave_id, "reject", who="alice", stage="prod", comment="CVE fix breaks TLS"
        )
        result = await handle.result()
    assert result.status.state == "failed"
    assert result.status.stages[1].state == "not_started"
    assert "CVE fix breaks TLS" in result.status.stages[1].note
    prod = [i for i in fleet_of(inp).status()["instances"] if i["patch_group"] == "prod"]
    assert all(i["install_count"] == 0 for i in prod)


async def test_rollback_on_failure_restores_previous_versions(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    failing = {instance_id("prod", 3): {"fail": True}}
    fleet = make_fleet({"prod": 4}, behaviours=failing)
    inp = wave_input(
        fleet, tmp_path, [stage("prod", max_concurrency="1", max_errors="0", on_failure="rollback")]
    )
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        status = await settle(dev_env.client, inp.wave_id, {"halted"})
        assert prod_in_order(status, 4) == ["rolled_back", "rolled_back", "failed", "not_attempted"]
        fleet_state = {i["id"]: i for i in fleet_of(inp).status()["instances"]}
        for n in (1, 2):
            packages = {p["name"]: p["version"] for p in fleet_state[instance_id("prod", n)]["installed"]}
            assert packages["openssl"] == "3.0.2-0ubuntu1.10"  # back to the pre-wave version
            assert fleet_state[instance_id("prod", n)]["restore_count"] == 1
        with pytest.raises(WaveActionRefused, match="no patched instances"):
            await act(dev_env.client, inp.wave_id, "rollback", who="alice")
        await act(dev_env.client, inp.wave_id, "cancel", who="alice")
        assert (await handle.result()).status.state == "cancelled"


async def test_operator_halt_and_resume(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"prod": 6}, duration=0.4)
    inp = wave_input(fleet, tmp_path, [stage("prod", max_concurrency="1")])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        await asyncio.sleep(0.6)
        await act(dev_env.client, inp.wave_id, "halt", who="alice", comment="pager went off")
        status = await settle(dev_env.client, inp.wave_id, {"halted"})
        done = succeeded(status)
        assert 1 <= done < 6
        await asyncio.sleep(1)  # nothing runs while halted
        assert succeeded(await wave_status(dev_env.client, inp.wave_id)) == done
        await act(dev_env.client, inp.wave_id, "resume", who="alice")
        result = await handle.result()
    assert result.status.state == "succeeded"
    assert all(i["install_count"] == 1 for i in fleet_of(inp).status()["instances"])


async def test_health_gate_halts_on_unhealthy_earlier_stage(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"dev": 2, "prod": 2}, behaviours={instance_id("dev", 2): {"fail_health": True}})
    inp = wave_input(fleet, tmp_path, [stage("dev"), stage("prod", gate="health")])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        status = await settle(dev_env.client, inp.wave_id, {"halted"})
        assert "health gate closed: 1 unhealthy > 0" in status.stages[1].note
        assert not instance_states(status, "prod")
        await act(dev_env.client, inp.wave_id, "resume", who="alice", comment="known flaky check")
        result = await handle.result()
    assert result.status.state == "succeeded"


async def test_settings_are_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATCHFLOW_TEMPORAL_ADDRESS", "127.0.0.5:7233")
    monkeypatch.setenv("PATCHFLOW_TASK_QUEUE", "patch-eu")
    settings = Settings()
    assert (settings.temporal_address, settings.task_queue) == ("127.0.0.5:7233", "patch-eu")


async def test_long_stage_runs_continue_as_new_and_still_obey_halt(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"prod": 40}, duration=0.05)
    inp = wave_input(fleet, tmp_path, [stage("prod", max_concurrency="1")], history_event_limit=60)
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        status = await status_when(  # wait until the stage run has continued as new at least once
            dev_env.client, inp.wave_id, lambda s: succeeded(s) >= 20, tries=None, every=0.1
        )
        run_id = status.stages[0].active_run_id
        assert run_id is not None
        await act(dev_env.client, inp.wave_id, "halt", who="alice")
        halted = await settle(dev_env.client, inp.wave_id, {"halted"})
        assert 20 <= succeeded(halted) < 40
        await act(dev_env.client, inp.wave_id, "resume", who="alice")
        result = await handle.result()
        runs = [wf async for wf in dev_env.client.list_workflows(f"WorkflowId = '{run_id}'")]
    assert len(runs) >= 3, "the stage run should have continued as new several times"
    assert result.status.state == "succeeded"
    assert set(instance_states(result.status, "prod").values()) == {"succeeded"}
    assert all(i["install_count"] == 1 for i in fleet_of(inp).status()["instances"])


async def test_a_stage_without_targets_halts_instead_of_succeeding(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"dev": 1, "prod": 1})
    inp = wave_input(fleet, tmp_path, [stage("dev"), stage("prod", patch_group="prdo")])  # a typo
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        status = await settle(dev_env.client, inp.wave_id, {"halted"})
        assert "patch group 'prdo' matched no managed instance" in status.reason
        await act(dev_env.client, inp.wave_id, "cancel", who="alice")
        assert (await handle.result()).status.state == "cancelled"


async def test_a_cancel_during_the_send_phase_does_not_wait_for_the_installs(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """The abort reaches the stage run while its send activity runs; the send completes anyway. The installs it
    started must then be cancelled at once, not waited for (60 s here)."""
    fleet = make_fleet({"prod": 2}, duration=60.0)
    inp = wave_input(fleet, tmp_path, [stage("prod", max_concurrency="2")])
    async with running_worker(dev_env.client, SlowSend.factory(1.5)) as tq:
        handle = await start(dev_env.client, tq, inp)
        await status_when(dev_env.client, inp.wave_id, in_flight(2), tries=None)
        await act(dev_env.client, inp.wave_id, "cancel", who="alice", comment="wrong patch set")
        result = await asyncio.wait_for(handle.result(), timeout=30)
    assert result.status.state == "cancelled"
    stage_status = result.status.stages[0]
    assert set(stage_status.instances.values()) == {"cancelled"}
    assert set(stage_status.details.values()) == {"cancelled by an operator"}


async def test_cancel_cancels_in_flight_instances(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"prod": 4}, duration=60.0)  # far longer than the test
    inp = wave_input(fleet, tmp_path, [stage("prod", max_concurrency="2")])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        await status_when(dev_env.client, inp.wave_id, in_flight(2), tries=None, every=0.1)
        began = asyncio.get_running_loop().time()
        await act(dev_env.client, inp.wave_id, "cancel", who="alice", comment="wrong patch set")
        result = await asyncio.wait_for(handle.result(), timeout=30)
        assert asyncio.get_running_loop().time() - began < 20  # did not wait for the 60 s installs
    assert result.status.state == "cancelled"
    stage_status = result.status.stages[0]
    cancelled = [
        i
        for i, s in stage_status.instances.items()
        if stage_status.details.get(i) == "cancelled by an operator"
    ]
    assert len(cancelled) == 2 and all(stage_status.instances[i] == "cancelled" for i in cancelled)
    assert sorted(stage_status.instances.values()).count("not_attempted") == 2


async def test_baseline_sources_reach_every_install_across_stages_and_continue_as_new(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """The patch set's ``Sources`` travel wave → stage runs (also after continue-as-new) → batches → every
    ``start_install``; a wave without Sources never passes the keyword (executors written before it keep
    working)."""
    sources = [RepoSource("corp-mirror", ("Ubuntu22.04",), "deb http://127.0.0.1:9/ubuntu jammy main")]
    seen: list[tuple[str, Any]] = []

    class Recording:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def __getattr__(self, name: str) -> Any:
            return getattr(self.inner, name)

        async def start_install(self, instance: str, patches: Any, *, operation_id: str, **kw: Any) -> Any:
            seen.append((instance, kw.get("sources", "absent")))
            return await self.inner.start_install(instance, patches, operation_id=operation_id, **kw)

    def factory(ref: ExecutorRef) -> Any:
        return Recording(build_executor(ref))

    fleet = make_fleet({"dev": 2, "prod": 12}, duration=0.02)
    with_sources = wave_input(
        fleet,
        tmp_path,
        [stage("dev"), stage("prod", max_concurrency="1")],
        history_event_limit=40,
        sources=sources,
    )
    (tmp_path / "other").mkdir()
    without = wave_input(make_fleet({"dev": 1}, name="other"), tmp_path / "other", [stage("dev")])
    async with running_worker(dev_env.client, factory) as tq:
        result = await (await start(dev_env.client, tq, with_sources)).result()
        assert result.status.state == "succeeded"
        assert len(seen) == 14 and {kw for _, kw in seen} == {tuple(sources)}
        run_id = f"{with_sources.wave_id}/prod/run-0-0"
        runs = [wf async for wf in dev_env.client.list_workflows(f"WorkflowId = '{run_id}'")]
        assert len(runs) >= 2, "the prod stage run should have continued as new"
        seen.clear()
        assert (await (await start(dev_env.client, tq, without)).result()).status.state == "succeeded"
    assert seen == [(instance_id("dev", 1), "absent")]
