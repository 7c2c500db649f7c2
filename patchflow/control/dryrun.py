"""A plan's dry run: what a wave of it would do now, without starting one (``patchflow plan``, the API's
``POST /plans/dry-run``)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from patchflow.config import Settings
from patchflow.control.waves import executor_ref, plan_freezes
from patchflow.core import versions
from patchflow.core.analysis import AlertBlockSpec
from patchflow.core.disruption import preview as disruption_preview
from patchflow.core.freezes import HORIZON, FreezePeriod, first_allowed_window, freeze_at, freeze_note
from patchflow.core.freezes import preview as freeze_preview
from patchflow.core.hooks import PHASES
from patchflow.core.instances import InstanceInfo
from patchflow.core.plans import Plan, Stage
from patchflow.core.windows import WindowSpec
from patchflow.errors import InputError
from patchflow.executors.base import Executor, Package
from patchflow.executors.factory import ExecutorConfigError, build_executor


async def dry_run(plan: Plan, settings: Settings, at: datetime) -> dict[str, Any]:
    """Per stage the resolved targets, their upgrades, the next windows (change freezes applied) and the problems
    a wave would meet — ``patchflow plan`` and ``POST /plans/dry-run``. Evaluates, but stores and changes nothing."""
    from patchflow.core.baselines import load_baseline
    from patchflow.core.catalog import load_catalog
    from patchflow.core.evaluation import evaluate

    freezes = plan_freezes(plan, settings, at)
    baseline = load_baseline(plan.baseline)
    pinned = evaluate(baseline, load_catalog(plan.catalog), at, catalog_source=str(plan.catalog)).patch_set
    pins = {(p.name, p.arch): p.version for p in pinned.patches}
    executor = plan_executor(plan, settings)
    instances = {i.instance_id: i for i in await executor.discover()}
    stages: list[dict[str, Any]] = []
    for stage in plan.stages:
        ids, missing = _stage_targets(stage, instances)
        targets = [
            {
                "id": instance_id,
                "online": instances[instance_id].online,
                "upgrades": _upgrades(await executor.scan(instance_id), pins, pinned.family),
            }
            for instance_id in ids
        ]
        windows = _stage_windows(stage, at, freezes)
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
                "ramp": stage.ramp,
                "cutoff_behavior": stage.cutoff_behavior,
                "disruption": disruption_preview(
                    stage.disruption_budget, stage.rollout, [instances[i] for i in ids]
                ),
                **rollout_controls(stage, plan.block_on_alerts),
                "problems": _stage_problems(stage, (ids, missing), windows, at, bool(freezes)),
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
        "problems": [f"{s['name']}: {p}" for s in stages for p in s["problems"]],
    }


def rollout_controls(stage: Stage, plan_block: AlertBlockSpec | None = None) -> dict[str, Any]:
    """What the stage does around each install and before promoting (null where the plan sets nothing):
    lifecycle hooks (steps per phase, as they run: ``on_exit`` with its automatic undo steps), reboots, the
    canary, the analysis and alert blocking (the stage's own, else ``plan_block``, the plan's)."""
    hooks, reboot, analysis = stage.hooks, stage.reboot, stage.gate.analysis
    block = stage.block_on_alerts or plan_block
    return {
        "hooks": (
            {
                "phases": {phase: len(hooks.steps(phase)) for phase in PHASES if hooks.steps(phase)},
                "on_hook_failure": hooks.on_hook_failure,
            }
            if hooks is not None and hooks.has_steps
            else None
        ),
        "reboot": (
            {
                "policy": reboot.policy,
                "window": _window_text(reboot.window) if reboot.window is not None else None,
                "max_concurrency": reboot.max_concurrency or None,
                "deadline_days": reboot.deadline_days or None,
            }
            if reboot is not None
            else None
        ),
        "canary": (
            {"count": stage.canary.count, "soak_seconds": stage.canary.soak_seconds}
            if stage.canary is not None
            else None
        ),
        "analysis": (
            {
                "prometheus": analysis.prometheus,
                "queries": [
                    {
                        "name": q.name,
                        "query": q.query,
                        "success": q.success,
                        "count": q.count,
                        "interval_seconds": q.interval_seconds,
                        "failure_limit": q.failure_limit,
                    }
                    for q in analysis.queries
                ],
                "compare": analysis.compare or None,
                "inconclusive": analysis.inconclusive,
            }
            if analysis is not None
            else None
        ),
        "block_on_alerts": (
            {"prometheus": block.prometheus, "match": block.match, "check_seconds": block.check_seconds}
            if block is not None
            else None
        ),
    }


def _window_text(window: WindowSpec) -> str:
    """``cron(0 3 ? * SUN *) Europe/Berlin, 4h`` (offset and cutoff when set)."""
    text = f"{window.schedule} {window.timezone}, {window.duration_hours}h"
    if window.offset_days:
        text += f", offset {window.offset_days}d"
    if window.cutoff_hours:
        text += f", cutoff {window.cutoff_hours}h"
    return text


@dataclass(frozen=True)
class PlanCheck:
    """What :func:`check_plan` found."""

    problems: list[str]
    """``STAGE: what`` — the problems :func:`dry_run` reports; a wave of the plan would halt or never finish."""
    notes: list[str]
    """What could not be checked (the executor could not list the fleet from here)."""


async def check_plan(plan: Plan, settings: Settings, at: datetime) -> PlanCheck:
    """The problems :func:`dry_run` reports, found without evaluating or scanning: what ``wave start`` checks
    before it starts anything (a window that never opens, a stage without targets, unknown instance ids)."""
    freezes = plan_freezes(plan, settings, at)
    executor = plan_executor(plan, settings)
    notes: list[str] = []
    instances: dict[str, InstanceInfo] | None
    try:
        instances = {i.instance_id: i for i in await executor.discover()}
    except Exception as exc:  # noqa: BLE001 - the workers may reach the fleet where this machine cannot
        instances = None
        notes.append(
            f"targets not checked: the {plan.executor.kind} executor cannot list the fleet here ({exc})"
        )
    problems: list[str] = []
    for stage in plan.stages:
        windows = _stage_windows(stage, at, freezes)
        targets = _stage_targets(stage, instances) if instances is not None else None
        found = _stage_problems(stage, targets, windows, at, bool(freezes))
        problems.extend(f"{stage.name}: {problem}" for problem in found)
    return PlanCheck(problems, notes)


def _stage_targets(stage: Stage, instances: dict[str, InstanceInfo]) -> tuple[list[str], list[str]]:
    """(known target ids in dispatch order, listed ids the executor does not know)."""
    if stage.targets.instance_ids:
        ids = [i for i in stage.targets.instance_ids if i in instances]
        return ids, [i for i in stage.targets.instance_ids if i not in instances]
    return sorted(i for i, info in instances.items() if info.patch_group == stage.targets.patch_group), []


def _upgrades(
    installed: list[Package], pins: dict[tuple[str, str], str], family: str
) -> list[dict[str, str]]:
    return [
        {"name": p.name, "arch": p.arch, "from": p.version, "to": pins[(p.name, p.arch)]}
        for p in installed
        if (p.name, p.arch) in pins and versions.compare(family, p.version, pins[(p.name, p.arch)]) < 0
    ]


def _stage_windows(stage: Stage, at: datetime, freezes: list[FreezePeriod]) -> list[dict[str, Any]]:
    """The stage's next windows (at most 3) as the dry run shows them, change freezes applied."""
    if stage.window.schedule.strip().lower() == "now" and freeze_at(freezes, at) is None:
        upcoming = first_allowed_window(stage.window, at, freezes)
        cut = upcoming.cutoff if upcoming is not None else None
        return [
            {
                "start": "now",
                "end": None,
                "cutoff": cut.isoformat() if cut else None,
                "skipped": [],
                "note": freeze_note(upcoming) if upcoming is not None else "",
            }
        ]
    zone = ZoneInfo(stage.window.timezone)
    return [
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


def _stage_problems(
    stage: Stage,
    targets: tuple[list[str], list[str]] | None,
    windows: list[dict[str, Any]],
    at: datetime,
    frozen: bool,
) -> list[str]:
    """What would stop a wave at this stage; ``targets`` (known, unknown ids) None when not known."""
    problems: list[str] = []
    if not windows:
        problems.append(
            f"the window schedule {stage.window.schedule} never opens after {at.isoformat()}"
            + (" outside the change freezes" if frozen else "")
        )
    elif windows[0]["start"] != "now" and datetime.fromisoformat(windows[0]["start"]) > at + HORIZON:
        problems.append(
            f"its first window opens on {windows[0]['start'][:10]}, more than {HORIZON.days} days away"
            + (f" ({windows[0]['note']})" if windows[0]["note"] else "")
        )
    if targets is None:
        return problems
    ids, missing = targets
    if not ids and not missing:
        what = (
            f"patch group {stage.targets.patch_group!r}" if stage.targets.patch_group else "its instance ids"
        )
        problems.append(f"no targets: {what} matched no instance (the wave would halt here)")
    if missing:
        problems.append(f"unknown instance ids: {', '.join(missing)}")
    return problems


def plan_executor(plan: Plan, settings: Settings) -> Executor:
    """The executor a wave of ``plan`` would use, for looking at the fleet from the client side.

    Raises:
        InputError: the plan's executor configuration cannot work (named with the plan).
    """
    try:
        return build_executor(executor_ref(plan, settings))
    except ExecutorConfigError as exc:
        raise InputError(f"plan {plan.name}: {exc}") from None
