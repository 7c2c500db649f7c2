"""patchflow's error hierarchy.

Every error a user can trigger says *what* is wrong, *where* (file, line, field path) and *how* to fix it.
The CLI prints ``str(error)`` and exits with :attr:`PatchflowError.exit_code`; it never shows a traceback.

Class tree::

    PatchflowError                 base of everything patchflow raises on purpose
    ├── InputError                 a file, argument or value supplied by the user is wrong (exit code 2)
    │   ├── InvalidVersionError    a deb/rpm version string that dpkg or rpm would refuse
    │   ├── BaselineError          a baseline file breaks the CreatePatchBaseline constraints
    │   ├── CatalogError           a patch catalog file is malformed
    │   ├── InventoryError         an instance inventory file is malformed
    │   └── ExportError            a baseline cannot be written in the requested format
    └── NotFoundError              something named by id does not exist (exit code 3)

Activities turn these into ``temporalio.exceptions.ApplicationError(type=<class name>, non_retryable=True)``
at the Temporal boundary (input errors never get better by retrying).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One located problem inside an input file.

    Attributes:
        path: the field path inside the document, e.g. ``ApprovalRules.PatchRules[0].ApproveAfterDays``;
            empty for the document as a whole.
        message: what is wrong and what is allowed instead.
        line: 1-based line number in the source file, when known.
    """

    path: str
    message: str
    line: int | None = None

    def render(self, source: str | None) -> str:
        where = source or "<input>"
        if self.line is not None:
            where = f"{where}:{self.line}"
        if self.path:
            where = f"{where}: {self.path}"
        return f"{where}: {self.message}"


class PatchflowError(Exception):
    """Base class of every error patchflow raises deliberately."""

    exit_code = 1


class InputError(PatchflowError):
    """Something the user supplied is wrong.

    Carries one or more :class:`Problem` s so a single run reports every mistake in a file, not just the
    first one.
    """

    exit_code = 2

    def __init__(self, message: str, *, source: str | None = None, problems: list[Problem] | None = None):
        self.source = source
        self.problems = list(problems or [])
        self.summary = message
        super().__init__(self._render())

    def _render(self) -> str:
        if not self.problems:
            return f"{self.source}: {self.summary}" if self.source else self.summary
        head = f"{self.summary} ({len(self.problems)} problem{'s' if len(self.problems) != 1 else ''})"
        lines = [head] + ["  " + p.render(self.source) for p in self.problems]
        return "\n".join(lines)


class InvalidVersionError(InputError, ValueError):
    """A version string that the package manager of its family would refuse to parse."""


class BaselineError(InputError):
    """A baseline file breaks the AWS CreatePatchBaseline constraints or patchflow's extensions."""


class CatalogError(InputError):
    """A patch catalog file is malformed."""


class InventoryError(InputError):
    """An inventory file is malformed."""


class ExportError(InputError):
    """A baseline cannot be exported in the requested format without losing meaning."""


class NotFoundError(PatchflowError):
    """Something referred to by id (a pinned patch set, a wave, …) does not exist."""

    exit_code = 3
