"""``patchflow compliance report``: fleet compliance from the latest scans, per instance and per patch group,
with drift since the last wave; optionally uploaded to S3. Registered on the main app by :mod:`patchflow.cli`.

This module gathers and renders; the counting, dating and drift logic is :mod:`patchflow.core.reports`.

Sources of "the latest scans":

* ``--plan PLAN``: discover the plan's fleet through its executor and scan every instance now (``--concurrency``
  at a time, with a progress bar on stderr when stderr is a terminal or ``--progress`` forces it);
* ``--inventory FILE``: an inventory file (``patchflow ssm collect`` writes one), with ``--baseline`` and
  ``--catalog``, or ``--patch-set``, or ``--plan`` for both.

Judged against, first that applies: ``--patch-set``; the patch set of the last wave (``--wave ID``, else the
plan's latest finished standard wave in the history database; see :mod:`patchflow.core.reports` for why) — what the
fleet was supposed to converge to; a fresh evaluation of the baseline at ``--at``. The report says which
(``judged_against``).

``--s3-uri s3://BUCKET/PREFIX/`` uploads the CSV and the JSON report as
``PREFIX/patchflow-compliance/<YYYY-MM-DD>/<YYYYMMDDTHHMMSSZ>-<plan>-<group>-<hex6>.{csv,json}`` (see
:meth:`S3Location.key`): two reports of the same second, plan or group never overwrite each other.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from patchflow.cli.common import err, out
from patchflow.config import Settings, get_settings
from patchflow.core.baselines import Baseline, load_baseline
from patchflow.core.catalog import Patch, load_catalog
from patchflow.core.compliance import COUNT_FIELDS, Instance, judge, load_inventory
from patchflow.core.evaluation import PatchSet, PinnedPatch, evaluate
from patchflow.core.patchsets import PatchSetStore
from patchflow.core.plans import Plan, Targets, load_plan
from patchflow.core.reports import (
    SEVERITIES,
    JudgedAgainst,
    LastWave,
    Report,
    StageNotRun,
    Unscanned,
    WaveInstance,
    build_report,
    release_dates,
)
from patchflow.core.timeutil import format_instant, parse_instant
from patchflow.core.wavemodel import WAVE_FINAL_STATES
from patchflow.errors import InputError, NotFoundError, PatchflowError

if TYPE_CHECKING:
    from rich.progress import Progress

    from patchflow.executors.base import Executor, InstanceInfo
    from patchflow.store.db import WavePublic

compliance_app = typer.Typer(help="Fleet patch compliance reports.", no_args_is_help=True)

#: S3 bucket names as AWS allows them (3–63 lower-case letters, digits, dots and hyphens).
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
_SEVERITY_ABBREVIATIONS = {level: level[0] for level in SEVERITIES}


class ReportFormat(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str
    """Empty, or ends with ``/``."""

    def key(
        self, generated_at: datetime, *, plan: str | None, group: str | None, nonce: str, suffix: str
    ) -> str:
        """``<prefix>patchflow-compliance/<YYYY-MM-DD>/<YYYYMMDDTHHMMSSZ>-<plan>-<group>-<nonce>.<suffix>``.

        The date and time are the report time in UTC; ``plan`` is ``inventory`` for a report without a plan,
        ``group`` is ``all`` for the whole fleet. Both are made key-safe (anything but letters, digits, ``.``,
        ``_`` and ``-`` becomes ``_``; at most 64 characters). ``nonce`` (6 random hex digits, the same for
        the CSV and the JSON of one upload) keeps two uploads of the same second, plan and group apart.
        """
        stamp = f"{generated_at:%Y%m%dT%H%M%SZ}-{_key_part(plan or 'inventory')}-{_key_part(group or 'all')}"
        return f"{self.prefix}patchflow-compliance/{generated_at:%Y-%m-%d}/{stamp}-{nonce}.{suffix}"


def _key_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:64]


def parse_s3_uri(uri: str) -> S3Location:
    """``s3://bucket[/prefix[/]]`` → bucket and a prefix ending in ``/`` (or empty).

    Raises:
        InputError: anything else, with the expected form.
    """
    match = re.match(r"^s3://([^/]*)/?(.*)$", uri.strip())
    if match is None:
        raise InputError(
            f"--s3-uri {uri!r} is not an S3 URI; write s3://BUCKET/PREFIX/ (e.g. s3://reports/patching/)"
        )
    bucket, prefix = match.groups()
    if not _BUCKET_RE.match(bucket):
        raise InputError(
            f"--s3-uri {uri!r}: {bucket!r} is not a valid bucket name (3–63 lower-case letters, digits, '.' "
            "and '-'); write s3://BUCKET/PREFIX/"
        )
    prefix = prefix.strip("/")
    return S3Location(bucket=bucket, prefix=f"{prefix}/" if prefix else "")


# ---------------------------------------------------------------------------------------------- judging


@dataclass(frozen=True)
class Target:
    """What the instances are judged against."""

    judged: JudgedAgainst
    family: str
    candidates: list[PinnedPatch]
    rejected: list[str]
    rejected_action: str
    package_manager: str


def _pinned_target(pinned: PatchSet, judged: JudgedAgainst) -> Target:
    # The set was pinned with its own baseline: its rejected list and package manager are the ones that apply.
    try:
        package_manager = Baseline.model_validate(pinned.baseline).package_manager
    except ValueError:
        raise InputError(f"patch set {pinned.id} carries a baseline patchflow cannot read") from None
    return Target(
        judged=judged,
        family=pinned.family,
        candidates=list(pinned.compliance_targets()),
        rejected=list(pinned.baseline.get("RejectedPatches", [])),
        rejected_action=str(pinned.baseline.get("RejectedPatchesAction", "ALLOW_AS_DEPENDENCY")),
        package_manager=package_manager,
    )


# ---------------------------------------------------------------------------------------------- history


def _history_url(settings: Settings) -> str | None:
    """The history database to read, or None when the embedded default was never created (no wave ran)."""
    if settings.database_url is None and not (settings.data_dir / "patchflow.db").exists():
        return None
    return settings.database_url_resolved


def load_last_wave(
    url: str,
    *,
    plan: str | None = None,
    wave_id: str | None = None,
    stage_targets: Mapping[str, Targets] | None = None,
    notes: list[str] | None = None,
) -> tuple[LastWave | None, PatchSet | None]:
    """The wave to measure drift against and its patch set: ``wave_id``, else ``plan``'s latest finished
    standard wave (emergency and unfinished waves are skipped, with a note saying so; see
    :mod:`patchflow.core.reports`).

    Per instance, the state its stage reports (a later stage wins if it was in two) and the versions the wave
    left: the ``versions_after`` of its finished operations applied in order — stage, attempt, install before
    restore — so a rollback's restore or a resumed attempt overrides what came before. An unfinished wave's
    stages without recorded targets are its stages not run yet.

    Args:
        stage_targets: the targets of ``plan``'s stages by name (from the plan file), which tell what the
            stages not run yet will target; used only for a wave of ``plan``.
        notes: where to say which newer waves the default skipped.

    Returns:
        ``(None, None)`` when the plan has no finished standard wave; the set is None when the database does
        not hold it.

    Raises:
        NotFoundError: ``wave_id`` names no wave.
        DatabaseError: the database cannot be read.
    """
    from patchflow.store import db

    engine = db.make_engine(url)
    try:
        with db.translate_errors(url), db.open_session(engine) as session:
            if wave_id is None:
                found = db.list_waves(session, plan=plan, kind=db.WaveKind.standard, finished=True, limit=1)
                chosen = found[0] if found else None
                if notes is not None:
                    since = chosen.started_at if chosen is not None else None
                    newer = db.list_waves(session, plan=plan, since=since, limit=100)
                    notes.extend(
                        _skipped_waves([w for w in newer if chosen is None or w.id != chosen.id], chosen)
                    )
                if chosen is None:
                    return None, None
                wave_id = chosen.id
            wave = db.get_wave(session, wave_id=wave_id)
            operations = db.list_instance_results(session, wave_id=wave_id)
            try:
                pinned: PatchSet | None = db.get_patch_set(session, patch_set_id=wave.patch_set_id)
            except NotFoundError:
                pinned = None
    finally:
        engine.dispose()
    states: dict[str, str] = {}
    for stage in wave.stages:
        for instance in stage.instances:
            states[instance.instance_id] = instance.state
    position = {stage.name: index for index, stage in enumerate(wave.stages)}
    kind_order = {"install": 0, "restore": 1}
    after: dict[str, dict[str, str]] = {}
    for op in sorted(
        operations,
        key=lambda r: (position.get(r.stage, len(position)), r.attempt, kind_order.get(r.operation, 2)),
    ):
        if op.finished_at is not None:
            after.setdefault(op.instance_id, {}).update(op.versions_after)
    ids = set(states) | {op.instance_id for op in operations}
    targets = stage_targets if stage_targets is not None and wave.plan == plan else {}
    last = LastWave(
        wave_id=wave.id,
        plan=wave.plan,
        state=wave.state,
        patch_set_id=wave.patch_set_id,
        started_at=wave.started_at,
        instances={i: WaveInstance(i, states.get(i), after.get(i, {})) for i in sorted(ids)},
        # A stage resolves its targets when it starts: one without any has not started (read only while the
        # wave is unfinished; a finished wave's unstarted stages are over).
        stages_not_run=tuple(
            StageNotRun(s.name, targets.get(s.name)) for s in wave.stages if not s.instances
        ),
    )
    return last, pinned


def _skipped_waves(newer: Sequence[WavePublic], chosen: WavePublic | None) -> list[str]:
    """What the operator may have expected instead of ``chosen``: the newest unfinished standard wave and the
    newest emergency wave among ``newer`` (the plan's waves started since, newest first)."""
    measured = (
        f"drift is measured since the last finished standard wave, {chosen.id}"
        if chosen is not None
        else "there is no finished standard wave to measure drift since"
    )
    notes = []
    unfinished = next((w for w in newer if w.kind == "standard" and w.state not in WAVE_FINAL_STATES), None)
    if unfinished is not None:
        notes.append(
            f"wave {unfinished.id} is {unfinished.state}, not finished: {measured}; pass --wave {unfinished.id} "
            "to measure drift since it instead"
        )
    emergency = next((w for w in newer if w.kind == "emergency"), None)
    if emergency is not None:
        notes.append(
            f"emergency wave {emergency.id} ({emergency.state}) patched part of the fleet only: {measured}; "
            f"pass --wave {emergency.id} to measure drift since it instead"
        )
    return notes


# ---------------------------------------------------------------------------------------------- scanning


def _progress(show: bool, forced: bool) -> Progress | None:
    if not show:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True, force_terminal=True if forced else None)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        redirect_stdout=False,
        redirect_stderr=False,
    )


def _scan_errors() -> tuple[type[BaseException], ...]:
    """What one instance's scan may fail with without stopping the report (the instance is reported
    unscanned with the reason); anything else is a bug and propagates."""
    from botocore.exceptions import BotoCoreError, ClientError

    from patchflow.executors.ssm import SsmCommandLost

    return (PatchflowError, OSError, TimeoutError, ValueError, BotoCoreError, ClientError, SsmCommandLost)


async def scan_fleet(
    executor: Executor,
    *,
    family: str,
    group: str | None,
    concurrency: int,
    progress: Progress | None = None,
) -> tuple[list[Instance], list[Unscanned]]:
    """Discover the fleet and scan every (online, ``family``) instance of ``group``, ``concurrency`` at once.

    Raises:
        InputError: ``group`` is no instance's patch group (the message lists the known ones).
        PatchflowError: discovery failed.
    """
    from patchflow.executors.base import RebootAware

    try:
        discovered = await executor.discover()
    except _scan_errors() as exc:
        raise PatchflowError(f"cannot discover the fleet: {exc}") from None
    _check_group(group, {i.patch_group for i in discovered})
    infos = [i for i in discovered if group is None or i.patch_group == group]
    unscanned: list[Unscanned] = []
    to_scan: list[InstanceInfo] = []
    for info in infos:
        if not info.online:
            unscanned.append(Unscanned(info.instance_id, info.patch_group, "offline"))
        elif info.family != family:
            what = f"{info.family} packages" if info.family else "not a deb/rpm instance"
            unscanned.append(
                Unscanned(info.instance_id, info.patch_group, f"{what}; the baseline is {family}")
            )
        else:
            to_scan.append(info)
    semaphore = asyncio.Semaphore(concurrency)
    task = progress.add_task("scanning", total=len(to_scan)) if progress is not None else None
    errors = _scan_errors()

    async def one(info: InstanceInfo) -> Instance | Unscanned:
        async with semaphore:
            try:
                packages = await executor.scan(info.instance_id)
                waiting = (
                    await executor.pending_reboot_packages(info.instance_id)
                    if isinstance(executor, RebootAware)
                    else []
                )
            except errors as exc:
                return Unscanned(info.instance_id, info.patch_group, f"scan failed: {exc}")
            finally:
                if progress is not None and task is not None:
                    progress.advance(task)
        return Instance(
            instance_id=info.instance_id,
            installed=[(p.name, p.arch, p.version) for p in packages],
            product=info.product,
            family=info.family,
            patch_group=info.patch_group,
            # Patched with NoReboot and not rebooted yet (reboot debt): INSTALLED_PENDING_REBOOT, non-compliant.
            pending_reboot=list(waiting),
        )

    # The first scan runs alone: a backend may set itself up on first use (the simulated executor creates
    # and migrates its SQLite file), and racing first uses can fail with "database is locked".
    outcomes = [await one(info) for info in to_scan[:1]]
    outcomes += await asyncio.gather(*(one(info) for info in to_scan[1:]))
    scanned: list[Instance] = []
    for outcome in outcomes:
        if isinstance(outcome, Unscanned):
            unscanned.append(outcome)
        else:
            scanned.append(outcome)
    return scanned, unscanned


def _check_group(group: str | None, known: set[str | None]) -> None:
    if group is None or group in known:
        return
    names = sorted(g for g in known if g is not None)
    listed = ", ".join(names) if names else "none: no instance has a Patch Group tag"
    raise InputError(f"--group {group!r}: no instance is in that patch group; known groups: {listed}")


# ---------------------------------------------------------------------------------------------- command


@compliance_app.command("report")
def report_command(
    plan_file: Annotated[
        Path | None,
        typer.Option(
            "--plan",
            help="Rollout plan: its baseline, catalog and history; without --inventory its fleet is scanned now.",
            show_default=False,
        ),
    ] = None,
    inventory: Annotated[
        Path | None,
        typer.Option(
            "--inventory", help="Judge this inventory file instead of scanning.", show_default=False
        ),
    ] = None,
    baseline_file: Annotated[
        Path | None, typer.Option("--baseline", help="Baseline (with --inventory, without --plan).")
    ] = None,
    catalog_file: Annotated[
        Path | None,
        typer.Option(
            "--catalog", help="Patch catalog (with --inventory, without --plan): approvals and release dates."
        ),
    ] = None,
    patch_set: Annotated[
        str | None, typer.Option("--patch-set", help="Judge against this pinned set (id or file).")
    ] = None,
    wave: Annotated[
        str | None,
        typer.Option("--wave", help="Measure drift since this wave (default: the plan's latest wave)."),
    ] = None,
    group: Annotated[str | None, typer.Option("--group", help="Only this patch group.")] = None,
    fmt: Annotated[ReportFormat, typer.Option("--format", help="Output format.")] = ReportFormat.table,
    at: Annotated[
        str, typer.Option("--at", help="Report time (ages, evaluation), RFC 3339 or 'now'.")
    ] = "now",
    s3_uri: Annotated[
        str | None,
        typer.Option("--s3-uri", help="Also upload the CSV and JSON report under s3://BUCKET/PREFIX/."),
    ] = None,
    progress: Annotated[
        bool | None,
        typer.Option(
            "--progress/--no-progress", help="Progress bar on stderr (default: when stderr is a terminal)."
        ),
    ] = None,
    concurrency: Annotated[
        int, typer.Option("--concurrency", min=1, max=200, help="Instances scanned at once (--plan).")
    ] = 10,
) -> None:
    """Fleet compliance from the latest scans, per instance and patch group, with drift since the last wave.

    Counts by state and by severity, the age of the oldest missing patch; --s3-uri uploads CSV and JSON.
    """
    if plan_file is None and inventory is None:
        raise InputError(
            "give --plan PLAN (scan its fleet now) or --inventory FILE (judge an inventory file)"
        )
    if plan_file is not None and (baseline_file is not None or catalog_file is not None):
        raise InputError("--plan names the baseline and catalog: leave out --baseline and --catalog")
    try:
        now = parse_instant(at, allow_now=True)
    except ValueError as exc:
        raise InputError(f"--at: {exc}") from None
    location = parse_s3_uri(s3_uri) if s3_uri is not None else None

    settings = get_settings()
    plan = load_plan(plan_file) if plan_file is not None else None
    baseline_path = plan.baseline if plan is not None else baseline_file
    catalog_path = plan.catalog if plan is not None else catalog_file
    baseline = load_baseline(baseline_path) if baseline_path is not None else None
    catalog: list[Patch] | None = load_catalog(catalog_path) if catalog_path is not None else None
    notes: list[str] = []

    last_wave, wave_set = _last_wave(settings, plan, wave, notes)

    target = _target(settings, patch_set, last_wave, wave_set, baseline, catalog, catalog_path, now, notes)
    if catalog is None:
        notes.append("no catalog: the ages of missing patches are unknown (give --catalog)")

    unscanned: list[Unscanned] = []
    if inventory is not None:
        instances = load_inventory(inventory, family=target.family)
        _check_group(group, {i.patch_group for i in instances})
        instances = [i for i in instances if group is None or i.patch_group == group]
    else:
        assert plan is not None
        show = progress if progress is not None else sys.stderr.isatty()
        instances, unscanned = _scan_plan(
            plan, settings, target.family, group, concurrency, show, bool(progress)
        )

    results, judge_notes = judge(
        instances,
        family=target.family,
        candidates=target.candidates,
        rejected_patches=target.rejected,
        rejected_action=target.rejected_action,
        package_manager=target.package_manager,
    )
    report = build_report(
        results,
        judged_against=target.judged,
        dates=release_dates(catalog or []),
        now=now,
        last_wave=last_wave,
        unscanned=unscanned,
        notes=[*notes, *judge_notes],
        group=group,
    )
    if fmt is ReportFormat.json:
        sys.stdout.write(json.dumps(report.to_json(), indent=2) + "\n")
    elif fmt is ReportFormat.csv:
        sys.stdout.write(report.to_csv())
    else:
        print_report(report)
    sys.stdout.flush()
    if location is not None:
        written = upload_report(report, location, settings, plan=plan.name if plan is not None else None)
        err.print("uploaded " + " and ".join(written), highlight=False, soft_wrap=True)  # URIs stay whole


def _last_wave(
    settings: Settings, plan: Plan | None, wave_id: str | None, notes: list[str]
) -> tuple[LastWave | None, PatchSet | None]:
    from patchflow.store.db import DatabaseError

    if plan is None and wave_id is None:
        return None, None
    url = _history_url(settings)
    if url is None:
        if wave_id is not None:
            raise NotFoundError(
                f"no wave {wave_id!r}: there is no history database yet ({settings.data_dir / 'patchflow.db'})"
            )
        return None, None
    try:
        last, pinned = load_last_wave(
            url,
            plan=plan.name if plan is not None else None,
            wave_id=wave_id,
            stage_targets={s.name: s.targets for s in plan.stages} if plan is not None else None,
            notes=notes,
        )
    except DatabaseError as exc:
        if wave_id is not None:
            raise
        notes.append(f"history database unavailable, drift not reported: {exc}")
        return None, None
    if last is not None and pinned is None:
        try:  # the file store is authoritative; the database copy is best effort
            pinned = PatchSetStore(settings.patch_set_dir).load(last.patch_set_id)
        except NotFoundError:
            pinned = None
    return last, pinned


def _target(
    settings: Settings,
    patch_set: str | None,
    last_wave: LastWave | None,
    wave_set: PatchSet | None,
    baseline: Baseline | None,
    catalog: list[Patch] | None,
    catalog_path: Path | None,
    now: datetime,
    notes: list[str],
) -> Target:
    """The first that applies: the set given, the last wave's set, a fresh evaluation of the baseline."""
    if patch_set is not None:
        pinned = PatchSetStore(settings.patch_set_dir).resolve(patch_set)
        target = _pinned_target(
            pinned, JudgedAgainst("patch_set", pinned.id, evaluated_at=pinned.evaluated_at)
        )
    elif last_wave is not None and wave_set is not None:
        target = _pinned_target(
            wave_set,
            JudgedAgainst(
                "last_wave", wave_set.id, wave_id=last_wave.wave_id, evaluated_at=wave_set.evaluated_at
            ),
        )
    else:
        if last_wave is not None:
            notes.append(
                f"patch set {last_wave.patch_set_id} of wave {last_wave.wave_id} is neither in the history "
                "database nor in the patch-set store; judged against a fresh evaluation of the baseline"
            )
        if baseline is None or catalog is None:
            raise InputError(
                "nothing to judge against: give --patch-set ID, or --baseline FILE and --catalog FILE (or --plan)"
            )
        target = _evaluated_target(baseline, catalog, now, str(catalog_path))
    if baseline is not None and baseline.family is not None and baseline.family != target.family:
        raise InputError(
            f"patch set {target.judged.patch_set_id} holds {target.family} packages but the baseline is for "
            f"{baseline.family}"
        )
    return target


def _evaluated_target(baseline: Baseline, catalog: list[Patch], now: datetime, source: str) -> Target:
    if baseline.family is None:
        raise InputError(f"compliance needs a Linux baseline; {baseline.OperatingSystem} is not supported")
    result = evaluate(baseline, catalog, now, catalog_source=source)
    return Target(
        judged=JudgedAgainst("evaluation", result.patch_set.id, evaluated_at=result.patch_set.evaluated_at),
        family=baseline.family,
        candidates=result.approved(),
        rejected=list(baseline.RejectedPatches),
        rejected_action=baseline.RejectedPatchesAction,
        package_manager=baseline.package_manager,
    )


def _scan_plan(
    plan: Plan, settings: Settings, family: str, group: str | None, concurrency: int, show: bool, forced: bool
) -> tuple[list[Instance], list[Unscanned]]:
    from activities.patching import build_executor
    from patchflow.control.waves import executor_ref

    executor = build_executor(executor_ref(plan, settings))
    bar = _progress(show, forced)
    if bar is None:
        return asyncio.run(scan_fleet(executor, family=family, group=group, concurrency=concurrency))
    with bar:
        return asyncio.run(
            scan_fleet(executor, family=family, group=group, concurrency=concurrency, progress=bar)
        )


# ---------------------------------------------------------------------------------------------- output


def _severities(counts: Any) -> str:
    return " ".join(
        f"{_SEVERITY_ABBREVIATIONS[level]}{counts[level]}" for level in SEVERITIES if counts[level]
    )


def _age(days: int | None) -> str:
    return "" if days is None else str(days)


def _judged_text(report: Report) -> str:
    j = report.judged_against
    if j.kind == "last_wave":
        return f"{j.patch_set_id} (the patch set of the last wave, {j.wave_id})"
    if j.kind == "patch_set":
        return f"{j.patch_set_id} (the patch set given)"
    return f"{j.patch_set_id} (the baseline evaluated at {format_instant(j.evaluated_at or report.generated_at)})"


def print_report(report: Report) -> None:
    """The table view: a header, one table per patch group total and per instance, totals and notes."""
    scope = f" · patch group {report.group}" if report.group else ""
    out.print(f"[bold]Compliance at {format_instant(report.generated_at)}[/]{scope}", highlight=False)
    out.print(f"judged against {_judged_text(report)}", highlight=False)
    if report.last_wave is None:
        out.print("no earlier wave: drift not reported")
    else:
        w = report.last_wave
        not_run = "" if w.finished else ", ".join(s.name for s in w.stages_not_run)
        out.print(
            f"drift since wave {w.wave_id} ({w.state}, started {format_instant(w.started_at)}"
            + (f"; stages not run yet: {not_run}" if not_run else "")
            + ")",
            highlight=False,
        )
    groups = Table(title="Patch groups")
    for column in (
        "group",
        "instances",
        "compliant",
        "non-compliant",
        "unscanned",
        "missing",
        "failed",
        "pending reboot",
        "rejected",
        "missing by severity",
        "oldest missing (days)",
        "drifted",
    ):
        groups.add_column(column)
    for name, agg in [*report.groups, ("[bold]fleet[/]", report.totals)]:
        c = agg.counts
        groups.add_row(
            name if name is not None else "(no group)",
            str(agg.instances),
            str(agg.compliant),
            str(agg.non_compliant),
            str(agg.unscanned),
            str(c["MissingCount"]),
            str(c["FailedCount"]),
            str(c["InstalledPendingRebootCount"]),
            str(c["InstalledRejectedCount"]),
            _severities(agg.missing_by_severity),
            _age(agg.oldest_missing_age_days),
            "" if agg.drifted is None else str(agg.drifted),
        )
    out.print(groups)
    table = Table(title="Instances")
    for column in (
        "instance",
        "group",
        "status",
        "level",
        "installed",
        "other",
        "pending reboot",
        "rejected",
        "missing",
        "failed",
        "missing by severity",
        "oldest missing (days)",
        "drift",
    ):
        table.add_column(column)
    for row in report.rows:
        c = row.counts
        status = "[green]COMPLIANT[/]" if row.status == "COMPLIANT" else "[red]NON_COMPLIANT[/]"
        drift = ""
        if row.drift is not None:
            parts = []
            if row.drift.changed:
                parts.append(f"{len(row.drift.changed)} changed")
            if row.drift.regressed:
                parts.append("regressed")
            if row.drift.not_in_last_wave:
                parts.append("not in wave")
            if row.drift.not_run_yet:
                parts.append("stage not run yet")
            drift = ", ".join(parts) or "-"
        table.add_row(
            row.instance_id,
            row.patch_group or "",
            status,
            row.compliance_level or "",
            *(str(c[field]) for field in COUNT_FIELDS.values()),  # the six states, in the columns' order
            _severities(row.missing_by_severity),
            _age(row.oldest_missing.age_days if row.oldest_missing else None),
            drift,
        )
    out.print(table)
    t = report.totals
    out.print(
        f"{t.instances} instance(s): {t.compliant} compliant, {t.non_compliant} non-compliant, "
        f"{t.unscanned} unscanned"
        + ("" if t.drifted is None else f", {t.drifted} drifted")
        + " · severity: C critical, H high, M medium, L low, I informational, U unspecified",
        highlight=False,
    )
    for u in report.unscanned:
        out.print(f"unscanned: {u.instance_id} ({u.patch_group or 'no group'}): {u.reason}", highlight=False)
    for note in report.notes:
        out.print(f"note: {note}", highlight=False)


# ---------------------------------------------------------------------------------------------- S3


def upload_report(report: Report, location: S3Location, settings: Settings, *, plan: str | None) -> list[str]:
    """Put the CSV and the JSON report into S3 (``PATCHFLOW_SSM_ENDPOINT_URL``/``_REGION`` apply), under the
    keys of :meth:`S3Location.key` (``plan``: the plan the report is of, None for an inventory report).

    Returns:
        The ``s3://`` URIs written.

    Raises:
        NotFoundError: the bucket does not exist.
        PatchflowError: S3 refused (access denied, …) or cannot be reached; one line saying which.
    """
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    endpoint = settings.ssm_endpoint_url
    config = Config(
        retries={"mode": "standard", "max_attempts": 3},
        connect_timeout=10,
        read_timeout=60,
        **({"s3": {"addressing_style": "path"}} if endpoint else {}),
    )
    written: list[str] = []
    bodies = (
        ("csv", report.to_csv(), "text/csv"),
        ("json", json.dumps(report.to_json(), indent=2) + "\n", "application/json"),
    )
    nonce = secrets.token_hex(3)  # one for both files, so the pair shares its name
    try:
        s3 = boto3.session.Session(region_name=settings.ssm_region).client(
            "s3", endpoint_url=endpoint, config=config
        )
        for suffix, body, content_type in bodies:
            key = location.key(report.generated_at, plan=plan, group=report.group, nonce=nonce, suffix=suffix)
            s3.put_object(Bucket=location.bucket, Key=key, Body=body.encode(), ContentType=content_type)
            written.append(f"s3://{location.bucket}/{key}")
    except ClientError as exc:
        error = exc.response.get("Error", {})
        code, message = error.get("Code", "error"), error.get("Message", "")
        if code == "NoSuchBucket":
            raise NotFoundError(
                f"cannot upload the report: bucket {location.bucket!r} does not exist; create it or pass another --s3-uri"
            ) from None
        raise PatchflowError(
            f"cannot upload the report to s3://{location.bucket}/{location.prefix}: S3 answered {code}"
            + (f" ({message})" if message else "")
            + "; check the bucket policy and the credentials"
        ) from None
    except BotoCoreError as exc:
        raise PatchflowError(
            f"cannot upload the report to s3://{location.bucket}/{location.prefix}: {exc}"
        ) from None
    return written
