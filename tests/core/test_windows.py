"""Maintenance-window schedules: cron/rate/at/now, time zones and DST, offsets, duration and cutoff.

Expected dates come from the ``calendar`` module or from a brute-force reference written here, never from
the code under test.
"""

from __future__ import annotations

import calendar
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchflow.core.windows import (
    ScheduleError,
    Window,
    WindowSpec,
    current_or_next,
    next_windows,
    parse_window_spec,
    validate_spec,
    window_at,
)
from patchflow.errors import InputError

BERLIN = ZoneInfo("Europe/Berlin")
NEW_YORK = ZoneInfo("America/New_York")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def local(
    zone: ZoneInfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0, fold: int = 0
) -> datetime:
    """The UTC instant of a wall-clock reading in ``zone`` (``fold=1``: the second reading of a repeated time).

    Returned in UTC because Python's ``==`` between zones is always False for ambiguous or missing local times.
    """
    return datetime(year, month, day, hour, minute, tzinfo=zone, fold=fold).astimezone(UTC)


def starts(spec: WindowSpec, after: datetime, count: int) -> list[datetime]:
    return [w.start for w in next_windows(spec, after, count)]


def nth_weekday(year: int, month: int, weekday: int, nth: int) -> date | None:
    """The nth (1-based; -1 = last) ``weekday`` (calendar.MONDAY…) of a month, from calendar.monthcalendar."""
    days = [week[weekday] for week in calendar.monthcalendar(year, month) if week[weekday]]
    if nth == -1:
        return date(year, month, days[-1])
    return date(year, month, days[nth - 1]) if nth <= len(days) else None


# --------------------------------------------------------------------------------------------------------
# Cron fields


@pytest.mark.parametrize("zone", ["UTC", "America/New_York"])
def test_patch_tuesday_for_a_whole_year_matches_calendar(zone: str) -> None:
    spec = WindowSpec("cron(0 2 ? * TUE#2 *)", timezone=zone, duration_hours=4)
    got = [w.start.astimezone(ZoneInfo(zone)) for w in next_windows(spec, utc(2026, 1, 1), 12)]
    expected = [nth_weekday(2026, m, calendar.TUESDAY, 2) for m in range(1, 13)]
    assert [(s.date(), s.hour, s.minute) for s in got] == [(d, 2, 0) for d in expected]


def test_patch_tuesday_plus_three_is_the_friday_after() -> None:
    spec = WindowSpec("cron(0 2 ? * TUE#2 *)", timezone="Europe/Berlin", offset_days=3, duration_hours=4)
    got = [s.astimezone(BERLIN) for s in starts(spec, utc(2026, 1, 1), 12)]
    tuesdays = [nth_weekday(2026, m, calendar.TUESDAY, 2) for m in range(1, 13)]
    expected = [d + timedelta(days=3) for d in tuesdays if d is not None]
    assert [s.date() for s in got] == expected
    assert all(s.weekday() == calendar.FRIDAY and (s.hour, s.minute) == (2, 0) for s in got)


def test_a_period_whose_cron_date_passed_is_skipped_even_if_its_offset_date_is_ahead() -> None:
    """User Guide, "Reference: Cron and rate expressions for Systems Manager" (Schedule offsets): "If you create
    [...] a maintenance window with a cron expression that targets a day that has already passed in the current
    period, but add a schedule offset date that falls in the future, the [...] maintenance window won't run in
    the period. It will go into effect in the following period." A stage that starts waiting is that creation;
    ``next_windows`` without ``created`` is the established series."""
    spec = WindowSpec("cron(0 2 ? * TUE#2 *)", offset_days=3, duration_hours=4, cutoff_hours=1)
    wednesday = utc(2026, 11, 11, 12)  # Patch Tuesday 2026-11-10 passed, its Friday (11-13) is ahead
    december_friday = utc(2026, 12, 11, 2)  # 2026-12-08 + 3
    got = current_or_next(spec, wednesday)
    assert got is not None and got.start == december_friday
    assert starts(spec, wednesday, 1) == [utc(2026, 11, 13, 2)]  # the series as it runs once established
    created_wednesday = next_windows(spec, wednesday, 2, created=wednesday)
    assert [w.start for w in created_wednesday] == [december_friday, utc(2027, 1, 15, 2)]
    monday = utc(2026, 11, 9, 12)  # created before the cron date: this period runs
    assert [w.start for w in next_windows(spec, monday, 1, created=monday)] == [utc(2026, 11, 13, 2)]
    on_tuesday = current_or_next(spec, utc(2026, 11, 10, 2))  # the cron instant itself has not passed
    assert on_tuesday is not None and on_tuesday.start == utc(2026, 11, 13, 2)


def test_window_preview_skips_the_period_as_aws_would_and_says_so() -> None:
    """``patchflow window preview`` previews a window created at ``--after`` (User Guide, "Reference: Cron and
    rate expressions for Systems Manager", Schedule offsets), and its help says so."""
    import json

    from typer.testing import CliRunner

    from patchflow.cli import app

    words = ["window", "preview", "cron(0 2 ? * TUE#2 *)", "--offset-days", "3", "--count", "1"]
    wednesday = CliRunner().invoke(app, [*words, "--after", "2026-11-11T12:00:00Z", "--format", "json"])
    assert wednesday.exit_code == 0, wednesday.output
    assert json.loads(wednesday.output)["windows"][0]["start"] == "2026-12-11T02:00:00+00:00"
    monday = CliRunner().invoke(app, [*words, "--after", "2026-11-09T12:00:00Z", "--format", "json"])
    assert json.loads(monday.output)["windows"][0]["start"] == "2026-11-13T02:00:00+00:00"
    shown = CliRunner().invoke(app, ["window", "preview", "--help"], env={"COLUMNS": "200"})
    assert "cron date has passed is skipped" in " ".join(shown.output.split())


def test_an_open_window_keeps_the_offset_series_running() -> None:
    """The skipped period is about creation only: once a window of the series is open, the next one follows
    (a stage carried over after the cutoff). Between windows, a cron firing more often than its offset makes
    a newly waiting stage wait the offset out, as a window created then would on AWS."""
    daily = WindowSpec("cron(0 2 * * ? *)", offset_days=2, duration_hours=4, cutoff_hours=1)
    after_cutoff = current_or_next(daily, utc(2026, 3, 10, 5, 30))  # the 02:00 window is open until 06:00
    assert after_cutoff is not None and after_cutoff.start == utc(2026, 3, 11, 2)
    between = current_or_next(daily, utc(2026, 3, 10, 12))  # cron dates 03-09 and 03-10 passed
    assert between is not None and between.start == utc(2026, 3, 13, 2)


def test_cron_takes_aws_optional_leading_seconds_field_when_it_is_zero() -> None:
    """User Guide, "Reference: Cron and rate expressions for Systems Manager": six required fields plus an
    optional leading ``Seconds`` field; its maintenance-window example ``cron(0 30 23 ? * TUE#3 *)`` is 23:30 on
    the third Tuesday. With seconds 0 the 7-field form is the 6-field one; any other second is refused (see
    the error table) because patchflow windows start on whole minutes."""
    aws_example = WindowSpec("cron(0 30 23 ? * TUE#3 *)", duration_hours=4, cutoff_hours=1)
    third_tuesdays = [nth_weekday(2026, m, calendar.TUESDAY, 3) for m in (1, 2, 3)]
    assert starts(aws_example, utc(2026, 1, 1), 3) == [
        datetime(d.year, d.month, d.day, 23, 30, tzinfo=UTC) for d in third_tuesdays if d is not None
    ]
    assert next_windows(aws_example, utc(2026, 1, 1), 5) == next_windows(
        WindowSpec("cron(30 23 ? * TUE#3 *)", duration_hours=4, cutoff_hours=1), utc(2026, 1, 1), 5
    )
    from_plan = parse_window_spec({"schedule": "cron(00 30 23 ? * TUE#3 *)"})  # "00" is zero too
    assert starts(from_plan, utc(2026, 1, 1), 1) == starts(aws_example, utc(2026, 1, 1), 1)
    with_offset = WindowSpec("cron(0 30 23 ? * TUE#3 *)", offset_days=2)  # the guide's offset example
    assert starts(with_offset, utc(2026, 1, 1), 1) == [utc(2026, 1, 22, 23, 30)]  # Thursday after 2026-01-20


def test_offset_crosses_month_and_year_ends() -> None:
    december_patch_tuesday = WindowSpec("cron(0 2 ? 12 TUE#2 *)", offset_days=6)
    assert starts(december_patch_tuesday, utc(2026, 1, 1), 2) == [utc(2026, 12, 14, 2), utc(2027, 12, 20, 2)]
    last_friday = WindowSpec("cron(0 2 ? 12 6L *)", offset_days=6)  # 2026-12-25 + 6, 2027-12-31 + 6
    assert starts(last_friday, utc(2026, 12, 1), 2) == [utc(2026, 12, 31, 2), utc(2028, 1, 6, 2)]
    last_day = WindowSpec("cron(30 23 L 12 ? 2026)", offset_days=1)  # the year selects the cron date
    assert starts(last_day, utc(2026, 1, 1), 5) == [utc(2027, 1, 1, 23, 30)]
    month_end = WindowSpec("cron(0 4 L * ? *)", offset_days=2)
    assert starts(month_end, utc(2027, 1, 1), 3) == [
        utc(2027, 1, 2, 4),
        utc(2027, 2, 2, 4),
        utc(2027, 3, 2, 4),
    ]


def test_last_day_and_last_weekday_of_month() -> None:
    last = WindowSpec("cron(0 2 L * ? *)")
    assert [s.date() for s in starts(last, utc(2028, 1, 1), 3)] == [
        date(2028, 1, 31),
        date(2028, 2, 29),
        date(2028, 3, 31),
    ]
    # 2026-05-31 is a Sunday, 2026-10-31 a Saturday: LW moves back to Friday.
    last_weekday = WindowSpec("cron(0 2 LW * ? 2026)")
    days = [s.date() for s in starts(last_weekday, utc(2026, 1, 1), 12)]
    assert days[4] == date(2026, 5, 29) and days[9] == date(2026, 10, 30)
    for d in days:
        _, length = calendar.monthrange(d.year, d.month)
        weekdays = [day for day in range(1, length + 1) if calendar.weekday(d.year, d.month, day) < 5]
        assert d.day == weekdays[-1]


@pytest.mark.parametrize(
    ("expression", "month", "expected_day"),
    [
        ("15W", (2026, 3), 16),  # Sunday 15th → Monday 16th
        ("15W", (2026, 8), 14),  # Saturday 15th → Friday 14th
        ("15W", (2026, 7), 15),  # Wednesday: unchanged
        ("1W", (2026, 8), 3),  # Saturday 1st → Monday 3rd: never leaves the month
        ("31W", (2026, 5), 29),  # Sunday 31st → Friday 29th: never leaves the month
    ],
)
def test_nearest_weekday(expression: str, month: tuple[int, int], expected_day: int) -> None:
    spec = WindowSpec(f"cron(0 6 {expression} {month[1]} ? {month[0]})")
    assert starts(spec, utc(*month, 1), 1) == [utc(*month, expected_day, 6)]


def test_nearest_weekday_skips_months_that_are_too_short() -> None:
    spec = WindowSpec("cron(0 6 31W * ? 2026)")
    assert [s.month for s in starts(spec, utc(2026, 1, 1), 12)] == [1, 3, 5, 7, 8, 10, 12]


@pytest.mark.parametrize("expression", ["6L", "FRIL", "fril"])
def test_last_friday(expression: str) -> None:
    spec = WindowSpec(f"cron(0 2 ? * {expression} 2026)")
    got = [s.date() for s in starts(spec, utc(2026, 1, 1), 12)]
    assert got == [nth_weekday(2026, m, calendar.FRIDAY, -1) for m in range(1, 13)]


def test_fifth_weekday_only_in_months_that_have_one() -> None:
    spec = WindowSpec("cron(0 2 ? * 3#5 2026)")  # fifth Tuesday
    got = [s.date() for s in starts(spec, utc(2026, 1, 1), 12)]
    expected = [d for m in range(1, 13) if (d := nth_weekday(2026, m, calendar.TUESDAY, 5))]
    assert got == expected and len(got) == 4


def test_l_alone_in_day_of_week_is_saturday() -> None:
    spec = WindowSpec("cron(0 2 ? * L *)")
    assert all(s.weekday() == calendar.SATURDAY for s in starts(spec, utc(2026, 1, 1), 10))


def test_lists_ranges_steps_and_names() -> None:
    spec = WindowSpec("cron(0/20 8-10/2 ? jan-MAR,DEC MON-FRI 2027)")
    got = starts(spec, utc(2027, 1, 1), 10_000)
    expected = [
        utc(2027, month, day, hour, minute)
        for month in (1, 2, 3, 12)
        for day in range(1, calendar.monthrange(2027, month)[1] + 1)
        if calendar.weekday(2027, month, day) < 5
        for hour in (8, 10)
        for minute in (0, 20, 40)
    ]
    assert got == expected


def test_day_of_month_list_and_increment_skip_missing_days() -> None:
    spec = WindowSpec("cron(15 3 1/10 FEB,APR ? 2027)")  # 1, 11, 21, 31
    assert [s.date() for s in starts(spec, utc(2027, 1, 1), 100)] == [
        date(2027, 2, 1),
        date(2027, 2, 11),
        date(2027, 2, 21),
        date(2027, 4, 1),
        date(2027, 4, 11),
        date(2027, 4, 21),
    ]


def test_numeric_day_of_week_counts_from_sunday() -> None:
    spec = WindowSpec("cron(0 0 ? * 1,7 *)")
    assert {s.weekday() for s in starts(spec, utc(2026, 1, 1), 20)} == {calendar.SATURDAY, calendar.SUNDAY}


def test_five_minute_steps_are_allowed() -> None:
    spec = WindowSpec("cron(*/5 * ? * * *)", duration_hours=1)
    got = starts(spec, utc(2026, 1, 1, 23, 50), 4)
    assert got == [utc(2026, 1, 1, 23, 50), utc(2026, 1, 1, 23, 55), utc(2026, 1, 2), utc(2026, 1, 2, 0, 5)]


def test_exhausted_cron_returns_fewer_windows_quickly() -> None:
    begun = time.perf_counter()
    assert next_windows(WindowSpec("cron(0 2 ? * * 2020)"), utc(2026, 1, 1), 5) == []
    assert next_windows(WindowSpec("cron(0 0 31 2 ? *)"), utc(1970, 1, 1), 5) == []
    assert starts(WindowSpec("cron(0 2 ? * * 2026)"), utc(2026, 12, 30), 5) == [
        utc(2026, 12, 30, 2),
        utc(2026, 12, 31, 2),
    ]
    leap_days = starts(WindowSpec("cron(0 0 29 2 ? *)"), utc(1970, 1, 1), 100)
    assert len(leap_days) == 56 and leap_days[-1] == utc(2196, 2, 29)  # 1972…2196 without 2100
    assert next_windows(WindowSpec("cron(0 0 * * ? *)"), utc(2200, 1, 1), 5) == []
    assert time.perf_counter() - begun < 5  # calendar walk, not a minute-by-minute scan


# --------------------------------------------------------------------------------------------------------
# Time zones and daylight saving


@pytest.mark.parametrize(
    ("zone", "night"),
    [(BERLIN, date(2026, 3, 29)), (NEW_YORK, date(2026, 3, 8))],
)
def test_spring_forward_gap_runs_when_the_gap_ends(zone: ZoneInfo, night: date) -> None:
    spec = WindowSpec("cron(30 2 ? * * *)", timezone=str(zone), duration_hours=2)
    eve, morrow = night - timedelta(days=1), night + timedelta(days=1)
    before, gap, after = next_windows(spec, local(zone, eve.year, eve.month, eve.day), 3)
    assert before.start == local(zone, eve.year, eve.month, eve.day, 2, 30)
    assert gap.start == local(zone, night.year, night.month, night.day, 3, 0)  # 02:30 does not exist
    assert gap.start.astimezone(zone).strftime("%H:%M") == "03:00"
    assert after.start == local(zone, morrow.year, morrow.month, morrow.day, 2, 30)
    assert gap.end - gap.start == timedelta(hours=2)


def test_times_inside_one_gap_collapse_into_one_window() -> None:
    spec = WindowSpec("cron(0,15,30,45 2,3 ? * * *)", timezone="Europe/Berlin", duration_hours=1)
    got = [s.astimezone(BERLIN) for s in starts(spec, local(BERLIN, 2026, 3, 29), 5)]
    assert [(s.hour, s.minute) for s in got] == [(3, 0), (3, 15), (3, 30), (3, 45), (2, 0)]
    assert got == sorted(set(got))


@pytest.mark.parametrize(
    ("zone", "night", "hour"),
    [(BERLIN, (2026, 10, 25), 2), (NEW_YORK, (2026, 11, 1), 1)],
)
def test_fall_back_runs_once_at_the_first_occurrence(
    zone: ZoneInfo, night: tuple[int, int, int], hour: int
) -> None:
    spec = WindowSpec(f"cron(30 {hour} ? * * *)", timezone=str(zone), duration_hours=1)
    got = starts(spec, local(zone, *night), 2)
    first = local(zone, *night, hour, 30, fold=0)
    assert got == [first, first + timedelta(days=1, hours=1)]  # the next day has one more hour
    assert local(zone, *night, hour, 30, fold=1) - first == timedelta(hours=1)  # the time really repeats
    # Asking after the first occurrence (during the repeated hour) does not give a second window that night.
    assert starts(spec, first + timedelta(minutes=30), 1) == [got[1]]


def test_window_spanning_fall_back_lasts_real_hours() -> None:
    spec = WindowSpec("cron(0 22 ? * * *)", timezone="Europe/Berlin", duration_hours=6, cutoff_hours=1)
    (window,) = next_windows(spec, utc(2026, 10, 24), 1)
    assert window.end - window.start == timedelta(hours=6)
    assert window.to_json() == {
        "start": "2026-10-24T22:00:00+02:00",
        "end": "2026-10-25T03:00:00+01:00",  # 6 elapsed hours, 5 on the wall clock
        "cutoff": "2026-10-25T02:00:00+01:00",
    }


def test_window_spanning_spring_forward_lasts_real_hours() -> None:
    spec = WindowSpec("cron(0 1 ? * * *)", timezone="America/New_York", duration_hours=3)
    (window,) = next_windows(spec, utc(2026, 3, 8), 1)
    assert window.to_json()["start"] == "2026-03-08T01:00:00-05:00"
    assert window.to_json()["end"] == "2026-03-08T05:00:00-04:00"  # 3 elapsed hours, 4 on the wall clock


def test_at_in_a_gap_and_in_an_overlap() -> None:
    gap = WindowSpec("at(2026-03-08T02:15:00)", timezone="America/New_York", duration_hours=2)
    assert starts(gap, utc(2026, 1, 1), 5) == [local(NEW_YORK, 2026, 3, 8, 3)]
    overlap = WindowSpec("at(2026-11-01T01:15:00)", timezone="America/New_York", duration_hours=2)
    assert starts(overlap, utc(2026, 1, 1), 5) == [utc(2026, 11, 1, 5, 15)]  # EDT, the first 01:15


def test_timezone_shifts_the_instant_not_the_wall_time() -> None:
    in_utc = starts(WindowSpec("cron(0 2 ? * TUE#2 *)"), utc(2026, 7, 1), 1)
    in_berlin = starts(WindowSpec("cron(0 2 ? * TUE#2 *)", timezone="Europe/Berlin"), utc(2026, 7, 1), 1)
    assert in_utc[0] - in_berlin[0] == timedelta(hours=2)


# --------------------------------------------------------------------------------------------------------
# Window, to_json


def test_to_json_uses_the_local_offset_of_each_season() -> None:
    spec = WindowSpec(
        "cron(0 2 ? * TUE#2 *)", timezone="Europe/Berlin", offset_days=2, duration_hours=4, cutoff_hours=1
    )
    november, july = (next_windows(spec, after, 1)[0] for after in (utc(2026, 11, 1), utc(2026, 7, 1)))
    assert november.to_json() == {
        "start": "2026-11-12T02:00:00+01:00",
        "end": "2026-11-12T06:00:00+01:00",
        "cutoff": "2026-11-12T05:00:00+01:00",
    }
    assert july.to_json()["start"] == "2026-07-16T02:00:00+02:00"
    assert november.start.tzinfo == UTC and november.start == utc(2026, 11, 12, 1)


def test_to_json_in_utc_and_for_now() -> None:
    (window,) = next_windows(
        WindowSpec("now", duration_hours=2), datetime(2026, 5, 1, 8, 0, 1, 500, tzinfo=UTC), 3
    )
    assert window.to_json() == {
        "start": "2026-05-01T08:00:01.000500+00:00",
        "end": "2026-05-01T10:00:01.000500+00:00",
        "cutoff": "2026-05-01T10:00:01.000500+00:00",
    }


def test_after_in_another_offset_is_converted_to_utc() -> None:
    (window,) = next_windows(WindowSpec("now", duration_hours=1), local(BERLIN, 2026, 5, 1, 10), 1)
    assert window.start.tzinfo == UTC and window.start == utc(2026, 5, 1, 8)


# --------------------------------------------------------------------------------------------------------
# next_windows for at / now / rate


def test_at_yields_at_most_one_window() -> None:
    spec = WindowSpec("at(2026-07-07T15:55:00)", timezone="Europe/Berlin", duration_hours=2)
    assert starts(spec, utc(2026, 1, 1), 3) == [utc(2026, 7, 7, 13, 55)]
    assert starts(spec, utc(2026, 7, 7, 13, 55), 3) == [utc(2026, 7, 7, 13, 55)]  # start >= after
    assert next_windows(spec, utc(2026, 7, 7, 13, 56), 3) == []


def test_now_yields_exactly_one_window_at_after() -> None:
    after = utc(2026, 5, 1, 8, 17)
    assert next_windows(WindowSpec("now", duration_hours=3, cutoff_hours=1), after, 10) == [
        Window(start=after, end=after + timedelta(hours=3), cutoff=after + timedelta(hours=2))
    ]
    assert next_windows(WindowSpec("now"), after, 0) == []


def test_rate_series_starts_at_after_and_ignores_dst() -> None:
    spec = WindowSpec("rate(1 day)", timezone="Europe/Berlin", duration_hours=2)
    after = local(BERLIN, 2026, 3, 28, 2, 30)
    got = starts(spec, after, 3)
    assert got == [after, after + timedelta(days=1), after + timedelta(days=2)]
    assert got[1].astimezone(BERLIN).hour == 3  # elapsed days: the wall clock moves with DST
    assert starts(WindowSpec("rate(5 minutes)", duration_hours=1), utc(2026, 1, 1), 3) == [
        utc(2026, 1, 1),
        utc(2026, 1, 1, 0, 5),
        utc(2026, 1, 1, 0, 10),
    ]
    assert starts(WindowSpec("rate(3 hours)"), utc(2199, 12, 31, 20), 5) == [
        utc(2199, 12, 31, 20),
        utc(2199, 12, 31, 23),
    ]


def test_naive_instants_and_negative_counts_are_programming_errors() -> None:
    spec = WindowSpec("cron(0 2 ? * * *)")
    with pytest.raises(ValueError, match="timezone-aware"):
        next_windows(spec, datetime(2026, 1, 1), 1)
    with pytest.raises(ValueError, match="timezone-aware"):
        window_at(spec, datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="count"):
        next_windows(spec, utc(2026, 1, 1), -1)


# --------------------------------------------------------------------------------------------------------
# window_at / current_or_next

PATCH_FRIDAY = WindowSpec(
    "cron(0 2 ? * TUE#2 *)", timezone="Europe/Berlin", offset_days=3, duration_hours=4, cutoff_hours=1
)
NOV_START = local(BERLIN, 2026, 11, 13, 2)  # Friday after Patch Tuesday 2026-11-10
DEC_START = local(BERLIN, 2026, 12, 11, 2)


def test_window_at_inside_and_outside() -> None:
    inside = window_at(PATCH_FRIDAY, NOV_START + timedelta(hours=1))
    assert inside is not None and inside.start == NOV_START and inside.end == NOV_START + timedelta(hours=4)
    assert window_at(PATCH_FRIDAY, NOV_START) == inside  # start is inclusive
    assert window_at(PATCH_FRIDAY, NOV_START + timedelta(hours=4)) is None  # end is exclusive
    assert window_at(PATCH_FRIDAY, NOV_START - timedelta(seconds=1)) is None
    assert window_at(PATCH_FRIDAY, NOV_START + timedelta(days=10)) is None


def test_current_or_next_inside_before_cutoff_uses_the_open_window() -> None:
    got = current_or_next(PATCH_FRIDAY, NOV_START + timedelta(hours=2, minutes=59))
    assert got is not None and got.start == NOV_START
    at_cutoff = current_or_next(PATCH_FRIDAY, NOV_START + timedelta(hours=3))  # "no task starts AFTER cutoff"
    assert at_cutoff is not None and at_cutoff.start == NOV_START


def test_current_or_next_after_cutoff_waits_for_the_next_window() -> None:
    got = current_or_next(PATCH_FRIDAY, NOV_START + timedelta(hours=3, seconds=1))
    assert got is not None and got.start == DEC_START


def test_current_or_next_between_windows() -> None:
    got = current_or_next(PATCH_FRIDAY, NOV_START + timedelta(days=5))
    assert got is not None and got.start == DEC_START
    exactly = current_or_next(PATCH_FRIDAY, DEC_START)
    assert exactly is not None and exactly.start == DEC_START


def test_overlapping_windows_use_the_latest_started() -> None:
    spec = WindowSpec("cron(0 * ? * * *)", duration_hours=3, cutoff_hours=2)
    moment = utc(2026, 1, 1, 5, 30)
    assert window_at(spec, moment) == next_windows(spec, utc(2026, 1, 1, 5), 1)[0]
    # Its cutoff (06:00) is ahead; at 06:30 the 06:00 window is open with cutoff 07:00.
    got = current_or_next(spec, utc(2026, 1, 1, 6, 30))
    assert got is not None and got.start == utc(2026, 1, 1, 6)


def test_one_time_window_expires() -> None:
    spec = WindowSpec("at(2026-07-07T15:55:00)", duration_hours=2, cutoff_hours=1)
    start = utc(2026, 7, 7, 15, 55)
    assert current_or_next(spec, utc(2026, 1, 1)) == next_windows(spec, utc(2026, 1, 1), 1)[0]
    inside = current_or_next(spec, start + timedelta(minutes=30))
    assert inside is not None and inside.start == start
    assert window_at(spec, start + timedelta(hours=1, minutes=30)) is not None
    assert current_or_next(spec, start + timedelta(hours=1, minutes=30)) is None  # past cutoff, nothing after
    assert current_or_next(spec, start + timedelta(days=1)) is None


@pytest.mark.parametrize("schedule", ["now", "rate(2 hours)"])
def test_now_and_rate_are_never_already_open(schedule: str) -> None:
    spec = WindowSpec(schedule, duration_hours=2)
    moment = utc(2026, 5, 1, 8, 17)
    assert window_at(spec, moment) is None
    got = current_or_next(spec, moment)
    assert got is not None and got.start == moment and got.end == moment + timedelta(hours=2)


def test_window_at_during_the_repeated_hour() -> None:
    spec = WindowSpec("cron(30 1 ? * * *)", timezone="America/New_York", duration_hours=1)
    first = local(NEW_YORK, 2026, 11, 1, 1, 30, fold=0)
    second_reading = local(NEW_YORK, 2026, 11, 1, 1, 45, fold=1)  # clocks show 01:45 for the second time
    opened = window_at(spec, first + timedelta(minutes=45))
    assert opened is not None and opened.start == first
    assert window_at(spec, second_reading) is None  # an hour and a quarter after the only 01:30 start


# --------------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("spec", "path", "fragments"),
    [
        (
            WindowSpec("cron(0 2 * * TUE#2 *)"),
            "window.schedule",
            [
                "'cron(0 2 * * TUE#2 *)': exactly one of day-of-month and day-of-week must be '?' (AWS)",
                "write cron(0 2 ? * TUE#2 *)",
            ],
        ),
        (WindowSpec("cron(0 2 15 * * *)"), "window.schedule", ["write cron(0 2 15 * ? *)"]),
        (WindowSpec("cron(0 2 ? * ? *)"), "window.schedule", ["cron(0 2 * * ? *)"]),
        (
            WindowSpec("cron(0 2 15 * MON *)"),
            "window.schedule",
            ["cron(0 2 15 * ? *) or cron(0 2 ? * MON *)"],
        ),
        (
            WindowSpec("cron(* 2 ? * * *)"),
            "window.schedule",
            ["1 minute apart", "every 5 minutes", "cron(0 2 ? * * *)"],
        ),
        (WindowSpec("cron(*/2 * ? * * *)"), "window.schedule", ["2 minutes apart"]),
        (WindowSpec("cron(0,3 2 ? * * *)"), "window.schedule", ["3 minutes apart"]),
        (WindowSpec("cron(58 1,2 ? * * *)"), "window.schedule", []),  # one start an hour: 60 minutes apart
        (WindowSpec("cron(0,58 1,2 ? * * *)"), "window.schedule", ["2 minutes apart"]),  # 01:58 → 02:00
        (
            WindowSpec("cron(24 30 09 ? * * *)"),
            "window.schedule",
            ["seconds: '24'", "must be 0", "whole minutes", "cron(0 30 09 ? * * *)", "cron(30 09 ? * * *)"],
        ),
        (WindowSpec("cron(*/30 0 2 ? * TUE#2 *)"), "window.schedule", ["seconds: '*/30'", "must be 0"]),
        (WindowSpec("cron(0 0 0 2 ? * TUE#2 *)"), "window.schedule", ["8 fields", "seconds field of 0"]),
        (WindowSpec("cron(0 2 * * 2)"), "window.schedule", ["5 fields", "1-7 (SUN = 1)"]),
        (WindowSpec("cron(0 2 ? *)"), "window.schedule", ["4 fields", "AWS cron has 6"]),
        (WindowSpec("cron(60 2 ? * * *)"), "window.schedule", ["minutes: 60 is out of range 0-59"]),
        (WindowSpec("cron(0 24 ? * * *)"), "window.schedule", ["hours: 24 is out of range 0-23"]),
        (WindowSpec("cron(0 2 32 * ? *)"), "window.schedule", ["day-of-month: 32 is out of range 1-31"]),
        (WindowSpec("cron(0 2 ? 13 * *)"), "window.schedule", ["month: 13 is out of range 1-12"]),
        (WindowSpec("cron(0 2 ? JUNE * *)"), "window.schedule", ["'JUNE' is neither", "JAN-DEC"]),
        (
            WindowSpec("cron(0 2 ? * 0 *)"),
            "window.schedule",
            ["day-of-week: 0 is out of range 1-7", "SUN = 1"],
        ),
        (WindowSpec("cron(0 2 ? * TUE#6 *)"), "window.schedule", ["must be 1-5"]),
        (WindowSpec("cron(0 2 ? * TUE#2,THU#2 *)"), "window.schedule", ["must stand alone"]),
        (WindowSpec("cron(0 2 L,15 * ? *)"), "window.schedule", ["must stand alone"]),
        (WindowSpec("cron(0 2 L-3 * ? *)"), "window.schedule", ["L-n", "not supported"]),
        (WindowSpec("cron(0 2 ? * FRI-MON *)"), "window.schedule", ["runs backwards", "'FRI-SAT,SUN-MON'"]),
        (WindowSpec("cron(0 2 ? * * 1969)"), "window.schedule", ["year: 1969 is out of range 1970-2199"]),
        (WindowSpec("cron(0 ? ? * * *)"), "window.schedule", ["'?' is only allowed"]),
        (WindowSpec("cron(0 2 ? * *,MON *)"), "window.schedule", ["'*' must stand alone"]),
        (WindowSpec("cron(0/0 2 ? * * *)"), "window.schedule", ["increment", "1 to 60"]),
        (WindowSpec("cron(0 2 ? * 2W *)"), "window.schedule", ["'2W' is neither"]),
        (WindowSpec("Cron(0 2 ? * * *)"), "window.schedule", ["lower case"]),
        (WindowSpec("0 2 ? * TUE#2 *"), "window.schedule", ["cron(0 2 ? * TUE#2 *)"]),
        (WindowSpec("every tuesday"), "window.schedule", ["not a schedule", "cron(minutes hours", "rate(N"]),
        (WindowSpec("x" * 257), "window.schedule", ["1-256"]),
        (WindowSpec("rate(1 hours)"), "window.schedule", ["rate(1 hours)': use the singular 'hour' with 1"]),
        (WindowSpec("rate(5 hour)"), "window.schedule", ["plural 'hours'", "rate(5 hours)"]),
        (WindowSpec("rate(4 minutes)"), "window.schedule", ["every 5 minutes"]),
        (WindowSpec("rate(1.5 hours)"), "window.schedule", ["whole number", "rate(90 minutes)"]),
        (WindowSpec("rate(2 weeks)"), "window.schedule", ["'weeks' is not supported", "rate(7 days)"]),
        (WindowSpec("rate(hours)"), "window.schedule", ["rate(N unit)"]),
        (WindowSpec("rate(100000 days)"), "window.schedule", ["longer than the 1970-2199"]),
        (
            WindowSpec("at(2026-07-07T15:55:00Z)"),
            "window.schedule",
            ["without 'Z'", "at(2026-07-07T15:55:00)"],
        ),
        (WindowSpec("at(2026-07-07T15:55)"), "window.schedule", ["at(2026-07-07T15:55:00)"]),
        (WindowSpec("at(2026-02-30T15:55:00)"), "window.schedule", ["not a valid date"]),
        (WindowSpec("at(tomorrow)"), "window.schedule", ["at(YYYY-MM-DDTHH:MM:SS)"]),
        (WindowSpec("at(2300-01-01T00:00:00)"), "window.schedule", ["1970-2199"]),
        (
            WindowSpec("now", timezone="Europe/Berln"),
            "window.timezone",
            ["'Europe/Berln'", "did you mean 'Europe/Berlin'", "available_timezones"],
        ),
        (WindowSpec("now", timezone="utc"), "window.timezone", ["did you mean 'UTC'"]),
        (WindowSpec("now", timezone="+01:00"), "window.timezone", ["Etc/GMT-1", "inverted"]),
        (WindowSpec("now", timezone="Europe"), "window.timezone", ["unknown time zone"]),
        (WindowSpec("now", timezone="/etc/passwd"), "window.timezone", ["unknown time zone"]),
        (WindowSpec("cron(0 2 ? * TUE#2 *)", offset_days=7), "window.offset_days", ["outside 1-6", "TUE#3"]),
        (WindowSpec("cron(0 2 ? * TUE#2 *)", offset_days=-1), "window.offset_days", ["outside 1-6"]),
        (
            WindowSpec("rate(1 day)", offset_days=2),
            "window.offset_days",
            ["cron(...) schedules only", "not rate"],
        ),
        (WindowSpec("at(2026-07-07T15:55:00)", offset_days=2), "window.offset_days", ["not at"]),
        (WindowSpec("now", offset_days=1), "window.offset_days", ["not now"]),
        (WindowSpec("now", duration_hours=0), "window.duration_hours", ["outside 1-24 hours (AWS Duration)"]),
        (WindowSpec("now", duration_hours=25), "window.duration_hours", ["outside 1-24"]),
        (
            WindowSpec("now", duration_hours=2, cutoff_hours=2),
            "window.cutoff_hours",
            ["must be less than duration_hours (2)", "at most 1"],
        ),
        (WindowSpec("now", cutoff_hours=24), "window.cutoff_hours", ["outside 0-23 hours (AWS Cutoff)"]),
        (WindowSpec("now", duration_hours=2.5), "window.duration_hours", ["whole number", "2.5 (float)"]),  # type: ignore[arg-type]
        (WindowSpec("now", cutoff_hours=True), "window.cutoff_hours", ["whole number"]),
        (WindowSpec(["cron(0 2 ? * * *)"]), "window.schedule", ["expected a string"]),  # type: ignore[arg-type]
    ],
)
def test_invalid_specs_say_what_where_and_how(spec: WindowSpec, path: str, fragments: list[str]) -> None:
    if not fragments:
        validate_spec(spec)
        return
    with pytest.raises(ScheduleError) as caught:
        validate_spec(spec)
    assert [p.path for p in caught.value.problems] == [path]
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    for fragment in fragments:
        assert fragment in message
    with pytest.raises(ScheduleError):  # every entry point validates
        next_windows(spec, utc(2026, 1, 1), 1)


def test_cron_reports_every_bad_field_at_once() -> None:
    with pytest.raises(ScheduleError) as caught:
        validate_spec(
            WindowSpec("cron(61 25 ? 13 * 2300)", timezone="Mars/Olympus", duration_hours=3, cutoff_hours=3)
        )
    message = str(caught.value)
    assert message.splitlines()[0] == "invalid maintenance window (6 problems)"
    for fragment in [
        "minutes: 61",
        "hours: 25",
        "month: 13",
        "year: 2300",
        "Mars/Olympus",
        "cutoff_hours (3)",
    ]:
        assert fragment in message


def test_schedule_error_is_an_input_error() -> None:
    assert issubclass(ScheduleError, InputError)
    with pytest.raises(InputError) as caught:
        validate_spec(WindowSpec("rate(1 hours)"))
    assert caught.value.exit_code == 2


# --------------------------------------------------------------------------------------------------------
# Plan input


def test_parse_window_spec_from_plan_yaml() -> None:
    spec = parse_window_spec(
        {
            "schedule": " cron(0 2 ? * TUE#2 *) ",
            "timezone": "Europe/Berlin",
            "offset_days": 3,
            "duration_hours": 4,
            "cutoff_hours": 1,
        }
    )
    assert spec == WindowSpec("cron(0 2 ? * TUE#2 *)", "Europe/Berlin", 3, 4, 1)
    assert parse_window_spec("now") == WindowSpec("now")
    assert parse_window_spec(" NOW ") == WindowSpec("now")
    assert parse_window_spec({"schedule": "now", "duration_hours": 2}) == WindowSpec("now", duration_hours=2)
    assert parse_window_spec({"schedule": "rate(1 day)"}) == WindowSpec("rate(1 day)")


@pytest.mark.parametrize(
    ("data", "problems"),
    [
        ("cron(0 2 ? * * *)", [("stages[0].window", "only 'now' may be written as a plain string")]),
        (None, [("stages[0].window", "expected 'now' or a mapping")]),
        (["now"], [("stages[0].window", "got ['now'] (list)")]),
        ({"timezone": "UTC"}, [("stages[0].window.schedule", "required")]),
        (
            {"schedule": "now", "Duration": 3, "cuttoff_hours": 1},
            [
                ("stages[0].window.Duration", "did you mean 'duration_hours'?"),
                ("stages[0].window.cuttoff_hours", "did you mean 'cutoff_hours'?"),
            ],
        ),
        (
            {"schedule": "rate(1 day)", "offset_days": 2, "duration_hours": "4", "timezone": 1},
            [
                ("stages[0].window.timezone", "expected an IANA time zone name"),
                ("stages[0].window.offset_days", "cron(...) schedules only"),
                ("stages[0].window.duration_hours", "got '4' (str)"),
            ],
        ),
        ({"schedule": 5}, [("stages[0].window.schedule", "expected a string, got 5 (int)")]),
    ],
)
def test_parse_window_spec_problems_name_the_field(data: object, problems: list[tuple[str, str]]) -> None:
    with pytest.raises(ScheduleError) as caught:
        parse_window_spec(data, path="stages[0].window")  # type: ignore[arg-type]
    assert [p.path for p in caught.value.problems] == [path for path, _ in problems]
    for problem, (_, fragment) in zip(caught.value.problems, problems, strict=True):
        assert fragment in problem.message


# --------------------------------------------------------------------------------------------------------
# Property tests against a brute-force reference

#: AWS day-of-week numbers (1 = SUN) as calendar weekdays; written out, not derived as the module does.
AWS_DOW = {
    1: calendar.SUNDAY,
    2: calendar.MONDAY,
    3: calendar.TUESDAY,
    4: calendar.WEDNESDAY,
    5: calendar.THURSDAY,
    6: calendar.FRIDAY,
    7: calendar.SATURDAY,
}
DOW_BY_NUMBER = {1: "SUN", 2: "MON", 3: "TUE", 4: "WED", 5: "THU", 6: "FRI", 7: "SAT"}
MONTH_NAMES = ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"]
ZONES = [
    "UTC",
    "Europe/Berlin",
    "America/New_York",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Asia/Kathmandu",
]
REFERENCE_END = date(
    2031, 12, 31
)  # generated years stop at 2030; the reference enumerates cron dates to here
COMPARE_BEFORE = utc(2031, 12, 20)  # windows before this instant come from cron dates the reference covered


@dataclass(frozen=True)
class Cron:
    """A generated cron expression with the meaning the reference gives it."""

    text: str
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    months: tuple[int, ...]
    years: tuple[int, ...]
    day: tuple[str, int, int]  # (kind, a, b): kinds below

    def day_matches(self, d: date) -> bool:
        kind, a, b = self.day
        length = calendar.monthrange(d.year, d.month)[1]
        weekdays = [x for x in range(1, length + 1) if calendar.weekday(d.year, d.month, x) < 5]
        same = [x for x in range(1, length + 1) if calendar.weekday(d.year, d.month, x) == AWS_DOW.get(a)]
        if kind == "every":
            return True
        if kind == "dom-range":
            return a <= d.day <= b and (d.day - a) % max(1, self.day_step) == 0
        if kind == "last":
            return d.day == length
        if kind == "last-weekday":
            return d.day == weekdays[-1]
        if kind == "nearest":
            return a <= length and d.day == min(weekdays, key=lambda x: abs(x - a))
        if kind == "dow-range":
            return a <= next(n for n, wd in AWS_DOW.items() if wd == d.weekday()) <= b
        if kind == "last-of":
            return d.day == same[-1]
        if kind == "nth-of":
            return len(same) >= b and d.day == same[b - 1]
        raise AssertionError(kind)

    @property
    def day_step(self) -> int:
        return int(self.text.split()[2].partition("/")[2] or 1) if self.day[0] == "dom-range" else 1


@st.composite
def crons(draw: st.DrawFn) -> Cron:
    shift = draw(st.integers(0, 4))
    minutes = sorted(
        m + shift for m in draw(st.sets(st.sampled_from(range(0, 60, 5)), min_size=1, max_size=3))
    )
    hours_kind = draw(st.sampled_from(["list", "range", "step", "star"]))
    if hours_kind == "list":
        hours = sorted(draw(st.sets(st.integers(0, 23), min_size=1, max_size=3)))
        hours_text = ",".join(map(str, hours))
    elif hours_kind == "range":
        first = draw(st.integers(0, 23))
        last = draw(st.integers(first, min(23, first + 3)))
        hours, hours_text = list(range(first, last + 1)), f"{first}-{last}"
    elif hours_kind == "step":
        first, step = draw(st.integers(0, 23)), draw(st.integers(5, 12))
        hours, hours_text = list(range(first, 24, step)), f"{first}/{step}"
    else:
        hours, hours_text = list(range(24)), "*"

    day_kind = draw(
        st.sampled_from(
            ["every", "dom-range", "last", "last-weekday", "nearest", "dow-range", "last-of", "nth-of"]
        )
    )
    a = b = 0
    if day_kind == "every":
        dom, dow = draw(st.sampled_from([("*", "?"), ("?", "*")]))
    elif day_kind == "dom-range":
        a = draw(st.integers(1, 31))
        b = draw(st.integers(a, 31))
        step = draw(st.integers(1, 10))
        dom, dow = (f"{a}-{b}/{step}" if step > 1 else (f"{a}-{b}" if a != b else str(a))), "?"
    elif day_kind == "last":
        dom, dow = "L", "?"
    elif day_kind == "last-weekday":
        dom, dow = "LW", "?"
    elif day_kind == "nearest":
        a = draw(st.integers(1, 31))
        dom, dow = f"{a}W", "?"
    elif day_kind == "dow-range":
        a = draw(st.integers(1, 7))
        b = draw(st.integers(a, 7))
        spell = draw(st.booleans())
        low, high = (DOW_BY_NUMBER[a], DOW_BY_NUMBER[b]) if spell else (str(a), str(b))
        dom, dow = "?", (low if a == b else f"{low}-{high}")
    elif day_kind == "last-of":
        a = draw(st.integers(1, 7))
        dom, dow = "?", f"{a}L"
    else:
        a, b = draw(st.integers(1, 7)), draw(st.integers(1, 5))
        dom, dow = "?", f"{draw(st.sampled_from([str(a), DOW_BY_NUMBER[a]]))}#{b}"

    months = sorted(
        draw(st.one_of(st.just(set(range(1, 13))), st.sets(st.integers(1, 12), min_size=1, max_size=4)))
    )
    month_text = (
        "*"
        if len(months) == 12
        else ",".join(draw(st.sampled_from([str(m), MONTH_NAMES[m - 1]])) for m in months)
    )
    year_kind = draw(st.sampled_from(["star", "range", "one"]))
    if year_kind == "star":
        years, year_text = tuple(range(1970, 2200)), "*"
    elif year_kind == "range":
        first = draw(st.integers(2025, 2030))
        years, year_text = tuple(range(first, 2031)), f"{first}-2030"
    else:
        year = draw(st.integers(2025, 2030))
        years, year_text = (year,), str(year)
    text = f"cron({','.join(map(str, minutes))} {hours_text} {dom} {month_text} {dow} {year_text})"
    return Cron(text, tuple(minutes), tuple(hours), tuple(months), years, (day_kind, a, b))


def reference_resolve(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant at which clocks in ``zone`` read ``wall`` or later: the earliest exact reading,
    or, inside a gap, the first minute after it (found by stepping, not bisecting)."""
    exact = [
        candidate
        for fold in (0, 1)
        if (candidate := wall.replace(tzinfo=zone, fold=fold).astimezone(UTC))
        .astimezone(zone)
        .replace(tzinfo=None)
        == wall
    ]
    if exact:
        return min(exact)
    instant = wall.replace(tzinfo=zone, fold=1).astimezone(UTC).replace(second=0)
    while instant.astimezone(zone).replace(tzinfo=None) < wall:
        instant += timedelta(minutes=1)
    return instant


def reference_starts(
    cron: Cron, zone: ZoneInfo, offset: int, after: datetime, count: int, created: datetime | None = None
) -> list[datetime]:
    """Brute force: test every calendar day, keep matching times, resolve, sort, deduplicate; with ``created``,
    leave out the times whose cron date (before the offset) resolves to an earlier instant."""
    found: list[datetime] = []
    day = after.astimezone(zone).date() - timedelta(days=offset + 2)
    while day <= REFERENCE_END and len(found) < count + 1:
        if day.year in cron.years and day.month in cron.months and cron.day_matches(day):
            for hour in cron.hours:
                for minute in cron.minutes:
                    cron_wall = datetime(day.year, day.month, day.day, hour, minute)
                    if created is not None and reference_resolve(cron_wall, zone) < created:
                        continue
                    instant = reference_resolve(cron_wall + timedelta(days=offset), zone)
                    if instant >= after and instant not in found:
                        found.append(instant)
        day += timedelta(days=1)
    return sorted(found)


AFTER = st.one_of(
    st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2029, 12, 31), timezones=st.just(UTC)),
    # Near the 2026 transitions of the zones above, where the interesting cases are.
    st.sampled_from(
        [
            utc(2026, 3, 29, 0, 30),
            utc(2026, 3, 8, 6),
            utc(2026, 10, 25, 0, 30),
            utc(2026, 11, 1, 5, 30),
            utc(2026, 4, 4, 14),
            utc(2026, 9, 6, 3),
        ]
    ).flatmap(lambda t: st.integers(-36 * 60, 36 * 60).map(lambda m: t + timedelta(minutes=m))),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cron=crons(), zone=st.sampled_from(ZONES), offset=st.integers(0, 6), after=AFTER, count=st.integers(1, 6)
)
def test_cron_matches_brute_force_reference(
    cron: Cron, zone: str, offset: int, after: datetime, count: int
) -> None:
    spec = WindowSpec(cron.text, timezone=zone, offset_days=offset, duration_hours=1)
    got = [s for s in starts(spec, after, count) if s < COMPARE_BEFORE]
    expected = [s for s in reference_starts(cron, ZoneInfo(zone), offset, after, count) if s < COMPARE_BEFORE]
    assert got == expected[:count]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    cron=crons(), zone=st.sampled_from(ZONES), offset=st.integers(1, 6), after=AFTER, count=st.integers(1, 4)
)
def test_created_windows_match_brute_force_reference(
    cron: Cron, zone: str, offset: int, after: datetime, count: int
) -> None:
    """AWS's skipped period (User Guide, "Reference: Cron and rate expressions for Systems Manager", Schedule
    offsets), against the brute force: a window created at ``after`` runs only cron dates from ``after`` on."""
    spec = WindowSpec(cron.text, timezone=zone, offset_days=offset, duration_hours=1)
    got = [w.start for w in next_windows(spec, after, count, created=after) if w.start < COMPARE_BEFORE]
    expected = reference_starts(cron, ZoneInfo(zone), offset, after, count, created=after)
    assert got == [s for s in expected if s < COMPARE_BEFORE][:count]


@settings(max_examples=100, deadline=None)
@given(cron=crons(), zone=st.sampled_from(ZONES), after=AFTER, duration=st.integers(1, 24))
def test_windows_are_ordered_and_consistent(cron: Cron, zone: str, after: datetime, duration: int) -> None:
    spec = WindowSpec(cron.text, timezone=zone, duration_hours=duration, cutoff_hours=duration - 1)
    windows = next_windows(spec, after, 5)
    assert all(w.start >= after for w in windows)
    assert all(a.start < b.start for a, b in zip(windows, windows[1:], strict=False))
    for window in windows:
        assert window.end - window.start == timedelta(hours=duration)
        assert window.end - window.cutoff == timedelta(hours=duration - 1)
        assert window_at(spec, window.start) == window
        assert current_or_next(spec, window.start) == window
        wall = window.start.astimezone(ZoneInfo(zone))
        # Either the start reads as a scheduled time, or it is the end of a DST gap.
        if wall.utcoffset() == (window.start - timedelta(seconds=1)).astimezone(ZoneInfo(zone)).utcoffset():
            assert wall.minute in cron.minutes and wall.hour in cron.hours and wall.month in cron.months
            assert cron.day_matches(wall.date())
