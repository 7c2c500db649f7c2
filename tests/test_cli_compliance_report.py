"""``patchflow compliance report`` end to end: generated simulated fleets scanned through a plan's executor,
inventory files, a real SQLite history database for drift, S3 uploads against a moto server over HTTP, and the
errors a user can cause. Expected numbers are computed from the generated data, not from patchflow."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import random
import re
import socket
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import alembic.config  # noqa: F401 - see below
import pytest
import yaml

from patchflow.cli.compliance import load_last_wave, parse_s3_uri
from patchflow.config import Settings
from patchflow.core.baselines import load_baseline
from patchflow.core.catalog import load_catalog
from patchflow.core.documents import dump_yaml
from patchflow.core.evaluation import evaluate
from patchflow.core.patchsets import PatchSetStore
from patchflow.core.reports import CSV_COLUMNS
from patchflow.core.wavemodel import AuditEntry, StageStatus, WaveStatus
from patchflow.errors import InputError, NotFoundError
from patchflow.executors.base import InstallResult, Package
from patchflow.executors.simulated import SimulatedExecutor, default_state_path
from patchflow.executors.simulated.fleet import load_fleet
from patchflow.store import db
from patchflow.testing.ssm_endpoint import SsmEndpoint, Timings
from tests.conftest import REPO_ROOT

# alembic.config binds ``Config(stdout=sys.stdout)`` when it is first imported; imported here, at collection,
# it binds pytest's session-long stream instead of the per-test capsys stream that tests here close (db.upgrade
# imports it lazily), which would break every later `alembic` command in the session (tests/db).
AT = "2026-11-10T00:00:00Z"
T0 = datetime(2026, 11, 9, tzinfo=UTC)
GROUP_SIZES = {"web": 25, "db": 20, "batch": 15}
PACKAGES: dict[str, tuple[str, str, str, str | None]] = {
    # name: (old version, approved version, priority, release date of the approved version)
    "openssl": ("3.0.2-0ubuntu1.10", "3.0.2-0ubuntu1.16", "Required", "2026-10-01T12:00:00Z"),
    "curl": ("7.81.0-1ubuntu1.14", "7.81.0-1ubuntu1.18", "Important", "2026-10-20T00:00:00Z"),
    "tzdata": ("2024a-0ubuntu0.22.04", "2025b-0ubuntu0.22.04", "Standard", None),
}
LEVEL = {"Required": "CRITICAL", "Important": "HIGH", "Standard": "MEDIUM"}
AGE_DAYS = {"openssl": 39, "curl": 21}  # at AT; tzdata is undated
BASELINE = {
    "Name": "report-test",
    "OperatingSystem": "UBUNTU",
    "ApprovalRules": {
        "PatchRules": [
            {
                "PatchFilterGroup": {"PatchFilters": [{"Key": "PRIORITY", "Values": [priority]}]},
                "ComplianceLevel": level,
            }
            for priority, level in LEVEL.items()
        ]
    },
    "RejectedPatches": ["libbad"],
    "RejectedPatchesAction": "BLOCK",
}


@dataclass
class Node:
    instance_id: str
    group: str
    versions: dict[str, str]
    libbad: bool
    offline: bool

    @property
    def missing(self) -> list[str]:
        return [name for name, version in self.versions.items() if version == PACKAGES[name][0]]

    @property
    def compliant(self) -> bool:
        return not self.missing and not self.libbad

    @property
    def oldest_age(self) -> int | None:
        ages = [AGE_DAYS[name] for name in self.missing if name in AGE_DAYS]
        return max(ages) if ages else None

    def installed(self) -> list[dict[str, str]]:
        packages = [{"name": n, "arch": "amd64", "version": v} for n, v in self.versions.items()]
        if self.libbad:
            packages.append({"name": "libbad", "arch": "amd64", "version": "1.4-1"})
        return packages


@dataclass
class Files:
    plan: Path
    baseline: Path
    catalog: Path
    fleet: Path
    inventory: Path
    nodes: list[Node]

    @property
    def online(self) -> list[Node]:
        return [n for n in self.nodes if not n.offline]


def generate(directory: Path, seed: int = 11) -> Files:
    """A fleet of 60 Ubuntu instances in three patch groups with mixed versions, rejected packages and one
    offline instance; its plan, baseline and catalog; and the same fleet as an inventory file."""
    rng = random.Random(seed)
    nodes = []
    for group, size in GROUP_SIZES.items():
        for n in range(1, size + 1):
            versions = {name: rng.choice((old, new)) for name, (old, new, _, _) in PACKAGES.items()}
            if n == 2:  # at least one compliant instance per group
                versions = {name: new for name, (_, new, _, _) in PACKAGES.items()}
            offline = group == "web" and n == 1
            nodes.append(Node(f"i-{group}{n:014d}", group, versions, n != 2 and rng.random() < 0.2, offline))
    directory.mkdir(parents=True, exist_ok=True)
    catalog = [
        {
            "name": name,
            "arch": "amd64",
            "version": new,
            "family": "deb",
            "product": "Ubuntu22.04",
            "priority": priority,
            "release_date": released,
            "security": True,
        }
        for name, (_, new, priority, released) in PACKAGES.items()
    ]
    files = Files(
        plan=directory / "plan.yaml",
        baseline=directory / "baseline.yaml",
        catalog=directory / "catalog.json",
        fleet=directory / "fleet.yaml",
        inventory=directory / "inventory.json",
        nodes=nodes,
    )
    files.baseline.write_text(dump_yaml(BASELINE, sort_keys=False))
    files.catalog.write_text(json.dumps(catalog, indent=1))
    fleet = {
        "name": "reportfleet",
        "instances": [
            {
                "id": node.instance_id,
                "tags": {"Patch Group": node.group},
                "platform": {"family": "deb", "product": "Ubuntu22.04"},
                "installed": node.installed(),
                "behaviour": {"duration_seconds": 0.0, "offline": node.offline},
            }
            for node in nodes
        ],
    }
    files.fleet.write_text(dump_yaml(fleet, sort_keys=False))
    inventory = [
        {
            "instance_id": node.instance_id,
            "platform": {"family": "deb", "product": "Ubuntu22.04"},
            "patch_group": node.group,
            "installed": node.installed(),
        }
        for node in nodes
    ]
    files.inventory.write_text(json.dumps(inventory, indent=1))
    stages = [
        {
            "name": group,
            "targets": {"patch_group": group},
            "window": "now",
            "max_concurrency": 5,
            "max_errors": 0,
        }
        for group in ("web", "db")
    ]
    plan = {
        "name": "reports",
        "baseline": "baseline.yaml",
        "catalog": "catalog.json",
        "executor": {"kind": "simulated", "fleet": "fleet.yaml", "time_scale": 0},
        "stages": stages,
    }
    files.plan.write_text(dump_yaml(plan, sort_keys=False))
    return files


@dataclass
class Result:
    code: int
    out: str
    err: str


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An isolated data directory and no ambient database or AWS endpoint settings."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("PATCHFLOW_DATA_DIR", str(data_dir))
    for name in (
        "PATCHFLOW_DATABASE_URL",
        "PATCHFLOW_SSM_ENDPOINT_URL",
        "PATCHFLOW_SSM_REGION",
        "PATCHFLOW_DEBUG",
    ):
        monkeypatch.delenv(name, raising=False)
    return data_dir


@pytest.fixture
def files(tmp_path: Path) -> Files:
    return generate(tmp_path / "input")


@pytest.fixture
def cli(env: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``patchflow …`` in process through the real entry point (error handling and exit codes included)."""
    from patchflow.cli import main

    def run(*args: str | Path) -> Result:
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in args])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err, captured.err
        code = exit_info.value.code
        return Result(code if isinstance(code, int) else 0, captured.out, captured.err)

    return run


def report_json(result: Result) -> dict[str, Any]:
    assert result.code == 0, result.err
    data: dict[str, Any] = json.loads(result.out)
    return data


# ---------------------------------------------------------------------------------------------- formats


def test_plan_scans_the_fleet_and_reports_it_as_json(cli: Any, files: Files) -> None:
    data = report_json(cli("compliance", "report", "--plan", files.plan, "--at", AT, "--format", "json"))
    assert data["judged_against"]["kind"] == "evaluation"
    assert data["last_wave"] is None and data["totals"]["drifted"] is None
    online = files.online
    rows = {row["instance_id"]: row for row in data["instances"]}
    assert set(rows) == {n.instance_id for n in online}
    for node in online:
        row = rows[node.instance_id]
        assert row["patch_group"] == node.group
        assert row["status"] == ("COMPLIANT" if node.compliant else "NON_COMPLIANT")
        assert row["counts"]["MissingCount"] == len(node.missing)
        assert row["counts"]["InstalledRejectedCount"] == int(node.libbad)
        assert row["missing_by_severity"] == {
            level: sum(1 for name in node.missing if LEVEL[PACKAGES[name][2]] == level)
            for level in ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNSPECIFIED")
        }
        assert row["oldest_missing_age_days"] == node.oldest_age
        assert row["undated_missing"] == int("tzdata" in node.missing)
    totals = data["totals"]
    assert totals["instances"] == len(online) == 59
    assert totals["compliant"] == sum(n.compliant for n in online)
    assert totals["counts"]["MissingCount"] == sum(len(n.missing) for n in online)
    assert totals["unscanned"] == 1
    assert data["unscanned"] == [
        {"instance_id": "i-web00000000000001", "patch_group": "web", "reason": "offline"}
    ]
    groups = {g["group"]: g for g in data["groups"]}
    assert {g: groups[g]["instances"] + groups[g]["unscanned"] for g in groups} == GROUP_SIZES
    for group in GROUP_SIZES:
        members = [n for n in online if n.group == group]
        assert groups[group]["non_compliant"] == sum(not n.compliant for n in members)
        assert groups[group]["oldest_missing_age_days"] == max(
            a for n in members if (a := n.oldest_age) is not None
        )


def test_table_is_the_default_format(cli: Any, files: Files) -> None:
    result = cli("compliance", "report", "--plan", files.plan, "--at", AT)
    assert result.code == 0, result.err
    assert (
        "judged against ps-" in result.out
        and "(the baseline evaluated at 2026-11-10T00:00:00Z)" in result.out
    )
    assert "no earlier wave: drift not reported" in result.out
    assert "Patch groups" in result.out and "Instances" in result.out
    assert "unscanned: i-web00000000000001 (web): offline" in result.out
    compliant = sum(n.compliant for n in files.online)
    assert f"59 instance(s): {compliant} compliant, {59 - compliant} non-compliant, 1 unscanned" in result.out
    assert "scanning" not in result.err  # stderr is no terminal here: no progress bar unless forced


def test_csv_from_an_inventory_file(cli: Any, files: Files) -> None:
    result = cli(
        "compliance", "report", "--inventory", files.inventory, "--baseline", files.baseline,
        "--catalog", files.catalog, "--at", AT, "--format", "csv",
    )  # fmt: skip
    assert result.code == 0, result.err
    lines = list(csv.DictReader(io.StringIO(result.out)))
    assert list(lines[0]) == list(CSV_COLUMNS)
    by_id = {line["InstanceId"]: line for line in lines}
    assert set(by_id) == {n.instance_id for n in files.nodes}  # an inventory has no offline instances
    for node in files.nodes:
        line = by_id[node.instance_id]
        assert line["PatchGroup"] == node.group
        assert line["ComplianceStatus"] == ("COMPLIANT" if node.compliant else "NON_COMPLIANT")
        assert int(line["MissingCount"]) == len(node.missing)
        assert int(line["MissingCriticalCount"]) == int("openssl" in node.missing)
        assert line["OldestMissingPatchAgeDays"] == ("" if node.oldest_age is None else str(node.oldest_age))
        if node.oldest_age == 39:
            assert line["OldestMissingPatch"] == "openssl.amd64=3.0.2-0ubuntu1.16"
            assert line["OldestMissingPatchReleaseDate"] == "2026-10-01T12:00:00Z"
        assert line["ReportTime"] == AT
    assert [line["PatchGroup"] for line in lines] == sorted(line["PatchGroup"] for line in lines)


def test_group_filter(cli: Any, files: Files) -> None:
    data = report_json(
        cli("compliance", "report", "--plan", files.plan, "--group", "db", "--at", AT, "--format", "json")
    )
    assert data["group"] == "db"
    assert {row["patch_group"] for row in data["instances"]} == {"db"}
    assert data["totals"]["instances"] == GROUP_SIZES["db"]
    assert [g["group"] for g in data["groups"]] == ["db"]
    assert data["totals"]["compliant"] == sum(n.compliant for n in files.nodes if n.group == "db")
    inventory = cli(
        "compliance", "report", "--inventory", files.inventory, "--baseline", files.baseline,
        "--catalog", files.catalog, "--group", "batch", "--format", "csv",
    )  # fmt: skip
    assert {line["PatchGroup"] for line in csv.DictReader(io.StringIO(inventory.out))} == {"batch"}


@pytest.mark.parametrize("source", ["plan", "inventory"])
def test_an_unknown_group_lists_the_known_ones(cli: Any, files: Files, source: str) -> None:
    args: tuple[Any, ...] = (
        ("--plan", files.plan)
        if source == "plan"
        else ("--inventory", files.inventory, "--baseline", files.baseline, "--catalog", files.catalog)
    )
    result = cli("compliance", "report", *args, "--group", "dbs", "--format", "json")
    assert result.code == 2
    assert result.out == ""
    assert (
        result.err
        == "error: --group 'dbs': no instance is in that patch group; known groups: batch, db, web\n"
    )


# ---------------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        ((), 2, "give --plan PLAN (scan its fleet now) or --inventory FILE"),
        (
            ("--inventory", "{dir}/nope.json", "--patch-set", "{dir}/set.json"),
            3,
            "is neither a stored patch set id",
        ),
        (
            ("--inventory", "{dir}/nope.json", "--baseline", "{baseline}", "--catalog", "{catalog}"),
            2,
            "nope.json",
        ),
        (("--inventory", "{inventory}"), 2, "nothing to judge against: give --patch-set ID"),
        (("--plan", "{plan}", "--baseline", "{baseline}"), 2, "--plan names the baseline and catalog"),
        (
            ("--plan", "{plan}", "--at", "2026-11-10T00:00:00"),
            2,
            "--at: '2026-11-10T00:00:00' has no UTC offset",
        ),
        (
            ("--plan", "{plan}", "--s3-uri", "https://bucket/x"),
            2,
            "is not an S3 URI; write s3://BUCKET/PREFIX/",
        ),
        (("--plan", "{plan}", "--s3-uri", "s3://Bad_Bucket/x"), 2, "'Bad_Bucket' is not a valid bucket name"),
        (("--plan", "{plan}", "--s3-uri", "s3://"), 2, "'' is not a valid bucket name"),
        (
            ("--plan", "{plan}", "--patch-set", "ps-" + "0" * 24),
            3,
            "patch set ps-000000000000000000000000 is not in",
        ),
        (("--plan", "{plan}", "--wave", "wave-nope"), 3, "no wave 'wave-nope'"),
        (("--plan", "{plan}", "--format", "xml"), 2, "'xml' is not one of"),
    ],
)
def test_bad_input_is_one_clear_error(
    cli: Any, files: Files, args: tuple[str, ...], code: int, message: str
) -> None:
    values = {
        "dir": files.plan.parent,
        "plan": files.plan,
        "baseline": files.baseline,
        "catalog": files.catalog,
        "inventory": files.inventory,
    }
    result = cli("compliance", "report", *(a.format(**values) for a in args))
    assert result.code == code, result.err
    assert message in result.err
    assert result.out == ""


def test_parse_s3_uri() -> None:
    assert parse_s3_uri("s3://reports") == parse_s3_uri("s3://reports/")
    assert parse_s3_uri("s3://reports").prefix == ""
    assert parse_s3_uri("s3://reports/a/b").prefix == "a/b/"
    assert parse_s3_uri("s3://reports//a/b//").prefix == "a/b/"
    location = parse_s3_uri("s3://reports/ops/")
    at = datetime(2026, 11, 10, 3, 4, 5, tzinfo=UTC)
    assert location.key(at, plan="web", group="prod", nonce="0a1b2c", suffix="csv") == (
        "ops/patchflow-compliance/2026-11-10/20261110T030405Z-web-prod-0a1b2c.csv"
    )
    assert location.key(at, plan=None, group=None, nonce="0a1b2c", suffix="json") == (
        "ops/patchflow-compliance/2026-11-10/20261110T030405Z-inventory-all-0a1b2c.json"
    )
    # Patch groups are free text: nothing in them makes another folder or an odd key.
    assert location.key(at, plan="web", group="Prod DB/eu", nonce="0a1b2c", suffix="csv") == (
        "ops/patchflow-compliance/2026-11-10/20261110T030405Z-web-Prod_DB_eu-0a1b2c.csv"
    )
    with pytest.raises(InputError):
        parse_s3_uri("s3:/reports/x")


# ---------------------------------------------------------------------------------------------- drift


async def patch(
    executor: SimulatedExecutor, instance_id: str, packages: list[Package], op: str
) -> InstallResult:
    return await executor.install(instance_id, packages, operation_id=op)


def record(url: str, **fields: Any) -> None:
    """Record one operation exactly as the patching activities do (versions of the changed packages)."""
    result: InstallResult = fields.pop("result")
    engine = db.make_engine(url)
    try:
        with db.open_session(engine) as session:
            db.record_instance_result(
                session,
                status=result.status,
                started_at=T0,
                finished_at=T0 + timedelta(seconds=1),
                versions_before={f"{c.name}.{c.arch}": c.from_version for c in result.changed},
                versions_after={f"{c.name}.{c.arch}": c.to_version for c in result.changed},
                **fields,
            )
    finally:
        engine.dispose()


def test_drift_since_the_last_wave_from_the_history_database(cli: Any, files: Files, env: Path) -> None:
    """A wave patches web and db on the simulated fleet and is recorded as the activities record it; then one
    web instance is downgraded by hand and one db instance was rolled back by the wave itself."""
    url = f"sqlite:///{env / 'patchflow.db'}"
    db.upgrade(url)
    settings = Settings()
    pinned = evaluate(
        load_baseline(files.baseline), load_catalog(files.catalog), datetime(2026, 11, 10, tzinfo=UTC)
    ).patch_set
    fleet = load_fleet(files.fleet)
    executor = SimulatedExecutor(fleet, default_state_path(settings.data_dir, fleet), time_scale=0)
    pins = [Package(p.name, p.arch, p.version) for p in pinned.patches]
    wave_id = "wave-reports-1"
    states: dict[str, dict[str, str]] = {"web": {}, "db": {}}
    results: dict[str, InstallResult] = {}
    for stage in states:
        for node in files.online:
            if node.group == stage:
                op = f"{wave_id}/{stage}/{node.instance_id}/install/0"
                result = asyncio.run(patch(executor, node.instance_id, pins, op))
                record(
                    url, wave_id=wave_id, stage=stage, instance_id=node.instance_id, attempt=0, result=result
                )
                states[stage][node.instance_id] = result.status
                results[node.instance_id] = result
    # the wave rolled back a db instance (restore recorded as the rollback activity does)
    rolled = next(n.instance_id for n in files.online if n.group == "db" and results[n.instance_id].changed)
    restore = [Package(c.name, c.arch, c.from_version) for c in results[rolled].changed]
    restored = asyncio.run(executor.restore(rolled, restore, operation_id=f"{wave_id}/db/{rolled}/restore/0"))
    record(
        url, wave_id=wave_id, stage="db", instance_id=rolled, attempt=0, operation="restore", result=restored
    )
    states["db"][rolled] = "rolled_back"
    # after the wave, somebody downgrades openssl on a web instance the wave had upgraded
    changed = [n.instance_id for n in files.online if n.group == "web" and "openssl" in n.missing]
    downgraded = changed[0]
    old_openssl = Package("openssl", "amd64", PACKAGES["openssl"][0])
    asyncio.run(executor.restore(downgraded, [old_openssl], operation_id="by-hand"))
    engine = db.make_engine(url)
    try:
        with db.open_session(engine) as session:
            db.save_patch_set(session, patch_set=pinned)  # only in the database, not in the file store
            db.record_wave_status(
                session,
                status=WaveStatus(
                    wave_id=wave_id,
                    plan_name="reports",
                    state="succeeded",
                    patch_set_id=pinned.id,
                    stages=[StageStatus(name=s, state="succeeded", instances=states[s]) for s in states],
                    audit=[AuditEntry(at=T0, who="tester", action="start")],
                ),
                at=T0,
            )
    finally:
        engine.dispose()

    data = report_json(cli("compliance", "report", "--plan", files.plan, "--at", AT, "--format", "json"))
    assert data["judged_against"] == {
        "kind": "last_wave",
        "patch_set_id": pinned.id,
        "wave_id": wave_id,
        "evaluated_at": AT,
    }
    assert data["last_wave"]["wave_id"] == wave_id and data["last_wave"]["state"] == "succeeded"
    rows = {row["instance_id"]: row for row in data["instances"]}
    assert rows[downgraded]["drift"] == {
        "drifted": True,
        "changed": [
            {"package": "openssl.amd64", "expected": PACKAGES["openssl"][1], "installed": old_openssl.version}
        ],
        "regressed": True,
        "not_in_last_wave": False,
        "not_run_yet": False,
    }
    assert rows[rolled]["last_wave_state"] == "rolled_back"
    assert rows[rolled]["status"] == "NON_COMPLIANT"
    assert rows[rolled]["drift"]["drifted"] is False  # the wave itself put the old versions back
    batch = [n.instance_id for n in files.online if n.group == "batch"]
    assert all(rows[i]["drift"]["not_in_last_wave"] for i in batch)
    drifted = sorted(i for i, row in rows.items() if row["drift"]["drifted"])
    assert drifted == sorted([downgraded, *batch])
    assert data["totals"]["drifted"] == len(batch) + 1
    assert {g["group"]: g["drifted"] for g in data["groups"]} == {"batch": len(batch), "db": 0, "web": 1}

    table = cli("compliance", "report", "--plan", files.plan, "--at", AT)
    assert f"drift since wave {wave_id} (succeeded, started 2026-11-09T00:00:00Z)" in table.out
    assert f"judged against {pinned.id} (the patch set of the last wave, {wave_id})" in table.out

    # The inventory still holds the versions from before the wave: everything the wave changed shows as drift.
    before = report_json(
        cli(
            "compliance",
            "report",
            "--inventory",
            files.inventory,
            "--wave",
            wave_id,
            "--at",
            AT,
            "--format",
            "json",
        )
    )
    assert before["judged_against"]["kind"] == "last_wave"
    assert "no catalog: the ages of missing patches are unknown (give --catalog)" in before["notes"]
    changed_by_wave = {i for i, r in results.items() if r.changed} - {rolled}
    offline = {n.instance_id for n in files.nodes if n.offline}
    expected = changed_by_wave | {n.instance_id for n in files.nodes if n.group == "batch"} | offline
    assert {row["instance_id"] for row in before["instances"] if row["drift"]["drifted"]} == expected


def test_load_last_wave_keeps_what_the_last_operation_left(env: Path) -> None:
    url = f"sqlite:///{env / 'history.db'}"
    db.upgrade(url)
    engine = db.make_engine(url)

    def op(wave: str, attempt: int, operation: str, after: dict[str, str], finished: bool = True) -> None:
        db.record_instance_result(
            session,
            wave_id=wave,
            stage="canary",
            instance_id="i-1",
            attempt=attempt,
            operation=operation,
            status="succeeded",
            started_at=T0,
            finished_at=T0 if finished else None,
            versions_after=after,
        )

    try:
        with db.open_session(engine) as session:
            for wave, started in (("wave-old", T0 - timedelta(days=7)), ("wave-new", T0)):
                db.record_wave_status(
                    session,
                    status=WaveStatus(
                        wave_id=wave,
                        plan_name="web",
                        state="failed",  # the default last wave is a finished one
                        patch_set_id="ps-" + "1" * 24,
                        stages=[
                            StageStatus(name="canary", state="rolled_back", instances={"i-1": "rolled_back"})
                        ],
                        audit=[AuditEntry(at=started, who="tester", action="start")],
                    ),
                    at=started,
                )
            op("wave-old", 0, "install", {"openssl.x86_64": "9"})
            op(
                "wave-new", 1, "restore", {"openssl.x86_64": "1"}
            )  # recorded before attempt 0: order by attempt
            op("wave-new", 0, "install", {"openssl.x86_64": "2", "curl.x86_64": "5"})
            op("wave-new", 1, "install", {"openssl.x86_64": "3"})
            op(
                "wave-new", 2, "install", {"curl.x86_64": "7"}, finished=False
            )  # still in flight: left nothing yet
    finally:
        engine.dispose()
    last, pinned = load_last_wave(url, plan="web")
    assert last is not None and pinned is None
    assert last.wave_id == "wave-new"
    assert dict(last.instances["i-1"].versions_after) == {"openssl.x86_64": "1", "curl.x86_64": "5"}
    assert last.instances["i-1"].state == "rolled_back"
    old, _ = load_last_wave(url, wave_id="wave-old")
    assert old is not None and dict(old.instances["i-1"].versions_after) == {"openssl.x86_64": "9"}
    assert load_last_wave(url, plan="other") == (None, None)
    with pytest.raises(NotFoundError):
        load_last_wave(url, wave_id="wave-nope")


def test_the_last_wave_is_the_latest_finished_standard_one(cli: Any, files: Files, env: Path) -> None:
    """Newer than the plan's last finished standard wave: an emergency wave and a wave waiting at the db stage's
    gate. The default skips both (and says so); --wave the unfinished one does not count the instances of its
    stage not run yet as drift."""
    url = f"sqlite:///{env / 'patchflow.db'}"
    db.upgrade(url)
    pinned = evaluate(
        load_baseline(files.baseline), load_catalog(files.catalog), datetime(2026, 11, 1, tzinfo=UTC)
    ).patch_set
    web = {n.instance_id: "not_attempted" for n in files.online if n.group == "web"}
    db_stage = {n.instance_id: "not_attempted" for n in files.online if n.group == "db"}
    standard, running = "wave-reports-standard", "wave-reports-waiting"
    emergency = "wave-reports-20261109T010000Z-emergency-0a1b2c"
    engine = db.make_engine(url)
    try:
        with db.open_session(engine) as session:
            db.save_patch_set(session, patch_set=pinned)
            for wave_id, kind, state, hour, stages in [
                (standard, "standard", "succeeded", 0, [StageStatus("web", "succeeded", web), StageStatus("db", "succeeded", db_stage)]),
                (emergency, "emergency", "succeeded", 1, [StageStatus("web", "succeeded", dict(list(web.items())[:1]))]),
                (running, "standard", "waiting_approval", 2, [StageStatus("web", "succeeded", web), StageStatus("db", "waiting_approval")]),
            ]:  # fmt: skip
                started = T0 + timedelta(hours=hour)
                db.record_wave_status(
                    session,
                    status=WaveStatus(
                        wave_id=wave_id,
                        plan_name="reports",
                        state=state,
                        patch_set_id=pinned.id,
                        stages=stages,
                        audit=[AuditEntry(at=started, who="tester", action="start")],
                        kind=kind,
                    ),
                    at=started,
                )
    finally:
        engine.dispose()
    batch = {n.instance_id for n in files.online if n.group == "batch"}

    data = report_json(cli("compliance", "report", "--plan", files.plan, "--at", AT, "--format", "json"))
    assert data["last_wave"]["wave_id"] == standard and data["judged_against"]["wave_id"] == standard
    assert data["last_wave"]["stages_not_run"] == []
    measured = f"drift is measured since the last finished standard wave, {standard}"
    assert data["notes"] == [
        f"wave {running} is waiting_approval, not finished: {measured}; pass --wave {running} to measure drift "
        "since it instead",
        f"emergency wave {emergency} (succeeded) patched part of the fleet only: {measured}; pass --wave "
        f"{emergency} to measure drift since it instead",
    ]
    assert {row["instance_id"] for row in data["instances"] if row["drift"]["drifted"]} == batch

    data = report_json(
        cli("compliance", "report", "--plan", files.plan, "--wave", running, "--at", AT, "--format", "json")
    )
    assert (data["last_wave"]["wave_id"], data["last_wave"]["stages_not_run"]) == (running, ["db"])
    assert data["notes"] == []
    rows = {row["instance_id"]: row for row in data["instances"]}
    assert {i for i, row in rows.items() if row["drift"]["not_run_yet"]} == set(db_stage)
    assert all(not rows[i]["drift"]["drifted"] and rows[i]["last_wave_state"] is None for i in db_stage)
    assert {i for i, row in rows.items() if row["drift"]["drifted"]} == batch  # in no stage of the plan
    assert {g["group"]: g["drifted"] for g in data["groups"]} == {"batch": len(batch), "db": 0, "web": 0}
    table = cli("compliance", "report", "--plan", files.plan, "--wave", running, "--at", AT)
    header = (
        f"drift since wave {running} (waiting_approval, started 2026-11-09T02:00:00Z; stages not run yet: db)"
    )
    assert header in table.out
    assert "stage not run yet" in table.out

    # Without the plan, the db stage's targets are unknown: nothing outside the wave counts as drift.
    inventory = ("--inventory", files.inventory, "--wave", running, "--at", AT, "--format", "json")
    data = report_json(cli("compliance", "report", *inventory))
    outside = {n.instance_id for n in files.nodes} - set(web)
    assert {row["instance_id"] for row in data["instances"] if row["drift"]["not_run_yet"]} == outside
    assert data["totals"]["drifted"] == 0


# ---------------------------------------------------------------------------------------------- S3


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch, env: Path) -> Any:
    with SsmEndpoint() as endpoint:
        monkeypatch.setenv("PATCHFLOW_SSM_ENDPOINT_URL", endpoint.url)
        monkeypatch.setenv("PATCHFLOW_SSM_REGION", endpoint.region)
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        monkeypatch.setenv("AWS_CONFIG_FILE", str(env / "no-aws-config"))
        monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(env / "no-aws-credentials"))
        client = endpoint.client("s3")
        client.create_bucket(Bucket="compliance-reports")
        yield client


def test_upload_to_s3_writes_the_csv_and_the_json(cli: Any, files: Files, s3: Any) -> None:
    result = cli(
        "compliance", "report", "--inventory", files.inventory, "--baseline", files.baseline,
        "--catalog", files.catalog, "--at", AT, "--format", "json", "--s3-uri", "s3://compliance-reports/ops/",
    )  # fmt: skip
    printed = report_json(result)
    match = re.fullmatch(
        r"uploaded s3://compliance-reports/(\S+)\.csv and s3://compliance-reports/(\S+)\.json\n", result.err
    )
    assert match is not None and match[1] == match[2], result.err
    prefix = match[1]
    assert re.fullmatch(
        r"ops/patchflow-compliance/2026-11-10/20261110T000000Z-inventory-all-[0-9a-f]{6}", prefix
    )
    listed = s3.list_objects_v2(Bucket="compliance-reports", Prefix="ops/")
    assert sorted(o["Key"] for o in listed["Contents"]) == [f"{prefix}.csv", f"{prefix}.json"]
    body = s3.get_object(Bucket="compliance-reports", Key=f"{prefix}.csv")
    assert body["ContentType"] == "text/csv"
    lines = list(csv.DictReader(io.StringIO(body["Body"].read().decode())))
    assert [line["InstanceId"] for line in lines] == [row["instance_id"] for row in printed["instances"]]
    assert [int(line["MissingCount"]) for line in lines] == [
        r["counts"]["MissingCount"] for r in printed["instances"]
    ]
    uploaded = json.loads(s3.get_object(Bucket="compliance-reports", Key=f"{prefix}.json")["Body"].read())
    assert uploaded == printed


def test_uploads_of_the_same_second_never_overwrite_each_other(cli: Any, files: Files, s3: Any) -> None:
    """Per patch group, twice for the same group, and for a plan: one report time, six pairs of objects."""
    inventory = ("--inventory", files.inventory, "--baseline", files.baseline, "--catalog", files.catalog)
    runs = [
        (*inventory, "--group", "web"),
        (*inventory, "--group", "db"),
        (*inventory, "--group", "db"),
        inventory,
        ("--inventory", files.inventory, "--plan", files.plan),
        ("--plan", files.plan, "--group", "batch"),
    ]
    uploaded: dict[str, dict[str, Any]] = {}
    for args in runs:
        result = cli(
            "compliance", "report", *args, "--at", AT, "--format", "json", "--s3-uri", "s3://compliance-reports/",
        )  # fmt: skip
        printed = report_json(result)
        json_key = result.err.split(" and s3://compliance-reports/")[1].strip()
        uploaded[json_key] = printed
    listed = s3.list_objects_v2(Bucket="compliance-reports")
    keys = sorted(o["Key"] for o in listed["Contents"])
    assert len(keys) == 12 and len(uploaded) == 6
    names = Counter(re.sub(r"-[0-9a-f]{6}\.(csv|json)$", "", key).rsplit("/", 1)[1] for key in keys)
    stamp = "20261110T000000Z"
    assert names == {
        f"{stamp}-inventory-web": 2,
        f"{stamp}-inventory-db": 4,
        f"{stamp}-inventory-all": 2,
        f"{stamp}-reports-all": 2,
        f"{stamp}-reports-batch": 2,
    }
    for key, printed in uploaded.items():  # each object holds its own report
        body = json.loads(s3.get_object(Bucket="compliance-reports", Key=key)["Body"].read())
        assert body == printed


def test_a_missing_bucket_is_one_line_and_exit_3(cli: Any, files: Files, s3: Any) -> None:
    result = cli(
        "compliance", "report", "--inventory", files.inventory, "--baseline", files.baseline,
        "--catalog", files.catalog, "--format", "csv", "--s3-uri", "s3://no-such-bucket/x",
    )  # fmt: skip
    assert result.code == 3
    assert result.err == (
        "error: cannot upload the report: bucket 'no-such-bucket' does not exist; create it or pass another --s3-uri\n"
    )
    assert len(list(csv.DictReader(io.StringIO(result.out)))) == len(
        files.nodes
    )  # the report was still printed


def test_an_unreachable_s3_endpoint_is_one_line_and_exit_1(
    cli: Any, files: Files, env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("PATCHFLOW_SSM_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("PATCHFLOW_SSM_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    result = cli(
        "compliance", "report", "--inventory", files.inventory, "--baseline", files.baseline,
        "--catalog", files.catalog, "--format", "json", "--s3-uri", "s3://compliance-reports/",
    )  # fmt: skip
    assert result.code == 1
    assert result.err.startswith("error: cannot upload the report to s3://compliance-reports/: ")
    assert "Could not connect to the endpoint URL" in result.err and result.err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- progress


def test_a_forced_progress_bar_goes_to_stderr_and_json_stays_clean(cli: Any, files: Files) -> None:
    result = cli("compliance", "report", "--plan", files.plan, "--format", "json", "--progress", "--at", AT)
    data = report_json(result)  # stdout is the JSON document and nothing else
    assert data["totals"]["instances"] == 59
    assert "scanning" in result.err
    assert "59/59" in result.err
    quiet = cli("compliance", "report", "--plan", files.plan, "--format", "json", "--no-progress", "--at", AT)
    assert quiet.code == 0 and quiet.err == ""


def test_the_installed_command_runs_as_a_process(files: Files, env: Path) -> None:
    environment = {**os.environ, "PATCHFLOW_DATA_DIR": str(env)}
    proc = subprocess.run(
        [sys.executable, "-m", "patchflow", "compliance", "report", "--plan", str(files.plan), "--format", "csv",
         "--progress", "--at", AT],
        capture_output=True, text=True, env=environment, cwd=REPO_ROOT, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "\x1b[" in proc.stderr  # a rendered bar, on stderr only
    lines = list(csv.DictReader(io.StringIO(proc.stdout)))
    assert Counter(line["PatchGroup"] for line in lines) == {"web": 24, "db": 20, "batch": 15}


def test_plan_with_the_ssm_executor_scans_over_http(
    cli: Any, files: Files, env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The long-scan case for real: package listings through Run Command on the fake SSM endpoint; an offline
    instance and one whose listing fails are reported unscanned, the others judged."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "PATCHFLOW_SSM_POLL_INITIAL_SECONDS": "0.05",
        "PATCHFLOW_SSM_POLL_MAX_SECONDS": "0.2",
        "PATCHFLOW_SSM_MAX_REQUESTS_PER_SECOND": "200",
    }.items():
        monkeypatch.setenv(name, value)
    timings = Timings(not_found_seconds=0.05, pending_seconds=0.02, run_seconds=0.05)
    with SsmEndpoint(timings=timings) as endpoint:
        endpoint.client("s3").create_bucket(Bucket="scan-output")
        old = {name: Package(name, "amd64", versions[0]) for name, versions in PACKAGES.items()}
        new = {name: Package(name, "amd64", versions[1]) for name, versions in PACKAGES.items()}
        ids = {}
        for group, n in [("web", 1), ("web", 2), ("web", 3), ("db", 1), ("db", 2), ("db", 3)]:
            packages = [old["openssl"], new["curl"], new["tzdata"]] if n != 1 else list(new.values())
            ids[(group, n)] = endpoint.register_instance(
                tags={"Patch Group": group}, packages=packages, online=(group, n) != ("db", 3)
            )
        endpoint.script(ids[("web", 2)], "fail", applies_to="query")
        plan = yaml.safe_load(files.plan.read_text())
        plan["executor"] = {
            "kind": "ssm",
            "endpoint_url": endpoint.url,
            "region": "us-east-1",
            "bucket": "scan-output",
        }
        files.plan.write_text(dump_yaml(plan))
        result = cli(
            "compliance", "report", "--plan", files.plan, "--at", AT, "--format", "json", "--progress",
            "--concurrency", "3",
        )  # fmt: skip
    data = report_json(result)
    assert "5/5" in result.err  # six discovered, one offline: five scans, one of which fails
    rows = {row["instance_id"]: row for row in data["instances"]}
    assert set(rows) == {ids[("web", 1)], ids[("web", 3)], ids[("db", 1)], ids[("db", 2)]}
    assert rows[ids[("web", 1)]]["status"] == rows[ids[("db", 1)]]["status"] == "COMPLIANT"
    for key in [("web", 3), ("db", 2)]:
        row = rows[ids[key]]
        assert row["counts"]["MissingCount"] == 1 and row["oldest_missing"]["name"] == "openssl"
        assert row["oldest_missing_age_days"] == 39
    unscanned = {u["instance_id"]: u["reason"] for u in data["unscanned"]}
    assert unscanned[ids[("db", 3)]] == "offline"
    assert unscanned[ids[("web", 2)]].startswith("scan failed: patchflow package query on ")
    assert unscanned[ids[("web", 2)]].endswith("scripted outcome: fail")
    assert data["totals"]["unscanned"] == 2


def test_what_the_report_judges_against(cli: Any, files: Files, env: Path) -> None:
    """--patch-set wins; else the last wave's set (database, then the file store); else a fresh evaluation,
    with a note when the wave's set cannot be found."""
    url = f"sqlite:///{env / 'patchflow.db'}"
    db.upgrade(url)
    settings = Settings()
    pinned = evaluate(
        load_baseline(files.baseline), load_catalog(files.catalog), datetime(2026, 11, 1, tzinfo=UTC)
    ).patch_set
    PatchSetStore(settings.patch_set_dir).save(pinned)  # the file store only

    def wave(wave_id: str, patch_set_id: str, started: datetime) -> None:
        engine = db.make_engine(url)
        try:
            with db.open_session(engine) as session:
                db.record_wave_status(
                    session,
                    status=WaveStatus(
                        wave_id=wave_id,
                        plan_name="reports",
                        state="failed",
                        patch_set_id=patch_set_id,
                        stages=[StageStatus(name="web", state="failed", instances={})],
                        audit=[AuditEntry(at=started, who="tester", action="start")],
                    ),
                    at=started,
                )
        finally:
            engine.dispose()

    def judged(*args: str | Path) -> dict[str, Any]:
        data = report_json(
            cli("compliance", "report", "--plan", files.plan, "--at", AT, "--format", "json", *args)
        )
        return {"judged": data["judged_against"], "notes": data["notes"]}

    wave("wave-a", pinned.id, T0)
    assert judged()["judged"] == {
        "kind": "last_wave", "patch_set_id": pinned.id, "wave_id": "wave-a", "evaluated_at": "2026-11-01T00:00:00Z",
    }  # fmt: skip
    assert judged("--patch-set", pinned.id)["judged"]["kind"] == "patch_set"
    gone = "ps-" + "f" * 24
    wave("wave-b", gone, T0 + timedelta(hours=1))  # the newest wave; its set is nowhere
    fallback = judged()
    assert fallback["judged"]["kind"] == "evaluation"
    assert fallback["judged"]["evaluated_at"] == AT
    assert fallback["notes"] == [
        f"patch set {gone} of wave wave-b is neither in the history database nor in the patch-set store; "
        "judged against a fresh evaluation of the baseline"
    ]
    assert judged("--wave", "wave-a")["judged"]["wave_id"] == "wave-a"


def test_an_unusable_history_database_costs_the_drift_not_the_report(
    cli: Any, files: Files, env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = env.parent / "empty.db"
    monkeypatch.setenv("PATCHFLOW_DATABASE_URL", f"sqlite:///{empty}")  # no schema: never migrated
    data = report_json(cli("compliance", "report", "--plan", files.plan, "--at", AT, "--format", "json"))
    assert data["last_wave"] is None and data["judged_against"]["kind"] == "evaluation"
    assert len(data["notes"]) == 1
    assert data["notes"][0].startswith(
        "history database unavailable, drift not reported: the database at sqlite:///"
    )
    assert data["notes"][0].endswith("run 'patchflow db upgrade'")
    asked = cli("compliance", "report", "--plan", files.plan, "--wave", "wave-1", "--format", "json")
    assert asked.code == 1 and "has no patchflow schema" in asked.err and asked.out == ""
