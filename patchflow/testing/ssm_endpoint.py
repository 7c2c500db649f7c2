"""A faithful AWS Systems Manager endpoint for TESTS AND DEMOS. It patches nothing but the real hosts it is given.

moto serves EC2, S3 and SSM's parameter and baseline APIs well, but not the Run Command lifecycle nor Patch
Manager (``../shared/reference/libraries.md`` §1): every command is instantly ``Success``, ``SendCommand``
with ``InstanceIds`` fans out to *every* instance, and ``ListCommandInvocations``, ``CancelCommand``,
``DescribeInstanceInformation`` and ``DescribeInstancePatches`` do not exist. :class:`SsmEndpoint` starts
moto's :class:`~moto.server.ThreadedMotoServer` on ``127.0.0.1`` (a free port) and answers those SSM actions
itself, so code under test talks to it with real boto3 over real HTTP exactly as it would talk to AWS:

* **Managed instances** are registered from Python (:meth:`SsmEndpoint.register_instance`): EC2 ``i-`` nodes
  also exist in moto's EC2 with their tags; hybrid ``mi-`` nodes carry their tags here
  (``ListTagsForResource`` with ``ResourceType=ManagedInstance``). Each has a platform, installed packages
  and the updates its repositories offer.
* **Commands** (``SendCommand``) honour ``InstanceIds`` exactly (and ``Targets`` ``InstanceIds`` / ``tag:K`` /
  ``resource-groups:Name``). Every invocation is invisible for :attr:`Timings.not_found_seconds`
  (``GetCommandInvocation`` answers ``InvocationDoesNotExist``, ``ListCommandInvocations`` leaves it out: SSM's
  eventual consistency), then ``Pending``, ``InProgress`` and finally terminal. On a simulated instance progress
  is computed from the clock on every request, so nothing runs in the background (on a real host the run
  does); a command finishes on the instance whether or not anybody polls. The command as a whole follows the User Guide's "Understanding command statuses": Success,
  Delivery Timed Out, Execution Timed Out, Failed, Incomplete, Cancelled, Rate Exceeded (above
  ``pending_invocation_limit``), Access Denied (a resource group registered ``accessible=False``) and No
  Instances In Tag.
* **Responses** are botocore's SSM shapes (``tests/executors/test_ssm_endpoint_shapes.py`` checks every
  operation's raw JSON against the model) except where AWS documents otherwise: execution times as
  ``2021-04-08T16:13:07.913Z``, ``ExecutionElapsedTime`` as ``PT0.203S``, ``OutputS3BucketName: ""`` without
  a bucket. Members without a value are left out.
* **Documents**: ``AWS-RunPatchBaseline`` ``Scan`` records patch compliance (``DescribeInstancePatches``,
  ``DescribeInstancePatchStates``); ``Install`` reads the ``InstallOverrideList`` YAML from (moto's) S3 and
  upgrades installed packages accordingly. An Install that ends ``Failed`` or ``Execution Timed Out`` leaves the
  packages it would have upgraded ``FAILED`` (instead of ``MISSING``) until they change; ``NoReboot`` leaves
  what it upgraded ``INSTALLED_PENDING_REBOOT``. ``AWS-RunShellScript`` understands the few commands patchflow
  sends (a ``dpkg-query``/``rpm -qa`` package listing, ``apt-get install --allow-downgrades name=version``,
  ``dnf``/``yum downgrade NEVRA``, ``exit N``; ``exit 194`` reboots the node, as the agent does, and the
  rerun of the idempotent reboot script succeeds with ``boot_id …``); other lines succeed and do nothing.
* **Real hosts** (:meth:`SsmEndpoint.register_ssh_host`, :meth:`SsmEndpoint.register_ssh_inventory`,
  ``--ssh-inventory``): a managed instance backed by a machine reached over SSH — the lab's Debian hosts — on
  which commands really run, in the background (:mod:`patchflow.testing.ssm_agent`): ``AWS-RunShellScript``
  runs the script (``ResponseCode`` its exit status, ``Execution Timed Out``/137 past ``executionTimeout``),
  ``AWS-RunPatchBaseline`` ``Install`` installs exactly the override list's versions with apt and reboots
  the host as ``RebootIfNeeded`` says, ``Scan`` reads the host's dpkg database and apt indexes (approved: the
  security pockets' versions, as AWS's default Debian baseline). ``PingStatus`` follows the host's sshd
  (``ConnectionLost`` while it reboots); an invocation is ``Pending`` until the host answers.
* **Scripted outcomes** per instance (:meth:`SsmEndpoint.script`): ``fail``, ``timeout`` (Execution Timed
  Out), ``undeliverable``, ``delivery_timeout``, ``invalid_platform``, ``access_denied``, ``slow``.
* **Throttling**: above :attr:`SsmEndpoint.throttle_rate` SSM requests per second (a sliding one-second
  window), requests answer ``ThrottlingException: Rate exceeded`` as AWS does.
* ``CancelCommand``, ``ListCommands`` (with ``Comment``, filters and pagination) and command output written to
  ``OutputS3BucketName``/``OutputS3KeyPrefix`` when that bucket exists (``GetCommandInvocation`` returns only
  the first :attr:`SsmEndpoint.output_limit` characters, like AWS's 24,000).

Semantics left out on purpose (documented so nobody relies on them) for simulated instances (SSH-backed ones
do what their package manager does): patch baselines are not evaluated here —
every update an instance is offered counts as approved: ``Install`` without an override list installs all of
them, compliance reports an installed version some update offered as ``INSTALLED`` and any other installed
package as ``INSTALLED_OTHER`` (never ``INSTALLED_REJECTED``; ``CriticalNonCompliantCount`` is 0, as under a
predefined baseline's UNSPECIFIED compliance level); a Scan without ``SnapshotId`` gets a snapshot id of its own
per node, as AWS's does; ``MaxConcurrency``/``MaxErrors`` are echoed but every invocation is dispatched at once
(``MaxErrors`` still decides the command's status); no reboot really happens (``RebootIfNeeded`` clears
``INSTALLED_PENDING_REBOOT`` and counts one in :meth:`SsmEndpoint.reboots` when the Install installed something
or found pending patches); dependency resolution does not exist.

How it hooks into moto: the SSM response class is patched once per process (moto's documented way to fill
gaps, libraries.md §1.2). A patched action looks at the request's ``Host`` port; requests to a port no
:class:`SsmEndpoint` owns get moto's own behaviour, so other moto users in the process are unaffected. moto's
EC2 and S3 state is process-global: endpoints started one after another begin from a reset moto; two running
at once share EC2/S3 (their SSM state is separate).

Use it as a context manager::

    with SsmEndpoint() as endpoint:
        endpoint.register_instance("mi-0123456789abcdef0", tags={"Patch Group": "dev"},
                                   packages=[Package("openssl", "amd64", "3.0.2-0ubuntu1.10")],
                                   available=[Package("openssl", "amd64", "3.0.2-0ubuntu1.16")])
        ssm = endpoint.client("ssm")
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import functools
import hashlib
import json
import math
import re
import secrets
import shlex
import threading
import time
import uuid
from collections import Counter, deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Final, Literal

import boto3
import yaml
from botocore.config import Config
from botocore.exceptions import ClientError

from patchflow.core import versions
from patchflow.errors import PatchflowError
from patchflow.executors.base import Package
from patchflow.executors.simulated.fleet import Fleet

if TYPE_CHECKING:  # imported when the first SSH-backed instance is registered
    from patchflow.executors.ssh import SshHost, SshInventory
    from patchflow.testing.ssm_agent import HostPackages, RunResult, SshAgent

__all__ = [
    "ACCOUNT_ID",
    "AvailablePatch",
    "Outcome",
    "ScriptTarget",
    "SsmEndpoint",
    "Timings",
    "ssh_instance_id",
]

ACCOUNT_ID: Final = "123456789012"
"""moto's account for every access key."""

Outcome = Literal[
    "success",
    "fail",
    "timeout",
    "undeliverable",
    "delivery_timeout",
    "invalid_platform",
    "access_denied",
    "slow",
]
ScriptTarget = Literal["install", "scan", "query", "restore", "shell", "any"]
"""Which commands a scripted outcome applies to: ``AWS-RunPatchBaseline`` Install or Scan, or an
``AWS-RunShellScript`` that lists packages (query), downgrades them (restore) or does anything else (shell)."""

_PATCH_DOC: Final = "AWS-RunPatchBaseline"
_SHELL_DOC: Final = "AWS-RunShellScript"
_PATCH_PLUGINS: Final = ("PatchWindows", "PatchLinux", "PatchMacOS")
_SHELL_PLUGIN: Final = "aws:runShellScript"
_GUID_RE: Final = re.compile(
    r"^$|^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
_OVERRIDE_RE: Final = re.compile(r"^https://.+$|^s3://([^/]+)/(.*?([^/]+))$")
_MAX_ERRORS_RE: Final = re.compile(r"^([1-9][0-9]*|[0]|[1-9][0-9]%|[0-9]%|100%)$")
_DEB_PLATFORMS: Final = ("ubuntu", "debian", "raspbian")
_RPM_PLATFORMS: Final = (
    "amazon linux",
    "red hat",
    "centos",
    "rocky",
    "alma",
    "oracle",
    "fedora",
    "suse",
    "sles",
)

#: (Status, StatusDetails, ResponseCode) of each scripted failure outcome.
_FAILURES: Final[dict[str, tuple[str, str, int]]] = {
    "fail": ("Failed", "Failed", 1),
    "timeout": ("TimedOut", "Execution Timed Out", 1),
    "undeliverable": ("Failed", "Undeliverable", -1),
    "delivery_timeout": ("TimedOut", "Delivery Timed Out", -1),
    "invalid_platform": ("Failed", "Invalid Platform", -1),
    "access_denied": ("Failed", "Access Denied", -1),
}
#: StatusDetails that count as command errors (SSM: only Failed and Execution Timed Out).
_ERROR_DETAILS: Final = frozenset({"Failed", "Execution Timed Out"})
#: Invocations that never reached the node. The first three "contribute to whether the parent command status is
#: Success or Failed" but never count as errors; Delivery Timed Out makes it Delivery Timed Out or Incomplete.
_NEVER_SENT: Final = frozenset({"Undeliverable", "Invalid Platform", "Access Denied"})
_NOT_DELIVERED: Final = _NEVER_SENT | {"Delivery Timed Out"}
#: Patch states that make a node NON_COMPLIANT (User Guide, "Patch compliance state values").
_NON_COMPLIANT: Final = frozenset({"MISSING", "FAILED", "INSTALLED_PENDING_REBOOT", "INSTALLED_REJECTED"})
#: The command's coarse ``Status`` for each of its ``StatusDetails``. The model's ``CommandStatus`` enum
#: (Pending, InProgress, Success, Cancelled, Failed, TimedOut, Cancelling) is not mapped by AWS's documentation;
#: a detailed status that is not Success is never reported as Success here.
_COMMAND_STATUS: Final = {
    "Pending": "Pending",
    "In Progress": "InProgress",
    "Success": "Success",
    "Delivery Timed Out": "TimedOut",
    "Execution Timed Out": "TimedOut",
    "Failed": "Failed",
    "Incomplete": "Failed",
    "Cancelled": "Cancelled",
    "Rate Exceeded": "Failed",
    "Access Denied": "Failed",
    "No Instances In Tag": "Failed",
}


@dataclass(frozen=True)
class AvailablePatch:
    """An update an instance's repositories offer (what a Scan reports ``MISSING``)."""

    name: str
    arch: str
    version: str
    classification: str = "Security"
    severity: str = "Important"
    cve_ids: tuple[str, ...] = ()
    security: bool | None = None
    """A security update (``SecurityNonCompliantCount``); None: when ``classification`` is ``Security``. Apt
    rows carry the Debian section as their classification, so SSH-backed hosts say it here."""

    @property
    def is_security(self) -> bool:
        return self.classification == "Security" if self.security is None else self.security


@dataclass
class Timings:
    """How long each invocation phase lasts, in seconds of wall time (small defaults suit tests)."""

    not_found_seconds: float = 0.2
    """After a send, ``GetCommandInvocation`` answers ``InvocationDoesNotExist`` this long."""
    pending_seconds: float = 0.1
    """Pending → InProgress (the agent picked the command up)."""
    run_seconds: float = 0.3
    """InProgress → terminal, unless a script gives its own ``seconds``."""


class _ApiError(Exception):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code, self.message, self.status = code, message, status


@dataclass
class _Script:
    outcome: Outcome
    seconds: float | None
    applies_to: ScriptTarget
    remaining: int | None


@dataclass
class _Instance:
    instance_id: str
    hybrid: bool
    tags: dict[str, str]
    """Hybrid nodes only; EC2 tags live in moto's EC2."""
    platform_name: str
    platform_version: str
    family: str | None
    packages: dict[tuple[str, str], str]
    available: list[AvailablePatch]
    online: bool
    registered_at: datetime
    installed_at: dict[tuple[str, str], datetime] = field(default_factory=dict)
    scripts: list[_Script] = field(default_factory=list)
    pending_reboot: set[tuple[str, str]] = field(default_factory=set)
    reboots: int = 0
    """Reboots ``AWS-RunPatchBaseline`` Install made (RebootIfNeeded)."""
    failed: dict[tuple[str, str], str] = field(default_factory=dict)
    """Package → the version a failed Install could not install: reported FAILED until it changes."""
    ssh_host: SshHost | None = None
    """The real host behind an SSH-backed instance (:meth:`SsmEndpoint.register_ssh_host`); None: simulated."""
    pending_boot_id: str | None = None
    """SSH-backed: the boot id under which ``pending_reboot`` was left; a reboot since clears it."""
    last_ping: datetime | None = None
    """SSH-backed: when its sshd last answered."""
    patch_rows: list[dict[str, Any]] | None = None
    """Compliance from the last Scan/Install (None before the first one)."""
    patch_state: dict[str, Any] | None = None


@dataclass
class _Invocation:
    instance_id: str
    kind: str
    """install, scan, query, restore or shell."""
    outcome: Outcome
    visible_at: float
    started_at: float
    done_at: float
    snapshot_id: str = ""
    """The SnapshotId the agent uses: the command's, or one of its own (AWS-RunPatchBaseline, Snapshot ID)."""
    final: tuple[str, str, int, str, str] | None = None
    """(Status, StatusDetails, ResponseCode, stdout, stderr) once terminal."""
    finished_at: float | None = None
    job: Future[RunResult] | None = None
    """SSH-backed: the run on the real host (its start sets ``started_at``; ``done_at`` is unknown until then)."""


@dataclass
class _Command:
    command_id: str
    document_name: str
    parameters: dict[str, list[str]]
    comment: str
    requested_at: float
    timeout_seconds: int
    max_concurrency: str
    max_errors: str
    targets: list[dict[str, Any]]
    instance_ids: list[str]
    output_bucket: str
    output_prefix: str
    cloudwatch: dict[str, Any] | None
    override: list[dict[str, Any]] | None
    """The parsed InstallOverrideList (read from S3 at send time), or None."""
    override_problem: str = ""
    invocations: dict[str, _Invocation] = field(default_factory=dict)
    cancelled: bool = False
    """CancelCommand stopped the command as a whole (not just some of its instances)."""
    refused: str = ""
    """``Rate Exceeded`` or ``Access Denied``: the command was stopped before it ran anywhere."""


# ----------------------------------------------------------------------------------------- moto hook-up

_REGISTRY: dict[int, SsmEndpoint] = {}
_REGISTRY_LOCK = threading.Lock()
_PATCHED = False
_ACTIONS: Final = (
    "send_command",
    "list_commands",
    "get_command_invocation",
    "list_command_invocations",
    "cancel_command",
    "describe_instance_information",
    "list_tags_for_resource",
    "describe_instance_patches",
    "describe_instance_patch_states",
)


def _install_moto_patches() -> None:
    """Route the SSM actions above to the :class:`SsmEndpoint` owning the request's port (once per process)."""
    global _PATCHED
    from moto.core.responses import ActionResult
    from moto.ssm.responses import SimpleSystemManagerResponse

    with _REGISTRY_LOCK:
        if _PATCHED:
            return

        def route(action: str) -> Callable[[Any], Any]:
            original = getattr(SimpleSystemManagerResponse, action, None)

            def handler(response: Any) -> Any:
                endpoint = _endpoint_for(response.headers.get("Host", ""))
                if endpoint is None:
                    if original is None:
                        raise NotImplementedError(f"The {action} action has not been implemented")
                    return original(response)
                body = response.body
                if isinstance(body, bytes):
                    body = body.decode()
                params = json.loads(body) if body else {}
                try:
                    result = endpoint._handle(action, params, original, response)
                except _ApiError as exc:
                    return json.dumps({"__type": exc.code, "message": exc.message}), {"status": exc.status}
                return result if not isinstance(result, dict) else ActionResult(result)

            handler.__name__ = action
            return handler

        for action in _ACTIONS:
            setattr(SimpleSystemManagerResponse, action, route(action))
        _PATCHED = True


def _endpoint_for(host: str) -> SsmEndpoint | None:
    port = host.rsplit(":", 1)[-1]
    return _REGISTRY.get(int(port)) if port.isdigit() else None


# --------------------------------------------------------------------------------------------- endpoint


class SsmEndpoint:
    """One fake SSM endpoint (with moto's EC2 and S3 behind the same URL).

    Args:
        region: the region clients should use (any valid AWS region).
        timings: phase durations of every invocation.
        throttle_rate: SSM requests per second above which requests are throttled; None = never.
        output_limit: characters of stdout ``GetCommandInvocation`` returns (AWS: 24,000).
        pending_invocation_limit: the account's quota of pending invocations; a command that would exceed it
            ends ``Rate Exceeded`` before running anywhere. None = no quota.
        clock: wall clock in seconds; injectable for tests.
        ssh_probe_seconds: how long an SSH-backed instance's reachability (its ``PingStatus``) is trusted
            before its sshd is probed again.
    """

    def __init__(
        self,
        *,
        region: str = "us-east-1",
        timings: Timings | None = None,
        throttle_rate: float | None = None,
        output_limit: int = 24_000,
        pending_invocation_limit: int | None = None,
        clock: Callable[[], float] = time.time,
        ssh_probe_seconds: float = 1.0,
    ) -> None:
        self.region = region
        self.timings = timings or Timings()
        self.throttle_rate = throttle_rate
        self.output_limit = output_limit
        self.pending_invocation_limit = pending_invocation_limit
        self._resource_groups: dict[str, tuple[list[str], bool]] = {}
        self._clock = clock
        self._lock = threading.RLock()
        self._instances: dict[str, _Instance] = {}
        self._commands: dict[str, _Command] = {}
        self._admitted: deque[float] = deque()
        self._server: Any = None
        self._ssh: SshAgent | None = None
        self.ssh_probe_seconds = ssh_probe_seconds
        self._clients: dict[str, Any] = {}
        self._port: int | None = None
        self.requests: Counter[str] = Counter()
        """SSM action (``SendCommand``, …) → requests received, throttled ones included."""
        self.errors: Counter[str] = Counter()
        """Error code (``ThrottlingException``, ``InvocationDoesNotExist``, …) → times answered."""

    # ------------------------------------------------------------------------------------- lifecycle

    def start(self) -> SsmEndpoint:
        from moto.moto_server.threaded_moto_server import ThreadedMotoServer
        from moto.moto_server.werkzeug_app import (
            DomainDispatcherApplication,
            MotoRequestHandler,
            create_backend_app,
        )
        from werkzeug.serving import make_server

        class QuietHandler(MotoRequestHandler):  # type: ignore[misc]
            def log_request(self, *args: Any, **kwargs: Any) -> None:
                """No access log on stderr."""

        class QuietServer(ThreadedMotoServer):  # type: ignore[misc]
            def _server_entry(self) -> None:
                app = DomainDispatcherApplication(create_backend_app)
                self._server = make_server(
                    self._ip_address, self._port, app, True, request_handler=QuietHandler
                )
                self._server_ready_event.set()
                self._server.serve_forever(poll_interval=0.05)  # quick shutdown between tests

        _install_moto_patches()
        server = QuietServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        self._server = server
        self._port = server.get_host_and_port()[1]
        with _REGISTRY_LOCK:
            alone = not _REGISTRY
            _REGISTRY[self._port] = self
        if alone:
            self._reset_moto()
        return self

    def stop(self) -> None:
        if self._ssh is not None:
            self._ssh.close()
            self._ssh = None
        if self._server is None:
            return
        with _REGISTRY_LOCK:
            _REGISTRY.pop(self._port or -1, None)
            last = not _REGISTRY
        if last:
            self._reset_moto()
        self._server.stop()
        self._server = None

    def __enter__(self) -> SsmEndpoint:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        if self._port is None:
            raise RuntimeError("SsmEndpoint is not started")
        return f"http://127.0.0.1:{self._port}"

    def client(self, service: str, *, max_attempts: int = 1, mode: str = "standard") -> Any:
        """A boto3 client for ``service`` pointed at this endpoint, with dummy credentials."""
        key = f"{service}/{max_attempts}/{mode}"
        if key not in self._clients:  # boto3 clients are thread-safe and slow to build: one per kind
            self._clients[key] = self._new_client(service, max_attempts, mode)
        return self._clients[key]

    def _new_client(self, service: str, max_attempts: int, mode: str) -> Any:
        return boto3.session.Session(
            aws_access_key_id="testing", aws_secret_access_key="testing", region_name=self.region
        ).client(
            service,
            endpoint_url=self.url,
            config=Config(
                retries={"max_attempts": max_attempts, "mode": mode}, s3={"addressing_style": "path"}
            ),
        )

    def _reset_moto(self) -> None:
        import urllib.request

        request = urllib.request.Request(f"{self.url}/moto-api/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):  # noqa: S310 - our own local server
            pass

    # --------------------------------------------------------------------------------- control API

    def register_instance(
        self,
        instance_id: str | None = None,
        *,
        tags: dict[str, str] | None = None,
        platform: str = "Ubuntu",
        platform_version: str = "22.04",
        packages: Iterable[Package] = (),
        available: Iterable[AvailablePatch | Package] = (),
        online: bool = True,
        hybrid: bool | None = None,
    ) -> str:
        """Register a managed instance; returns its id.

        Args:
            instance_id: ``i-…`` (an EC2 instance, created in moto's EC2 with ``tags``) or ``mi-…`` (a hybrid
                node, tags kept here). None: a fresh id of the kind ``hybrid`` says (EC2 by default).
            platform: SSM ``PlatformName`` (``Ubuntu``, ``Debian``, ``Amazon Linux``, ``Red Hat Enterprise
                Linux``, …); decides deb or rpm.
            packages: installed packages.
            available: updates the repositories offer (a plain :class:`Package` becomes a Security/Important
                patch).
            online: False = ``PingStatus`` ``ConnectionLost``; commands to it end ``Undeliverable``.
        """
        if hybrid is None:
            hybrid = bool(instance_id and instance_id.startswith("mi-"))
        if hybrid:
            instance_id = instance_id or "mi-" + secrets.token_hex(9)[:17]
            if not re.fullmatch(r"mi-[0-9a-z]{17}", instance_id):
                raise ValueError(
                    f"hybrid instance ids are 'mi-' + 17 lower-case letters or digits, got {instance_id!r}"
                )
        else:
            instance_id = self._create_ec2_instance(instance_id, tags or {})
        family = _family_of(platform)
        now = datetime.fromtimestamp(self._clock(), UTC)
        offered = [
            a if isinstance(a, AvailablePatch) else AvailablePatch(a.name, a.arch, a.version)
            for a in available
        ]
        with self._lock:
            if instance_id in self._instances:
                raise ValueError(f"instance {instance_id} is already registered")
            installed = {(p.name, p.arch): _norm(p.version) for p in packages}
            self._instances[instance_id] = _Instance(
                instance_id=instance_id,
                hybrid=hybrid,
                tags=dict(tags or {}) if hybrid else {},
                platform_name=platform,
                platform_version=platform_version,
                family=family,
                packages=installed,
                available=offered,
                online=online,
                registered_at=now,
                installed_at=dict.fromkeys(installed, now),
            )
        return instance_id

    def register_fleet(self, fleet: Fleet, *, time_scale: float = 1.0) -> list[str]:
        """Register every instance of a simulated fleet file (``patchflow.executors.simulated.fleet``) with its behaviour:
        ``fail`` → installs fail, ``offline`` → ConnectionLost, ``fail_health`` → other shell commands fail,
        ``duration_seconds`` × ``time_scale`` → how long installs run."""
        ids = []
        for inst in fleet.instances:
            platform, version = _platform_of(inst.family, inst.product)
            ids.append(
                self.register_instance(
                    inst.id,
                    tags=dict(inst.tags),
                    platform=platform,
                    platform_version=version,
                    packages=inst.installed,
                    online=not inst.behaviour.offline,
                    hybrid=inst.id.startswith("mi-"),
                )
            )
            seconds = inst.behaviour.duration_seconds * time_scale
            if inst.behaviour.fail:
                self.script(inst.id, "fail", seconds=seconds)
            elif seconds:
                self.script(inst.id, "slow", seconds=seconds)
            if inst.behaviour.fail_health:
                self.script(inst.id, "fail", applies_to="shell")
        return ids

    def register_ssh_host(
        self, host: SshHost, *, instance_id: str | None = None, tags: dict[str, str] | None = None
    ) -> str:
        """Back a managed instance with a real host reached over SSH (a lab host); returns its id.

        Commands sent to it run on the host (:mod:`patchflow.testing.ssm_agent`): ``AWS-RunShellScript`` runs
        the script, ``AWS-RunPatchBaseline`` scans the host's dpkg database and installs exactly the
        ``InstallOverrideList``'s versions with apt. ``PingStatus`` is ``Online`` while the host's sshd accepts
        connections (``ConnectionLost`` while it reboots or is down). Scripted outcomes still apply.

        Args:
            host: the SSH target (an entry of an SSH inventory, :mod:`patchflow.executors.ssh.inventory`).
            instance_id: default ``mi-`` + the host name (zero-padded to 17 characters): a hybrid node, as an
                on-premises server registered with an activation is.
            tags: default the host's inventory tags (``Patch Group`` …).

        Raises:
            ValueError: the host cannot be reached now, is not an apt/dpkg host, or the id is taken.
        """
        from patchflow.executors.ssh.executor import AgentError, HostUnreachable
        from patchflow.testing.ssm_agent import SshAgent

        if host.family not in (None, "deb"):
            raise ValueError(
                f"{host.name}: the fake SSM endpoint runs Patch Manager on apt/dpkg hosts only (family "
                f"{host.family!r}); leave rpm hosts out of the inventory it registers"
            )
        with self._lock:
            if self._ssh is None:
                self._ssh = SshAgent(probe_ttl_seconds=self.ssh_probe_seconds)
            agent = self._ssh
        try:
            facts = agent.add(host)
        except (HostUnreachable, AgentError, TimeoutError) as exc:
            raise ValueError(f"cannot register {host.name} ({host.address}:{host.port}): {exc}") from exc
        if facts.get("family") != "deb":
            raise ValueError(
                f"{host.name} has no dpkg: the fake SSM endpoint runs Patch Manager on apt hosts only"
            )
        instance_id = instance_id or ssh_instance_id(host.name)
        self.register_instance(
            instance_id,
            tags=dict(host.tags if tags is None else tags),
            platform=facts.get("os_name") or "Debian GNU/Linux",
            platform_version=facts.get("os_version") or "",
            packages=[Package(n, a, v) for n, a, v in facts.get("packages", [])],
            hybrid=instance_id.startswith("mi-"),
        )
        with self._lock:
            self._instances[instance_id].ssh_host = host
        return instance_id

    def register_ssh_inventory(
        self, inventory: SshInventory, *, hosts: Iterable[str] | None = None
    ) -> dict[str, str]:
        """Register hosts of an SSH inventory (default every apt host in it); returns host name → instance id."""
        names = list(hosts) if hosts is not None else [
            name for name, host in inventory.hosts.items() if host.family in (None, "deb")
        ]  # fmt: skip
        unknown = [n for n in names if n not in inventory.hosts]
        if unknown:
            raise ValueError(f"hosts {unknown} are not in the SSH inventory {inventory.source}")
        return {name: self.register_ssh_host(inventory.hosts[name]) for name in names}

    def register_resource_group(
        self, name: str, instance_ids: Iterable[str], *, accessible: bool = True
    ) -> None:
        """A resource group ``SendCommand`` may target (``Key=resource-groups:Name``). ``accessible=False``: the
        caller may not use it, so a command targeting it ends ``Access Denied`` without running anywhere."""
        with self._lock:
            self._resource_groups[name] = (list(instance_ids), accessible)

    def set_online(self, instance_id: str, online: bool) -> None:
        with self._lock:
            self._instance(instance_id).online = online

    def script(
        self,
        instance_id: str,
        outcome: Outcome,
        *,
        seconds: float | None = None,
        applies_to: ScriptTarget = "install",
        times: int | None = None,
    ) -> None:
        """Script how the next commands of ``applies_to`` end on an instance.

        Args:
            outcome: ``fail`` (Failed), ``timeout`` (Execution Timed Out), ``undeliverable``,
                ``delivery_timeout``, ``invalid_platform``, ``access_denied``, ``slow`` or ``success``.
            seconds: how long the invocation runs (default :attr:`Timings.run_seconds`).
            times: how many commands it applies to (None = all from now on). The newest script wins.
        """
        with self._lock:
            self._instance(instance_id).scripts.insert(0, _Script(outcome, seconds, applies_to, times))

    def packages(self, instance_id: str) -> dict[str, str]:
        """``name.arch`` → installed version now (after settling finished invocations)."""
        with self._lock:
            self._settle()
            inst = self._instance(instance_id)
            return {f"{n}.{a}": v for (n, a), v in sorted(inst.packages.items())}

    def reboots(self, instance_id: str) -> int:
        """How many times the instance rebooted (``AWS-RunPatchBaseline`` Install with RebootIfNeeded, a script's
        ``exit 194``), after settling."""
        with self._lock:
            self._settle()
            return self._instance(instance_id).reboots

    def command_count(self, instance_id: str | None = None, document: str | None = None) -> int:
        """How many commands were sent (to one instance, of one document)."""
        with self._lock:
            return sum(
                1
                for c in self._commands.values()
                if (instance_id is None or instance_id in c.instance_ids)
                and (document is None or c.document_name == document)
            )

    # ------------------------------------------------------------------------------------ dispatch

    def _handle(self, action: str, params: dict[str, Any], original: Any, response: Any) -> Any:
        name = "".join(part.title() for part in action.split("_"))
        with self._lock:
            self.requests[name] += 1
        try:
            self._admit()
            if action == "list_tags_for_resource" and params.get("ResourceType") != "ManagedInstance":
                return original(response)  # documents, parameters, …: moto knows them
            with self._lock:
                self._settle()
                return getattr(self, f"_op_{action}")(params)
        except _ApiError as exc:
            with self._lock:
                self.errors[exc.code] += 1
            raise

    def _admit(self) -> None:
        if self.throttle_rate is None:
            return
        with self._lock:
            now = self._clock()
            while self._admitted and self._admitted[0] <= now - 1.0:
                self._admitted.popleft()
            if len(self._admitted) >= self.throttle_rate:
                raise _ApiError("ThrottlingException", "Rate exceeded")
            self._admitted.append(now)

    def _instance(self, instance_id: str) -> _Instance:
        try:
            return self._instances[instance_id]
        except KeyError:
            raise _ApiError(
                "InvalidInstanceId", f"Instance {instance_id} is not a managed instance"
            ) from None

    # --------------------------------------------------------------------------------- operations

    def _op_describe_instance_information(self, params: dict[str, Any]) -> dict[str, Any]:
        filters: dict[str, list[str]] = {f["Key"]: f["Values"] for f in params.get("Filters") or []}
        for f in params.get("InstanceInformationFilterList") or []:
            filters[f["key"]] = f["valueSet"]
        unknown = set(filters) - {"InstanceIds", "PingStatus", "ResourceType", "PlatformTypes"}
        if unknown:
            raise _ApiError(
                "InvalidInstanceInformationFilterValue", f"filter keys {sorted(unknown)} not supported"
            )
        rows = []
        for inst in sorted(self._instances.values(), key=lambda i: i.instance_id):
            if "InstanceIds" in filters and inst.instance_id not in filters["InstanceIds"]:
                continue  # (and no reachability probe of an SSH-backed host nobody asked about)
            row = self._information(inst)
            if any(
                (key == "InstanceIds" and inst.instance_id not in values)
                or (key == "PingStatus" and row["PingStatus"] not in values)
                or (key == "ResourceType" and row["ResourceType"] not in values)
                or (key == "PlatformTypes" and row["PlatformType"] not in values)
                for key, values in filters.items()
            ):
                continue
            rows.append(row)
        page, token = _page(rows, params, default=50)
        return {"InstanceInformationList": page, **token}

    def _online(self, inst: _Instance) -> bool:
        """Simulated: as registered (:meth:`set_online`); SSH-backed: also while its sshd answers."""
        if not inst.online or inst.ssh_host is None:
            return inst.online
        assert self._ssh is not None
        up = self._ssh.online(inst.ssh_host.name)
        if up:
            inst.last_ping = datetime.fromtimestamp(self._clock(), UTC)
        return up

    def _information(self, inst: _Instance) -> dict[str, Any]:
        online = self._online(inst)
        row: dict[str, Any] = {
            "InstanceId": inst.instance_id,
            "PingStatus": "Online" if online else "ConnectionLost",
            "LastPingDateTime": datetime.fromtimestamp(self._clock(), UTC)
            if online
            else inst.last_ping or inst.registered_at,
            "AgentVersion": "3.3.1142.0",
            "IsLatestVersion": True,
            "PlatformType": _platform_type(inst.platform_name),
            "PlatformName": inst.platform_name,
            "PlatformVersion": inst.platform_version,
            "ResourceType": "ManagedInstance" if inst.hybrid else "EC2Instance",
            "ComputerName": inst.ssh_host.name if inst.ssh_host else f"{inst.instance_id}.internal",
            "IPAddress": inst.ssh_host.address if inst.ssh_host else "127.0.0.1",
        }
        if inst.hybrid:
            row["RegistrationDate"] = inst.registered_at
            row["ActivationId"] = "00000000-0000-0000-0000-000000000000"
            row["Name"] = inst.instance_id
        return row

    def _op_list_tags_for_resource(self, params: dict[str, Any]) -> dict[str, Any]:
        inst = self._instances.get(params.get("ResourceId", ""))
        if inst is None or not inst.hybrid:
            # AWS: EC2 instances are tagged in EC2, not through ResourceType=ManagedInstance.
            raise _ApiError("InvalidResourceId", "The resource ID is not valid. Verify the ID and try again.")
        return {"TagList": [{"Key": k, "Value": v} for k, v in sorted(inst.tags.items())]}

    def _op_send_command(self, params: dict[str, Any]) -> dict[str, Any]:
        document = params.get("DocumentName", "")
        if document not in (_PATCH_DOC, _SHELL_DOC):
            raise _ApiError(
                "InvalidDocument",
                f"Document {document} does not exist (this endpoint knows {_PATCH_DOC} and {_SHELL_DOC})",
            )
        comment = params.get("Comment", "")
        if len(comment) > 100:
            raise _ApiError(
                "ValidationException",
                "1 validation error detected: Value at 'comment' failed to "
                "satisfy constraint: Member must have length less than or equal to 100",
            )
        timeout = int(params.get("TimeoutSeconds", 3600))
        if not 30 <= timeout <= 2_592_000:
            raise _ApiError("ValidationException", "TimeoutSeconds must be between 30 and 2592000")
        max_errors = str(params.get("MaxErrors", "0"))
        if not _MAX_ERRORS_RE.match(max_errors):
            raise _ApiError("ValidationException", f"MaxErrors {max_errors!r} is not valid")
        instance_ids, refused = self._targets(params)
        parameters = {k: [str(x) for x in v] for k, v in (params.get("Parameters") or {}).items()}
        override, problem = self._check_parameters(document, parameters)
        now = self._clock()
        command = _Command(
            command_id=str(uuid.uuid4()),
            document_name=document,
            parameters=parameters,
            comment=comment,
            requested_at=now,
            timeout_seconds=timeout,
            max_concurrency=str(params.get("MaxConcurrency", "50")),
            max_errors=max_errors,
            targets=list(params.get("Targets") or []),
            instance_ids=instance_ids,
            output_bucket=params.get("OutputS3BucketName", ""),
            output_prefix=params.get("OutputS3KeyPrefix", ""),
            cloudwatch=params.get("CloudWatchOutputConfig"),
            override=override,
            override_problem=problem,
            refused=refused,
        )
        kind = _kind(document, parameters)
        t = self.timings
        if not refused and self.pending_invocation_limit is not None:
            pending = sum(
                1 for c in self._commands.values() for i in c.invocations.values() if i.final is None
            )
            if pending + len(instance_ids) > self.pending_invocation_limit:
                command.refused = "Rate Exceeded"
        for instance_id in instance_ids:
            inst = self._instances[instance_id]
            outcome, seconds = self._next_outcome(inst, kind)
            if not inst.online:
                outcome = "undeliverable"
            started = now + t.pending_seconds
            inv = _Invocation(
                instance_id=instance_id,
                kind=kind,
                outcome=outcome,
                visible_at=now + t.not_found_seconds,
                started_at=started,
                done_at=started + (t.run_seconds if seconds is None else seconds),
                snapshot_id=parameters.get("SnapshotId", [""])[0] or str(uuid.uuid4()),
            )
            if command.refused:  # "The system has canceled the command before running it on any managed node"
                inv.final, inv.finished_at = ("Cancelled", "Cancelled", -1, "", ""), now
            elif inst.ssh_host is not None and outcome in ("success", "slow"):
                self._start_ssh_job(command, inv, inst)
            command.invocations[instance_id] = inv
        self._commands[command.command_id] = command
        return {"Command": self._command_view(command)}

    # ------------------------------------------------------------------------------- SSH-backed

    def _start_ssh_job(self, command: _Command, inv: _Invocation, inst: _Instance) -> None:
        """Run the invocation on the instance's real host in the background (it is Pending until it starts)."""
        assert self._ssh is not None and inst.ssh_host is not None
        inv.started_at = inv.done_at = math.inf
        pending = inst.pending_boot_id if inst.pending_reboot else None
        inv.job = self._ssh.submit(self._ssh_job(command, inv, inst.ssh_host.name, pending))

    async def _ssh_job(
        self, command: _Command, inv: _Invocation, host: str, pending_boot_id: str | None
    ) -> RunResult:
        """What the SSM Agent on the node does with one invocation (see :mod:`patchflow.testing.ssm_agent`)."""
        from patchflow.testing.ssm_agent import PATCH_TIMEOUT_SECONDS, RunResult

        assert self._ssh is not None
        agent, params = self._ssh, command.parameters
        shell = command.document_name == _SHELL_DOC
        execution_timeout = (
            int(params.get("executionTimeout", ["3600"])[0]) if shell else PATCH_TIMEOUT_SECONDS
        )
        await asyncio.sleep(self.timings.pending_seconds)
        # User Guide, "Understanding command statuses": not received within Timeout (seconds) + the execution
        # timeout → Delivery Timed Out.
        if not await agent.deliver(host, command.requested_at + command.timeout_seconds + execution_timeout):
            return RunResult("TimedOut", "Delivery Timed Out", -1)
        with self._lock:
            inv.started_at = self._clock()
        if shell:
            return await agent.shell(
                host,
                params["commands"],
                working_directory=params.get("workingDirectory", [""])[0],
                timeout_seconds=execution_timeout,
            )
        if inv.kind == "scan":
            return await agent.scan(host)
        if command.override_problem:
            return RunResult("Failed", "Failed", 1, "", command.override_problem)
        return await agent.install(
            host,
            operation_id=f"ssm/{command.command_id}/{inv.instance_id}",
            choose=functools.partial(_ssh_install_set, command.override),
            reboot_option=params.get("RebootOption", ["RebootIfNeeded"])[0],
            pending_boot_id=pending_boot_id,
        )

    def _finish_ssh(
        self, command: _Command, inv: _Invocation, inst: _Instance
    ) -> tuple[str, str, int, str, str]:
        """Apply what an SSH-backed invocation found and changed; its (Status, StatusDetails, code, out, err)."""
        from patchflow.testing.ssm_agent import RunResult

        assert inv.job is not None
        try:
            result = inv.job.result()
        except Exception as exc:  # noqa: BLE001 - the agent's bug must end the invocation, not the endpoint
            result = RunResult("Failed", "Failed", 1, "", f"the fake SSM agent failed: {exc!r}")
        inv.finished_at = result.finished_at
        failed_scan = inv.kind == "scan" and result.status != "Success"  # nothing new to report
        if result.details == "Delivery Timed Out" or command.document_name != _PATCH_DOC or failed_scan:
            return (result.status, result.details, result.code, result.stdout, result.stderr)
        now = datetime.fromtimestamp(self._clock(), UTC)
        if result.packages is not None:
            self._refresh_ssh_packages(inst, result.packages)
        reboot = command.parameters.get("RebootOption", ["RebootIfNeeded"])[0]
        if inv.kind == "install":
            for key in result.changed:
                inst.installed_at[key] = now
            inst.failed.update(result.failed)
            if result.rebooted:
                inst.pending_reboot.clear()
                inst.reboots += 1
            elif reboot == "NoReboot" and result.changed and result.packages is not None:
                inst.pending_reboot.update(k for k in result.changed if k in inst.packages)
                inst.pending_boot_id = result.packages.boot_id
        counts = self._record_compliance(command, inv, inst, now)
        if inv.kind == "install" and reboot == "NoReboot" and result.status == "Success":
            assert inst.patch_state is not None
            inst.patch_state["LastNoRebootInstallOperationTime"] = now
        stdout = result.stdout + _summary(counts) + "\n"
        return (result.status, result.details, result.code, stdout, result.stderr)

    def _refresh_ssh_packages(self, inst: _Instance, packages: HostPackages) -> None:
        """The instance's packages, approvals and pending state from the host's package database now.

        Approved (``inst.available``): the versions a security pocket offers — what AWS's default Debian
        baseline approves ("patch candidate versions are limited to patches included in … debian-security",
        User Guide, "Patch compliance state values"). Apt rows carry the Debian section and priority as
        ``Classification`` and ``Severity``, which is how :mod:`patchflow.executors.ssm.inventory` reads them.
        """
        if inst.pending_boot_id is not None and packages.boot_id != inst.pending_boot_id:
            inst.pending_reboot.clear()  # rebooted since the NoReboot install
            inst.pending_boot_id = None
        for key, version in packages.installed.items():
            if inst.packages.get(key) != version:
                inst.installed_at[key] = datetime.fromtimestamp(self._clock(), UTC)
        inst.packages = dict(packages.installed)
        inst.pending_reboot &= set(inst.packages)
        inst.available = [
            AvailablePatch(
                o.name,
                o.arch,
                _norm(o.version),
                classification=o.section,
                severity=o.priority.capitalize(),
                security=True,
            )
            for o in packages.offered
            if o.security
        ]
        inst.failed = {  # FAILED until the package is cleanly installed at (at least) that version
            key: version
            for key, version in inst.failed.items()
            if key in inst.packages
            and (key in packages.broken or versions.compare("deb", inst.packages[key], version) < 0)
        }

    def _targets(self, params: dict[str, Any]) -> tuple[list[str], str]:
        """The instance ids a send addresses (exactly ``InstanceIds``, or what ``Targets`` select), and
        ``Access Denied`` when a target is a resource group the caller may not use."""
        ids = list(params.get("InstanceIds") or [])
        targets = params.get("Targets") or []
        if bool(ids) == bool(targets):
            raise _ApiError(
                "ValidationException", "Specify either InstanceIds or Targets, not both or neither"
            )
        if len(ids) > 50:
            raise _ApiError(
                "ValidationException",
                "1 validation error detected: Value at 'instanceIds' failed "
                "to satisfy constraint: Member must have length less than or equal to 50",
            )
        if len(set(ids)) != len(ids):
            raise _ApiError("DuplicateInstanceId", "Instance IDs must be unique")
        if targets:
            selected = set(self._instances)
            for target in targets:
                key, values = target.get("Key", ""), target.get("Values") or []
                if key == "InstanceIds":
                    selected &= set(values)
                elif key.startswith("tag:"):
                    selected &= {i for i in selected if self._tags(self._instances[i]).get(key[4:]) in values}
                elif (
                    key == "resource-groups:Name" and len(values) == 1 and values[0] in self._resource_groups
                ):
                    members, accessible = self._resource_groups[values[0]]
                    if not accessible:
                        return [], "Access Denied"
                    selected &= set(members)
                else:
                    raise _ApiError(
                        "ValidationException", f"target {key}={values} is not supported by this endpoint"
                    )
            return sorted(selected), ""
        unknown = [i for i in ids if i not in self._instances]
        if unknown:
            raise _ApiError(
                "InvalidInstanceId", f"Instances {unknown} not in a valid state for account {ACCOUNT_ID}"
            )
        return ids, ""

    def _check_parameters(
        self, document: str, parameters: dict[str, list[str]]
    ) -> tuple[list[dict[str, Any]] | None, str]:
        """Validate like SSM does; return the override list (read from S3 now) or why the agent would fail."""
        if document == _SHELL_DOC:
            allowed = {"commands", "workingDirectory", "executionTimeout"}
            if not parameters.get("commands"):
                raise _ApiError("InvalidParameters", "Parameter 'commands' is required")
            timeout = parameters.get("executionTimeout", ["3600"])[0]
            if not (timeout.isdigit() and 1 <= int(timeout) <= 172_800):  # the document's allowedPattern
                raise _ApiError("InvalidParameters", "executionTimeout must be 1 to 172800 seconds")
        else:
            allowed = {"Operation", "SnapshotId", "InstallOverrideList", "BaselineOverride", "RebootOption",
                       "AssociationId"}  # fmt: skip
            operation = parameters.get("Operation", [""])[0]
            if operation not in ("Scan", "Install"):
                raise _ApiError("InvalidParameters", "Operation must be Scan or Install")
            if not _GUID_RE.match(parameters.get("SnapshotId", [""])[0]):
                raise _ApiError("InvalidParameters", "SnapshotId must be a GUID")
            if parameters.get("RebootOption", ["RebootIfNeeded"])[0] not in ("RebootIfNeeded", "NoReboot"):
                raise _ApiError("InvalidParameters", "RebootOption must be RebootIfNeeded or NoReboot")
            url = parameters.get("InstallOverrideList", [""])[0]
            if url and (len(url) > 256 or not _OVERRIDE_RE.match(url)):
                raise _ApiError("InvalidParameters", "InstallOverrideList must be an https:// or s3:// URL")
        unknown = set(parameters) - allowed
        if unknown:
            raise _ApiError(
                "InvalidParameters", f"Parameters {sorted(unknown)} are not defined in {document}"
            )
        if document == _PATCH_DOC and parameters.get("InstallOverrideList", [""])[0]:
            if parameters.get("BaselineOverride", [""])[0]:
                return None, "InstallOverrideList and BaselineOverride cannot be used together"
            return self._read_override(parameters["InstallOverrideList"][0])
        return None, ""

    def _read_override(self, url: str) -> tuple[list[dict[str, Any]] | None, str]:
        match = re.match(r"^s3://([^/]+)/(.+)$", url)
        if match is None:
            return None, f"this endpoint reads override lists from s3:// only, not {url}"
        try:
            body = self.client("s3").get_object(Bucket=match[1], Key=match[2])["Body"].read()
            data = yaml.safe_load(body)
        except (ClientError, yaml.YAMLError) as exc:
            return None, f"could not read InstallOverrideList {url}: {exc}"
        patches = data.get("patches") if isinstance(data, dict) else None
        if not isinstance(patches, list) or not all(isinstance(p, dict) and p.get("id") for p in patches):
            return (
                None,
                f"InstallOverrideList {url} must be a mapping with a 'patches' list of {{id, title?}}",
            )
        return patches, ""

    def _next_outcome(self, inst: _Instance, kind: str) -> tuple[Outcome, float | None]:
        for script in inst.scripts:
            if script.applies_to in (kind, "any") and script.remaining != 0:
                if script.remaining is not None:
                    script.remaining -= 1
                return script.outcome, script.seconds
        return "success", None

    def _op_list_commands(self, params: dict[str, Any]) -> dict[str, Any]:
        command_id, instance_id = params.get("CommandId"), params.get("InstanceId")
        if command_id and command_id not in self._commands:
            raise _ApiError("InvalidCommandId", f"Command {command_id} does not exist")
        filters = {f["key"]: f["value"] for f in params.get("Filters") or []}
        rows = []
        for command in sorted(self._commands.values(), key=lambda c: c.requested_at, reverse=True):
            if command_id and command.command_id != command_id:
                continue
            if instance_id and instance_id not in command.instance_ids:
                continue
            view = self._command_view(command)
            if not _command_matches(view, command, filters):
                continue
            rows.append(view)
        page, token = _page(rows, params, default=50)
        return {"Commands": page, **token}

    def _op_list_command_invocations(self, params: dict[str, Any]) -> dict[str, Any]:
        command_id, instance_id = params.get("CommandId"), params.get("InstanceId")
        if command_id and command_id not in self._commands:
            raise _ApiError("InvalidCommandId", f"Command {command_id} does not exist")
        status_filter = {f["value"] for f in params.get("Filters") or [] if f["key"] == "Status"}
        unknown_filters = {f["key"] for f in params.get("Filters") or []} - {"Status"}
        if unknown_filters:
            raise _ApiError(
                "InvalidFilterKey", f"filter keys {sorted(unknown_filters)} are not supported here"
            )
        now = self._clock()
        rows = []
        for command in sorted(self._commands.values(), key=lambda c: c.requested_at, reverse=True):
            if command_id and command.command_id != command_id:
                continue
            for inv in command.invocations.values():
                if (instance_id and inv.instance_id != instance_id) or now < inv.visible_at:
                    continue
                status, details, *_ = self._status(inv, now)
                if status_filter and not status_filter & {status, details.replace(" ", "")}:
                    continue
                row: dict[str, Any] = {
                    "CommandId": command.command_id,
                    "InstanceId": inv.instance_id,
                    "Comment": command.comment,
                    "DocumentName": command.document_name,
                    "DocumentVersion": "$DEFAULT",
                    "RequestedDateTime": datetime.fromtimestamp(command.requested_at, UTC),
                    "Status": status,
                    "StatusDetails": details,
                    "StandardOutputUrl": "",
                    "StandardErrorUrl": "",
                }
                if params.get("Details"):
                    row["CommandPlugins"] = [
                        {k: v for k, v in self._plugin_view(command, inv, plugin, now).items() if k[0] != "_"}
                        for plugin in _plugins(command)
                    ]
                if command.cloudwatch:
                    row["CloudWatchOutputConfig"] = command.cloudwatch
                rows.append(row)
        page, token = _page(rows, params, default=50)
        return {"CommandInvocations": page, **token}

    def _op_get_command_invocation(self, params: dict[str, Any]) -> dict[str, Any]:
        command = self._commands.get(params.get("CommandId", ""))
        if command is None:
            raise _ApiError("InvalidCommandId", "Command ID is not valid")
        instance_id = params.get("InstanceId", "")
        inv = command.invocations.get(instance_id)
        now = self._clock()
        if inv is None or now < inv.visible_at:
            raise _ApiError(
                "InvocationDoesNotExist", "An invocation with that command id and instance id does not exist"
            )
        plugin = params.get("PluginName")
        plugins = _plugins(command)
        if plugin is None and len(plugins) > 1:
            raise _ApiError(
                "InvalidPluginName", f"{command.document_name} has several steps; give PluginName"
            )
        plugin = plugin or plugins[0]
        if plugin not in plugins:
            raise _ApiError("InvalidPluginName", f"The plugin name {plugin} is not valid")
        view = self._plugin_view(command, inv, plugin, now)
        ran = _ran(inv, now)
        answer: dict[str, Any] = {
            "CommandId": command.command_id,
            "InstanceId": instance_id,
            "Comment": command.comment,
            "DocumentName": command.document_name,
            "DocumentVersion": "$DEFAULT",
            "PluginName": plugin,
            "ResponseCode": view["ResponseCode"],
            # AWS's form (2021-04-08T16:13:07.913Z), empty until the plugin starts / finishes (API reference,
            # GetCommandInvocation: "If the plugin hasn't started to run, the string is empty").
            "ExecutionStartDateTime": _string_time(inv.started_at) if ran else "",
            "ExecutionEndDateTime": _string_time(inv.finished_at) if ran and inv.finished_at else "",
            "Status": view["Status"],
            "StatusDetails": view["StatusDetails"],
            "StandardOutputContent": view["_stdout"][: self.output_limit],
            "StandardOutputUrl": view["StandardOutputUrl"],
            "StandardErrorContent": view.pop("_stderr")[:8000],
            "StandardErrorUrl": view["StandardErrorUrl"],
            "CloudWatchOutputConfig": command.cloudwatch or {"CloudWatchOutputEnabled": False},
        }
        if ran:  # an ISO 8601 duration (PT0.203S); nothing for a plugin that never ran
            answer["ExecutionElapsedTime"] = _duration((inv.finished_at or now) - inv.started_at)
        return answer

    def _op_cancel_command(self, params: dict[str, Any]) -> dict[str, Any]:
        command = self._commands.get(params.get("CommandId", ""))
        if command is None:
            raise _ApiError("InvalidCommandId", "Command ID is not valid")
        only = set(params.get("InstanceIds") or [])
        now = self._clock()
        stopped = 0
        for inv in command.invocations.values():
            if inv.final is None and (not only or inv.instance_id in only):
                inv.final = ("Cancelled", "Cancelled", -1, "", "")
                inv.finished_at = now
                stopped += 1
                if inv.job is not None and self._ssh is not None:  # best effort, as the User Guide says
                    inv.job.cancel()
                    if inv.kind == "install":
                        self._ssh.cancel(f"ssm/{command.command_id}/{inv.instance_id}")
        # Cancelling every instance is cancelling the command; cancelling a finished command changes nothing.
        if stopped and (not only or only >= set(command.invocations)):
            command.cancelled = True
        return {}

    def _op_describe_instance_patches(self, params: dict[str, Any]) -> dict[str, Any]:
        inst = self._instance(params.get("InstanceId", ""))
        rows = list(inst.patch_rows or [])
        for f in params.get("Filters") or []:
            key, values = f["Key"], {_fold(v) for v in f["Values"]}
            if key not in ("Classification", "KBId", "Severity", "State"):
                raise _ApiError("InvalidFilter", f"filter key {key} is not valid")
            rows = [r for r in rows if _fold(r[key]) in values]
        page, token = _page(rows, params, default=50)
        return {"Patches": page, **token}

    def _op_describe_instance_patch_states(self, params: dict[str, Any]) -> dict[str, Any]:
        ids = params.get("InstanceIds") or []
        if not 1 <= len(ids) <= 50:
            raise _ApiError("ValidationException", "InstanceIds: give 1 to 50 ids")
        states = [
            self._instances[i].patch_state
            for i in ids
            if i in self._instances and self._instances[i].patch_state is not None
        ]
        page, token = _page(states, params, default=50)
        return {"InstancePatchStates": page, **token}

    # --------------------------------------------------------------------------------- lifecycle

    def _status(self, inv: _Invocation, now: float) -> tuple[str, str, int, str, str]:
        if inv.final is not None:
            return inv.final
        if now < inv.started_at:
            return ("Pending", "Pending", -1, "", "")
        return ("InProgress", "In Progress", -1, "", "")

    def _settle(self) -> None:
        """Finish every invocation whose time is up, oldest first, applying its effect exactly once."""
        now = self._clock()
        due = [
            (at, command, inv)
            for command in self._commands.values()
            for inv in command.invocations.values()
            if inv.final is None and (at := _due_at(inv, now)) is not None
        ]
        for _, command, inv in sorted(due, key=lambda d: d[0]):
            if inv.job is not None:
                inv.final = self._finish_ssh(command, inv, self._instances[inv.instance_id])
            else:
                inv.final = self._run(command, inv)
                inv.finished_at = inv.done_at
            self._write_output(command, inv)

    def _run(self, command: _Command, inv: _Invocation) -> tuple[str, str, int, str, str]:
        """What the agent does when the invocation completes: (Status, StatusDetails, code, stdout, stderr)."""
        inst = self._instances[inv.instance_id]
        if inv.outcome in _FAILURES:
            status, details, code = _FAILURES[inv.outcome]
            if inv.kind == "install" and details in _ERROR_DETAILS and inst.family is not None:
                self._fail_install(
                    command, inv, inst
                )  # the agent ran and failed: Patch Manager reports FAILED
            return (status, details, code, "", f"scripted outcome: {inv.outcome}")
        if inst.family is None:
            return (
                "Failed",
                "Invalid Platform",
                -1,
                "",
                f"platform {inst.platform_name} is not Linux deb/rpm",
            )
        if command.document_name == _PATCH_DOC:
            return self._run_patch_baseline(command, inv, inst)
        return self._run_shell(command, inst)

    def _run_patch_baseline(
        self, command: _Command, inv: _Invocation, inst: _Instance
    ) -> tuple[str, str, int, str, str]:
        assert inst.family is not None
        operation = command.parameters["Operation"][0]
        reboot = command.parameters.get("RebootOption", ["RebootIfNeeded"])[0]
        lines: list[str] = []
        if command.override_problem:
            return ("Failed", "Failed", 1, "", command.override_problem)
        now = datetime.fromtimestamp(self._clock(), UTC)
        installed_now: list[tuple[str, str]] = []
        if operation == "Install":
            for key, have in sorted(inst.packages.items()):
                target = self._install_target(inst, key, have, command.override)
                if target is not None:
                    inst.packages[key] = target
                    inst.installed_at[key] = now
                    inst.failed.pop(key, None)
                    installed_now.append(key)
                    lines.append(f"Installed {key[0]}.{key[1]} {have} -> {target}")
            if reboot == "NoReboot":
                inst.pending_reboot.update(installed_now)
            elif installed_now or inst.pending_reboot:
                # User Guide, AWS-RunPatchBaseline, RebootOption: RebootIfNeeded reboots when the Install
                # installed a patch or found patches INSTALLED_PENDING_REBOOT (an earlier NoReboot install).
                inst.pending_reboot.clear()
                inst.reboots += 1
                lines.append("Rebooting the instance (RebootIfNeeded)")
        counts = self._record_compliance(command, inv, inst, now)
        if operation == "Install" and reboot == "NoReboot":
            assert inst.patch_state is not None
            inst.patch_state["LastNoRebootInstallOperationTime"] = now
        lines.append(_summary(counts))
        return ("Success", "Success", 0, "\n".join(lines) + "\n", "")

    def _fail_install(self, command: _Command, inv: _Invocation, inst: _Instance) -> None:
        """A failed Install: what it would have upgraded becomes FAILED in the node's compliance."""
        if command.override_problem:
            return  # the document failed before looking at any package
        for key, have in inst.packages.items():
            target = self._install_target(inst, key, have, command.override)
            if target is not None:
                inst.failed[key] = target
        self._record_compliance(command, inv, inst, datetime.fromtimestamp(self._clock(), UTC))

    def _record_compliance(
        self, command: _Command, inv: _Invocation, inst: _Instance, now: datetime
    ) -> Counter[str]:
        """Rewrite the node's DescribeInstancePatches rows and patch state from its packages now."""
        operation = command.parameters["Operation"][0]
        reboot = command.parameters.get("RebootOption", ["RebootIfNeeded"])[0]
        override_url = command.parameters.get("InstallOverrideList", [""])[0]
        rated = self._compliance_rows(inst)
        rows = [row for row, _ in rated]
        counts = Counter(r["State"] for r in rows)
        non_compliant = [r for r in rows if r["State"] in _NON_COMPLIANT]
        security = sum(1 for row, is_security in rated if is_security and row["State"] in _NON_COMPLIANT)
        inst.patch_rows = rows
        tags = self._tags(inst)
        inst.patch_state = {
            "InstanceId": inst.instance_id,
            # Required by the model (1-256 characters), yet a node outside every patch group has no name: ""
            # is sent, the only empty value left (tests/executors/test_ssm_endpoint_shapes.py).
            "PatchGroup": tags.get("Patch Group", tags.get("PatchGroup", "")),
            "BaselineId": "pb-0000000000000000" + ("1" if inst.family == "deb" else "2"),
            "SnapshotId": inv.snapshot_id,
            "InstalledCount": counts["INSTALLED"],
            "InstalledOtherCount": counts["INSTALLED_OTHER"],
            "InstalledPendingRebootCount": counts["INSTALLED_PENDING_REBOOT"],
            "InstalledRejectedCount": counts["INSTALLED_REJECTED"],
            "MissingCount": counts["MISSING"],
            "FailedCount": counts["FAILED"],
            "UnreportedNotApplicableCount": 0,
            "NotApplicableCount": 0,
            "OperationStartTime": datetime.fromtimestamp(command.requested_at, UTC),
            "OperationEndTime": now,
            "Operation": operation,
            "RebootOption": reboot,
            # Critical = the baseline's ComplianceLevel CRITICAL; no baseline is evaluated here (predefined
            # baselines all use UNSPECIFIED), so none. Security = a vendor advisory's Security classification.
            "CriticalNonCompliantCount": 0,
            "SecurityNonCompliantCount": security,
            "OtherNonCompliantCount": len(non_compliant) - security,
        }
        if override_url:
            inst.patch_state["InstallOverrideList"] = override_url
        return counts

    def _install_target(
        self, inst: _Instance, key: tuple[str, str], have: str, override: list[dict[str, Any]] | None
    ) -> str | None:
        """The version an Install brings ``key`` to, or None (no newer version selected)."""
        assert inst.family is not None
        offered = [a.version for a in inst.available if (a.name, a.arch) == key]
        # No baseline here: everything available is approved, and an override list picks among it.
        return _install_target(inst.family, key, have, offered, offered, override)

    def _compliance_rows(self, inst: _Instance) -> list[tuple[dict[str, Any], bool]]:
        """Every installed package's ``DescribeInstancePatches`` row, each with whether it is a security patch."""
        assert inst.family is not None
        rows: list[tuple[dict[str, Any], bool]] = []
        for (name, arch), version in sorted(inst.packages.items()):
            kb_id = f"{name}.{arch}"
            offered = [
                a for a in inst.available if (a.name, a.arch) == (name, arch)
                and versions.compare(inst.family, a.version, version) > 0
            ]  # fmt: skip
            failed = inst.failed.get((name, arch))
            if failed is not None or offered:
                # FAILED: the version a failed Install could not install; MISSING: the newest approved one.
                wanted = failed or max(
                    (a.version for a in offered), key=lambda v: versions.sort_key(inst.family or "deb", v)
                )
                best = next(
                    (
                        a
                        for a in inst.available
                        if (a.name, a.arch, _norm(a.version)) == (name, arch, _norm(wanted))
                    ),
                    None,
                )
                row: dict[str, Any] = {
                    "Title": _title(inst.family, kb_id, wanted),
                    "KBId": kb_id,
                    "Classification": best.classification if best else "",
                    "Severity": best.severity if best else "",
                    "State": "FAILED" if failed is not None else "MISSING",
                    "InstalledTime": datetime.fromtimestamp(0, UTC),  # AWS: 0 for what is not installed
                }
                if best and best.cve_ids:  # CVE ids are reported for MISSING and FAILED patches only
                    row["CVEIds"] = ",".join(best.cve_ids)
                rows.append((row, bool(best and best.is_security)))
                continue
            meta = next(
                (a for a in inst.available if (a.name, a.arch, _norm(a.version)) == (name, arch, version)),
                None,
            )
            if (name, arch) in inst.pending_reboot:
                state = "INSTALLED_PENDING_REBOOT"
            else:  # a version no update notice names was not approved by any baseline: INSTALLED_OTHER
                state = "INSTALLED" if meta else "INSTALLED_OTHER"
            row = {
                "Title": _title(inst.family, kb_id, version),
                "KBId": kb_id,
                # Blank for INSTALLED_OTHER, as AWS reports it (User Guide, "Patch compliance state values").
                "Classification": meta.classification if meta else "",
                "Severity": meta.severity if meta else "",
                "State": state,
                "InstalledTime": inst.installed_at.get((name, arch), inst.registered_at),
            }
            rows.append((row, bool(meta and meta.is_security)))
        return rows

    def _run_shell(self, command: _Command, inst: _Instance) -> tuple[str, str, int, str, str]:
        assert inst.family is not None
        out: list[str] = []
        now = datetime.fromtimestamp(self._clock(), UTC)
        for line in (ln for block in command.parameters["commands"] for ln in block.splitlines()):
            words = shlex.split(line, comments=True)
            if not words:
                continue
            if "dpkg-query" in words or ("rpm" in words and "-qa" in words):
                for (name, arch), version in sorted(inst.packages.items()):
                    if inst.family == "deb":
                        out.append(f"ii \t{name}\t{arch}\t{version}")
                    else:
                        epoch, ver, rel = versions.split_rpm_evr(version)
                        out.append(f"{name}\t{arch}\t{epoch or 0}:{ver}" + (f"-{rel}" if rel else ""))
            elif ("apt-get" in words and "install" in words) or "downgrade" in words:
                # apt-get install name:arch=version …; dnf/yum downgrade name-[epoch:]version-release.arch …
                for word in words:
                    wanted = _parse_spec(inst.family, word.rstrip(";"))
                    if wanted is None:
                        continue
                    for key in [k for k in inst.packages if k[0] == wanted[0] and wanted[1] in (None, k[1])]:
                        if inst.packages[key] != wanted[2]:
                            out.append(f"Setting {key[0]}.{key[1]} {inst.packages[key]} -> {wanted[2]}")
                            inst.packages[key] = wanted[2]
                            inst.installed_at[key] = now
                            inst.pending_reboot.discard(key)
                            inst.failed.pop(key, None)
            elif words[:2] == ["exit", "194"]:
                # User Guide, "Handling reboots when running commands": exit 194 makes the agent reboot the
                # node and run the script again. The rerun of an idempotent reboot script finds the reboot done:
                # a reboot, then Success with the new boot id (what patchflow's reboot_script prints).
                inst.reboots += 1
                inst.pending_reboot.clear()
                out.append(f"boot_id {inst.instance_id}-boot-{inst.reboots}")
                return ("Success", "Success", 0, "\n".join(out) + "\n", "")
            elif words[0] == "exit" and len(words) > 1 and words[1] != "0":
                return ("Failed", "Failed", int(words[1]), "\n".join(out), f"exit {words[1]}")
        return ("Success", "Success", 0, "\n".join(out) + ("\n" if out else ""), "")

    def _write_output(self, command: _Command, inv: _Invocation) -> None:
        if not command.output_bucket or inv.final is None or inv.final[1] in _NOT_DELIVERED:
            return
        s3 = self.client("s3")
        for plugin in _plugins(command):
            if plugin != _SHELL_PLUGIN and plugin != "PatchLinux":
                continue
            stdout, stderr = inv.final[3], inv.final[4]
            for stream, text in (("stdout", stdout), ("stderr", stderr)):
                if not text:
                    continue
                try:
                    s3.put_object(Bucket=command.output_bucket, Key=_output_key(command, inv, plugin, stream),
                                  Body=text.encode())  # fmt: skip
                except ClientError:
                    return  # like the agent: a missing bucket loses the output, not the command

    # ------------------------------------------------------------------------------------ views

    def _command_view(self, command: _Command) -> dict[str, Any]:
        now = self._clock()
        details = [self._status(inv, now)[1] for inv in command.invocations.values()]
        done = [d for d in details if d not in ("Pending", "In Progress", "Delayed")]
        status_details = _command_status(details, command.max_errors, command.cancelled, command.refused)
        return {
            "CommandId": command.command_id,
            "DocumentName": command.document_name,
            "DocumentVersion": "$DEFAULT",
            "Comment": command.comment,
            "ExpiresAfter": datetime.fromtimestamp(command.requested_at + command.timeout_seconds, UTC),
            "Parameters": command.parameters,
            "InstanceIds": list(command.instance_ids) if not command.targets else [],
            "Targets": command.targets,
            "RequestedDateTime": datetime.fromtimestamp(command.requested_at, UTC),
            "Status": _COMMAND_STATUS[status_details],
            "StatusDetails": status_details,
            "OutputS3BucketName": command.output_bucket,
            "OutputS3KeyPrefix": command.output_prefix,
            "MaxConcurrency": command.max_concurrency,
            "MaxErrors": command.max_errors,
            "TargetCount": len(command.invocations),
            "CompletedCount": len(done),
            "ErrorCount": sum(1 for d in done if d in _ERROR_DETAILS),
            "DeliveryTimedOutCount": done.count("Delivery Timed Out"),
            "TimeoutSeconds": command.timeout_seconds,
            "CloudWatchOutputConfig": command.cloudwatch or {"CloudWatchOutputEnabled": False},
        }

    def _plugin_view(self, command: _Command, inv: _Invocation, plugin: str, now: float) -> dict[str, Any]:
        status, details, code, stdout, stderr = self._status(inv, now)
        skipped = command.document_name == _PATCH_DOC and plugin != "PatchLinux" and inv.final is not None
        if skipped and details not in _NOT_DELIVERED:
            status, details, code = "Success", "Success", 0
            stdout, stderr = "Step execution skipped due to unsatisfied preconditions.\n", ""
        url = ""
        if command.output_bucket and stdout:
            url = f"{self.url}/{command.output_bucket}/{_output_key(command, inv, plugin, 'stdout')}"
        err_url = ""
        if command.output_bucket and stderr:
            err_url = f"{self.url}/{command.output_bucket}/{_output_key(command, inv, plugin, 'stderr')}"
        view: dict[str, Any] = {
            "Name": plugin,
            "Status": status,
            "StatusDetails": details,
            "ResponseCode": code,
            "StandardOutputUrl": url,
            "StandardErrorUrl": err_url,
            "OutputS3BucketName": command.output_bucket,
            "OutputS3KeyPrefix": command.output_prefix,
            "_stdout": stdout,
            "_stderr": stderr,
        }
        if stdout:
            view["Output"] = stdout[:2500]  # AWS: ListCommandInvocations shows the first 2,500 characters
        if _ran(inv, now):
            view["ResponseStartDateTime"] = datetime.fromtimestamp(inv.started_at, UTC)
            if inv.finished_at is not None:
                view["ResponseFinishDateTime"] = datetime.fromtimestamp(inv.finished_at, UTC)
        return view

    def _tags(self, inst: _Instance) -> dict[str, str]:
        if inst.hybrid:
            return inst.tags
        tags = self.client("ec2").describe_tags(
            Filters=[{"Name": "resource-id", "Values": [inst.instance_id]}]
        )["Tags"]
        return {t["Key"]: t["Value"] for t in tags}

    def _create_ec2_instance(self, instance_id: str | None, tags: dict[str, str]) -> str:
        """Run an instance in moto's EC2 (tags included); rename it when a specific id is wanted."""
        if instance_id is not None and not re.fullmatch(r"i-[0-9a-z]{8}(?:[0-9a-z]{9})?", instance_id):
            raise ValueError(
                f"EC2 instance ids are 'i-' + 8 or 17 lower-case letters or digits, got {instance_id!r}"
            )
        spec = [{"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}]
        created = self.client("ec2").run_instances(
            ImageId="ami-12c6146b", MinCount=1, MaxCount=1, **({"TagSpecifications": spec} if tags else {})
        )["Instances"][0]["InstanceId"]
        if instance_id is None:
            return str(created)
        # moto assigns random ids; a test wants readable ones. Renaming touches moto internals (the instance
        # object's id and the tag index), so fail loudly if moto ever changes them.
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[ACCOUNT_ID][self.region]
        instance = backend.get_instance(created)
        instance.id = instance_id
        if created in backend.tags:
            backend.tags[instance_id] = backend.tags.pop(created)
        if backend.get_instance(instance_id) is not instance:
            raise RuntimeError("could not rename a moto EC2 instance; pass instance_id=None")
        return instance_id


# -------------------------------------------------------------------------------------------- helpers


def _family_of(platform: str) -> str | None:
    lowered = platform.lower()
    if lowered.startswith(_DEB_PLATFORMS):
        return "deb"
    if lowered.startswith(_RPM_PLATFORMS):
        return "rpm"
    return None


def _install_target(
    family: str,
    key: tuple[str, str],
    have: str,
    approved: Sequence[str],
    offered: Sequence[str],
    override: list[dict[str, Any]] | None,
) -> str | None:
    """The version an Install brings the installed package ``key`` (now at ``have``) to, or None.

    Without an override list: the latest ``approved`` version. With one: what its entries select for this
    package — an exact title that version, a title pattern or no title the matching ``offered`` versions
    (User Guide, AWS-RunPatchBaseline, ``InstallOverrideList``: the list replaces the baseline's install set).
    Only a version newer than ``have`` is installed.
    """
    candidates: list[str] = []
    if override is None:
        candidates = list(approved)
    else:
        kb_id = f"{key[0]}.{key[1]}"
        for entry in override:
            if not fnmatch.fnmatchcase(kb_id, str(entry["id"])):
                continue
            title = entry.get("title")
            if title is None:
                candidates.extend(offered)
            elif not any(c in str(title) for c in "*?["):
                candidates.append(_version_from_title(family, kb_id, str(title)))
            else:
                candidates.extend(v for v in offered if _title_matches(family, kb_id, v, str(title)))
    newer = [v for v in candidates if versions.compare(family, v, have) > 0]
    return versions.latest(family, newer) if newer else None


def _ssh_install_set(override: list[dict[str, Any]] | None, packages: HostPackages) -> list[Package]:
    """The versions an Install on an SSH-backed host installs: the override list's (chosen among every version
    the host's sources offer), or without one the security pockets' (the default baseline's approvals)."""
    chosen = []
    for key, have in sorted(packages.installed.items()):
        offered = [_norm(o.version) for o in packages.offered if (o.name, o.arch) == key]
        approved = [_norm(o.version) for o in packages.offered if (o.name, o.arch) == key and o.security]
        target = _install_target("deb", key, have, approved, offered, override)
        if target is not None:
            chosen.append(Package(key[0], key[1], target))
    return chosen


def ssh_instance_id(host_name: str) -> str:
    """The managed-instance id an SSH host is registered under: ``mi-`` + its name's letters and digits,
    zero-padded to 17 (``lab-01`` → ``mi-000000000000lab01``); a longer name is hashed."""
    plain = re.sub(r"[^0-9a-z]", "", host_name.lower())
    if len(plain) > 17:
        plain = hashlib.sha256(host_name.encode()).hexdigest()[:17]
    return "mi-" + plain.rjust(17, "0")


def _summary(counts: Counter[str]) -> str:
    """The summary line AWS-RunPatchBaseline prints (seen in the field, aws/amazon-ssm-agent#549)."""
    return (
        f"Installed count: {counts['INSTALLED']}, Installed Other count: {counts['INSTALLED_OTHER']}, "
        f"Installed Pending Reboot count: {counts['INSTALLED_PENDING_REBOOT']}, Failed count: "
        f"{counts['FAILED']}, Missing count: {counts['MISSING']}"
    )


def _due_at(inv: _Invocation, now: float) -> float | None:
    """When an unfinished invocation ended (None: it has not): its planned end, or when its real run ended."""
    if inv.job is None:
        return inv.done_at if inv.done_at <= now else None
    if not inv.job.done():
        return None
    try:
        return inv.job.result().finished_at
    except Exception:  # noqa: BLE001 - reported by _finish_ssh
        return now


def _ran(inv: _Invocation, now: float) -> bool:
    """Whether the plugin started on the node: not before its start, not when it was never delivered, not when
    it was cancelled while still pending."""
    if now < inv.started_at or (inv.finished_at is not None and inv.finished_at < inv.started_at):
        return False
    return inv.final is None or inv.final[1] not in _NOT_DELIVERED


def _string_time(moment: float) -> str:
    """A ``StringDateTime`` as AWS writes it: UTC with milliseconds, ``2021-04-08T16:13:07.913Z``."""
    return datetime.fromtimestamp(moment, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _duration(seconds: float) -> str:
    """An ISO 8601 duration as AWS writes ``ExecutionElapsedTime`` (Java's ``Duration``): ``PT0.203S``,
    ``PT1M5.5S``, ``PT0S``."""
    millis = max(0, round(seconds * 1000))
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    whole, millis = divmod(millis, 1000)
    text = "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if whole or millis or text == "PT":
        text += str(whole) + (f".{millis:03d}".rstrip("0") if millis else "") + "S"
    return text


def _platform_of(family: str, product: str | None) -> tuple[str, str]:
    """An SSM product name (``Ubuntu22.04``, ``AmazonLinux2023``) → (PlatformName, PlatformVersion)."""
    names = {"Ubuntu": "Ubuntu", "Debian": "Debian", "AmazonLinux": "Amazon Linux",
             "RedhatEnterpriseLinux": "Red Hat Enterprise Linux", "CentOS": "CentOS", "RockyLinux": "Rocky Linux",
             "AlmaLinux": "AlmaLinux", "OracleLinux": "Oracle Linux Server"}  # fmt: skip
    match = re.fullmatch(r"([A-Za-z]+?)(\d[\d.]*)?", product or "")
    if match and match[1] in names:
        return names[match[1]], match[2] or ""
    return ("Ubuntu", "22.04") if family == "deb" else ("Amazon Linux", "2023")


def _platform_type(platform: str) -> str:
    lowered = platform.lower()
    if "windows" in lowered:
        return "Windows"
    return "MacOS" if lowered.startswith(("mac", "darwin")) else "Linux"


def _norm(version: str) -> str:
    """Drop an explicit zero epoch (``0:1.2-3`` → ``1.2-3``): the same version, one spelling."""
    return version[2:] if version.startswith("0:") else version


def _title(family: str, kb_id: str, version: str) -> str:
    """``DescribeInstancePatches`` Title: ``name.arch:epoch:version-release`` (epoch 0 spelled out)."""
    if family == "rpm":
        epoch, ver, rel = versions.split_rpm_evr(version)
        return f"{kb_id}:{epoch or 0}:{ver}" + (f"-{rel}" if rel else "")
    deb_epoch, upstream, revision = versions.split_deb(version)
    return f"{kb_id}:{deb_epoch}:{upstream}" + (f"-{revision}" if revision else "")


def _version_from_title(family: str, kb_id: str, title: str) -> str:
    """An override list title (``name.arch:[epoch:]version``) → the version it names."""
    rest = title[len(kb_id) + 1 :] if title.startswith(kb_id + ":") else title.split(":", 1)[-1]
    return _norm(rest)


def _title_matches(family: str, kb_id: str, version: str, pattern: str) -> bool:
    spellings = {f"{kb_id}:{version}", _title(family, kb_id, version)}
    return any(fnmatch.fnmatchcase(s, pattern) for s in spellings)


def _parse_spec(family: str, word: str) -> tuple[str, str | None, str] | None:
    """A package spec in a restore command → (name, arch or None, version)."""
    if family == "deb":
        match = re.fullmatch(r"([a-z0-9][a-z0-9+.\-]*)(?::([a-z0-9\-]+))?=(\S+)", word)
        return (match[1], match[2], _norm(match[3])) if match else None
    match = re.fullmatch(r"(.+)-((?:\d+:)?[^-:]+)-([^-]+)\.([^.]+)", word)
    return (match[1], match[4], _norm(f"{match[2]}-{match[3]}")) if match else None


def _kind(document: str, parameters: dict[str, list[str]]) -> str:
    if document == _PATCH_DOC:
        return parameters["Operation"][0].lower()
    script = "\n".join(parameters.get("commands", []))
    if "dpkg-query" in script or "rpm -qa" in script:
        return "query"
    if "--allow-downgrades" in script or " downgrade " in script:
        return "restore"
    return "shell"


def _plugins(command: _Command) -> Sequence[str]:
    return _PATCH_PLUGINS if command.document_name == _PATCH_DOC else (_SHELL_PLUGIN,)


def _output_key(command: _Command, inv: _Invocation, plugin: str, stream: str) -> str:
    """AWS's layout: ``prefix/commandId/instanceId/awsrunShellScript/0.awsrunShellScript/stdout``."""
    step = (
        "awsrunShellScript/0.awsrunShellScript"
        if plugin == _SHELL_PLUGIN
        else f"awsrunPatchBaseline/{plugin}"
    )
    prefix = f"{command.output_prefix.rstrip('/')}/" if command.output_prefix else ""
    return f"{prefix}{command.command_id}/{inv.instance_id}/{step}/{stream}"


def _fold(value: str) -> str:
    return value.replace("_", "").replace(" ", "").lower()


def _page(rows: list[Any], params: dict[str, Any], *, default: int) -> tuple[list[Any], dict[str, str]]:
    start = int(params.get("NextToken") or 0)
    size = int(params.get("MaxResults") or default)
    page = rows[start : start + size]
    return page, ({"NextToken": str(start + size)} if start + size < len(rows) else {})


def _limit(text: str, total: int) -> int:
    return total * int(text[:-1]) // 100 if text.endswith("%") else int(text)


def _command_status(details: list[str], max_errors: str, cancelled: bool, refused: str) -> str:
    """The command's ``StatusDetails`` from its invocations' (User Guide, "Understanding command statuses",
    "Detailed status for a command"; ``MaxErrors`` N tolerates N, as for rate control)."""
    if refused:
        return refused  # Rate Exceeded, Access Denied: stopped before running anywhere
    if not details:
        return "No Instances In Tag"
    if any(d in ("Pending", "In Progress", "Delayed") for d in details):
        return "Pending" if all(d == "Pending" for d in details) else "In Progress"
    if cancelled:
        return "Cancelled"
    limit = _limit(max_errors, len(details))
    failed, timed_out = details.count("Failed"), details.count("Execution Timed Out")
    if failed + timed_out > limit:  # "The value of MaxErrors or more invocations shows a status of ..."
        return "Execution Timed Out" if timed_out > limit and failed <= limit else "Failed"
    if details.count("Delivery Timed Out") > limit:
        return "Delivery Timed Out"
    if all(d in _NEVER_SENT for d in details):  # "if all invocations [...] Undeliverable, [...] Failed"
        return "Failed"
    if all(d == "Success" or d in _NEVER_SENT for d in details):  # 4 Undeliverable + 1 Success = Success
        return "Success"
    return "Incomplete"


def _command_matches(view: dict[str, Any], command: _Command, filters: dict[str, str]) -> bool:
    for key, value in filters.items():
        if key == "DocumentName" and command.document_name != value:
            return False
        # The Status filter takes coarse and detailed values (NoInstancesInTag; LimitExceeded = Rate Exceeded).
        detailed = view["StatusDetails"].replace(" ", "").replace("RateExceeded", "LimitExceeded")
        if key == "Status" and value not in (view["Status"], detailed):
            return False
        if key == "ExecutionStage" and (value == "Executing") != (
            view["Status"] in ("Pending", "InProgress")
        ):
            return False
        if key in ("InvokedAfter", "InvokedBefore"):
            at = datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            if (key == "InvokedAfter" and command.requested_at < at) or (
                key == "InvokedBefore" and command.requested_at > at
            ):
                return False
    return True


SSH_INVENTORY_ENV: Final = "PATCHFLOW_FAKE_SSM_SSH_INVENTORY"
"""An SSH inventory whose apt hosts ``main`` registers as SSH-backed managed instances (``--ssh-inventory``)."""


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m patchflow.testing.ssm_endpoint [FLEET.yaml] [--ssh-inventory FILE]``: a local fake AWS.

    Serves until interrupted; prints the URL and the settings that point patchflow at it. A DEMO backend:
    the fleet file's instances are simulated (nothing is patched); the hosts of an SSH inventory (the lab's,
    ``patchflow lab up``) are real, and commands sent to them run on them. State lives in memory.
    """
    import argparse
    import os
    import sys

    from patchflow.executors.simulated.fleet import load_fleet
    from patchflow.executors.ssh import load_inventory

    parser = argparse.ArgumentParser(
        prog="python -m patchflow.testing.ssm_endpoint", description=main.__doc__
    )
    parser.add_argument(
        "fleet",
        nargs="?",
        help="a fleet file whose instances to register (patchflow.executors.simulated.fleet)",
    )
    parser.add_argument(
        "--bucket", default="patchflow-demo", help="S3 bucket to create (default patchflow-demo)"
    )
    parser.add_argument("--run-seconds", type=float, default=1.0, help="how long a command runs")
    parser.add_argument(
        "--ssh-inventory",
        default=os.environ.get(SSH_INVENTORY_ENV) or None,
        help="register this SSH inventory's apt hosts as managed instances that really run commands "
        f"(default ${SSH_INVENTORY_ENV})",
    )
    args = parser.parse_args(argv)
    endpoint = SsmEndpoint(
        timings=Timings(not_found_seconds=0.5, pending_seconds=0.3, run_seconds=args.run_seconds)
    )
    with endpoint:
        endpoint.client("s3").create_bucket(Bucket=args.bucket)
        try:
            count = len(endpoint.register_fleet(load_fleet(args.fleet))) if args.fleet else 0
            inventory = load_inventory(args.ssh_inventory) if args.ssh_inventory else None
            real = endpoint.register_ssh_inventory(inventory) if inventory else {}
        except (PatchflowError, ValueError) as exc:
            sys.stderr.write(f"error: {exc}\n")
            raise SystemExit(2) from None
        for host, instance_id in real.items():
            sys.stdout.write(f"  {instance_id}  {host} (real, over SSH)\n")
        sys.stdout.write(
            f"fake SSM/EC2/S3 endpoint at {endpoint.url}: {count} simulated instance(s) (nothing is patched), "
            f"{len(real)} real host(s)\n"
            f"  export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing\n"
            f"  export PATCHFLOW_SSM_ENDPOINT_URL={endpoint.url} PATCHFLOW_SSM_REGION={endpoint.region} "
            f"PATCHFLOW_SSM_BUCKET={args.bucket}\n"
            "  plan: executor: {kind: ssm}\nCtrl-C stops it.\n"
        )
        sys.stdout.flush()
        with contextlib.suppress(KeyboardInterrupt):
            threading.Event().wait()


if __name__ == "__main__":
    main()
