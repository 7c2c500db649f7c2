"""What the service reads on a client's behalf, bounded: uploaded documents, and plan files from the plans
directory only.

**Uploaded documents** (baselines, catalogs, inventories in request bodies) are parsed with their shape
checked first: YAML aliases and nesting deeper than :data:`MAX_YAML_DEPTH` are refused before a parser could
spend unbounded memory or recursion on them.

**Plans** are named by path in requests, so a path is a way into the server's file system. A plan is read
only if

* it resolves — symlinks included — inside the plans directory (``PATCHFLOW_API_PLANS_DIR``, by default
  ``$PATCHFLOW_DATA_DIR/plans``), as does every file it names (baseline, catalog, fleet, iCalendar freezes);
* it is a regular file (no device such as ``/dev/zero``, no FIFO that would block the reader), opened without
  following a symlink swapped in after the check;
* it is at most :data:`MAX_PLAN_BYTES` long, counted while reading;
* and it parses as a plan. Until it does, no error quotes it: a YAML syntax error gives its line and column
  but not the parser's words (they quote the offending text), and a document that is not plan-shaped (a
  mapping with ``name`` and ``stages``) is refused without naming any of its keys or values.

Every refusal is a :class:`~patchflow.core.plans.PlanError` (HTTP 422) saying what to do instead; those about
*where* a plan is or *what kind of file* it is are :class:`PlanAccessRefused`, which ``POST /plans/validate``
answers with 422 too rather than as an invalid plan.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from patchflow.core.documents import Document, PathPart, parse_document
from patchflow.core.plans import Plan, PlanError, parse_plan
from patchflow.errors import InputError, Problem

MAX_YAML_DEPTH = 64
"""Nesting of uploaded YAML/JSON documents: real baselines nest 6 deep; a 100,000-deep list would exhaust
the parser's recursion and is refused up front."""

MAX_PLAN_BYTES = 1024 * 1024
"""Largest plan file read (real plans are a few KB; the catalog and fleet they name are separate files)."""


class PlanAccessRefused(PlanError):
    """A plan path the service will not read: outside the plans directory, not a regular file, too large."""


_WITHHELD = "the parser's message is not shown, as it could quote the file; 'patchflow plan FILE' shows it"


# ---------------------------------------------------------------------------------------------- uploads


def check_yaml_shape(text: str, kind: str, error: type[InputError], *, aliases: bool = False) -> None:
    """Refuse YAML aliases and deep nesting before parsing: both make a small upload cost unbounded memory or
    recursion (a "billion laughs" document; ``[[[[…]]]]``). Syntax errors are left to the parser, which
    reports them with their line.

    Args:
        aliases: accept aliases (plan files, whose anchors the CLI accepts too: they are the operator's own).
    """
    depth = 0
    try:
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if not aliases and isinstance(event, yaml.AliasEvent):
                raise error(
                    "YAML aliases (*name) are not accepted in uploaded documents; write the values out",
                    source=f"request body: {kind}",
                )
            if isinstance(event, yaml.CollectionStartEvent):
                depth += 1
                if depth > MAX_YAML_DEPTH:
                    raise error(
                        f"nested more than {MAX_YAML_DEPTH} levels deep; no {kind} needs that",
                        source=f"request body: {kind}",
                    )
            elif isinstance(event, yaml.CollectionEndEvent):
                depth -= 1
    except yaml.YAMLError:
        return


def parse_upload(text: str, kind: str, error: type[InputError]) -> Document:
    """An uploaded document, parsed: JSON by the JSON parser, anything else as YAML (see
    :func:`check_yaml_shape`).

    JSON first, because a catalog is usually JSON and large: PyYAML reads JSON too, but in pure Python, some
    50 times slower than ``json`` — for a 20,000-patch catalog that was most of ``POST /baselines/evaluate``'s
    time (``bench/api_bench.py``). JSON has no aliases, and its parser refuses deep nesting by itself.

    Raises:
        error: not valid YAML/JSON, aliases, too deep, or beyond the parser's own limits.
    """
    source = f"request body: {kind}"
    if text.lstrip()[:1] in ("{", "["):
        try:
            return parse_document(text, source=source, kind=kind, error=error, as_json=True)
        except RecursionError:
            raise error(
                f"nested more than {MAX_YAML_DEPTH} levels deep; no {kind} needs that", source=source
            ) from None
        except InputError:
            pass  # not JSON after all (a YAML flow mapping?): the YAML parser below says what is wrong
    check_yaml_shape(text, kind, error)
    try:
        return parse_document(text, source=source, kind=kind, error=error)
    except InputError:
        raise
    except ValueError as exc:  # PyYAML's own limits, e.g. an integer of more than 4,300 digits
        raise error(f"not valid YAML: {exc}", source=source) from None


# ---------------------------------------------------------------------------------------------- plans


class PlansDirectory:
    """The one directory plans are read from on a client's behalf (see the module docstring).

    Args:
        root: the plans directory; it need not exist yet (every request then says to create it).
        max_bytes: the size limit of one plan file.
    """

    def __init__(self, root: Path, *, max_bytes: int = MAX_PLAN_BYTES) -> None:
        self.root = root.resolve()
        self.max_bytes = max_bytes

    def load(self, raw: str) -> Plan:
        """The plan ``raw`` names (relative to the plans directory, or absolute inside it), validated.

        Raises:
            PlanError: outside the directory, not a regular file, too large, not a plan, or invalid.
        """
        path = self.resolve(raw)
        text = self.read(path, raw)
        doc = self._parse(text, path)
        self._check_references(doc, path)
        return parse_plan(doc)

    def resolve(self, raw: str) -> Path:
        """The real path of the plan ``raw`` names, after every symlink, refused unless inside the directory."""
        if not self.root.is_dir():
            raise PlanAccessRefused(
                f"plan: the plans directory {self.root} does not exist; create it and put the plans the API "
                "may start there, or point PATCHFLOW_API_PLANS_DIR at them"
            )
        try:
            # Inside or not is decided before existence, so the answer never tells what exists outside.
            path = (self.root / raw).resolve()
            if not path.is_relative_to(self.root):
                raise PlanAccessRefused(
                    f"plan: {raw!r} is outside the plans directory {self.root} (PATCHFLOW_API_PLANS_DIR), or "
                    "a symlink leading out of it; name a plan file inside it"
                )
            return (self.root / raw).resolve(strict=True)
        except FileNotFoundError:
            raise PlanAccessRefused(
                f"plan file not found in the plans directory {self.root}: name a plan file inside it",
                source=raw,
            ) from None
        except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
            raise PlanAccessRefused(f"plan: cannot resolve {raw!r} ({exc.__class__.__name__})") from None

    def read(self, path: Path, raw: str) -> str:
        """The plan file's text: a regular file, at most ``max_bytes``, UTF-8."""
        try:
            # O_NOFOLLOW: a symlink swapped in since resolve() is refused; O_NONBLOCK: a FIFO cannot block us.
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise PlanAccessRefused(f"cannot open the plan file ({exc.strerror})", source=raw) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise PlanAccessRefused(
                    "a plan is a regular file; this is a directory or a device", source=raw
                )
            if info.st_size > self.max_bytes:
                raise PlanAccessRefused(self._too_large(info.st_size), source=raw)
            with os.fdopen(os.dup(fd), "rb") as handle:
                data = handle.read(self.max_bytes + 1)
        finally:
            os.close(fd)
        if len(data) > self.max_bytes:  # it grew while we looked
            raise PlanAccessRefused(self._too_large(len(data)), source=raw)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise PlanError(f"plan file is not UTF-8 text (byte {exc.start})", source=raw) from None

    def _too_large(self, size: int) -> str:
        return f"plan file is {size} bytes; plans are at most {self.max_bytes} bytes (1 MiB)"

    def _parse(self, text: str, path: Path) -> Document:
        """The document, if it is YAML/JSON shaped like a plan; every refusal before that quotes nothing."""
        source = str(path)
        try:
            check_yaml_shape(text, "plan", PlanError, aliases=True)
            doc = parse_document(
                text, source=source, kind="plan", error=PlanError, as_json=path.suffix == ".json"
            )
        except InputError as exc:
            lines = [
                Problem(path="", message="syntax error here", line=p.line) for p in exc.problems if p.line
            ]
            first = exc.summary.split(":")[
                0
            ]  # "not valid YAML", "plan file is empty", "nested more than 64 …"
            raise PlanError(f"{first}; {_WITHHELD}", source=source, problems=lines) from None
        except (ValueError, RecursionError):
            raise PlanError(f"not valid YAML; {_WITHHELD}", source=source) from None
        data = doc.data
        if not isinstance(data, dict) or "name" not in data or "stages" not in data:
            raise PlanError(
                "not a rollout plan: a plan is a YAML mapping with name, baseline, catalog, executor and "
                "stages (the file's content is not shown)",
                source=source,
            )
        return doc

    def _check_references(self, doc: Document, path: Path) -> None:
        """Every file the plan names resolves inside the plans directory too (before any of them is read)."""
        problems = [
            doc.problem(
                where,
                f"{value!r} is outside the plans directory {self.root}; keep the files a plan "
                "names inside it",
            )
            for where, value in _references(doc.data)
            if not (path.parent / value).resolve().is_relative_to(self.root)
        ]
        if problems:
            raise PlanAccessRefused("invalid rollout plan", source=str(path), problems=problems)


def _references(data: dict[str, Any]) -> Iterator[tuple[tuple[PathPart, ...], str]]:
    """The file paths a plan document names: baseline, catalog, the simulated fleet, iCalendar freezes."""
    candidates: list[tuple[tuple[PathPart, ...], Any]] = [
        (("baseline",), data.get("baseline")),
        (("catalog",), data.get("catalog")),
    ]
    executor = data.get("executor")
    if isinstance(executor, dict):
        candidates.append((("executor", "fleet"), executor.get("fleet")))
    freezes = data.get("freezes")
    if isinstance(freezes, list):
        candidates += [
            (("freezes", i, "ical"), f.get("ical")) for i, f in enumerate(freezes) if isinstance(f, dict)
        ]
    for where, value in candidates:
        if isinstance(value, str) and value:
            yield where, value
