"""``reboot:`` in rollout plans (:mod:`patchflow.core.reboots`): the documented forms, the plan-level default, and
a located error (file:line: field.path, what to write instead) for every mistake."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from patchflow.core.plans import PlanError, load_plan
from patchflow.core.reboots import ALWAYS, IF_NEEDED, NEVER, RebootDebt, deadline, overdue, reboots
from tests.core.test_plans import GOOD_STAGE, write_plan


def test_stage_reboot_in_the_patch_window(tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, "stages:\n" + GOOD_STAGE + "    reboot: {policy: always}\n"))
    spec = plan.stages[0].reboot
    assert spec is not None and spec.policy == ALWAYS and spec.window is None
    assert spec.in_patch_window and not spec.deferred


def test_reboot_window_with_its_own_concurrency_and_deadline(tmp_path: Path) -> None:
    plan = load_plan(
        write_plan(
            tmp_path,
            "stages:\n" + GOOD_STAGE + "    reboot:\n      policy: if_needed\n"
            "      window: {schedule: 'cron(0 3 ? * SUN *)', timezone: Europe/Berlin, duration_hours: 2}\n"
            "      max_concurrency: '10%'\n      deadline_days: 7\n",
        )
    )
    spec = plan.stages[0].reboot
    assert spec is not None and spec.policy == IF_NEEDED
    assert spec.window is not None and spec.window.schedule == "cron(0 3 ? * SUN *)"
    assert spec.window.timezone == "Europe/Berlin" and spec.window.duration_hours == 2
    assert spec.max_concurrency == "10%" and spec.deadline_days == 7 and spec.deferred


def test_plan_level_default_applies_to_stages_without_their_own(tmp_path: Path) -> None:
    body = (
        "reboot: {policy: never, deadline_days: 3}\nstages:\n"
        + GOOD_STAGE
        + "  - name: prod\n    targets: {patch_group: prod}\n    reboot: {policy: always}\n"
    )
    plan = load_plan(write_plan(tmp_path, body))
    dev, prod = plan.stages
    assert dev.reboot is not None and dev.reboot.policy == NEVER and dev.reboot.deadline_days == 3
    assert prod.reboot is not None and prod.reboot.policy == ALWAYS and prod.reboot.deadline_days == 0
    assert plan.reboot == dev.reboot


def test_plans_without_reboot_keep_the_executors_reboot_option(tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, "stages:\n" + GOOD_STAGE))
    assert plan.stages[0].reboot is None and plan.reboot is None


@pytest.mark.parametrize(
    ("reboot", "expected"),
    [
        ("reboot: soon\n", ":9: stages[0].reboot: expected a mapping such as {policy: if_needed}"),
        (
            "reboot: {policy: sometimes}\n",
            ":9: stages[0].reboot.policy: 'sometimes' is not a reboot policy; use if_needed",
        ),
        ("reboot: {polcy: always}\n", ":9: stages[0].reboot.polcy: unknown key; did you mean 'policy'?"),
        (
            "reboot: {window: {schedule: 'cron(0 3 * * SUN *)'}}\n",
            "stages[0].reboot.window.schedule: ",
        ),
        ("reboot: {window: now}\n", "stages[0].reboot.window: a reboot window of 'now' is the patch window"),
        (
            "reboot: {window: {schedule: 'rate(1 day)', duration_hours: 30}}\n",
            "stages[0].reboot.window.duration_hours",
        ),
        (
            "reboot: {window: {schedule: 'rate(1 day)'}, max_concurrency: 0}\n",
            "stages[0].reboot.max_concurrency: 0 is not a valid max_concurrency",
        ),
        (
            "reboot: {max_concurrency: 5}\n",
            "stages[0].reboot.max_concurrency: only applies to a reboot window",
        ),
        (
            "reboot: {deadline_days: -1}\n",
            "stages[0].reboot.deadline_days: -1: expected a whole number of days from 1 to 365",
        ),
        ("reboot: {deadline_days: 'a week'}\n", "stages[0].reboot.deadline_days"),
        (
            "reboot: {policy: never, window: {schedule: 'rate(1 day)'}}\n",
            "stages[0].reboot.window: policy never reboots nothing",
        ),
    ],
)
def test_reboot_errors_are_located(tmp_path: Path, reboot: str, expected: str) -> None:
    path = write_plan(tmp_path, "stages:\n" + GOOD_STAGE + "    " + reboot)
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert expected in str(info.value)
    assert f"{path}:" in str(info.value)


def test_plan_level_reboot_error_is_located(tmp_path: Path) -> None:
    path = write_plan(tmp_path, "reboot: {policy: later}\nstages:\n" + GOOD_STAGE)
    with pytest.raises(PlanError) as info:
        load_plan(path)
    assert f"{path}:5: reboot.policy: 'later' is not a reboot policy" in str(info.value)


@pytest.mark.parametrize(
    ("policy", "status", "pending", "expected"),
    [
        (IF_NEEDED, "succeeded", True, True),
        (IF_NEEDED, "succeeded", False, False),
        (ALWAYS, "succeeded", False, True),
        (ALWAYS, "failed", False, False),
        (NEVER, "succeeded", True, False),
        (IF_NEEDED, "failed", True, False),
    ],
)
def test_which_instances_reboot(policy: str, status: str, pending: bool, expected: bool) -> None:
    assert reboots(policy, status=status, pending_reboot=pending) is expected


def test_debt_is_overdue_after_its_deadline() -> None:
    since = datetime(2026, 1, 1, tzinfo=UTC)
    assert deadline(since, 0) is None and not overdue(since, 0, since + timedelta(days=999))
    assert deadline(since, 7) == since + timedelta(days=7)
    assert not overdue(since, 7, since + timedelta(days=6, hours=23))
    assert overdue(since, 7, since + timedelta(days=7))
    debt = RebootDebt("i-1", "w", "dev", since, deadline(since, 2))
    assert debt.overdue(since + timedelta(days=3)) and not debt.overdue(since + timedelta(days=1))
