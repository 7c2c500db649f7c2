"""Baseline evaluation: which catalog patches a baseline approves at a given moment, and the pinned patch set.

The order is SSM's (reference §1.4): GlobalFilters keep qualifying patches; approval rules approve (tried in
file order, the first that approves sets the ComplianceLevel — AWS does not say which applies when several match;
filters AND across keys, OR within values, ``*`` matches anything; delays counted in UTC from the release date;
``ApproveUntilDate`` covers its whole UTC day; non-security candidates only where enabled); ApprovedPatches
approve regardless of filters and rules; RejectedPatches win over everything; with ``BLOCK`` every patch that
depends (transitively) on a rejected package is blocked too. Of the approved versions of a package (name +
arch), the latest is pinned. An approved version that BLOCK keeps out is never pinned, but the patch set lists it
under ``blocked``, so compliance reports older installed versions MISSING against it, as SSM does (API reference,
``RejectedPatchesAction``).

On apt systems a rule without ``EnableNonSecurity`` approves a package only if its *candidate* version (the
highest on offer for its product and architecture) is in a security pocket, and then at that version (User
Guide, "How patch baseline rules work on Linux-based systems").

Patches without a release date: a rule with ``ApproveAfterDays`` or ``ApproveUntilDate`` approves them only when
it has ``EnableNonSecurity: true`` (User Guide, "How to specify an alternative patch source repository (Linux)");
``ApprovedPatches`` approve them like any other patch.

patchflow extensions, stated in the reasons: apt rules may carry ``ApproveAfterDays``/``ApproveUntilDate``
(they apply to patches with a release date, as on yum), and baseline ``Sources`` restrict the candidates of
their products to those repositories, as SSM's alternative sources replace a node's repositories for the run.
"""

from __future__ import annotations

import configparser
import dataclasses
import hashlib
import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from fnmatch import fnmatchcase
from typing import Any, Literal

from patchflow.core import versions
from patchflow.core.baselines import (
    COMPLIANCE_ORDER,
    MEDIUM_IS_MODERATE,
    Baseline,
    PatchFilter,
    PatchFilterGroup,
    PatchRule,
)
from patchflow.core.catalog import Patch
from patchflow.core.instances import RepoSource
from patchflow.core.matching import PatchList
from patchflow.core.timeutil import format_instant
from patchflow.errors import CatalogError, InputError, Problem

DecisionKind = Literal["approved", "rejected", "not_approved"]

_FIELD_OF_KEY = {
    "PRODUCT": "product",
    "CLASSIFICATION": "classification",
    "SEVERITY": "severity",
    "PRIORITY": "priority",
    "SECTION": "section",
}


@dataclass(frozen=True)
class Decision:
    """What the baseline decided for one catalog patch, and why."""

    patch: Patch
    decision: DecisionKind
    reason: str
    compliance_level: str | None = None
    """The ComplianceLevel reported when this approved patch is missing (None unless approved)."""
    in_patch_set: bool = False
    """True for the latest approved version of its package: the one the patch set pins."""

    def pinned(self) -> PinnedPatch:
        """This patch as a patch-set entry (with the compliance level its approval gave it)."""
        p = self.patch
        return PinnedPatch(
            name=p.name,
            arch=p.arch,
            version=p.version,
            compliance_level=self.compliance_level or "UNSPECIFIED",
            severity=p.severity,
            classification=p.classification,
            security=p.security,
            product=p.product,
            advisory_id=p.advisory_id,
            cve_ids=tuple(p.cve_ids),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.patch.name,
            "arch": self.patch.arch,
            "version": self.patch.version,
            "product": self.patch.product,
            "decision": self.decision,
            "reason": self.reason,
            "compliance_level": self.compliance_level,
            "in_patch_set": self.in_patch_set,
        }


@dataclass(frozen=True)
class PinnedPatch:
    """One package version of a pinned patch set."""

    name: str
    arch: str
    version: str
    compliance_level: str = "UNSPECIFIED"
    severity: str | None = None
    classification: str | None = None
    security: bool = False
    product: str | None = None
    advisory_id: str | None = None
    cve_ids: tuple[str, ...] = ()
    blocked_by: str | None = None
    """Set on a compliance target only (never on a pinned version): under ``RejectedPatchesAction: BLOCK`` this
    approved update is kept out because it depends on this rejected (or itself blocked) package."""

    def to_json(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "arch": self.arch,
            "version": self.version,
            "compliance_level": self.compliance_level,
            "severity": self.severity,
            "classification": self.classification,
            "security": self.security,
            "product": self.product,
            "advisory_id": self.advisory_id,
            "cve_ids": list(self.cve_ids),
        }
        if self.blocked_by is not None:  # absent otherwise, so the content ids of pinned sets do not change
            out["blocked_by"] = self.blocked_by
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PinnedPatch:
        return cls(
            name=data["name"],
            arch=data["arch"],
            version=data["version"],
            compliance_level=data.get("compliance_level") or "UNSPECIFIED",
            severity=data.get("severity"),
            classification=data.get("classification"),
            security=bool(data.get("security", False)),
            product=data.get("product"),
            advisory_id=data.get("advisory_id"),
            cve_ids=tuple(data.get("cve_ids") or ()),
            blocked_by=data.get("blocked_by"),
        )


@dataclass(frozen=True)
class PatchSet:
    """A frozen, content-addressed result of one evaluation: exactly what every stage of a wave installs."""

    id: str
    family: str
    baseline: dict[str, Any]
    """The baseline's canonical form (so compliance against the pinned set knows its rejected list)."""
    evaluated_at: datetime
    catalog_digest: str
    patches: tuple[PinnedPatch, ...]
    blocked: tuple[PinnedPatch, ...] = ()
    """Under ``BLOCK``: the approved updates kept out by a rejected dependency (each with ``blocked_by``). Never
    installed; compliance judges an older installed version against them (MISSING, see
    :meth:`compliance_targets`)."""

    @staticmethod
    def content_id(
        baseline: dict[str, Any],
        catalog_digest: str,
        evaluated_at: datetime,
        patches: Sequence[PinnedPatch],
        blocked: Sequence[PinnedPatch] = (),
    ) -> str:
        """The content address: a hash of the baseline's meaning, the catalog, the time and the pinned set."""
        content: dict[str, Any] = {
            "baseline": baseline,
            "catalog": catalog_digest,
            "evaluated_at": format_instant(evaluated_at),
            "patches": [p.to_json() for p in patches],
        }
        if blocked:  # only when present: sets without blocked updates keep the ids they always had
            content["blocked"] = [p.to_json() for p in blocked]
        identity = json.dumps(content, sort_keys=True, separators=(",", ":"))
        return "ps-" + hashlib.sha256(identity.encode()).hexdigest()[:24]

    def sources(self) -> tuple[RepoSource, ...]:
        """The baseline's ``Sources``: the repositories hosts of the named products install this set from.

        They are part of the stored baseline (so of the content id) since patch sets exist: reading them from
        there keeps every stored set loadable under the id it always had.
        """
        return tuple(RepoSource.from_json(s) for s in self.baseline.get("Sources") or ())

    def compliance_targets(self) -> tuple[PinnedPatch, ...]:
        """What compliance against this set judges installed versions by: the pinned versions and the blocked
        updates."""
        return (*self.patches, *self.blocked)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "family": self.family,
            "baseline_name": self.baseline.get("Name"),
            "operating_system": self.baseline.get("OperatingSystem"),
            "evaluated_at": format_instant(self.evaluated_at),
            "catalog_digest": self.catalog_digest,
            "baseline": self.baseline,
            "patches": [p.to_json() for p in self.patches],
            "blocked": [p.to_json() for p in self.blocked],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any], *, source: str | None = None) -> PatchSet:
        """Read a stored set, refusing one whose content no longer matches its id (edited or forged)."""
        try:
            patch_set = cls(
                id=str(data["id"]),
                family=str(data["family"]),
                baseline=dict(data["baseline"]),
                evaluated_at=datetime.fromisoformat(str(data["evaluated_at"]).replace("Z", "+00:00")),
                catalog_digest=str(data["catalog_digest"]),
                patches=tuple(PinnedPatch.from_json(p) for p in data["patches"]),
                blocked=tuple(PinnedPatch.from_json(p) for p in data.get("blocked") or ()),
            )
            for p in patch_set.patches:
                versions.validate(patch_set.family, p.version)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InputError(
                f"not a valid patchflow patch set ({type(exc).__name__}: {exc}); pass a file written by "
                "'patchflow baseline evaluate --format json' or a stored patch set id",
                source=source,
            ) from None
        expected = cls.content_id(
            patch_set.baseline,
            patch_set.catalog_digest,
            patch_set.evaluated_at,
            patch_set.patches,
            patch_set.blocked,
        )
        if expected != patch_set.id:
            raise InputError(
                f"patch set {patch_set.id} was modified: its content hashes to {expected}. A pinned set never "
                "changes; evaluate the baseline again to pin a new one",
                source=source,
            )
        return patch_set


@dataclass
class Evaluation:
    """The full result of evaluating a baseline against a catalog."""

    patch_set: PatchSet
    decisions: list[Decision]
    notes: list[str] = field(default_factory=list)

    def approved(self) -> list[PinnedPatch]:
        """What compliance judges installed versions by: every approved version (not only the pinned latest),
        and under ``BLOCK`` the approved updates a rejected dependency keeps out (marked ``blocked_by``)."""
        return [*(d.pinned() for d in self.decisions if d.decision == "approved"), *self.patch_set.blocked]

    def to_json(self) -> dict[str, Any]:
        return {
            "patch_set": self.patch_set.to_json(),
            "decisions": [d.to_json() for d in self.decisions],
            "notes": self.notes,
        }


def _matches_value(patch_value: str | None, wanted: Sequence[str], *, moderate_is_medium: bool) -> bool:
    for value in wanted:
        if value == "*":
            return True
        if patch_value is None:
            continue
        lowered, have = value.lower(), patch_value.lower()
        if ("*" in lowered and fnmatchcase(have, lowered)) or have == lowered:
            return True
        if moderate_is_medium and lowered == "medium" and have == "moderate":
            return True
    return False


def _filter_mismatch(
    group: PatchFilterGroup, patch: Patch, *, moderate_is_medium: bool
) -> PatchFilter | None:
    """The first filter of ``group`` the patch fails, or None when all match (AND across keys)."""
    for flt in group.PatchFilters:
        attr = _FIELD_OF_KEY.get(flt.Key)
        value = getattr(patch, attr) if attr else None
        if not _matches_value(value, flt.Values, moderate_is_medium=moderate_is_medium):
            return flt
    return None


def _source_repositories(configuration: str, package_manager: str) -> set[str]:
    """Repository identities a baseline source provides: yum section ids, or apt ``suite``/``url suite``."""
    ids: set[str] = set()
    if package_manager == "apt":
        parts = configuration.split()
        # deb [options] URL suite [components...]
        parts = [p for p in parts if not p.startswith("[") and not p.endswith("]")]
        if len(parts) >= 3:
            ids.update({parts[2], f"{parts[1]} {parts[2]}"})
        return ids
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read_string(configuration)
    except configparser.Error:
        return ids
    ids.update(s for s in parser.sections() if s.lower() != "main")
    return ids


def catalog_digest(patches: Iterable[Patch]) -> str:
    """Order-independent digest of a catalog's content."""
    rows = sorted(json.dumps(p.model_dump(mode="json"), sort_keys=True) for p in patches)
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def _most_severe(levels: Iterable[str]) -> str:
    ranked = sorted(levels, key=COMPLIANCE_ORDER.index)
    return ranked[0] if ranked else "UNSPECIFIED"


def evaluate(
    baseline: Baseline, patches: Sequence[Patch], at: datetime, *, catalog_source: str | None = None
) -> Evaluation:
    """Decide every catalog patch and pin the resulting patch set, in SSM's order (see the module docstring).

    Args:
        baseline: a validated baseline for a Linux operating system.
        patches: the catalog.
        at: the evaluation time (aware); approval delays are measured up to this instant.
        catalog_source: the catalog's file name, for error messages.

    Raises:
        InputError: the baseline's OS is not a Linux one, or the catalog holds patches of the other family.
    """
    if at.tzinfo is None:
        raise ValueError("evaluation time must be timezone-aware")
    at = at.astimezone(UTC)
    family = _family_of(baseline, patches, catalog_source)
    context = _Context.of(baseline, patches, at, family)
    verdicts = [_decide(patch, context) for patch in patches]
    notes = _notes(verdicts)
    if baseline.RejectedPatchesAction == "BLOCK":
        _block_dependents(verdicts, context.rejected)
    _reject_versions_rejected_elsewhere(verdicts, family)
    latest = _latest_approved(verdicts, family)
    decisions = _explain(verdicts, latest, baseline)
    blocked = _blocked_updates(verdicts, family)
    return Evaluation(_pin(baseline, patches, decisions, blocked, at, family), decisions, notes)


@dataclass
class _Verdict:
    """One patch's decision while the steps of :func:`evaluate` are still refining it."""

    patch: Patch
    kind: DecisionKind
    reason: str
    level: str | None = None
    undated: bool = False
    """A rule with a delay or date decided this patch although it has no release date."""
    blocked_by: str | None = None
    """BLOCK: the rejected (or blocked) dependency that rejected this patch; ``level`` then keeps the level of
    the approval it lost, if it had one."""


@dataclass(frozen=True)
class _Context:
    """What every step of one evaluation consults: the baseline, compiled once, and the evaluation time."""

    baseline: Baseline
    at: datetime
    approved: PatchList
    rejected: PatchList
    sources: dict[str, set[str]]
    """Product (lower case) → the repositories (lower case) its Sources allow."""
    moderate_is_medium: bool
    candidates: _AptCandidates | None
    """apt's candidate versions (Debian, Ubuntu, Raspberry Pi OS); None on yum and zypper."""

    @classmethod
    def of(cls, baseline: Baseline, patches: Sequence[Patch], at: datetime, family: str) -> _Context:
        pm = baseline.package_manager
        sources: dict[str, set[str]] = defaultdict(set)
        for source in baseline.Sources:
            repos = _source_repositories(source.Configuration, pm) | {source.Name}
            for product in source.Products:
                sources[product.lower()].update(r.lower() for r in repos)
        return cls(
            baseline=baseline,
            at=at,
            approved=PatchList(baseline.ApprovedPatches, pm),
            rejected=PatchList(baseline.RejectedPatches, pm),
            sources=dict(sources),
            moderate_is_medium=baseline.OperatingSystem in MEDIUM_IS_MODERATE,
            candidates=_AptCandidates.of(patches, sources, family) if pm == "apt" else None,
        )


class _AptCandidates:
    """apt's *candidate* version of each package: the version ``apt-get upgrade`` would install.

    The candidate of a package (name + arch) on a product is the highest version the catalog offers among that
    product's entries and the product-less ones (which serve every product); a product-less entry is judged
    among the product-less entries. Entries outside the baseline's Sources are not offered. A rule's date
    condition decides what is on offer at the evaluation time: entries released later are not, and under
    patchflow's apt delays (an extension) an entry is on offer once its delay has passed — as if the
    repositories were as old as the delay.
    """

    def __init__(self, groups: dict[tuple[str, str, str | None], list[Patch]], family: str) -> None:
        self.groups = groups
        """(name, arch, product in lower case or None) → its entries, newest first."""
        self.family = family
        self._cache: dict[tuple[int, tuple[str, str, str | None]], list[Patch]] = {}

    @classmethod
    def of(cls, patches: Sequence[Patch], sources: dict[str, set[str]], family: str) -> _AptCandidates:
        offered = [p for p in patches if _outside_sources(p, sources) is None]
        products: dict[tuple[str, str], set[str]] = defaultdict(set)
        for patch in offered:
            if patch.product is not None:
                products[patch.key].add(patch.product.lower())
        groups: dict[tuple[str, str, str | None], list[Patch]] = defaultdict(list)
        for patch in offered:
            scopes = [patch.product.lower()] if patch.product is not None else [*products[patch.key], None]
            for scope in scopes:
                groups[(*patch.key, scope)].append(patch)
        for entries in groups.values():
            entries.sort(key=lambda p: versions.sort_key(family, p.version), reverse=True)
        return cls(dict(groups), family)

    def at_candidate(self, number: int, rule: PatchRule, patch: Patch, at: datetime) -> list[Patch]:
        """The entries of ``patch``'s package at its candidate version under rule ``number`` (one version, maybe
        listed by several repositories, e.g. ``jammy-security`` and ``jammy-updates``)."""
        key = (patch.name, patch.arch, patch.product.lower() if patch.product is not None else None)
        cached = self._cache.get((number, key))
        if cached is None:
            offered = [
                e for e in self.groups.get(key, []) if _by_date(number, rule, e, at).kind == "approved"
            ]
            top = versions.sort_key(self.family, offered[0].version) if offered else None
            cached = [e for e in offered if versions.sort_key(self.family, e.version) == top]
            self._cache[(number, key)] = cached
        return cached


def _family_of(baseline: Baseline, patches: Sequence[Patch], catalog_source: str | None) -> str:
    """The baseline's version family, refusing non-Linux baselines and a catalog of the other family."""
    family = baseline.family
    if family is None:
        raise InputError(
            f"patchflow evaluates Linux baselines (deb/rpm); {baseline.OperatingSystem} baselines can be "
            "validated and exported but not evaluated"
        )
    wrong = [i for i, p in enumerate(patches) if p.family != family]
    if wrong:
        raise CatalogError(
            f"catalog does not fit a {baseline.OperatingSystem} baseline",
            source=catalog_source,
            problems=[
                Problem(
                    path=f"[{i}].family",
                    message=f"patch {patches[i].name} is '{patches[i].family}' but {baseline.OperatingSystem} uses "
                    f"'{family}' packages; evaluate each OS's catalog with its own baseline",
                )
                for i in wrong[:20]
            ],
        )
    return family


def _decide(patch: Patch, context: _Context) -> _Verdict:
    """One patch through SSM's order: Sources, RejectedPatches, GlobalFilters and rules, ApprovedPatches."""
    outside = _outside_sources(patch, context.sources)
    if outside is not None:
        return _Verdict(patch, "not_approved", outside)
    rejected_by = context.rejected.match_rejected(
        patch.name, patch.arch, patch.version, advisory_id=patch.advisory_id
    )
    if rejected_by is not None:
        action = context.baseline.RejectedPatchesAction
        return _Verdict(patch, "rejected", f"matches RejectedPatches entry '{rejected_by}' ({action})")
    return _approve_by_list(patch, context, _approve_by_rules(patch, context))


def _outside_sources(patch: Patch, sources: dict[str, set[str]]) -> str | None:
    """Why the patch is not a candidate when Sources replace its product's repositories, or None."""
    if not sources or patch.product is None:
        return None
    allowed_repos = sources.get(patch.product.lower())
    if allowed_repos is None or (patch.repository or "").lower() in allowed_repos:
        return None
    return (
        f"repository {patch.repository!r} is not among the baseline Sources for product "
        f"{patch.product} (Sources replace the default repositories)"
    )


def _approve_by_rules(patch: Patch, context: _Context) -> _Verdict:
    """GlobalFilters, then the first approval rule that approves the patch (its level), else why none did."""
    baseline = context.baseline
    gf = _filter_mismatch(baseline.GlobalFilters, patch, moderate_is_medium=context.moderate_is_medium)
    if gf is not None:
        return _Verdict(patch, "not_approved", f"excluded by GlobalFilters {gf.Key} {gf.Values}")
    verdicts: list[_Verdict] = []
    for number, rule in enumerate(baseline.ApprovalRules.PatchRules, start=1):
        verdict = _apply_rule(number, rule, patch, context)
        if verdict.kind == "approved":
            return verdict
        verdicts.append(verdict)
    reason = "; ".join(v.reason for v in verdicts) if verdicts else "no approval rules"
    return _Verdict(patch, "not_approved", reason, undated=any(v.undated for v in verdicts))


def _apply_rule(number: int, rule: PatchRule, patch: Patch, context: _Context) -> _Verdict:
    """One approval rule: its filters, EnableNonSecurity, its delay or date, then (apt) the candidate version."""
    miss = _filter_mismatch(rule.PatchFilterGroup, patch, moderate_is_medium=context.moderate_is_medium)
    if miss is not None:
        return _Verdict(patch, "not_approved", f"rule {number}: {miss.Key} is not one of {miss.Values}")
    if not rule.EnableNonSecurity and not patch.security:
        return _Verdict(
            patch, "not_approved", f"rule {number}: not a security update and EnableNonSecurity is false"
        )
    verdict = _by_date(number, rule, patch, context.at)
    if verdict.kind == "approved" and not rule.EnableNonSecurity and context.candidates is not None:
        return _security_candidate(number, rule, verdict, context.candidates, context.at)
    return verdict


def _by_date(number: int, rule: PatchRule, patch: Patch, at: datetime) -> _Verdict:
    """The rule's date condition: released by the evaluation time, and its delay passed or its date not later."""
    approved = f"approved by rule {number}"
    if patch.release_date is None:
        return _undated(number, rule, patch)
    if patch.release_date > at:
        return _Verdict(
            patch, "not_approved", f"rule {number}: matches, but released after the evaluation time"
        )
    if rule.ApproveAfterDays is not None:
        approve_at = patch.release_date + timedelta(days=rule.ApproveAfterDays)
        if at < approve_at:
            return _Verdict(
                patch,
                "not_approved",
                f"rule {number}: matches, approved from {format_instant(approve_at)} "
                f"(ApproveAfterDays {rule.ApproveAfterDays})",
            )
        return _Verdict(
            patch, "approved", f"{approved} (ApproveAfterDays {rule.ApproveAfterDays})", rule.ComplianceLevel
        )
    if rule.ApproveUntilDate is not None:
        until = date.fromisoformat(rule.ApproveUntilDate)
        if patch.release_date.date() > until:
            return _Verdict(
                patch,
                "not_approved",
                f"rule {number}: matches, but released {patch.release_date.date()} after ApproveUntilDate {until}",
            )
        return _Verdict(patch, "approved", f"{approved} (ApproveUntilDate {until})", rule.ComplianceLevel)
    return _Verdict(patch, "approved", approved, rule.ComplianceLevel)


def _security_candidate(
    number: int, rule: PatchRule, verdict: _Verdict, candidates: _AptCandidates, at: datetime
) -> _Verdict:
    """apt, security updates only: the rule approves a package only if its candidate version is in a security
    pocket, and then at that version (User Guide, "How patch baseline rules work on Linux-based systems",
    Debian Server and Ubuntu Server: "For each package, the candidate version of the package (which is
    typically the latest version) must be part of a security repo")."""
    patch = verdict.patch
    at_candidate = candidates.at_candidate(number, rule, patch, at)
    candidate = at_candidate[0]  # the patch itself is on offer, so the candidate is it or newer
    if versions.compare(candidates.family, patch.version, candidate.version) == 0:
        return verdict
    if any(e.security for e in at_candidate):
        why = "a rule without EnableNonSecurity approves a package at its candidate version only"
    else:
        why = (
            f"it comes from {candidate.repository or 'a repository'} and is not a security update, so a rule "
            "without EnableNonSecurity approves no version of the package"
        )
    return _Verdict(
        patch,
        "not_approved",
        f"rule {number}: the candidate version of {patch.name} is {candidate.version}; {why}",
    )


def _undated(number: int, rule: PatchRule, patch: Patch) -> _Verdict:
    """A patch without a release date: a rule with no delay or date approves it; a rule with
    ``ApproveAfterDays`` or ``ApproveUntilDate`` approves it only when ``EnableNonSecurity`` is true.

    AWS User Guide, "How to specify an alternative patch source repository (Linux)": a package whose release date
    is missing is not included by an ApprovalAfterDays filter, except when the baseline includes non-security
    updates. (The page "About predefined and custom patch baselines" instead falls back to the package build
    time, then to a delay of 0; a catalog has no build time, and approving an unknown date at once would defeat
    the delay, so patchflow follows the first page.)
    """
    if rule.ApproveAfterDays is None and rule.ApproveUntilDate is None:
        return _Verdict(patch, "approved", f"approved by rule {number}", rule.ComplianceLevel)
    condition = "ApproveAfterDays" if rule.ApproveAfterDays is not None else "ApproveUntilDate"
    if rule.EnableNonSecurity:
        reason = (
            f"approved by rule {number}; no release date, which {condition} lets through because "
            "EnableNonSecurity is true"
        )
        return _Verdict(patch, "approved", reason, rule.ComplianceLevel, undated=True)
    reason = (
        f"rule {number}: matches, but has no release date, and {condition} approves undated patches only "
        "when EnableNonSecurity is true"
    )
    return _Verdict(patch, "not_approved", reason, undated=True)


def _approve_by_list(patch: Patch, context: _Context, by_rules: _Verdict) -> _Verdict:
    """ApprovedPatches approve regardless of filters and rules; a patch approved both ways gets the more
    severe of the two compliance levels."""
    baseline = context.baseline
    approved_by = context.approved.match_patch(
        patch.name,
        patch.arch,
        patch.version,
        advisory_id=patch.advisory_id,
        cve_ids=patch.cve_ids,
        bugzilla_ids=patch.bugzilla_ids,
    )
    if approved_by is None:
        return by_rules
    by_rule = by_rules.kind == "approved"
    if not (patch.security or baseline.ApprovedPatchesEnableNonSecurity):
        if by_rule:
            return by_rules
        reason = (
            f"in ApprovedPatches '{approved_by}' but not a security update and "
            "ApprovedPatchesEnableNonSecurity is false"
        )
        return _Verdict(patch, "not_approved", reason)
    list_level = baseline.ApprovedPatchesComplianceLevel
    if not by_rule:
        return _Verdict(patch, "approved", f"in ApprovedPatches '{approved_by}'", _most_severe([list_level]))
    assert by_rules.level is not None
    return dataclasses.replace(
        by_rules,
        reason=f"{by_rules.reason}; also in ApprovedPatches '{approved_by}'",
        level=_most_severe([by_rules.level, list_level]),
    )


def _block_dependents(verdicts: list[_Verdict], rejected_list: PatchList) -> None:
    """BLOCK: anything depending (transitively) on a rejected package is rejected too.

    The blocked set is a fixpoint, and each blocked patch names the first of its dependencies that is rejected
    itself (else the first blocked one), so neither depends on the catalog's order.
    """
    rejected_names = {v.patch.name for v in verdicts if v.kind == "rejected"}

    def rejected(dep: str) -> bool:
        return dep in rejected_names or rejected_list.match_name(dep) is not None

    blocked_names = set(rejected_names)
    blocked: set[int] = set()
    changed = True
    while changed:
        changed = False
        for i, verdict in enumerate(verdicts):
            if verdict.kind == "rejected" or i in blocked:
                continue
            if any(dep in blocked_names or rejected(dep) for dep in verdict.patch.depends):
                blocked.add(i)
                blocked_names.add(verdict.patch.name)
                changed = True
    for i in blocked:
        depends = verdicts[i].patch.depends
        dep = next((d for d in depends if rejected(d)), None) or next(
            d for d in depends if d in blocked_names
        )
        why = f"blocked: depends on rejected package '{dep}' (RejectedPatchesAction BLOCK)"
        lost = verdicts[i].level if verdicts[i].kind == "approved" else None
        verdicts[i] = _Verdict(verdicts[i].patch, "rejected", why, lost, blocked_by=dep)


def _reject_versions_rejected_elsewhere(verdicts: list[_Verdict], family: str) -> None:
    """A package version listed twice (e.g. from two repositories) is rejected if any listing of it is."""
    rejected_versions = {
        (v.patch.name, v.patch.arch, versions.sort_key(family, v.patch.version))
        for v in verdicts
        if v.kind == "rejected"
    }
    if not rejected_versions:
        return
    for i, verdict in enumerate(verdicts):
        patch = verdict.patch
        if verdict.kind == "approved" and (
            patch.name,
            patch.arch,
            versions.sort_key(family, patch.version),
        ) in (rejected_versions):
            verdicts[i] = _Verdict(
                patch, "rejected", "the same package version is rejected in another catalog entry"
            )


def _latest_approved(verdicts: list[_Verdict], family: str) -> dict[tuple[str, str], int]:
    """(name, arch) → the index of its latest approved version: what the patch set pins."""
    best: dict[tuple[str, str], int] = {}
    for i, verdict in enumerate(verdicts):
        if verdict.kind != "approved":
            continue
        patch = verdict.patch
        current = best.get(patch.key)
        if current is None:
            best[patch.key] = i
            continue
        other = verdicts[current].patch
        order = versions.compare(family, patch.version, other.version)
        # Equal versions can be written differently (1.0 vs 1.00) or listed twice with other metadata:
        # break ties on content so the result never depends on catalog order.
        if order > 0 or (order == 0 and patch.model_dump_json() < other.model_dump_json()):
            best[patch.key] = i
    return best


def _explain(
    verdicts: list[_Verdict], latest: dict[tuple[str, str], int], baseline: Baseline
) -> list[Decision]:
    """The final decisions, their reasons completed: which version supersedes an approved one, and which
    pinned packages may still pull in a rejected one (ALLOW_AS_DEPENDENCY)."""
    pinned_index = set(latest.values())
    # Without BLOCK every rejected name is one RejectedPatches names (or a listing of such a version).
    rejected_names = {v.patch.name for v in verdicts if v.kind == "rejected"}
    dependents: dict[str, list[str]] = defaultdict(list)
    if baseline.RejectedPatchesAction == "ALLOW_AS_DEPENDENCY" and rejected_names:
        for i in pinned_index:
            for dep in verdicts[i].patch.depends:
                if dep in rejected_names:
                    dependents[dep].append(verdicts[i].patch.name)
    decisions: list[Decision] = []
    for i, verdict in enumerate(verdicts):
        patch, kind, reason = verdict.patch, verdict.kind, verdict.reason
        if kind == "approved" and i not in pinned_index:
            reason = f"{reason}; superseded in the patch set by {verdicts[latest[patch.key]].patch.version}"
        if kind == "rejected" and patch.name in dependents:
            users = ", ".join(sorted(set(dependents[patch.name])))
            reason = f"{reason}; may still be installed as a dependency of {users}"
        level = verdict.level if kind == "approved" else None
        decisions.append(Decision(patch, kind, reason, level, i in pinned_index))
    return decisions


def _blocked_updates(verdicts: list[_Verdict], family: str) -> tuple[PinnedPatch, ...]:
    """BLOCK: the approved versions a rejected dependency keeps out, the newest per package (name + arch) and
    product — what compliance reports an older installed version MISSING against (API reference,
    ``RejectedPatchesAction``: "the package being updated is reported as MISSING for SCAN operations and as
    FAILED for INSTALL operations")."""
    newest: dict[tuple[str, str, str | None], _Verdict] = {}
    for verdict in verdicts:
        if verdict.blocked_by is None or verdict.level is None:
            continue
        patch = verdict.patch
        key = (*patch.key, patch.product.lower() if patch.product is not None else None)
        current = newest.get(key)
        order = 1 if current is None else versions.compare(family, patch.version, current.patch.version)
        if (
            current is None
            or order > 0
            or (order == 0 and patch.model_dump_json() < current.patch.model_dump_json())
        ):
            newest[key] = verdict
    return tuple(
        dataclasses.replace(
            Decision(v.patch, "approved", v.reason, v.level, False).pinned(), blocked_by=v.blocked_by
        )
        for _, v in sorted(newest.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or ""))
    )


def _notes(verdicts: list[_Verdict]) -> list[str]:
    """What the operator should know about patches without a release date."""
    approved = sum(1 for v in verdicts if v.undated and v.kind == "approved")
    refused = sum(1 for v in verdicts if v.undated and v.kind != "approved")
    notes: list[str] = []
    if approved:
        notes.append(
            f"{approved} patch(es) without a release date approved by rules with EnableNonSecurity, "
            "which let undated patches through ApproveAfterDays/ApproveUntilDate"
        )
    if refused:
        notes.append(
            f"{refused} patch(es) without a release date not approved: a rule with ApproveAfterDays or "
            "ApproveUntilDate approves undated patches only when EnableNonSecurity is true"
        )
    return notes


def _pin(
    baseline: Baseline,
    patches: Sequence[Patch],
    decisions: list[Decision],
    blocked: tuple[PinnedPatch, ...],
    at: datetime,
    family: str,
) -> PatchSet:
    """The content-addressed patch set of the latest approved versions (and the blocked updates)."""
    pinned = tuple(sorted((d.pinned() for d in decisions if d.in_patch_set), key=lambda p: (p.name, p.arch)))
    canonical_baseline = baseline.canonical()
    digest = catalog_digest(patches)
    return PatchSet(
        id=PatchSet.content_id(canonical_baseline, digest, at, pinned, blocked),
        family=family,
        baseline=canonical_baseline,
        evaluated_at=at,
        catalog_digest=digest,
        patches=pinned,
        blocked=blocked,
    )
