"""Patch compliance of instances, as ``DescribeInstancePatchStates`` / ``DescribeInstancePatches`` report it.

For every installed package of an instance, against the latest approved version of that package
(name + arch) — from a fresh evaluation or from a pinned patch set:

============================ ===================================================================
state                        when
============================ ===================================================================
``INSTALLED_REJECTED``       the installed version matches RejectedPatches and the action is BLOCK
``INSTALLED_OTHER``          no approved version exists for the package, or it is rejected under
                             ALLOW_AS_DEPENDENCY (``InstalledRejectedCount`` is then always 0)
``MISSING``                  an approved version newer than the installed one exists, or (BLOCK) the newest
                             approved update is kept out by a rejected dependency (the row's reason names it)
``FAILED``                   as MISSING, and the last install run reported the package failed; or kept out by
                             a rejected dependency and the instance's last operation was an ``Install``
``INSTALLED``                the installed version is at least the approved one
``INSTALLED_PENDING_REBOOT`` installed, and the last install run left it waiting for a reboot
============================ ===================================================================

An instance is ``NON_COMPLIANT`` when anything is MISSING, FAILED, INSTALLED_REJECTED or
INSTALLED_PENDING_REBOOT. Approved patches for packages that are not installed do not apply (Linux nodes
never report NOT_APPLICABLE rows).

Compliance of large fleets is fast because fleets repeat themselves: a state is computed once per distinct
(name, arch, version) and product, then looked up.
"""

from __future__ import annotations

import dataclasses
import itertools
import operator
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import compress
from pathlib import Path
from typing import Any

from patchflow.core import versions
from patchflow.core.baselines import COMPLIANCE_ORDER
from patchflow.core.documents import Document, load_document
from patchflow.core.evaluation import PinnedPatch
from patchflow.core.matching import PatchList
from patchflow.errors import InputError, InvalidVersionError, InventoryError, Problem

INSTALLED = "INSTALLED"
INSTALLED_OTHER = "INSTALLED_OTHER"
INSTALLED_PENDING_REBOOT = "INSTALLED_PENDING_REBOOT"
INSTALLED_REJECTED = "INSTALLED_REJECTED"
MISSING = "MISSING"
FAILED = "FAILED"
NON_COMPLIANT_STATES = frozenset({MISSING, FAILED, INSTALLED_REJECTED, INSTALLED_PENDING_REBOOT})

COUNT_FIELDS = {
    INSTALLED: "InstalledCount",
    INSTALLED_OTHER: "InstalledOtherCount",
    INSTALLED_PENDING_REBOOT: "InstalledPendingRebootCount",
    INSTALLED_REJECTED: "InstalledRejectedCount",
    MISSING: "MissingCount",
    FAILED: "FailedCount",
}

PackageKey = tuple[str, str, str]
"""(name, arch, version)"""


@dataclass
class Instance:
    """One instance of an inventory."""

    instance_id: str
    installed: list[PackageKey]
    product: str | None = None
    family: str | None = None
    patch_group: str | None = None
    failed: list[tuple[str, str | None]] = field(default_factory=list)
    """(name, arch or None for every arch) the last install run failed to install."""
    pending_reboot: list[tuple[str, str | None]] = field(default_factory=list)
    """(name, arch or None) installed by the last run and waiting for a reboot."""
    operation: str | None = None
    """The last patching operation, ``Scan`` or ``Install`` (``DescribeInstancePatchStates``' ``Operation``);
    None when unknown, judged as a Scan."""


@dataclass(frozen=True)
class PatchState:
    name: str
    arch: str
    installed_version: str | None
    target_version: str | None
    state: str
    severity: str | None
    compliance_level: str | None
    classification: str | None = None
    reason: str | None = None
    """Why the row has its state, where the state alone does not say (an update kept out by BLOCK)."""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "arch": self.arch,
            "installed_version": self.installed_version,
            "target_version": self.target_version,
            "state": self.state,
            "severity": self.severity,
            "compliance_level": self.compliance_level,
        }
        if self.reason is not None:
            out["reason"] = self.reason
        return out


@dataclass
class InstanceCompliance:
    instance_id: str
    patch_group: str | None
    status: str
    counts: dict[str, int]
    compliance_level: str | None
    """The most severe ComplianceLevel among the instance's non-compliant patches (None if compliant)."""
    patches: list[PatchState]

    def to_json(self, *, include_patches: bool = True) -> dict[str, Any]:
        out: dict[str, Any] = {
            "instance_id": self.instance_id,
            "patch_group": self.patch_group,
            "status": self.status,
            "compliance_level": self.compliance_level,
            "counts": self.counts,
        }
        if include_patches:
            out["patches"] = [p.to_json() for p in self.patches]
        return out


def _normalise_product(product: str | None) -> str | None:
    return product.lower() if product else None


def build_targets(
    candidates: Iterable[PinnedPatch], family: str
) -> dict[str | None, dict[tuple[str, str], PinnedPatch]]:
    """Latest approved version per (name, arch): overall (key None) and per product (lower-cased).

    A patch without a product applies to every product.
    """
    overall: dict[tuple[str, str], PinnedPatch] = {}
    per_product: dict[str, dict[tuple[str, str], PinnedPatch]] = {}
    generic: list[PinnedPatch] = []

    def offer(table: dict[tuple[str, str], PinnedPatch], patch: PinnedPatch) -> None:
        key = (patch.name, patch.arch)
        current = table.get(key)
        if current is None:
            table[key] = patch
            return
        order = versions.compare(family, patch.version, current.version)
        if order > 0 or (order == 0 and repr(patch) < repr(current)):  # ties: independent of input order
            table[key] = patch

    for patch in candidates:
        offer(overall, patch)
        product = _normalise_product(patch.product)
        if product is None:
            generic.append(patch)
        else:
            offer(per_product.setdefault(product, {}), patch)
    for table in per_product.values():
        for patch in generic:
            offer(table, patch)
    result: dict[str | None, dict[tuple[str, str], PinnedPatch]] = {None: overall}
    result.update(per_product)
    return result


class ComplianceEngine:
    """Computes instance compliance against fixed targets; reuse one engine for a whole fleet."""

    def __init__(
        self,
        *,
        family: str,
        targets: dict[str | None, dict[tuple[str, str], PinnedPatch]],
        rejected: PatchList,
        rejected_action: str,
    ):
        self.family = family
        self.targets = targets
        self.rejected = rejected
        self.block = rejected_action == "BLOCK"
        self._known: dict[str | None, _KnownRows] = {}
        self.unknown_products: set[str] = set()

    def evaluate(self, instance: Instance, *, with_patches: bool = True) -> InstanceCompliance:
        """The instance's state per installed package, its counts and status (see the module docstring).

        Each distinct (name, arch, version) of a product is judged once, on first sight; after that a row costs
        one dict look-up and one count, both in C (``map`` and ``Counter``): a Python loop over a fleet's ten
        million rows would dominate the run time.
        """
        targets, known = self._for_product(instance.product)
        installed = instance.installed
        code_counts = known.count(installed)
        pairs: Counter[tuple[str, str]] = Counter()
        for code, n in code_counts.items():
            pairs[known.pairs[code]] += n
        overrides: dict[int, str] = {}
        extra_rows: list[PatchState] = []
        if _last_run_matters(instance, code_counts):
            row_states = list(map(known.states.__getitem__, installed))
            overrides, extra_rows = _last_run(instance, row_states, targets, known.blocked)
            for index, state in overrides.items():
                bucket = known.buckets[installed[index]]
                pairs[(row_states[index], bucket)] -= 1
                pairs[(state, bucket)] += 1
            for row in extra_rows:
                pairs[(row.state, _bucket(targets.get((row.name, row.arch))))] += 1
        counts, worst = _counts(pairs)
        patches: list[PatchState] = []
        if with_patches:
            # Rows are immutable and shared between instances with the same package version.
            patches = known.rows_of(installed)
            for index, state in overrides.items():
                patches[index] = dataclasses.replace(patches[index], state=state)
            patches.extend(extra_rows)
        return InstanceCompliance(
            instance_id=instance.instance_id,
            patch_group=instance.patch_group,
            status="NON_COMPLIANT" if _non_compliant(counts) else "COMPLIANT",
            counts=counts,
            compliance_level=worst,
            patches=patches,
        )

    def _for_product(self, product: str | None) -> tuple[dict[tuple[str, str], PinnedPatch], _KnownRows]:
        """The targets an instance of ``product`` is judged against (every product's for an unknown one),
        and the rows already computed for them."""
        key = _normalise_product(product)
        if key is not None and key not in self.targets:
            self.unknown_products.add(product or "")
            key = None
        known = self._known.get(key)
        if known is None:
            known = self._known[key] = _KnownRows(self.targets[key], self._classify)
        return self.targets[key], known

    def _classify(
        self, pkg: PackageKey, table: dict[tuple[str, str], PinnedPatch]
    ) -> tuple[str, PinnedPatch | None]:
        name, arch, version = pkg
        target = table.get((name, arch))
        if self.rejected and self.rejected.match_package(name, arch, version) is not None:
            return (INSTALLED_REJECTED if self.block else INSTALLED_OTHER), target
        if target is None:
            return INSTALLED_OTHER, None
        if versions.compare(self.family, version, target.version) < 0:
            return MISSING, target
        # At or above an update the baseline blocks: a version it does not approve.
        return (INSTALLED_OTHER if target.blocked_by is not None else INSTALLED), target


class _KnownRows:
    """What an engine has computed for one product's targets, per distinct installed (name, arch, version)."""

    def __init__(
        self,
        targets: dict[tuple[str, str], PinnedPatch],
        classify: Callable[[PackageKey, dict[tuple[str, str], PinnedPatch]], tuple[str, PinnedPatch | None]],
    ) -> None:
        self.targets = targets
        self.classify = classify
        self.codes: dict[PackageKey, str] = _Judged(self.learn)
        """Each row's code, ``STATE|LEVEL|kind[|blocked]``: one interned string per distinct judgement, so
        counting them hashes nothing new. A package not seen before is judged on its first look-up."""
        self.pairs: dict[str, tuple[str, str]] = {}
        """(state, bucket) of each code."""
        self.states: dict[PackageKey, str] = {}
        self.buckets: dict[PackageKey, str] = {}
        """How a row counts when it is non-compliant: ``LEVEL|security`` or ``LEVEL|other``."""
        self.rows: dict[PackageKey, PatchState] = {}
        self.blocked: set[PackageKey] = set()
        """MISSING only because the update they need is kept out by a rejected dependency (BLOCK)."""
        self.layouts: dict[tuple[int, ...], _Layout] = {}
        """Installed lists already counted, by :func:`_probe_keys` (see :meth:`count`). Their package objects are
        kept alive by the layout, so the ids in the keys stay theirs."""

    def count(self, installed: list[PackageKey]) -> dict[str, int]:
        """How many rows of ``installed`` have each code (codes of no row left out).

        Instances built from one machine image list mostly the very same package objects in the same places
        (inventories intern them: :func:`parse_inventory`). Against a layout counted before, only the places
        holding another object are looked up — found by comparing pointers, in C — and the rest of the count is
        the layout's. Anything else is counted row by row and becomes a layout. Equal-but-distinct objects merely
        count as differences, so the result never depends on which path ran.
        """
        layout = self._layout_like(installed)
        if layout is None:
            counts = dict(Counter(map(self.codes.__getitem__, installed)))
            self._remember(_Layout(list(installed), counts))  # a copy: callers may change their list
            return counts
        counts = dict(layout.counts)
        reference, codes = layout.installed, self.codes
        changed = False
        for index in compress(itertools.count(), map(operator.is_not, installed, reference)):
            before, after = codes[reference[index]], codes[installed[index]]
            if before is not after:
                counts[before] -= 1
                counts[after] = counts.get(after, 0) + 1
                changed = True
        return {code: n for code, n in counts.items() if n} if changed else counts

    def rows_of(self, installed: list[PackageKey]) -> list[PatchState]:
        """The rows of ``installed`` (all judged already): a layout's, with the places that differ looked up."""
        layout = self._layout_like(installed)
        if layout is None:
            return list(map(self.rows.__getitem__, installed))
        if layout.rows is None:
            layout.rows = list(map(self.rows.__getitem__, layout.installed))
        rows, reference = list(layout.rows), layout.installed
        for index in compress(itertools.count(), map(operator.is_not, installed, reference)):
            rows[index] = self.rows[installed[index]]
        return rows

    def _layout_like(self, installed: list[PackageKey]) -> _Layout | None:
        """A layout of the same length holding the same objects at two probed places, if any."""
        if len(installed) < _LAYOUT_MIN_ROWS:
            return None
        for key in _probe_keys(installed):
            layout = self.layouts.get(key)
            if layout is not None:
                return layout
        return None

    def _remember(self, layout: _Layout) -> None:
        if len(layout.installed) < _LAYOUT_MIN_ROWS or len(self.layouts) >= _MAX_LAYOUT_KEYS:
            return
        for key in _probe_keys(layout.installed):
            self.layouts.setdefault(key, layout)

    def learn(self, pkg: PackageKey) -> str:
        """Judge a package not seen before; returns its code."""
        state, target = self.classify(pkg, self.targets)
        reason = None
        bucket = _bucket(target)
        code = f"{state}|{bucket}"
        if state == MISSING and target is not None and target.blocked_by is not None:
            self.blocked.add(pkg)
            code += "|blocked"
            reason = (
                f"the update to {target.version} depends on {target.blocked_by}, which the baseline rejects "
                "(RejectedPatchesAction BLOCK): it cannot be installed"
            )
        code = sys.intern(code)  # one shared string object per code: its hash is computed once
        self.pairs.setdefault(code, (state, bucket))
        self.states[pkg] = state
        self.buckets[pkg] = bucket
        self.rows[pkg] = PatchState(
            pkg[0],
            pkg[1],
            pkg[2],
            target.version if target is not None else None,
            state,
            target.severity if target is not None else None,
            target.compliance_level if target is not None else None,
            target.classification if target is not None else None,
            reason,
        )
        return code


_LAYOUT_MIN_ROWS = 64
"""Shorter lists are counted row by row: a layout would save little."""
_MAX_LAYOUT_KEYS = 3 * 4096
"""Enough for thousands of machine images; a fleet with no shared layout stops adding after that many."""


def _probe_keys(installed: list[PackageKey]) -> tuple[tuple[int, ...], ...]:
    """Keys to find a layout like ``installed`` by: its length and the objects at a pair of places — three
    pairs, so an instance whose drift hits one pair is still found by another."""
    n = len(installed)
    return tuple(
        (n, pair, id(installed[a * n // 8]), id(installed[b * n // 8]))
        for pair, (a, b) in enumerate(((1, 5), (2, 6), (3, 7)))
    )


@dataclass
class _Layout:
    """An installed list counted row by row, and its count of codes."""

    installed: list[PackageKey]
    counts: dict[str, int]
    rows: list[PatchState] | None = None
    """Its rows, once an instance like it asked for them."""


class _Judged(dict[PackageKey, str]):
    """A dict that judges a missing key on its first look-up (``dict.__getitem__`` calls ``__missing__``)."""

    def __init__(self, judge: Callable[[PackageKey], str]) -> None:
        super().__init__()
        self.judge = judge

    def __missing__(self, pkg: PackageKey) -> str:
        code = self[pkg] = self.judge(pkg)
        return code


def _last_run_matters(instance: Instance, code_counts: dict[str, int]) -> bool:
    """Whether the last install run changes any row (see :func:`_last_run`); most instances have none."""
    if instance.failed or instance.pending_reboot:
        return True
    return instance.operation == "Install" and any(code.endswith("|blocked") for code in code_counts)


def _last_run(
    instance: Instance,
    row_states: list[str],
    targets: dict[tuple[str, str], PinnedPatch],
    blocked: set[PackageKey],
) -> tuple[dict[int, str], list[PatchState]]:
    """What the last install run changes: MISSING rows it failed become FAILED, installed rows waiting for a
    reboot INSTALLED_PENDING_REBOOT (row index → state), and a failed package that is not installed at all (a
    failed first install) still counts, as an extra row. After an ``Install`` operation, a package whose update
    a rejected dependency keeps out is FAILED (API reference, ``RejectedPatchesAction``: "MISSING for SCAN
    operations and ... FAILED for INSTALL operations")."""
    overrides: dict[int, str] = {}
    extra_rows: list[PatchState] = []
    installed = instance.installed
    if instance.operation == "Install" and blocked:
        for index, pkg in enumerate(installed):
            if row_states[index] == MISSING and pkg in blocked:
                overrides[index] = FAILED
    failed, pending = instance.failed, instance.pending_reboot
    if not failed and not pending:
        return overrides, extra_rows
    seen_failed: set[tuple[str, str | None]] = set()
    for index, (name, arch, _version) in enumerate(installed):
        state = row_states[index]
        if state == MISSING and any(n == name and a in (None, arch) for n, a in failed):
            overrides[index] = FAILED
            seen_failed.update((n, a) for n, a in failed if n == name and a in (None, arch))
        elif state in (INSTALLED, INSTALLED_OTHER) and any(
            n == name and a in (None, arch) for n, a in pending
        ):
            overrides[index] = INSTALLED_PENDING_REBOOT
    installed_names = {(n, a) for n, a, _ in installed}
    for failed_name, failed_arch in failed:
        if (failed_name, failed_arch) in seen_failed:
            continue
        for (t_name, t_arch), target in targets.items():
            if (
                t_name == failed_name
                and failed_arch in (None, t_arch)
                and (t_name, t_arch) not in installed_names
            ):
                extra_rows.append(
                    PatchState(
                        t_name, t_arch, None, target.version, FAILED, target.severity, target.compliance_level
                    )
                )
    return overrides, extra_rows


def _counts(pairs: Counter[tuple[str, str]]) -> tuple[dict[str, int], str | None]:
    """The ``DescribeInstancePatchStates`` counts of (state, level bucket) pairs, and the most severe
    ComplianceLevel among the non-compliant ones (None when there are none)."""
    counter: Counter[str] = Counter()
    critical = security = 0
    levels: set[str] = set()
    for (state, bucket), n in pairs.items():
        counter[state] += n
        if state in NON_COMPLIANT_STATES:
            level, _, kind = bucket.partition("|")
            levels.add(level)
            if level == "CRITICAL":
                critical += n
            elif kind == "security":
                security += n
    counts = {field_name: counter.get(state, 0) for state, field_name in COUNT_FIELDS.items()}
    counts["NotApplicableCount"] = 0
    non_compliant = sum(counter.get(s, 0) for s in NON_COMPLIANT_STATES)
    counts["CriticalNonCompliantCount"] = critical
    counts["SecurityNonCompliantCount"] = security
    counts["OtherNonCompliantCount"] = non_compliant - critical - security
    worst = min(levels, key=COMPLIANCE_ORDER.index) if levels else None
    return counts, worst


def _non_compliant(counts: dict[str, int]) -> int:
    return sum(counts[COUNT_FIELDS[state]] for state in NON_COMPLIANT_STATES)


def _bucket(target: PinnedPatch | None) -> str:
    if target is None:
        return "UNSPECIFIED|other"
    if target.classification is not None:
        security = target.classification.lower() in {"security", "securityupdates"}
    else:
        security = target.security
    return f"{target.compliance_level}|{'security' if security else 'other'}"


def summarise(results: Sequence[InstanceCompliance]) -> dict[str, Any]:
    """Fleet totals: instances by status and patches by state."""
    by_status = Counter(r.status for r in results)
    totals: Counter[str] = Counter()
    for r in results:
        totals.update(r.counts)
    return {
        "instances": len(results),
        "compliant": by_status.get("COMPLIANT", 0),
        "non_compliant": by_status.get("NON_COMPLIANT", 0),
        "counts": dict(totals),
    }


# ---------------------------------------------------------------------------------------------- inventory


def _package_ref(value: Any) -> tuple[str, str | None] | None:
    if isinstance(value, str) and value:
        return (value, None)
    if isinstance(value, dict) and isinstance(value.get("name"), str) and value["name"]:
        arch = value.get("arch")
        return (value["name"], arch if isinstance(arch, str) and arch else None)
    return None


_INSTANCE_FIELDS = (
    "instance_id",
    "platform",
    "patch_group",
    "installed",
    "failed",
    "pending_reboot",
    "operation",
)
_OPERATIONS = ("Scan", "Install")


def parse_inventory(doc: Document, *, family: str | None = None) -> list[Instance]:
    """Validate an inventory document: a list of instances with their installed packages.

    Args:
        doc: the parsed file.
        family: the version family of the baseline; every installed version is checked against it.
    """
    data = doc.data
    prefix: tuple[str | int, ...] = ()
    if isinstance(data, dict) and "instances" in data:
        data = data["instances"]
        prefix = ("instances",)
    if not isinstance(data, list):
        raise InventoryError(
            "an inventory must be a JSON list of instances (or an object with an 'instances' list)",
            source=doc.source,
        )
    reader = _InventoryReader(doc, family)
    instances: list[Instance] = []
    for i, item in enumerate(data):
        if len(reader.problems) >= 50:
            break
        instance = reader.instance((*prefix, i), item)
        if instance is not None:
            instances.append(instance)
    if reader.problems:
        raise InventoryError("invalid inventory", source=doc.source, problems=reader.problems)
    return instances


class _FieldReader:
    """Reads the fields of one inventory entry, collecting located problems."""

    def __init__(self, doc: Document, family: str | None) -> None:
        self.doc = doc
        self.family = family
        self.problems: list[Problem] = []
        self.checked_versions: set[str] = set()  # fleets repeat versions: validate each distinct one once
        self.packages: dict[PackageKey, PackageKey] = {}
        """One shared object per distinct package: a fleet's rows cost a pointer each, and compliance compares
        instances by pointer (see ``_KnownRows.count``)."""

    def bad(self, path: tuple[str | int, ...], message: str) -> None:
        self.problems.append(self.doc.problem(path, message))

    def platform(self, where: tuple[str | int, ...], platform: Any) -> tuple[str | None, str | None]:
        """``platform`` (a product string or {family, product}) as (product, family)."""
        product: str | None = None
        inst_family: str | None = None
        if isinstance(platform, str):
            product = platform
        elif isinstance(platform, dict):
            product = platform.get("product") if isinstance(platform.get("product"), str) else None
            fam = platform.get("family")
            if fam is not None and fam not in ("deb", "rpm"):
                self.bad(
                    (*where, "platform", "family"), f"{fam!r} is not a package family; use 'deb' or 'rpm'"
                )
            inst_family = fam if isinstance(fam, str) else None
        elif platform is not None:
            self.bad((*where, "platform"), "expected a product string or {family, product}")
        if self.family is not None and inst_family is not None and inst_family != self.family:
            self.bad(
                (*where, "platform", "family"),
                f"instance uses '{inst_family}' packages but the baseline is for '{self.family}'",
            )
        return product, inst_family

    def installed(self, where: tuple[str | int, ...], raw: Any) -> list[PackageKey] | None:
        """The ``installed`` list, versions checked against the baseline's family; None if it is no list."""
        if not isinstance(raw, list):
            self.bad(where, "expected a list of {name, arch, version}")
            return None
        installed: list[PackageKey] = []
        for j, pkg in enumerate(raw):
            try:
                name, arch, version = pkg["name"], pkg["arch"], pkg["version"]
            except (TypeError, KeyError):
                self.bad((*where, j), "expected {name, arch, version}")
                continue
            if not (
                isinstance(name, str) and isinstance(arch, str) and isinstance(version, str) and name and arch
            ):
                self.bad((*where, j), "name, arch and version must be non-empty strings")
                continue
            if self.family is not None and version not in self.checked_versions:
                try:
                    versions.validate(self.family, version)
                except InvalidVersionError as exc:
                    self.bad((*where, j, "version"), exc.summary)
                    continue
                self.checked_versions.add(version)
            key = (name, arch, version)
            installed.append(self.packages.setdefault(key, key))
        return installed

    def operation(self, where: tuple[str | int, ...], raw: Any) -> str | None:
        """The last patching operation, ``Scan`` or ``Install`` (any case), or None."""
        if raw is None:
            return None
        for name in _OPERATIONS:
            if isinstance(raw, str) and raw.lower() == name.lower():
                return name
        self.bad(
            where, f"{raw!r} is not a patching operation; use Scan or Install (the last operation's type)"
        )
        return None

    def package_refs(self, where: tuple[str | int, ...], raw: Any) -> list[tuple[str, str | None]]:
        """A ``failed`` or ``pending_reboot`` list: package names or {name, arch}."""
        if not isinstance(raw, list):
            self.bad(where, "expected a list of package names or {name, arch}")
            return []
        refs: list[tuple[str, str | None]] = []
        for j, value in enumerate(raw):
            ref = _package_ref(value)
            if ref is None:
                self.bad((*where, j), "expected a package name or {name, arch}")
            else:
                refs.append(ref)
        return refs


class _InventoryReader(_FieldReader):
    """Reads inventory entries one by one; instance ids are unique across the file."""

    def __init__(self, doc: Document, family: str | None) -> None:
        super().__init__(doc, family)
        self.seen_ids: set[str] = set()

    def instance(self, where: tuple[str | int, ...], item: Any) -> Instance | None:
        """One entry as an Instance, or None when it is unusable (its problems reported)."""
        if not isinstance(item, dict):
            self.bad(where, f"expected an instance object, got {type(item).__name__}")
            return None
        for key in sorted(set(item) - set(_INSTANCE_FIELDS)):
            self.bad((*where, key), f"unknown field; allowed: {', '.join(_INSTANCE_FIELDS)}")
        iid = item.get("instance_id")
        if not isinstance(iid, str) or not iid:
            self.bad(
                (*where, "instance_id"),
                "required: the instance id as a non-empty string (e.g. i-0abc…, mi-…)",
            )
            return None
        if iid in self.seen_ids:
            self.bad((*where, "instance_id"), f"instance {iid} appears twice")
        self.seen_ids.add(iid)
        product, inst_family = self.platform(where, item.get("platform"))
        group = item.get("patch_group")
        if group is not None and not isinstance(group, str):
            self.bad((*where, "patch_group"), "expected a string or null")
            group = None
        installed = self.installed((*where, "installed"), item.get("installed", []))
        if installed is None:
            return None
        return Instance(
            instance_id=iid,
            installed=installed,
            product=product,
            family=inst_family,
            patch_group=group,
            failed=self.package_refs((*where, "failed"), item.get("failed", [])),
            pending_reboot=self.package_refs((*where, "pending_reboot"), item.get("pending_reboot", [])),
            operation=self.operation((*where, "operation"), item.get("operation")),
        )


def load_inventory(path: str | Path, *, family: str | None = None) -> list[Instance]:
    """Load and validate an inventory file (see :func:`parse_inventory`)."""
    return parse_inventory(load_document(path, kind="inventory", error=InventoryError), family=family)


def judge(
    instances: Iterable[Instance],
    *,
    family: str,
    candidates: Iterable[PinnedPatch],
    rejected_patches: Sequence[str],
    rejected_action: str,
    package_manager: str,
) -> tuple[list[InstanceCompliance], list[str]]:
    """Compliance of every instance, plus notes for the operator (products the catalog does not know).

    The one entry point the CLI and the API share.
    """
    engine = engine_for(
        family=family,
        candidates=candidates,
        rejected_patches=rejected_patches,
        rejected_action=rejected_action,
        package_manager=package_manager,
    )
    results = [engine.evaluate(instance) for instance in instances]
    notes = [
        f"no catalog patches for product {p!r}; its instances were judged against every product's patches"
        for p in sorted(engine.unknown_products)
    ]
    return results, notes


def engine_for(
    *,
    family: str,
    candidates: Iterable[PinnedPatch],
    rejected_patches: Sequence[str],
    rejected_action: str,
    package_manager: str,
) -> ComplianceEngine:
    """Build an engine from approved candidates and the baseline's rejected list."""
    if family not in ("deb", "rpm"):
        raise InputError(f"compliance needs a deb or rpm baseline, not {family!r}")
    return ComplianceEngine(
        family=family,
        targets=build_targets(candidates, family),
        rejected=PatchList(rejected_patches, package_manager),
        rejected_action=rejected_action,
    )
