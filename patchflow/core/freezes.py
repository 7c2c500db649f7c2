"""Change freezes: periods in which no maintenance window may open.

A freeze calendar is a list of entries, in a plan (``freezes:``) or in the global freeze file
(``PATCHFLOW_FREEZE_FILE``, the same list under ``freezes:``). Each entry has a ``name``, an optional
``timezone`` (IANA, default UTC) and exactly one of:

* ``from`` / ``to`` — a one-off period. Dates (``2026-11-26``) are whole days and ``to`` is *inclusive*
  (``from: 2026-12-24, to: 2026-12-26`` freezes the three days, midnight to midnight local time); date-times
  (``2026-11-27T18:00``) are instants and ``to`` is exclusive.
* ``every_year: {from: "12-20", to: "01-03"}`` — the same whole days every year, ``to`` inclusive; a range
  that wraps the year end runs from December into January of the next year.
* ``ical: PATH`` — every event of an iCalendar file (relative to the file naming it): all-day and timed
  events, ``RRULE``/``RDATE``/``EXDATE`` recurrences and ``TZID`` zones, as ``recurring-ical-events``
  expands them. An event without an end lasts one day (all-day) or is an instant (ignored).
  Expansion is bounded: an event repeating more than :data:`MAX_RECURRENCES` times from its start, or a file
  contributing more than :data:`MAX_ICAL_PERIODS` occurrences to one wave (``FREQ=MINUTELY``), is refused
  with the event named; files over :data:`MAX_ICAL_BYTES` are not read.

Semantics, applied by :func:`first_allowed_window` (the ``next_window`` activity) and shown by the dry run:

* A window whose **start** falls inside a freeze is skipped: the stage waits for the next window that opens
  outside every freeze.
* A window that opens before a freeze and would run into it is cut at the freeze's start: its cutoff and end
  become the freeze's start, so no new work starts in the freeze; what is left carries over to the next
  allowed window, as after any cutoff.
* An immediate (``now``) window that falls inside a freeze starts when the freeze ends, and is cut at the start
  of the next freeze.

Freezes cross the Temporal boundary as concrete UTC periods (:class:`FreezePeriod`) expanded once, when a wave
starts, over :data:`HORIZON` — workflows receive everything through their inputs, and a wave's freezes do not
change under it when someone edits the file later. Overlapping periods are merged. This module is pure.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from patchflow.core.documents import Document, PathPart, load_document, unknown_key
from patchflow.core.windows import Window, WindowSpec, current_or_next, next_windows, resolve_wall_time
from patchflow.errors import InputError, Problem

#: How far ahead freezes are expanded when a wave starts: a wave waits at most this long for a window.
HORIZON = timedelta(days=800)
#: Freezes that never leave room for a window: give up after this many skipped windows.
MAX_SKIPPED_WINDOWS = 10_000
#: Most occurrences of one recurring iCalendar event, counted from its DTSTART: expanding a calendar walks
#: every one of them (an event repeating every minute has 1.15 million in :data:`HORIZON`).
MAX_RECURRENCES = 50_000
#: Most freeze occurrences an iCalendar file may contribute to one wave: they travel in the wave's input,
#: which must stay small (a weekday freeze over :data:`HORIZON` has about 570).
MAX_ICAL_PERIODS = 2_000
#: Largest iCalendar file read (a year of a busy company calendar is well under 1 MiB).
MAX_ICAL_BYTES = 8 * 1024 * 1024

_ENTRY_KEYS = ("name", "timezone", "from", "to", "every_year", "ical")
_MONTH_DAY_RE = re.compile(r"^(\d{2})-(\d{2})$")


class FreezeError(InputError):
    """A freeze calendar (plan section, freeze file or iCalendar file) is malformed."""


@dataclass(frozen=True)
class FreezePeriod:
    """One concrete freeze: ``start <= t < end``, aware UTC instants."""

    name: str
    start: datetime
    end: datetime

    def contains(self, moment: datetime) -> bool:
        return self.start <= moment < self.end


@dataclass(frozen=True)
class FreezeRule:
    """One entry of a freeze calendar, as written (validated); :func:`expand` turns it into periods."""

    name: str
    timezone: str = "UTC"
    start: datetime | None = None
    """One-off: first frozen instant (aware)."""
    end: datetime | None = None
    """One-off: first instant after the freeze (aware)."""
    yearly_from: tuple[int, int] | None = None
    """Every year: (month, day) of the first frozen day."""
    yearly_to: tuple[int, int] | None = None
    """Every year: (month, day) of the last frozen day (inclusive)."""
    ical: Path | None = None


@dataclass(frozen=True)
class AllowedWindow:
    """A window a stage may use, after freezes: ``end``/``cutoff`` are None for an open-ended ``now`` window."""

    start: datetime
    end: datetime | None
    cutoff: datetime | None
    cut_by: str | None = None
    """The freeze that cuts this window short, if any."""
    skipped: tuple[tuple[datetime, str], ...] = ()
    """(start, freeze name) of the first window skipped inside each freeze passed over before this one."""
    delayed_by: str | None = None
    """``now`` windows: the freeze(s) that pushed the start to their end."""


# --------------------------------------------------------------------------------------------------------
# Parsing


def parse_freezes(
    data: Any, *, doc: Document, path: tuple[PathPart, ...], base_dir: Path, problems: list[Problem]
) -> list[FreezeRule]:
    """Validate a ``freezes:`` list; problems are appended (located in ``doc``), good entries returned."""

    def bad(where: tuple[PathPart, ...], message: str) -> None:
        problems.append(doc.problem(where, message))

    if data is None:
        return []
    if not isinstance(data, list):
        bad(
            path,
            "expected a list of freezes, e.g. [{name: year-end, every_year: {from: '12-20', to: '01-03'}}]",
        )
        return []
    rules: list[FreezeRule] = []
    for i, raw in enumerate(data):
        where = (*path, i)
        if not isinstance(raw, dict):
            bad(where, "expected a mapping with name and one of from/to, every_year or ical")
            continue
        rule = _parse_entry(raw, where, base_dir, bad)
        if rule is not None:
            rules.append(rule)
    return rules


def _parse_entry(
    raw: dict[str, Any], where: tuple[PathPart, ...], base_dir: Path, bad: Any
) -> FreezeRule | None:
    ok = True
    for key in raw:
        if key not in _ENTRY_KEYS:
            bad(
                (*where, str(key)),
                unknown_key(str(key), _ENTRY_KEYS),
            )
            ok = False
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        bad((*where, "name"), "required: a name for the freeze (shown when a window is skipped)")
        ok = False
    zone_name = raw.get("timezone", "UTC")
    zone: ZoneInfo | None = None
    try:
        zone = ZoneInfo(zone_name) if isinstance(zone_name, str) and zone_name else None
    except (ValueError, KeyError, OSError):
        zone = None
    if zone is None:
        bad((*where, "timezone"), f"{zone_name!r} is not an IANA time zone; write e.g. Europe/Berlin or UTC")
        ok = False
    forms = [k for k in ("from", "every_year", "ical") if k in raw]
    if "to" in raw and "from" not in raw:
        bad((*where, "from"), "a one-off freeze needs both from and to")
        return None
    if len(forms) != 1:
        bad(
            where,
            "give exactly one of from/to (a one-off period), every_year: {from: MM-DD, to: MM-DD} or ical: FILE",
        )
        return None
    if not ok or zone is None:
        return None
    label = str(name).strip()
    zone_key = str(zone_name)
    form = forms[0]
    if form == "from":
        if "to" not in raw:
            bad((*where, "to"), "a one-off freeze needs both from and to")
            return None
        start = _instant(raw["from"], zone, end=False, where=(*where, "from"), bad=bad)
        end = _instant(raw["to"], zone, end=True, where=(*where, "to"), bad=bad)
        if start is None or end is None:
            return None
        if end <= start:
            bad((*where, "to"), f"the freeze ends ({raw['to']}) before it starts ({raw['from']})")
            return None
        return FreezeRule(name=label, timezone=zone_key, start=start, end=end)
    if form == "every_year":
        body = raw["every_year"]
        if not isinstance(body, dict) or set(body) != {"from", "to"}:
            bad(
                (*where, "every_year"), "expected {from: MM-DD, to: MM-DD}, e.g. {from: '12-20', to: '01-03'}"
            )
            return None
        first = _month_day(body["from"], (*where, "every_year", "from"), bad)
        last = _month_day(body["to"], (*where, "every_year", "to"), bad)
        if first is None or last is None:
            return None
        return FreezeRule(name=label, timezone=zone_key, yearly_from=first, yearly_to=last)
    value = raw["ical"]
    if not isinstance(value, str) or not value:
        bad((*where, "ical"), "expected the path of an iCalendar (.ics) file, relative to this file")
        return None
    resolved = (base_dir / value).resolve()
    if not resolved.is_file():
        bad((*where, "ical"), f"{value!r} does not exist (looked for {resolved})")
        return None
    try:
        _ical_events(resolved, datetime(2000, 1, 1, tzinfo=UTC), datetime(2000, 1, 2, tzinfo=UTC), zone)
    except FreezeError as exc:
        bad((*where, "ical"), exc.summary)
        return None
    return FreezeRule(name=label, timezone=zone_key, ical=resolved)


def _instant(
    value: Any, zone: ZoneInfo, *, end: bool, where: tuple[PathPart, ...], bad: Any
) -> datetime | None:
    text = value.isoformat() if isinstance(value, date) else value
    if not isinstance(text, str):
        bad(where, f"{value!r}: expected a date (2026-12-24) or a local date-time (2026-12-24T18:00)")
        return None
    text = text.strip()
    try:
        if re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            day = date.fromisoformat(text)
            return _local_midnight(day + timedelta(days=1) if end else day, zone)
        moment = datetime.fromisoformat(text)
    except ValueError:
        bad(where, f"{text!r}: expected a date (2026-12-24) or a local date-time (2026-12-24T18:00)")
        return None
    if moment.tzinfo is None:
        # A local time a DST change skips starts when the gap ends, as maintenance windows do.
        return resolve_wall_time(moment, zone)
    return moment.astimezone(UTC)


def _month_day(value: Any, where: tuple[PathPart, ...], bad: Any) -> tuple[int, int] | None:
    match = _MONTH_DAY_RE.match(value) if isinstance(value, str) else None
    if match is not None:
        month, day = int(match.group(1)), int(match.group(2))
        try:
            date(2000, month, day)  # a leap year: 02-29 is allowed (frozen in leap years only)
            return month, day
        except ValueError:
            pass
    bad(where, f"{value!r}: expected a month-day MM-DD, e.g. '12-20' (quote it in YAML)")
    return None


@dataclass(frozen=True)
class FreezeCalendar:
    """The global freeze file: freezes for every plan, and who may override them in an emergency."""

    rules: tuple[FreezeRule, ...] = ()
    override_approvers: tuple[str, ...] = ()


def load_freeze_file(path: str | Path) -> FreezeCalendar:
    """The global freeze file: YAML/JSON ``{freezes: [...], override_approvers: [...]}``, or an iCalendar file
    whose events are all freezes."""
    source = Path(path)
    if source.suffix.lower() in (".ics", ".ical", ".icalendar"):
        if not source.is_file():
            raise FreezeError(f"freeze calendar {source} does not exist; check PATCHFLOW_FREEZE_FILE")
        probe = datetime(2000, 1, 1, tzinfo=UTC)
        _ical_events(source.resolve(), probe, probe + timedelta(days=1), ZoneInfo("UTC"))
        return FreezeCalendar(rules=(FreezeRule(name=source.stem, ical=source.resolve()),))
    doc = load_document(source, kind="freeze", error=FreezeError)
    problems: list[Problem] = []
    allowed = ("freezes", "override_approvers")
    if not isinstance(doc.data, dict):
        raise FreezeError(
            "a freeze file is a mapping: freezes: [ ... ] (the entries a plan's freezes take) and optionally "
            "override_approvers: [NAME, ...]",
            source=doc.source,
        )
    for key in doc.data:
        if key not in allowed:
            problems.append(doc.problem((str(key),), unknown_key(str(key), allowed)))
    rules = parse_freezes(
        doc.data.get("freezes"),
        doc=doc,
        path=("freezes",),
        base_dir=source.resolve().parent,
        problems=problems,
    )
    approvers = doc.data.get("override_approvers", [])
    if not isinstance(approvers, list) or not all(isinstance(a, str) and a.strip() for a in approvers):
        problems.append(doc.problem(("override_approvers",), "expected a list of names"))
        approvers = []
    if problems:
        raise FreezeError("invalid freeze file", source=doc.source, problems=problems)
    return FreezeCalendar(rules=tuple(rules), override_approvers=tuple(a.strip() for a in approvers))


# --------------------------------------------------------------------------------------------------------
# Expansion


def _local_midnight(day: date, zone: ZoneInfo) -> datetime:
    return datetime.combine(day, time(0), tzinfo=zone).astimezone(UTC)


def _yearly(rule: FreezeRule, start: datetime, end: datetime) -> Iterable[tuple[datetime, datetime]]:
    assert rule.yearly_from is not None and rule.yearly_to is not None
    zone = ZoneInfo(rule.timezone)
    wraps = rule.yearly_to < rule.yearly_from
    for year in range(start.year - 1, end.year + 1):
        # 02-29 in a common year: a freeze from it starts on 1 March, one to it ends on 28 February.
        first = _month_day_in(year, rule.yearly_from) or date(year, 3, 1)
        last = _month_day_in(year + 1 if wraps else year, rule.yearly_to) or date(
            year + 1 if wraps else year, 2, 28
        )
        if last >= first:
            yield _local_midnight(first, zone), _local_midnight(last + timedelta(days=1), zone)


def _month_day_in(year: int, month_day: tuple[int, int]) -> date | None:
    try:
        return date(year, *month_day)
    except ValueError:
        return None


def _printable(text: str, limit: int = 200) -> str:
    """A library's message about a broken file, safe to print: it may quote the file's raw (binary) bytes."""
    clean = "".join(c if c.isprintable() else "?" for c in text)
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"


def _event_label(event: Any) -> str:
    """How an operator finds the event in the file: its SUMMARY, else its UID."""
    return repr(_printable(str(event.get("SUMMARY") or event.get("UID") or "(no SUMMARY or UID)"), 80))


def _check_recurrences(path: Path, calendar: Any, end: datetime) -> None:
    """Refuse an event whose RRULE repeats more than :data:`MAX_RECURRENCES` times between its DTSTART and
    ``end`` before anything expands it: iCalendar expansion lists every occurrence from DTSTART on, so
    ``FREQ=MINUTELY`` or ``FREQ=SECONDLY`` would take minutes and gigabytes. Counting walks the rule lazily and
    stops at the limit."""
    from dateutil.rrule import rrulestr

    for event in calendar.walk("VEVENT"):
        rules = event.get("RRULE")
        if rules is None:
            continue
        begin = event.decoded("DTSTART")
        # Counting needs no time zones: naive local times are exact enough for a bound.
        first = begin.replace(tzinfo=None) if isinstance(begin, datetime) else datetime.combine(begin, time())
        stop = end.astimezone(UTC).replace(tzinfo=None) + timedelta(days=1)
        for rule in rules if isinstance(rules, list) else [rules]:
            text = rule.to_ical().decode()
            for count, occurrence in enumerate(rrulestr(text, dtstart=first, ignoretz=True), start=1):
                if occurrence > stop:
                    break
                if count > MAX_RECURRENCES:
                    raise FreezeError(
                        f"{path}: event {_event_label(event)} (RRULE:{_printable(text)}) repeats more than "
                        f"{MAX_RECURRENCES:,} times between its start ({first:%Y-%m-%d %H:%M}) and {end:%Y-%m-%d}; a change freeze "
                        "repeats at most daily: use a longer event (DTEND) with FREQ=DAILY or WEEKLY, a COUNT or "
                        "UNTIL, or a later DTSTART"
                    )


def _ical_events(
    path: Path, start: datetime, end: datetime, zone: ZoneInfo
) -> list[tuple[datetime, datetime, str | None]]:
    import icalendar
    import recurring_ical_events

    try:
        size = path.stat().st_size
        if size > MAX_ICAL_BYTES:
            raise FreezeError(
                f"{path}: {size:,} bytes is more than the {MAX_ICAL_BYTES // 2**20} MiB an iCalendar freeze "
                "file may have; export only the freeze calendar"
            )
        calendar = icalendar.Calendar.from_ical(path.read_bytes())
        _check_recurrences(path, calendar, end)
        events = recurring_ical_events.of(calendar).between(start, end)
    except FreezeError:
        raise
    except Exception as exc:  # noqa: BLE001 - the libraries raise many types for a bad file
        raise FreezeError(f"{path}: not a readable iCalendar file ({_printable(str(exc))})") from None
    if len(events) > MAX_ICAL_PERIODS:
        counts = Counter(_event_label(event) for event in events)
        label, count = counts.most_common(1)[0]
        raise FreezeError(
            f"{path}: {len(events):,} freeze occurrences between {start:%Y-%m-%d} and {end:%Y-%m-%d}, more than "
            f"the {MAX_ICAL_PERIODS:,} a wave can carry; event {label} alone occurs {count:,} times: make it "
            "one longer event, or repeat it less often"
        )
    out: list[tuple[datetime, datetime, str | None]] = []
    for event in events:
        begin = event.get("DTSTART")
        if begin is None:
            continue
        first = _as_instant(begin.dt, zone)
        finish_prop = event.get("DTEND")
        if finish_prop is not None:
            last = _as_instant(finish_prop.dt, zone)
        elif event.get("DURATION") is not None:
            last = first + event["DURATION"].dt
        elif not isinstance(begin.dt, datetime):
            last = first + timedelta(days=1)
        else:
            continue
        summary = event.get("SUMMARY")
        out.append((first, last, str(summary) if summary else None))
    return out


def _as_instant(value: date | datetime, zone: ZoneInfo) -> datetime:
    if isinstance(value, datetime):
        return (value if value.tzinfo is not None else value.replace(tzinfo=zone)).astimezone(UTC)
    return _local_midnight(value, zone)


def expand(rules: Sequence[FreezeRule], start: datetime, end: datetime) -> list[FreezePeriod]:
    """The concrete periods of ``rules`` that overlap ``[start, end)``, sorted, overlaps merged (names joined)."""
    spans: list[tuple[datetime, datetime, str]] = []
    for rule in rules:
        if rule.start is not None and rule.end is not None:
            spans.append((rule.start, rule.end, rule.name))
        elif rule.yearly_from is not None:
            spans.extend((a, b, rule.name) for a, b in _yearly(rule, start, end))
        elif rule.ical is not None:
            for a, b, summary in _ical_events(rule.ical, start, end, ZoneInfo(rule.timezone)):
                spans.append((a, b, f"{rule.name}: {summary}" if summary else rule.name))
    spans = sorted((a, b, n) for a, b, n in spans if b > start and a < end and b > a)
    merged: list[FreezePeriod] = []
    for a, b, name in spans:
        if merged and a <= merged[-1].end:
            last = merged[-1]
            names = last.name if name in last.name.split(" + ") else f"{last.name} + {name}"
            merged[-1] = FreezePeriod(names, last.start, max(last.end, b))
        else:
            merged.append(FreezePeriod(name, a, b))
    return merged


def periods_for_wave(rules: Sequence[FreezeRule], at: datetime) -> list[FreezePeriod]:
    """What a wave starting at ``at`` carries in its input: the periods from one day before to :data:`HORIZON`."""
    return expand(rules, at - timedelta(days=1), at + HORIZON)


# --------------------------------------------------------------------------------------------------------
# Windows and freezes


def freeze_at(periods: Sequence[FreezePeriod], moment: datetime) -> FreezePeriod | None:
    return next((p for p in periods if p.contains(moment)), None)


def _next_freeze_after(periods: Sequence[FreezePeriod], moment: datetime) -> FreezePeriod | None:
    return next((p for p in sorted(periods, key=lambda p: p.start) if p.start > moment), None)


def first_allowed_window(
    spec: WindowSpec, moment: datetime, periods: Sequence[FreezePeriod]
) -> AllowedWindow | None:
    """The window a stage arriving at ``moment`` may use, given the freezes (see the module docstring).

    Without freezes this is :func:`~patchflow.core.windows.current_or_next`. None when the schedule has no
    allowed window left (every remaining window opens inside a freeze, or the schedule ran out).
    """
    periods = sorted(periods, key=lambda p: p.start)
    if spec.schedule.strip().lower() == "now":
        start = moment
        delayed: list[str] = []
        while (frozen := freeze_at(periods, start)) is not None:
            delayed.append(frozen.name)
            start = frozen.end
        upcoming = _next_freeze_after(periods, start)
        cut = upcoming.start if upcoming is not None else None
        return AllowedWindow(
            start,
            cut,
            cut,
            upcoming.name if upcoming is not None else None,
            delayed_by=" + ".join(delayed) if delayed else None,
        )
    skipped: list[tuple[datetime, str]] = []
    window: Window | None = current_or_next(spec, moment)
    for _ in range(MAX_SKIPPED_WINDOWS):
        if window is None:
            return None
        frozen = freeze_at(periods, window.start)
        if frozen is not None:
            # Jump over the whole freeze at once (a 5-minute schedule through a month-long freeze is one step).
            skipped.append((window.start, frozen.name))
            window = _first_at_or_after(spec, window, frozen.end)
            continue
        upcoming = _next_freeze_after(periods, window.start)
        if upcoming is None or upcoming.start >= window.end:
            if moment <= window.cutoff:
                return AllowedWindow(window.start, window.end, window.cutoff, None, tuple(skipped))
        elif moment < min(window.cutoff, upcoming.start):
            cut = upcoming.start
            return AllowedWindow(
                window.start, min(window.end, cut), min(window.cutoff, cut), upcoming.name, tuple(skipped)
            )
        window = _following(spec, window)
    return None


def _first_at_or_after(spec: WindowSpec, window: Window, moment: datetime) -> Window | None:
    """The first window of ``window``'s series that starts at or after ``moment``; a ``rate`` series keeps its
    phase (every 5 minutes from 00:01 stays on :01, :06, …)."""
    if spec.schedule.strip().lower().startswith("rate"):
        pair = next_windows(spec, window.start, 2)
        if len(pair) < 2:
            return None
        interval = pair[1].start - pair[0].start
        steps = -((window.start - moment) // interval)  # ceil((moment - start) / interval)
        return next_windows(spec, window.start + max(steps, 1) * interval, 1)[0]
    later = next_windows(spec, moment, 1)
    return later[0] if later else None


def _following(spec: WindowSpec, window: Window | AllowedWindow) -> Window | None:
    """The window of the series that starts after ``window`` (rate series continue from its start)."""
    later = [w for w in next_windows(spec, window.start, 2) if w.start > window.start]
    return later[0] if later else None


def preview(
    spec: WindowSpec, after: datetime, count: int, periods: Sequence[FreezePeriod]
) -> list[AllowedWindow]:
    """The next ``count`` allowed windows from ``after`` (each with the windows skipped just before it)."""
    out: list[AllowedWindow] = []
    moment = after
    while len(out) < count:
        window = first_allowed_window(spec, moment, periods)
        if window is None:
            break
        out.append(window)
        following = None if spec.schedule.strip().lower() == "now" else _following(spec, window)
        if following is None:
            break
        moment = following.start
    return out


def freeze_note(window: AllowedWindow) -> str:
    """One line for the operator: which freezes moved or shortened this window ("" when none did)."""
    parts: list[str] = []
    if window.delayed_by is not None:
        parts.append(f"delayed until {window.start.isoformat()} by change freeze {window.delayed_by}")
    if window.skipped:
        names = sorted({name for _, name in window.skipped})
        parts.append(f"windows inside change freeze {', '.join(names)} skipped")
    if window.cut_by is not None and window.end is not None:
        parts.append(f"cut short at {window.end.isoformat()} by change freeze {window.cut_by}")
    return "; ".join(parts)
