"""End-to-end CLI tests: the real ``patchflow`` process on the shipped example files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import BASELINES_DIR, EXAMPLES_DIR, REPO_ROOT

AT = "2026-11-10T00:00:00Z"


def run(
    *args: str,
    data_dir: Path,
    check: bool = False,
    env_overrides: dict[str, str | None] | None = None,
    timeout: float = 60,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``patchflow ARGS`` in a real process; ``env_overrides`` sets variables (None removes one);
    ``preexec_fn`` runs in the child before patchflow (e.g. to limit its memory)."""
    env = {**os.environ, "PATCHFLOW_DATA_DIR": str(data_dir)}
    env.pop("PATCHFLOW_DEBUG", None)
    for name, value in (env_overrides or {}).items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    proc = subprocess.run(
        [sys.executable, "-m", "patchflow", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO_ROOT,
        timeout=timeout,
        preexec_fn=preexec_fn,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_evaluate_shipped_example_json(tmp_path: Path) -> None:
    proc = run(
        "baseline", "evaluate", str(BASELINES_DIR / "ubuntu-staged.yaml"),
        "--catalog", str(EXAMPLES_DIR / "ubuntu-catalog.json"), "--at", AT, "--format", "json",
        data_dir=tmp_path, check=True,
    )  # fmt: skip
    result = json.loads(proc.stdout)
    assert set(result) >= {"patch_set", "decisions"}
    assert set(result["patch_set"]) >= {"id", "patches"}
    for patch in result["patch_set"]["patches"]:
        assert {"name", "arch", "version"} <= set(patch)
    for decision in result["decisions"]:
        assert {"name", "arch", "version", "decision", "reason", "compliance_level"} <= set(decision)
        assert decision["decision"] in {"approved", "rejected", "not_approved"}
    by_name = {(d["name"], d["version"]): d for d in result["decisions"]}
    # 3-day delay: the 2026-11-08 openssl is not yet approved on 2026-11-10; libbad and its dependent are blocked
    assert by_name[("openssl", "3.0.2-0ubuntu1.16")]["decision"] == "not_approved"
    assert by_name[("libbad", "1.4-2ubuntu0.1")]["decision"] == "rejected"
    assert by_name[("goodapp", "2.0-1ubuntu0.1")]["decision"] == "rejected"
    pins = {p["name"]: p["version"] for p in result["patch_set"]["patches"]}
    assert pins["openssl"] == "3.0.2-0ubuntu1.15"
    assert "libbad" not in pins and "goodapp" not in pins
    # the set was stored, content-addressed, and the same inputs give the same id
    stored = tmp_path / "patch-sets" / f"{result['patch_set']['id']}.json"
    assert stored.exists()
    again = run(
        "baseline", "evaluate", str(BASELINES_DIR / "ubuntu-staged.yaml"),
        "--catalog", str(EXAMPLES_DIR / "ubuntu-catalog.json"), "--at", AT, "--format", "json",
        data_dir=tmp_path, check=True,
    )  # fmt: skip
    assert json.loads(again.stdout)["patch_set"]["id"] == result["patch_set"]["id"]


def test_evaluate_table_is_the_default(tmp_path: Path) -> None:
    proc = run(
        "baseline", "evaluate", str(BASELINES_DIR / "amazon-linux-2023-custom.json"),
        "--catalog", str(EXAMPLES_DIR / "al2023-catalog.json"), "--at", AT,
        data_dir=tmp_path, check=True,
    )  # fmt: skip
    assert "patch set ps-" in proc.stdout
    assert "kernel-6.1.99-*" in proc.stdout


def test_compliance_json_and_against_pinned_set(tmp_path: Path) -> None:
    common = ("--inventory", str(EXAMPLES_DIR / "ubuntu-inventory.json"), "--format", "json")
    proc = run(
        "baseline", "compliance", str(BASELINES_DIR / "ubuntu-staged.yaml"),
        "--catalog", str(EXAMPLES_DIR / "ubuntu-catalog.json"), "--at", AT, *common,
        data_dir=tmp_path, check=True,
    )  # fmt: skip
    report = json.loads(proc.stdout)
    instances = {i["instance_id"]: i for i in report["instances"]}
    test_box = instances["i-0a1b2c3d4e5f60002"]
    assert test_box["status"] == "NON_COMPLIANT"
    states = {p["name"]: p["state"] for p in test_box["patches"]}
    assert states["curl"] == "FAILED"
    assert states["libbad"] == "INSTALLED_REJECTED"  # BLOCK
    assert states["openssl"] == "MISSING"
    for patch in test_box["patches"]:
        assert {"name", "arch", "installed_version", "target_version", "state", "severity"} <= set(patch)
    assert test_box["counts"]["FailedCount"] == 1 and test_box["counts"]["InstalledRejectedCount"] == 1

    evaluated = run(
        "baseline", "evaluate", str(BASELINES_DIR / "ubuntu-staged.yaml"),
        "--catalog", str(EXAMPLES_DIR / "ubuntu-catalog.json"), "--at", AT, "--format", "json",
        data_dir=tmp_path, check=True,
    )  # fmt: skip
    set_id = json.loads(evaluated.stdout)["patch_set"]["id"]
    pinned = run(
        "baseline", "compliance", str(BASELINES_DIR / "ubuntu-staged.yaml"), "--patch-set", set_id, *common,
        data_dir=tmp_path, check=True,
    )  # fmt: skip
    assert json.loads(pinned.stdout)["patch_set_id"] == set_id
    # the same set given as a file
    set_file = tmp_path / "set.json"
    set_file.write_text(evaluated.stdout)
    from_file = run(
        "baseline", "compliance", str(BASELINES_DIR / "ubuntu-staged.yaml"), "--patch-set", str(set_file), *common,
        data_dir=tmp_path, check=True,
    )  # fmt: skip
    assert json.loads(from_file.stdout)["instances"] == json.loads(pinned.stdout)["instances"]


def test_export_aws(tmp_path: Path) -> None:
    proc = run(
        "baseline",
        "export",
        str(BASELINES_DIR / "amazon-linux-2-default.yaml"),
        "--aws",
        data_dir=tmp_path,
        check=True,
    )
    body = json.loads(proc.stdout)
    assert (
        body["OperatingSystem"] == "AMAZON_LINUX_2"
        and body["ApprovalRules"]["PatchRules"][0]["ApproveAfterDays"] == 7
    )
    refused = run("baseline", "export", str(BASELINES_DIR / "ubuntu-staged.yaml"), "--aws", data_dir=tmp_path)
    assert refused.returncode == 2 and "AWS does not support ApproveAfterDays on UBUNTU" in refused.stderr


def test_validate_all_shipped(tmp_path: Path) -> None:
    files = sorted(str(p) for p in BASELINES_DIR.glob("*.yaml"))
    proc = run("baseline", "validate", *files, data_dir=tmp_path, check=True)
    assert proc.stdout.count("ok: ") == len(files)


def test_version_compare(tmp_path: Path) -> None:
    assert (
        run("version", "compare", "deb", "1.0~rc1", "1.0", data_dir=tmp_path, check=True).stdout.strip()
        == "<"
    )
    assert (
        run("version", "compare", "rpm", "1.0^git1", "1.0", data_dir=tmp_path, check=True).stdout.strip()
        == ">"
    )
    bad = run("version", "compare", "deb", "1:", "1.0", data_dir=tmp_path)
    assert bad.returncode == 2 and "error:" in bad.stderr


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (("baseline", "evaluate", "nope.yaml", "--catalog", "x.json"), 2, "baseline file not found"),
        (
            ("baseline", "evaluate", "baselines/ubuntu-default.yaml", "--catalog", "missing.json"),
            2,
            "catalog file not found",
        ),
        (
            (
                "baseline",
                "evaluate",
                "baselines/ubuntu-default.yaml",
                "--catalog",
                "baselines/examples/ubuntu-catalog.json",
                "--at",
                "tomorrow",
            ),
            2,
            "not an RFC 3339 timestamp",
        ),
        (
            (
                "baseline",
                "evaluate",
                "baselines/ubuntu-default.yaml",
                "--catalog",
                "baselines/examples/ubuntu-catalog.json",
                "--at",
                "2026-11-10T00:00:00",
            ),
            2,
            "no UTC offset",
        ),
        (
            (
                "baseline",
                "evaluate",
                "baselines/ubuntu-default.yaml",
                "--catalog",
                "baselines/examples/al2023-catalog.json",
            ),
            2,
            "uses 'deb' packages",
        ),
        (("baseline", "evaluate", "baselines/ubuntu-default.yaml"), 2, "--catalog"),
        (
            ("baseline", "evaluate", "baselines/ubuntu-default.yaml", "--catalog", "x", "--format", "xml"),
            2,
            "xml",
        ),
        (
            (
                "baseline",
                "compliance",
                "baselines/ubuntu-default.yaml",
                "--inventory",
                "baselines/examples/ubuntu-inventory.json",
            ),
            2,
            "give --catalog",
        ),
        (
            (
                "baseline",
                "compliance",
                "baselines/ubuntu-default.yaml",
                "--inventory",
                "baselines/examples/ubuntu-inventory.json",
                "--patch-set",
                "ps-000000000000000000000000",
            ),
            3,
            "is not in",
        ),
        (("baseline", "export", "baselines/ubuntu-default.yaml"), 2, "--aws"),
        (("frobnicate",), 2, "No such command"),
    ],
)
def test_bad_input_gets_a_clear_error(
    tmp_path: Path, args: tuple[str, ...], code: int, expected: str
) -> None:
    proc = run(*args, data_dir=tmp_path)
    assert proc.returncode == code, (proc.stdout, proc.stderr)
    assert expected in proc.stderr


def test_malformed_catalog_reports_location(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.json"
    catalog.write_text(
        '[\n  {"name": "a", "arch": "amd64", "version": "1.0-1", "family": "deb"},\n'
        '  {"name": "b", "arch": "amd64", "version": "1.0-", "family": "deb", "release_date": "yesterday"},\n'
        '  {"name": "c", "version": "1", "family": "debian"}\n]\n'
    )
    proc = run(
        "baseline", "evaluate", "baselines/ubuntu-default.yaml", "--catalog", str(catalog), data_dir=tmp_path
    )
    assert proc.returncode == 2
    err = proc.stderr
    assert f"{catalog}:3: [1].release_date" in err and "RFC 3339" in err
    assert f"{catalog}:4: [2].arch: required field is missing" in err
    assert "[2].family" in err and "'deb'" in err


def test_malformed_baseline_reports_location(tmp_path: Path) -> None:
    baseline = tmp_path / "b.yaml"
    baseline.write_text(
        "Name: ok-name\nOperatingSystem: UBUNTU\nApprovalRules:\n  PatchRules:\n    - PatchFilterGroup: {PatchFilters: [{Key: SEVERITY, Values: [High]}]}\n"
    )
    proc = run("baseline", "validate", str(baseline), data_dir=tmp_path)
    assert proc.returncode == 2
    assert f"{baseline}:5: ApprovalRules.PatchRules[0].PatchFilterGroup.PatchFilters[0].Key" in proc.stderr
    assert "PRODUCT, PRIORITY, SECTION" in proc.stderr


def test_a_modified_patch_set_is_refused(tmp_path: Path) -> None:
    evaluated = run(
        "baseline", "evaluate", str(BASELINES_DIR / "ubuntu-staged.yaml"),
        "--catalog", str(EXAMPLES_DIR / "ubuntu-catalog.json"), "--at", AT, "--format", "json", "--no-store",
        data_dir=tmp_path, check=True,
    )  # fmt: skip
    data = json.loads(evaluated.stdout)
    data["patch_set"]["patches"][0]["version"] = "9.9.9-evil"
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps(data))
    proc = run(
        "baseline", "compliance", str(BASELINES_DIR / "ubuntu-staged.yaml"),
        "--inventory", str(EXAMPLES_DIR / "ubuntu-inventory.json"), "--patch-set", str(forged),
        data_dir=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and "was modified" in proc.stderr
    both = run(
        "baseline", "compliance", str(BASELINES_DIR / "ubuntu-staged.yaml"),
        "--inventory", str(EXAMPLES_DIR / "ubuntu-inventory.json"), "--patch-set", str(forged),
        "--catalog", str(EXAMPLES_DIR / "ubuntu-catalog.json"),
        data_dir=tmp_path,
    )  # fmt: skip
    assert both.returncode == 2 and "leave out --catalog and --at" in both.stderr


def test_out_of_range_time_and_duplicate_keys(tmp_path: Path) -> None:
    far = run(
        "baseline", "evaluate", "baselines/ubuntu-default.yaml", "--catalog", "baselines/examples/ubuntu-catalog.json",
        "--at", "9999-12-31T23:59:59-01:00", data_dir=tmp_path,
    )  # fmt: skip
    assert far.returncode == 2 and "outside the years" in far.stderr
    dup = tmp_path / "dup.yaml"
    dup.write_text("Name: first-name\nOperatingSystem: UBUNTU\nName: second-name\n")
    proc = run("baseline", "validate", str(dup), data_dir=tmp_path)
    assert (
        proc.returncode == 2
        and f"{dup}:3" in proc.stderr
        and "duplicate key 'Name' (first defined on line 1)" in proc.stderr
    )
    dup_json = tmp_path / "dup.json"
    dup_json.write_text('{"Name": "a-name", "OperatingSystem": "UBUNTU", "Name": "b-name"}')
    proc = run("baseline", "validate", str(dup_json), data_dir=tmp_path)
    assert proc.returncode == 2 and "duplicate key 'Name'" in proc.stderr


def test_yaml_beyond_pythons_limits_is_a_clear_error(tmp_path: Path) -> None:
    huge = tmp_path / "huge.yaml"
    huge.write_text(
        "Name: ok-name\nOperatingSystem: UBUNTU\nDescription: x\nApprovedPatchesComplianceLevel: "
        + "9" * 5000
        + "\n"
    )
    proc = run("baseline", "validate", str(huge), data_dir=tmp_path)
    assert proc.returncode == 2 and "not valid YAML" in proc.stderr
