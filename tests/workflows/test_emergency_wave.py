"""``patchflow emergency`` end to end: the real CLI process against the real Temporal dev server, a worker on
its own task queue and a simulated fleet where more packages could be upgraded than the CVE needs."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.testing import WorkflowEnvironment

from patchflow.cli.emergency import emergency_wave_input, freeze_wait, prepare
from patchflow.config import Settings
from patchflow.control.waves import act, wave_status
from patchflow.core.documents import dump_yaml
from patchflow.core.emergency import emergency_patch_set
from patchflow.core.patchsets import PatchSetStore
from patchflow.executors.simulated import SimulatedExecutor, default_state_path
from patchflow.executors.simulated.fleet import load_fleet
from tests.conftest import REPO_ROOT
from tests.test_cli import run
from tests.workflows.conftest import running_worker

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "emergency"
CVE = "CVE-2026-1234"
OLD = {
    "openssl": "3.0.2-0ubuntu1.10",
    "libssl3": "3.0.2-0ubuntu1.10",
    "curl": "7.81.0-1ubuntu1.14",
    "libcurl4": "7.81.0-1ubuntu1.14",
    "bash": "5.1-6ubuntu1",
}
FIXED = {"openssl": "3.0.2-0ubuntu1.16", "libssl3": "3.0.2-0ubuntu1.16"}
DEV = ["i-dev0000000000001", "i-dev0000000000002"]
PROD = ["i-prod000000000001", "i-prod000000000002", "i-prod000000000003"]
FREEZE = "year-end-freeze"


def _instance(instance_id: str, group: str, packages: dict[str, str]) -> dict[str, Any]:
    return {
        "id": instance_id,
        "tags": {"Patch Group": group},
        "platform": {"family": "deb", "product": "Ubuntu22.04"},
        "installed": [{"name": n, "arch": "amd64", "version": v} for n, v in packages.items()],
        "behaviour": {"duration_seconds": 0.0},
    }


@pytest.fixture
def make_plan(tmp_path: Path) -> Callable[..., Path]:
    """A plan over a fleet where every instance could upgrade curl, libcurl4 and bash too; i-dev…2 already
    runs the fixed openssl. Its windows open in 2099 and dev soaks an hour: an emergency ignores both."""
    fleet = {
        "name": "emergency",
        "seed": 1,
        "instances": [
            _instance(DEV[0], "dev", OLD),
            _instance(DEV[1], "dev", {**OLD, **FIXED}),
            *(_instance(i, "prod", OLD) for i in PROD),
        ],
    }
    fleet_path = tmp_path / "fleet.yaml"
    fleet_path.write_text(dump_yaml(fleet, sort_keys=False))

    def build(**extra: Any) -> Path:
        later = {"schedule": "at(2099-01-01T03:00:00)", "duration_hours": 2}
        plan = {
            "name": "emergtest",
            "baseline": str(FIXTURES / "baseline.yaml"),
            "catalog": str(FIXTURES / "catalog.json"),
            "executor": {"kind": "simulated", "fleet": str(fleet_path), "time_scale": 1.0},
            "freeze_override_approvers": ["cto"],
            "stages": [
                {
                    "name": "dev",
                    "targets": {"patch_group": "dev"},
                    "window": dict(later),  # a copy: a shared dict would be dumped as a YAML alias
                    "max_concurrency": 1,
                    "max_errors": 0,
                    "soak": "1h",
                },
                {
                    "name": "prod",
                    "targets": {"patch_group": "prod"},
                    "window": dict(later),  # a copy: a shared dict would be dumped as a YAML alias
                    "max_concurrency": "50%",
                    "max_errors": 1,
                    "soak": "2h",
                    "gate": {"approval": {"approvers": ["ops-lead"]}},
                    "on_failure": "rollback",
                },
            ],
            **extra,
        }
        path = tmp_path / "plan.yaml"
        path.write_text(dump_yaml(plan, sort_keys=False))
        return path

    return build


def frozen_now() -> list[dict[str, str]]:
    now = datetime.now(UTC).replace(microsecond=0, tzinfo=None)
    return [
        {
            "name": FREEZE,
            "from": (now - timedelta(hours=1)).isoformat(),
            "to": (now + timedelta(days=2)).isoformat(),
        }
    ]


def environment(dev_env: WorkflowEnvironment, task_queue: str, data_dir: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "PATCHFLOW_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "PATCHFLOW_TASK_QUEUE": task_queue,
        "PATCHFLOW_DATA_DIR": str(data_dir),
    }
    for name in ("PATCHFLOW_DEBUG", "PATCHFLOW_PLAN", "PATCHFLOW_FREEZE_FILE"):
        env.pop(name, None)
    return env


async def cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """The real ``patchflow`` process, without blocking the event loop the in-process worker runs on."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "patchflow",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO_ROOT,
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    text = stderr.decode()
    assert "Traceback" not in text, text
    return proc.returncode, stdout.decode(), text


def fleet_versions(plan_path: Path, data_dir: Path) -> dict[str, dict[str, str]]:
    fleet = load_fleet(yaml.safe_load(plan_path.read_text())["executor"]["fleet"])
    state = SimulatedExecutor(fleet, default_state_path(data_dir, fleet)).status()
    return {i["id"]: {p["name"]: p["version"] for p in i["installed"]} for i in state["instances"]}


def exposed_ids(section: dict[str, list[dict[str, str]]], issue: str = CVE) -> set[str]:
    return {e["instance_id"] for e in section[issue]}


async def test_emergency_wave_patches_only_the_cve_fix(
    dev_env: WorkflowEnvironment, make_plan: Callable[..., Path], tmp_path: Path
) -> None:
    plan = make_plan()
    data = tmp_path / "data"
    async with running_worker(dev_env.client) as tq:
        env = environment(dev_env, tq, data)
        args = ["emergency", "--cve", CVE.lower(), "--targets", "all", "--plan", str(plan), "--as", "alice"]
        code, stdout, stderr = await cli(*args, "--format", "json", "--timeout", "60", env=env)
        assert code == 0, stderr
        report = json.loads(stdout)
        assert [(f["name"], f["version"], f["reason"]) for f in report["fixes"]] == [
            ("libssl3", FIXED["libssl3"], "dependency of openssl"),
            ("openssl", FIXED["openssl"], f"fixes {CVE} (first fixed in 3.0.2-0ubuntu1.15)"),
        ]
        assert report["notes"] == [
            "libc6 (a dependency of libssl3) has no catalog entry: the installed version serves"
        ]
        assert exposed_ids(report["exposed"]) == {DEV[0], *PROD}  # i-dev…2 runs the fix already
        assert report["freeze"] is None and report["stages"] == ["dev", "prod"]

        # The wave ran dev at once (its window opens in 2099, it soaks 1h: both ignored) and stops at Prod's gate.
        wave = report["wave"]
        wave_id = report["wave_id"]
        assert wave["wave_id"] == wave_id and wave_id.startswith("wave-emergtest-") and "emergency" in wave_id
        assert (wave["state"], wave["kind"]) == ("waiting_approval", "emergency")
        assert [(s["name"], s["state"]) for s in wave["stages"]] == [
            ("dev", "succeeded"),
            ("prod", "waiting_approval"),
        ]
        assert wave["stages"][0]["max_concurrency"] == 1 and wave["stages"][0]["max_errors"] == 0
        assert wave["patch_set_id"] == report["patch_set_id"]
        assert [(a["action"], a["who"]) for a in wave["audit"]] == [("start", "alice")]
        assert exposed_ids(report["still_exposed"]) == set(PROD)
        assert f"patchflow wave approve {wave_id} --stage prod --as ops-lead" in stderr

        stored = PatchSetStore(data / "patch-sets").load(report["patch_set_id"])
        assert {(p.name, p.version) for p in stored.patches} == set(FIXED.items())
        assert CVE in stored.baseline["Description"] and "EMERGENCY" in stored.baseline["Description"]

        installed = fleet_versions(plan, data)
        for instance_id in DEV:
            assert installed[instance_id] == {**OLD, **FIXED}  # curl, libcurl4 and bash untouched
        for instance_id in PROD:
            assert installed[instance_id] == OLD

        # Approving Prod patches it; afterwards nobody is exposed.
        await act(dev_env.client, wave_id, "approve", who="ops-lead", stage="prod", comment="CVE emergency")
        for _ in range(120):
            status = await wave_status(dev_env.client, wave_id)
            if status.state != "running":
                break
            await asyncio.sleep(0.25)
        assert status.state == "succeeded", status
        assert set(status.stages[1].instances.values()) == {"succeeded"}
        installed = fleet_versions(plan, data)
        assert all(installed[i] == {**OLD, **FIXED} for i in [*DEV, *PROD])

        code, stdout, stderr = await cli(
            "emergency", "exposure", "--cve", CVE, "--plan", str(plan), "--format", "json", env=env
        )
        assert code == 0, stderr
        after = json.loads(stdout)
        assert after["exposed"] == {CVE: []} and after["exposed_instances"] == []
        # table output of the same check
        code, stdout, _ = await cli("emergency", "exposure", "--cve", CVE, "--plan", str(plan), env=env)
        assert code == 0 and f"{CVE}: nobody" in stdout


async def test_change_freeze_holds_an_emergency_unless_an_approver_overrides_it(
    dev_env: WorkflowEnvironment, make_plan: Callable[..., Path], tmp_path: Path
) -> None:
    plan = make_plan(freezes=frozen_now())
    data = tmp_path / "data"
    base = ["emergency", "--cve", CVE, "--targets", "dev", "--plan", str(plan), "--format", "json"]
    async with running_worker(dev_env.client) as tq:
        env = environment(dev_env, tq, data)

        # No override: the wave starts, and its stage waits for the freeze to end.
        code, stdout, stderr = await cli(*base, "--timeout", "30", env=env)
        assert code == 0, stderr
        held = json.loads(stdout)
        assert held["freeze"]["name"] == FREEZE
        freeze_end = datetime.fromisoformat(held["freeze"]["until"])
        assert timedelta(days=1) < freeze_end - datetime.now(UTC) < timedelta(days=2)
        assert (
            f"change freeze {FREEZE} is active: the wave waits until {held['freeze']['until']}"
            in " ".join(stderr.split())
        )
        assert held["wave"]["stages"][0]["state"] == "waiting_window"
        assert held["wave"]["stages"][0]["window_start"] == freeze_end.isoformat()
        assert exposed_ids(held["still_exposed"]) == {DEV[0]}
        assert fleet_versions(plan, data)[DEV[0]] == OLD

        # One wave at a time on the plan's fleet, emergencies too: a second is refused (exit 4), naming the first.
        code, _, stderr = await cli(*base, "--no-wait", env=env)
        assert code == 4, stderr
        assert f"wave {held['wave_id']} of plan emergtest is still running" in " ".join(stderr.split())
        assert "--allow-concurrent" in stderr
        await act(dev_env.client, held["wave_id"], "cancel", who="test", comment="cleanup")

        # An approver who is not listed is refused before anything starts.
        code, _, stderr = await cli(*base, "--override-freeze", "--approver", "mallory", env=env)
        assert code == 4  # a refused action, like a refused approval
        assert "'mallory' may not override a change freeze; allowed: cto" in stderr

        # A listed approver: the wave runs now, and the override is audited.
        code, stdout, stderr = await cli(*base, "--override-freeze", "--approver", "cto", env=env)
        assert code == 0, stderr
        overridden = json.loads(stdout)
        assert overridden["freeze"] is None and overridden["freeze_override_by"] == "cto"
        assert overridden["wave"]["state"] == "succeeded"
        assert ("override_freeze", "cto") in {(a["action"], a["who"]) for a in overridden["wave"]["audit"]}
        assert overridden["still_exposed"] == {CVE: []}
        assert fleet_versions(plan, data)[DEV[0]] == {**OLD, **FIXED}
        assert fleet_versions(plan, data)[PROD[0]] == OLD  # --targets dev: prod is not part of this wave


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--cve", "CVE-2026-1243", "--targets", "all"],
            "the catalog has no patch for CVE-2026-1243 (did you mean CVE-2026-1234?)",
        ),
        (["--cve", "1234", "--targets", "all"], "'1234' is not a CVE id; write it like CVE-2026-1234"),
        (["--cve", CVE, "--targets", "qa"], "--targets 'qa': no stage of plan emergtest"),
        (["--cve", CVE], "--targets is required: one of plan emergtest's patch groups (dev, prod) or all"),
        (["--cve", CVE, "--targets", "all", "--approver", "cto"], "--approver approves a freeze override"),
        (
            ["--cve", CVE, "--targets", "all", "--override-freeze"],
            "overriding a change freeze needs --approver",
        ),
        (["--cve", "CVE-2026-4004", "--targets", "all"], "no installable fix for CVE-2026-4004"),
        (["exposure", "--cve", "CVE-2026-9999"], "the catalog has no patch for CVE-2026-9999"),
    ],
)
def test_bad_input_exits_2_with_a_message(
    args: list[str],
    message: str,
    make_plan: Callable[..., Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATCHFLOW_PLAN", str(make_plan()))  # the default plan (Settings.plan)
    proc = run("emergency", *args, data_dir=tmp_path / "data")
    assert proc.returncode == 2, proc.stderr
    assert message in " ".join(proc.stderr.split())  # rich may wrap long lines


def test_missing_plan_exits_2(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PATCHFLOW_PLAN", raising=False)
    proc = run("emergency", "--cve", CVE, "--targets", "all", data_dir=tmp_path / "data")
    assert proc.returncode == 2
    assert "no plan: pass --plan PLAN or set PATCHFLOW_PLAN" in proc.stderr


def test_dry_run_shows_refused_fixes_and_starts_nothing(
    make_plan: Callable[..., Path], tmp_path: Path
) -> None:
    plan = str(make_plan())
    args = ["emergency", "--cve", CVE, "--cve", "CVE-2026-4004", "--targets", "all", "--plan", plan]
    proc = run(*args, "--dry-run", data_dir=tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    text = " ".join(proc.stdout.split())
    assert "refused libbad amd64 1.4-2ubuntu0.1: matches RejectedPatches entry 'libbad' (BLOCK)" in text
    assert "this version is never installed" in text
    assert "no installable fix for CVE-2026-4004" in text
    assert f"{CVE}: 4 instance(s)" in text and "CVE-2026-4004: nobody" in text
    assert not (tmp_path / "data" / "patch-sets").exists()  # nothing pinned, nothing started


def test_emergency_wave_input_compresses_the_plan(make_plan: Callable[..., Path], tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    prep = prepare(
        settings, plan_file=make_plan(freezes=frozen_now()), targets="prod", cves=[CVE], packages=[]
    )
    pinned = emergency_patch_set(prep.selection, prep.baseline, prep.catalog)
    inp = emergency_wave_input(prep, settings, pinned, who="alice")
    assert inp.kind == "emergency" and inp.started_by == "alice" and inp.patch_set_id == pinned.id
    assert [(p.name, p.version) for p in inp.patches] == sorted(FIXED.items())
    (stage,) = inp.stages
    assert (stage.name, stage.window.schedule, stage.soak_seconds) == ("prod", "now", 0)
    assert (stage.max_concurrency, stage.max_errors, stage.on_failure) == ("50%", "1", "rollback")
    assert (stage.gate, stage.approvers) == ("approval", ["ops-lead"])
    assert [f.name for f in inp.freezes] == [FREEZE]
    wait = freeze_wait(inp, datetime.now(UTC))
    assert wait is not None and wait["name"] == FREEZE
    overridden = emergency_wave_input(prep, settings, pinned, freeze_override_by="cto")
    assert overridden.freezes == [] and overridden.freeze_override_by == "cto"
    assert freeze_wait(overridden, datetime.now(UTC)) is None


def test_targets_all_is_accepted_in_any_case(make_plan: Callable[..., Path], tmp_path: Path) -> None:
    plan = str(make_plan())
    for spelling in ("ALL", "All"):
        proc = run(
            "emergency",
            "--cve",
            CVE,
            "--targets",
            spelling,
            "--plan",
            plan,
            "--dry-run",
            "--format",
            "json",
            data_dir=tmp_path / "data",
        )
        assert proc.returncode == 0, proc.stderr
        report = json.loads(proc.stdout)
        assert (report["targets"], report["stages"]) == ("all", ["dev", "prod"])
    proc = run(
        "emergency", "exposure", "--cve", CVE, "--targets", "ALL", "--plan", plan, data_dir=tmp_path / "data"
    )
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------------------ a fleet of two products

FOCAL = "Ubuntu20.04"
FOCAL_OLD = {"openssl": "1.1.1f-1ubuntu2.20", "libssl1.1": "1.1.1f-1ubuntu2.20"}
FOCAL_FIXED = {"openssl": "1.1.1f-1ubuntu2.22", "libssl1.1": "1.1.1f-1ubuntu2.22"}
JAMMY_OLD = {"openssl": "3.0.2-0ubuntu1.10", "libssl3": "3.0.2-0ubuntu1.10"}


@pytest.fixture
def mixed_plan(tmp_path: Path) -> Path:
    """Jammy and focal machines in patch groups of one product each, and in one mixed group; the catalog
    fixes CVE-2026-1234 in both products' openssl, each with its own version."""
    catalog = json.loads((FIXTURES / "catalog.json").read_text())
    for name, version in FOCAL_FIXED.items():
        catalog.append(
            {
                "name": name,
                "arch": "amd64",
                "version": version,
                "family": "deb",
                "product": FOCAL,
                "priority": "Important",
                "security": True,
                "release_date": "2026-11-01T00:00:00Z",
                "cve_ids": [CVE] if name == "openssl" else [],
                "depends": ["libssl1.1"] if name == "openssl" else [],
            }
        )
    catalog_path = tmp_path / "catalog.json"
    catalog_path.write_text(json.dumps(catalog))

    def focal(instance_id: str, group: str) -> dict[str, Any]:
        return {**_instance(instance_id, group, FOCAL_OLD), "platform": {"family": "deb", "product": FOCAL}}

    fleet = {
        "name": "mixed",
        "seed": 1,
        "instances": [
            _instance("i-jammy-1", "jammy", JAMMY_OLD),
            focal("i-focal-1", "focal"),
            _instance("i-mixed-jammy", "mixed", JAMMY_OLD),
            focal("i-mixed-focal", "mixed"),
        ],
    }
    fleet_path = tmp_path / "mixed-fleet.yaml"
    fleet_path.write_text(dump_yaml(fleet, sort_keys=False))
    later = {"schedule": "at(2099-01-01T03:00:00)", "duration_hours": 2}
    plan = {
        "name": "mixedtest",
        "baseline": str(FIXTURES / "baseline.yaml"),
        "catalog": str(catalog_path),
        "executor": {"kind": "simulated", "fleet": str(fleet_path), "time_scale": 1.0},
        "stages": [
            {
                "name": group,
                "targets": {"patch_group": group},
                "window": dict(later),  # a copy: a shared dict would be dumped as a YAML alias
                "max_concurrency": 1,
                "max_errors": 0,
            }
            for group in ("jammy", "focal", "mixed")
        ],
    }
    path = tmp_path / "mixed-plan.yaml"
    path.write_text(dump_yaml(plan, sort_keys=False))
    return path


def test_products_with_different_fixes_are_judged_apart_and_never_share_a_wave(
    mixed_plan: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    base = ["emergency", "--cve", CVE, "--plan", str(mixed_plan), "--format", "json"]
    proc = run(*base, "--targets", "all", "--dry-run", data_dir=data)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    # every instance is exposed, each against its own product's lowest fixing version
    assert {(e["instance_id"], e["fixed_in"]) for e in report["exposed"][CVE] if e["name"] == "openssl"} == {
        ("i-jammy-1", "3.0.2-0ubuntu1.15"),
        ("i-mixed-jammy", "3.0.2-0ubuntu1.15"),
        ("i-focal-1", "1.1.1f-1ubuntu2.22"),
        ("i-mixed-focal", "1.1.1f-1ubuntu2.22"),
    }
    assert {(f["name"], f["product"], f["version"]) for f in report["fixes"]} == {
        ("openssl", "Ubuntu22.04", "3.0.2-0ubuntu1.16"),
        ("libssl3", "Ubuntu22.04", "3.0.2-0ubuntu1.16"),
        ("openssl", FOCAL, FOCAL_FIXED["openssl"]),
        ("libssl1.1", FOCAL, FOCAL_FIXED["libssl1.1"]),
    }
    refusal = next(n for n in report["notes"] if n.startswith("a wave would be refused: "))
    assert (
        "openssl amd64 needs 1.1.1f-1ubuntu2.22 for Ubuntu20.04 (i-focal-1, i-mixed-focal) but 3.0.2-0ubuntu1.16 "
        "for Ubuntu22.04 (i-jammy-1, i-mixed-jammy)" in refusal
    )

    # a wave over a mixed patch group is refused before anything is pinned or started
    proc = run(*base, "--targets", "mixed", data_dir=data)
    assert proc.returncode == 2, proc.stderr
    message = " ".join(proc.stderr.split())
    assert "the targeted instances run products with different fixes" in message
    assert "(i-mixed-focal) but 3.0.2-0ubuntu1.16 for Ubuntu22.04 (i-mixed-jammy)" in message
    assert "run one emergency per product" in message
    assert not (data / "patch-sets").exists()

    # one product's patch group: only that product's fixes
    proc = run(*base, "--targets", "focal", "--dry-run", data_dir=data)
    assert proc.returncode == 0, proc.stderr
    focal = json.loads(proc.stdout)
    assert {(f["name"], f["version"]) for f in focal["fixes"]} == set(FOCAL_FIXED.items())
    assert not any(n.startswith("a wave would be refused") for n in focal["notes"])


async def test_a_wave_over_one_product_installs_that_products_fix(
    dev_env: WorkflowEnvironment, mixed_plan: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    async with running_worker(dev_env.client) as tq:
        env = environment(dev_env, tq, data)
        args = [
            "emergency",
            "--cve",
            CVE,
            "--targets",
            "focal",
            "--plan",
            str(mixed_plan),
            "--format",
            "json",
        ]
        code, stdout, stderr = await cli(*args, "--timeout", "60", env=env)
        assert code == 0, stderr
        report = json.loads(stdout)
        assert report["wave"]["state"] == "succeeded"
        stored = PatchSetStore(data / "patch-sets").load(report["patch_set_id"])
        assert {(p.name, p.product, p.version) for p in stored.patches} == {
            (name, FOCAL, version) for name, version in FOCAL_FIXED.items()
        }
        assert report["still_exposed"] == {CVE: []}
    installed = fleet_versions(mixed_plan, data)
    assert installed["i-focal-1"] == FOCAL_FIXED  # focal's own build, never jammy's 3.0.2
    assert installed["i-mixed-focal"] == FOCAL_OLD  # not targeted
    assert installed["i-jammy-1"] == JAMMY_OLD
