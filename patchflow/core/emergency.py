"""Emergency patching: a patch set of just the fixes for named CVEs (and packages), and who is exposed.

``patchflow emergency`` (:mod:`patchflow.cli.emergency`) builds its patch set here, from the plan's catalog
and baseline, without evaluating the baseline's approval rules: naming a CVE *is* the approval. What the
baseline still decides is what may never be installed — its ``RejectedPatches`` (with ``BLOCK``, also
everything that depends on a rejected package), exactly as :func:`patchflow.core.evaluation.evaluate` applies them.
Approval rules, GlobalFilters and Sources do not apply.

**Products.** A package (name + arch) is built per OS product: openssl ``3.0.2-0ubuntu1.15`` is Ubuntu
22.04's, ``1.1.1f-1ubuntu2.22`` Ubuntu 20.04's, and comparing one with the other says nothing about a fix.
So everything below is decided per *scope* — a package's entries of one product (compared case-insensitively)
together with its product-less entries, which serve every product, as in
:func:`patchflow.core.compliance.build_targets`. Product-less entries also form a scope of their own, for
instances of products that have no entries of the package.

Which version is pinned, per package (name + arch) and scope where an entry lists a named CVE:

* The **lowest fixing version** of a CVE is the oldest version of the scope listing that CVE. Distro
  updates are cumulative, so every later version of the same product carries the fix too.
* The set pins the **newest version of the scope that the baseline does not reject**. The newest is what
  the vendor supports now: an older fixing version may carry regressions or other CVEs fixed since, and a
  wave installing it would leave instances to be patched again next week. A named CVE whose lowest fixing
  version that version does not reach (every version from there on is rejected) is *unfixable* for that
  product: reported, and an emergency wave refuses to start while it targets that product.
* ``--package NAME`` pins the newest non-refused version of every architecture and scope of that package.
* **Dependencies** (``depends``, names only) are followed transitively: the newest non-refused catalog
  version of the dependency for the same architecture (or ``all``/``noarch``) in the parent's scope (its
  product's entries, else its product-less ones). A dependency already in the set needs nothing more; one
  without a catalog entry is satisfied by what is installed; one whose every version is rejected
  (``ALLOW_AS_DEPENDENCY``) is left out and said so.

Exposure (:func:`exposure`): an instance is exposed to a CVE when it has the package (name + arch) installed
at a version older than that CVE's lowest fixing version *for its product*, compared with
:func:`patchflow.core.versions.compare`. For ``--package`` the reference is the pinned version. Instances without
the package are not exposed; neither are instances of a product for which the catalog lists no fix of the
CVE in that package (a note says how many were not judged). An instance whose product is unknown — none
reported, or one the catalog never names — is judged against the highest floor of every product: a false
alarm is cheaper than a missed exposure (compliance likewise judges unknown products against every
product's patches).

**One version per package in a wave.** A wave carries one list of (name, arch, version) and every executor
keeps only the *highest* pin of a package (name + arch) — the simulated one upgrades to it, the SSM one
writes that single title into the ``InstallOverrideList`` — on every instance that has the package,
whatever its product. Two products' fixes in one wave would therefore install 22.04's openssl on 20.04
machines (simulated), or pin a version their repositories do not have, so they install nothing and stay
exposed while the wave reports success (SSM). Hence :meth:`Selection.for_products` keeps only what the
targeted instances' products need, and :meth:`Selection.require_one_version` refuses a wave whose targets
still need two different versions of one package, naming the products and instances: run one emergency per
product (a patch group per OS release). The check uses the instances discovered when the command starts;
an instance of another product that joins a targeted patch group while the wave runs is not covered.

Pure domain logic: no Temporal, boto3 or SQL.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from patchflow.core import versions
from patchflow.core.baselines import Baseline
from patchflow.core.catalog import Patch
from patchflow.core.compliance import _normalise_product
from patchflow.core.evaluation import Decision, PatchSet, PinnedPatch, catalog_digest, evaluate
from patchflow.core.instances import Package
from patchflow.errors import InputError, InvalidVersionError

CVE_RE = re.compile(r"^CVE-\d{4}-\d{4,}$")
#: The compliance level every pinned patch of an emergency set carries: an operator declared the emergency.
EMERGENCY_COMPLIANCE_LEVEL = "CRITICAL"
#: Architectures whose packages serve every machine architecture.
ARCH_INDEPENDENT = frozenset({"all", "noarch"})
PACKAGE_ISSUE_PREFIX = "package:"
"""Exposure issues of ``--package NAME`` are written ``package:NAME`` (CVE issues are the CVE ids)."""
#: Instances named per version in a refusal before "… and N more".
MAX_NAMED = 5

Scope = str | None
"""A product, lower-cased; None = a package's product-less entries (see the module docstring)."""
ScopeKey = tuple[str, str, Scope]
"""(name, arch, scope): what one fix floor and one chosen version belong to."""


def _scope_order(key: ScopeKey) -> tuple[str, str, str]:
    return (key[0], key[1], key[2] or "")


def _applicable(product: str | None, scopes: frozenset[Scope], known: frozenset[str]) -> frozenset[Scope]:
    """The scopes of one package (name + arch) that judge and patch an instance of ``product``.

    Its product's own scope; else, for a product the catalog names, the product-less scope (if any); else —
    no product, or one the catalog never names — every scope (the conservative choice, see the module
    docstring).
    """
    norm = _normalise_product(product)
    if norm is not None and norm in scopes:
        return frozenset({norm})
    if norm is None or norm not in known:
        return scopes
    return scopes & {None}


@dataclass(frozen=True)
class Fix:
    """One package version of the emergency set, and why it is there."""

    patch: Patch
    """The catalog entry pinned."""
    reasons: tuple[str, ...]
    """``fixes CVE-…``, ``named with --package``, ``dependency of NAME`` — every reason that applies."""
    cve_ids: tuple[str, ...] = ()
    """The named CVEs this version fixes (empty for dependencies and ``--package``)."""
    products: tuple[str | None, ...] = ()
    """The products (catalog spelling) whose instances this version is for; None = instances of products
    without entries of the package (a product-less entry). Empty: every product."""

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    @property
    def scopes(self) -> frozenset[Scope]:
        return frozenset(_normalise_product(p) for p in self.products)

    def pinned(self) -> PinnedPatch:
        """This version as a patch-set entry: approved by the emergency, at :data:`EMERGENCY_COMPLIANCE_LEVEL`."""
        return Decision(self.patch, "approved", self.reason, EMERGENCY_COMPLIANCE_LEVEL, True).pinned()

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.patch.name,
            "arch": self.patch.arch,
            "version": self.patch.version,
            "product": self.patch.product,
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
    product: str | None = None
    """The catalog entry's product."""

    def to_json(self) -> dict[str, str | None]:
        return {
            "name": self.name,
            "arch": self.arch,
            "version": self.version,
            "product": self.product,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class FixFloor:
    """Below this installed version an instance of ``product`` is exposed to ``issue``."""

    issue: str
    """A CVE id, or ``package:NAME`` for ``--package``."""
    name: str
    arch: str
    version: str
    """A CVE's lowest fixing version for this package and product; for ``--package`` the pinned version."""
    product: str | None = None
    """The product (catalog spelling) whose instances this floor judges; None = the package's product-less
    entries (instances of products without entries of their own)."""

    @property
    def scope(self) -> Scope:
        return _normalise_product(self.product)


@dataclass(frozen=True)
class Gap:
    """A named issue without an installable fix for one package and product."""

    issue: str
    name: str
    arch: str
    product: str | None
    why: str

    @property
    def scope(self) -> Scope:
        return _normalise_product(self.product)

    def text(self) -> str:
        where = f" ({self.product})" if self.product else ""
        return f"{self.name} {self.arch}{where}: {self.why}"


@dataclass(frozen=True)
class Selection:
    """What :func:`select_fixes` chose; :meth:`pinned` is the content of the emergency patch set."""

    family: str
    cves: tuple[str, ...]
    """The named CVEs, normalised (upper case), in the order given."""
    packages: tuple[str, ...]
    fixes: tuple[Fix, ...]
    """Sorted by (name, arch, product)."""
    floors: tuple[FixFloor, ...]
    refused: tuple[Refused, ...] = ()
    gaps: tuple[Gap, ...] = ()
    """Every (issue, package, product) whose fixing versions the baseline all refuses."""
    notes: tuple[str, ...] = ()
    scopes: Mapping[tuple[str, str], frozenset[Scope]] = field(default_factory=dict)
    """(name, arch) → its scopes in the catalog, for every package of ``fixes``, ``floors`` and ``gaps``."""
    products: frozenset[str] = frozenset()
    """Every product the catalog names (lower-cased): an instance of another product is of unknown product."""

    @property
    def issues(self) -> tuple[str, ...]:
        """Every named CVE and ``package:NAME``: the keys of an exposure report."""
        return (*self.cves, *(PACKAGE_ISSUE_PREFIX + name for name in self.packages))

    @property
    def unfixable(self) -> dict[str, str]:
        """Issue → why no installable version fixes it (every fixing version refused by the baseline)."""
        out: dict[str, list[str]] = defaultdict(list)
        for gap in self.gaps:
            out[gap.issue].append(gap.text())
        return {issue: "; ".join(texts) for issue, texts in out.items()}

    def pinned(self) -> tuple[PinnedPatch, ...]:
        return tuple(f.pinned() for f in self.fixes)

    def scopes_for(self, key: tuple[str, str], product: str | None) -> frozenset[Scope]:
        """The scopes of package ``key`` (name, arch) that judge and patch an instance of ``product``."""
        return _applicable(product, self.scopes.get(key, frozenset()), self.products)

    def for_products(self, products: Iterable[str | None]) -> Selection:
        """Only the fixes, floors and gaps that instances of ``products`` need (None: an unknown product).

        What an emergency wave pins: a wave over one product's instances carries only that product's fixes.
        """
        wanted = set(products)

        def needed(key: tuple[str, str], scopes: frozenset[Scope]) -> bool:
            return any(self.scopes_for(key, p) & scopes for p in wanted)

        return dataclasses.replace(
            self,
            fixes=tuple(f for f in self.fixes if needed(f.patch.key, f.scopes)),
            floors=tuple(f for f in self.floors if needed((f.name, f.arch), frozenset({f.scope}))),
            gaps=tuple(g for g in self.gaps if needed((g.name, g.arch), frozenset({g.scope}))),
        )

    def require_complete(self) -> None:
        """Refuse to go on when a named CVE or package has no installable fix."""
        if self.gaps:
            lines = [f"  {issue}: {why}" for issue, why in self.unfixable.items()]
            raise InputError(
                "no installable fix for "
                + ", ".join(self.unfixable)
                + "; the baseline refuses it (drop it from the command, or change the baseline's "
                "RejectedPatches)\n" + "\n".join(lines)
            )

    def require_one_version(self, instances: Mapping[str, str | None]) -> None:
        """Refuse a set that pins two different versions of one package (name + arch).

        A wave installs one version of a package on every instance that has it (executors keep the highest
        pin; see the module docstring), so such a set would patch one product and break or skip the other.

        Args:
            instances: the targeted instances → their product (None when unknown), to name who needs which.
        """
        by_key: dict[tuple[str, str], list[Fix]] = defaultdict(list)
        for fix in self.fixes:
            by_key[fix.patch.key].append(fix)
        problems: list[str] = []
        for key, group in sorted(by_key.items()):
            distinct: list[str] = []
            for version in sorted(
                {f.patch.version for f in group}, key=lambda v: versions.sort_key(self.family, v)
            ):
                if not distinct or versions.compare(self.family, version, distinct[-1]) != 0:
                    distinct.append(version)
            if len(distinct) < 2:
                continue
            parts = []
            for version in distinct:
                serving = [f for f in group if versions.compare(self.family, f.patch.version, version) == 0]
                scopes = frozenset().union(*(f.scopes for f in serving))
                named = sorted({p or "product-less entries" for f in serving for p in f.products})
                who = sorted(i for i, p in instances.items() if self.scopes_for(key, p) & scopes)
                listed = ", ".join(who[:MAX_NAMED]) + (
                    f" … and {len(who) - MAX_NAMED} more" if len(who) > MAX_NAMED else ""
                )
                parts.append(f"{version} for {', '.join(named)} ({listed or 'no targeted instance'})")
            problems.append(f"{key[0]} {key[1]} needs " + " but ".join(parts))
        if problems:
            raise InputError(
                "the targeted instances run products with different fixes: "
                + "; ".join(problems)
                + ". A wave installs one version of a package (name + arch) on every instance that has it, "
                "so it would put one product's build on the other; run one emergency per product (--targets a "
                "patch group whose instances all run one product)"
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

    See the module docstring for which version is chosen, per package and product. The baseline supplies the
    version family, the package manager (how ``RejectedPatches`` entries match) and
    ``RejectedPatches``/``RejectedPatchesAction``; its approval rules do not apply.

    Raises:
        InputError: nothing named, a malformed CVE id, a CVE or package the catalog does not have (every
            one is reported, with close matches), a non-Linux baseline, or a catalog of the other family.
    """
    index = _Index.of(catalog, baseline, catalog_source)
    wanted = tuple(dict.fromkeys(normalise_cve(c) for c in cves))
    named_packages = tuple(dict.fromkeys(p.strip() for p in packages if p.strip()))
    if not wanted and not named_packages:
        raise InputError("name at least one --cve CVE-YYYY-NNNN (or --package NAME) to patch")
    _require_in_catalog(index, wanted, named_packages, catalog_source)
    choices = _Choices()
    cve_floor = _lowest_fixing_versions(index, wanted)
    choices.floors.extend(_cve_floors(index, cve_floor, wanted))
    _fix_cves(index, choices, cve_floor)
    _pin_named_packages(index, choices, named_packages)
    _follow_dependencies(index, choices)
    return _selection(index, choices, wanted, named_packages)


@dataclass
class _Index:
    """The catalog looked up by CVE, name, package (name + arch) and scope, with what the baseline refuses."""

    catalog: Sequence[Patch]
    family: str
    refused_at: dict[int, str]
    """Catalog index → why the baseline rejects that entry."""
    listed: list[frozenset[str]] = field(default_factory=list)
    """Per catalog entry, its CVE ids normalised."""
    fixing: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    by_name: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    by_key: dict[tuple[str, str], list[int]] = field(default_factory=lambda: defaultdict(list))
    scopes_of: dict[tuple[str, str], set[Scope]] = field(default_factory=lambda: defaultdict(set))
    spelling: dict[str, str] = field(default_factory=dict)
    """Scope → the product as the catalog writes it (the smallest spelling)."""

    @classmethod
    def of(cls, catalog: Sequence[Patch], baseline: Baseline, catalog_source: str | None) -> _Index:
        # What the baseline never lets be installed, exactly as 'baseline evaluate' decides it:
        # RejectedPatches, BLOCK on dependants, a version rejected in any catalog entry. Its approval rules
        # play no part here, and neither do its Sources (evaluate() would call an entry outside them
        # not_approved before judging whether it is rejected). evaluate() also refuses non-Linux baselines
        # and a catalog of the other family.
        evaluation = evaluate(
            baseline.model_copy(update={"Sources": []}),
            catalog,
            datetime.now(UTC),
            catalog_source=catalog_source,
        )
        index = cls(
            catalog=catalog,
            family=evaluation.patch_set.family,
            refused_at={i: d.reason for i, d in enumerate(evaluation.decisions) if d.decision == "rejected"},
        )
        index.listed = [frozenset(cve.strip().upper() for cve in patch.cve_ids) for patch in catalog]
        for i, patch in enumerate(catalog):
            for cve in index.listed[i]:
                index.fixing[cve].append(i)
            index.by_name[patch.name].append(i)
            index.by_key[patch.key].append(i)
            scope = _normalise_product(patch.product)
            index.scopes_of[patch.key].add(scope)
            if scope is not None and patch.product is not None:
                index.spelling[scope] = min(index.spelling.get(scope, patch.product), patch.product)
        return index

    def product_of(self, scope: Scope) -> str | None:
        return None if scope is None else self.spelling[scope]

    def members(self, key: tuple[str, str], scope: Scope) -> list[int]:
        """The entries of a scope: the package's entries of that product and its product-less ones."""
        return [i for i in self.by_key[key] if _normalise_product(self.catalog[i].product) in (scope, None)]

    def newest_first(self, indices: Iterable[int]) -> list[int]:
        return _newest_first(self.catalog, indices, self.family)


@dataclass
class _Choices:
    """What the steps of :func:`select_fixes` have chosen so far."""

    chosen: dict[ScopeKey, int] = field(default_factory=dict)
    """(name, arch, scope) → the catalog entry pinned for it."""
    reasons: dict[ScopeKey, list[str]] = field(default_factory=lambda: defaultdict(list))
    fixed_cves: dict[ScopeKey, list[str]] = field(default_factory=lambda: defaultdict(list))
    refused: dict[tuple[str, str, str, str], Refused] = field(default_factory=dict)
    floors: list[FixFloor] = field(default_factory=list)
    gaps: list[Gap] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)


def _require_in_catalog(
    index: _Index, wanted: tuple[str, ...], named_packages: tuple[str, ...], catalog_source: str | None
) -> None:
    """Refuse CVEs and packages the catalog does not have, every one at once, with close matches."""
    missing = [
        f"the catalog has no patch for {cve}{_close(cve, index.fixing, cutoff=0.9)}"
        for cve in wanted
        if cve not in index.fixing
    ]
    missing += [
        f"the catalog has no package {name!r}{_close(name, index.by_name)}"
        for name in named_packages
        if name not in index.by_name
    ]
    if missing:
        hint = (
            "; refresh the catalog (patchflow ssm collect) once the vendor has published the fix"
            if any(c not in index.fixing for c in wanted)
            else ""
        )
        raise InputError("; ".join(missing) + hint, source=catalog_source)


def _lowest_fixing_versions(index: _Index, wanted: tuple[str, ...]) -> dict[ScopeKey, dict[str, str]]:
    """(name, arch, scope) → {named CVE: the oldest version of the scope listing it}."""
    cve_floor: dict[ScopeKey, dict[str, str]] = defaultdict(dict)
    for key in sorted({index.catalog[i].key for cve in wanted for i in index.fixing[cve]}):
        for scope in index.scopes_of[key]:
            for i in index.members(key, scope):
                for cve in (c for c in wanted if c in index.listed[i]):
                    version = index.catalog[i].version
                    current = cve_floor[(*key, scope)].get(cve)
                    order = 1 if current is None else versions.compare(index.family, version, current)
                    # an equal version written differently (1.0 / 1.00): the smaller text, whatever the order
                    if current is None or order < 0 or (order == 0 and version < current):
                        cve_floor[(*key, scope)][cve] = version
    return cve_floor


def _cve_floors(
    index: _Index, cve_floor: dict[ScopeKey, dict[str, str]], wanted: tuple[str, ...]
) -> list[FixFloor]:
    return [
        FixFloor(cve, skey[0], skey[1], cve_floor[skey][cve], index.product_of(skey[2]))
        for skey in sorted(cve_floor, key=_scope_order)
        for cve in wanted
        if cve in cve_floor[skey]
    ]


def _pick(index: _Index, choices: _Choices, candidates: list[int], floor: str | None) -> int | None:
    """The newest non-refused candidate; the refused ones newer than it (at or above ``floor``) are reported."""
    for i in index.newest_first(candidates):
        if i not in index.refused_at:
            return i
        patch = index.catalog[i]
        if floor is None or versions.compare(index.family, patch.version, floor) >= 0:
            choices.refused.setdefault(
                (patch.name, patch.arch, patch.version, patch.product or ""),
                Refused(patch.name, patch.arch, patch.version, index.refused_at[i], patch.product),
            )
    return None


def _fix_cves(index: _Index, choices: _Choices, cve_floor: dict[ScopeKey, dict[str, str]]) -> None:
    """Step 1: per package and product, the newest non-refused version, if it reaches the CVEs' floors."""
    for skey in sorted(cve_floor, key=_scope_order):
        key, scope = (skey[0], skey[1]), skey[2]
        per_cve = cve_floor[skey]
        lowest = min(per_cve.values(), key=lambda v: versions.sort_key(index.family, v))
        best = _pick(index, choices, index.members(key, scope), lowest)
        for cve, floor in per_cve.items():
            if best is not None and versions.compare(index.family, index.catalog[best].version, floor) >= 0:
                choices.fixed_cves[skey].append(cve)
                continue
            why = sorted(
                {
                    r.reason
                    for r in choices.refused.values()
                    if (r.name, r.arch) == key
                    and _normalise_product(r.product) in (scope, None)
                    and versions.compare(index.family, r.version, floor) >= 0
                }
            )
            choices.gaps.append(
                Gap(
                    cve,
                    key[0],
                    key[1],
                    index.product_of(scope),
                    f"every version from {floor} on is refused ({'; '.join(why)})",
                )
            )
        if choices.fixed_cves[skey]:
            assert best is not None
            choices.chosen[skey] = best
            first = ", ".join(f"{cve} (first fixed in {per_cve[cve]})" for cve in choices.fixed_cves[skey])
            choices.reasons[skey].append(f"fixes {first}")


def _pin_named_packages(index: _Index, choices: _Choices, named_packages: tuple[str, ...]) -> None:
    """Step 2: packages named with --package, the newest version of each architecture and product."""
    for name in named_packages:
        for key in sorted({index.catalog[i].key for i in index.by_name[name]}):
            for scope in sorted(index.scopes_of[key], key=lambda s: s or ""):
                skey = (*key, scope)
                best = _pick(index, choices, index.members(key, scope), None)
                if best is None:
                    newest = index.newest_first(index.members(key, scope))[0]
                    choices.gaps.append(
                        Gap(
                            PACKAGE_ISSUE_PREFIX + name,
                            key[0],
                            key[1],
                            index.product_of(scope),
                            f"every catalog version is refused ({index.refused_at[newest]})",
                        )
                    )
                    continue
                choices.chosen.setdefault(
                    skey, best
                )  # a CVE fix of the same package is this same newest version
                choices.reasons[skey].append("named with --package")
                version = index.catalog[choices.chosen[skey]].version
                choices.floors.append(
                    FixFloor(PACKAGE_ISSUE_PREFIX + name, key[0], key[1], version, index.product_of(scope))
                )


def _follow_dependencies(index: _Index, choices: _Choices) -> None:
    """Step 3: dependencies, transitively, in the scope of their parent."""
    queue: deque[ScopeKey] = deque(sorted(choices.chosen, key=_scope_order))
    while queue:
        skey = queue.popleft()
        parent = index.catalog[choices.chosen[skey]]
        for dep in parent.depends:
            dep_keys = _dependency_scopes(index, parent, dep, skey[2])
            if not dep_keys:
                choices.note(
                    f"{dep} (a dependency of {parent.name}) has no catalog entry: the installed version serves"
                )
                continue
            for dep_key in dep_keys:
                reason = f"dependency of {parent.name}"
                if dep_key in choices.chosen:
                    if reason not in choices.reasons[dep_key] and dep_key != skey:
                        choices.reasons[dep_key].append(reason)
                    continue
                best = _pick(index, choices, index.members((dep_key[0], dep_key[1]), dep_key[2]), None)
                if best is None:
                    choices.note(
                        f"{dep} {dep_key[1]} (a dependency of {parent.name}) is rejected by the baseline: not "
                        "pinned, so this wave never installs it"
                    )
                    continue
                choices.chosen[dep_key] = best
                choices.reasons[dep_key].append(reason)
                queue.append(dep_key)


def _dependency_scopes(index: _Index, parent: Patch, dep: str, scope: Scope) -> list[ScopeKey]:
    """The (name, arch, scope) of dependency ``dep`` that serve ``parent`` in ``scope``."""
    # an arch-independent package may need its dependency in any architecture
    arch_ok = None if parent.arch in ARCH_INDEPENDENT else {parent.arch, *ARCH_INDEPENDENT}
    dep_keys: list[ScopeKey] = []
    for key in sorted({index.catalog[i].key for i in index.by_name.get(dep, [])}):
        if arch_ok is not None and key[1] not in arch_ok:
            continue
        # the dependency's entries of the parent's product, else its product-less ones
        dep_scope = scope if scope in index.scopes_of[key] else None
        if dep_scope in index.scopes_of[key]:
            dep_keys.append((*key, dep_scope))
    return dep_keys


def _selection(
    index: _Index, choices: _Choices, wanted: tuple[str, ...], named_packages: tuple[str, ...]
) -> Selection:
    """One Fix per catalog entry (a product-less entry may be the choice of several scopes), and the refused
    versions no fix supersedes."""
    serving: dict[int, list[ScopeKey]] = defaultdict(list)
    for skey in sorted(choices.chosen, key=_scope_order):
        serving[choices.chosen[skey]].append(skey)
    fixes = sorted(
        (
            Fix(
                patch=index.catalog[i],
                reasons=tuple(dict.fromkeys(r for k in skeys for r in choices.reasons[k])),
                cve_ids=tuple(dict.fromkeys(c for k in skeys for c in choices.fixed_cves.get(k, ()))),
                products=tuple(index.product_of(k[2]) for k in skeys),
            )
            for i, skeys in serving.items()
        ),
        key=lambda f: (
            f.patch.name,
            f.patch.arch,
            _normalise_product(f.patch.product) or "",
            f.patch.version,
        ),
    )
    refused = tuple(
        r
        for _, r in sorted(choices.refused.items())
        if not any(
            f.patch.key == (r.name, r.arch)
            and _products_fit(f.patch.product, r.product)
            and versions.compare(index.family, f.patch.version, r.version) >= 0
            for f in fixes
        )
    )
    floors, gaps = choices.floors, choices.gaps
    used = (
        {f.patch.key for f in fixes} | {(f.name, f.arch) for f in floors} | {(g.name, g.arch) for g in gaps}
    )
    return Selection(
        family=index.family,
        cves=wanted,
        packages=named_packages,
        fixes=tuple(fixes),
        floors=tuple(floors),
        refused=refused,
        gaps=tuple(gaps),
        notes=tuple(choices.notes),
        scopes={key: frozenset(index.scopes_of[key]) for key in sorted(used)},
        products=frozenset(index.spelling),
    )


def emergency_patch_set(
    selection: Selection, baseline: Baseline, catalog: Sequence[Patch], at: datetime | None = None
) -> PatchSet:
    """The content-addressed patch set of ``selection``, like one :func:`~patchflow.core.evaluation.evaluate` pins.

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
    products: Mapping[str, str | None] | None = None,
) -> ExposureReport:
    """Which instances are exposed to which named issue (see the module docstring).

    Args:
        installed: instance id → its installed packages (a scan).
        selection: the floors to compare against.
        families: instance id → ``deb``/``rpm`` when known; instances of the other family are not judged.
        products: instance id → its product (``Ubuntu22.04``) when known; an instance is judged against the
            floors of its product. Unknown products are judged against the highest floor of every product.
    """
    floors: dict[tuple[str, str], list[FixFloor]] = defaultdict(list)
    for floor in selection.floors:
        floors[(floor.name, floor.arch)].append(floor)
    order = {issue: n for n, issue in enumerate(selection.issues)}
    found: list[Exposed] = []
    notes: list[str] = []
    skipped = 0
    unknown: Counter[str | None] = Counter()  # product → instances judged against every product's floors
    unjudged: Counter[tuple[str, str, str, str]] = Counter()  # (issue, name, arch, product) → instances
    for instance_id in sorted(installed):
        family = (families or {}).get(instance_id)
        if family is not None and family != selection.family:
            skipped += 1
            continue
        product = (products or {}).get(instance_id)
        several = False
        for package in installed[instance_id]:
            key = (package.name, package.arch)
            if key not in floors:
                continue
            scopes = selection.scopes_for(key, product)
            judging: dict[str, FixFloor] = {}
            for floor in floors[key]:
                if floor.scope not in scopes:
                    continue
                current = judging.get(floor.issue)
                if current is None:
                    judging[floor.issue] = floor
                    continue
                several = True  # only an instance of unknown product has several scopes: the highest judges
                if versions.compare(selection.family, floor.version, current.version) > 0:
                    judging[floor.issue] = floor
            for issue in {f.issue for f in floors[key]} - set(judging):
                unjudged[(issue, package.name, package.arch, product or "")] += 1
            for floor in judging.values():
                try:
                    older = versions.compare(selection.family, package.version, floor.version) < 0
                except InvalidVersionError as exc:
                    notes.append(f"{instance_id}: {package.name} {package.arch} not judged: {exc.summary}")
                    break
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
        if several:
            unknown[product] += 1
    if skipped:
        notes.append(
            f"{skipped} instance(s) run {'rpm' if selection.family == 'deb' else 'deb'} packages: not judged"
        )
    for product, count in sorted(unknown.items(), key=lambda item: item[0] or ""):
        what = "report no product" if product is None else f"run {product}, which the catalog does not name"
        notes.append(f"{count} instance(s) {what}: judged against the highest fix floor of every product")
    for (issue, name, arch, product), count in sorted(unjudged.items()):
        notes.append(
            f"{issue}: {name} {arch} on {count} {product} instance(s) not judged: the catalog lists no fix of it "
            f"for {product}"
        )
    found.sort(key=lambda e: (order.get(e.issue, len(order)), e.instance_id, e.name, e.arch))
    return ExposureReport(issues=selection.issues, exposed=tuple(found), notes=tuple(notes))
