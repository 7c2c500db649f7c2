"""Baseline evaluation with SSM semantics, and the pinned patch set."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from patchflow.core import versions
from patchflow.core.catalog import Patch
from patchflow.core.evaluation import Evaluation, PatchSet, evaluate
from patchflow.core.instances import RepoSource
from patchflow.errors import CatalogError, InputError
from tests.conftest import make_baseline, make_patch, rule

AT = datetime(2026, 11, 10, 12, 0, tzinfo=UTC)


def decisions(result: Evaluation) -> dict[tuple[str, str], str]:
    return {(d.patch.name, d.patch.version): d.decision for d in result.decisions}


def reason_of(result: Evaluation, name: str, version: str | None = None) -> str:
    for d in result.decisions:
        if d.patch.name == name and (version is None or d.patch.version == version):
            return d.reason
    raise AssertionError(f"{name} not in decisions")


def pinned(result: Evaluation) -> dict[str, str]:
    return {p.name: p.version for p in result.patch_set.patches}


def test_global_filters_then_rules_and_across_keys_or_within_values() -> None:
    baseline = make_baseline(
        GlobalFilters={"PatchFilters": [{"Key": "PRODUCT", "Values": ["AmazonLinux2023"]}]},
        ApprovalRules={
            "PatchRules": [
                rule(
                    {"CLASSIFICATION": ["Security"], "SEVERITY": ["Critical", "Important"]},
                    ApproveAfterDays=0,
                )
            ]
        },
    )
    catalog = [
        make_patch(name="a", severity="Critical"),
        make_patch(name="b", severity="important"),  # case-insensitive
        make_patch(name="c", severity="Low"),
        make_patch(name="d", classification="Bugfix"),
        make_patch(name="e", product="AmazonLinux2"),  # global filter
    ]
    result = evaluate(baseline, catalog, AT)
    got = {d.patch.name: d.decision for d in result.decisions}
    assert got == {
        "a": "approved",
        "b": "approved",
        "c": "not_approved",
        "d": "not_approved",
        "e": "not_approved",
    }
    assert "GlobalFilters PRODUCT" in reason_of(result, "e")
    assert "SEVERITY" in reason_of(result, "c")


def test_wildcard_matches_missing_values_too() -> None:
    baseline = make_baseline(ApprovalRules={"PatchRules": [rule({"SEVERITY": ["*"]}, ApproveAfterDays=0)]})
    result = evaluate(baseline, [make_patch(name="bugfix", severity=None)], AT)
    assert result.decisions[0].decision == "approved"


def test_approve_after_days_counts_from_release_in_utc() -> None:
    baseline = make_baseline(ApprovalRules={"PatchRules": [rule({}, ApproveAfterDays=7)]})
    release = "2025-11-09T18:00:00Z"
    patch = make_patch(release_date=release)
    approve_at = datetime(2025, 11, 16, 18, 0, tzinfo=UTC)
    assert evaluate(baseline, [patch], approve_at).decisions[0].decision == "approved"
    early = evaluate(baseline, [patch], approve_at - timedelta(seconds=1)).decisions[0]
    assert early.decision == "not_approved"
    assert "approved from 2025-11-16T18:00:00Z" in early.reason
    # the same instant written with an offset is the same release
    shifted = make_patch(release_date="2025-11-09T19:00:00+01:00")
    assert evaluate(baseline, [shifted], approve_at).decisions[0].decision == "approved"


def test_approve_until_date_covers_the_whole_utc_day() -> None:
    baseline = make_baseline(ApprovalRules={"PatchRules": [rule({}, ApproveUntilDate="2026-11-05")]})
    late_same_day = make_patch(name="a", release_date="2026-11-05T23:59:59Z")
    next_day = make_patch(name="b", release_date="2026-11-06T00:00:00Z")
    # 2026-11-06T01:00+02:00 is 2026-11-05T23:00Z: inside the UTC day
    offset_inside = make_patch(name="c", release_date="2026-11-06T01:00:00+02:00")
    result = evaluate(baseline, [late_same_day, next_day, offset_inside], AT)
    got = {d.patch.name: d.decision for d in result.decisions}
    assert got == {"a": "approved", "b": "not_approved", "c": "approved"}


def test_non_security_only_where_enabled() -> None:
    catalog = [
        make_patch(name="sec", security=True),
        make_patch(name="enh", security=False, classification="Enhancement"),
    ]
    off = evaluate(make_baseline(), catalog, AT)
    assert {d.patch.name: d.decision for d in off.decisions} == {"sec": "approved", "enh": "not_approved"}
    assert "EnableNonSecurity is false" in reason_of(off, "enh")
    on = evaluate(
        make_baseline(ApprovalRules={"PatchRules": [rule({}, ApproveAfterDays=0, EnableNonSecurity=True)]}),
        catalog,
        AT,
    )
    assert all(d.decision == "approved" for d in on.decisions)


def test_first_matching_rule_sets_compliance_level() -> None:
    baseline = make_baseline(
        ApprovalRules={
            "PatchRules": [
                rule({"SEVERITY": ["Critical"]}, ApproveAfterDays=0, ComplianceLevel="CRITICAL"),
                rule({}, ApproveAfterDays=0, ComplianceLevel="LOW"),
            ]
        }
    )
    result = evaluate(baseline, [make_patch(name="a"), make_patch(name="b", severity="Low")], AT)
    assert {d.patch.name: d.compliance_level for d in result.decisions} == {"a": "CRITICAL", "b": "LOW"}


@pytest.mark.parametrize(
    ("entry", "matches"),
    [
        ("CVE-2026-1111", True),
        ("cve-2026-1111", True),
        ("ALAS2023-2026-555", True),
        ("2233445", True),
        ("dbus", True),
        ("dbus.x86_64", True),
        ("dbus-1.12.28", True),
        ("dbus-1.12.28-1.amzn2023.0.1", True),
        ("dbus-1.12.28-1.amzn2023.0.1.x86_64", True),
        ("1:1.12.28-1.amzn2023.0.1", True),
        ("dbus-1:1.12.28-1.amzn2023.0.1.x86_64", True),
        ("1:dbus-1.12.28-1.amzn2023.0.1.x86_64", True),
        ("dbus.x86_64:1:1.12.28-1.amzn2023.0.1", True),
        ("dbus*", True),
        ("dbus-1.12.2*", True),
        ("dbus-*:1.12.28-1.amzn2023.0.1.x86_64", True),
        ("dbus.aarch64", False),
        ("dbus-1.12.29", False),
        ("CVE-2026-9999", False),
        ("Dbus", False),  # rpm names are case-sensitive
    ],
)
def test_rpm_approved_list_formats_override_rules(entry: str, matches: bool) -> None:
    baseline = make_baseline(
        ApprovalRules={"PatchRules": [rule({"SEVERITY": ["Critical"]}, ApproveAfterDays=0)]},
        ApprovedPatches=[entry],
        ApprovedPatchesComplianceLevel="HIGH",
    )
    patch = make_patch(
        name="dbus",
        version="1:1.12.28-1.amzn2023.0.1",
        severity="Low",  # no rule approves it
        advisory_id="ALAS2023-2026-555",
        cve_ids=["CVE-2026-1111"],
        bugzilla_ids=["2233445"],
    )
    decision = evaluate(baseline, [patch], AT).decisions[0]
    assert (decision.decision == "approved") is matches
    if matches:
        assert decision.compliance_level == "HIGH"
        assert entry in decision.reason


def test_approved_list_overrides_global_filters_but_not_security_switch() -> None:
    baseline = make_baseline(
        GlobalFilters={"PatchFilters": [{"Key": "PRODUCT", "Values": ["Nothing"]}]},
        ApprovedPatches=["a", "b"],
    )
    catalog = [make_patch(name="a"), make_patch(name="b", security=False, classification="Enhancement")]
    result = evaluate(baseline, catalog, AT)
    assert decisions(result) == {("a", "1.0-1"): "approved", ("b", "1.0-1"): "not_approved"}
    assert "ApprovedPatchesEnableNonSecurity is false" in reason_of(result, "b")
    enabled = evaluate(
        make_baseline(
            GlobalFilters={"PatchFilters": [{"Key": "PRODUCT", "Values": ["Nothing"]}]},
            ApprovedPatches=["a", "b"],
            ApprovedPatchesEnableNonSecurity=True,
        ),
        catalog,
        AT,
    )
    assert all(d.decision == "approved" for d in enabled.decisions)


def deb_patch(**fields: Any) -> Patch:
    base: dict[str, Any] = {
        "family": "deb",
        "arch": "amd64",
        "product": "Ubuntu22.04",
        "classification": None,
        "severity": None,
        "priority": "Important",
        "section": "libs",
    }
    base.update(fields)
    return make_patch(**base)


def ubuntu(**fields: Any) -> Any:
    base: dict[str, Any] = {
        "OperatingSystem": "UBUNTU",
        "ApprovalRules": {"PatchRules": [rule({"PRIORITY": ["Required", "Important"]})]},
    }
    base.update(fields)
    return make_baseline(**base)


def test_deb_lists_match_bare_names_of_every_version_and_arch() -> None:
    catalog = [
        deb_patch(name="openssl", version="3.0.2-0ubuntu1.15"),
        deb_patch(name="openssl", version="3.0.2-0ubuntu1.16", arch="arm64"),
        deb_patch(name="openssl-dev", version="3.0.2-0ubuntu1.16", priority="Optional"),
    ]
    result = evaluate(ubuntu(RejectedPatches=["openssl"]), catalog, AT)
    assert [d.decision for d in result.decisions] == ["rejected", "rejected", "not_approved"]
    approved = evaluate(ubuntu(ApprovedPatches=["openssl-dev"]), catalog, AT)
    assert [d.decision for d in approved.decisions] == ["approved", "approved", "approved"]


def test_rejected_wins_over_approved() -> None:
    baseline = make_baseline(ApprovedPatches=["kernel*"], RejectedPatches=["kernel-6.1.99-*"])
    catalog = [
        make_patch(name="kernel", version="6.1.99-1.amzn2023"),
        make_patch(name="kernel", version="6.1.102-1.amzn2023"),
    ]
    result = evaluate(baseline, catalog, AT)
    assert decisions(result) == {
        ("kernel", "6.1.99-1.amzn2023"): "rejected",
        ("kernel", "6.1.102-1.amzn2023"): "approved",
    }
    assert pinned(result) == {"kernel": "6.1.102-1.amzn2023"}


def test_allow_as_dependency_keeps_dependents_and_says_so() -> None:
    catalog = [
        deb_patch(name="libbad", version="1.1-1"),
        deb_patch(name="app", version="2.0-1", depends=["libbad"]),
    ]
    result = evaluate(ubuntu(RejectedPatches=["libbad"]), catalog, AT)
    assert decisions(result) == {("libbad", "1.1-1"): "rejected", ("app", "2.0-1"): "approved"}
    assert "dependency of app" in reason_of(result, "libbad")
    assert pinned(result) == {"app": "2.0-1"}


def test_block_rejects_dependents_transitively() -> None:
    catalog = [
        deb_patch(name="libbad", version="1.1-1"),
        deb_patch(name="app", version="2.0-1", depends=["libbad"]),
        deb_patch(name="plugin", version="3.0-1", depends=["app"]),
        deb_patch(name="other", version="1.0-1", depends=["libc6"]),
    ]
    result = evaluate(ubuntu(RejectedPatches=["libbad"], RejectedPatchesAction="BLOCK"), catalog, AT)
    assert decisions(result) == {
        ("libbad", "1.1-1"): "rejected",
        ("app", "2.0-1"): "rejected",
        ("plugin", "3.0-1"): "rejected",
        ("other", "1.0-1"): "approved",
    }
    assert "depends on rejected package 'libbad'" in reason_of(result, "app")
    assert pinned(result) == {"other": "1.0-1"}


def test_latest_approved_version_uses_exact_distro_order() -> None:
    catalog = [
        deb_patch(name="pkg", version="1.0~rc1-1"),
        deb_patch(name="pkg", version="1.0-1"),
        deb_patch(name="pkg", version="1:0.9-1"),  # the epoch wins
        deb_patch(name="pkg", version="2.0-1", priority="Optional"),  # newest, not approved
    ]
    # EnableNonSecurity: every version is approved on its own (no candidate rule, see below)
    every_version = rule({"PRIORITY": ["Required", "Important"]}, EnableNonSecurity=True)
    result = evaluate(ubuntu(ApprovalRules={"PatchRules": [every_version]}), catalog, AT)
    assert pinned(result) == {"pkg": "1:0.9-1"}
    assert "superseded in the patch set by 1:0.9-1" in reason_of(result, "pkg", "1.0-1")
    assert [d.in_patch_set for d in result.decisions] == [False, False, True, False]


def security(version: str, **fields: Any) -> Patch:
    return deb_patch(name="foo", version=version, repository="jammy-security", security=True, **fields)


def updates(version: str, **fields: Any) -> Patch:
    return deb_patch(name="foo", version=version, repository="jammy-updates", security=False, **fields)


def test_security_only_rule_approves_nothing_when_the_candidate_is_not_a_security_update() -> None:
    """User Guide, "How patch baseline rules work on Linux-based systems" (Debian Server, Ubuntu Server): "If
    nonsecurity updates are excluded ... For each package, the candidate version of the package (which is
    typically the latest version) must be part of a security repo." foo 1.1 in the security pocket and foo 1.2
    in -updates: apt's candidate is 1.2, not a security update, so the rule approves no version of foo.
    """
    result = evaluate(ubuntu(), [security("1.1-1"), updates("1.2-1")], AT)
    assert decisions(result) == {("foo", "1.1-1"): "not_approved", ("foo", "1.2-1"): "not_approved"}
    assert reason_of(result, "foo", "1.1-1") == (
        "rule 1: the candidate version of foo is 1.2-1; it comes from jammy-updates and is not a security "
        "update, so a rule without EnableNonSecurity approves no version of the package"
    )
    assert result.patch_set.patches == ()
    # With EnableNonSecurity the rule judges each version: the newest is pinned.
    lenient = ubuntu(ApprovalRules={"PatchRules": [rule({"PRIORITY": ["*"]}, EnableNonSecurity=True)]})
    assert pinned(evaluate(lenient, [security("1.1-1"), updates("1.2-1")], AT)) == {"foo": "1.2-1"}


def test_security_only_rule_approves_the_security_candidate_at_its_version_only() -> None:
    """User Guide, "How patch baseline rules work on Linux-based systems" and "How patches are installed": the
    candidate 1.2 is in the security pocket (and, as Ubuntu publishes it, also in -updates), so the rule
    approves foo at the candidate's version; the older security version 1.1 is not approved by the rule."""
    catalog = [security("1.1-1"), security("1.2-1"), updates("1.2-1")]
    result = evaluate(ubuntu(), catalog, AT)
    assert [d.decision for d in result.decisions] == ["not_approved", "approved", "not_approved"]
    assert reason_of(result, "foo", "1.1-1") == (
        "rule 1: the candidate version of foo is 1.2-1; a rule without EnableNonSecurity approves a package at "
        "its candidate version only"
    )
    assert result.decisions[2].reason == "rule 1: not a security update and EnableNonSecurity is false"
    assert [(p.version, p.security) for p in result.patch_set.patches] == [("1.2-1", True)]


def test_the_candidate_is_per_product_and_architecture() -> None:
    """User Guide, "How patch baseline rules work on Linux-based systems": the candidate is per package on the
    node, so a newer non-security build for another product or architecture does not hide this one's
    candidate; a product-less entry serves every product and is judged among the product-less entries."""
    catalog = [
        security("1.1-1"),
        updates("1.2-1", product="Ubuntu20.04"),
        updates("1.3-1", arch="arm64"),
        deb_patch(name="bar", version="2.0-1", product=None, repository="jammy-security", security=True),
        deb_patch(name="bar", version="2.1-1", repository="jammy-updates", security=False),
    ]
    baseline = ubuntu(ApprovalRules={"PatchRules": [rule({"PRIORITY": ["*"]})]})
    result = evaluate(baseline, catalog, AT)
    assert decisions(result) == {
        ("foo", "1.1-1"): "approved",
        ("foo", "1.2-1"): "not_approved",
        ("foo", "1.3-1"): "not_approved",
        ("bar", "2.0-1"): "approved",  # judged among product-less entries
        ("bar", "2.1-1"): "not_approved",
    }
    assert pinned(result) == {"foo": "1.1-1", "bar": "2.0-1"}


def test_the_candidate_is_what_is_on_offer_at_the_evaluation_time() -> None:
    """Versions released after the evaluation time, outside the baseline's Sources, or (patchflow's apt delay
    extension) still inside the rule's delay are not on offer, so they are not the candidate."""
    catalog = [
        security("1.1-1", release_date="2026-11-01T00:00:00Z"),
        updates("1.2-1", release_date="2026-11-09T00:00:00Z"),  # inside the 3-day delay
        updates("1.3-1", release_date="2026-12-01T00:00:00Z"),  # after AT
    ]
    delayed = ubuntu(ApprovalRules={"PatchRules": [rule({"PRIORITY": ["*"]}, ApproveAfterDays=3)]})
    assert pinned(evaluate(delayed, catalog, AT)) == {"foo": "1.1-1"}
    assert pinned(evaluate(delayed, catalog, datetime(2026, 11, 13, tzinfo=UTC))) == {}  # 1.2 is on offer now
    sources = ubuntu(
        Sources=[
            {
                "Name": "security-only",
                "Products": ["Ubuntu22.04"],
                "Configuration": "deb http://security.ubuntu.com/ubuntu jammy-security main",
            }
        ]
    )
    assert pinned(evaluate(sources, [security("1.1-1"), updates("1.2-1")], AT)) == {"foo": "1.1-1"}


def test_yum_security_only_rules_judge_each_version() -> None:
    """The candidate rule is the apt one (issue scope: Debian and Ubuntu); on yum/dnf every update notice is a
    security source, and a rule judges each version by its own notice."""
    catalog = [
        make_patch(name="foo", version="1.1-1"),
        make_patch(name="foo", version="1.2-1", security=False, classification="Bugfix"),
    ]
    assert pinned(evaluate(make_baseline(), catalog, AT)) == {"foo": "1.1-1"}


def test_patch_set_keeps_name_and_arch_apart() -> None:
    catalog = [
        deb_patch(name="libc6", version="2.35-0ubuntu3.8"),
        deb_patch(name="libc6", version="2.35-0ubuntu3.7", arch="i386"),
    ]
    assert {(p.name, p.arch) for p in evaluate(ubuntu(), catalog, AT).patch_set.patches} == {
        ("libc6", "amd64"),
        ("libc6", "i386"),
    }


def test_deb_delay_extension_and_undated_patches() -> None:
    baseline = ubuntu(ApprovalRules={"PatchRules": [rule({"PRIORITY": ["*"]}, ApproveAfterDays=3)]})
    catalog = [
        deb_patch(name="fresh", version="1-1", release_date="2026-11-09T00:00:00Z"),
        deb_patch(name="aged", version="1-1", release_date="2026-11-01T00:00:00Z"),
        deb_patch(name="undated", version="1-1", release_date=None),
    ]
    result = evaluate(baseline, catalog, AT)
    assert {d.patch.name: d.decision for d in result.decisions} == {
        "fresh": "not_approved",
        "aged": "approved",
        "undated": "not_approved",  # a delay needs a date (see the test below)
    }
    # Without a delay (SSM's only form on apt), an undated patch is approved like any other.
    plain = evaluate(ubuntu(ApprovalRules={"PatchRules": [rule({"PRIORITY": ["*"]})]}), catalog[2:], AT)
    assert plain.decisions[0].decision == "approved" and plain.notes == []


UNDATED_RULES = [
    pytest.param({"ApproveAfterDays": 0}, id="ApproveAfterDays"),
    pytest.param({"ApproveUntilDate": "2026-11-30"}, id="ApproveUntilDate"),
]


@pytest.mark.parametrize("condition", UNDATED_RULES)
def test_undated_patches_fail_delay_and_date_rules_unless_non_security_is_enabled(
    condition: dict[str, Any],
) -> None:
    """AWS User Guide, "How to specify an alternative patch source repository (Linux)": "If you filter on
    ApprovalAfterDays, but the package release date isn't in Unix Epoch format (or has no release date
    specified), the package won't be included by the filter" — except when the baseline's rules include
    non-security updates. ApproveUntilDate compares the release date too, so it is held to the same rule."""
    undated = make_patch(name="undated", release_date=None)
    dated = make_patch(name="dated")
    strict = make_baseline(ApprovalRules={"PatchRules": [rule({}, ComplianceLevel="HIGH", **condition)]})
    result = evaluate(strict, [undated, dated], AT)
    assert decisions(result) == {("undated", "1.0-1"): "not_approved", ("dated", "1.0-1"): "approved"}
    field = next(iter(condition))
    assert reason_of(result, "undated") == (
        f"rule 1: matches, but has no release date, and {field} approves undated patches only when "
        "EnableNonSecurity is true"
    )
    assert result.patch_set.patches[0].name == "dated"
    assert any("1 patch(es) without a release date not approved" in note for note in result.notes)

    lenient = make_baseline(
        ApprovalRules={"PatchRules": [rule({}, ComplianceLevel="HIGH", EnableNonSecurity=True, **condition)]}
    )
    approved = evaluate(lenient, [undated], AT)
    assert approved.decisions[0].decision == "approved"
    assert approved.decisions[0].compliance_level == "HIGH"
    assert "no release date" in approved.decisions[0].reason and "EnableNonSecurity is true" in (
        approved.decisions[0].reason
    )
    assert any("1 patch(es) without a release date approved" in note for note in approved.notes)


def test_a_later_rule_without_the_condition_still_approves_an_undated_patch() -> None:
    """Rules are tried in order: the first one that approves wins, so an undated patch refused by a delay rule
    is approved by a later rule that lets it through (here one with EnableNonSecurity)."""
    baseline = make_baseline(
        ApprovalRules={
            "PatchRules": [
                rule({}, ApproveAfterDays=7, ComplianceLevel="CRITICAL"),
                rule({}, ApproveAfterDays=7, ComplianceLevel="LOW", EnableNonSecurity=True),
            ]
        }
    )
    result = evaluate(baseline, [make_patch(release_date=None)], AT)
    assert result.decisions[0].decision == "approved" and result.decisions[0].compliance_level == "LOW"
    assert not any("not approved" in note for note in result.notes)


def test_approved_patches_approve_undated_patches() -> None:
    """The ApprovedPatches list approves "regardless of filters and rules" (User Guide, "How patches are
    installed"): a missing release date does not matter there."""
    baseline = make_baseline(
        ApprovalRules={"PatchRules": [rule({}, ApproveAfterDays=7)]},
        ApprovedPatches=["undated"],
        ApprovedPatchesComplianceLevel="MEDIUM",
    )
    result = evaluate(baseline, [make_patch(name="undated", release_date=None)], AT)
    assert result.decisions[0].decision == "approved"
    assert result.decisions[0].reason == "in ApprovedPatches 'undated'"
    assert [p.name for p in result.patch_set.patches] == ["undated"]


def test_patches_released_after_the_evaluation_time_are_not_approved() -> None:
    result = evaluate(
        ubuntu(), [deb_patch(name="future", version="1-1", release_date="2026-12-01T00:00:00Z")], AT
    )
    assert result.decisions[0].decision == "not_approved"


def test_sources_replace_the_default_repositories() -> None:
    baseline = make_baseline(
        Sources=[
            {
                "Name": "curated",
                "Products": ["AmazonLinux2023"],
                "Configuration": "[curated-al2023]\nname=Curated\nbaseurl=https://mirror.example/al2023\nenabled=1",
            }
        ]
    )
    catalog = [
        make_patch(name="a", repository="curated-al2023"),
        make_patch(name="b", repository="amazonlinux"),
        make_patch(name="c", repository="amazonlinux", product="AmazonLinux2"),  # no source for this product
    ]
    result = evaluate(baseline, catalog, AT)
    assert {d.patch.name: d.decision for d in result.decisions} == {
        "a": "approved",
        "b": "not_approved",
        "c": "approved",
    }
    assert "Sources" in reason_of(result, "b")


def test_the_pinned_set_carries_the_sources_without_changing_any_id() -> None:
    """Executors install a set from its baseline's Sources (README "Custom repositories"): the set reads them
    from its stored baseline, which always held them — so every stored set keeps its id (these ids were
    computed before sets exposed their Sources) and still loads."""
    curated = {
        "Name": "curated",
        "Products": ["AmazonLinux2023"],
        "Configuration": "[curated-al2023]\nname=Curated\nbaseurl=https://mirror.example/al2023\nenabled=1",
    }
    with_sources = evaluate(
        make_baseline(Sources=[curated]), [make_patch(name="a", repository="curated-al2023")], AT
    ).patch_set
    plain = evaluate(make_baseline(), [make_patch(name="a")], AT).patch_set
    assert (with_sources.id, plain.id) == ("ps-78c216adc5bb79adc02c5db6", "ps-6b3c591e29fc99ece8a3a548")
    assert with_sources.sources() == (RepoSource("curated", ("AmazonLinux2023",), curated["Configuration"]),)
    assert plain.sources() == ()
    assert PatchSet.from_json(with_sources.to_json()).sources() == with_sources.sources()
    assert RepoSource.from_json(curated).to_json() == curated
    assert with_sources.sources()[0].applies_to("amazonlinux2023")
    assert not with_sources.sources()[0].applies_to("AmazonLinux2") and not with_sources.sources()[
        0
    ].applies_to(None)


@pytest.mark.parametrize("system", ["AMAZON_LINUX_2022", "AMAZON_LINUX_2023"])
def test_amazon_linux_2022_and_2023_medium_matches_moderate(system: str) -> None:
    """User Guide, "How patches are installed" (Amazon Linux 2022 and Amazon Linux 2023): "a patch severity
    level of Medium is equivalent to a severity of Moderate that might be defined in some external
    repositories". Other Amazon Linux releases keep the two apart."""
    medium = {"ApprovalRules": {"PatchRules": [rule({"SEVERITY": ["Medium"]}, ApproveAfterDays=0)]}}
    baseline = make_baseline(OperatingSystem=system, **medium)
    assert evaluate(baseline, [make_patch(severity="Moderate")], AT).decisions[0].decision == "approved"
    al2 = make_baseline(OperatingSystem="AMAZON_LINUX_2", **medium)
    assert evaluate(al2, [make_patch(severity="Moderate")], AT).decisions[0].decision == "not_approved"


def test_when_several_rules_approve_a_patch_the_first_sets_its_compliance_level() -> None:
    """AWS does not say which ``ComplianceLevel`` applies when several rules match a patch (API reference,
    ``PatchRule``). patchflow's choice, documented in the README: rules are tried in file order and the first
    that approves the patch sets its level — even when a later rule would give a more severe one. Only a
    patch also in ``ApprovedPatches`` takes the more severe of the rule's and the list's level."""
    baseline = make_baseline(
        ApprovalRules={
            "PatchRules": [
                rule({"CLASSIFICATION": ["Security"]}, ApproveAfterDays=0, ComplianceLevel="LOW"),
                rule({"SEVERITY": ["Critical"]}, ApproveAfterDays=0, ComplianceLevel="CRITICAL"),
            ]
        }
    )
    result = evaluate(baseline, [make_patch(severity="Critical")], AT)
    assert (result.decisions[0].compliance_level, result.decisions[0].reason) == (
        "LOW",
        "approved by rule 1 (ApproveAfterDays 0)",
    )
    listed = baseline.model_copy(
        update={"ApprovedPatches": ["pkg"], "ApprovedPatchesComplianceLevel": "HIGH"}
    )
    assert evaluate(listed, [make_patch(severity="Critical")], AT).decisions[0].compliance_level == "HIGH"


def test_sles_rejected_list_takes_patch_names_like_the_approved_list() -> None:
    """User Guide, "Package name formats for approved and rejected patch lists" (SLES): "For both approved and
    rejected patch lists" full patch names such as ``SUSE-SLE-Example-Package-12-2018-123`` and names with a
    single wildcard (``SUSE-SLE-Example-Package-12-2018-*``). They match the catalog entry's advisory id."""
    suse = make_baseline(
        OperatingSystem="SUSE",
        ApprovalRules={"PatchRules": [rule({}, ApproveAfterDays=0)]},
        RejectedPatches=["SUSE-SLE-Module-Basesystem-15-SP5-2026-1234", "SUSE-SLE-Module-Web-15-SP5-2026-*"],
        RejectedPatchesAction="BLOCK",
    )
    catalog = [
        make_patch(
            name="libxml2", product="Suse15.5", advisory_id="SUSE-SLE-Module-Basesystem-15-SP5-2026-1234"
        ),
        make_patch(name="nginx", product="Suse15.5", advisory_id="suse-sle-module-web-15-sp5-2026-77"),
        make_patch(name="curl", product="Suse15.5", advisory_id="SUSE-SLE-Module-Basesystem-15-SP5-2026-999"),
        make_patch(name="app", product="Suse15.5", depends=["libxml2"]),
    ]
    result = evaluate(suse, catalog, AT)
    assert {d.patch.name: d.decision for d in result.decisions} == {
        "libxml2": "rejected",
        "nginx": "rejected",  # the wildcard entry, case-insensitively as SUSE ids are
        "curl": "approved",
        "app": "rejected",  # BLOCK follows the rejected package
    }
    assert reason_of(result, "libxml2") == (
        "matches RejectedPatches entry 'SUSE-SLE-Module-Basesystem-15-SP5-2026-1234' (BLOCK)"
    )
    approved = make_baseline(
        OperatingSystem="SUSE",
        ApprovalRules={"PatchRules": []},
        ApprovedPatches=["SUSE-SLE-Module-Web-15-SP5-2026-*"],
    )
    assert [d.decision for d in evaluate(approved, catalog[:2], AT).decisions] == ["not_approved", "approved"]


def test_patch_set_id_is_content_addressed() -> None:
    baseline = make_baseline()
    catalog = [make_patch(name="a"), make_patch(name="b", version="2.0-1")]
    first = evaluate(baseline, catalog, AT).patch_set.id
    assert first.startswith("ps-")
    assert evaluate(baseline, list(reversed(catalog)), AT).patch_set.id == first
    assert evaluate(baseline, catalog, AT + timedelta(seconds=1)).patch_set.id != first
    assert evaluate(baseline, [*catalog, make_patch(name="c", security=False)], AT).patch_set.id != first
    assert evaluate(make_baseline(Name="other-name"), catalog, AT).patch_set.id != first


def test_catalog_of_the_wrong_family_is_refused() -> None:
    with pytest.raises(CatalogError) as info:
        evaluate(ubuntu(), [make_patch(name="rpm-thing")], AT)
    assert "uses 'deb' packages" in str(info.value)


def test_windows_baselines_validate_but_do_not_evaluate() -> None:
    windows = make_baseline(
        OperatingSystem="WINDOWS", ApprovalRules={"PatchRules": [rule({}, ApproveAfterDays=7)]}
    )
    with pytest.raises(InputError, match="Linux"):
        evaluate(windows, [], AT)


# ---------------------------------------------------------------------------------------------- properties

NAMES = ["a", "b", "c", "d"]
RPM_VERSIONS = ["1.0-1", "1.0-2", "1.0~rc1-1", "1.0^git1-1", "2.0-1", "1:0.5-1", "1.00-1", "1.0a-1"]


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Any, list[Patch], datetime]:
    patches = []
    for _ in range(draw(st.integers(0, 12))):
        patches.append(
            make_patch(
                name=draw(st.sampled_from(NAMES)),
                arch=draw(st.sampled_from(["x86_64", "noarch"])),
                version=draw(st.sampled_from(RPM_VERSIONS)),
                severity=draw(st.sampled_from(["Critical", "Important", "Low", None])),
                classification=draw(st.sampled_from(["Security", "Bugfix"])),
                security=draw(st.booleans()),
                release_date=draw(st.sampled_from([None, "2026-10-01T00:00:00Z", "2026-11-08T06:00:00Z"])),
                depends=draw(st.lists(st.sampled_from(NAMES), max_size=2)),
                cve_ids=draw(st.lists(st.sampled_from(["CVE-2026-0001", "CVE-2026-0002"]), max_size=1)),
            )
        )
    rules = [
        rule(
            {
                "SEVERITY": draw(
                    st.lists(st.sampled_from(["Critical", "Important", "Low", "*"]), min_size=1, max_size=3)
                )
            },
            ApproveAfterDays=draw(st.integers(0, 10)),
            EnableNonSecurity=draw(st.booleans()),
        )
        for _ in range(draw(st.integers(0, 3)))
    ]
    baseline = make_baseline(
        ApprovalRules={"PatchRules": rules},
        ApprovedPatches=draw(
            st.lists(st.sampled_from(["a", "b*", "CVE-2026-0001", "c.x86_64"]), max_size=2, unique=True)
        ),
        RejectedPatches=draw(st.lists(st.sampled_from(["a", "b-2.0-1", "d*"]), max_size=2, unique=True)),
        RejectedPatchesAction=draw(st.sampled_from(["ALLOW_AS_DEPENDENCY", "BLOCK"])),
    )
    at = datetime(2026, 11, 1, tzinfo=UTC) + timedelta(hours=draw(st.integers(0, 24 * 20)))
    return baseline, patches, at


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios())
def test_properties_of_every_evaluation(scenario: tuple[Any, list[Patch], datetime]) -> None:
    baseline, patches, at = scenario
    result = evaluate(baseline, patches, at)
    by_key: dict[tuple[str, str], list[str]] = {}
    for d in result.decisions:
        if d.decision == "approved":
            by_key.setdefault(d.patch.key, []).append(d.patch.version)
    rejected = {
        (d.patch.name, d.patch.arch, d.patch.version) for d in result.decisions if d.decision == "rejected"
    }
    pins = {(p.name, p.arch): p.version for p in result.patch_set.patches}
    # the patch set holds exactly the latest approved version of each approved package
    assert set(pins) == set(by_key)
    for key, found in by_key.items():
        assert versions.compare("rpm", pins[key], versions.latest("rpm", found)) == 0
    # nothing rejected is pinned
    assert not {(n, a, v) for (n, a), v in pins.items()} & rejected
    # BLOCK: nothing pinned depends on a rejected package
    if baseline.RejectedPatchesAction == "BLOCK":
        rejected_names = {name for name, _, _ in rejected}
        for d in result.decisions:
            if d.in_patch_set:
                assert not set(d.patch.depends) & rejected_names
    # order independence and determinism
    shuffled = list(patches)
    random.Random(7).shuffle(shuffled)
    again = evaluate(baseline, shuffled, at)
    assert again.patch_set.id == result.patch_set.id
    assert sorted((d.patch.model_dump_json(), d.decision) for d in again.decisions) == sorted(
        (d.patch.model_dump_json(), d.decision) for d in result.decisions
    )


@settings(max_examples=200, deadline=None)
@given(scenarios(), st.integers(1, 24 * 30))
def test_approval_only_grows_with_time(scenario: tuple[Any, list[Patch], datetime], hours: int) -> None:
    """A patch approved at t stays approved at any later t' (delays only ever expire)."""
    baseline, patches, at = scenario
    later = at + timedelta(hours=hours)
    before = {i for i, d in enumerate(evaluate(baseline, patches, at).decisions) if d.decision == "approved"}
    after = {
        i for i, d in enumerate(evaluate(baseline, patches, later).decisions) if d.decision == "approved"
    }
    assert before <= after
