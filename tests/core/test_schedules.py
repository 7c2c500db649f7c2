"""Recurring-wave schedules: parsing, the Temporal calendar they become, and the firings they produce.

Expected dates come from ``calendar.monthcalendar`` (an independent way to find "the second Tuesday") and from
hand-checked UTC offsets (CET = UTC+1, CEST = UTC+2; EST = UTC-5, EDT = UTC-4).
"""

from __future__ import annotations

import calendar
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import pytest

from patchflow.core.schedules import (
    CalendarPlan,
    ScheduleSpecError,
    WaveSchedule,
    calendar_plan,
    check_daylight_saving,
    daylight_saving_days,
    firings,
    near_daylight_saving_change,
    parse_schedule,
    wall_clock_instant,
    wave_start_after_wait,
)

BERLIN = ZoneInfo("Europe/Berlin")


def nth_weekday(year: int, month: int, weekday: int, n: int) -> date:
    """The n-th ``weekday`` (0 = Monday) of a month, from the month's calendar grid."""
    days = [week[weekday] for week in calendar.monthcalendar(year, month) if week[weekday]]
    return date(year, month, days[n - 1])


def test_patch_tuesdays_by_the_oracle_are_the_published_ones() -> None:
    # Microsoft's published Patch Tuesdays, to make sure the oracle itself is right.
    assert [nth_weekday(2026, m, 1, 2).day for m in range(1, 13)] == [
        13,
        10,
        10,
        14,
        12,
        9,
        14,
        11,
        8,
        13,
        10,
        8,
    ]
    assert nth_weekday(2027, 3, 1, 2) == date(2027, 3, 9)


# --------------------------------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("text", "ordinal", "weekday"),
    [("second Tuesday", 2, 1), ("2nd tue", 2, 1), ("first monday", 1, 0), ("Fourth Fridays", 4, 4)],
)
def test_monthly_ordinal_weekday_forms(text: str, ordinal: int, weekday: int) -> None:
    schedule = parse_schedule(monthly=text, at="02:00", timezone="Europe/Berlin")
    assert (schedule.kind, schedule.ordinal, schedule.weekday, schedule.at) == (
        "monthly",
        ordinal,
        weekday,
        time(2),
    )


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({}, "exactly one of"),
        ({"monthly": "second Tuesday", "daily": True}, "--monthly and --daily"),
        ({"monthly": "fifth Tuesday"}, "ORDINAL WEEKDAY"),
        ({"monthly": "second Funday"}, "ORDINAL WEEKDAY"),
        ({"monthly": "day 29"}, "1–28"),
        ({"monthly": "day 0"}, "1–28"),
        ({"monthly": "second Tuesday", "offset_days": 28}, "0–27"),
        ({"monthly": "second Tuesday", "offset_days": -1}, "≥ 0"),
        ({"weekly": "Saturday", "offset_days": 7}, "0–6"),
        ({"weekly": "Caturday"}, "day of the week"),
        ({"daily": True, "offset_days": 1}, "--daily"),
        ({"daily": True, "at": "25:00"}, "HH:MM"),
        ({"daily": True, "at": "2am"}, "HH:MM"),
        ({"daily": True, "timezone": "Mars/Olympus"}, "IANA"),
    ],
)
def test_bad_schedules_say_what_is_wrong(kwargs: dict[str, object], fragment: str) -> None:
    with pytest.raises(ScheduleSpecError) as caught:
        parse_schedule(**kwargs)  # type: ignore[arg-type]
    assert fragment in str(caught.value)


def test_schedule_round_trips_through_json() -> None:
    for schedule in (
        parse_schedule(monthly="second Tuesday", offset_days=10, at="02:30", timezone="Europe/Berlin"),
        parse_schedule(monthly="day 15", at="22:00"),
        parse_schedule(weekly="sat", offset_days=1, at="23:45", timezone="America/New_York"),
        parse_schedule(daily=True, at="03:00"),
    ):
        assert WaveSchedule.from_json(schedule.to_json()) == schedule
    text = parse_schedule(
        monthly="second Tuesday", offset_days=10, at="02:00", timezone="Europe/Berlin"
    ).describe()
    assert text == "monthly on the second Tuesday + 10 days at 02:00 Europe/Berlin"


# --------------------------------------------------------------------------------------------- calendars


@pytest.mark.parametrize(
    ("monthly", "offset", "expected"),
    [
        # Patch Tuesday: days 8-14 and Tuesday (Temporal counts 0 = Sunday).
        ("second Tuesday", 0, CalendarPlan((8, 14), 2, 2, 0, 0)),
        # + 10 days: days 18-24 and Friday — the calendar itself expresses offsets past one week.
        ("second Tuesday", 10, CalendarPlan((18, 24), 5, 2, 0, 0)),
        ("second Tuesday", 14, CalendarPlan((22, 28), 2, 2, 0, 0)),
        # Past day 28 some months have no such day: fire on Patch Tuesday, wait in the workflow.
        ("second Tuesday", 15, CalendarPlan((8, 14), 2, 2, 0, 15)),
        ("second Tuesday", 21, CalendarPlan((8, 14), 2, 2, 0, 21)),
        ("fourth Sunday", 0, CalendarPlan((22, 28), 0, 2, 0, 0)),
        ("third Monday", 8, CalendarPlan((15, 21), 1, 2, 0, 8)),
        ("day 15", 13, CalendarPlan((28, 28), None, 2, 0, 0)),
        ("day 20", 10, CalendarPlan((20, 20), None, 2, 0, 10)),
    ],
)
def test_calendar_plan(monthly: str, offset: int, expected: CalendarPlan) -> None:
    assert calendar_plan(parse_schedule(monthly=monthly, offset_days=offset, at="02:00")) == expected


def test_weekly_offset_wraps_the_week() -> None:
    # Saturday + 2 days = Monday (Temporal 1); Saturday itself is 6.
    assert calendar_plan(parse_schedule(weekly="Saturday", offset_days=2, at="01:30")).day_of_week == 1
    assert calendar_plan(parse_schedule(weekly="Saturday", at="01:30")).day_of_week == 6
    assert calendar_plan(parse_schedule(daily=True, at="01:30")) == CalendarPlan(None, None, 1, 30, 0)


# --------------------------------------------------------------------------------------------- firings


def test_patch_tuesday_plus_ten_for_a_year_in_berlin_across_dst() -> None:
    schedule = parse_schedule(monthly="second Tuesday", offset_days=10, at="02:00", timezone="Europe/Berlin")
    got = firings(schedule, datetime(2026, 11, 28, tzinfo=UTC), 12)
    months = [(2026, 12)] + [(2027, m) for m in range(1, 12)]
    expected_days = [nth_weekday(y, m, 1, 2) + timedelta(days=10) for y, m in months]
    assert [f.starts_at.astimezone(BERLIN).date() for f in got] == expected_days
    # 02:00 local: 01:00 UTC in winter (CET), 00:00 UTC from April to October (CEST).
    hours = [f.starts_at.hour for f in got]
    summer = {4, 5, 6, 7, 8, 9, 10}
    assert hours == [0 if d.month in summer else 1 for d in expected_days]
    assert all(f.fires_at == f.starts_at for f in got)  # the calendar holds the offset: no wait


def test_offsets_past_the_calendar_fire_on_patch_tuesday_and_start_later() -> None:
    schedule = parse_schedule(monthly="second Tuesday", offset_days=21, at="02:00", timezone="Europe/Berlin")
    got = firings(schedule, datetime(2027, 2, 10, tzinfo=UTC), 2)
    # March 2027: fires on Patch Tuesday 9 March 02:00 CET, the wave starts 30 March 02:00 CEST (after the
    # 28 March change): 01:00 UTC, then 00:00 UTC.
    assert got[0].fires_at == datetime(2027, 3, 9, 1, 0, tzinfo=UTC)
    assert got[0].starts_at == datetime(2027, 3, 30, 0, 0, tzinfo=UTC)
    assert got[1].fires_at == datetime(2027, 4, 13, 0, 0, tzinfo=UTC)
    assert got[1].starts_at == datetime(2027, 5, 4, 0, 0, tzinfo=UTC)


def test_a_firing_already_past_is_not_previewed_even_if_its_wave_would_start_later() -> None:
    schedule = parse_schedule(monthly="second Tuesday", offset_days=21, at="02:00", timezone="UTC")
    # 2026-11-10 fired already; its wave (2026-12-01) belongs to that firing, not to the preview.
    got = firings(schedule, datetime(2026, 11, 28, tzinfo=UTC), 1)
    assert got[0].fires_at == datetime(2026, 12, 8, 2, tzinfo=UTC)


def test_a_wall_time_in_the_spring_forward_gap_does_not_fire_like_temporal() -> None:
    # Fourth Sunday of March 2027 is the 28th, when 02:00-03:00 does not exist in Berlin. Temporal's scheduler
    # does not fire then at all (measured; tests/workflows/test_schedules.py checks it against the server).
    schedule = parse_schedule(monthly="fourth Sunday", at="02:30", timezone="Europe/Berlin")
    got = firings(schedule, datetime(2027, 2, 1, tzinfo=UTC), 2)
    assert [f.starts_at for f in got] == [
        datetime(2027, 2, 28, 1, 30, tzinfo=UTC),
        datetime(2027, 4, 25, 0, 30, tzinfo=UTC),
    ]
    assert daylight_saving_days(schedule, datetime(2027, 2, 1, tzinfo=UTC), years=1) == [date(2027, 3, 28)]
    with pytest.raises(ScheduleSpecError, match="2027-03-28.*silently"):
        check_daylight_saving(schedule, datetime(2027, 2, 1, tzinfo=UTC))
    # 04:00 exists every day: accepted.
    check_daylight_saving(
        parse_schedule(monthly="fourth Sunday", at="04:00", timezone="Europe/Berlin"),
        datetime(2027, 2, 1, tzinfo=UTC),
    )
    # Daily schedules would lose that day (and fire twice in the autumn): refused like the others (issue 16).
    daily = parse_schedule(daily=True, at="02:30", timezone="Europe/Berlin")
    with pytest.raises(ScheduleSpecError, match="2027-03-28.*silently"):
        check_daylight_saving(daily, datetime(2027, 3, 1, tzinfo=UTC))
    check_daylight_saving(
        parse_schedule(daily=True, at="04:00", timezone="Europe/Berlin"), datetime(2027, 3, 1, tzinfo=UTC)
    )
    days = [f.starts_at.astimezone(BERLIN).day for f in firings(daily, datetime(2027, 3, 27, tzinfo=UTC), 2)]
    assert days == [27, 29]


def test_wall_times_near_a_fall_back_are_flagged() -> None:
    # 31 October 2027, Berlin: clocks go back at 03:00 CEST (01:00 UTC) to 02:00 CET.
    assert wall_clock_instant(date(2027, 10, 31), time(2, 30), BERLIN) == datetime(
        2027, 10, 31, 0, 30, tzinfo=UTC
    )
    assert wall_clock_instant(date(2027, 3, 28), time(2, 30), BERLIN) is None
    assert wall_clock_instant(date(2027, 3, 28), time(3, 0), BERLIN) == datetime(
        2027, 3, 28, 1, 0, tzinfo=UTC
    )
    flagged = [
        t
        for t in (time(h, m) for h in range(24) for m in (0, 30))
        if near_daylight_saving_change(date(2027, 10, 31), t, BERLIN)
    ]
    assert flagged == [time(1, 0), time(1, 30), time(2, 0), time(2, 30)]
    assert not near_daylight_saving_change(date(2027, 10, 30), time(2, 30), BERLIN)
    weekly = parse_schedule(weekly="Sunday", at="01:30", timezone="Europe/Berlin")
    with pytest.raises(ScheduleSpecError, match="2027-03-28"):
        check_daylight_saving(weekly, datetime(2027, 1, 1, tzinfo=UTC))


def test_dst_day_firings_refused_but_waited_starts_resolve_to_the_gap_end() -> None:
    # New York springs forward on the second Sunday of March: "second Sunday at 02:30" would skip a month.
    refused = parse_schedule(monthly="second Sunday", at="02:30", timezone="America/New_York")
    with pytest.raises(ScheduleSpecError, match="2027-03-14"):
        check_daylight_saving(refused, datetime(2026, 11, 28, tzinfo=UTC))
    # Patch Tuesday 9 March 2027 + 19 days = Sunday 28 March, the spring-forward day in Berlin. The server fires
    # on Patch Tuesday (02:15 exists) and patchflow computes the start: 02:15 does not exist, so 03:00 CEST.
    waited = parse_schedule(monthly="second Tuesday", offset_days=19, at="02:15", timezone="Europe/Berlin")
    check_daylight_saving(waited, datetime(2026, 11, 28, tzinfo=UTC))
    march = firings(waited, datetime(2027, 3, 1, tzinfo=UTC), 1)[0]
    assert march.fires_at == datetime(2027, 3, 9, 1, 15, tzinfo=UTC)
    assert march.starts_at == datetime(2027, 3, 28, 1, 0, tzinfo=UTC)
    # In UTC nothing is ever skipped.
    check_daylight_saving(
        parse_schedule(monthly="second Sunday", at="02:30"), datetime(2026, 11, 28, tzinfo=UTC)
    )


def test_weekly_and_daily_firings() -> None:
    weekly = parse_schedule(weekly="Saturday", offset_days=1, at="23:30", timezone="America/New_York")
    got = firings(weekly, datetime(2026, 10, 30, tzinfo=UTC), 3)
    # Sundays 1, 8 and 15 November 2026 at 23:30 New York: EST after 1 November 02:00 (UTC-5).
    assert [f.starts_at for f in got] == [
        datetime(2026, 11, 2, 4, 30, tzinfo=UTC),
        datetime(2026, 11, 9, 4, 30, tzinfo=UTC),
        datetime(2026, 11, 16, 4, 30, tzinfo=UTC),
    ]
    daily = parse_schedule(daily=True, at="00:00")
    assert [f.starts_at.day for f in firings(daily, datetime(2026, 2, 27, 12, tzinfo=UTC), 3)] == [28, 1, 2]


def test_day_of_month_schedule_with_offset_crossing_the_month() -> None:
    schedule = parse_schedule(monthly="day 20", offset_days=12, at="04:00")
    got = firings(schedule, datetime(2027, 1, 1, tzinfo=UTC), 3)
    assert [f.starts_at.date() for f in got] == [date(2027, 2, 1), date(2027, 3, 4), date(2027, 4, 1)]
    assert [f.fires_at.date() for f in got] == [date(2027, 1, 20), date(2027, 2, 20), date(2027, 3, 20)]


def test_wave_start_after_wait_keeps_the_wall_clock_across_dst() -> None:
    fired = datetime(2027, 3, 9, 1, 0, tzinfo=UTC)  # 02:00 CET
    assert wave_start_after_wait(fired, 21, time(2), "Europe/Berlin") == datetime(
        2027, 3, 30, 0, 0, tzinfo=UTC
    )
    fired_ny = datetime(2026, 10, 13, 6, 0, tzinfo=UTC)  # 02:00 EDT
    assert wave_start_after_wait(fired_ny, 21, time(2), "America/New_York") == datetime(
        2026, 11, 3, 7, 0, tzinfo=UTC
    )
    # A firing caught up late the same local day still starts on the planned day.
    late = datetime(2027, 3, 9, 1, 50, tzinfo=UTC)
    assert wave_start_after_wait(late, 21, time(2), "Europe/Berlin") == datetime(
        2027, 3, 30, 0, 0, tzinfo=UTC
    )


def test_firings_need_an_aware_instant() -> None:
    with pytest.raises(ValueError, match="aware"):
        firings(parse_schedule(daily=True), datetime(2026, 1, 1), 1)
