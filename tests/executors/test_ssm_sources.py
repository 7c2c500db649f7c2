"""Baseline ``Sources`` through the SSM executor, against the faithful endpoint over real HTTP.

AWS User Guide, "Using the BaselineOverride parameter", section "Using baseline override and Install Override
List at the same time": "You can't use these two parameters at the same time. The patching document fails if
both parameters are supplied, and it doesn't perform any scans or installs on the managed node." So the pinned
set (an ``InstallOverrideList``) cannot carry the baseline's Sources into ``AWS-RunPatchBaseline``; the executor
configures them on the node with ``AWS-RunShellScript`` steps around the install and always removes them
("How to specify an alternative patch source repository (Linux)": they are not "the new default repositories";
"After the patching operation is complete, the repositories previously configured as the defaults for the
node's operating system remain the defaults"). The scripts themselves run on real lab hosts in
``tests/lab/test_sources_lab.py``.
"""

from __future__ import annotations

import asyncio
import base64
import shlex
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import pytest

from patchflow.core.instances import RepoSource
from patchflow.executors.base import Package
from patchflow.executors.ssm import SsmExecutor
from patchflow.executors.ssm.sources import cleanup_script, configure_script
from patchflow.testing.ssm_endpoint import SsmEndpoint, Timings

BUCKET = "patchflow-test"
NODE = "i-0deb00000000000a1"
OLD, NEW = "1.0-1", "1.1-1"
PINNED = [Package("docs-lab", "all", NEW)]
CUSTOM = RepoSource("lab-custom", ("Debian12",), "deb [trusted=yes] http://127.0.0.1:8099/custom custom main")
ELSEWHERE = RepoSource("ubuntu-only", ("Ubuntu22.04",), "deb http://127.0.0.1:8099/ubuntu jammy main")


@pytest.fixture
def endpoint() -> Iterator[SsmEndpoint]:
    with SsmEndpoint(timings=Timings(not_found_seconds=0.1, pending_seconds=0.05, run_seconds=0.1)) as ep:
        ep.client("s3").create_bucket(Bucket=BUCKET)
        ep.register_instance(
            NODE,
            tags={"Patch Group": "dev"},
            platform="Debian GNU/Linux",
            platform_version="12",
            packages=[Package("docs-lab", "all", OLD), Package("zlib-lab", "all", "1.2.13-1")],
            available=[Package("docs-lab", "all", NEW)],
        )
        yield ep


def executor(ep: SsmEndpoint) -> SsmExecutor:
    return SsmExecutor(
        ep.client("ssm"),
        ep.client("s3"),
        bucket=BUCKET,
        prefix="pf",
        max_requests_per_second=None,
        poll_initial_seconds=0.05,
        poll_max_seconds=0.2,
    )


def commands(ep: SsmEndpoint) -> list[dict[str, Any]]:
    """Every command sent to the node, oldest first, as ListCommands reports them."""
    rows = ep.client("ssm").list_commands(InstanceId=NODE)["Commands"]
    return sorted(rows, key=lambda c: c["RequestedDateTime"])


def steps(ep: SsmEndpoint) -> list[str]:
    """The operation's commands in order: ``configure``, ``install``, ``cleanup`` (package listings left out)."""
    out = []
    for c in commands(ep):
        if c["DocumentName"] == "AWS-RunPatchBaseline":
            out.append("install")
        elif " sources+ " in c["Comment"]:
            out.append("configure")
        elif " sources- " in c["Comment"]:
            out.append("cleanup")
    return out


async def test_install_with_sources_configures_installs_from_them_and_always_cleans_up(
    endpoint: SsmEndpoint,
) -> None:
    """The install is wrapped: configure (the Sources, base64 in the script), then ``AWS-RunPatchBaseline``
    with the ``InstallOverrideList`` and **no** ``BaselineOverride`` (the documented combination that fails),
    then cleanup; a second worker's finish sends nothing again."""
    op = f"wave-src/dev/{NODE}/install/0"
    ex = executor(endpoint)
    assert await ex.start_install(NODE, PINNED, operation_id=op, sources=[CUSTOM, ELSEWHERE]) is None
    assert steps(endpoint) == ["configure"]  # the install waits for the configured sources
    assert await ex.start_install(NODE, PINNED, operation_id=op, sources=[CUSTOM, ELSEWHERE]) is None
    result = await executor(endpoint).finish_install(NODE, operation_id=op)

    assert result.status == "succeeded", result.message
    assert endpoint.packages(NODE)["docs-lab.all"] == NEW
    assert "from the baseline Sources lab-custom" in result.message
    assert "the Sources were removed again" in result.message
    assert steps(endpoint) == ["configure", "install", "cleanup"]
    sent = {c["Comment"].split()[2]: c for c in commands(endpoint) if c["Comment"].startswith("patchflow ")}
    configure = "\n".join(sent["sources+"]["Parameters"]["commands"])
    encoded = base64.b64encode((CUSTOM.configuration + "\n").encode()).decode()
    assert encoded in configure  # only the source naming the node's product (Debian12)
    assert base64.b64encode((ELSEWHERE.configuration + "\n").encode()).decode() not in configure
    install = next(c for c in commands(endpoint) if c["DocumentName"] == "AWS-RunPatchBaseline")
    assert "BaselineOverride" not in install["Parameters"] and install["Parameters"]["InstallOverrideList"]
    assert await executor(endpoint).finish_install(NODE, operation_id=op) == result
    assert steps(endpoint) == ["configure", "install", "cleanup"]
    assert await executor(endpoint).operation_result(op) == result


async def test_sources_for_other_products_leave_the_install_alone(endpoint: SsmEndpoint) -> None:
    """User Guide: a source applies to the product versions it names; a Debian 12 node keeps its own
    repositories when the Sources only name Ubuntu."""
    result = await executor(endpoint).install(
        NODE, PINNED, operation_id=f"wave-o/dev/{NODE}/install/0", sources=[ELSEWHERE]
    )
    assert result.status == "succeeded" and steps(endpoint) == ["install"]
    assert "no baseline Source names its product Debian12 (they name Ubuntu22.04)" in result.message


async def test_a_source_that_cannot_be_reached_fails_the_instance_and_installs_nothing(
    endpoint: SsmEndpoint,
) -> None:
    """The configure step fails (as its ``apt-get update`` check does on a node): no install is sent, the
    cleanup still runs, the reason names the sources."""
    endpoint.script(NODE, "fail", applies_to="shell", times=1)
    result = await executor(endpoint).install(
        NODE, PINNED, operation_id=f"wave-u/dev/{NODE}/install/0", sources=[CUSTOM]
    )
    assert result.status == "failed" and result.counts_as_error
    assert "the baseline Sources (lab-custom) could not be configured" in result.message
    assert "nothing was installed" in result.message and "removed again" in result.message
    assert steps(endpoint) == ["configure", "cleanup"]
    assert endpoint.packages(NODE)["docs-lab.all"] == OLD


async def test_a_failed_install_is_cleaned_up_too(endpoint: SsmEndpoint) -> None:
    endpoint.script(NODE, "fail", applies_to="install")
    result = await executor(endpoint).install(
        NODE, PINNED, operation_id=f"wave-f/dev/{NODE}/install/0", sources=[CUSTOM]
    )
    assert result.status == "failed" and "removed again" in result.message
    assert steps(endpoint) == ["configure", "install", "cleanup"]


async def test_a_cleanup_that_fails_fails_the_instance_and_says_what_is_left(endpoint: SsmEndpoint) -> None:
    op = f"wave-c/dev/{NODE}/install/0"
    ex = executor(endpoint)
    assert await ex.start_install(NODE, PINNED, operation_id=op, sources=[CUSTOM]) is None
    endpoint.script(NODE, "undeliverable", applies_to="shell")  # the node is gone after its install
    endpoint.script(NODE, "success", applies_to="install")
    await asyncio.sleep(0.5)  # the configure step ran before the node went away
    result = await ex.finish_install(NODE, operation_id=op)
    assert result.status == "failed", result.message
    assert "the Sources could NOT be removed" in result.message and "Undeliverable" in result.message


async def test_cancel_during_the_install_cancels_it_and_cleans_up(endpoint: SsmEndpoint) -> None:
    """A cancelled wave: the running install is cancelled (CancelCommand) and the cleanup step still runs, so
    the node keeps nothing of the Sources."""
    endpoint.script(NODE, "slow", seconds=5.0, applies_to="install")
    op = f"wave-x/dev/{NODE}/install/0"
    ex = executor(endpoint)
    task = asyncio.create_task(ex.install(NODE, PINNED, operation_id=op, sources=[CUSTOM]))
    while "install" not in steps(endpoint):
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)  # the install's command id is recorded right after its send
    assert await executor(endpoint).cancel(op)
    result = await asyncio.wait_for(task, 5)
    assert result.status == "cancelled" and not result.counts_as_error
    assert steps(endpoint) == ["configure", "install", "cleanup"]
    assert endpoint.packages(NODE)["docs-lab.all"] == OLD
    recorded = await executor(endpoint).operation_result(op)
    assert recorded is not None  # the wait and the cancel both finished it: the same result, but its duration
    assert replace(recorded, duration_seconds=0) == replace(result, duration_seconds=0)


async def test_cancel_before_the_install_is_sent_sends_none(endpoint: SsmEndpoint) -> None:
    op = f"wave-y/dev/{NODE}/install/0"
    ex = executor(endpoint)
    assert await ex.start_install(NODE, PINNED, operation_id=op, sources=[CUSTOM]) is None
    await asyncio.sleep(0.5)  # the configure step has run; the wave is cancelled before its wait sends more
    assert await ex.cancel(op)
    result = await ex.finish_install(NODE, operation_id=op)
    assert result.status == "cancelled" and "cancelled before the install was sent" in result.message
    assert steps(endpoint) == ["configure", "cleanup"]


async def test_cancel_while_configuring_reports_cancelled(endpoint: SsmEndpoint) -> None:
    endpoint.script(NODE, "slow", seconds=3.0, applies_to="shell", times=1)
    op = f"wave-z/dev/{NODE}/install/0"
    ex = executor(endpoint)
    assert await ex.start_install(NODE, PINNED, operation_id=op, sources=[CUSTOM]) is None
    assert await ex.cancel(op)
    result = await ex.finish_install(NODE, operation_id=op)
    assert result.status == "cancelled" and "were being configured, cancelled" in result.message
    assert steps(endpoint) == ["configure", "cleanup"]


async def test_an_operation_id_reused_with_other_sources_is_refused(endpoint: SsmEndpoint) -> None:
    op = f"wave-r/dev/{NODE}/install/0"
    ex = executor(endpoint)
    await ex.install(NODE, PINNED, operation_id=op, sources=[CUSTOM])
    with pytest.raises(ValueError, match="different request"):
        await ex.install(NODE, PINNED, operation_id=op)


async def test_the_endpoint_fails_install_override_list_with_baseline_override(endpoint: SsmEndpoint) -> None:
    """User Guide, "Using the BaselineOverride parameter": with both parameters "the patching document fails
    … and it doesn't perform any scans or installs on the managed node" — the endpoint does the same."""
    ssm, s3 = endpoint.client("ssm"), endpoint.client("s3")
    s3.put_object(Bucket=BUCKET, Key="o.yaml", Body=b"patches:\n  - id: docs-lab.all\n")
    s3.put_object(Bucket=BUCKET, Key="b.json", Body=b"[]")
    command = ssm.send_command(
        InstanceIds=[NODE],
        DocumentName="AWS-RunPatchBaseline",
        Parameters={
            "Operation": ["Install"],
            "InstallOverrideList": [f"s3://{BUCKET}/o.yaml"],
            "BaselineOverride": [f"s3://{BUCKET}/b.json"],
        },
    )["Command"]["CommandId"]
    for _ in range(100):
        invocation = ssm.list_command_invocations(CommandId=command)["CommandInvocations"]
        if invocation and invocation[0]["Status"] not in ("Pending", "InProgress"):
            break
        await asyncio.sleep(0.05)
    assert invocation[0]["Status"] == "Failed"
    assert endpoint.packages(NODE)["docs-lab.all"] == OLD


@pytest.mark.parametrize("family", ["deb", "rpm"])
def test_step_scripts_are_plain_lines_whatever_the_configuration_holds(family: str) -> None:
    """Every line splits as a shell word list (no heredoc, no quote a configuration could break: the text
    travels base64), the configure step exits non-zero only through its reachability check, and the cleanup
    removes exactly what the configure step wrote."""
    tricky = RepoSource(
        "tricky.repo",
        ("Debian12",),
        'deb [trusted=yes] http://127.0.0.1:1/it\'s "quoted" main'
        if family == "deb"
        else '[tricky]\nname=it\'s "quoted" $(reboot)\nbaseurl=http://127.0.0.1:1/\n',
    )
    configure = configure_script(family, "w/s/i/install/0", [tricky])
    cleanup = cleanup_script(family, "w/s/i/install/0")
    for line in configure + cleanup:
        shlex.split(line, comments=True)
        assert "reboot" not in line and "it's" not in line
    assert [line for line in configure if line.lstrip().startswith("exit")] == []
    directory = next(line for line in configure if line.startswith("d="))
    assert directory in cleanup and 'rm -rf "$d"' in cleanup
    if family == "deb":
        conf = next(line for line in configure if line.startswith("conf="))[5:]
        assert f"rm -f {conf}" in cleanup
    else:
        assert any("main.conf.orig" in line and '> "$main"' in line for line in cleanup)


async def test_cancel_after_a_crash_before_the_configure_step_sends_nothing(endpoint: SsmEndpoint) -> None:
    """The worker died between the operation record and the configure step's send: the cancel finds nothing
    on the node, sends nothing (no configure, no install, no cleanup) and records ``cancelled``."""

    class Crash(Exception):
        pass

    class CrashBeforeConfigure(SsmExecutor):
        async def _send_step(self, record: dict[str, Any], step: str) -> str:
            raise Crash

    crashing = CrashBeforeConfigure(
        endpoint.client("ssm"),
        endpoint.client("s3"),
        bucket=BUCKET,
        prefix="pf",
        max_requests_per_second=None,
    )
    op = f"wave-k/dev/{NODE}/install/0"
    with pytest.raises(Crash):
        await crashing.start_install(NODE, PINNED, operation_id=op, sources=[CUSTOM])
    assert await executor(endpoint).cancel(op)
    result = await executor(endpoint).finish_install(NODE, operation_id=op)
    assert result.status == "cancelled" and result.message == "cancelled before anything was sent"
    assert steps(endpoint) == []
