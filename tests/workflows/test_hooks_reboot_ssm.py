"""Issue 14: with the SSM executor, install with ``RebootOption=NoReboot`` and the override list, then let
patchflow reboot and run ``post_reboot`` steps — the combination SSM itself cannot do (its hook document cannot
take a pinned override list). One wave through boto3 → HTTP → the fake SSM endpoint, with lifecycle hooks and
``reboot: {policy: if_needed}`` together."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from temporalio.testing import WorkflowEnvironment

from patchflow.core.hooks import Hooks, HookStep
from patchflow.core.reboots import RebootSpec
from patchflow.executors.base import Package
from patchflow.testing.ssm_endpoint import SsmEndpoint
from tests.workflows.conftest import running_worker
from tests.workflows.helpers import NEW, OLD, ssm_prod_wave
from workflows.wave import WaveWorkflow


def command(text: str) -> HookStep:
    return HookStep(kind="command", name=f"command: {text}", command=text)


async def test_no_reboot_install_then_patchflow_reboots_then_post_reboot_runs(
    dev_env: WorkflowEnvironment, endpoint: SsmEndpoint, tmp_path: Path
) -> None:
    """AWS-RunPatchBaseline with ``RebootOption=NoReboot`` leaves the patches ``InstalledPendingReboot`` (User
    Guide, "SSM Command document for patching: AWS-RunPatchBaseline", parameter RebootOption); patchflow then
    reboots through AWS-RunShellScript and exit code 194 (User Guide, "Handling reboots when running commands"),
    and only after that reboot do the post_reboot steps run; on_exit runs last."""
    instances = [f"i-0hook00000000000{n}" for n in (1, 2)]
    for instance_id in instances:
        endpoint.register_instance(
            instance_id, tags={"Patch Group": "prod"}, packages=[Package("openssl", "amd64", OLD)]
        )
    inp = ssm_prod_wave(endpoint.url, tmp_path, name="hooks-reboot")
    hooks = Hooks(
        pre_install=[command("echo drain")],
        post_install=[command("echo started")],
        post_reboot=[command("echo healthy-after-reboot")],
        on_exit=[command("echo undrain")],
    )
    inp.stages = [dataclasses.replace(inp.stages[0], hooks=hooks, reboot=RebootSpec(policy="if_needed"))]

    async with running_worker(dev_env.client) as task_queue:
        handle = await dev_env.client.start_workflow(
            WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue
        )
        result = await handle.result()

    prod = result.status.stages[0]
    assert result.status.state == "succeeded", result.status
    for instance_id in instances:
        assert prod.instances[instance_id] == "succeeded"
        assert endpoint.packages(instance_id)["openssl.amd64"] == NEW
        # One install (NoReboot: the install itself did not reboot), one reboot by patchflow.
        assert endpoint.command_count(instance_id, "AWS-RunPatchBaseline") == 1
        assert endpoint.reboots(instance_id) == 1
        # Run Command shell scripts besides the executor's package queries: the four hook steps, in lifecycle
        # order, with patchflow's reboot script between post_install and post_reboot, each sent once.
        sent = endpoint.client("ssm").list_commands(InstanceId=instance_id)["Commands"]
        scripts = [
            c["Parameters"]["commands"][-1]
            for c in sorted(sent, key=lambda c: c["RequestedDateTime"])
            if c["DocumentName"] == "AWS-RunShellScript" and c.get("Comment") != "patchflow package query"
        ]
        assert scripts == [
            "echo drain",
            "echo started",
            "exit 194",
            "echo healthy-after-reboot",
            "echo undrain",
        ]
        steps = [(r.phase, r.status) for r in prod.hook_steps[instance_id]]
        assert steps == [
            ("pre_install", "succeeded"),
            ("post_install", "succeeded"),
            ("post_reboot", "succeeded"),  # ran: patchflow rebooted the instance (not skipped as pending)
            ("on_exit", "succeeded"),
        ]
        assert instance_id not in prod.reboot_debt  # rebooted: no debt left
