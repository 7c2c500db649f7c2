"""Lifecycle hook ``command`` steps really run on the lab's Debian hosts, through the SSH executor, in a whole
wave on the real Temporal dev server: pre_install before the install, post_install after it, on_exit always
(also for the host whose pre_install failed, which is never installed)."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from patchflow.core.hooks import Hooks, HookStep
from patchflow.testing.lab.fleet import Lab
from tests.lab.conftest import Hosts
from tests.lab.test_waves_lab import APP_SET, lab_worker, settle, stage, wave
from workflows.wave import WaveWorkflow

pytestmark = pytest.mark.lab

LOG = "/var/tmp/patchflow-hooks.log"
MARKER = "/var/tmp/patchflow-hook-marker"
REFUSE = "/var/tmp/patchflow-refuse-pre-install"


def command(text: str) -> HookStep:
    return HookStep(kind="command", name=f"command: {text[:40]}", command=text, timeout_seconds=60)


HOOKS = Hooks(
    pre_install=[
        command(f"echo pre_install $(dpkg-query -W -f='${{Version}}' app) >> {LOG} && touch {MARKER}"),
        command(f"test ! -e {REFUSE}"),
    ],
    post_install=[
        command(f"test -e {MARKER} && echo post_install $(dpkg-query -W -f='${{Version}}' app) >> {LOG}")
    ],
    on_exit=[command(f"rm -f {MARKER} && echo on_exit >> {LOG}")],
)


async def test_command_steps_run_on_the_hosts_in_lifecycle_order(
    lab_temporal: WorkflowEnvironment, lab: Lab, lab_hosts: Hosts, inventory: Path
) -> None:
    good, refusing = lab_hosts.take("hooks"), lab_hosts.take("hooks")
    lab.run(refusing, f"touch {REFUSE}")
    before = lab.installed(refusing)["app"]
    inp = wave(
        inventory,
        APP_SET,
        [stage("hooks", patch_group=None, instance_ids=[good, refusing], max_errors="1", hooks=HOOKS)],
    )
    client = lab_temporal.client
    async with lab_worker(client) as tq:
        await client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)
        status = await settle(client, inp.wave_id, {"succeeded"})

    hooks = status.stages[0]
    assert hooks.instances == {good: "succeeded", refusing: "failed"}
    # The file pre_install created existed through the install and is gone: on_exit removed it.
    assert lab.run(good, f"cat {LOG}").stdout.split("\n")[:3] == [
        f"pre_install {before}",
        "post_install 1.1-1",
        "on_exit",
    ]
    assert lab.run(good, f"test -e {MARKER}; echo $?").stdout.strip() == "1"
    assert lab.installed(good)["app"] == "1.1-1"
    # The refusing host ran pre_install up to its failing step, was never installed, and on_exit still ran.
    assert lab.run(refusing, f"cat {LOG}").stdout.split("\n")[:2] == [f"pre_install {before}", "on_exit"]
    assert lab.run(refusing, f"test -e {MARKER}; echo $?").stdout.strip() == "1"
    assert lab.installed(refusing)["app"] == before
    assert hooks.details[refusing].startswith("hook failed: pre_install step 'command: test ! -e")
    assert [(r.phase, r.status) for r in hooks.hook_steps[refusing]] == [
        ("pre_install", "succeeded"),
        ("pre_install", "failed"),
        ("on_exit", "succeeded"),
    ]
    assert hooks.hook_steps[refusing][1].output == "exit 1"
