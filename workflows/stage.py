"""StageRunWorkflow: one stage inside one maintenance window, with SSM-style rate control.

The parent wave starts one run per window. A run keeps at most ``max_concurrency`` instances in flight
(dispatched in batches — see :func:`patchflow.core.ratecontrol.batch_size_for`), stops dispatching when failure
number ``max_errors + 1`` arrives, when the window's cutoff passes, or when an operator stops it, and lets
in-flight work finish — unless the stage's ``cutoff_behavior`` is ``cancel``: then a timer at the cutoff cancels
the in-flight instances through the executor (SSM: CancelCommand). Long runs continue as new (carrying only compact per-instance states) so a
10,000-instance stage stays far inside Temporal's history limits.
"""

from __future__ import annotations

import asyncio
from collections import deque
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

with workflow.unsafe.imports_passed_through():
    from patchflow.core.analysis import AlertCheckInput, AlertCheckResult
    from patchflow.core.disruption import DisruptionGate, only
    from patchflow.core.hooks import (
        HALT_STAGE,
        ON_EXIT,
        POST_INSTALL,
        POST_REBOOT,
        PRE_INSTALL,
        HookStepRecord,
        phase_budget_seconds,
    )
    from patchflow.core.instances import Package
    from patchflow.core.ratecontrol import PENDING, StageScheduler
    from patchflow.core.reboots import reboots
    from patchflow.core.wavemodel import (
        HookPhaseInput,
        HookPhaseResult,
        InstanceOutcome,
        InstancePage,
        InstancePageInput,
        PatchBatchInput,
        PatchBatchResult,
        RebootBatchInput,
        StageProgress,
        StageRunInput,
        StageRunResult,
        instance_page,
    )
    from workflows.policies import (
        PATCH_RETRY,
        PATCH_START_TO_CLOSE,
        QUICK_RETRY,
        QUICK_TIMEOUT,
        SEND_START_TO_CLOSE,
    )
    from workflows.reboot import reboot_batch


#: Patch id (``workflow.patched``): an abort lets running sends finish, then cancels what they sent.
SPARE_SENDS = "abort-spares-running-sends"


@workflow.defn
class StageRunWorkflow:
    def __init__(self) -> None:
        self._scheduler: StageScheduler | None = None
        self._stop = False
        self._aborted = False
        self._cancel_reason = ""
        self._cut_off = False
        self._in_flight: dict[asyncio.Task[PatchBatchResult], list[str]] = {}
        self._sending: dict[str, bool] = {}
        """Batches (by their first instance) whose send activity runs: an abort lets it finish."""
        self._budget = ""
        """The disruption budget as the plan wrote it (for the progress queries)."""
        self._hook_steps: dict[str, list[HookStepRecord]] = {}
        """Lifecycle hooks: instance id → the step records of its phases so far (stages with hooks only)."""
        self._halt_reason = ""
        """``on_hook_failure: halt_stage`` stopped dispatching: why (the wave's halt reason)."""
        self._blocked_by = ""
        """Why dispatch waits (``block_on_alerts``); empty when it does not."""
        self._pending_reboot: list[str] = []
        """Instances of this run patched and waiting for a reboot (reboot debt; only plans with ``reboot:``)."""

    @workflow.signal
    def stop(self) -> None:
        """Stop dispatching (a halt); in-flight instances finish."""
        self._stop = True

    @workflow.signal
    def abort(self) -> None:
        """Stop dispatching and cancel the in-flight instances (a cancelled wave): executors cancel their
        commands where they can (SSM CancelCommand, best effort).

        A batch still being sent is not interrupted: a send cancelled half-way would leave the commands it had
        sent running and unrecorded. It completes, and its wait then cancels exactly what it sent.
        """
        self._stop = True
        self._cancel_in_flight("cancelled by an operator")

    def _cancel_in_flight(self, reason: str) -> None:
        """Cancel every in-flight batch but those still being sent; ``reason`` becomes the cancelled instances'
        detail."""
        self._aborted = True
        self._cancel_reason = reason
        spare_sends = workflow.patched(SPARE_SENDS)  # runs aborted before this change replay as they ran
        for task, batch in self._in_flight.items():
            if not (spare_sends and batch[0] in self._sending):
                task.cancel()

    @workflow.query
    def progress(self) -> StageProgress:
        s = self._scheduler
        if s is None:
            return StageProgress(states={}, errors=0, max_errors=0, max_concurrency=0)
        return StageProgress(
            states=dict(s.states),
            errors=s.errors,
            max_errors=s.max_errors,
            max_concurrency=s.max_concurrency,
            disruption=self._disruption(),
            blocked_by=self._blocked_by,
        )

    @workflow.query
    def progress_summary(self) -> StageProgress:
        """:meth:`progress` without the per-instance states (their pages: :meth:`progress_page`)."""
        s = self._scheduler
        if s is None:
            return StageProgress(states={}, errors=0, max_errors=0, max_concurrency=0)
        return StageProgress(
            states={},
            errors=s.errors,
            max_errors=s.max_errors,
            max_concurrency=s.max_concurrency,
            disruption=self._disruption(),
            blocked_by=self._blocked_by,
        )

    def _disruption(self) -> str:
        """The disruption budget's line for ``wave status`` (empty without one)."""
        s = self._scheduler
        if s is None or s.disruption is None:
            return ""
        return s.disruption.summary(self._budget)

    @workflow.query
    def progress_page(self, page: InstancePageInput) -> InstancePage:
        """One page of this run's instance states and details (``page.stage`` is not looked at)."""
        s = self._scheduler
        if s is None:
            return InstancePage(instances={}, details={}, total=0)
        return instance_page(s.states, s.details, page, self._hook_steps)

    @workflow.run
    async def run(self, inp: StageRunInput) -> StageRunResult:
        gate = None
        if inp.disruption_limits or inp.zones:
            # Rebuilt from the pending instances alone: a run continues as new (or ends) with nothing in flight.
            gate = DisruptionGate.build(
                groups=inp.disruption_groups,
                limits=inp.disruption_limits,
                zones=inp.zones,
                pending=inp.instance_ids,
            )
            self._budget = inp.disruption_budget
        scheduler = StageScheduler(
            pending=deque(inp.instance_ids),
            max_concurrency=inp.max_concurrency,
            max_errors=inp.max_errors,
            batch_size=inp.batch_size,
            errors=inp.errors_so_far,
            states=dict(inp.states),
            details=dict(inp.details),
            ramp=inp.ramp,
            dispatched=inp.dispatched_so_far,
            disruption=gate,
        )
        for instance_id in inp.instance_ids:
            scheduler.states[instance_id] = PENDING
        self._scheduler = scheduler
        self._hook_steps = {k: list(v) for k, v in inp.hook_steps.items()}
        self._pending_reboot = list(inp.pending_reboot)
        in_flight = self._in_flight
        continue_as_new = False
        cutoff_timer: asyncio.Task[None] | None = None
        recheck: asyncio.Task[None] | None = None
        """block_on_alerts: while blocked, the timer until the next check (None: not blocked)."""
        stopped: asyncio.Task[None] | None = None
        """While blocked with nothing in flight: wakes the run when it is stopped."""

        while True:
            past_cutoff = inp.cutoff is not None and workflow.now() >= inp.cutoff
            if past_cutoff and inp.cancel_at_cutoff and in_flight and not self._cut_off:
                self._cut_off = True
                assert inp.cutoff is not None
                self._cancel_in_flight(
                    f"cancelled at the window's cutoff ({inp.cutoff.isoformat(timespec='minutes')}; "
                    "cutoff_behavior: cancel)"
                )
            info = workflow.info()
            if not continue_as_new and (
                info.is_continue_as_new_suggested()
                or (inp.history_event_limit and info.get_current_history_length() > inp.history_event_limit)
            ):
                continue_as_new = True
            may_start = not (self._stop or past_cutoff or continue_as_new)
            if recheck is not None and (recheck.done() or not may_start):
                recheck.cancel()
                recheck = None
            if may_start and inp.block_on_alerts is not None and _could_dispatch(scheduler):
                # kured's blocking: before a batch is dispatched no matching alert may fire; while one does,
                # dispatch waits (in-flight instances go on) and checks again every check_seconds.
                may_start = recheck is None and await self._alerts_clear(inp)
                if not may_start and recheck is None:
                    recheck = asyncio.ensure_future(
                        workflow.sleep(
                            timedelta(seconds=inp.block_on_alerts.check_seconds),
                            summary="until alerts are checked again",
                        )
                    )
            if may_start:
                for batch in scheduler.take():
                    task = asyncio.ensure_future(self._patch(inp, batch))
                    in_flight[task] = batch
            if not in_flight and recheck is None:
                break
            waiting: list[asyncio.Task[Any]] = list(in_flight)
            if recheck is not None:
                waiting.append(recheck)
                if stopped is None:
                    stopped = asyncio.ensure_future(workflow.wait_condition(lambda: self._stop))
                waiting.append(stopped)
            if inp.cancel_at_cutoff and inp.cutoff is not None and not past_cutoff:
                if cutoff_timer is None:  # one timer per run, started when there is work to cancel
                    cutoff_timer = asyncio.ensure_future(
                        workflow.sleep(inp.cutoff - workflow.now(), summary="until the window's cutoff")
                    )
                waiting.append(cutoff_timer)
            try:
                done, _ = await workflow.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # The run itself was cancelled through Temporal: an abort, whose in-flight installs are cancelled
                # and recorded; the run then ends normally and its wave halts on it.
                self.abort()
                continue
            # Process completions in dispatch order: deterministic, and the order failures are counted in.
            for task in [t for t in in_flight if t in done]:
                batch = in_flight.pop(task)
                self._record(inp, scheduler, batch, task, self._cancel_reason)
        if cutoff_timer is not None and not cutoff_timer.done():
            cutoff_timer.cancel()
        for waiter in (recheck, stopped):
            if waiter is not None and not waiter.done():
                waiter.cancel()
        self._blocked_by = ""

        if continue_as_new and scheduler.has_pending and not scheduler.budget_exceeded and not self._stop:
            await workflow.wait_condition(workflow.all_handlers_finished)
            finished = {k: v for k, v in scheduler.states.items() if v != PENDING}
            pending = scheduler.remaining()
            workflow.continue_as_new(
                StageRunInput(
                    wave_id=inp.wave_id,
                    stage=inp.stage,
                    instance_ids=pending,
                    patches=inp.patches,
                    executor=inp.executor,
                    max_concurrency=inp.max_concurrency,
                    max_errors=inp.max_errors,
                    batch_size=inp.batch_size,
                    attempt=inp.attempt,
                    errors_so_far=scheduler.errors,
                    cutoff=inp.cutoff,
                    undeliverable_counts_as_error=inp.undeliverable_counts_as_error,
                    heartbeat_timeout_seconds=inp.heartbeat_timeout_seconds,
                    states=finished,
                    details=dict(scheduler.details),
                    history_event_limit=inp.history_event_limit,
                    history_outbox=inp.history_outbox,
                    ramp=inp.ramp,
                    dispatched_so_far=scheduler.dispatched,
                    cancel_at_cutoff=inp.cancel_at_cutoff,
                    sources=inp.sources,
                    disruption_groups=only(inp.disruption_groups, pending),
                    disruption_limits=inp.disruption_limits,
                    zones=only(inp.zones, pending),
                    disruption_budget=inp.disruption_budget,
                    hooks=inp.hooks,
                    hook_steps=dict(self._hook_steps),
                    block_on_alerts=inp.block_on_alerts,
                    reboot_policy=inp.reboot_policy,
                    pending_reboot=list(self._pending_reboot),
                )
            )

        await workflow.wait_condition(workflow.all_handlers_finished)
        remaining = scheduler.remaining()
        return StageRunResult(
            states={k: v for k, v in scheduler.states.items() if v != PENDING},
            details=dict(scheduler.details),
            remaining=remaining,
            errors=scheduler.errors,
            budget_exceeded=scheduler.budget_exceeded,
            stopped=self._stop,
            cut_off=inp.cancel_at_cutoff
            and inp.cutoff is not None
            and workflow.now() >= inp.cutoff
            and (self._cut_off or bool(remaining)),
            hook_steps=dict(self._hook_steps),
            halt_reason=self._halt_reason,
            pending_reboot=list(self._pending_reboot),
        )

    async def _alerts_clear(self, inp: StageRunInput) -> bool:
        """Whether no alert blocks dispatch now (the ``check_alerts`` activity); a check that failed for good
        blocks (fail safe). The reason is what ``wave status`` shows while blocked."""
        assert inp.block_on_alerts is not None
        try:
            result: AlertCheckResult = await workflow.execute_activity(
                "check_alerts",
                AlertCheckInput(spec=inp.block_on_alerts),
                result_type=AlertCheckResult,
                start_to_close_timeout=QUICK_TIMEOUT,
                retry_policy=QUICK_RETRY,
                summary=f"check alerts before dispatching in {inp.stage}",
            )
        except ActivityError as exc:
            result = AlertCheckResult(
                blocking=[], reason=f"the alert check failed ({exc.cause or exc}): blocked"
            )
        self._blocked_by = result.reason
        return not result.reason

    async def _patch(self, inp: StageRunInput, batch: list[str]) -> PatchBatchResult:
        if inp.hooks is not None and inp.hooks.has_steps:  # only plans with hooks: the others run as before
            return await self._lifecycle(inp, batch)
        if workflow.patched("send-then-wait"):
            installed = await self._send_then_wait(inp, batch)
            if inp.reboot_policy:  # only plans with ``reboot:`` (older runs never have a policy)
                return await self._reboot_batch(inp, installed)
            return installed
        return await self._batch_activity(
            "patch_batch", inp, batch, inp.patches, f"patch {len(batch)} instance(s)"
        )

    async def _send_then_wait(
        self, inp: StageRunInput, batch: list[str], sending_key: str | None = None
    ) -> PatchBatchResult:
        """Send (a short activity, at most once per operation id), then wait (a long, heartbeating one).

        ``sending_key``: the dispatched batch's first instance when ``batch`` is only part of it (lifecycle
        hooks leave out instances whose pre_install failed), so an abort spares the send all the same."""
        key = sending_key or batch[0]
        self._sending[key] = True
        try:
            sent = await self._batch_activity(
                "send_patch_batch", inp, batch, inp.patches, f"send {len(batch)} install(s)"
            )
        finally:
            del self._sending[key]
        running = [o.instance_id for o in sent.outcomes if o.status == "started"]
        if not running:
            return sent
        # An abort that arrived while the installs were being sent did not stop the send from completing (its
        # result wins over a cancel it had not heard of yet): the wait then cancels what the send started.
        waited = await self._batch_activity(
            "wait_patch_batch",
            inp,
            running,
            [],
            f"{'cancel' if self._aborted else 'wait for'} {len(running)} install(s)",
            cancel=self._aborted,
            cancel_reason=self._cancel_reason,
        )
        finished = {o.instance_id: o for o in waited.outcomes}
        return PatchBatchResult(outcomes=[finished.get(o.instance_id, o) for o in sent.outcomes])

    async def _lifecycle(self, inp: StageRunInput, batch: list[str]) -> PatchBatchResult:
        """One batch of a stage with lifecycle hooks, in the order of issue 14:

        pre_install → install (send, wait) → post_install → reboot → post_reboot → on_exit (always, for every
        instance whose pre_install began — also after a failure, an abort or a cutoff's cancel).

        An instance failing a phase goes on to on_exit only (one failing pre_install is never installed); a
        hook failure fails the instance like a failed install (it counts against max_errors), and with
        ``on_hook_failure: halt_stage`` also stops the run's dispatching. Hook phases are never cut short: an
        abort takes effect between phases.
        """
        assert inp.hooks is not None
        outcomes: dict[str, InstanceOutcome] = {}
        try:
            self._hook_outcomes(inp, PRE_INSTALL, await self._run_hooks(inp, PRE_INSTALL, batch), outcomes)
            ready = [i for i in batch if i not in outcomes]
            if ready and not self._aborted:
                installed = await self._send_then_wait(inp, ready, sending_key=batch[0])
                outcomes.update({o.instance_id: o for o in installed.outcomes})
            ok = [i for i in ready if i in outcomes and outcomes[i].status == "succeeded"]
            self._hook_outcomes(inp, POST_INSTALL, await self._run_hooks(inp, POST_INSTALL, ok), outcomes)
            ok = [i for i in ok if outcomes[i].status == "succeeded"]
            # Reboot orchestration (``reboot:``), between post_install and post_reboot: post_reboot runs on the
            # instances rebooted here (or whose install left no reboot pending).
            rebooted: list[str] = []
            if inp.reboot_policy and ok and not self._aborted:
                after_reboot = await self._reboot_batch(
                    inp, PatchBatchResult(outcomes=[outcomes[i] for i in ok])
                )
                outcomes.update({o.instance_id: o for o in after_reboot.outcomes})
                rebooted = [o.instance_id for o in after_reboot.outcomes if o.rebooted]
                ok = [i for i in ok if outcomes[i].status == "succeeded"]
            after = await self._run_hooks(inp, POST_REBOOT, ok, rebooted=rebooted)
            self._hook_outcomes(inp, POST_REBOOT, after, outcomes)
        except (asyncio.CancelledError, ActivityError) as exc:
            # Aborted (or an install activity gave up): what has no outcome yet is cancelled (or failed), and
            # on_exit still runs below.
            cancelled = isinstance(exc, asyncio.CancelledError) or _was_cancelled(exc)
            for instance_id in batch:
                if instance_id not in outcomes or outcomes[instance_id].status == "started":
                    outcomes[instance_id] = (
                        InstanceOutcome(
                            instance_id,
                            "cancelled",
                            False,
                            detail=self._cancel_reason or "cancelled by an operator",
                        )
                        if cancelled
                        else InstanceOutcome(
                            instance_id, "failed", True, detail=f"patch activity failed: {exc}"
                        )
                    )
        failed = [i for i in batch if i in outcomes and outcomes[i].status != "succeeded"]
        undo = {
            i: [u for r in self._hook_steps.get(i, []) if r.phase == PRE_INSTALL for u in r.undo]
            for i in batch
        }
        exit_result = await self._run_hooks(inp, ON_EXIT, batch, failed=failed, undo=undo)
        self._hook_outcomes(inp, ON_EXIT, exit_result, outcomes)
        return PatchBatchResult(
            outcomes=[
                outcomes.get(i) or InstanceOutcome(i, "failed", True, detail="no result reported")
                for i in batch
            ]
        )

    def _hook_outcomes(
        self, inp: StageRunInput, phase: str, result: HookPhaseResult, outcomes: dict[str, InstanceOutcome]
    ) -> None:
        """Instances failing ``phase`` fail (the first failure's detail stays); ``halt_stage`` stops dispatch."""
        assert inp.hooks is not None
        for instance_id, why in result.failed.items():
            previous = outcomes.get(instance_id)
            if previous is not None and previous.status != "succeeded":
                continue
            outcomes[instance_id] = InstanceOutcome(instance_id, "failed", True, detail=f"hook failed: {why}")
            if inp.hooks.on_hook_failure == HALT_STAGE and not self._halt_reason:
                self._stop = True
                self._halt_reason = (
                    f"stage {inp.stage}: the {phase} hooks of {instance_id} failed ({why}); "
                    "on_hook_failure: halt_stage stopped the stage"
                )

    async def _run_hooks(
        self,
        inp: StageRunInput,
        phase: str,
        instance_ids: list[str],
        *,
        failed: list[str] | None = None,
        undo: dict[str, list[str]] | None = None,
        rebooted: list[str] | None = None,
    ) -> HookPhaseResult:
        """One phase of the stage's hooks on ``instance_ids`` (the ``run_hook_phase`` activity); its step records
        are kept per instance. Shielded from an abort: the phase finishes, then the abort goes on."""
        assert inp.hooks is not None
        steps = inp.hooks.steps(phase)
        if not steps or not instance_ids:
            return HookPhaseResult(records={})
        activity_task = asyncio.ensure_future(
            workflow.execute_activity(
                "run_hook_phase",
                HookPhaseInput(
                    executor=inp.executor,
                    wave_id=inp.wave_id,
                    stage=inp.stage,
                    phase=phase,
                    steps=steps,
                    instance_ids=instance_ids,
                    attempt=inp.attempt,
                    failed_instance_ids=[i for i in failed or [] if i in instance_ids],
                    undo={i: u for i, u in (undo or {}).items() if u},
                    rebooted_instance_ids=list(rebooted or []),
                ),
                result_type=HookPhaseResult,
                start_to_close_timeout=timedelta(seconds=phase_budget_seconds(steps)),
                heartbeat_timeout=timedelta(seconds=inp.heartbeat_timeout_seconds),
                retry_policy=PATCH_RETRY,
                summary=f"{phase} hooks of {len(instance_ids)} instance(s) of {inp.stage}",
            )
        )
        interrupted: asyncio.CancelledError | None = None
        while True:
            try:
                result: HookPhaseResult = await asyncio.shield(activity_task)
                break
            except asyncio.CancelledError as exc:
                interrupted = exc  # the phase finishes first; the abort is raised after it
            except (
                ActivityError
            ) as exc:  # the activity gave up after its retries: the phase failed everywhere
                result = HookPhaseResult(
                    records={}, failed=dict.fromkeys(instance_ids, f"{phase} hooks did not run: {exc}")
                )
                break
        for instance_id, records in result.records.items():
            self._hook_steps.setdefault(instance_id, []).extend(records)
        if interrupted is not None:
            raise interrupted
        return result

    async def _reboot_batch(self, inp: StageRunInput, installed: PatchBatchResult) -> PatchBatchResult:
        """Reboot what the stage's reboot policy names right after the batch's install (the installs ran with
        ``NoReboot``), inside the batch: a reboot that fails (the host does not come back) fails the instance
        and counts against ``max_errors``; an aborted run reboots nothing more."""
        due = [
            o.instance_id
            for o in installed.outcomes
            if reboots(inp.reboot_policy, status=o.status, pending_reboot=o.pending_reboot)
        ]
        if not due or self._aborted:
            return installed
        rebooted = await reboot_batch(
            RebootBatchInput(inp.executor, inp.wave_id, inp.stage, due, inp.attempt),
            inp.heartbeat_timeout_seconds,
            f"reboot {len(due)} instance(s) of {inp.stage}",
        )
        after = {o.instance_id: o for o in rebooted.outcomes}
        merged: list[InstanceOutcome] = []
        for o in installed.outcomes:
            r = after.get(o.instance_id)
            if r is None:
                merged.append(o)
                continue
            merged.append(
                InstanceOutcome(
                    instance_id=o.instance_id,
                    status=r.status,
                    counts_as_error=r.counts_as_error,
                    detail=f"{o.detail}; {r.detail}" if o.detail else r.detail,
                    changed=o.changed,
                    pending_reboot=r.status != "succeeded",
                    rebooted=r.rebooted,
                )
            )
        return PatchBatchResult(outcomes=merged)

    @staticmethod
    async def _batch_activity(
        name: str,
        inp: StageRunInput,
        instance_ids: list[str],
        patches: list[Package],
        what: str,
        *,
        cancel: bool = False,
        cancel_reason: str = "",
    ) -> PatchBatchResult:
        """One batch activity; every kind heartbeats, and on abort the workflow waits until it has cancelled
        its commands before reporting back."""
        return await workflow.execute_activity(
            name,
            PatchBatchInput(
                executor=inp.executor,
                wave_id=inp.wave_id,
                stage=inp.stage,
                instance_ids=instance_ids,
                patches=patches,
                attempt=inp.attempt,
                cancel=cancel,
                record_results=not inp.history_outbox,
                cancel_reason=cancel_reason if cancel else "",
                sources=inp.sources if patches else [],
            ),
            result_type=PatchBatchResult,
            start_to_close_timeout=SEND_START_TO_CLOSE
            if name == "send_patch_batch"
            else PATCH_START_TO_CLOSE,
            heartbeat_timeout=timedelta(seconds=inp.heartbeat_timeout_seconds),
            retry_policy=PATCH_RETRY,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=f"{what} of {inp.stage}",
        )

    def _record(
        self,
        inp: StageRunInput,
        scheduler: StageScheduler,
        batch: list[str],
        task: asyncio.Task[PatchBatchResult],
        cancel_reason: str,
    ) -> None:
        if task.cancelled() or _was_cancelled(task.exception()):
            for instance_id in batch:
                scheduler.record(
                    instance_id,
                    "cancelled",
                    counts_as_error=False,
                    detail=cancel_reason or "cancelled by an operator",
                )
            return
        exc = task.exception()
        if exc is not None:
            # The activity gave up after its retries: every instance of the batch counts as failed.
            for instance_id in batch:
                scheduler.record(
                    instance_id, "failed", counts_as_error=True, detail=f"patch activity failed: {exc}"
                )
            return
        outcomes = {o.instance_id: o for o in task.result().outcomes}
        for instance_id in batch:
            outcome = outcomes.get(instance_id)
            if outcome is None:
                scheduler.record(instance_id, "failed", counts_as_error=True, detail="no result reported")
                continue
            counts = outcome.counts_as_error or (
                inp.undeliverable_counts_as_error and outcome.status == "undeliverable"
            )
            scheduler.record(instance_id, outcome.status, counts_as_error=counts, detail=outcome.detail)
            if outcome.pending_reboot:
                self._pending_reboot.append(instance_id)


def _could_dispatch(scheduler: StageScheduler) -> bool:
    """Whether the scheduler has instances to dispatch and room for them (an alert check is worth it)."""
    return (
        scheduler.has_pending
        and not scheduler.budget_exceeded
        and (len(scheduler.in_flight) < scheduler.max_concurrency)
    )


def _was_cancelled(exc: BaseException | None) -> bool:
    return isinstance(exc, ActivityError) and isinstance(exc.cause, CancelledError)
