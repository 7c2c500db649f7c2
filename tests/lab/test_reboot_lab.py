"""Reboot orchestration on a real lab host: a kernel-like package installed with ``NoReboot`` (the stage has
``reboot:``), then rebooted by patchflow — a new boot id, nothing pending, the instance succeeded.

AWS-RunPatchBaseline, "Parameter name: RebootOption" (AWS Systems Manager User Guide): ``NoReboot`` installs and
leaves the patches ``INSTALLED_PENDING_REBOOT``, so that the reboot can be scheduled separately — here by the
stage's reboot policy, right after the install.
"""

from __future__ import annotations

import asyncio

import pytest
from temporalio.testing import WorkflowEnvironment

from patchflow.core.reboots import RebootSpec
from patchflow.executors.base import Package
from patchflow.testing.lab.fleet import Lab
from patchflow.testing.ssm_endpoint import SsmEndpoint
from tests.lab.conftest import Hosts
from tests.lab.test_ssm_lab import endpoint, register, ssm_wave  # noqa: F401 - endpoint: the fixture
from tests.lab.test_waves_lab import lab_worker, stage, wave
from workflows.wave import WaveWorkflow

pytestmark = pytest.mark.lab
KERNEL = Package("linux-image-lab", "all", "6.1.0-2")


async def test_kernel_installed_with_no_reboot_then_rebooted_by_patchflow(
    lab_temporal: WorkflowEnvironment, lab: Lab, lab_hosts: Hosts
) -> None:
    host = lab_hosts.take("spare")
    assert lab.installed(host)["linux-image-lab"] == "6.1.0-1"
    before = next(h for h in lab.status() if h["id"] == host)["boot_id"]
    inp = wave(
        lab.inventory_path,
        [KERNEL],
        [stage("kernel", patch_group=None, instance_ids=[host], reboot=RebootSpec(policy="if_needed"))],
    )
    async with lab_worker(lab_temporal.client) as tq:
        handle = await lab_temporal.client.start_workflow(
            WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq
        )
        result = await asyncio.wait_for(handle.result(), 240)
    assert result.status.state == "succeeded", result.status
    st = result.status.stages[0]
    assert st.instances == {host: "succeeded"}
    detail = st.details[host]
    assert "pending_reboot" in detail and "NoReboot" in detail  # the install itself did not reboot …
    assert "rebooted (new boot id" in detail  # … patchflow did, afterwards
    after = next(h for h in lab.status() if h["id"] == host)
    assert after["boot_id"] != before and not after["reboot_pending"]
    assert lab.installed(host)["linux-image-lab"] == "6.1.0-2"
    assert st.reboot_debt == {}


async def test_ssm_wave_installs_no_reboot_then_reboots_with_exit_194(
    lab_temporal: WorkflowEnvironment,
    lab: Lab,
    lab_hosts: Hosts,
    endpoint: SsmEndpoint,  # noqa: F811 - the fixture imported above
) -> None:
    """The SSM executor's reboot is Run Command ``AWS-RunShellScript`` exiting 194 (User Guide, "Handling reboots
    when running commands": the agent reboots the node, then runs the script again); the fake endpoint's agent
    honours it on the lab host, which really reboots."""
    host = lab_hosts.take("ssm")
    instance = register(endpoint, lab, {host: "kernel-ssm"})[host]
    before = next(h for h in lab.status() if h["id"] == host)["boot_id"]
    inp = ssm_wave(
        endpoint,
        [KERNEL],
        [stage("kernel-ssm", reboot=RebootSpec(policy="if_needed"))],
    )
    async with lab_worker(lab_temporal.client) as tq:
        handle = await lab_temporal.client.start_workflow(
            WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq
        )
        result = await asyncio.wait_for(handle.result(), 300)
    assert result.status.state == "succeeded", result.status
    st = result.status.stages[0]
    assert st.instances == {instance: "succeeded"} and st.reboot_debt == {}
    assert "reboot pending" in st.details[instance] and "rebooted, boot id" in st.details[instance]
    after = next(h for h in lab.status() if h["id"] == host)
    assert after["boot_id"] != before and not after["reboot_pending"]
    assert lab.installed(host)["linux-image-lab"] == "6.1.0-2"
