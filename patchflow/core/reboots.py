"""Reboot orchestration: when patchflow reboots the instances a stage patched, and the reboot debt it leaves.

A stage (or the plan, for every stage without its own) may say::

    reboot: {policy: if_needed, window: {schedule: "cron(0 3 ? * SUN *)", duration_hours: 2},
             max_concurrency: "10%", deadline_days: 7}

Then the stage's installs run with SSM's ``RebootOption=NoReboot`` and patchflow reboots instead:

* ``if_needed`` — the instances whose install says ``pending_reboot`` (SSM: ``INSTALLED_PENDING_REBOOT``);
* ``always`` — every instance whose install succeeded;
* ``never`` — nobody: the instances stay ``pending_reboot`` (reboot debt) until something else reboots them.

Without ``window`` the reboot happens right after the install, inside the instance's batch of the patch window
(a failed reboot — the host does not come back — fails the instance and counts against ``max_errors``). With
``window`` the instances stay ``pending_reboot`` after the stage and are rebooted in the next occurrence of that
schedule (the same syntax as a stage's ``window``), at most ``max_concurrency`` at a time (default: the
stage's). Until rebooted an instance is *reboot debt*: reported per instance with the wave, the stage and
since when; with ``deadline_days`` debt older than that is overdue.

Why reboot outside the install: AWS's ``AWS-RunPatchBaseline`` takes ``RebootOption=NoReboot`` exactly so that
reboots can be scheduled separately ("Parameter name: RebootOption", AWS Systems Manager User Guide, "SSM
Command document for patching: AWS-RunPatchBaseline"); instances patched that way report
``INSTALLED_PENDING_REBOOT`` and count as non-compliant until rebooted (User Guide, "Understanding patch
compliance state values").

Pure (stdlib and :mod:`patchflow.core.windows` only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from patchflow.core.documents import unknown_key
from patchflow.core.ratecontrol import parse_limit
from patchflow.core.windows import ScheduleError, WindowSpec, parse_window_spec
from patchflow.errors import Problem

IF_NEEDED = "if_needed"
ALWAYS = "always"
NEVER = "never"
#: The reboot policies, the default first.
POLICIES: tuple[str, ...] = (IF_NEEDED, ALWAYS, NEVER)
REBOOT_KEYS: tuple[str, ...] = ("policy", "window", "max_concurrency", "deadline_days")
#: Largest ``deadline_days``: a longer deadline is a typo (a year of pending reboots is no deadline).
MAX_DEADLINE_DAYS = 365
#: The install option of a stage patchflow reboots itself (SSM's ``RebootOption``).
NO_REBOOT = "NoReboot"


@dataclass(frozen=True)
class RebootSpec:
    """A stage's ``reboot:`` (crosses the Temporal boundary in :class:`~patchflow.core.wavemodel.StageInput`)."""

    policy: str = IF_NEEDED
    """``if_needed``, ``always`` or ``never`` (see the module docstring)."""
    window: WindowSpec | None = None
    """Reboot in this separate window (None: right after the install, in the patch window)."""
    max_concurrency: str = ""
    """Reboot window: instances rebooted at once, as written (``"5"``, ``"10%"``); "" = the stage's."""
    deadline_days: int = 0
    """Reboot debt older than this many days is overdue; 0 = no deadline."""

    @property
    def deferred(self) -> bool:
        """Reboots wait for the separate reboot window (the patch window leaves the instances pending)."""
        return self.window is not None and self.policy != NEVER

    @property
    def in_patch_window(self) -> bool:
        """Reboots happen right after the install, inside the instance's batch."""
        return self.window is None and self.policy != NEVER


def reboots(policy: str, *, status: str, pending_reboot: bool) -> bool:
    """Whether an instance whose install ended ``status`` (``pending_reboot`` as it reported) is rebooted."""
    if status != "succeeded" or policy == NEVER:
        return False
    return policy == ALWAYS or pending_reboot


def reboot_operation_id(wave_id: str, stage: str, instance_id: str, attempt: int) -> str:
    """Idempotency key of one reboot: a retried activity reuses it (and never reboots twice)."""
    return f"{wave_id}/{stage}/{instance_id}/reboot/{attempt}"


def deadline(since: datetime, deadline_days: int) -> datetime | None:
    """When reboot debt incurred at ``since`` becomes overdue (None: no deadline)."""
    return since + timedelta(days=deadline_days) if deadline_days else None


def overdue(since: datetime, deadline_days: int, now: datetime) -> bool:
    """Whether reboot debt incurred at ``since`` is past its deadline at ``now``."""
    due = deadline(since, deadline_days)
    return due is not None and now >= due


@dataclass(frozen=True)
class RebootDebt:
    """One instance patched but not rebooted yet (``wave status``, compliance reports, metrics)."""

    instance_id: str
    wave_id: str
    stage: str
    since: datetime
    """When the install that left it pending finished (workflow time)."""
    deadline: datetime | None = None
    """When the debt becomes overdue (the stage's ``reboot.deadline_days``); None: no deadline."""

    def overdue(self, now: datetime) -> bool:
        return self.deadline is not None and now >= self.deadline


def parse_reboot(
    raw: Any, *, path: tuple[str | int, ...]
) -> tuple[RebootSpec | None, list[tuple[tuple[str | int, ...], str]]]:
    """A ``reboot:`` mapping → the spec and the located problems (``(path, message)``; empty when valid).

    ``path`` is where the mapping sits in the plan (``("stages", 2, "reboot")`` or ``("reboot",)``).
    """
    problems: list[tuple[tuple[str | int, ...], str]] = []
    if not isinstance(raw, Mapping):
        problems.append(
            (
                path,
                "expected a mapping such as {policy: if_needed} or {policy: always, window: {schedule: "
                "'cron(0 3 ? * SUN *)'}, max_concurrency: 5, deadline_days: 7}",
            )
        )
        return None, problems
    for key in raw:
        if key not in REBOOT_KEYS:
            problems.append(((*path, str(key)), unknown_key(str(key), REBOOT_KEYS)))
    policy = raw.get("policy", IF_NEEDED)
    if policy not in POLICIES:
        problems.append(
            (
                (*path, "policy"),
                f"{policy!r} is not a reboot policy; use if_needed (reboot the instances whose install needs it), "
                "always (every patched instance) or never (leave them pending_reboot)",
            )
        )
    window = _window(raw, path, problems)
    concurrency = _concurrency(raw, path, problems)
    days = raw.get("deadline_days", 0)
    if isinstance(days, bool) or not isinstance(days, int) or not 0 <= days <= MAX_DEADLINE_DAYS:
        problems.append(
            (
                (*path, "deadline_days"),
                f"{days!r}: expected a whole number of days from 1 to {MAX_DEADLINE_DAYS} (0 or absent: no deadline)",
            )
        )
        days = 0
    if policy == NEVER and window is not None:
        problems.append(
            (
                (*path, "window"),
                "policy never reboots nothing, so a reboot window has nothing to do; remove window or use "
                "policy if_needed or always",
            )
        )
    if window is None and concurrency and "window" not in raw:
        problems.append(
            (
                (*path, "max_concurrency"),
                "only applies to a reboot window (in the patch window reboots follow the stage's "
                "max_concurrency); add a window or remove max_concurrency",
            )
        )
    if problems:
        return None, problems
    return RebootSpec(policy=str(policy), window=window, max_concurrency=concurrency, deadline_days=days), []


def _window(
    raw: Mapping[str, Any], path: tuple[str | int, ...], problems: list[tuple[tuple[str | int, ...], str]]
) -> WindowSpec | None:
    if "window" not in raw:
        return None
    if raw["window"] == "now" or (isinstance(raw["window"], str) and raw["window"].strip().lower() == "now"):
        problems.append(
            (
                (*path, "window"),
                "a reboot window of 'now' is the patch window; leave window out to reboot right after the "
                "install, or give a schedule, e.g. {schedule: 'cron(0 3 ? * SUN *)', duration_hours: 2}",
            )
        )
        return None
    try:
        return parse_window_spec(raw["window"], path="window")
    except ScheduleError as exc:
        for problem in exc.problems or [Problem(path="", message=exc.summary)]:
            sub = problem.path.split("window", 1)[-1].lstrip(".")
            problems.append(((*path, "window", *([sub] if sub else [])), problem.message or exc.summary))
        return None


def _concurrency(
    raw: Mapping[str, Any], path: tuple[str | int, ...], problems: list[tuple[tuple[str | int, ...], str]]
) -> str:
    if "max_concurrency" not in raw:
        return ""
    try:
        limit = parse_limit(raw["max_concurrency"], kind="max_concurrency")
    except ValueError as exc:
        problems.append(((*path, "max_concurrency"), str(exc)))
        return ""
    return f"{limit.value}%" if limit.percent else str(limit.value)
