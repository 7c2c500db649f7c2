"""Compliance benchmark: 10,000 instances x 1,000 installed packages against a 20,000-patch catalog.

Run: ``.venv/bin/python bench/compliance_bench.py [--instances N] [--packages N] [--catalog N]``

The fleet is generated (seeded) the way real fleets look: a handful of machine images, each instance an image
plus some drift (packages updated or installed by hand). Measured separately:

* evaluating the baseline against the catalog (once per wave);
* compliance of every instance with counts only (what dashboards and DescribeInstancePatchStates need);
* compliance with every per-patch row materialised (what ``--format json`` prints);
* loading and validating an inventory file of 1,000 instances (file parsing scales linearly).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from patchflow.core.baselines import Baseline
from patchflow.core.catalog import Patch
from patchflow.core.compliance import Instance, engine_for, load_inventory
from patchflow.core.evaluation import evaluate
from patchflow.core.reports import JudgedAgainst, build_report, release_dates


def build_catalog(rng: random.Random, size: int) -> tuple[list[Patch], list[str]]:
    names = [f"pkg{i:05d}" for i in range(size // 4)]
    patches: list[Patch] = []
    for name in names:
        base = f"{rng.randint(1, 9)}.{rng.randint(0, 30)}.{rng.randint(0, 99)}"
        for release in range(1, 5):
            day = rng.randint(1, 40)
            patches.append(
                Patch(
                    name=name,
                    arch="x86_64",
                    version=f"{base}-{release}.amzn2023.0.{rng.randint(0, 9)}",
                    family="rpm",
                    product="AmazonLinux2023",
                    classification=rng.choice(["Security", "Security", "Bugfix", "Enhancement"]),
                    severity=rng.choice(["Critical", "Important", "Medium", "Low"]),
                    release_date=datetime(2026, 9, 20, tzinfo=UTC).replace(
                        day=1 + day % 28, month=9 + day // 28
                    ),
                    security=True,
                    advisory_id=f"ALAS2023-2026-{rng.randint(1, 999)}",
                )
            )
    return patches, names


def build_fleet(
    rng: random.Random, catalog: list[Patch], names: list[str], instances: int, per: int
) -> list[Instance]:
    by_name: dict[str, list[str]] = {}
    for p in catalog:
        by_name.setdefault(p.name, []).append(p.version)
    images = []
    for _ in range(6):
        chosen = rng.sample(names, per)
        images.append([(n, "x86_64", rng.choice(by_name[n][:3])) for n in chosen])
    fleet = []
    for i in range(instances):
        installed = list(rng.choice(images))
        for _ in range(per // 50):  # 2 % drift per instance
            j = rng.randrange(per)
            n = installed[j][0]
            installed[j] = (n, "x86_64", rng.choice(by_name[n]))
        fleet.append(Instance(instance_id=f"i-{i:017x}", installed=installed, product="AmazonLinux2023"))
    return fleet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--packages", type=int, default=1_000)
    parser.add_argument("--catalog", type=int, default=20_000)
    args = parser.parse_args()
    rng = random.Random(2026)

    catalog, names = build_catalog(rng, args.catalog)
    fleet = build_fleet(rng, catalog, names, args.instances, args.packages)
    baseline = Baseline.model_validate(
        {
            "Name": "bench",
            "OperatingSystem": "AMAZON_LINUX_2023",
            "ApprovalRules": {
                "PatchRules": [
                    {
                        "PatchFilterGroup": {
                            "PatchFilters": [
                                {"Key": "CLASSIFICATION", "Values": ["Security", "Bugfix"]},
                                {"Key": "SEVERITY", "Values": ["Critical", "Important", "Medium"]},
                            ]
                        },
                        "ComplianceLevel": "HIGH",
                        "ApproveAfterDays": 7,
                    }
                ]
            },
            "RejectedPatches": ["pkg0001*"],
            "RejectedPatchesAction": "BLOCK",
        }
    )
    at = datetime(2026, 11, 10, tzinfo=UTC)

    t0 = time.perf_counter()
    result = evaluate(baseline, catalog, at)
    t_eval = time.perf_counter() - t0

    t0, cpu0 = time.perf_counter(), time.process_time()
    candidates = result.approved()
    engine = engine_for(
        family="rpm",
        candidates=candidates,
        rejected_patches=baseline.RejectedPatches,
        rejected_action=baseline.RejectedPatchesAction,
        package_manager=baseline.package_manager,
    )
    counts_only = [engine.evaluate(inst, with_patches=False) for inst in fleet]
    t_counts, cpu_counts = time.perf_counter() - t0, time.process_time() - cpu0

    t0 = time.perf_counter()
    with_rows = [engine.evaluate(inst) for inst in fleet]
    t_rows = time.perf_counter() - t0
    assert [r.counts for r in with_rows] == [r.counts for r in counts_only]
    compliance_peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # The fleet report (`patchflow compliance report`): rows, per-group aggregates, oldest missing ages, CSV.
    for n, inst in enumerate(fleet):
        inst.patch_group = ("dev", "test", "prod")[n % 3]
    reported = [engine.evaluate(inst) for inst in fleet]
    t0 = time.perf_counter()
    report = build_report(
        reported,
        judged_against=JudgedAgainst(kind="evaluation", patch_set_id=result.patch_set.id, evaluated_at=at),
        dates=release_dates(catalog),
        now=at,
    )
    csv_rows = report.csv_rows()
    t_report = time.perf_counter() - t0
    assert len(csv_rows) == args.instances

    sample = fleet[:1000]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inventory.json"
        with path.open("w") as out:  # one instance at a time: the file's text never sits in memory whole
            out.write("[")
            for index, inst in enumerate(sample):
                entry = {
                    "instance_id": inst.instance_id,
                    "platform": {"family": "rpm", "product": "AmazonLinux2023"},
                    "installed": [{"name": n, "arch": a, "version": v} for n, a, v in inst.installed],
                }
                out.write(("," if index else "") + json.dumps(entry))
            out.write("]")
        t0 = time.perf_counter()
        load_inventory(path, family="rpm")
        t_load = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    non_compliant = sum(r.status == "NON_COMPLIANT" for r in counts_only)
    total = args.instances * args.packages
    print(
        f"catalog {len(catalog)} patches, {args.instances} instances x {args.packages} packages = {total:,} rows"
    )
    print(f"{'step':55} {'seconds':>8}")
    print(f"{'evaluate baseline (once)':55} {t_eval:8.2f}")
    print(
        f"{'compliance, counts per instance':55} {t_counts:8.2f}   ({total / t_counts / 1e6:.1f} M rows/s; CPU {cpu_counts:.2f} s)"
    )
    print(f"{'compliance, every per-patch row materialised':55} {t_rows:8.2f}")
    print(f"{'fleet report from judged instances (groups, ages, CSV rows)':55} {t_report:8.2f}")
    print(f"{'load + validate a 1,000-instance inventory file':55} {t_load:8.2f}")
    print(
        f"non-compliant instances: {non_compliant}/{args.instances}; peak RSS {compliance_peak_mb:,.0f} MiB after "
        f"compliance (fleet included), {peak_mb:,.0f} MiB after the report and the inventory file"
    )


if __name__ == "__main__":
    main()
