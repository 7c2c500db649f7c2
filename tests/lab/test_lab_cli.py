"""``patchflow lab status|publish|catalog`` on the session's lab (``lab up``/``down`` are the fixture's)."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from patchflow.core.catalog import load_catalog
from patchflow.testing.lab.fleet import Lab
from tests.lab.conftest import Hosts
from tests.test_cli import run

pytestmark = pytest.mark.lab


def test_status_json_describes_every_host(lab: Lab) -> None:
    proc = run("lab", "status", "--format", "json", data_dir=lab.dir.parent, check=True)
    hosts = json.loads(proc.stdout)["hosts"]
    assert [h["id"] for h in hosts] == [h.id for h in lab.hosts()]
    for host in hosts:
        assert ipaddress.ip_address(host["address"]) in ipaddress.ip_network("127.0.0.0/8")
        assert host["family"] == ("rpm" if "rpm" in host["groups"] else "deb")
        assert host["state"] == "up" and len(host["boot_id"]) == 36
        assert host["groups"] and isinstance(host["reboot_pending"], bool)
        assert host["packages"]["zlib-lab"] == "1.2.13-1"
    assert len({h["address"] for h in hosts}) == len(hosts)
    assert len({h["boot_id"] for h in hosts}) == len(hosts)


def test_publish_reaches_hosts_and_the_catalog(lab: Lab, lab_hosts: Hosts, tmp_path: Path) -> None:
    proc = run(
        "lab",
        "publish",
        "docs-lab",
        "1:1.1~rc1-1",
        "--security",
        "--depends",
        "zlib-lab (>= 1.2.13-1)",
        data_dir=lab.dir.parent,
        check=True,
    )
    assert "published docs-lab 1:1.1~rc1-1 to lab-security" in proc.stdout
    catalog = tmp_path / "catalog.json"
    run("lab", "catalog", "-o", str(catalog), data_dir=lab.dir.parent, check=True)
    patches = {(p.name, p.version): p for p in load_catalog(catalog)}
    new = patches[("docs-lab", "1:1.1~rc1-1")]
    assert new.security and new.repository == "lab-security" and new.depends == ["zlib-lab"]
    assert new.product == "Debian12" and new.classification == "Security"
    assert not patches[("docs-lab", "1.0-1")].security
    assert patches[("flaky", "1.1-1")].repository == "lab-updates"

    host = lab_hosts.take("spare")
    policy = lab.run(host, "apt-get update -q >/dev/null && apt-cache policy docs-lab").stdout
    assert "Candidate: 1:1.1~rc1-1" in policy

    again = run("lab", "publish", "docs-lab", "1:1.1~rc1-1", data_dir=lab.dir.parent)
    assert again.returncode == 2 and "already published" in again.stderr
    bad = run("lab", "publish", "docs-lab", "1.0 beta", data_dir=lab.dir.parent)
    assert bad.returncode == 2 and "version '1.0 beta'" in bad.stderr


def test_publish_custom_goes_to_the_second_repository_only(lab: Lab, tmp_path: Path) -> None:
    """``--custom``: the version lands in the second repository (no host uses it) and in ``lab catalog
    --custom`` under its repository ``custom`` — what a baseline's Sources name — never in the plain catalog."""
    proc = run("lab", "publish", "editor-lab", "9.7-1", "--custom", data_dir=lab.dir.parent, check=True)
    assert "published editor-lab 9.7-1 to the custom repository" in proc.stdout
    assert "/custom custom main" in proc.stdout  # the Sources line to use
    plain, custom = tmp_path / "plain.json", tmp_path / "custom.json"
    run("lab", "catalog", "-o", str(plain), data_dir=lab.dir.parent, check=True)
    run("lab", "catalog", "--custom", "-o", str(custom), data_dir=lab.dir.parent, check=True)
    assert ("editor-lab", "9.7-1") not in {(p.name, p.version) for p in load_catalog(plain)}
    entry = next(p for p in load_catalog(custom) if (p.name, p.version) == ("editor-lab", "9.7-1"))
    assert entry.repository == "custom" and not entry.security
    both = run("lab", "publish", "editor-lab", "9.8-1", "--custom", "--security", data_dir=lab.dir.parent)
    assert both.returncode == 2 and "--custom and --security" in both.stderr
