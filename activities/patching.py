"""Activities of a wave: every side effect (executors, clocks, HTTP) lives here.

:class:`WaveActivities` holds an executor factory, so tests inject a fleet without monkeypatching. Domain
errors become non-retryable ``ApplicationError`` s at this boundary.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar, cast

from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.executors import ExecutorCache
from patchflow.core.disruption import PER_AVAILABILITY_ZONE, group_members
from patchflow.core.freezes import first_allowed_window, freeze_note
from patchflow.core.ratecontrol import FAILED, ROLLED_BACK, SUCCEEDED
from patchflow.core.reboots import reboot_operation_id
from patchflow.core.wavemodel import (
    ExecutorRef,
    GateReminder,
    HealthInput,
    HealthReport,
    InstanceOutcome,
    PatchBatchInput,
    PatchBatchResult,
    RebootBatchInput,
    RecordWaveInput,
    ResolveTargetsInput,
    ResolveTargetsResult,
    RollbackInput,
    RollbackResult,
    StageAttempt,
    WaveStatus,
    WindowInput,
    WindowResult,
)
from patchflow.core.windows import current_or_next
from patchflow.errors import PatchflowError
from patchflow.executors.base import BatchInstaller, Executor, InstallResult, Package
from patchflow.metrics import DEFAULT_METRICS, Metrics

ExecutorFactory = Callable[[ExecutorRef], Executor]


def build_executor(ref: ExecutorRef) -> Executor:
    """The production factory (:func:`patchflow.executors.factory.build_executor`), its executor API calls
    counted by operation, a bad configuration turned into a non-retryable ``ApplicationError``."""
    from patchflow.executors.factory import ExecutorConfigError
    from patchflow.executors.factory import build_executor as build
    from patchflow.metrics import instrument_boto3_client

    try:
        return build(ref, instrument=lambda client: instrument_boto3_client(client, executor=ref.kind))
    except ExecutorConfigError as exc:
        raise ApplicationError(str(exc), type="InputError", non_retryable=True) from exc


T = TypeVar("T")

#: Bound of each history database wait of a worker (connect, pool checkout, statement, lock): patching never
#: waits on the history database, and a write it does not take is retried by the wave's outbox.
HISTORY_DB_TIMEOUT_SECONDS = 10.0


def install_operation_id(wave_id: str, stage: str, instance_id: str, attempt: int) -> str:
    """Idempotency key of one install: a retried activity reuses it, an operator resume bumps ``attempt``."""
    return f"{wave_id}/{stage}/{instance_id}/install/{attempt}"


class WaveActivities:
    """The activities of a wave.

    Args:
        factory: builds executors from their configuration (tests inject fleets here).
        metrics: where patch durations go.
        database_url: the history database; None = do not record (results still reach the workflow).
        client: the worker's Temporal client, used by ``record_wave`` to read the wave's status.
    """

    def __init__(
        self,
        factory: ExecutorFactory = build_executor,
        metrics: Metrics = DEFAULT_METRICS,
        *,
        database_url: str | None = None,
        client: Any = None,
    ):
        self._factory = factory
        self._metrics = metrics
        self._database_url = database_url
        self._client = client
        self._executors = ExecutorCache(factory)

    async def _executor(self, ref: ExecutorRef) -> Executor:
        return await self._executors.get(ref)

    @activity.defn(name="resolve_targets")
    async def resolve_targets(self, inp: ResolveTargetsInput) -> ResolveTargetsResult:
        """Explicit ids as listed (unknown ones reported), or a patch group's members sorted by id."""
        instances = await (await self._executor(inp.executor)).discover()
        by_id = {i.instance_id: i for i in instances}
        if inp.instance_ids:
            known = [i for i in inp.instance_ids if i in by_id]
            missing = [i for i in inp.instance_ids if i not in by_id]
        else:
            known = sorted(i.instance_id for i in instances if i.patch_group == inp.patch_group)
            missing = []
        offline = [i for i in known if not by_id[i].online]
        ordered = [by_id[i] for i in known]
        return ResolveTargetsResult(
            instance_ids=known,
            missing=missing,
            offline=offline,
            groups=group_members(ordered, inp.group_by) if inp.group_by else {},
            zones=group_members(ordered, PER_AVAILABILITY_ZONE) if inp.zones else {},
        )

    @activity.defn(name="next_window")
    async def next_window(self, inp: WindowInput) -> WindowResult:
        """The window open now (if its cutoff is ahead) or the next one, outside every change freeze;
        ``now`` windows never close unless a freeze cuts them."""
        after = inp.after if inp.after.tzinfo else inp.after.replace(tzinfo=UTC)
        if not inp.freezes:
            if inp.spec.schedule.strip().lower() == "now":
                return WindowResult(found=True, start=inp.after, end=None, cutoff=None)
            window = current_or_next(inp.spec, after)
            if window is None:
                return WindowResult(found=False)
            return WindowResult(found=True, start=window.start, end=window.end, cutoff=window.cutoff)
        allowed = first_allowed_window(inp.spec, after, inp.freezes)
        if allowed is None:
            return WindowResult(
                found=False, note="no window opens outside the change freezes within the freeze horizon"
            )
        return WindowResult(
            found=True,
            start=allowed.start,
            end=allowed.end,
            cutoff=allowed.cutoff,
            note=freeze_note(allowed),
            freeze_start=min((p.start for p in inp.freezes if p.start > allowed.start), default=None),
        )

    @activity.defn(name="patch_batch")
    async def patch_batch(self, inp: PatchBatchInput) -> PatchBatchResult:
        """Install the pinned set on each instance of the batch, concurrently, heartbeating meanwhile."""
        executor = await self._executor(inp.executor)
        patches = [Package(p.name, p.arch, p.version) for p in inp.patches]

        async def one(instance_id: str) -> InstanceOutcome:
            op = install_operation_id(inp.wave_id, inp.stage, instance_id, inp.attempt)
            started = time.monotonic()
            try:
                result = await executor.install(instance_id, patches, operation_id=op, **_sources(inp))
            except (PatchflowError, ValueError) as exc:
                # Bad input for this instance (unknown id, a reused operation id): retrying cannot help.
                self._metrics.observe_patch(inp.executor.kind, "error", time.monotonic() - started)
                return InstanceOutcome(instance_id, "failed", True, detail=str(exc))
            self._metrics.observe_patch(inp.executor.kind, result.status, time.monotonic() - started)
            return InstanceOutcome(
                instance_id=instance_id,
                status=result.status,
                counts_as_error=result.counts_as_error,
                detail=result.message,
                changed=len(result.changed),
            )

        try:
            async with heartbeating():
                outcomes = await asyncio.gather(*(one(i) for i in inp.instance_ids))
        except asyncio.CancelledError:
            ops = [install_operation_id(inp.wave_id, inp.stage, i, inp.attempt) for i in inp.instance_ids]
            await _cancelled(executor, ops)
            raise
        return PatchBatchResult(outcomes=list(outcomes))

    @activity.defn(name="send_patch_batch")
    async def send_patch_batch(self, inp: PatchBatchInput) -> PatchBatchResult:
        """Phase 1: start the install on each instance (SSM: SendCommand), at most once per operation id.

        ``SendCommand`` has no idempotency token, so sending is its own short activity: a retry after a crash
        finds the command it already sent (executors record it durably before anything else can fail).
        Instances still running come back with status ``started``; the others with their final result.
        """
        executor = await self._executor(inp.executor)
        patches = [Package(p.name, p.arch, p.version) for p in inp.patches]
        ops = {i: install_operation_id(inp.wave_id, inp.stage, i, inp.attempt) for i in inp.instance_ids}

        async def sent(
            instance_id: str, result: InstallResult | None | Exception, started: float | None
        ) -> InstanceOutcome:
            if isinstance(result, (PatchflowError, ValueError)):
                return InstanceOutcome(instance_id, "failed", True, detail=str(result))
            if isinstance(result, Exception):  # not about this instance (the executor's own failure): retried
                raise result
            if result is None:
                return InstanceOutcome(instance_id, STARTED, False)
            # Finished already (the SSH executor waits briefly for a short install; a retry finds a result):
            # counted and kept like the wait's results.
            self._metrics.observe_patch(inp.executor.kind, result.status, _elapsed(result, started))
            if inp.record_results:
                await self._record_result(inp, instance_id, result)
            return _outcome(instance_id, result)

        async def one(instance_id: str) -> InstanceOutcome:
            started = time.monotonic()
            try:
                result = await executor.start_install(
                    instance_id, patches, operation_id=ops[instance_id], **_sources(inp)
                )
            except (PatchflowError, ValueError) as exc:
                return await sent(instance_id, exc, started)
            return await sent(instance_id, result, started)

        async def send_all() -> list[InstanceOutcome]:
            batch = _batch_installer(executor)
            if batch is None:
                return list(await asyncio.gather(*(one(i) for i in inp.instance_ids)))
            # One round trip for the whole batch (issue 17 item 3); each instance's answer as a single call's.
            answers = await batch.start_installs(list(ops.items()), patches, **_sources(inp))
            return list(
                await asyncio.gather(
                    *(sent(i, a, None) for i, a in zip(inp.instance_ids, answers, strict=True))
                )
            )

        try:
            async with heartbeating():
                outcomes = await send_all()
        except asyncio.CancelledError:
            # Commands sent so far keep running: the wave's abort path (wait_patch_batch with ``cancel``)
            # cancels them, a retry after a worker shutdown finds them instead of sending again.
            await _cancelled(executor, [])
            raise
        return PatchBatchResult(outcomes=outcomes)

    @activity.defn(name="wait_patch_batch")
    async def wait_patch_batch(self, inp: PatchBatchInput) -> PatchBatchResult:
        """Phase 2: wait for the installs phase 1 started, heartbeating; a cancelled wave cancels them."""
        executor = await self._executor(inp.executor)
        ops = {i: install_operation_id(inp.wave_id, inp.stage, i, inp.attempt) for i in inp.instance_ids}
        if inp.cancel:
            # The wave was cancelled while these installs were being sent: cancel them, do not wait for them.
            # An install that had succeeded all the same reports it (the instance is patched). Heartbeating:
            # cancelling an install with baseline Sources waits for its cleanup step on the instance.
            async with heartbeating():
                await _cancel_operations(executor, list(ops.values()))
            finished = await asyncio.gather(*(executor.operation_result(op) for op in ops.values()))
            return PatchBatchResult(
                outcomes=[
                    _outcome(i, result)
                    if result is not None and result.status == "succeeded"
                    else InstanceOutcome(
                        i, "cancelled", False, detail=inp.cancel_reason or "cancelled by an operator"
                    )
                    for i, result in zip(inp.instance_ids, finished, strict=True)
                ]
            )

        async def waited(
            instance_id: str, result: InstallResult | Exception, started: float | None
        ) -> InstanceOutcome:
            if isinstance(result, (PatchflowError, ValueError)):
                self._metrics.observe_patch(inp.executor.kind, "error", _elapsed(None, started))
                return InstanceOutcome(instance_id, "failed", True, detail=str(result))
            if isinstance(result, Exception):  # not about this instance (the executor's own failure): retried
                raise result
            self._metrics.observe_patch(inp.executor.kind, result.status, _elapsed(result, started))
            if inp.record_results:  # stage runs of waves started before the history outbox
                await self._record_result(inp, instance_id, result)
            return _outcome(instance_id, result)

        async def one(instance_id: str) -> InstanceOutcome:
            started = time.monotonic()
            try:
                result = await executor.finish_install(instance_id, operation_id=ops[instance_id])
            except (PatchflowError, ValueError) as exc:
                return await waited(instance_id, exc, started)
            return await waited(instance_id, result, started)

        async def wait_all() -> list[InstanceOutcome]:
            batch = _batch_installer(executor)
            if batch is None:
                return list(await asyncio.gather(*(one(i) for i in inp.instance_ids)))
            answers = await batch.finish_installs(list(ops.items()))
            return list(
                await asyncio.gather(
                    *(waited(i, a, None) for i, a in zip(inp.instance_ids, answers, strict=True))
                )
            )

        try:
            async with heartbeating():
                outcomes = await wait_all()
        except asyncio.CancelledError:
            await _cancelled(executor, list(ops.values()))
            raise
        return PatchBatchResult(outcomes=outcomes)

    async def _record_result(self, inp: PatchBatchInput, instance_id: str, result: InstallResult) -> None:
        """Keep the instance's result (versions before/after) in the history database; never fails the install."""
        if self._database_url is None:
            return
        from patchflow.store import db

        finished = datetime.now(UTC)
        await self._write_history(
            f"{inp.wave_id}/{inp.stage}/{instance_id}",
            lambda session: db.record_instance_result(
                session,
                wave_id=inp.wave_id,
                stage=inp.stage,
                instance_id=instance_id,
                attempt=inp.attempt,
                status=result.status,
                detail=result.message,
                started_at=finished - timedelta(seconds=result.duration_seconds),
                finished_at=finished,
                versions_before={f"{c.name}.{c.arch}": c.from_version for c in result.changed},
                versions_after={f"{c.name}.{c.arch}": c.to_version for c in result.changed},
            ),
        )

    @activity.defn(name="record_wave")
    async def record_wave(self, inp: RecordWaveInput) -> None:
        """Snapshot the wave (stages, instance states, audit) into the history database, idempotently; from the
        wave's outbox also the instance results of the listed stage attempts.

        From the outbox a write the database does not take fails the activity, which Temporal retries until it
        does (history catches up; nothing else waits for it). Snapshots of waves started before the outbox are
        written best effort, as they were.
        """
        if self._database_url is None or self._client is None:
            return
        from patchflow.control.waves import wave_status
        from patchflow.store import db

        status = await wave_status(self._client, inp.wave_id)
        if not inp.outbox:
            await self._write_history(
                f"wave {inp.wave_id}",
                lambda session: db.record_wave_status(session, status=status, at=inp.at),
            )
            return
        async with heartbeating():
            rows = await self._result_rows(inp, status)

            def write(session: Any) -> None:
                for row in rows:
                    db.record_instance_result(session, **row)
                db.record_wave_status(session, status=status, at=inp.at)

            await self._in_database(f"wave {inp.wave_id}", write)

    async def _result_rows(self, inp: RecordWaveInput, status: WaveStatus) -> list[dict[str, Any]]:
        """History rows of the instances the listed stage attempts finished and the database lacks, from the
        executor's operation records (versions before and after).

        The records carry no finishing time: ``inp.at`` (when the wave asked, right after the stage run ended)
        stands for it, and the start is that minus the install's duration.
        """
        if not inp.results or inp.executor is None:
            return []
        from patchflow.store import db

        recorded: set[tuple[str, str, int]] = await self._in_database(
            f"wave {inp.wave_id} results",
            lambda session: {
                (r.stage, r.instance_id, r.attempt)
                for r in db.list_instance_results(session, wave_id=inp.wave_id)
                if r.operation == "install" and r.finished_at is not None
            },
        )
        stages = {st.name: st for st in status.stages}
        wanted = [
            (due, instance_id)
            for due in inp.results
            if due.stage in stages
            for instance_id, state in stages[due.stage].instances.items()
            if state in (SUCCEEDED, FAILED, ROLLED_BACK)
            and (due.stage, instance_id, due.attempt) not in recorded
        ]
        executor = await self._executor(inp.executor)
        limit = asyncio.Semaphore(16)

        async def read(due: StageAttempt, instance_id: str) -> InstallResult | None:
            async with limit:
                op = install_operation_id(inp.wave_id, due.stage, instance_id, due.attempt)
                return await executor.operation_result(op)

        found = await asyncio.gather(*(read(due, i) for due, i in wanted))
        finished = inp.at if inp.at.tzinfo else inp.at.replace(tzinfo=UTC)
        return [
            {
                "wave_id": inp.wave_id,
                "stage": due.stage,
                "instance_id": instance_id,
                "attempt": due.attempt,
                "status": result.status,
                "detail": result.message,
                "started_at": finished - timedelta(seconds=result.duration_seconds),
                "finished_at": finished,
                "versions_before": {f"{c.name}.{c.arch}": c.from_version for c in result.changed},
                "versions_after": {f"{c.name}.{c.arch}": c.to_version for c in result.changed},
            }
            for (due, instance_id), result in zip(wanted, found, strict=True)
            if result
            is not None  # never ran here (undeliverable, cancelled before the send) or still running
        ]

    async def _in_database(self, what: str, work: Callable[[Any], T]) -> T:
        """Run ``work(session)`` (then commit) in a thread, every wait bounded (connect, pool checkout, each
        statement: :data:`HISTORY_DB_TIMEOUT_SECONDS`; the whole call a few times that, even against a server that
        accepts connections and never answers). Raises a retryable ``ApplicationError`` when the database does
        not take it; the worker's ``patchflow_history_database_up`` says how the last call went."""
        from patchflow.store import db

        url = self._database_url or ""

        def run() -> T:
            engine = db.get_engine(url, timeout_seconds=HISTORY_DB_TIMEOUT_SECONDS)
            with db.translate_errors(url), db.open_session(engine) as session:
                value = work(session)
                session.commit()
                return value

        try:
            value = await asyncio.wait_for(asyncio.to_thread(run), HISTORY_DB_TIMEOUT_SECONDS * 3)
        except Exception as exc:  # noqa: BLE001 - whatever the driver raises, the write is retried later
            self._metrics.history_database(reachable=False)
            reason = str(exc) or f"no answer within {HISTORY_DB_TIMEOUT_SECONDS * 3:.0f} s"
            raise ApplicationError(
                f"the history database did not take {what}: {reason}", type="HistoryDatabaseUnavailable"
            ) from None
        self._metrics.history_database(reachable=True)
        return value

    async def _write_history(self, what: str, write: Callable[[Any], None]) -> None:
        """Best effort, for waves started before the history outbox: a failure is logged, never raised."""
        try:
            await self._in_database(what, write)
        except ApplicationError as exc:
            activity.logger.warning("could not record %s in the history database: %s", what, exc.message)

    @activity.defn(name="rollback_instances")
    async def rollback_instances(self, inp: RollbackInput) -> RollbackResult:
        """Restore each instance's packages to the versions its install of this wave replaced."""
        executor = await self._executor(inp.executor)
        rolled: list[str] = []
        failed: dict[str, str] = {}

        async def one(instance_id: str) -> None:
            # The install may come from an earlier attempt of the stage (before an operator resume).
            previous = None
            for attempt in range(inp.attempt, -1, -1):
                install_op = install_operation_id(inp.wave_id, inp.stage, instance_id, attempt)
                previous = await executor.operation_result(install_op)
                if previous is not None and previous.status == "succeeded":
                    break
            if previous is None or previous.status != "succeeded":
                failed[instance_id] = "no recorded successful install to roll back"
                return
            packages = [Package(c.name, c.arch, c.from_version) for c in previous.changed]
            result = await executor.restore(instance_id, packages, operation_id=f"{install_op}/restore")
            if result.status == "succeeded":
                rolled.append(instance_id)
            else:
                failed[instance_id] = result.message or result.status

        try:
            async with heartbeating():
                await asyncio.gather(*(one(i) for i in inp.instance_ids))
        except asyncio.CancelledError:
            await _cancelled(executor, [])
            raise
        order = {i: n for n, i in enumerate(inp.instance_ids)}
        return RollbackResult(rolled_back=sorted(rolled, key=order.__getitem__), failed=failed)

    @activity.defn(name="remind_gate")
    async def remind_gate(self, inp: GateReminder) -> None:
        """An approval gate has waited long for its decision: say so in the worker's log (alerting reads it)
        and count it (``patchflow_gate_reminders``); the wave's audit log carries the reminder too."""
        until = f"; it expires at {inp.expires_at:%Y-%m-%d %H:%M} UTC" if inp.expires_at else ""
        activity.logger.warning(
            "wave %s (%s): stage %s has waited %s s for approval by %s%s",
            inp.wave_id,
            inp.plan_name,
            inp.stage,
            inp.waited_seconds,
            ", ".join(inp.approvers),
            until,
        )
        self._metrics.gate_reminders.inc()

    @activity.defn(name="health_check")
    async def health_check(self, inp: HealthInput) -> HealthReport:
        """The executor's health check on every instance, and the optional HTTP endpoint."""
        executor = await self._executor(inp.executor)
        results = await asyncio.gather(*(executor.health_check(i) for i in inp.instance_ids))
        unhealthy = {r.instance_id: r.message or "unhealthy" for r in results if not r.healthy}
        if inp.url:
            problem = await asyncio.to_thread(_http_problem, inp.url)
            if problem:
                unhealthy[inp.url] = problem
        return HealthReport(unhealthy=unhealthy, checked=len(results) + (1 if inp.url else 0))

    @activity.defn(name="reboot_batch")
    async def reboot_batch(self, inp: RebootBatchInput) -> PatchBatchResult:
        """Reboot each instance of the batch and wait for it to come back (a new boot id), heartbeating.

        Idempotent: each reboot has its operation id (:func:`~patchflow.core.reboots.reboot_operation_id`),
        so a retry after a crash or a lost heartbeat waits for the reboot already under way instead of
        rebooting again. A host that does not come back is ``failed`` (it counts against ``max_errors``).
        """
        executor = await self._executor(inp.executor)

        async def one(instance_id: str) -> InstanceOutcome:
            op = reboot_operation_id(inp.wave_id, inp.stage, instance_id, inp.attempt)
            try:
                result = await executor.reboot(instance_id, operation_id=op)
            except (PatchflowError, ValueError) as exc:
                return InstanceOutcome(instance_id, "failed", True, detail=f"reboot failed: {exc}")
            if result.status == "succeeded":
                return InstanceOutcome(
                    instance_id, "succeeded", False, detail=result.message or "rebooted", rebooted=True
                )
            return InstanceOutcome(
                instance_id,
                "failed",
                True,
                detail=f"reboot {result.status}: {result.message}"
                if result.message
                else f"reboot {result.status}",
                pending_reboot=True,
            )

        async with heartbeating():
            outcomes = await asyncio.gather(*(one(i) for i in inp.instance_ids))
        self._metrics.reboots(inp.executor.kind, outcomes)
        return PatchBatchResult(outcomes=list(outcomes))


STARTED = "started"
"""Phase-1 status of an install that is under way (never a final instance state)."""


def _sources(inp: PatchBatchInput) -> dict[str, Any]:
    """The ``sources`` keyword of an install, only when the patch set has Sources: executors (and test
    doubles) written before Sources existed keep working for every set without them."""
    return {"sources": tuple(inp.sources)} if inp.sources else {}


def _batch_installer(executor: Executor) -> BatchInstaller | None:
    """The executor as a :class:`BatchInstaller` when its own class implements the batch methods.

    Not ``isinstance``: a wrapper that overrides ``start_install`` and hands everything else to an inner executor
    (``__getattr__``) would pass that check and have its override bypassed by the inner executor's batch method.
    """
    own = type(executor)
    if callable(getattr(own, "start_installs", None)) and callable(getattr(own, "finish_installs", None)):
        return cast(BatchInstaller, executor)
    return None


def _elapsed(result: InstallResult | None, started: float | None) -> float:
    """An install's duration for the metrics: since ``started`` (a single call, timed here), else — a batch,
    whose answers arrive together — the duration the executor recorded for it (0 for an error)."""
    if started is not None:
        return time.monotonic() - started
    return result.duration_seconds if result is not None else 0.0


def _outcome(instance_id: str, result: InstallResult) -> InstanceOutcome:
    return InstanceOutcome(
        instance_id=instance_id,
        status=result.status,
        counts_as_error=result.counts_as_error,
        detail=result.message,
        changed=len(result.changed),
        pending_reboot=result.pending_reboot and result.status == "succeeded",
    )


async def _cancelled(executor: Executor, operation_ids: list[str]) -> None:
    """An activity working on a fleet was cancelled: cancel the executor's commands only if the wave asked.

    Temporal cancels a running activity for several reasons (``activity.cancellation_details()``, sdk-python
    ``ActivityCancellationDetails``): the workflow requested it (``cancel_requested``: the wave was cancelled —
    cancel the commands), the worker is shutting down (``worker_shutdown``: a rolling deploy — the commands keep
    running and the retry on another worker waits for them, so this attempt fails *retryably* instead of
    reporting a cancellation nobody asked for), or the server already gave up on this attempt (heartbeat or
    start-to-close timeout, ``not_found``, a pause or reset — its retry waits for the same commands). Only the
    first may touch the fleet: anything else would turn a deploy or a slow heartbeat into failed installs.

    Returns when the caller should re-raise its ``CancelledError``; raises a retryable ``ApplicationError`` on
    worker shutdown.
    """
    details = activity.cancellation_details()
    if details is not None and details.cancel_requested:
        await _cancel_operations(executor, operation_ids)
        return
    if details is not None and details.worker_shutdown:
        raise ApplicationError(
            "the worker is shutting down: the fleet's work keeps running and another worker takes it over",
            type="WorkerShutdown",
        )


async def _cancel_operations(executor: Executor, operation_ids: list[str]) -> None:
    """A cancelled wave: ask the executor to cancel what is still running (best effort, like SSM)."""
    if operation_ids:
        cancels = (executor.cancel(op) for op in operation_ids)
        await asyncio.shield(asyncio.gather(*cancels, return_exceptions=True))


def _http_problem(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - operator-configured URL
            if 200 <= response.status < 300:
                return None
            return f"HTTP {response.status}"
    except urllib.error.HTTPError as exc:
        return f"HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"unreachable: {exc}"


@contextlib.asynccontextmanager
async def heartbeating(  # type: ignore[no-untyped-def]
    every: float = 2.0, details: Callable[[], Any] | None = None
):
    """Heartbeat in the background while a long batch runs, so a dead worker is noticed quickly (at least three
    beats per heartbeat timeout: a short timeout must not expire between two beats). ``details``: what each beat
    carries (a retry resumes from the last one; a beat without them would erase them)."""
    timeout = activity.info().heartbeat_timeout
    if timeout:
        every = min(every, timeout.total_seconds() / 3)

    async def beat() -> None:
        while True:
            if details is None:
                activity.heartbeat()
            else:
                activity.heartbeat(details())
            await asyncio.sleep(every)

    task = asyncio.create_task(beat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
