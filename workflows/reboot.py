"""RebootWindowWorkflow: one stage's deferred reboots, in the stage's separate reboot window.

A stage with ``reboot: {window: …}`` leaves the instances it patched ``pending_reboot`` (installed with
``NoReboot``). When the stage has finished, its wave starts one of these per stage (a child workflow, so the wave
goes on promoting the next stage meanwhile, and does not finish before it): it waits durably until the reboot
window opens, then reboots the instances at most ``max_concurrency`` at a time, starting no batch after the
window's cutoff; failures beyond ``max_errors`` stop it. What it did not reboot stays reboot debt.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError, CancelledError

with workflow.unsafe.imports_passed_through():
    from patchflow.core.freezes import FreezePeriod  # noqa: F401 - the sandbox resolves type hints through it
    from patchflow.core.wavemodel import (
        InstanceOutcome,
        PatchBatchResult,
        RebootBatchInput,
        RebootWindowInput,
        RebootWindowResult,
        WindowInput,
        WindowResult,
    )
    from workflows.policies import PATCH_RETRY, PATCH_START_TO_CLOSE, QUICK_RETRY, QUICK_TIMEOUT


@workflow.defn
class RebootWindowWorkflow:
    @workflow.run
    async def run(self, inp: RebootWindowInput) -> RebootWindowResult:
        """Wait for the window, then reboot in batches until done, past the cutoff, or over the error budget."""
        window = await workflow.execute_activity(
            "next_window",
            WindowInput(spec=inp.window, after=workflow.now(), freezes=inp.freezes),
            result_type=WindowResult,
            start_to_close_timeout=QUICK_TIMEOUT,
            retry_policy=QUICK_RETRY,
        )
        if not window.found or window.start is None:
            return RebootWindowResult(rebooted=[], note="the reboot window schedule has no future window")
        if window.start > workflow.now():
            await workflow.sleep(window.start - workflow.now(), summary="until the reboot window opens")
        return await self._reboot_all(inp, window)

    async def _reboot_all(self, inp: RebootWindowInput, window: WindowResult) -> RebootWindowResult:
        result = RebootWindowResult(rebooted=[], window_start=window.start)
        ids, size, done = inp.instance_ids, max(1, inp.max_concurrency), 0
        while done < len(ids):
            left = len(ids) - done
            if window.cutoff is not None and workflow.now() >= window.cutoff:
                result.note = f"the reboot window's cutoff passed: {left} instance(s) not rebooted"
                break
            if len(result.failed) > inp.max_errors:
                result.note = (
                    f"{len(result.failed)} reboot failure(s) exceeded max_errors {inp.max_errors}: "
                    f"{left} instance(s) not rebooted"
                )
                break
            batch, done = ids[done : done + size], done + size
            for outcome in (await self._reboot(inp, batch)).outcomes:
                if outcome.status == "succeeded":
                    result.rebooted.append(outcome.instance_id)
                else:
                    result.failed[outcome.instance_id] = outcome.detail or outcome.status
        return result

    @staticmethod
    async def _reboot(inp: RebootWindowInput, batch: list[str]) -> PatchBatchResult:
        """One batch; an activity that gave up for good fails every instance of it (they stay debt)."""
        what = f"reboot {len(batch)} instance(s) of {inp.stage} in its reboot window"
        request = RebootBatchInput(inp.executor, inp.wave_id, inp.stage, batch, inp.attempt)
        return await reboot_batch(request, inp.heartbeat_timeout_seconds, what)


async def reboot_batch(
    request: RebootBatchInput, heartbeat_timeout_seconds: int, what: str
) -> PatchBatchResult:
    """The ``reboot_batch`` activity (a stage run's in-batch reboots and a reboot window's batches): heartbeating,
    waiting for its cancellation to complete; when it gives up for good every instance of the batch fails, still
    ``pending_reboot`` (a cancellation is raised)."""
    try:
        return await workflow.execute_activity(
            "reboot_batch",
            request,
            result_type=PatchBatchResult,
            start_to_close_timeout=PATCH_START_TO_CLOSE,
            heartbeat_timeout=timedelta(seconds=heartbeat_timeout_seconds),
            retry_policy=PATCH_RETRY,
            cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
            summary=what,
        )
    except ActivityError as exc:
        if isinstance(exc.cause, CancelledError):
            raise
        return PatchBatchResult(
            outcomes=[
                InstanceOutcome(
                    i, "failed", True, detail=f"reboot activity failed: {exc}", pending_reboot=True
                )
                for i in request.instance_ids
            ]
        )
