"""The plain data executors and the domain exchange: installed packages, instances, install results.

Pure data (no I/O): the executor protocol in :mod:`patchflow.executors.base` speaks in these types, and the
domain (the wave model, emergency fix selection) reads them without depending on any executor.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

InstallStatus = Literal["succeeded", "failed", "timed_out", "undeliverable", "cancelled"]

#: Statuses that count against a stage's error budget: SSM's ``Command.ErrorCount`` is "the number of targets
#: for which the status is Failed or Execution Timed Out" (botocore's SSM service model). Undeliverable targets
#: are reported per instance but do not count unless a plan says so; ``cancelled`` ones (SSM ``Cancelled``, and
#: ``Terminated`` — cancelled by the system) are reported and never count.
ERROR_STATUSES: frozenset[str] = frozenset({"failed", "timed_out"})


@dataclass(frozen=True)
class Package:
    """An installed package version."""

    name: str
    arch: str
    version: str


@dataclass(frozen=True)
class RepoSource:
    """One of a baseline's ``Sources`` (``CreatePatchBaseline`` ``PatchSource``): a repository an install uses.

    AWS User Guide, "How to specify an alternative patch source repository (Linux)": on a node whose product
    is named, the patching operation uses exactly the baseline's sources for that product (they *replace* the
    node's repositories, they are not added to them), and afterwards "the repositories previously configured
    as the defaults for the node's operating system remain the defaults". Executors honour that for the
    install (see the README, "Custom repositories").
    """

    name: str
    products: tuple[str, ...]
    """SSM product names (``Ubuntu22.04``, ``Debian12``, ``AmazonLinux2023``), compared case-insensitively."""
    configuration: str
    """apt: one ``deb …`` line; yum/dnf: repo-file text with a ``[repo-id]`` section."""

    def applies_to(self, product: str | None) -> bool:
        """Whether a host of ``product`` uses this source (never when the host's product is unknown)."""
        if not product:
            return False
        return product.lower() in {p.lower() for p in self.products}

    def to_json(self) -> dict[str, Any]:
        """The ``PatchSource`` shape (``Name``, ``Products``, ``Configuration``)."""
        return {"Name": self.name, "Products": list(self.products), "Configuration": self.configuration}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RepoSource:
        """From a baseline's ``PatchSource`` (as a patch set stores its baseline)."""
        return cls(
            name=str(data["Name"]),
            products=tuple(str(p) for p in data.get("Products") or ()),
            configuration=str(data["Configuration"]),
        )


def sources_for(sources: Iterable[RepoSource], product: str | None) -> list[RepoSource]:
    """The sources a host of ``product`` uses, in baseline order (empty: the host keeps its own repositories)."""
    return [s for s in sources if s.applies_to(product)]


def source_products(sources: Sequence[RepoSource]) -> list[str]:
    """Every product the sources name, each once, for messages."""
    return list(dict.fromkeys(p for s in sources for p in s.products))


@dataclass(frozen=True)
class PackageChange:
    """One package an operation changed."""

    name: str
    arch: str
    from_version: str
    to_version: str


@dataclass(frozen=True)
class InstanceInfo:
    """A managed instance as discovery reports it."""

    instance_id: str
    tags: dict[str, str] = field(default_factory=dict)
    family: str | None = None
    """``deb`` or ``rpm``."""
    product: str | None = None
    """SSM product name, e.g. ``Ubuntu22.04``."""
    online: bool = True
    availability_zone: str | None = None
    """Where the instance runs (EC2's ``Placement.AvailabilityZone``, a fleet file's or inventory's
    ``availability_zone``); None when unknown. Disruption budgets and ``rollout: zone_by_zone`` group by it."""

    @property
    def patch_group(self) -> str | None:
        """The ``Patch Group`` tag, else ``PatchGroup`` (SSM's two spellings; the first wins if both exist)."""
        return self.tags.get("Patch Group", self.tags.get("PatchGroup"))


@dataclass(frozen=True)
class InstallResult:
    """What an install or restore did on one instance."""

    instance_id: str
    status: InstallStatus
    changed: tuple[PackageChange, ...] = ()
    rebooted: bool = False
    message: str = ""
    duration_seconds: float = 0.0
    pending_reboot: bool = False
    """Patches installed on the instance still wait for a reboot (SSM: ``INSTALLED_PENDING_REBOOT``, e.g. after
    a ``NoReboot`` install); the instance is non-compliant until it reboots."""
    boot_id: str = ""
    """A reboot's result: the instance's boot id after it came back ("" when unknown or not a reboot)."""

    @property
    def counts_as_error(self) -> bool:
        return self.status in ERROR_STATUSES


@dataclass(frozen=True)
class HealthResult:
    instance_id: str
    healthy: bool
    message: str = ""


@dataclass(frozen=True)
class CommandResult:
    """What one shell command (a lifecycle hook's ``command`` step) did on one instance."""

    instance_id: str
    exit_code: int
    """The command's exit status; -1 when it did not finish (timed out, undeliverable, cancelled)."""
    output: str = ""
    """The tail of its output (stdout, then stderr), or why it did not run."""
    duration_seconds: float = 0.0
    status: str = "finished"
    """``finished`` (``exit_code`` says how), ``timed_out`` or ``undeliverable``."""
