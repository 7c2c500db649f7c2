"""``run_command`` (lifecycle hook commands) on the simulated fleet and through SSM Run Command (the fake SSM
endpoint, real boto3 over HTTP); the SSH executor's runs on real hosts in ``tests/lab/test_hooks_lab.py``."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchflow.core.documents import dump_yaml
from patchflow.executors.simulated import SimulatedExecutor
from patchflow.executors.simulated.fleet import load_fleet
from patchflow.testing.ssm_endpoint import SsmEndpoint
from tests.executors.conftest import ssm_executor


@pytest.fixture
def fleet(tmp_path: Path) -> SimulatedExecutor:
    instance = {
        "platform": {"family": "deb", "product": "Ubuntu22.04"},
        "installed": [{"name": "openssl", "arch": "amd64", "version": "3.0.2-0ubuntu1.10"}],
    }
    path = tmp_path / "fleet.yaml"
    path.write_text(
        dump_yaml(
            {
                "instances": [
                    {"id": "i-1", **instance, "behaviour": {"fail_commands": ["systemctl stop"]}},
                    {"id": "i-2", **instance, "behaviour": {"offline": True}},
                ]
            }
        )
    )
    return SimulatedExecutor(load_fleet(path), tmp_path / "state.sqlite")


async def test_simulated_commands_fail_as_the_fleet_file_says_and_are_recorded_once(
    fleet: SimulatedExecutor,
) -> None:
    ok = await fleet.run_command("i-1", "echo hi", timeout_seconds=5, operation_id="op/1")
    assert (ok.exit_code, ok.status, ok.output) == (0, "finished", "simulated: echo hi")
    bad = await fleet.run_command("i-1", "systemctl stop app", timeout_seconds=5, operation_id="op/2")
    assert (bad.exit_code, bad.output) == (1, "simulated command failure (fail_commands: 'systemctl stop')")
    again = await fleet.run_command("i-1", "systemctl stop app", timeout_seconds=5, operation_id="op/2")
    assert again.exit_code == 1 and fleet.commands_run("i-1") == ["echo hi", "systemctl stop app"]
    with pytest.raises(ValueError, match="used for another command"):
        await fleet.run_command("i-1", "echo other", timeout_seconds=5, operation_id="op/1")
    offline = await fleet.run_command("i-2", "echo hi", timeout_seconds=5, operation_id="op/3")
    assert (offline.status, offline.exit_code) == ("undeliverable", -1)
    with pytest.raises(ValueError, match="ssm_document steps need the ssm executor"):
        await fleet.run_command(
            "i-1", "", timeout_seconds=5, operation_id="op/4", document="AWS-RunShellScript"
        )


def test_fail_commands_must_be_a_list_of_strings(tmp_path: Path) -> None:
    from patchflow.errors import InputError

    path = tmp_path / "fleet.yaml"
    path.write_text(
        "instances:\n  - id: i-1\n    platform: {family: deb}\n    behaviour: {fail_commands: stop}\n"
    )
    with pytest.raises(
        InputError, match=r"instances\[0\]\.behaviour\.fail_commands: expected a list of strings"
    ):
        load_fleet(path)


async def test_ssm_runs_shell_commands_and_documents_once_per_operation(endpoint: SsmEndpoint) -> None:
    """AWS-RunShellScript through SendCommand, then GetCommandInvocation until it is terminal: the exit code is
    the invocation's ``ResponseCode``. A retry (another executor object: another worker) with the same operation
    id finds the command by its Comment and waits for it instead of sending it again."""
    instance = endpoint.register_instance("i-0123456789abcdef0")
    executor = ssm_executor(endpoint)
    ok = await executor.run_command(instance, "echo hello", timeout_seconds=30, operation_id="w/s/i/hooks/0")
    assert (ok.status, ok.exit_code) == ("finished", 0)
    failed = await executor.run_command(instance, "exit 3", timeout_seconds=30, operation_id="w/s/i/hooks/1")
    assert (failed.status, failed.exit_code) == ("finished", 3)

    ssm = endpoint.client("ssm")
    sent = len(ssm.list_commands(InstanceId=instance)["Commands"])
    retried = await ssm_executor(endpoint).run_command(
        instance, "exit 3", timeout_seconds=30, operation_id="w/s/i/hooks/1"
    )
    assert retried.exit_code == 3 and len(ssm.list_commands(InstanceId=instance)["Commands"]) == sent

    document = await executor.run_command(
        instance,
        "",
        timeout_seconds=30,
        operation_id="w/s/i/hooks/2",
        document="AWS-RunShellScript",
        parameters={"commands": ["exit 4"]},
    )
    assert document.exit_code == 4
    (last,) = [c for c in ssm.list_commands(InstanceId=instance)["Commands"] if "hooks/2" in c["Comment"]]
    assert last["DocumentName"] == "AWS-RunShellScript" and last["Parameters"]["commands"] == ["exit 4"]


async def test_ssm_commands_to_an_offline_instance_are_undeliverable(endpoint: SsmEndpoint) -> None:
    instance = endpoint.register_instance("i-0123456789abcdef1", online=False)
    result = await ssm_executor(endpoint).run_command(instance, "true", timeout_seconds=30, operation_id="op")
    assert (result.status, result.exit_code) == ("undeliverable", -1)
