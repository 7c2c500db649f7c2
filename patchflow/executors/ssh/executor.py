"""The SSH executor: patch fleets without SSM, agentless like Ansible (asyncssh).

* **Connections** — key authentication, host keys verified against the inventory's ``known_hosts`` (an
  unknown or changed key makes the host ``undeliverable``; nothing is ever accepted blindly), a pool of at most
  ``max_connections`` open connections (idle ones are closed least recently used first), ``sudo -n`` for
  any user but root.
* **On the host** — every call runs the stdlib-only agent (:mod:`.agent`) with ``python3 -I -S -c``; nothing
  is installed (the host caches the compiled agent under ``/var/lib/patchflow/agent``). Installs and restores
  are transactions the agent runs *detached* on the host under an **operation journal**
  (``/var/lib/patchflow/operations/<sha256(operation id)>.json``, written before and after the package
  transaction): a retried activity — on any worker, after any crash — finds the journal and waits for, or
  returns, what already happened; it never installs twice.
* **Exactly the pinned versions** — apt ``name=version`` for the set's packages that are installed below
  their pinned version, other members of the set the resolver pulls in pinned too; apt's plan is checked
  before dpkg runs (a ``DPkg::Pre-Install-Pkgs`` hook sees exactly what apt is about to do): if it would
  install, upgrade, downgrade or remove anything outside the pinned set, the instance fails with that list and
  nothing is changed.
* **Baseline Sources** — on a host whose product (``/etc/os-release``: ``Debian12``, ``Ubuntu22.04``) a source
  names, the install and its plan check use exactly the sources naming it, through a private directory the
  agent removes afterwards: apt ``-o Dir::Etc::SourceList=… -o Dir::State::Lists=…`` (the host's own lists
  are neither read nor refreshed), dnf ``--setopt=reposdir=…`` (every other repository off). A source that
  cannot be fetched fails the host with its name and changes nothing (see :mod:`.agent`).
* **Outcomes** — unreachable, host key or authentication failure, no password-less sudo, no python3 →
  ``undeliverable`` (with the reason); resolver or maintainer-script failure → ``failed`` with the tail of the
  output (the failed transaction is reverted to the versions before it, ``dpkg --audit`` clean); longer than
  ``command_timeout_seconds`` → the transaction is killed and the instance ``timed_out``.
* **Reboots** — ``RebootIfNeeded``: when the host says a reboot is required (``/var/run/reboot-required``),
  run ``reboot_command`` and wait (up to ``reboot_timeout_seconds``) for the host to come back with a *new
  boot id*; ``NoReboot``: the result says ``pending_reboot``. (SSM's ``RebootIfNeeded`` reboots after any
  install; this executor asks the host.)
* **Rollback** (:meth:`restore`) — ``apt-get install --allow-downgrades name=version`` of the recorded
  versions (an empty version removes a package the install added), with the same simulation check.
* **Health** — the host's ``health_command`` (inventory) or the plan's, run as the SSH user: exit 0 is
  healthy. Without one: reachable and ``dpkg --audit`` clean.
* **Building blocks** for other drivers of the same hosts (the fake SSM endpoint's agent,
  :mod:`patchflow.testing.ssm_agent`): :meth:`SshExecutor.run` (a shell command as root),
  :meth:`SshExecutor.reboot_and_wait` (reboot now, wait for a new boot id), :meth:`SshExecutor.package_inventory`
  (dpkg's packages and what the apt sources offer), and ``revert_failed_installs=False`` (leave a failed
  transaction as the package manager left it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import shlex
import socket
import time
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import asyncssh

from patchflow.errors import NotFoundError
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
from patchflow.executors.ssh import agent
from patchflow.executors.ssh.inventory import SshHost, SshInventory

__all__ = ["REBOOT_OPTIONS", "AgentError", "HostUnreachable", "SshExecutor"]

REBOOT_OPTIONS: Final = ("RebootIfNeeded", "NoReboot")
#: Where a host keeps the boot id each reboot operation started from (:meth:`SshExecutor.reboot`).
REBOOT_DIR: Final = "/var/lib/patchflow/reboots"
AGENT_SOURCE: Final = Path(agent.__file__).read_text(encoding="utf-8")
_STATUSES: Final = ("succeeded", "failed", "timed_out", "undeliverable")


class HostUnreachable(Exception):
    """The host cannot be driven: unreachable, host key or auth failure, no sudo, no python3.

    ``sent``: the command had gone out on an open connection when it was lost (the host may have acted on it).
    """

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        self.sent = sent


class AgentError(Exception):
    """The agent answered with an error (a bug or a broken host, not a package failure)."""


class _Pool:
    """At most ``limit`` hosts are talked to at once and at most ``limit`` connections stay open."""

    def __init__(self, limit: int, connect_timeout: float) -> None:
        self.limit = limit
        self.connect_timeout = connect_timeout
        self._conns: OrderedDict[str, asyncssh.SSHClientConnection] = OrderedDict()
        self._in_use: dict[str, int] = {}
        self._sem: asyncio.Semaphore | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connecting: dict[str, asyncio.Lock] = {}
        self.commands = 0
        """SSH commands (exec channels) sent, retries included."""

    def _bind(self) -> asyncio.Semaphore:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # connections belong to one event loop
            self._conns.clear()
            self._in_use.clear()
            self._connecting.clear()
            self._sem = asyncio.Semaphore(self.limit)
            self._loop = loop
        assert self._sem is not None
        return self._sem

    async def run(
        self, host: SshHost, command: str, stdin: str | None, timeout: float
    ) -> asyncssh.SSHCompletedProcess:
        async with self._bind():
            self._in_use[host.name] = self._in_use.get(host.name, 0) + 1
            sent = False
            try:
                for attempt in (1, 2):
                    conn = await self._connection(host)
                    self.commands += 1
                    try:
                        return await asyncio.wait_for(conn.run(command, input=stdin, check=False), timeout)
                    except asyncssh.ChannelOpenError:
                        self.drop(host.name)
                        if attempt == 2:
                            raise
                    except TimeoutError:  # (an OSError too): not sent again, it may still run on the host
                        sent = True
                        self.drop(host.name)
                        raise
                    except (asyncssh.ConnectionLost, asyncssh.DisconnectError, OSError):
                        sent = True  # the session was open: the host may have started the command
                        self.drop(host.name)
                        if attempt == 2:
                            raise
                raise AssertionError("unreachable")
            except (asyncssh.Error, OSError, TimeoutError) as exc:
                exc.patchflow_sent = sent  # type: ignore[union-attr]
                raise
            finally:
                self._in_use[host.name] -= 1

    async def _connection(self, host: SshHost) -> asyncssh.SSHClientConnection:
        conn = self._conns.get(host.name)
        if conn is not None and not conn.is_closed():
            self._conns.move_to_end(host.name)
            return conn
        lock = self._connecting.setdefault(host.name, asyncio.Lock())
        async with lock:
            conn = self._conns.get(host.name)
            if conn is not None and not conn.is_closed():
                return conn
            conn = await asyncssh.connect(
                host.address,
                port=host.port,
                username=host.user,
                client_keys=[str(host.key_file)] if host.key_file else (),
                known_hosts=str(host.known_hosts) if host.known_hosts else (),
                agent_path=None,
                connect_timeout=self.connect_timeout,
                keepalive_interval=15,
                login_timeout=self.connect_timeout,
            )
            _acknowledge_at_once(conn)
            self._conns[host.name] = conn
            self._evict()
            return conn

    def _evict(self) -> None:
        while len(self._conns) > self.limit:
            for name in list(self._conns):
                if not self._in_use.get(name):
                    self._conns.pop(name).close()
                    break
            else:
                return

    def drop(self, name: str) -> None:
        conn = self._conns.pop(name, None)
        if conn is not None:
            conn.close()

    async def close(self) -> None:
        conns = list(self._conns.values())
        self._conns.clear()
        for conn in conns:
            conn.close()
        for conn in conns:
            with contextlib.suppress(Exception):
                await conn.wait_closed()


class SshExecutor:
    """Drive the hosts of an :class:`~patchflow.executors.ssh.inventory.SshInventory` over SSH.

    Args:
        inventory: the hosts.
        reboot_option: ``RebootIfNeeded`` or ``NoReboot``.
        health_command: the plan's health check (a host's ``health_command`` variable wins).
        max_connections: hosts talked to at once, and connections kept open.
        connect_timeout_seconds: TCP connect plus SSH login.
        command_timeout_seconds: a package transaction running longer is killed (``timed_out``).
        reboot_timeout_seconds: how long a rebooted host may take to come back with a new boot id.
        poll_seconds: the longest single wait on the host before patchflow asks again.
        start_wait_seconds: how long the command that starts a transaction waits on the host for it to end
            (closing it when no reboot is due): an install that takes less is one SSH command instead of two,
            and its result comes back with the send. 0 returns as soon as the transaction is under way.
        revert_failed_installs: put the packages a failed install changed back to their versions before it
            (patchflow's own behaviour). False leaves the host as the package manager left it, as
            ``AWS-RunPatchBaseline`` does (the fake SSM endpoint's lab hosts).
    """

    def __init__(
        self,
        inventory: SshInventory,
        *,
        reboot_option: str = "RebootIfNeeded",
        health_command: str | None = None,
        max_connections: int = 10,
        connect_timeout_seconds: float = 10.0,
        command_timeout_seconds: float = 3600.0,
        reboot_timeout_seconds: float = 600.0,
        poll_seconds: float = 10.0,
        start_wait_seconds: float = 5.0,
        revert_failed_installs: bool = True,
    ) -> None:
        if reboot_option not in REBOOT_OPTIONS:
            raise ValueError(f"reboot_option {reboot_option!r}: use RebootIfNeeded or NoReboot")
        self.inventory = inventory
        self.reboot_option = reboot_option
        self.health_command = health_command
        self.command_timeout_seconds = command_timeout_seconds
        self.reboot_timeout_seconds = reboot_timeout_seconds
        self.poll_seconds = poll_seconds
        self.start_wait_seconds = start_wait_seconds
        self.revert_failed_installs = revert_failed_installs
        self._pool = _Pool(max_connections, connect_timeout_seconds)
        self._operations: dict[str, str] = {}

    async def close(self) -> None:
        await self._pool.close()

    @property
    def commands_sent(self) -> int:
        """SSH commands sent so far (each one round trip and one process on the host): for benchmarks."""
        return self._pool.commands

    # --------------------------------------------------------------------------------- discovery
    async def discover(self) -> list[InstanceInfo]:
        async def one(host: SshHost) -> InstanceInfo:
            try:
                facts = await self._agent(host, "facts", {"packages": False}, timeout=30)
            except (HostUnreachable, AgentError):
                return InstanceInfo(
                    host.name,
                    dict(host.tags),
                    family=host.family,
                    online=False,
                    availability_zone=host.availability_zone,
                )
            return InstanceInfo(
                host.name,
                dict(host.tags),
                family=host.family or facts.get("family") or None,
                product=facts.get("product") or None,
                online=True,
                availability_zone=host.availability_zone,
            )

        return list(await asyncio.gather(*(one(h) for h in self.inventory.hosts.values())))

    async def scan(self, instance_id: str) -> list[Package]:
        facts = await self._agent(self._host(instance_id), "facts", {}, timeout=60)
        return [Package(n, a, v) for n, a, v in facts["packages"]]

    async def facts(self, instance_id: str) -> dict[str, Any]:
        """Boot id, family, product, packages, reboot required and ``dpkg --audit`` of a host."""
        return await self._agent(self._host(instance_id), "facts", {}, timeout=60)

    async def package_inventory(self, instance_id: str, *, refresh: bool = True) -> dict[str, Any]:
        """A Debian host's package database and what its apt sources offer (agent ``inventory``): ``installed``
        rows ``[name, arch, version, dpkg state]``, ``offered`` rows ``[name, arch, version, suite, codename,
        section, priority]`` for installed names, and ``boot_id``. ``refresh`` runs ``apt-get update`` first.

        Raises:
            HostUnreachable: the host cannot be driven.
            AgentError: the host is not an apt host, or ``apt-get update`` failed (the message says which).
        """
        answer = await self._agent(self._host(instance_id), "inventory", {"refresh": refresh}, timeout=900)
        if answer.get("error"):
            raise AgentError(f"{instance_id}: {answer['error']}")
        return answer

    async def run(
        self, instance_id: str, command: str, *, stdin: str | None = None, timeout: float = 3600.0
    ) -> tuple[int, str, str]:
        """Run a shell command on the host as root (through ``sudo -n`` unless the SSH user is root); returns
        ``(exit status, stdout, stderr)``. The command itself must stop in time (``timeout`` only stops
        waiting for it).

        Raises:
            HostUnreachable: the host cannot be reached or logged in to, or the command outlived ``timeout``.
        """
        host = self._host(instance_id)
        line = ("sudo -n " if host.sudo else "") + "sh -c " + shlex.quote(command)
        try:
            result = await self._pool.run(host, line, stdin, timeout)
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            raise HostUnreachable(
                f"{host.name} ({host.address}:{host.port}): {_reason(exc)}",
                sent=bool(getattr(exc, "patchflow_sent", False)),
            ) from exc
        status = result.exit_status if result.exit_status is not None else -1
        return status, _text(result.stdout), _text(result.stderr)

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
        """A lifecycle hook's command, as root on the host (``timeout <seconds>`` stops it on the host).

        SSH keeps no record of it: a retried step runs it again (``operation_id`` only names it in logs).
        """
        if document is not None:
            raise ValueError("ssm_document steps need the ssm executor")
        started = time.monotonic()
        wrapped = f"timeout {max(1, int(timeout_seconds))} sh -c {shlex.quote(command)} 2>&1"
        try:
            status, stdout, stderr = await self.run(instance_id, wrapped, timeout=timeout_seconds + 30)
        except HostUnreachable as exc:
            return CommandResult(instance_id, -1, str(exc), _since(started), status="undeliverable")
        output = (stdout + stderr)[-4000:]
        if status == 124:  # timeout(1): the command outlived its time and was stopped
            return CommandResult(
                instance_id,
                -1,
                output + f"\n(stopped after {timeout_seconds:.0f} s)",
                _since(started),
                "timed_out",
            )
        return CommandResult(instance_id, status, output, _since(started))

    async def reboot(self, instance_id: str, *, operation_id: str) -> InstallResult:
        """Reboot the host at most once per ``operation_id`` and wait for it to come back with a new boot id
        (the protocol's reboot, for ``reboot:`` in a plan).

        The host keeps the record: ``/var/lib/patchflow/reboots/<sha256(id)>`` holds the boot id the reboot
        started from, written before the reboot command runs. A retry whose host already shows another boot id
        is done; one that still shows the recorded boot id (the reboot has not happened yet, or a crash came
        between the record and the command) issues the command again only if the host is still in that boot —
        checked on the host in the same shell — so a host that came back is never rebooted a second time.
        """
        host = self._host(instance_id)
        started = time.monotonic()
        marker = f"{REBOOT_DIR}/{hashlib.sha256(operation_id.encode()).hexdigest()}"
        boot = "/proc/sys/kernel/random/boot_id"
        record = (
            f"mkdir -p {REBOOT_DIR} && {{ [ -s {marker} ] || {{ cat {boot} > {marker}.tmp && mv {marker}.tmp "
            f"{marker}; }}; }} && cat {marker} && cat {boot}"
        )
        try:
            status, out, err = await self.run(instance_id, record, timeout=60)
        except HostUnreachable as exc:
            return InstallResult(instance_id, "undeliverable", message=str(exc))
        lines = out.split()
        if status != 0 or len(lines) != 2:
            return InstallResult(
                instance_id, "failed", message=f"cannot record the reboot: {err.strip() or out}"
            )
        before, current = lines
        now: str | None = current
        if now == before:
            inner = shlex.quote("sleep 1; " + host.reboot_command)
            issue = (
                f'[ "$(cat {boot})" = {shlex.quote(before)} ] && nohup setsid sh -c {inner} >/dev/null 2>&1 &'
            )
            with contextlib.suppress(HostUnreachable):  # the host may already be going down
                await self.run(instance_id, issue, timeout=60)
            now = await self._new_boot_id(host, before)
        seconds = time.monotonic() - started
        if now is None:
            return InstallResult(
                instance_id,
                "failed",
                message=f"{host.name} did not come back with a new boot id within "
                f"{self.reboot_timeout_seconds:.0f}s of its reboot",
                duration_seconds=seconds,
                pending_reboot=True,
            )
        return InstallResult(
            instance_id,
            "succeeded",
            rebooted=True,
            message=f"rebooted (new boot id {now})",
            duration_seconds=seconds,
            boot_id=now,
        )

    async def pending_reboot_packages(self, instance_id: str) -> list[tuple[str, str | None]]:
        """The packages Debian's ``/var/run/reboot-required.pkgs`` names while ``/var/run/reboot-required``
        exists (the host wants a reboot; a name without arch: every arch). A reboot-required host whose
        list is empty gives ``[("*", None)]``, which no package matches: the host is reported, no row changes."""
        script = (
            "[ -e /var/run/reboot-required ] || exit 0; echo required; "
            "cat /var/run/reboot-required.pkgs 2>/dev/null || true"
        )
        status, out, _ = await self.run(instance_id, script, timeout=60)
        lines = [line.strip() for line in out.splitlines() if line.strip()]
        if status != 0 or not lines or lines[0] != "required":
            return []
        names = sorted(set(lines[1:]))
        return [(name, None) for name in names] or [("*", None)]

    async def _new_boot_id(self, host: SshHost, before: str) -> str | None:
        """Wait until the host answers with a boot id other than ``before`` (None: not within the timeout)."""
        deadline = time.monotonic() + self.reboot_timeout_seconds
        while time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            try:
                facts = await self._agent(host, "facts", {"packages": False}, timeout=30)
            except (HostUnreachable, AgentError):
                self._pool.drop(host.name)
                continue
            if facts["boot_id"] and facts["boot_id"] != before:
                return str(facts["boot_id"])
        return None

    async def reboot_and_wait(self, instance_id: str) -> str:
        """Reboot the host now (its ``reboot_command``, detached so this call returns first) and wait for it
        to come back with a new boot id; returns that boot id.

        Raises:
            HostUnreachable: the host did not come back within ``reboot_timeout_seconds``.
        """
        host = self._host(instance_id)
        before = (await self._agent(host, "facts", {"packages": False}, timeout=60))["boot_id"]
        detached = f"nohup setsid sh -c {shlex.quote('sleep 1; ' + host.reboot_command)} >/dev/null 2>&1 &"
        await self.run(instance_id, detached, timeout=60)
        after = await self._new_boot_id(host, before)
        if after is not None:
            return after
        raise HostUnreachable(
            f"{host.name} did not come back with a new boot id within {self.reboot_timeout_seconds:.0f}s of its reboot"
        )

    # --------------------------------------------------------------------------------- installs
    async def install(
        self,
        instance_id: str,
        patches: Sequence[Package],
        *,
        operation_id: str,
        sources: Sequence[RepoSource] = (),
    ) -> InstallResult:
        started = await self.start_install(instance_id, patches, operation_id=operation_id, sources=sources)
        if started is not None:
            return started
        return await self.finish_install(instance_id, operation_id=operation_id)

    async def start_install(
        self,
        instance_id: str,
        patches: Sequence[Package],
        *,
        operation_id: str,
        sources: Sequence[RepoSource] = (),
    ) -> InstallResult | None:
        return await self._start(instance_id, "install", patches, operation_id, sources)

    async def finish_install(self, instance_id: str, *, operation_id: str) -> InstallResult:
        return await self._finish(instance_id, operation_id, kind="install")

    async def restore(
        self, instance_id: str, packages: Sequence[Package], *, operation_id: str
    ) -> InstallResult:
        started = await self._start(instance_id, "restore", packages, operation_id)
        if started is not None:
            return started
        return await self._finish(instance_id, operation_id, kind="restore")

    async def operation_result(self, operation_id: str) -> InstallResult | None:
        instance_id = self._operations.get(operation_id) or self._instance_of(operation_id)
        if instance_id is None:
            return None
        try:
            answer = await self._agent(self._host(instance_id), "get", {"operation_id": operation_id})
        except (HostUnreachable, AgentError):
            return None
        journal = answer.get("journal")
        if journal is None or journal.get("state") != "done":
            return None
        return _final_result(instance_id, journal)

    async def cancel(self, operation_id: str) -> bool:
        instance_id = self._operations.get(operation_id) or self._instance_of(operation_id)
        if instance_id is None:
            return False
        try:
            answer = await self._agent(
                self._host(instance_id),
                "cancel",
                {"operation_id": operation_id, "status": "failed", "message": "cancelled by an operator"},
            )
        except (HostUnreachable, AgentError):
            return False
        return answer.get("journal") is not None

    async def health_check(self, instance_id: str) -> HealthResult:
        host = self._host(instance_id)
        command = host.health_command or self.health_command
        try:
            if command is None:
                facts = await self._agent(host, "facts", {"packages": False}, timeout=60)
                if facts.get("audit"):
                    return HealthResult(instance_id, False, "dpkg --audit: " + facts["audit"][-300:])
                return HealthResult(instance_id, True, "reachable; dpkg --audit clean (no health_command)")
            result = await self._pool.run(host, command, None, timeout=120)
        except (HostUnreachable, AgentError) as exc:
            return HealthResult(instance_id, False, str(exc))
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            return HealthResult(instance_id, False, _reason(exc))
        if result.exit_status == 0:
            return HealthResult(instance_id, True, "")
        return HealthResult(
            instance_id, False, f"health command exited {result.exit_status}: {_text(result.stderr)[-300:]}"
        )

    # ----------------------------------------------------------------------------------- internals
    def _host(self, instance_id: str) -> SshHost:
        host = self.inventory.hosts.get(instance_id)
        if host is None:
            raise NotFoundError(f"{instance_id!r} is not in the SSH inventory {self.inventory.source}")
        return host

    def _instance_of(self, operation_id: str) -> str | None:
        """patchflow's operation ids are ``wave/stage/instance/install/attempt[/restore]``."""
        parts = operation_id.split("/")
        for i in range(len(parts) - 1, 0, -1):
            if parts[i] == "install" and parts[i - 1] in self.inventory.hosts:
                return parts[i - 1]
        return None

    async def _start(
        self,
        instance_id: str,
        kind: str,
        packages: Sequence[Package],
        operation_id: str,
        sources: Sequence[RepoSource] = (),
    ) -> InstallResult | None:
        host = self._host(instance_id)
        self._operations[operation_id] = instance_id
        request = {
            "operation_id": operation_id,
            "kind": kind,
            "packages": [[p.name, p.arch, p.version] for p in packages],
            "revert_on_failure": self.revert_failed_installs,
            "wait": self.start_wait_seconds,
            "close": self.reboot_option,
            "sources": [
                {"name": s.name, "products": list(s.products), "configuration": s.configuration}
                for s in sources
            ],
        }
        started = time.monotonic()
        try:
            answer = await self._agent(host, "start", request, timeout=120 + self.start_wait_seconds)
        except HostUnreachable as exc:
            if exc.sent:
                # Lost while the start was on the host (it waits for short transactions): the transaction may
                # be under way. The wait finds its journal (waiting out an outage), or says nothing started.
                return None
            return InstallResult(
                instance_id, "undeliverable", message=str(exc), duration_seconds=_since(started)
            )
        except AgentError as exc:
            return InstallResult(instance_id, "failed", message=str(exc), duration_seconds=_since(started))
        journal = answer["journal"]
        if journal.get("kind") != kind or journal.get("packages") != request["packages"]:
            raise ValueError(
                f"operation id {operation_id!r} was already used on {instance_id} for another "
                f"{journal.get('kind')} (different packages)"
            )
        if (journal.get("sources") or []) != request["sources"]:
            raise ValueError(
                f"operation id {operation_id!r} was already used on {instance_id} with other baseline Sources"
            )
        if journal.get("state") == "done":
            return _final_result(instance_id, journal)
        return None

    async def _finish(self, instance_id: str, operation_id: str, *, kind: str) -> InstallResult:
        host = self._host(instance_id)
        self._operations[operation_id] = instance_id
        unreachable_since: float | None = None
        while True:
            try:
                answer = await self._agent(
                    host,
                    "wait",
                    {"operation_id": operation_id, "seconds": self.poll_seconds, "close": self.reboot_option},
                    timeout=self.poll_seconds + 60,
                )
            except HostUnreachable as exc:
                # A transaction runs detached on the host: a blip is waited out; a long outage is reported.
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if now - unreachable_since > self.reboot_timeout_seconds:
                    return InstallResult(
                        instance_id, "undeliverable", message=f"lost contact while waiting: {exc}"
                    )
                await asyncio.sleep(1.0)
                continue
            unreachable_since = None
            journal = answer.get("journal")
            if journal is None:
                raise OperationNotStartedError(operation_id, f"no journal on {instance_id}")
            if journal.get("kind") != kind:
                raise ValueError(f"operation id {operation_id!r} on {instance_id} is a {journal.get('kind')}")
            state = journal.get("state")
            if state == "done":
                return _final_result(instance_id, journal)
            if state == "started":
                if answer["now"] - journal["started_at"] > self.command_timeout_seconds:
                    await self._agent(
                        host,
                        "cancel",
                        {
                            "operation_id": operation_id,
                            "status": "timed_out",
                            "message": f"the package transaction ran longer than {self.command_timeout_seconds:.0f}s "
                            "and was killed",
                        },
                        timeout=60,
                    )
                continue
            if state == "transacted":
                result = journal["result"]
                if result.get("reboot_required") and result["status"] == "succeeded" and kind == "install":
                    if self.reboot_option == "RebootIfNeeded":
                        await self._agent(
                            host,
                            "reboot",
                            {"operation_id": operation_id, "command": host.reboot_command},
                            timeout=60,
                        )
                        continue
                    return await self._done(host, journal, "transacted", pending_reboot=True)
                return await self._done(host, journal, "transacted")
            if state == "rebooting":
                return await self._after_reboot(host, journal)
            raise AgentError(f"operation {operation_id!r} on {instance_id} is in an unknown state {state!r}")

    async def _after_reboot(self, host: SshHost, journal: dict[str, Any]) -> InstallResult:
        """Wait for the host to come back with a new boot id, then close the operation."""
        deadline = time.monotonic() + self.reboot_timeout_seconds
        while time.monotonic() < deadline:
            try:
                facts = await self._agent(host, "facts", {"packages": False}, timeout=30)
            except (HostUnreachable, AgentError):
                self._pool.drop(host.name)
                await asyncio.sleep(0.5)
                continue
            if facts["boot_id"] and facts["boot_id"] != journal.get("reboot_boot_id"):
                return await self._done(host, journal, "rebooting", rebooted=True, boot_id=facts["boot_id"])
            await asyncio.sleep(0.5)
        result = journal["result"]
        return InstallResult(
            host.name,
            "failed",
            changed=_changes(result),
            message=f"{result.get('message', '')}; the host did not come back with a new boot id within "
            f"{self.reboot_timeout_seconds:.0f}s of its reboot",
        )

    async def _done(
        self,
        host: SshHost,
        journal: dict[str, Any],
        expect: str,
        *,
        pending_reboot: bool = False,
        rebooted: bool = False,
        boot_id: str | None = None,
    ) -> InstallResult:
        final = agent.final_record(
            journal["result"], pending_reboot=pending_reboot, rebooted=rebooted, boot_id=boot_id
        )
        answer = await self._agent(
            host,
            "mark",
            {
                "operation_id": journal["operation_id"],
                "expect": expect,
                "set": {"state": "done", "final": final},
            },
            timeout=60,
        )
        marked = answer.get("journal") or journal
        if marked.get("state") != "done":  # someone else moved it on: read it again next round
            marked = {**journal, "state": "done", "final": final}
        return _final_result(host.name, marked)

    async def _agent(
        self, host: SshHost, op: str, request: dict[str, Any], *, timeout: float = 60.0
    ) -> dict[str, Any]:
        command = ("sudo -n " if host.sudo else "") + "python3 -I -S -c " + shlex.quote(agent.BOOTSTRAP)
        payload = agent.payload(AGENT_SOURCE, op, {**request, "family": host.family})
        try:
            result = await self._pool.run(host, command, payload, timeout)
        except asyncssh.HostKeyNotVerifiable as exc:
            raise HostUnreachable(
                f"host key of {host.name} ({host.address}:{host.port}) not verified against {host.known_hosts}: "
                f"{exc.reason}"
            ) from exc
        except asyncssh.PermissionDenied as exc:
            raise HostUnreachable(
                f"authentication failed for {host.user}@{host.address}:{host.port}: {exc.reason}"
            ) from exc
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            raise HostUnreachable(
                f"{host.name} ({host.address}:{host.port}) unreachable: {_reason(exc)}",
                sent=bool(getattr(exc, "patchflow_sent", False)),
            ) from exc
        stdout, stderr = _text(result.stdout), _text(result.stderr)
        if result.exit_status is None:  # no exit status: the agent was killed, or the host went away under it
            signal = result.exit_signal[0] if result.exit_signal else "none"
            raise HostUnreachable(
                f"{host.name} ({host.address}:{host.port}): the session ended without an exit status "
                f"(signal {signal}): the host went away or the agent was killed",
                sent=True,
            )
        if result.exit_status != 0:
            if host.sudo and "sudo" in stderr:
                raise HostUnreachable(
                    f"sudo -n failed for {host.user} on {host.name}: {stderr.strip()[-300:]}; give the user "
                    "password-less sudo (patchflow runs python3 as root through sudo -n)"
                )
            if result.exit_status == 127:
                raise HostUnreachable(f"python3 is required on {host.name}: {stderr.strip()[-300:]}")
            raise AgentError(
                f"the agent failed on {host.name} (exit {result.exit_status}): {stderr.strip()[-800:]}"
            )
        for line in reversed(stdout.strip().splitlines()):
            if line.startswith("{"):
                answer: dict[str, Any] = json.loads(line)
                return answer
        raise AgentError(f"the agent on {host.name} gave no answer: {stdout[-300:]} {stderr[-300:]}")


def _acknowledge_at_once(conn: asyncssh.SSHClientConnection) -> None:
    """Acknowledge every TCP segment from the host at once (Linux ``TCP_QUICKACK`` after each read).

    OpenSSH's sshd leaves Nagle's algorithm on for sessions without a terminal: right after login it sends its
    host keys (``hostkeys-00@openssh.com``, which needs no answer) and then holds the first session's reply
    until that packet is acknowledged, which the client's kernel delays by up to 40 ms. Measured on the lab:
    the first command on a new connection took 46-52 ms instead of 4-7 ms, every time the delayed
    acknowledgement won the race. (The kernel leaves quick-ack mode on its own, hence once per read.)
    """
    quickack = getattr(socket, "TCP_QUICKACK", None)
    sock = conn.get_extra_info("socket")
    if quickack is None or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    received = conn.data_received

    def data_received(data: bytes, datatype: Any = None) -> None:
        received(data, datatype)
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, quickack, 1)

    conn.data_received = data_received  # type: ignore[method-assign]


def _text(value: Any) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(getattr(exc, "reason", "") or exc) or type(exc).__name__


def _since(start: float) -> float:
    return time.monotonic() - start


def _changes(result: dict[str, Any]) -> tuple[PackageChange, ...]:
    return tuple(PackageChange(n, a, f, t) for n, a, f, t in result.get("changed", []))


def _final_result(instance_id: str, journal: dict[str, Any]) -> InstallResult:
    result = journal["result"]
    final = journal.get("final") or {}
    status = final.get("status", result["status"])
    if status not in _STATUSES:
        status = "failed"
    typed: InstallStatus = status
    return InstallResult(
        instance_id=instance_id,
        status=typed,
        changed=_changes(result),
        rebooted=bool(final.get("rebooted")),
        pending_reboot=bool(final.get("pending_reboot")),
        message=final.get("message", result.get("message", "")),
        duration_seconds=max(
            0.0, float(final.get("finished_at", journal.get("updated_at", 0))) - journal["started_at"]
        ),
    )
