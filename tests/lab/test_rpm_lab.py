"""The SSH executor on a lab host whose packages live in an RPM database and are installed with dnf
(Debian's ``rpm`` and ``dnf`` packages; the repository is built with ``rpmbuild`` and ``createrepo_c`` and has
an ``updateinfo.xml``). Exact ``name-[epoch:]version-release`` pins, the resolver check, rollback."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchflow.executors.base import Package
from patchflow.executors.ssh import SshExecutor, load_inventory
from patchflow.testing.lab.fleet import Lab
from tests.lab.conftest import Hosts

pytestmark = pytest.mark.lab


async def test_dnf_host_gets_exactly_the_pinned_versions_and_rolls_back(
    lab: Lab, lab_hosts: Hosts, inventory: Path
) -> None:
    host = lab_hosts.take("rpm")
    assert next(h for h in lab.status() if h["id"] == host)["family"] == "rpm"
    assert "updateinfo" in "".join(p.name for p in (lab.repo.yum_dir / "repodata").iterdir())
    executor = SshExecutor(load_inventory(inventory), poll_seconds=2)
    try:
        alone = await executor.install(
            host, [Package("app", "noarch", "1.1-1")], operation_id=f"rpm/x/{host}/install/0"
        )
        pins = [
            Package("app", "noarch", "1.1-1"),
            Package("libfoo", "noarch", "1.1-1"),
            Package("lab-epoch", "noarch", "1:1.5-1"),  # epoch 1 beats 2.0-1
            Package("tool", "noarch", "3.1~rc1-1"),  # a pre-release
        ]
        result = await executor.install(host, pins, operation_id=f"rpm/x/{host}/install/1")
        installed = lab.installed(host)
        restored = await executor.restore(
            host,
            [Package(c.name, c.arch, c.from_version) for c in result.changed],
            operation_id=f"rpm/x/{host}/r",
        )
    finally:
        await executor.close()
    assert alone.status == "failed" and "outside the pinned set: libfoo -> 1.1-1" in alone.message
    assert result.status == "succeeded", result.message
    assert {p.name: installed[p.name] for p in pins} == {p.name: p.version for p in pins}
    assert installed["editor-lab"] == "9.0-1"  # not in the set
    assert restored.status == "succeeded", restored.message
    after = lab.installed(host)
    assert (after["app"], after["libfoo"], after["lab-epoch"], after["tool"]) == (
        "1.0-1",
        "1.0-1",
        "2.0-1",
        "3.0-1",
    )
