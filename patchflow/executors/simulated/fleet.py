"""Fleet files: the fake fleet that the *simulated* executor drives, for demos and scale tests.

A fleet file (YAML or JSON) lists instances one by one (``instances``) and/or many at once (``generate``)::

    name: demo                    # optional; default: the file name without its extension
    seed: 42                      # optional, default 0 (0 to 2**63 - 1): every random draw is derived from it
    instances:
      - id: i-0dev0000000000001
        tags: {"Patch Group": dev, Name: web-1}
        availability_zone: eu-west-1a   # optional: disruption budgets and zone_by_zone rollouts group by it
        platform: {family: deb, product: Ubuntu22.04}
        installed: [{name: openssl, arch: amd64, version: 3.0.2-0ubuntu1.10}]
        behaviour: {duration_seconds: 2.0, fail: false, fail_health: false, reboot: false, offline: false}
    generate:
      - count: 50
        id_prefix: i-0prod
        tags: {"Patch Group": prod}
        availability_zone: [eu-west-1a, eu-west-1b]   # optional: one zone, or a list dealt out in turn
        platform: {family: deb, product: Ubuntu22.04}
        installed: [{name: openssl, arch: amd64, version: 3.0.2-0ubuntu1.10}]
        behaviour: {duration_seconds: [1.0, 5.0], fail_rate: 0.02, fail_health_rate: 0, reboot_rate: 0.1,
                    offline_rate: 0}

Rules a reader cannot guess from the example:

* **Generated ids** are ``id_prefix`` followed by the 1-based index, zero-padded so that the part after the
  prefix's first ``-`` is :data:`ID_SUFFIX_LENGTH` (17) characters long, like the 17 hex digits after ``i-``
  in an EC2 id (``i-0prod`` + 3 → ``i-0prod000000000003``). A prefix without ``-`` pads the whole id to 17
  characters. The index never gets fewer digits than ``count`` needs, so a long prefix makes longer ids
  rather than colliding ones.
* **Random draws** (a ``duration_seconds: [min, max]`` range, drawn uniformly; each ``*_rate``, a probability
  that the flag is true) are a pure function of ``(seed, instance id, field name)`` through SHA-256. The same
  file therefore always yields the same fleet — independent of dict order, ``PYTHONHASHSEED`` and the
  position of an entry — and adding an instance or a field never re-rolls the others. A range is also
  allowed on an explicit instance.
* Explicit instances set flags (``fail: true``); generated ones set rates (``fail_rate: 0.02``).
* ``availability_zone`` (optional) is one zone; on ``generate`` it may be a list, dealt out in turn (the n-th
  generated instance gets entry ``(n - 1) % len``), so one entry spreads a group over several zones.
* **Ranges**: ``count`` 1 to :data:`MAX_INSTANCES` (for the whole fleet), ``duration_seconds`` 0 to
  :data:`MAX_DURATION_SECONDS`, rates 0 to 1, ``seed`` 0 to :data:`MAX_SEED`.
* :attr:`Fleet.digest` is the SHA-256 of the file's bytes: the simulated executor keys its persisted state
  on it, so editing the file starts a fresh simulated fleet instead of mixing old state with new behaviour.

This module only parses and validates; it performs no I/O beyond reading the file.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

from patchflow.core import versions
from patchflow.core.documents import Document, PathPart, load_document, parse_document, suggest
from patchflow.errors import InputError, InvalidVersionError, Problem
from patchflow.executors.base import Package

__all__ = [
    "DEFAULT_DURATION_SECONDS",
    "ID_SUFFIX_LENGTH",
    "MAX_INSTANCES",
    "Behaviour",
    "Fleet",
    "FleetInstance",
    "generated_id",
    "load_fleet",
    "parse_fleet",
]

_V = TypeVar("_V")

ID_SUFFIX_LENGTH = 17
"""Characters after the first ``-`` of a generated id (an EC2 id has 17 hex digits after ``i-``)."""
MAX_INSTANCES = 100_000
"""Upper bound on a fleet's size: far beyond any scale test, low enough that a typo (``count: 1e9``) fails
fast instead of filling memory and the state database."""
DEFAULT_DURATION_SECONDS = 1.0
"""Simulated install time when a behaviour does not say."""
MAX_DURATION_SECONDS = 86_400.0
"""Longest simulated install (``duration_seconds``, each end of a range): a day; longer is a typo."""
MAX_SEED = 2**63 - 1
"""Largest ``seed`` (a signed 64-bit number, as the state database stores it)."""
MAX_PROBLEMS = 50
"""Stop collecting problems after this many: a broken generator would otherwise report thousands."""

_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ID_RULE = "letters, digits and . _ : - only, starting with a letter or digit"
_NAME_RULE = "letters, digits and . _ - only, starting with a letter or digit (it names the state file)"

_FLEET_KEYS = ("name", "seed", "instances", "generate")
_INSTANCE_KEYS = ("id", "tags", "platform", "installed", "behaviour", "availability_zone")
_GENERATE_KEYS = ("count", "id_prefix", "tags", "platform", "installed", "behaviour", "availability_zone")
_PLATFORM_KEYS = ("family", "product")
_PACKAGE_KEYS = ("name", "arch", "version")
_FLAGS = ("fail", "fail_health", "reboot", "offline", "fail_reboot")
_RATE_OF = {flag: f"{flag}_rate" for flag in _FLAGS}
_RATES = tuple(_RATE_OF.values())


@dataclass(frozen=True)
class Behaviour:
    """How one simulated instance reacts; fixed for the life of the fleet file."""

    duration_seconds: float = DEFAULT_DURATION_SECONDS
    """Simulated wall time of an install or restore, before the executor's ``time_scale``."""
    fail: bool = False
    """Every install ends ``failed`` and changes nothing (a bad patch on this host)."""
    fail_health: bool = False
    """Health checks report the workload unhealthy (a patch that installs fine but breaks the service)."""
    reboot: bool = False
    """Successful installs need a reboot: with ``RebootIfNeeded`` the instance reboots (``rebooted``, a new
    boot id), with ``NoReboot`` it is left ``pending_reboot`` until :meth:`SimulatedExecutor.reboot`."""
    offline: bool = False
    """The agent is unreachable: discovery shows the instance offline and operations are ``undeliverable``."""
    fail_commands: tuple[str, ...] = ()
    """Lifecycle hook commands containing one of these strings exit 1 (``run_command``); others exit 0."""
    fail_reboot: bool = False
    """A reboot patchflow asks for never comes back (``reboot`` ends ``failed``; the boot id stays)."""


@dataclass(frozen=True)
class FleetInstance:
    """One simulated instance as the fleet file defines it (its *initial* state)."""

    id: str
    tags: dict[str, str]
    family: str
    """``deb`` or ``rpm``: the version order used for its packages."""
    product: str | None
    """SSM product name, e.g. ``Ubuntu22.04``."""
    installed: list[Package]
    """Installed packages at the start, sorted by (name, arch)."""
    behaviour: Behaviour
    availability_zone: str | None = None
    """The instance's availability zone (None: not given)."""

    @property
    def patch_group(self) -> str | None:
        """The ``Patch Group`` tag, else ``PatchGroup`` (SSM's two spellings, as :class:`InstanceInfo`)."""
        return self.tags.get("Patch Group", self.tags.get("PatchGroup"))


@dataclass(frozen=True)
class Fleet:
    """A parsed fleet file."""

    name: str
    """The ``name`` field, else the file name without extension; names the state file."""
    digest: str
    """SHA-256 (hex) of the file's bytes; keys the persisted simulated state."""
    seed: int
    instances: list[FleetInstance] = field(default_factory=list)
    """Every instance, explicit and generated, sorted by id."""
    source: str = ""
    """Where the fleet was read from, for messages."""


def generated_id(prefix: str, index: int, count: int) -> str:
    """The id of the ``index``-th (1-based) of ``count`` instances generated with ``prefix`` (see module doc)."""
    _, dash, rest = prefix.partition("-")
    suffix = rest if dash else prefix
    width = max(len(str(count)), ID_SUFFIX_LENGTH - len(suffix))
    return f"{prefix}{index:0{width}d}"


def _draw(seed: int, instance_id: str, what: str) -> float:
    """A uniform number in [0, 1) that depends only on its arguments.

    Why not ``random.Random(seed)``: a shared stream makes every draw depend on how many draws came before,
    so reordering entries or adding a field would silently change unrelated instances.
    """
    digest = hashlib.sha256(f"{seed}\x1f{instance_id}\x1f{what}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / float(1 << 53)


class _Checker:
    """Collects located problems while walking the raw document, with the generic value checks."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.problems: list[Problem] = []

    @property
    def full(self) -> bool:
        return len(self.problems) >= MAX_PROBLEMS

    def bad(self, path: Sequence[PathPart], message: str) -> None:
        if not self.full:
            self.problems.append(self.doc.problem(path, message))

    def mapping(
        self,
        path: tuple[PathPart, ...],
        value: Any,
        allowed: Sequence[str],
        hints: dict[str, str] | None = None,
    ) -> dict[str, Any] | None:
        """``value`` as a mapping, reporting each unknown key with a did-you-mean; None if not a mapping."""
        if not isinstance(value, dict):
            self.bad(path, f"expected a mapping with fields {', '.join(allowed)}; got {_kind(value)}")
            return None
        for key in value:
            if key not in allowed:
                name = str(key)
                hint = (hints or {}).get(name) or suggest(name, allowed)
                self.bad((*path, name), f"unknown field '{name}'{hint}; allowed: {', '.join(allowed)}")
        return value

    def text(
        self,
        path: tuple[PathPart, ...],
        data: dict[str, Any],
        key: str,
        what: str,
        *,
        pattern: re.Pattern[str] | None = None,
        optional: bool = False,
    ) -> str | None:
        """``data[key]`` as a non-empty string (matching ``pattern``), or None after reporting why not."""
        if key not in data:
            if not optional:
                self.bad(path, f"required field '{key}' is missing: {what}")
            return None
        value = data[key]
        if not isinstance(value, str) or not value:
            self.bad((*path, key), f"expected {what} as a non-empty string, got {_kind(value)}")
            return None
        if pattern is not None and not pattern.fullmatch(value):
            rule = _NAME_RULE if pattern is _NAME else _ID_RULE
            self.bad((*path, key), f"{value!r} is not a valid {what}: use {rule}")
            return None
        return value

    def number(self, path: tuple[PathPart, ...], value: Any, what: str) -> float | None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            self.bad(path, f"expected {what} as a number, got {_kind(value)}")
            return None
        return float(value)

    def flag(self, path: tuple[PathPart, ...], value: Any) -> bool:
        if not isinstance(value, bool):
            self.bad(path, f"expected true or false, got {_kind(value)}")
            return False
        return value

    def zones(self, path: tuple[PathPart, ...], value: Any, *, many: bool) -> list[str]:
        """``availability_zone``: one zone name (or, with ``many``, a non-empty list of them); [] when absent."""
        if value is None:
            return []
        values = value if many and isinstance(value, list) and value else [value]
        if not all(isinstance(v, str) and _NAME.fullmatch(v) for v in values):
            listed = " or a non-empty list of them" if many else ""
            self.bad(path, f"expected a zone name such as eu-west-1a{listed} (letters, digits and . _ -)")
            return []
        return [str(v) for v in values]

    def tags(self, path: tuple[PathPart, ...], value: Any) -> dict[str, str]:
        if not isinstance(value, dict):
            self.bad(path, f"expected a mapping of tag names to values, got {_kind(value)}")
            return {}
        tags: dict[str, str] = {}
        for key, tag_value in value.items():
            if not isinstance(key, str) or not key:
                self.bad((*path, str(key)), f"tag names are non-empty strings, got {_kind(key)}")
            elif not isinstance(tag_value, str):
                self.bad(
                    (*path, key),
                    f'tag values are strings, got {_kind(tag_value)}: quote it ({key}: "{tag_value}")',
                )
            else:
                tags[key] = tag_value
        return tags


class _FleetChecker(_Checker):
    """The fleet file's own kinds of value: platform, installed packages, behaviour (durations, rates)."""

    def rate(self, path: tuple[PathPart, ...], value: Any) -> float:
        number = self.number(path, value, "a probability")
        if number is None:
            return 0.0
        if not 0.0 <= number <= 1.0:
            self.bad(path, f"{value!r} is outside 0..1: a rate is the probability that the flag is true")
            return 0.0
        return number

    def duration(self, path: tuple[PathPart, ...], value: Any) -> tuple[float, float]:
        """``seconds`` or ``[min, max]`` as a (min, max) range."""
        if isinstance(value, list):
            if len(value) != 2:
                self.bad(path, f"a duration range is [min, max] (2 numbers), got {len(value)} items")
                return (0.0, 0.0)
            low = self.number((*path, 0), value[0], "seconds")
            high = self.number((*path, 1), value[1], "seconds")
            if low is None or high is None:
                return (0.0, 0.0)
        else:
            single = self.number(path, value, "seconds (or a [min, max] range)")
            if single is None:
                return (0.0, 0.0)
            low = high = single
        if low < 0 or high < 0:
            self.bad(path, f"durations cannot be negative, got {value!r}")
            return (0.0, 0.0)
        if high > MAX_DURATION_SECONDS:
            self.bad(
                path,
                f"{value!r}: a simulated install takes at most {MAX_DURATION_SECONDS:,.0f} seconds (a day)",
            )
            return (0.0, 0.0)
        if low > high:
            self.bad(path, f"the range [min, max] has min > max ({value!r}): swap them")
            return (0.0, 0.0)
        return (low, high)

    def platform(self, path: tuple[PathPart, ...], data: dict[str, Any]) -> tuple[str | None, str | None]:
        """``data["platform"]`` as (family, product); family None when missing or invalid."""
        if "platform" not in data:
            self.bad(path, "required field 'platform' is missing: {family: deb|rpm, product: …}")
            return (None, None)
        spec = self.mapping((*path, "platform"), data["platform"], _PLATFORM_KEYS)
        if spec is None:
            return (None, None)
        where = (*path, "platform")
        family = self.text(where, spec, "family", "the package family, deb or rpm")
        if family is not None and family not in versions.FAMILIES:
            self.bad(
                (*where, "family"),
                f"{family!r} is not a package family; use one of: {', '.join(versions.FAMILIES)}",
            )
            family = None
        product = self.text(where, spec, "product", "SSM product name (e.g. Ubuntu22.04)", optional=True)
        return (family, product)

    def installed(self, path: tuple[PathPart, ...], value: Any, family: str | None) -> list[Package]:
        """The ``installed`` list, versions validated for ``family``, sorted by (name, arch)."""
        if not isinstance(value, list):
            self.bad(path, f"expected a list of {{name, arch, version}}, got {_kind(value)}")
            return []
        packages: dict[tuple[str, str], Package] = {}
        for index, item in enumerate(value):
            where = (*path, index)
            data = self.mapping(where, item, _PACKAGE_KEYS)
            if data is None:
                continue
            name, arch, version = (self.text(where, data, key, f"the package {key}") for key in _PACKAGE_KEYS)
            if name is None or arch is None or version is None:
                continue
            if family is not None:
                try:
                    versions.validate(family, version)
                except InvalidVersionError as exc:
                    self.bad((*where, "version"), exc.summary)
                    continue
            if (name, arch) in packages:
                self.bad(where, f"{name} ({arch}) is listed twice: an instance has one version of a package")
                continue
            packages[(name, arch)] = Package(name=name, arch=arch, version=version)
        return [packages[key] for key in sorted(packages)]

    def fail_commands(self, path: tuple[PathPart, ...], raw: dict[str, Any]) -> tuple[str, ...]:
        value = raw.get("fail_commands", [])
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            self.bad(path, "expected a list of strings: hook commands containing one of them fail")
            return ()
        return tuple(value)

    def behaviour(
        self, path: tuple[PathPart, ...], data: dict[str, Any], allowed: Sequence[str], hints: dict[str, str]
    ) -> tuple[tuple[float, float], dict[str, Any]] | None:
        """``data["behaviour"]`` as (duration range, the other fields), or None if it is not a mapping."""
        spec = self.mapping((*path, "behaviour"), data.get("behaviour", {}), allowed, hints)
        if spec is None:
            return None
        where = (*path, "behaviour", "duration_seconds")
        return self.duration(where, spec.get("duration_seconds", DEFAULT_DURATION_SECONDS)), spec


def _kind(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool | int | float | str):
        return f"{type(value).__name__} {value!r}"
    return type(value).__name__


def _in_range(duration: tuple[float, float], seed: int, instance_id: str) -> float:
    low, high = duration
    return low if low == high else low + (high - low) * _draw(seed, instance_id, "duration_seconds")


_INSTANCE_HINTS = {
    rate: f"; did you mean '{flag}'? (rates are for 'generate' entries)" for flag, rate in _RATE_OF.items()
}
_GENERATE_HINTS = {
    flag: f"; did you mean '{rate}'? (generated instances take a probability 0..1)"
    for flag, rate in _RATE_OF.items()
}


class _FleetParser:
    """Expands and validates one fleet document; ids are checked for uniqueness across all entries."""

    def __init__(self, seed: int, check: _FleetChecker) -> None:
        self.seed = seed
        self.check = check
        self.instances: list[FleetInstance] = []
        self.first_seen: dict[str, str] = {}  # id -> the entry that defined it, for duplicate messages
        self._shared: dict[Hashable, Any] = {}

    def share(self, key: Hashable, value: _V) -> _V:
        """One object for every equal ``key``: instances of one image share their tags, package list, packages
        and behaviour (read-only after parsing), which keeps a 100,000-instance fleet small in every worker
        that loads it (issue 17 item 2)."""
        return cast(_V, self._shared.setdefault(key, value))

    def instance(
        self,
        instance_id: str,
        tags: dict[str, str],
        family: str,
        product: str | None,
        installed: list[Package],
        behaviour: Behaviour,
        zone: str | None,
    ) -> FleetInstance:
        packages = [self.share(p, p) for p in installed]
        return FleetInstance(
            instance_id,
            self.share(("tags", *tags.items()), tags),
            family,
            product,
            self.share(("installed", *packages), packages),
            self.share(behaviour, behaviour),
            zone,
        )

    def claim(self, ids: Sequence[str], where: tuple[PathPart, ...], label: str) -> bool:
        """Reserve ``ids`` for the entry at ``where``; report the ones already taken (once per entry).

        Ids are claimed even by entries that are otherwise invalid, so a duplicate is reported together with
        the entry's other mistakes instead of only after they are fixed.
        """
        taken = [instance_id for instance_id in ids if instance_id in self.first_seen]
        if taken:
            shown = ", ".join(f"{i} (from {self.first_seen[i]})" for i in taken[:3])
            more = f" and {len(taken) - 3} more" if len(taken) > 3 else ""
            self.check.bad(
                where,
                f"duplicate instance id{'s' if len(taken) > 1 else ''}: {shown}{more}; ids must be unique",
            )
        for instance_id in ids:
            self.first_seen.setdefault(instance_id, label)
        return not taken

    def explicit(self, index: int, item: Any) -> None:
        check = self.check
        where: tuple[PathPart, ...] = ("instances", index)
        spec = check.mapping(where, item, _INSTANCE_KEYS)
        if spec is None:
            return
        instance_id = check.text(where, spec, "id", "instance id (e.g. i-0123456789abcdef0)", pattern=_ID)
        unique = instance_id is not None and self.claim([instance_id], (*where, "id"), f"instances[{index}]")
        tags = check.tags((*where, "tags"), spec.get("tags", {}))
        zones = check.zones((*where, "availability_zone"), spec.get("availability_zone"), many=False)
        family, product = check.platform(where, spec)
        installed = check.installed((*where, "installed"), spec.get("installed", []), family)
        behaviour = check.behaviour(
            where, spec, ("duration_seconds", *_FLAGS, "fail_commands"), _INSTANCE_HINTS
        )
        if behaviour is None:
            return
        duration, raw = behaviour
        flags: dict[str, Any] = {
            flag: check.flag((*where, "behaviour", flag), raw.get(flag, False)) for flag in _FLAGS
        }
        flags["fail_commands"] = check.fail_commands((*where, "behaviour", "fail_commands"), raw)
        if instance_id is None or family is None or not unique:
            return
        self.instances.append(
            self.instance(
                instance_id,
                tags,
                family,
                product,
                installed,
                Behaviour(duration_seconds=_in_range(duration, self.seed, instance_id), **flags),
                zones[0] if zones else None,
            )
        )

    def generated(self, index: int, item: Any) -> None:
        check = self.check
        where: tuple[PathPart, ...] = ("generate", index)
        spec = check.mapping(where, item, _GENERATE_KEYS)
        if spec is None:
            return
        count = spec.get("count")
        if "count" not in spec:
            check.bad(where, "required field 'count' is missing: how many instances to generate")
        elif isinstance(count, bool) or not isinstance(count, int):
            check.bad((*where, "count"), f"expected a whole number, got {_kind(count)}")
            count = None
        elif count < 1:
            check.bad((*where, "count"), f"count must be at least 1, got {count}")
            count = None
        elif len(self.first_seen) + count > MAX_INSTANCES:
            check.bad(
                (*where, "count"),
                f"the fleet would have {len(self.first_seen) + count} instances; the limit is {MAX_INSTANCES}",
            )
            count = None
        prefix = check.text(where, spec, "id_prefix", "id prefix (e.g. i-0prod)", pattern=_ID)
        ids = (
            []
            if count is None or prefix is None
            else [generated_id(prefix, n, count) for n in range(1, count + 1)]
        )
        unique = self.claim(ids, (*where, "id_prefix"), f"generate[{index}]")
        tags = check.tags((*where, "tags"), spec.get("tags", {}))
        zones = check.zones((*where, "availability_zone"), spec.get("availability_zone"), many=True)
        family, product = check.platform(where, spec)
        installed = check.installed((*where, "installed"), spec.get("installed", []), family)
        behaviour = check.behaviour(
            where, spec, ("duration_seconds", *_RATES, "fail_commands"), _GENERATE_HINTS
        )
        if behaviour is None:
            return
        duration, raw = behaviour
        fail_commands = check.fail_commands((*where, "behaviour", "fail_commands"), raw)
        rates = {
            flag: check.rate((*where, "behaviour", rate), raw.get(rate, 0.0))
            for flag, rate in _RATE_OF.items()
        }
        if family is None or not unique:
            return
        for n, instance_id in enumerate(ids):
            drawn = {flag: _draw(self.seed, instance_id, flag) < rate for flag, rate in rates.items()}
            self.instances.append(
                self.instance(
                    instance_id,
                    tags,
                    family,
                    product,
                    installed,
                    Behaviour(
                        duration_seconds=_in_range(duration, self.seed, instance_id),
                        fail_commands=fail_commands,
                        **drawn,
                    ),
                    zones[n % len(zones)] if zones else None,
                )
            )


def parse_fleet(doc: Document, *, digest: str, default_name: str = "fleet") -> Fleet:
    """Validate and expand a parsed fleet document, reporting every problem at once.

    Args:
        doc: the parsed file.
        digest: SHA-256 of the file's bytes (see :attr:`Fleet.digest`).
        default_name: the fleet's name when the file has no ``name`` field.

    Raises:
        InputError: with one located problem per mistake (at most :data:`MAX_PROBLEMS`).
    """
    check = _FleetChecker(doc)
    data = check.mapping((), doc.data, _FLEET_KEYS)
    if data is None:
        raise InputError(
            "a fleet file must be a mapping with 'instances' and/or 'generate'",
            source=doc.source,
            problems=check.problems,
        )
    name = check.text((), data, "name", "fleet name", pattern=_NAME, optional=True) or default_name
    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        check.bad(("seed",), f"expected a whole number, got {_kind(seed)}")
        seed = 0
    elif not 0 <= seed <= MAX_SEED:
        check.bad(("seed",), f"{seed} is out of range: use 0 to 2**63 - 1")
        seed = 0
    parser = _FleetParser(seed, check)
    for key, parse in (("instances", parser.explicit), ("generate", parser.generated)):
        entries = data.get(key, [])
        if not isinstance(entries, list):
            check.bad((key,), f"expected a list, got {_kind(entries)}")
            continue
        for index, item in enumerate(entries):
            if check.full:
                break
            parse(index, item)
    if not parser.instances and not check.problems:
        check.bad((), "the fleet has no instances: add an 'instances' list or a 'generate' entry")
    if check.problems:
        raise InputError("invalid fleet file", source=doc.source, problems=check.problems)
    instances = sorted(parser.instances, key=lambda instance: instance.id)
    return Fleet(name=name, digest=digest, seed=seed, instances=instances, source=doc.source)


def load_fleet(path: str | Path) -> Fleet:
    """Read, validate and expand a fleet file (see the module docstring for the format).

    Raises:
        InputError: the file is missing, unreadable or invalid; every problem is located.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        load_document(p, kind="fleet")  # words the error (missing, a directory, not UTF-8, …) and raises it
        raise  # only reached if the file changed between the two reads
    doc = parse_document(text, source=str(path), kind="fleet", as_json=p.suffix.lower() == ".json")
    return parse_fleet(doc, digest=hashlib.sha256(raw).hexdigest(), default_name=p.stem or "fleet")
