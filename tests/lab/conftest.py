"""The lab fleet for end-to-end tests: one lab per test session (real Debian hosts, see
:mod:`patchflow.testing.lab`), its Debian root built once and cached under the data directory.

Hosts are handed out by role so tests never share one: the wave tests use ``dev``/``test``/``prod``/``control``
and ``rb``; executor tests take a ``spare`` host each, the baseline Sources tests ``src`` and ``rpm`` hosts;
the SSM tests take ``ssm`` hosts (the fake SSM endpoint registers them under patch groups of their own); the
lifecycle hook tests take ``hooks`` hosts.
The lab needs root, ``mmdebstrap``, ``dpkg-deb``, ``rpmbuild`` and ``createrepo_c``
(``.ci/run`` installs them); without them the lab tests skip locally and fail in CI.
"""

from __future__ import annotations

import os
import shutil
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from temporalio.testing import WorkflowEnvironment

from patchflow.config import Settings
from patchflow.control.connection import connect
from patchflow.control.devserver import free_port, start_dev_server
from patchflow.testing.lab.fleet import Lab

LAB_GROUPS = {
    "dev": 1,
    "test": 1,
    "prod": 2,
    "control": 1,
    "rb": 2,
    "kill": 4,
    "spare": 14,
    "ssm": 9,
    "src": 3,
    "hooks": 2,
}
RPM_GROUPS = {"rpm": 3}
"""Hosts whose lab packages live in an RPM database, patched with dnf."""
BASE_ADDRESS = "127.0.77.10"


def _free_port(address: str) -> int:
    with socket.socket() as sock:
        sock.bind((address, 0))
        return int(sock.getsockname()[1])


@pytest_asyncio.fixture(scope="session")
async def lab_temporal(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[WorkflowEnvironment]:
    """A Temporal dev server for the lab's waves, started like ``patchflow dev`` does (it waits up to 30 s for
    the server: next to a running lab on a busy machine the SDK's 5-second start-up limit is too tight)."""
    server = start_dev_server(
        f"127.0.0.1:{free_port()}", tmp_path_factory.mktemp("lab-temporal"), ui=False, timeout=60
    )
    try:
        client = await connect(Settings(temporal_address=server.address), attempts=30)
        yield WorkflowEnvironment.from_client(client)
    finally:
        server.stop()


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    missing = [
        t for t in ("mmdebstrap", "dpkg-deb", "ssh-keygen", "unshare", "nsenter") if not shutil.which(t)
    ]
    if missing or os.geteuid() != 0:
        reason = f"the lab needs root and {', '.join(missing) or 'nothing else'}"
        if os.environ.get("CI"):
            pytest.fail(reason + " (.ci/run installs the Debian packages)")
        pytest.skip(reason)
    cache = Settings().data_dir / "lab" / "cache"
    lab = Lab(tmp_path_factory.mktemp("lab-data"), cache_dir=cache)
    lab.up(
        LAB_GROUPS,
        rpm_groups=RPM_GROUPS,
        base_address=BASE_ADDRESS,
        port=_free_port(BASE_ADDRESS),
        reboot_delay_seconds=0.5,
    )
    try:
        yield lab
    finally:
        lab.down()


class Hosts:
    """Hands out lab hosts of a group, each at most once per session."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.taken: set[str] = set()

    def take(self, group: str) -> str:
        for host in self.lab.hosts():
            if group in host.groups and host.id not in self.taken:
                self.taken.add(host.id)
                return host.id
        raise AssertionError(f"no free lab host left in group {group!r}: raise LAB_GROUPS[{group!r}]")


@pytest.fixture(scope="session")
def lab_hosts(lab: Lab) -> Hosts:
    return Hosts(lab)


@pytest.fixture(scope="session")
def inventory(lab: Lab) -> Path:
    return lab.inventory_path
