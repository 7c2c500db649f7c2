"""``SsmExecutor.reboot``: Run Command ``AWS-RunShellScript`` with the documented reboot exit code, once per
operation id, against the fake SSM endpoint over real HTTP (boto3).

User Guide, "Handling reboots when running commands" (send-commands-reboot.html): "For Linux and macOS managed
nodes, specify exit 194 … The exit code instructs the SSM Agent to reboot the managed node, and then restart the
script after the reboot completed"; scripts that reboot should be idempotent.
"""

from __future__ import annotations

from patchflow.executors.ssm import command_comment
from patchflow.executors.ssm.executor import reboot_script
from patchflow.testing.ssm_endpoint import SsmEndpoint
from tests.executors.conftest import ssm_executor as executor
from tests.executors.test_ssm import PINNED, ubuntu


def commands_of(ep: SsmEndpoint, instance_id: str, operation_id: str) -> list[str]:
    """The commands sent for one operation (the executor marks each with the operation's comment)."""
    commands = ep.client("ssm").list_commands(InstanceId=instance_id)["Commands"]
    return [c["CommandId"] for c in commands if c.get("Comment") == command_comment(operation_id)]


async def test_reboot_clears_the_pending_reboot_once_per_operation(endpoint: SsmEndpoint) -> None:
    node = ubuntu(endpoint, "i-0dev0000000000001")
    installed = await executor(endpoint, reboot_option="NoReboot").install(
        node, PINNED[:1], operation_id="w/dev/n/install/0"
    )
    assert installed.pending_reboot and endpoint.reboots(node) == 0

    result = await executor(endpoint).reboot(node, operation_id="w/dev/n/reboot/0")
    assert (result.status, result.rebooted, result.pending_reboot) == ("succeeded", True, False)
    assert result.boot_id == f"{node}-boot-1" and endpoint.reboots(node) == 1
    rows = {r.kb_id: r.state for r in await executor(endpoint).patch_states(node)}
    assert rows["openssl.amd64"] == "INSTALLED"  # no longer INSTALLED_PENDING_REBOOT

    # A retry — from another worker's executor — returns the recorded result: no second command, no reboot.
    again = await executor(endpoint).reboot(node, operation_id="w/dev/n/reboot/0")
    assert again == result
    assert endpoint.reboots(node) == 1 and len(commands_of(endpoint, node, "w/dev/n/reboot/0")) == 1


async def test_an_offline_node_is_undeliverable(endpoint: SsmEndpoint) -> None:
    node = ubuntu(endpoint, "i-0dev0000000000002", online=False)
    result = await executor(endpoint).reboot(node, operation_id="w/dev/off/reboot/0")
    assert result.status == "undeliverable" and not result.rebooted


def test_the_script_exits_194_once_and_reports_the_new_boot_id() -> None:
    script = "\n".join(reboot_script("w/dev/n/reboot/0"))
    assert script.rstrip().endswith("exit 194")
    assert 'echo "boot_id $boot"; exit 0' in script  # the rerun after the reboot
