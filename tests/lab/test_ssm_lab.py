"""The SSM executor's whole path on real machines: boto3 → HTTP → the fake SSM endpoint → the lab's Debian hosts.

The endpoint backs managed instances with lab hosts (:meth:`SsmEndpoint.register_ssh_host`), so
``AWS-RunShellScript`` runs the script on the host, ``AWS-RunPatchBaseline`` ``Install`` installs the
``InstallOverrideList``'s versions with apt and ``Scan`` reports from the host's dpkg database. The assertions
read each host's own dpkg database (``Lab.installed`` parses ``/var/lib/dpkg/status`` in the host's root, not
through SSH or SSM).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from patchflow.control.devserver import free_port
from patchflow.control.waves import act
from patchflow.core.baselines import load_baseline
from patchflow.core.catalog import load_catalog
from patchflow.core.documents import dump_yaml
from patchflow.core.evaluation import evaluate
from patchflow.core.versions import compare
from patchflow.core.wavemodel import ExecutorRef, StageInput, WaveInput
from patchflow.executors.base import Package
from patchflow.executors.ssh import load_inventory
from patchflow.executors.ssm.executor import parse_title
from patchflow.testing.lab.fleet import Lab
from patchflow.testing.ssm_endpoint import SsmEndpoint, Timings, ssh_instance_id
from tests.conftest import BASELINES_DIR
from tests.lab.conftest import Hosts
from tests.lab.test_waves_lab import lab_worker, settle, stage
from tests.workflows.test_cli_waves import cli
from workflows.wave import WaveWorkflow

pytestmark = pytest.mark.lab
BUCKET = "patchflow-lab-ssm"


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[SsmEndpoint]:
    # The worker builds its boto3 clients from the standard chain, as in production.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    timings = Timings(not_found_seconds=0.2, pending_seconds=0.1, run_seconds=0.1)
    with SsmEndpoint(timings=timings, ssh_probe_seconds=0.1) as ep:
        ep.client("s3").create_bucket(Bucket=BUCKET)
        yield ep


def register(endpoint: SsmEndpoint, lab: Lab, tags: dict[str, str]) -> dict[str, str]:
    """host → its managed-instance id, each registered with ``Patch Group`` = the given tag."""
    inventory = load_inventory(lab.inventory_path)
    return {
        host: endpoint.register_ssh_host(inventory.hosts[host], tags={"Patch Group": group})
        for host, group in tags.items()
    }


def ssm_wave(endpoint: SsmEndpoint, patches: list[Package], stages: list[StageInput]) -> WaveInput:
    return WaveInput(
        wave_id=f"wave-lab-ssm-{uuid.uuid4().hex[:8]}",
        plan_name="lab-ssm",
        patch_set_id="ps-000000000000000000000000",
        patches=patches,
        executor=ExecutorRef(
            kind="ssm",
            region=endpoint.region,
            endpoint_url=endpoint.url,
            bucket=BUCKET,
            reboot_option="RebootIfNeeded",
            max_requests_per_second=50,
            poll_initial_seconds=0.2,
            poll_max_seconds=1.0,
        ),
        stages=stages,
        heartbeat_timeout_seconds=20,
    )


class PingWatch:
    """Every ``PingStatus`` DescribeInstanceInformation reports while it runs (polled every 0.1 s)."""

    def __init__(self, endpoint: SsmEndpoint) -> None:
        self.ssm = endpoint.client("ssm")
        self.seen: set[tuple[str, str]] = set()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self.stop.wait(0.1):
            for row in self.ssm.describe_instance_information()["InstanceInformationList"]:
                self.seen.add((row["InstanceId"], row["PingStatus"]))

    def __enter__(self) -> PingWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=10)


def invocation(endpoint: SsmEndpoint, instance_id: str, document: str) -> dict[str, Any]:
    """The GetCommandInvocation answer of the instance's latest command of ``document``."""
    ssm = endpoint.client("ssm")
    commands = ssm.list_commands(
        InstanceId=instance_id, Filters=[{"key": "DocumentName", "value": document}]
    )["Commands"]
    plugin = {"PluginName": "PatchLinux"} if document == "AWS-RunPatchBaseline" else {}
    answer: dict[str, Any] = ssm.get_command_invocation(
        CommandId=commands[0]["CommandId"], InstanceId=instance_id, **plugin
    )
    return answer


def patches(endpoint: SsmEndpoint, instance_id: str, **filters: list[str]) -> list[dict[str, Any]]:
    """Every DescribeInstancePatches row of the instance (all pages), optionally filtered (``State=["Missing"]``)."""
    pages = (
        endpoint.client("ssm")
        .get_paginator("describe_instance_patches")
        .paginate(InstanceId=instance_id, Filters=[{"Key": k, "Values": v} for k, v in filters.items()])
    )
    return [row for page in pages for row in page["Patches"]]


def run_command(
    endpoint: SsmEndpoint, instance_id: str, document: str, **parameters: list[str]
) -> dict[str, Any]:
    """Send a command through boto3 and wait for its invocation to end; returns GetCommandInvocation's answer."""
    ssm = endpoint.client("ssm")
    command = ssm.send_command(
        InstanceIds=[instance_id], DocumentName=document, Parameters=parameters, OutputS3BucketName=BUCKET
    )["Command"]
    plugin = {"PluginName": "PatchLinux"} if document == "AWS-RunPatchBaseline" else {}
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            answer: dict[str, Any] = ssm.get_command_invocation(
                CommandId=command["CommandId"], InstanceId=instance_id, **plugin
            )
        except ssm.exceptions.InvocationDoesNotExist:
            answer = {"Status": "Pending"}
        if answer["Status"] not in ("Pending", "InProgress", "Delayed"):
            return answer
        time.sleep(0.2)
    raise AssertionError(f"{document} on {instance_id} did not finish: {answer}")


async def test_a_pinned_wave_through_ssm_on_lab_hosts(
    lab_temporal: WorkflowEnvironment, lab: Lab, lab_hosts: Hosts, endpoint: SsmEndpoint, tmp_path: Path
) -> None:
    """Dev → Test → Prod through the SSM executor: every host ends with exactly the pinned versions.

    The executor sends ``AWS-RunPatchBaseline`` ``Install`` with an ``InstallOverrideList`` of exact titles
    (User Guide, AWS-RunPatchBaseline: the list replaces the baseline's install set), so a security version
    published between stages does not reach Prod — while the node's own Patch Manager, which evaluates its
    baseline at run time, reports it ``MISSING`` at once. ``RebootIfNeeded`` reboots a node that installed
    anything (User Guide, "Parameter name: RebootOption"): each host comes back with a new boot id, and is
    ``ConnectionLost`` while it is down (API reference, InstanceInformation ``PingStatus``).
    """
    hosts = {group: lab_hosts.take("ssm") for group in ("ssm-dev", "ssm-test", "ssm-prod")}
    ids = register(endpoint, lab, {host: group for group, host in hosts.items()})
    catalog = tmp_path / "lab-catalog.json"
    catalog.write_text(json.dumps(lab.catalog()))
    evaluation = evaluate(
        load_baseline(BASELINES_DIR / "debian-default.yaml"), load_catalog(catalog), datetime.now(UTC)
    )
    pinned = {p.name: p.version for p in evaluation.patch_set.patches}
    assert pinned["app"] == "1.1-1" and pinned["linux-image-lab"] == "6.1.0-2" and "tzdata-lab" not in pinned
    before = {host: lab.installed(host) for host in hosts.values()}
    boots = {h["id"]: h["boot_id"] for h in lab.status()}
    inp = ssm_wave(
        endpoint,
        [Package(p.name, p.arch, p.version) for p in evaluation.patch_set.patches],
        [
            stage("ssm-dev"),
            stage("ssm-test"),
            stage("ssm-prod", gate="approval", approvers=["ops-lead"]),
        ],
    )
    with PingWatch(endpoint) as pings:
        async with lab_worker(lab_temporal.client) as tq:
            handle = await lab_temporal.client.start_workflow(
                WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq
            )
            await settle(lab_temporal.client, inp.wave_id, {"waiting_approval"})
            lab.publish("tzdata-lab", "2026a-1", security=True)  # the repository moves on between stages
            await act(lab_temporal.client, inp.wave_id, "approve", who="ops-lead", stage="ssm-prod")
            result = await asyncio.wait_for(handle.result(), 240)
    assert result.status.state == "succeeded", result.status

    ssm = endpoint.client("ssm")
    status = {h["id"]: h for h in lab.status()}
    for host, instance_id in ids.items():
        installed = lab.installed(host)
        assert {n: installed[n] for n in pinned} == pinned, host
        assert {n: v for n, v in installed.items() if n not in pinned} == {
            n: v for n, v in before[host].items() if n not in pinned
        }, f"{host}: something outside the pinned set changed"
        assert lab.run(host, "dpkg --audit").stdout.strip() == ""
        assert status[host]["boot_id"] != boots[host] and not status[host]["reboot_pending"]
        assert endpoint.command_count(instance_id, "AWS-RunPatchBaseline") == 1  # never sent twice
        assert endpoint.reboots(instance_id) == 1
        assert {(instance_id, "ConnectionLost"), (instance_id, "Online")} <= pings.seen
        state = ssm.describe_instance_patch_states(InstanceIds=[instance_id])["InstancePatchStates"][0]
        assert (state["Operation"], state["InstalledPendingRebootCount"], state["FailedCount"]) == (
            "Install",
            0,
            0,
        )
        assert state["InstallOverrideList"].startswith(f"s3://{BUCKET}/")

    prod = ids[hosts["ssm-prod"]]
    rows = {r["KBId"]: r for r in patches(endpoint, prod)}
    assert (rows["tzdata-lab.all"]["State"], rows["tzdata-lab.all"]["Title"]) == (
        "MISSING",
        "tzdata-lab.all:0:2026a-1",
    )
    assert (
        rows["app.all"]["State"] == "INSTALLED"
    )  # a security-pocket version: the default baseline approves it


async def test_a_failing_postinst_fails_the_instance_with_the_output_tail(
    lab_temporal: WorkflowEnvironment, lab: Lab, lab_hosts: Hosts, endpoint: SsmEndpoint
) -> None:
    """A maintainer script that fails ends the invocation ``Failed`` with a non-zero ``ResponseCode`` and the
    package manager's account in its output (API reference, GetCommandInvocation; User Guide, "Understanding
    command statuses": "the result code for one or more plugins wasn't zero"), the instance ``failed`` with
    the end of that output, the package ``FAILED`` in the node's compliance (User Guide, "Patch compliance
    state values"). Patch Manager does not revert: the package stays half-configured. The other instance's
    install is rolled back by ``AWS-RunShellScript`` running apt on the host."""
    first, second = sorted(lab_hosts.take("ssm") for _ in range(2))
    lab.run(first, "dpkg -r flaky")  # so only the second host runs flaky's failing postinst
    ids = register(endpoint, lab, {first: "ssm-rb", second: "ssm-rb"})
    assert ids[first] < ids[second]  # dispatch order is by instance id
    inp = ssm_wave(
        endpoint,
        [Package("flaky", "all", "1.1-1"), Package("editor-lab", "all", "9.1-1")],
        [stage("ssm-rb", max_concurrency="1", max_errors="0", on_failure="rollback")],
    )
    async with lab_worker(lab_temporal.client) as tq:
        await lab_temporal.client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)
        status = await settle(lab_temporal.client, inp.wave_id, {"halted"})
    outcome = status.stages[0]
    assert outcome.instances[ids[first]] == "rolled_back" and outcome.instances[ids[second]] == "failed"
    detail = outcome.details[ids[second]]
    assert detail.startswith("SSM Failed (command ")
    assert "flaky package post-installation script subprocess returned error exit status 1" in detail

    failed = invocation(endpoint, ids[second], "AWS-RunPatchBaseline")
    assert (failed["Status"], failed["StatusDetails"], failed["ResponseCode"]) == ("Failed", "Failed", 1)
    assert (
        "post-installation script subprocess returned error exit status 1" in failed["StandardErrorContent"]
    )
    rows = patches(endpoint, ids[second], State=["Failed"])
    assert [(r["KBId"], r["Title"]) for r in rows] == [("flaky.all", "flaky.all:0:1.1-1")]
    state = lab.run(second, "dpkg-query -W -f '${db:Status-Abbrev}' flaky").stdout.strip()
    assert state == "iF"  # half-configured, as dpkg left it
    assert "flaky" in lab.run(second, "dpkg --audit").stdout

    ssm = endpoint.client("ssm")
    shell = ssm.list_commands(
        InstanceId=ids[first], Filters=[{"key": "DocumentName", "value": "AWS-RunShellScript"}]
    )["Commands"]
    restores = [c for c in shell if "--allow-downgrades" in " ".join(c["Parameters"]["commands"])]
    assert len(restores) == 1 and "editor-lab=9.0-1" in " ".join(restores[0]["Parameters"]["commands"])
    answer = ssm.get_command_invocation(CommandId=restores[0]["CommandId"], InstanceId=ids[first])
    assert (answer["StatusDetails"], answer["ResponseCode"]) == ("Success", 0)
    assert lab.installed(first)["editor-lab"] == "9.0-1"  # rolled back on the host, by apt
    assert lab.run(first, "dpkg --audit").stdout.strip() == ""


def test_shell_scripts_and_scans_run_on_the_host(lab: Lab, lab_hosts: Hosts, endpoint: SsmEndpoint) -> None:
    """``AWS-RunShellScript`` runs the script on the node: ``ResponseCode`` is its exit status, a non-zero one is
    ``Failed``; ``StandardOutputContent`` holds the first 24,000 characters and S3 the whole output (API
    reference, GetCommandInvocation); past ``executionTimeout`` the agent kills it: ``Execution Timed Out``,
    ``ResponseCode`` 137 (aws/amazon-ssm-agent ``agent/appconfig/constants_unix.go``,
    CommandStoppedPreemptivelyExitCode). ``Scan`` reports every installed package, ``MISSING`` exactly for the
    security-pocket versions newer than the installed ones (User Guide, "Patch compliance state values":
    without non-security updates, candidates are limited to the security repository)."""
    host = lab_hosts.take("ssm")
    instance_id = register(endpoint, lab, {host: "ssm-shell"})[host]

    answer = run_command(
        endpoint, instance_id, "AWS-RunShellScript", commands=["hostname", "echo oops >&2", "exit 3"]
    )
    assert (answer["Status"], answer["StatusDetails"], answer["ResponseCode"]) == ("Failed", "Failed", 3)
    assert answer["StandardOutputContent"] == f"{host}\n" and answer["StandardErrorContent"] == "oops\n"

    answer = run_command(
        endpoint, instance_id, "AWS-RunShellScript", commands=["head -c 30000 /dev/zero | tr '\\0' x"]
    )
    assert answer["StatusDetails"] == "Success" and answer["ResponseCode"] == 0
    assert answer["StandardOutputContent"] == "x" * 24_000
    key = answer["StandardOutputUrl"].split(f"/{BUCKET}/", 1)[1]
    body = endpoint.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read()
    assert body == b"x" * 30_000

    started = time.monotonic()
    answer = run_command(
        endpoint, instance_id, "AWS-RunShellScript", commands=["sleep 300"], executionTimeout=["2"]
    )
    assert (answer["Status"], answer["StatusDetails"], answer["ResponseCode"]) == (
        "TimedOut",
        "Execution Timed Out",
        137,
    )
    assert time.monotonic() - started < 30
    assert lab.run(host, "grep -lx sleep /proc/[0-9]*/comm").stdout.strip() == ""  # killed, not left running

    answer = run_command(endpoint, instance_id, "AWS-RunPatchBaseline", Operation=["Scan"])
    assert answer["StatusDetails"] == "Success"
    installed = lab.installed(host)
    newest_security: dict[str, str] = {}
    for p in lab.repo.packages():
        if p.security and (
            p.name not in newest_security or compare("deb", p.version, newest_security[p.name]) > 0
        ):
            newest_security[p.name] = p.version
    missing = {
        n: v for n, v in newest_security.items() if n in installed and compare("deb", v, installed[n]) > 0
    }
    assert missing  # the lab's hosts start behind its security pocket
    rows = patches(endpoint, instance_id)
    found = [parse_title(r["Title"], r["KBId"]) for r in rows if r["State"] == "MISSING"]
    assert {
        p.name: p.version for p in found
    } == missing  # (an epoch included: docs-lab may be at 1:1.1~rc1-1)
    assert {r["KBId"].rsplit(".", 1)[0] for r in rows} == set(installed)
    ssm = endpoint.client("ssm")
    state = ssm.describe_instance_patch_states(InstanceIds=[instance_id])["InstancePatchStates"][0]
    assert (state["Operation"], state["MissingCount"], state["SecurityNonCompliantCount"]) == (
        "Scan",
        len(missing),
        len(missing),
    )
    assert state["InstalledCount"] + state["InstalledOtherCount"] + state["MissingCount"] == len(installed)


def test_demo_lab_fake_aws_patches_lab_hosts_through_ssm(lab: Lab, lab_hosts: Hosts, tmp_path: Path) -> None:
    """``patchflow demo --lab --fake-aws``: the demo's fake endpoint serves the running lab's hosts as managed
    instances, and the wave reaches them through the SSM executor (here with a plan of one stage on one host,
    so other tests' hosts stay as they are)."""
    host = lab_hosts.take("ssm")
    instance_id = ssh_instance_id(host)
    boot_id = {h["id"]: h for h in lab.status()}[host]["boot_id"]
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(lab.catalog()))
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        dump_yaml(
            {
                "name": "lab-ssm-demo",
                "baseline": str(BASELINES_DIR / "debian-default.yaml"),
                "catalog": str(catalog),
                "executor": {"kind": "ssm", "bucket": "patchflow-demo", "reboot_option": "NoReboot"},
                "stages": [
                    {
                        "name": "one",
                        "targets": {"instance_ids": [instance_id]},
                        "window": "now",
                        "max_concurrency": 1,
                        "max_errors": 0,
                    }
                ],
            }
        )
    )
    env = {
        "PATCHFLOW_DATA_DIR": str(lab.dir.parent),  # where the session's lab is up
        "PATCHFLOW_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}",
        "PATCHFLOW_API_PORT": str(free_port()),
    }
    proc = cli("demo", "--lab", "--fake-aws", "--approve", "--plan", str(plan), env=env, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "managed instances backed by real hosts over SSH" in proc.stderr
    assert f"{instance_id} = {host}" in proc.stderr and "wave succeeded" in proc.stdout
    installed = lab.installed(host)
    assert (installed["app"], installed["libfoo"], installed["linux-image-lab"]) == (
        "1.1-1",
        "1.1-1",
        "6.1.0-2",
    )
    after = {h["id"]: h for h in lab.status()}[host]
    assert after["boot_id"] == boot_id and after["reboot_pending"]  # NoReboot: installed, not rebooted
    assert lab.is_up()  # a lab that was up stays up
