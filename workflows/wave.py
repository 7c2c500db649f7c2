"""WaveWorkflow: a pinned patch set rolled out stage by stage (Dev → Test → Prod).

Per stage: the gate (auto / human approval through a validated Update / health check of what earlier
stages patched), target resolution, then runs inside maintenance windows — sleeping durably until a window
opens, starting no instance after its cutoff and carrying what is left to the next window — and the soak.
A stage that exceeds its error budget halts the wave (after restoring its patched instances when the plan
says ``rollback``); later stages never start on their own. Operators answer with Updates: approve, reject,
halt, resume, cancel, rollback — each refused by a validator when it does not apply.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from patchflow.core.analysis import (
        ERROR,
        MAX_KEPT_MEASUREMENTS,
        AnalysisQuery,
        AnalysisRunInput,
        AnalysisSpec,
        AnalysisSummary,
        MeasureInput,
        Measurement,
        QueryTally,
        analysis_verdict,
        query_verdict,
    )
    from patchflow.core.analysis import FAILED as ANALYSIS_FAILED
    from patchflow.core.analysis import SUCCESSFUL as ANALYSIS_SUCCESSFUL

    # The sandbox resolves WaveInput.freezes' type hints through sys.modules: import their module too.
    from patchflow.core.disruption import ZONE_BY_ZONE, only, resolve_limits
    from patchflow.core.freezes import FreezePeriod  # noqa: F401

    # ... and StageInput.hooks' (lifecycle hooks): HookStep inside Hooks.
    from patchflow.core.hooks import Hooks  # noqa: F401
    from patchflow.core.ratecontrol import (
        CANCEL,
        CANCELLED,
        FAILED,
        NOT_ATTEMPTED,
        PENDING,
        ROLLED_BACK,
        SUCCEEDED,
        batch_size_for,
        dispatch_deadline,
        parse_limit,
        resolve_concurrency,
        resolve_errors,
    )
    from patchflow.core.reboots import ALWAYS, NO_REBOOT, RebootSpec, deadline  # noqa: F401 - RebootSpec: a type hint
    from patchflow.core.wavemodel import (
        STAGE_CANCELLED,
        STAGE_FAILED,
        STAGE_HALTED,
        STAGE_NOT_STARTED,
        STAGE_ROLLED_BACK,
        STAGE_RUNNING,
        STAGE_SOAKING,
        STAGE_SUCCEEDED,
        STAGE_WAITING_APPROVAL,
        STAGE_WAITING_WINDOW,
        WAVE_CANCELLED,
        WAVE_FAILED,
        WAVE_FINAL_STATES,
        WAVE_HALTED,
        WAVE_RUNNING,
        WAVE_SUCCEEDED,
        WAVE_WAITING_APPROVAL,
        AuditEntry,
        ExecutorRef,
        GateDecision,
        GateReminder,
        HealthInput,
        HealthReport,
        InstancePage,
        InstancePageInput,
        OperatorAction,
        RebootWindowInput,
        RebootWindowResult,
        RecordWaveInput,
        ResolveTargetsInput,
        ResolveTargetsResult,
        RollbackInput,
        RollbackResult,
        StageAttempt,
        StageInput,
        StageRunInput,
        StageRunResult,
        StageStatus,
        WaveInput,
        WaveResult,
        WaveStatus,
        WindowInput,
        WindowResult,
        instance_page,
    )
    from workflows.policies import (
        HISTORY_HEARTBEAT,
        HISTORY_RETRY,
        HISTORY_START_TO_CLOSE,
        PATCH_RETRY,
        PATCH_START_TO_CLOSE,
        QUICK_RETRY,
        QUICK_TIMEOUT,
    )
    from workflows.reboot import RebootWindowWorkflow
    from workflows.stage import StageRunWorkflow


T = TypeVar("T")


class _Cancelled(Exception):
    """Internal: the operator cancelled the wave while it was waiting."""


@dataclass
class _Targets:
    """A stage's dispatch bookkeeping across its runs (workflow-internal; never crosses a boundary)."""

    remaining: list[str]
    """Still to attempt, in dispatch order."""
    concurrency: int
    budget: int
    errors: int = 0
    """Failures counted against ``budget`` in the current attempt."""
    runs: int = 0
    """Stage runs started so far for this stage (numbers the runs' workflow ids)."""
    groups: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """Disruption budget: group → the stage's instances (empty: no budget)."""
    limits: dict[str, int] = dataclasses.field(default_factory=dict)
    """Disruption budget: group → instances allowed out at once."""
    zones: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    """``rollout: zone_by_zone``: zone → the stage's instances, in rollout order."""


MAX_COMMENT = 1000


def _duration(seconds: int) -> str:
    """``3d``, ``36h``, ``90m``, ``45s``: the largest whole unit."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _disruption_label(stage: StageInput) -> str:
    """``10% per tag:Cluster; zone_by_zone``: the stage's disruption budget as ``wave status`` shows it."""
    parts = [f"{stage.disruption_max} per {stage.disruption_per}"] if stage.disruption_max else []
    if stage.rollout == ZONE_BY_ZONE:
        parts.append(ZONE_BY_ZONE)
    return "; ".join(parts)


def _why(exc: ActivityError) -> str:
    """The reason an activity failed for good, as an operator reads it."""
    cause = exc.cause
    return getattr(cause, "message", None) or str(cause or exc)


def _check_actor(who: str, comment: str) -> None:
    """Every operator action names who acted; comments are bounded (they live in the wave's audit log)."""
    if not who.strip():
        raise ApplicationError("say who acts (--as NAME)", type="InvalidRequest")
    if len(comment) > MAX_COMMENT:
        raise ApplicationError(
            f"the comment is {len(comment)} characters; keep it under {MAX_COMMENT}", type="InvalidRequest"
        )


#: Patch ids (``workflow.patched``) of behaviour changes that running waves must not see on replay.
ATOMIC_DECISIONS = "operator-decisions-atomic"
RESUME_SOAK = "resume-returns-to-soaking"
HISTORY_OUTBOX = "history-outbox"
HALT_ON_FAILURE = "halt-when-a-look-up-fails"
STOP_BEFORE_RUN = "halt-or-cancel-before-the-stage-run"


@workflow.defn
class WaveWorkflow:
    @workflow.init
    def __init__(self, inp: WaveInput) -> None:
        # @workflow.init: the state exists before the first Update is validated — also an Update delivered with
        # the workflow's first task (update-with-start, or the first task a new worker replays after a restart).
        self._input: WaveInput = inp
        self._status: WaveStatus = WaveStatus(
            wave_id=inp.wave_id,
            plan_name=inp.plan_name,
            state=WAVE_RUNNING,
            patch_set_id=inp.patch_set_id,
            stages=[StageStatus(name=s.name) for s in inp.stages],
            kind=inp.kind,
        )
        self._current = -1
        self._gate_decision: dict[int, tuple[bool, GateDecision]] = {}
        self._gate_decided_at: dict[int, datetime] = {}
        self._gate_expired: dict[int, bool] = {}
        self._halt_requested = False
        self._cancel_requested = False
        self._operator_decision: str | None = None
        """An accepted resume/rollback the halted wave has not taken yet (at most one at a time)."""
        self._awaiting_decision = False
        """The wave is halted and takes an operator decision (not while it is leaving the halt)."""
        self._rolling_back = False
        self._active_run: workflow.ChildWorkflowHandle | None = None
        self._attempt = 0
        self._rollback_allowed = False
        self._snapshot_due = False
        self._results_due: list[StageAttempt] = []
        self._drainer: asyncio.Task[None] | None = None
        """The history outbox's drain (see :meth:`_drain_outbox`)."""
        self._held: set[str] = set()
        """A canary stage's instances that wait for the canaries' analysis: no resume dispatches them."""
        self._analysis_overridden = False
        """An operator resumed past a failed canary analysis: the stage re-dispatches what was rolled back."""
        self._reboot_windows: list[asyncio.Task[None]] = []
        """Stages' deferred reboots (``reboot.window``): the wave does not finish before them."""

    # ------------------------------------------------------------------------------------------ queries

    @workflow.query
    def status(self) -> WaveStatus:
        """The whole status, every stage's instances included: grows with the fleet (kept for older clients;
        ``wave status`` asks :meth:`status_summary` and :meth:`instances_page`)."""
        return self._status

    @workflow.query
    def status_summary(self) -> WaveStatus:
        """The status without any stage's instances and details (their pages: :meth:`instances_page`)."""
        s = self._status
        return dataclasses.replace(
            s,
            stages=[
                dataclasses.replace(st, instances={}, details={}, hook_steps={}, reboot_debt={})
                for st in s.stages
            ],
        )

    @workflow.query
    def instances_page(self, page: InstancePageInput) -> InstancePage:
        """One page of a stage's instances and their details (at most ``MAX_PAGE_INSTANCES``)."""
        st = self._status.stages[self._stage_index(page.stage)]
        return instance_page(st.instances, st.details, page, st.hook_steps)

    # ------------------------------------------------------------------------------------------ updates
    # Validators refuse what does not apply (a refused Update leaves no trace in the history); a validator and
    # the synchronous start of its handler run without interruption, so the first accepted decision is the
    # decision — handlers check again before they change anything, and fail rather than overwrite.

    def _stage_index(self, name: str) -> int:
        for index, stage in enumerate(self._input.stages):
            if stage.name == name:
                return index
        names = ", ".join(s.name for s in self._input.stages)
        raise ApplicationError(
            f"this wave has no stage {name!r}; its stages are {names}", type="InvalidRequest"
        )

    def _validate_gate(self, decision: GateDecision) -> int:
        """The gate the decision is for; refuses a decision that does not apply (or comes second)."""
        _check_actor(decision.who, decision.comment)
        index = self._stage_index(decision.stage)
        stage = self._input.stages[index]
        if stage.gate not in ("approval", "analysis"):  # analysis: an inconclusive one may wait for approval
            raise ApplicationError(f"stage {stage.name!r} has no approval gate", type="InvalidRequest")
        self._refuse_second_decision(index)
        if index != self._current or self._status.stages[index].state != STAGE_WAITING_APPROVAL:
            state = self._status.stages[index].state
            raise ApplicationError(
                f"stage {stage.name!r} is not waiting for approval (it is {state})", type="InvalidRequest"
            )
        if decision.who not in stage.approvers:
            raise ApplicationError(
                f"{decision.who!r} may not approve stage {stage.name!r}; allowed: {', '.join(stage.approvers)}",
                type="NotAllowed",
            )
        return index

    def _refuse_second_decision(self, index: int) -> None:
        """A gate takes exactly one decision: the first accepted one (issue 12: approve and reject racing)."""
        if index not in self._gate_decision:
            return
        approved, first = self._gate_decision[index]
        at = self._gate_decided_at[index]
        if index in self._gate_expired:
            raise ApplicationError(
                f"the approval gate of stage {first.stage!r} expired at {at:%Y-%m-%d %H:%M:%S} UTC without a "
                "decision; a gate takes one decision",
                type="AlreadyDecided",
            )
        raise ApplicationError(
            f"stage {first.stage!r} was already {'approved' if approved else 'rejected'} by {first.who} at "
            f"{at:%Y-%m-%d %H:%M:%S} UTC; a gate takes one decision",
            type="AlreadyDecided",
        )

    def _decide_gate(self, decision: GateDecision, approved: bool) -> str:
        index = self._validate_gate(
            decision
        )  # again: nothing may have changed, but never overwrite a decision
        self._gate_decision[index] = (approved, decision)
        self._gate_decided_at[index] = workflow.now()
        verb = "approve" if approved else "reject"
        self._audit(decision.who, verb, decision.stage, decision.comment)
        return f"stage {decision.stage} {'approved' if approved else 'rejected'} by {decision.who}"

    @workflow.update
    async def approve(self, decision: GateDecision) -> str:
        return self._decide_gate(decision, True)

    @approve.validator
    def _validate_approve(self, decision: GateDecision) -> None:
        self._validate_gate(decision)

    @workflow.update
    async def reject(self, decision: GateDecision) -> str:
        return self._decide_gate(decision, False)

    @reject.validator
    def _validate_reject(self, decision: GateDecision) -> None:
        self._validate_gate(decision)

    def _require_state(self, action: str, allowed: set[str]) -> None:
        if self._status.state not in allowed:
            raise ApplicationError(
                f"cannot {action} a wave that is {self._status.state}", type="InvalidRequest"
            )

    @workflow.update
    async def halt(self, action: OperatorAction) -> str:
        self._halt_requested = True
        self._audit(action.who, "halt", self._current_name(), action.reason)
        await self._stop_active_run()
        return "halt requested: no new instances start; in-flight ones finish"

    @halt.validator
    def _validate_halt(self, action: OperatorAction) -> None:
        _check_actor(action.who, action.reason)
        if self._status.state == WAVE_WAITING_APPROVAL:
            raise ApplicationError(
                "the wave is waiting at an approval gate and patches nothing meanwhile; "
                "answer the gate with reject, or cancel the wave",
                type="InvalidRequest",
            )
        self._require_state("halt", {WAVE_RUNNING})
        if self._halt_requested:
            raise ApplicationError("a halt is already pending", type="InvalidRequest")

    def _validate_decision(self, action: OperatorAction, verb: str) -> None:
        """Resume and rollback are the halted wave's operator decisions: one at a time, none while a rollback
        runs or after the wave took a resume (issue 18: a resume sent during a rollback was answered and lost)."""
        _check_actor(action.who, action.reason)
        self._require_state(verb, {WAVE_HALTED})
        if self._rolling_back:
            raise ApplicationError(
                f"a rollback of stage {self._current_name()!r} is running; {verb} once it has finished",
                type="InvalidRequest",
            )
        if self._operator_decision is not None:
            raise ApplicationError(
                f"a {self._operator_decision} was already accepted and is being carried out",
                type="InvalidRequest",
            )
        if not self._awaiting_decision:
            raise ApplicationError("the wave is already resuming", type="InvalidRequest")

    def _decide(self, action: OperatorAction, decision: str) -> None:
        self._validate_decision(action, "roll back" if decision == "rollback" else decision)
        self._operator_decision = decision
        self._audit(action.who, decision, self._current_name(), action.reason)

    @workflow.update
    async def resume(self, action: OperatorAction) -> str:
        self._decide(action, "resume")
        return "resumed"

    @resume.validator
    def _validate_resume(self, action: OperatorAction) -> None:
        self._validate_decision(action, "resume")

    @workflow.update
    async def rollback(self, action: OperatorAction) -> str:
        self._decide(action, "rollback")
        return "rollback requested"

    @rollback.validator
    def _validate_rollback(self, action: OperatorAction) -> None:
        self._validate_decision(action, "roll back")
        if not self._rollback_allowed:
            raise ApplicationError(
                "nothing to roll back at this point (the wave halted at a gate or during a soak)",
                type="InvalidRequest",
            )
        stage = self._status.stages[self._current]
        if not any(state == SUCCEEDED for state in stage.instances.values()):
            raise ApplicationError(
                f"stage {stage.name!r} has no patched instances to roll back", type="InvalidRequest"
            )

    @workflow.update
    async def cancel(self, action: OperatorAction) -> str:
        self._cancel_requested = True
        self._audit(action.who, "cancel", self._current_name(), action.reason)
        await self._stop_active_run(abort=True)
        return "cancel requested: no new instances start; in-flight ones finish"

    @cancel.validator
    def _validate_cancel(self, action: OperatorAction) -> None:
        _check_actor(action.who, action.reason)
        if self._status.state in WAVE_FINAL_STATES:
            raise ApplicationError(f"the wave already ended ({self._status.state})", type="InvalidRequest")
        if self._cancel_requested:
            raise ApplicationError("a cancel is already pending", type="InvalidRequest")

    # ------------------------------------------------------------------------------------------ run

    @workflow.run
    async def run(self, inp: WaveInput) -> WaveResult:
        self._audit(inp.started_by or "patchflow", "start", "", f"patch set {inp.patch_set_id}")
        if inp.freeze_override_by:
            self._audit(
                inp.freeze_override_by, "override_freeze", "", f"{inp.kind} wave runs through change freezes"
            )
        try:
            await self._record_history()
            for index, stage in enumerate(inp.stages):
                self._current = index
                if not await self._run_stage(index, stage):
                    break
            else:
                await self._reboot_windows_done()
                self._status.state = WAVE_SUCCEEDED
            await self._reboot_windows_done()
        except _Cancelled:
            await self._cancel_reboot_windows()
            self._finish_cancelled()
        except asyncio.CancelledError:
            # Cancelled through Temporal (``temporal workflow cancel``, the UI): end like an operator's cancel,
            # then end cancelled in Temporal too. Shielded, so the cleanup runs to its end.
            await asyncio.shield(asyncio.ensure_future(self._cancelled_through_temporal()))
            raise
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._record_history()  # the final state, its instances and the whole audit log
        await self._history_caught_up()
        return WaveResult(status=self._status)

    async def _cancelled_through_temporal(self) -> None:
        """Abort the running stage run and take its results, then finalise the status and the history."""
        self._cancel_requested = True
        self._audit(
            "temporal", "cancel", self._current_name(), "workflow cancellation requested through Temporal"
        )
        handle = self._active_run
        if handle is not None:
            await self._stop_active_run(abort=True)
            self._take_run_result(self._status.stages[self._current], await handle)
        self._finish_cancelled()
        self._status.reason = "cancelled through Temporal (a workflow cancellation request)"
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._record_history()
        await self._history_caught_up()

    async def _run_stage(self, index: int, stage: StageInput) -> bool:
        """Run one stage; False when the wave must stop (rejected, failed or cancelled).

        The steps, in order: the gate guards promotion into the stage; the targets are resolved when it starts
        (fleets change between stages); runs inside maintenance windows until every target was attempted;
        the soak before the next stage may be promoted.
        """
        st = self._status.stages[index]
        if not await self._pass_gate(index, stage, st):
            return False
        targets = await self._resolve_stage_targets(stage, st)
        if targets is None:
            return False
        if stage.canary_count and not await self._canary(index, stage, st, targets):
            return False
        if not await self._run_in_windows(stage, st, targets):
            return False
        self._finish_stage(st, targets.budget)
        if stage.reboot is not None and stage.reboot.deferred and st.reboot_debt:
            self._start_reboot_window(stage, st, targets)
        return await self._soak(index, stage, st)

    # ------------------------------------------------------------------------------------------ stage steps

    async def _pass_gate(self, index: int, stage: StageInput, st: StageStatus) -> bool:
        """Step 1: the gate; False when it stays closed (rejected, or halted at the health gate and not
        resumed)."""
        if stage.gate == "approval":
            return await self._approval_gate(index, stage, st)
        if stage.gate == "health":
            return await self._health_gate(index, stage, st)
        if stage.gate == "analysis" and not stage.canary_count:  # with canaries: after them (:meth:`_canary`)
            return await self._analysis_gate(index, stage, st)
        return True

    async def _approval_gate(self, index: int, stage: StageInput, st: StageStatus) -> bool:
        await self._transition(WAVE_WAITING_APPROVAL, st, STAGE_WAITING_APPROVAL)
        if stage.expire_after_seconds or stage.remind_after_seconds:
            await self._wait_for_decision(index, stage, st)
        else:  # as every wave started before gates could expire: no timer
            await self._wait(lambda: index in self._gate_decision)
        approved, decision = self._gate_decision[index]
        if index in self._gate_expired:
            st.state = STAGE_NOT_STARTED
            st.note = decision.comment
            self._status.state = WAVE_FAILED
            self._status.reason = f"stage {stage.name}: the approval gate expired ({decision.comment})"
            return False
        if not approved:
            st.state = STAGE_NOT_STARTED
            st.note = f"promotion rejected by {decision.who}" + (
                f": {decision.comment}" if decision.comment else ""
            )
            self._status.state = WAVE_FAILED
            self._status.reason = f"stage {stage.name} rejected by {decision.who}"
            return False
        st.note = f"approved by {decision.who}"
        return True

    async def _wait_for_decision(self, index: int, stage: StageInput, st: StageStatus) -> None:
        """Wait for the gate's decision, reminding the approvers once and expiring the gate (a decision by
        ``patchflow``: rejected) when the plan says so."""
        began = workflow.now()
        expires = (
            began + timedelta(seconds=stage.expire_after_seconds) if stage.expire_after_seconds else None
        )
        remind = stage.remind_after_seconds or stage.expire_after_seconds // 2
        decided = lambda: index in self._gate_decision  # noqa: E731 - one condition, three waits
        if remind and not await self._wait_until(decided, began + timedelta(seconds=remind)):
            await self._remind(stage, st, began, expires)
        if expires is None:
            await self._wait(decided)
        elif not await self._wait_until(decided, expires):
            waited = _duration(stage.expire_after_seconds)
            comment = f"no decision within {waited}; the gate expired"
            self._gate_decision[index] = (
                False,
                GateDecision(stage=stage.name, who="patchflow", comment=comment),
            )
            self._gate_decided_at[index] = workflow.now()
            self._gate_expired[index] = True
            self._audit("patchflow", "expire", stage.name, comment)

    async def _remind(
        self, stage: StageInput, st: StageStatus, began: datetime, expires: datetime | None
    ) -> None:
        """One reminder: in the audit log and the stage's note (``wave status``, the history database), and
        through the remind_gate activity (the worker's log and metrics). A failed reminder stops nothing."""
        waited = int((workflow.now() - began).total_seconds())
        until = f"; the gate expires at {expires:%Y-%m-%d %H:%M} UTC" if expires else ""
        comment = f"waiting {_duration(waited)} for a decision by {', '.join(stage.approvers)}{until}"
        self._audit("patchflow", "remind", stage.name, comment)
        st.note = comment
        await self._record_history()
        try:
            await workflow.execute_activity(
                "remind_gate",
                GateReminder(
                    wave_id=self._input.wave_id,
                    plan_name=self._input.plan_name,
                    stage=stage.name,
                    approvers=list(stage.approvers),
                    waited_seconds=waited,
                    expires_at=expires,
                ),
                start_to_close_timeout=QUICK_TIMEOUT,
                retry_policy=QUICK_RETRY,
            )
        except ActivityError as exc:
            workflow.logger.warning("wave %s: reminder not sent: %s", self._input.wave_id, _why(exc))

    async def _health_gate(self, index: int, stage: StageInput, st: StageStatus) -> bool:
        """What earlier stages patched must be healthy (up to ``max_unhealthy`` exceptions)."""
        await self._transition(WAVE_RUNNING, st, STAGE_NOT_STARTED)
        patched = [
            i for s in self._status.stages[:index] for i, state in s.instances.items() if state == SUCCEEDED
        ]
        report = await self._or_halt(
            st,
            "the health check",
            lambda: workflow.execute_activity(
                "health_check",
                HealthInput(executor=self._input.executor, instance_ids=patched, url=stage.health_url),
                result_type=HealthReport,
                start_to_close_timeout=QUICK_TIMEOUT,
                retry_policy=QUICK_RETRY,
            ),
        )
        if len(report.unhealthy) <= stage.max_unhealthy:
            return True
        worst = ", ".join(f"{k}: {v}" for k, v in list(report.unhealthy.items())[:5])
        st.note = f"health gate closed: {len(report.unhealthy)} unhealthy > {stage.max_unhealthy} ({worst})"
        if await self._halted(st, st.note, allow_rollback=False) != "resume":
            return False
        st.note = "health gate overridden by an operator"
        return True

    async def _resolve_stage_targets(self, stage: StageInput, st: StageStatus) -> _Targets | None:
        """Step 2: the stage's targets and its limits resolved against their count; None when the wave must
        stop (no targets, and no operator resumed past it)."""
        await self._transition(WAVE_RUNNING, st, STAGE_RUNNING)
        targets = await self._look_up_targets(stage, st, "resolving its targets")
        ids = targets.instance_ids
        st.instances = dict.fromkeys(ids, PENDING)
        for missing in targets.missing:
            st.instances[missing] = NOT_ATTEMPTED
            st.details[missing] = "unknown to the executor"
        concurrency = resolve_concurrency(
            parse_limit(stage.max_concurrency, kind="max_concurrency"), len(ids)
        )
        budget = resolve_errors(parse_limit(stage.max_errors, kind="max_errors"), len(ids))
        st.max_concurrency, st.max_errors = concurrency, budget
        if targets.missing:
            st.note = (
                f"{len(targets.missing)} target(s) unknown to the executor: {', '.join(targets.missing[:5])}"
            )
        if not ids:
            # A typo in a patch group must not look like a successful stage.
            what = f"patch group {stage.patch_group!r}" if stage.patch_group else "none of its instance ids"
            st.note = f"no targets: {what} matched no managed instance"
            if await self._halted(st, f"stage {stage.name}: {st.note}", allow_rollback=False) != "resume":
                return None
            st.note = "no targets; an operator resumed past it"
        resolved = _Targets(remaining=list(ids), concurrency=concurrency, budget=budget)
        if stage.disruption_max or stage.rollout == ZONE_BY_ZONE:
            st.disruption = _disruption_label(stage)
            resolved.groups, resolved.zones = targets.groups, targets.zones
            if stage.disruption_max:
                # Each group's percentage resolves against its size in the whole stage, once.
                limit = parse_limit(stage.disruption_max, kind="max_concurrency")
                resolved.limits = resolve_limits(limit, targets.groups)
        return resolved

    async def _look_up_targets(self, stage: StageInput, st: StageStatus, what: str) -> ResolveTargetsResult:
        """The stage's targets as the executor knows them now (the wave halts when the look-up fails)."""
        return await self._or_halt(
            st,
            what,
            lambda: workflow.execute_activity(
                "resolve_targets",
                ResolveTargetsInput(
                    executor=self._input.executor,
                    patch_group=stage.patch_group,
                    instance_ids=stage.instance_ids,
                    group_by=stage.disruption_per if stage.disruption_max else "",
                    zones=stage.rollout == ZONE_BY_ZONE,
                ),
                result_type=ResolveTargetsResult,
                start_to_close_timeout=QUICK_TIMEOUT,
                retry_policy=QUICK_RETRY,
            ),
        )

    async def _run_in_windows(self, stage: StageInput, st: StageStatus, targets: _Targets) -> bool:
        """Step 3: one stage run per maintenance window until every target was attempted; False when the wave
        must stop (no future window, or halted and not resumed)."""
        while targets.remaining:
            window = await self._next_window(stage, st, targets)
            if window is None:
                return False
            if window.start is not None and window.start > workflow.now():
                await self._transition(WAVE_RUNNING, st, STAGE_WAITING_WINDOW)
                opened = await self._sleep_until(window.start)
                if not opened:  # halted while waiting
                    if await self._halted(st, "halted by an operator before the window opened") != "resume":
                        return False
                    continue
            await self._transition(WAVE_RUNNING, st, STAGE_RUNNING)
            if (self._halt_requested or self._cancel_requested) and workflow.patched(STOP_BEFORE_RUN):
                # An operator acted while the targets or the window were resolved: start no run at all (a run
                # signalled right after its start may already have dispatched its first instances).
                if self._cancel_requested:
                    raise _Cancelled
                if await self._halted(st, "halted by an operator before the stage run started") != "resume":
                    return False
                continue
            result = await self._run_window(stage, st, targets, window)
            if not await self._after_run(stage, st, targets, result):
                return False
        return True

    async def _next_window(
        self, stage: StageInput, st: StageStatus, targets: _Targets
    ) -> WindowResult | None:
        """The window open now or the next one outside the freezes; None (the wave failed) when there is none."""
        window = await self._or_halt(
            st,
            "finding its next maintenance window",
            lambda: workflow.execute_activity(
                "next_window",
                WindowInput(spec=stage.window, after=workflow.now(), freezes=self._input.freezes),
                result_type=WindowResult,
                start_to_close_timeout=QUICK_TIMEOUT,
                retry_policy=QUICK_RETRY,
            ),
        )
        if not window.found:
            for instance_id in targets.remaining:
                st.instances[instance_id] = NOT_ATTEMPTED
            st.state = STAGE_FAILED
            self._status.state = WAVE_FAILED
            self._status.reason = (
                f"stage {stage.name}: its maintenance window schedule has no future window"
                + (f" ({window.note})" if window.note else "")
            )
            return None
        # The stage's cutoff_behavior decides where this window stops new starts (continue: only a freeze).
        st.window_start = window.start
        st.window_cutoff = dispatch_deadline(stage.cutoff_behavior, window.cutoff, window.freeze_start)
        if window.note:
            st.note = window.note
        return window

    async def _run_window(
        self, stage: StageInput, st: StageStatus, targets: _Targets, window: WindowResult
    ) -> StageRunResult:
        """One stage run (a child workflow) inside the open window; its results merged into the stage."""
        inp = self._input
        run_id = f"{inp.wave_id}/{stage.name}/run-{self._attempt}-{targets.runs}"
        targets.runs += 1
        handle = await workflow.start_child_workflow(
            StageRunWorkflow.run,
            StageRunInput(
                wave_id=inp.wave_id,
                stage=stage.name,
                instance_ids=targets.remaining,
                patches=inp.patches,
                executor=self._stage_executor(stage),
                max_concurrency=targets.concurrency,
                max_errors=targets.budget,
                batch_size=batch_size_for(targets.concurrency),
                attempt=self._attempt,
                errors_so_far=targets.errors,
                cutoff=dispatch_deadline(stage.cutoff_behavior, window.cutoff, window.freeze_start),
                undeliverable_counts_as_error=inp.undeliverable_counts_as_error,
                heartbeat_timeout_seconds=inp.heartbeat_timeout_seconds,
                history_event_limit=inp.history_event_limit,
                history_outbox=self._history_outbox(),
                ramp=stage.ramp,
                cancel_at_cutoff=stage.cutoff_behavior == CANCEL,
                sources=inp.sources,
                disruption_groups=only(targets.groups, targets.remaining) if targets.groups else {},
                disruption_limits=targets.limits,
                zones=only(targets.zones, targets.remaining) if targets.zones else {},
                disruption_budget=_disruption_label(stage),
                hooks=stage.hooks,
                block_on_alerts=stage.block_on_alerts,
                reboot_policy=stage.reboot.policy if stage.reboot and stage.reboot.in_patch_window else "",
            ),
            id=run_id,
        )
        self._active_run = handle
        st.active_run_id = run_id
        if stage.reboot is not None:
            st.reboot_deadline_days = stage.reboot.deadline_days
        if self._halt_requested or self._cancel_requested:
            await self._stop_active_run(abort=self._cancel_requested)
        # Shielded: a cancel of the wave through Temporal must not cancel the run from here (that would cancel
        # its installs without recording them); the wave's cleanup aborts it and takes its result instead.
        result: StageRunResult = await asyncio.shield(handle)
        self._take_run_result(st, result)
        targets.errors = result.errors
        targets.remaining = result.remaining
        return result

    def _take_run_result(self, st: StageStatus, result: StageRunResult) -> None:
        self._active_run = None
        st.active_run_id = None
        st.instances.update(result.states)
        st.details.update(result.details)
        st.hook_steps.update(result.hook_steps)
        st.errors = result.errors
        self._take_reboot_debt(st, result)
        self._results_recorded_later(st)

    async def _after_run(
        self, stage: StageInput, st: StageStatus, targets: _Targets, result: StageRunResult
    ) -> bool:
        """What a finished stage run leads to: the wave ends (cancel), halts (budget exceeded, an operator's
        halt: restoring the stage first when the plan says ``rollback``), or carries on; False when the wave
        must stop."""
        if self._cancel_requested:
            raise _Cancelled
        if result.budget_exceeded:
            for instance_id in targets.remaining:
                st.instances[instance_id] = NOT_ATTEMPTED
            reason = f"stage {stage.name}: {targets.errors} failure(s) exceeded max_errors {targets.budget}"
            if stage.on_failure == "rollback":
                await self._rollback_stage(st)
            if await self._halted(st, reason) != "resume":
                return False
            targets.remaining, targets.errors = self._resume_targets(st), 0
        elif result.stopped:
            if await self._halted(st, result.halt_reason or "halted by an operator") != "resume":
                return False
            targets.remaining = self._resume_targets(st)
        elif result.cut_off:
            # cutoff_behavior cancel (AWS's CANCEL_TASK): what did not finish is cancelled or not attempted, and
            # nothing promotes a half-patched stage: an operator resumes (next window) or cancels.
            for instance_id in targets.remaining:
                st.instances[instance_id] = NOT_ATTEMPTED
            cancelled = sum(1 for s in result.states.values() if s == CANCELLED)
            reason = (
                f"stage {stage.name}: the window's cutoff cancelled {cancelled} in-flight instance(s) and left "
                f"{len(targets.remaining)} not attempted (cutoff_behavior: cancel); resume to go on in the next "
                "window"
            )
            if await self._halted(st, reason) != "resume":
                return False
            targets.remaining = self._resume_targets(st)
        elif targets.remaining:
            st.note = f"{len(targets.remaining)} instance(s) carried over to the next maintenance window"
        return True

    @staticmethod
    def _finish_stage(st: StageStatus, budget: int) -> None:
        """Every target was attempted: the stage succeeded, within its error budget."""
        failed = sum(1 for s in st.instances.values() if s == FAILED)
        st.state = STAGE_SUCCEEDED
        if failed:
            st.note = f"{failed} instance(s) failed; finished within the error budget ({budget} per attempt)"

    async def _soak(self, index: int, stage: StageInput, st: StageStatus) -> bool:
        """Step 4: soak before the next stage may be promoted (not after the last stage)."""
        if not stage.soak_seconds or index + 1 >= len(self._input.stages):
            return True
        await self._transition(WAVE_RUNNING, st, STAGE_SOAKING)
        deadline = workflow.now() + timedelta(seconds=stage.soak_seconds)
        while not await self._sleep_until(deadline):
            if await self._halted(st, "halted by an operator during soak", allow_rollback=False) != "resume":
                return False
            if workflow.patched(RESUME_SOAK):  # resumed: the soak goes on, and the state says so
                await self._transition(WAVE_RUNNING, st, STAGE_SOAKING)
        st.state = STAGE_SUCCEEDED
        return True

    # ------------------------------------------------------------------------------------------ canaries

    async def _canary(self, index: int, stage: StageInput, st: StageStatus, targets: _Targets) -> bool:
        """Patch the stage's first ``canary_count`` targets (a stage run restricted to them: same rate control,
        windows and error budget), soak them, analyse them (``gate.analysis``), and only then leave the rest
        in ``targets`` for the stage to go on with; False when the wave must stop."""
        canaries, rest = targets.remaining[: stage.canary_count], targets.remaining[stage.canary_count :]
        self._held = set(rest)
        targets.remaining = canaries
        st.note = f"canary: {len(canaries)} instance(s) first, {len(rest)} wait for their analysis"
        if not await self._run_in_windows(stage, st, targets):
            return False
        if not await self._canary_soak(stage, st):
            return False
        patched = [i for i in canaries if st.instances.get(i) == SUCCEEDED]
        promoted = True
        if stage.analysis is not None:
            promoted = await self._analyse(index, stage, st, patched, list(rest), canary=True)
        if not promoted:
            for instance_id in rest:
                if st.instances.get(instance_id) == PENDING:
                    st.instances[instance_id] = NOT_ATTEMPTED
            return False
        await self._transition(WAVE_RUNNING, st, STAGE_RUNNING)
        self._held = set()
        if self._analysis_overridden:  # resumed past a failed analysis: rolled-back canaries go again too
            self._analysis_overridden = False
            targets.remaining, targets.errors = self._resume_targets(st), 0
        else:
            targets.remaining = [i for i in rest if st.instances.get(i) == PENDING]
        return True

    async def _canary_soak(self, stage: StageInput, st: StageStatus) -> bool:
        """The canaries soak before they are analysed (an operator may halt meanwhile)."""
        if not stage.canary_soak_seconds:
            return True
        await self._transition(WAVE_RUNNING, st, STAGE_SOAKING)
        st.note = f"canary soak: {_duration(stage.canary_soak_seconds)} before the analysis"
        deadline = workflow.now() + timedelta(seconds=stage.canary_soak_seconds)
        while not await self._sleep_until(deadline):
            reason = "halted by an operator during the canary soak"
            if await self._halted(st, reason, allow_rollback=False) != "resume":
                return False
            await self._transition(WAVE_RUNNING, st, STAGE_SOAKING)
        return True

    async def _analysis_gate(self, index: int, stage: StageInput, st: StageStatus) -> bool:
        """A stage without canaries: analyse what the earlier stages patched before promoting into it (like the
        health gate); with ``compare: unpatched`` the stage's own targets are the baseline."""
        await self._transition(WAVE_RUNNING, st, STAGE_NOT_STARTED)
        patched = [
            i for s in self._status.stages[:index] for i, state in s.instances.items() if state == SUCCEEDED
        ]
        baseline: list[str] = []
        if stage.analysis is not None and stage.analysis.compare:
            found = await self._look_up_targets(stage, st, "resolving its targets (the analysis' baseline)")
            baseline = found.instance_ids
        return await self._analyse(index, stage, st, patched, baseline, canary=False)

    async def _analyse(
        self,
        index: int,
        stage: StageInput,
        st: StageStatus,
        instances: list[str],
        baseline: list[str],
        *,
        canary: bool,
    ) -> bool:
        """Measure, judge, and act on the result: promote (successful), halt like an exceeded error budget
        (failed: after rolling the canaries back when the plan says ``rollback``), or what ``inconclusive`` says.
        True when the stage may go on."""
        spec = stage.analysis
        assert spec is not None
        await self._transition(WAVE_RUNNING, st, STAGE_RUNNING)
        st.note = (
            f"analysing {len(instances)} instance(s) with {len(spec.queries)} quer(ies) on {spec.prometheus}"
        )
        st.analysis = AnalysisSummary(
            tallies={q.name: QueryTally() for q in spec.queries}, instances=len(instances)
        )
        verdicts = await self._measurements(spec, stage, st, instances, baseline)
        if verdicts is None:
            return False
        result = analysis_verdict(list(verdicts.values()))
        st.analysis.result = result
        summary = self._analysis_summary(spec, st, verdicts)
        self._audit("patchflow", "analysis", stage.name, summary)
        await self._count_analysis(stage, result)
        if result == ANALYSIS_SUCCESSFUL:
            st.note = summary
            await self._record_history()
            return True
        if result == ANALYSIS_FAILED:
            reason = f"stage {stage.name}: {summary}"
            if canary and stage.on_failure == "rollback":
                await self._rollback_stage(st)
            if await self._halted(st, reason, allow_rollback=canary) != "resume":
                return False
            st.note = "failed analysis overridden by an operator"
            self._analysis_overridden = canary
            return True
        return await self._inconclusive(index, stage, st, spec, summary)

    async def _inconclusive(
        self, index: int, stage: StageInput, st: StageStatus, spec: AnalysisSpec, summary: str
    ) -> bool:
        """An inconclusive analysis: an approver decides (the gate shows the measurements), the wave halts, or
        the stage goes on, as ``inconclusive`` says."""
        st.note = summary
        if spec.inconclusive == "continue":
            st.note = f"{summary}; promoted (inconclusive: continue)"
            return True
        if spec.inconclusive == "approval":
            approved = await self._approval_gate(index, stage, st)
            if not approved:
                st.state = STAGE_FAILED if stage.canary_count else STAGE_NOT_STARTED
            return approved
        if await self._halted(st, f"stage {stage.name}: {summary}", allow_rollback=False) != "resume":
            return False
        st.note = "inconclusive analysis overridden by an operator"
        return True

    async def _measurements(
        self,
        spec: AnalysisSpec,
        stage: StageInput,
        st: StageStatus,
        instances: list[str],
        baseline: list[str],
    ) -> dict[str, str] | None:
        """Every query measured ``count`` times, ``interval_seconds`` apart (the first at once), in time order; a
        query stops once its verdict is known, and all stop once one failed. Each query's verdict; None when the
        wave must stop (halted during the analysis and not resumed)."""
        assert st.analysis is not None
        schedule = sorted(
            (k * q.interval_seconds, n, k) for n, q in enumerate(spec.queries) for k in range(q.count)
        )
        verdicts = {q.name: "" for q in spec.queries}
        began = workflow.now()
        for offset, n, _ in schedule:
            query = spec.queries[n]
            if verdicts[query.name] or ANALYSIS_FAILED in verdicts.values():
                continue
            while not await self._sleep_until(began + timedelta(seconds=offset)):
                if (
                    await self._halted(st, "halted by an operator during the analysis", allow_rollback=False)
                    != "resume"
                ):
                    return None
                await self._transition(WAVE_RUNNING, st, STAGE_RUNNING)
            measurement = await self._measure(spec, stage, query, instances, baseline)
            st.measurements = [*st.measurements, measurement][-MAX_KEPT_MEASUREMENTS:]
            tally = st.analysis.tallies[query.name]
            tally.add(measurement.verdict)
            verdicts[query.name] = query_verdict(query, tally, done=False)
        for query in spec.queries:
            if not verdicts[query.name]:
                verdicts[query.name] = query_verdict(query, st.analysis.tallies[query.name], done=True)
        return verdicts

    async def _measure(
        self,
        spec: AnalysisSpec,
        stage: StageInput,
        query: AnalysisQuery,
        instances: list[str],
        baseline: list[str],
    ) -> Measurement:
        """One measurement (the ``measure`` activity); an activity that failed for good is a measurement in
        error (it counts as a failure)."""
        try:
            measurement: Measurement = await workflow.execute_activity(
                "measure",
                MeasureInput(
                    prometheus=spec.prometheus,
                    query=query,
                    instance_ids=instances,
                    baseline_ids=baseline,
                    compare=bool(spec.compare),
                    wave_id=self._input.wave_id,
                    stage=stage.name,
                ),
                result_type=Measurement,
                start_to_close_timeout=QUICK_TIMEOUT,
                retry_policy=QUICK_RETRY,
                summary=f"measure {query.name} of {stage.name}",
            )
        except ActivityError as exc:
            return Measurement(query=query.name, at=workflow.now(), verdict=ERROR, detail=_why(exc))
        return measurement

    @staticmethod
    def _analysis_summary(spec: AnalysisSpec, st: StageStatus, verdicts: dict[str, str]) -> str:
        """``analysis failed: error-rate failed (3 of 4 measurements failed, failure_limit 2; last: …)``."""
        assert st.analysis is not None
        parts = []
        for query in spec.queries:
            tally = st.analysis.tallies[query.name]
            taken = tally.successful + tally.failed + tally.inconclusive
            part = (
                f"{query.name} {verdicts[query.name]} ({tally.successful} ok, {tally.failed} failed, "
                f"{tally.inconclusive} inconclusive of {taken}; failure_limit {query.failure_limit})"
            )
            last = next((m for m in reversed(st.measurements) if m.query == query.name and m.detail), None)
            if verdicts[query.name] != ANALYSIS_SUCCESSFUL and last is not None:
                part += f"; last: {last.detail}"
            parts.append(part)
        result = analysis_verdict(list(verdicts.values()))
        return f"analysis {result} over {st.analysis.instances} instance(s): " + "; ".join(parts)

    async def _count_analysis(self, stage: StageInput, result: str) -> None:
        """``patchflow_analysis_runs_total{result}`` on the worker; a failure to count stops nothing."""
        try:
            await workflow.execute_activity(
                "record_analysis",
                AnalysisRunInput(wave_id=self._input.wave_id, stage=stage.name, result=result),
                start_to_close_timeout=QUICK_TIMEOUT,
                retry_policy=QUICK_RETRY,
            )
        except ActivityError as exc:
            workflow.logger.warning(
                "wave %s: analysis result not counted: %s", self._input.wave_id, _why(exc)
            )

    # ------------------------------------------------------------------------------------------ reboots

    def _stage_executor(self, stage: StageInput) -> ExecutorRef:
        """The executor of the stage's installs: with ``reboot:`` patchflow reboots, so they run ``NoReboot``."""
        if stage.reboot is None:
            return self._input.executor
        return dataclasses.replace(self._input.executor, reboot_option=NO_REBOOT)

    def _take_reboot_debt(self, st: StageStatus, result: StageRunResult) -> None:
        """Instances the run left ``pending_reboot`` become reboot debt (since now, said in their detail too) —
        with ``policy: always`` and a reboot window, every instance the run patched; re-patched instances that
        were rebooted leave it. Status only: no command, so older histories replay unchanged."""
        waiting = dict.fromkeys(result.pending_reboot)  # a set that keeps the dispatch order
        spec = next(s.reboot for s in self._input.stages if s.name == st.name)
        if spec is not None and spec.deferred and spec.policy == ALWAYS:
            waiting.update(dict.fromkeys(i for i, state in result.states.items() if state == SUCCEEDED))
        if not waiting and not st.reboot_debt:
            return
        now = workflow.now()
        for instance_id in result.states:
            if instance_id not in waiting:
                st.reboot_debt.pop(instance_id, None)
        due = deadline(now, st.reboot_deadline_days)
        for instance_id in waiting:
            if instance_id in st.reboot_debt:
                continue
            st.reboot_debt[instance_id] = now
            st.details[instance_id] = (
                (st.details.get(instance_id, "") + "; ").lstrip("; ")
                + f"reboot pending since {now:%Y-%m-%d %H:%M:%S} UTC"
                + (f" (overdue at {due:%Y-%m-%d %H:%M} UTC)" if due else "")
            )
        self._count_reboot_debt(st)

    @staticmethod
    def _count_reboot_debt(st: StageStatus) -> None:
        st.reboot_debt_count = len(st.reboot_debt)
        st.reboot_debt_since = min(st.reboot_debt.values(), default=None)

    def _start_reboot_window(self, stage: StageInput, st: StageStatus, targets: _Targets) -> None:
        """Reboot the stage's debt in its reboot window (``reboot.window``): a child workflow per stage, so the
        next stage is promoted meanwhile; the wave waits for it before it finishes."""
        assert stage.reboot is not None and stage.reboot.window is not None
        limit = stage.reboot.max_concurrency
        concurrency = (
            resolve_concurrency(parse_limit(limit, kind="max_concurrency"), len(st.reboot_debt))
            if limit
            else targets.concurrency
        )
        inp = RebootWindowInput(
            wave_id=self._input.wave_id,
            stage=stage.name,
            instance_ids=list(st.reboot_debt),
            executor=self._stage_executor(stage),
            window=stage.reboot.window,
            max_concurrency=concurrency,
            max_errors=targets.budget,
            attempt=self._attempt,
            heartbeat_timeout_seconds=self._input.heartbeat_timeout_seconds,
            freezes=self._input.freezes,
        )
        st.reboot_state = "waiting_window"
        self._reboot_windows.append(asyncio.ensure_future(self._reboot_window(st, inp)))

    async def _reboot_window(self, st: StageStatus, inp: RebootWindowInput) -> None:
        """Run the stage's reboot window and take its result into the stage's status."""
        result: RebootWindowResult = await workflow.execute_child_workflow(
            RebootWindowWorkflow.run, inp, id=f"{inp.wave_id}/{inp.stage}/reboot-window-{inp.attempt}"
        )
        for instance_id in result.rebooted:
            st.reboot_debt.pop(instance_id, None)
            st.details[instance_id] = "rebooted in the reboot window"
        for instance_id, why in result.failed.items():
            st.details[instance_id] = f"reboot failed in the reboot window: {why}"
        self._count_reboot_debt(st)
        st.reboot_window_start = result.window_start
        st.reboot_state = "done"
        if result.note:
            st.note = result.note
        self._audit(
            "patchflow",
            "reboot_window",
            st.name,
            f"rebooted {len(result.rebooted)}, failed {len(result.failed)}, still pending {len(st.reboot_debt)}",
        )
        await self._record_history()

    async def _reboot_windows_done(self) -> None:
        """Wait for every stage's reboot window (none for plans without ``reboot.window``)."""
        while any(not task.done() for task in self._reboot_windows):
            await workflow.wait_condition(
                lambda: all(task.done() for task in self._reboot_windows) or self._cancel_requested
            )
            if self._cancel_requested:
                raise _Cancelled

    async def _cancel_reboot_windows(self) -> None:
        """A cancelled wave cancels the reboot windows that have not finished (their debt stays reported)."""
        for task in self._reboot_windows:
            if not task.done():
                task.cancel()
        for task in self._reboot_windows:
            with contextlib.suppress(BaseException):
                await task
        for st in self._status.stages:
            if st.reboot_state == "waiting_window":
                st.reboot_state = "cancelled"

    # ------------------------------------------------------------------------------------------ helpers

    async def _stop_active_run(self, *, abort: bool = False) -> None:
        """Signal the running stage run by workflow id: its latest run, even after continue-as-new.

        A halt lets in-flight instances finish; a cancel (``abort``) cancels them too.
        """
        if self._active_run is not None:
            signal = StageRunWorkflow.abort if abort else StageRunWorkflow.stop
            try:
                await workflow.get_external_workflow_handle(self._active_run.id).signal(signal)
            except Exception as exc:  # noqa: BLE001 - the SDK reports a closed target as a generic failure
                # The stage run ended a moment ago and its result is on its way: nothing is left to stop, and
                # the pending halt/cancel takes effect when the result arrives.
                workflow.logger.info("stage run %s already ended: %s", self._active_run.id, exc)

    def _resume_targets(self, st: StageStatus) -> list[str]:
        """Instances a resume dispatches again, with fresh operation ids and a fresh error budget."""
        self._attempt += 1
        again = [
            i
            for i, s in st.instances.items()
            if s in (PENDING, NOT_ATTEMPTED, ROLLED_BACK, CANCELLED) and i not in self._held
        ]
        for instance_id in again:
            st.instances[instance_id] = PENDING
        return again

    async def _halted(self, st: StageStatus, reason: str, *, allow_rollback: bool = True) -> str:
        """Halt the wave and wait for an operator: returns ``resume`` (or ends the wave on cancel).

        A decision accepted while the halt is being recorded counts; a rollback is carried out while the wave
        stays halted, and no other decision is taken meanwhile.
        """
        atomic = workflow.patched(ATOMIC_DECISIONS)  # waves halted before this change replay as they ran
        if atomic:
            self._operator_decision = None
            self._awaiting_decision = True
        await self._transition(WAVE_HALTED, st, STAGE_HALTED)
        self._status.reason = reason
        self._halt_requested = False
        self._rollback_allowed = allow_rollback
        self._awaiting_decision = True
        try:
            while True:
                if not atomic:
                    self._operator_decision = None
                await self._wait(lambda: self._operator_decision is not None)
                decision, self._operator_decision = self._operator_decision, None
                if decision == "rollback":
                    self._rolling_back = True
                    try:
                        await self._rollback_stage(st)
                    finally:
                        self._rolling_back = False
                    st.state = STAGE_HALTED
                    continue
                self._status.reason = ""
                self._rollback_allowed = False
                return decision or "resume"
        finally:
            self._awaiting_decision = False

    async def _rollback_stage(self, st: StageStatus) -> None:
        patched = [i for i, s in st.instances.items() if s == SUCCEEDED]
        if not patched:
            return
        st.state = STAGE_ROLLED_BACK
        try:
            result = await workflow.execute_activity(
                "rollback_instances",
                RollbackInput(
                    executor=self._input.executor,
                    wave_id=self._input.wave_id,
                    stage=st.name,
                    instance_ids=patched,
                    attempt=self._attempt,
                ),
                result_type=RollbackResult,
                start_to_close_timeout=PATCH_START_TO_CLOSE,
                heartbeat_timeout=timedelta(seconds=self._input.heartbeat_timeout_seconds),
                retry_policy=PATCH_RETRY,
            )
        except ActivityError as exc:
            if not workflow.patched(HALT_ON_FAILURE):
                raise
            # The wave halts (or stays halted) with the reason; the operator can roll back again or resume.
            st.note = f"rollback failed: {_why(exc)}; the instances keep their new versions"
            return
        for instance_id in result.rolled_back:
            st.instances[instance_id] = ROLLED_BACK
        for instance_id, why in result.failed.items():
            st.details[instance_id] = f"rollback failed: {why}"
        st.note = f"rolled back {len(result.rolled_back)} instance(s)" + (
            f", {len(result.failed)} rollback failure(s)" if result.failed else ""
        )

    async def _or_halt(self, st: StageStatus, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Run a look-up activity; when it fails for good (its retries used up, or a non-retryable error) the
        wave halts with the reason instead of failing, and a resume tries again (a cancel ends the wave)."""
        while True:
            try:
                return await call()
            except ActivityError as exc:
                if not workflow.patched(HALT_ON_FAILURE):  # waves that failed on it before replay as they ran
                    raise
                reason = f"stage {st.name}: {what} failed: {_why(exc)}"
                wave_state, stage_state = self._status.state, st.state
                await self._halted(st, reason, allow_rollback=False)
                await self._transition(wave_state, st, stage_state)  # resumed: where it was, trying again

    async def _wait_until(self, condition: Callable[[], bool], moment: datetime) -> bool:
        """Wait for ``condition`` until ``moment`` (a durable timer); whether it holds (raises on cancel)."""
        delta = moment - workflow.now()
        if delta.total_seconds() > 0:
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: bool(condition()) or self._cancel_requested,
                    timeout=delta,
                    timeout_summary="until the approval gate reminds or expires",
                )
        if self._cancel_requested:
            raise _Cancelled
        return bool(condition())

    async def _wait(self, condition: Callable[[], bool]) -> None:
        """Wait for ``condition`` or a cancel."""
        await workflow.wait_condition(lambda: bool(condition()) or self._cancel_requested)
        if self._cancel_requested:
            raise _Cancelled

    async def _sleep_until(self, moment: datetime) -> bool:
        """Durable sleep; False if an operator halted meanwhile (raises on cancel)."""
        delta = moment - workflow.now()
        if delta.total_seconds() > 0:
            with contextlib.suppress(TimeoutError):
                await workflow.wait_condition(
                    lambda: self._halt_requested or self._cancel_requested,
                    timeout=delta,
                    timeout_summary="until the maintenance window / soak ends",
                )
        if self._cancel_requested:
            raise _Cancelled
        return not self._halt_requested

    def _set(self, wave_state: str, st: StageStatus, stage_state: str) -> None:
        if stage_state == STAGE_WAITING_APPROVAL and st.state != stage_state:
            st.waiting_since = workflow.now()  # status only (no command): replays unchanged
        self._status.state = wave_state
        st.state = stage_state

    async def _transition(self, wave_state: str, st: StageStatus, stage_state: str) -> None:
        """Change state, and snapshot the wave into the history database when the state really changed."""
        changed = (self._status.state, st.state) != (wave_state, stage_state)
        self._set(wave_state, st, stage_state)
        if changed:
            await self._record_history()

    async def _record_history(self) -> None:
        """Have the wave's snapshot recorded in the history database (waves started before that feature never
        do). Through the history outbox it never waits for the database; waves started before the outbox
        await each snapshot, as they did."""
        if not self._input.record_history or not workflow.patched("record-history"):
            return
        if self._history_outbox():
            self._snapshot_due = True
            self._drain_history()
            return
        await workflow.execute_activity(
            "record_wave",
            RecordWaveInput(wave_id=self._input.wave_id, at=workflow.now()),
            start_to_close_timeout=QUICK_TIMEOUT,
            retry_policy=QUICK_RETRY,
        )

    def _history_outbox(self) -> bool:
        """Whether this wave records through the outbox (every wave started since; replay keeps older ones)."""
        return (
            self._input.record_history
            and workflow.patched("record-history")
            and workflow.patched(HISTORY_OUTBOX)
        )

    def _results_recorded_later(self, st: StageStatus) -> None:
        """Queue the stage attempt's instance results for the outbox (read from the executor's records)."""
        if not self._history_outbox():
            return
        due = StageAttempt(st.name, self._attempt)
        if due not in self._results_due:
            self._results_due.append(due)
        self._snapshot_due = True
        self._drain_history()

    def _drain_history(self) -> None:
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain_outbox())

    async def _drain_outbox(self) -> None:
        """The history outbox: one record_wave at a time with everything due, retried until the database
        takes it. Patching goes on meanwhile; only the wave's end waits for it (:meth:`_history_caught_up`)."""
        while self._snapshot_due or self._results_due:
            results, self._results_due = self._results_due, []
            self._snapshot_due = False
            try:
                await workflow.execute_activity(
                    "record_wave",
                    RecordWaveInput(
                        wave_id=self._input.wave_id,
                        at=workflow.now(),
                        outbox=True,
                        executor=self._input.executor,
                        results=results,
                    ),
                    start_to_close_timeout=HISTORY_START_TO_CLOSE,
                    heartbeat_timeout=HISTORY_HEARTBEAT,
                    retry_policy=HISTORY_RETRY,
                    summary="record the wave in the history database",
                )
            except ActivityError as exc:  # non-retryable only (bad input): keep the wave going, say so
                workflow.logger.warning("wave %s: history not recorded: %s", self._input.wave_id, exc.cause)

    async def _history_caught_up(self) -> None:
        """Wait until the outbox has recorded everything (the database may be down: history catches up)."""
        while self._drainer is not None and not self._drainer.done():
            await self._drainer

    def _finish_cancelled(self) -> None:
        self._status.state = WAVE_CANCELLED
        self._status.reason = "cancelled by an operator"
        for st in self._status.stages:
            for instance_id, state in st.instances.items():
                if state == PENDING:
                    st.instances[instance_id] = NOT_ATTEMPTED
            if st.state not in (STAGE_SUCCEEDED, STAGE_NOT_STARTED, STAGE_FAILED, STAGE_ROLLED_BACK):
                st.state = STAGE_CANCELLED

    def _current_name(self) -> str:
        if self._current < 0:
            return ""
        return self._input.stages[self._current].name

    def _audit(self, who: str, action: str, stage: str, comment: str) -> None:
        self._status.audit.append(
            AuditEntry(at=workflow.now(), who=who, action=action, stage=stage, comment=comment)
        )
