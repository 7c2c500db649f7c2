"""Patch Manager scan results → patchflow's catalog and inventory formats, so patchflow's baseline engine decides.

:meth:`patchflow.executors.ssm.SsmExecutor.collect` runs ``AWS-RunPatchBaseline`` ``Operation=Scan`` on each
instance, reads ``DescribeInstancePatches`` (and ``DescribeInstancePatchStates``) and lists the installed
packages; this module turns what it gathered into the two files every other patchflow command reads:

* a **catalog** (:mod:`patchflow.core.catalog`): one entry per *available* package version. Only ``MISSING`` and
  ``FAILED`` rows name a version the node does not have yet (``../shared/reference/ssm-patch-manager.md`` §4.1,
  §4.3), so only they become candidates; ``INSTALLED*`` rows name versions already on the node. The same
  version seen on several instances of one product is one entry (CVE lists merged).
* an **inventory** (:func:`patchflow.core.compliance.parse_inventory`): per instance its platform, patch group,
  installed packages, ``failed`` (``FAILED`` rows) and ``pending_reboot`` (``INSTALLED_PENDING_REBOOT`` rows).
  Installed versions come from the package listing, not from the compliance rows: a ``MISSING`` row carries
  the *available* version, so the installed version of exactly the packages that matter is not in them.

Field mapping (Linux rows: ``KBId`` = ``name.arch``, ``Title`` = ``name.arch:epoch:version-release``, apt titles
possibly without the epoch; a zero epoch is dropped, as everywhere in patchflow):

============== ================================================================================================
catalog field  from
============== ================================================================================================
name, arch     ``KBId`` split at its last dot (package names may contain dots, architectures do not)
version        ``Title`` after ``KBId:``
family,product the instance's platform (``deb``/``rpm``; ``Ubuntu22.04``, ``AmazonLinux2023``, …)
classification ``Classification`` (yum/dnf: the update notice type, e.g. ``Security``, ``Bugfix``)
severity       ``Severity`` (yum/dnf: the notice severity, e.g. ``Critical``, ``Important``)
priority       apt only: ``Severity`` when it is a Debian priority (``Required`` … ``Extra``) — what
               UBUNTU/DEBIAN baselines filter on with ``PRIORITY``
section        apt only: ``Classification`` — what ``SECTION`` filters match
cve_ids        ``CVEIds`` (SSM fills it for MISSING/FAILED rows only)
release_date   always null: compliance rows carry no release date. An undated patch passes an ApproveAfterDays or
               ApproveUntilDate rule only when the rule has EnableNonSecurity (User Guide, "Using alternative
               patch source repositories"); the evaluation says so per patch
security       rpm: the row has a ``Classification`` (it comes from an ``updateinfo.xml`` notice, patchflow's
               definition of a yum/dnf security source); deb: the row lists CVEs or says "security"
============== ================================================================================================

Limits worth knowing: Patch Manager reports as ``MISSING`` only what the *node's own* SSM baseline approves, so
the catalog can only be narrowed by patchflow's baseline, never widened (a node scanned with
``AWS-UbuntuDefaultPatchBaseline`` reports no non-security updates). ``INSTALLED`` packages get no catalog
entry, so patchflow's compliance reports an up-to-date package ``INSTALLED_OTHER`` (compliant) rather than
``INSTALLED``. The Debian priority/section mapping follows what apt nodes put in the two generic compliance
fields; a node whose rows carry neither leaves ``priority`` null, which ``PRIORITY`` filters other than ``*``
do not match.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from patchflow.core import versions
from patchflow.errors import InvalidVersionError
from patchflow.executors.base import Package

if TYPE_CHECKING:  # ssm.py imports this module; the row type is only needed for annotations
    from patchflow.executors.ssm import InstancePatch

__all__ = [
    "CANDIDATE_STATES",
    "Collection",
    "InstanceScan",
    "build_collection",
    "catalog_entries",
    "inventory_entry",
    "merge_catalog",
]

CANDIDATE_STATES = frozenset({"MISSING", "FAILED"})
"""Compliance states whose row names an available version the node does not have: catalog candidates."""
DEBIAN_PRIORITIES = frozenset({"required", "important", "standard", "optional", "extra"})


@dataclass(frozen=True)
class InstanceScan:
    """Everything one instance's scan gathered (the input of the conversion; built by ``SsmExecutor``)."""

    instance_id: str
    family: str
    """``deb`` or ``rpm``."""
    product: str | None
    patch_group: str | None
    installed: tuple[Package, ...]
    """From the package listing (``dpkg-query``/``rpm -qa``)."""
    patches: tuple[InstancePatch, ...]
    """``DescribeInstancePatches`` rows after the Scan."""


class Collection(NamedTuple):
    """A fleet scan in patchflow's formats, plus what could not be turned into them (never silently dropped)."""

    catalog: list[dict[str, Any]]
    """Patch-shaped dicts (:class:`patchflow.core.catalog.Patch`), JSON-ready, one per product and version."""
    inventory: list[dict[str, Any]]
    """Instance dicts as :func:`patchflow.core.compliance.parse_inventory` reads them, sorted by instance id."""
    skipped: dict[str, str]
    """Instance id → why it is not in the inventory (offline, unmanaged, not Linux, the scan failed, …)."""
    notes: list[str]
    """Compliance rows that could not be used (unparsable KBId or version), one line each."""

    def only(self, family: str) -> Collection:
        """The part for one package family: a baseline evaluates one family's catalog at a time."""
        return Collection(
            [p for p in self.catalog if p["family"] == family],
            [i for i in self.inventory if i["platform"]["family"] == family],
            dict(self.skipped),
            list(self.notes),
        )

    def write(self, catalog_path: str | Path, inventory_path: str | Path) -> None:
        """Write the catalog and the inventory as JSON files (``load_catalog``/``load_inventory`` read them)."""
        for path, data in ((catalog_path, self.catalog), (inventory_path, self.inventory)):
            Path(path).write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def catalog_entries(scan: InstanceScan, notes: list[str] | None = None) -> list[dict[str, Any]]:
    """The catalog candidates of one instance: its ``MISSING`` and ``FAILED`` rows as Patch-shaped dicts.

    Rows that cannot be parsed are left out and described in ``notes`` (if given).
    """
    out: list[dict[str, Any]] = []
    for row in scan.patches:
        if row.state not in CANDIDATE_STATES:
            continue
        problem = _row_problem(scan, row)
        if problem:
            if notes is not None:
                notes.append(
                    f"{scan.instance_id}: {row.state} row {row.kb_id!r} ({row.title!r}) ignored: {problem}"
                )
            continue
        classification = row.classification.strip() or None
        severity = row.severity.strip() or None
        deb = scan.family == "deb"
        out.append(
            {
                "name": row.name,
                "arch": row.arch,
                "version": row.version,
                "family": scan.family,
                "product": scan.product,
                "classification": classification,
                "severity": severity,
                "priority": severity if deb and (severity or "").lower() in DEBIAN_PRIORITIES else None,
                "section": classification if deb else None,
                "cve_ids": sorted(set(row.cve_ids)),
                "release_date": None,
                "security": _security(scan.family, classification, row.cve_ids),
            }
        )
    return out


def inventory_entry(scan: InstanceScan) -> dict[str, Any]:
    """One instance in the inventory format: installed packages from the listing, failed and pending-reboot
    packages from the compliance rows."""

    def refs(state: str) -> list[dict[str, str]]:
        keys = sorted({(r.name, r.arch) for r in scan.patches if r.state == state and r.name})
        return [{"name": name, "arch": arch} for name, arch in keys]

    return {
        "instance_id": scan.instance_id,
        "platform": {"family": scan.family, "product": scan.product},
        "patch_group": scan.patch_group,
        "installed": [
            {"name": p.name, "arch": p.arch, "version": p.version}
            for p in sorted(scan.installed, key=lambda p: (p.name, p.arch))
        ],
        "failed": refs("FAILED"),
        "pending_reboot": refs("INSTALLED_PENDING_REBOOT"),
    }


def merge_catalog(entries: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per (family, product, name, arch, version), in a stable order.

    A fleet reports the same update once per instance. Merged entries keep the first non-null metadata (the
    caller passes instances in id order, so the result does not depend on scan timing), the union of the
    CVE ids, and ``security`` if any report said so.
    """
    merged: dict[tuple[str, str | None, str, str, str], dict[str, Any]] = {}
    for entry in entries:
        key = (entry["family"], entry["product"], entry["name"], entry["arch"], entry["version"])
        have = merged.get(key)
        if have is None:
            merged[key] = {**entry, "cve_ids": sorted(set(entry["cve_ids"]))}
            continue
        for field in ("classification", "severity", "priority", "section"):
            if have[field] is None:
                have[field] = entry[field]
        have["cve_ids"] = sorted(set(have["cve_ids"]) | set(entry["cve_ids"]))
        have["security"] = have["security"] or entry["security"]
    return [
        merged[key]
        for key in sorted(merged, key=lambda k: (k[0], k[1] or "", k[2], k[3], versions.sort_key(k[0], k[4])))
    ]


def build_collection(scans: Sequence[InstanceScan], skipped: dict[str, str] | None = None) -> Collection:
    """Catalog and inventory of a set of instance scans (any order; the output is sorted)."""
    ordered = sorted(scans, key=lambda s: s.instance_id)
    notes: list[str] = []
    catalog = merge_catalog(entry for scan in ordered for entry in catalog_entries(scan, notes))
    inventory = [inventory_entry(scan) for scan in ordered]
    return Collection(catalog, inventory, dict(sorted((skipped or {}).items())), notes)


def _row_problem(scan: InstanceScan, row: InstancePatch) -> str:
    if not row.name or not row.arch:
        return "KBId is not name.arch"
    try:
        versions.validate(scan.family, row.version)
    except InvalidVersionError as exc:
        return exc.summary
    return ""


def _security(family: str, classification: str | None, cve_ids: Sequence[str]) -> bool:
    if family == "rpm":
        return classification is not None
    return bool(cve_ids) or "security" in (classification or "").lower()
