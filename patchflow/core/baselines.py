"""Patch baselines as code, with AWS ``CreatePatchBaseline`` semantics.

A baseline file holds the fields of ``CreatePatchBaseline`` in PascalCase, exactly as
``aws ssm get-patch-baseline`` prints them, so a baseline exported from AWS loads unchanged (the read-only
fields ``BaselineId``, ``PatchGroups``, ``CreatedDate`` and ``ModifiedDate`` are accepted and ignored).

Validation follows the AWS constraints (names, ranges, enum values, one of delay/date per rule, filter keys
valid for the OS, approved/rejected name formats per package manager). patchflow goes beyond SSM in one
place: Debian and Ubuntu rules may use ``ApproveAfterDays``/``ApproveUntilDate`` (SSM refuses them because
apt repositories carry no dates; patchflow uses the catalog's release dates). Such a baseline cannot be
exported back to AWS unchanged, and ``export --aws`` says so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from patchflow.core.documents import (
    Document,
    PathPart,
    dump_yaml,
    format_path,
    load_document,
    parse_path,
    validation_problems,
)
from patchflow.errors import BaselineError, ExportError, Problem

OperatingSystem = Literal[
    "WINDOWS",
    "AMAZON_LINUX",
    "AMAZON_LINUX_2",
    "AMAZON_LINUX_2022",
    "AMAZON_LINUX_2023",
    "UBUNTU",
    "REDHAT_ENTERPRISE_LINUX",
    "SUSE",
    "CENTOS",
    "ORACLE_LINUX",
    "DEBIAN",
    "MACOS",
    "RASPBIAN",
    "ROCKY_LINUX",
    "ALMA_LINUX",
]
ComplianceLevel = Literal["CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNSPECIFIED"]
RejectedPatchesAction = Literal["ALLOW_AS_DEPENDENCY", "BLOCK"]

#: Severity order of compliance levels, most severe first (used to pick the level of a patch approved twice).
COMPLIANCE_ORDER: tuple[str, ...] = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNSPECIFIED")

YUM_OSES = frozenset(
    {
        "AMAZON_LINUX",
        "AMAZON_LINUX_2",
        "AMAZON_LINUX_2022",
        "AMAZON_LINUX_2023",
        "REDHAT_ENTERPRISE_LINUX",
        "CENTOS",
        "ORACLE_LINUX",
        "ROCKY_LINUX",
        "ALMA_LINUX",
    }
)
APT_OSES = frozenset({"UBUNTU", "DEBIAN", "RASPBIAN"})
#: Where a SEVERITY filter value ``Medium`` also matches a patch rated ``Moderate`` (User Guide, "How patches are
#: installed": "For Amazon Linux 2022 and Amazon Linux 2023, a patch severity level of Medium is equivalent to a
#: severity of Moderate").
MEDIUM_IS_MODERATE = frozenset({"AMAZON_LINUX_2022", "AMAZON_LINUX_2023"})
#: Fields AWS applies to Windows Server managed nodes only (API reference, CreatePatchBaseline).
WINDOWS_ONLY_FIELDS = ("AvailableSecurityUpdatesComplianceStatus",)
ZYPPER_OSES = frozenset({"SUSE"})

#: Filter keys ``DescribePatchProperties`` documents per operating system.
FILTER_KEYS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(YUM_OSES | ZYPPER_OSES, ("PRODUCT", "CLASSIFICATION", "SEVERITY")),
    **dict.fromkeys(APT_OSES, ("PRODUCT", "PRIORITY", "SECTION")),
    "MACOS": ("PRODUCT", "CLASSIFICATION"),
    "WINDOWS": ("PRODUCT", "PRODUCT_FAMILY", "CLASSIFICATION", "MSRC_SEVERITY", "PATCH_SET"),
}

#: Closed value sets (``*`` is always allowed); keys not listed here (PRODUCT, SECTION, …) are free text.
FILTER_VALUES: dict[tuple[str, str], tuple[str, ...]] = {
    **{
        ("yum", "CLASSIFICATION"): ("Security", "Bugfix", "Enhancement", "Recommended", "Newpackage"),
        ("yum", "SEVERITY"): ("Critical", "Important", "Medium", "Moderate", "Low", "None"),
        ("zypper", "CLASSIFICATION"): ("Security", "Recommended", "Optional", "Feature", "Document", "Yast"),
        ("zypper", "SEVERITY"): ("Critical", "Important", "Moderate", "Low"),
        ("apt", "PRIORITY"): ("Required", "Important", "Standard", "Optional", "Extra"),
        ("windows", "MSRC_SEVERITY"): ("Critical", "Important", "Moderate", "Low", "Unspecified"),
        ("windows", "PATCH_SET"): ("OS", "APPLICATION"),
    }
}

_NAME_RE = re.compile(r"^[a-zA-Z0-9_\-.]{3,128}$")
_SOURCE_NAME_RE = re.compile(r"^[a-zA-Z0-9_\-.]{3,50}$")
_CVE_RE = re.compile(r"^CVE-\d{4}-\d{4,}$", re.IGNORECASE)
_BUGZILLA_RE = re.compile(r"^\d+$")
_ADVISORY_RE = re.compile(
    r"^(ALAS\d*|RHSA|RHBA|RHEA|ELSA|ELBA|ELEA|CESA|CEBA|CEEA|RLSA|RLBA|RLEA|ALSA|ALBA|ALEA|FEDORA|SUSE)-[\w.:\-]+$",
    re.IGNORECASE,
)
_DEB_NAME_RE = re.compile(r"^[A-Za-z0-9*][A-Za-z0-9+.\-*]*$")
_RPM_PATTERN_RE = re.compile(r"^[A-Za-z0-9_+.\-:~^*]+$")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=False)


class PatchFilter(_Model):
    Key: str
    Values: list[str] = Field(min_length=1, max_length=20)


class PatchFilterGroup(_Model):
    PatchFilters: list[PatchFilter] = Field(default_factory=list, max_length=4)


class PatchRule(_Model):
    PatchFilterGroup: PatchFilterGroup
    ComplianceLevel: ComplianceLevel = "UNSPECIFIED"
    ApproveAfterDays: StrictInt | None = None
    """Approve a patch this many days (0–360) after its release date, counted in UTC."""
    ApproveUntilDate: str | None = None
    """Approve patches released on or before this UTC day (``YYYY-MM-DD``, the whole day inclusive)."""
    EnableNonSecurity: StrictBool = False
    """Let the rule pick non-security updates; otherwise only security candidates are considered."""


class PatchRuleGroup(_Model):
    PatchRules: list[PatchRule] = Field(default_factory=list, max_length=10)


class PatchSource(_Model):
    Name: str
    Products: list[str] = Field(min_length=1, max_length=20)
    Configuration: str


class Baseline(_Model):
    """A patch baseline (the request of ``CreatePatchBaseline``, plus ``get-patch-baseline`` read-only fields)."""

    Name: str
    OperatingSystem: OperatingSystem = "WINDOWS"
    Description: str | None = None
    GlobalFilters: PatchFilterGroup = Field(default_factory=PatchFilterGroup)
    ApprovalRules: PatchRuleGroup = Field(default_factory=PatchRuleGroup)
    ApprovedPatches: list[str] = Field(default_factory=list, max_length=50)
    ApprovedPatchesComplianceLevel: ComplianceLevel = "UNSPECIFIED"
    ApprovedPatchesEnableNonSecurity: StrictBool = False
    RejectedPatches: list[str] = Field(default_factory=list, max_length=50)
    RejectedPatchesAction: RejectedPatchesAction = "ALLOW_AS_DEPENDENCY"
    Sources: list[PatchSource] = Field(default_factory=list, max_length=20)
    AvailableSecurityUpdatesComplianceStatus: Literal["COMPLIANT", "NON_COMPLIANT"] | None = None
    # Read-only fields printed by get-patch-baseline; accepted so AWS exports load unchanged.
    BaselineId: str | None = Field(default=None, exclude=True)
    PatchGroups: list[str] | None = Field(default=None, exclude=True)
    CreatedDate: Any = Field(default=None, exclude=True)
    ModifiedDate: Any = Field(default=None, exclude=True)
    Tags: list[dict[str, str]] | None = Field(default=None, exclude=True)
    ClientToken: str | None = Field(default=None, exclude=True)

    @property
    def package_manager(self) -> str:
        """``yum`` (also dnf), ``apt``, ``zypper``, ``windows`` or ``macos``."""
        if self.OperatingSystem in YUM_OSES:
            return "yum"
        if self.OperatingSystem in APT_OSES:
            return "apt"
        if self.OperatingSystem in ZYPPER_OSES:
            return "zypper"
        return self.OperatingSystem.lower()

    @property
    def family(self) -> str | None:
        """The version family of the OS's packages (``deb``/``rpm``), or None for Windows/macOS."""
        return {"yum": "rpm", "zypper": "rpm", "apt": "deb"}.get(self.package_manager)

    def canonical(self) -> dict[str, Any]:
        """The baseline's meaning as plain data: what a content-addressed patch set id is computed from."""
        return self.model_dump(mode="json", exclude_none=True)


_ALL_FIELDS = (
    set(Baseline.model_fields)
    | set(PatchRule.model_fields)
    | set(PatchFilter.model_fields)
    | set(PatchFilterGroup.model_fields)
    | set(PatchRuleGroup.model_fields)
    | set(PatchSource.model_fields)
)


def _classify_rpm_entry(entry: str) -> str:
    if _BUGZILLA_RE.match(entry):
        return "bugzilla"
    if _CVE_RE.match(entry):
        return "cve"
    if _ADVISORY_RE.match(entry):
        return "advisory"
    return "package"


def _check_list_entry(baseline: Baseline, entry: str, *, approved: bool) -> str | None:
    """Return why ``entry`` is not a valid Approved/RejectedPatches entry for the OS, or None."""
    pm = baseline.package_manager
    list_name = "ApprovedPatches" if approved else "RejectedPatches"
    if not 1 <= len(entry) <= 100:
        return "entries must be 1–100 characters long"
    if entry != entry.strip() or any(c.isspace() for c in entry):
        return f"{entry!r} contains whitespace; give one package name or ID per entry"
    if pm == "apt":
        if entry.count("*") > 1:
            return f"{entry!r} has more than one '*' wildcard; only one is allowed"
        if not _DEB_NAME_RE.match(entry):
            return (
                f"{entry!r} is not a package name; on {baseline.OperatingSystem} (apt) {list_name} takes bare "
                "package names only, e.g. 'openssl' — no version, architecture or '=' (it matches every version)"
            )
        return None
    if pm in {"yum", "zypper"}:
        kind = _classify_rpm_entry(entry)
        if kind != "package":
            # SLES takes patch (advisory) names in both lists (User Guide, "Package name formats for approved
            # and rejected patch lists"); yum/dnf rejected lists take package names only.
            if approved or (pm == "zypper" and kind == "advisory"):
                return None
            return (
                f"{entry!r} looks like a {'Bugzilla ID' if kind == 'bugzilla' else kind.upper() + ' ID'}; "
                f"RejectedPatches on {baseline.OperatingSystem} takes package names only "
                "(e.g. 'kernel-4.14.*' or 'dbus.x86_64'); IDs are allowed in ApprovedPatches"
            )
        if entry.count("*") > 1:
            return f"{entry!r} has more than one '*' wildcard; only one is allowed"
        if not _RPM_PATTERN_RE.match(entry):
            return (
                f"{entry!r} is not a package name; use name, name.arch, name-version[-release][.arch], "
                "name-epoch:version-release.arch or name.arch:epoch:version-release, with at most one '*'"
            )
        return None
    if pm == "macos" and "*" in entry:
        return f"{entry!r}: macOS lists take full package names only, no wildcards"
    return None


_Locate = Callable[[tuple[PathPart, ...], str], Problem]
"""Makes a located Problem from a path inside the baseline and a message."""


def check_baseline(baseline: Baseline, doc: Document | None = None) -> list[Problem]:
    """Semantic checks beyond field types: everything ``CreatePatchBaseline`` would refuse.

    Returns every problem found (empty when the baseline is valid).
    """
    problem = _locator(doc)
    return [
        *_check_name_and_description(baseline, problem),
        *_check_filter_group(baseline, baseline.GlobalFilters, ("GlobalFilters",), problem),
        *_check_rules(baseline, problem),
        *_check_patch_lists(baseline, problem),
        *_check_sources(baseline, problem),
        *_check_windows_only_fields(baseline, problem),
    ]


def _locator(doc: Document | None) -> _Locate:
    def problem(path: tuple[PathPart, ...], message: str) -> Problem:
        if doc is not None:
            return doc.problem(path, message)
        return Problem(path=format_path(path), message=message)

    return problem


def _check_name_and_description(baseline: Baseline, problem: _Locate) -> list[Problem]:
    problems: list[Problem] = []
    if not _NAME_RE.match(baseline.Name):
        problems.append(
            problem(
                ("Name",),
                f"{baseline.Name!r} is not a valid baseline name: 3–128 characters of letters, digits, '_', '-' and '.'",
            )
        )
    if baseline.Description is not None and not 1 <= len(baseline.Description) <= 1024:
        problems.append(problem(("Description",), "must be 1–1024 characters long"))
    return problems


def _check_filter_group(
    baseline: Baseline, group: PatchFilterGroup, path: tuple[PathPart, ...], problem: _Locate
) -> list[Problem]:
    """Filter keys valid for the OS, each once, and values from the key's closed set (if it has one)."""
    os_, pm = baseline.OperatingSystem, baseline.package_manager
    allowed_keys = FILTER_KEYS.get(os_, ())
    problems: list[Problem] = []
    seen: set[str] = set()
    for i, flt in enumerate(group.PatchFilters):
        fpath = (*path, "PatchFilters", i)
        key = flt.Key
        if key not in allowed_keys:
            hint = f" (keys are upper case: '{key.upper()}')" if key.upper() in allowed_keys else ""
            problems.append(
                problem(
                    (*fpath, "Key"),
                    f"filter key {key!r} is not valid for {os_}{hint}; use one of {', '.join(allowed_keys)}",
                )
            )
            continue
        if key in seen:
            problems.append(problem((*fpath, "Key"), f"filter key {key!r} appears twice in this group"))
        seen.add(key)
        closed = FILTER_VALUES.get((pm, key))
        for j, value in enumerate(flt.Values):
            if not 1 <= len(value) <= 64:
                problems.append(problem((*fpath, "Values", j), "filter values must be 1–64 characters long"))
            elif closed and value != "*" and value.lower() not in {c.lower() for c in closed}:
                problems.append(
                    problem(
                        (*fpath, "Values", j),
                        f"{value!r} is not a {key} value on {os_}; use '*' or one of {', '.join(closed)}",
                    )
                )
    return problems


def _check_rules(baseline: Baseline, problem: _Locate) -> list[Problem]:
    problems: list[Problem] = []
    for r, rule in enumerate(baseline.ApprovalRules.PatchRules):
        rpath: tuple[PathPart, ...] = ("ApprovalRules", "PatchRules", r)
        problems += _check_filter_group(
            baseline, rule.PatchFilterGroup, (*rpath, "PatchFilterGroup"), problem
        )
        problems += _check_rule_approval(baseline, rule, rpath, problem)
        if rule.EnableNonSecurity and baseline.package_manager == "windows":
            problems.append(problem((*rpath, "EnableNonSecurity"), "EnableNonSecurity applies to Linux only"))
    return problems


def _check_rule_approval(
    baseline: Baseline, rule: PatchRule, rpath: tuple[PathPart, ...], problem: _Locate
) -> list[Problem]:
    """One of ApproveAfterDays (0–360) and ApproveUntilDate (a date) per rule; apt rules may have neither."""
    problems: list[Problem] = []
    has_days = rule.ApproveAfterDays is not None
    has_date = rule.ApproveUntilDate is not None
    if has_days and has_date:
        problems.append(
            problem(
                rpath, "set either ApproveAfterDays or ApproveUntilDate, not both (AWS allows one per rule)"
            )
        )
    elif not has_days and not has_date and baseline.package_manager != "apt":
        problems.append(
            problem(
                rpath,
                f"a rule on {baseline.OperatingSystem} needs ApproveAfterDays (0–360) or ApproveUntilDate "
                "(YYYY-MM-DD); use ApproveAfterDays: 0 to approve on release",
            )
        )
    if rule.ApproveAfterDays is not None and not 0 <= rule.ApproveAfterDays <= 360:
        problems.append(
            problem((*rpath, "ApproveAfterDays"), f"{rule.ApproveAfterDays} is out of range; use 0–360 days")
        )
    if rule.ApproveUntilDate is not None:
        try:
            if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", rule.ApproveUntilDate):
                raise ValueError
            date.fromisoformat(rule.ApproveUntilDate)
        except ValueError:
            problems.append(
                problem(
                    (*rpath, "ApproveUntilDate"),
                    f"{rule.ApproveUntilDate!r} is not a date; use YYYY-MM-DD, e.g. 2026-11-30",
                )
            )
    return problems


def _check_patch_lists(baseline: Baseline, problem: _Locate) -> list[Problem]:
    """ApprovedPatches and RejectedPatches entries in the OS's formats."""
    problems: list[Problem] = []
    for list_name, entries, approved in (
        ("ApprovedPatches", baseline.ApprovedPatches, True),
        ("RejectedPatches", baseline.RejectedPatches, False),
    ):
        for i, entry in enumerate(entries):
            why = _check_list_entry(baseline, entry, approved=approved)
            if why:
                problems.append(problem((list_name, i), why))
    if baseline.ApprovedPatchesEnableNonSecurity and baseline.package_manager == "windows":
        problems.append(
            problem(
                ("ApprovedPatchesEnableNonSecurity",),
                "ApprovedPatchesEnableNonSecurity applies to Linux only",
            )
        )
    return problems


def _check_windows_only_fields(baseline: Baseline, problem: _Locate) -> list[Problem]:
    """Windows-only fields on another OS: AWS documents them for Windows Server managed nodes only."""
    if baseline.OperatingSystem == "WINDOWS":
        return []
    return [
        problem(
            (name,),
            f"{name} applies to Windows Server baselines only, not {baseline.OperatingSystem}; remove it (on Linux, "
            "unapproved security updates are simply not installed and do not count against compliance)",
        )
        for name in WINDOWS_ONLY_FIELDS
        if getattr(baseline, name) is not None
    ]


def _check_sources(baseline: Baseline, problem: _Locate) -> list[Problem]:
    """Sources: Linux only, named, with a repository configuration in the package manager's format."""
    pm = baseline.package_manager
    problems: list[Problem] = []
    if baseline.Sources and pm in {"windows", "macos"}:
        problems.append(
            problem(
                ("Sources",), f"Sources (custom repositories) are Linux only, not {baseline.OperatingSystem}"
            )
        )
    for s, source in enumerate(baseline.Sources):
        spath: tuple[PathPart, ...] = ("Sources", s)
        if not _SOURCE_NAME_RE.match(source.Name):
            problems.append(
                problem(
                    (*spath, "Name"), f"{source.Name!r}: 3–50 characters of letters, digits, '_', '-' and '.'"
                )
            )
        if not 1 <= len(source.Configuration) <= 1024:
            problems.append(problem((*spath, "Configuration"), "must be 1–1024 characters long"))
        elif pm == "apt" and len(source.Configuration.strip().splitlines()) != 1:
            problems.append(
                problem(
                    (*spath, "Configuration"),
                    "an apt source is a single line, e.g. 'deb http://security.ubuntu.com/ubuntu jammy-security main'",
                )
            )
        elif pm in {"yum", "zypper"} and "[" not in source.Configuration:
            problems.append(
                problem(
                    (*spath, "Configuration"),
                    "a yum/dnf source is repo-file text with a [repo-id] section, e.g. "
                    "'[my-repo]\\nname=My repo\\nbaseurl=https://example.com/repo\\nenabled=1'",
                )
            )
        for p, product in enumerate(source.Products):
            if not 1 <= len(product) <= 128:
                problems.append(
                    problem((*spath, "Products", p), "product names must be 1–128 characters long")
                )
    return problems


def parse_baseline(doc: Document) -> Baseline:
    """Validate a parsed baseline document against the CreatePatchBaseline constraints."""
    if not isinstance(doc.data, dict):
        raise BaselineError(
            f"a baseline must be a mapping of CreatePatchBaseline fields, got {type(doc.data).__name__}",
            source=doc.source,
        )
    try:
        baseline = Baseline.model_validate(doc.data)
    except ValidationError as exc:
        # Report every problem at once: the field errors, and what the semantic checks find in the rest.
        problems = validation_problems(exc, doc, known_fields=_ALL_FIELDS)
        raise BaselineError(
            "invalid baseline",
            source=doc.source,
            problems=problems + _Pruned(doc).rest_problems(exc, problems),
        ) from None
    problems = check_baseline(baseline, doc)
    if problems:
        raise BaselineError("invalid baseline", source=doc.source, problems=problems)
    return baseline


def _child(node: Any, part: PathPart) -> Any:
    """``node[part]`` for a mapping key or a list index it has, else None."""
    if isinstance(node, dict):
        return node.get(part)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


class _Pruned:
    """A copy of a baseline document without the parts pydantic refused, so that the semantic checks can look
    at everything else: a refused field is removed, a missing required one takes its list item or mapping
    with it, a missing or refused ``Name`` gets a placeholder."""

    def __init__(self, doc: Document) -> None:
        from copy import deepcopy

        self.doc = doc
        self.data: Any = deepcopy(doc.data)
        self.removed: list[tuple[PathPart, ...]] = []
        """Original paths of what was removed."""
        self.gone: dict[tuple[PathPart, ...], list[int]] = {}
        """Original path of a list → original indices of its removed items."""

    def rest_problems(self, exc: ValidationError, reported: list[Problem]) -> list[Problem]:
        """The semantic problems of what is left, located in the original document, minus those that could be
        artefacts of the removal (about a removed part or its containers) or were reported already."""
        error = exc
        for _ in range(10):
            for err in error.errors(include_url=False):
                loc = tuple(part for part in err["loc"] if not (isinstance(part, str) and "[" in part))
                if not self._remove(loc, missing=err["type"] == "missing"):
                    return []
            try:
                partial = Baseline.model_validate(self.data)
                break
            except ValidationError as again:
                error = again
        else:
            return []
        known = {(p.path, p.message) for p in reported}
        out: list[Problem] = []
        for problem in check_baseline(partial):
            path = self._original(parse_path(problem.path))
            if any(path[: len(r)] == r or r[: len(path)] == path for r in self.removed):
                continue
            located = self.doc.problem(path, problem.message)
            if (located.path, located.message) not in known:
                out.append(located)
        return out

    def _remove(self, loc: tuple[PathPart, ...], *, missing: bool) -> bool:
        if loc[:1] == ("Name",):
            self.data["Name"] = "placeholder-name"
            self.removed.append(("Name",))
            return True
        target = loc[:-1] if missing else loc  # a missing field: remove what should have held it
        if not target:
            return False
        parent: Any = self.data
        for part in target[:-1]:
            parent = _child(parent, part)
            if parent is None:
                return True  # removed with an enclosing part already
        last = target[-1]
        original = self._original(target)
        if isinstance(parent, dict) and isinstance(last, str) and last in parent:
            del parent[last]
        elif isinstance(parent, list) and isinstance(last, int) and 0 <= last < len(parent):
            del parent[last]
            self.gone.setdefault(original[:-1], []).append(int(original[-1]))
        else:
            return True
        self.removed.append(original)
        return True

    def _original(self, path: tuple[PathPart, ...]) -> tuple[PathPart, ...]:
        """``path`` in the pruned data → the same place in the original document."""
        out: list[PathPart] = []
        for part in path:
            if isinstance(part, int):
                for removed in sorted(self.gone.get(tuple(out), [])):
                    if part >= removed:
                        part += 1
            out.append(part)
        return tuple(out)


def load_baseline(path: str | Path) -> Baseline:
    """Load and validate a baseline file (YAML or JSON)."""
    return parse_baseline(load_document(path, kind="baseline", error=BaselineError))


def export_aws(baseline: Baseline) -> dict[str, Any]:
    """The baseline as a ``CreatePatchBaseline`` request body (``aws ssm create-patch-baseline --cli-input-json``).

    Raises:
        ExportError: the baseline uses a patchflow extension AWS would refuse (approval delays on apt systems).
    """
    problems: list[Problem] = []
    if baseline.package_manager == "apt":
        for r, rule in enumerate(baseline.ApprovalRules.PatchRules):
            for field_name in ("ApproveAfterDays", "ApproveUntilDate"):
                if getattr(rule, field_name) is not None:
                    problems.append(
                        Problem(
                            path=f"ApprovalRules.PatchRules[{r}].{field_name}",
                            message=(
                                f"AWS does not support {field_name} on {baseline.OperatingSystem}; patchflow "
                                "enforces it itself from catalog release dates. Remove it to export, or keep "
                                "the baseline in patchflow and install pinned patch sets instead"
                            ),
                        )
                    )
    if problems:
        raise ExportError("baseline cannot be exported to AWS unchanged", problems=problems)
    body = baseline.model_dump(mode="json", exclude_none=True)
    return body


def dump_baseline(body: dict[str, Any], fmt: Literal["json", "yaml"]) -> str:
    """Serialise a baseline body for writing to a file."""
    if fmt == "json":
        return json.dumps(body, indent=2) + "\n"
    return dump_yaml(body, sort_keys=False, allow_unicode=True)
