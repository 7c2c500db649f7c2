"""Change freezes in running waves, on Temporal's time-skipping test server.

The freezes are placed relative to the server's clock, which other tests in the session have moved on. A thin
wrapper around the simulated executor records when (server time) each install starts and can make each one
consume server time, so that a freeze can begin in the middle of a stage.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.client import WorkflowHandle
from temporalio.testing import ActivityEnvironment, WorkflowEnvironment

from activities.patching import WaveActivities, build_executor
from patchflow.config import Settings
from patchflow.control.waves import wave_input
from patchflow.core.baselines import load_baseline
from patchflow.core.catalog import load_catalog
from patchflow.core.evaluation import evaluate
from patchflow.core.freezes import FreezePeriod
from patchflow.core.plans import load_plan
from patchflow.core.wavemodel import (
    ExecutorRef,
    StageInput,
    StageStatus,
    WaveInput,
    WaveResult,
    WaveStatus,
    WindowInput,
    WindowResult,
)
from patchflow.core.windows import WindowSpec
from patchflow.executors.base import Package
from tests.workflows.conftest import instance_id, running_worker
from workflows.wave import WaveWorkflow

PATCHES = [Package("openssl", "amd64", "3.0.2-0ubuntu1.16")]
NOW = WindowSpec(schedule="now")
YEAR_END_PLAN = Path(__file__).resolve().parent.parent / "fixtures" / "freezes" / "year-end-plan.yaml"


class TimedInstalls:
    """Wraps the real simulated executor: records each install's start (server time); each install takes
    ``minutes`` of (skipped) server time."""

    def __init__(self, inner: Any, env: WorkflowEnvironment, minutes: int, log: dict[str, datetime]):
        self.inner, self.env, self.minutes, self.log = inner, env, minutes, log

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def start_install(self, instance: str, patches: Any, *, operation_id: str) -> Any:
        self.log[instance] = (await self.env.get_current_time()).astimezone(UTC)
        return await self.inner.start_install(instance, patches, operation_id=operation_id)

    async def finish_install(self, instance: str, *, operation_id: str) -> Any:
        if self.minutes:
            await self.env.sleep(timedelta(minutes=self.minutes))
        return await self.inner.finish_install(instance, operation_id=operation_id)


def factory_for(
    env: WorkflowEnvironment, log: dict[str, datetime], minutes: int = 0
) -> Callable[[ExecutorRef], Any]:
    def factory(ref: ExecutorRef) -> Any:
        return TimedInstalls(build_executor(ref), env, minutes, log)

    return factory


def wave(
    fleet: Path,
    tmp_path: Path,
    window: WindowSpec,
    freezes: list[FreezePeriod],
    *,
    freeze_override_by: str = "",
) -> WaveInput:
    return WaveInput(
        wave_id=f"wave-freeze-{uuid.uuid4().hex[:8]}",
        plan_name="freezes",
        patch_set_id="ps-000000000000000000000000",
        patches=PATCHES,
        executor=ExecutorRef(kind="simulated", fleet_path=str(fleet), state_path=str(tmp_path / "s.sqlite")),
        stages=[
            StageInput(name="prod", window=window, max_concurrency="1", max_errors="0", patch_group="prod")
        ],
        # Installs consume skipped server time: heartbeats (real time) must not time out meanwhile.
        heartbeat_timeout_seconds=4 * 3600,
        freezes=freezes,
        freeze_override_by=freeze_override_by,
    )


async def server_now(env: WorkflowEnvironment) -> datetime:
    return (await env.get_current_time()).astimezone(UTC)


#: Real seconds a wave may take here: the server skips its days, so anything longer means it is stuck (a
#: workflow task that keeps failing, e.g. on decoding the input, never fails the wave by itself).
WAVE_REAL_TIMEOUT = 30.0


async def finished(handle: WorkflowHandle[Any, Any]) -> WaveResult:
    try:
        result: WaveResult = await asyncio.wait_for(handle.result(), WAVE_REAL_TIMEOUT)
    except TimeoutError:
        raise AssertionError(
            f"wave {handle.id} made no progress; see the worker's workflow task failures"
        ) from None
    return result


async def run_wave(env: WorkflowEnvironment, inp: WaveInput, task_queue: str) -> WaveResult:
    handle = await env.client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue)
    return await finished(handle)


async def stage_reaching(handle: WorkflowHandle[Any, Any], state: str, timeout: float = 20.0) -> StageStatus:
    """Poll the wave's status (time does not skip meanwhile) until its first stage is in ``state``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        status: WaveStatus = await asyncio.wait_for(handle.query(WaveWorkflow.status), timeout)
        if status.stages[0].state == state:
            return status.stages[0]
        assert asyncio.get_running_loop().time() < deadline, f"stage stuck in {status.stages[0].state}"
        await asyncio.sleep(0.05)


def utc(year: int, month: int, day: int, hour: int = 0) -> datetime:
    return datetime(year, month, day, hour, tzinfo=UTC)


async def next_window(inp: WindowInput) -> WindowResult:
    result: WindowResult = await ActivityEnvironment().run(WaveActivities().next_window, inp)
    return result


async def test_next_window_activity_applies_the_freezes() -> None:
    daily = WindowSpec(schedule="cron(0 2 * * ? *)", duration_hours=4, cutoff_hours=1)
    launch = FreezePeriod("launch", utc(2026, 12, 1), utc(2026, 12, 3))
    # Dec 1 and Dec 2 02:00 open inside the freeze: Dec 3 is the window.
    result = await next_window(WindowInput(spec=daily, after=utc(2026, 11, 30, 12), freezes=[launch]))
    assert (result.found, result.start, result.end, result.cutoff) == (
        True,
        utc(2026, 12, 3, 2),
        utc(2026, 12, 3, 6),
        utc(2026, 12, 3, 5),
    )
    assert "windows inside change freeze launch skipped" in result.note
    # A freeze from 04:00 cuts the Dec 1 window at its start.
    cut = FreezePeriod("launch", utc(2026, 12, 1, 4), utc(2026, 12, 3))
    result = await next_window(WindowInput(spec=daily, after=utc(2026, 11, 30, 12), freezes=[cut]))
    assert (result.start, result.end, result.cutoff) == (
        utc(2026, 12, 1, 2),
        utc(2026, 12, 1, 4),
        utc(2026, 12, 1, 4),
    )
    assert "launch" in result.note
    # `now` before a freeze runs until it; `now` inside one waits for its end.
    result = await next_window(WindowInput(spec=NOW, after=utc(2026, 11, 30, 12), freezes=[launch]))
    assert (result.start, result.end, result.cutoff) == (
        utc(2026, 11, 30, 12),
        utc(2026, 12, 1),
        utc(2026, 12, 1),
    )
    result = await next_window(WindowInput(spec=NOW, after=utc(2026, 12, 2), freezes=[launch]))
    assert (result.found, result.start, result.end, result.cutoff) == (True, utc(2026, 12, 3), None, None)
    # Nothing left outside the freezes.
    once = WindowSpec(schedule="at(2026-12-02T10:00:00)", duration_hours=2)
    result = await next_window(WindowInput(spec=once, after=utc(2026, 11, 30), freezes=[launch]))
    assert not result.found and "change freezes" in result.note


async def test_next_window_activity_without_freezes_is_unchanged() -> None:
    daily = WindowSpec(schedule="cron(0 2 * * ? *)", duration_hours=4, cutoff_hours=1)
    result = await next_window(WindowInput(spec=daily, after=utc(2026, 11, 30, 12)))
    assert (result.start, result.end, result.cutoff, result.note) == (
        utc(2026, 12, 1, 2),
        utc(2026, 12, 1, 6),
        utc(2026, 12, 1, 5),
        "",
    )
    result = await next_window(WindowInput(spec=NOW, after=utc(2026, 11, 30, 12)))
    assert (result.start, result.end, result.cutoff) == (utc(2026, 11, 30, 12), None, None)


async def test_now_stage_waits_until_an_active_freeze_ends(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    started: dict[str, datetime] = {}
    fleet = make_fleet({"prod": 2})
    t0 = await server_now(skip_env)
    freeze = FreezePeriod("year-end", t0 - timedelta(hours=1), t0 + timedelta(days=3))
    inp = wave(fleet, tmp_path, NOW, [freeze])
    async with running_worker(skip_env.client, factory_for(skip_env, started)) as tq:
        handle = await skip_env.client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)
        waiting = await stage_reaching(handle, "waiting_window")
        assert waiting.window_start == freeze.end
        assert started == {}  # nothing was installed while the freeze lasts
        result = await finished(handle)

    assert result.status.state == "succeeded"
    prod = result.status.stages[0]
    assert set(prod.instances.values()) == {"succeeded"}
    assert prod.window_start == freeze.end
    assert set(started) == {instance_id("prod", 1), instance_id("prod", 2)}
    assert all(moment >= freeze.end for moment in started.values()), started
    # The operator is told why a `now` stage waited three days.
    assert "year-end" in prod.note


async def test_now_stage_is_cut_by_a_freeze_and_finishes_after_it(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    started: dict[str, datetime] = {}
    fleet = make_fleet({"prod": 3})
    t0 = await server_now(skip_env)
    # Installs take 20 minutes one at a time: #1 at t0, #2 at t0+20m, #3 would start at t0+40m — inside.
    freeze = FreezePeriod("launch", t0 + timedelta(minutes=30), t0 + timedelta(days=2))
    inp = wave(fleet, tmp_path, NOW, [freeze])
    async with running_worker(skip_env.client, factory_for(skip_env, started, minutes=20)) as tq:
        result = await run_wave(skip_env, inp, tq)

    assert result.status.state == "succeeded"
    first, second, third = (started[instance_id("prod", n)] for n in (1, 2, 3))
    assert first < freeze.start and second < freeze.start
    assert third >= freeze.end, f"third install started at {third}, freeze {freeze.start} .. {freeze.end}"
    assert not any(freeze.contains(moment) for moment in started.values())
    assert result.status.stages[0].window_start == freeze.end


async def test_cron_stage_skips_the_window_inside_a_freeze(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    started: dict[str, datetime] = {}
    fleet = make_fleet({"prod": 1})
    t0 = await server_now(skip_env)
    # Daily 02:00-03:00 UTC. The next 02:00 after t0 (and any window open now) lies inside the freeze.
    next_2am = t0.replace(hour=2, minute=0, second=0, microsecond=0)
    if next_2am <= t0:
        next_2am += timedelta(days=1)
    freeze = FreezePeriod("launch", t0 - timedelta(days=2), next_2am + timedelta(hours=2))
    window = WindowSpec(schedule="cron(0 2 * * ? *)", timezone="UTC", duration_hours=1, cutoff_hours=0)
    inp = wave(fleet, tmp_path, window, [freeze])
    async with running_worker(skip_env.client, factory_for(skip_env, started)) as tq:
        result = await run_wave(skip_env, inp, tq)

    assert result.status.state == "succeeded"
    following = next_2am + timedelta(days=1)
    prod = result.status.stages[0]
    assert prod.window_start == following
    moment = started[instance_id("prod", 1)]
    assert following <= moment < following + timedelta(hours=1), moment
    assert "windows inside change freeze launch skipped" in prod.note


async def test_stage_fails_when_no_window_opens_outside_the_freezes(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    started: dict[str, datetime] = {}
    fleet = make_fleet({"prod": 1})
    t0 = await server_now(skip_env)
    once = (t0 + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%S")
    freeze = FreezePeriod("launch", t0 - timedelta(hours=1), t0 + timedelta(days=2))
    inp = wave(fleet, tmp_path, WindowSpec(schedule=f"at({once})", duration_hours=2), [freeze])
    async with running_worker(skip_env.client, factory_for(skip_env, started)) as tq:
        result = await run_wave(skip_env, inp, tq)

    assert result.status.state == "failed"
    assert "change freezes" in result.status.reason
    assert result.status.stages[0].instances == {instance_id("prod", 1): "not_attempted"}
    assert started == {}


async def test_freeze_override_runs_now_and_is_audited(
    skip_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    started: dict[str, datetime] = {}
    fleet = make_fleet({"prod": 1})
    t0 = await server_now(skip_env)
    inp = wave(fleet, tmp_path, NOW, [], freeze_override_by="cio")
    async with running_worker(skip_env.client, factory_for(skip_env, started)) as tq:
        result = await run_wave(skip_env, inp, tq)

    assert result.status.state == "succeeded"
    assert ("override_freeze", "cio") in {(a.action, a.who) for a in result.status.audit}
    assert started[instance_id("prod", 1)] - t0 < timedelta(hours=1)


def test_wave_input_carries_plan_and_global_freezes_unless_overridden(tmp_path: Path) -> None:
    plan = load_plan(YEAR_END_PLAN)
    today = datetime.now(UTC).date()
    first, last = today + timedelta(days=10), today + timedelta(days=12)
    freeze_file = tmp_path / "freezes.yaml"
    freeze_file.write_text(f"freezes:\n  - name: global-launch\n    from: '{first}'\n    to: '{last}'\n")
    settings = Settings(data_dir=tmp_path / "data", freeze_file=freeze_file)
    pinned = evaluate(load_baseline(plan.baseline), load_catalog(plan.catalog), datetime.now(UTC)).patch_set

    inp = wave_input(plan, settings, pinned, who="alice")
    # The global freeze: three whole UTC days, as concrete periods; the plan's year-end is carried too.
    expected_start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    spans = {(p.start, p.end) for p in inp.freezes}
    assert any(s <= expected_start and e >= expected_start + timedelta(days=3) for s, e in spans), inp.freezes
    assert any("global-launch" in p.name for p in inp.freezes)
    assert any("year-end" in p.name for p in inp.freezes)
    assert inp.freeze_override_by == ""

    emergency = wave_input(plan, settings, pinned, who="alice", freeze_override_by="cio")
    assert emergency.freezes == [] and emergency.freeze_override_by == "cio"
