"""Matching ApprovedPatches / RejectedPatches entries against packages, per package manager.

The formats are those of the AWS user guide page "Package name formats for approved and rejected patch
lists":

* yum/dnf (Amazon Linux, RHEL, CentOS, Oracle, Rocky, Alma) — Bugzilla IDs (digits only), CVE IDs and
  advisory IDs (approved list only), and package names built from the components of
  ``name.arch:epoch:version-release``: ``name``, ``name.arch``, ``name-version``, ``name-version-release``,
  ``name-version-release.arch``, ``version``, ``version-release``, ``epoch:version-release``,
  ``name-epoch:version-release``, ``name-epoch:version-release.arch``, ``epoch:name-version-release.arch``,
  ``name.arch:epoch:version-release`` — each with at most one ``*`` wildcard.
* zypper (SUSE) — as yum, plus ``…arch.rpm`` file names and SUSE patch (advisory) names such as
  ``SUSE-SLE-Module-Basesystem-15-SP5-2026-1234``, with at most one ``*``, in *both* lists.
* apt (Debian, Ubuntu, Raspberry Pi OS) — bare package names, matching every version and architecture.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from patchflow.core import versions

_BUGZILLA = re.compile(r"^\d+$")
_CVE = re.compile(r"^CVE-\d{4}-\d{4,}$", re.IGNORECASE)


@lru_cache(maxsize=65536)
def rpm_name_forms(name: str, arch: str, version: str, suse: bool = False) -> tuple[str, ...]:
    """Every documented spelling of one rpm package version, for matching list entries against."""
    epoch, ver, rel = versions.split_rpm_evr(version)
    e = epoch if epoch is not None else "0"
    vr = f"{ver}-{rel}" if rel is not None else ver
    forms = [
        name,
        f"{name}.{arch}",
        f"{name}-{ver}",
        f"{name}-{vr}",
        f"{name}-{vr}.{arch}",
        ver,
        vr,
        f"{e}:{vr}",
        f"{name}-{e}:{vr}",
        f"{name}-{e}:{vr}.{arch}",
        f"{e}:{name}-{vr}.{arch}",
        f"{name}.{arch}:{e}:{vr}",
    ]
    if suse:
        forms.append(f"{name}-{vr}.{arch}.rpm")
    return tuple(dict.fromkeys(forms))


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile("^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$", re.DOTALL)


@dataclass(frozen=True)
class ListEntry:
    """One compiled Approved/RejectedPatches entry."""

    text: str
    kind: str
    """``bugzilla``, ``cve``, ``advisory`` (approved lists on yum/zypper only) or ``package``."""
    regex: re.Pattern[str]
    id_regex: re.Pattern[str]
    """The entry as a case-insensitive glob, for matching advisory ids on zypper."""


class PatchList:
    """A compiled ApprovedPatches or RejectedPatches list for one package manager."""

    def __init__(self, entries: Sequence[str], package_manager: str):
        self.package_manager = package_manager
        self.entries: list[ListEntry] = []
        for text in entries:
            kind = "package"
            if package_manager in {"yum", "zypper"}:
                if _BUGZILLA.match(text):
                    kind = "bugzilla"
                elif _CVE.match(text):
                    kind = "cve"
            flags = re.IGNORECASE if (package_manager == "apt" or kind != "package") else 0
            regex = re.compile(_glob(text).pattern, flags)
            id_regex = re.compile(_glob(text).pattern, re.IGNORECASE)
            self.entries.append(ListEntry(text=text, kind=kind, regex=regex, id_regex=id_regex))
        self._package_entries = [e for e in self.entries if e.kind == "package"]

    def __bool__(self) -> bool:
        return bool(self.entries)

    def match_package(self, name: str, arch: str, version: str) -> str | None:
        """The first entry matching this package version by name (no IDs), or None."""
        if not self._package_entries:
            return None
        if self.package_manager == "apt":
            for entry in self._package_entries:
                if entry.regex.match(name):
                    return entry.text
            return None
        forms = rpm_name_forms(name, arch, version, self.package_manager == "zypper")
        for entry in self._package_entries:
            for form in forms:
                if entry.regex.match(form):
                    return entry.text
        return None

    def match_rejected(
        self, name: str, arch: str, version: str, *, advisory_id: str | None = None
    ) -> str | None:
        """The first entry rejecting a catalog patch: by package name, or on zypper also by its advisory (SUSE
        patch) name — the rejected list takes those there (User Guide, "Package name formats for approved and
        rejected patch lists", SLES)."""
        hit = self.match_package(name, arch, version)
        if hit is not None or self.package_manager != "zypper" or not advisory_id:
            return hit
        return next((e.text for e in self._package_entries if e.id_regex.match(advisory_id)), None)

    def match_name(self, name: str) -> str | None:
        """The first entry that names a package by bare name alone (used for dependency blocking)."""
        for entry in self._package_entries:
            if entry.regex.match(name):
                return entry.text
        return None

    def match_patch(
        self,
        name: str,
        arch: str,
        version: str,
        *,
        advisory_id: str | None = None,
        cve_ids: Sequence[str] = (),
        bugzilla_ids: Sequence[str] = (),
    ) -> str | None:
        """The first entry matching a catalog patch, by package name or (yum/zypper) by its IDs."""
        hit = self.match_package(name, arch, version)
        if hit is not None or self.package_manager == "apt":
            return hit
        for entry in self.entries:
            if entry.kind == "bugzilla":
                if entry.text in bugzilla_ids:
                    return entry.text
            elif entry.kind == "cve":
                if any(entry.text.upper() == c.upper() for c in cve_ids):
                    return entry.text
            elif advisory_id and self._names_advisory(entry, advisory_id):
                return entry.text
        return None

    def _names_advisory(self, entry: ListEntry, advisory_id: str) -> bool:
        """yum/dnf advisory ids are matched whole; SUSE patch names may carry a ``*`` (SLES list formats)."""
        if self.package_manager == "zypper":
            return entry.id_regex.match(advisory_id) is not None
        return entry.text.upper() == advisory_id.upper()
