"""``patchflow emergency``: patch named CVEs now, through the plan's stages, and say who is still exposed.

The patch set holds only the fixes for the named CVEs and ``--package`` names, with their dependencies
(:mod:`patchflow.core.emergency` says which versions), for the products the targeted instances run. The wave runs
the plan's stages for ``--targets`` (a patch group, or ``all`` in any case) with every window ``now`` and no
soak; rate control, error budgets, health and approval gates stay as the plan says, and change freezes still
apply unless ``--override-freeze --approver NAME`` names a freeze override approver.

A wave installs one version per package (name + arch) on every targeted instance that has it, so when the
targets run products with different fixes of one package (Ubuntu 20.04's and 22.04's openssl) the command
refuses, naming who needs which version, and asks for one emergency per product; ``--dry-run`` says so in
``notes`` instead. Exposure is judged per product either way.

``--format json`` prints one object (stable keys)::

    {"plan", "targets", "stages": [NAME…], "cves": [ID…], "packages": [NAME…], "dry_run",
     "patch_set_id",                        # null for a dry run (nothing is stored)
     "fixes": [{"name", "arch", "version", "product", "reason", "cve_ids"}],   # for the targets' products
     "refused": [{"name", "arch", "version", "product", "reason"}],   # the baseline never lets these in
     "unfixable": {ISSUE: WHY}, "notes": [TEXT…],
     "exposed": {ISSUE: [{"instance_id", "name", "arch", "installed", "fixed_in"}]},
     "unscanned": {INSTANCE: WHY},
     "freeze": {"name", "until"} | null,   # the wave waits for this change freeze to end
     "freeze_override_by": NAME | null,
     "wave_id": ID | null, "wave": <wave status JSON> | null,
     "still_exposed": {ISSUE: [...]} | null}   # rescanned once the wave settled (--wait)

ISSUE is a CVE id, or ``package:NAME`` for ``--package``. ``patchflow emergency exposure`` prints
``{"plan", "targets", "cves", "packages", "exposed", "exposed_instances", "unscanned", "notes"}``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from patchflow.cli.common import AllowConcurrentOpt, Fmt, emit_json, err, out, run_sync, temporal_client
from patchflow.cli.waves import approval_hint, print_status
from patchflow.config import Settings, get_settings
from patchflow.core.baselines import Baseline, load_baseline
from patchflow.core.catalog import Patch, load_catalog
from patchflow.core.emergency import ExposureReport, Selection, emergency_patch_set, exposure, select_fixes
from patchflow.core.evaluation import PatchSet
from patchflow.core.plans import Plan, Stage, load_plan
from patchflow.core.wavemodel import STAGE_WAITING_WINDOW, WaveInput, WaveStatus
from patchflow.core.windows import WindowSpec
from patchflow.errors import InputError, PatchflowError
from patchflow.executors.base import Package

emergency_app = typer.Typer(
    help="Emergency patching: only the fixes for named CVEs, through the plan's stages, right now.",
    invoke_without_command=True,
    no_args_is_help=True,
)

ALL_TARGETS = "all"
#: Every emergency stage's window: start as soon as the gate passes (change freezes still apply).
NOW = WindowSpec(schedule="now")
#: Instances scanned at once for exposure.
SCAN_CONCURRENCY = 16
#: Exposed instances listed per issue in table output.
MAX_LISTED = 20

CveOpt = Annotated[
    list[str] | None,
    typer.Option("--cve", help="A CVE to fix (repeatable), e.g. CVE-2026-1234.", show_default=False),
]
PackageOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--package", help="Also bring this package to its newest version (repeatable).", show_default=False
    ),
]
PlanOpt = Annotated[
    Path | None, typer.Option("--plan", help="Rollout plan (default: PATCHFLOW_PLAN).", show_default=False)
]
FmtOpt = Annotated[Fmt, typer.Option("--format", help="Output format.")]


@dataclass(frozen=True)
class Prepared:
    """Everything an emergency needs before it touches the fleet."""

    plan: Plan
    targets: str
    stages: tuple[Stage, ...]
    """The plan's stages the wave runs, in plan order."""
    baseline: Baseline
    catalog: list[Patch]
    selection: Selection


def resolve_plan(plan_file: Path | None, settings: Settings) -> Plan:
    path = plan_file or settings.plan
    if path is None:
        raise InputError("no plan: pass --plan PLAN or set PATCHFLOW_PLAN to the rollout plan to use")
    return load_plan(path)


def _means_all(plan: Plan, targets: str) -> bool:
    return targets == ALL_TARGETS or (
        targets.lower() == ALL_TARGETS and all(s.targets.patch_group != targets for s in plan.stages)
    )


def select_stages(plan: Plan, targets: str | None) -> tuple[Stage, ...]:
    """``all`` (any case) → every stage in order; a patch group → the stages targeting it.

    A patch group spelled exactly like ``ALL`` or ``All`` is that patch group: SSM patch groups are
    case-sensitive, and the exact name is the more specific reading.
    """
    groups = list(dict.fromkeys(s.targets.patch_group for s in plan.stages if s.targets.patch_group))
    if not targets or not targets.strip():
        raise InputError(
            f"--targets is required: one of plan {plan.name}'s patch groups ({', '.join(groups) or 'none'}) "
            f"or {ALL_TARGETS}"
        )
    wanted = targets.strip()
    if _means_all(plan, wanted):
        return plan.stages
    chosen = tuple(s for s in plan.stages if s.targets.patch_group == wanted)
    if not chosen:
        raise InputError(
            f"--targets {wanted!r}: no stage of plan {plan.name} ({plan.source}) targets that patch group; "
            f"its patch groups are {', '.join(groups) or 'none (stages list instance ids)'}, or use --targets "
            f"{ALL_TARGETS}"
        )
    return chosen


def prepare(
    settings: Settings,
    *,
    plan_file: Path | None,
    targets: str | None,
    cves: Sequence[str],
    packages: Sequence[str],
) -> Prepared:
    plan = resolve_plan(plan_file, settings)
    stages = select_stages(plan, targets)
    baseline = load_baseline(plan.baseline)
    catalog = load_catalog(plan.catalog)
    selection = select_fixes(
        catalog, cves=cves, packages=packages, baseline=baseline, catalog_source=str(plan.catalog)
    )
    wanted = (targets or "").strip()
    return Prepared(
        plan, ALL_TARGETS if _means_all(plan, wanted) else wanted, stages, baseline, catalog, selection
    )


@dataclass(frozen=True)
class Scan:
    """One look at the targeted instances."""

    report: ExposureReport
    unscanned: dict[str, str]
    """Instance → why it could not be scanned (unknown id, executor error)."""
    stage_of: dict[str, str]
    """Instance → the first of the wave's stages that targets it."""
    products: dict[str, str | None] = dataclasses.field(default_factory=dict)
    """Targeted instance the executor knows (and not of the other package family) → its product, None when
    unknown: what the wave's patch set must serve."""


async def scan_exposure(prep: Prepared, settings: Settings) -> Scan:
    """Scan the instances the wave targets and judge them against the selection's fix floors."""
    from patchflow.control.dryrun import plan_executor

    executor = plan_executor(prep.plan, settings)
    known = {i.instance_id: i for i in await executor.discover()}
    stage_of: dict[str, str] = {}
    unscanned: dict[str, str] = {}
    for stage in prep.stages:
        if stage.targets.instance_ids:
            ids = list(stage.targets.instance_ids)
        else:
            ids = sorted(i for i, info in known.items() if info.patch_group == stage.targets.patch_group)
        for instance_id in ids:
            if instance_id not in known:
                unscanned[instance_id] = f"unknown to the executor (stage {stage.name})"
            else:
                stage_of.setdefault(instance_id, stage.name)
    limit = asyncio.Semaphore(SCAN_CONCURRENCY)
    installed: dict[str, list[Package]] = {}

    async def one(instance_id: str) -> None:
        async with limit:
            try:
                installed[instance_id] = await executor.scan(instance_id)
            except PatchflowError as exc:
                unscanned[instance_id] = str(exc)

    await asyncio.gather(*(one(i) for i in stage_of))
    report = exposure(
        installed,
        prep.selection,
        families={i: known[i].family for i in installed},
        products={i: known[i].product for i in installed},
    )
    products = {i: known[i].product for i in stage_of if known[i].family in (None, prep.selection.family)}
    return Scan(report, unscanned, stage_of, products)


def wave_selection(prep: Prepared, scan: Scan) -> tuple[Selection, str | None]:
    """What the wave pins — the fixes the targeted instances' products need — and why such a wave must not
    start (None when it may): an issue without an installable fix for a targeted product, targets needing
    two versions of one package (see :mod:`patchflow.core.emergency`), or nothing at all to install."""
    targeted = prep.selection.for_products(scan.products.values())
    try:
        targeted.require_complete()
        targeted.require_one_version(scan.products)
    except InputError as exc:
        return targeted, str(exc)
    if not targeted.fixes:
        if not scan.products:
            why = (
                f"none of the targeted instances runs {targeted.family} packages"
                if scan.stage_of
                else "the executor knows none of the targeted instances"
            )
            return targeted, f"nothing to patch: {why}"
        named = sorted({p or "no product reported" for p in scan.products.values()})
        return targeted, (
            f"nothing to install: no fix in the catalog is for the targeted instances' products "
            f"({', '.join(named)}); it has fixes for "
            + ", ".join(sorted({f.product or "product-less packages" for f in prep.selection.floors}))
        )
    return targeted, None


def emergency_wave_input(
    prep: Prepared,
    settings: Settings,
    pinned: PatchSet,
    *,
    who: str = "",
    freeze_override_by: str = "",
) -> WaveInput:
    """The plan's wave input for the chosen stages, each with window ``now`` and no soak (gates, rate control
    and error budgets as the plan says)."""
    from patchflow.control.waves import wave_input

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    inp = wave_input(
        prep.plan,
        settings,
        pinned,
        # wave-<plan>- keeps the API's per-plan listing; "emergency" makes the wave recognisable anywhere.
        wave_id=f"wave-{prep.plan.name}-{stamp}-emergency-{secrets.token_hex(3)}",
        who=who,
        freeze_override_by=freeze_override_by,
        kind="emergency",
    )
    names = {s.name for s in prep.stages}
    return dataclasses.replace(
        inp,
        stages=[dataclasses.replace(s, window=NOW, soak_seconds=0) for s in inp.stages if s.name in names],
    )


def freeze_wait(inp: WaveInput, at: datetime) -> dict[str, str] | None:
    """The change freeze that holds the wave back at ``at`` and when it may start, or None."""
    from patchflow.core.freezes import first_allowed_window, freeze_at

    frozen = freeze_at(inp.freezes, at)
    if frozen is None:
        return None
    allowed = first_allowed_window(NOW, at, inp.freezes)
    until = allowed.start if allowed is not None else frozen.end
    return {"name": frozen.name, "until": until.isoformat()}


async def wait_for_wave(client: Any, wave_id: str, timeout: float) -> WaveStatus:
    """Until the wave finished, halted, waits at a gate, or waits for a change freeze to end."""
    from patchflow.cli.waves import wait_settled

    status: WaveStatus = await wait_settled(
        client,
        wave_id,
        timeout,
        progress=True,
        until=lambda s: any(stage.state == STAGE_WAITING_WINDOW for stage in s.stages),
    )
    return status


# ---------------------------------------------------------------------------------------------- output


def _selection_json(prep: Prepared) -> dict[str, Any]:
    sel = prep.selection
    return {
        "plan": prep.plan.name,
        "targets": prep.targets,
        "stages": [s.name for s in prep.stages],
        "cves": list(sel.cves),
        "packages": list(sel.packages),
        "fixes": [f.to_json() for f in sel.fixes],
        "refused": [r.to_json() for r in sel.refused],
        "unfixable": dict(sel.unfixable),
        "notes": list(sel.notes),
    }


def _print_selection(prep: Prepared) -> None:
    sel = prep.selection
    named = ", ".join([*sel.cves, *(f"package {p}" for p in sel.packages)])
    out.print(
        f"emergency for [bold]{named}[/] on plan [bold]{prep.plan.name}[/] "
        f"(targets {prep.targets}: stages {', '.join(s.name for s in prep.stages)})"
    )
    table = Table(title="patch set: only these package versions are installed")
    for column in ("package", "arch", "version", "product", "why"):
        table.add_column(column, overflow="fold")
    for fix in sel.fixes:
        table.add_row(
            fix.patch.name, fix.patch.arch, fix.patch.version, fix.patch.product or "any", fix.reason
        )
    out.print(table)
    for refused in sel.refused:
        out.print(
            f"[yellow]refused[/] {escape(f'{refused.name} {refused.arch} {refused.version}: {refused.reason}')} "
            "— the baseline's RejectedPatches apply to emergencies too; this version is never installed"
        )
    for issue, why in sel.unfixable.items():
        out.print(f"[red]no installable fix[/] for {escape(f'{issue}: {why}')}")
    for note in sel.notes:
        out.print(f"note: {note}", markup=False)


def _print_exposure(
    report: ExposureReport,
    unscanned: dict[str, str],
    *,
    title: str,
    where: dict[str, str] | None = None,
) -> None:
    """Per issue, the exposed instances with their old versions; ``where`` (instance → its state in the
    wave) is shown after each, and instances the wave attempted come first: those are the surprises."""
    out.print(f"{title}: {len(report.instances())} instance(s)")
    for issue, items in report.by_issue().items():
        per_instance: dict[str, list[str]] = {}
        for e in items:
            per_instance.setdefault(e.instance_id, []).append(
                f"{e.name} {e.arch} {e.installed} < {e.fixed_in}"
            )
        out.print(f"  {issue}: {len(per_instance) or 'nobody'}" + (" instance(s)" if per_instance else ""))
        rows = list(per_instance.items())
        if where is not None:
            rows.sort(key=lambda row: where.get(row[0], "").endswith(_NOT_YET))
        for instance_id, packages in rows[:MAX_LISTED]:
            state = f" ({where.get(instance_id, 'not targeted')})" if where is not None else ""
            out.print(f"    {instance_id}{state}  {', '.join(packages)}", markup=False, highlight=False)
        if len(rows) > MAX_LISTED:
            out.print(f"    … and {len(rows) - MAX_LISTED} more (--format json lists every one)")
    for instance_id, why in sorted(unscanned.items()):
        out.print(f"  [yellow]not scanned[/] {instance_id}: {why}")
    for note in report.notes:
        out.print(f"  note: {note}")


_NOT_YET = "not patched yet"


def _instance_states(status: WaveStatus) -> dict[str, str]:
    """Instance → ``stage state`` in the wave (``stage not patched yet`` for stages that did not get to it)."""
    where: dict[str, str] = {}
    for stage in status.stages:
        for instance_id, state in stage.instances.items():
            detail = stage.details.get(instance_id)
            label = _NOT_YET if state == "pending" else state + (f": {detail}" if detail else "")
            where[instance_id] = f"{stage.name} {label}"
    return where


def _approve_hint(prep: Prepared, status: WaveStatus) -> str | None:
    waiting = next((s for s in status.stages if s.state == "waiting_approval"), None)
    if waiting is None:
        return None
    stage = next((s for s in prep.stages if s.name == waiting.name), None)
    approvers = list(stage.gate.approvers) if stage is not None else []
    return approval_hint(status.wave_id, waiting.name, approvers)


# ---------------------------------------------------------------------------------------------- commands


@emergency_app.callback(invoke_without_command=True)
def emergency(
    ctx: typer.Context,
    cve: CveOpt = None,
    package: PackageOpt = None,
    targets: Annotated[
        str | None,
        typer.Option(
            "--targets",
            help="A patch group of the plan (its stages only) or 'all' (any case).",
            show_default=False,
        ),
    ] = None,
    plan_file: PlanOpt = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the fixes and who is exposed; start nothing.")
    ] = False,
    override_freeze: Annotated[
        bool, typer.Option("--override-freeze", help="Run through change freezes (needs --approver).")
    ] = False,
    approver: Annotated[
        str | None,
        typer.Option(
            "--approver",
            help="Who approves the freeze override (a freeze override approver).",
            show_default=False,
        ),
    ] = None,
    who: Annotated[
        str | None, typer.Option("--as", help="Who starts the wave (default: the local user).")
    ] = None,
    allow_concurrent: AllowConcurrentOpt = False,
    fmt: FmtOpt = Fmt.table,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait", help="Wait until the wave finished, halted or waits at a gate or freeze."
        ),
    ] = True,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=1, help="Stop waiting after this many seconds (the wave goes on)."),
    ] = 3600,
) -> None:
    """Patch only the fixes for the named CVEs (and their dependencies) through the plan's stages, now.

    Windows become 'now' and soaks 0; rate control, error budgets and gates stay (Prod still needs its
    approval). Ends with who is still exposed.
    """
    if ctx.invoked_subcommand is not None:
        return
    from patchflow.control.waves import (
        check_freeze_override,
        refuse_second_wave,
        remember_patch_set,
        start_wave,
        status_json,
    )
    from patchflow.core.patchsets import PatchSetStore

    settings = get_settings()
    if who is not None and not who.strip():
        raise InputError("--as needs a name (who starts the wave); leave --as out to act as the local user")
    if approver is not None and not override_freeze:
        raise InputError("--approver approves a freeze override: give it together with --override-freeze")
    prep = prepare(settings, plan_file=plan_file, targets=targets, cves=cve or [], packages=package or [])
    override_by = ""
    if override_freeze:
        check_freeze_override(prep.plan, settings, (approver or "").strip())
        override_by = (approver or "").strip()
    table = fmt is Fmt.table
    report: dict[str, Any] = {
        **_selection_json(prep),
        "dry_run": dry_run,
        "patch_set_id": None,
        "freeze": None,
        "exposed": {},
        "unscanned": {},
        "freeze_override_by": override_by or None,
        "wave_id": None,
        "wave": None,
        "still_exposed": None,
    }

    async def go() -> dict[str, Any]:
        before = await scan_exposure(prep, settings)
        # exposure is judged with every product's floors; the wave pins only what its targets need
        targeted, refusal = wave_selection(prep, before)
        wave_prep = dataclasses.replace(prep, selection=targeted)
        report.update(_selection_json(wave_prep))
        if refusal is not None and dry_run:
            report["notes"].append(f"a wave would be refused: {refusal}")
        report["exposed"] = before.report.to_json()
        report["unscanned"] = before.unscanned
        if table:
            _print_selection(wave_prep)
            if refusal is not None and dry_run:
                out.print(f"[red]a wave would be refused:[/] {escape(refusal)}")
            _print_exposure(before.report, before.unscanned, title="exposed now")
        if dry_run:
            return report
        if refusal is not None:
            raise InputError(refusal)
        client = await temporal_client(settings)
        if not allow_concurrent:
            await refuse_second_wave(
                client,
                prep.plan.name,
                lambda running: (
                    f"cancel it ('patchflow wave cancel {running}') and run the emergency again, or "
                    "start the emergency wave anyway with --allow-concurrent"
                ),
            )
        pinned = emergency_patch_set(targeted, prep.baseline, prep.catalog)
        PatchSetStore(settings.patch_set_dir).save(pinned)
        remember_patch_set(settings, pinned)
        inp = emergency_wave_input(prep, settings, pinned, who=who or "", freeze_override_by=override_by)
        report["patch_set_id"] = pinned.id
        frozen = freeze_wait(inp, datetime.now(UTC))
        report["freeze"] = frozen
        if frozen is not None:
            err.print(
                f"change freeze {frozen['name']} is active: the wave waits until {frozen['until']} "
                "(override with --override-freeze --approver NAME)"
            )
        elif override_by:
            err.print(f"change freezes overridden, approved by {override_by} (audited as override_freeze)")
        await start_wave(client, settings, inp)
        report["wave_id"] = inp.wave_id
        err.print(
            f"started emergency wave {inp.wave_id} (patch set {pinned.id}, {len(pinned.patches)} package(s))"
        )
        if not wait:
            return report
        status = await wait_for_wave(client, inp.wave_id, timeout)
        report["wave"] = status_json(status)
        hint = _approve_hint(prep, status)
        if hint:
            err.print(hint)
        after = await scan_exposure(prep, settings)
        report["still_exposed"] = after.report.to_json()
        report["unscanned"] = {**before.unscanned, **after.unscanned}
        if table:
            print_status(report["wave"])
            where = _instance_states(status)
            for instance_id, stage_name in after.stage_of.items():
                where.setdefault(instance_id, f"{stage_name} {_NOT_YET}")  # its stage has not started
            _print_exposure(after.report, after.unscanned, title="still exposed", where=where)
        return report

    try:
        result = run_sync(go())
    except KeyboardInterrupt:
        wave_id = report.get("wave_id")
        if wave_id:
            err.print(f"interrupted; wave {wave_id} keeps running: patchflow wave status {wave_id}")
        raise typer.Exit(130) from None
    if fmt is Fmt.json:
        emit_json(result)
    elif result["wave_id"] and not wait:
        out.print(result["wave_id"])
    wave = result.get("wave")
    if wave is not None and wave["state"] not in ("succeeded", "waiting_approval", "running"):
        raise typer.Exit(1)


@emergency_app.command("exposure")
def emergency_exposure(
    cve: CveOpt = None,
    package: PackageOpt = None,
    targets: Annotated[
        str,
        typer.Option("--targets", help="A patch group of the plan (its stages only) or 'all' (any case)."),
    ] = ALL_TARGETS,
    plan_file: PlanOpt = None,
    fmt: FmtOpt = Fmt.table,
) -> None:
    """Who is exposed now: instances with a package older than the named CVEs' lowest fixing version."""
    settings = get_settings()
    prep = prepare(settings, plan_file=plan_file, targets=targets, cves=cve or [], packages=package or [])
    scan: Scan = run_sync(scan_exposure(prep, settings))
    report, unscanned = scan.report, scan.unscanned
    if fmt is Fmt.json:
        emit_json(
            {
                "plan": prep.plan.name,
                "targets": prep.targets,
                "cves": list(prep.selection.cves),
                "packages": list(prep.selection.packages),
                "exposed": report.to_json(),
                "exposed_instances": report.instances(),
                "unscanned": unscanned,
                "notes": list(report.notes),
            }
        )
        return
    _print_exposure(report, unscanned, title=f"exposed now (plan {prep.plan.name}, targets {prep.targets})")
