"""The fake SSM endpoint's SSH-backed instances, without a lab: which versions an Install picks from what a host's
apt sources offer, the instance ids, security pockets, refusals and the command line. The lab tests
(``tests/lab/test_ssm_lab.py``) run the same code against real hosts."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from patchflow.executors.base import Package
from patchflow.executors.ssh import SshHost
from patchflow.executors.ssm.executor import _output_tail
from patchflow.testing.ssm_agent import HostPackages, Offered
from patchflow.testing.ssm_endpoint import SsmEndpoint, _ssh_install_set, ssh_instance_id


def host_packages() -> HostPackages:
    """A host with app 1.0-1 installed; its sources offer 1.0-1 (release), 1.1-1 (security), 1.2-1 (updates)."""
    return HostPackages.from_answer(
        {
            "boot_id": "b1",
            "installed": [["app", "all", "1.0-1", "ii"], ["libfoo", "all", "2.0-1", "iF"]],
            "offered": [
                ["app", "all", "1.0-1", "lab", "lab", "misc", "optional"],
                ["app", "all", "1.1-1", "lab-security", "lab-security", "misc", "optional"],
                ["app", "all", "1.2-1", "lab-updates", "lab-updates", "misc", "optional"],
                ["libfoo", "all", "1.9-1", "lab-security", "lab-security", "libs", "optional"],
            ],
        }
    )


def test_install_picks_the_override_lists_versions_or_the_security_pocket() -> None:
    """User Guide, AWS-RunPatchBaseline, ``InstallOverrideList``: the list replaces the baseline's install set
    (``id`` = ``name.arch`` with wildcards, an optional ``title`` filtering versions); without it the
    predefined Debian baseline approves only what the security repository offers (User Guide, "Patch
    compliance state values"). Only upgrades: an installed package is never taken to an older version."""
    packages = host_packages()
    assert packages.broken == frozenset({("libfoo", "all")})

    def pick(override: list[dict[str, str]] | None) -> list[Package]:
        return _ssh_install_set(override, packages)

    exact = [{"id": "app.all", "title": "app.all:1.1-1"}]
    assert pick(exact) == [Package("app", "all", "1.1-1")]  # exactly the pinned one, although 1.2-1 exists
    assert pick([{"id": "app.*"}]) == [Package("app", "all", "1.2-1")]  # no title: the newest offered
    assert pick([{"id": "app.all", "title": "app.all:1.1*"}]) == [Package("app", "all", "1.1-1")]
    assert pick([{"id": "libfoo.all", "title": "libfoo.all:1.9-1"}]) == []  # older than installed
    assert pick([{"id": "tool.all", "title": "tool.all:3.0-1"}]) == []  # not installed: not applicable
    assert pick(None) == [Package("app", "all", "1.1-1")]  # the default baseline: the security pocket only


def test_security_pockets_are_recognised_by_suite_or_codename() -> None:
    """Debian names its pockets ``bookworm-security`` (codename) / ``oldstable-security`` (suite), as
    ``apt-get indextargets`` reports them; the lab's is ``lab-security``."""
    assert Offered("a", "all", "1", "oldstable-security", "bookworm-security", "", "").security
    assert Offered("a", "all", "1", "lab-security", "lab-security", "", "").security
    assert not Offered("a", "all", "1", "oldstable-updates", "bookworm-updates", "", "").security
    assert not Offered("a", "all", "1", "oldstable", "bookworm", "", "").security


def test_instance_ids_are_valid_hybrid_node_ids() -> None:
    """``mi-`` + 17 lower-case letters or digits (API reference, InstanceInformation ``InstanceId``)."""
    assert ssh_instance_id("lab-01") == "mi-000000000000lab01"
    assert ssh_instance_id("Web-01.example") == "mi-00000web01example"
    long = ssh_instance_id("a-rather-long-host-name-in-a-datacenter")
    assert long.startswith("mi-") and len(long) == 20 and long != ssh_instance_id("a-rather-long-host-name")


def test_rpm_hosts_are_refused_with_a_clear_message() -> None:
    with SsmEndpoint() as endpoint, pytest.raises(ValueError, match="apt/dpkg hosts only") as err:
        endpoint.register_ssh_host(SshHost("rh-01", "127.0.0.1", 1, family="rpm"))
    assert "rh-01" in str(err.value) and "leave rpm hosts out" in str(err.value)


def test_an_unreachable_host_is_refused_at_registration(tmp_path: Path) -> None:
    with SsmEndpoint() as endpoint, pytest.raises(ValueError, match="cannot register gone-01"):
        # 127.0.0.1:1 refuses connections (nothing listens on port 1)
        endpoint.register_ssh_host(SshHost("gone-01", "127.0.0.1", 1, known_hosts=tmp_path / "known_hosts"))


def test_the_command_line_reports_a_bad_inventory_without_a_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "inventory.yml"
    bad.write_text("all:\n  hosts:\n    web-01: {ansible_port: seventy}\n")
    proc = subprocess.run(
        [sys.executable, "-m", "patchflow.testing.ssm_endpoint", "--ssh-inventory", str(bad)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and str(bad) in proc.stderr and "Traceback" not in proc.stderr


def test_a_failed_invocations_message_keeps_the_end_of_its_output() -> None:
    """The package manager says what went wrong last (dpkg: "… post-installation script subprocess returned
    error exit status 1"), so the instance's message keeps the end of ``StandardErrorContent`` (else of
    ``StandardOutputContent``), not its beginning."""
    apt = "Reading package lists...\n" * 100 + "E: Sub-process /usr/bin/dpkg returned an error code (1)"
    message = _output_tail({"StandardErrorContent": apt, "StandardOutputContent": "ignored"})
    assert message.startswith(": …") and message.endswith("returned an error code (1)") and len(message) < 900
    assert _output_tail({"StandardErrorContent": "", "StandardOutputContent": "exit 3\n"}) == ": exit 3"
    assert _output_tail({}) == ""
