"""Maintenance-window schedules with AWS ``CreateMaintenanceWindow`` semantics.

A rollout stage runs inside the windows of a :class:`WindowSpec`. The fields mirror ``CreateMaintenanceWindow``
(``Schedule``, ``ScheduleTimezone``, ``ScheduleOffset``, ``Duration``, ``Cutoff``) so that a plan reads like
the AWS window it replaces, and the computed windows are what ``DescribeMaintenanceWindowSchedule`` would
preview. This module is pure (stdlib only): workflows may call it, given the same time zone database.

Schedules:

* ``cron(minutes hours day-of-month month day-of-week year)`` — the AWS/EventBridge six-field form. Fields
  accept ``*``, lists ``a,b``, ranges ``a-b`` (no wrap-around), increments ``a/n``, ``*/n`` and ``a-b/n``;
  months ``1-12``/``JAN-DEC``; days of the week ``1-7`` (1 = SUN) or ``SUN-SAT``; years 1970-2199. Exactly
  one of day-of-month and day-of-week is ``?``. Day-of-month also takes ``L`` (last day), ``LW`` (last
  weekday) and ``nW`` (the weekday nearest day *n*, never leaving the month; no window in a month shorter
  than *n* days); day-of-week takes ``nL`` (last such weekday of the month, ``6L`` = last Friday), ``n#k``
  (*k*-th such weekday, 1-5; no window in a month without one) and ``L`` alone (the last day of the week,
  Saturday, as in Quartz, the cron dialect AWS's resembles). As in Quartz, ``L``, ``W`` and ``#`` stand alone
  in their field (use one window per expression). AWS's optional seventh, leading seconds field is accepted
  when it is ``0`` (``cron(0 30 23 ? * TUE#3 *)``, AWS's own example) and refused otherwise: windows start on
  whole minutes. Minutes that fire less than 5 minutes apart are
  refused, like AWS ("schedules faster than every 5 minutes are not supported"); the gap from the last
  minute of an hour to the first of the next counts only when two consecutive hours are selected.
* ``rate(N minutes|hours|days)`` — singular unit with 1, plural otherwise, at least 5 minutes. AWS anchors a
  rate window at its creation time or ``StartDate``; patchflow has neither, so a rate series starts at the
  ``after`` instant the caller passes and repeats every interval of *elapsed* time (the time zone plays no
  part). For the same reason no rate window is "already open" (:func:`window_at` returns None).
* ``at(YYYY-MM-DDTHH:MM:SS)`` — one window at that wall-clock time in the spec's time zone.
* ``now`` — patchflow's immediate window: one window starting at ``after`` and lasting ``duration_hours``.

Time zones and daylight saving: cron and ``at`` times are wall-clock times in ``timezone`` (IANA name, UTC by
default). A window starts at the first instant at which the zone's clocks show the scheduled time or later:
a time inside a spring-forward gap starts when the gap ends (02:30 on 2026-03-29 in Europe/Berlin starts at
03:00 CEST), and a time repeated by a fall-back runs once, at its first occurrence (``fold=0``). Several
scheduled times inside one gap collapse into one window. ``Duration`` and ``Cutoff`` are *elapsed* hours, so
a 6-hour window opening at 22:00 CEST the night clocks go back ends at 03:00 CET, after 6 real hours.

``ScheduleOffset`` (``offset_days``, 1-6, cron only) moves every window that many calendar days after its
cron date, at the same wall-clock time: ``cron(0 2 ? * TUE#2 *)`` with offset 3 opens at 02:00 on the Friday
after Patch Tuesday. The year field selects the cron date, not the shifted one. AWS skips a period whose cron
date has already passed when the window is created, even if the offset date is still ahead ("Reference: Cron
and rate expressions for Systems Manager": "if you specify a cron expression that would have run a maintenance
window yesterday and add a schedule offset of two days, the maintenance window won't run tomorrow"). patchflow
follows it where a schedule *starts to apply*: :func:`current_or_next` treats the moment a stage starts waiting
as the creation time (unless a window of the series is open then: the series is already running), and
``next_windows(..., created=...)`` previews a window created at that instant. Without ``created``,
:func:`next_windows` lists the established series (every cron date + offset). A consequence: a cron that fires
more often than its offset (daily with ``offset_days: 2``) gives a stage that starts waiting between windows
no window for ``offset_days`` days, as a newly created AWS window would.

Windows may overlap (a cron every hour with ``duration_hours: 3``); AWS reports an execution that collides
with a running one as ``SKIPPED_OVERLAPPING``. patchflow treats windows as time gates, and :func:`window_at`
returns the open window that started last, which has the latest end and cutoff. Every computation walks the
calendar (years, months, matching days, hours, minutes) and stops at the end of 2199, so a schedule that never
fires again yields nothing instead of looping.
"""

from __future__ import annotations

import calendar
import difflib
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from itertools import islice
from typing import Any, Literal, NoReturn, Protocol, cast
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from patchflow.errors import InputError, Problem

MIN_YEAR = 1970
MAX_YEAR = 2199
#: Windows never start later than this: the end of the year range AWS cron accepts.
HORIZON_END = datetime(MAX_YEAR + 1, 1, 1, tzinfo=UTC)
#: AWS refuses maintenance-window schedules faster than this.
MIN_INTERVAL = timedelta(minutes=5)
MAX_OFFSET_DAYS = 6

_EXAMPLE_CRON = "cron(0 2 ? * TUE#2 *)"
_FORMS = (
    f"write cron(minutes hours day-of-month month day-of-week year), e.g. {_EXAMPLE_CRON}; "
    "rate(N minutes|hours|days), e.g. rate(1 day); at(YYYY-MM-DDTHH:MM:SS), e.g. at(2026-07-07T15:55:00); "
    "or now"
)
_Kind = Literal["cron", "rate", "at", "now"]
#: Stands for a key absent from plan input, so that only "required" is reported for it.
_MISSING: Any = object()
_SPEC_KEYS = ("schedule", "timezone", "offset_days", "duration_hours", "cutoff_hours")
#: Names people bring from the AWS API or other tools, mapped to the key patchflow uses.
_KEY_ALIASES = {
    "Schedule": "schedule",
    "ScheduleTimezone": "timezone",
    "schedule_timezone": "timezone",
    "time_zone": "timezone",
    "tz": "timezone",
    "ScheduleOffset": "offset_days",
    "schedule_offset": "offset_days",
    "offset": "offset_days",
    "Duration": "duration_hours",
    "duration": "duration_hours",
    "Cutoff": "cutoff_hours",
    "cutoff": "cutoff_hours",
}


class ScheduleError(InputError):
    """A maintenance-window spec breaks the ``CreateMaintenanceWindow`` constraints or the cron grammar.

    Each :class:`~patchflow.errors.Problem` names the field (``window.schedule``, ``window.cutoff_hours``, …)
    so a plan loader can place it; without a source file the message is just ``path: problem``.
    """

    def _render(self) -> str:
        if self.source is not None or not self.problems:
            return super()._render()
        lines = [f"{p.path}: {p.message}" if p.path else p.message for p in self.problems]
        if len(lines) == 1:
            return lines[0]
        return "\n".join([f"{self.summary} ({len(lines)} problems)", *("  " + line for line in lines)])


@dataclass(frozen=True)
class WindowSpec:
    """When a stage may run: the scheduling fields of ``CreateMaintenanceWindow``.

    Construct freely; :func:`validate_spec` (or :func:`parse_window_spec` for plan input) checks it.
    """

    schedule: str
    """``cron(...)``, ``rate(...)``, ``at(...)`` or ``now``; see the module docstring for the grammar."""
    timezone: str = "UTC"
    """AWS ``ScheduleTimezone``: the IANA zone whose wall clock cron and ``at`` times are read in."""
    offset_days: int = 0
    """AWS ``ScheduleOffset``: run 1-6 calendar days after each cron date (cron only; 0 = no offset)."""
    duration_hours: int = 24
    """AWS ``Duration`` (1-24 elapsed hours); for ``now``, how long the immediate window stays open."""
    cutoff_hours: int = 0
    """AWS ``Cutoff`` (0-23, below ``duration_hours``): no new work starts in the last this-many hours."""


@dataclass(frozen=True)
class Window:
    """One occurrence of a maintenance window. All instants are aware UTC datetimes."""

    start: datetime
    end: datetime
    """``start + duration_hours`` of elapsed time."""
    cutoff: datetime
    """``end - cutoff_hours``: the last instant at which new work may start (AWS: no task starts *after* it)."""
    timezone: str = "UTC"
    """The spec's IANA zone, kept so :meth:`to_json` can show local times."""

    def to_json(self) -> dict[str, str]:
        """RFC 3339 instants with the local UTC offset of each one, as ``DescribeMaintenanceWindowSchedule``
        shows them (``2026-11-12T02:00:00+01:00``): an operator reads the wall-clock time directly, and start
        and end may carry different offsets when a window spans a DST change."""
        zone = ZoneInfo(self.timezone)
        return {name: getattr(self, name).astimezone(zone).isoformat() for name in ("start", "end", "cutoff")}


# --------------------------------------------------------------------------------------------------------
# Plan input and validation


def parse_window_spec(data: Mapping[str, Any] | str | None, *, path: str = "window") -> WindowSpec:
    """Build and validate a :class:`WindowSpec` from plan YAML.

    ``data`` is ``"now"`` or a mapping with the keys ``schedule`` (required), ``timezone``, ``offset_days``,
    ``duration_hours`` and ``cutoff_hours``. Every problem is reported at once, each under ``path.<key>``.

    Raises:
        ScheduleError: with one :class:`~patchflow.errors.Problem` per mistake.
    """
    if isinstance(data, str):
        if data.strip().lower() == "now":
            return WindowSpec(schedule="now")
        _raise(
            [
                Problem(
                    path,
                    f"{data!r}: only 'now' may be written as a plain string; write a scheduled window as a "
                    f"mapping, e.g. {{schedule: '{_EXAMPLE_CRON}', timezone: Europe/Berlin, duration_hours: 4, "
                    "cutoff_hours: 1}",
                )
            ]
        )
    if not isinstance(data, Mapping):
        _raise(
            [
                Problem(
                    path,
                    f"expected 'now' or a mapping with the keys {', '.join(_SPEC_KEYS)}, "
                    f"got {_describe(data)}",
                )
            ]
        )
    problems = [
        Problem(f"{path}.{key}", f"unknown key{_key_hint(str(key))}; allowed: {', '.join(_SPEC_KEYS)}")
        for key in data
        if key not in _SPEC_KEYS
    ]
    if "schedule" not in data:
        problems.append(Problem(f"{path}.schedule", f"required; {_FORMS}"))
    schedule = data.get("schedule", _MISSING)
    if isinstance(schedule, str):
        schedule = "now" if schedule.strip().lower() == "now" else schedule.strip()
    fields: dict[str, Any] = {
        "schedule": schedule,
        "timezone": data.get("timezone", "UTC"),
        "offset_days": data.get("offset_days", 0),
        "duration_hours": data.get("duration_hours", 24),
        "cutoff_hours": data.get("cutoff_hours", 0),
    }
    problems.extend(_check(fields, path)[0])
    if problems:
        _raise(problems)
    return WindowSpec(**fields)


def validate_spec(spec: WindowSpec, *, path: str = "window") -> None:
    """Check a spec against the ``CreateMaintenanceWindow`` constraints and the cron grammar.

    Raises:
        ScheduleError: naming each wrong field under ``path`` and what is allowed.
    """
    _compile(spec, path)


def next_windows(
    spec: WindowSpec, after: datetime, count: int, *, created: datetime | None = None
) -> list[Window]:
    """The first ``count`` windows whose start is at or after ``after``, in order.

    Fewer come back when the schedule runs out: ``at(...)`` yields at most one, a cron restricted to past
    years none; ``now`` yields exactly one, starting at ``after``; ``rate`` starts its series at ``after``.

    Args:
        created: AWS's creation time of the window. A window whose cron date (before ``ScheduleOffset``) is
            earlier does not run even if its offset date is still ahead, as AWS skips that period. None: the
            established series, every cron date + offset.

    Raises:
        ScheduleError: the spec is invalid.
        ValueError: ``after`` is naive or ``count`` negative (programming errors, not user input).
    """
    if count < 0:
        raise ValueError(f"count must be 0 or more, got {count}")
    plan = _compile(spec, "window")
    after = _aware(after, "after")
    if created is None:
        starts = plan.starts(after)
    else:
        since = _aware(created, "created")
        starts = (start for cron_date, start in plan.firings(after) if cron_date >= since)
    return [plan.window(start) for start in islice(starts, count)]


def window_at(spec: WindowSpec, moment: datetime) -> Window | None:
    """The window open at ``moment`` (``start <= moment < end``), if any.

    A stage started in the middle of a window uses the rest of it rather than waiting for the next one. When
    windows overlap, the one that started last wins (its end and cutoff are the latest). ``now`` and
    ``rate`` schedules start at the caller's instant, so nothing is open before it: they return None.
    """
    plan = _compile(spec, "window")
    moment = _aware(moment, "moment")
    if plan.kind in ("now", "rate"):
        return None
    # A window is open iff start <= moment < start + duration; starts have microsecond resolution at best.
    opened: datetime | None = None
    for start in plan.starts(moment - plan.duration + timedelta(microseconds=1)):
        if start > moment:
            break
        opened = start
    return plan.window(opened) if opened is not None else None


def current_or_next(spec: WindowSpec, moment: datetime) -> Window | None:
    """The window a stage arriving at ``moment`` should use.

    The open window while new work may still start in it (``moment <= cutoff``), otherwise the next window
    to start; None when the schedule has no future window (an ``at(...)`` in the past, a cron whose years
    are over). For ``now`` and ``rate`` that is the window starting at ``moment``.

    With no window open, ``moment`` is the creation time in AWS's sense: a period whose cron date has passed
    is skipped even if its ``ScheduleOffset`` date is still ahead (see the module docstring). A window open
    past its cutoff shows the series is running, so the next window of the series follows.
    """
    moment = _aware(moment, "moment")
    current = window_at(spec, moment)
    if current is not None and moment <= current.cutoff:
        return current
    # The open window (if any) started before `moment`: one starting exactly then would still be usable.
    upcoming = next_windows(spec, moment, 1, created=None if current is not None else moment)
    return upcoming[0] if upcoming else None


# --------------------------------------------------------------------------------------------------------
# Compiled schedules


class _DayRule(Protocol):
    def days(self, year: int, month: int) -> list[int]:
        """The days of ``month`` the rule selects, ascending."""
        ...


@dataclass(frozen=True)
class _MonthDays:
    """Day-of-month numbers, ascending (``*`` is 1-31); days past the end of a month are skipped."""

    values: tuple[int, ...]

    def days(self, year: int, month: int) -> list[int]:
        last = calendar.monthrange(year, month)[1]
        return [d for d in self.values if d <= last]


@dataclass(frozen=True)
class _LastDay:
    """``L`` (last day) or ``LW`` (last weekday) of the month."""

    weekday: bool

    def days(self, year: int, month: int) -> list[int]:
        last = calendar.monthrange(year, month)[1]
        if self.weekday:
            last -= max(0, calendar.weekday(year, month, last) - calendar.FRIDAY)
        return [last]


@dataclass(frozen=True)
class _NearestWeekday:
    """``nW``: the Monday-Friday day nearest day n, staying inside the month (Quartz semantics)."""

    day: int

    def days(self, year: int, month: int) -> list[int]:
        last = calendar.monthrange(year, month)[1]
        if self.day > last:
            return []
        weekday = calendar.weekday(year, month, self.day)
        if weekday == calendar.SATURDAY:
            return [self.day - 1 if self.day > 1 else self.day + 2]
        if weekday == calendar.SUNDAY:
            return [self.day + 1 if self.day < last else self.day - 2]
        return [self.day]


def _aws_dow(year: int, month: int, day: int) -> int:
    """AWS day-of-week number (1 = SUN … 7 = SAT) of a date; Python counts 0 = MON … 6 = SUN."""
    return (calendar.weekday(year, month, day) + 1) % 7 + 1


@dataclass(frozen=True)
class _WeekDays:
    """Day-of-week numbers, AWS numbering (1 = SUN)."""

    values: frozenset[int]

    def days(self, year: int, month: int) -> list[int]:
        last = calendar.monthrange(year, month)[1]
        return [d for d in range(1, last + 1) if _aws_dow(year, month, d) in self.values]


@dataclass(frozen=True)
class _NthWeekDay:
    """``dow#nth`` (nth 1-5) or, with ``nth == -1``, ``dowL`` (the last one in the month)."""

    dow: int
    nth: int

    def days(self, year: int, month: int) -> list[int]:
        last = calendar.monthrange(year, month)[1]
        first = 1 + (self.dow - _aws_dow(year, month, 1)) % 7
        day = first + 7 * (self.nth - 1) if self.nth > 0 else first + 7 * ((last - first) // 7)
        return [day] if day <= last else []


@dataclass(frozen=True)
class _Cron:
    minutes: tuple[int, ...]
    hours: tuple[int, ...]
    day_rule: _DayRule
    months: tuple[int, ...]
    years: tuple[int, ...]

    def wall_times(self, first_day: datetime) -> Iterator[datetime]:
        """Naive wall-clock firing times on or after the day of ``first_day``, ascending.

        Walks the calendar rather than the clock so that a monthly schedule costs a few steps per month
        and an exhausted one (past years, 30 February) ends after at most 230 × 12 month checks.
        """
        start = (first_day.year, first_day.month, first_day.day)
        for year in self.years:
            if year < start[0]:
                continue
            for month in self.months:
                if (year, month) < start[:2]:
                    continue
                for day in self.day_rule.days(year, month):
                    if (year, month, day) < start:
                        continue
                    for hour in self.hours:
                        for minute in self.minutes:
                            yield datetime(year, month, day, hour, minute)


@dataclass(frozen=True)
class _Plan:
    """A validated spec, ready to enumerate windows."""

    kind: _Kind
    timezone: str
    zone: ZoneInfo
    offset: timedelta
    duration: timedelta
    cutoff: timedelta
    cron: _Cron | None = None
    interval: timedelta | None = None
    at: datetime | None = None

    def window(self, start: datetime) -> Window:
        end = start + self.duration
        return Window(start=start, end=end, cutoff=end - self.cutoff, timezone=self.timezone)

    def starts(self, after: datetime) -> Iterator[datetime]:
        """Window starts (aware UTC) at or after ``after``, strictly increasing."""
        return (start for _, start in self.firings(after))

    def firings(self, after: datetime) -> Iterator[tuple[datetime, datetime]]:
        """(cron date, window start) of the windows starting at or after ``after``, starts strictly increasing.

        The cron date is the instant the cron expression names, before ``ScheduleOffset``; without an offset
        (and for every other kind of schedule) it is the start itself.
        """
        if self.kind == "now":
            yield after, after
        elif self.kind == "at":
            assert self.at is not None
            start = _resolve(self.at, self.zone)
            if start >= after:
                yield start, start
        elif self.kind == "rate":
            assert self.interval is not None
            start = after
            while start < HORIZON_END:
                yield start, start
                start += self.interval
        else:
            assert self.cron is not None
            if after >= HORIZON_END + timedelta(days=MAX_OFFSET_DAYS + 1):
                return
            # Cron years start in 1970; clamping keeps the local-time arithmetic below clear of datetime.min.
            after = max(after, datetime(MIN_YEAR - 1, 1, 1, tzinfo=UTC))
            # Wall time → instant is monotonic (gaps map forward, folds take the first occurrence), so
            # walking wall times in order yields instants in order; equal ones come from one DST gap.
            # Start a day early: the local date of `after` and of the first matching instant may differ.
            local_after = after.astimezone(self.zone).replace(tzinfo=None)
            previous: datetime | None = None
            for wall in self.cron.wall_times(local_after - self.offset - timedelta(days=1)):
                start = _resolve(wall + self.offset, self.zone)
                if start < after or (previous is not None and start <= previous):
                    continue
                previous = start
                yield (_resolve(wall, self.zone) if self.offset else start), start


def _resolve(wall: datetime, zone: ZoneInfo) -> datetime:
    """The first instant (aware UTC) at which clocks in ``zone`` show ``wall`` or later.

    For an existing wall time that is its first occurrence (``fold=0``); for one inside a spring-forward gap
    it is the end of the gap.
    """
    first = wall.replace(tzinfo=zone, fold=0).astimezone(UTC)
    if first.astimezone(zone).replace(tzinfo=None) == wall:
        return first
    # In a gap, fold=0 applies the offset from before the transition and lands after it; fold=1 applies the
    # later offset and lands before it. Bisect between them for the transition, to the second.
    before = wall.replace(tzinfo=zone, fold=1).astimezone(UTC)
    low, high = min(before, first), max(before, first)
    while high - low > timedelta(seconds=1):
        middle = low + timedelta(seconds=(high - low).total_seconds() // 2)
        if middle.astimezone(zone).replace(tzinfo=None) >= wall:
            high = middle
        else:
            low = middle
    return high


resolve_wall_time = _resolve
"""Public name of :func:`_resolve` (a wall time in ``zone`` → the first instant the clocks show it or later)."""


def _aware(value: datetime, name: str) -> datetime:
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a timezone-aware datetime, got naive {value.isoformat()}")
    return value.astimezone(UTC)


# --------------------------------------------------------------------------------------------------------
# Checking and compiling


class _Bad(Exception):
    """One problem with a schedule expression; the message is shown after the expression."""


def _raise(problems: list[Problem]) -> NoReturn:
    raise ScheduleError("invalid maintenance window", problems=problems)


def _compile(spec: WindowSpec, path: str) -> _Plan:
    try:
        hash(spec)
    except TypeError:  # a field of the wrong, unhashable type: validate without the cache to report it
        return _compile_uncached(spec, path)
    return _compile_cached(spec, path)


@lru_cache(maxsize=256)
def _compile_cached(spec: WindowSpec, path: str) -> _Plan:
    return _compile_uncached(spec, path)


def _compile_uncached(spec: WindowSpec, path: str) -> _Plan:
    fields = {name: getattr(spec, name) for name in _SPEC_KEYS}
    problems, plan = _check(fields, path)
    if problems or plan is None:
        _raise(problems)
    return plan


def _check(fields: dict[str, Any], path: str) -> tuple[list[Problem], _Plan | None]:
    """Every problem with the five fields, and the compiled plan when there is none."""
    problems: list[Problem] = []

    def bad(key: str, message: str) -> None:
        problems.append(Problem(f"{path}.{key}", message))

    schedule = fields["schedule"]
    kind: _Kind | None = None
    compiled: _Cron | timedelta | datetime | None = None
    if schedule is _MISSING:
        pass  # reported by the caller
    elif not isinstance(schedule, str):
        bad("schedule", f"expected a string, got {_describe(schedule)}; {_FORMS}")
    else:
        kind, compiled, messages = _parse_schedule(schedule)
        for message in messages:
            bad("schedule", f"{schedule!r}: {message}")

    zone: ZoneInfo | None = None
    timezone = fields["timezone"]
    if not isinstance(timezone, str):
        bad("timezone", f"expected an IANA time zone name such as 'Europe/Berlin', got {_describe(timezone)}")
    else:
        try:
            zone = _zone(timezone)
        except _Bad as exc:
            bad("timezone", str(exc))

    offset = _whole_number(fields["offset_days"], "offset_days", 0, MAX_OFFSET_DAYS, bad)
    if offset is not None:
        if offset < 0 or offset > MAX_OFFSET_DAYS:
            more = (
                "; for a week later move the '#' instead, e.g. TUE#3 rather than TUE#2 + 7 days"
                if offset > MAX_OFFSET_DAYS
                else ""
            )
            bad(
                "offset_days",
                f"{offset} is outside 1-{MAX_OFFSET_DAYS} days (AWS ScheduleOffset; 0 = none){more}",
            )
            offset = None
        elif offset and kind is not None and kind != "cron":
            bad(
                "offset_days",
                f"applies to cron(...) schedules only (AWS ScheduleOffset), not {kind}; remove it or shift the "
                "schedule itself",
            )
            offset = None

    duration = _whole_number(fields["duration_hours"], "duration_hours", 1, 24, bad)
    if duration is not None and not 1 <= duration <= 24:
        bad("duration_hours", f"{duration} is outside 1-24 hours (AWS Duration)")
        duration = None
    cutoff = _whole_number(fields["cutoff_hours"], "cutoff_hours", 0, 23, bad)
    if cutoff is not None and not 0 <= cutoff <= 23:
        bad("cutoff_hours", f"{cutoff} is outside 0-23 hours (AWS Cutoff)")
        cutoff = None
    if duration is not None and cutoff is not None and cutoff >= duration:
        bad(
            "cutoff_hours",
            f"cutoff_hours ({cutoff}) must be less than duration_hours ({duration}), otherwise no work could "
            f"ever start (AWS); use at most {duration - 1} or lengthen the window",
        )

    if problems or kind is None or zone is None or offset is None or duration is None or cutoff is None:
        return problems, None
    assert isinstance(timezone, str)
    plan = _Plan(
        kind=kind,
        timezone=timezone,
        zone=zone,
        offset=timedelta(days=offset),
        duration=timedelta(hours=duration),
        cutoff=timedelta(hours=cutoff),
        cron=compiled if isinstance(compiled, _Cron) else None,
        interval=compiled if isinstance(compiled, timedelta) else None,
        at=compiled if isinstance(compiled, datetime) else None,
    )
    return problems, plan


def _whole_number(value: Any, key: str, low: int, high: int, bad: Callable[[str, str], None]) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        unit = key.rpartition("_")[2]
        bad(key, f"expected a whole number of {unit} from {low} to {high}, got {_describe(value)}")
        return None
    return value


def _describe(value: Any) -> str:
    if value is None:
        return "nothing"
    return f"{value!r} ({type(value).__name__})"


def _key_hint(key: str) -> str:
    if key in _KEY_ALIASES:
        return f"; did you mean '{_KEY_ALIASES[key]}'?"
    close = difflib.get_close_matches(key, _SPEC_KEYS, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


_UTC_OFFSET = re.compile(r"^(?:UTC|GMT)?\s*([+-])(\d{1,2})(?::?(\d{2}))?$", re.IGNORECASE)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        pass
    hint = ""
    fixed = _UTC_OFFSET.match(name.strip())
    if fixed and fixed.group(3) in (None, "00"):
        sign = "-" if fixed.group(1) == "+" else "+"
        hint = (
            f" (a fixed offset is not a zone: use a city (e.g. 'Europe/Berlin'), or 'Etc/GMT{sign}"
            f"{int(fixed.group(2))}' for a zone that is always UTC{fixed.group(1)}{int(fixed.group(2))} "
            "— the Etc signs are inverted)"
        )
    else:
        names = available_timezones()
        lowered = {n.lower(): n for n in names}
        close = [lowered[name.strip().lower()]] if name.strip().lower() in lowered else []
        close = close or difflib.get_close_matches(name.strip(), sorted(names), n=1, cutoff=0.7)
        if close:
            hint = f" (did you mean '{close[0]}'?)"
    raise _Bad(
        f"unknown time zone {name!r}{hint}; use an IANA tz database name such as 'UTC', 'Europe/Berlin' or "
        "'America/New_York' (AWS ScheduleTimezone); list them with "
        "python -c 'import zoneinfo; print(sorted(zoneinfo.available_timezones()))' or see the 'TZ identifier' "
        "column of https://en.wikipedia.org/wiki/List_of_tz_database_time_zones"
    )


def _parse_schedule(text: str) -> tuple[_Kind | None, _Cron | timedelta | datetime | None, list[str]]:
    """(kind, compiled value, problems) of a schedule expression; kind is known even when it is wrong."""
    stripped = text.strip()
    if stripped.lower() == "now":
        return "now", None, []
    if not 1 <= len(text) <= 256:
        return None, None, [f"is {len(text)} characters long; AWS allows 1-256. {_FORMS}"]
    match = re.fullmatch(r"(cron|rate|at)\((.*)\)", stripped, re.DOTALL)
    if not match:
        return None, None, [_unknown_schedule(stripped)]
    kind, body = cast(_Kind, match.group(1)), match.group(2).strip()
    try:
        if kind == "cron":
            return kind, _parse_cron(body), []
        if kind == "rate":
            return kind, _parse_rate(body), []
        return kind, _parse_at(body), []
    except _Bad as exc:
        return kind, None, [str(exc)]
    except _CronProblems as exc:
        return kind, None, exc.messages


def _unknown_schedule(text: str) -> str:
    lowered = text.lower()
    if re.fullmatch(r"(cron|rate|at)\s*\(.*\)", lowered, re.DOTALL):
        keyword = lowered.split("(", 1)[0].strip()
        return f"write '{keyword}(' in lower case and without a space before the parenthesis"
    if re.fullmatch(r"\S+(\s+\S+){5}", text):
        return f"not a schedule; wrap a cron expression in cron(...): cron({text})"
    if re.fullmatch(r"\S+(\s+\S+){4,6}", text):
        return f"not a schedule; wrap an AWS cron expression in cron(...); {_FORMS}"
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T[\d:]+", text):
        return f"not a schedule; write a one-time window as at({text})"
    return f"not a schedule; {_FORMS}"


_RATE_UNITS = {"minute": timedelta(minutes=1), "hour": timedelta(hours=1), "day": timedelta(days=1)}


def _parse_rate(body: str) -> timedelta:
    parts = body.split()
    if len(parts) != 2:
        raise _Bad(
            "write rate(N unit) with a whole number N and a unit of minutes, hours or days, e.g. rate(1 day)"
        )
    number, unit = parts
    if not number.isdigit() or int(number) < 1:
        raise _Bad(
            f"{number!r} is not a whole number of 1 or more; write e.g. rate(90 minutes) instead of rate(1.5 hours)"
        )
    value = int(number)
    singular = unit[:-1] if unit.endswith("s") else unit
    if singular not in _RATE_UNITS:
        raise _Bad(
            f"unit {unit!r} is not supported; use minutes, hours or days, e.g. rate(7 days) for weekly"
        )
    if value == 1 and unit != singular:
        raise _Bad(f"use the singular '{singular}' with 1: rate(1 {singular}) (AWS)")
    if value != 1 and unit == singular:
        raise _Bad(f"use the plural '{singular}s' with {value}: rate({value} {singular}s) (AWS)")
    try:
        interval = _RATE_UNITS[singular] * value
    except OverflowError:
        interval = timedelta.max
    if interval < MIN_INTERVAL:
        raise _Bad(
            "maintenance windows cannot run more often than every 5 minutes (AWS); use rate(5 minutes) or slower"
        )
    if interval > HORIZON_END - datetime(MIN_YEAR, 1, 1, tzinfo=UTC):
        raise _Bad(f"the interval is longer than the {MIN_YEAR}-{MAX_YEAR} range schedules are computed in")
    return interval


def _parse_at(body: str) -> datetime:
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?([zZ]|[+-]\d{2}:?\d{2})", body):
        raise _Bad(
            "at(...) takes a wall-clock time without 'Z' or an offset; the zone comes from the timezone field "
            f"(UTC by default): write at({body[:19]})"
        )
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}", body):
        raise _Bad(f"add the seconds: at({body}:00)")
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}", body):
        raise _Bad("write at(YYYY-MM-DDTHH:MM:SS), e.g. at(2026-07-07T15:55:00)")
    try:
        moment = datetime.fromisoformat(body)
    except ValueError as exc:
        raise _Bad(f"{body} is not a valid date and time ({exc})") from None
    if not MIN_YEAR <= moment.year <= MAX_YEAR:
        raise _Bad(f"the year must be {MIN_YEAR}-{MAX_YEAR}, like AWS cron years")
    return moment


# ---- cron


class _CronProblems(Exception):
    def __init__(self, messages: list[str]):
        super().__init__("; ".join(messages))
        self.messages = messages


@dataclass(frozen=True)
class _Field:
    label: str
    low: int
    high: int
    names: tuple[str, ...] = ()
    """Names of ``low``, ``low + 1``, … (case-insensitive)."""

    def value(self, token: str) -> int:
        upper = token.upper()
        if upper in self.names:
            return self.low + self.names.index(upper)
        if not token.isdigit():
            if self.names:
                raise _Bad(
                    f"{self.label}: {token!r} is neither a number from {self.low} to {self.high} nor one of "
                    f"{self.names[0]}-{self.names[-1]}"
                )
            raise _Bad(f"{self.label}: {token!r} is not a number from {self.low} to {self.high}")
        number = int(token)
        if not self.low <= number <= self.high:
            hint = ""
            if self.label == "day-of-week" and number == 0:
                hint = " (AWS numbers the days 1-7 from SUN = 1; Unix cron's 0 = Sunday is 1 here)"
            raise _Bad(f"{self.label}: {number} is out of range {self.low}-{self.high}{hint}")
        return number

    def values(self, text: str) -> frozenset[int]:
        """The set a ``*`` / list / range / increment expression selects."""
        if text == "*":
            return frozenset(range(self.low, self.high + 1))
        if text == "?":
            raise _Bad(f"{self.label}: '?' is only allowed in day-of-month or day-of-week")
        selected: set[int] = set()
        for item in text.split(","):
            if not item:
                raise _Bad(f"{self.label}: empty item in the list {text!r}")
            if item == "*":
                raise _Bad(f"{self.label}: '*' must stand alone, not inside the list {text!r}")
            base, slash, step_text = item.partition("/")
            step = 1
            if slash:
                span = self.high - self.low + 1
                if not step_text.isdigit() or not 1 <= int(step_text) <= span:
                    raise _Bad(
                        f"{self.label}: the increment in {item!r} must be a whole number from 1 to {span}"
                    )
                step = int(step_text)
            if base == "*":
                first, last = self.low, self.high
            elif "-" in base:
                first_text, last_text = base.split("-", 1)
                first, last = self.value(first_text), self.value(last_text)
                if first > last:
                    raise _Bad(
                        f"{self.label}: the range {item!r} runs backwards and AWS ranges do not wrap around; "
                        f"split it, e.g. '{first_text}-{self._name(self.high, first_text)},"
                        f"{self._name(self.low, first_text)}-{last_text}'"
                    )
            else:
                first = self.value(base)
                last = self.high if slash else first
            selected.update(range(first, last + 1, step))
        return frozenset(selected)

    def _name(self, number: int, like: str) -> str:
        """``number`` spelt the way ``like`` was (a name or digits), for suggestions."""
        if self.names and not like.isdigit():
            return self.names[number - self.low]
        return str(number)


_MINUTES = _Field("minutes", 0, 59)
_HOURS = _Field("hours", 0, 23)
_DAY_OF_MONTH = _Field("day-of-month", 1, 31)
# Spelt out: calendar.month_abbr follows the process locale.
_MONTH = _Field(
    "month", 1, 12, ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")
)
_DAY_OF_WEEK = _Field("day-of-week", 1, 7, ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"))
_YEAR = _Field("year", MIN_YEAR, MAX_YEAR)


def _parse_cron(body: str) -> _Cron:
    parts = body.split()
    if len(parts) == 7:
        parts = _drop_seconds(parts)
    if len(parts) == 5:
        raise _Bad(
            "5 fields, but AWS cron has 6: minutes hours day-of-month month day-of-week year. A Unix crontab "
            "line lacks the year and counts weekdays 0-6 from Sunday, AWS 1-7 (SUN = 1); e.g. "
            f"{_EXAMPLE_CRON}"
        )
    if len(parts) != 6:
        raise _Bad(
            f"{len(parts)} fields, but AWS cron has 6: minutes hours day-of-month month day-of-week year "
            f"(optionally after a leading seconds field of 0), e.g. {_EXAMPLE_CRON}"
        )
    minutes_text, hours_text, dom_text, month_text, dow_text, year_text = (p.upper() for p in parts)
    dom_unset, dow_unset = dom_text == "?", dow_text == "?"
    if dom_unset == dow_unset:
        raise _Bad(_question_mark_fix(parts))

    messages: list[str] = []
    results: dict[str, Any] = {}
    parsers: tuple[tuple[str, Any], ...] = (
        ("minutes", lambda: _MINUTES.values(minutes_text)),
        ("hours", lambda: _HOURS.values(hours_text)),
        ("days", lambda: _dom_rule(dom_text) if dow_unset else _dow_rule(dow_text)),
        ("months", lambda: _MONTH.values(month_text)),
        ("years", lambda: _YEAR.values(year_text)),
    )
    for name, parse in parsers:
        try:
            results[name] = parse()
        except _Bad as exc:
            messages.append(str(exc))
    if not messages:
        gap = _shortest_gap(results["minutes"], results["hours"])
        if gap is not None and gap < 5:
            messages.append(
                f"minutes: {parts[0]!r} starts windows {gap} minute{'s' if gap != 1 else ''} apart; maintenance "
                "windows cannot run more often than every 5 minutes (AWS) — use a single minute, e.g. "
                f"cron(0 {' '.join(parts[1:])}), or at least 5 minutes between them"
            )
    if messages:
        raise _CronProblems(messages)
    return _Cron(
        minutes=tuple(sorted(results["minutes"])),
        hours=tuple(sorted(results["hours"])),
        day_rule=results["days"],
        months=tuple(sorted(results["months"])),
        years=tuple(sorted(results["years"])),
    )


def _drop_seconds(parts: list[str]) -> list[str]:
    """The six fields after AWS's optional leading seconds field, which patchflow accepts only as ``0``.

    AWS documents the field ("Reference: Cron and rate expressions for Systems Manager": ``cron(0 30 23 ? *
    TUE#3 *)`` is 23:30 on the third Tuesday) and lets maintenance windows start at any second
    (``cron(24 30 09 ? * * *)`` at 09:30:24). patchflow windows start on whole minutes, so any other value is
    refused with the six-field expression to write instead.
    """
    seconds, rest = parts[0], parts[1:]
    if not (seconds.isdigit() and int(seconds) == 0):
        raise _Bad(
            f"seconds: {seconds!r}: the optional leading seconds field must be 0 — patchflow windows start on "
            f"whole minutes (AWS would also start a window at a second such as 09:30:24); write "
            f"cron(0 {' '.join(rest)}) or drop the field: cron({' '.join(rest)})"
        )
    return rest


def _question_mark_fix(parts: list[str]) -> str:
    """The message for a cron that breaks AWS's "exactly one of day-of-month and day-of-week is ?" rule."""
    dom, dow = parts[2], parts[4]

    def with_days(new_dom: str, new_dow: str) -> str:
        return f"cron({' '.join([*parts[:2], new_dom, parts[3], new_dow, parts[5]])})"

    rule = "exactly one of day-of-month and day-of-week must be '?' (AWS)"
    if dom == "?":
        return f"{rule}; for every day write {with_days('*', '?')}"
    if dow == "*":
        return f"{rule}; write {with_days(dom, '?')}"
    if dom == "*":
        return f"{rule}; write {with_days('?', dow)}"
    return (
        f"{rule}: a window cannot require both a day of the month and a day of the week; write "
        f"{with_days(dom, '?')} or {with_days('?', dow)}"
    )


def _special(text: str, specials: str) -> bool:
    return any(ch in specials for ch in text)


def _dom_rule(text: str) -> _DayRule:
    if not _special(text, "LW"):
        return _MonthDays(tuple(sorted(_DAY_OF_MONTH.values(text))))
    if "," in text or "/" in text:
        raise _Bad(
            f"day-of-month: {text!r}: L and W must stand alone in the field; use one window per expression"
        )
    if text == "L":
        return _LastDay(weekday=False)
    if text == "LW":
        return _LastDay(weekday=True)
    nearest = re.fullmatch(r"(\d+)W", text)
    if nearest:
        return _NearestWeekday(_DAY_OF_MONTH.value(nearest.group(1)))
    if re.fullmatch(r"L-\d+", text):
        raise _Bad(f"day-of-month: {text!r}: offsets from the last day (L-n) are not supported; use L or LW")
    raise _Bad(
        f"day-of-month: {text!r} is not valid; use days 1-31 (lists, ranges, increments), L (last day), "
        "LW (last weekday) or nW (the weekday nearest day n, e.g. 15W)"
    )


def _dow_rule(text: str) -> _DayRule:
    if not _special(text, "L#"):
        return _WeekDays(_DAY_OF_WEEK.values(text))
    if "," in text or "/" in text or "-" in text:
        raise _Bad(
            f"day-of-week: {text!r}: L and # must stand alone in the field; use one window per expression"
        )
    if text == "L":
        return _WeekDays(frozenset({7}))
    last = re.fullmatch(r"(\w+)L", text)
    if last:
        return _NthWeekDay(_DAY_OF_WEEK.value(last.group(1)), -1)
    nth = re.fullmatch(r"(\w+)#(\d+)", text)
    if nth:
        day = _DAY_OF_WEEK.value(nth.group(1))
        if not 1 <= int(nth.group(2)) <= 5:
            raise _Bad(f"day-of-week: {text!r}: the occurrence after '#' must be 1-5, e.g. TUE#2")
        return _NthWeekDay(day, int(nth.group(2)))
    raise _Bad(
        f"day-of-week: {text!r} is not valid; use 1-7 or SUN-SAT (lists, ranges, increments), nL (last such "
        "day of the month, e.g. 6L or FRIL) or n#k (k-th such day, e.g. TUE#2)"
    )


def _shortest_gap(minutes: frozenset[int], hours: frozenset[int]) -> int | None:
    """Fewest minutes between two starts the minutes field allows, or None for a single start per hour
    whose hours are never consecutive."""
    ordered = sorted(minutes)
    gaps = [b - a for a, b in zip(ordered, ordered[1:], strict=False)]
    if any((hour + 1) % 24 in hours for hour in hours):
        gaps.append(60 - ordered[-1] + ordered[0])
    return min(gaps) if gaps else None
