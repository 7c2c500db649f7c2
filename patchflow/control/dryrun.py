"""A plan's dry run: what a wave of it would do now, without starting one (``patchflow plan``, the API's
``POST /plans/dry-run``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from patchflow.config import Settings
from patchflow.control.waves import executor_ref, plan_freezes
from patchflow.core import versions
from patchflow.core.baselines import load_baseline
from patchflow.core.catalog import load_catalog
from patchflow.core.evaluation import PatchSet, evaluate
from patchflow.core.freezes import FreezePeriod, first_allowed_window, freeze_at, freeze_note
from patchflow.core.freezes import preview as freeze_preview
from patchflow.core.plans import Plan, Stage
from patchflow.errors import InputError
from patchflow.executors.base import Executor, InstanceInfo
from patchflow.executors.factory import ExecutorConfigError, build_executor


async def dry_run(plan: Plan, settings: Settings, at: datetime) -> dict[str, Any]:
    """Per stage the resolved targets, their upgrades, the next windows (change freezes applied) and the problems
    a wave would meet — ``patchflow plan`` and ``POST /plans/dry-run``. Evaluates, but stores and changes nothing."""
    freezes = plan_freezes(plan, settings, at)
    baseline = load_baseline(plan.baseline)
    pinned = evaluate(baseline, load_catalog(plan.catalog), at, catalog_source=str(plan.catalog)).patch_set
    executor = plan_executor(plan, settings)
    instances = {i.instance_id: i for i in await executor.discover()}
    stages = [await _dry_stage(stage, executor, instances, pinned, freezes, at) for stage in plan.stages]
    return {
        "plan": plan.name,
        "patch_set_id": pinned.id,
        "patch_set_size": len(pinned.patches),
        "evaluated_at": at.isoformat(),
        "stages": stages,
        "freezes": [
            {"name": f.name, "start": f.start.isoformat(), "end": f.end.isoformat()}
            for f in freezes
            if f.end > at
        ][:10],
        "problems": [f"{stage['name']}: {p}" for stage in stages for p in stage["problems"]],
    }


async def _dry_stage(
    stage: Stage,
    executor: Executor,
    instances: dict[str, InstanceInfo],
    pinned: PatchSet,
    freezes: list[FreezePeriod],
    at: datetime,
) -> dict[str, Any]:
    """One stage: its targets and their upgrades, its next windows, and what would stop it."""
    ids, missing = _resolve_targets(stage, instances)
    pins = {(p.name, p.arch): p.version for p in pinned.patches}
    targets = [
        {
            "id": instance_id,
            "online": instances[instance_id].online,
            "upgrades": await _upgrades(executor, instance_id, pins, pinned.family),
        }
        for instance_id in ids
    ]
    windows, problems = _next_windows(stage, at, freezes)
    if not targets and not missing:
        what = (
            f"patch group {stage.targets.patch_group!r}" if stage.targets.patch_group else "its instance ids"
        )
        problems.append(f"no targets: {what} matched no instance (the wave would halt here)")
    if missing:
        problems.append(f"unknown instance ids: {', '.join(missing)}")
    return {
        "name": stage.name,
        "targets": targets,
        "missing": missing,
        "windows": windows,
        "max_concurrency": str(stage.max_concurrency),
        "max_errors": str(stage.max_errors),
        "gate": stage.gate.kind,
        "approvers": list(stage.gate.approvers),
        "on_failure": stage.on_failure,
        "soak_seconds": stage.soak_seconds,
        "ramp": stage.ramp,
        "cutoff_behavior": stage.cutoff_behavior,
        "problems": problems,
    }


def _resolve_targets(stage: Stage, instances: dict[str, InstanceInfo]) -> tuple[list[str], list[str]]:
    """The stage's instances the executor knows, and the instance ids it names that the executor does not."""
    if stage.targets.instance_ids:
        ids = [i for i in stage.targets.instance_ids if i in instances]
        missing = [i for i in stage.targets.instance_ids if i not in instances]
        return ids, missing
    return sorted(i for i, info in instances.items() if info.patch_group == stage.targets.patch_group), []


async def _upgrades(
    executor: Executor, instance_id: str, pins: dict[tuple[str, str], str], family: str
) -> list[dict[str, str]]:
    """The installed packages the pinned versions would upgrade on the instance (from → to)."""
    return [
        {"name": p.name, "arch": p.arch, "from": p.version, "to": pins[(p.name, p.arch)]}
        for p in await executor.scan(instance_id)
        if (p.name, p.arch) in pins and versions.compare(family, p.version, pins[(p.name, p.arch)]) < 0
    ]


def _next_windows(
    stage: Stage, at: datetime, freezes: list[FreezePeriod]
) -> tuple[list[dict[str, Any]], list[str]]:
    """The stage's next windows (``now`` if it may start now), change freezes applied, and a problem if none
    ever opens."""
    if stage.window.schedule.strip().lower() == "now" and freeze_at(freezes, at) is None:
        upcoming = first_allowed_window(stage.window, at, freezes)
        cut = upcoming.cutoff if upcoming is not None else None
        now: dict[str, Any] = {
            "start": "now",
            "end": None,
            "cutoff": cut.isoformat() if cut else None,
            "skipped": [],
            "note": freeze_note(upcoming) if upcoming is not None else "",
        }
        return [now], []
    zone = ZoneInfo(stage.window.timezone)
    windows = [
        {
            "start": w.start.astimezone(zone).isoformat(),
            "end": w.end.astimezone(zone).isoformat() if w.end else None,
            "cutoff": w.cutoff.astimezone(zone).isoformat() if w.cutoff else None,
            "skipped": [
                {"start": start.astimezone(zone).isoformat(), "freeze": name} for start, name in w.skipped
            ],
            "note": freeze_note(w),
        }
        for w in freeze_preview(stage.window, at, 3, freezes)
    ]
    if windows:
        return windows, []
    never = f"the window schedule {stage.window.schedule} never opens after {at.isoformat()}"
    return [], [never + (" outside the change freezes" if freezes else "")]


def plan_executor(plan: Plan, settings: Settings) -> Executor:
    """The executor a wave of ``plan`` would use, for looking at the fleet from the client side.

    Raises:
        InputError: the plan's executor configuration cannot work (named with the plan).
    """
    try:
        return build_executor(executor_ref(plan, settings))
    except ExecutorConfigError as exc:
        raise InputError(f"plan {plan.name}: {exc}") from None
