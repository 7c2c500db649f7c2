"""Instance compliance states and counts (DescribeInstancePatchStates semantics)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from patchflow.core.compliance import Instance, engine_for, load_inventory
from patchflow.core.evaluation import PinnedPatch, evaluate
from patchflow.errors import InventoryError
from tests.conftest import make_baseline, make_patch

AT = datetime(2026, 11, 10, tzinfo=UTC)


def pin(name: str, version: str, arch: str = "x86_64", **fields: Any) -> PinnedPatch:
    return PinnedPatch(name=name, arch=arch, version=version, **fields)


def engine(
    candidates: list[PinnedPatch],
    rejected: list[str] | None = None,
    action: str = "ALLOW_AS_DEPENDENCY",
    pm: str = "yum",
):
    return engine_for(
        family="deb" if pm == "apt" else "rpm",
        candidates=candidates,
        rejected_patches=rejected or [],
        rejected_action=action,
        package_manager=pm,
    )


def states(result: Any) -> dict[str, str]:
    return {p.name: p.state for p in result.patches}


def test_each_state_and_its_count() -> None:
    eng = engine(
        [
            pin("missing", "2.0-1", compliance_level="CRITICAL"),
            pin("current", "2.0-1"),
            pin("newer", "2.0-1"),
            pin("failed", "2.0-1", compliance_level="HIGH", classification="Security"),
            pin("rebooting", "2.0-1"),
        ],
        rejected=["banned"],
        action="BLOCK",
    )
    instance = Instance(
        instance_id="i-1",
        installed=[
            ("missing", "x86_64", "1.0-1"),
            ("current", "x86_64", "2.0-1"),
            ("newer", "x86_64", "2.0^post-1"),  # newer than the target counts as installed
            ("failed", "x86_64", "1.0-1"),
            ("rebooting", "x86_64", "2.0-1"),
            ("unrelated", "x86_64", "9-9"),
            ("banned", "x86_64", "1.0-1"),
        ],
        failed=[("failed", None)],
        pending_reboot=[("rebooting", "x86_64")],
    )
    result = eng.evaluate(instance)
    assert states(result) == {
        "missing": "MISSING",
        "current": "INSTALLED",
        "newer": "INSTALLED",
        "failed": "FAILED",
        "rebooting": "INSTALLED_PENDING_REBOOT",
        "unrelated": "INSTALLED_OTHER",
        "banned": "INSTALLED_REJECTED",
    }
    assert result.counts == {
        "InstalledCount": 2,
        "InstalledOtherCount": 1,
        "InstalledPendingRebootCount": 1,
        "InstalledRejectedCount": 1,
        "MissingCount": 1,
        "FailedCount": 1,
        "NotApplicableCount": 0,
        "CriticalNonCompliantCount": 1,
        "SecurityNonCompliantCount": 1,
        "OtherNonCompliantCount": 2,
    }
    assert result.status == "NON_COMPLIANT"
    assert result.compliance_level == "CRITICAL"
    row = next(p for p in result.patches if p.name == "missing")
    assert (row.installed_version, row.target_version) == ("1.0-1", "2.0-1")


def test_rejected_installed_under_allow_as_dependency_is_installed_other() -> None:
    result = engine([], rejected=["banned"]).evaluate(Instance("i-1", [("banned", "x86_64", "1.0-1")]))
    assert states(result) == {"banned": "INSTALLED_OTHER"}
    assert result.counts["InstalledRejectedCount"] == 0
    assert result.status == "COMPLIANT"


def test_compliant_instance() -> None:
    result = engine([pin("a", "1.0-1")]).evaluate(
        Instance("i-1", [("a", "x86_64", "1.0-1"), ("b", "x86_64", "1")])
    )
    assert result.status == "COMPLIANT" and result.compliance_level is None


def test_failed_first_install_of_a_package_not_installed_is_reported() -> None:
    result = engine([pin("new", "1.0-1")]).evaluate(Instance("i-1", [], failed=[("new", None)]))
    assert [(p.name, p.state, p.installed_version) for p in result.patches] == [("new", "FAILED", None)]
    assert result.counts["FailedCount"] == 1


def test_arch_is_part_of_the_identity() -> None:
    result = engine([pin("lib", "2.0-1", arch="i686")]).evaluate(
        Instance("i-1", [("lib", "x86_64", "1.0-1")])
    )
    assert states(result) == {"lib": "INSTALLED_OTHER"}


def test_exact_deb_order_decides_missing() -> None:
    eng = engine([pin("pkg", "1.0-1", arch="amd64")], pm="apt")
    assert states(eng.evaluate(Instance("i-1", [("pkg", "amd64", "1.0~rc1-1")]))) == {"pkg": "MISSING"}
    assert states(eng.evaluate(Instance("i-2", [("pkg", "amd64", "1.0+b1-1")]))) == {"pkg": "INSTALLED"}


def test_instances_get_their_own_products_targets() -> None:
    eng = engine([pin("k", "5.0-1", product="AmazonLinux2023"), pin("k", "4.0-1", product="AmazonLinux2")])
    al2 = eng.evaluate(Instance("i-2", [("k", "x86_64", "4.0-1")], product="AmazonLinux2"))
    al2023 = eng.evaluate(Instance("i-3", [("k", "x86_64", "4.0-1")], product="amazonlinux2023"))
    assert states(al2) == {"k": "INSTALLED"} and states(al2023) == {"k": "MISSING"}


def test_against_a_pinned_patch_set_newer_catalog_versions_do_not_count() -> None:
    baseline = make_baseline()
    catalog = [make_patch(name="a", version="1.0-1")]
    pinned = evaluate(baseline, catalog, AT).patch_set
    # A newer approved version appears later; judged against the pinned set the instance stays compliant.
    later = evaluate(baseline, [*catalog, make_patch(name="a", version="1.1-1")], AT)
    inst = Instance("i-1", [("a", "x86_64", "1.0-1")])
    assert engine(list(pinned.patches)).evaluate(inst).status == "COMPLIANT"
    assert engine(list(later.patch_set.patches)).evaluate(inst).status == "NON_COMPLIANT"


def test_inventory_errors_are_located(tmp_path: Path) -> None:
    path = tmp_path / "inventory.json"
    path.write_text(
        json.dumps(
            [
                {"instance_id": "i-1", "installed": [{"name": "a", "arch": "x86_64", "version": "1.0-1"}]},
                {"instance_id": "i-1", "installed": [{"name": "a", "arch": "x86_64"}]},
                {"installed": []},
                {
                    "instance_id": "i-3",
                    "installed": [{"name": "a", "arch": "x86_64", "version": "1.0 -1"}],
                    "colour": 1,
                },
            ],
            indent=2,
        )
    )
    with pytest.raises(InventoryError) as info:
        load_inventory(path, family="rpm")
    message = str(info.value)
    assert "instance i-1 appears twice" in message
    assert "[1].installed[0]: expected {name, arch, version}" in message
    assert "[2].instance_id" in message
    assert "[3].installed[0].version" in message and "whitespace" in message
    assert "[3].colour: unknown field" in message
    assert f"{path}:" in message  # lines are given


def test_inventory_with_wrong_family_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "inv.json"
    path.write_text(
        json.dumps([{"instance_id": "i-1", "platform": {"family": "deb", "product": "Ubuntu22.04"}}])
    )
    with pytest.raises(InventoryError, match="baseline is for 'rpm'"):
        load_inventory(path, family="rpm")


def test_many_instances_share_cached_states() -> None:
    eng = engine([pin(f"p{i}", "2.0-1") for i in range(50)])
    installed = [(f"p{i}", "x86_64", "1.0-1" if i % 2 else "2.0-1") for i in range(50)]
    results = [eng.evaluate(Instance(f"i-{n}", list(installed)), with_patches=False) for n in range(200)]
    assert {r.counts["MissingCount"] for r in results} == {25}
    assert {r.counts["InstalledCount"] for r in results} == {25}


def blocked_app() -> tuple[Any, list[Any]]:
    """app 2.0 needs libx, which the baseline rejects with BLOCK; app 1.5 does not; app 1.0 is installed."""
    baseline = make_baseline(
        RejectedPatches=["libx"],
        RejectedPatchesAction="BLOCK",
        ApprovalRules={
            "PatchRules": [{"PatchFilterGroup": {}, "ApproveAfterDays": 0, "ComplianceLevel": "HIGH"}]
        },
    )
    catalog = [
        make_patch(name="app", version="1.5-1"),
        make_patch(name="app", version="2.0-1", depends=["libx"]),
        make_patch(name="libx", version="1.0-1"),
    ]
    return baseline, catalog


def test_block_reports_a_package_whose_update_needs_a_rejected_dependency_missing() -> None:
    """API reference, ``RejectedPatchesAction`` (BLOCK): "If an update attempts to install a dependency package
    that is now rejected by the baseline, when previous versions of the package were not rejected, the package
    being updated is reported as MISSING for SCAN operations and as FAILED for INSTALL operations."

    The update itself is never pinned (nothing installs it); compliance judges the installed version against
    it, and the row's reason names the rejected dependency.
    """
    baseline, catalog = blocked_app()
    result = evaluate(baseline, catalog, AT)
    assert [p.version for p in result.patch_set.patches if p.name == "app"] == ["1.5-1"]
    assert [(p.name, p.version, p.blocked_by) for p in result.patch_set.blocked] == [("app", "2.0-1", "libx")]
    eng = engine(result.approved(), ["libx"], "BLOCK")
    scanned = eng.evaluate(Instance("i-1", [("app", "x86_64", "1.0-1")]))
    (row,) = scanned.patches
    assert (row.state, row.target_version, row.compliance_level) == ("MISSING", "2.0-1", "HIGH")
    assert row.reason is not None and "depends on libx" in row.reason and "BLOCK" in row.reason
    assert row.to_json()["reason"] == row.reason
    assert scanned.status == "NON_COMPLIANT" and scanned.compliance_level == "HIGH"
    # Even at the version the patch set installs, the package still misses the update SSM would try.
    at_pinned = eng.evaluate(Instance("i-2", [("app", "x86_64", "1.5-1")]))
    assert states(at_pinned) == {"app": "MISSING"}
    # A version at or above the blocked update (installed outside patchflow) is not an approved one.
    assert states(eng.evaluate(Instance("i-3", [("app", "x86_64", "2.0-1")]))) == {"app": "INSTALLED_OTHER"}


def test_block_reports_the_package_failed_after_an_install_operation() -> None:
    """API reference, ``RejectedPatchesAction`` (BLOCK): "... as FAILED for INSTALL operations". An instance
    whose last operation (``DescribeInstancePatchStates`` ``Operation``) was an Install reports it FAILED."""
    baseline, catalog = blocked_app()
    eng = engine(evaluate(baseline, catalog, AT).approved(), ["libx"], "BLOCK")
    installed = [("app", "x86_64", "1.0-1"), ("other", "x86_64", "1.0-1")]
    installed_run = eng.evaluate(Instance("i-1", list(installed), operation="Install"))
    assert states(installed_run) == {"app": "FAILED", "other": "INSTALLED_OTHER"}
    assert installed_run.counts["FailedCount"] == 1 and installed_run.counts["MissingCount"] == 0
    assert installed_run.patches[0].reason is not None  # the reason carries over
    assert states(eng.evaluate(Instance("i-2", list(installed), operation="Scan"))) == {
        "app": "MISSING",
        "other": "INSTALLED_OTHER",
    }


def test_block_judged_against_a_pinned_set_uses_its_blocked_updates(tmp_path: Path) -> None:
    """The pinned set carries the blocked updates, so compliance against the set (a wave's, or a stored one)
    reports the same MISSING row as a fresh evaluation (API reference, ``RejectedPatchesAction``)."""
    from patchflow.core.evaluation import PatchSet

    baseline, catalog = blocked_app()
    pinned = evaluate(baseline, catalog, AT).patch_set
    stored = PatchSet.from_json(json.loads(json.dumps(pinned.to_json())))
    assert stored == pinned
    eng = engine(list(stored.compliance_targets()), ["libx"], "BLOCK")
    assert states(eng.evaluate(Instance("i-1", [("app", "x86_64", "1.0-1")]))) == {"app": "MISSING"}


def test_allow_as_dependency_and_unapproved_updates_are_not_blocked_targets() -> None:
    """Only BLOCK keeps dependents out, and only an update the baseline approved is one SSM would try."""
    baseline, catalog = blocked_app()
    allow = evaluate(
        baseline.model_copy(update={"RejectedPatchesAction": "ALLOW_AS_DEPENDENCY"}), catalog, AT
    )
    assert allow.patch_set.blocked == ()
    not_yet = evaluate(
        baseline,
        [
            *catalog[:1],
            make_patch(name="app", version="2.0-1", depends=["libx"], release_date="2026-12-01T00:00:00Z"),
        ],
        AT,
    )
    assert not_yet.patch_set.blocked == ()
    # A set without blocked updates keeps the content id it always had (no "blocked" in its identity).
    plain = evaluate(make_baseline(), [make_patch()], AT).patch_set
    identity = {
        "baseline": plain.baseline,
        "catalog": plain.catalog_digest,
        "evaluated_at": "2026-11-10T00:00:00Z",
        "patches": [p.to_json() for p in plain.patches],
    }
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert plain.id == "ps-" + digest[:24] and "blocked_by" not in plain.patches[0].to_json()


def test_inventory_operation_field(tmp_path: Path) -> None:
    """``operation`` is the last patching operation, as ``DescribeInstancePatchStates`` reports it (Scan or
    Install); anything else is a located error."""
    path = tmp_path / "inventory.json"
    path.write_text(
        json.dumps(
            [
                {"instance_id": "i-1", "operation": "install", "installed": []},
                {"instance_id": "i-2", "operation": "Deploy", "installed": []},
            ]
        )
    )
    with pytest.raises(InventoryError) as info:
        load_inventory(path, family="rpm")
    assert "[1].operation: 'Deploy' is not a patching operation; use Scan or Install" in str(info.value)
    path.write_text(json.dumps([{"instance_id": "i-1", "operation": "install", "installed": []}]))
    assert load_inventory(path, family="rpm")[0].operation == "Install"
