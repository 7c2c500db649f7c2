"""A plan's dry run: what a wave of it would do now, without starting one (``patchflow plan``, the API's
``POST /plans/dry-run``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from patchflow.config import Settings
from patchflow.control.waves import executor_ref, plan_freezes
from patchflow.core import versions
from patchflow.core.plans import Plan
from patchflow.errors import InputError
from patchflow.executors.base import Executor
from patchflow.executors.factory import ExecutorConfigError, build_executor


async def dry_run(plan: Plan, settings: Settings, at: datetime) -> dict[str, Any]:
    """Per stage the resolved targets, their upgrades, the next windows (change freezes applied) and the problems
    a wave would meet — ``patchflow plan`` and ``POST /plans/dry-run``. Evaluates, but stores and changes nothing."""
    from patchflow.core.baselines import load_baseline
    from patchflow.core.catalog import load_catalog
    from patchflow.core.evaluation import evaluate
    from patchflow.core.freezes import first_allowed_window, freeze_at, freeze_note
    from patchflow.core.freezes import preview as freeze_preview
    from patchflow.executors.base import Package

    # A dry run evaluates but stores nothing and changes nothing.
    freezes = plan_freezes(plan, settings, at)
    baseline = load_baseline(plan.baseline)
    pinned = evaluate(baseline, load_catalog(plan.catalog), at, catalog_source=str(plan.catalog)).patch_set
    family = pinned.family
    pins = {(p.name, p.arch): p.version for p in pinned.patches}
    executor = plan_executor(plan, settings)
    instances = {i.instance_id: i for i in await executor.discover()}
    stages = []
    all_problems: list[tuple[str, list[str]]] = []
    for stage in plan.stages:
        if stage.targets.instance_ids:
            ids = [i for i in stage.targets.instance_ids if i in instances]
            missing = [i for i in stage.targets.instance_ids if i not in instances]
        else:
            ids = sorted(i for i, info in instances.items() if info.patch_group == stage.targets.patch_group)
            missing = []
        targets = []
        for instance_id in ids:
            installed: list[Package] = await executor.scan(instance_id)
            upgrades = [
                {"name": p.name, "arch": p.arch, "from": p.version, "to": pins[(p.name, p.arch)]}
                for p in installed
                if (p.name, p.arch) in pins
                and versions.compare(family, p.version, pins[(p.name, p.arch)]) < 0
            ]
            targets.append({"id": instance_id, "online": instances[instance_id].online, "upgrades": upgrades})
        problems: list[str] = []
        windows: list[dict[str, Any]]
        if stage.window.schedule.strip().lower() == "now" and freeze_at(freezes, at) is None:
            upcoming = first_allowed_window(stage.window, at, freezes)
            cut = upcoming.cutoff if upcoming is not None else None
            windows = [
                {
                    "start": "now",
                    "end": None,
                    "cutoff": cut.isoformat() if cut else None,
                    "skipped": [],
                    "note": freeze_note(upcoming) if upcoming is not None else "",
                }
            ]
        else:
            windows = [
                {
                    "start": w.start.astimezone(zone).isoformat(),
                    "end": w.end.astimezone(zone).isoformat() if w.end else None,
                    "cutoff": w.cutoff.astimezone(zone).isoformat() if w.cutoff else None,
                    "skipped": [
                        {"start": start.astimezone(zone).isoformat(), "freeze": name}
                        for start, name in w.skipped
                    ],
                    "note": freeze_note(w),
                }
                for zone in [ZoneInfo(stage.window.timezone)]
                for w in freeze_preview(stage.window, at, 3, freezes)
            ]
            if not windows:
                problems.append(
                    f"the window schedule {stage.window.schedule} never opens after {at.isoformat()}"
                    + (" outside the change freezes" if freezes else "")
                )
        if not targets and not missing:
            what = (
                f"patch group {stage.targets.patch_group!r}"
                if stage.targets.patch_group
                else "its instance ids"
            )
            problems.append(f"no targets: {what} matched no instance (the wave would halt here)")
        if missing:
            problems.append(f"unknown instance ids: {', '.join(missing)}")
        all_problems.append((stage.name, problems))
        stages.append(
            {
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
                "problems": problems,
            }
        )
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
        "problems": [f"{name}: {p}" for name, found in all_problems for p in found],
    }


def plan_executor(plan: Plan, settings: Settings) -> Executor:
    """The executor a wave of ``plan`` would use, for looking at the fleet from the client side.

    Raises:
        InputError: the plan's executor configuration cannot work (named with the plan).
    """
    try:
        return build_executor(executor_ref(plan, settings))
    except ExecutorConfigError as exc:
        raise InputError(f"plan {plan.name}: {exc}") from None
