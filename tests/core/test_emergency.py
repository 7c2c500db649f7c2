"""Emergency patch sets: which fixes are chosen for named CVEs, and who is exposed (deb and rpm order)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from patchflow.core.catalog import Patch
from patchflow.core.emergency import Selection, emergency_patch_set, exposure, select_fixes
from patchflow.core.patchsets import PatchSetStore
from patchflow.errors import InputError
from patchflow.executors.base import Package
from tests.conftest import make_baseline, make_patch


def deb(name: str, version: str, **fields: Any) -> Patch:
    base: dict[str, Any] = {"arch": "amd64", "family": "deb", "product": "Ubuntu22.04"}
    base.update(fields)
    return make_patch(name=name, version=version, **base)


def rpm(name: str, version: str, **fields: Any) -> Patch:
    return make_patch(name=name, version=version, **fields)


UBUNTU = make_baseline(Name="ubuntu-test", OperatingSystem="UBUNTU")
AL2023 = make_baseline()


def pins(selection: Selection) -> dict[tuple[str, str], str]:
    return {(f.patch.name, f.patch.arch): f.patch.version for f in selection.fixes}


def reasons(selection: Selection) -> dict[str, str]:
    return {f.patch.name: f.reason for f in selection.fixes}


# --------------------------------------------------------------------------------------------- selection


def test_multiple_cves_pin_only_their_fixes() -> None:
    catalog = [
        deb("openssl", "3.0.2-0ubuntu1.15", cve_ids=["CVE-2026-1001"]),
        deb("curl", "7.81.0-1ubuntu1.18", cve_ids=["CVE-2026-2002"]),
        deb("bash", "5.1-6ubuntu1.2", cve_ids=["CVE-2026-3003"]),
        deb("tzdata", "2026c-0ubuntu0.22.04"),
    ]
    selection = select_fixes(catalog, cves=["CVE-2026-1001", "CVE-2026-2002"], baseline=UBUNTU)
    assert pins(selection) == {
        ("curl", "amd64"): "7.81.0-1ubuntu1.18",
        ("openssl", "amd64"): "3.0.2-0ubuntu1.15",
    }
    assert selection.cves == ("CVE-2026-1001", "CVE-2026-2002")
    assert reasons(selection)["openssl"].startswith("fixes CVE-2026-1001")
    assert {f.patch.name: f.cve_ids for f in selection.fixes}["curl"] == ("CVE-2026-2002",)
    assert [p.compliance_level for p in selection.pinned()] == ["CRITICAL", "CRITICAL"]
    assert not selection.unfixable
    selection.require_complete()


def test_one_cve_in_several_packages_and_architectures() -> None:
    catalog = [
        deb("openssl", "3.0.2-0ubuntu1.15", cve_ids=["CVE-2026-1001"]),
        deb("openssl", "3.0.2-0ubuntu1.15", arch="arm64", cve_ids=["CVE-2026-1001"]),
        deb("libssl3", "3.0.2-0ubuntu1.15", cve_ids=["cve-2026-1001"]),  # case differs in the catalog
        deb("libssl3", "3.0.2-0ubuntu1.15", arch="i386", cve_ids=["CVE-2026-9999"]),
    ]
    selection = select_fixes(catalog, cves=["Cve-2026-1001 "], baseline=UBUNTU)
    assert pins(selection) == {
        ("libssl3", "amd64"): "3.0.2-0ubuntu1.15",
        ("openssl", "amd64"): "3.0.2-0ubuntu1.15",
        ("openssl", "arm64"): "3.0.2-0ubuntu1.15",
    }
    floors = {(f.issue, f.name, f.arch, f.version) for f in selection.floors}
    assert floors == {
        ("CVE-2026-1001", "libssl3", "amd64", "3.0.2-0ubuntu1.15"),
        ("CVE-2026-1001", "openssl", "amd64", "3.0.2-0ubuntu1.15"),
        ("CVE-2026-1001", "openssl", "arm64", "3.0.2-0ubuntu1.15"),
    }


def test_newest_version_at_or_above_every_named_fix_is_pinned() -> None:
    # 1.15 fixes A, 1.16 fixes B, 1.17 is a later (cumulative) update, 1.14 is older than every fix.
    catalog = [
        deb("openssl", "3.0.2-0ubuntu1.14"),
        deb("openssl", "3.0.2-0ubuntu1.15", cve_ids=["CVE-2026-1001"]),
        deb("openssl", "3.0.2-0ubuntu1.17"),
        deb("openssl", "3.0.2-0ubuntu1.16", cve_ids=["CVE-2026-1200"]),
    ]
    selection = select_fixes(catalog, cves=["CVE-2026-1001", "CVE-2026-1200"], baseline=UBUNTU)
    assert pins(selection) == {("openssl", "amd64"): "3.0.2-0ubuntu1.17"}
    assert reasons(selection)["openssl"] == (
        "fixes CVE-2026-1001 (first fixed in 3.0.2-0ubuntu1.15), CVE-2026-1200 (first fixed in 3.0.2-0ubuntu1.16)"
    )
    # exposure is judged per CVE against its own lowest fixing version, not against the pin
    assert {(f.issue, f.version) for f in selection.floors} == {
        ("CVE-2026-1001", "3.0.2-0ubuntu1.15"),
        ("CVE-2026-1200", "3.0.2-0ubuntu1.16"),
    }


def test_dependencies_are_followed_transitively() -> None:
    catalog = [
        deb("curl", "7.81.0-1ubuntu1.18", cve_ids=["CVE-2026-2002"], depends=["libcurl4"]),
        deb("libcurl4", "7.81.0-1ubuntu1.17", depends=["libnghttp2-14", "libc6"]),
        deb("libcurl4", "7.81.0-1ubuntu1.18", depends=["libnghttp2-14", "libc6"]),
        deb("libnghttp2-14", "1.43.0-1ubuntu0.1", depends=["curl-data"]),
        deb("libnghttp2-14", "1.43.0-1ubuntu0.2", depends=["curl-data"]),
        deb("libnghttp2-14", "1.43.0-1ubuntu0.2", arch="arm64"),  # another architecture: not needed
        deb("curl-data", "7.81.0-1ubuntu1.18", arch="all"),  # arch-independent dependency
        deb("curl-data", "7.81.0-1ubuntu1.18", arch="all", product="Ubuntu24.04"),  # another product
        deb("unrelated", "1.0-1", depends=["libcurl4"]),
    ]
    selection = select_fixes(catalog, cves=["CVE-2026-2002"], baseline=UBUNTU)
    assert pins(selection) == {
        ("curl", "amd64"): "7.81.0-1ubuntu1.18",
        ("curl-data", "all"): "7.81.0-1ubuntu1.18",
        ("libcurl4", "amd64"): "7.81.0-1ubuntu1.18",
        ("libnghttp2-14", "amd64"): "1.43.0-1ubuntu0.2",
    }
    assert reasons(selection) == {
        "curl": "fixes CVE-2026-2002 (first fixed in 7.81.0-1ubuntu1.18)",
        "curl-data": "dependency of libnghttp2-14",
        "libcurl4": "dependency of curl",
        "libnghttp2-14": "dependency of libcurl4",
    }
    assert {f.patch.name: f.patch.product for f in selection.fixes}["curl-data"] == "Ubuntu22.04"
    assert selection.notes == (
        "libc6 (a dependency of libcurl4) has no catalog entry: the installed version serves",
    )
    # a dependency that is itself a named fix keeps one entry with both reasons
    both = select_fixes(
        [*catalog, deb("libcurl4", "7.81.0-1ubuntu1.19", cve_ids=["CVE-2026-2003"])],
        cves=["CVE-2026-2002", "CVE-2026-2003"],
        baseline=UBUNTU,
    )
    assert pins(both)[("libcurl4", "amd64")] == "7.81.0-1ubuntu1.19"
    assert (
        reasons(both)["libcurl4"]
        == "fixes CVE-2026-2003 (first fixed in 7.81.0-1ubuntu1.19); dependency of curl"
    )


def test_rejected_versions_are_never_pinned() -> None:
    # rpm lists can reject one version: the newest fix is rejected, the older fix is taken instead
    baseline = make_baseline(RejectedPatches=["openssl-3.0.8-1.amzn2023"])
    catalog = [
        rpm("openssl", "1:3.0.7-1.amzn2023", cve_ids=["CVE-2026-1001"]),
        rpm("openssl", "1:3.0.8-1.amzn2023", cve_ids=["CVE-2026-1200"]),
        rpm("openssl", "1:3.0.6-1.amzn2023"),
    ]
    selection = select_fixes(catalog, cves=["CVE-2026-1001"], baseline=baseline)
    assert pins(selection) == {("openssl", "x86_64"): "1:3.0.7-1.amzn2023"}
    assert [(r.version, r.reason) for r in selection.refused] == [
        (
            "1:3.0.8-1.amzn2023",
            "matches RejectedPatches entry 'openssl-3.0.8-1.amzn2023' (ALLOW_AS_DEPENDENCY)",
        )
    ]
    # the CVE only the rejected version fixes has no installable fix: reported, and a wave refuses to start
    both = select_fixes(catalog, cves=["CVE-2026-1001", "CVE-2026-1200"], baseline=baseline)
    assert pins(both) == {("openssl", "x86_64"): "1:3.0.7-1.amzn2023"}
    assert set(both.unfixable) == {"CVE-2026-1200"}
    assert "every version from 1:3.0.8-1.amzn2023 on is refused" in both.unfixable["CVE-2026-1200"]
    with pytest.raises(InputError, match=r"no installable fix for CVE-2026-1200"):
        both.require_complete()


def test_block_refuses_fixes_that_depend_on_a_rejected_package() -> None:
    catalog = [
        deb("goodapp", "2.0-1ubuntu0.1", cve_ids=["CVE-2026-4004"], depends=["libbad"]),
        deb("libbad", "1.4-2ubuntu0.1"),
        deb("openssl", "3.0.2-0ubuntu1.15", cve_ids=["CVE-2026-1001"], depends=["libbad"]),
    ]
    block = make_baseline(OperatingSystem="UBUNTU", RejectedPatches=["libbad"], RejectedPatchesAction="BLOCK")
    selection = select_fixes(catalog, cves=["CVE-2026-4004"], baseline=block)
    assert selection.fixes == ()
    assert "blocked: depends on rejected package 'libbad'" in selection.unfixable["CVE-2026-4004"]
    assert [r.name for r in selection.refused] == ["goodapp"]
    # ALLOW_AS_DEPENDENCY: the fix is pinned, its rejected dependency is not (and the output says so)
    allow = make_baseline(OperatingSystem="UBUNTU", RejectedPatches=["libbad"])
    allowed = select_fixes(catalog, cves=["CVE-2026-1001"], baseline=allow)
    assert pins(allowed) == {("openssl", "amd64"): "3.0.2-0ubuntu1.15"}
    assert allowed.notes == (
        "libbad amd64 (a dependency of openssl) is rejected by the baseline: not pinned, so this wave never "
        "installs it",
    )
    # rejected even from a repository outside the baseline's Sources (evaluate would call it not_approved first)
    sourced = make_baseline(
        OperatingSystem="UBUNTU",
        RejectedPatches=["libbad"],
        Sources=[
            {
                "Name": "jammy-security",
                "Products": ["Ubuntu22.04"],
                "Configuration": "deb http://security.ubuntu.com/ubuntu jammy-security main",
            }
        ],
    )
    other_repo = [deb("libbad", "1.4-2ubuntu0.1", cve_ids=["CVE-2026-4005"], repository="ppa")]
    assert select_fixes(other_repo, cves=["CVE-2026-4005"], baseline=sourced).fixes == ()
    # a rejected package named directly is unfixable too
    direct = select_fixes(
        [deb("libbad", "1.4-2ubuntu0.1", cve_ids=["CVE-2026-4005"])], cves=["CVE-2026-4005"], baseline=allow
    )
    assert direct.fixes == () and "RejectedPatches entry 'libbad'" in direct.unfixable["CVE-2026-4005"]


def test_unknown_and_malformed_cves_are_input_errors() -> None:
    catalog = [deb("openssl", "3.0.2-0ubuntu1.15", cve_ids=["CVE-2026-1234"])]
    with pytest.raises(InputError) as caught:
        select_fixes(
            catalog, cves=["CVE-2026-1243", "CVE-2025-0001"], baseline=UBUNTU, catalog_source="cat.json"
        )
    message = str(caught.value)
    assert message.startswith(
        "cat.json: the catalog has no patch for CVE-2026-1243 (did you mean CVE-2026-1234?)"
    )
    assert "no patch for CVE-2025-0001" in message and "refresh the catalog" in message
    with pytest.raises(InputError, match=r"'2026-1234' is not a CVE id"):
        select_fixes(catalog, cves=["2026-1234"], baseline=UBUNTU)
    with pytest.raises(InputError, match="name at least one --cve"):
        select_fixes(catalog, cves=[], baseline=UBUNTU)
    with pytest.raises(InputError, match="Linux baseline"):
        select_fixes(catalog, cves=["CVE-2026-1234"], baseline=make_baseline(OperatingSystem="WINDOWS"))
    with pytest.raises(InputError, match="does not fit"):
        select_fixes(catalog, cves=["CVE-2026-1234"], baseline=AL2023)


def test_package_option_pins_the_newest_version_of_each_architecture() -> None:
    catalog = [
        deb("bash", "5.1-6ubuntu1.1"),
        deb("bash", "5.1-6ubuntu1.2"),
        deb("bash", "5.1-6ubuntu1.10", arch="arm64"),
        deb("bash", "5.1-6ubuntu1.9", arch="arm64"),
        deb("openssl", "3.0.2-0ubuntu1.15", cve_ids=["CVE-2026-1001"]),
    ]
    selection = select_fixes(catalog, cves=[], packages=["bash"], baseline=UBUNTU)
    assert pins(selection) == {("bash", "amd64"): "5.1-6ubuntu1.2", ("bash", "arm64"): "5.1-6ubuntu1.10"}
    assert reasons(selection)["bash"] == "named with --package"
    assert selection.issues == ("package:bash",)
    with pytest.raises(InputError, match=r"no package 'bsh' \(did you mean bash\?\)"):
        select_fixes(catalog, cves=["CVE-2026-1001"], packages=["bsh"], baseline=UBUNTU)


def test_equal_versions_written_differently_choose_independently_of_catalog_order() -> None:
    a = deb("zlib1g", "1:1.2.11.dfsg-2ubuntu9.2", cve_ids=["CVE-2026-5005"], advisory_id="USN-1")
    b = deb("zlib1g", "1:1.2.11.dfsg-2ubuntu9.02", cve_ids=["CVE-2026-5005"], advisory_id="USN-2")
    one = select_fixes([a, b], cves=["CVE-2026-5005"], baseline=UBUNTU)
    two = select_fixes([b, a], cves=["CVE-2026-5005"], baseline=UBUNTU)
    assert one.fixes == two.fixes


# --------------------------------------------------------------------------------------------- exposure


def test_exposure_with_deb_epochs_and_tildes() -> None:
    catalog = [
        deb("vim", "2:8.2.3995-1ubuntu2.21", cve_ids=["CVE-2026-6006"]),
        deb("nginx", "1.18.0-6ubuntu14.5", cve_ids=["CVE-2026-7007"]),
        deb("nginx", "1.18.0-6ubuntu14.6", cve_ids=["CVE-2026-7007"]),
        deb("rc", "1.0~rc2-1", cve_ids=["CVE-2026-7007"]),
    ]
    selection = select_fixes(catalog, cves=["CVE-2026-6006", "CVE-2026-7007"], baseline=UBUNTU)
    installed = {
        # 9.x without the epoch is older than anything with epoch 2
        "i-epoch": [Package("vim", "amd64", "9.1.0-1"), Package("nginx", "amd64", "1.18.0-6ubuntu14.5")],
        # equal to the fix, and epoch 2 with a newer upstream: not exposed
        "i-fixed": [Package("vim", "amd64", "2:9.0.0-1"), Package("nginx", "amd64", "1.18.0-6ubuntu14.10")],
        # ~ sorts before everything: 1.0~rc1 < 1.0~rc2 < 1.0
        "i-tilde": [Package("rc", "amd64", "1.0~rc1-1"), Package("nginx", "amd64", "1.18.0-6ubuntu14.4")],
        "i-tilde-ok": [Package("rc", "amd64", "1.0-1")],
        "i-other-arch": [Package("vim", "arm64", "1:1.0-1")],
        "i-nothing": [],
    }
    report = exposure(installed, selection)
    assert {
        issue: [(e.instance_id, e.name, e.installed, e.fixed_in) for e in items]
        for issue, items in report.by_issue().items()
    } == {
        "CVE-2026-6006": [("i-epoch", "vim", "9.1.0-1", "2:8.2.3995-1ubuntu2.21")],
        "CVE-2026-7007": [
            ("i-tilde", "nginx", "1.18.0-6ubuntu14.4", "1.18.0-6ubuntu14.5"),
            ("i-tilde", "rc", "1.0~rc1-1", "1.0~rc2-1"),
        ],
    }
    assert report.instances() == ["i-epoch", "i-tilde"]
    assert report.to_json()["CVE-2026-7007"][1] == {
        "instance_id": "i-tilde",
        "name": "rc",
        "arch": "amd64",
        "installed": "1.0~rc1-1",
        "fixed_in": "1.0~rc2-1",
    }


def test_exposure_with_rpm_epochs_and_tildes() -> None:
    catalog = [
        rpm("openssl", "1:3.0.8-1.amzn2023", cve_ids=["CVE-2026-1001"]),
        rpm("kernel", "6.1.0-1~beta.amzn2023", cve_ids=["CVE-2026-1002"]),
    ]
    selection = select_fixes(catalog, cves=["CVE-2026-1001", "CVE-2026-1002"], baseline=AL2023)
    installed = {
        "i-a": [Package("openssl", "x86_64", "3.0.9-1.amzn2023")],  # no epoch = 0: older than 1:3.0.8
        "i-b": [Package("openssl", "x86_64", "1:3.0.8-1.amzn2023")],  # the fix itself
        "i-c": [Package("openssl", "x86_64", "2:1.0.0-1.amzn2023")],  # epoch 2 wins
        "i-d": [Package("kernel", "x86_64", "6.1.0-1~alpha.amzn2023")],  # ~alpha < ~beta
        "i-e": [Package("kernel", "x86_64", "6.1.0-1.amzn2023")],  # release without ~ is newer
        "i-deb": [Package("openssl", "x86_64", "1.0")],
        "i-bad": [Package("openssl", "x86_64", "1.0-")],
    }
    report = exposure(installed, selection, families={"i-deb": "deb"})
    assert [(e.issue, e.instance_id) for e in report.exposed] == [
        ("CVE-2026-1001", "i-a"),
        ("CVE-2026-1002", "i-d"),
    ]
    assert report.notes[0].startswith("i-bad: openssl x86_64 not judged: invalid rpm version '1.0-'")
    assert report.notes[1] == "1 instance(s) run deb packages: not judged"


def test_package_exposure_is_judged_against_the_pinned_version() -> None:
    catalog = [deb("bash", "5.1-6ubuntu1.1"), deb("bash", "5.1-6ubuntu1.2")]
    selection = select_fixes(catalog, cves=[], packages=["bash"], baseline=UBUNTU)
    report = exposure(
        {
            "i-old": [Package("bash", "amd64", "5.1-6ubuntu1.1")],
            "i-new": [Package("bash", "amd64", "5.1-6ubuntu1.2")],
        },
        selection,
    )
    assert report.to_json() == {
        "package:bash": [
            {
                "instance_id": "i-old",
                "name": "bash",
                "arch": "amd64",
                "installed": "5.1-6ubuntu1.1",
                "fixed_in": "5.1-6ubuntu1.2",
            }
        ]
    }


# --------------------------------------------------------------------------------------------- patch set


def test_emergency_patch_set_is_content_addressed_and_stored(tmp_path: Path) -> None:
    catalog = [
        deb("openssl", "3.0.2-0ubuntu1.15", cve_ids=["CVE-2026-1001"], depends=["libssl3"]),
        deb("libssl3", "3.0.2-0ubuntu1.15"),
        deb("curl", "7.81.0-1ubuntu1.18", cve_ids=["CVE-2026-2002"]),
    ]
    selection = select_fixes(catalog, cves=["CVE-2026-1001"], baseline=UBUNTU)
    at = datetime(2026, 11, 10, 2, 0, tzinfo=UTC)
    pinned = emergency_patch_set(selection, UBUNTU, catalog, at)
    assert [(p.name, p.version) for p in pinned.patches] == [
        ("libssl3", "3.0.2-0ubuntu1.15"),
        ("openssl", "3.0.2-0ubuntu1.15"),
    ]
    assert pinned.baseline["Name"] == "ubuntu-test"
    assert "EMERGENCY" in pinned.baseline["Description"] and "CVE-2026-1001" in pinned.baseline["Description"]
    assert pinned == emergency_patch_set(
        selection, UBUNTU, list(reversed(catalog)), at
    )  # same content, same id
    other = select_fixes(catalog, cves=["CVE-2026-2002"], baseline=UBUNTU)
    assert emergency_patch_set(other, UBUNTU, catalog, at).id != pinned.id
    store = PatchSetStore(tmp_path / "patch-sets")
    store.save(pinned)
    assert store.load(pinned.id) == pinned  # from_json verifies the content still hashes to the id


# --------------------------------------------------------------------------------------------- products

JAMMY, FOCAL = "Ubuntu22.04", "Ubuntu20.04"
MIXED_DEB = [
    deb("openssl", "3.0.2-0ubuntu1.15", cve_ids=["CVE-2026-1001"]),
    deb("openssl", "3.0.2-0ubuntu1.16"),  # a later jammy update: pinned for jammy
    deb("openssl", "1.1.1f-1ubuntu2.22", product=FOCAL, cve_ids=["CVE-2026-1001"]),
    deb("bash", "5.1-6ubuntu1.2"),
    deb("bash", "5.0-6ubuntu1.3", product=FOCAL),
]


def product_pins(selection: Selection) -> set[tuple[str, str | None, str]]:
    return {(f.patch.name, f.patch.product, f.patch.version) for f in selection.fixes}


def test_each_product_gets_its_own_fix_floor_and_pin() -> None:
    selection = select_fixes(MIXED_DEB, cves=["CVE-2026-1001"], packages=["bash"], baseline=UBUNTU)
    assert product_pins(selection) == {
        ("openssl", JAMMY, "3.0.2-0ubuntu1.16"),
        ("openssl", FOCAL, "1.1.1f-1ubuntu2.22"),
        ("bash", JAMMY, "5.1-6ubuntu1.2"),
        ("bash", FOCAL, "5.0-6ubuntu1.3"),
    }
    assert {(f.issue, f.name, f.product, f.version) for f in selection.floors} == {
        ("CVE-2026-1001", "openssl", JAMMY, "3.0.2-0ubuntu1.15"),
        ("CVE-2026-1001", "openssl", FOCAL, "1.1.1f-1ubuntu2.22"),
        ("package:bash", "bash", JAMMY, "5.1-6ubuntu1.2"),
        ("package:bash", "bash", FOCAL, "5.0-6ubuntu1.3"),
    }
    assert {(p.name, p.product, p.version) for p in selection.pinned()} == product_pins(selection)
    assert [f.to_json()["product"] for f in selection.fixes if f.patch.name == "openssl"] == [FOCAL, JAMMY]


def test_deb_exposure_is_judged_against_the_floor_of_the_instance_product() -> None:
    selection = select_fixes(MIXED_DEB, cves=["CVE-2026-1001"], baseline=UBUNTU)
    installed = {
        "i-jammy-old": [
            Package("openssl", "amd64", "3.0.2-0ubuntu1.10")
        ],  # above focal's floor, below jammy's
        "i-jammy-fixed": [Package("openssl", "amd64", "3.0.2-0ubuntu1.15")],
        "i-focal-fixed": [
            Package("openssl", "amd64", "1.1.1f-1ubuntu2.22")
        ],  # below jammy's floor: irrelevant
        "i-focal-old": [Package("openssl", "amd64", "1.1.1f-1ubuntu2.20")],
        "i-unknown": [Package("openssl", "amd64", "1.1.1f-1ubuntu2.22")],  # no product: every floor, highest
        "i-noble": [Package("openssl", "amd64", "3.0.2-0ubuntu1.15")],  # a product the catalog never names
    }
    products = {
        "i-jammy-old": JAMMY,
        "i-jammy-fixed": "ubuntu22.04",  # products compare case-insensitively
        "i-focal-fixed": FOCAL,
        "i-focal-old": FOCAL,
        "i-noble": "Ubuntu24.04",
    }
    report = exposure(installed, selection, products=products)
    assert [(e.instance_id, e.installed, e.fixed_in) for e in report.exposed] == [
        ("i-focal-old", "1.1.1f-1ubuntu2.20", "1.1.1f-1ubuntu2.22"),
        ("i-jammy-old", "3.0.2-0ubuntu1.10", "3.0.2-0ubuntu1.15"),
        ("i-unknown", "1.1.1f-1ubuntu2.22", "3.0.2-0ubuntu1.15"),
    ]
    assert report.notes == (
        "1 instance(s) report no product: judged against the highest fix floor of every product",
        "1 instance(s) run Ubuntu24.04, which the catalog does not name: judged against the highest fix floor "
        "of every product",
    )


def test_a_product_without_a_fix_of_its_own_is_not_judged_against_another_products_fix() -> None:
    catalog = [
        deb("openssl", "3.0.2-0ubuntu1.15", cve_ids=["CVE-2026-1001"]),
        deb("openssl", "1.1.1f-1ubuntu2.21", product=FOCAL),  # focal's openssl: no fix published yet
    ]
    selection = select_fixes(catalog, cves=["CVE-2026-1001"], baseline=UBUNTU)
    assert product_pins(selection) == {("openssl", JAMMY, "3.0.2-0ubuntu1.15")}
    report = exposure(
        {"i-focal": [Package("openssl", "amd64", "1.1.1f-1ubuntu2.21")]},
        selection,
        products={"i-focal": FOCAL},
    )
    assert report.exposed == ()
    assert report.notes == (
        "CVE-2026-1001: openssl amd64 on 1 Ubuntu20.04 instance(s) not judged: the catalog lists no fix of it "
        "for Ubuntu20.04",
    )
    assert selection.for_products([FOCAL]).fixes == ()


def test_product_less_entries_serve_every_product() -> None:
    catalog = [
        deb("tzdata", "2026a-0ubuntu1", product=None, cve_ids=["CVE-2026-8008"]),
        deb("tzdata", "2026b-0ubuntu0.22.04"),  # jammy's own later build: jammy pins it
        deb("openssl", "1.1.1f-1ubuntu2.22", product=FOCAL),  # focal is a product the catalog names
    ]
    selection = select_fixes(catalog, cves=["CVE-2026-8008"], baseline=UBUNTU)
    assert product_pins(selection) == {
        ("tzdata", None, "2026a-0ubuntu1"),
        ("tzdata", JAMMY, "2026b-0ubuntu0.22.04"),
    }
    assert {(f.product, f.version) for f in selection.floors} == {
        (None, "2026a-0ubuntu1"),
        (JAMMY, "2026a-0ubuntu1"),
    }
    report = exposure(
        {
            "i-focal": [Package("tzdata", "amd64", "2025z-0ubuntu1")],
            "i-jammy": [Package("tzdata", "amd64", "2025z-1")],
        },
        selection,
        products={"i-focal": FOCAL, "i-jammy": JAMMY},
    )
    assert [(e.instance_id, e.fixed_in) for e in report.exposed] == [
        ("i-focal", "2026a-0ubuntu1"),
        ("i-jammy", "2026a-0ubuntu1"),
    ]
    # a focal wave pins the product-less build, a jammy wave jammy's own
    assert product_pins(selection.for_products([FOCAL])) == {("tzdata", None, "2026a-0ubuntu1")}
    assert product_pins(selection.for_products([JAMMY])) == {("tzdata", JAMMY, "2026b-0ubuntu0.22.04")}


def test_a_wave_over_one_product_pins_only_its_fixes_and_two_products_are_refused() -> None:
    selection = select_fixes(MIXED_DEB, cves=["CVE-2026-1001"], baseline=UBUNTU)
    jammy = selection.for_products([JAMMY])
    assert product_pins(jammy) == {("openssl", JAMMY, "3.0.2-0ubuntu1.16")}
    assert {f.product for f in jammy.floors} == {JAMMY}
    jammy.require_one_version({"i-jammy": JAMMY})
    at = datetime(2026, 11, 10, 2, 0, tzinfo=UTC)
    assert [(p.name, p.version) for p in emergency_patch_set(jammy, UBUNTU, MIXED_DEB, at).patches] == [
        ("openssl", "3.0.2-0ubuntu1.16")
    ]
    both = selection.for_products([JAMMY, FOCAL])
    with pytest.raises(InputError) as caught:
        both.require_one_version({"i-jammy": JAMMY, "i-focal": FOCAL, "i-unknown": None})
    message = str(caught.value)
    assert message.startswith(
        "the targeted instances run products with different fixes: openssl amd64 needs 1.1.1f-1ubuntu2.22 for "
        "Ubuntu20.04 (i-focal, i-unknown) but 3.0.2-0ubuntu1.16 for Ubuntu22.04 (i-jammy, i-unknown)."
    )
    assert "run one emergency per product" in message
    # an instance of unknown product needs every product's fix: refused too
    with pytest.raises(InputError, match="different fixes"):
        selection.for_products([None]).require_one_version({"i-unknown": None})


def test_rpm_products_have_their_own_floors_pins_and_gaps() -> None:
    al2, al2023 = "AmazonLinux2", "AmazonLinux2023"
    catalog = [
        rpm("openssl", "1:1.0.2k-24.amzn2.0.10", product=al2, cve_ids=["CVE-2026-1001"]),
        rpm("openssl", "1:3.0.8-1.amzn2023.0.4", product=al2023, cve_ids=["CVE-2026-1001"]),
        rpm("openssl", "1:3.0.8-1.amzn2023.0.5", product=al2023),
    ]
    selection = select_fixes(catalog, cves=["CVE-2026-1001"], baseline=AL2023)
    assert product_pins(selection) == {
        ("openssl", al2, "1:1.0.2k-24.amzn2.0.10"),
        ("openssl", al2023, "1:3.0.8-1.amzn2023.0.5"),
    }
    installed = {
        "i-al2-old": [Package("openssl", "x86_64", "1:1.0.2k-24.amzn2.0.9")],
        "i-al2-fixed": [Package("openssl", "x86_64", "1:1.0.2k-24.amzn2.0.10")],
        "i-al2023-old": [Package("openssl", "x86_64", "1:3.0.8-1.amzn2023.0.3")],  # above AL2's floor
        "i-al2023-fixed": [Package("openssl", "x86_64", "1:3.0.8-1.amzn2023.0.4")],
    }
    products = {i: al2023 if i.startswith("i-al2023") else al2 for i in installed}
    report = exposure(installed, selection, products=products)
    assert [(e.instance_id, e.fixed_in) for e in report.exposed] == [
        ("i-al2-old", "1:1.0.2k-24.amzn2.0.10"),
        ("i-al2023-old", "1:3.0.8-1.amzn2023.0.4"),
    ]
    # a fix the baseline refuses for one product only blocks waves that target that product
    strict = make_baseline(RejectedPatches=["openssl-3.0.8-1.amzn2023*"])
    partial = select_fixes(catalog, cves=["CVE-2026-1001"], baseline=strict)
    assert product_pins(partial) == {("openssl", al2, "1:1.0.2k-24.amzn2.0.10")}
    assert partial.unfixable == {
        "CVE-2026-1001": "openssl x86_64 (AmazonLinux2023): every version from 1:3.0.8-1.amzn2023.0.4 on is "
        "refused (matches RejectedPatches entry 'openssl-3.0.8-1.amzn2023*' (ALLOW_AS_DEPENDENCY))"
    }
    assert {r.product for r in partial.refused} == {al2023}
    partial.for_products([al2]).require_complete()
    with pytest.raises(InputError, match=r"openssl x86_64 \(AmazonLinux2023\): every version"):
        partial.for_products([al2, al2023]).require_complete()
