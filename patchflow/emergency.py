"""Emergency patching: a patch set of just the fixes for named CVEs (and packages), and who is exposed.

``patchflow emergency`` (:mod:`patchflow.cli_emergency`) builds its patch set here, from the plan's catalog
and baseline, without evaluating the baseline's approval rules: naming a CVE *is* the approval. What the
baseline still decides is what may never be installed — its ``RejectedPatches`` (with ``BLOCK``, also
everything that depends on a rejected package), exactly as :func:`patchflow.evaluation.evaluate` applies them.
Approval rules, GlobalFilters and Sources do not apply.

Which version is pinned, per package (name + arch) that lists a named CVE:

* The **lowest fixing version** of a CVE for a package is the oldest catalog version listing that CVE. Distro
  updates are cumulative, so every later version carries the fix too.
* The set pins the **newest catalog version that the baseline does not reject**. The newest is what the
  vendor supports now: an older fixing version may carry regressions or other CVEs fixed since, and a wave
  installing it would leave instances to be patched again next week. A named CVE whose lowest fixing version
  that version does not reach (every version from there on is rejected) is *unfixable*: reported, and an
  emergency wave refuses to start until it is dropped or the baseline changes.
* ``--package NAME`` pins the newest non-refused version of every architecture of that package.
* **Dependencies** (``depends``, names only) are followed transitively: the newest non-refused catalog
  version of the dependency for the same architecture (or ``all``/``noarch``) and product. A dependency
  already in the set needs nothing more; one without a catalog entry is satisfied by what is installed; one
  whose every version is rejected (``ALLOW_AS_DEPENDENCY``) is left out and said so.

Exposure (:func:`exposure`): an instance is exposed to a CVE when it has the package (name + arch) installed
at a version older than that CVE's lowest fixing version, compared with :func:`patchflow.versions.compare`.
For ``--package`` the reference is the pinned version. Instances without the package are not exposed.

Pure domain logic: no Temporal, boto3 or SQL.
"""

from __future__ import annotations

import difflib
import re
from collections import defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from patchflow import versions
from patchflow.baselines import Baseline
from patchflow.catalog import Patch
from patchflow.errors import InputError, InvalidVersionError
from patchflow.evaluation import Decision, PatchSet, PinnedPatch, catalog_digest, evaluate
from patchflow.executors.base import Package

CVE_RE = re.compile(r"^CVE-\d{4}-\d{4,}$")
#: The compliance level every pinned patch of an emergency set carries: an operator declared the emergency.
EMERGENCY_COMPLIANCE_LEVEL = "CRITICAL"
#: Architectures whose packages serve every machine architecture.
ARCH_INDEPENDENT = frozenset({"all", "noarch"})
PACKAGE_ISSUE_PREFIX = "package:"
"""Exposure issues of ``--package NAME`` are written ``package:NAME`` (CVE issues are the CVE ids)."""


@dataclass(frozen=True)
class Fix:
    """One package version of the emergency set, and why it is there."""

    patch: Patch
    """The catalog entry pinned."""
    reasons: tuple[str, ...]
    """``fixes CVE-…``, ``named with --package``, ``dependency of NAME`` — every reason that applies."""
    cve_ids: tuple[str, ...] = ()
    """The named CVEs this version fixes (empty for dependencies and ``--package``)."""

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def pinned(self) -> PinnedPatch:
        """This version as a patch-set entry: approved by the emergency, at :data:`EMERGENCY_COMPLIANCE_LEVEL`."""
        return Decision(self.patch, "approved", self.reason, EMERGENCY_COMPLIANCE_LEVEL, True).pinned()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.patch.name,
            "arch": self.patch.arch,
            "version": self.patch.version,
            "reason": self.reason,
            "cve_ids": list(self.cve_ids),
        }


@dataclass(frozen=True)
class Refused:
    """A catalog version the emergency set would have pinned, refused by the baseline (never installed)."""

    name: str
    arch: str
    version: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "arch": self.arch, "version": self.version, "reason": self.reason}


@dataclass(frozen=True)
class FixFloor:
    """Below this installed version an instance is exposed to ``issue``."""

    issue: str
    """A CVE id, or ``package:NAME`` for ``--package``."""
    name: str
    arch: str
    version: str
    """A CVE's lowest fixing version for this package; for ``--package`` the pinned version."""


@dataclass(frozen=True)
class Selection:
    """What :func:`select_fixes` chose; :meth:`pinned` is the content of the emergency patch set."""

    family: str
    cves: tuple[str, ...]
    """The named CVEs, normalised (upper case), in the order given."""
    packages: tuple[str, ...]
    fixes: tuple[Fix, ...]
    """Sorted by (name, arch)."""
    floors: tuple[FixFloor, ...]
    refused: tuple[Refused, ...] = ()
    unfixable: Mapping[str, str] = field(default_factory=dict)
    """Issue → why no installable version fixes it (every fixing version refused by the baseline)."""
    notes: tuple[str, ...] = ()

    @property
    def issues(self) -> tuple[str, ...]:
        """Every named CVE and ``package:NAME``: the keys of an exposure report."""
        return (*self.cves, *(PACKAGE_ISSUE_PREFIX + name for name in self.packages))

    def pinned(self) -> tuple[PinnedPatch, ...]:
        return tuple(f.pinned() for f in self.fixes)

    def require_complete(self) -> None:
        """Refuse to go on when a named CVE or package has no installable fix."""
        if self.unfixable:
            lines = [f"  {issue}: {why}" for issue, why in self.unfixable.items()]
            raise InputError(
                "no installable fix for "
                + ", ".join(self.unfixable)
                + "; the baseline refuses it (drop it from the command, or change the baseline's "
                "RejectedPatches)\n" + "\n".join(lines)
            )

    def description(self) -> str:
        """One line for the patch set: what the emergency is about (at most 1024 characters)."""
        named = [*self.cves, *(f"package {p}" for p in self.packages)]
        text = (
            "EMERGENCY patch set (patchflow emergency): only the fixes for "
            + ", ".join(named)
            + " and their dependencies; RejectedPatches honoured"
        )
        return text if len(text) <= 1024 else text[:1020] + " …"


@dataclass(frozen=True)
class Exposed:
    """One instance exposed to one issue through one installed package."""

    issue: str
    instance_id: str
    name: str
    arch: str
    installed: str
    fixed_in: str

    def to_json(self) -> dict[str, str]:
        return {
            "instance_id": self.instance_id,
            "name": self.name,
            "arch": self.arch,
            "installed": self.installed,
            "fixed_in": self.fixed_in,
        }


@dataclass(frozen=True)
class ExposureReport:
    issues: tuple[str, ...]
    """Every issue asked about, exposed or not (so JSON keys are stable)."""
    exposed: tuple[Exposed, ...]
    """Sorted by issue order, then instance id, then package."""
    notes: tuple[str, ...] = ()

    def by_issue(self) -> dict[str, list[Exposed]]:
        out: dict[str, list[Exposed]] = {issue: [] for issue in self.issues}
        for item in self.exposed:
            out.setdefault(item.issue, []).append(item)
        return out

    def instances(self) -> list[str]:
        """The exposed instances, each once, sorted."""
        return sorted({e.instance_id for e in self.exposed})

    def to_json(self) -> dict[str, list[dict[str, str]]]:
        return {issue: [e.to_json() for e in items] for issue, items in self.by_issue().items()}


# --------------------------------------------------------------------------------------------------------
# Selection


def normalise_cve(text: str) -> str:
    """``cve-2026-1234 `` → ``CVE-2026-1234``; anything else is an input error."""
    cve = text.strip().upper()
    if not CVE_RE.match(cve):
        raise InputError(f"--cve {text!r} is not a CVE id; write it like CVE-2026-1234")
    return cve


def _newest_first(catalog: Sequence[Patch], indices: Iterable[int], family: str) -> list[int]:
    """Newest version first; equal versions (written differently, or listed twice) ordered by content, so the
    choice never depends on catalog order."""
    by_content = sorted(indices, key=lambda i: catalog[i].model_dump_json())
    return sorted(by_content, key=lambda i: versions.sort_key(family, catalog[i].version), reverse=True)


def _products_fit(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a.lower() == b.lower()


def _close(word: str, choices: Iterable[str], cutoff: float = 0.75) -> str:
    close = difflib.get_close_matches(word, sorted(set(choices)), n=3, cutoff=cutoff)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def select_fixes(
    catalog: Sequence[Patch],
    *,
    cves: Sequence[str],
    packages: Sequence[str] = (),
    baseline: Baseline,
    catalog_source: str | None = None,
) -> Selection:
    """Choose the emergency set: the fixes for ``cves``, the newest ``packages``, and their dependencies.

    See the module docstring for which version is chosen. The baseline supplies the version family, the
    package manager (how ``RejectedPatches`` entries match) and ``RejectedPatches``/``RejectedPatchesAction``;
    its approval rules do not apply.

    Raises:
        InputError: nothing named, a malformed CVE id, a CVE or package the catalog does not have (every
            one is reported, with close matches), a non-Linux baseline, or a catalog of the other family.
    """
    # What the baseline never lets be installed, exactly as 'baseline evaluate' decides it: RejectedPatches,
    # BLOCK on dependants, a version rejected in any catalog entry. Its approval rules play no part here, and
    # neither do its Sources (evaluate() would call an entry outside them not_approved before judging whether
    # it is rejected). evaluate() also refuses non-Linux baselines and a catalog of the other family.
    evaluation = evaluate(
        baseline.model_copy(update={"Sources": []}), catalog, datetime.now(UTC), catalog_source=catalog_source
    )
    family = evaluation.patch_set.family
    refused_at = {i: d.reason for i, d in enumerate(evaluation.decisions) if d.decision == "rejected"}
    wanted = tuple(dict.fromkeys(normalise_cve(c) for c in cves))
    named_packages = tuple(dict.fromkeys(p.strip() for p in packages if p.strip()))
    if not wanted and not named_packages:
        raise InputError("name at least one --cve CVE-YYYY-NNNN (or --package NAME) to patch")

    fixing: dict[str, list[int]] = defaultdict(list)
    for i, patch in enumerate(catalog):
        for cve in patch.cve_ids:
            fixing[cve.strip().upper()].append(i)
    by_name: dict[str, list[int]] = defaultdict(list)
    for i, patch in enumerate(catalog):
        by_name[patch.name].append(i)
    missing = [
        f"the catalog has no patch for {cve}{_close(cve, fixing, cutoff=0.9)}"
        for cve in wanted
        if cve not in fixing
    ]
    missing += [
        f"the catalog has no package {name!r}{_close(name, by_name)}"
        for name in named_packages
        if name not in by_name
    ]
    if missing:
        hint = (
            "; refresh the catalog (patchflow ssm collect) once the vendor has published the fix"
            if any(c not in fixing for c in wanted)
            else ""
        )
        raise InputError("; ".join(missing) + hint, source=catalog_source)

    floors: list[FixFloor] = []
    # (name, arch) → {cve: lowest fixing version}
    cve_floor: dict[tuple[str, str], dict[str, str]] = defaultdict(dict)
    for cve in wanted:
        for i in fixing[cve]:
            patch = catalog[i]
            current = cve_floor[patch.key].get(cve)
            order = 1 if current is None else versions.compare(family, patch.version, current)
            # an equal version written differently (1.0 / 1.00): the smaller text, whatever the catalog order
            if current is None or order < 0 or (order == 0 and patch.version < current):
                cve_floor[patch.key][cve] = patch.version
    for key in sorted(cve_floor):
        for cve, version in cve_floor[key].items():
            floors.append(FixFloor(cve, key[0], key[1], version))

    chosen: dict[tuple[str, str], int] = {}
    reasons: dict[tuple[str, str], list[str]] = defaultdict(list)
    fixed_cves: dict[tuple[str, str], list[str]] = defaultdict(list)
    refused_out: dict[tuple[str, str, str], Refused] = {}
    unfixable: dict[str, list[str]] = defaultdict(list)
    notes: list[str] = []

    def entries_of(key: tuple[str, str], products: set[str | None]) -> list[int]:
        return [
            i
            for i in by_name.get(key[0], [])
            if catalog[i].arch == key[1] and any(_products_fit(catalog[i].product, p) for p in products)
        ]

    def pick(candidates: list[int], floor: str | None) -> int | None:
        """The newest non-refused candidate; the refused ones newer than it (at or above ``floor``) are
        reported."""
        for i in _newest_first(catalog, candidates, family):
            if i not in refused_at:
                return i
            patch = catalog[i]
            if floor is None or versions.compare(family, patch.version, floor) >= 0:
                refused_out.setdefault(
                    (patch.name, patch.arch, patch.version),
                    Refused(patch.name, patch.arch, patch.version, refused_at[i]),
                )
        return None

    # 1. The fixes of the named CVEs.
    for key in sorted(cve_floor):
        per_cve = cve_floor[key]
        products = {catalog[i].product for cve in per_cve for i in fixing[cve] if catalog[i].key == key}
        lowest = min(per_cve.values(), key=lambda v: versions.sort_key(family, v))
        best = pick(entries_of(key, products), lowest)
        for cve, floor in per_cve.items():
            if best is not None and versions.compare(family, catalog[best].version, floor) >= 0:
                fixed_cves[key].append(cve)
                continue
            why = sorted(
                {
                    r.reason
                    for r in refused_out.values()
                    if (r.name, r.arch) == key and versions.compare(family, r.version, floor) >= 0
                }
            )
            unfixable[cve].append(
                f"{key[0]} {key[1]}: every version from {floor} on is refused ({'; '.join(why)})"
            )
        if fixed_cves[key]:
            assert best is not None
            chosen[key] = best
            first = ", ".join(f"{cve} (first fixed in {per_cve[cve]})" for cve in fixed_cves[key])
            reasons[key].append(f"fixes {first}")

    # 2. Packages named with --package: the newest version of each architecture.
    for name in named_packages:
        keys = sorted({catalog[i].key for i in by_name[name]})
        for key in keys:
            best = pick(entries_of(key, {None}), None)
            if best is None:
                newest = _newest_first(catalog, entries_of(key, {None}), family)[0]
                unfixable[PACKAGE_ISSUE_PREFIX + name].append(
                    f"{key[0]} {key[1]}: every catalog version is refused ({refused_at[newest]})"
                )
                continue
            chosen.setdefault(key, best)  # a CVE fix of the same package is this same newest version
            reasons[key].append("named with --package")
            floors.append(FixFloor(PACKAGE_ISSUE_PREFIX + name, key[0], key[1], catalog[chosen[key]].version))

    # 3. Dependencies, transitively.
    queue: deque[tuple[str, str]] = deque(sorted(chosen))
    while queue:
        key = queue.popleft()
        parent = catalog[chosen[key]]
        for dep in parent.depends:
            arch_ok = (
                None if parent.arch in ARCH_INDEPENDENT else {parent.arch, *ARCH_INDEPENDENT}
            )  # an arch-independent package may need its dependency in any architecture
            candidates = [
                i
                for i in by_name.get(dep, [])
                if (arch_ok is None or catalog[i].arch in arch_ok)
                and _products_fit(catalog[i].product, parent.product)
            ]
            if not candidates:
                note = f"{dep} (a dependency of {parent.name}) has no catalog entry: the installed version serves"
                if note not in notes:
                    notes.append(note)
                continue
            for dep_key in sorted({catalog[i].key for i in candidates}):
                reason = f"dependency of {parent.name}"
                if dep_key in chosen:
                    if reason not in reasons[dep_key] and dep_key != key:
                        reasons[dep_key].append(reason)
                    continue
                best = pick([i for i in candidates if catalog[i].key == dep_key], None)
                if best is None:
                    note = (
                        f"{dep} {dep_key[1]} (a dependency of {parent.name}) is rejected by the baseline: not "
                        "pinned, so this wave never installs it"
                    )
                    if note not in notes:
                        notes.append(note)
                    continue
                chosen[dep_key] = best
                reasons[dep_key].append(reason)
                queue.append(dep_key)

    fixes = tuple(
        Fix(patch=catalog[chosen[key]], reasons=tuple(reasons[key]), cve_ids=tuple(fixed_cves.get(key, ())))
        for key in sorted(chosen)
    )
    pinned_versions = {f.patch.key: f.patch.version for f in fixes}
    refused_list = tuple(
        r
        for _, r in sorted(refused_out.items())
        if (r.name, r.arch) not in pinned_versions
        or versions.compare(family, r.version, pinned_versions[(r.name, r.arch)]) > 0
    )
    return Selection(
        family=family,
        cves=wanted,
        packages=named_packages,
        fixes=fixes,
        floors=tuple(floors),
        refused=refused_list,
        unfixable={issue: "; ".join(why) for issue, why in unfixable.items()},
        notes=tuple(notes),
    )


def emergency_patch_set(
    selection: Selection, baseline: Baseline, catalog: Sequence[Patch], at: datetime | None = None
) -> PatchSet:
    """The content-addressed patch set of ``selection``, like one :func:`~patchflow.evaluation.evaluate` pins.

    It carries the baseline's canonical form (so compliance against the set knows its RejectedPatches) with
    the ``Description`` replaced by :meth:`Selection.description`, which marks the set as an emergency one.
    """
    moment = (at or datetime.now(UTC)).astimezone(UTC)
    canonical = baseline.canonical()
    canonical["Description"] = selection.description()
    digest = catalog_digest(catalog)
    patches = selection.pinned()
    return PatchSet(
        id=PatchSet.content_id(canonical, digest, moment, patches),
        family=selection.family,
        baseline=canonical,
        evaluated_at=moment,
        catalog_digest=digest,
        patches=patches,
    )


# --------------------------------------------------------------------------------------------------------
# Exposure


def exposure(
    installed: Mapping[str, Iterable[Package]],
    selection: Selection,
    *,
    families: Mapping[str, str | None] | None = None,
) -> ExposureReport:
    """Which instances are exposed to which named issue (see the module docstring).

    Args:
        installed: instance id → its installed packages (a scan).
        selection: the floors to compare against.
        families: instance id → ``deb``/``rpm`` when known; instances of the other family are not judged.
    """
    floors: dict[tuple[str, str], list[FixFloor]] = defaultdict(list)
    for floor in selection.floors:
        floors[(floor.name, floor.arch)].append(floor)
    order = {issue: n for n, issue in enumerate(selection.issues)}
    found: list[Exposed] = []
    notes: list[str] = []
    skipped = 0
    for instance_id in sorted(installed):
        family = (families or {}).get(instance_id)
        if family is not None and family != selection.family:
            skipped += 1
            continue
        for package in installed[instance_id]:
            for floor in floors.get((package.name, package.arch), ()):
                try:
                    older = versions.compare(selection.family, package.version, floor.version) < 0
                except InvalidVersionError as exc:
                    notes.append(f"{instance_id}: {package.name} {package.arch} not judged: {exc.summary}")
                    continue
                if older:
                    found.append(
                        Exposed(
                            floor.issue,
                            instance_id,
                            package.name,
                            package.arch,
                            package.version,
                            floor.version,
                        )
                    )
    if skipped:
        notes.append(
            f"{skipped} instance(s) run {'rpm' if selection.family == 'deb' else 'deb'} packages: not judged"
        )
    found.sort(key=lambda e: (order.get(e.issue, len(order)), e.instance_id, e.name, e.arch))
    return ExposureReport(issues=selection.issues, exposed=tuple(found), notes=tuple(notes))
