"""Activities of scheduled waves: the wave's start time after an offset wait, and a fresh wave input per firing.

They read the plan, baseline and catalog files on the worker (I/O), so they live here and not in the workflow.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from temporalio import activity
from temporalio.client import Client
from temporalio.exceptions import ApplicationError
from temporalio.service import RPCError, RPCStatusCode

from patchflow.config import Settings, get_settings
from patchflow.core.plans import Plan, load_plan
from patchflow.core.schedules import parse_time, wave_start_after_wait
from patchflow.core.wavemodel import (
    PrepareWaveInput,
    PrepareWaveResult,
    ScheduleCheckInput,
    ScheduleCheckResult,
    WaveStartInput,
    WaveStartResult,
)
from patchflow.errors import InputError, NotFoundError


class ScheduleActivities:
    """Holds the settings the wave inputs are built with (data directory, executors' defaults, freezes)."""

    def __init__(self, settings: Settings | None = None, client: Client | None = None) -> None:
        self._settings = settings
        self._client = client

    @property
    def settings(self) -> Settings:
        return self._settings or get_settings()

    @activity.defn(name="scheduled_wave_start")
    async def scheduled_wave_start(self, inp: WaveStartInput) -> WaveStartResult:
        """The instant the wave starts: ``at`` wall-clock time ``wait_days`` calendar days after the firing."""
        fired = inp.fired_at if inp.fired_at.tzinfo else inp.fired_at.replace(tzinfo=UTC)
        return WaveStartResult(wave_start_after_wait(fired, inp.wait_days, parse_time(inp.at), inp.timezone))

    @activity.defn(name="scheduled_wave_allowed")
    async def scheduled_wave_allowed(self, inp: ScheduleCheckInput) -> ScheduleCheckResult:
        """Whether a firing that waited out its offset may still start its wave: not when its schedule was
        deleted or paused meanwhile (an operator who pauses a schedule expects no more waves from it)."""
        if self._client is None:
            raise ApplicationError("no Temporal client to check the schedule with", non_retryable=True)
        try:
            description = await self._client.get_schedule_handle(inp.schedule_id).describe()
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                return ScheduleCheckResult(False, f"schedule {inp.schedule_id} was deleted during the wait")
            raise
        state = description.schedule.state
        if state.paused:
            note = f" ({state.note})" if state.note else ""
            return ScheduleCheckResult(False, f"schedule {inp.schedule_id} was paused during the wait{note}")
        return ScheduleCheckResult(True)

    @activity.defn(name="prepare_scheduled_wave")
    async def prepare_scheduled_wave(self, inp: PrepareWaveInput) -> PrepareWaveResult:
        """Load the plan (as it is now), evaluate its baseline, pin the patch set and build the wave input —
        unless a wave of the plan is running (started by hand or by another schedule): then no wave starts.

        Reading files, evaluating a catalog and writing the patch set (and the history database) block: they
        run in a thread, so the worker's event loop keeps heartbeating every other activity meanwhile.
        """
        try:
            plan = await asyncio.to_thread(load_plan, inp.plan_path)
        except (InputError, NotFoundError) as exc:
            # A broken plan does not get better by retrying: fail this firing, loudly.
            raise ApplicationError(str(exc), type="InputError", non_retryable=True) from None
        running = await self._running_wave_of(plan.name)
        if running is not None:
            return PrepareWaveResult(
                wave=None,
                skipped=f"wave {running} of plan {plan.name} is still running; this firing starts none",
            )
        try:
            return await asyncio.to_thread(self._pinned_wave, plan, inp)
        except (InputError, NotFoundError) as exc:
            raise ApplicationError(str(exc), type="InputError", non_retryable=True) from None

    def _pinned_wave(self, plan: Plan, inp: PrepareWaveInput) -> PrepareWaveResult:
        """Evaluate, pin and build the wave input (blocking: call it in a thread)."""
        from patchflow.control.waves import pin_patch_set, wave_input

        settings = self.settings
        pinned = pin_patch_set(plan, settings, at=datetime.now(UTC))
        return PrepareWaveResult(
            wave=wave_input(plan, settings, pinned, wave_id=inp.wave_id, who=inp.started_by)
        )

    async def _running_wave_of(self, plan_name: str) -> str | None:
        """The id of a running wave of the plan, if any (:func:`patchflow.control.waves.running_wave_of`)."""
        if self._client is None:
            return None
        from patchflow.control.waves import running_wave_of

        try:
            return await running_wave_of(self._client, plan_name)
        except RPCError as exc:
            if exc.status == RPCStatusCode.UNIMPLEMENTED:
                # A server without visibility (Temporal's time-skipping test server) cannot tell; real ones can.
                activity.logger.warning("cannot list running waves (%s); starting the wave", exc.message)
                return None
            raise
