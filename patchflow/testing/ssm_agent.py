"""The fake SSM endpoint's agent for real hosts: SSM documents run on a machine reached over SSH.

:meth:`patchflow.testing.ssm_endpoint.SsmEndpoint.register_ssh_host` backs a managed instance with a host of an
SSH inventory (the lab's, ``patchflow lab up``). Commands sent to it then really run there, in the background,
the way the SSM Agent would run them on the node; this module is that "agent", driving the host with the SSH
executor's own host-side program (:mod:`patchflow.executors.ssh.agent`: operation journal, simulation first,
exact ``name=version`` requests, reboot detection by boot id), so nothing here reimplements package handling.

* ``AWS-RunShellScript`` — the ``commands`` become ``_script.sh``, run by ``sh`` as root in
  ``workingDirectory`` (else a fresh temporary directory); ``ResponseCode`` is the script's exit status.
  Exit status 194 asks the agent to reboot the node and run the script again once it is back (User Guide,
  "Handling reboots when running commands": "For Linux and macOS managed nodes, specify exit 194 … The exit
  code instructs the SSM Agent to reboot the managed node, and then restart the script after the reboot
  completed"): the host really reboots (a new boot id) and the invocation reports the rerun's result.
  A script still running after ``executionTimeout`` seconds is killed and ends ``Execution Timed Out`` with
  ``ResponseCode`` 137, the agent's ``CommandStoppedPreemptivelyExitCode`` on Linux (aws/amazon-ssm-agent,
  ``agent/appconfig/constants_unix.go``: "Fatal error (128) + signal for SIGKILL (9) = 137").
* ``AWS-RunPatchBaseline`` ``Scan`` — ``apt-get update``, then the host's dpkg database and every version its
  apt sources offer for the installed packages (:func:`~patchflow.executors.ssh.agent.op_inventory`).
* ``AWS-RunPatchBaseline`` ``Install`` — the same inventory; the endpoint picks the versions (the
  ``InstallOverrideList``, or the baseline's approvals); the SSH agent's journaled transaction installs exactly
  those (a dependency conflict fails with nothing changed, as the User Guide says of override lists); a failed
  transaction is **not** reverted (Patch Manager leaves what the package manager left: a failing postinst leaves
  the package half-configured); with ``RebootIfNeeded`` the host really reboots when anything was installed or
  patches were pending a reboot (User Guide, AWS-RunPatchBaseline, "Parameter name: RebootOption"), and the
  invocation ends only once it is back with a new boot id and has reported, as the agent resumes after a reboot.

A host that does not answer when a command is due keeps the invocation ``Pending`` until it answers or the
command's delivery timeout passes (``Delivery Timed Out``; User Guide, "Understanding command statuses").
Apt/dpkg hosts only (``family: rpm`` hosts are refused at registration).
"""

from __future__ import annotations

import asyncio
import contextlib
import shlex
import socket
import threading
import time
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

from patchflow.executors.base import Package
from patchflow.executors.ssh import SshExecutor, SshHost, SshInventory
from patchflow.executors.ssh.executor import AgentError, HostUnreachable

__all__ = ["HostPackages", "Offered", "RunResult", "SshAgent", "TIMED_OUT_CODE"]

TIMED_OUT_CODE: Final = 137
#: ``exit 194`` from a Linux script asks the SSM Agent to reboot and run the script again (User Guide, "Handling
#: reboots when running commands").
REBOOT_EXIT_CODE: Final = 194
#: A script that asks for more reboots than this is broken (it is not idempotent): the invocation fails.
MAX_REBOOTS_PER_SCRIPT: Final = 5
"""``ResponseCode`` of a plugin the agent killed at its execution timeout (CommandStoppedPreemptivelyExitCode)."""
PATCH_TIMEOUT_SECONDS: Final = 7200
"""``AWS-RunPatchBaseline``'s ``PatchLinux`` step timeout (the document's ``timeoutSeconds``)."""

T = TypeVar("T")
Key = tuple[str, str]


@dataclass(frozen=True)
class Offered:
    """One version an apt source of the host offers for an installed package."""

    name: str
    arch: str
    version: str
    suite: str
    codename: str
    section: str
    priority: str

    @property
    def security(self) -> bool:
        """From a security pocket (``bookworm-security``, the lab's ``lab-security``): what Patch Manager's
        baselines consider when non-security updates are not enabled (User Guide, "Patch compliance state
        values": "patch candidate versions are limited to patches included in … debian-security")."""
        return self.suite.endswith("-security") or self.codename.endswith("-security")


@dataclass(frozen=True)
class HostPackages:
    """A host's package database as a patch operation sees it."""

    boot_id: str
    installed: dict[Key, str]
    """(name, arch) → version, for every package dpkg has unpacked (half-configured ones included)."""
    broken: frozenset[Key]
    """Packages dpkg does not have cleanly installed (state other than ``ii``: a failed postinst, …)."""
    offered: tuple[Offered, ...]

    @classmethod
    def from_answer(cls, answer: dict[str, Any]) -> HostPackages:
        installed = {(n, a): v for n, a, v, _state in answer["installed"]}
        broken = frozenset((n, a) for n, a, _v, state in answer["installed"] if state != "ii")
        offered = tuple(Offered(*row) for row in answer["offered"])
        return cls(str(answer.get("boot_id", "")), installed, broken, offered)


@dataclass(frozen=True)
class RunResult:
    """How an invocation ended on the host, and what it found or changed there."""

    status: str
    """The coarse ``Status`` (Success, Failed, TimedOut)."""
    details: str
    """``StatusDetails`` (Success, Failed, Execution Timed Out, Delivery Timed Out)."""
    code: int
    """``ResponseCode``: the script's exit status; -1 for a command that never ran."""
    stdout: str = ""
    stderr: str = ""
    finished_at: float = field(default_factory=time.time)
    packages: HostPackages | None = None
    """The package database after a patch operation (None for shell scripts, or when it could not be read)."""
    changed: tuple[Key, ...] = ()
    """Packages an Install changed."""
    failed: dict[Key, str] = field(default_factory=dict)
    """Packages an Install did not bring cleanly to the version it wanted (→ ``FAILED`` rows)."""
    rebooted: bool = False


Chooser = Callable[[HostPackages], list[Package]]
"""Picks the versions an Install brings the host to, from what the host has and its sources offer."""


class SshAgent:
    """Runs documents on SSH hosts from a background event loop (the endpoint's request threads never wait).

    Args:
        poll_seconds: longest single wait on a host while a package transaction runs.
        reboot_timeout_seconds: how long a rebooting host may take to come back.
        probe_ttl_seconds: how long a reachability probe (a TCP connect to sshd) is trusted.
    """

    def __init__(
        self,
        *,
        poll_seconds: float = 1.0,
        reboot_timeout_seconds: float = 180.0,
        probe_ttl_seconds: float = 1.0,
    ) -> None:
        self._inventory = SshInventory("the fake SSM endpoint's SSH-backed instances", {})
        self._executor = SshExecutor(
            self._inventory,
            reboot_option="NoReboot",  # Patch Manager's reboot rule is applied here, not the host's
            max_connections=50,
            command_timeout_seconds=PATCH_TIMEOUT_SECONDS,
            reboot_timeout_seconds=reboot_timeout_seconds,
            poll_seconds=poll_seconds,
            revert_failed_installs=False,
        )
        self.probe_ttl_seconds = probe_ttl_seconds
        self._probes: dict[str, tuple[float, bool]] = {}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="fake-ssm-agent", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------ plumbing

    def add(self, host: SshHost, *, timeout: float = 60.0) -> dict[str, Any]:
        """Add a host and return its facts (boot id, OS name and version, …).

        Raises:
            HostUnreachable: the host cannot be driven now.
        """
        self._inventory.hosts[host.name] = host
        return self.call(self._executor.facts(host.name), timeout=timeout)

    def submit(self, coro: Coroutine[Any, Any, T]) -> Future[T]:
        """Run a coroutine on the agent's loop; the future completes from that thread."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call(self, coro: Coroutine[Any, Any, T], *, timeout: float) -> T:
        return self.submit(coro).result(timeout)

    def close(self) -> None:
        """Stop every running job and the loop; close the SSH connections."""
        if not self._thread.is_alive():
            return

        async def shutdown() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._executor.close()

        with contextlib.suppress(Exception):
            self.call(shutdown(), timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def online(self, name: str) -> bool:
        """Whether the host's sshd accepts connections (cached for ``probe_ttl_seconds``)."""
        now = time.monotonic()
        cached = self._probes.get(name)
        if cached is not None and now - cached[0] < self.probe_ttl_seconds:
            return cached[1]
        host = self._inventory.hosts[name]
        try:
            with socket.create_connection((host.address, host.port), timeout=0.5):
                up = True
        except OSError:
            up = False
        self._probes[name] = (now, up)
        return up

    async def deliver(self, name: str, deadline: float) -> bool:
        """Wait until the host answers (True), or until ``deadline`` (time.time) passes (False)."""
        while True:
            self._probes.pop(name, None)
            if self.online(name):
                return True
            if time.time() >= deadline:
                return False
            await asyncio.sleep(0.5)

    def cancel(self, operation_id: str) -> None:
        """Kill an Install's package transaction (best effort, as CancelCommand is)."""
        self.submit(self._executor.cancel(operation_id))

    # ----------------------------------------------------------------------------------- documents

    async def shell(
        self, name: str, commands: Sequence[str], *, working_directory: str, timeout_seconds: int
    ) -> RunResult:
        """``AWS-RunShellScript``: the commands as one ``sh`` script, killed at ``timeout_seconds``; exit 194
        reboots the node and runs the script again (at most :data:`MAX_REBOOTS_PER_SCRIPT` times)."""
        for _ in range(MAX_REBOOTS_PER_SCRIPT):
            result = await self._shell_once(
                name, commands, working_directory=working_directory, timeout_seconds=timeout_seconds
            )
            if result.code != REBOOT_EXIT_CODE:
                return result
            try:
                await self._executor.reboot_and_wait(name)
            except (HostUnreachable, AgentError) as exc:
                return RunResult("Failed", "Failed", 1, result.stdout, f"the reboot (exit 194) failed: {exc}")
        return RunResult("Failed", "Failed", REBOOT_EXIT_CODE, "", "the script asked for a reboot too often")

    async def _shell_once(
        self, name: str, commands: Sequence[str], *, working_directory: str, timeout_seconds: int
    ) -> RunResult:
        """One run of an ``AWS-RunShellScript`` script."""
        script = "\n".join(commands) + "\n"
        workdir = shlex.quote(working_directory) if working_directory else '"$d"'
        # timeout(1) signals the script's whole process group: TERM, then KILL 5 s later; it exits 124.
        wrapper = (
            'd=$(mktemp -d) && cat > "$d/_script.sh" && cd ' + workdir + " && "
            f'timeout -k 5 {int(timeout_seconds)} sh "$d/_script.sh" </dev/null; rc=$?; rm -rf "$d"; exit $rc'
        )
        started = time.monotonic()
        try:
            code, stdout, stderr = await self._executor.run(
                name, wrapper, stdin=script, timeout=timeout_seconds + 60
            )
        except HostUnreachable as exc:
            return RunResult("Failed", "Failed", 1, "", f"the agent lost its connection to the node: {exc}")
        if code == 124 and time.monotonic() - started >= timeout_seconds:
            return RunResult("TimedOut", "Execution Timed Out", TIMED_OUT_CODE, stdout, stderr)
        if code == 0:
            return RunResult("Success", "Success", 0, stdout, stderr)
        return RunResult("Failed", "Failed", code, stdout, stderr)

    async def scan(self, name: str) -> RunResult:
        """``AWS-RunPatchBaseline`` ``Scan``: refresh the indexes, read the package database."""
        try:
            packages = await self.packages(name, refresh=True)
        except (HostUnreachable, AgentError) as exc:
            return RunResult("Failed", "Failed", 1, "", f"Scan failed: {exc}")
        return RunResult("Success", "Success", 0, "Scan completed.\n", "", packages=packages)

    async def install(
        self,
        name: str,
        *,
        operation_id: str,
        choose: Chooser,
        reboot_option: str,
        pending_boot_id: str | None,
    ) -> RunResult:
        """``AWS-RunPatchBaseline`` ``Install``: the chosen versions, exactly, then Patch Manager's reboot rule.

        Args:
            operation_id: the journal key on the host (one per invocation).
            choose: the versions to install, given the host's packages after ``apt-get update``.
            pending_boot_id: the boot id under which an earlier ``NoReboot`` Install left patches pending a
                reboot (None: none pending). They are still pending if the host has not rebooted since.
        """
        try:
            before = await self.packages(name, refresh=True)
        except (HostUnreachable, AgentError) as exc:
            return RunResult("Failed", "Failed", 1, "", f"Install failed before installing anything: {exc}")
        wanted = choose(before)
        lines = [
            f"Installing {p.name}.{p.arch} {before.installed[(p.name, p.arch)]} -> {p.version}"
            for p in wanted
        ]
        changed: tuple[Key, ...] = ()
        if wanted:
            result = await self._executor.install(name, wanted, operation_id=operation_id)
            changed = tuple((c.name, c.arch) for c in result.changed)
            lines.append(result.message)
            if result.status != "succeeded":
                return await self._failed_install(name, before, wanted, lines, result.status, result.message)
        else:
            lines.append("No patches to install.")
        pending = pending_boot_id is not None and pending_boot_id == before.boot_id
        rebooted = False
        if reboot_option == "RebootIfNeeded" and (changed or pending):
            lines.append("Rebooting the instance (RebootIfNeeded).")
            try:
                boot_id = await self._executor.reboot_and_wait(name)
            except (HostUnreachable, AgentError) as exc:
                return RunResult("Failed", "Failed", 1, "\n".join(lines) + "\n", f"the reboot failed: {exc}")
            lines.append(f"The instance is back (boot id {boot_id}).")
            rebooted = True
        try:
            after = await self.packages(name, refresh=False)
        except (HostUnreachable, AgentError) as exc:
            return RunResult("Failed", "Failed", 1, "\n".join(lines) + "\n", f"reporting failed: {exc}")
        return RunResult(
            "Success",
            "Success",
            0,
            "\n".join(lines) + "\n",
            "",
            packages=after,
            changed=changed,
            rebooted=rebooted,
        )

    async def _failed_install(
        self,
        name: str,
        before: HostPackages,
        wanted: list[Package],
        lines: list[str],
        status: str,
        message: str,
    ) -> RunResult:
        """A transaction that failed or timed out: report what the package manager left behind."""
        after: HostPackages | None
        try:
            after = await self.packages(name, refresh=False)
        except (HostUnreachable, AgentError):
            after = None
        state = after or before
        failed = {
            (p.name, p.arch): p.version
            for p in wanted
            if (p.name, p.arch) in state.broken or state.installed.get((p.name, p.arch)) != p.version
        }
        changed = tuple(
            k for k, v in (after.installed if after else {}).items() if before.installed.get(k) != v
        )
        stdout = "\n".join(lines) + "\n"
        if status == "timed_out":
            return RunResult(
                "TimedOut",
                "Execution Timed Out",
                TIMED_OUT_CODE,
                stdout,
                message,
                packages=after,
                changed=changed,
                failed=failed,
            )
        return RunResult(
            "Failed", "Failed", 1, stdout, message, packages=after, changed=changed, failed=failed
        )

    async def packages(self, name: str, *, refresh: bool) -> HostPackages:
        return HostPackages.from_answer(await self._executor.package_inventory(name, refresh=refresh))
