"""Patch Manager scans → patchflow's catalog and inventory (patchflow.executors.ssm.inventory, SsmExecutor.collect).

The end-to-end tests scan instances of the faithful endpoint, write the two files, load them back with the
loaders every patchflow command uses and let patchflow's own baselines decide.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from patchflow.core.baselines import Baseline, load_baseline
from patchflow.core.catalog import Patch, load_catalog
from patchflow.core.compliance import ComplianceEngine, InstanceCompliance, engine_for, load_inventory
from patchflow.core.evaluation import Evaluation, evaluate
from patchflow.executors.base import Package
from patchflow.executors.ssm import InstancePatch, parse_title
from patchflow.executors.ssm.inventory import (
    Collection,
    InstanceScan,
    build_collection,
    catalog_entries,
    inventory_entry,
    merge_catalog,
)
from patchflow.testing.ssm_endpoint import AvailablePatch, SsmEndpoint
from tests.conftest import BASELINES_DIR
from tests.executors.conftest import BUCKET
from tests.executors.conftest import ssm_executor as executor

OPENSSL_OLD, OPENSSL_NEW = "3.0.2-0ubuntu1.10", "3.0.2-0ubuntu1.16"
CURL_OLD, CURL_NEW = "7.81.0-1ubuntu1.14", "7.81.0-1ubuntu1.18"
TZ_OLD, TZ_NEW = "2024a-0ubuntu0.22.04", "2024b-0ubuntu0.22.04"


def row(kb_id: str, title: str, state: str, **fields: Any) -> InstancePatch:
    """A compliance row as SsmExecutor parses it out of DescribeInstancePatches."""
    package = parse_title(title, kb_id)
    return InstancePatch(
        kb_id=kb_id,
        title=title,
        name=package.name,
        arch=package.arch,
        version=package.version,
        state=state,
        **fields,
    )


def scan(instance_id: str, family: str, rows: list[InstancePatch], **fields: Any) -> InstanceScan:
    fields.setdefault("product", "Ubuntu22.04" if family == "deb" else "AmazonLinux2023")
    fields.setdefault("patch_group", "web")
    fields.setdefault("installed", ())
    return InstanceScan(instance_id=instance_id, family=family, patches=tuple(rows), **fields)


# --------------------------------------------------------------------------------------- conversion


def test_missing_and_failed_rows_become_catalog_entries_in_the_patch_format() -> None:
    notes: list[str] = []
    entries = catalog_entries(
        scan(
            "i-1",
            "deb",
            [
                row(
                    "openssl.amd64",
                    f"openssl.amd64:0:{OPENSSL_NEW}",
                    "MISSING",
                    classification="Security",
                    severity="Important",
                    cve_ids=("CVE-2024-0727", "CVE-2024-0727"),
                ),
                row(
                    "curl.amd64", f"curl.amd64:{CURL_NEW}", "FAILED", severity="Optional", cve_ids=("CVE-1",)
                ),
                row("tzdata.all", f"tzdata.all:{TZ_NEW}", "MISSING", classification="", severity="Optional"),
                row("coreutils.amd64", "coreutils.amd64:0:8.32-4.1ubuntu1", "INSTALLED"),
                row("bash.amd64", "bash.amd64:5.1-6ubuntu1", "INSTALLED_PENDING_REBOOT"),
                row("broken", "broken:1.0", "MISSING"),  # no arch in the KBId
                row("bad.amd64", "bad.amd64:0:1.0 beta", "MISSING"),  # not a dpkg version
            ],
        ),
        notes,
    )
    by_name = {e["name"]: e for e in entries}
    assert set(by_name) == {"openssl", "curl", "tzdata"}  # INSTALLED* rows name versions already there
    assert by_name["openssl"] == {
        "name": "openssl",
        "arch": "amd64",
        "version": OPENSSL_NEW,  # a zero epoch is dropped
        "family": "deb",
        "product": "Ubuntu22.04",
        "classification": "Security",
        "severity": "Important",
        "priority": "Important",
        "section": "Security",
        "cve_ids": ["CVE-2024-0727"],
        "release_date": None,
        "security": True,
    }
    assert (by_name["curl"]["version"], by_name["curl"]["security"]) == (CURL_NEW, True)  # apt title, CVEs
    assert (by_name["tzdata"]["security"], by_name["tzdata"]["section"]) == (False, None)
    assert all(Patch.model_validate(e) for e in entries)
    assert len(notes) == 2 and "KBId is not name.arch" in notes[0] and "'bad.amd64'" in notes[1]


def test_rpm_entries_keep_epochs_and_any_update_notice_is_a_security_source() -> None:
    entries = catalog_entries(
        scan(
            "mi-1",
            "rpm",
            [
                row(
                    "bind-libs.x86_64",
                    "bind-libs.x86_64:32:9.16.23-15.el9",
                    "MISSING",
                    classification="Security",
                    severity="Low",
                ),
                row("glibc.x86_64", "glibc.x86_64:0:2.34-101", "MISSING", classification="Bugfix"),
                row("vim.x86_64", "vim.x86_64:2:9.0-1", "MISSING"),  # no notice: not a security source
            ],
        )
    )
    versions = {e["name"]: (e["version"], e["security"], e["priority"], e["section"]) for e in entries}
    assert versions == {
        "bind-libs": ("32:9.16.23-15.el9", True, None, None),
        "glibc": ("2.34-101", True, None, None),
        "vim": ("2:9.0-1", False, None, None),
    }


def test_merge_keeps_one_entry_per_product_and_version() -> None:
    missing = {"classification": "Security", "severity": "Important"}
    scans = [
        scan(
            "i-2",
            "deb",
            [row("openssl.amd64", f"openssl.amd64:{OPENSSL_NEW}", "MISSING", cve_ids=("CVE-2",))],
        ),
        scan(
            "i-1",
            "deb",
            [row("openssl.amd64", f"openssl.amd64:{OPENSSL_NEW}", "MISSING", cve_ids=("CVE-1",), **missing)],
        ),
        scan(
            "i-3",
            "deb",
            [row("openssl.amd64", f"openssl.amd64:{OPENSSL_NEW}", "FAILED", **missing)],
            product="Ubuntu20.04",
        ),
        scan("i-4", "deb", [row("openssl.amd64", "openssl.amd64:3.0.2-0ubuntu1.12", "MISSING", **missing)]),
    ]
    catalog = build_collection(scans).catalog
    assert [(e["product"], e["version"]) for e in catalog] == [
        ("Ubuntu20.04", OPENSSL_NEW),
        ("Ubuntu22.04", "3.0.2-0ubuntu1.12"),  # sorted by the family's version order
        ("Ubuntu22.04", OPENSSL_NEW),
    ]
    merged = catalog[2]
    assert merged["cve_ids"] == ["CVE-1", "CVE-2"] and merged["classification"] == "Security"
    assert merge_catalog(list(reversed(catalog))) == catalog  # stable whatever the input order


def test_inventory_entry_lists_installed_failed_and_pending_reboot() -> None:
    entry = inventory_entry(
        scan(
            "i-1",
            "deb",
            [
                row("openssl.amd64", f"openssl.amd64:{OPENSSL_NEW}", "FAILED"),
                row("curl.amd64", f"curl.amd64:{CURL_NEW}", "INSTALLED_PENDING_REBOOT"),
                row("tzdata.all", f"tzdata.all:{TZ_OLD}", "INSTALLED"),
            ],
            installed=(Package("tzdata", "all", TZ_OLD), Package("curl", "amd64", CURL_NEW)),
        )
    )
    assert entry == {
        "instance_id": "i-1",
        "platform": {"family": "deb", "product": "Ubuntu22.04"},
        "patch_group": "web",
        "installed": [
            {"name": "curl", "arch": "amd64", "version": CURL_NEW},
            {"name": "tzdata", "arch": "all", "version": TZ_OLD},
        ],
        "failed": [{"name": "openssl", "arch": "amd64"}],
        "pending_reboot": [{"name": "curl", "arch": "amd64"}],
    }


def test_only_keeps_one_family(tmp_path: Path) -> None:
    collection = build_collection(
        [
            scan("i-1", "deb", [row("openssl.amd64", f"openssl.amd64:{OPENSSL_NEW}", "MISSING")]),
            scan("mi-1", "rpm", [row("curl.x86_64", "curl.x86_64:0:8.5.0-1.amzn2023.0.4", "MISSING")]),
        ],
        {"i-9": "offline"},
    )
    deb = collection.only("deb")
    assert [e["name"] for e in deb.catalog] == ["openssl"] and [i["instance_id"] for i in deb.inventory] == [
        "i-1"
    ]
    assert deb.skipped == {"i-9": "offline"}
    deb.write(tmp_path / "c.json", tmp_path / "i.json")
    assert [p.name for p in load_catalog(tmp_path / "c.json")] == ["openssl"]
    assert [i.instance_id for i in load_inventory(tmp_path / "i.json", family="deb")] == ["i-1"]


# ------------------------------------------------------------------------- against the endpoint


def web(ep: SsmEndpoint, instance_id: str, **fields: Any) -> str:
    fields.setdefault(
        "packages",
        [
            Package("openssl", "amd64", OPENSSL_OLD),
            Package("curl", "amd64", CURL_OLD),
            Package("tzdata", "all", TZ_OLD),
            Package("coreutils", "amd64", "8.32-4.1ubuntu1"),
        ],
    )
    fields.setdefault(
        "available",
        [
            AvailablePatch("openssl", "amd64", OPENSSL_NEW, "Security", "Important", ("CVE-2024-0727",)),
            AvailablePatch("curl", "amd64", CURL_NEW, "Security", "Optional", ("CVE-2024-2398",)),
            AvailablePatch("tzdata", "all", TZ_NEW, "", "Optional"),  # an -updates fix: not security
        ],
    )
    return ep.register_instance(instance_id, tags={"Patch Group": "web"}, **fields)


def compliance_engine(family: str, baseline: Baseline, evaluation: Evaluation) -> ComplianceEngine:
    """The compliance engine for ``family`` with what ``baseline`` approved in ``evaluation``."""
    return engine_for(
        family=family,
        candidates=evaluation.approved(),
        rejected_patches=baseline.RejectedPatches,
        rejected_action=baseline.RejectedPatchesAction,
        package_manager=baseline.package_manager,
    )


def states(result: InstanceCompliance) -> dict[str, str]:
    return {p.name: p.state for p in result.patches}


async def test_collect_feeds_patchflow_baselines_and_compliance_deb(
    endpoint: SsmEndpoint, tmp_path: Path
) -> None:
    plain, pending, failed, offline = (web(endpoint, f"i-0web000000000000{n}") for n in (1, 2, 3, 4))
    endpoint.set_online(offline, False)
    windows = endpoint.register_instance("i-0win0000000000001", platform="Microsoft Windows Server 2022")
    # History the scan must reflect: a NoReboot install (pending reboot) and a failed install (FAILED rows).
    openssl_fix = [Package("openssl", "amd64", OPENSSL_NEW)]
    await executor(endpoint, reboot_option="NoReboot").install(
        pending, openssl_fix, operation_id="w/p/install/0"
    )
    endpoint.script(failed, "fail", times=1)
    both = [*openssl_fix, Package("curl", "amd64", CURL_NEW)]
    assert (await executor(endpoint).install(failed, both, operation_id="w/f/install/0")).status == "failed"

    collection = await executor(endpoint).collect(
        [plain, pending, failed, offline, windows, "i-0nope000000000001"]
    )

    assert set(collection.skipped) == {offline, windows, "i-0nope000000000001"}
    assert "not online" in collection.skipped[offline] and "not scanned" in collection.skipped[offline]
    assert "Linux deb/rpm only" in collection.skipped[windows]
    assert "not a managed instance" in collection.skipped["i-0nope000000000001"]
    assert collection.notes == []
    deb = collection.only("deb")
    deb.write(tmp_path / "catalog.json", tmp_path / "inventory.json")

    catalog = load_catalog(tmp_path / "catalog.json")
    inventory = {i.instance_id: i for i in load_inventory(tmp_path / "inventory.json", family="deb")}
    assert sorted((p.name, p.version) for p in catalog) == [  # one entry per version, not per instance
        ("curl", CURL_NEW),
        ("openssl", OPENSSL_NEW),
        ("tzdata", TZ_NEW),
    ]
    assert set(inventory) == {plain, pending, failed}
    assert ("openssl", "amd64", OPENSSL_NEW) in inventory[pending].installed  # from the package listing
    assert inventory[pending].pending_reboot == [("openssl", "amd64")]
    assert sorted(inventory[failed].failed) == [("curl", "amd64"), ("openssl", "amd64")]
    assert inventory[plain].patch_group == "web" and inventory[plain].product == "Ubuntu22.04"

    baseline = load_baseline(BASELINES_DIR / "ubuntu-default.yaml")
    evaluation = evaluate(baseline, catalog, datetime.now(UTC), catalog_source="catalog.json")
    assert {(p.name, p.version) for p in evaluation.patch_set.patches} == {
        ("openssl", OPENSSL_NEW),
        ("curl", CURL_NEW),
    }  # tzdata is not a security update: patchflow's baseline, not the node's, said no
    engine = compliance_engine("deb", baseline, evaluation)
    results = {i: engine.evaluate(inst) for i, inst in inventory.items()}
    assert states(results[plain]) == {
        "openssl": "MISSING",
        "curl": "MISSING",
        "tzdata": "INSTALLED_OTHER",
        "coreutils": "INSTALLED_OTHER",
    }
    assert states(results[pending])["openssl"] == "INSTALLED_PENDING_REBOOT"
    assert states(results[pending])["curl"] == "MISSING"
    assert (states(results[failed])["openssl"], states(results[failed])["curl"]) == ("FAILED", "FAILED")
    assert all(r.status == "NON_COMPLIANT" for r in results.values())


async def test_collect_feeds_patchflow_baselines_rpm(endpoint: SsmEndpoint, tmp_path: Path) -> None:
    db = endpoint.register_instance(
        "mi-0a1b2c3d4e5f60718",
        tags={"PatchGroup": "db"},
        platform="Amazon Linux",
        platform_version="2023",
        packages=[
            Package("curl", "x86_64", "8.5.0-1.amzn2023.0.2"),
            Package("bind-libs", "x86_64", "32:9.16.23-14.el9"),
            Package("glibc", "x86_64", "2.34-100.amzn2023"),
        ],
        available=[
            AvailablePatch(
                "curl", "x86_64", "8.5.0-1.amzn2023.0.4", "Security", "Important", ("CVE-2024-2398",)
            ),
            AvailablePatch("bind-libs", "x86_64", "32:9.16.23-15.el9", "Security", "Low"),
            AvailablePatch("glibc", "x86_64", "2.34-101.amzn2023", "Bugfix", ""),
        ],
    )
    collection: Collection = await executor(endpoint).collect()  # None: every discovered instance
    assert collection.skipped == {} and [i["instance_id"] for i in collection.inventory] == [db]
    collection.only("rpm").write(tmp_path / "catalog.json", tmp_path / "inventory.json")
    catalog = load_catalog(tmp_path / "catalog.json")
    (instance,) = load_inventory(tmp_path / "inventory.json", family="rpm")
    assert {p.name: p.version for p in catalog}["bind-libs"] == "32:9.16.23-15.el9"
    assert (instance.patch_group, instance.product) == ("db", "AmazonLinux2023")

    # DescribeInstancePatches reports no release dates, so a collected catalog is undated. User Guide, "Using
    # alternative patch source repositories": "If you filter on ApprovalAfterDays, but the package release date
    # isn't in Unix Epoch format (or has no release date specified), the package won't be included by the
    # filter" — so the predefined baseline's 7-day rules approve none of it ...
    default = load_baseline(BASELINES_DIR / "amazon-linux-2023-default.yaml")
    evaluation = evaluate(default, catalog, datetime.now(UTC))
    assert {d.patch.name: d.decision for d in evaluation.decisions} == dict.fromkeys(
        ("curl", "glibc", "bind-libs"), "not_approved"
    )
    assert all("no release date" in d.reason for d in evaluation.decisions if d.patch.name != "bind-libs")
    # ... unless the rules include non-security updates: then Security/Important and Bugfix are approved and
    # Security/Low still is not.
    rules = [r.model_copy(update={"EnableNonSecurity": True}) for r in default.ApprovalRules.PatchRules]
    baseline = default.model_copy(
        update={"ApprovalRules": default.ApprovalRules.model_copy(update={"PatchRules": rules})}
    )
    evaluation = evaluate(baseline, catalog, datetime.now(UTC))
    decided = {d.patch.name: d.decision for d in evaluation.decisions}
    assert decided == {"curl": "approved", "glibc": "approved", "bind-libs": "not_approved"}
    engine = compliance_engine("rpm", baseline, evaluation)
    assert states(engine.evaluate(instance)) == {
        "curl": "MISSING",
        "glibc": "MISSING",
        "bind-libs": "INSTALLED_OTHER",
    }


async def test_a_node_whose_scan_fails_is_reported_not_dropped(endpoint: SsmEndpoint) -> None:
    good, bad = web(endpoint, "i-0web0000000000001"), web(endpoint, "i-0web0000000000002")
    endpoint.script(bad, "access_denied", applies_to="scan")
    collection = await executor(endpoint).collect([good, bad, good])  # duplicates are scanned once
    assert [i["instance_id"] for i in collection.inventory] == [good]
    assert "not scanned" in collection.skipped[bad] and "Access Denied" in collection.skipped[bad]
    assert endpoint.command_count(good, document="AWS-RunPatchBaseline") == 1


def test_ssm_collect_cli_feeds_evaluate_and_compliance(endpoint: SsmEndpoint, tmp_path: Path) -> None:
    """`patchflow ssm collect` over real HTTP, then the files straight into `baseline compliance`."""
    import json

    from tests.test_cli import run as run_cli

    web(endpoint, "i-0web0000000000001")
    web(endpoint, "i-0web0000000000002")
    env: dict[str, str | None] = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "PATCHFLOW_SSM_ENDPOINT_URL": endpoint.url,
        "PATCHFLOW_SSM_REGION": endpoint.region,
        "PATCHFLOW_SSM_BUCKET": BUCKET,
        "PATCHFLOW_SSM_POLL_INITIAL_SECONDS": "0.05",
        "PATCHFLOW_SSM_POLL_MAX_SECONDS": "0.2",
        "PATCHFLOW_SSM_MAX_REQUESTS_PER_SECOND": "200",
    }

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(*args, data_dir=tmp_path / "data", env_overrides=env, timeout=120)

    catalog, inventory = tmp_path / "catalog.json", tmp_path / "inventory.json"
    collected = run("ssm", "collect", "--catalog", str(catalog), "--inventory", str(inventory))
    assert collected.returncode == 0, collected.stderr
    assert "2 instance(s)" in collected.stdout
    report = run(
        "baseline", "compliance", str(BASELINES_DIR / "ubuntu-default.yaml"), "--catalog", str(catalog),
        "--inventory", str(inventory), "--format", "json",
    )  # fmt: skip
    assert report.returncode == 0, report.stderr
    instances = json.loads(report.stdout)["instances"]
    assert [i["instance_id"] for i in instances] == ["i-0web0000000000001", "i-0web0000000000002"]
    for inst in instances:
        states = {p["name"]: p["state"] for p in inst["patches"]}
        assert states["openssl"] == "MISSING" and inst["status"] == "NON_COMPLIANT"
    env["PATCHFLOW_SSM_BUCKET"] = ""
    nobucket = run("ssm", "collect", "--catalog", str(catalog), "--inventory", str(inventory))
    assert nobucket.returncode == 2 and "needs an S3 bucket" in nobucket.stderr
