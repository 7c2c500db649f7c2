"""Fleet-scale compliance gives exactly the answers of judging every row on its own.

The engine judges each distinct (name, arch, version) of a product once and counts instances against layouts
it has seen (instances of one machine image share their package objects). These tests build random fleets the
way real ones look — a few images, drift, products, last-run failures and reboots, BLOCK-ed updates — and compare
every instance's rows, counts, status and level with a reference that judges each row afresh: the engine's
classification and last-run rules, with no caching or layouts.
"""

from __future__ import annotations

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from patchflow.core.compliance import (
    MISSING,
    ComplianceEngine,
    Instance,
    InstanceCompliance,
    PatchState,
    _bucket,
    _counts,
    _last_run,
    _non_compliant,
    engine_for,
)
from patchflow.core.evaluation import PinnedPatch

NAMES = [f"pkg{i:03d}" for i in range(120)]
VERSIONS = ["1.0-1", "1.0-2", "1.1-1", "2.0-1", "2.0-1.el9"]
ARCHES = ["x86_64", "noarch"]
PRODUCTS = [None, "AmazonLinux2023", "RedhatEnterpriseLinux9", "Unknown9"]
LEVELS = ["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNSPECIFIED"]


def reference(engine: ComplianceEngine, instance: Instance) -> InstanceCompliance:
    """Every row judged on its own (the engine before it cached anything)."""
    targets, _ = engine._for_product(instance.product)
    rows: list[PatchState] = []
    blocked = set()
    for pkg in instance.installed:
        state, target = engine._classify(pkg, targets)
        reason = None
        if state == MISSING and target is not None and target.blocked_by is not None:
            blocked.add(pkg)
            reason = (
                f"the update to {target.version} depends on {target.blocked_by}, which the baseline rejects "
                "(RejectedPatchesAction BLOCK): it cannot be installed"
            )
        rows.append(
            PatchState(
                pkg[0],
                pkg[1],
                pkg[2],
                target.version if target else None,
                state,
                target.severity if target else None,
                target.compliance_level if target else None,
                target.classification if target else None,
                reason,
            )
        )
    overrides, extra = _last_run(instance, [r.state for r in rows], targets, blocked)
    pairs: Counter[tuple[str, str]] = Counter()
    for index, row in enumerate(rows):
        if index in overrides:
            rows[index] = row = PatchState(**{**row.__dict__, "state": overrides[index]})
        pairs[(row.state, _bucket(targets.get((row.name, row.arch))))] += 1
    for row in extra:
        pairs[(row.state, _bucket(targets.get((row.name, row.arch))))] += 1
    counts, worst = _counts(pairs)
    return InstanceCompliance(
        instance_id=instance.instance_id,
        patch_group=instance.patch_group,
        status="NON_COMPLIANT" if _non_compliant(counts) else "COMPLIANT",
        counts=counts,
        compliance_level=worst,
        patches=rows + extra,
    )


def random_candidates(rng: random.Random) -> list[PinnedPatch]:
    out = []
    for name in rng.sample(NAMES, 90):
        for arch in rng.sample(ARCHES, rng.randint(1, 2)):
            out.append(
                PinnedPatch(
                    name=name,
                    arch=arch,
                    version=rng.choice(VERSIONS),
                    compliance_level=rng.choice(LEVELS),
                    severity=rng.choice([None, "Critical", "Low"]),
                    classification=rng.choice([None, "Security", "Bugfix"]),
                    security=rng.random() < 0.5,
                    product=rng.choice(PRODUCTS[:3]),
                    blocked_by="pkg000" if rng.random() < 0.1 else None,
                )
            )
    return out


def random_fleet(rng: random.Random, size: int) -> list[Instance]:
    """A few images of 64-120 packages each; every instance an image with drift (changed versions, sometimes
    an added or removed package), some with a last install run that failed or left reboots pending."""
    images = []
    for _ in range(rng.randint(1, 4)):
        names = rng.sample(NAMES, rng.randint(64, 120))
        images.append([(n, rng.choice(ARCHES), rng.choice(VERSIONS)) for n in names])
    fleet = []
    for i in range(size):
        installed = list(rng.choice(images))
        for _ in range(rng.choice([0, 0, 1, 3, 10])):
            j = rng.randrange(len(installed))
            name, arch, _ = installed[j]
            installed[j] = (name, arch, rng.choice(VERSIONS))  # a new object, equal or not to the old one
        if rng.random() < 0.1:
            installed.pop(rng.randrange(len(installed)))
        if rng.random() < 0.1:
            installed.insert(rng.randrange(len(installed)), (rng.choice(NAMES), "x86_64", "1.0-1"))
        fleet.append(
            Instance(
                instance_id=f"i-{i}",
                installed=installed,
                product=rng.choice(PRODUCTS),
                patch_group=rng.choice([None, "web"]),
                failed=[(rng.choice(NAMES), rng.choice([None, "x86_64"]))] if rng.random() < 0.2 else [],
                pending_reboot=[(installed[0][0], None)] if rng.random() < 0.2 else [],
                operation=rng.choice([None, "Scan", "Install"]),
            )
        )
    return fleet


def as_comparable(result: InstanceCompliance) -> tuple[object, ...]:
    return (
        result.instance_id,
        result.patch_group,
        result.status,
        result.counts,
        result.compliance_level,
        [p.to_json() | {"classification": p.classification} for p in result.patches],
    )


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 2**32), block=st.booleans(), rejected=st.booleans())
def test_fleet_compliance_equals_judging_every_row_afresh(seed: int, block: bool, rejected: bool) -> None:
    rng = random.Random(seed)
    candidates = random_candidates(rng)

    def new_engine() -> ComplianceEngine:
        return engine_for(
            family="rpm",
            candidates=candidates,
            rejected_patches=["pkg01*"] if rejected else [],
            rejected_action="BLOCK" if block else "ALLOW_AS_DEPENDENCY",
            package_manager="yum",
        )

    fast, slow = new_engine(), new_engine()
    for instance in random_fleet(rng, 60):
        expected = reference(slow, instance)
        assert as_comparable(fast.evaluate(instance)) == as_comparable(expected)
        counts_only = fast.evaluate(instance, with_patches=False)
        assert (counts_only.counts, counts_only.status, counts_only.compliance_level) == (
            expected.counts,
            expected.status,
            expected.compliance_level,
        )


def every_name_at_2_0() -> ComplianceEngine:
    """An engine approving version 2.0-1 of every name in :data:`NAMES`, nothing rejected."""
    return engine_for(
        family="rpm",
        candidates=[PinnedPatch(name=n, arch="x86_64", version="2.0-1") for n in NAMES],
        rejected_patches=[],
        rejected_action="ALLOW_AS_DEPENDENCY",
        package_manager="yum",
    )


def test_a_caller_changing_its_list_afterwards_does_not_change_later_answers() -> None:
    """The engine keeps a copy of a layout it counted, not the caller's list."""
    eng = every_name_at_2_0()
    installed = [(n, "x86_64", "1.0-1") for n in NAMES]
    first = eng.evaluate(Instance("i-1", installed), with_patches=False)
    assert first.counts["MissingCount"] == len(NAMES)
    for j in (0, 1):  # places the engine does not probe: the next list is still found like the first
        installed[j] = (installed[j][0], "x86_64", "2.0-1")
    again = eng.evaluate(Instance("i-2", list(installed)), with_patches=False)
    assert again.counts["MissingCount"] == len(NAMES) - 2 and again.counts["InstalledCount"] == 2


def test_instances_with_equal_counts_get_counts_of_their_own() -> None:
    """Instances of one image share their layout's counts inside the engine; every answer still owns its counts
    dict (a caller adding to one instance's counts must not change another's)."""
    eng = every_name_at_2_0()
    image = [(n, "x86_64", "1.0-1") for n in NAMES]
    first = eng.evaluate(Instance("i-1", list(image)), with_patches=False)
    first.counts["MissingCount"] += 1000
    second = eng.evaluate(Instance("i-2", list(image)), with_patches=False)
    assert second.counts["MissingCount"] == len(NAMES)
    assert second.counts is not first.counts
