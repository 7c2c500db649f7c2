"""Waves with lifecycle hooks on the simulated fleet (real Temporal dev server, real worker): the lifecycle's
order, a hook failure failing its instance and counting against max_errors, on_exit always running, and
``on_hook_failure: halt_stage``."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer

from patchflow.cli.waves import hook_lines
from patchflow.control.waves import act, status_json, wave_status
from patchflow.core.hooks import HALT_STAGE, Hooks, HookStep
from patchflow.core.wavemodel import WaveInput
from patchflow.service.apimodel import WaveDetail
from patchflow.service.worker import WORKFLOWS
from tests.workflows.conftest import instance_id, running_worker
from tests.workflows.helpers import fleet_of, settle, stage, start, wave_input
from tests.workflows.test_durability import HISTORIES
from tests.workflows.test_histories import histories_of


def command(text: str) -> HookStep:
    return HookStep(kind="command", name=f"command: {text}", command=text)


HOOKS = Hooks(
    pre_install=[command("stop-app")],
    post_install=[command("start-app")],
    post_reboot=[command("check-app")],
    on_exit=[command("cleanup")],
)


def hooked_wave(fleet: Path, tmp_path: Path, hooks: Hooks, **fields: Any) -> WaveInput:
    return wave_input(fleet, tmp_path, [stage("prod", max_concurrency="1", hooks=hooks, **fields)])


async def keep_histories(client: Client, name: str, wave_id: str) -> None:
    """Replay the wave's histories (its stage runs included) with today's code — the lifecycle is deterministic —
    and, with ``PATCHFLOW_RECORD_HISTORIES=1``, keep them under ``tests/histories/<name>/`` for every later change
    (``test_durability.test_recorded_histories_replay``)."""
    histories = await histories_of(client, wave_id)
    replayer = Replayer(workflows=list(WORKFLOWS))
    for history in histories:
        await replayer.replay_workflow(history)
    if os.environ.get("PATCHFLOW_RECORD_HISTORIES"):
        directory = HISTORIES / name
        directory.mkdir(parents=True, exist_ok=True)
        for number, history in enumerate(histories):
            kind = history.events[0].workflow_execution_started_event_attributes.workflow_type.name
            (directory / f"{number:02d}-{kind}.json").write_text(history.to_json())


def installs(inp: WaveInput) -> dict[str, int]:
    return {i["id"]: i["install_count"] for i in fleet_of(inp).status()["instances"]}


async def test_a_failing_pre_install_fails_the_instance_counts_and_on_exit_still_runs(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """Issue 14: hook failures count against max_errors like install failures, an instance failing pre_install is
    never installed, and on_exit always runs for every instance whose pre_install began."""
    first, second, third = (instance_id("prod", n) for n in (1, 2, 3))
    fleet = make_fleet({"prod": 3}, behaviours={second: {"fail_commands": ["stop-app"]}})
    inp = hooked_wave(fleet, tmp_path, HOOKS)
    client = dev_env.client
    async with running_worker(client) as tq:
        await start(client, tq, inp)
        status = await settle(client, inp.wave_id, {"halted"})
        await act(client, inp.wave_id, "cancel", who="test")
        await settle(client, inp.wave_id, {"cancelled"})
        await keep_histories(client, "lifecycle-hooks-h1", inp.wave_id)

    prod = status.stages[0]
    assert prod.instances == {first: "succeeded", second: "failed", third: "not_attempted"}
    assert "1 failure(s) exceeded max_errors 0" in status.reason
    assert prod.details[second].startswith("hook failed: pre_install step 'command: stop-app' failed: exit 1")
    # The lifecycle's order on the instance that went through; the failed one went from pre_install to on_exit.
    executor = fleet_of(inp)
    assert executor.commands_run(first) == ["stop-app", "start-app", "check-app", "cleanup"]
    assert executor.commands_run(second) == ["stop-app", "cleanup"]
    assert executor.commands_run(third) == []
    assert installs(inp) == {first: 1, second: 0, third: 0}
    # Every step is recorded per instance (phase, step, status, duration, output tail) in the wave status.
    steps = [(r.phase, r.status) for r in prod.hook_steps[second]]
    assert steps == [("pre_install", "failed"), ("on_exit", "succeeded")]
    assert (
        prod.hook_steps[second][0].output == "exit 1: simulated command failure (fail_commands: 'stop-app')"
    )
    assert [r.phase for r in prod.hook_steps[first]] == [
        "pre_install",
        "post_install",
        "post_reboot",
        "on_exit",
    ]
    assert third not in prod.hook_steps
    # ... and in the JSON of ``wave status`` and the API.
    shown = {i["id"]: i for i in status_json(status)["stages"][0]["instances"]}
    assert shown[second]["hooks"][0] == {
        "phase": "pre_install",
        "step": "command: stop-app",
        "status": "failed",
        "duration_seconds": prod.hook_steps[second][0].duration_seconds,
        "output": "exit 1: simulated command failure (fail_commands: 'stop-app')",
    }
    assert "hooks" not in shown[third]
    api = WaveDetail.model_validate(status_json(status)).model_dump()
    assert api["stages"][0]["instances"][1]["hooks"][0]["output"] == shown[second]["hooks"][0]["output"]
    lines = hook_lines(
        status_json(status)
    )  # ``wave status``: one compact line per instance, failed ones first
    assert len(lines) == 3 and lines[0] == "lifecycle hooks:"
    assert lines[1].startswith(f"  prod {second}: pre_install FAILED command: stop-app (")
    assert lines[1].endswith("; on_exit ok 1/1 " + lines[1].rsplit(" ", 1)[-1])
    assert lines[2].startswith(f"  prod {first}: pre_install ok 1/1 ") and "; on_exit ok 1/1 " in lines[2]


async def test_halt_stage_stops_dispatching_after_a_hook_failure(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """``on_hook_failure: halt_stage``: the instance fails and the stage stops dispatching — within its error
    budget — and the wave halts saying why; on_exit undoes the failed instance's pre_install all the same."""
    first, second, third = (instance_id("prod", n) for n in (1, 2, 3))
    fleet = make_fleet({"prod": 3}, behaviours={second: {"fail_commands": ["start-app"]}})
    hooks = Hooks(
        pre_install=HOOKS.pre_install,
        post_install=HOOKS.post_install,
        on_exit=HOOKS.on_exit,
        on_hook_failure=HALT_STAGE,
    )
    inp = hooked_wave(fleet, tmp_path, hooks, max_errors="5")
    client = dev_env.client
    async with running_worker(client) as tq:
        await start(client, tq, inp)
        status = await settle(client, inp.wave_id, {"halted"})
        await act(client, inp.wave_id, "cancel", who="test")
        await settle(client, inp.wave_id, {"cancelled"})

    prod = status.stages[0]
    # Like an operator's halt, the instances not dispatched yet stay pending: a resume goes on with them.
    assert prod.instances == {first: "succeeded", second: "failed", third: "pending"}
    assert status.reason.startswith(f"stage prod: the post_install hooks of {second} failed")
    assert status.reason.endswith("on_hook_failure: halt_stage stopped the stage")
    assert installs(inp) == {first: 1, second: 1, third: 0}  # installed, then its post_install failed
    assert fleet_of(inp).commands_run(second) == ["stop-app", "start-app", "cleanup"]


async def test_wave_status_shows_the_hook_steps_of_a_running_stage(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """The live status merges the stage run's hook step records in (paged like its instance states)."""
    fleet = make_fleet({"prod": 2}, duration=1.5)
    inp = hooked_wave(fleet, tmp_path, HOOKS)
    client = dev_env.client
    async with running_worker(client) as tq:
        handle = await start(client, tq, inp)
        for _ in range(100):
            status = await wave_status(client, inp.wave_id)
            if status.stages[0].hook_steps:
                break
        result = await handle.result()

    live = status.stages[0].hook_steps[instance_id("prod", 1)]
    assert live[0].phase == "pre_install" and live[0].status == "succeeded"
    assert result.status.state == "succeeded"
    assert all(len(r) == 4 for r in result.status.stages[0].hook_steps.values())


async def test_on_exit_runs_for_instances_cancelled_mid_install(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """A cancelled wave cancels the installs in flight (SSM: CancelCommand) and still runs on_exit on their
    instances: their pre_install began, so its undo must run."""
    first, second = instance_id("prod", 1), instance_id("prod", 2)
    fleet = make_fleet({"prod": 2}, duration=30.0)
    inp = wave_input(fleet, tmp_path, [stage("prod", max_concurrency="2", hooks=HOOKS)])
    client = dev_env.client
    async with running_worker(client) as tq:
        await start(client, tq, inp)
        executor = fleet_of(inp)
        for _ in range(200):
            status = await wave_status(client, inp.wave_id)
            installing = [r for r in status.stages[0].hook_steps.values() if r[-1].phase == "pre_install"]
            if len(installing) == 2 and all(s == "in_flight" for s in status.stages[0].instances.values()):
                break
            await asyncio.sleep(0.05)
        await act(client, inp.wave_id, "cancel", who="test")
        status = await settle(client, inp.wave_id, {"cancelled"})

    prod = status.stages[0]
    assert prod.instances == {first: "cancelled", second: "cancelled"}
    for instance in (first, second):
        assert executor.commands_run(instance) == [
            "stop-app",
            "cleanup",
        ]  # never post_install, always on_exit
        assert [r.phase for r in prod.hook_steps[instance]] == ["pre_install", "on_exit"]
