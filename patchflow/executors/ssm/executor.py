"""The AWS Systems Manager executor: real fleets through Run Command and Patch Manager (boto3).

One instance per command (patchflow's own stage scheduler decides what is in flight, so windows, gates and
metrics behave the same for every executor; SSM's limit of 50 ids per command is never approached).

* **discover** — ``DescribeInstanceInformation`` (EC2 ``i-`` and hybrid ``mi-`` nodes). Tags come from
  ``ListTagsForResource`` (``ManagedInstance``) for hybrid nodes and from EC2 for ``i-`` nodes (pass an EC2
  client). Nodes whose ``PingStatus`` is not ``Online`` are reported ``online=False``; with an EC2 client,
  EC2 instances that are not managed by SSM at all are reported too (``online=False``, no platform) —
  nothing is silently dropped.
* **scan** — the packages installed now, listed by ``dpkg-query``/``rpm -qa`` through ``AWS-RunShellScript``
  (full output read from S3 when Run Command truncates it). *Why not* ``DescribeInstancePatches``: Patch
  Manager's compliance rows give the **available** version for a package with a pending update
  (``MISSING``), so the installed version of exactly the packages that matter is not there.
  :meth:`SsmExecutor.patch_states` runs ``AWS-RunPatchBaseline`` ``Scan`` and returns those rows (Linux
  ``KBId`` = ``name.arch``, ``Title`` = ``name.arch:epoch:version-release``);
  :meth:`SsmExecutor.collect` turns scans of many instances into patchflow's catalog and inventory files
  (:mod:`patchflow.executors.ssm.inventory`), so patchflow's baseline engine — not the node's SSM baseline — decides.
* **install** — the pinned set becomes an ``InstallOverrideList`` YAML (content-addressed under
  ``{prefix}/override-lists/``), sent with ``AWS-RunPatchBaseline`` ``Operation=Install``, an explicit
  ``SnapshotId`` (a UUID derived from the operation id's first segment — the wave id in patchflow's
  ``wave/stage/instance/install/attempt`` ids — so one wave shares one snapshot), the plan's
  ``RebootOption``, output to S3 and optionally CloudWatch Logs.
* **baseline Sources** — SSM cannot take them with an ``InstallOverrideList`` (User Guide, "Using the
  BaselineOverride parameter": the two "can't" be used together; the document fails). On a node whose product
  a source names, the install becomes three commands: an ``AWS-RunShellScript`` *configure* step that makes
  apt/dnf use exactly those sources (and fails, changing nothing, when one cannot be reached), the
  ``AWS-RunPatchBaseline`` Install, and an ``AWS-RunShellScript`` *cleanup* step that always runs — after a
  failed configure, a failed, timed-out or cancelled install — and leaves the node's own configuration as it
  was (:mod:`patchflow.executors.ssm.sources`). The configure step is what :meth:`SsmExecutor.start_install`
  sends; :meth:`SsmExecutor.finish_install` waits for it, then sends the install and the cleanup (each found
  by its ``Comment`` before it is sent, so a retry never sends one twice).
* **restore** — ``AWS-RunShellScript`` with ``apt-get install --allow-downgrades name:arch=version`` or
  ``dnf downgrade`` (``yum`` when dnf is missing). Limits: the old version must still be downloadable from
  the node's repositories (Ubuntu's archive drops superseded ``-updates`` versions; mirrors and
  snapshots help); dependencies that were upgraded together are restored only if they were recorded as
  changed; a kernel goes back only after a reboot into it.
* **health_check** — ``health_command`` through ``AWS-RunShellScript`` (exit 0 = healthy). Without one,
  every instance is healthy by definition (the message says so): SSM knows nothing about the workload.

**Never sending twice.** ``SendCommand`` has no idempotency token. Every install/restore keeps an
*operation record* — a small JSON object at ``{prefix}/operations/<sha256(operation id)>.json`` in the
bucket — written before the command is sent and rewritten with the command id as the very first thing after
``SendCommand`` returns. The command's ``Comment`` carries the operation id's digest, so if the worker dies
between the send and that write, a retry finds the command with ``ListCommands(InstanceId=…)`` and waits for
it instead of sending again. The record lives in S3 rather than a local SQLite file because a Temporal retry
may run on another worker host: S3 is shared by all of them, strongly consistent for read-after-write, and
already required for the override lists. (Two attempts of one operation running *at the same moment* could
still both send; Temporal's heartbeat timeout makes that a crash-recovery race only.)

**Send and wait apart.** :meth:`SsmExecutor.start_install` stops right after that record write and
:meth:`SsmExecutor.finish_install` does the waiting below, so a workflow can run them as two activities: a
short, retried "send" that is safe to repeat, and a long, heartbeating "wait" that never sends the
operation's command (it only reads the record; with no record it raises ``OperationNotStartedError``).

**Waiting** polls ``GetCommandInvocation`` (``PluginName`` ``PatchLinux`` for the multi-step patch document)
with exponential backoff, treats ``InvocationDoesNotExist`` right after a send as "not visible yet" for
``not_found_grace_seconds``, and leaves throttling to botocore's ``adaptive`` retry mode (see
:func:`make_clients`) plus a client-side request rate (``max_requests_per_second``); a poll still throttled
after botocore's retries only makes the next poll come later. A wait that is cancelled
(worker shutdown, activity cancellation) leaves the command running — like a crashed worker, a retry picks it
up; :meth:`SsmExecutor.cancel` cancels an operation's command explicitly.

**Status mapping** (``StatusDetails``): ``Success`` → succeeded; ``Failed`` → failed; ``Execution Timed
Out`` → timed_out (both count against ``max_errors``); ``Delivery Timed Out``, ``Undeliverable``, ``Invalid
Platform``, ``Access Denied`` → undeliverable (reported, not counted unless the plan says so);
``Cancelled``/``Terminated`` → cancelled (reported, never counted: ``Command.ErrorCount`` counts only "Failed or
Execution Timed Out"). An offline or unmanaged target is undeliverable at once, without a
command (SSM would only time out delivery after ``TimeoutSeconds``).

**Reboots** are reported as SSM decides them (User Guide, AWS-RunPatchBaseline, ``RebootOption``): with
``RebootIfNeeded`` a successful install rebooted when it changed a package *or* the node already had patches
``INSTALLED_PENDING_REBOOT`` (``DescribeInstancePatchStates`` just before the send) — and it did not if the
Install's own patch state still counts pending patches. ``pending_reboot`` is that count after the Install
(``NoReboot`` leaves what it installed pending).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shlex
import threading
import time
import uuid
import weakref
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, Final

from botocore.exceptions import ClientError

from patchflow.core import versions
from patchflow.core.documents import dump_yaml
from patchflow.core.instances import sources_for
from patchflow.errors import InputError
from patchflow.executors.base import (
    CommandResult,
    HealthResult,
    InstallResult,
    InstallStatus,
    InstanceInfo,
    OperationNotStartedError,
    Package,
    PackageChange,
    RepoSource,
)
from patchflow.executors.ssm.inventory import Collection, InstanceScan, build_collection
from patchflow.executors.ssm.sources import cleanup_script, configure_script

__all__ = [
    "MAX_INSTANCES_PER_COMMAND",
    "REBOOT_OPTIONS",
    "InstancePatch",
    "SsmCommandEnded",
    "SsmCommandLost",
    "SsmExecutor",
    "command_comment",
    "install_status",
    "make_clients",
    "override_list_yaml",
    "parse_title",
    "platform_family",
    "platform_product",
    "restore_script",
    "snapshot_id",
]

PATCH_DOCUMENT: Final = "AWS-RunPatchBaseline"
SHELL_DOCUMENT: Final = "AWS-RunShellScript"
PATCH_PLUGIN: Final = "PatchLinux"
"""The Linux step of AWS-RunPatchBaseline; GetCommandInvocation needs it (the document has several steps)."""
MAX_INSTANCES_PER_COMMAND: Final = 50
"""SSM's limit on ``InstanceIds`` per SendCommand; this executor sends one instance per command."""
OUTPUT_LIMIT: Final = 24_000
"""``StandardOutputContent`` holds the first 24,000 characters; the rest is only in S3."""
REBOOT_OPTIONS: Final = ("RebootIfNeeded", "NoReboot")
SNAPSHOT_NAMESPACE: Final = uuid.UUID("5b0c7a3e-8f1d-4d52-9f0e-2a6c1b7d9e41")
"""Namespace of patchflow's deterministic SnapshotIds (uuid5); never change it."""

_UNDELIVERED: Final = frozenset({"Delivery Timed Out", "Undeliverable", "Invalid Platform", "Access Denied"})
_CANCELLED: Final = frozenset({"Cancelled", "Canceled", "Terminated"})
"""Ended without a result of its own (``Terminated``: cancelled by the system after MaxErrors); never an error."""
_TERMINAL: Final = frozenset({"Success", "Failed", "Execution Timed Out", *_CANCELLED, *_UNDELIVERED})
_THROTTLED: Final = frozenset(
    {"ThrottlingException", "Throttling", "TooManyRequestsException", "RequestLimitExceeded"}
)
_DEB_PLATFORMS: Final = {"ubuntu": "Ubuntu", "debian": "Debian", "raspbian": "Raspbian"}
_RPM_PLATFORMS: Final = {
    "amazon linux": "AmazonLinux",
    "red hat enterprise linux": "RedhatEnterpriseLinux",
    "centos": "CentOS",
    "rocky": "RockyLinux",
    "almalinux": "AlmaLinux",
    "oracle linux": "OracleLinux",
    "fedora": "Fedora",
    "suse": "SUSE",
    "sles": "SUSE",
}
_DPKG_QUERY: Final = "dpkg-query -W -f='${db:Status-Abbrev}\\t${Package}\\t${Architecture}\\t${Version}\\n'"
_RPM_QUERY: Final = "rpm -qa --qf '%{NAME}\\t%{ARCH}\\t%{EPOCHNUM}:%{VERSION}-%{RELEASE}\\n'"


class SsmCommandLost(RuntimeError):
    """A command's invocation never became visible (retryable: the activity retry resumes the wait)."""


class SsmCommandEnded(SsmCommandLost):
    """A helper command (package listing, patch scan) ended without ``Success``."""

    def __init__(self, message: str, status_details: str) -> None:
        super().__init__(message)
        self.status_details = status_details


@dataclass(frozen=True)
class InstancePatch:
    """One ``DescribeInstancePatches`` row, with the package parsed out of the Linux title."""

    kb_id: str
    title: str
    name: str
    arch: str
    version: str
    """The version the row is about: installed for ``INSTALLED*`` states, available for ``MISSING``."""
    state: str
    classification: str = ""
    severity: str = ""
    cve_ids: tuple[str, ...] = ()
    installed_time: datetime | None = None


# ------------------------------------------------------------------------------------ pure helpers


def make_clients(
    *, region: str | None = None, endpoint_url: str | None = None, max_attempts: int = 10
) -> tuple[Any, Any, Any]:
    """``(ssm, s3, ec2)`` clients from the standard boto3 chain (env, profile, role, instance metadata).

    ``adaptive`` retry mode retries throttling with backoff *and* slows the client down after it was
    throttled. With ``endpoint_url`` (a local endpoint) S3 uses path-style addressing.
    """
    import boto3
    from botocore.config import Config

    config = Config(
        retries={"mode": "adaptive", "max_attempts": max_attempts},
        connect_timeout=10,
        read_timeout=60,
        max_pool_connections=50,  # a patch batch polls up to 50 instances at once
        **({"s3": {"addressing_style": "path"}} if endpoint_url else {}),
    )
    session = boto3.session.Session(region_name=region)
    return tuple(  # type: ignore[return-value]
        session.client(service, endpoint_url=endpoint_url, config=config) for service in ("ssm", "s3", "ec2")
    )


def platform_family(platform_name: str | None) -> str | None:
    """``deb`` or ``rpm`` for an SSM ``PlatformName``; None for anything patchflow cannot patch."""
    lowered = (platform_name or "").lower()
    if any(lowered.startswith(p) for p in _DEB_PLATFORMS):
        return "deb"
    if any(lowered.startswith(p) for p in _RPM_PLATFORMS):
        return "rpm"
    return None


def platform_product(platform_name: str | None, platform_version: str | None) -> str | None:
    """Patch Manager's product name: ``Ubuntu`` + ``22.04`` → ``Ubuntu22.04``, ``Amazon Linux`` + ``2023`` →
    ``AmazonLinux2023``; None when unknown."""
    lowered = (platform_name or "").lower()
    for table in (_DEB_PLATFORMS, _RPM_PLATFORMS):
        for prefix, product in table.items():
            if lowered.startswith(prefix):
                return f"{product}{platform_version or ''}"
    return None


def _norm(version: str) -> str:
    """``0:1.2-3`` → ``1.2-3``: an explicit zero epoch is the same version; keep one spelling."""
    return version[2:] if version.startswith("0:") else version


def patch_title(family: str, package: Package) -> str:
    """The override-list ``title`` pinning one version: yum/dnf ``name.arch:epoch:version-release``, apt
    ``name.arch:version`` (``../shared/reference/ssm-patch-manager.md`` §3.2)."""
    kb_id = f"{package.name}.{package.arch}"
    if family == "rpm":
        epoch, ver, rel = versions.split_rpm_evr(package.version)
        return f"{kb_id}:{epoch or 0}:{ver}" + (f"-{rel}" if rel else "")
    return f"{kb_id}:{package.version}"


def parse_title(title: str, kb_id: str) -> Package:
    """A Linux ``DescribeInstancePatches`` row → the package it names.

    ``KBId`` is ``name.arch`` (split at the last dot: names may contain dots, architectures do not);
    ``Title`` is ``name.arch:epoch:version-release`` (apt titles may omit the epoch). A zero epoch is dropped.
    """
    name, _, arch = kb_id.rpartition(".")
    rest = title[len(kb_id) + 1 :] if title.startswith(kb_id + ":") else title
    return Package(name=name or kb_id, arch=arch if name else "", version=_norm(rest))


def _pinned(family: str, patches: Sequence[Package]) -> list[Package]:
    """One pin per (name, arch) — the highest, as applying both in turn would — validated for ``family``."""
    chosen: dict[tuple[str, str], Package] = {}
    for package in patches:
        versions.validate(family, package.version)
        key = (package.name, package.arch)
        if key not in chosen or versions.compare(family, package.version, chosen[key].version) > 0:
            chosen[key] = package
    return [chosen[key] for key in sorted(chosen)]


def override_list_yaml(family: str, patches: Sequence[Package]) -> str:
    """The ``InstallOverrideList`` document for a pinned set: ``patches: [{id: name.arch, title: …}]``.

    Every entry pins the exact version (a title without wildcards), so a node installs the pinned version
    or nothing — never a newer one that appeared in its repositories after the wave was pinned.
    """
    entries = [
        {"id": f"{p.name}.{p.arch}", "title": patch_title(family, p)} for p in _pinned(family, patches)
    ]
    return dump_yaml({"patches": entries}, sort_keys=False, default_flow_style=False)


def snapshot_id(operation_id: str) -> str:
    """A deterministic ``SnapshotId`` GUID: uuid5 of the operation id's first ``/`` segment (the wave)."""
    return str(uuid.uuid5(SNAPSHOT_NAMESPACE, operation_id.split("/", 1)[0]))


def _digest(operation_id: str) -> str:
    return hashlib.sha256(operation_id.encode()).hexdigest()


def command_comment(operation_id: str, step: str = "") -> str:
    """``patchflow <digest> [<step> ]<operation id>``, cut to SSM's 100 characters; the digest (and the step:
    ``sources+``/``sources-`` for the Sources steps around an install) is what a retry matches, the id is for
    humans in the console."""
    return f"patchflow {_digest(operation_id)[:20]} {step + ' ' if step else ''}{operation_id}"[:100]


SOURCE_STEPS: Final = {"configure": "sources+", "cleanup": "sources-"}
"""The Sources steps of an install and their ``Comment`` markers."""


def package_query_script(family: str) -> list[str]:
    return [_DPKG_QUERY if family == "deb" else _RPM_QUERY]


def parse_package_query(family: str, stdout: str) -> list[Package]:
    """Output of :func:`package_query_script` → installed packages sorted by (name, arch)."""
    found: dict[tuple[str, str], str] = {}
    for line in stdout.splitlines():
        fields = line.split("\t")
        if family == "deb":
            if len(fields) != 4 or fields[0][1:2] != "i":  # "ii ", "hi ": installed; "rc ": config only
                continue
            _, name, arch, version = fields
        else:
            if len(fields) != 3 or fields[1] == "(none)":  # gpg-pubkey pseudo-packages
                continue
            name, arch, version = fields
        if name and version:
            found[(name, arch)] = _norm(version)
    return [Package(name, arch, version) for (name, arch), version in sorted(found.items())]


#: The Linux exit code that asks the SSM Agent to reboot and rerun the script (User Guide, "Handling reboots
#: when running commands").
REBOOT_EXIT_CODE: Final = 194


def reboot_script(operation_id: str) -> list[str]:
    """``AWS-RunShellScript`` commands that reboot the node once (idempotent across the agent's rerun).

    First run: record the boot id, ``exit 194`` (the agent reboots and runs the script again). The rerun sees
    the record and another boot id: it prints ``boot_id <new>`` and exits 0. Should the agent rerun it in the
    same boot (no reboot happened), it asks again.
    """
    marker = f"/var/lib/patchflow/reboots/{_digest(operation_id)}"
    return [
        "boot=$(cat /proc/sys/kernel/random/boot_id)",
        "mkdir -p /var/lib/patchflow/reboots",
        f'if [ -s {marker} ] && [ "$(cat {marker})" != "$boot" ]; then echo "boot_id $boot"; exit 0; fi',
        f'echo "$boot" > {marker}',
        f"exit {REBOOT_EXIT_CODE}",
    ]


def restore_script(family: str, packages: Sequence[Package]) -> list[str]:
    """Shell lines that put ``packages`` back to their versions (downgrades allowed)."""
    if family == "deb":
        specs = " ".join(
            shlex.quote(
                f"{p.name}={p.version}" if p.arch in ("all", "") else f"{p.name}:{p.arch}={p.version}"
            )
            for p in packages
        )
        return [
            "set -e",
            "export DEBIAN_FRONTEND=noninteractive",
            f"apt-get install -y --allow-downgrades --no-install-recommends {specs}",
        ]
    nevras = " ".join(shlex.quote(f"{p.name}-{p.version}.{p.arch}") for p in packages)
    return [
        "set -e",
        f"if command -v dnf >/dev/null 2>&1; then dnf downgrade -y {nevras}; else yum downgrade -y {nevras}; fi",
    ]


def install_status(status_details: str) -> InstallStatus:
    """SSM's invocation ``StatusDetails`` → patchflow's install status (see the module docstring)."""
    if status_details == "Success":
        return "succeeded"
    if status_details == "Execution Timed Out":
        return "timed_out"
    if status_details in _UNDELIVERED:
        return "undeliverable"
    if status_details in _CANCELLED:
        return "cancelled"
    return "failed"


def _changes(before: Sequence[Package], after: Sequence[Package]) -> tuple[PackageChange, ...]:
    old = {(p.name, p.arch): p.version for p in before}
    return tuple(
        PackageChange(p.name, p.arch, old[(p.name, p.arch)], p.version)
        for p in after
        if (p.name, p.arch) in old and old[(p.name, p.arch)] != p.version
    )


FAILURE_TAIL_CHARS: Final = 800
"""How much of a failed invocation's output its instance's message keeps: the end, where the package manager
says what went wrong (a maintainer script's exit status, the package it could not configure)."""


def _output_tail(invocation: dict[str, Any]) -> str:
    """``: …<the last FAILURE_TAIL_CHARS of stderr, else of stdout>`` of a failed invocation ("" if it wrote
    nothing): the plugin's own account of the failure, as GetCommandInvocation returns it."""
    text = (invocation.get("StandardErrorContent") or invocation.get("StandardOutputContent") or "").strip()
    if len(text) > FAILURE_TAIL_CHARS:
        text = "…" + text[-FAILURE_TAIL_CHARS:]
    return f": {text}" if text else ""


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


class _RateLimiter:
    """At most ``rate`` calls per second from this executor (across threads and event loops)."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    async def wait(self) -> None:
        if not self._interval:
            return
        with self._lock:  # held for arithmetic only, never across an await
            now = time.monotonic()
            slot = max(now, self._next)
            self._next = slot + self._interval
        if slot > now:
            await asyncio.sleep(slot - now)


# ------------------------------------------------------------------------------------------ executor


class SsmExecutor:
    """Drives managed instances through SSM (see the module docstring for the durability model).

    Args:
        ssm_client, s3_client: boto3 clients (:func:`make_clients`); injected so tests point them anywhere.
        bucket: S3 bucket for override lists, operation records and command output (must exist).
        prefix: key prefix inside the bucket.
        reboot_option: ``RebootIfNeeded`` or ``NoReboot`` for installs.
        ec2_client: optional; tags of EC2 (``i-``) nodes and EC2 instances unknown to SSM.
        health_command: shell command whose exit code 0 means healthy; None = always healthy.
        cloudwatch_log_group: also send command output to this CloudWatch Logs group.
        max_requests_per_second: client-side cap on AWS requests (None = no cap).
        poll_initial_seconds, poll_max_seconds: polling backoff (×1.5 per poll) while a command runs.
        not_found_grace_seconds: how long ``InvocationDoesNotExist`` after a send is normal.
        delivery_timeout_seconds: SendCommand ``TimeoutSeconds`` (time to reach the node).
        execution_timeout_seconds: ``executionTimeout`` of shell commands.
    """

    def __init__(
        self,
        ssm_client: Any,
        s3_client: Any,
        *,
        bucket: str,
        prefix: str = "patchflow",
        reboot_option: str = "RebootIfNeeded",
        ec2_client: Any = None,
        health_command: str | None = None,
        cloudwatch_log_group: str | None = None,
        max_requests_per_second: float | None = 5.0,
        poll_initial_seconds: float = 2.0,
        poll_max_seconds: float = 30.0,
        not_found_grace_seconds: float = 120.0,
        delivery_timeout_seconds: int = 600,
        execution_timeout_seconds: int = 3600,
    ) -> None:
        if not bucket:
            raise InputError(
                "the SSM executor needs an S3 bucket for override lists and operation records: set "
                "executor.bucket in the plan or PATCHFLOW_SSM_BUCKET"
            )
        if reboot_option not in REBOOT_OPTIONS:
            raise InputError(f"reboot_option {reboot_option!r}: use one of {', '.join(REBOOT_OPTIONS)}")
        self.ssm, self.s3, self.ec2 = ssm_client, s3_client, ec2_client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.reboot_option = reboot_option
        self.health_command = health_command
        self.cloudwatch_log_group = cloudwatch_log_group
        self.poll_initial_seconds = poll_initial_seconds
        self.poll_max_seconds = poll_max_seconds
        self.not_found_grace_seconds = not_found_grace_seconds
        self.delivery_timeout_seconds = delivery_timeout_seconds
        self.execution_timeout_seconds = execution_timeout_seconds
        self._limiter = _RateLimiter(max_requests_per_second)

    # ------------------------------------------------------------------------------------ protocol

    async def discover(self) -> list[InstanceInfo]:
        """Every managed instance (and, with an EC2 client, every EC2 instance SSM does not manage).

        With an EC2 client, each EC2 instance's availability zone comes from the ``DescribeInstances`` call that
        already reads the tags (``Placement.AvailabilityZone``); without one, and for hybrid ``mi-`` nodes, it is
        unknown (disruption budgets put such instances in the zone ``(none)``)."""
        rows = await self._pages(self.ssm.describe_instance_information, "InstanceInformationList")
        ec2_tags: dict[str, dict[str, str]] = {}
        zones: dict[str, str] = {}
        if self.ec2 is not None:
            reservations = await self._pages(
                self.ec2.describe_instances,
                "Reservations",
                Filters=[
                    {"Name": "instance-state-name", "Values": ["pending", "running", "stopping", "stopped"]}
                ],
            )
            for reservation in reservations:
                for instance in reservation["Instances"]:
                    ec2_tags[instance["InstanceId"]] = {
                        t["Key"]: t["Value"] for t in instance.get("Tags", [])
                    }
                    zone = instance.get("Placement", {}).get("AvailabilityZone")
                    if zone:
                        zones[instance["InstanceId"]] = zone
        found: list[InstanceInfo] = []
        for row in rows:
            instance_id = row["InstanceId"]
            if instance_id.startswith("mi-"):
                tag_list = (
                    await self._call(
                        self.ssm.list_tags_for_resource,
                        ResourceType="ManagedInstance",
                        ResourceId=instance_id,
                    )
                )["TagList"]
                tags = {t["Key"]: t["Value"] for t in tag_list}
            else:
                tags = ec2_tags.get(instance_id, {})
            found.append(_info(row, tags, zones.get(instance_id)))
        managed = {i.instance_id for i in found}
        found += [
            InstanceInfo(i, tags=t, online=False, availability_zone=zones.get(i))
            for i, t in ec2_tags.items()
            if i not in managed
        ]
        return sorted(found, key=lambda i: i.instance_id)

    async def scan(self, instance_id: str) -> list[Package]:
        """The packages installed now (``dpkg-query``/``rpm -qa`` through Run Command)."""
        info = await self._require_managed(instance_id)
        assert info.family is not None
        return await self._query(instance_id, info.family)

    async def patch_states(self, instance_id: str) -> list[InstancePatch]:
        """``AWS-RunPatchBaseline`` ``Scan``, then the instance's ``DescribeInstancePatches`` rows."""
        await self._require_managed(instance_id)
        rows, _ = await self._scan_patches(instance_id)
        return rows

    async def collect(
        self, instance_ids: Sequence[str] | None = None, *, concurrency: int = 10
    ) -> Collection:
        """Scan instances and return patchflow's catalog and inventory of them (:mod:`patchflow.executors.ssm.inventory`).

        Per instance: ``AWS-RunPatchBaseline`` ``Scan``; ``DescribeInstancePatchStates`` until it shows that
        scan (compliance data may lag the command); ``DescribeInstancePatches``; the package listing
        (installed versions). Instances run ``concurrency`` at a time (the request rate limit still applies).

        Args:
            instance_ids: the instances; None = every instance discovery reports.

        Returns:
            A :class:`~patchflow.executors.ssm.inventory.Collection`: ``catalog`` and ``inventory`` (lists of dicts in
            patchflow's file formats; ``.write(catalog_path, inventory_path)`` saves them, ``.only(family)``
            keeps one package family), ``skipped`` (instance → why it has no inventory entry: unknown,
            offline, not Linux deb/rpm, or its scan/listing ended without Success) and ``notes``.
        """
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        known = {i.instance_id: i for i in await self.discover()}
        wanted = list(dict.fromkeys(instance_ids)) if instance_ids is not None else sorted(known)
        skipped: dict[str, str] = {}
        gate = asyncio.Semaphore(concurrency)

        async def one(instance_id: str) -> InstanceScan | None:
            info = known.get(instance_id)
            problem = _undeliverable_reason(instance_id, info)
            if problem:
                skipped[instance_id] = problem.replace("not attempted", "not scanned")
                return None
            assert info is not None and info.family is not None
            async with gate:
                try:
                    rows, state = await self._scan_patches(instance_id)
                    installed = await self._query(instance_id, info.family)
                except SsmCommandLost as exc:  # SsmCommandEnded too: the node could not scan or list
                    skipped[instance_id] = f"not scanned: {exc}"
                    return None
            return InstanceScan(
                instance_id=instance_id,
                family=info.family,
                product=info.product,
                patch_group=info.patch_group or (state or {}).get("PatchGroup") or None,
                installed=tuple(installed),
                patches=tuple(rows),
            )

        scans = await asyncio.gather(*(one(i) for i in wanted))
        return build_collection([s for s in scans if s is not None], skipped)

    async def _scan_patches(self, instance_id: str) -> tuple[list[InstancePatch], dict[str, Any] | None]:
        """Run a Scan and read its compliance rows (and patch state, once it reflects this scan)."""
        sent = time.time()
        await self._run(instance_id, PATCH_DOCUMENT, {"Operation": ["Scan"]}, "patchflow patch scan")
        state = await self._fresh_patch_state(instance_id, sent)
        rows = await self._pages(self.ssm.describe_instance_patches, "Patches", InstanceId=instance_id)
        out: list[InstancePatch] = []
        for row in rows:
            package = parse_title(row.get("Title", ""), row.get("KBId", ""))
            out.append(
                InstancePatch(
                    kb_id=row.get("KBId", ""),
                    title=row.get("Title", ""),
                    name=package.name,
                    arch=package.arch,
                    version=package.version,
                    state=row.get("State", ""),
                    classification=row.get("Classification", ""),
                    severity=row.get("Severity", ""),
                    cve_ids=tuple(c for c in row.get("CVEIds", "").split(",") if c),
                    installed_time=row.get("InstalledTime"),
                )
            )
        return out, state

    async def _fresh_patch_state(
        self, instance_id: str, since: float, *, operation: str | None = None
    ) -> dict[str, Any] | None:
        """The instance's ``DescribeInstancePatchStates`` entry once its ``OperationEndTime`` is not older than
        the scan we sent at ``since`` (minus clock skew) and, with ``operation``, it reports that operation: the
        command reports Success when the agent exits, the compliance upload may land a little later, and
        reading rows before it would silently return the previous scan's. After ``not_found_grace_seconds`` the
        rows are read anyway (an older agent may not report patch states at all); None if there is no entry."""
        deadline = time.monotonic() + self.not_found_grace_seconds
        delay = self.poll_initial_seconds
        while True:
            states = (await self._call(self.ssm.describe_instance_patch_states, InstanceIds=[instance_id]))[
                "InstancePatchStates"
            ]
            state: dict[str, Any] | None = states[0] if states else None
            ended = state.get("OperationEndTime") if state else None
            fresh = isinstance(ended, datetime) and ended.timestamp() >= since - 300  # clock skew margin
            if fresh and (operation is None or (state or {}).get("Operation") == operation):
                return state
            if time.monotonic() >= deadline:
                return state
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.poll_max_seconds)

    async def install(
        self,
        instance_id: str,
        patches: Sequence[Package],
        *,
        operation_id: str,
        sources: Sequence[RepoSource] = (),
    ) -> InstallResult:
        """Install the pinned versions through ``AWS-RunPatchBaseline``; idempotent on ``operation_id``.

        :meth:`start_install` then :meth:`finish_install`, in one call.

        Raises:
            InvalidVersionError: a pinned version is not valid for the instance's package family.
            ValueError: ``operation_id`` was already used for another instance, kind, package list or sources.
        """
        return await self._operate("install", instance_id, patches, operation_id, sources)

    async def start_install(
        self,
        instance_id: str,
        patches: Sequence[Package],
        *,
        operation_id: str,
        sources: Sequence[RepoSource] = (),
    ) -> InstallResult | None:
        """Send the install and record its command id; None once it is under way.

        Pre-install package listing, operation record, override list to S3, ``SendCommand``, command id into
        the record — then return without waiting. A second call (a retried activity, another worker) finds
        the recorded command id, or the command itself by its ``Comment`` through ``ListCommands`` when the
        worker died between the send and the record write, and never sends again.

        Returns:
            None: the command is sent (call :meth:`finish_install`). An :class:`InstallResult`: the result
            recorded by an earlier finish; or, with nothing sent and nothing recorded, ``undeliverable`` for
            an offline, unmanaged or unsupported node, or the status of the pre-install listing when the node
            could not even list its packages. A command that ended while nobody waited still gives None
            here: recording its result needs the post-install listing, which belongs to
            :meth:`finish_install`.

        With ``sources`` naming the node's product, what is sent is the *configure* step (the module
        docstring); the install follows in :meth:`finish_install`.

        Raises:
            InvalidVersionError: a pinned version is not valid for the instance's package family.
            ValueError: ``operation_id`` was already used for another instance, kind, package list or sources.
        """
        started = await self._start("install", instance_id, patches, operation_id, sources)
        return started if isinstance(started, InstallResult) else None

    async def finish_install(self, instance_id: str, *, operation_id: str) -> InstallResult:
        """Wait for the command :meth:`start_install` sent, list packages again, record and return the result.

        Polls ``GetCommandInvocation`` with backoff (``InvocationDoesNotExist`` right after the send and
        throttling are waited out). Idempotent: a finished operation returns its recorded result without any
        SSM call; a retry after a crash simply waits again for the same command.

        Raises:
            OperationNotStartedError: no operation record for ``operation_id`` (start_install never ran, or
                returned an immediate result), or the record exists but no command was ever sent.
            ValueError: ``operation_id`` belongs to another instance or to a restore.
            SsmCommandLost: the command's invocation never became visible (retryable).
        """
        record = await self._load(operation_id)
        if record is None:
            raise OperationNotStartedError(
                operation_id, f"no operation record at s3://{self.bucket}/{self._record_key(operation_id)}"
            )
        if (record["instance_id"], record["kind"]) != (instance_id, "install"):
            raise ValueError(
                f"operation_id {operation_id!r} names the {record['kind']} on {record['instance_id']}; "
                f"expected the install on {instance_id}"
            )
        return await self._finish(record)

    async def restore(
        self, instance_id: str, packages: Sequence[Package], *, operation_id: str
    ) -> InstallResult:
        """Downgrade/upgrade to exactly these versions through ``AWS-RunShellScript``; idempotent on
        ``operation_id`` (if ``packages`` names one package twice, the last one wins)."""
        return await self._operate("restore", instance_id, packages, operation_id)

    async def operation_result(self, operation_id: str) -> InstallResult | None:
        """The recorded result; a command that finished while nobody waited is completed here first."""
        record = await self._load(operation_id)
        if record is None or record.get("result") is not None or not record.get("command_id"):
            return _result_from(record) if record else None
        if record.get("sources"):  # finished only once its cleanup step ran (finish_install or cancel)
            return None
        try:
            invocation = await self._call(
                self.ssm.get_command_invocation,
                CommandId=record["command_id"],
                InstanceId=record["instance_id"],
                **_plugin_arg(record["document"]),
            )
        except ClientError as exc:
            if _error_code(exc) == "InvocationDoesNotExist":
                return None
            raise
        if invocation["StatusDetails"] not in _TERMINAL:
            return None
        return await self._complete(record, invocation)

    async def health_check(self, instance_id: str) -> HealthResult:
        """``health_command`` exits 0 → healthy. Without a health command: healthy (documented)."""
        if not self.health_command:
            return HealthResult(instance_id, True, "no health_command configured: healthy by definition")
        info = await self._managed(instance_id)
        if info is None or not info.online:
            return HealthResult(instance_id, False, "not reachable through SSM (offline or not managed)")
        command_id = await self._send(
            instance_id,
            SHELL_DOCUMENT,
            self._shell_parameters([self.health_command]),
            "patchflow health check",
        )
        invocation = await self._wait(command_id, instance_id, None)
        if invocation["StatusDetails"] == "Success":
            return HealthResult(instance_id, True, "health command exited 0")
        detail = invocation.get("StandardErrorContent", "").strip()[:300]
        return HealthResult(
            instance_id,
            False,
            f"health command ended {invocation['StatusDetails']} (exit {invocation.get('ResponseCode')})"
            + (f": {detail}" if detail else ""),
        )

    async def run_command(
        self,
        instance_id: str,
        command: str,
        *,
        timeout_seconds: float,
        operation_id: str,
        document: str | None = None,
        parameters: dict[str, list[str]] | None = None,
    ) -> CommandResult:
        """A lifecycle hook's step through Run Command: ``command`` with AWS-RunShellScript, or the SSM
        ``document`` with ``parameters`` (SendCommand, then GetCommandInvocation until it is terminal).

        Idempotent on ``operation_id``: a retry finds the command an earlier attempt sent (by the digest in its
        Comment, among the instance's commands of that document of the last day) and waits for it instead.
        """
        started = time.monotonic()
        info = await self._managed(instance_id)
        if info is None or not info.online:
            return CommandResult(
                instance_id, -1, _undeliverable_reason(instance_id, info), _since(started), "undeliverable"
            )
        name = document or SHELL_DOCUMENT
        params = (
            dict(parameters or {})
            if document
            else {"commands": [command], "executionTimeout": [str(max(1, int(timeout_seconds)))]}
        )
        comment = command_comment(operation_id, "hook")
        record = {
            "instance_id": instance_id,
            "document": name,
            "comment": comment,
            "created_at": time.time() - 86_400,
        }
        found = await self._find_command(record, marker=comment[:30])
        command_id = found[0] if found else await self._send(instance_id, name, params, comment)
        try:
            invocation = await asyncio.wait_for(
                self._wait(command_id, instance_id, None), timeout=timeout_seconds + 60
            )
        except TimeoutError:
            return CommandResult(
                instance_id,
                -1,
                f"command {command_id} still running after {timeout_seconds:.0f} s",
                _since(started),
                "timed_out",
            )
        details = invocation.get("StatusDetails", "")
        output = (invocation.get("StandardOutputContent") or "") + (
            invocation.get("StandardErrorContent") or ""
        )
        code = invocation.get("ResponseCode", -1)
        if details in ("ExecutionTimedOut", "DeliveryTimedOut"):
            return CommandResult(instance_id, -1, output + f" ({details})", _since(started), "timed_out")
        if details in ("Undeliverable", "Terminated", "Cancelled"):
            return CommandResult(instance_id, -1, output + f" ({details})", _since(started), "undeliverable")
        return CommandResult(
            instance_id, int(code if code is not None else -1), output[-4000:], _since(started)
        )

    async def reboot(self, instance_id: str, *, operation_id: str) -> InstallResult:
        """Reboot the node through ``AWS-RunShellScript`` and the documented reboot exit code, at most once per
        ``operation_id``.

        User Guide, "Handling reboots when running commands" (send-commands-reboot.html): a script that reboots
        a Linux node should ``exit 194``; the SSM Agent then reboots the node and runs the script again when it
        is back, and the script should be idempotent. :func:`reboot_script` records the boot id it started
        from on the node, exits 194, and on the rerun (another boot id) prints the new boot id and exits 0.
        The operation is recorded in S3 like an install (the command id right after the send), so a retry
        waits for the same command instead of sending another.
        """
        record = await self._load(operation_id)
        if record is not None:
            if (record["instance_id"], record["kind"]) != (instance_id, "reboot"):
                raise ValueError(
                    f"operation_id {operation_id!r} was already used for a different request ({record['kind']} "
                    f"on {record['instance_id']}); every reboot of every instance needs its own operation_id"
                )
            recorded = _result_from(record)
            if recorded is not None:
                return recorded
        else:
            problem = _undeliverable_reason(instance_id, await self._managed(instance_id))
            if problem:
                return InstallResult(instance_id, "undeliverable", message=problem)
            record = {
                "version": 1,
                "operation_id": operation_id,
                "kind": "reboot",
                "instance_id": instance_id,
                "document": SHELL_DOCUMENT,
                "comment": command_comment(operation_id),
                "created_at": time.time(),
                "command_id": None,
                "sent_at": None,
                "result": None,
            }
            await self._save(record)
        if not record["command_id"]:
            found = await self._find_command(record)
            if found is None:
                parameters = self._shell_parameters(reboot_script(operation_id))
                found = (
                    await self._send(instance_id, SHELL_DOCUMENT, parameters, record["comment"]),
                    time.time(),
                )
            record["command_id"], record["sent_at"] = found
            await self._save(record)  # first thing after the send: a retry must never send again
        invocation = await self._wait(record["command_id"], instance_id, None)
        details = invocation["StatusDetails"]
        boot_id = next(
            (
                line.split()[-1]
                for line in invocation.get("StandardOutputContent", "").splitlines()
                if line.startswith("boot_id ")
            ),
            "",
        )
        seconds = max(0.0, time.time() - (record.get("sent_at") or record["created_at"]))
        if details == "Success":
            result = InstallResult(
                instance_id,
                "succeeded",
                rebooted=True,
                message=f"SSM Success (command {record['command_id']}): rebooted, boot id {boot_id}",
                duration_seconds=seconds,
                boot_id=boot_id,
            )
        else:
            status = install_status(details)
            result = InstallResult(
                instance_id,
                "failed" if status == "succeeded" else status,
                message=f"SSM {details} (command {record['command_id']}): the reboot did not complete"
                + _output_tail(invocation),
                duration_seconds=seconds,
                pending_reboot=True,
            )
        record["result"] = asdict(result)
        await self._save(record)
        return result

    async def cancel(self, operation_id: str) -> bool:
        """Cancel the command of an unfinished install/restore (best effort, like SSM); True if one was asked.

        An install with Sources is also cleaned up here: no install is sent after the cancel, the running
        step is cancelled, and once it has ended the cleanup step runs and the result (``cancelled``, or what
        the install had already achieved) is recorded — so a cancelled wave leaves no Sources on the node.
        """
        record = await self._load(operation_id)
        if record is None or record.get("result") is not None:
            return False
        if record.get("sources"):
            # A marker of its own (not a field of the record), so a finisher saving its copy of the record
            # cannot erase it.
            await self._call(
                self.s3.put_object,
                Bucket=self.bucket,
                Key=self._record_key(operation_id) + ".cancel",
                Body=b"cancel requested\n",
            )
            for key in ("command_id", "configure_command_id"):
                if record.get(key):
                    await self._cancel_command(record[key], record["instance_id"])
            await self._finish(record)
            return True
        if not record.get("command_id"):
            return False
        await self._cancel_command(record["command_id"], record["instance_id"])
        return True

    async def _cancel_command(self, command_id: str, instance_id: str) -> None:
        try:
            await self._call(self.ssm.cancel_command, CommandId=command_id, InstanceIds=[instance_id])
        except ClientError as exc:  # already ended: SSM refuses to cancel it, nothing to do
            if _error_code(exc) not in ("InvalidCommandId", "InvalidInstanceId", "DuplicateInstanceId"):
                raise

    # --------------------------------------------------------------------------------- operations

    async def _operate(
        self,
        kind: str,
        instance_id: str,
        packages: Sequence[Package],
        operation_id: str,
        sources: Sequence[RepoSource] = (),
    ) -> InstallResult:
        started = await self._start(kind, instance_id, packages, operation_id, sources)
        return started if isinstance(started, InstallResult) else await self._finish(started)

    async def _start(
        self,
        kind: str,
        instance_id: str,
        packages: Sequence[Package],
        operation_id: str,
        sources: Sequence[RepoSource] = (),
    ) -> InstallResult | dict[str, Any]:
        """Everything up to and including the send: the operation record (with its command id), or an
        immediate result (recorded earlier, or nothing could be sent)."""
        requested = [s.to_json() for s in sources]
        record = await self._load(operation_id)
        if record is not None:
            request = _request(record["family"], kind, packages)
            if (
                record["instance_id"],
                record["kind"],
                record["request"],
                record.get("requested_sources", []),
            ) != (
                instance_id,
                kind,
                request,
                requested,
            ):
                raise ValueError(
                    f"operation_id {operation_id!r} was already used for a different request ({record['kind']} "
                    f"on {record['instance_id']}); every {kind} of every instance needs its own operation_id"
                )
            recorded = _result_from(record)
            if recorded is not None:
                return recorded
        else:
            info = await self._managed(instance_id)
            problem = _undeliverable_reason(instance_id, info)
            if problem:
                return InstallResult(instance_id, "undeliverable", message=problem)
            assert info is not None and info.family is not None
            request = _request(info.family, kind, packages)  # validates versions before anything is sent
            try:
                before = await self._query(instance_id, info.family)
            except SsmCommandEnded as exc:  # nothing was changed; the node cannot even list its packages
                return InstallResult(
                    instance_id, install_status(exc.status_details), message=f"{kind} not attempted: {exc}"
                )
            pending_before = await self._pending_reboot_count(instance_id) if kind == "install" else 0
            record = {
                "version": 1,
                "operation_id": operation_id,
                "kind": kind,
                "instance_id": instance_id,
                "family": info.family,
                "request": request,
                "document": PATCH_DOCUMENT if kind == "install" else SHELL_DOCUMENT,
                "comment": command_comment(operation_id),
                "reboot_option": self.reboot_option,
                "before": [asdict(p) for p in before],
                "pending_reboot_before": pending_before,
                "created_at": time.time(),
                "command_id": None,
                "sent_at": None,
                "result": None,
            }
            if requested:
                record["requested_sources"] = requested
                used = sources_for(sources, info.product) if kind == "install" else []
                record["product"] = info.product
                record["sources"] = [s.to_json() for s in used]
            await self._save(record)
        if record.get("sources"):
            await self._send_step(record, "configure")  # the install follows in _finish, once it succeeded
            return record
        if not record["command_id"]:
            found = await self._find_command(record)
            if found is None:
                parameters = await self._parameters(record)
                found = (
                    await self._send(instance_id, record["document"], parameters, record["comment"]),
                    time.time(),
                )
            record["command_id"], record["sent_at"] = found
            await self._save(record)  # first thing after the send: a retry must never send again
        return record

    async def _finish(self, record: dict[str, Any]) -> InstallResult:
        """Wait for the record's command and complete the record; never sends the operation's command (with
        Sources: sends the install once configured, and the cleanup step — :meth:`_finish_with_sources`)."""
        recorded = _result_from(record)
        if recorded is not None:
            return recorded
        if record.get("sources"):
            return await self._finish_with_sources(record)
        if not record["command_id"]:  # the starter died after the send, before recording the id
            found = await self._find_command(record)
            if found is None:
                raise OperationNotStartedError(
                    record["operation_id"], "its record exists but no command was ever sent"
                )
            record["command_id"], record["sent_at"] = found
            await self._save(record)
        invocation = await self._wait(
            record["command_id"], record["instance_id"], _plugin_arg(record["document"]).get("PluginName")
        )
        return await self._complete(record, invocation)

    async def _cancel_requested(self, operation_id: str) -> bool:
        try:
            await self._call(
                self.s3.head_object, Bucket=self.bucket, Key=self._record_key(operation_id) + ".cancel"
            )
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404", "NotFound"):
                return False
            raise
        return True

    async def _finish_with_sources(self, record: dict[str, Any]) -> InstallResult:
        """configure → install → cleanup; the cleanup runs whatever happened before it (nothing may stay)."""
        if not record.get("configure_command_id") and await self._cancel_requested(record["operation_id"]):
            configure = command_comment(record["operation_id"], SOURCE_STEPS["configure"])[:39]
            found = await self._find_command(record, document=SHELL_DOCUMENT, marker=configure)
            if found is None:  # cancelled before anything reached the node: nothing to undo
                result = InstallResult(
                    record["instance_id"], "cancelled", message="cancelled before anything was sent"
                )
                return await self._record_result(record, result)
        configured = await self._step(record, "configure")
        if configured["StatusDetails"] != "Success":
            cleaned = await self._step(record, "cleanup")
            return await self._record_unconfigured(record, configured, cleaned)
        invocation: dict[str, Any] | None = None
        if not record["command_id"]:
            found = await self._find_command(record)
            if found is None and not await self._cancel_requested(record["operation_id"]):
                parameters = await self._parameters(record)
                found = (
                    await self._send(
                        record["instance_id"], record["document"], parameters, record["comment"]
                    ),
                    time.time(),
                )
            if found is not None:
                record["command_id"], record["sent_at"] = found
                await self._save(record)
                if await self._cancel_requested(record["operation_id"]):
                    await self._cancel_command(record["command_id"], record["instance_id"])
        if record["command_id"]:
            invocation = await self._wait(record["command_id"], record["instance_id"], PATCH_PLUGIN)
        cleaned = await self._step(record, "cleanup")
        if invocation is None:  # cancelled before the install was sent
            invocation = {"StatusDetails": "Cancelled"}
        return await self._complete(record, invocation, cleaned)

    async def _send_step(self, record: dict[str, Any], step: str) -> str:
        """The command id of a Sources step, sending it unless an earlier attempt did (found by its Comment).

        Two finishers of one operation in this process (the wave's wait and a cancel) take turns: the second
        finds the first's command instead of sending the step again."""
        key = f"{step}_command_id"
        if record.get(key):
            return str(record[key])
        async with _step_lock(f"{record['operation_id']}/{step}"):
            return await self._send_step_once(record, step, key)

    async def _send_step_once(self, record: dict[str, Any], step: str, key: str) -> str:
        comment = command_comment(record["operation_id"], SOURCE_STEPS[step])
        found = await self._find_command(record, document=SHELL_DOCUMENT, marker=comment[:39])
        if found is None:
            sources = [RepoSource.from_json(s) for s in record["sources"]]
            lines = (
                configure_script(record["family"], record["operation_id"], sources)
                if step == "configure"
                else cleanup_script(record["family"], record["operation_id"])
            )
            found = (
                await self._send(
                    record["instance_id"], SHELL_DOCUMENT, self._shell_parameters(lines), comment
                ),
                time.time(),
            )
        record[key] = found[0]
        await self._save(record)  # first thing after the send: a retry must never send again
        return found[0]

    async def _step(self, record: dict[str, Any], step: str) -> dict[str, Any]:
        """Send (once) and wait for a Sources step; its final invocation."""
        command_id = await self._send_step(record, step)
        return await self._wait(command_id, record["instance_id"], None)

    async def _record_unconfigured(
        self, record: dict[str, Any], configured: dict[str, Any], cleaned: dict[str, Any]
    ) -> InstallResult:
        """The configure step did not succeed: nothing was installed; say why and whether cleanup ran."""
        details = configured["StatusDetails"]
        status = install_status(details)
        stderr = configured.get("StandardErrorContent", "").strip()
        what = "were being configured, cancelled" if status == "cancelled" else "could not be configured"
        message = (
            f"SSM {details} (command {record['configure_command_id']}): the baseline Sources "
            f"({_source_names(record)}) {what} on {record['instance_id']}"
            + (f": {stderr[-400:]}" if stderr else "")
            + "; nothing was installed"
            + _cleanup_note(record, cleaned)
        )
        if cleaned["StatusDetails"] != "Success" and status in ("succeeded", "cancelled"):
            status = "failed"
        result = InstallResult(record["instance_id"], status, message=message)
        return await self._record_result(record, result)

    async def _parameters(self, record: dict[str, Any]) -> dict[str, list[str]]:
        family = record["family"]
        packages = [Package(*p) for p in record["request"]]
        if record["kind"] == "restore":
            return self._shell_parameters(restore_script(family, packages))
        body = override_list_yaml(family, packages).encode()
        key = f"{self.prefix}/override-lists/{hashlib.sha256(body).hexdigest()[:32]}.yaml"
        await self._call(
            self.s3.put_object, Bucket=self.bucket, Key=key, Body=body, ContentType="application/yaml"
        )
        return {
            "Operation": ["Install"],
            "SnapshotId": [snapshot_id(record["operation_id"])],
            "InstallOverrideList": [f"s3://{self.bucket}/{key}"],
            "RebootOption": [record["reboot_option"]],
        }

    async def _complete(
        self, record: dict[str, Any], invocation: dict[str, Any], cleaned: dict[str, Any] | None = None
    ) -> InstallResult:
        instance_id, details = record["instance_id"], invocation["StatusDetails"]
        status = install_status(details)
        changed: tuple[PackageChange, ...] = ()
        if status == "succeeded":
            before = [Package(**p) for p in record["before"]]
            changed = _changes(before, await self._query(instance_id, record["family"]))
        verb = "upgraded" if record["kind"] == "install" else "restored"
        rebooted = pending_reboot = False
        if status == "succeeded" and record["kind"] == "install":
            rebooted, pending_reboot = await self._reboot_outcome(record, changed)
        message = (
            f"SSM {details} (command {record['command_id']})"
            if record["command_id"]
            else "cancelled before the install was sent"
        )
        if status == "succeeded":
            message += f": {len(changed)} package(s) {verb}" + (", rebooted" if rebooted else "")
            message += ", reboot pending" if pending_reboot else ""
        else:
            message += _output_tail(invocation)
        if record.get("requested_sources") and not record.get("sources"):
            named = sorted({p for s in record["requested_sources"] for p in s["Products"]})
            message += (
                f"; from the node's own repositories: no baseline Source names its product "
                f"{record.get('product') or '(unknown)'} (they name {', '.join(named)})"
            )
        if cleaned is not None:
            message += f"; from the baseline Sources {_source_names(record)}" + _cleanup_note(record, cleaned)
            if cleaned["StatusDetails"] != "Success" and status in ("succeeded", "cancelled"):
                status = "failed"  # the node is not as promised: the Sources are still configured there
        result = InstallResult(
            instance_id,
            status,
            changed=changed,
            rebooted=rebooted,
            message=message,
            duration_seconds=max(0.0, time.time() - record["sent_at"]) if record.get("sent_at") else 0.0,
            pending_reboot=pending_reboot,
        )
        return await self._record_result(record, result)

    async def _record_result(self, record: dict[str, Any], result: InstallResult) -> InstallResult:
        """Record the result — unless another finisher already did (a cancel and a wait both complete an install
        with Sources): then that one stands. Two finishers at the very same moment can both write; their results
        are built from the same commands and differ at most in ``duration_seconds``."""
        if record.get("sources"):
            stored = await self._load(record["operation_id"])
            recorded = _result_from(stored) if stored else None
            if recorded is not None:
                return recorded
        record["result"] = asdict(result)
        await self._save(record)
        return result

    async def _reboot_outcome(
        self, record: dict[str, Any], changed: Sequence[PackageChange]
    ) -> tuple[bool, bool]:
        """(rebooted, pending reboot) of a successful install, from what SSM reports.

        User Guide, AWS-RunPatchBaseline, ``RebootOption``: ``RebootIfNeeded`` reboots when the Install installed
        anything or found patches ``INSTALLED_PENDING_REBOOT`` (left by an earlier ``NoReboot`` install: the
        count recorded before the send). Afterwards the instance's patch state for this Install says whether
        patches still wait for a reboot (``NoReboot``, or a reboot that did not happen).
        """
        state = await self._fresh_patch_state(
            record["instance_id"], record.get("sent_at") or record["created_at"], operation="Install"
        )
        pending = bool(
            state and state.get("Operation") == "Install" and state.get("InstalledPendingRebootCount")
        )
        wanted = bool(changed) or record.get("pending_reboot_before", 0) > 0
        return record["reboot_option"] == "RebootIfNeeded" and wanted and not pending, pending

    async def _pending_reboot_count(self, instance_id: str) -> int:
        """``InstalledPendingRebootCount`` of the instance's last patch operation (0 when it never reported)."""
        states = (await self._call(self.ssm.describe_instance_patch_states, InstanceIds=[instance_id]))[
            "InstancePatchStates"
        ]
        return int(states[0].get("InstalledPendingRebootCount", 0)) if states else 0

    async def _find_command(
        self, record: dict[str, Any], *, document: str | None = None, marker: str | None = None
    ) -> tuple[str, float] | None:
        """(command id, sent at) of the command an earlier attempt sent for this operation, if any (matched on
        the Comment digest — and the step marker for the Sources steps — among commands of its document)."""
        marker = marker or record["comment"][:30]  # "patchflow <digest>"
        since = datetime.fromtimestamp(record["created_at"] - 300, UTC)  # clock skew margin
        commands = await self._pages(
            self.ssm.list_commands,
            "Commands",
            InstanceId=record["instance_id"],
            Filters=[
                {"key": "DocumentName", "value": document or record["document"]},
                {"key": "InvokedAfter", "value": since.strftime("%Y-%m-%dT%H:%M:%SZ")},
            ],
        )
        mine = [c for c in commands if c.get("Comment", "").startswith(marker)]
        if not mine:
            return None
        first = min(mine, key=lambda c: c["RequestedDateTime"])
        return str(first["CommandId"]), first["RequestedDateTime"].timestamp()

    # ------------------------------------------------------------------------------- commands

    def _shell_parameters(self, lines: list[str]) -> dict[str, list[str]]:
        return {"commands": lines, "executionTimeout": [str(self.execution_timeout_seconds)]}

    async def _send(
        self, instance_id: str, document: str, parameters: dict[str, list[str]], comment: str
    ) -> str:
        kwargs: dict[str, Any] = {
            "InstanceIds": [instance_id],
            "DocumentName": document,
            "Parameters": parameters,
            "Comment": comment[:100],
            "TimeoutSeconds": self.delivery_timeout_seconds,
            "MaxConcurrency": "1",
            "MaxErrors": "0",
            "OutputS3BucketName": self.bucket,
            "OutputS3KeyPrefix": f"{self.prefix}/command-output",
        }
        if self.cloudwatch_log_group:
            kwargs["CloudWatchOutputConfig"] = {
                "CloudWatchOutputEnabled": True,
                "CloudWatchLogGroupName": self.cloudwatch_log_group,
            }
        assert len(kwargs["InstanceIds"]) <= MAX_INSTANCES_PER_COMMAND
        response = await self._call(self.ssm.send_command, **kwargs)
        return str(response["Command"]["CommandId"])

    async def _wait(self, command_id: str, instance_id: str, plugin: str | None) -> dict[str, Any]:
        """Poll until the invocation is terminal, with backoff; tolerate InvocationDoesNotExist briefly.

        Throttling that outlasts botocore's own retries only delays the next poll: a wait may last an hour,
        and failing it over a busy minute would only make the activity retry and wait again."""
        delay = self.poll_initial_seconds
        first_missing: float | None = None
        while True:
            try:
                invocation: dict[str, Any] = await self._call(
                    self.ssm.get_command_invocation,
                    CommandId=command_id,
                    InstanceId=instance_id,
                    **({"PluginName": plugin} if plugin else {}),
                )
            except ClientError as exc:
                code = _error_code(exc)
                if code in _THROTTLED:  # botocore's retries gave up; a poll can simply come later
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, self.poll_max_seconds)
                    continue
                if code != "InvocationDoesNotExist":
                    raise
                first_missing = first_missing or time.monotonic()
                if time.monotonic() - first_missing > self.not_found_grace_seconds:
                    raise SsmCommandLost(
                        f"command {command_id} has no invocation on {instance_id} after "
                        f"{self.not_found_grace_seconds:.0f}s; it was probably never delivered"
                    ) from exc
            else:
                if invocation.get("StatusDetails") in _TERMINAL:
                    return invocation
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, self.poll_max_seconds)

    async def _run(
        self, instance_id: str, document: str, parameters: dict[str, list[str]], comment: str
    ) -> dict[str, Any]:
        """Send a helper command (listing, scan) and wait for it; anything but Success raises."""
        command_id = await self._send(instance_id, document, parameters, comment)
        invocation = await self._wait(command_id, instance_id, _plugin_arg(document).get("PluginName"))
        details = invocation["StatusDetails"]
        if details != "Success":
            stderr = invocation.get("StandardErrorContent", "")[:300]
            raise SsmCommandEnded(
                f"{comment} on {instance_id} ended {details} (command {command_id}): {stderr}", details
            )
        return invocation

    async def _query(self, instance_id: str, family: str) -> list[Package]:
        parameters = self._shell_parameters(package_query_script(family))
        invocation = await self._run(instance_id, SHELL_DOCUMENT, parameters, "patchflow package query")
        command_id = invocation["CommandId"]
        stdout: str = invocation.get("StandardOutputContent", "")
        if len(stdout) >= OUTPUT_LIMIT:  # truncated: the whole listing is in S3
            key = f"{self.prefix}/command-output/{command_id}/{instance_id}/awsrunShellScript/0.awsrunShellScript/stdout"
            body = await self._call(self.s3.get_object, Bucket=self.bucket, Key=key)
            stdout = (await asyncio.to_thread(body["Body"].read)).decode()
        return parse_package_query(family, stdout)

    # ------------------------------------------------------------------------------ instances

    async def _managed(self, instance_id: str) -> InstanceInfo | None:
        rows = (
            await self._call(
                self.ssm.describe_instance_information,
                Filters=[{"Key": "InstanceIds", "Values": [instance_id]}],
            )
        )["InstanceInformationList"]
        return _info(rows[0], {}) if rows else None

    async def _require_managed(self, instance_id: str) -> InstanceInfo:
        info = await self._managed(instance_id)
        problem = _undeliverable_reason(instance_id, info)
        if problem:
            raise SsmCommandLost(problem)
        assert info is not None
        return info

    # ------------------------------------------------------------------------------ plumbing

    async def _call(self, method: Callable[..., Any], **kwargs: Any) -> Any:
        await self._limiter.wait()
        return await asyncio.to_thread(method, **kwargs)

    async def _pages(self, method: Callable[..., Any], key: str, **kwargs: Any) -> list[Any]:
        items: list[Any] = []
        token: str | None = None
        while True:
            page = await self._call(method, **kwargs, **({"NextToken": token} if token else {}))
            items += page.get(key, [])
            token = page.get("NextToken")
            if not token:
                return items

    def _record_key(self, operation_id: str) -> str:
        return f"{self.prefix}/operations/{_digest(operation_id)}.json"

    async def _load(self, operation_id: str) -> dict[str, Any] | None:
        try:
            response = await self._call(
                self.s3.get_object, Bucket=self.bucket, Key=self._record_key(operation_id)
            )
        except ClientError as exc:
            if _error_code(exc) in ("NoSuchKey", "404"):
                return None
            raise
        record: dict[str, Any] = json.loads(await asyncio.to_thread(response["Body"].read))
        if record.get("operation_id") != operation_id:  # a digest collision is a bug worth stopping for
            raise RuntimeError(
                f"operation record {self._record_key(operation_id)} belongs to another operation"
            )
        return record

    async def _save(self, record: dict[str, Any]) -> None:
        await self._call(
            self.s3.put_object,
            Bucket=self.bucket,
            Key=self._record_key(record["operation_id"]),
            Body=json.dumps(record, sort_keys=True).encode(),
            ContentType="application/json",
        )


def _info(row: dict[str, Any], tags: dict[str, str], zone: str | None = None) -> InstanceInfo:
    return InstanceInfo(
        instance_id=row["InstanceId"],
        tags=tags,
        family=platform_family(row.get("PlatformName")),
        product=platform_product(row.get("PlatformName"), row.get("PlatformVersion")),
        online=row.get("PingStatus") == "Online",
        availability_zone=zone,
    )


def _undeliverable_reason(instance_id: str, info: InstanceInfo | None) -> str:
    if info is None:
        return f"{instance_id} is not a managed instance (no SSM agent registered): not attempted"
    if not info.online:
        return f"{instance_id} is not online in SSM (PingStatus is not Online): not attempted"
    if info.family is None:
        return f"{instance_id} runs a platform patchflow cannot patch (Linux deb/rpm only): not attempted"
    return ""


def _request(family: str, kind: str, packages: Sequence[Package]) -> list[list[str]]:
    """The normalised request as stored in the record: JSON lists, so a retry compares equal."""
    if kind == "install":
        chosen = _pinned(family, packages)
    else:
        last: dict[tuple[str, str], Package] = {}
        for package in packages:
            versions.validate(family, package.version)
            last[(package.name, package.arch)] = package
        chosen = [last[key] for key in sorted(last)]
    return [[p.name, p.arch, p.version] for p in chosen]


def _plugin_arg(document: str) -> dict[str, str]:
    return {"PluginName": PATCH_PLUGIN} if document == PATCH_DOCUMENT else {}


def _result_from(record: dict[str, Any]) -> InstallResult | None:
    data = dict(record.get("result") or {})
    if not data:
        return None
    changed = tuple(PackageChange(**c) for c in data.pop("changed", []))
    return InstallResult(changed=changed, **data)


def _source_names(record: dict[str, Any]) -> str:
    return ", ".join(s["Name"] for s in record.get("sources") or [])


_STEP_LOCKS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, tuple[asyncio.Lock, int]]] = (
    weakref.WeakKeyDictionary()
)


@contextlib.asynccontextmanager
async def _step_lock(name: str) -> AsyncIterator[None]:
    """Hold the lock of one Sources step of one operation, on the running event loop (locks are bound to a
    loop); it is forgotten once nobody holds or awaits it, so a long-lived worker keeps none."""
    locks = _STEP_LOCKS.setdefault(asyncio.get_running_loop(), {})
    lock, users = locks.get(name, (asyncio.Lock(), 0))
    locks[name] = (lock, users + 1)
    try:
        async with lock:
            yield
    finally:
        lock, users = locks[name]
        if users == 1:
            del locks[name]
        else:
            locks[name] = (lock, users - 1)


def _cleanup_note(record: dict[str, Any], cleaned: dict[str, Any]) -> str:
    if cleaned["StatusDetails"] == "Success":
        return "; the Sources were removed again (the node's own repositories are as before)"
    stderr = cleaned.get("StandardErrorContent", "").strip()
    return (
        f"; the Sources could NOT be removed (cleanup command {record.get('cleanup_command_id')} ended "
        f"{cleaned['StatusDetails']}{': ' + stderr[-300:] if stderr else ''}): run that command's commands "
        f"again on the node (`aws ssm send-command --document-name AWS-RunShellScript`) once it is reachable"
    )


def _since(start: float) -> float:
    return time.monotonic() - start
