"""Baseline files: loading, AWS constraints with located errors, export back to AWS."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchflow.core.baselines import Baseline, export_aws, load_baseline
from patchflow.errors import BaselineError, ExportError
from tests.conftest import BASELINES_DIR

SHIPPED = sorted(p for p in BASELINES_DIR.iterdir() if p.suffix in {".yaml", ".json"})


def write(tmp_path: Path, text: str, name: str = "baseline.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(path: Path) -> str:
    with pytest.raises(BaselineError) as info:
        load_baseline(path)
    return str(info.value)


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_baselines_are_valid(path: Path) -> None:
    baseline = load_baseline(path)
    assert baseline.family in {"deb", "rpm"}
    assert baseline.ApprovalRules.PatchRules


def test_predefined_equivalents_cover_the_required_systems() -> None:
    systems = {load_baseline(p).OperatingSystem for p in SHIPPED}
    assert {"AMAZON_LINUX_2", "AMAZON_LINUX_2023", "REDHAT_ENTERPRISE_LINUX", "UBUNTU", "DEBIAN"} <= systems


def test_amazon_linux_default_matches_aws_rules() -> None:
    baseline = load_baseline(BASELINES_DIR / "amazon-linux-2-default.yaml")
    security, bugfix = baseline.ApprovalRules.PatchRules
    assert security.ApproveAfterDays == 7 and bugfix.ApproveAfterDays == 7
    keys = {f.Key: f.Values for f in security.PatchFilterGroup.PatchFilters}
    assert keys["SEVERITY"] == ["Critical", "Important"] and keys["CLASSIFICATION"] == ["Security"]


def test_file_exported_from_aws_loads_unchanged(tmp_path: Path) -> None:
    exported = {
        "BaselineId": "pb-0123456789abcdef0",
        "Name": "my-al2",
        "OperatingSystem": "AMAZON_LINUX_2",
        "GlobalFilters": {"PatchFilters": [{"Key": "PRODUCT", "Values": ["AmazonLinux2"]}]},
        "ApprovalRules": {
            "PatchRules": [
                {
                    "PatchFilterGroup": {"PatchFilters": [{"Key": "CLASSIFICATION", "Values": ["Security"]}]},
                    "ComplianceLevel": "HIGH",
                    "ApproveUntilDate": "2026-10-31",
                    "EnableNonSecurity": False,
                }
            ]
        },
        "ApprovedPatches": ["CVE-2026-1234", "ALAS2-2026-123", "1234567", "kernel-5.10.*"],
        "ApprovedPatchesComplianceLevel": "CRITICAL",
        "ApprovedPatchesEnableNonSecurity": False,
        "RejectedPatches": ["docker*"],
        "RejectedPatchesAction": "BLOCK",
        "PatchGroups": ["web"],
        "CreatedDate": 1760000000.123,
        "ModifiedDate": 1760000001.456,
        "Description": "exported",
        "Sources": [
            {
                "Name": "epel",
                "Products": ["AmazonLinux2"],
                "Configuration": "[epel]\nname=EPEL\nbaseurl=https://example.com/epel\nenabled=1",
            }
        ],
    }
    path = write(tmp_path, json.dumps(exported), "exported.json")
    baseline = load_baseline(path)
    assert baseline.RejectedPatchesAction == "BLOCK"
    assert baseline.ApprovalRules.PatchRules[0].ApproveUntilDate == "2026-10-31"
    # read-only fields are dropped on export; the meaning round-trips
    body = export_aws(baseline)
    assert "BaselineId" not in body and "PatchGroups" not in body and "CreatedDate" not in body
    again = Baseline.model_validate(body)
    assert again.canonical() == baseline.canonical()


def test_unquoted_yaml_date_stays_a_string(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Name: dates\nOperatingSystem: REDHAT_ENTERPRISE_LINUX\nApprovalRules:\n  PatchRules:\n"
        "    - PatchFilterGroup: {PatchFilters: []}\n      ApproveUntilDate: 2026-11-30\n",
    )
    assert load_baseline(path).ApprovalRules.PatchRules[0].ApproveUntilDate == "2026-11-30"


def test_error_names_file_line_field_and_fix(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Name: al2\n"
        "OperatingSystem: AMAZON_LINUX_2\n"
        "ApprovalRules:\n"
        "  PatchRules:\n"
        "    - PatchFilterGroup:\n"
        "        PatchFilters: []\n"
        "      ApproveAfterDays: 400\n",
    )
    message = errors_of(path)
    assert f"{path}:7: ApprovalRules.PatchRules[0].ApproveAfterDays" in message
    assert "0–360" in message


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "Name: x\n"  # too short
        "OperatingSystem: AMAZON_LINUX_2\n"
        "ApprovalRules:\n"
        "  PatchRules:\n"
        "    - PatchFilterGroup:\n"
        "        PatchFilters:\n"
        "          - {Key: PRIORITY, Values: [Required]}\n"  # apt key on yum
        "          - {Key: CLASSIFICATION, Values: [Securty]}\n"  # typo
        "      ApproveAfterDays: 3\n"
        "      ApproveUntilDate: 2026-01-01\n"  # both
        "RejectedPatches: [CVE-2026-0001]\n",  # IDs not allowed in rejected list on yum
    )
    message = errors_of(path)
    assert "5 problems" in message
    assert ":1: Name" in message
    assert ":7: ApprovalRules.PatchRules[0].PatchFilterGroup.PatchFilters[0].Key" in message
    assert "PRODUCT, CLASSIFICATION, SEVERITY" in message
    assert "'Securty' is not a CLASSIFICATION value" in message
    assert "not both" in message
    assert ":11: RejectedPatches[0]" in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Name: ok-name\nOperatingSystem: AMAZON_LINUX_2\nname: lower\n", "did you mean 'Name'"),
        ("OperatingSystem: UBUNTU\n", "Name: required field is missing"),
        ("Name: ok-name\nOperatingSystem: UBUNTU_22\n", "is not allowed; use one of"),
        (
            "Name: ok-name\nOperatingSystem: AMAZON_LINUX_2\nApprovalRules:\n  PatchRules:\n"
            "    - PatchFilterGroup: {PatchFilters: []}\n",
            "needs ApproveAfterDays (0–360) or ApproveUntilDate",
        ),
        (
            "Name: ok-name\nOperatingSystem: REDHAT_ENTERPRISE_LINUX\nApprovalRules:\n  PatchRules:\n"
            "    - PatchFilterGroup: {PatchFilters: []}\n      ApproveUntilDate: 2026-13-40\n",
            "use YYYY-MM-DD",
        ),
        (
            "Name: ok-name\nOperatingSystem: REDHAT_ENTERPRISE_LINUX\nApprovalRules:\n  PatchRules:\n"
            "    - PatchFilterGroup: {PatchFilters: []}\n      ApproveAfterDays: '7'\n",
            "expected a whole number",
        ),
        (
            "Name: ok-name\nOperatingSystem: UBUNTU\nApprovedPatches: ['openssl=3.0.2']\n",
            "bare package names only",
        ),
        (
            "Name: ok-name\nOperatingSystem: AMAZON_LINUX_2\nApprovedPatches: ['*kernel*']\n",
            "more than one '*'",
        ),
        (
            "Name: ok-name\nOperatingSystem: AMAZON_LINUX_2\nRejectedPatchesAction: DENY\n",
            "ALLOW_AS_DEPENDENCY",
        ),
        ("Name: ok-name\nOperatingSystem: UBUNTU\nApprovedPatchesComplianceLevel: SEVERE\n", "CRITICAL"),
        (
            "Name: ok-name\nOperatingSystem: UBUNTU\nSources:\n  - Name: mirror\n    Products: [Ubuntu22.04]\n"
            '    Configuration: "deb http://a jammy main\\ndeb http://b jammy main"\n',
            "single line",
        ),
        (
            "Name: ok-name\nOperatingSystem: UBUNTU\nGlobalFilters:\n  PatchFilters:\n"
            + "".join(f"    - {{Key: PRODUCT, Values: ['p{i}']}}\n" for i in range(5)),
            "at most 4",
        ),
        ("- just\n- a list\n", "must be a mapping"),
        ("Name: [unclosed\n", "not valid YAML"),
        ("", "empty"),
    ],
)
def test_invalid_baselines_get_clear_errors(tmp_path: Path, text: str, expected: str) -> None:
    assert expected in errors_of(write(tmp_path, text))


def test_too_many_rules_and_list_entries(tmp_path: Path) -> None:
    rules = "".join(
        "    - PatchFilterGroup: {PatchFilters: []}\n      ApproveAfterDays: 1\n" for _ in range(11)
    )
    listed = ", ".join(f"pkg{i}" for i in range(51))
    path = write(
        tmp_path,
        f"Name: ok-name\nOperatingSystem: AMAZON_LINUX_2\nApprovalRules:\n  PatchRules:\n{rules}"
        f"ApprovedPatches: [{listed}]\n",
    )
    message = errors_of(path)
    assert "ApprovalRules.PatchRules" in message and "at most 10" in message
    assert "ApprovedPatches" in message and "at most 50" in message


def test_json_syntax_error_has_line(tmp_path: Path) -> None:
    path = write(tmp_path, '{\n  "Name": "x",\n  "OperatingSystem": UBUNTU\n}\n', "bad.json")
    message = errors_of(path)
    assert f"{path}:3" in message and "not valid JSON" in message


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in errors_of(tmp_path / "nope.yaml")


def test_deb_rules_may_have_delays_as_an_extension_but_not_export(tmp_path: Path) -> None:
    baseline = load_baseline(BASELINES_DIR / "ubuntu-staged.yaml")
    assert baseline.ApprovalRules.PatchRules[0].ApproveAfterDays == 3
    with pytest.raises(ExportError) as info:
        export_aws(baseline)
    assert "ApprovalRules.PatchRules[0].ApproveAfterDays" in str(info.value)
    assert "AWS does not support" in str(info.value)


def test_export_of_predefined_baseline_is_accepted_by_the_loader(tmp_path: Path) -> None:
    body = export_aws(load_baseline(BASELINES_DIR / "rhel-default.yaml"))
    path = write(tmp_path, json.dumps(body), "roundtrip.json")
    assert load_baseline(path).canonical() == Baseline.model_validate(body).canonical()
    assert body["ApprovalRules"]["PatchRules"][0]["ApproveAfterDays"] == 7


def test_sles_rejected_list_accepts_patch_names_but_yum_does_not(tmp_path: Path) -> None:
    """User Guide, "Package name formats for approved and rejected patch lists": on SLES both lists take patch
    names (``SUSE-SLE-Example-Package-12-2018-123``); on yum/dnf systems the rejected list takes package names
    only."""
    suse = write(
        tmp_path,
        "Name: sles\nOperatingSystem: SUSE\nRejectedPatches: [SUSE-SLE-Example-Package-12-2018-123, "
        "SUSE-SLE-Example-Package-12-2018-*, example-pkg-2018.11.4-46.17.1.x86_64.rpm]\n",
    )
    assert load_baseline(suse).RejectedPatches[0] == "SUSE-SLE-Example-Package-12-2018-123"
    al2 = write(
        tmp_path, "Name: al2\nOperatingSystem: AMAZON_LINUX_2\nRejectedPatches: [ALAS-2018-123]\n", "al2.yaml"
    )
    assert ":3: RejectedPatches[0]" in errors_of(al2) and "IDs are allowed in ApprovedPatches" in errors_of(
        al2
    )


@pytest.mark.parametrize("system", ["AMAZON_LINUX_2023", "UBUNTU", "SUSE", "MACOS"])
def test_windows_only_fields_are_refused_elsewhere_with_their_line(tmp_path: Path, system: str) -> None:
    """API reference, ``CreatePatchBaseline`` ``AvailableSecurityUpdatesComplianceStatus``: "Supported for
    Windows Server managed nodes only." Set on another OS it is refused, located, with the fix."""
    path = write(
        tmp_path,
        f"Name: not-windows\nOperatingSystem: {system}\nAvailableSecurityUpdatesComplianceStatus: NON_COMPLIANT\n",
    )
    message = errors_of(path)
    assert f"{path}:3: AvailableSecurityUpdatesComplianceStatus" in message
    assert f"applies to Windows Server baselines only, not {system}; remove it" in message
    windows = write(
        tmp_path,
        "Name: windows\nOperatingSystem: WINDOWS\nAvailableSecurityUpdatesComplianceStatus: NON_COMPLIANT\n",
        "windows.yaml",
    )
    assert load_baseline(windows).AvailableSecurityUpdatesComplianceStatus == "NON_COMPLIANT"
