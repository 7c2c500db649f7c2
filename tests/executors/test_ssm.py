"""The SSM executor with real boto3 over real HTTP against the faithful endpoint (patchflow.testing)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import yaml

from patchflow.errors import NotFoundError, PatchflowError
from patchflow.executors.base import ERROR_STATUSES, InstallResult, OperationNotStartedError, Package
from patchflow.executors.ssm import (
    SsmExecutor,
    command_comment,
    install_status,
    make_clients,
    override_list_yaml,
    parse_title,
    platform_product,
    restore_script,
    snapshot_id,
)
from patchflow.testing.ssm_endpoint import AvailablePatch, SsmEndpoint
from tests.executors.conftest import BUCKET
from tests.executors.conftest import ssm_executor as executor

OPENSSL_OLD, OPENSSL_NEW = "3.0.2-0ubuntu1.10", "3.0.2-0ubuntu1.16"
CURL_OLD, CURL_NEW = "7.81.0-1ubuntu1.14", "7.81.0-1ubuntu1.18"
PINNED = [Package("openssl", "amd64", OPENSSL_NEW), Package("curl", "amd64", CURL_NEW)]


def deb_packages() -> list[Package]:
    return [
        Package("openssl", "amd64", OPENSSL_OLD),
        Package("curl", "amd64", CURL_OLD),
        Package("coreutils", "amd64", "8.32-4.1ubuntu1"),
    ]


def ubuntu(ep: SsmEndpoint, instance_id: str, group: str = "dev", **fields: Any) -> str:
    fields.setdefault("packages", deb_packages())
    fields.setdefault("available", [Package("openssl", "amd64", OPENSSL_NEW)])
    return ep.register_instance(instance_id, tags={"Patch Group": group}, **fields)


def rpm_node(ep: SsmEndpoint, platform: str = "Amazon Linux", version: str = "2023", **fields: Any) -> str:
    """The hybrid node ``mi-0a1b2c3d4e5f60718`` on an rpm platform (Amazon Linux 2023 unless told)."""
    return ep.register_instance("mi-0a1b2c3d4e5f60718", platform=platform, platform_version=version, **fields)


def install_commands(ep: SsmEndpoint, instance_id: str) -> list[dict[str, Any]]:
    commands = ep.client("ssm").list_commands(InstanceId=instance_id)["Commands"]
    return [c for c in commands if c["DocumentName"] == "AWS-RunPatchBaseline"]


# ---------------------------------------------------------------------------------------- discovery


async def test_discovery_reports_tags_platforms_offline_hybrid_and_unmanaged(endpoint: SsmEndpoint) -> None:
    ubuntu(endpoint, "i-0dev0000000000001")
    rpm_node(endpoint, tags={"PatchGroup": "prod", "Owner": "ops"})
    ubuntu(endpoint, "i-0dev0000000000002", online=False)
    endpoint.register_instance(
        "i-0win0000000000001", platform="Microsoft Windows Server 2022", platform_version="10"
    )
    unmanaged = endpoint.client("ec2").run_instances(
        ImageId="ami-12c6146b",
        MinCount=1,
        MaxCount=1,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Patch Group", "Value": "dev"}]}],
    )["Instances"][0]["InstanceId"]

    found = {i.instance_id: i for i in await executor(endpoint).discover()}

    assert set(found) == {
        "i-0dev0000000000001",
        "i-0dev0000000000002",
        "i-0win0000000000001",
        "mi-0a1b2c3d4e5f60718",
        unmanaged,
    }
    dev1 = found["i-0dev0000000000001"]
    assert (dev1.patch_group, dev1.family, dev1.product, dev1.online) == ("dev", "deb", "Ubuntu22.04", True)
    hybrid = found[
        "mi-0a1b2c3d4e5f60718"
    ]  # tags through ListTagsForResource(ManagedInstance), PatchGroup key
    assert (hybrid.patch_group, hybrid.tags["Owner"], hybrid.family, hybrid.product) == (
        "prod",
        "ops",
        "rpm",
        "AmazonLinux2023",
    )
    assert found["i-0dev0000000000002"].online is False  # ConnectionLost: reported, not dropped
    assert found["i-0win0000000000001"].family is None
    assert (found[unmanaged].online, found[unmanaged].patch_group) == (False, "dev")  # EC2 only, no SSM agent


async def test_endpoint_send_command_targets_exactly_the_instance_ids(endpoint: SsmEndpoint) -> None:
    ids = [ubuntu(endpoint, f"i-0dev000000000000{n}") for n in (1, 2, 3)]
    ssm = endpoint.client("ssm")
    sent = ssm.send_command(
        InstanceIds=ids[:1], DocumentName="AWS-RunShellScript", Parameters={"commands": ["true"]}
    )["Command"]
    assert sent["InstanceIds"] == ids[:1] and sent["TargetCount"] == 1  # moto would add every instance
    await asyncio.sleep(0.15)
    invocations = ssm.list_command_invocations(CommandId=sent["CommandId"])["CommandInvocations"]
    assert [i["InstanceId"] for i in invocations] == ids[:1]
    by_tag = ssm.send_command(
        Targets=[{"Key": "tag:Patch Group", "Values": ["dev"]}],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["true"]},
    )["Command"]
    assert by_tag["TargetCount"] == 3


# ---------------------------------------------------------------------------------------------- scan


async def test_scan_lists_installed_packages_deb_and_rpm(endpoint: SsmEndpoint) -> None:
    ubuntu(endpoint, "i-0dev0000000000001")
    rpm_node(
        endpoint,
        "Red Hat Enterprise Linux",
        "9.3",
        packages=[
            Package("bind-libs", "x86_64", "32:9.16.23-14.el9"),
            Package("curl", "x86_64", "7.76.1-26.el9"),
        ],
    )
    ex = executor(endpoint)
    assert await ex.scan("i-0dev0000000000001") == sorted(deb_packages(), key=lambda p: (p.name, p.arch))
    assert await ex.scan("mi-0a1b2c3d4e5f60718") == [
        Package("bind-libs", "x86_64", "32:9.16.23-14.el9"),
        Package("curl", "x86_64", "7.76.1-26.el9"),  # rpm printed 0:…; a zero epoch is dropped
    ]


async def test_scan_reads_truncated_output_from_s3(
    endpoint: SsmEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    many = [Package(f"lib{n:03d}", "amd64", f"1.{n}-1") for n in range(300)]
    ubuntu(endpoint, "i-0dev0000000000001", packages=many, available=[])
    endpoint.output_limit = 1000
    monkeypatch.setattr("patchflow.executors.ssm.executor.OUTPUT_LIMIT", 1000)
    assert await executor(endpoint).scan("i-0dev0000000000001") == many


async def test_patch_states_report_kb_ids_titles_and_missing_updates(endpoint: SsmEndpoint) -> None:
    ubuntu(
        endpoint,
        "i-0dev0000000000001",
        available=[
            AvailablePatch("openssl", "amd64", OPENSSL_NEW, "Security", "Critical", ("CVE-2024-0727",))
        ],
    )
    rows = {r.kb_id: r for r in await executor(endpoint).patch_states("i-0dev0000000000001")}
    assert rows["openssl.amd64"].state == "MISSING"
    assert rows["openssl.amd64"].title == f"openssl.amd64:0:{OPENSSL_NEW}"
    assert (rows["openssl.amd64"].version, rows["openssl.amd64"].severity) == (OPENSSL_NEW, "Critical")
    assert rows["openssl.amd64"].cve_ids == ("CVE-2024-0727",)
    # curl has no update notice: no baseline approved it, so it is INSTALLED_OTHER (User Guide, "Patch compliance
    # state values")
    assert (rows["curl.amd64"].state, rows["curl.amd64"].version) == ("INSTALLED_OTHER", CURL_OLD)
    states = endpoint.client("ssm").describe_instance_patch_states(InstanceIds=["i-0dev0000000000001"])
    assert states["InstancePatchStates"][0]["MissingCount"] == 1
    assert states["InstancePatchStates"][0]["Operation"] == "Scan"


# ------------------------------------------------------------------------------------------- install


async def test_install_end_to_end_changes_versions_through_the_override_list(endpoint: SsmEndpoint) -> None:
    ubuntu(endpoint, "i-0dev0000000000001")
    op = "wave-a/dev/i-0dev0000000000001/install/0"
    pinned = [*PINNED, Package("nginx", "amd64", "1.18.0-6ubuntu14.4")]  # not installed: never added

    result = await executor(endpoint).install("i-0dev0000000000001", pinned, operation_id=op)

    assert result.status == "succeeded" and not result.counts_as_error
    assert {(c.name, c.from_version, c.to_version) for c in result.changed} == {
        ("openssl", OPENSSL_OLD, OPENSSL_NEW),
        ("curl", CURL_OLD, CURL_NEW),
    }
    assert result.rebooted and "2 package(s) upgraded" in result.message
    assert endpoint.packages("i-0dev0000000000001") == {
        "coreutils.amd64": "8.32-4.1ubuntu1",
        "curl.amd64": CURL_NEW,
        "openssl.amd64": OPENSSL_NEW,
    }
    (command,) = install_commands(endpoint, "i-0dev0000000000001")
    assert command["InstanceIds"] == ["i-0dev0000000000001"]
    assert command["Comment"] == command_comment(op) and op in command["Comment"]
    params = command["Parameters"]
    assert params["Operation"] == ["Install"] and params["RebootOption"] == ["RebootIfNeeded"]
    assert params["SnapshotId"] == [snapshot_id(op)]
    assert params["InstallOverrideList"][0].startswith(f"s3://{BUCKET}/pf/override-lists/")
    assert command["OutputS3BucketName"] == BUCKET and command["OutputS3KeyPrefix"] == "pf/command-output"


async def test_reboot_if_needed_also_reboots_for_patches_pending_a_reboot(endpoint: SsmEndpoint) -> None:
    """User Guide, AWS-RunPatchBaseline, ``RebootOption``: ``RebootIfNeeded`` reboots when "Patch Manager
    installed one or more patches" or "detects one or more patches with a status of INSTALLED_PENDING_REBOOT
    during the Install operation" — which "can mean that the option NoReboot was selected the last time";
    ``NoReboot`` leaves installed patches ``InstalledPendingReboot``. Each install reports both as SSM saw them."""
    node = ubuntu(endpoint, "i-0dev0000000000001")
    op = "wave-r/dev/i-0dev0000000000001/install/{}".format

    no_reboot = await executor(endpoint, reboot_option="NoReboot").install(
        node, PINNED[:1], operation_id=op(0)
    )
    assert (no_reboot.status, len(no_reboot.changed), no_reboot.rebooted) == ("succeeded", 1, False)
    assert no_reboot.pending_reboot and "reboot pending" in no_reboot.message
    assert endpoint.reboots(node) == 0

    nothing_new = await executor(endpoint).install(node, PINNED[:1], operation_id=op(1))  # openssl is current
    assert (nothing_new.changed, nothing_new.rebooted, nothing_new.pending_reboot) == ((), True, False)
    assert "0 package(s) upgraded, rebooted" in nothing_new.message
    assert endpoint.reboots(node) == 1
    rows = {r.kb_id: r.state for r in await executor(endpoint).patch_states(node)}
    assert rows["openssl.amd64"] == "INSTALLED"

    quiet = await executor(endpoint).install(node, PINNED[:1], operation_id=op(2))  # nothing pending now
    assert (quiet.changed, quiet.rebooted, quiet.pending_reboot) == ((), False, False)
    assert endpoint.reboots(node) == 1
    recorded = await executor(endpoint).operation_result(op(1))  # a new worker reads the record
    assert recorded is not None and (recorded.rebooted, recorded.pending_reboot) == (True, False)


async def test_override_list_yaml_in_s3_is_exact(endpoint: SsmEndpoint) -> None:
    ubuntu(endpoint, "i-0dev0000000000001")
    rpm_node(endpoint, packages=[Package("curl", "x86_64", "8.5.0-1.amzn2023.0.2")])
    ex = executor(endpoint, reboot_option="NoReboot")
    await ex.install("i-0dev0000000000001", PINNED, operation_id="wave-b/dev/i-0dev0000000000001/install/0")
    rpm_pins = [
        Package("curl", "x86_64", "8.5.0-1.amzn2023.0.4"),
        Package("bind-libs", "x86_64", "32:9.16.23-15.el9"),
    ]
    await ex.install(
        "mi-0a1b2c3d4e5f60718", rpm_pins, operation_id="wave-b/dev/mi-0a1b2c3d4e5f60718/install/0"
    )

    s3 = endpoint.client("s3")
    texts = {}
    for instance_id in ("i-0dev0000000000001", "mi-0a1b2c3d4e5f60718"):
        (command,) = install_commands(endpoint, instance_id)
        url = command["Parameters"]["InstallOverrideList"][0]
        bucket, key = url.removeprefix("s3://").split("/", 1)
        texts[instance_id] = s3.get_object(Bucket=bucket, Key=key)["Body"].read().decode()
        assert command["Parameters"]["RebootOption"] == ["NoReboot"]
    assert texts["i-0dev0000000000001"] == (
        "patches:\n"
        "- id: curl.amd64\n"
        f"  title: curl.amd64:{CURL_NEW}\n"
        "- id: openssl.amd64\n"
        f"  title: openssl.amd64:{OPENSSL_NEW}\n"
    )
    assert texts["mi-0a1b2c3d4e5f60718"] == (
        "patches:\n"
        "- id: bind-libs.x86_64\n"
        "  title: bind-libs.x86_64:32:9.16.23-15.el9\n"
        "- id: curl.x86_64\n"
        "  title: curl.x86_64:0:8.5.0-1.amzn2023.0.4\n"
    )
    assert yaml.safe_load(texts["i-0dev0000000000001"]) == yaml.safe_load(override_list_yaml("deb", PINNED))
    # One wave, one snapshot: both instances' commands carry the same SnapshotId.
    snapshots = {install_commands(endpoint, i)[0]["Parameters"]["SnapshotId"][0] for i in texts}
    assert snapshots == {snapshot_id("wave-b/anything")}
    # NoReboot leaves the upgraded packages pending a reboot in Patch Manager's compliance.
    pending = endpoint.client("ssm").describe_instance_patches(
        InstanceId="i-0dev0000000000001", Filters=[{"Key": "State", "Values": ["INSTALLED_PENDING_REBOOT"]}]
    )["Patches"]
    assert {p["KBId"] for p in pending} == {"openssl.amd64", "curl.amd64"}


async def test_same_operation_id_never_sends_twice(endpoint: SsmEndpoint) -> None:
    ubuntu(endpoint, "i-0dev0000000000001")
    op = "wave-c/dev/i-0dev0000000000001/install/0"
    first = await executor(endpoint).install("i-0dev0000000000001", PINNED, operation_id=op)
    again = await executor(endpoint).install("i-0dev0000000000001", PINNED, operation_id=op)  # a new worker
    assert again == first
    assert len(install_commands(endpoint, "i-0dev0000000000001")) == 1
    with pytest.raises(ValueError, match="already used for a different request"):
        await executor(endpoint).install("i-0dev0000000000001", PINNED[:1], operation_id=op)


class Crash(Exception):
    """The worker process dies here."""


class CrashAfterSend(SsmExecutor):
    """Dies right after SendCommand returned, before the command id is recorded."""

    async def _save(self, record: dict[str, Any]) -> None:
        if record.get("command_id"):
            raise Crash
        await super()._save(record)


class CrashWhileWaiting(SsmExecutor):
    async def _wait(self, command_id: str, instance_id: str, plugin: str | None) -> dict[str, Any]:
        if plugin:  # the install's wait, not the package queries'
            raise Crash
        return await super()._wait(command_id, instance_id, plugin)


DIRECT: dict[str, Any] = {
    "bucket": BUCKET,
    "prefix": "pf",
    "max_requests_per_second": None,
    "poll_initial_seconds": 0.05,
}
"""Settings of an executor subclass built directly, not through :func:`executor` (the default poll ceiling)."""


@pytest.mark.parametrize("crashing", [CrashAfterSend, CrashWhileWaiting])
async def test_a_retry_after_a_crash_finds_the_command_instead_of_sending(
    endpoint: SsmEndpoint, crashing: type[SsmExecutor]
) -> None:
    ubuntu(endpoint, "i-0dev0000000000001")
    op = "wave-d/dev/i-0dev0000000000001/install/0"
    dying = crashing(endpoint.client("ssm"), endpoint.client("s3"), **DIRECT)
    with pytest.raises(Crash):
        await dying.install("i-0dev0000000000001", PINNED, operation_id=op)
    assert len(install_commands(endpoint, "i-0dev0000000000001")) == 1

    result = await executor(endpoint).install("i-0dev0000000000001", PINNED, operation_id=op)

    assert result.status == "succeeded" and len(result.changed) == 2
    commands = install_commands(endpoint, "i-0dev0000000000001")
    assert len(commands) == 1 and result.message.endswith("2 package(s) upgraded, rebooted")
    assert commands[0]["CommandId"] in result.message


# ------------------------------------------------------------------------------- two-phase installs


QUICK: dict[str, Any] = {**DIRECT, "poll_max_seconds": 0.2}
"""Settings of the crashing executor subclasses (which are built directly, not through :func:`executor`)."""


def patch_command_count(ep: SsmEndpoint, instance_id: str) -> int:
    return ep.command_count(instance_id, document="AWS-RunPatchBaseline")


async def test_start_install_twice_and_after_a_crash_sends_exactly_one_command(endpoint: SsmEndpoint) -> None:
    ubuntu(endpoint, "i-0dev0000000000001")
    ubuntu(endpoint, "i-0dev0000000000002")
    op = "wave-p/dev/i-0dev0000000000001/install/0"
    ex = executor(endpoint)
    assert await ex.start_install("i-0dev0000000000001", PINNED, operation_id=op) is None
    assert await ex.start_install("i-0dev0000000000001", PINNED, operation_id=op) is None
    assert await executor(endpoint).start_install("i-0dev0000000000001", PINNED, operation_id=op) is None
    assert patch_command_count(endpoint, "i-0dev0000000000001") == 1

    # The worker dies right after SendCommand returned, before the command id reached the record: the
    # retried start finds the command by its Comment instead of sending another.
    crashed_op = "wave-p/dev/i-0dev0000000000002/install/0"
    dying = CrashAfterSend(endpoint.client("ssm"), endpoint.client("s3"), **QUICK)
    with pytest.raises(Crash):
        await dying.start_install("i-0dev0000000000002", PINNED, operation_id=crashed_op)
    assert patch_command_count(endpoint, "i-0dev0000000000002") == 1
    assert (
        await executor(endpoint).start_install("i-0dev0000000000002", PINNED, operation_id=crashed_op) is None
    )
    assert (
        await executor(endpoint).start_install("i-0dev0000000000002", PINNED, operation_id=crashed_op) is None
    )
    assert patch_command_count(endpoint, "i-0dev0000000000002") == 1

    result = await executor(endpoint).finish_install("i-0dev0000000000002", operation_id=crashed_op)
    assert result.status == "succeeded" and len(result.changed) == 2
    (command,) = install_commands(endpoint, "i-0dev0000000000002")
    assert command["CommandId"] in result.message
    # Finished: start returns the recorded result and still sends nothing.
    assert await ex.start_install("i-0dev0000000000002", PINNED, operation_id=crashed_op) == result
    assert patch_command_count(endpoint, "i-0dev0000000000002") == 1
    with pytest.raises(ValueError, match="already used for a different request"):
        await ex.start_install("i-0dev0000000000002", PINNED[:1], operation_id=crashed_op)


async def test_finish_install_from_a_new_executor_returns_the_recorded_result(endpoint: SsmEndpoint) -> None:
    ubuntu(endpoint, "i-0dev0000000000001")
    endpoint.script("i-0dev0000000000001", "slow", seconds=0.4)
    op = "wave-q/dev/i-0dev0000000000001/install/0"
    assert await executor(endpoint).start_install("i-0dev0000000000001", PINNED, operation_id=op) is None
    assert endpoint.packages("i-0dev0000000000001")["openssl.amd64"] == OPENSSL_OLD  # sent, not waited for

    finished = await executor(endpoint).finish_install("i-0dev0000000000001", operation_id=op)

    assert finished.status == "succeeded" and finished.rebooted
    assert {(c.name, c.to_version) for c in finished.changed} == {
        ("openssl", OPENSSL_NEW),
        ("curl", CURL_NEW),
    }
    assert endpoint.packages("i-0dev0000000000001")["openssl.amd64"] == OPENSSL_NEW
    requests = endpoint.requests["GetCommandInvocation"]
    again = await executor(endpoint).finish_install("i-0dev0000000000001", operation_id=op)
    assert again == finished
    assert endpoint.requests["GetCommandInvocation"] == requests  # answered from the record, no SSM call
    assert await executor(endpoint).operation_result(op) == finished
    assert patch_command_count(endpoint, "i-0dev0000000000001") == 1


async def test_finish_install_without_start_is_a_clear_error(endpoint: SsmEndpoint) -> None:
    ubuntu(endpoint, "i-0dev0000000000001")
    ubuntu(endpoint, "i-0dev0000000000002", online=False)
    ex = executor(endpoint)
    with pytest.raises(OperationNotStartedError, match="never started.*call start_install") as raised:
        await ex.finish_install("i-0dev0000000000001", operation_id="wave-r/dev/1/install/0")
    assert isinstance(raised.value, NotFoundError) and isinstance(raised.value, PatchflowError)
    assert raised.value.operation_id == "wave-r/dev/1/install/0"

    # An immediate result (offline: nothing sent) is not recorded: there is nothing to finish.
    offline = await ex.start_install("i-0dev0000000000002", PINNED, operation_id="wave-r/dev/2/install/0")
    assert offline is not None and offline.status == "undeliverable"
    with pytest.raises(OperationNotStartedError):
        await ex.finish_install("i-0dev0000000000002", operation_id="wave-r/dev/2/install/0")

    # A record without a command (the starter died before sending): finish never sends, start does.
    op = "wave-r/dev/1/install/1"

    class CrashBeforeSend(SsmExecutor):
        async def _send(self, instance_id: str, document: str, parameters: Any, comment: str) -> str:
            if document == "AWS-RunPatchBaseline":
                raise Crash
            return await super()._send(instance_id, document, parameters, comment)

    with pytest.raises(Crash):
        await CrashBeforeSend(endpoint.client("ssm"), endpoint.client("s3"), **QUICK).start_install(
            "i-0dev0000000000001", PINNED, operation_id=op
        )
    with pytest.raises(OperationNotStartedError, match="no command was ever sent"):
        await ex.finish_install("i-0dev0000000000001", operation_id=op)
    assert patch_command_count(endpoint, "i-0dev0000000000001") == 0
    assert await ex.start_install("i-0dev0000000000001", PINNED, operation_id=op) is None
    with pytest.raises(ValueError, match="expected the install on i-0dev0000000000002"):
        await ex.finish_install("i-0dev0000000000002", operation_id=op)
    assert (await ex.finish_install("i-0dev0000000000001", operation_id=op)).status == "succeeded"
    assert patch_command_count(endpoint, "i-0dev0000000000001") == 1


async def test_finish_install_waits_out_throttling(endpoint: SsmEndpoint) -> None:
    ubuntu(endpoint, "i-0dev0000000000001")
    endpoint.script("i-0dev0000000000001", "slow", seconds=0.8)
    op = "wave-s/dev/i-0dev0000000000001/install/0"
    ex = executor(endpoint)  # the endpoint's clients make one attempt: every throttle reaches the executor
    assert await ex.start_install("i-0dev0000000000001", PINNED, operation_id=op) is None
    endpoint.throttle_rate = 1
    waiting = asyncio.create_task(ex.finish_install("i-0dev0000000000001", operation_id=op))
    while endpoint.errors["ThrottlingException"] < 2:
        await asyncio.sleep(0.05)
    assert not waiting.done()
    endpoint.throttle_rate = None
    result = await asyncio.wait_for(waiting, 5)
    assert result.status == "succeeded" and len(result.changed) == 2


async def test_invocation_does_not_exist_right_after_send_is_survived(endpoint: SsmEndpoint) -> None:
    endpoint.timings.not_found_seconds = 0.4
    ubuntu(endpoint, "i-0dev0000000000001")
    result = await executor(endpoint).install(
        "i-0dev0000000000001", PINNED, operation_id="wave-e/dev/i-0dev0000000000001/install/0"
    )
    assert result.status == "succeeded"
    assert endpoint.errors["InvocationDoesNotExist"] >= 3  # three commands, each invisible at first


async def test_throttling_is_survived_and_a_client_side_rate_avoids_it(
    endpoint: SsmEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}.items():
        monkeypatch.setenv(key, value)
    ubuntu(endpoint, "i-0dev0000000000001")
    ubuntu(endpoint, "i-0dev0000000000002")
    ssm, s3, ec2 = make_clients(region=endpoint.region, endpoint_url=endpoint.url)  # adaptive retry mode
    endpoint.throttle_rate = 10
    options: dict[str, Any] = {"bucket": BUCKET, "poll_initial_seconds": 0.02, "poll_max_seconds": 0.05}

    eager = SsmExecutor(ssm, s3, ec2_client=ec2, max_requests_per_second=None, **options)
    result = await eager.install("i-0dev0000000000001", PINNED, operation_id="wave-f/dev/1/install/0")
    assert result.status == "succeeded"
    throttled = endpoint.errors["ThrottlingException"]
    assert throttled >= 1

    await asyncio.sleep(1.1)  # let the endpoint's one-second window empty
    ssm2, s32, ec22 = make_clients(region=endpoint.region, endpoint_url=endpoint.url)  # fresh adaptive state
    polite = SsmExecutor(ssm2, s32, ec2_client=ec22, max_requests_per_second=5, **options)
    result = await polite.install("i-0dev0000000000002", PINNED, operation_id="wave-f/dev/2/install/0")
    assert result.status == "succeeded"
    assert endpoint.errors["ThrottlingException"] == throttled


async def test_every_status_maps_and_only_failures_count(endpoint: SsmEndpoint) -> None:
    outcomes = {
        "fail": ("failed", "Failed", True),
        "timeout": ("timed_out", "Execution Timed Out", True),
        "undeliverable": ("undeliverable", "Undeliverable", False),
        "delivery_timeout": ("undeliverable", "Delivery Timed Out", False),
        "invalid_platform": ("undeliverable", "Invalid Platform", False),
        "access_denied": ("undeliverable", "Access Denied", False),
    }
    ids = {}
    for n, outcome in enumerate(outcomes, start=1):
        ids[outcome] = ubuntu(endpoint, f"i-0map{n:013d}")
        endpoint.script(ids[outcome], outcome)  # type: ignore[arg-type]
    ex = executor(endpoint)
    results = await asyncio.gather(
        *(ex.install(ids[o], PINNED, operation_id=f"wave-g/prod/{ids[o]}/install/0") for o in outcomes)
    )
    for outcome, result in zip(outcomes, results, strict=True):
        status, details, counts = outcomes[outcome]
        assert (result.status, result.counts_as_error) == (status, counts), outcome
        assert f"SSM {details} (command " in result.message, result.message
        assert result.changed == ()
        assert endpoint.packages(ids[outcome])["openssl.amd64"] == OPENSSL_OLD


def test_error_statuses_are_those_of_ssms_command_error_count() -> None:
    """botocore's SSM service model, shape ``Command``, member ``ErrorCount``: "The number of targets for which the
    status is Failed or Execution Timed Out" — Cancelled and Terminated are terminal (``CompletedCount``) but no
    error."""
    import botocore.session

    command = botocore.session.get_session().get_service_model("ssm").shape_for("Command")
    assert "Failed or Execution Timed Out." in command.members["ErrorCount"].documentation
    assert "Cancelled, Terminated" in command.members["CompletedCount"].documentation
    assert {install_status("Failed"), install_status("Execution Timed Out")} == ERROR_STATUSES
    for details in ("Cancelled", "Canceled", "Terminated"):
        result = InstallResult("i-1", install_status(details))
        assert (result.status, result.counts_as_error) == ("cancelled", False), details


async def test_offline_unmanaged_and_unsupported_targets_are_undeliverable_without_a_command(
    endpoint: SsmEndpoint,
) -> None:
    ubuntu(endpoint, "i-0dev0000000000001", online=False)
    endpoint.register_instance("i-0win0000000000001", platform="Microsoft Windows Server 2022")
    ex = executor(endpoint)
    for instance_id, reason in (
        ("i-0dev0000000000001", "not online"),
        ("i-0win0000000000001", "Linux deb/rpm only"),
        ("i-0nope000000000001", "not a managed instance"),
    ):
        result = await ex.install(instance_id, PINNED, operation_id=f"wave-h/dev/{instance_id}/install/0")
        assert result.status == "undeliverable" and not result.counts_as_error
        assert reason in result.message
    assert endpoint.command_count() == 0
    assert await ex.operation_result("wave-h/dev/i-0dev0000000000001/install/0") is None


async def test_a_node_that_cannot_list_its_packages_is_not_patched(endpoint: SsmEndpoint) -> None:
    ubuntu(endpoint, "i-0dev0000000000001")
    endpoint.script("i-0dev0000000000001", "access_denied", applies_to="query")
    result = await executor(endpoint).install(
        "i-0dev0000000000001", PINNED, operation_id="wave-m/dev/1/install/0"
    )
    assert result.status == "undeliverable" and "install not attempted" in result.message
    assert "Access Denied" in result.message
    assert install_commands(endpoint, "i-0dev0000000000001") == []


# ------------------------------------------------------------------------- results, rollback, cancel


async def test_operation_result_completes_a_command_nobody_waited_for(endpoint: SsmEndpoint) -> None:
    ubuntu(endpoint, "i-0dev0000000000001")
    endpoint.script("i-0dev0000000000001", "slow", seconds=0.8)
    op = "wave-i/dev/i-0dev0000000000001/install/0"
    with pytest.raises(Crash):
        await CrashWhileWaiting(endpoint.client("ssm"), endpoint.client("s3"), **DIRECT).install(
            "i-0dev0000000000001", PINNED, operation_id=op
        )
    ex = executor(endpoint)
    assert await ex.operation_result(op) is None  # still running
    await asyncio.sleep(1.0)
    result = await ex.operation_result(op)
    assert result is not None and result.status == "succeeded" and len(result.changed) == 2
    assert await executor(endpoint).operation_result(op) == result  # recorded
    assert await ex.operation_result("never/ran") is None


async def test_rollback_restores_recorded_versions_with_apt_downgrade(endpoint: SsmEndpoint) -> None:
    ubuntu(endpoint, "i-0dev0000000000001")
    op = "wave-j/dev/i-0dev0000000000001/install/0"
    ex = executor(endpoint)
    await ex.install("i-0dev0000000000001", PINNED, operation_id=op)
    previous = await executor(endpoint).operation_result(op)
    assert previous is not None
    restore = [Package(c.name, c.arch, c.from_version) for c in previous.changed]

    result = await ex.restore("i-0dev0000000000001", restore, operation_id=f"{op}/restore")

    assert result.status == "succeeded" and not result.rebooted
    assert {(c.name, c.to_version) for c in result.changed} == {("openssl", OPENSSL_OLD), ("curl", CURL_OLD)}
    assert endpoint.packages("i-0dev0000000000001")["openssl.amd64"] == OPENSSL_OLD
    shell = [
        c
        for c in endpoint.client("ssm").list_commands(InstanceId="i-0dev0000000000001")["Commands"]
        if c["Comment"] == command_comment(f"{op}/restore")
    ]
    assert len(shell) == 1 and shell[0]["DocumentName"] == "AWS-RunShellScript"
    assert shell[0]["Parameters"]["commands"] == [
        "set -e",
        "export DEBIAN_FRONTEND=noninteractive",
        f"apt-get install -y --allow-downgrades --no-install-recommends curl:amd64={CURL_OLD} "
        f"openssl:amd64={OPENSSL_OLD}",
    ]


async def test_rpm_restore_uses_dnf_downgrade(endpoint: SsmEndpoint) -> None:
    rpm_node(
        endpoint,
        packages=[
            Package("curl", "x86_64", "8.5.0-1.amzn2023.0.4"),
            Package("bind-libs", "x86_64", "32:9.16.23-15.el9"),
        ],
    )
    restore = [
        Package("curl", "x86_64", "8.5.0-1.amzn2023.0.2"),
        Package("bind-libs", "x86_64", "32:9.16.23-14.el9"),
    ]
    assert restore_script("rpm", restore) == [
        "set -e",
        "if command -v dnf >/dev/null 2>&1; then dnf downgrade -y curl-8.5.0-1.amzn2023.0.2.x86_64 "
        "bind-libs-32:9.16.23-14.el9.x86_64; else yum downgrade -y curl-8.5.0-1.amzn2023.0.2.x86_64 "
        "bind-libs-32:9.16.23-14.el9.x86_64; fi",
    ]
    result = await executor(endpoint).restore(
        "mi-0a1b2c3d4e5f60718", restore, operation_id="wave-k/r/restore"
    )
    assert result.status == "succeeded"
    assert endpoint.packages("mi-0a1b2c3d4e5f60718") == {
        "bind-libs.x86_64": "32:9.16.23-14.el9",
        "curl.x86_64": "8.5.0-1.amzn2023.0.2",
    }


async def test_cancel_stops_the_command_of_an_operation(endpoint: SsmEndpoint) -> None:
    ubuntu(endpoint, "i-0dev0000000000001")
    endpoint.script("i-0dev0000000000001", "slow", seconds=5.0)
    op = "wave-l/dev/i-0dev0000000000001/install/0"
    ex = executor(endpoint)
    task = asyncio.create_task(ex.install("i-0dev0000000000001", PINNED, operation_id=op))
    while not install_commands(endpoint, "i-0dev0000000000001"):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # the command id is recorded right after the send
    assert await executor(endpoint).cancel(op)
    result = await asyncio.wait_for(task, 3)
    assert result.status == "cancelled" and not result.counts_as_error and "Cancelled" in result.message
    assert endpoint.packages("i-0dev0000000000001")["openssl.amd64"] == OPENSSL_OLD
    assert not await ex.cancel(op)  # finished: nothing left to cancel


async def test_health_check_runs_the_configured_command(endpoint: SsmEndpoint) -> None:
    ubuntu(endpoint, "i-0dev0000000000001")
    ubuntu(endpoint, "i-0dev0000000000002")
    endpoint.script("i-0dev0000000000002", "fail", applies_to="shell")
    assert (await executor(endpoint).health_check("i-0dev0000000000002")).healthy  # no command: healthy
    ex = executor(endpoint, health_command="systemctl is-system-running --wait")
    assert (await ex.health_check("i-0dev0000000000001")).healthy
    sick = await ex.health_check("i-0dev0000000000002")
    assert not sick.healthy and "Failed" in sick.message


# ------------------------------------------------------------------------------------------- helpers


def test_titles_products_comments_and_snapshots() -> None:
    assert parse_title("python3.11.amd64:0:3.11.4-1", "python3.11.amd64") == Package(
        "python3.11", "amd64", "3.11.4-1"
    )
    assert parse_title("bind-libs.x86_64:32:9.8.2-0.68.rc1.60.amzn1", "bind-libs.x86_64").version == (
        "32:9.8.2-0.68.rc1.60.amzn1"
    )
    assert parse_title("openssl.amd64:3.0.2-0ubuntu1.16", "openssl.amd64").version == "3.0.2-0ubuntu1.16"
    assert platform_product("Ubuntu", "22.04") == "Ubuntu22.04"
    assert platform_product("Red Hat Enterprise Linux", "9.3") == "RedhatEnterpriseLinux9.3"
    assert platform_product("Microsoft Windows Server 2022", "10") is None
    long_op = "wave-" + "x" * 80 + "/prod/i-0abc/install/3"
    assert len(command_comment(long_op)) == 100 and command_comment(long_op) != command_comment(long_op + "x")
    assert (
        snapshot_id("w1/a/i-1/install/0")
        == snapshot_id("w1/b/i-2/install/1")
        != snapshot_id("w2/a/i-1/install/0")
    )
