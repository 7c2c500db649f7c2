"""Recurring waves on a real Temporal dev server: the server's calendar agrees with patchflow's preview, a firing
starts a fresh wave, overlapping firings are skipped, and a broken plan fails its firing at once.

(The time-skipping test server has no Schedules API — ``CreateSchedule`` is unimplemented there — so the
months-long waits of a firing are tested in ``test_scheduled_timeskip.py`` by starting the workflow directly.)
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleCalendarSpec,
    ScheduleOverlapPolicy,
    ScheduleRange,
    ScheduleSpec,
    WorkflowFailureError,
)
from temporalio.testing import WorkflowEnvironment

from patchflow.config import Settings
from patchflow.control.scheduling import (
    ScheduleRequest,
    create_schedule,
    delete_schedule,
    describe_schedule,
    list_schedules,
    pause_schedule,
    trigger_schedule,
    unpause_schedule,
)
from patchflow.control.waves import act, wave_status
from patchflow.core.documents import dump_yaml
from patchflow.core.plans import load_plan
from patchflow.core.schedules import (
    WaveSchedule,
    firings,
    near_daylight_saving_change,
    parse_schedule,
    wall_clock_instant,
)
from patchflow.core.wavemodel import ScheduledWaveResult
from patchflow.errors import InputError, NotFoundError
from patchflow.service.worker import build_worker
from tests.conftest import BASELINES_DIR, EXAMPLES_DIR
from workflows.scheduled import ScheduledWaveWorkflow


def write_plan(tmp_path: Path, fleet: Path, *, prod_gate: Any = "auto", name: str | None = None) -> Path:
    """A two-stage plan on ``fleet``; its name is unique unless given (a plan may have one schedule)."""
    name = name or f"sched{uuid.uuid4().hex[:6]}"
    catalog = tmp_path / "catalog.json"
    if not catalog.exists():
        catalog.write_text((EXAMPLES_DIR / "ubuntu-catalog.json").read_text())
    plan = {
        "name": name,
        "baseline": str(BASELINES_DIR / "ubuntu-default.yaml"),
        "catalog": str(catalog),
        "executor": {"kind": "simulated", "fleet": str(fleet), "time_scale": 0},
        "stages": [
            {"name": "dev", "targets": {"patch_group": "dev"}, "window": "now", "max_concurrency": "100%"},
            {
                "name": "prod",
                "targets": {"patch_group": "prod"},
                "window": "now",
                "max_concurrency": "100%",
                "gate": prod_gate,
            },
        ],
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(dump_yaml(plan))
    return path


@asynccontextmanager
async def scheduling_worker(client: Client, tmp_path: Path) -> AsyncIterator[Settings]:
    settings = Settings(data_dir=tmp_path / "data", task_queue=f"tq-{uuid.uuid4()}")
    worker = build_worker(client, settings.task_queue, settings=settings)
    async with worker:
        yield settings


async def eventually(check: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await check()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.2)


@pytest.mark.parametrize(
    "schedule",
    [
        # Patch Tuesday + 10 in Berlin: through the winter and into summer time (next 10 firings).
        parse_schedule(monthly="second Tuesday", offset_days=10, at="02:00", timezone="Europe/Berlin"),
        # Past the calendar's reach: the server fires on Patch Tuesday itself.
        parse_schedule(monthly="second Tuesday", offset_days=21, at="03:00", timezone="America/New_York"),
        parse_schedule(monthly="day 15", offset_days=13, at="22:15", timezone="Asia/Kolkata"),
        parse_schedule(weekly="Saturday", offset_days=2, at="01:30", timezone="Australia/Sydney"),
    ],
    ids=["pt+10-berlin", "pt+21-newyork", "day15+13", "weekly"],
)
async def test_server_fires_exactly_when_the_preview_says(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path, schedule: WaveSchedule
) -> None:
    client = dev_env.client
    plan = load_plan(write_plan(tmp_path, make_fleet({"dev": 1, "prod": 1})))
    settings = Settings(data_dir=tmp_path / "data", task_queue=f"tq-{uuid.uuid4()}")
    schedule_id = f"test-{uuid.uuid4().hex[:8]}"
    await create_schedule(
        client, settings, ScheduleRequest(plan=plan, schedule=schedule, schedule_id=schedule_id)
    )
    try:
        now = datetime.now(UTC)
        described = await describe_schedule(client, settings, schedule_id, count=12, now=now)
        server = [datetime.fromisoformat(t) for t in described["server_next_fires"]]
        assert len(server) >= 5, server
        expected = [f.fires_at for f in firings(schedule, now, len(server))]
        assert server == expected
        # The preview shows 12 firings, wave start in the schedule's local time.
        assert len(described["firings"]) == 12
        first = described["firings"][0]
        zone = ZoneInfo(schedule.timezone)
        assert (
            datetime.fromisoformat(first["wave_starts_at"]).utcoffset()
            == expected[0].astimezone(zone).utcoffset()
        )
        assert [s["stage"] for s in first["stages"]] == ["dev", "prod"]
        assert described["overlap"] == "SKIP"
        assert described["catchup_window_seconds"] == 3600
    finally:
        await delete_schedule(client, schedule_id)


DST_CASES = [
    ("Europe/Berlin", date(2027, 3, 28), time(2, 30)),  # spring-forward gap
    ("Europe/Berlin", date(2027, 3, 28), time(4, 0)),
    ("Europe/Berlin", date(2027, 10, 31), time(0, 30)),
    ("Europe/Berlin", date(2027, 10, 31), time(1, 30)),  # the server fires this twice
    ("Europe/Berlin", date(2027, 10, 31), time(2, 30)),  # repeated hour: the server takes the second one
    ("Europe/Berlin", date(2027, 10, 31), time(5, 0)),
    ("America/New_York", date(2027, 3, 14), time(2, 0)),
    ("America/New_York", date(2027, 11, 7), time(1, 15)),
    ("America/New_York", date(2027, 11, 7), time(3, 30)),
    ("Europe/London", date(2027, 10, 31), time(0, 30)),
    ("Europe/Berlin", date(2027, 6, 1), time(2, 30)),
]


@pytest.mark.parametrize(("zone", "day", "at"), DST_CASES)
async def test_daylight_saving_days_are_refused_exactly_where_the_server_misbehaves(
    dev_env: WorkflowEnvironment, zone: str, day: date, at: time
) -> None:
    """Where the server fires a calendar time other than once at its natural instant, patchflow flags it (and
    refuses monthly/weekly schedules that would hit it); everywhere else its preview is what the server does."""
    spec = ScheduleSpec(
        calendars=[
            ScheduleCalendarSpec(
                year=[ScheduleRange(day.year)],
                month=[ScheduleRange(day.month)],
                day_of_month=[ScheduleRange(day.day)],
                hour=[ScheduleRange(at.hour)],
                minute=[ScheduleRange(at.minute)],
            )
        ],
        time_zone_name=zone,
    )
    schedule_id = f"dst-{uuid.uuid4().hex[:8]}"
    handle = await dev_env.client.create_schedule(
        schedule_id,
        Schedule(
            action=ScheduleActionStartWorkflow("NeverRuns", id=f"never-{schedule_id}", task_queue="nowhere"),
            spec=spec,
        ),
    )
    try:
        server = (await handle.describe()).info.next_action_times
    finally:
        await handle.delete()
    natural = wall_clock_instant(day, at, ZoneInfo(zone))
    if server != [natural]:
        assert near_daylight_saving_change(day, at, ZoneInfo(zone)), (server, natural)
    elif not near_daylight_saving_change(day, at, ZoneInfo(zone)):
        assert server == [natural]


def test_the_dst_cases_include_the_server_anomalies() -> None:
    """Guard for the test above: it must see the anomalies it is about (else it could pass vacuously)."""
    flagged = [case for case in DST_CASES if near_daylight_saving_change(case[1], case[2], ZoneInfo(case[0]))]
    assert len(flagged) == 6 and len(DST_CASES) - len(flagged) == 5


async def test_a_firing_starts_a_fresh_wave_and_a_second_one_is_skipped_while_it_runs(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    client = dev_env.client
    plan_path = write_plan(
        tmp_path, make_fleet({"dev": 2, "prod": 2}), prod_gate={"approval": {"approvers": ["ops-lead"]}}
    )
    schedule = parse_schedule(monthly="second Tuesday", at="02:00", timezone="Europe/Berlin")
    async with scheduling_worker(client, tmp_path) as settings:
        schedule_id = f"test-{uuid.uuid4().hex[:8]}"
        request = ScheduleRequest(plan=load_plan(plan_path), schedule=schedule, schedule_id=schedule_id)
        await create_schedule(client, settings, request)
        try:
            await trigger_schedule(client, schedule_id)

            async def running() -> list[str]:
                return list((await describe_schedule(client, settings, schedule_id, count=1))["running"])

            [wrapper_id] = await eventually(running)
            wrapper = client.get_workflow_handle(wrapper_id, result_type=ScheduledWaveResult)

            async def wave_id() -> str:
                return str(await wrapper.query(ScheduledWaveWorkflow.wave))

            first_wave = await eventually(wave_id)

            async def waiting() -> bool:
                return (await wave_status(client, first_wave)).state == "waiting_approval"

            await eventually(waiting)
            # A second firing while the plan's wave waits for approval: SKIP drops it.
            await trigger_schedule(client, schedule_id)
            await asyncio.sleep(1.5)
            described = await describe_schedule(client, settings, schedule_id, count=1)
            assert described["running"] == [wrapper_id]
            assert described["running_waves"] == {wrapper_id: first_wave}
            assert len(described["recent"]) == 1

            status = await wave_status(client, first_wave)
            assert status.plan_name == load_plan(plan_path).name
            assert [a.who for a in status.audit][:1] == [f"schedule:{schedule_id}"]
            await act(client, first_wave, "approve", who="ops-lead", stage="prod")
            result = await wrapper.result()
            assert (result.wave_id, result.state) == (first_wave, "succeeded")

            # The catalog gains a newer openssl: the next firing evaluates the baseline afresh.
            catalog_path = tmp_path / "catalog.json"
            catalog = json.loads(catalog_path.read_text())
            newest = dict(next(p for p in catalog if p["name"] == "openssl"))
            newest.update(version="3.0.2-0ubuntu1.99", release_date="2026-01-01T00:00:00Z", cve_ids=[])
            catalog_path.write_text(json.dumps([*catalog, newest]))
            await trigger_schedule(client, schedule_id)

            async def second_wrapper() -> str | None:
                ids = (await describe_schedule(client, settings, schedule_id, count=1))["running"]
                return next((i for i in ids if i != wrapper_id), None)

            second = client.get_workflow_handle(
                await eventually(second_wrapper), result_type=ScheduledWaveResult
            )

            async def second_wave() -> str:
                return str(await second.query(ScheduledWaveWorkflow.wave))

            second_wave_id = await eventually(second_wave)
            assert second_wave_id != first_wave
            second_status = await wave_status(client, second_wave_id)
            assert second_status.patch_set_id != result.patch_set_id
            from patchflow.core.patchsets import PatchSetStore

            pinned = PatchSetStore(settings.patch_set_dir).resolve(second_status.patch_set_id)
            assert ("openssl", "3.0.2-0ubuntu1.99") in {(p.name, p.version) for p in pinned.patches}
            await act(client, second_wave_id, "cancel", who="ops-lead")
        finally:
            await delete_schedule(client, schedule_id)


async def test_a_broken_plan_fails_the_firing_at_once(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    client = dev_env.client
    plan_path = write_plan(tmp_path, make_fleet({"dev": 1, "prod": 1}))
    schedule = parse_schedule(daily=True, at="04:00")
    async with scheduling_worker(client, tmp_path) as settings:
        schedule_id = f"test-{uuid.uuid4().hex[:8]}"
        await create_schedule(
            client,
            settings,
            ScheduleRequest(plan=load_plan(plan_path), schedule=schedule, schedule_id=schedule_id),
        )
        try:
            plan_path.write_text("name: broken\nstages: oops\n")
            described = await describe_schedule(client, settings, schedule_id, count=1)
            assert any("cannot be loaded" in p for p in described["problems"])
            await client.get_schedule_handle(schedule_id).trigger(overlap=ScheduleOverlapPolicy.SKIP)

            async def fired() -> list[dict[str, Any]]:
                return list((await describe_schedule(client, settings, schedule_id, count=1))["recent"])

            [recent] = await eventually(fired)
            handle = client.get_workflow_handle(recent["workflow_id"], result_type=ScheduledWaveResult)
            with pytest.raises(WorkflowFailureError) as caught:
                await asyncio.wait_for(handle.result(), timeout=20)
            assert "invalid rollout plan" in str(getattr(caught.value.cause, "cause", None))
            history = await handle.fetch_history()
            attempts = [e for e in history.events if e.HasField("activity_task_started_event_attributes")]
            assert attempts[-1].activity_task_started_event_attributes.attempt == 1  # not retried
        finally:
            await delete_schedule(client, schedule_id)


async def test_pause_unpause_list_delete(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    client = dev_env.client
    plan = load_plan(write_plan(tmp_path, make_fleet({"dev": 1, "prod": 1}), name=f"p{uuid.uuid4().hex[:6]}"))
    settings = Settings(data_dir=tmp_path / "data")
    schedule = parse_schedule(weekly="Sunday", at="03:00")
    schedule_id = await create_schedule(client, settings, ScheduleRequest(plan=plan, schedule=schedule))
    assert schedule_id == f"patchflow-{plan.name}"
    with pytest.raises(InputError, match="already exists"):
        await create_schedule(client, settings, ScheduleRequest(plan=plan, schedule=schedule))
    await pause_schedule(client, schedule_id, "change freeze for the audit")

    async def listed() -> dict[str, Any] | None:
        rows = await list_schedules(client)
        row = next((r for r in rows if r["id"] == schedule_id), None)
        return row if row is not None and row["paused"] else None

    row = await eventually(listed)
    assert row["plan"] == plan.name and row["note"] == "change freeze for the audit"
    await unpause_schedule(client, schedule_id, "")
    assert (await describe_schedule(client, settings, schedule_id, count=1))["paused"] is False
    await delete_schedule(client, schedule_id)
    with pytest.raises(NotFoundError, match="no schedule"):
        await describe_schedule(client, settings, schedule_id)
    with pytest.raises(NotFoundError):
        await trigger_schedule(client, schedule_id)


async def test_catchup_window_is_bounded(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    plan = load_plan(write_plan(tmp_path, make_fleet({"dev": 1, "prod": 1})))
    request = ScheduleRequest(
        plan=plan, schedule=parse_schedule(daily=True), schedule_id="never", catchup_window=timedelta(days=7)
    )
    with pytest.raises(InputError, match="catchup-window"):
        await create_schedule(dev_env.client, Settings(data_dir=tmp_path), request)


def test_schedule_cli_end_to_end_and_bad_input(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    from tests.workflows.test_cli_waves import cli

    plan_path = write_plan(tmp_path, make_fleet({"dev": 1, "prod": 1}), name=f"cli{uuid.uuid4().hex[:6]}")
    env = {
        "PATCHFLOW_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "PATCHFLOW_DATA_DIR": str(tmp_path / "data"),
    }
    created = cli(
        "schedule", "create", str(plan_path), "--monthly", "second Tuesday", "--offset-days", "10",
        "--at", "02:00", "--timezone", "Europe/Berlin", env=env,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    schedule_id = f"patchflow-{load_plan(plan_path).name}"
    assert schedule_id in created.stdout and "second Tuesday + 10 days" in created.stdout
    described = cli("schedule", "describe", schedule_id, "--format", "json", env=env)
    data = json.loads(described.stdout)
    assert len(data["firings"]) == 12 and data["schedule"]["offset_days"] == 10
    table = cli("schedule", "describe", schedule_id, env=env).stdout
    assert "next firings" in table and "dev" in table
    assert schedule_id in cli("schedule", "list", env=env).stdout
    assert cli("schedule", "pause", schedule_id, "--note", "audit", env=env).returncode == 0
    listed = json.loads(cli("schedule", "list", "--format", "json", env=env).stdout)
    assert next(r for r in listed if r["id"] == schedule_id)["paused"] is True
    again = cli("schedule", "create", str(plan_path), "--daily", env=env)
    assert again.returncode == 2 and "already exists" in again.stderr
    assert cli("schedule", "delete", schedule_id, env=env).returncode == 0
    gone = cli("schedule", "describe", schedule_id, env=env)
    assert gone.returncode == 3 and "no schedule" in gone.stderr

    for args, message in [
        (["--monthly", "fifth Tuesday"], "ORDINAL WEEKDAY"),
        (["--monthly", "second Tuesday", "--at", "2am"], "HH:MM"),
        (["--weekly", "Sunday", "--at", "02:30", "--timezone", "Europe/Berlin"], "daylight-saving"),
        (["--daily", "--catchup-window", "3w"], "--catchup-window"),
        (["--daily", "--catchup-window", "0s"], "--catchup-window"),
        (["--daily", "--timezone", "Berlin"], "IANA"),
    ]:
        bad = cli("schedule", "create", str(plan_path), *args, env=env)
        assert bad.returncode == 2, (args, bad.stderr)
        assert message in bad.stderr, (args, bad.stderr)
    missing = cli("schedule", "create", str(tmp_path / "nope.yaml"), "--daily", env=env)
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr


async def test_the_schedule_check_after_a_wait_sees_pause_and_delete(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """What a firing that waited out its offset asks before it starts a wave (the real activity, real server)."""
    from activities.scheduling import ScheduleActivities
    from patchflow.core.wavemodel import ScheduleCheckInput

    client = dev_env.client
    plan = load_plan(write_plan(tmp_path, make_fleet({"dev": 1, "prod": 1}), name=f"w{uuid.uuid4().hex[:6]}"))
    settings = Settings(data_dir=tmp_path / "data")
    schedule = parse_schedule(monthly="second Tuesday", offset_days=21, at="04:00", timezone="Europe/Berlin")
    schedule_id = await create_schedule(client, settings, ScheduleRequest(plan=plan, schedule=schedule))
    check = ScheduleActivities(settings, client).scheduled_wave_allowed
    assert (await check(ScheduleCheckInput(schedule_id))).allowed
    await pause_schedule(client, schedule_id, "CAB said no")
    paused = await check(ScheduleCheckInput(schedule_id))
    assert not paused.allowed and "paused" in paused.reason and "CAB said no" in paused.reason
    await delete_schedule(client, schedule_id)
    deleted = await check(ScheduleCheckInput(schedule_id))
    assert not deleted.allowed and "deleted" in deleted.reason


async def test_one_schedule_per_plan_and_no_firing_while_a_wave_of_the_plan_runs(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    from patchflow.control.waves import pin_patch_set, start_wave, wave_input

    client = dev_env.client
    plan_path = write_plan(
        tmp_path, make_fleet({"dev": 1, "prod": 1}), prod_gate={"approval": {"approvers": ["ops-lead"]}}
    )
    plan = load_plan(plan_path)
    schedule = parse_schedule(monthly="second Tuesday", at="04:00", timezone="Europe/Berlin")
    async with scheduling_worker(client, tmp_path) as settings:
        schedule_id = await create_schedule(client, settings, ScheduleRequest(plan=plan, schedule=schedule))
        try:

            async def listed() -> bool:
                return any(r["id"] == schedule_id for r in await list_schedules(client))

            await eventually(listed)
            with pytest.raises(InputError, match="already has schedule"):
                await create_schedule(
                    client, settings, ScheduleRequest(plan=plan, schedule=schedule, schedule_id="another-one")
                )
            # A wave of the plan started by hand waits at Prod's gate; the schedule fires meanwhile.
            manual = wave_input(plan, settings, pin_patch_set(plan, settings), who="alice")
            await start_wave(client, settings, manual)

            async def waiting() -> bool:
                try:
                    return (await wave_status(client, manual.wave_id)).state == "waiting_approval"
                except NotFoundError:
                    return False

            await eventually(waiting)
            await trigger_schedule(client, schedule_id)

            async def fired() -> list[dict[str, Any]]:
                return list((await describe_schedule(client, settings, schedule_id, count=1))["recent"])

            [recent] = await eventually(fired)
            firing = client.get_workflow_handle(recent["workflow_id"], result_type=ScheduledWaveResult)
            result = await asyncio.wait_for(firing.result(), timeout=30)
            assert (result.state, result.wave_id) == ("skipped", "")
            assert manual.wave_id in result.reason and "still running" in result.reason
            await act(client, manual.wave_id, "cancel", who="alice")
        finally:
            await delete_schedule(client, schedule_id)


async def test_a_plan_s_waves_and_firings_run_on_its_own_task_queue(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """One task queue per AWS account or region: the plan names it, whoever starts the wave."""
    from patchflow.control.waves import pin_patch_set, start_wave, wave_input

    client = dev_env.client
    queue = f"eu-central-1-{uuid.uuid4().hex[:6]}"
    plan_path = write_plan(tmp_path, make_fleet({"dev": 1, "prod": 1}))
    plan_path.write_text(plan_path.read_text() + f"task_queue: {queue}\n")
    plan = load_plan(plan_path)
    # The starter's own queue has no worker at all: the wave only runs if it goes to the plan's queue.
    starter = Settings(data_dir=tmp_path / "data", task_queue=f"nobody-{uuid.uuid4().hex[:6]}")
    inp = wave_input(plan, starter, pin_patch_set(plan, starter))
    async with build_worker(client, queue, settings=Settings(data_dir=tmp_path / "data", task_queue=queue)):
        handle = await start_wave(client, starter, inp)
        result = await asyncio.wait_for(handle.result(), timeout=60)
        assert result.status.state == "succeeded"
        assert (await handle.describe()).task_queue == queue
        schedule_id = await create_schedule(
            client, starter, ScheduleRequest(plan=plan, schedule=parse_schedule(daily=True, at="04:00"))
        )
        try:
            action = (await client.get_schedule_handle(schedule_id).describe()).schedule.action
            assert getattr(action, "task_queue", None) == queue
        finally:
            await delete_schedule(client, schedule_id)
