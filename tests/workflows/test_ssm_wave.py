"""A staged wave through the SSM executor: plan → executor_ref → build_executor → boto3 → the fake endpoint."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from temporalio.testing import WorkflowEnvironment

from patchflow.control.waves import act, executor_ref, pin_patch_set, wave_input
from patchflow.core.documents import dump_yaml
from patchflow.core.freezes import FreezePeriod
from patchflow.core.plans import PlanError, load_plan
from patchflow.core.wavemodel import StageInput, WaveInput, WaveStatus
from patchflow.core.windows import WindowSpec
from patchflow.errors import InputError
from patchflow.executors.base import Package
from patchflow.executors.simulated.fleet import load_fleet
from patchflow.testing.ssm_endpoint import SsmEndpoint
from tests.conftest import EXAMPLES_DIR
from tests.workflows.conftest import running_worker
from tests.workflows.helpers import BUCKET, NEW, OLD, ssm_prod_wave, status_when, until
from tests.workflows.helpers import ssm_settings as settings
from tests.workflows.helpers import write_ssm_plan as write_plan
from workflows.wave import WaveWorkflow


async def until_not_running(env: WorkflowEnvironment, wave_id: str) -> WaveStatus:
    status = await status_when(env.client, wave_id, lambda s: s.state != "running", tries=600, every=0.1)
    assert status.state != "running", f"wave {wave_id} is still running: {status}"
    return status


def test_plan_executor_options_resolve_into_the_executor_ref(tmp_path: Path) -> None:
    plan = load_plan(
        write_plan(
            tmp_path,
            "{kind: ssm, region: eu-central-1, endpoint_url: 'http://127.0.0.1:4566', reboot_option: NoReboot, "
            "health_command: 'systemctl is-system-running'}",
        )
    )
    with pytest.raises(InputError, match="names no S3 bucket"):
        executor_ref(plan, settings(tmp_path))
    ref = executor_ref(plan, settings(tmp_path, ssm_bucket="from-settings", ssm_prefix="waves"))
    assert (ref.kind, ref.region, ref.endpoint_url, ref.bucket, ref.prefix) == (
        "ssm",
        "eu-central-1",
        "http://127.0.0.1:4566",
        "from-settings",
        "waves",
    )
    assert (ref.reboot_option, ref.health_command, ref.poll_initial_seconds) == (
        "NoReboot",
        "systemctl is-system-running",
        0.05,
    )
    with pytest.raises(PlanError) as err:
        load_plan(write_plan(tmp_path, "{kind: ssm, bucket: Bad_Bucket, reboot_option: Always, fleet: x}"))
    message = str(err.value)
    assert (
        "executor.bucket" in message and "executor.reboot_option" in message and "executor.fleet" in message
    )


async def test_two_stage_wave_on_the_ssm_endpoint(
    dev_env: WorkflowEnvironment, endpoint: SsmEndpoint, tmp_path: Path
) -> None:
    installed = [Package("openssl", "amd64", OLD), Package("curl", "amd64", "7.81.0-1ubuntu1.14")]
    dev = [f"i-0dev000000000000{n}" for n in (1, 2)]
    prod = [f"mi-0prod00000000000{n}" for n in (1, 2, 3, 4)]  # hybrid nodes, tags via ListTagsForResource
    for instance_id in dev:
        endpoint.register_instance(instance_id, tags={"Patch Group": "dev"}, packages=installed)
    for instance_id in prod:
        endpoint.register_instance(instance_id, tags={"PatchGroup": "prod"}, packages=installed)
    endpoint.script(prod[1], "fail")  # inside prod's error budget of 1

    plan = load_plan(
        write_plan(tmp_path, f"{{kind: ssm, region: us-east-1, endpoint_url: '{endpoint.url}'}}")
    )
    ref = executor_ref(plan, settings(tmp_path, ssm_bucket=BUCKET))
    now = WindowSpec(schedule="now")
    inp = WaveInput(
        wave_id=f"wave-ssm-{uuid.uuid4().hex[:8]}",
        plan_name=plan.name,
        patch_set_id="ps-000000000000000000000000",
        patches=[Package("openssl", "amd64", NEW)],
        executor=ref,
        stages=[
            StageInput(name="dev", window=now, max_concurrency="2", max_errors="0", patch_group="dev"),
            StageInput(name="prod", window=now, max_concurrency="2", max_errors="1", patch_group="prod"),
        ],
        heartbeat_timeout_seconds=5,
    )
    async with running_worker(dev_env.client) as task_queue:  # the production factory: build_executor
        handle = await dev_env.client.start_workflow(
            WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue
        )
        result = await handle.result()

    assert result.status.state == "succeeded", result.status
    stages = {s.name: s for s in result.status.stages}
    assert stages["dev"].instances == dict.fromkeys(dev, "succeeded")
    assert stages["prod"].instances == {i: "failed" if i == prod[1] else "succeeded" for i in prod}
    assert stages["prod"].errors == 1
    assert "SSM Failed" in stages["prod"].details[prod[1]]
    for instance_id in dev + prod:
        expected = OLD if instance_id == prod[1] else NEW
        assert endpoint.packages(instance_id)["openssl.amd64"] == expected
        assert endpoint.command_count(instance_id, "AWS-RunPatchBaseline") == 1  # never sent twice


async def test_the_demo_plan_runs_on_the_ssm_endpoint(
    dev_env: WorkflowEnvironment, endpoint: SsmEndpoint, tmp_path: Path
) -> None:
    """The shipped demo (3 stages, health and approval gates, one failure in Test) with ``executor: ssm``."""
    fleet = load_fleet(EXAMPLES_DIR / "fleet.yaml")
    endpoint.register_fleet(fleet, time_scale=0.1)
    data = yaml.safe_load((EXAMPLES_DIR / "demo-plan.yaml").read_text())
    data["baseline"] = str((EXAMPLES_DIR / data["baseline"]).resolve())
    data["catalog"] = str(EXAMPLES_DIR / data["catalog"])
    data["executor"] = {"kind": "ssm", "region": endpoint.region, "endpoint_url": endpoint.url}
    for stage in data["stages"]:
        stage["soak"] = "0s"
    (tmp_path / "plan.yaml").write_text(dump_yaml(data))
    plan = load_plan(tmp_path / "plan.yaml")
    config = settings(tmp_path, ssm_bucket=BUCKET)
    pinned = pin_patch_set(plan, config)
    inp = wave_input(plan, config, pinned, wave_id=f"wave-ssm-demo-{uuid.uuid4().hex[:8]}", who="test")

    async with running_worker(dev_env.client) as task_queue:
        handle = await dev_env.client.start_workflow(
            WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue
        )
        status = await until_not_running(dev_env, inp.wave_id)
        assert status.state == "waiting_approval", status
        test_states = next(s for s in status.stages if s.name == "test").instances
        assert test_states["i-0test000000000004"] == "failed"
        await act(dev_env.client, inp.wave_id, "approve", who="ops-lead", stage="prod")
        result = await handle.result()

    assert result.status.state == "succeeded", result.status
    prod = next(s for s in result.status.stages if s.name == "prod")
    assert len(prod.instances) == 20 and set(prod.instances.values()) == {"succeeded"}
    openssl = next(p.version for p in pinned.patches if p.name == "openssl")
    for inst in fleet.instances:
        assert endpoint.command_count(inst.id, "AWS-RunPatchBaseline") == 1
        if inst.id != "i-0test000000000004":
            assert endpoint.packages(inst.id)["openssl.amd64"] == openssl


async def test_cancelling_a_wave_cancels_its_in_flight_ssm_commands(
    dev_env: WorkflowEnvironment, endpoint: SsmEndpoint, tmp_path: Path
) -> None:
    installed = [Package("openssl", "amd64", OLD)]
    ids = [f"i-0prod00000000000{n}" for n in (1, 2, 3)]
    for instance_id in ids:
        endpoint.register_instance(instance_id, tags={"Patch Group": "prod"}, packages=installed)
        endpoint.script(instance_id, "slow", seconds=60)
    inp = ssm_prod_wave(endpoint.url, tmp_path, name="ssm-cancel", max_concurrency="2")
    async with running_worker(dev_env.client) as task_queue:
        handle = await dev_env.client.start_workflow(
            WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue
        )
        await until(lambda: endpoint.command_count(None, "AWS-RunPatchBaseline") == 2)  # both commands sent
        await act(dev_env.client, inp.wave_id, "cancel", who="alice")
        result = await asyncio.wait_for(handle.result(), timeout=30)
    assert result.status.state == "cancelled"
    assert endpoint.requests["CancelCommand"] >= 2
    states = result.status.stages[0].instances
    assert states[ids[2]] == "not_attempted"
    assert all(endpoint.packages(i)["openssl.amd64"] == OLD for i in ids)


async def test_an_invocation_cancelled_in_ssm_is_reported_and_does_not_halt_the_stage(
    dev_env: WorkflowEnvironment, endpoint: SsmEndpoint, tmp_path: Path
) -> None:
    """botocore's SSM service model, ``Command.ErrorCount``: "The number of targets for which the status is Failed
    or Execution Timed Out". Someone cancels one install in SSM (CancelCommand, as from the console): with
    ``max_errors: 0`` the stage still goes on to the next instance; the cancelled one is reported, not counted."""
    installed = [Package("openssl", "amd64", OLD)]
    ids = [f"i-0prod00000000000{n}" for n in (1, 2)]
    for instance_id in ids:
        endpoint.register_instance(instance_id, tags={"Patch Group": "prod"}, packages=installed)
    endpoint.script(ids[0], "slow", seconds=60, times=1)
    inp = ssm_prod_wave(endpoint.url, tmp_path)
    ssm = endpoint.client("ssm")
    async with running_worker(dev_env.client) as task_queue:
        handle = await dev_env.client.start_workflow(
            WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue
        )
        await until(
            lambda: endpoint.command_count(ids[0], "AWS-RunPatchBaseline") == 1
        )  # the first install runs
        (command,) = (
            c
            for c in ssm.list_commands(InstanceId=ids[0])["Commands"]
            if c["DocumentName"] == "AWS-RunPatchBaseline"
        )
        ssm.cancel_command(CommandId=command["CommandId"], InstanceIds=[ids[0]])
        result = await asyncio.wait_for(handle.result(), timeout=60)

    assert result.status.state == "succeeded", result.status
    stage = result.status.stages[0]
    assert stage.instances == {ids[0]: "cancelled", ids[1]: "succeeded"}
    assert stage.errors == 0 and "SSM Cancelled" in stage.details[ids[0]]
    assert endpoint.packages(ids[0])["openssl.amd64"] == OLD
    assert endpoint.packages(ids[1])["openssl.amd64"] == NEW


async def test_cutoff_behavior_cancel_cancels_in_flight_commands_at_the_cutoff_and_halts(
    dev_env: WorkflowEnvironment, endpoint: SsmEndpoint, tmp_path: Path
) -> None:
    """botocore's SSM service model, RegisterTaskWithMaintenanceWindow ``CutoffBehavior`` ``CANCEL_TASK``: "For Run
    Command tasks: When the cutoff time is reached, the system sends a CancelCommand operation that attempts to
    cancel the command associated with the task." The window here is ``now`` cut short by a change freeze a few
    seconds ahead (its cutoff); the first install runs for a minute. At the cutoff its command is cancelled (reported,
    not counted), the rest is not attempted and the wave halts; a resume patches them all after the freeze."""
    installed = [Package("openssl", "amd64", OLD)]
    ids = [f"i-0prod00000000000{n}" for n in (1, 2, 3)]
    for instance_id in ids:
        endpoint.register_instance(instance_id, tags={"Patch Group": "prod"}, packages=installed)
    endpoint.script(ids[0], "slow", seconds=120, times=1)
    freeze_from = datetime.now(UTC) + timedelta(seconds=15)
    inp = ssm_prod_wave(
        endpoint.url,
        tmp_path,
        cutoff_behavior="cancel",
        freezes=[FreezePeriod("short", freeze_from, freeze_from + timedelta(seconds=5))],
    )
    async with running_worker(dev_env.client) as task_queue:
        handle = await dev_env.client.start_workflow(
            WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue
        )
        status = await until_not_running(dev_env, inp.wave_id)
        assert status.state == "halted", status
        assert "cutoff_behavior: cancel" in status.reason
        stage = status.stages[0]
        assert stage.instances == {ids[0]: "cancelled", ids[1]: "not_attempted", ids[2]: "not_attempted"}
        assert "cancelled at the window's cutoff" in stage.details[ids[0]] and stage.errors == 0
        assert endpoint.requests["CancelCommand"] >= 1
        assert endpoint.packages(ids[0])["openssl.amd64"] == OLD

        await act(dev_env.client, inp.wave_id, "resume", who="alice")
        result = await asyncio.wait_for(handle.result(), timeout=60)

    assert result.status.state == "succeeded", result.status
    assert set(result.status.stages[0].instances.values()) == {"succeeded"}
    assert endpoint.command_count(ids[0], "AWS-RunPatchBaseline") == 2  # the cancelled one, then the resume's
    assert all(endpoint.packages(i)["openssl.amd64"] == NEW for i in ids)
