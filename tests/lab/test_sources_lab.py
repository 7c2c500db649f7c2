"""Baseline ``Sources`` on the lab's real hosts: a second repository that no host is configured for.

AWS User Guide, "How to specify an alternative patch source repository (Linux)": "Only specified repositories
are used for patching", and running a baseline with alternative repositories "doesn't make them the new default
repositories … After the patching operation is complete, the repositories previously configured as the
defaults for the node's operating system remain the defaults." So: a wave installs the pinned version that
exists only in the second repository on every targeted host, and afterwards each host's repository
configuration, lists and caches — and what ``apt-get -s upgrade`` / ``dnf check-update`` would do — are exactly
as before; a source that cannot be reached fails the host with its name and changes nothing. The SSM
executor's configure/cleanup scripts (:mod:`patchflow.executors.ssm.sources`) run here on real apt and dnf too.
"""

from __future__ import annotations

import asyncio
import difflib
import json
import socket
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from patchflow.core.baselines import load_baseline
from patchflow.core.catalog import load_catalog
from patchflow.core.documents import dump_yaml
from patchflow.core.evaluation import evaluate
from patchflow.core.instances import RepoSource
from patchflow.core.wavemodel import ExecutorRef, StageInput, WaveInput
from patchflow.core.windows import WindowSpec
from patchflow.executors.base import Package
from patchflow.executors.ssh import SshExecutor, load_inventory
from patchflow.executors.ssm.sources import cleanup_script, configure_script
from patchflow.testing.lab.fleet import Lab
from patchflow.testing.lab.repo import PRODUCT
from tests.lab.conftest import Hosts
from tests.lab.test_waves_lab import lab_worker
from workflows.wave import WaveWorkflow

pytestmark = pytest.mark.lab

NAME, OLD, NEW = "dbus-lab", "1.14.10-1", "1.14.10-5"
"""A package every host has, with no newer version in the hosts' own repository: the new one is only in the
second repository."""
_PATCHFLOW = (
    "find var/lib/patchflow -mindepth 1 ! -path 'var/lib/patchflow/operations*' ! -path 'var/lib/patchflow/agent*'"
    " 2>/dev/null; true"
)
"""What patchflow keeps on a host besides the SSH executor's operation journals and its compiled agent: nothing."""
_STATE = {
    "deb": (
        "cd / && find etc/apt var/lib/apt/lists -type f | sort | xargs sha256sum"
        " && find var/cache/apt ! -name '*.bin' | sort && " + _PATCHFLOW
    ),
    "rpm": (
        "cd / && find etc/yum.repos.d etc/dnf etc/apt -type f | sort | xargs sha256sum"
        " && ls -a var/cache/dnf && " + _PATCHFLOW
    ),
}
_UPGRADE = {
    "deb": "apt-get -s -q upgrade",
    "rpm": "dnf -q check-update; echo exit=$?",
}


def custom_published(lab: Lab) -> None:
    """The new version in the second repository (once per session: every test here uses it)."""
    if not any(p.name == NAME and p.version == NEW for p in lab.custom_repo.packages()):
        lab.publish(NAME, NEW, custom=True)


def state(lab: Lab, host: str, family: str) -> list[str]:
    """A host's repository configuration, lists and caches, and what an upgrade would do now — one line each,
    so a difference shows as the lines that differ."""
    config = lab.run(host, _STATE[family]).stdout
    upgrade = lab.run(host, _UPGRADE[family])
    lines = [ln for ln in upgrade.stdout.splitlines() if not ln.startswith("Last metadata expiration")]
    return config.splitlines() + ["--- upgrade:", *lines]


def unchanged(lab: Lab, host: str, family: str, before: list[str]) -> None:
    """The host's :func:`state` is ``before`` (else the assertion shows the lines that differ)."""
    diff = list(difflib.unified_diff(before, state(lab, host, family), "before", "after", lineterm=""))
    assert not diff, f"{host} changed:\n" + "\n".join(diff)


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sources_baseline(lab: Lab, directory: Path) -> Path:
    """A Debian baseline file approving every update (non-security too) from exactly the second repository."""
    path = directory / "lab-custom-repository.yaml"
    path.write_text(
        dump_yaml(
            {
                "Name": "lab-custom-repository",
                "OperatingSystem": "DEBIAN",
                "ApprovalRules": {
                    "PatchRules": [
                        {
                            "PatchFilterGroup": {"PatchFilters": [{"Key": "PRODUCT", "Values": ["*"]}]},
                            "EnableNonSecurity": True,
                        }
                    ]
                },
                "Sources": [
                    {"Name": "lab-custom", "Products": [PRODUCT], "Configuration": lab.custom_source("deb")}
                ],
            }
        )
    )
    return path


async def test_a_wave_installs_from_the_baseline_sources_and_leaves_every_host_as_it_was(
    lab_temporal: WorkflowEnvironment, lab: Lab, lab_hosts: Hosts, tmp_path: Path
) -> None:
    hosts = [lab_hosts.take("src"), lab_hosts.take("src")]
    custom_published(lab)
    catalog = tmp_path / "catalog.json"
    catalog.write_text(json.dumps(lab.catalog(custom=True)))
    pinned = evaluate(
        load_baseline(sources_baseline(lab, tmp_path)), load_catalog(catalog), datetime.now(UTC)
    ).patch_set
    # Sources replace the hosts' repositories: only the second repository's versions are candidates (other
    # tests of the session may have published more there, e.g. `lab publish --custom`).
    custom = {(p.name, p.version) for p in lab.custom_repo.packages()}
    assert (NAME, NEW) in {(p.name, p.version) for p in pinned.patches}
    assert {(p.name, p.version) for p in pinned.patches} <= custom
    assert [s.name for s in pinned.sources()] == ["lab-custom"]

    patches = [Package(p.name, p.arch, p.version) for p in pinned.patches if p.name == NAME]
    # Without the Sources the pinned version is nowhere a host looks: the install fails and changes nothing.
    executor = SshExecutor(load_inventory(lab.inventory_path), poll_seconds=2)
    try:
        alone = await executor.install(hosts[0], patches, operation_id=f"src-none/x/{hosts[0]}/install/0")
    finally:
        await executor.close()
    assert alone.status == "failed" and "resolver refused the pinned versions" in alone.message
    assert lab.installed(hosts[0])[NAME] == OLD

    for host in hosts:
        assert lab.run(host, "apt-get update -q").returncode == 0  # the hosts' own lists, current
    before = {h: state(lab, h, "deb") for h in hosts}
    assert not any("dbus-lab" in line for line in before[hosts[0]])
    # The hosts' repository moves on meanwhile: an install that refreshed their own lists would now see it.
    lab.publish("tzdata-lab", f"2026{uuid.uuid4().hex[:4]}-1")

    inp = WaveInput(
        wave_id=f"wave-src-{uuid.uuid4().hex[:8]}",
        plan_name="lab-sources",
        patch_set_id=pinned.id,
        patches=patches,
        executor=ExecutorRef(kind="ssh", inventory_path=str(lab.inventory_path), reboot_option="NoReboot"),
        stages=[
            StageInput(
                name="src",
                window=WindowSpec(schedule="now"),
                max_concurrency="2",
                max_errors="0",
                instance_ids=hosts,
            )
        ],
        heartbeat_timeout_seconds=20,
        sources=list(pinned.sources()),
    )
    async with lab_worker(lab_temporal.client) as task_queue:
        handle = await lab_temporal.client.start_workflow(
            WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue
        )
        result = await asyncio.wait_for(handle.result(), 240)
    assert result.status.state == "succeeded", result.status
    for host in hosts:
        assert lab.installed(host)[NAME] == NEW, host
        unchanged(lab, host, "deb", before[host])  # configuration, lists, caches, upgrade: as before
        assert lab.run(host, "dpkg --audit").stdout.strip() == ""

    # A source that cannot be reached fails the host with its name, and changes nothing.
    gone = RepoSource(
        "lab-gone", (PRODUCT,), f"deb [trusted=yes] http://127.0.0.1:{closed_port()}/gone custom main"
    )
    executor = SshExecutor(load_inventory(lab.inventory_path), poll_seconds=2)
    try:
        refused = await executor.install(
            hosts[1],
            [Package("editor-lab", "all", "9.1-1")],
            operation_id=f"src-gone/x/{hosts[1]}/install/0",
            sources=[gone],
        )
    finally:
        await executor.close()
    assert refused.status == "failed" and refused.changed == ()
    assert "the baseline Source lab-gone cannot be reached" in refused.message, refused.message
    assert "nothing was changed" in refused.message
    assert lab.installed(hosts[1])["editor-lab"] == "9.0-1"
    unchanged(lab, hosts[1], "deb", before[hosts[1]])


async def test_dnf_host_installs_from_the_sources_only_and_keeps_its_configuration(
    lab: Lab, lab_hosts: Hosts
) -> None:
    """dnf: the source's repo file in a private ``reposdir`` (every other repository off), a private
    ``cachedir``; ``/etc/yum.repos.d``, ``/etc/dnf``, ``/var/cache/dnf`` and ``dnf check-update`` as before."""
    host = lab_hosts.take("rpm")
    custom_published(lab)
    lab.run(host, "dnf -q makecache")
    before = state(lab, host, "rpm")
    source = RepoSource("lab-custom", (PRODUCT,), lab.custom_source("rpm"))
    gone = RepoSource(
        "lab-gone",
        (PRODUCT,),
        f"[lab-gone]\nname=gone\nbaseurl=http://127.0.0.1:{closed_port()}/gone/\ngpgcheck=0\nenabled=1\n",
    )
    executor = SshExecutor(load_inventory(lab.inventory_path), poll_seconds=2)
    try:
        pin = [Package(NAME, "noarch", NEW)]
        alone = await executor.install(host, pin, operation_id=f"src-rpm/x/{host}/install/0")
        refused = await executor.install(
            host, pin, operation_id=f"src-rpm/x/{host}/install/1", sources=[gone]
        )
        result = await executor.install(
            host, pin, operation_id=f"src-rpm/x/{host}/install/2", sources=[source]
        )
    finally:
        await executor.close()
    assert alone.status == "failed" and "resolver refused" in alone.message
    assert refused.status == "failed" and "the baseline Source lab-gone cannot be reached" in refused.message
    assert result.status == "succeeded", result.message
    assert "from the baseline Sources lab-custom" in result.message
    assert lab.installed(host)[NAME] == NEW
    unchanged(lab, host, "rpm", before)


def _script(lines: list[str]) -> str:
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("family", ["deb", "rpm"])
def test_the_ssm_configure_and_cleanup_steps_on_real_apt_and_dnf(
    lab: Lab, lab_hosts: Hosts, family: str
) -> None:
    """What the SSM executor sends with ``AWS-RunShellScript`` around ``AWS-RunPatchBaseline``: after the
    configure step the package manager (run as Patch Manager runs it: no options) sees exactly the source;
    after the cleanup step the host is exactly as before. An unreachable source fails the configure step
    (exit 3) and leaves nothing."""
    host = lab_hosts.take("src" if family == "deb" else "rpm")
    custom_published(lab)
    own = f"127.0.0.1:{lab.state()['http_port']} lab"  # how apt/dnf name the host's own repository
    if family == "deb":
        lab.run(host, "apt-get update -q")
        probe = f"apt-cache policy {NAME}"
    else:
        lab.run(host, "dnf -q makecache")
        probe = f"dnf -q repolist; dnf -q --showduplicates list {NAME}"
    before = state(lab, host, family)
    op = f"wave-ssm/x/{host}/install/0"
    source = RepoSource("lab-custom", (PRODUCT,), lab.custom_source(family))
    gone = RepoSource(
        "lab-gone",
        (PRODUCT,),
        f"deb [trusted=yes] http://127.0.0.1:{closed_port()}/gone custom main"
        if family == "deb"
        else f"[lab-gone]\nbaseurl=http://127.0.0.1:{closed_port()}/gone/\ngpgcheck=0\n",
    )

    failed = lab.run(host, _script(configure_script(family, op, [gone])))
    assert failed.returncode == 3, failed.stdout + failed.stderr
    assert "cannot be reached" in failed.stderr
    unchanged(lab, host, family, before)

    configured = lab.run(host, _script(configure_script(family, op, [source])))
    assert configured.returncode == 0, configured.stdout + configured.stderr
    seen = lab.run(host, probe).stdout
    assert NEW in seen, seen
    if family == "deb":  # the candidate comes from the custom repository; the host's own is not listed
        assert f"Candidate: {NEW}" in seen and "/custom custom/main" in seen and own not in seen, seen
    else:
        assert "lab-custom" in seen and not any(line.split()[:1] == ["lab"] for line in seen.splitlines()), (
            seen
        )
    cleaned = lab.run(host, _script(cleanup_script(family, op)))
    assert cleaned.returncode == 0, cleaned.stdout + cleaned.stderr
    unchanged(lab, host, family, before)
    again = lab.run(host, _script(cleanup_script(family, op)))  # idempotent
    assert again.returncode == 0
    unchanged(lab, host, family, before)
    assert lab.run(host, "test -e /var/lib/patchflow").returncode == 1  # not even an empty directory
