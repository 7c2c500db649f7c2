"""Loading YAML/JSON input files with located errors.

Every input file (baseline, catalog, inventory, plan, fleet, freeze file) and every document the REST API
receives goes through :func:`parse_document`, so every error message can point at ``file:line: field.path``.
Line numbers are found lazily — only when an error must be reported — because composing a YAML node tree is
far slower than parsing a large JSON catalog.

The loader refuses two shapes no patchflow document needs, because both let a few bytes cost unbounded
memory or recursion: YAML aliases (``*name``: a "billion laughs" file of a few hundred bytes expands to
gigabytes, and ``&a [*a]`` is a cycle) and nesting deeper than :data:`MAX_DEPTH` levels (``[[[[…]]]]``).
Both are refused with their line, before anything walks the data.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from patchflow.errors import InputError, Problem

PathPart = str | int

MAX_DEPTH = 64
"""Deepest nesting of mappings and lists a document may have. The deepest patchflow document (a baseline's
``ApprovalRules.PatchRules[0].PatchFilterGroup.PatchFilters[0].Values``) nests 7 levels; deeper input is a
mistake or an attack, and would exhaust Python's recursion in the parser or in whatever walks the data."""


TOO_DEEP = f"nested more than {MAX_DEPTH} levels deep"
DEEPEST_HINT = f"level {MAX_DEPTH + 1} opens here; no patchflow document nests more than a few levels"


class _RefusedShape(yaml.MarkedYAMLError):
    """Valid YAML that patchflow refuses (an alias, too deep): reported as itself, not as a syntax error."""


class _StringDatesLoader(yaml.SafeLoader):
    """SafeLoader that keeps ``2026-01-31`` as a string and refuses aliases and deep nesting.

    PyYAML turns unquoted dates into ``datetime.date``; AWS fields such as ``ApproveUntilDate`` are strings
    and must round-trip unchanged. The composer is where aliases are resolved and where nesting recurses, so
    both limits are checked there, for :func:`yaml.load` and :func:`yaml.compose` (the line map) alike.
    """

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _RefusedShape(
                context="YAML aliases (*name) are not accepted",
                problem=f"alias *{event.anchor}: write the values out (an alias lets a few bytes expand "
                "without bound; PyYAML writes aliases for repeated objects unless its Dumper's ignore_aliases "
                "returns True)",
                problem_mark=event.start_mark,
            )
        if not self.check_event(yaml.CollectionStartEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _RefusedShape(
                    context=TOO_DEEP,
                    problem=DEEPEST_HINT,
                    problem_mark=self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


_StringDatesLoader.yaml_implicit_resolvers = {
    key: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for key, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.copy().items()
}


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> Any:
    """Refuse duplicate keys: in a baseline kept as code, a second ``Name:`` silently winning is a bug."""
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call]
        try:
            first = seen.get(key)
        except TypeError:  # unhashable key: the constructor below reports it
            continue
        if first is not None:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first defined on line {first})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


_StringDatesLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates
)


class _DuplicateKey(ValueError):
    """A JSON object names a key twice (the JSON decoder has no position to give)."""


def _no_duplicate_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _DuplicateKey(f"duplicate key {key!r}")
        out[key] = value
    return out


def _too_deep(data: Any) -> bool:
    """Whether parsed JSON nests more than :data:`MAX_DEPTH` levels (iterative: the data may be deep)."""
    stack: list[tuple[Any, int]] = [(data, 1)] if isinstance(data, dict | list) else []
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            return True
        children = node.values() if isinstance(node, dict) else node
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


def _depth_mark(text: str) -> tuple[int, int]:
    """(line, column), 1-based, of the bracket that opens level :data:`MAX_DEPTH` + 1 of a JSON text."""
    depth, line, column, in_string, escaped = 0, 1, 0, False, False
    for char in text:
        column += 1
        if char == "\n":
            line, column = line + 1, 0
        elif escaped:
            escaped = False
        elif in_string:
            escaped = char == "\\"
            in_string = char != '"'
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                break
        elif char in "]}":
            depth -= 1
    return line, column


class _NoAliasDumper(yaml.SafeDumper):
    """Writes shared values out in full: patchflow refuses aliases when it reads YAML, so it never writes them."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_yaml(data: Any, **options: Any) -> str:
    """``yaml.safe_dump`` without anchors and aliases, so every YAML file patchflow writes it can read back."""
    return yaml.dump(data, Dumper=_NoAliasDumper, **options)


def format_path(parts: Sequence[PathPart]) -> str:
    """Render ``("ApprovalRules", "PatchRules", 0, "ApproveAfterDays")`` as ``ApprovalRules.PatchRules[0].ApproveAfterDays``."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def parse_path(text: str) -> tuple[PathPart, ...]:
    """The inverse of :func:`format_path`: ``ApprovalRules.PatchRules[0].ApproveAfterDays`` → its parts."""
    parts: list[PathPart] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", text):
        parts.append(int(index) if index else name)
    return tuple(parts)


def locate(problems: Sequence[Problem], doc: Document) -> list[Problem]:
    """``problems`` found on data parsed from ``doc`` (paths, no lines), with the lines of their paths."""
    return [doc.problem(parse_path(p.path), p.message) if p.line is None else p for p in problems]


@dataclass
class Document:
    """A parsed input file plus what is needed to locate errors in it."""

    data: Any
    source: str
    text: str
    _lines: dict[tuple[PathPart, ...], int] | None = field(default=None, repr=False)

    def line_of(self, path: Sequence[PathPart]) -> int | None:
        """Best-effort 1-based line of the value at ``path`` (or of its nearest located parent)."""
        if self._lines is None:
            self._lines = _line_map(self.text)
        key = tuple(path)
        while key:
            if key in self._lines:
                return self._lines[key]
            key = key[:-1]
        return self._lines.get((), None)

    def problem(self, path: Sequence[PathPart], message: str) -> Problem:
        return Problem(path=format_path(path), message=message, line=self.line_of(path))


def _line_map(text: str) -> dict[tuple[PathPart, ...], int]:
    """Map every path in a YAML/JSON document to the line its value (or key) starts on."""
    try:
        root = yaml.compose(text, Loader=_StringDatesLoader)
    except yaml.YAMLError:
        return {}
    lines: dict[tuple[PathPart, ...], int] = {}
    if root is None:
        return lines
    stack: list[tuple[tuple[PathPart, ...], yaml.Node]] = [((), root)]
    while stack:
        path, node = stack.pop()
        lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            for key_node, value_node in node.value:
                child = (*path, str(key_node.value))
                lines[child] = key_node.start_mark.line + 1
                stack.append((child, value_node))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                stack.append(((*path, index), item))
    return lines


def load_document(path: str | Path, *, kind: str, error: type[InputError] = InputError) -> Document:
    """Read and parse a YAML or JSON file.

    Args:
        path: the file; ``.json`` files are parsed as JSON, anything else as YAML (which also reads JSON).
        kind: what the file is supposed to be ("baseline", "catalog", …), used in messages.
        error: the :class:`InputError` subclass to raise.

    Raises:
        error: the file is missing, unreadable, empty or not valid YAML/JSON, with the line of the syntax error.
    """
    source = str(path)
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{kind} file not found: check the path", source=source) from None
    except IsADirectoryError:
        raise error(f"expected a {kind} file but this is a directory", source=source) from None
    except UnicodeDecodeError as exc:
        raise error(
            f"{kind} file is not UTF-8 text (byte {exc.start}): save it as UTF-8", source=source
        ) from None
    except OSError as exc:
        raise error(f"cannot read {kind} file: {exc.strerror}", source=source) from None
    return parse_document(text, source=source, kind=kind, error=error, as_json=p.suffix.lower() == ".json")


def parse_document(
    text: str, *, source: str, kind: str, error: type[InputError] = InputError, as_json: bool = False
) -> Document:
    """Parse YAML/JSON text already in memory (see :func:`load_document`)."""
    if not text.strip():
        raise error(f"{kind} file is empty", source=source)
    if as_json:
        data = _parse_json(text, source=source, error=error)
    else:
        try:
            data = yaml.load(text, Loader=_StringDatesLoader)  # noqa: S506 - a SafeLoader subclass
        except ValueError as exc:  # PyYAML's own limits, e.g. an integer of more than 4,300 digits
            raise error(f"not valid YAML: {exc}", source=source) from None
        except _RefusedShape as exc:
            mark = exc.problem_mark
            assert mark is not None
            located = Problem(
                path="", message=f"{exc.problem} (column {mark.column + 1})", line=mark.line + 1
            )
            raise error(str(exc.context), source=source, problems=[located]) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            what = getattr(exc, "problem", None) or str(exc)
            raise error(
                f"not valid YAML: {what}",
                source=source,
                problems=[
                    Problem(
                        path="",
                        message=f"{what} (column {mark.column + 1})" if mark else what,
                        line=mark.line + 1 if mark else None,
                    )
                ],
            ) from None
    return Document(data=data, source=source, text=text)


def _parse_json(text: str, *, source: str, error: type[InputError]) -> Any:
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_pairs)
    except _DuplicateKey as exc:
        raise error(f"not valid JSON: {exc}; each key may appear once per object", source=source) from None
    except json.JSONDecodeError as exc:
        raise error(
            f"not valid JSON: {exc.msg}",
            source=source,
            problems=[Problem(path="", message=f"{exc.msg} (column {exc.colno})", line=exc.lineno)],
        ) from None
    except ValueError as exc:  # Python's own limits, e.g. an integer of more than 4,300 digits
        raise error(f"not valid JSON: {exc}", source=source) from None
    except RecursionError:
        data = None  # deeper than the decoder goes: certainly deeper than MAX_DEPTH
    else:
        if not _too_deep(data):
            return data
    line, column = _depth_mark(text)
    located = Problem(path="", message=f"{DEEPEST_HINT} (column {column})", line=line)
    raise error(TOO_DEEP, source=source, problems=[located])


def suggest(name: str, choices: Iterable[str]) -> str:
    """A ``did you mean`` hint for a misspelt key, or ``""``."""
    options = list(choices)
    lowered = {c.lower(): c for c in options}
    if name.lower() in lowered:
        return f"; did you mean '{lowered[name.lower()]}'? (field names are case-sensitive)"
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def unknown_key(name: str, allowed: Sequence[str], *, context: str = "") -> str:
    """The message for a key a mapping does not take: a ``did you mean`` hint and the keys it does take."""
    where = f" for {context}" if context else ""
    return f"unknown key{suggest(name, allowed)}; allowed{where}: {', '.join(allowed)}"


def validation_problems(
    exc: ValidationError, doc: Document, *, prefix: Sequence[PathPart] = (), known_fields: Iterable[str] = ()
) -> list[Problem]:
    """Translate a pydantic ``ValidationError`` into located, human-worded problems.

    Args:
        exc: the error raised by ``model_validate``.
        doc: the document the data came from (for line numbers).
        prefix: where in the document the validated object sits.
        known_fields: field names to draw "did you mean" suggestions from for unknown keys.
    """
    known = sorted(set(known_fields))
    problems: list[Problem] = []
    for err in exc.errors(include_url=False):
        loc: list[PathPart] = [*prefix]
        for part in err["loc"]:
            # pydantic inserts the tag of a union/function validator into loc; drop non-field markers.
            if isinstance(part, str) and ("[" in part or part.startswith("function-")):
                continue
            loc.append(part)
        kind = err["type"]
        ctx = err.get("ctx") or {}
        value = err.get("input")
        if kind == "extra_forbidden":
            field_name = str(loc[-1]) if loc else ""
            message = f"unknown field '{field_name}'{suggest(field_name, known)}"
        elif kind == "missing":
            message = "required field is missing"
        elif kind == "literal_error":
            message = f"{value!r} is not allowed; use one of {ctx.get('expected')}"
        elif kind in {"int_type", "int_parsing", "int_from_float"}:
            message = f"expected a whole number, got {value!r}"
        elif kind in {"bool_type", "bool_parsing"}:
            message = f"expected true or false, got {value!r}"
        elif kind in {"string_type"}:
            message = f"expected a string, got {value!r}"
        elif kind in {"list_type"}:
            message = f"expected a list, got {type(value).__name__}"
        elif kind in {"model_type", "model_attributes_type", "dict_type"}:
            message = f"expected a mapping of fields, got {type(value).__name__}"
        else:
            message = err["msg"]
            if message.startswith("Value error, "):
                message = message[len("Value error, ") :]
        problems.append(doc.problem(loc, message))
    return problems
