"""The executor protocol every backend implements, and the plain data it exchanges.

Activities call executors; workflows never do. All operations that change an instance take an
``operation_id`` and are idempotent on it: a retried activity (after a worker crash, a timeout, a lost
response) calling ``install`` again with the same ``operation_id`` gets the recorded result of the first call
— waiting for it if it is still running — and the instance is never patched twice.

Installs also come in two phases, so that *sending* and *waiting* can be separate Temporal activities with
their own timeouts and retry policies: :meth:`Executor.start_install` does everything up to and including
handing the work to the fleet (it is short, and a retry of it must never send twice), and
:meth:`Executor.finish_install` waits for that work (it is long and heartbeats; a retry of it simply waits
again). ``install`` is exactly ``start_install`` followed, when the result is not known yet, by
``finish_install``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from patchflow.core.instances import (
    ERROR_STATUSES,
    CommandResult,
    HealthResult,
    InstallResult,
    InstallStatus,
    InstanceInfo,
    Package,
    PackageChange,
    RepoSource,
)
from patchflow.errors import NotFoundError

__all__ = [
    "BatchInstaller",
    "CommandResult",
    "Executor",
    "OperationNotStartedError",
    "ERROR_STATUSES",
    "HealthResult",
    "InstallResult",
    "InstallStatus",
    "InstanceInfo",
    "Package",
    "PackageChange",
    "RepoSource",
    "RebootAware",
]


class OperationNotStartedError(NotFoundError):
    """``finish_install`` was asked about an operation ``start_install`` never started (or never sent).

    A :class:`~patchflow.errors.NotFoundError` (so a :class:`~patchflow.errors.PatchflowError`): the
    operation id names nothing the executor knows. It is a caller bug — finish called without a successful
    start, or with the wrong id — or the state behind the executor was reset (``patchflow fleet reset``, a
    deleted S3 record); retrying the same call cannot help, calling ``start_install`` again can.
    """

    def __init__(self, operation_id: str, detail: str = "") -> None:
        self.operation_id = operation_id
        super().__init__(
            f"operation {operation_id!r} was never started"
            + (f" ({detail})" if detail else "")
            + ": call start_install with this operation_id first (finish_install only waits)"
        )


class Executor(Protocol):
    """A fleet backend."""

    async def discover(self) -> list[InstanceInfo]:
        """Every instance the backend manages (online or not)."""
        ...

    async def scan(self, instance_id: str) -> list[Package]:
        """The packages installed on an instance now."""
        ...

    async def install(
        self,
        instance_id: str,
        patches: Sequence[Package],
        *,
        operation_id: str,
        sources: Sequence[RepoSource] = (),
    ) -> InstallResult:
        """Bring every installed package named in ``patches`` (name + arch) up to the pinned version.

        Packages not installed are never added; packages already at or above the pinned version are left alone.
        Idempotent on ``operation_id``. Equivalent to :meth:`start_install` then, if that returned None,
        :meth:`finish_install`.

        ``sources`` are the patch set's baseline ``Sources``: on an instance whose product one of them names,
        the install (and its simulation) uses exactly the sources naming that product instead of the
        instance's own repositories, and nothing of them remains on the instance afterwards; a source that
        cannot be reached fails the instance and changes nothing. Callers pass the keyword only when there are
        sources, so executors without it still serve every patch set that has none.
        """
        ...

    async def start_install(
        self,
        instance_id: str,
        patches: Sequence[Package],
        *,
        operation_id: str,
        sources: Sequence[RepoSource] = (),
    ) -> InstallResult | None:
        """Start the install ``install`` would run, without waiting for it.

        Does everything up to and including handing the work to the instance and recording that durably.
        Idempotent on ``operation_id``: calling it again — also from another executor object or process after
        a crash at any point — never starts a second install.

        Returns:
            None when the install is under way (call :meth:`finish_install`); an :class:`InstallResult` when
            the operation already has a recorded result or could not be started at all (offline, unmanaged or
            unsupported instance: ``undeliverable``). Such immediate results are not recorded, so
            :meth:`finish_install` must not be called for them.

        Raises:
            ValueError: ``operation_id`` was already used for another instance, kind, package list or sources.
        """
        ...

    async def finish_install(self, instance_id: str, *, operation_id: str) -> InstallResult:
        """Wait for the install :meth:`start_install` started and return its (recorded) result.

        Idempotent: once finished, every call returns the same recorded result; a call after a crash picks
        the wait up where it was (the install kept running without a watcher).

        Raises:
            OperationNotStartedError: nothing was started under ``operation_id``.
            ValueError: ``operation_id`` belongs to another instance or is not an install.
        """
        ...

    async def restore(
        self, instance_id: str, packages: Sequence[Package], *, operation_id: str
    ) -> InstallResult:
        """Put the given packages back to the given versions (rollback). Idempotent on ``operation_id``."""
        ...

    async def cancel(self, operation_id: str) -> bool:
        """Ask the instance to stop the unfinished install or restore ``operation_id`` (best effort, as SSM's
        CancelCommand: what already changed stays changed). True if there was something to ask; False for an
        unknown or finished operation. A cancelled wave calls it for every operation it had in flight."""
        ...

    async def operation_result(self, operation_id: str) -> InstallResult | None:
        """The recorded result of a finished operation, or None (never ran, or still running)."""
        ...

    async def health_check(self, instance_id: str) -> HealthResult:
        """Whether the instance's workload is healthy."""
        ...

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
        """Run a lifecycle hook's command on the instance: a shell command as root (SSH: over SSH; SSM:
        ``AWS-RunShellScript`` through SendCommand; simulated: nothing runs, the fleet file says how it ends).

        ``document`` (SSM only) runs that SSM document with ``parameters`` instead of the shell command; other
        executors refuse it with a :class:`ValueError`. Idempotent on ``operation_id`` where the backend keeps
        records (SSM: a retry finds the command it sent; simulated: the recorded result); SSH runs the command
        again, so hook commands should be safe to repeat (the activity skips steps it finished before a retry).
        """
        ...

    async def reboot(self, instance_id: str, *, operation_id: str) -> InstallResult:
        """Reboot the instance now and wait until it is back with a new boot id (patchflow's reboot
        orchestration, after a ``NoReboot`` install: see :mod:`patchflow.core.reboots`).

        Idempotent on ``operation_id``: a retry (also after a crash) gets the recorded result of the first call,
        waiting for a reboot still under way, and never reboots the instance a second time.

        Returns:
            ``succeeded`` with ``rebooted`` and the new ``boot_id`` (the instance no longer waits for a
            reboot); ``failed`` when the instance did not come back in time; ``undeliverable`` when it could not
            be reached to start with.
        """
        ...


@runtime_checkable
class RebootAware(Protocol):
    """An executor that can tell which installed packages wait for a reboot (compliance reports mark them
    ``INSTALLED_PENDING_REBOOT``: non-compliant until the instance reboots)."""

    async def pending_reboot_packages(self, instance_id: str) -> list[tuple[str, str | None]]:
        """(name, arch or None for every arch) of the packages waiting for a reboot; empty: none."""
        ...


@runtime_checkable
class BatchInstaller(Protocol):
    """An executor that starts and finishes a batch of installs together (issue 17 item 3).

    The same contract as :meth:`Executor.start_install` / :meth:`Executor.finish_install` for every
    (instance id, operation id) pair — idempotent per operation id, each result the one a single call would
    give — but one round trip (one transaction, one API call) for the whole batch instead of one per instance.
    A problem with one instance is *its* entry of the answer (the exception a single call would raise); it
    never fails the others. ``start_installs`` may answer an install that ended within the send with its
    result (as ``start_install`` may: the SSH executor waits briefly for a short install).
    """

    async def start_installs(
        self,
        operations: Sequence[tuple[str, str]],
        patches: Sequence[Package],
        *,
        sources: Sequence[RepoSource] = (),
    ) -> list[InstallResult | None | Exception]:
        """:meth:`Executor.start_install` for each ``(instance_id, operation_id)``, in order."""
        ...

    async def finish_installs(self, operations: Sequence[tuple[str, str]]) -> list[InstallResult | Exception]:
        """:meth:`Executor.finish_install` for each ``(instance_id, operation_id)``, in order; each install is
        completed when its own time is up, not when the batch's last one is."""
        ...
