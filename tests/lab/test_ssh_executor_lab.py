"""The SSH executor on real Debian hosts of the lab: exact pins, the operation journal on the host, the
resolver check, failing maintainer scripts, reboots, rollback, sudo and refused host keys.

Reboot semantics follow the SSM document "AWS-RunPatchBaseline" parameter ``RebootOption``
(``RebootIfNeeded`` / ``NoReboot``: "patches installed … pending reboot"); outcome mapping follows the
executor contract in :mod:`patchflow.executors.base` (undeliverable targets are reported, not counted).
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from patchflow.core.documents import dump_yaml
from patchflow.executors.base import Package
from patchflow.executors.ssh import SshExecutor, load_inventory
from patchflow.testing.lab.fleet import Lab
from tests.lab.conftest import Hosts

pytestmark = pytest.mark.lab

APP = [Package("app", "all", "1.1-1"), Package("libfoo", "all", "1.1-1")]


@pytest_asyncio.fixture
async def executor(inventory: Path) -> AsyncIterator[SshExecutor]:
    ex = SshExecutor(load_inventory(inventory), poll_seconds=2, reboot_timeout_seconds=60)
    try:
        yield ex
    finally:
        await ex.close()


def dpkg_log_count(lab: Lab, host: str, what: str) -> int:
    """How many times dpkg did ``what`` (e.g. ``upgrade app:all``) on the host."""
    out = lab.run(host, "cat /var/log/dpkg.log").stdout
    return sum(1 for line in out.splitlines() if f" {what} " in line)


async def test_installs_exactly_the_pinned_versions_once_per_operation(
    lab: Lab, lab_hosts: Hosts, executor: SshExecutor
) -> None:
    host = lab_hosts.take("spare")
    op = f"w-pin/dev/{host}/install/0"
    starter = SshExecutor(load_inventory(executor.inventory.source), start_wait_seconds=0)
    try:  # returns at once: the transaction is under way, detached on the host
        assert await starter.start_install(host, APP, operation_id=op) is None
    finally:
        await starter.close()
    # A retried activity on another worker (a new executor object) while the transaction runs: it waits for
    # the same transaction instead of starting a second one.
    other_worker = SshExecutor(load_inventory(executor.inventory.source))
    try:
        first, again = await asyncio.gather(
            executor.finish_install(host, operation_id=op), other_worker.install(host, APP, operation_id=op)
        )
    finally:
        await other_worker.close()
    assert first.status == "succeeded", first.message
    assert again == first
    assert {(c.name, c.from_version, c.to_version) for c in first.changed} == {
        ("app", "1.0-1", "1.1-1"),
        ("libfoo", "1.0-1", "1.1-1"),
    }
    installed = lab.installed(host)
    assert installed["app"] == "1.1-1" and installed["libfoo"] == "1.1-1"
    assert installed["tool"] == "3.0-1"  # not in the set: untouched although lab-updates has 3.1~rc1-1

    # Once finished, a retry gets the recorded result; dpkg ran once.
    assert await executor.install(host, APP, operation_id=op) == first
    assert dpkg_log_count(lab, host, "upgrade app:all") == 1
    journal = lab.run(host, "cat /var/lib/patchflow/operations/*.json").stdout
    record = json.loads(journal)
    assert record["operation_id"] == op and record["state"] == "done"
    assert ["app", "all", "1.0-1"] in record["before"] and ["app", "all", "1.1-1"] in record["after"]
    assert await executor.operation_result(op) == first

    # Rollback to the recorded versions (apt --allow-downgrades), dpkg --audit clean.
    restored = await executor.restore(
        host, [Package(c.name, c.arch, c.from_version) for c in first.changed], operation_id=op + "/restore"
    )
    assert restored.status == "succeeded", restored.message
    assert lab.installed(host)["app"] == "1.0-1" and lab.installed(host)["libfoo"] == "1.0-1"
    assert lab.run(host, "dpkg --audit").stdout.strip() == ""

    # The same operation id for another package list is a caller bug.
    with pytest.raises(ValueError, match="already used"):
        await executor.install(host, [Package("tool", "all", "3.1~rc1-1")], operation_id=op)


async def test_a_pin_needing_a_dependency_outside_the_set_fails_and_changes_nothing(
    lab: Lab, lab_hosts: Hosts, executor: SshExecutor
) -> None:
    host = lab_hosts.take("spare")
    before = lab.installed(host)
    archives = "find /var/cache/apt/archives -type f | sort"
    cached = lab.run(host, archives).stdout
    result = await executor.install(
        host, [Package("app", "all", "1.1-1")], operation_id=f"w-dep/x/{host}/install/0"
    )
    assert result.status == "failed"
    assert "outside the pinned set" in result.message and "libfoo 1.0-1 ->" in result.message
    assert "nothing was changed" in result.message
    assert result.changed == ()
    assert lab.installed(host) == before
    # apt fetched the plan's packages into a private directory the agent removed: not even the cache changed.
    assert lab.run(host, archives).stdout == cached
    left = lab.run(host, "ls /var/lib/patchflow/operations").stdout.split()
    assert left and all(name.endswith((".json", ".log")) for name in left), left


async def test_a_failing_postinst_fails_the_instance_and_is_reverted(
    lab: Lab, lab_hosts: Hosts, executor: SshExecutor
) -> None:
    host = lab_hosts.take("spare")
    result = await executor.install(
        host,
        [Package("flaky", "all", "1.1-1"), Package("editor-lab", "all", "9.1-1")],
        operation_id=f"w-flaky/x/{host}/install/0",
    )
    assert result.status == "failed" and result.counts_as_error
    assert "postinst fails on purpose" in result.message  # the tail of apt's output
    assert "reverted to the versions before the transaction" in result.message
    installed = lab.installed(host)
    assert installed["flaky"] == "1.0-1" and installed["editor-lab"] == "9.0-1"
    assert lab.run(host, "dpkg --audit").stdout.strip() == ""


async def test_reboot_if_needed_reboots_into_a_new_boot_id(
    lab: Lab, lab_hosts: Hosts, executor: SshExecutor
) -> None:
    host = lab_hosts.take("spare")
    boot_before = next(h["boot_id"] for h in lab.status() if h["id"] == host)
    lab.run(host, "nohup sleep 600 >/dev/null 2>&1 &")
    result = await executor.install(
        host, [Package("linux-image-lab", "all", "6.1.0-2")], operation_id=f"w-kernel/x/{host}/install/0"
    )
    assert result.status == "succeeded", result.message
    assert result.rebooted and "rebooted" in result.message
    status = next(h for h in lab.status() if h["id"] == host)
    assert status["boot_id"] != boot_before
    assert (await executor.facts(host))["boot_id"] == status["boot_id"]
    assert "sleep 600" not in lab.run(host, "ps -eo args").stdout  # the reboot stopped every process
    assert status["reboot_pending"] is False
    assert status["packages"]["linux-image-lab"] == "6.1.0-2"


async def test_no_reboot_reports_pending_reboot(lab: Lab, lab_hosts: Hosts, inventory: Path) -> None:
    host = lab_hosts.take("spare")
    boot_before = next(h["boot_id"] for h in lab.status() if h["id"] == host)
    executor = SshExecutor(load_inventory(inventory), reboot_option="NoReboot", poll_seconds=2)
    try:
        result = await executor.install(
            host, [Package("linux-image-lab", "all", "6.1.0-2")], operation_id=f"w-norb/x/{host}/install/0"
        )
    finally:
        await executor.close()
    assert result.status == "succeeded" and not result.rebooted
    assert "pending_reboot" in result.message
    status = next(h for h in lab.status() if h["id"] == host)
    assert status["reboot_pending"] is True and status["boot_id"] == boot_before


async def test_sudo_for_a_non_root_user_and_undeliverable_hosts(
    lab: Lab, lab_hosts: Hosts, inventory: Path, tmp_path: Path
) -> None:
    host = lab_hosts.take("spare")
    inv = yaml.safe_load(inventory.read_text())
    entry = next(
        hosts[host] for group in inv["all"]["children"].values() if host in (hosts := group["hosts"])
    )
    known_hosts = Path(inv["all"]["vars"]["known_hosts"])
    wrong_keys = tmp_path / "wrong_known_hosts"
    other = next(line for line in known_hosts.read_text().splitlines() if entry["ansible_host"] not in line)
    wrong_keys.write_text(
        f"[{entry['ansible_host']}]:{entry['ansible_port']} " + other.split(" ", 1)[1] + "\n"
    )
    custom = {
        "all": {
            "vars": dict(inv["all"]["vars"]),
            "hosts": {
                "as-deploy": {**entry, "ansible_user": "deploy"},
                "wrong-key": {**entry, "known_hosts": str(wrong_keys)},
                "nobody-home": {**entry, "ansible_host": "127.0.77.250"},
            },
        }
    }
    path = tmp_path / "inventory.yml"
    path.write_text(dump_yaml(custom))
    executor = SshExecutor(load_inventory(path), poll_seconds=2, connect_timeout_seconds=5)
    try:
        ok = await executor.install(
            "as-deploy",
            [Package("tzdata-lab", "all", "2025b-1")],
            operation_id="w-sudo/x/as-deploy/install/0",
        )
        wrong = await executor.install("wrong-key", APP, operation_id="w-sudo/x/wrong-key/install/0")
        down = await executor.install("nobody-home", APP, operation_id="w-sudo/x/nobody-home/install/0")
        found = {i.instance_id: i.online for i in await executor.discover()}
    finally:
        await executor.close()
    assert ok.status == "succeeded", ok.message
    assert lab.installed(host)["tzdata-lab"] == "2025b-1"  # installed as root through sudo -n
    assert wrong.status == "undeliverable" and "host key" in wrong.message
    assert down.status == "undeliverable" and "unreachable" in down.message
    assert not wrong.counts_as_error and not down.counts_as_error
    assert lab.installed(host)["app"] == "1.0-1"  # the refused host key protected the host
    assert found == {"as-deploy": True, "wrong-key": False, "nobody-home": False}


async def test_a_transaction_past_the_command_timeout_is_killed_and_timed_out(
    lab: Lab, lab_hosts: Hosts, inventory: Path
) -> None:
    """SSM counts "Execution Timed Out" against MaxErrors (user guide, "send-commands-multiple"); so does this."""
    host = lab_hosts.take("spare")
    # Another package manager holds dpkg's lock, so apt-get install waits (DPkg::Lock::Timeout) past the limit.
    locker = lab.run(
        host,
        "nohup python3 -c \"import fcntl,time; f=open('/var/lib/dpkg/lock-frontend','w'); "
        'fcntl.lockf(f, fcntl.LOCK_EX); time.sleep(120)" >/dev/null 2>&1 & echo $!',
    ).stdout.strip()
    executor = SshExecutor(load_inventory(inventory), command_timeout_seconds=4, poll_seconds=1)
    try:
        result = await executor.install(host, APP, operation_id=f"w-slow/x/{host}/install/0")
    finally:
        await executor.close()
        lab.run(host, f"kill {int(locker)}")
    assert result.status == "timed_out" and result.counts_as_error
    assert "ran longer than 4s and was killed" in result.message
    assert "apt-get" not in lab.run(host, "ps -eo args").stdout  # the transaction's processes are gone
    assert lab.installed(host)["app"] == "1.0-1" and lab.installed(host)["libfoo"] == "1.0-1"


async def test_a_set_member_the_resolver_pulls_in_is_installed_at_its_pinned_version(
    lab: Lab, lab_hosts: Hosts, executor: SshExecutor
) -> None:
    # ``top`` 1.1 needs ``dep``, which the host does not have; the repository's candidate for ``dep`` is 1.1-1,
    # the set pins 1.0-1. apt's plan (seen by the DPkg::Pre-Install-Pkgs hook before dpkg runs) takes 1.1-1:
    # the transaction is stopped, ``dep`` requested at its pin, and only 1.0-1 is ever unpacked.
    host = lab_hosts.take("spare")
    tag = uuid.uuid4().hex[:6]
    top, dep = f"pf-top-{tag}", f"pf-dep-{tag}"
    lab.publish(dep, "1.0-1")
    lab.publish(dep, "1.1-1")
    lab.publish(top, "1.0-1")
    lab.publish(top, "1.1-1", depends=[f"{dep} (>= 1.0-1)"])
    first = await executor.restore(
        host, [Package(top, "all", "1.0-1")], operation_id=f"w-rp/{host}/install/0"
    )
    assert first.status == "succeeded", first.message
    result = await executor.install(
        host,
        [Package(top, "all", "1.1-1"), Package(dep, "all", "1.0-1")],
        operation_id=f"w-rp/x/{host}/install/1",
    )
    assert result.status == "succeeded", result.message
    installed = lab.installed(host)
    assert installed[top] == "1.1-1" and installed[dep] == "1.0-1"
    assert dpkg_log_count(lab, host, f"install {dep}:all") == 1  # 1.1-1 was never unpacked
    assert "1.1-1" not in lab.run(host, f"grep ' {dep}:all ' /var/log/dpkg.log").stdout
    assert lab.run(host, "ls /var/lib/patchflow/operations/").stdout.count(".hook") == 0  # cleaned up


async def test_the_compiled_agent_is_cached_on_the_host_and_a_bad_cache_is_ignored(
    lab: Lab, lab_hosts: Hosts, executor: SshExecutor
) -> None:
    host = lab_hosts.take("spare")
    await executor.install(
        host, [Package("libfoo", "all", "1.1-1")], operation_id=f"w-cache/{host}/install/0"
    )
    # The install made /var/lib/patchflow (its journal); the next call finds no cache yet, compiles and keeps it.
    await executor.facts(host)
    listing = lab.run(host, "stat -c '%a %U %n' /var/lib/patchflow/agent /var/lib/patchflow/agent/*").stdout
    lines = listing.splitlines()
    assert lines[0].startswith("700 root ") and len(lines) == 2 and lines[1].endswith(".bin"), listing
    # A corrupt cache file is compiled again (and replaced); the agent still answers.
    cached = lines[1].split()[-1]
    lab.run(host, f"printf garbage > {cached}")
    is_garbage = f'[ "$(head -c 8 {cached} | tr -dc a-z)" = garbage ] && echo yes || echo no'
    facts = await executor.facts(host)
    assert facts["boot_id"] and lab.run(host, is_garbage).stdout.strip() == "no"
    # A cache directory anyone may write to is not trusted: the agent compiles instead of loading it.
    lab.run(host, f"chmod 777 /var/lib/patchflow/agent && printf garbage > {cached}")
    assert (await executor.facts(host))["boot_id"]
    assert lab.run(host, is_garbage).stdout.strip() == "yes"  # neither used nor rewritten


async def test_a_short_install_is_one_ssh_command(lab: Lab, lab_hosts: Hosts, executor: SshExecutor) -> None:
    # The start command waits on the host (start_wait_seconds, 5 s by default) and closes the journal: the
    # send gets the final result, and the wait has nothing left to ask.
    host = lab_hosts.take("spare")
    sent = executor.commands_sent
    op = f"w-one/x/{host}/install/0"
    result = await executor.start_install(host, [Package("libfoo", "all", "1.1-1")], operation_id=op)
    assert result is not None and result.status == "succeeded", result
    assert executor.commands_sent - sent == 1
    assert [(c.name, c.to_version) for c in result.changed] == [("libfoo", "1.1-1")]
    assert (
        await executor.finish_install(host, operation_id=op) == result
    )  # a wait afterwards reads the journal
    assert json.loads(lab.run(host, "cat /var/lib/patchflow/operations/*.json").stdout)["state"] == "done"


async def test_a_host_lost_while_the_start_waits_is_waited_for_not_reported_undeliverable(
    lab: Lab, lab_hosts: Hosts, inventory: Path
) -> None:
    # The start waits on the host for a short transaction. If the connection is lost meanwhile (here the host
    # reboots while apt waits for dpkg's lock), the transaction may have begun: the start reports it under way
    # and the wait finds out — after the host is back, the journal says the transaction was interrupted.
    host = lab_hosts.take("spare")
    lab.run(
        host,
        "nohup python3 -c \"import fcntl,time; f=open('/var/lib/dpkg/lock-frontend','w'); "
        'fcntl.lockf(f, fcntl.LOCK_EX); time.sleep(120)" >/dev/null 2>&1 &',
    )
    executor = SshExecutor(
        load_inventory(inventory), start_wait_seconds=30, poll_seconds=1, reboot_timeout_seconds=60
    )
    op = f"w-lost/x/{host}/install/0"
    try:

        async def reboot_soon() -> None:
            await asyncio.sleep(3)
            lab.run(host, "nohup /usr/sbin/reboot >/dev/null 2>&1 &")

        started, _ = await asyncio.gather(executor.start_install(host, APP, operation_id=op), reboot_soon())
        assert started is None  # under way as far as anyone knows: not undeliverable
        result = await executor.finish_install(host, operation_id=op)
    finally:
        await executor.close()
    assert result.status == "failed" and "interrupted" in result.message, result
    assert lab.installed(host)["app"] == "1.0-1" and lab.installed(host)["libfoo"] == "1.0-1"
