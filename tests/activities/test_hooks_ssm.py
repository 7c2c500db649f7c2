"""Hook phases through the SSM executor on the fake SSM endpoint (real boto3 over HTTP): command steps as
``AWS-RunShellScript``, and post_reboot waiting for the reboot a ``NoReboot`` install left pending."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from temporalio.testing import ActivityEnvironment

from activities.hooks import HookActivities
from activities.patching import install_operation_id
from patchflow.core.hooks import HookStep
from patchflow.core.wavemodel import ExecutorRef, HookPhaseInput, HookPhaseResult
from patchflow.executors.base import Package
from patchflow.executors.ssm import SsmExecutor
from patchflow.testing.ssm_endpoint import SsmEndpoint, Timings
from tests.executors.conftest import BUCKET, FAST, ssm_executor

OLD, NEW = "3.0.2-0ubuntu1.10", "3.0.2-0ubuntu1.16"
REF = ExecutorRef(kind="ssm", bucket=BUCKET)


@pytest.fixture
def endpoint() -> Iterator[SsmEndpoint]:
    with SsmEndpoint(timings=Timings(**vars(FAST))) as ep:
        ep.client("s3").create_bucket(Bucket=BUCKET)
        yield ep


async def run(
    executor: SsmExecutor, phase: str, steps: list[HookStep], ids: list[str], **fields: Any
) -> HookPhaseResult:
    inp = HookPhaseInput(
        executor=REF, wave_id="w", stage="web", phase=phase, steps=steps, instance_ids=ids, **fields
    )
    result: HookPhaseResult = await ActivityEnvironment().run(
        HookActivities(lambda _: executor).run_hook_phase, inp
    )
    return result


async def test_post_reboot_waits_for_the_reboot_a_no_reboot_install_left_pending(
    endpoint: SsmEndpoint,
) -> None:
    """AWS-RunPatchBaseline ``RebootOption=NoReboot`` leaves installed patches ``InstalledPendingReboot``
    (User Guide, "Parameter name: RebootOption"): post_reboot steps are skipped until the reboot step says the
    instance rebooted; then they run through Run Command (AWS-RunShellScript, the exit code is the invocation's
    ``ResponseCode``)."""
    instance = endpoint.register_instance(
        "i-0123456789abcdef0",
        packages=[Package("openssl", "amd64", OLD)],
        available=[Package("openssl", "amd64", NEW)],
    )
    executor = ssm_executor(endpoint, reboot_option="NoReboot")
    installed = await executor.install(
        instance,
        [Package("openssl", "amd64", NEW)],
        operation_id=install_operation_id("w", "web", instance, 0),
    )
    assert installed.status == "succeeded" and installed.pending_reboot and not installed.rebooted

    steps = [HookStep(kind="command", name="command: check", command="exit 0")]
    pending = await run(executor, "post_reboot", steps, [instance])
    assert [(r.status, r.output) for r in pending.records[instance]] == [
        ("skipped", "a reboot is still pending: post_reboot runs after the reboot")
    ]
    rebooted = await run(executor, "post_reboot", steps, [instance], rebooted_instance_ids=[instance])
    assert [r.status for r in rebooted.records[instance]] == ["succeeded"]

    failing = [HookStep(kind="command", name="command: exit 3", command="exit 3", success_codes=[0, 1])]
    result = await run(executor, "post_install", failing, [instance])
    assert result.failed[instance].startswith("post_install step 'command: exit 3' failed: exit 3")
