"""Recurring waves: when a plan's scheduled waves start (pure; the Temporal side is :mod:`patchflow.control.scheduling`).

A :class:`WaveSchedule` is what an operator writes on the command line::

    --monthly "second Tuesday" --offset-days 10 --at 02:00 --timezone Europe/Berlin
    --monthly "day 15" --at 22:00
    --weekly Saturday --at 23:30 --timezone America/New_York
    --daily --at 03:00

Monthly firings are the *k*-th weekday of the month (``first``…``fourth``; ``second Tuesday`` is Microsoft's Patch
Tuesday, on which most vendors publish) or a day of the month (1–28, so that every month has it), plus
``offset_days`` calendar days (0–27 monthly, 0–6 weekly), at ``at`` wall-clock time in ``timezone``.

Daylight saving: Temporal's scheduler (measured on the dev server; ``tests/workflows/test_schedules.py`` keeps
checking it) does not fire a wall time that a spring-forward gap skips, and around a fall-back it fires some wall
times twice (in Europe/Berlin on 31 October 2027, ``01:30`` fires at 23:30 and 00:30 UTC) and others only at
their second occurrence. A monthly wave that silently does not happen, or happens twice, is worse than an error,
so :func:`check_daylight_saving` refuses schedules — monthly, weekly and daily alike — whose wall time falls into
the hour a daylight-saving change skips or repeats, or the hour before it, on a firing day in the coming years
("choose 04:00 or UTC").

Temporal calendar specs match a time only if *every* field matches, day-of-month **and** day-of-week, so "days
8–14 and Tuesday" is exactly the second Tuesday, and "days 18–24 and Friday" is Patch Tuesday + 10 days. That
works while the shifted day range stays inside every month (``7·k + offset ≤ 28``); beyond, the schedule fires on
the base day and the scheduled workflow waits the offset out itself (a durable timer), re-reading the wall clock
so that a daylight-saving change in between does not move the local start time. :func:`calendar_plan` says
which; :func:`firings` computes the wave starts either way.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from patchflow.core.windows import resolve_wall_time
from patchflow.errors import InputError

ORDINALS = {"first": 1, "1st": 1, "second": 2, "2nd": 2, "third": 3, "3rd": 3, "fourth": 4, "4th": 4}
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
"""Python's order: ``date.weekday()`` is the index."""
MAX_MONTHLY_OFFSET = 27
MAX_WEEKLY_OFFSET = 6
KINDS = ("monthly", "weekly", "daily")


class ScheduleSpecError(InputError):
    """A recurring-wave schedule given on the command line is not understood."""


_SCHEDULE_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,199}")


def check_schedule_id(schedule_id: str) -> str:
    """A schedule id an operator can type in a shell without quoting: letters, digits, ``.``, ``_``, ``:``,
    ``-`` (at most 200, starting with a letter or digit)."""
    if not _SCHEDULE_ID_RE.fullmatch(schedule_id):
        raise ScheduleSpecError(
            f"--id {schedule_id!r}: use letters, digits, '.', '_', ':' and '-' (up to 200, starting with a letter "
            "or digit), e.g. patchflow-monthly-prod"
        )
    return schedule_id


@dataclass(frozen=True)
class WaveSchedule:
    """When a plan's waves start. Build it with :func:`parse_schedule`."""

    kind: str
    """``monthly``, ``weekly`` or ``daily``."""
    at: time
    """Wall-clock time of the start (hours and minutes)."""
    timezone: str = "UTC"
    ordinal: int | None = None
    """monthly: the *k*-th ``weekday`` of the month (1–4)."""
    weekday: int | None = None
    """monthly with ordinal, weekly: 0 = Monday … 6 = Sunday."""
    day_of_month: int | None = None
    """monthly: a fixed day (1–28) instead of ordinal + weekday."""
    offset_days: int = 0
    """Calendar days after the base day (Patch Tuesday + 10 days: ``offset_days=10``)."""

    def describe(self) -> str:
        """``second Tuesday + 10 days at 02:00 Europe/Berlin``"""
        clock = f"at {self.at:%H:%M} {self.timezone}"
        offset = (
            f" + {self.offset_days} day{'s' if self.offset_days != 1 else ''}" if self.offset_days else ""
        )
        if self.kind == "daily":
            return f"every day {clock}"
        assert self.weekday is not None or self.day_of_month is not None
        if self.kind == "weekly":
            assert self.weekday is not None
            return f"every {WEEKDAYS[self.weekday].title()}{offset} {clock}"
        if self.day_of_month is not None:
            return f"monthly on day {self.day_of_month}{offset} {clock}"
        assert self.ordinal is not None and self.weekday is not None
        names = {1: "first", 2: "second", 3: "third", 4: "fourth"}
        return f"monthly on the {names[self.ordinal]} {WEEKDAYS[self.weekday].title()}{offset} {clock}"

    def to_json(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "at": f"{self.at:%H:%M}",
            "timezone": self.timezone,
            "ordinal": self.ordinal,
            "weekday": WEEKDAYS[self.weekday] if self.weekday is not None else None,
            "day_of_month": self.day_of_month,
            "offset_days": self.offset_days,
            "description": self.describe(),
        }

    @classmethod
    def from_json(cls, data: dict[str, object]) -> WaveSchedule:
        weekday = data.get("weekday")
        hour, minute = str(data["at"]).split(":")
        return cls(
            kind=str(data["kind"]),
            at=time(int(hour), int(minute)),
            timezone=str(data.get("timezone") or "UTC"),
            ordinal=int(str(data["ordinal"])) if data.get("ordinal") is not None else None,
            weekday=WEEKDAYS.index(str(weekday)) if weekday is not None else None,
            day_of_month=int(str(data["day_of_month"])) if data.get("day_of_month") is not None else None,
            offset_days=int(str(data.get("offset_days") or 0)),
        )


@dataclass(frozen=True)
class CalendarPlan:
    """How the schedule is expressed to Temporal: a calendar (local fields) and a wait inside the workflow."""

    day_of_month: tuple[int, int] | None
    """Inclusive range, or None for every day."""
    day_of_week: int | None
    """Temporal's numbering: 0 = Sunday … 6 = Saturday; None for every day of the week."""
    hour: int
    minute: int
    wait_days: int
    """Days the scheduled workflow waits after the firing before the wave starts (0: it starts at once)."""


@dataclass(frozen=True)
class Firing:
    """One scheduled wave: the calendar's firing and the wave's start (later by ``wait_days``)."""

    fires_at: datetime
    starts_at: datetime


def _weekday(text: str) -> int | None:
    word = text.strip().lower()
    for index, name in enumerate(WEEKDAYS):
        if word in (name, name[:3], f"{name}s"):
            return index
    return None


def parse_time(text: str) -> time:
    match = re.fullmatch(r"\s*(\d{1,2}):(\d{2})\s*", text)
    if match is None or int(match.group(1)) > 23 or int(match.group(2)) > 59:
        raise ScheduleSpecError(
            f"--at {text!r}: expected a 24-hour wall-clock time HH:MM, e.g. 02:00 or 22:30"
        )
    return time(int(match.group(1)), int(match.group(2)))


def parse_schedule(
    *,
    monthly: str | None = None,
    weekly: str | None = None,
    daily: bool = False,
    offset_days: int = 0,
    at: str = "02:00",
    timezone: str = "UTC",
) -> WaveSchedule:
    """Validate the command-line form; every error says which option is wrong and what it accepts."""
    given = [
        name for name, value in (("--monthly", monthly), ("--weekly", weekly), ("--daily", daily)) if value
    ]
    if len(given) != 1:
        raise ScheduleSpecError(
            'give exactly one of --monthly "second Tuesday" (or "day 15"), --weekly Saturday or --daily'
            + (f"; got {' and '.join(given)}" if given else "")
        )
    clock = parse_time(at)
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleSpecError(
            f"--timezone {timezone!r} is not an IANA time zone; write e.g. Europe/Berlin, America/New_York or UTC"
        ) from None
    if isinstance(offset_days, bool) or offset_days < 0:
        raise ScheduleSpecError(f"--offset-days {offset_days}: expected a whole number of days ≥ 0")
    if daily:
        if offset_days:
            raise ScheduleSpecError("--offset-days makes no sense with --daily; leave it out")
        return WaveSchedule(kind="daily", at=clock, timezone=timezone)
    if weekly is not None:
        day = _weekday(weekly)
        if day is None:
            raise ScheduleSpecError(f"--weekly {weekly!r}: expected a day of the week, e.g. Saturday or sat")
        if offset_days > MAX_WEEKLY_OFFSET:
            raise ScheduleSpecError(
                f"--offset-days {offset_days}: a weekly schedule takes 0–{MAX_WEEKLY_OFFSET} (or name the day itself)"
            )
        return WaveSchedule(kind="weekly", at=clock, timezone=timezone, weekday=day, offset_days=offset_days)
    assert monthly is not None
    if offset_days > MAX_MONTHLY_OFFSET:
        raise ScheduleSpecError(
            f"--offset-days {offset_days}: a monthly schedule takes 0–{MAX_MONTHLY_OFFSET} days, so that each "
            "month's wave starts before the next month's base day"
        )
    words = monthly.strip().lower().split()
    if len(words) == 2 and words[0] == "day" and words[1].isdigit():
        day_of_month = int(words[1])
        if not 1 <= day_of_month <= 28:
            raise ScheduleSpecError(
                f"--monthly {monthly!r}: the day must be 1–28 (every month has it); for later days use an "
                'offset from a weekday, e.g. "fourth Friday"'
            )
        return WaveSchedule(
            kind="monthly", at=clock, timezone=timezone, day_of_month=day_of_month, offset_days=offset_days
        )
    if len(words) == 2 and words[0] in ORDINALS and _weekday(words[1]) is not None:
        return WaveSchedule(
            kind="monthly",
            at=clock,
            timezone=timezone,
            ordinal=ORDINALS[words[0]],
            weekday=_weekday(words[1]),
            offset_days=offset_days,
        )
    raise ScheduleSpecError(
        f'--monthly {monthly!r}: expected "ORDINAL WEEKDAY" (first, second, third or fourth; e.g. "second Tuesday" '
        'for Patch Tuesday) or "day N" (1–28)'
    )


def calendar_plan(schedule: WaveSchedule) -> CalendarPlan:
    """The Temporal calendar (in the schedule's time zone) and the wait the workflow adds, if any."""
    hour, minute = schedule.at.hour, schedule.at.minute
    if schedule.kind == "daily":
        return CalendarPlan(None, None, hour, minute, 0)
    if schedule.kind == "weekly":
        assert schedule.weekday is not None
        return CalendarPlan(None, _temporal_dow(schedule.weekday + schedule.offset_days), hour, minute, 0)
    n = schedule.offset_days
    if schedule.day_of_month is not None:
        if schedule.day_of_month + n <= 28:
            day = schedule.day_of_month + n
            return CalendarPlan((day, day), None, hour, minute, 0)
        return CalendarPlan((schedule.day_of_month, schedule.day_of_month), None, hour, minute, n)
    assert schedule.ordinal is not None and schedule.weekday is not None
    k = schedule.ordinal
    if 7 * k + n <= 28:
        return CalendarPlan(
            (7 * (k - 1) + 1 + n, 7 * k + n), _temporal_dow(schedule.weekday + n), hour, minute, 0
        )
    return CalendarPlan((7 * (k - 1) + 1, 7 * k), _temporal_dow(schedule.weekday), hour, minute, n)


def _temporal_dow(python_weekday: int) -> int:
    """Python (0 = Monday) → Temporal/cron (0 = Sunday), modulo a week."""
    return (python_weekday % 7 + 1) % 7


def wall_clock_instant(day: date, at: time, zone: ZoneInfo) -> datetime | None:
    """The UTC instant of a calendar firing ``day at`` in ``zone``: None for a wall time a spring-forward gap
    skips (Temporal does not fire then), else its first occurrence."""
    local = datetime.combine(day, at, tzinfo=zone)
    first = local.replace(fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) != local.replace(tzinfo=None):
        return None  # in a gap: the clocks never show this time on this day
    return first


def near_daylight_saving_change(day: date, at: time, zone: ZoneInfo) -> bool:
    """True when ``day at`` is where Temporal's scheduler skips or repeats calendar firings: inside the wall-clock
    hour a change skips or repeats, or in the hour before it (measured: around a fall-back, European zones fire
    wall times of that hour twice)."""
    wall = datetime.combine(day, at)
    start = datetime.combine(day, time(0), tzinfo=UTC) - timedelta(hours=18)
    step = timedelta(minutes=15)
    for i in range(4 * 60):  # 60 hours of UTC quarter hours around the local day
        t = start + i * step
        before, after = t.astimezone(zone).utcoffset(), (t + step).astimezone(zone).utcoffset()
        if before is None or after is None or before == after:
            continue
        change = t + step
        edges = sorted(((change + before).replace(tzinfo=None), (change + after).replace(tzinfo=None)))
        if edges[0] - timedelta(hours=1) <= wall < edges[1]:
            return True
    return False


def _resolved_start(day: date, at: time, zone: ZoneInfo) -> datetime:
    """A wave start patchflow computes itself (after a wait): a time in a gap starts when the gap ends."""
    instant = wall_clock_instant(day, at, zone)
    return instant if instant is not None else resolve_wall_time(datetime.combine(day, at), zone)


def base_days(schedule: WaveSchedule, start: date) -> list[date]:
    """Base days (before the offset) of the schedule from ``start`` on, for about 31 days' worth."""
    days = [start + timedelta(days=i) for i in range(32)]
    if schedule.kind == "daily":
        return days
    if schedule.kind == "weekly":
        return [d for d in days if d.weekday() == schedule.weekday]
    if schedule.day_of_month is not None:
        return [d for d in days if d.day == schedule.day_of_month]
    assert schedule.ordinal is not None
    return [d for d in days if d.weekday() == schedule.weekday and (d.day - 1) // 7 + 1 == schedule.ordinal]


def firings(schedule: WaveSchedule, after: datetime, count: int) -> list[Firing]:
    """The next ``count`` firings at or after ``after`` (aware), in order, with the start of each one's wave."""
    if after.tzinfo is None:
        raise ValueError("after must be timezone-aware")
    zone = ZoneInfo(schedule.timezone)
    plan = calendar_plan(schedule)
    out: list[Firing] = []
    # Walk base days from before `after` (an offset may put an earlier base day's start after it).
    day = after.astimezone(zone).date() - timedelta(days=schedule.offset_days + 1)
    while len(out) < count:
        for base in base_days(schedule, day):
            start_day = base + timedelta(days=schedule.offset_days)
            fire_day = base + timedelta(days=schedule.offset_days - plan.wait_days)
            fires_at = wall_clock_instant(fire_day, schedule.at, zone)
            if fires_at is None:
                continue  # the server does not fire in a daylight-saving gap
            starts_at = _resolved_start(start_day, schedule.at, zone) if plan.wait_days else fires_at
            if fires_at >= after and (not out or starts_at > out[-1].starts_at):
                out.append(Firing(fires_at, starts_at))
                if len(out) == count:
                    break
        day += timedelta(days=32)
    return out


def wave_start_after_wait(fired_at: datetime, wait_days: int, at: time, timezone: str) -> datetime:
    """When a wave fired at ``fired_at`` (aware) starts after waiting ``wait_days``: the same wall-clock time
    ``wait_days`` calendar days later in ``timezone`` (not ``wait_days × 24`` hours, which a daylight-saving
    change would shift by an hour)."""
    zone = ZoneInfo(timezone)
    local_day = fired_at.astimezone(zone).date()
    return _resolved_start(local_day + timedelta(days=wait_days), at, zone)


def daylight_saving_days(schedule: WaveSchedule, after: datetime, *, years: int = 5) -> list[date]:
    """Firing days within ``years`` whose wall time is near a daylight-saving change (see the module docstring)."""
    zone = ZoneInfo(schedule.timezone)
    plan = calendar_plan(schedule)
    found: set[date] = set()
    day = after.astimezone(zone).date()
    end = day + timedelta(days=366 * years)
    while day < end:
        for base in base_days(schedule, day):
            fire_day = base + timedelta(days=schedule.offset_days - plan.wait_days)
            if _offset_changes_around(fire_day, zone) and near_daylight_saving_change(
                fire_day, schedule.at, zone
            ):
                found.add(fire_day)
        day += timedelta(days=32)
    return sorted(found)


def _offset_changes_around(day: date, zone: ZoneInfo) -> bool:
    """A cheap first look (daily schedules have 1,800 firing days in five years): whether ``zone``'s UTC offset
    differs between the day before and the day after ``day``."""
    before = datetime.combine(day - timedelta(days=1), time(12), tzinfo=zone).utcoffset()
    after = datetime.combine(day + timedelta(days=1), time(12), tzinfo=zone).utcoffset()
    return before != after


def check_daylight_saving(schedule: WaveSchedule, now: datetime) -> None:
    """Refuse a schedule that Temporal would skip or fire twice on a daylight-saving day (daily ones too: a
    daily wave that silently does not happen, or happens twice, is as wrong as a monthly one)."""
    days = daylight_saving_days(schedule, now)
    if days:
        raise ScheduleSpecError(
            f"--at {schedule.at:%H:%M} {schedule.timezone} is at a daylight-saving change on "
            f"{days[0].isoformat()}, when Temporal's scheduler skips or repeats firings, so that wave could "
            "silently not happen or happen twice; choose a time away from the change (e.g. 04:00) or --timezone UTC"
        )
