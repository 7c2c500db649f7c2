"""The SIMULATED executor: a fake fleet kept in a local SQLite file, for demos, scale tests and crash tests.

Nothing here touches a real machine. The fleet's shape and behaviour come from a fleet file
(:mod:`patchflow.executors.simulated.fleet`); its *mutable* state — installed versions, how often each instance was patched or
rolled back, and every operation ever started — lives in SQLite at ``state_path``, so it survives worker
restarts and is shared by several worker processes (WAL mode, ``BEGIN IMMEDIATE`` write transactions, a busy
timeout; every transaction opens its own short-lived connection in a worker thread so a lock wait never
blocks the event loop).

Durability model, mirroring SSM (a command keeps running on the instance when the worker that sent it dies):

1. An operation is recorded as ``running`` — with its wall-clock start and its (scaled) duration — in a
   transaction *before* any waiting, so a worker killed mid-install leaves a trace.
2. The caller sleeps the *remaining* simulated time: ``started_at + duration - now``. A retry after a crash
   therefore waits only for what is left, like polling a command that kept running.
3. Completion happens in one transaction that first checks the row is still ``running``; whoever gets there
   first applies the change, everybody else (a concurrent duplicate, a second worker, a retry) reads the
   recorded result. That is what makes ``install_count`` exactly one per instance per operation.
4. Reads (:meth:`SimulatedExecutor.scan`, :meth:`SimulatedExecutor.status`) and new operations first complete
   every *overdue* running operation of the instances they look at ("settling"), because on a real fleet the
   instance finished patching whether or not a worker was there to watch.

Installs can also run in two phases (:meth:`SimulatedExecutor.start_install` is step 1,
:meth:`SimulatedExecutor.finish_install` steps 2–3), so a workflow can send and wait in separate activities;
``install`` is the two back to back.

Operations are keyed by ``operation_id`` alone (so :meth:`SimulatedExecutor.operation_result` needs nothing
else): an id names one operation on one instance. Reusing an id for another instance, another kind or other
packages is a caller bug and raises ``ValueError`` instead of silently returning the other request's result.

Counting: ``install_count`` counts install operations that *ran* on the instance, whatever their outcome (a
``fail: true`` instance ran the install and it failed; an up-to-date instance ran it and changed nothing).
Offline instances are ``undeliverable`` immediately and nothing is recorded, as SSM never reaches them.
:meth:`SimulatedExecutor.cancel` ends a running operation ``cancelled`` before it applies anything (SSM's
CancelCommand, for a cancelled wave or a ``cutoff_behavior: cancel`` stage); it is not counted.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import closing, contextmanager
from pathlib import Path
from typing import Any, Final, Literal, TypeVar

from patchflow.core import versions
from patchflow.errors import InputError, NotFoundError
from patchflow.executors.base import (
    CommandResult,
    HealthResult,
    InstallResult,
    InstanceInfo,
    OperationNotStartedError,
    Package,
    PackageChange,
    RepoSource,
)
from patchflow.executors.simulated.fleet import Fleet, FleetInstance

_T = TypeVar("_T")

__all__ = ["BUSY_TIMEOUT_SECONDS", "SCHEMA_VERSION", "SimulatedExecutor", "default_state_path"]

SCHEMA_VERSION: Final = 1
BUSY_TIMEOUT_SECONDS: Final = 60.0
"""How long a transaction waits for another process's write lock before failing; generous because many
workers on one laptop may queue behind a large reset."""

Kind = Literal["install", "restore"]
Request = tuple[tuple[str, str, str], ...]
"""A normalised operation request: sorted ``(name, arch, version)`` triples, one per (name, arch)."""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS instances (
    instance_id TEXT PRIMARY KEY,
    install_count INTEGER NOT NULL DEFAULT 0,
    restore_count INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS packages (
    instance_id TEXT NOT NULL,
    name TEXT NOT NULL,
    arch TEXT NOT NULL,
    version TEXT NOT NULL,
    PRIMARY KEY (instance_id, name, arch)
);
CREATE TABLE IF NOT EXISTS operations (
    operation_id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('install', 'restore')),
    request TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('running', 'done')),
    started_at REAL NOT NULL,
    duration_seconds REAL NOT NULL,
    finished_at REAL,
    result TEXT
);
CREATE INDEX IF NOT EXISTS operations_running ON operations (status, instance_id, started_at);
CREATE TABLE IF NOT EXISTS commands (
    operation_id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    command TEXT NOT NULL,
    exit_code INTEGER NOT NULL,
    output TEXT NOT NULL,
    ran_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS boots (
    instance_id TEXT PRIMARY KEY,
    boot_count INTEGER NOT NULL DEFAULT 0,
    pending_reboot INTEGER NOT NULL DEFAULT 0,
    pending_packages TEXT NOT NULL DEFAULT '[]'
);
CREATE TABLE IF NOT EXISTS reboots (
    operation_id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    result TEXT NOT NULL
);
"""


def default_state_path(data_dir: Path, fleet: Fleet) -> Path:
    """Where a fleet's simulated state lives by default: one file per fleet *content*.

    Keyed by the file digest so that editing a fleet file starts from its new initial state rather than
    mixing old installed versions with new behaviour.
    """
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", fleet.name).strip("-.") or "fleet"
    return data_dir / "simulated" / f"{name}-{fleet.digest[:16]}.sqlite"


class SimulatedExecutor:
    """A simulated fleet (see the module docstring for the durability model).

    Args:
        fleet: the parsed fleet file: instances, their initial packages and their behaviour.
        state_path: the SQLite file holding the mutable state; created and initialised on first use.
        time_scale: multiplies every simulated duration (``0.01`` turns a 2 s install into 20 ms).
        clock: wall clock in seconds since the epoch; operations compare it across processes, so it must be
            wall time, not a monotonic clock. Injectable for tests.
        reboot_option: ``RebootIfNeeded`` (a ``reboot: true`` instance reboots after a successful install:
            ``rebooted``, a new boot id) or ``NoReboot`` (it is left ``pending_reboot`` until :meth:`reboot`).
    """

    def __init__(
        self,
        fleet: Fleet,
        state_path: Path,
        *,
        time_scale: float = 1.0,
        clock: Callable[[], float] = time.time,
        reboot_option: str = "RebootIfNeeded",
    ) -> None:
        if not time_scale >= 0 or time_scale == float("inf"):
            raise ValueError(f"time_scale must be a finite number >= 0, got {time_scale!r}")
        self.fleet = fleet
        self.state_path = Path(state_path)
        self.time_scale = time_scale
        self._clock = clock
        self.reboot_option = reboot_option
        self._by_id = {instance.id: instance for instance in fleet.instances}
        self._ready = False
        self._ready_lock = threading.Lock()
        self._local = threading.local()
        self._write_lock = threading.Lock()
        """This process's writers queue here, not in SQLite's busy handler (see :meth:`_transaction`)."""
        """Per thread: its connection and the (device, inode) of the file it opened (see :meth:`_transaction`)."""

    # ------------------------------------------------------------------------------------------ protocol

    async def discover(self) -> list[InstanceInfo]:
        """Every instance of the fleet file, sorted by id; offline ones are reported with ``online=False``.

        Listed in a thread: a fleet of 100,000 takes ≈ 0.4 s, which would stall the worker's event loop."""
        return await asyncio.to_thread(self._discover)

    def _discover(self) -> list[InstanceInfo]:
        return [
            InstanceInfo(
                instance_id=instance.id,
                tags=dict(instance.tags),
                family=instance.family,
                product=instance.product,
                online=not instance.behaviour.offline,
                availability_zone=instance.availability_zone,
            )
            for instance in self.fleet.instances
        ]

    async def scan(self, instance_id: str) -> list[Package]:
        """The packages installed now (after settling operations that finished while nobody watched)."""
        instance = self._instance(instance_id)
        return await asyncio.to_thread(self._scan, instance)

    async def install(
        self,
        instance_id: str,
        patches: Sequence[Package],
        *,
        operation_id: str,
        sources: Sequence[RepoSource] = (),
    ) -> InstallResult:
        """Upgrade installed packages named in ``patches`` to the pinned version; idempotent on ``operation_id``.

        ``sources`` are accepted and change nothing: a simulated instance has no repositories, every pinned
        version is "available" to it.

        A package is changed only when it is installed (same name and arch) at a *lower* version by the
        family's exact order; if ``patches`` pins one package twice, the higher pin wins (as applying both in
        turn would). Nothing is ever added.

        Raises:
            NotFoundError: the instance is not in the fleet.
            InvalidVersionError: a pinned version is not valid for the instance's package family.
            ValueError: ``operation_id`` was already used for another instance, kind or package list.
        """
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
        """Record the install as ``running`` (the simulated "send"); None while it runs.

        Returns the recorded result when the operation already finished (also one that finished while
        nobody waited), or ``undeliverable`` at once for an offline instance (not recorded, like SSM, which
        never reaches it). Idempotent on ``operation_id``: a second call never starts a second install.

        Raises:
            NotFoundError: the instance is not in the fleet.
            InvalidVersionError: a pinned version is not valid for the instance's package family.
            ValueError: ``operation_id`` was already used for another instance, kind or package list.
        """
        instance = self._instance(instance_id)
        if instance.behaviour.offline:
            return _undeliverable(instance)
        request = _request("install", instance, patches)
        begun = await asyncio.to_thread(self._begin, "install", instance, request, operation_id)
        return begun if isinstance(begun, InstallResult) else None

    async def finish_install(self, instance_id: str, *, operation_id: str) -> InstallResult:
        """Wait for the remaining simulated time of a started install, complete it once, return its result.

        Raises:
            NotFoundError: the instance is not in the fleet.
            OperationNotStartedError: no install was started under ``operation_id`` (also after a reset).
            ValueError: ``operation_id`` belongs to another instance or to a restore.
        """
        instance = self._instance(instance_id)
        timing = await asyncio.to_thread(self._started, "install", instance, operation_id)
        if isinstance(timing, InstallResult):
            return timing
        return await self._wait_and_finish(instance, operation_id, *timing)

    async def start_installs(
        self,
        operations: Sequence[tuple[str, str]],
        patches: Sequence[Package],
        *,
        sources: Sequence[RepoSource] = (),
    ) -> list[InstallResult | None | Exception]:
        """:meth:`start_install` for each ``(instance_id, operation_id)``, all in one transaction
        (:class:`~patchflow.executors.base.BatchInstaller`); an instance's error is its own entry. An install
        whose simulated time is zero is completed in the same transaction and answered with its result (one
        activity instead of two per batch of a zero-time fleet; :meth:`start_install` leaves it to the wait)."""
        answers: list[InstallResult | None | Exception] = []
        todo: list[tuple[int, FleetInstance, Request, str]] = []
        for instance_id, operation_id in operations:
            try:
                instance = self._instance(instance_id)
                if instance.behaviour.offline:
                    answers.append(_undeliverable(instance))
                    continue
                todo.append((len(answers), instance, _request("install", instance, patches), operation_id))
            except (NotFoundError, ValueError) as exc:  # InvalidVersionError is a ValueError
                answers.append(exc)
                continue
            answers.append(None)

        def begin_all() -> list[InstallResult | tuple[float, float] | Exception]:
            self._ensure_ready()
            with self._transaction() as conn:
                return [_caught(self._begin_in, conn, "install", i, r, op, True) for _, i, r, op in todo]

        for (index, *_), begun in zip(todo, await asyncio.to_thread(begin_all), strict=True):
            answers[index] = None if isinstance(begun, tuple) else begun
        return answers

    async def finish_installs(self, operations: Sequence[tuple[str, str]]) -> list[InstallResult | Exception]:
        """:meth:`finish_install` for each ``(instance_id, operation_id)``: one transaction reads them all, then
        each group of installs whose time is up completes in one transaction — every install when its own
        simulated time is up, as :meth:`finish_install` would."""
        answers: list[InstallResult | Exception | None] = [None] * len(operations)
        known: list[tuple[int, FleetInstance, str]] = []
        for index, (instance_id, operation_id) in enumerate(operations):
            try:
                known.append((index, self._instance(instance_id), operation_id))
            except NotFoundError as exc:
                answers[index] = exc

        def read_all() -> list[InstallResult | tuple[float, float] | Exception]:
            self._ensure_ready()
            with self._transaction() as conn:
                return [_caught(self._started_in, conn, "install", i, op) for _, i, op in known]

        # When each is due, on the monotonic clock: the remaining time is read off the (wall) clock once, as
        # _wait_and_finish does, and clamped — a clock that went backwards never lengthens the wait.
        due: list[tuple[float, int, FleetInstance, str]] = []
        for (index, instance, operation_id), timing in zip(
            known, await asyncio.to_thread(read_all), strict=True
        ):
            if isinstance(timing, tuple):
                started_at, duration = timing
                remaining = min(duration, max(0.0, started_at + duration - self._clock()))
                due.append((time.monotonic() + remaining, index, instance, operation_id))
            else:
                answers[index] = timing
        due.sort(key=lambda d: (d[0], d[1]))
        while due:
            wait = due[0][0] - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            now = time.monotonic()
            ready = [d for d in due if d[0] <= now] or due[:1]
            due = due[len(ready) :]

            def finish_ready(
                ready: list[tuple[float, int, FleetInstance, str]] = ready,
            ) -> list[InstallResult | Exception]:
                with self._transaction() as conn:
                    return [_caught(self._finish_in, conn, i, op) for _, _, i, op in ready]

            for (_, index, _, _), result in zip(ready, await asyncio.to_thread(finish_ready), strict=True):
                answers[index] = result
        return [a if a is not None else RuntimeError("no answer") for a in answers]

    async def restore(
        self, instance_id: str, packages: Sequence[Package], *, operation_id: str
    ) -> InstallResult:
        """Set installed packages back to the given versions (rollback); idempotent on ``operation_id``.

        Packages that are not installed are skipped (a rollback never adds what an install never added).
        A ``fail: true`` instance restores successfully: its behaviour models a bad *patch*, and a rollback
        goes back to versions known to work. If ``packages`` names one package twice, the last one wins.

        Raises:
            NotFoundError: the instance is not in the fleet.
            InvalidVersionError: a version is not valid for the instance's package family.
            ValueError: ``operation_id`` was already used for another instance, kind or package list.
        """
        instance = self._instance(instance_id)
        if instance.behaviour.offline:
            return _undeliverable(instance)
        return await self._operate("restore", instance, _request("restore", instance, packages), operation_id)

    async def operation_result(self, operation_id: str) -> InstallResult | None:
        """The recorded result of a finished install or restore; None if it never ran or is still running.

        An operation whose time is up counts as finished even if the worker that started it died: it is
        completed here first, as the instance would have finished it. Undeliverable calls (offline instances)
        are never recorded, so they give None.
        """
        return await asyncio.to_thread(self._operation_result, operation_id)

    async def cancel(self, operation_id: str) -> bool:
        """Cancel a running install or restore, like SSM's CancelCommand: it ends ``cancelled`` with nothing
        changed (and is not counted in ``install_count``). True if it was still running; an operation whose
        time is already up finished first, as it would have on the instance."""
        return await asyncio.to_thread(self._cancel, operation_id)

    async def health_check(self, instance_id: str) -> HealthResult:
        """Unhealthy exactly when the fleet file says ``fail_health`` for this instance."""
        instance = self._instance(instance_id)
        if instance.behaviour.fail_health:
            return HealthResult(
                instance.id, healthy=False, message="simulated health check failure (fail_health)"
            )
        return HealthResult(instance.id, healthy=True, message="simulated health check passed")

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
        """A lifecycle hook's command: nothing runs; it exits 1 when it contains one of the instance's
        ``fail_commands`` (fleet file), else 0. Recorded once per ``operation_id`` (a retry gets the record)."""
        if document is not None:
            raise ValueError("ssm_document steps need the ssm executor")
        instance = self._instance(instance_id)
        if instance.behaviour.offline:
            return CommandResult(
                instance_id, -1, "undeliverable: the instance is offline", status="undeliverable"
            )
        return await asyncio.to_thread(self._run_command, instance, command, operation_id)

    def _run_command(self, instance: FleetInstance, command: str, operation_id: str) -> CommandResult:
        self._ensure_ready()
        failing = next((part for part in instance.behaviour.fail_commands if part in command), None)
        exit_code, output = (
            (1, f"simulated command failure (fail_commands: {failing!r})")
            if failing
            else (0, f"simulated: {command}")
        )
        with self._transaction() as conn:
            row = conn.execute(
                "SELECT instance_id, command, exit_code, output FROM commands WHERE operation_id = ?",
                (operation_id,),
            ).fetchone()
            if row is not None:
                if (row[0], row[1]) != (instance.id, command):
                    raise ValueError(
                        f"operation id {operation_id!r} was used for another command or instance"
                    )
                return CommandResult(instance.id, int(row[2]), str(row[3]))
            conn.execute(
                "INSERT INTO commands (operation_id, instance_id, command, exit_code, output, ran_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (operation_id, instance.id, command, exit_code, output, self._clock()),
            )
        return CommandResult(instance.id, exit_code, output)

    def commands_run(self, instance_id: str) -> list[str]:
        """The hook commands run on an instance, in order (tests and ``fleet status``)."""
        self._ensure_ready()
        with closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT command FROM commands WHERE instance_id = ? ORDER BY ran_at, rowid", (instance_id,)
            ).fetchall()
        return [str(r[0]) for r in rows]

    async def reboot(self, instance_id: str, *, operation_id: str) -> InstallResult:
        """Reboot now: after the instance's simulated duration it is back with a new boot id and no longer
        ``pending_reboot`` — unless its behaviour says ``fail_reboot`` (``failed``, nothing changes) or
        ``offline`` (``undeliverable``, not recorded). Idempotent on ``operation_id``: the first call that
        completes records the result, every other call (a retry, a concurrent duplicate) returns it, and the
        boot count rises once."""
        instance = self._instance(instance_id)
        if instance.behaviour.offline:
            return _undeliverable(instance)
        recorded = await asyncio.to_thread(self._reboot, instance, operation_id, False)
        if recorded is not None:
            return recorded
        await asyncio.sleep(instance.behaviour.duration_seconds * self.time_scale)
        result = await asyncio.to_thread(self._reboot, instance, operation_id, True)
        assert result is not None
        return result

    def boot_state(self, instance_id: str) -> tuple[str, bool]:
        """The instance's boot id now and whether it waits for a reboot (tests, ``fleet status``)."""
        self._ensure_ready()
        with self._transaction() as conn:
            self._settle(conn, instance_id)
            count, pending = self._boot_row(conn, instance_id)
        return _boot_id(instance_id, count), pending

    async def pending_reboot_packages(self, instance_id: str) -> list[tuple[str, str | None]]:
        """(name, arch) of the packages installed since the instance's last reboot that wait for one
        (SSM: ``INSTALLED_PENDING_REBOOT``); empty when it needs no reboot."""
        instance = self._instance(instance_id)

        def read() -> list[tuple[str, str | None]]:
            self._ensure_ready()
            with self._transaction() as conn:
                self._settle(conn, instance.id)
                return list(self._pending_packages(conn, instance.id))

        return await asyncio.to_thread(read)

    # ------------------------------------------------------------------------------------ fleet commands

    def status(self) -> dict[str, Any]:
        """The whole fleet's current state, JSON-ready (``patchflow fleet status FLEET --format json``)."""
        self._ensure_ready()
        with self._transaction() as conn:
            self._settle(conn, None)
            counts = {row[0]: (row[1], row[2]) for row in conn.execute("SELECT * FROM instances")}
            boots = {
                row[0]: (int(row[1]), bool(row[2]))
                for row in conn.execute("SELECT instance_id, boot_count, pending_reboot FROM boots")
            }
            installed: dict[str, list[dict[str, str]]] = {}
            for instance_id, name, arch, version in conn.execute(
                "SELECT instance_id, name, arch, version FROM packages ORDER BY instance_id, name, arch"
            ):
                installed.setdefault(instance_id, []).append({"name": name, "arch": arch, "version": version})
        return {
            "fleet": self.fleet.name,
            "digest": self.fleet.digest,
            "state_path": str(self.state_path),
            "instances": [
                {
                    "id": instance.id,
                    "tags": dict(instance.tags),
                    "patch_group": instance.patch_group,
                    "platform": {"family": instance.family, "product": instance.product},
                    "online": not instance.behaviour.offline,
                    "installed": installed.get(instance.id, []),
                    "install_count": counts.get(instance.id, (0, 0))[0],
                    "restore_count": counts.get(instance.id, (0, 0))[1],
                    "boot_id": _boot_id(instance.id, boots.get(instance.id, (0, False))[0]),
                    "pending_reboot": boots.get(instance.id, (0, False))[1],
                }
                for instance in self.fleet.instances
            ],
        }

    def reset(self) -> None:
        """Put every instance back to the fleet file's initial state and forget every operation.

        Operations are forgotten too: otherwise re-running a demo with the same operation ids would return
        the old results without touching the freshly reset instances.
        """
        self._ensure_ready()
        with self._transaction() as conn:
            for table in ("meta", "instances", "packages", "operations", "boots", "reboots"):
                conn.execute(f"DELETE FROM {table}")  # noqa: S608 - fixed table names
            self._populate(conn)

    # ------------------------------------------------------------------------------------------ internals

    def _instance(self, instance_id: str) -> FleetInstance:
        try:
            return self._by_id[instance_id]
        except KeyError:
            raise NotFoundError(
                f"instance {instance_id!r} is not in simulated fleet {self.fleet.name!r} ({self.fleet.source}); "
                "list the fleet with `patchflow fleet status`"
            ) from None

    async def _operate(
        self, kind: Kind, instance: FleetInstance, request: Request, operation_id: str
    ) -> InstallResult:
        begun = await asyncio.to_thread(self._begin, kind, instance, request, operation_id)
        if isinstance(begun, InstallResult):
            return begun
        return await self._wait_and_finish(instance, operation_id, *begun)

    async def _wait_and_finish(
        self, instance: FleetInstance, operation_id: str, started_at: float, duration: float
    ) -> InstallResult:
        # Clamped: a clock that went backwards must not make a retry wait longer than the whole operation.
        remaining = min(duration, max(0.0, started_at + duration - self._clock()))
        if remaining > 0:
            await asyncio.sleep(remaining)
        return await asyncio.to_thread(self._finish, instance, operation_id)

    def _started(
        self, kind: Kind, instance: FleetInstance, operation_id: str
    ) -> InstallResult | tuple[float, float]:
        """A started operation's result if done, else its timing; never starts anything."""
        self._ensure_ready()
        with self._transaction() as conn:
            return self._started_in(conn, kind, instance, operation_id)

    def _started_in(
        self, conn: sqlite3.Connection, kind: Kind, instance: FleetInstance, operation_id: str
    ) -> InstallResult | tuple[float, float]:
        self._settle(conn, instance.id)
        row = conn.execute(
            "SELECT instance_id, kind, status, started_at, duration_seconds, result FROM operations "
            "WHERE operation_id = ?",
            (operation_id,),
        ).fetchone()
        if row is None:
            raise OperationNotStartedError(
                operation_id, f"no such operation in simulated fleet {self.fleet.name!r}"
            )
        owner, old_kind, status, started_at, duration, result = row
        if owner != instance.id or old_kind != kind:
            raise ValueError(
                f"operation_id {operation_id!r} names the {old_kind} on {owner}; expected the {kind} on "
                f"{instance.id}"
            )
        return _load_result(result) if status == "done" else (started_at, duration)

    def _begin(
        self, kind: Kind, instance: FleetInstance, request: Request, operation_id: str
    ) -> InstallResult | tuple[float, float]:
        """Record the operation as running (unless it exists); return its result if done, else its timing."""
        self._ensure_ready()
        with self._transaction() as conn:
            return self._begin_in(conn, kind, instance, request, operation_id)

    def _begin_in(
        self,
        conn: sqlite3.Connection,
        kind: Kind,
        instance: FleetInstance,
        request: Request,
        operation_id: str,
        complete_instant: bool = False,
    ) -> InstallResult | tuple[float, float]:
        self._settle(conn, instance.id)
        row = conn.execute(
            "SELECT instance_id, kind, request, status, started_at, duration_seconds, result FROM operations "
            "WHERE operation_id = ?",
            (operation_id,),
        ).fetchone()
        if row is None:
            started_at, duration = self._clock(), instance.behaviour.duration_seconds * self.time_scale
            conn.execute(
                "INSERT INTO operations (operation_id, instance_id, kind, request, status, started_at, "
                "duration_seconds) VALUES (?, ?, ?, ?, 'running', ?, ?)",
                (operation_id, instance.id, kind, json.dumps(request), started_at, duration),
            )
            if duration <= 0 and complete_instant:
                # A zero-time install is over the moment it starts: completed (and recorded) here, as an SSH
                # install that ends within its send, so the batch has nothing to wait for.
                return self._complete(conn, instance, operation_id)
            return (started_at, duration)
        owner, old_kind, old_request, status, started_at, duration, result = row
        if owner != instance.id or old_kind != kind or _as_request(json.loads(old_request)) != request:
            raise ValueError(
                f"operation_id {operation_id!r} was already used for a different request ({old_kind} on "
                f"{owner}); every {kind} of every instance needs its own operation_id"
            )
        if status == "done":
            return _load_result(result)
        return (started_at, duration)

    def _finish(self, instance: FleetInstance, operation_id: str) -> InstallResult:
        """Complete the operation unless someone else already did; return the recorded result."""
        with self._transaction() as conn:
            return self._finish_in(conn, instance, operation_id)

    def _finish_in(
        self, conn: sqlite3.Connection, instance: FleetInstance, operation_id: str
    ) -> InstallResult:
        self._settle(conn, instance.id)  # completes ours too, unless clocks disagree by a hair
        row = conn.execute(
            "SELECT status, result FROM operations WHERE operation_id = ?", (operation_id,)
        ).fetchone()
        if row is None:
            raise RuntimeError(
                f"operation {operation_id!r} on {instance.id} vanished while it ran: was the simulated "
                "fleet reset meanwhile?"
            )
        if row[0] == "done":
            return _load_result(row[1])
        return self._complete(conn, instance, operation_id)

    def _settle(self, conn: sqlite3.Connection, instance_id: str | None) -> None:
        """Complete every running operation whose time is up (of one instance, or of the whole fleet)."""
        query = "SELECT operation_id, instance_id FROM operations WHERE status = 'running' AND started_at + duration_seconds <= ?"
        params: tuple[Any, ...] = (self._clock(),)
        if instance_id is not None:
            query += " AND instance_id = ?"
            params += (instance_id,)
        # Oldest first: two overdue operations on one instance apply in the order they were started.
        for operation_id, owner in conn.execute(
            query + " ORDER BY started_at, operation_id", params
        ).fetchall():
            instance = self._by_id.get(owner)
            if instance is not None:  # state written for an instance no longer in the file: leave it alone
                self._complete(conn, instance, operation_id)

    def _complete(
        self, conn: sqlite3.Connection, instance: FleetInstance, operation_id: str
    ) -> InstallResult:
        """Apply a running operation and mark it done; the caller holds the write transaction."""
        kind, raw_request, duration = conn.execute(
            "SELECT kind, request, duration_seconds FROM operations WHERE operation_id = ?", (operation_id,)
        ).fetchone()
        request = _as_request(json.loads(raw_request))
        counter = "install_count" if kind == "install" else "restore_count"
        conn.execute(f"UPDATE instances SET {counter} = {counter} + 1 WHERE instance_id = ?", (instance.id,))
        if kind == "install" and instance.behaviour.fail:
            result = InstallResult(
                instance.id,
                "failed",
                message="simulated install failure (behaviour.fail): nothing was changed",
                duration_seconds=duration,
            )
        else:
            current = {
                (name, arch): version
                for name, arch, version in conn.execute(
                    "SELECT name, arch, version FROM packages WHERE instance_id = ?", (instance.id,)
                )
            }
            changes: list[PackageChange] = []
            for name, arch, version in request:
                have = current.get((name, arch))
                if have is None:
                    continue
                if (
                    (versions.compare(instance.family, have, version) >= 0)
                    if kind == "install"
                    else have == version
                ):
                    continue
                conn.execute(
                    "UPDATE packages SET version = ? WHERE instance_id = ? AND name = ? AND arch = ?",
                    (version, instance.id, name, arch),
                )
                changes.append(PackageChange(name=name, arch=arch, from_version=have, to_version=version))
            verb = "upgraded" if kind == "install" else "restored"
            pending = instance.behaviour.reboot and self.reboot_option == "NoReboot" and kind == "install"
            if pending:
                waiting = sorted(
                    {*self._pending_packages(conn, instance.id), *((c.name, c.arch) for c in changes)}
                )
                conn.execute(
                    "INSERT INTO boots (instance_id, pending_reboot, pending_packages) VALUES (?, 1, ?) "
                    "ON CONFLICT (instance_id) DO UPDATE SET pending_reboot = 1, "
                    "pending_packages = excluded.pending_packages",
                    (instance.id, json.dumps(waiting)),
                )
            rebooted = instance.behaviour.reboot and not pending
            if rebooted:  # RebootIfNeeded: the install rebooted the instance (a new boot id)
                conn.execute(
                    "INSERT INTO boots (instance_id, boot_count) VALUES (?, 1) "
                    "ON CONFLICT (instance_id) DO UPDATE SET boot_count = boot_count + 1",
                    (instance.id,),
                )
            result = InstallResult(
                instance.id,
                "succeeded",
                changed=tuple(changes),
                rebooted=rebooted,
                message=f"simulated {kind}: {len(changes)} package(s) {verb}"
                + (", rebooted" if rebooted else "")
                + ("; pending_reboot (RebootOption NoReboot)" if pending else ""),
                duration_seconds=duration,
                pending_reboot=pending,
            )
        conn.execute(
            "UPDATE operations SET status = 'done', finished_at = ?, result = ? WHERE operation_id = ?",
            (self._clock(), _dump_result(result), operation_id),
        )
        return result

    @staticmethod
    def _pending_packages(conn: sqlite3.Connection, instance_id: str) -> list[tuple[str, str]]:
        row = conn.execute(
            "SELECT pending_packages FROM boots WHERE instance_id = ?", (instance_id,)
        ).fetchone()
        return [(str(n), str(a)) for n, a in json.loads(row[0])] if row is not None else []

    @staticmethod
    def _boot_row(conn: sqlite3.Connection, instance_id: str) -> tuple[int, bool]:
        row = conn.execute(
            "SELECT boot_count, pending_reboot FROM boots WHERE instance_id = ?", (instance_id,)
        ).fetchone()
        return (int(row[0]), bool(row[1])) if row is not None else (0, False)

    def _reboot(self, instance: FleetInstance, operation_id: str, apply: bool) -> InstallResult | None:
        """The recorded result of reboot ``operation_id``; with ``apply`` and none recorded, reboot now (in the
        same write transaction, so exactly one caller reboots) and record it."""
        self._ensure_ready()
        with self._transaction() as conn:
            self._settle(conn, instance.id)
            row = conn.execute(
                "SELECT instance_id, result FROM reboots WHERE operation_id = ?", (operation_id,)
            ).fetchone()
            if row is not None:
                if row[0] != instance.id:
                    raise ValueError(
                        f"operation_id {operation_id!r} names the reboot of {row[0]}, not of {instance.id}"
                    )
                return _load_result(row[1])
            if not apply:
                return None
            count, _ = self._boot_row(conn, instance.id)
            duration = instance.behaviour.duration_seconds * self.time_scale
            if instance.behaviour.fail_reboot:
                result = InstallResult(
                    instance.id,
                    "failed",
                    message="simulated reboot failure (behaviour.fail_reboot): the instance did not come back",
                    duration_seconds=duration,
                    boot_id=_boot_id(instance.id, count),
                )
            else:
                conn.execute(
                    "INSERT INTO boots (instance_id, boot_count, pending_reboot) VALUES (?, 1, 0) "
                    "ON CONFLICT (instance_id) DO UPDATE SET boot_count = boot_count + 1, pending_reboot = 0, "
                    "pending_packages = '[]'",
                    (instance.id,),
                )
                result = InstallResult(
                    instance.id,
                    "succeeded",
                    rebooted=True,
                    message=f"simulated reboot: back with boot id {_boot_id(instance.id, count + 1)}",
                    duration_seconds=duration,
                    boot_id=_boot_id(instance.id, count + 1),
                )
            conn.execute(
                "INSERT INTO reboots (operation_id, instance_id, result) VALUES (?, ?, ?)",
                (operation_id, instance.id, _dump_result(result)),
            )
        return result

    def _cancel(self, operation_id: str) -> bool:
        self._ensure_ready()
        with self._transaction() as conn:
            row = self._settled(conn, operation_id, "status, instance_id, kind, started_at")
            if row is None or row[0] == "done":
                return False
            _, instance_id, kind, started_at = row
            now = self._clock()
            result = InstallResult(
                instance_id,
                "cancelled",
                message=f"simulated {kind} cancelled before it finished: nothing was changed",
                duration_seconds=max(0.0, now - started_at),
            )
            conn.execute(
                "UPDATE operations SET status = 'done', finished_at = ?, result = ? WHERE operation_id = ?",
                (now, _dump_result(result), operation_id),
            )
        return True

    def _operation_result(self, operation_id: str) -> InstallResult | None:
        self._ensure_ready()
        with self._transaction() as conn:
            row = self._settled(conn, operation_id, "status, result")
        return _load_result(row[1]) if row is not None and row[0] == "done" else None

    def _settled(self, conn: sqlite3.Connection, operation_id: str, columns: str) -> tuple[Any, ...] | None:
        """The operation's ``columns`` after settling its instance (an overdue operation finishes first)."""
        row = conn.execute(
            "SELECT instance_id FROM operations WHERE operation_id = ?", (operation_id,)
        ).fetchone()
        if row is None:
            return None
        self._settle(conn, row[0])
        return tuple(
            conn.execute(
                f"SELECT {columns} FROM operations WHERE operation_id = ?", (operation_id,)
            ).fetchone()
        )

    def _scan(self, instance: FleetInstance) -> list[Package]:
        self._ensure_ready()
        with self._transaction() as conn:
            self._settle(conn, instance.id)
            rows = conn.execute(
                "SELECT name, arch, version FROM packages WHERE instance_id = ? ORDER BY name, arch",
                (instance.id,),
            ).fetchall()
        return [Package(name=name, arch=arch, version=version) for name, arch, version in rows]

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: the sqlite3 module must not open transactions behind our back; we issue
        # BEGIN IMMEDIATE ourselves so that the write lock is taken up front and two workers cannot both
        # read "running" and then both upgrade.
        conn = sqlite3.connect(self.state_path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_SECONDS * 1000)}")
        # NORMAL in WAL mode survives a killed process (what the crash tests do), not a power cut; enough
        # for a simulation and much faster with many small transactions.
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    def _thread_connection(self) -> sqlite3.Connection:
        """This thread's connection, opened on first use and kept.

        Kept, not opened per transaction: closing the *last* connection of a WAL database checkpoints the whole
        log into the file and deletes it, so a connection per transaction paid a checkpoint and a new log on
        almost every one (≈ 0.7 ms of ``close`` each, two thirds of a simulated install; issue 17 item 3). A
        state file replaced under the same name (a test's new fleet, a removed data directory) is noticed by
        its inode and reopened.
        """
        try:
            st = os.stat(self.state_path)
            identity: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            identity = None
        local = self._local
        conn: sqlite3.Connection | None = getattr(local, "conn", None)
        if conn is not None and (identity is None or local.identity != identity):
            conn.close()
            conn = None
        if conn is None:
            conn = self._connect()
            local.conn = conn
            st = os.stat(self.state_path)
            local.identity = (st.st_dev, st.st_ino)
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE`` transaction on this thread's connection, committed unless the body raises."""
        conn = self._thread_connection()
        # SQLite's busy handler sleeps in steps of up to 100 ms while another connection writes, however soon
        # the lock is free again: threads of one process queue on a lock instead (other processes — more
        # workers — still meet in the busy handler).
        with self._write_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except sqlite3.Error:  # the connection itself broke: open a new one next time
                    self._local.conn = None
                    conn.close()
                raise
            conn.execute("COMMIT")

    def _create_schema(self) -> None:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        # Switching to WAL needs the database to itself and SQLite does not wait for that (busy_timeout does
        # not apply): concurrent first uses (threads of this process, other workers) retry briefly.
        deadline = time.monotonic() + BUSY_TIMEOUT_SECONDS
        while True:
            try:
                with closing(self._connect()) as conn:
                    # WAL lets readers run while a worker writes; the setting is stored in the file.
                    conn.execute("PRAGMA journal_mode = WAL")
                    conn.executescript(_SCHEMA)
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _ensure_ready(self) -> None:
        """Create the database and fill it from the fleet file on first use (safe to race across processes)."""
        if self._ready:
            return
        with self._ready_lock:
            if self._ready:
                return
            self._create_schema()
            with self._transaction() as conn:
                row = conn.execute("SELECT value FROM meta WHERE key = 'fleet_digest'").fetchone()
                if row is None:
                    self._populate(conn)
                elif row[0] != self.fleet.digest:
                    raise InputError(
                        f"simulated state file {self.state_path} belongs to another fleet file (digest "
                        f"{row[0][:16]}…, this fleet is {self.fleet.digest[:16]}…): use the default state path "
                        "for this fleet, another --state file, or `patchflow fleet reset` to start over",
                        source=self.fleet.source,
                    )
            self._ready = True

    def _populate(self, conn: sqlite3.Connection) -> None:
        conn.executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?)",
            [
                ("schema_version", str(SCHEMA_VERSION)),
                ("fleet_digest", self.fleet.digest),
                ("fleet_name", self.fleet.name),
                # Lets `patchflow fleet status NAME` find the fleet file by the fleet's name.
                ("fleet_source", str(Path(self.fleet.source).resolve()) if self.fleet.source else ""),
            ],
        )
        conn.executemany(
            "INSERT INTO instances (instance_id) VALUES (?)",
            [(instance.id,) for instance in self.fleet.instances],
        )
        conn.executemany(
            "INSERT INTO packages (instance_id, name, arch, version) VALUES (?, ?, ?, ?)",
            [
                (instance.id, package.name, package.arch, package.version)
                for instance in self.fleet.instances
                for package in instance.installed
            ],
        )


def _boot_id(instance_id: str, boot_count: int) -> str:
    """A simulated boot id: changes exactly when the instance reboots."""
    return f"{instance_id}-boot-{boot_count}"


def _undeliverable(instance: FleetInstance) -> InstallResult:
    return InstallResult(
        instance.id,
        "undeliverable",
        message="simulated instance is offline (behaviour.offline): the SSM agent cannot be reached",
    )


def _request(kind: Kind, instance: FleetInstance, packages: Sequence[Package]) -> Request:
    """Validate and normalise what an operation asks for, so a retry compares equal to the original."""
    chosen: dict[tuple[str, str], str] = {}
    for package in packages:
        versions.validate(instance.family, package.version)
        key = (package.name, package.arch)
        previous = chosen.get(key)
        if (
            kind == "restore"
            or previous is None
            or versions.compare(instance.family, package.version, previous) > 0
        ):
            chosen[key] = package.version
    return tuple((name, arch, version) for (name, arch), version in sorted(chosen.items()))


def _as_request(raw: Any) -> Request:
    return tuple((str(name), str(arch), str(version)) for name, arch, version in raw)


def _dump_result(result: InstallResult) -> str:
    return json.dumps(dataclasses.asdict(result), sort_keys=True)


def _load_result(text: str) -> InstallResult:
    data = json.loads(text)
    data["changed"] = tuple(PackageChange(**change) for change in data["changed"])
    return InstallResult(**data)


def _caught(call: Callable[..., _T], *args: Any) -> _T | Exception:
    """``call(*args)``, or the per-instance error it raised (a batch answers it for that instance alone).

    Only errors a single call would raise for one instance are caught; anything else (the database itself
    failing) rolls the whole batch's transaction back and propagates.
    """
    try:
        return call(*args)
    except (NotFoundError, ValueError, RuntimeError) as exc:  # InvalidVersionError is a ValueError
        return exc
