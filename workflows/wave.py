"""WaveWorkflow: a pinned patch set rolled out stage by stage (Dev → Test → Prod).

Per stage: the gate (auto / human approval through a validated Update / health check of what earlier
stages patched), target resolution, then runs inside maintenance windows — sleeping durably until a window
opens, starting no instance after its cutoff and carrying what is left to the next window — and the soak.
A stage that exceeds its error budget halts the wave (after restoring its patched instances when the plan
says ``rollback``); later stages never start on their own. Operators answer with Updates: approve, reject,
halt, resume, cancel, rollback — each refused by a validator when it does not apply.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    # The sandbox resolves WaveInput.freezes' type hints through sys.modules: import their module too.
    from patchflow.core.freezes import FreezePeriod  # noqa: F401
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
        GateDecision,
        HealthInput,
        HealthReport,
        OperatorAction,
        RecordWaveInput,
        ResolveTargetsInput,
        ResolveTargetsResult,
        RollbackInput,
        RollbackResult,
        StageInput,
        StageRunInput,
        StageRunResult,
        StageStatus,
        WaveInput,
        WaveResult,
        WaveStatus,
        WindowInput,
        WindowResult,
    )
    from workflows.policies import PATCH_RETRY, PATCH_START_TO_CLOSE, QUICK_RETRY, QUICK_TIMEOUT
    from workflows.stage import StageRunWorkflow


class _Cancelled(Exception):
    """Internal: the operator cancelled the wave while it was waiting."""


MAX_COMMENT = 1000


def _check_actor(who: str, comment: str) -> None:
    """Every operator action names who acted; comments are bounded (they live in the wave's audit log)."""
    if not who.strip():
        raise ApplicationError("say who acts (--as NAME)", type="InvalidRequest")
    if len(comment) > MAX_COMMENT:
        raise ApplicationError(
            f"the comment is {len(comment)} characters; keep it under {MAX_COMMENT}", type="InvalidRequest"
        )


@workflow.defn
class WaveWorkflow:
    def __init__(self) -> None:
        self._input: WaveInput | None = None
        self._status: WaveStatus | None = None
        self._current = -1
        self._gate_decision: dict[int, tuple[bool, GateDecision]] = {}
        self._halt_requested = False
        self._cancel_requested = False
        self._operator_decision: str | None = None
        self._active_run: workflow.ChildWorkflowHandle | None = None
        self._attempt = 0
        self._rollback_allowed = False

    # ------------------------------------------------------------------------------------------ queries

    @workflow.query
    def status(self) -> WaveStatus:
        if self._status is None:
            raise ApplicationError("the wave has not initialised yet; retry in a moment")
        return self._status

    # ------------------------------------------------------------------------------------------ updates

    def _stage_index(self, name: str) -> int:
        assert self._input is not None
        for index, stage in enumerate(self._input.stages):
            if stage.name == name:
                return index
        names = ", ".join(s.name for s in self._input.stages)
        raise ApplicationError(
            f"this wave has no stage {name!r}; its stages are {names}", type="InvalidRequest"
        )

    def _validate_gate(self, decision: GateDecision) -> None:
        _check_actor(decision.who, decision.comment)
        if self._input is None or self._status is None:
            raise ApplicationError(
                "the wave has not initialised yet; retry in a moment", type="InvalidRequest"
            )
        index = self._stage_index(decision.stage)
        stage = self._input.stages[index]
        if stage.gate != "approval":
            raise ApplicationError(f"stage {stage.name!r} has no approval gate", type="InvalidRequest")
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

    @workflow.update
    async def approve(self, decision: GateDecision) -> str:
        self._gate_decision[self._stage_index(decision.stage)] = (True, decision)
        self._audit(decision.who, "approve", decision.stage, decision.comment)
        return f"stage {decision.stage} approved by {decision.who}"

    @approve.validator
    def _validate_approve(self, decision: GateDecision) -> None:
        self._validate_gate(decision)

    @workflow.update
    async def reject(self, decision: GateDecision) -> str:
        self._gate_decision[self._stage_index(decision.stage)] = (False, decision)
        self._audit(decision.who, "reject", decision.stage, decision.comment)
        return f"stage {decision.stage} rejected by {decision.who}"

    @reject.validator
    def _validate_reject(self, decision: GateDecision) -> None:
        self._validate_gate(decision)

    def _require_state(self, action: str, allowed: set[str]) -> None:
        if self._status is None:
            raise ApplicationError(
                "the wave has not initialised yet; retry in a moment", type="InvalidRequest"
            )
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
        if self._status is not None and self._status.state == WAVE_WAITING_APPROVAL:
            raise ApplicationError(
                "the wave is waiting at an approval gate and patches nothing meanwhile; "
                "answer the gate with reject, or cancel the wave",
                type="InvalidRequest",
            )
        self._require_state("halt", {WAVE_RUNNING})
        if self._halt_requested:
            raise ApplicationError("a halt is already pending", type="InvalidRequest")

    @workflow.update
    async def resume(self, action: OperatorAction) -> str:
        self._operator_decision = "resume"
        self._audit(action.who, "resume", self._current_name(), action.reason)
        return "resumed"

    @resume.validator
    def _validate_resume(self, action: OperatorAction) -> None:
        _check_actor(action.who, action.reason)
        self._require_state("resume", {WAVE_HALTED})

    @workflow.update
    async def rollback(self, action: OperatorAction) -> str:
        self._operator_decision = "rollback"
        self._audit(action.who, "rollback", self._current_name(), action.reason)
        return "rollback requested"

    @rollback.validator
    def _validate_rollback(self, action: OperatorAction) -> None:
        _check_actor(action.who, action.reason)
        self._require_state("roll back", {WAVE_HALTED})
        assert self._status is not None
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
        if self._status is not None and self._status.state in WAVE_FINAL_STATES:
            raise ApplicationError(f"the wave already ended ({self._status.state})", type="InvalidRequest")
        if self._cancel_requested:
            raise ApplicationError("a cancel is already pending", type="InvalidRequest")

    # ------------------------------------------------------------------------------------------ run

    @workflow.run
    async def run(self, inp: WaveInput) -> WaveResult:
        self._input = inp
        self._status = WaveStatus(
            wave_id=inp.wave_id,
            plan_name=inp.plan_name,
            state=WAVE_RUNNING,
            patch_set_id=inp.patch_set_id,
            stages=[StageStatus(name=s.name) for s in inp.stages],
            kind=inp.kind,
        )
        self._audit(inp.started_by or "patchflow", "start", "", f"patch set {inp.patch_set_id}")
        if inp.freeze_override_by:
            self._audit(
                inp.freeze_override_by, "override_freeze", "", f"{inp.kind} wave runs through change freezes"
            )
        await self._record_history()
        try:
            for index, stage in enumerate(inp.stages):
                self._current = index
                if not await self._run_stage(index, stage):
                    break
            else:
                self._status.state = WAVE_SUCCEEDED
        except _Cancelled:
            self._finish_cancelled()
        await workflow.wait_condition(workflow.all_handlers_finished)
        await self._record_history()  # the final state, its instances and the whole audit log
        return WaveResult(status=self._status)

    async def _run_stage(self, index: int, stage: StageInput) -> bool:
        """Run one stage; False when the wave must stop (rejected, failed or cancelled)."""
        assert self._input is not None and self._status is not None
        inp = self._input
        st = self._status.stages[index]

        # 1. The gate guards promotion into this stage.
        if stage.gate == "approval":
            await self._transition(WAVE_WAITING_APPROVAL, st, STAGE_WAITING_APPROVAL)
            await self._wait(lambda: index in self._gate_decision)
            approved, decision = self._gate_decision[index]
            if not approved:
                st.state = STAGE_NOT_STARTED
                st.note = f"promotion rejected by {decision.who}" + (
                    f": {decision.comment}" if decision.comment else ""
                )
                self._status.state = WAVE_FAILED
                self._status.reason = f"stage {stage.name} rejected by {decision.who}"
                return False
            st.note = f"approved by {decision.who}"
        elif stage.gate == "health":
            await self._transition(WAVE_RUNNING, st, STAGE_NOT_STARTED)
            patched = [
                i
                for s in self._status.stages[:index]
                for i, state in s.instances.items()
                if state == SUCCEEDED
            ]
            report = await workflow.execute_activity(
                "health_check",
                HealthInput(executor=inp.executor, instance_ids=patched, url=stage.health_url),
                result_type=HealthReport,
                start_to_close_timeout=QUICK_TIMEOUT,
                retry_policy=QUICK_RETRY,
            )
            if len(report.unhealthy) > stage.max_unhealthy:
                worst = ", ".join(f"{k}: {v}" for k, v in list(report.unhealthy.items())[:5])
                st.note = (
                    f"health gate closed: {len(report.unhealthy)} unhealthy > {stage.max_unhealthy} ({worst})"
                )
                if await self._halted(st, st.note, allow_rollback=False) != "resume":
                    return False
                st.note = "health gate overridden by an operator"

        # 2. Targets, resolved when the stage starts (fleets change between stages).
        await self._transition(WAVE_RUNNING, st, STAGE_RUNNING)
        targets = await workflow.execute_activity(
            "resolve_targets",
            ResolveTargetsInput(
                executor=inp.executor, patch_group=stage.patch_group, instance_ids=stage.instance_ids
            ),
            result_type=ResolveTargetsResult,
            start_to_close_timeout=QUICK_TIMEOUT,
            retry_policy=QUICK_RETRY,
        )
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
                return False
            st.note = "no targets; an operator resumed past it"

        # 3. Runs inside maintenance windows until every target was attempted.
        remaining = list(ids)
        errors = 0
        run = 0
        while remaining:
            window = await workflow.execute_activity(
                "next_window",
                WindowInput(spec=stage.window, after=workflow.now(), freezes=inp.freezes),
                result_type=WindowResult,
                start_to_close_timeout=QUICK_TIMEOUT,
                retry_policy=QUICK_RETRY,
            )
            if not window.found:
                for instance_id in remaining:
                    st.instances[instance_id] = NOT_ATTEMPTED
                st.state = STAGE_FAILED
                self._status.state = WAVE_FAILED
                self._status.reason = (
                    f"stage {stage.name}: its maintenance window schedule has no future window"
                    + (f" ({window.note})" if window.note else "")
                )
                return False
            # The stage's cutoff_behavior decides where this window stops new starts (continue: only a freeze).
            deadline = dispatch_deadline(stage.cutoff_behavior, window.cutoff, window.freeze_start)
            st.window_start, st.window_cutoff = window.start, deadline
            if window.note:
                st.note = window.note
            if window.start is not None and window.start > workflow.now():
                await self._transition(WAVE_RUNNING, st, STAGE_WAITING_WINDOW)
                opened = await self._sleep_until(window.start)
                if not opened:  # halted while waiting
                    if await self._halted(st, "halted by an operator before the window opened") != "resume":
                        return False
                    continue
            await self._transition(WAVE_RUNNING, st, STAGE_RUNNING)
            run_id = f"{inp.wave_id}/{stage.name}/run-{self._attempt}-{run}"
            run += 1
            handle = await workflow.start_child_workflow(
                StageRunWorkflow.run,
                StageRunInput(
                    wave_id=inp.wave_id,
                    stage=stage.name,
                    instance_ids=remaining,
                    patches=inp.patches,
                    executor=inp.executor,
                    max_concurrency=concurrency,
                    max_errors=budget,
                    batch_size=batch_size_for(concurrency),
                    attempt=self._attempt,
                    errors_so_far=errors,
                    cutoff=deadline,
                    undeliverable_counts_as_error=inp.undeliverable_counts_as_error,
                    heartbeat_timeout_seconds=inp.heartbeat_timeout_seconds,
                    history_event_limit=inp.history_event_limit,
                    ramp=stage.ramp,
                    cancel_at_cutoff=stage.cutoff_behavior == CANCEL,
                ),
                id=run_id,
            )
            self._active_run = handle
            st.active_run_id = run_id
            if self._halt_requested or self._cancel_requested:
                await self._stop_active_run(abort=self._cancel_requested)
            result: StageRunResult = await handle
            self._active_run = None
            st.active_run_id = None
            st.instances.update(result.states)
            st.details.update(result.details)
            errors = result.errors
            st.errors = errors
            remaining = result.remaining

            if self._cancel_requested:
                raise _Cancelled
            if result.budget_exceeded:
                for instance_id in remaining:
                    st.instances[instance_id] = NOT_ATTEMPTED
                reason = f"stage {stage.name}: {errors} failure(s) exceeded max_errors {budget}"
                if stage.on_failure == "rollback":
                    await self._rollback_stage(st)
                choice = await self._halted(st, reason)
                if choice != "resume":
                    return False
                remaining, errors = self._resume_targets(st), 0
            elif result.stopped:
                choice = await self._halted(st, "halted by an operator")
                if choice != "resume":
                    return False
                remaining = self._resume_targets(st)
            elif result.cut_off:
                # cutoff_behavior cancel (AWS's CANCEL_TASK): what did not finish is cancelled or not attempted,
                # and nothing promotes a half-patched stage: an operator resumes (next window) or cancels.
                for instance_id in remaining:
                    st.instances[instance_id] = NOT_ATTEMPTED
                cancelled = sum(1 for s in result.states.values() if s == CANCELLED)
                reason = (
                    f"stage {stage.name}: the window's cutoff cancelled {cancelled} in-flight instance(s) and left "
                    f"{len(remaining)} not attempted (cutoff_behavior: cancel); resume to go on in the next window"
                )
                if await self._halted(st, reason) != "resume":
                    return False
                remaining = self._resume_targets(st)
            elif remaining:
                st.note = f"{len(remaining)} instance(s) carried over to the next maintenance window"

        failed = sum(1 for s in st.instances.values() if s == FAILED)
        st.state = STAGE_SUCCEEDED
        if failed:
            st.note = f"{failed} instance(s) failed; finished within the error budget ({budget} per attempt)"

        # 4. Soak before the next stage may be promoted.
        if stage.soak_seconds and index + 1 < len(inp.stages):
            await self._transition(WAVE_RUNNING, st, STAGE_SOAKING)
            deadline = workflow.now() + timedelta(seconds=stage.soak_seconds)
            while not await self._sleep_until(deadline):
                if (
                    await self._halted(st, "halted by an operator during soak", allow_rollback=False)
                    != "resume"
                ):
                    return False
            st.state = STAGE_SUCCEEDED
        return True

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
        again = [i for i, s in st.instances.items() if s in (PENDING, NOT_ATTEMPTED, ROLLED_BACK, CANCELLED)]
        for instance_id in again:
            st.instances[instance_id] = PENDING
        return again

    async def _halted(self, st: StageStatus, reason: str, *, allow_rollback: bool = True) -> str:
        """Halt the wave and wait for an operator: returns ``resume`` (or ends the wave on cancel)."""
        assert self._status is not None
        await self._transition(WAVE_HALTED, st, STAGE_HALTED)
        self._status.reason = reason
        self._halt_requested = False
        self._rollback_allowed = allow_rollback
        while True:
            self._operator_decision = None
            await self._wait(lambda: self._operator_decision is not None)
            decision = self._operator_decision
            if decision == "rollback":
                await self._rollback_stage(st)
                st.state = STAGE_HALTED
                continue
            self._status.reason = ""
            self._rollback_allowed = False
            return decision or "resume"

    async def _rollback_stage(self, st: StageStatus) -> None:
        assert self._input is not None
        patched = [i for i, s in st.instances.items() if s == SUCCEEDED]
        if not patched:
            return
        st.state = STAGE_ROLLED_BACK
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
        for instance_id in result.rolled_back:
            st.instances[instance_id] = ROLLED_BACK
        for instance_id, why in result.failed.items():
            st.details[instance_id] = f"rollback failed: {why}"
        st.note = f"rolled back {len(result.rolled_back)} instance(s)" + (
            f", {len(result.failed)} rollback failure(s)" if result.failed else ""
        )

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
        assert self._status is not None
        self._status.state = wave_state
        st.state = stage_state

    async def _transition(self, wave_state: str, st: StageStatus, stage_state: str) -> None:
        """Change state, and snapshot the wave into the history database when the state really changed."""
        assert self._status is not None
        changed = (self._status.state, st.state) != (wave_state, stage_state)
        self._set(wave_state, st, stage_state)
        if changed:
            await self._record_history()

    async def _record_history(self) -> None:
        """Ask the record_wave activity for a snapshot (waves started before this feature never call it)."""
        if self._input is None or not self._input.record_history or not workflow.patched("record-history"):
            return
        await workflow.execute_activity(
            "record_wave",
            RecordWaveInput(wave_id=self._input.wave_id, at=workflow.now()),
            start_to_close_timeout=QUICK_TIMEOUT,
            retry_policy=QUICK_RETRY,
        )

    def _finish_cancelled(self) -> None:
        assert self._status is not None
        self._status.state = WAVE_CANCELLED
        self._status.reason = "cancelled by an operator"
        for st in self._status.stages:
            for instance_id, state in st.instances.items():
                if state == PENDING:
                    st.instances[instance_id] = NOT_ATTEMPTED
            if st.state not in (STAGE_SUCCEEDED, STAGE_NOT_STARTED, STAGE_FAILED, STAGE_ROLLED_BACK):
                st.state = STAGE_CANCELLED

    def _current_name(self) -> str:
        if self._input is None or self._current < 0:
            return ""
        return self._input.stages[self._current].name

    def _audit(self, who: str, action: str, stage: str, comment: str) -> None:
        if self._status is not None:
            self._status.audit.append(
                AuditEntry(at=workflow.now(), who=who, action=action, stage=stage, comment=comment)
            )
