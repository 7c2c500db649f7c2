"""The executor protocol every backend implements, and the plain data it exchanges.

Activities call executors; workflows never do. All operations that change an instance take an
``operation_id`` and are idempotent on it: a retried activity (after a worker crash, a timeout, a lost
response) calling ``install`` again with the same ``operation_id`` gets the recorded result of the first call
— waiting for it if it is still running — and the instance is never patched twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

InstallStatus = Literal["succeeded", "failed", "timed_out", "undeliverable"]

#: Statuses that count against a stage's error budget (SSM: Failed and Execution Timed Out). Undeliverable
#: targets are reported per instance but do not count unless a plan says so.
ERROR_STATUSES: frozenset[str] = frozenset({"failed", "timed_out"})


@dataclass(frozen=True)
class Package:
    """An installed package version."""

    name: str
    arch: str
    version: str


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

    @property
    def counts_as_error(self) -> bool:
        return self.status in ERROR_STATUSES


@dataclass(frozen=True)
class HealthResult:
    instance_id: str
    healthy: bool
    message: str = ""


class Executor(Protocol):
    """A fleet backend."""

    async def discover(self) -> list[InstanceInfo]:
        """Every instance the backend manages (online or not)."""
        ...

    async def scan(self, instance_id: str) -> list[Package]:
        """The packages installed on an instance now."""
        ...

    async def install(
        self, instance_id: str, patches: Sequence[Package], *, operation_id: str
    ) -> InstallResult:
        """Bring every installed package named in ``patches`` (name + arch) up to the pinned version.

        Packages not installed are never added; packages already at or above the pinned version are left alone.
        Idempotent on ``operation_id``.
        """
        ...

    async def restore(
        self, instance_id: str, packages: Sequence[Package], *, operation_id: str
    ) -> InstallResult:
        """Put the given packages back to the given versions (rollback). Idempotent on ``operation_id``."""
        ...

    async def operation_result(self, operation_id: str) -> InstallResult | None:
        """The recorded result of a finished operation, or None (never ran, or still running)."""
        ...

    async def health_check(self, instance_id: str) -> HealthResult:
        """Whether the instance's workload is healthy."""
        ...
