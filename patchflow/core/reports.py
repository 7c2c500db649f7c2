"""Fleet compliance reports: per instance, per patch group and for the fleet, from the latest scans.

Pure logic (data in, report out): the CLI (``patchflow compliance report``) gathers the scans, judges them
with :func:`patchflow.core.compliance.judge` and reads the last wave from the history database; this module only
counts, dates and compares. Its output is a :class:`Report`, rendered as JSON (:meth:`Report.to_json`) or
CSV (:meth:`Report.to_csv`); the table view lives with the CLI.

Definitions
-----------

**Severity** is the patch's ``ComplianceLevel`` (``CRITICAL`` … ``UNSPECIFIED``, the level the approving
rule gave it), as AWS reports the severity of compliance items; a row without an approved target counts as
``UNSPECIFIED``. **Missing** patches are the rows in state ``MISSING`` or ``FAILED``: an approved version
that is not installed.

**Oldest missing patch age** of an instance: among its missing rows whose approved target version has a
``release_date`` in the catalog, the earliest release; its age is ``now − release_date`` in whole days
(floored, never negative). ``None`` when nothing is missing or no missing target is dated (and
``undated_missing`` says how many were not). A group's and the fleet's age is the largest of their instances'.

**The last wave** is the wave ``--wave ID`` names, else the plan's latest *finished* (``succeeded``,
``failed``, ``cancelled``) *standard* wave in the history database. Emergency waves (``patchflow emergency``)
are never the default: they install a CVE fix on part of the fleet, not what the plan converges to; nor are
waves still running, waiting at a gate or halted, whose later stages have not run yet. The report's notes
name the newest such wave it passed over.

**Drift since the last wave** (only when a last wave is known), per instance, any of:

* ``changed`` — a package the wave changed (its recorded ``versions_after``, key ``name.arch``) whose
  installed version now differs from the version the wave left, or that is no longer installed. When the
  wave touched an instance several times (a retried stage, a rollback's restore), the *last* operation's
  versions win: that is what the wave left behind. Packages the wave did not change are not compared.
* ``regressed`` — the wave reports the instance ``succeeded`` (patched) but an approved version is not
  installed now: a ``MISSING`` or ``FAILED`` row against what this report judges by (normally the wave's own
  patch set). Rejected-but-installed packages and pending reboots do not count: a wave installs, it never
  removes packages, and a ``NoReboot`` wave leaves reboots pending, so both can hold right after a
  successful wave without anything having changed since.
* ``not_in_last_wave`` — the instance was no target of any stage of the wave (new since, or never in a
  stage's patch group), and no stage the wave has not run yet will target it (below).

An instance is *drifted* when any of the three holds. Instances the wave targeted but did not patch
(``not_attempted``, ``failed``) are not drift by themselves; their state is reported as ``last_wave_state``.

**An unfinished last wave** (only when ``--wave`` names one): a stage that has not started (``not_started``,
waiting at its gate) has no targets yet — the wave resolves them when the stage starts. An instance the wave
has not targeted but that such a stage will target (its patch group or instance ids in the plan; *any*
instance when the plan is not at hand: ``--inventory`` without ``--plan``, or a stage the plan no longer
has) is **not drifted**: its drift carries ``not_run_yet`` instead, a reason that never counts as drift (CSV
``Drift`` stays ``false``, ``DriftReasons`` says ``not_run_yet``; the table says "stage not run yet").
Instances already in the wave are judged as above; pending and in-flight ones have left nothing to compare.

JSON (``Report.to_json``, stable keys; ``report_version`` changes when a key's meaning does)::

    {"report_version": 1, "generated_at", "group": G | null,
     "judged_against": {"kind": "patch_set" | "last_wave" | "evaluation", "patch_set_id", "wave_id",
                        "evaluated_at"},
     "last_wave": {"wave_id", "plan", "state", "patch_set_id", "started_at", "instances",
                   "stages_not_run": [STAGE]} | null,
     "totals": AGGREGATE,
     "groups": [{"group": NAME | null, ...AGGREGATE}],
     "instances": [{"instance_id", "patch_group", "status", "compliance_level", "counts": {InstalledCount, …},
                    "missing_by_severity": {CRITICAL, HIGH, MEDIUM, LOW, INFORMATIONAL, UNSPECIFIED},
                    "oldest_missing": {"name", "arch", "version", "released_at", "age_days"} | null,
                    "oldest_missing_age_days", "undated_missing", "last_wave_state",
                    "drift": {"drifted", "changed": [{"package", "expected", "installed"}], "regressed",
                              "not_in_last_wave", "not_run_yet"} | null}],
     "unscanned": [{"instance_id", "patch_group", "reason"}],
     "notes": [...]}

    AGGREGATE = {"instances", "compliant", "non_compliant", "unscanned", "counts", "missing_by_severity",
                 "oldest_missing_age_days", "drifted" (null without a last wave)}

CSV (``Report.to_csv``): one row per judged instance, columns :data:`CSV_COLUMNS`. The count columns carry
the field names of ``DescribeInstancePatchStates`` (``InstanceId``, ``PatchGroup``, ``InstalledCount`` …,
``CriticalNonCompliantCount``), AWS's per-node compliance record; the rest follow the same PascalCase style.
"""

from __future__ import annotations

import csv
import io
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from patchflow.core.baselines import COMPLIANCE_ORDER
from patchflow.core.catalog import Patch
from patchflow.core.compliance import COUNT_FIELDS, FAILED, MISSING, InstanceCompliance, PatchState
from patchflow.core.plans import Targets
from patchflow.core.timeutil import format_instant
from patchflow.core.wavemodel import WAVE_FINAL_STATES

REPORT_VERSION = 1
SEVERITIES: tuple[str, ...] = COMPLIANCE_ORDER
"""Severity buckets, most severe first."""
MISSING_STATES = frozenset({MISSING, FAILED})
COUNT_COLUMNS: tuple[str, ...] = (
    *COUNT_FIELDS.values(),
    "NotApplicableCount",
    "CriticalNonCompliantCount",
    "SecurityNonCompliantCount",
    "OtherNonCompliantCount",
)
"""The per-instance counts of ``DescribeInstancePatchStates``, in a fixed order."""
CSV_COLUMNS: tuple[str, ...] = (
    "InstanceId",
    "PatchGroup",
    "ComplianceStatus",
    "ComplianceLevel",
    *COUNT_COLUMNS,
    *(f"Missing{level.capitalize()}Count" for level in SEVERITIES),
    "OldestMissingPatch",
    "OldestMissingPatchReleaseDate",
    "OldestMissingPatchAgeDays",
    "UndatedMissingCount",
    "LastWaveState",
    "Drift",
    "DriftReasons",
    "PatchSetId",
    "ReportTime",
)
"""CSV header. ``OldestMissingPatch`` is ``name.arch=version``; ``Drift`` is ``true``/``false`` (empty without
a last wave); ``DriftReasons`` joins ``changed:name.arch``, ``regressed``, ``not_in_last_wave`` and
``not_run_yet`` (never drift by itself) with ``;``."""

ReleaseDates = Mapping[tuple[str, str, str], datetime | None]
"""(name, arch, version) → release date (None: the catalog gives none)."""


def release_dates(catalog: Iterable[Patch]) -> dict[tuple[str, str, str], datetime | None]:
    """Release date of every catalog version; a version listed for several products keeps a known date."""
    dates: dict[tuple[str, str, str], datetime | None] = {}
    for patch in catalog:
        key = (patch.name, patch.arch, patch.version)
        if dates.get(key) is None:
            dates[key] = patch.release_date
    return dates


# ---------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class WaveInstance:
    """What a wave did to one instance, as the history database recorded it."""

    instance_id: str
    state: str | None
    """The instance's state in its stage (``succeeded``, ``failed``, ``not_attempted``, ``rolled_back`` …);
    None when only an operation row exists."""
    versions_after: Mapping[str, str] = field(default_factory=dict)
    """``name.arch`` → the version the wave left (last operation wins; only packages the wave changed)."""


@dataclass(frozen=True)
class StageNotRun:
    """A stage of an unfinished wave that has not started: the wave resolves its targets when it starts."""

    name: str
    targets: Targets | None = None
    """The stage's targets in the plan; None when the plan is not at hand (then it may target any instance)."""

    def may_target(self, instance_id: str, patch_group: str | None) -> bool:
        if self.targets is None:
            return True
        if self.targets.patch_group is not None:
            return patch_group == self.targets.patch_group
        return instance_id in self.targets.instance_ids


@dataclass(frozen=True)
class LastWave:
    """The wave a report measures drift against."""

    wave_id: str
    plan: str
    state: str
    patch_set_id: str
    started_at: datetime
    instances: Mapping[str, WaveInstance]
    """Every instance the wave targeted or operated on, by id."""
    stages_not_run: tuple[StageNotRun, ...] = ()
    """The stages that have not started yet, in plan order; ignored once the wave is finished."""

    @property
    def finished(self) -> bool:
        return self.state in WAVE_FINAL_STATES

    def not_run_yet(self, instance_id: str, patch_group: str | None) -> bool:
        """Whether a stage of this unfinished wave that has not started yet may still target the instance."""
        return not self.finished and any(s.may_target(instance_id, patch_group) for s in self.stages_not_run)

    def to_json(self) -> dict[str, Any]:
        return {
            "wave_id": self.wave_id,
            "plan": self.plan,
            "state": self.state,
            "patch_set_id": self.patch_set_id,
            "started_at": format_instant(self.started_at),
            "instances": len(self.instances),
            "stages_not_run": [] if self.finished else [s.name for s in self.stages_not_run],
        }


@dataclass(frozen=True)
class JudgedAgainst:
    """What the instances were judged against, and why that."""

    kind: Literal["patch_set", "last_wave", "evaluation"]
    """``patch_set``: a set the operator named; ``last_wave``: the set the last wave installed (what the fleet
    should have converged to); ``evaluation``: a fresh evaluation of the baseline at the report time."""
    patch_set_id: str
    wave_id: str | None = None
    evaluated_at: datetime | None = None
    """When the set was evaluated (pinned sets: when they were pinned)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "patch_set_id": self.patch_set_id,
            "wave_id": self.wave_id,
            "evaluated_at": format_instant(self.evaluated_at) if self.evaluated_at else None,
        }


@dataclass(frozen=True)
class Unscanned:
    """An instance the report has no scan of (offline, another package family, a failed scan)."""

    instance_id: str
    patch_group: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"instance_id": self.instance_id, "patch_group": self.patch_group, "reason": self.reason}


# ---------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class PackageDrift:
    package: str
    """``name.arch``."""
    expected: str
    """The version the last wave left."""
    installed: str | None
    """The version installed now; None when the package is gone."""

    def to_json(self) -> dict[str, Any]:
        return {"package": self.package, "expected": self.expected, "installed": self.installed}


@dataclass(frozen=True)
class Drift:
    changed: tuple[PackageDrift, ...] = ()
    regressed: bool = False
    not_in_last_wave: bool = False
    not_run_yet: bool = False
    """Not in the (unfinished) wave yet, but a stage that has not started may target it: never drift."""

    @property
    def drifted(self) -> bool:
        return bool(self.changed) or self.regressed or self.not_in_last_wave

    def reasons(self) -> list[str]:
        out = [f"changed:{c.package}" for c in self.changed]
        if self.regressed:
            out.append("regressed")
        if self.not_in_last_wave:
            out.append("not_in_last_wave")
        if self.not_run_yet:
            out.append("not_run_yet")
        return out

    def to_json(self) -> dict[str, Any]:
        return {
            "drifted": self.drifted,
            "changed": [c.to_json() for c in self.changed],
            "regressed": self.regressed,
            "not_in_last_wave": self.not_in_last_wave,
            "not_run_yet": self.not_run_yet,
        }


@dataclass(frozen=True)
class MissingPatch:
    """The oldest dated missing patch of an instance."""

    name: str
    arch: str
    version: str
    released_at: datetime
    age_days: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arch": self.arch,
            "version": self.version,
            "released_at": format_instant(self.released_at),
            "age_days": self.age_days,
        }


@dataclass(frozen=True)
class InstanceRow:
    instance_id: str
    patch_group: str | None
    status: str
    compliance_level: str | None
    counts: Mapping[str, int]
    missing_by_severity: Mapping[str, int]
    oldest_missing: MissingPatch | None
    undated_missing: int
    """Missing rows whose target version has no release date (left out of the age)."""
    last_wave_state: str | None
    drift: Drift | None
    """None when no last wave is known."""

    def to_json(self) -> dict[str, Any]:
        return {
            "instance_id": self.instance_id,
            "patch_group": self.patch_group,
            "status": self.status,
            "compliance_level": self.compliance_level,
            "counts": dict(self.counts),
            "missing_by_severity": dict(self.missing_by_severity),
            "oldest_missing": self.oldest_missing.to_json() if self.oldest_missing else None,
            "oldest_missing_age_days": self.oldest_missing.age_days if self.oldest_missing else None,
            "undated_missing": self.undated_missing,
            "last_wave_state": self.last_wave_state,
            "drift": self.drift.to_json() if self.drift else None,
        }


@dataclass(frozen=True)
class Aggregate:
    """Totals over a set of instances (a patch group, or the fleet)."""

    instances: int
    compliant: int
    non_compliant: int
    unscanned: int
    counts: Mapping[str, int]
    missing_by_severity: Mapping[str, int]
    oldest_missing_age_days: int | None
    drifted: int | None
    """None when no last wave is known."""

    def to_json(self) -> dict[str, Any]:
        return {
            "instances": self.instances,
            "compliant": self.compliant,
            "non_compliant": self.non_compliant,
            "unscanned": self.unscanned,
            "counts": dict(self.counts),
            "missing_by_severity": dict(self.missing_by_severity),
            "oldest_missing_age_days": self.oldest_missing_age_days,
            "drifted": self.drifted,
        }


@dataclass(frozen=True)
class Report:
    generated_at: datetime
    judged_against: JudgedAgainst
    last_wave: LastWave | None
    rows: tuple[InstanceRow, ...]
    """Sorted by patch group (no group last), then instance id."""
    groups: tuple[tuple[str | None, Aggregate], ...]
    """Per patch group, in the same order (None: instances without a patch group)."""
    totals: Aggregate
    unscanned: tuple[Unscanned, ...] = ()
    notes: tuple[str, ...] = ()
    group: str | None = None
    """The patch group the report was restricted to, if any."""

    def to_json(self) -> dict[str, Any]:
        return {
            "report_version": REPORT_VERSION,
            "generated_at": format_instant(self.generated_at),
            "group": self.group,
            "judged_against": self.judged_against.to_json(),
            "last_wave": self.last_wave.to_json() if self.last_wave else None,
            "totals": self.totals.to_json(),
            "groups": [{"group": name, **aggregate.to_json()} for name, aggregate in self.groups],
            "instances": [row.to_json() for row in self.rows],
            "unscanned": [u.to_json() for u in self.unscanned],
            "notes": list(self.notes),
        }

    def csv_rows(self) -> list[dict[str, str]]:
        """One dict per instance, keyed by :data:`CSV_COLUMNS`, every value a string."""
        stamp = format_instant(self.generated_at)
        out: list[dict[str, str]] = []
        for row in self.rows:
            oldest = row.oldest_missing
            values: dict[str, str] = {
                "InstanceId": row.instance_id,
                "PatchGroup": row.patch_group or "",
                "ComplianceStatus": row.status,
                "ComplianceLevel": row.compliance_level or "",
            }
            values.update({name: str(row.counts.get(name, 0)) for name in COUNT_COLUMNS})
            values.update(
                {
                    f"Missing{level.capitalize()}Count": str(row.missing_by_severity[level])
                    for level in SEVERITIES
                }
            )
            values["OldestMissingPatch"] = f"{oldest.name}.{oldest.arch}={oldest.version}" if oldest else ""
            values["OldestMissingPatchReleaseDate"] = format_instant(oldest.released_at) if oldest else ""
            values["OldestMissingPatchAgeDays"] = str(oldest.age_days) if oldest else ""
            values["UndatedMissingCount"] = str(row.undated_missing)
            values["LastWaveState"] = row.last_wave_state or ""
            values["Drift"] = "" if row.drift is None else ("true" if row.drift.drifted else "false")
            values["DriftReasons"] = ";".join(row.drift.reasons()) if row.drift else ""
            values["PatchSetId"] = self.judged_against.patch_set_id
            values["ReportTime"] = stamp
            out.append(values)
        return out

    def to_csv(self) -> str:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.csv_rows())
        return buffer.getvalue()


# ---------------------------------------------------------------------------------------------- building


def _age_days(now: datetime, released: datetime) -> int:
    return max(0, int((now - released).total_seconds() // 86400))


def _severity_counts() -> dict[str, int]:
    return dict.fromkeys(SEVERITIES, 0)


def drift_of(result: InstanceCompliance, last_wave: LastWave) -> tuple[str | None, Drift]:
    """The instance's state in ``last_wave`` and its drift since (see the module docstring)."""
    recorded = last_wave.instances.get(result.instance_id)
    if recorded is None:
        if last_wave.not_run_yet(result.instance_id, result.patch_group):
            return None, Drift(not_run_yet=True)
        return None, Drift(not_in_last_wave=True)
    installed = {
        f"{p.name}.{p.arch}": p.installed_version for p in result.patches if p.installed_version is not None
    }
    changed = tuple(
        PackageDrift(package, expected, installed.get(package))
        for package, expected in sorted(recorded.versions_after.items())
        if installed.get(package) != expected
    )
    regressed = recorded.state == "succeeded" and any(p.state in MISSING_STATES for p in result.patches)
    return recorded.state, Drift(changed=changed, regressed=regressed)


_RowInfo = tuple[str, tuple[datetime, str, str, str] | None] | None
"""What a report needs of one judged row: None when it is not missing, else its severity column and its
(release date, name, arch, version) when dated."""


_MEMO_ROWS = 1_000_000


def _row_info(patch: PatchState, dates: ReleaseDates) -> _RowInfo:
    if patch.state not in MISSING_STATES:
        return None
    target = patch.target_version
    released = dates.get((patch.name, patch.arch, target)) if target is not None else None
    dated = None if target is None or released is None else (released, patch.name, patch.arch, target)
    return patch.compliance_level or "UNSPECIFIED", dated


def instance_row(
    result: InstanceCompliance,
    *,
    dates: ReleaseDates,
    now: datetime,
    last_wave: LastWave | None = None,
    memo: dict[int, _RowInfo] | None = None,
) -> InstanceRow:
    """One instance's report row from its judged compliance.

    ``memo`` (one per report, while the results are alive) keeps what each judged row object contributes:
    instances share their row objects (:mod:`patchflow.core.compliance`), so a fleet's rows are looked up once
    per distinct object, not once per instance.
    """
    missing = _severity_counts()
    oldest_key: tuple[datetime, str, str, str] | None = None
    undated = 0
    memo = {} if memo is None else memo
    for patch in result.patches:
        key = id(patch)
        if key in memo:
            info = memo[key]
        else:
            info = _row_info(patch, dates)
            if len(memo) < _MEMO_ROWS:  # rows not shared between instances must not grow it without end
                memo[key] = info
        if info is None:
            continue
        level, dated = info
        missing[level] += 1
        if dated is None:
            undated += 1
        elif oldest_key is None or dated < oldest_key:  # ties: by package name, for a stable report
            oldest_key = dated
    oldest: MissingPatch | None = None
    if oldest_key is not None:
        released, name, arch, version = oldest_key
        oldest = MissingPatch(name, arch, version, released, _age_days(now, released))
    state, drift = drift_of(result, last_wave) if last_wave is not None else (None, None)
    return InstanceRow(
        instance_id=result.instance_id,
        patch_group=result.patch_group,
        status=result.status,
        compliance_level=result.compliance_level,
        counts={name: result.counts.get(name, 0) for name in COUNT_COLUMNS},
        missing_by_severity=missing,
        oldest_missing=oldest,
        undated_missing=undated,
        last_wave_state=state,
        drift=drift,
    )


def aggregate(rows: Sequence[InstanceRow], *, unscanned: int = 0, with_drift: bool = False) -> Aggregate:
    """Totals over ``rows``; ``drifted`` is counted only ``with_drift`` (a last wave is known)."""
    counts: Counter[str] = Counter(dict.fromkeys(COUNT_COLUMNS, 0))
    missing = _severity_counts()
    ages: list[int] = []
    for row in rows:
        counts.update(row.counts)
        for level, n in row.missing_by_severity.items():
            missing[level] += n
        if row.oldest_missing is not None:
            ages.append(row.oldest_missing.age_days)
    compliant = sum(1 for row in rows if row.status == "COMPLIANT")
    return Aggregate(
        instances=len(rows),
        compliant=compliant,
        non_compliant=len(rows) - compliant,
        unscanned=unscanned,
        counts=dict(counts),
        missing_by_severity=missing,
        oldest_missing_age_days=max(ages) if ages else None,
        drifted=sum(1 for row in rows if row.drift is not None and row.drift.drifted) if with_drift else None,
    )


def _group_order(group: str | None) -> tuple[bool, str]:
    return (group is None, group or "")


def build_report(
    results: Iterable[InstanceCompliance],
    *,
    judged_against: JudgedAgainst,
    dates: ReleaseDates,
    now: datetime,
    last_wave: LastWave | None = None,
    unscanned: Sequence[Unscanned] = (),
    notes: Sequence[str] = (),
    group: str | None = None,
) -> Report:
    """The report of judged instances (already restricted to ``group`` by the caller, if any).

    Args:
        results: what :func:`patchflow.core.compliance.judge` returned for the scanned instances.
        judged_against: what they were judged against (reported as is).
        dates: release dates of the catalog (:func:`release_dates`); ages of undated patches are unknown.
        now: the report time (ages are measured to it); must be timezone-aware.
        last_wave: the wave to measure drift against; None: no drift is reported.
        unscanned: instances without a scan (reported and counted, never judged).
        notes: remarks for the operator.
        group: the patch group the caller restricted the report to (reported as is).
    """
    if now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")
    memo: dict[int, _RowInfo] = {}
    judged = list(results)  # alive until the report is built: the memo is keyed by their rows' ids
    rows = sorted(
        (instance_row(r, dates=dates, now=now, last_wave=last_wave, memo=memo) for r in judged),
        key=lambda row: (_group_order(row.patch_group), row.instance_id),
    )
    with_drift = last_wave is not None
    unscanned_by_group = Counter(u.patch_group for u in unscanned)
    names = sorted({row.patch_group for row in rows} | set(unscanned_by_group), key=_group_order)
    groups = tuple(
        (
            name,
            aggregate(
                [row for row in rows if row.patch_group == name],
                unscanned=unscanned_by_group.get(name, 0),
                with_drift=with_drift,
            ),
        )
        for name in names
    )
    return Report(
        generated_at=now.astimezone(UTC),
        judged_against=judged_against,
        last_wave=last_wave,
        rows=tuple(rows),
        groups=groups,
        totals=aggregate(rows, unscanned=len(unscanned), with_drift=with_drift),
        unscanned=tuple(sorted(unscanned, key=lambda u: u.instance_id)),
        notes=tuple(notes),
        group=group,
    )
