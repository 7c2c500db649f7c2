"""Compliance reports (patchflow.core.reports) on generated fleets: every count, severity bucket, age and drift flag
is computed again in the test, independently, from the generated data."""

from __future__ import annotations

import csv
import dataclasses
import io
import random
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from patchflow.core.compliance import Instance, InstanceCompliance, judge
from patchflow.core.evaluation import PinnedPatch
from patchflow.core.plans import Targets
from patchflow.core.reports import (
    CSV_COLUMNS,
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
from tests.conftest import make_patch

NOW = datetime(2026, 11, 10, tzinfo=UTC)
GROUPS = ("web", "db", "batch")
ARCH = "amd64"


@dataclass(frozen=True)
class Pkg:
    versions: tuple[str, ...]
    """Oldest first; the last one is the approved target."""
    level: str
    released: datetime | None
    """Release date of the target version (None: undated)."""


PKGS: dict[str, Pkg] = {
    "openssl": Pkg(("3.0.2-1", "3.0.2-2", "3.0.2-3"), "CRITICAL", datetime(2026, 10, 1, 12, tzinfo=UTC)),
    "curl": Pkg(("7.81-1", "7.81-2"), "HIGH", datetime(2026, 10, 20, tzinfo=UTC)),
    "bash": Pkg(("5.1-1", "5.1-2"), "MEDIUM", datetime(2026, 11, 5, 6, tzinfo=UTC)),
    "tzdata": Pkg(("2024a-1", "2025a-1"), "LOW", None),
}
AGES = {"openssl": 39, "curl": 21, "bash": 4}  # floor((NOW - released) / 1 day)
OTHER = ("vim", "2:8.2-1")  # no approved version: INSTALLED_OTHER
REJECTED = ("libbad", "1.4-1")  # rejected under BLOCK: INSTALLED_REJECTED
STATE_COUNT = {
    "INSTALLED": "InstalledCount",
    "INSTALLED_OTHER": "InstalledOtherCount",
    "INSTALLED_PENDING_REBOOT": "InstalledPendingRebootCount",
    "INSTALLED_REJECTED": "InstalledRejectedCount",
    "MISSING": "MissingCount",
    "FAILED": "FailedCount",
}


@dataclass
class Generated:
    """One generated instance: package name → index into its versions (or None), plus the extras."""

    instance_id: str
    group: str
    installed: dict[str, int | None]
    vim: bool = False
    libbad: bool = False
    failed: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    def to_instance(self) -> Instance:
        packages = [
            (name, ARCH, PKGS[name].versions[i]) for name, i in self.installed.items() if i is not None
        ]
        if self.vim:
            packages.append((OTHER[0], ARCH, OTHER[1]))
        if self.libbad:
            packages.append((REJECTED[0], ARCH, REJECTED[1]))
        return Instance(
            instance_id=self.instance_id,
            installed=packages,
            product="Ubuntu22.04",
            family="deb",
            patch_group=self.group,
            failed=[(name, None) for name in self.failed],
            pending_reboot=[(name, None) for name in self.pending],
        )


def generate_fleet(count: int = 200, seed: int = 7) -> list[Generated]:
    """Mixed versions, undated patches, rejected packages, failed installs and pending reboots; a few
    instances are forced compliant, and a few miss only the undated tzdata."""
    rng = random.Random(seed)
    fleet: list[Generated] = []
    for n in range(count):
        group = GROUPS[n % 3] if n % 7 else GROUPS[0]  # uneven group sizes
        instance_id = f"i-{group}{n:013d}"
        if n % 25 == 0:  # compliant: everything at its target
            installed: dict[str, int | None] = {name: len(p.versions) - 1 for name, p in PKGS.items()}
            fleet.append(Generated(instance_id, group, installed))
            continue
        if n % 37 == 1:  # only the undated tzdata is missing
            installed = {name: len(p.versions) - 1 for name, p in PKGS.items()}
            installed["tzdata"] = 0
            fleet.append(Generated(instance_id, group, installed))
            continue
        installed = {
            name: (rng.randrange(len(p.versions)) if rng.random() < 0.85 else None)
            for name, p in PKGS.items()
        }
        gen = Generated(instance_id, group, installed, vim=rng.random() < 0.5, libbad=rng.random() < 0.15)
        if rng.random() < 0.2:
            gen.failed.append("curl")
        if rng.random() < 0.1:
            gen.failed.append("bash")  # may not be installed at all: a failed first install
        if rng.random() < 0.2:
            gen.pending.append("openssl")
        if rng.random() < 0.1:
            gen.pending.append("vim")
        fleet.append(gen)
    return fleet


def candidates() -> list[PinnedPatch]:
    return [
        PinnedPatch(
            name,
            ARCH,
            p.versions[-1],
            compliance_level=p.level,
            security=name == "openssl",
            product="Ubuntu22.04",
        )
        for name, p in PKGS.items()
    ]


def catalog_dates() -> dict[tuple[str, str, str], datetime | None]:
    patches = []
    for name, p in PKGS.items():
        for i, version in enumerate(p.versions):
            last = i == len(p.versions) - 1
            released = p.released if last else (p.released or NOW) - timedelta(days=300 - i)
            if not last and p.released is None:
                released = None
            patches.append(
                make_patch(
                    name=name,
                    arch=ARCH,
                    version=version,
                    family="deb",
                    product="Ubuntu22.04",
                    release_date=released.isoformat() if released else None,
                )
            )
    return release_dates(patches)


def judge_fleet(fleet: list[Generated]) -> list[InstanceCompliance]:
    results, notes = judge(
        [g.to_instance() for g in fleet],
        family="deb",
        candidates=candidates(),
        rejected_patches=[REJECTED[0]],
        rejected_action="BLOCK",
        package_manager="apt",
    )
    assert notes == []
    return results


# ------------------------------------------------------------------------------ the independent oracle


@dataclass
class Expected:
    states: Counter[str]
    missing: dict[str, int]
    oldest_age: int | None
    undated: int

    @property
    def status(self) -> str:
        bad = ("MISSING", "FAILED", "INSTALLED_REJECTED", "INSTALLED_PENDING_REBOOT")
        return "NON_COMPLIANT" if any(self.states[s] for s in bad) else "COMPLIANT"


def expected_of(gen: Generated) -> Expected:
    states: Counter[str] = Counter()
    missing = dict.fromkeys(SEVERITIES, 0)
    ages: list[int] = []
    undated = 0
    for name, pkg in PKGS.items():
        index = gen.installed[name]
        last = len(pkg.versions) - 1
        if index is None:
            state = "FAILED" if name in gen.failed else None
        elif index < last:
            state = "FAILED" if name in gen.failed else "MISSING"
        else:
            state = "INSTALLED_PENDING_REBOOT" if name in gen.pending else "INSTALLED"
        if state is None:
            continue
        states[state] += 1
        if state in ("MISSING", "FAILED"):
            missing[pkg.level] += 1
            if name in AGES:
                ages.append(AGES[name])
            else:
                undated += 1
    if gen.vim:
        states["INSTALLED_PENDING_REBOOT" if "vim" in gen.pending else "INSTALLED_OTHER"] += 1
    if gen.libbad:
        states["INSTALLED_REJECTED"] += 1
    return Expected(states, missing, max(ages) if ages else None, undated)


@pytest.fixture(scope="module")
def fleet() -> list[Generated]:
    return generate_fleet()


@pytest.fixture(scope="module")
def report(fleet: list[Generated]) -> Report:
    return build_report(
        judge_fleet(fleet),
        judged_against=JudgedAgainst("patch_set", "ps-" + "0" * 24),
        dates=catalog_dates(),
        now=NOW,
    )


def test_the_generated_fleet_covers_every_case(fleet: list[Generated]) -> None:
    """Guards the other tests: a generator that stopped producing a case would make them vacuous."""
    expected = [expected_of(g) for g in fleet]
    totals: Counter[str] = Counter()
    for e in expected:
        totals.update(e.states)
    assert all(totals[s] > 0 for s in STATE_COUNT), totals
    assert any(e.status == "COMPLIANT" for e in expected)
    assert any(e.oldest_age is None and e.undated > 0 for e in expected)  # only undated patches missing
    assert any(g.installed["bash"] is None and "bash" in g.failed for g in fleet)  # failed first install
    assert Counter(g.group for g in fleet) == Counter({"web": 86, "db": 57, "batch": 57})


def test_instance_rows_match_the_generated_data(fleet: list[Generated], report: Report) -> None:
    rows = {row.instance_id: row for row in report.rows}
    assert len(rows) == len(fleet) == 200
    for gen in fleet:
        row, exp = rows[gen.instance_id], expected_of(gen)
        assert row.patch_group == gen.group
        assert row.status == exp.status, gen
        assert {s: row.counts[f] for s, f in STATE_COUNT.items()} == {
            s: exp.states[s] for s in STATE_COUNT
        }, gen
        assert dict(row.missing_by_severity) == exp.missing, gen
        assert (row.oldest_missing.age_days if row.oldest_missing else None) == exp.oldest_age, gen
        assert row.undated_missing == exp.undated, gen
        assert row.drift is None and row.last_wave_state is None


def test_oldest_missing_names_the_earliest_released_target(fleet: list[Generated], report: Report) -> None:
    gen = next(g for g in fleet if g.installed["openssl"] == 0 and g.installed["curl"] == 0)
    row = next(r for r in report.rows if r.instance_id == gen.instance_id)
    assert row.oldest_missing is not None
    assert (row.oldest_missing.name, row.oldest_missing.version) == ("openssl", "3.0.2-3")
    assert row.oldest_missing.released_at == PKGS["openssl"].released
    assert row.oldest_missing.age_days == 39


def test_group_and_fleet_aggregates(fleet: list[Generated], report: Report) -> None:
    by_group: dict[str | None, list[Generated]] = {}
    for gen in fleet:
        by_group.setdefault(gen.group, []).append(gen)
    assert [name for name, _ in report.groups] == ["batch", "db", "web"]
    for name, agg in [*report.groups, (None, report.totals)]:
        members = by_group[name] if name is not None else fleet
        expected = [expected_of(g) for g in members]
        states: Counter[str] = Counter()
        missing = dict.fromkeys(SEVERITIES, 0)
        for e in expected:
            states.update(e.states)
            for level, n in e.missing.items():
                missing[level] += n
        ages = [e.oldest_age for e in expected if e.oldest_age is not None]
        assert agg.instances == len(members)
        assert agg.compliant == sum(e.status == "COMPLIANT" for e in expected)
        assert agg.non_compliant == sum(e.status == "NON_COMPLIANT" for e in expected)
        assert {s: agg.counts[f] for s, f in STATE_COUNT.items()} == {s: states[s] for s in STATE_COUNT}
        assert dict(agg.missing_by_severity) == missing
        assert agg.oldest_missing_age_days == max(ages)
        assert agg.unscanned == 0 and agg.drifted is None


def test_json_has_the_documented_stable_keys(report: Report) -> None:
    data = report.to_json()
    assert set(data) == {
        "report_version", "generated_at", "group", "judged_against", "last_wave", "totals", "groups",
        "instances", "unscanned", "notes",
    }  # fmt: skip
    aggregate_keys = {
        "instances", "compliant", "non_compliant", "unscanned", "counts", "missing_by_severity",
        "oldest_missing_age_days", "drifted",
    }  # fmt: skip
    assert set(data["totals"]) == aggregate_keys
    assert all(set(g) == aggregate_keys | {"group"} for g in data["groups"])
    assert set(data["instances"][0]) == {
        "instance_id", "patch_group", "status", "compliance_level", "counts", "missing_by_severity",
        "oldest_missing", "oldest_missing_age_days", "undated_missing", "last_wave_state", "drift",
    }  # fmt: skip
    assert data["generated_at"] == "2026-11-10T00:00:00Z"
    assert data["judged_against"] == {
        "kind": "patch_set", "patch_set_id": "ps-" + "0" * 24, "wave_id": None, "evaluated_at": None,
    }  # fmt: skip
    assert list(data["totals"]["missing_by_severity"]) == list(SEVERITIES)


def test_csv_has_one_row_per_instance_with_the_same_numbers(report: Report) -> None:
    parsed = list(csv.DictReader(io.StringIO(report.to_csv())))
    assert len(parsed) == 200
    assert list(parsed[0]) == list(CSV_COLUMNS)
    for line, row in zip(parsed, report.rows, strict=True):
        assert line["InstanceId"] == row.instance_id
        assert line["PatchGroup"] == row.patch_group
        assert line["ComplianceStatus"] == row.status
        assert int(line["MissingCount"]) == row.counts["MissingCount"]
        assert int(line["InstalledRejectedCount"]) == row.counts["InstalledRejectedCount"]
        assert int(line["MissingCriticalCount"]) == row.missing_by_severity["CRITICAL"]
        assert int(line["MissingLowCount"]) == row.missing_by_severity["LOW"]
        age = row.oldest_missing.age_days if row.oldest_missing else None
        assert line["OldestMissingPatchAgeDays"] == ("" if age is None else str(age))
        assert line["Drift"] == "" and line["DriftReasons"] == ""
        assert line["PatchSetId"] == "ps-" + "0" * 24
        assert line["ReportTime"] == "2026-11-10T00:00:00Z"


# ---------------------------------------------------------------------------------------------- ages


def one_missing(released: datetime | None, now: datetime) -> Report:
    results, _ = judge(
        [Instance("i-1", [("curl", ARCH, "7.81-1")], family="deb", patch_group="web")],
        family="deb",
        candidates=[PinnedPatch("curl", ARCH, "7.81-2", compliance_level="HIGH")],
        rejected_patches=[],
        rejected_action="ALLOW_AS_DEPENDENCY",
        package_manager="apt",
    )
    dates = {("curl", ARCH, "7.81-2"): released}
    return build_report(results, judged_against=JudgedAgainst("evaluation", "ps-x"), dates=dates, now=now)


def test_ages_are_whole_days_floored_and_never_negative() -> None:
    released = datetime(2026, 11, 1, 12, tzinfo=UTC)
    assert one_missing(released, released + timedelta(days=1, hours=23)).totals.oldest_missing_age_days == 1
    assert one_missing(released, released + timedelta(days=2)).totals.oldest_missing_age_days == 2
    assert one_missing(released, released - timedelta(days=3)).totals.oldest_missing_age_days == 0
    undated = one_missing(None, NOW)
    assert undated.totals.oldest_missing_age_days is None
    assert undated.rows[0].undated_missing == 1
    assert undated.rows[0].missing_by_severity["HIGH"] == 1


def test_a_naive_report_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        one_missing(None, datetime(2026, 11, 10))


# ---------------------------------------------------------------------------------------------- drift


def drift_report(last_wave: LastWave | None, unscanned: list[Unscanned] | None = None) -> Report:
    fleet = [
        # what the wave left, still there: no drift
        Instance("i-same", [("openssl", ARCH, "3.0.2-3")], family="deb", patch_group="web"),
        # downgraded by hand since: changed, and the wave said succeeded -> regressed
        Instance("i-down", [("openssl", ARCH, "3.0.2-1")], family="deb", patch_group="web"),
        # upgraded past what the wave left: changed (differs), still compliant
        Instance("i-up", [("openssl", ARCH, "3.0.2-4")], family="deb", patch_group="web"),
        # package removed since
        Instance("i-gone", [("curl", ARCH, "7.81-2")], family="deb", patch_group="db"),
        # the wave did not patch it (not_attempted): non-compliant, but not drift
        Instance("i-skip", [("openssl", ARCH, "3.0.2-2")], family="deb", patch_group="db"),
        # new since the wave
        Instance("i-new", [("openssl", ARCH, "3.0.2-3")], family="deb", patch_group=None),
        # succeeded and unchanged, but non-compliant (pending reboot, a rejected package): not drift, as
        # a NoReboot wave leaves exactly this behind
        Instance(
            "i-boot",
            [("openssl", ARCH, "3.0.2-3"), ("libbad", ARCH, "1.0")],
            family="deb",
            patch_group="db",
            pending_reboot=[("openssl", None)],
        ),
    ]
    results, _ = judge(
        fleet,
        family="deb",
        candidates=[PinnedPatch("openssl", ARCH, "3.0.2-3", compliance_level="CRITICAL")],
        rejected_patches=["libbad"],
        rejected_action="BLOCK",
        package_manager="apt",
    )
    return build_report(
        results,
        judged_against=JudgedAgainst("last_wave", "ps-x", wave_id="wave-1"),
        dates={},
        now=NOW,
        last_wave=last_wave,
        unscanned=unscanned or [],
    )


LAST_WAVE = LastWave(
    wave_id="wave-1",
    plan="web",
    state="succeeded",
    patch_set_id="ps-x",
    started_at=NOW - timedelta(days=2),
    instances={
        "i-same": WaveInstance("i-same", "succeeded", {"openssl.amd64": "3.0.2-3"}),
        "i-down": WaveInstance("i-down", "succeeded", {"openssl.amd64": "3.0.2-3"}),
        "i-up": WaveInstance("i-up", "succeeded", {"openssl.amd64": "3.0.2-3"}),
        "i-gone": WaveInstance("i-gone", "succeeded", {"openssl.amd64": "3.0.2-3"}),
        "i-skip": WaveInstance("i-skip", "not_attempted"),
        "i-boot": WaveInstance("i-boot", "succeeded", {"openssl.amd64": "3.0.2-3"}),
        "i-retired": WaveInstance("i-retired", "succeeded", {"openssl.amd64": "3.0.2-3"}),
    },
)


def test_drift_since_the_last_wave() -> None:
    report = drift_report(LAST_WAVE)
    drift = {row.instance_id: row.drift for row in report.rows}
    states = {row.instance_id: row.last_wave_state for row in report.rows}
    assert all(d is not None for d in drift.values())
    summary = {
        i: (
            [(c.package, c.expected, c.installed) for c in d.changed],
            d.regressed,
            d.not_in_last_wave,
            d.drifted,
        )
        for i, d in drift.items()
        if d is not None
    }
    assert summary == {
        "i-same": ([], False, False, False),
        "i-down": ([("openssl.amd64", "3.0.2-3", "3.0.2-1")], True, False, True),
        "i-up": ([("openssl.amd64", "3.0.2-3", "3.0.2-4")], False, False, True),
        "i-gone": ([("openssl.amd64", "3.0.2-3", None)], False, False, True),
        "i-skip": ([], False, False, False),
        "i-new": ([], False, True, True),
        "i-boot": ([], False, False, False),
    }
    assert states["i-skip"] == "not_attempted" and states["i-new"] is None
    boot = next(row for row in report.rows if row.instance_id == "i-boot")
    assert boot.status == "NON_COMPLIANT" and boot.counts["InstalledRejectedCount"] == 1
    assert report.totals.drifted == 4
    assert {name: agg.drifted for name, agg in report.groups} == {"db": 1, "web": 2, None: 1}
    assert [name for name, _ in report.groups] == ["db", "web", None]  # no group last
    row = next(
        line for line in csv.DictReader(io.StringIO(report.to_csv())) if line["InstanceId"] == "i-down"
    )
    assert (row["Drift"], row["DriftReasons"], row["LastWaveState"]) == (
        "true",
        "changed:openssl.amd64;regressed",
        "succeeded",
    )
    assert report.to_json()["last_wave"]["instances"] == 7


def test_no_last_wave_means_no_drift_rather_than_all_drifted() -> None:
    report = drift_report(None)
    assert all(row.drift is None for row in report.rows)
    assert report.totals.drifted is None
    assert report.to_json()["instances"][0]["drift"] is None


def test_unscanned_instances_are_counted_per_group_but_never_judged() -> None:
    unscanned = [Unscanned("i-off", "web", "offline"), Unscanned("i-rpm", "ops", "rpm packages")]
    report = drift_report(LAST_WAVE, unscanned)
    groups: dict[Any, Any] = dict(report.groups)
    assert groups["web"].unscanned == 1 and groups["ops"].unscanned == 1 and groups["ops"].instances == 0
    assert report.totals.unscanned == 2 and report.totals.instances == 7
    assert [u["instance_id"] for u in report.to_json()["unscanned"]] == ["i-off", "i-rpm"]


# ---------------------------------------------------------------------------------------------- unfinished waves


def unfinished_wave(*stages: StageNotRun, state: str = "waiting_approval") -> LastWave:
    """The web stage ran (its instances as in LAST_WAVE); the stages given have not started."""
    web = {i: LAST_WAVE.instances[i] for i in ("i-same", "i-down", "i-up")}
    return dataclasses.replace(LAST_WAVE, state=state, instances=web, stages_not_run=stages)


def drift_summary(report: Report) -> dict[str, tuple[bool, bool, bool]]:
    """instance → (drifted, not_in_last_wave, not_run_yet)."""
    return {
        row.instance_id: (row.drift.drifted, row.drift.not_in_last_wave, row.drift.not_run_yet)
        for row in report.rows
        if row.drift is not None
    }


def test_instances_of_stages_an_unfinished_wave_has_not_run_are_not_drift() -> None:
    """A wave waiting at the db stage's gate: the db instances are no target yet, which is not drift."""
    report = drift_report(unfinished_wave(StageNotRun("db", Targets(patch_group="db"))))
    assert drift_summary(report) == {
        "i-same": (False, False, False),
        "i-down": (True, False, False),  # the web stage ran: its drift is judged as usual
        "i-up": (True, False, False),
        "i-gone": (False, False, True),
        "i-skip": (False, False, True),
        "i-boot": (False, False, True),
        "i-new": (True, True, False),  # in no stage of the wave, run or not
    }
    assert report.totals.drifted == 3
    assert {name: agg.drifted for name, agg in report.groups} == {"db": 0, "web": 2, None: 1}
    lines = {line["InstanceId"]: line for line in csv.DictReader(io.StringIO(report.to_csv()))}
    assert (lines["i-skip"]["Drift"], lines["i-skip"]["DriftReasons"], lines["i-skip"]["LastWaveState"]) == (
        "false",
        "not_run_yet",
        "",
    )
    assert lines["i-new"]["DriftReasons"] == "not_in_last_wave"
    data = report.to_json()
    assert data["last_wave"]["stages_not_run"] == ["db"]
    skip = next(row for row in data["instances"] if row["instance_id"] == "i-skip")
    assert skip["drift"] == {
        "drifted": False, "changed": [], "regressed": False, "not_in_last_wave": False, "not_run_yet": True,
    }  # fmt: skip


def test_stages_not_run_target_by_instance_id_or_anything_when_unknown() -> None:
    by_id = drift_report(unfinished_wave(StageNotRun("canary", Targets(instance_ids=("i-gone", "i-new")))))
    assert {i for i, (_, _, not_run) in drift_summary(by_id).items() if not_run} == {"i-gone", "i-new"}
    assert {i for i, (_, outside, _) in drift_summary(by_id).items() if outside} == {"i-skip", "i-boot"}
    # Without the plan the targets are unknown: any instance the wave has not targeted may be one.
    unknown = drift_report(unfinished_wave(StageNotRun("db")))
    assert {i for i, (_, _, not_run) in drift_summary(unknown).items() if not_run} == {
        "i-gone", "i-skip", "i-boot", "i-new",
    }  # fmt: skip
    assert unknown.totals.drifted == 2


def test_a_finished_wave_s_unstarted_stages_are_over() -> None:
    """A wave that failed before its db stage will never patch db: those instances are outside it (drift)."""
    report = drift_report(unfinished_wave(StageNotRun("db", Targets(patch_group="db")), state="failed"))
    assert {i for i, (_, outside, _) in drift_summary(report).items() if outside} == {
        "i-gone", "i-skip", "i-boot", "i-new",
    }  # fmt: skip
    assert not any(not_run for _, _, not_run in drift_summary(report).values())
    assert report.to_json()["last_wave"]["stages_not_run"] == []


def test_rows_shared_between_instances_report_the_same_as_distinct_ones(fleet: list[Generated]) -> None:
    # The compliance engine hands out one row object per distinct judged row; the report remembers what each
    # object contributes. Shared objects, distinct copies and a one-pass generator of fresh copies (whose
    # objects could be freed and their ids reused if the report did not hold them) give the same report.
    results = judge_fleet(fleet)
    canonical: dict[Any, Any] = {}
    shared = [
        dataclasses.replace(r, patches=[canonical.setdefault(p, p) for p in r.patches]) for r in results
    ]
    assert sum(len(r.patches) for r in shared) > 2 * len(canonical)  # rows really are shared
    copies = [dataclasses.replace(r, patches=[dataclasses.replace(p) for p in r.patches]) for r in results]
    common = {
        "judged_against": JudgedAgainst("patch_set", "ps-" + "0" * 24),
        "dates": catalog_dates(),
        "now": NOW,
    }
    expected = build_report(copies, **common)  # type: ignore[arg-type]
    assert build_report(shared, **common).rows == expected.rows  # type: ignore[arg-type]
    fresh = (dataclasses.replace(r, patches=[dataclasses.replace(p) for p in r.patches]) for r in results)
    assert build_report(fresh, **common).rows == expected.rows  # type: ignore[arg-type]
