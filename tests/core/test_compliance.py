"""Instance compliance states and counts (DescribeInstancePatchStates semantics)."""

from __future__ import annotations

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
