"""ScheduledWaveWorkflow: what a plan's Temporal Schedule starts at each firing.

It waits out an offset the schedule's calendar cannot express (Patch Tuesday + 21 days), builds a fresh wave
from the plan (a new evaluation of the baseline, a new pinned patch set) and runs it as a child. It lives until
the wave ends, so the schedule's overlap policy SKIP never lets two waves of one plan run at once.
"""

from __future__ import annotations

from datetime import datetime

from temporalio import workflow
from temporalio.common import RawValue, SearchAttributeKey
from temporalio.exceptions import CancelledError, ChildWorkflowError
from temporalio.workflow import ParentClosePolicy

with workflow.unsafe.imports_passed_through():
    # The sandbox resolves WaveInput.freezes' type hints through sys.modules: import their module too.
    from patchflow.core.freezes import FreezePeriod  # noqa: F401
    from patchflow.core.wavemodel import (
        PrepareWaveInput,
        PrepareWaveResult,
        ScheduleCheckInput,
        ScheduleCheckResult,
        ScheduledWaveInput,
        ScheduledWaveResult,
        WaveInput,
        WaveResult,
        WaveStartInput,
        WaveStartResult,
    )
    from workflows.policies import QUICK_RETRY, QUICK_TIMEOUT
    from workflows.wave import WaveWorkflow

#: Set by the server on workflows a schedule starts: the firing's nominal time, and the schedule's id.
SCHEDULED_START = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")
SCHEDULED_BY = SearchAttributeKey.for_keyword("TemporalScheduledById")
#: Patch id (``workflow.patched``): a firing whose wave was cancelled through Temporal ends "cancelled".
WAVE_CANCELLED = "firing-reports-a-cancelled-wave"


@workflow.defn
class ScheduledWaveWorkflow:
    def __init__(self) -> None:
        self._wave_id = ""
        self._state = "waiting"
        self._starts_at: datetime | None = None

    @workflow.query
    def wave(self) -> str:
        """The wave this firing started ('' until it has)."""
        return self._wave_id

    @workflow.run
    async def run(self, inp: ScheduledWaveInput) -> ScheduledWaveResult:
        info = workflow.info()
        fired_at = info.typed_search_attributes.get(SCHEDULED_START) or info.start_time
        if inp.wait_days:
            start: WaveStartResult = await workflow.execute_activity(
                "scheduled_wave_start",
                WaveStartInput(fired_at=fired_at, wait_days=inp.wait_days, at=inp.at, timezone=inp.timezone),
                result_type=WaveStartResult,
                start_to_close_timeout=QUICK_TIMEOUT,
                retry_policy=QUICK_RETRY,
            )
            self._starts_at = start.starts_at
            delay = self._starts_at - workflow.now()
            if delay.total_seconds() > 0:
                await workflow.sleep(
                    delay, summary=f"until the wave starts, {inp.wait_days} days after the firing"
                )
            by_schedule = info.typed_search_attributes.get(SCHEDULED_BY) is not None
            if inp.check_schedule if inp.check_schedule is not None else by_schedule:
                check: ScheduleCheckResult = await workflow.execute_activity(
                    "scheduled_wave_allowed",
                    ScheduleCheckInput(schedule_id=inp.schedule_id),
                    result_type=ScheduleCheckResult,
                    start_to_close_timeout=QUICK_TIMEOUT,
                    retry_policy=QUICK_RETRY,
                )
                if not check.allowed:
                    self._state = "skipped"
                    return ScheduledWaveResult(
                        wave_id="", state="skipped", patch_set_id="", reason=check.reason
                    )
        stamp = workflow.now().strftime("%Y%m%dT%H%M%SZ")
        wave_id = f"wave-{inp.plan_name or inp.schedule_id}-{stamp}-{workflow.uuid4().hex[:6]}"
        self._state = "preparing"
        raw: RawValue = await workflow.execute_activity(
            "prepare_scheduled_wave",
            PrepareWaveInput(
                plan_path=inp.plan_path, wave_id=wave_id, started_by=f"schedule:{inp.schedule_id}"
            ),
            result_type=RawValue,
            start_to_close_timeout=QUICK_TIMEOUT,
            retry_policy=QUICK_RETRY,
        )
        prepared = _prepared(raw)
        if prepared.wave is None:
            self._state = "skipped"
            return ScheduledWaveResult(wave_id="", state="skipped", patch_set_id="", reason=prepared.skipped)
        wave_input: WaveInput = prepared.wave
        handle = await workflow.start_child_workflow(
            WaveWorkflow.run,
            wave_input,
            id=wave_input.wave_id,
            # Ending this wrapper (a schedule deleted with --terminate) must not kill a wave half-way.
            parent_close_policy=ParentClosePolicy.ABANDON,
        )
        self._wave_id = wave_input.wave_id  # only once the wave exists: the query never names a missing one
        self._state = "running"
        try:
            result: WaveResult = await handle
        except ChildWorkflowError as err:
            # The wave was cancelled through Temporal: this firing reports it instead of failing.
            if not (isinstance(err.cause, CancelledError) and workflow.patched(WAVE_CANCELLED)):
                raise
            self._state = "cancelled"
            return ScheduledWaveResult(
                wave_id=wave_input.wave_id,
                state="cancelled",
                patch_set_id=wave_input.patch_set_id,
                reason="the wave was cancelled through Temporal",
            )
        self._state = result.status.state
        return ScheduledWaveResult(
            wave_id=wave_input.wave_id,
            state=result.status.state,
            patch_set_id=wave_input.patch_set_id,
            reason=result.status.reason,
        )


def _prepared(raw: RawValue) -> PrepareWaveResult:
    """The prepare activity's result, in either of the shapes it has had.

    Firings recorded before a firing could be skipped (``tests/histories/scheduled-wave-wait-v0.json``) carry a
    bare :class:`WaveInput`; later ones a :class:`PrepareWaveResult`. Decoding by shape, not by a
    ``workflow.patched()`` marker, is what lets both replay: the histories recorded in between carry the new
    shape without a marker.
    """
    converter = workflow.payload_converter()
    fields = converter.from_payload(raw.payload, dict)
    if "wave_id" in fields:
        return PrepareWaveResult(wave=converter.from_payload(raw.payload, WaveInput))
    result: PrepareWaveResult = converter.from_payload(raw.payload, PrepareWaveResult)
    return result
