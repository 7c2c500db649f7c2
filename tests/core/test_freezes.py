"""Change freezes (:mod:`patchflow.core.freezes`): located errors, expansion to UTC periods, the windows a stage
may use around them, the global freeze file and the dry run.

Every expected instant is worked out by hand from the calendar and written out in UTC, with the local time it
stands for in a comment; nothing here asks the code under test for its own expectation.

Calendar facts used below: 2026-11-01 and 2026-03-08 are the US DST changes (America/New_York, EDT -4 ⇄ EST
-5), 2026-10-25 and 2027-03-28 the EU ones (Europe/Berlin, CEST +2 ⇄ CET +1). The Tuesdays of November 2026
are the 3rd, 10th, 17th and 24th, of December 2026 the 1st, 8th, 15th, 22nd and 29th, of January 2027 the
5th, 12th, 19th and 26th, of February 2027 the 2nd, 9th, 16th and 23rd, of March 2027 the 2nd, 9th, 16th,
23rd and 30th. 2028 and 2032 are leap years, 2027 is not.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from patchflow.config import Settings
from patchflow.control.waves import WaveActionRefused, check_freeze_override, freeze_calendar, plan_freezes
from patchflow.core.freezes import (
    HORIZON,
    FreezeError,
    FreezePeriod,
    FreezeRule,
    expand,
    first_allowed_window,
    freeze_note,
    load_freeze_file,
    periods_for_wave,
    preview,
)
from patchflow.core.plans import PlanError, load_plan
from patchflow.core.windows import WindowSpec
from patchflow.errors import InputError
from tests.conftest import REPO_ROOT
from tests.test_cli import run as run_cli

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "freezes"
HOLIDAYS_ICS = FIXTURES / "holidays.ics"
YEAR_END_PLAN = FIXTURES / "year-end-plan.yaml"

# Lines 1-7 of every plan written here; the freeze section starts on line 8.
PLAN_HEAD = (
    "name: p\n"
    "baseline: b.yaml\n"
    "catalog: c.json\n"
    "executor: {kind: simulated, fleet: f.yaml}\n"
    "stages:\n"
    "  - name: dev\n"
    "    targets: {patch_group: dev}\n"
)


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, tzinfo=UTC)


def write_plan(directory: Path, body: str) -> Path:
    """A minimal valid plan (stages on lines 5-7) followed by ``body`` from line 8."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "b.yaml").write_text("Name: ok-name\nOperatingSystem: UBUNTU\n")
    (directory / "c.json").write_text("[]")
    (directory / "f.yaml").write_text("instances: []\n")
    path = directory / "plan.yaml"
    path.write_text(PLAN_HEAD + body)
    return path


def freeze_file(directory: Path, body: str, name: str = "freezes.yaml") -> Path:
    path = directory / name
    path.write_text(body)
    return path


def rules(directory: Path, entries: str) -> tuple[FreezeRule, ...]:
    """The rules of a freeze file whose ``freezes:`` list is ``entries`` (YAML, indented by two)."""
    return load_freeze_file(freeze_file(directory, "freezes:\n" + entries)).rules


def spans(periods: list[FreezePeriod]) -> list[tuple[datetime, datetime]]:
    return [(p.start, p.end) for p in periods]


# ======================================================================================================
# Parsing: every mistake located as file:line: field.path


@pytest.mark.parametrize(
    ("body", "located", "message"),
    [
        pytest.param(
            "freezes:\n  - name: x\n    timezon: UTC\n    from: 2026-12-01\n    to: 2026-12-02\n",
            ":10: freezes[0].timezon: ",
            "did you mean 'timezone'",
            id="unknown-key-with-suggestion",
        ),
        pytest.param(
            "freezes:\n  - from: 2026-12-01\n    to: 2026-12-02\n",
            ":9: freezes[0].name: ",
            "required",
            id="missing-name",
        ),
        pytest.param(
            "freezes:\n  - name: '  '\n    from: 2026-12-01\n    to: 2026-12-02\n",
            ":9: freezes[0].name: ",
            "required",
            id="blank-name",
        ),
        pytest.param(
            "freezes:\n  - name: x\n    timezone: Mars/Olympus\n    from: 2026-12-01\n    to: 2026-12-02\n",
            ":10: freezes[0].timezone: ",
            "'Mars/Olympus' is not an IANA time zone",
            id="bad-timezone",
        ),
        pytest.param(
            "freezes:\n  - name: x\n    from: 2026-12-01\n",
            ":9: freezes[0].to: ",
            "needs both from and to",
            id="from-without-to",
        ),
        pytest.param(
            "freezes:\n  - name: x\n    to: 2026-12-01\n",
            ":9: freezes[0].from: ",
            "needs both from and to",
            id="to-without-from",
        ),
        pytest.param(
            "freezes:\n  - name: x\n    from: 2026-12-05\n    to: 2026-12-01\n",
            ":11: freezes[0].to: ",
            "ends (2026-12-01) before it starts (2026-12-05)",
            id="to-before-from",
        ),
        pytest.param(
            "freezes:\n  - name: x\n    from: 2026-12-05T18:00\n    to: 2026-12-05T06:00\n",
            ":11: freezes[0].to: ",
            "before it starts",
            id="date-time-to-before-from",
        ),
        pytest.param(
            "freezes:\n  - name: x\n    from: next tuesday\n    to: 2026-12-01\n",
            ":10: freezes[0].from: ",
            "expected a date (2026-12-24) or a local date-time",
            id="not-a-date",
        ),
        pytest.param(
            "freezes:\n  - name: x\n    every_year: {from: '13-01', to: '01-03'}\n",
            ":10: freezes[0].every_year.from: ",
            "'13-01': expected a month-day MM-DD",
            id="month-13",
        ),
        pytest.param(
            "freezes:\n  - name: x\n    every_year: {from: '01-20', to: '02-30'}\n",
            ":10: freezes[0].every_year.to: ",
            "'02-30'",
            id="february-30",
        ),
        pytest.param(
            "freezes:\n  - name: x\n    every_year: {from: '12-20', to: '1-3'}\n",
            ":10: freezes[0].every_year.to: ",
            "MM-DD",
            id="single-digit-month-day",
        ),
        pytest.param(
            "freezes:\n  - name: x\n    every_year: {from: '12-20'}\n",
            ":10: freezes[0].every_year: ",
            "expected {from: MM-DD, to: MM-DD}",
            id="every-year-without-to",
        ),
        pytest.param(
            "freezes:\n  - name: x\n    every_year: {from: '12-20', to: '01-03'}\n    ical: holidays.ics\n",
            ":9: freezes[0]: ",
            "give exactly one of",
            id="every-year-and-ical",
        ),
        pytest.param(
            "freezes:\n  - name: x\n    from: 2026-12-01\n    to: 2026-12-02\n    every_year: {from: '12-20', to: '01-03'}\n",
            ":9: freezes[0]: ",
            "give exactly one of",
            id="one-off-and-every-year",
        ),
        pytest.param("freezes:\n  - name: x\n", ":9: freezes[0]: ", "give exactly one of", id="no-period"),
        pytest.param(
            "freezes:\n  - name: x\n    ical: nope.ics\n",
            ":10: freezes[0].ical: ",
            "'nope.ics' does not exist",
            id="missing-ics",
        ),
        pytest.param(
            "freezes:\n  - name: x\n    ical: malformed.ics\n",
            ":10: freezes[0].ical: ",
            "not a readable iCalendar file",
            id="malformed-ics",
        ),
        pytest.param(
            "freezes:\n  - name: x\n    ical: garbage.ics\n",
            ":10: freezes[0].ical: ",
            "not a readable iCalendar file",
            id="not-an-ics-at-all",
        ),
        pytest.param(
            "freezes: {name: x, from: 2026-12-01, to: 2026-12-02}\n",
            ":8: freezes: ",
            "expected a list of freezes",
            id="freezes-not-a-list",
        ),
        pytest.param(
            "freezes:\n  - year-end\n", ":9: freezes[0]: ", "expected a mapping", id="entry-not-a-mapping"
        ),
        pytest.param(
            "freeze_override_approvers: alice\n",
            ":8: freeze_override_approvers: ",
            "expected a list",
            id="approvers-not-a-list",
        ),
        pytest.param(
            "freeze_override_approvers: [alice, 3]\n",
            ":8: freeze_override_approvers: ",
            "expected a list",
            id="approver-not-a-name",
        ),
        pytest.param(
            "freeze_override_approvers: [alice, '']\n",
            ":8: freeze_override_approvers: ",
            "expected a list",
            id="approver-empty",
        ),
        pytest.param(
            "freezes:\n  - name: x\n    from: 2026-12-01\n    to: 2026-12-02\nfreeze_overide_approvers: [a]\n",
            ":12: freeze_overide_approvers: ",
            "did you mean 'freeze_override_approvers'",
            id="plan-key-typo",
        ),
    ],
)
def test_plan_freeze_errors_are_located(tmp_path: Path, body: str, located: str, message: str) -> None:
    shutil.copy(HOLIDAYS_ICS, tmp_path / "holidays.ics")
    shutil.copy(FIXTURES / "malformed.ics", tmp_path / "malformed.ics")
    (tmp_path / "garbage.ics").write_text("this is not a calendar\n")
    plan = write_plan(tmp_path, body)
    with pytest.raises(PlanError) as info:
        load_plan(plan)
    text = str(info.value)
    assert any(f"{plan}{located}" in line and message in line for line in text.splitlines()), text


def test_every_mistake_in_the_freezes_is_reported_at_once(tmp_path: Path) -> None:
    body = (
        "freezes:\n"  # 8
        "  - name: a\n"  # 9
        "    timezone: Europe/Berlinn\n"  # 10
        "    from: 2026-12-01\n"  # 11
        "    to: 2026-12-02\n"  # 12
        "  - name: b\n"  # 13
        "    every_year: {from: '12-32', to: '01-03'}\n"  # 14
        "freeze_override_approvers: nobody\n"  # 15
    )
    plan = write_plan(tmp_path, body)
    with pytest.raises(PlanError) as info:
        load_plan(plan)
    error = info.value
    assert {p.path for p in error.problems} == {
        "freezes[0].timezone",
        "freezes[1].every_year.from",
        "freeze_override_approvers",
    }
    assert {p.path: p.line for p in error.problems} == {
        "freezes[0].timezone": 10,
        "freezes[1].every_year.from": 14,
        "freeze_override_approvers": 15,
    }


def test_valid_freezes_parse_into_rules(tmp_path: Path) -> None:
    shutil.copy(HOLIDAYS_ICS, tmp_path / "holidays.ics")
    plan = load_plan(
        write_plan(
            tmp_path,
            "freezes:\n"
            "  - name: launch\n    timezone: America/New_York\n    from: 2026-11-27T18:00\n    to: 2026-11-30T06:00\n"
            "  - name: year-end\n    timezone: Europe/Berlin\n    every_year: {from: '12-20', to: '01-03'}\n"
            "  - name: holidays\n    ical: holidays.ics\n"
            "freeze_override_approvers: [' cio ', sre-lead]\n",
        )
    )
    launch, year_end, holidays = plan.freezes
    # 18:00 EST (-5) and 06:00 EST: the date-times are local to the entry's zone.
    assert (launch.name, launch.start, launch.end) == ("launch", utc(2026, 11, 27, 23), utc(2026, 11, 30, 11))
    assert (year_end.yearly_from, year_end.yearly_to, year_end.timezone) == (
        (12, 20),
        (1, 3),
        "Europe/Berlin",
    )
    assert holidays.ical == (tmp_path / "holidays.ics").resolve() and holidays.timezone == "UTC"
    assert plan.freeze_override_approvers == ("cio", "sre-lead")


def test_unquoted_month_days_are_read_like_quoted_ones(tmp_path: Path) -> None:
    """YAML 1.1 has no reading of ``12-20`` other than the string (it is neither an int, a float nor a
    sexagesimal number), so the unquoted form must mean the same as the quoted one."""
    unquoted = load_plan(
        write_plan(tmp_path / "u", "freezes:\n  - name: ye\n    every_year: {from: 12-20, to: 01-03}\n")
    )
    quoted = load_plan(
        write_plan(tmp_path / "q", "freezes:\n  - name: ye\n    every_year: {from: '12-20', to: '01-03'}\n")
    )
    assert (unquoted.freezes[0].yearly_from, unquoted.freezes[0].yearly_to) == ((12, 20), (1, 3))
    assert unquoted.freezes == quoted.freezes


def test_unquoted_dates_and_date_times_stay_local(tmp_path: Path) -> None:
    """PyYAML would turn an unquoted date into a ``date`` and a date-time into a naive UTC ``datetime``; the
    freeze must still be read in the entry's zone."""
    plan = load_plan(
        write_plan(
            tmp_path,
            "freezes:\n"
            "  - name: day\n    timezone: Europe/Berlin\n    from: 2026-12-24\n    to: 2026-12-24\n"
            "  - name: evening\n    timezone: Europe/Berlin\n    from: 2026-12-24T18:00\n    to: 2026-12-24 23:30\n",
        )
    )
    day, evening = plan.freezes
    assert (day.start, day.end) == (utc(2026, 12, 23, 23), utc(2026, 12, 24, 23))  # midnight to midnight CET
    assert (evening.start, evening.end) == (utc(2026, 12, 24, 17), utc(2026, 12, 24, 22, 30))


def test_ical_path_is_relative_to_the_plan(tmp_path: Path) -> None:
    (tmp_path / "calendars").mkdir()
    shutil.copy(HOLIDAYS_ICS, tmp_path / "calendars" / "company.ics")
    plan = load_plan(
        write_plan(tmp_path / "plans", "freezes:\n  - name: company\n    ical: ../calendars/company.ics\n")
    )
    assert plan.freezes[0].ical == (tmp_path / "calendars" / "company.ics").resolve()


# ---- the global freeze file


def test_freeze_file_errors_are_located(tmp_path: Path) -> None:
    path = freeze_file(
        tmp_path,
        "freeze:\n"  # 1
        "  - name: x\n"  # 2
        "override_approvers: cio\n",  # 3
    )
    with pytest.raises(FreezeError) as info:
        load_freeze_file(path)
    text = str(info.value)
    assert f"{path}:1: freeze: unknown key; did you mean 'freezes'?" in text
    assert f"{path}:3: override_approvers: expected a list of names" in text


def test_freeze_file_entries_are_located_like_a_plans(tmp_path: Path) -> None:
    path = freeze_file(tmp_path, "freezes:\n  - name: x\n    every_year: {from: '02-30', to: '03-01'}\n")
    with pytest.raises(FreezeError) as info:
        load_freeze_file(path)
    assert f"{path}:3: freezes[0].every_year.from: '02-30'" in str(info.value)


def test_freeze_file_must_be_a_mapping(tmp_path: Path) -> None:
    path = freeze_file(tmp_path, "- name: x\n  from: 2026-12-01\n  to: 2026-12-02\n")
    with pytest.raises(FreezeError, match="a freeze file is a mapping"):
        load_freeze_file(path)


def test_missing_freeze_file_says_so_once(tmp_path: Path) -> None:
    with pytest.raises(FreezeError) as info:
        load_freeze_file(tmp_path / "nope.yaml")
    text = str(info.value)
    assert str(tmp_path / "nope.yaml") in text and "not found" in text
    assert "file file" not in text, text


def test_missing_and_malformed_ics_freeze_files(tmp_path: Path) -> None:
    with pytest.raises(FreezeError, match=r"does not exist; check PATCHFLOW_FREEZE_FILE"):
        load_freeze_file(tmp_path / "nope.ics")
    with pytest.raises(FreezeError, match="not a readable iCalendar file"):
        load_freeze_file(FIXTURES / "malformed.ics")


def test_ics_freeze_file_freezes_every_event(tmp_path: Path) -> None:
    calendar = load_freeze_file(HOLIDAYS_ICS)
    assert [r.name for r in calendar.rules] == ["holidays"] and calendar.override_approvers == ()
    periods = expand(calendar.rules, utc(2026, 12, 20), utc(2027, 1, 10))
    # Floating times and all-day events of a global .ics file are read in UTC.
    assert spans(periods) == [
        (utc(2026, 12, 24), utc(2026, 12, 27)),
        (utc(2026, 12, 31), utc(2027, 1, 1)),
    ]
    assert [p.name for p in periods] == ["holidays: Christmas", "holidays: New Year's Eve"]


def test_freeze_file_ical_is_relative_to_the_freeze_file(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    shutil.copy(HOLIDAYS_ICS, tmp_path / "etc" / "holidays.ics")
    path = freeze_file(tmp_path / "etc", "freezes:\n  - name: h\n    ical: holidays.ics\n")
    assert load_freeze_file(path).rules[0].ical == (tmp_path / "etc" / "holidays.ics").resolve()


# ======================================================================================================
# Expansion


def test_one_off_dates_are_whole_local_days_with_inclusive_end(tmp_path: Path) -> None:
    (rule,) = rules(
        tmp_path, "  - name: xmas\n    timezone: Europe/Berlin\n    from: 2026-12-24\n    to: 2026-12-26\n"
    )
    (period,) = expand([rule], utc(2026, 1, 1), utc(2028, 1, 1))
    # 2026-12-24 00:00 CET .. 2026-12-27 00:00 CET: three whole days.
    assert (period.name, period.start, period.end) == ("xmas", utc(2026, 12, 23, 23), utc(2026, 12, 26, 23))
    assert period.contains(utc(2026, 12, 23, 23)) and not period.contains(utc(2026, 12, 23, 22, 59))
    assert period.contains(utc(2026, 12, 26, 22, 59)) and not period.contains(utc(2026, 12, 26, 23))


@pytest.mark.parametrize(
    ("first", "last", "start", "end", "hours"),
    [
        # Fall back inside: 2026-10-31 00:00 EDT (-4) .. 2026-11-02 00:00 EST (-5) lasts 49 hours.
        ("2026-10-31", "2026-11-01", utc(2026, 10, 31, 4), utc(2026, 11, 2, 5), 49),
        # Spring forward inside: 2026-03-08 00:00 EST .. 2026-03-09 00:00 EDT lasts 23 hours.
        ("2026-03-08", "2026-03-08", utc(2026, 3, 8, 5), utc(2026, 3, 9, 4), 23),
    ],
)
def test_one_off_dates_across_a_dst_change(
    tmp_path: Path, first: str, last: str, start: datetime, end: datetime, hours: int
) -> None:
    (rule,) = rules(
        tmp_path, f"  - name: x\n    timezone: America/New_York\n    from: {first}\n    to: {last}\n"
    )
    (period,) = expand([rule], utc(2026, 1, 1), utc(2027, 1, 1))
    assert (period.start, period.end) == (start, end)
    assert period.end - period.start == timedelta(hours=hours)


def test_one_off_date_times_have_an_exclusive_end(tmp_path: Path) -> None:
    (local, explicit) = rules(
        tmp_path,
        "  - name: launch\n    timezone: America/New_York\n    from: '2026-11-01T00:30'\n    to: '2026-11-01T03:00'\n"
        "  - name: utc\n    timezone: Europe/Berlin\n    from: '2026-11-27T18:00:00+00:00'\n    to: '2026-11-27T19:00:00Z'\n",
    )
    (period,) = expand([local], utc(2026, 10, 1), utc(2026, 12, 1))
    # 00:30 EDT (-4) to 03:00 EST (-5): 3.5 hours of elapsed time across the fall-back.
    assert (period.start, period.end) == (utc(2026, 11, 1, 4, 30), utc(2026, 11, 1, 8))
    assert period.contains(utc(2026, 11, 1, 7, 59)) and not period.contains(utc(2026, 11, 1, 8))
    (period,) = expand([explicit], utc(2026, 10, 1), utc(2026, 12, 1))
    assert (period.start, period.end) == (
        utc(2026, 11, 27, 18),
        utc(2026, 11, 27, 19),
    )  # offsets win over zone


@pytest.mark.parametrize(
    ("entry", "after", "before", "expected"),
    [
        pytest.param(
            "  - name: year-end\n    timezone: Europe/Berlin\n    every_year: {from: '12-20', to: '01-03'}\n",
            utc(2026, 1, 1),
            utc(2028, 1, 10),
            # Dec 20 00:00 CET .. Jan 4 00:00 CET of the next year; the one begun in December 2025 is still on.
            [
                (utc(2025, 12, 19, 23), utc(2026, 1, 3, 23)),
                (utc(2026, 12, 19, 23), utc(2027, 1, 3, 23)),
                (utc(2027, 12, 19, 23), utc(2028, 1, 3, 23)),
            ],
            id="wraps_the_year_end_in_local_time",
        ),
        pytest.param(
            "  - name: q4\n    timezone: America/New_York\n    every_year: {from: '10-30', to: '11-02'}\n",
            utc(2026, 6, 1),
            utc(2027, 6, 1),
            # 2026-10-30 00:00 EDT .. 2026-11-03 00:00 EST (clocks fell back on Nov 1 2026).
            [(utc(2026, 10, 30, 4), utc(2026, 11, 3, 5))],
            id="in_new_york_across_dst",
        ),
        pytest.param(
            "  - name: july-4\n    timezone: America/New_York\n    every_year: {from: '07-04', to: '07-04'}\n",
            utc(2026, 1, 1),
            utc(2028, 1, 1),
            [(utc(2026, 7, 4, 4), utc(2026, 7, 5, 4)), (utc(2027, 7, 4, 4), utc(2027, 7, 5, 4))],
            id="single_day",
        ),
        pytest.param(
            "  - name: leap\n    every_year: {from: '02-29', to: '02-29'}\n",
            utc(2026, 1, 1),
            utc(2033, 1, 1),
            [(utc(2028, 2, 29), utc(2028, 3, 1)), (utc(2032, 2, 29), utc(2032, 3, 1))],
            id="february_29_is_frozen_in_leap_years_only",
        ),
        pytest.param(
            "  - name: fiestas\n    timezone: America/Santiago\n    every_year: {from: '09-06', to: '09-06'}\n",
            utc(2026, 1, 1),
            utc(2027, 1, 1),
            # America/Santiago springs forward at midnight: 2026-09-06 begins at 01:00 -03 (04:00 UTC).
            [(utc(2026, 9, 6, 4), utc(2026, 9, 7, 3))],
            id="where_local_midnight_does_not_exist",
        ),
    ],
)
def test_every_year(
    tmp_path: Path,
    entry: str,
    after: datetime,
    before: datetime,
    expected: list[tuple[datetime, datetime]],
) -> None:
    """``every_year`` freezes whole local days, from the first's midnight to the midnight after the last."""
    (rule,) = rules(tmp_path, entry)
    periods = expand([rule], after, before)
    assert spans(periods) == expected
    assert {p.name for p in periods} == {rule.name}


@pytest.mark.parametrize(
    ("first", "last", "start", "end"),
    [
        # "All of February": in 2027 that is Feb 1-28. 02-29 is frozen in leap years only, the other days always.
        ("02-01", "02-29", utc(2027, 2, 1), utc(2027, 3, 1)),
        # A winter freeze through the end of February, starting in December 2026.
        ("12-20", "02-29", utc(2026, 12, 20), utc(2027, 3, 1)),
    ],
)
def test_a_range_ending_on_february_29_still_freezes_its_other_days_in_common_years(
    tmp_path: Path, first: str, last: str, start: datetime, end: datetime
) -> None:
    (rule,) = rules(tmp_path, f"  - name: feb\n    every_year: {{from: '{first}', to: '{last}'}}\n")
    periods = expand([rule], utc(2027, 1, 10), utc(2027, 6, 1))
    assert spans(periods) == [(start, end)]


def test_overlapping_periods_are_merged(tmp_path: Path) -> None:
    entries = rules(
        tmp_path,
        "  - name: launch\n    from: 2026-12-01\n    to: 2026-12-04\n"  # Dec 1 .. Dec 5 00:00
        "  - name: audit\n    from: 2026-12-03\n    to: 2026-12-09\n"  # Dec 3 .. Dec 10 00:00
        "  - name: inside\n    from: 2026-12-02\n    to: 2026-12-02\n"  # Dec 2 .. Dec 3, inside launch
        "  - name: after\n    from: '2026-12-09T23:00'\n    to: '2026-12-10T06:00'\n"  # overlaps audit's end
        "  - name: year-end\n    every_year: {from: '12-20', to: '01-03'}\n"
        "  - name: xmas\n    from: 2026-12-24\n    to: 2026-12-26\n",  # inside year-end
    )
    periods = expand(entries, utc(2026, 11, 1), utc(2027, 2, 1))
    assert spans(periods) == [(utc(2026, 12, 1), utc(2026, 12, 10, 6)), (utc(2026, 12, 20), utc(2027, 1, 4))]
    first, second = periods
    assert set(first.name.split(" + ")) == {"launch", "audit", "inside", "after"}
    assert set(second.name.split(" + ")) == {"year-end", "xmas"}


def test_expand_keeps_only_periods_overlapping_the_range(tmp_path: Path) -> None:
    entries = rules(
        tmp_path,
        "  - name: past\n    from: 2026-01-01\n    to: 2026-01-02\n"
        "  - name: running\n    from: 2026-03-01\n    to: 2026-03-31\n"
        "  - name: later\n    from: 2027-01-01\n    to: 2027-01-02\n",
    )
    assert [p.name for p in expand(entries, utc(2026, 3, 15), utc(2026, 12, 31))] == ["running"]


def test_ical_events_in_the_rules_zone(tmp_path: Path) -> None:
    shutil.copy(HOLIDAYS_ICS, tmp_path / "holidays.ics")
    (rule,) = rules(tmp_path, "  - name: cal\n    timezone: Europe/Berlin\n    ical: holidays.ics\n")
    periods = expand([rule], utc(2026, 10, 1), utc(2027, 2, 1))
    assert [(p.name, p.start, p.end) for p in periods] == [
        # TZID=Europe/Berlin 20:00 CEST (+2) .. 06:00 CET (+1) on the night the clocks go back: 11 hours.
        ("cal: Cutover night", utc(2026, 10, 24, 18), utc(2026, 10, 25, 5)),
        # RRULE weekly, COUNT=4 from Nov 2, EXDATE Nov 9; DURATION PT2H instead of DTEND.
        ("cal: Board meeting", utc(2026, 11, 2, 8), utc(2026, 11, 2, 10)),
        ("cal: Board meeting", utc(2026, 11, 16, 8), utc(2026, 11, 16, 10)),
        ("cal: Board meeting", utc(2026, 11, 23, 8), utc(2026, 11, 23, 10)),
        # TZID=America/New_York 18:00 EST .. 06:00 EST, whatever the rule's own zone.
        ("cal: Black Friday", utc(2026, 11, 26, 23), utc(2026, 11, 27, 11)),
        # (The timed event without an end on Dec 1 is an instant: ignored.)
        # Floating 22:00 .. 02:00: read in the rule's zone, CET.
        ("cal: Floating release", utc(2026, 12, 15, 21), utc(2026, 12, 16, 1)),
        # All-day Dec 24 .. DTEND Dec 27 (exclusive, per RFC 5545): local midnights in CET.
        ("cal: Christmas", utc(2026, 12, 23, 23), utc(2026, 12, 26, 23)),
        # All-day without DTEND: one day.
        ("cal: New Year's Eve", utc(2026, 12, 30, 23), utc(2026, 12, 31, 23)),
    ]


def test_ical_weekly_rule_with_tzid_follows_dst_and_rdate_adds_days(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "business-hours.ics", tmp_path / "bh.ics")
    (rule,) = rules(tmp_path, "  - name: bh\n    timezone: Europe/Berlin\n    ical: bh.ics\n")
    periods = expand([rule], utc(2026, 3, 27), utc(2026, 3, 31))
    assert [(p.name, p.start, p.end) for p in periods] == [
        # Friday 08:00-18:00 CET (+1).
        ("bh: Business hours", utc(2026, 3, 27, 7), utc(2026, 3, 27, 17)),
        # Saturday: the all-day quarter close (DTSTART), midnight to midnight CET.
        ("bh: Quarter close", utc(2026, 3, 27, 23), utc(2026, 3, 28, 23)),
        # Monday after the clocks went forward: 08:00-18:00 CEST (+2).
        ("bh: Business hours", utc(2026, 3, 30, 6), utc(2026, 3, 30, 16)),
    ]
    # RDATE: the quarter close again on Saturday June 27 and September 26 (CEST).
    closes = [
        (p.start, p.end) for p in expand([rule], utc(2026, 4, 1), utc(2026, 12, 31)) if "Quarter" in p.name
    ]
    assert closes == [
        (utc(2026, 6, 26, 22), utc(2026, 6, 27, 22)),
        (utc(2026, 9, 25, 22), utc(2026, 9, 26, 22)),
    ]


def test_open_ended_ical_rule_over_the_wave_horizon(tmp_path: Path) -> None:
    shutil.copy(FIXTURES / "business-hours.ics", tmp_path / "bh.ics")
    (rule,) = rules(tmp_path, "  - name: bh\n    timezone: Europe/Berlin\n    ical: bh.ics\n")
    began = time.perf_counter()
    periods = periods_for_wave([rule], utc(2026, 3, 30, 9))
    assert time.perf_counter() - began < 5.0
    # Five business days a week for the whole horizon.
    weeks = HORIZON / timedelta(weeks=1)
    assert 5 * weeks - 10 < sum(p.name == "bh: Business hours" for p in periods) < 5 * weeks + 10
    # Monday 11:00 CEST: the hourly windows until 18:00 CEST (16:00 UTC) open inside business hours.
    hourly = WindowSpec(schedule="cron(0 * * * ? *)", duration_hours=1)
    window = first_allowed_window(hourly, utc(2026, 3, 30, 9), periods)
    assert window is not None
    assert (window.start, window.end, window.cut_by) == (utc(2026, 3, 30, 16), utc(2026, 3, 30, 17), None)
    assert [start.hour for start, _ in window.skipped] == [9]


def test_ical_freeze_running_when_the_wave_starts_is_carried(tmp_path: Path) -> None:
    shutil.copy(HOLIDAYS_ICS, tmp_path / "holidays.ics")
    (rule,) = rules(tmp_path, "  - name: cal\n    timezone: Europe/Berlin\n    ical: holidays.ics\n")
    # Boxing Day noon: Christmas began (Dec 24 00:00 CET) more than a day before the wave.
    periods = periods_for_wave([rule], utc(2026, 12, 26, 12))
    assert (periods[0].name, periods[0].start, periods[0].end) == (
        "cal: Christmas",
        utc(2026, 12, 23, 23),
        utc(2026, 12, 26, 23),
    )


def test_periods_for_wave_cover_a_running_freeze_and_the_horizon(tmp_path: Path) -> None:
    entries = rules(
        tmp_path,
        "  - name: ended\n    from: 2026-02-01\n    to: 2026-02-27\n"  # ends Feb 28 00:00: before at - 1 day
        "  - name: running\n    from: 2026-02-01\n    to: 2026-03-05\n"
        "  - name: year-end\n    every_year: {from: '12-20', to: '01-03'}\n",
    )
    at = utc(2026, 3, 1, 12)
    periods = periods_for_wave(entries, at)
    assert periods[0].name == "running" and periods[0].start == utc(2026, 2, 1)
    assert "ended" not in {p.name for p in periods}
    assert timedelta(days=365) <= HORIZON  # a wave sees at least a year ahead
    # Every year-end freeze starting inside the horizon is carried, and none beyond it.
    year_ends = [p.start for p in periods if p.name == "year-end"]
    expected = [utc(y, 12, 20) for y in range(2026, 2200) if utc(y, 12, 20) < at + HORIZON]
    assert year_ends == expected


# ======================================================================================================
# Windows around freezes

DAILY_2AM = WindowSpec(schedule="cron(0 2 * * ? *)", timezone="UTC", duration_hours=4, cutoff_hours=1)
NOW = WindowSpec(schedule="now")


def period(name: str, start: datetime, end: datetime) -> FreezePeriod:
    return FreezePeriod(name=name, start=start, end=end)


def test_cron_windows_opening_inside_a_freeze_are_skipped() -> None:
    freeze = period("launch", utc(2026, 12, 1), utc(2026, 12, 4))
    window = first_allowed_window(DAILY_2AM, utc(2026, 11, 30, 12), [freeze])
    assert window is not None
    assert (window.start, window.end, window.cutoff) == (
        utc(2026, 12, 4, 2),
        utc(2026, 12, 4, 6),
        utc(2026, 12, 4, 5),
    )
    assert window.cut_by is None
    # One entry per freeze passed over: the first window it swallowed.
    assert window.skipped == ((utc(2026, 12, 1, 2), "launch"),)
    note = freeze_note(window)
    assert "windows inside change freeze launch skipped" in note


def test_freeze_end_is_exclusive_for_windows() -> None:
    # The freeze ends exactly when the Dec 4 window opens: that window is allowed.
    freeze = period("launch", utc(2026, 12, 1), utc(2026, 12, 4, 2))
    window = first_allowed_window(DAILY_2AM, utc(2026, 11, 30, 12), [freeze])
    assert window is not None and window.start == utc(2026, 12, 4, 2) and len(window.skipped) == 1
    # A freeze that starts exactly when a window opens freezes it.
    freeze = period("launch", utc(2026, 12, 1, 2), utc(2026, 12, 1, 3))
    window = first_allowed_window(DAILY_2AM, utc(2026, 11, 30, 12), [freeze])
    assert window is not None and window.start == utc(2026, 12, 2, 2)
    assert window.skipped == ((utc(2026, 12, 1, 2), "launch"),)


def test_a_window_running_into_a_freeze_is_cut_at_its_start() -> None:
    freeze = period("launch", utc(2026, 12, 1, 4), utc(2026, 12, 2))
    window = first_allowed_window(DAILY_2AM, utc(2026, 11, 30, 12), [freeze])
    assert window is not None
    assert (window.start, window.end, window.cutoff) == (
        utc(2026, 12, 1, 2),
        utc(2026, 12, 1, 4),
        utc(2026, 12, 1, 4),
    )
    assert window.cut_by == "launch" and window.skipped == ()
    assert "launch" in freeze_note(window)


def test_a_freeze_after_the_cutoff_shortens_only_the_end() -> None:
    freeze = period("launch", utc(2026, 12, 1, 5, 30), utc(2026, 12, 2))
    window = first_allowed_window(DAILY_2AM, utc(2026, 11, 30, 12), [freeze])
    assert window is not None
    assert (window.start, window.end, window.cutoff) == (
        utc(2026, 12, 1, 2),
        utc(2026, 12, 1, 5, 30),
        utc(2026, 12, 1, 5),
    )


def test_cron_windows_use_the_freezes_own_zone() -> None:
    # year-end in New York: Dec 20 00:00 EST (05:00 UTC) .. Jan 4 00:00 EST (05:00 UTC).
    freeze = period("year-end", utc(2026, 12, 20, 5), utc(2027, 1, 4, 5))
    daily_3am_utc = WindowSpec(schedule="cron(0 3 * * ? *)", duration_hours=1)
    # Dec 20 03:00 UTC is still Dec 19 in New York: allowed.
    window = first_allowed_window(daily_3am_utc, utc(2026, 12, 19, 12), [freeze])
    assert window is not None and window.start == utc(2026, 12, 20, 3) and window.end == utc(2026, 12, 20, 4)
    # Jan 4 03:00 UTC is Jan 3 22:00 in New York: frozen; Jan 5 03:00 UTC is the first allowed.
    window = first_allowed_window(daily_3am_utc, utc(2026, 12, 21), [freeze])
    assert window is not None and window.start == utc(2027, 1, 5, 3)
    assert len(window.skipped) == 1 and window.skipped[0][0] == utc(2026, 12, 21, 3)


def test_now_inside_a_freeze_starts_when_it_ends() -> None:
    freezes = [period("year-end", utc(2026, 12, 20), utc(2027, 1, 4))]
    window = first_allowed_window(NOW, utc(2026, 12, 25, 9, 17), freezes)
    assert window is not None
    assert (window.start, window.end, window.cutoff, window.cut_by) == (utc(2027, 1, 4), None, None, None)


def test_now_inside_a_freeze_says_which_freeze_delays_it() -> None:
    """The note is what the operator sees on a stage that waits weeks for a ``now`` window: it must name
    the freeze (``WindowResult.note``: "why the window is later ... than the schedule alone says")."""
    freezes = [period("year-end", utc(2026, 12, 20), utc(2027, 1, 4))]
    window = first_allowed_window(NOW, utc(2026, 12, 25, 9, 17), freezes)
    assert window is not None
    assert "year-end" in freeze_note(window)


def test_now_before_a_freeze_is_cut_at_its_start() -> None:
    freezes = [period("year-end", utc(2026, 12, 20), utc(2027, 1, 4))]
    window = first_allowed_window(NOW, utc(2026, 12, 19, 22), freezes)
    assert window is not None
    assert (window.start, window.end, window.cutoff, window.cut_by) == (
        utc(2026, 12, 19, 22),
        utc(2026, 12, 20),
        utc(2026, 12, 20),
        "year-end",
    )


def test_now_hops_over_back_to_back_freezes_given_in_any_order() -> None:
    freezes = [
        period("summer", utc(2027, 7, 1), utc(2027, 8, 1)),
        period("launch-2", utc(2026, 12, 3), utc(2026, 12, 5)),
        period("launch-1", utc(2026, 12, 1), utc(2026, 12, 3)),  # touching, not merged here
    ]
    window = first_allowed_window(NOW, utc(2026, 12, 2), freezes)
    assert window is not None
    assert (window.start, window.cutoff, window.cut_by) == (utc(2026, 12, 5), utc(2027, 7, 1), "summer")


def test_the_open_window_is_used_when_no_freeze_began_since_it_opened() -> None:
    # At 03:00 the Dec 1 02:00-06:00 window is open and its 05:00 cutoff ahead.
    window = first_allowed_window(
        DAILY_2AM, utc(2026, 12, 1, 3), [period("later", utc(2026, 12, 10), utc(2026, 12, 11))]
    )
    assert window is not None
    assert (window.start, window.end, window.cutoff) == (
        utc(2026, 12, 1, 2),
        utc(2026, 12, 1, 6),
        utc(2026, 12, 1, 5),
    )
    # A freeze from 04:00 cuts it; the stage may still start until then.
    window = first_allowed_window(
        DAILY_2AM, utc(2026, 12, 1, 3), [period("cut", utc(2026, 12, 1, 4), utc(2026, 12, 2))]
    )
    assert window is not None
    assert (window.start, window.cutoff, window.cut_by) == (utc(2026, 12, 1, 2), utc(2026, 12, 1, 4), "cut")


def test_the_open_window_is_not_used_when_a_freeze_began_in_between() -> None:
    # A freeze 02:30-02:45 cut the window at 02:30: at 03:00 the stage waits for the next window.
    freezes = [period("blip", utc(2026, 12, 1, 2, 30), utc(2026, 12, 1, 2, 45))]
    window = first_allowed_window(DAILY_2AM, utc(2026, 12, 1, 3), freezes)
    assert window is not None and window.start == utc(2026, 12, 2, 2)
    # Still frozen at 03:00 (freeze 02:30 .. Dec 3): the Dec 2 window opens inside it, Dec 3 is next.
    freezes = [period("long", utc(2026, 12, 1, 2, 30), utc(2026, 12, 3))]
    window = first_allowed_window(DAILY_2AM, utc(2026, 12, 1, 3), freezes)
    assert window is not None and window.start == utc(2026, 12, 3, 2)
    assert window.skipped == ((utc(2026, 12, 2, 2), "long"),)


def test_no_new_work_starts_at_the_instant_a_freeze_begins() -> None:
    """``start <= t < end``: the freeze's first instant is frozen, so an open window cut there has nothing
    left to offer at that instant (as ``now`` already behaves)."""
    freezes = [period("launch", utc(2026, 12, 1, 4), utc(2026, 12, 2))]
    window = first_allowed_window(DAILY_2AM, utc(2026, 12, 1, 4), freezes)
    assert window is not None and window.start == utc(2026, 12, 2, 2)
    now_window = first_allowed_window(NOW, utc(2026, 12, 1, 4), freezes)
    assert now_window is not None and now_window.start == utc(2026, 12, 2)


@pytest.mark.parametrize(
    ("schedule", "first", "end"),
    [
        # The rate series runs from 00:01 every 5 minutes: 14 days are 4032 steps, so Dec 15 00:01 is first.
        ("rate(5 minutes)", utc(2026, 12, 15, 0, 1), utc(2026, 12, 15, 1, 1)),
        # The cron series: the open 00:00 window and every 5 minutes to Dec 14 23:55 (4032), then 00:00.
        ("cron(0/5 * * * ? *)", utc(2026, 12, 15), utc(2026, 12, 15, 1)),
    ],
)
def test_a_frequent_schedule_through_a_two_week_freeze_returns_promptly(
    schedule: str, first: datetime, end: datetime
) -> None:
    """The activity answers this on every window lookup (and the dry run three times per stage): skipping
    a few thousand windows must take milliseconds, not seconds."""
    spec = WindowSpec(schedule=schedule, duration_hours=1)
    freezes = [period("two-weeks", utc(2026, 12, 1), utc(2026, 12, 15))]
    began = time.perf_counter()
    window = first_allowed_window(spec, utc(2026, 12, 1, 0, 1), freezes)
    elapsed = time.perf_counter() - began
    assert window is not None and (window.start, window.end) == (first, end)
    # What the skip list holds beyond its first entry is the implementation's choice; it must be truthful.
    assert window.skipped and window.skipped[0][0] <= utc(2026, 12, 1, 0, 5)
    assert all(freezes[0].contains(start) and name == "two-weeks" for start, name in window.skipped)
    assert elapsed < 2.0, f"{elapsed:.1f} s to skip 4032 windows"


def test_rate_schedule_during_daily_freezes() -> None:
    every_day = WindowSpec(schedule="rate(1 day)", duration_hours=2)
    freezes = [period(f"d{n}", utc(2026, 12, n, 6), utc(2026, 12, n, 7)) for n in range(1, 10)]
    # Starts at 06:30 each day: inside every freeze for nine days, then free on Dec 10.
    window = first_allowed_window(every_day, utc(2026, 12, 1, 6, 30), freezes)
    assert window is not None and window.start == utc(2026, 12, 10, 6, 30) and len(window.skipped) == 9


def test_a_long_freeze_over_a_frequent_schedule_still_finds_the_window_after_it() -> None:
    """A six-week freeze is ordinary (year-end plus January); the next window after it exists and is well
    inside the wave's horizon, so the stage must not be failed as having no window."""
    spec = WindowSpec(schedule="rate(5 minutes)", duration_hours=1)
    freezes = [period("winter", utc(2026, 12, 1), utc(2027, 1, 10))]
    window = first_allowed_window(spec, utc(2026, 12, 1, 0, 1), freezes)
    assert window is not None, "no window found after a 40-day freeze"
    # The series runs from 00:01: Dec 1 to Jan 10 is 40 days = 11,520 steps of 5 minutes.
    assert window.start == utc(2027, 1, 10, 0, 1)


def test_a_freeze_covering_every_window_returns_none() -> None:
    one_off = WindowSpec(schedule="at(2026-12-02T10:00:00)", duration_hours=2)
    freezes = [period("launch", utc(2026, 12, 1), utc(2026, 12, 4))]
    assert first_allowed_window(one_off, utc(2026, 11, 1), freezes) is None
    december_2026 = WindowSpec(schedule="cron(0 2 * 12 ? 2026)", duration_hours=1)
    freezes = [period("december", utc(2026, 12, 1), utc(2027, 1, 1))]
    assert first_allowed_window(december_2026, utc(2026, 11, 1), freezes) is None
    assert preview(december_2026, utc(2026, 11, 1), 3, freezes) == []


def berlin(year: int, month: int, day: int, hour: int) -> datetime:
    """A winter (CET, +1) wall-clock time in Berlin, as UTC."""
    return utc(year, month, day, hour) - timedelta(hours=1)


YEAR_END_BERLIN = [
    period("year-end", berlin(2026, 12, 20, 0), berlin(2027, 1, 4, 0)),
    period("year-end", berlin(2027, 12, 20, 0), berlin(2028, 1, 4, 0)),
]


def tuesday_window(nth: int) -> WindowSpec:
    """Four hours from 02:00 Berlin time on the ``nth`` Tuesday of each month, cut off after three."""
    return WindowSpec(
        schedule=f"cron(0 2 ? * TUE#{nth} *)", timezone="Europe/Berlin", duration_hours=4, cutoff_hours=1
    )


def test_preview_patch_tuesday_across_the_year_end_freeze() -> None:
    # The second Tuesdays (Dec 8 2026, Jan 12 2027) are both outside Dec 20 - Jan 3: nothing is skipped.
    spec = tuesday_window(2)
    windows = preview(spec, utc(2026, 11, 1), 4, YEAR_END_BERLIN)
    assert [w.start for w in windows] == [
        berlin(2026, 11, 10, 2),
        berlin(2026, 12, 8, 2),
        berlin(2027, 1, 12, 2),
        berlin(2027, 2, 9, 2),
    ]
    assert all(w.skipped == () and w.cut_by is None for w in windows)
    assert [w.cutoff for w in windows][2] == berlin(2027, 1, 12, 5)


def test_preview_skips_decembers_patch_tuesday_and_keeps_januarys() -> None:
    # A freeze Dec 1 - Jan 10 (Berlin) takes December's second Tuesday (Dec 8); January's (Jan 12) is kept.
    freezes = [period("december", berlin(2026, 12, 1, 0), berlin(2027, 1, 11, 0))]
    spec = tuesday_window(2)
    windows = preview(spec, utc(2026, 11, 1), 3, freezes)
    assert [w.start for w in windows] == [
        berlin(2026, 11, 10, 2),
        berlin(2027, 1, 12, 2),
        berlin(2027, 2, 9, 2),
    ]
    assert [w.skipped for w in windows] == [(), ((berlin(2026, 12, 8, 2), "december"),), ()]


def test_preview_fourth_tuesday_inside_the_year_end_freeze() -> None:
    # Fourth Tuesdays: Nov 24, Dec 22 (frozen), Jan 26, Feb 23, Mar 23.
    spec = tuesday_window(4)
    windows = preview(spec, utc(2026, 11, 1), 3, YEAR_END_BERLIN)
    assert [w.start for w in windows] == [
        berlin(2026, 11, 24, 2),
        berlin(2027, 1, 26, 2),
        berlin(2027, 2, 23, 2),
    ]
    assert [w.skipped for w in windows] == [(), ((berlin(2026, 12, 22, 2), "year-end"),), ()]
    assert "skipped" in freeze_note(windows[1]) and len(windows[1].skipped) == 1


def test_preview_now_inside_a_freeze_is_one_window_at_its_end() -> None:
    windows = preview(NOW, utc(2026, 12, 21), 3, YEAR_END_BERLIN)
    assert [(w.start, w.cutoff) for w in windows] == [(berlin(2027, 1, 4, 0), berlin(2027, 12, 20, 0))]


def test_the_ical_libraries_are_declared_dependencies() -> None:
    """``ical:`` freezes import icalendar and recurring-ical-events: an installed patchflow must bring them
    (else the first plan with an iCalendar freeze dies with ModuleNotFoundError)."""
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    declared = {
        re.split(r"[\s<>=!~\[;]", d, maxsplit=1)[0].lower().replace("_", "-") for d in project["dependencies"]
    }
    assert {"icalendar", "recurring-ical-events"} <= declared, sorted(declared)


# ======================================================================================================
# The global freeze file through Settings


def test_plan_and_global_freezes_are_merged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plan = load_plan(
        write_plan(
            tmp_path / "plan",
            "freezes:\n  - name: xmas\n    from: 2026-12-24\n    to: 2026-12-26\n"
            "  - name: launch\n    from: 2026-11-26\n    to: 2026-11-27\n",
        )
    )
    path = freeze_file(
        tmp_path, "freezes:\n  - name: year-end\n    every_year: {from: '12-20', to: '01-03'}\n"
    )
    monkeypatch.setenv("PATCHFLOW_FREEZE_FILE", str(path))
    settings = Settings(data_dir=tmp_path / "data")
    assert settings.freeze_file == path
    periods = plan_freezes(plan, settings, utc(2026, 11, 1))
    assert spans(periods)[:3] == [
        (utc(2026, 11, 26), utc(2026, 11, 28)),
        (utc(2026, 12, 20), utc(2027, 1, 4)),
        (utc(2027, 12, 20), utc(2028, 1, 4)),
    ]
    assert periods[0].name == "launch" and set(periods[1].name.split(" + ")) == {"year-end", "xmas"}
    assert all(p.name == "year-end" for p in periods[2:])


def test_no_freezes_anywhere_means_no_periods(tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, ""))
    settings = Settings(data_dir=tmp_path / "data", freeze_file=None)
    assert freeze_calendar(settings).rules == ()
    assert plan_freezes(plan, settings, utc(2026, 11, 1)) == []


def test_global_ics_freeze_file(tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, ""))
    settings = Settings(data_dir=tmp_path / "data", freeze_file=HOLIDAYS_ICS)
    periods = plan_freezes(plan, settings, utc(2026, 12, 20))
    assert (utc(2026, 12, 24), utc(2026, 12, 27)) in spans(periods)


def test_bad_global_freeze_file_is_an_input_error(tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, ""))
    path = freeze_file(tmp_path, "freezes:\n  - name: x\n    to: 2026-12-01\n")
    with pytest.raises(InputError) as info:
        plan_freezes(plan, Settings(data_dir=tmp_path / "data", freeze_file=path), utc(2026, 11, 1))
    assert f"{path}:2: freezes[0].from" in str(info.value)


def test_freeze_override_approvers_come_from_the_plan_and_the_freeze_file(tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, "freeze_override_approvers: [cio]\n"))
    path = freeze_file(tmp_path, "freezes: []\noverride_approvers: [sre-lead]\n")
    settings = Settings(data_dir=tmp_path / "data", freeze_file=path)
    check_freeze_override(plan, settings, "cio")
    check_freeze_override(plan, settings, "sre-lead")
    with pytest.raises(WaveActionRefused) as info:
        check_freeze_override(plan, settings, "intern")
    assert "'intern' may not override" in str(info.value)
    assert "cio" in str(info.value) and "sre-lead" in str(info.value)
    with pytest.raises(InputError, match="needs --approver"):
        check_freeze_override(plan, settings, "")
    # Without the freeze file only the plan's approver remains.
    without = Settings(data_dir=tmp_path / "data", freeze_file=None)
    check_freeze_override(plan, without, "cio")
    with pytest.raises(WaveActionRefused):
        check_freeze_override(plan, without, "sre-lead")


def test_nobody_may_override_when_no_approver_is_named(tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, ""))
    with pytest.raises(WaveActionRefused, match="nobody"):
        check_freeze_override(plan, Settings(data_dir=tmp_path / "data", freeze_file=None), "cio")


# ======================================================================================================
# The dry run: ``patchflow plan`` (a real process)


def cli(*args: str, data_dir: Path, freeze_file: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with this test's freeze file (none: PATCHFLOW_FREEZE_FILE unset)."""
    return run_cli(
        *args,
        data_dir=data_dir,
        env_overrides={"PATCHFLOW_FREEZE_FILE": str(freeze_file) if freeze_file is not None else None},
    )


def test_dry_run_json_shows_freezes_and_skipped_windows(tmp_path: Path) -> None:
    proc = cli(
        "plan", str(YEAR_END_PLAN), "--at", "2026-12-21T00:00:00Z", "--format", "json", data_dir=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    dry = json.loads(proc.stdout)
    assert dry["freezes"][:2] == [
        {"name": "year-end", "start": "2026-12-19T23:00:00+00:00", "end": "2027-01-03T23:00:00+00:00"},
        {"name": "year-end", "start": "2027-12-19T23:00:00+00:00", "end": "2028-01-03T23:00:00+00:00"},
    ]
    dev, prod = dry["stages"]
    # dev (now) inside the freeze: it starts when the freeze ends and runs until the next one.
    assert len(dev["windows"]) == 1
    assert datetime.fromisoformat(dev["windows"][0]["start"]) == berlin(2027, 1, 4, 0)
    assert datetime.fromisoformat(dev["windows"][0]["cutoff"]) == berlin(2027, 12, 20, 0)
    # prod: Dec 22 is frozen; Jan 26, Feb 23, Mar 23 follow, shown in Berlin time.
    assert [(w["start"], w["end"], w["cutoff"]) for w in prod["windows"]] == [
        ("2027-01-26T02:00:00+01:00", "2027-01-26T06:00:00+01:00", "2027-01-26T05:00:00+01:00"),
        ("2027-02-23T02:00:00+01:00", "2027-02-23T06:00:00+01:00", "2027-02-23T05:00:00+01:00"),
        ("2027-03-23T02:00:00+01:00", "2027-03-23T06:00:00+01:00", "2027-03-23T05:00:00+01:00"),
    ]
    assert prod["windows"][0]["skipped"] == [{"start": "2026-12-22T02:00:00+01:00", "freeze": "year-end"}]
    assert "year-end" in prod["windows"][0]["note"]
    assert [w["skipped"] for w in prod["windows"][1:]] == [[], []]
    assert dry["problems"] == []
    assert not (tmp_path / "patch-sets").exists()  # a dry run stores nothing


def test_dry_run_before_the_freeze_cuts_now_and_prints_skips(tmp_path: Path) -> None:
    proc = cli(
        "plan", str(YEAR_END_PLAN), "--at", "2026-11-01T00:00:00Z", "--format", "json", data_dir=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    dev, prod = json.loads(proc.stdout)["stages"]
    (now,) = dev["windows"]
    assert now["start"] == "now" and datetime.fromisoformat(now["cutoff"]) == berlin(2026, 12, 20, 0)
    assert "year-end" in now["note"]
    assert [w["start"] for w in prod["windows"]] == [
        "2026-11-24T02:00:00+01:00",
        "2027-01-26T02:00:00+01:00",
        "2027-02-23T02:00:00+01:00",
    ]
    table = cli("plan", str(YEAR_END_PLAN), "--at", "2026-11-01T00:00:00Z", data_dir=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "change freeze" in table.stdout and "year-end" in table.stdout
    assert "2026-12-22T02:00:00+01:00" in table.stdout  # the skipped window is shown


def test_dry_run_adds_the_global_freeze_file(tmp_path: Path) -> None:
    path = freeze_file(
        tmp_path, "freezes:\n  - name: black-friday\n    from: 2026-11-24\n    to: 2026-11-27\n"
    )
    proc = cli(
        "plan",
        str(YEAR_END_PLAN),
        "--at",
        "2026-11-01T00:00:00Z",
        "--format",
        "json",
        data_dir=tmp_path,
        freeze_file=path,
    )
    assert proc.returncode == 0, proc.stderr
    dry = json.loads(proc.stdout)
    assert dry["freezes"][0] == {
        "name": "black-friday",
        "start": "2026-11-24T00:00:00+00:00",
        "end": "2026-11-28T00:00:00+00:00",
    }
    prod = dry["stages"][1]
    # Nov 24 02:00 CET (01:00 UTC) is inside black-friday now, and Dec 22 inside year-end.
    assert prod["windows"][0]["start"] == "2027-01-26T02:00:00+01:00"
    assert prod["windows"][0]["skipped"] == [
        {"start": "2026-11-24T02:00:00+01:00", "freeze": "black-friday"},
        {"start": "2026-12-22T02:00:00+01:00", "freeze": "year-end"},
    ]
    # The now stage is cut at the first freeze.
    assert datetime.fromisoformat(dry["stages"][0]["windows"][0]["cutoff"]) == utc(2026, 11, 24)


def test_plan_with_a_bad_freeze_exits_2_with_the_located_message(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, "freezes:\n  - name: x\n    every_year: {from: '12-20', to: '13-01'}\n")
    proc = cli("plan", str(plan), "--at", "2026-11-01T00:00:00Z", data_dir=tmp_path)
    assert proc.returncode == 2
    assert f"{plan}:10: freezes[0].every_year.to: '13-01'" in proc.stderr


def test_plan_with_a_bad_global_freeze_file_exits_2(tmp_path: Path) -> None:
    path = freeze_file(
        tmp_path,
        "freezes:\n  - name: x\n    timezone: Europe/Berln\n    from: 2026-12-01\n    to: 2026-12-02\n",
    )
    proc = cli(
        "plan", str(YEAR_END_PLAN), "--at", "2026-11-01T00:00:00Z", data_dir=tmp_path, freeze_file=path
    )
    assert proc.returncode == 2
    assert f"{path}:3: freezes[0].timezone" in proc.stderr


def test_a_local_start_inside_a_dst_gap_begins_when_the_gap_ends(tmp_path: Path) -> None:
    # 2026-03-08 02:30 does not exist in New York (02:00 EST → 03:00 EDT = 07:00 UTC): like maintenance
    # windows, the freeze starts at the end of the gap, not an hour later.
    (rule,) = rules(
        tmp_path,
        "  - name: gap\n    timezone: America/New_York\n    from: '2026-03-08T02:30'\n    to: '2026-03-08T05:00'\n",
    )
    assert (rule.start, rule.end) == (utc(2026, 3, 8, 7), utc(2026, 3, 8, 9))


def test_override_approver_is_compared_without_surrounding_spaces(tmp_path: Path) -> None:
    from patchflow.config import Settings
    from patchflow.control.waves import check_freeze_override
    from patchflow.core.plans import load_plan

    plan = load_plan(write_plan(tmp_path, "freeze_override_approvers: [cio]\n"))
    check_freeze_override(plan, Settings(data_dir=tmp_path), " cio ")
