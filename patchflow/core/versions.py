"""Exact ordering of Debian (deb) and RPM package versions, in pure Python.

Patch decisions ("is the installed version older than the approved one?") must agree with the package
manager that will actually install the package, so this module reproduces, byte for byte:

* **deb**: dpkg 1.21 ``parseversion`` + ``verrevcmp`` (lib/dpkg/parsehelp.c, lib/dpkg/version.c), which is also
  what libapt's ``apt_pkg.version_compare`` computes for every version accepted here (dpkg accepts a few
  more, on which dpkg and apt disagree: see :func:`validate`);
* **rpm**: python3-rpm 4.18 ``rpm.labelCompare`` applied to the ``(epoch, version, release)`` that librpm's
  ``parseEVR`` (lib/rpmver.c) splits out of the string, with ``rpmvercmp`` (lib/rpmvercmp.c) underneath.

Both are checked against the real tools by ``tests/fixtures/versions/generate.py`` (committed oracle pairs)
and by a live-oracle test.

Design: every valid version is turned once into an opaque *sort key*, a latin-1 ``str`` whose plain string
order is the package manager's order, so a comparison is two dict look-ups and one or two ``memcmp``. Fleets
report the same few thousand versions over and over, so keys are cached per family (a dict that is emptied
when it grows past :data:`CACHE_MAX_ENTRIES`, which bounds memory without per-hit bookkeeping).

Key encoding (characters, all below U+0100 so CPython compares keys with ``memcmp``):

* a number (digit run, epoch) is ``chr(len(digits))`` + the digits without leading zeros, so longer numbers
  sort after shorter ones and equal-length ones compare digit by digit; lengths of 255 or more are prefixed
  by ``\\xff`` and encoded recursively, so no length limit exists;
* deb: each upstream/revision is split into (non-digit run, number) pairs; run characters map to their dpkg
  weight order (``~`` < end-of-run < letters < other ASCII) and each run is closed by an end-of-run mark;
  the part ends with an end-of-part mark equal to the end-of-run weight. Equal parts therefore always have
  equal length, and "1.0" vs "1.0~" is decided by the end-of-part mark against ``~``;
* rpm: each version/release becomes rpmvercmp's token stream, coded so that
  TILDE < END < CARET < ALPHA < NUM, letters compared as strcmp does and numbers numerically.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Final, Literal

from patchflow.errors import InvalidVersionError

__all__ = [
    "CACHE_MAX_ENTRIES",
    "FAMILIES",
    "Family",
    "InvalidVersionError",
    "clear_cache",
    "compare",
    "latest",
    "sort_key",
    "split_deb",
    "split_rpm_evr",
    "validate",
    "warnings",
]

Family = Literal["deb", "rpm"]
FAMILIES: tuple[str, ...] = ("deb", "rpm")

CACHE_MAX_ENTRIES = 1 << 17
"""Per-family cache size at which the cache is emptied and refilled (≈ 20 MB per family at ~30 characters a
version); far above a fleet's few thousand distinct versions, so in practice it never refills."""

_INT_MAX: Final = 2**31 - 1  # dpkg stores the epoch in a C int and refuses bigger ones

_GRAMMAR: Final = {
    "deb": "a deb version is [epoch:]upstream[-revision] (see deb-version(7))",
    "rpm": (
        "an rpm version is [epoch:]version[-release]: a numeric epoch, then a version and an optional release "
        "made of ASCII letters, digits and . _ + ~ ^ (see Version/Release in rpm's spec file reference)"
    ),
}

# --- shared number encoding -------------------------------------------------------------------------------


def _num(digits: str) -> str:
    """Encode a run of ASCII digits so that string order is numeric order.

    Why not ``int``: Python refuses to convert more than 4300 digits by default, and dpkg/rpm compare digit
    runs of any length.
    """
    d = digits.lstrip("0")
    n = len(d)
    if n < 0xFF:
        return chr(n) + d
    return "\xff" + _num(str(n)) + d


# --- deb --------------------------------------------------------------------------------------------------

_DEB_TILDE: Final = "\x01"
_DEB_END: Final = "\x02"  # end of a non-digit run *and* end of the part: both weigh 0 in dpkg's order()


def _deb_weights() -> dict[int, str]:
    """Map each printable ASCII non-digit to a character ordered like dpkg's ``order()``.

    dpkg weighs ``~`` as -1, end-of-run as 0, a letter as its ASCII code and anything else as code + 256.
    """
    table: dict[int, str] = {}
    for code in range(0x21, 0x7F):
        c = chr(code)
        if c.isdigit():
            continue
        if c == "~":
            table[code] = _DEB_TILDE
        elif c.isalpha():
            table[code] = c  # 0x41..0x7A
        else:
            table[code] = chr(code + 0x80)  # 0xA1..0xFE: after every letter, order kept
    return table


_DEB_WEIGHTS: Final = _deb_weights()
_DIGIT_RUNS: Final = re.compile(r"([0-9]+)")
_DEB_UPSTREAM_OK: Final = re.compile(r"[A-Za-z0-9.+~:-]*")
_DEB_REVISION_OK: Final = re.compile(r"[A-Za-z0-9.+~]*")


def _deb_part_key(part: str) -> str:
    """Key of an upstream version or revision, ordered exactly like dpkg's ``verrevcmp``.

    ``re.split`` with a capturing group yields run, digits, run, digits, …, run. Only the first run can be
    empty in the middle; an empty *last* run (the part ends in digits) adds nothing, which is what makes
    "", "0" and "00" (and "1.0" and "1.00") equal.
    """
    pieces = _DIGIT_RUNS.split(part)
    out = [pieces[0].translate(_DEB_WEIGHTS), _DEB_END, _num(pieces[1]) if len(pieces) > 1 else "\x00"]
    for i in range(2, len(pieces), 2):
        run = pieces[i]
        if not run:
            break
        out.append(run.translate(_DEB_WEIGHTS))
        out.append(_DEB_END)
        out.append(_num(pieces[i + 1]) if i + 1 < len(pieces) else "\x00")
    out.append(_DEB_END)
    return "".join(out)


def _parse_deb(version: object) -> tuple[str, str, str]:
    """Split a deb version into (epoch digits, upstream, revision) or raise, following dpkg's parseversion.

    The checks and their order are dpkg's errors (not its warnings); :func:`validate` lists where this is
    stricter than dpkg.
    """
    v = _check_text("deb", version)
    colon = v.find(":")
    if colon >= 0:
        epoch = v[:colon]
        if not epoch:
            raise _invalid("deb", v, "the epoch before ':' is empty")
        if not epoch.isdigit():
            raise _invalid("deb", v, f"the epoch {epoch!r} is not a number (digits only)")
        if len(epoch.lstrip("0")) > 10 or int(epoch) > _INT_MAX:
            raise _invalid("deb", v, f"the epoch {epoch!r} is too big (dpkg allows at most {_INT_MAX})")
        rest = v[colon + 1 :]
        if not rest:
            raise _invalid("deb", v, "nothing after the colon")
    else:
        epoch, rest = "0", v
    hyphen = rest.rfind("-")
    if hyphen >= 0:
        upstream, revision = rest[:hyphen], rest[hyphen + 1 :]
        if not revision:
            raise _invalid("deb", v, "the revision after the last '-' is empty")
    else:
        upstream, revision = rest, ""
    if not upstream:
        raise _invalid("deb", v, "the upstream version is empty")
    return epoch, upstream, revision


def _deb_key(version: str) -> str:
    epoch, upstream, revision = _parse_deb(version)
    return _num(epoch) + _deb_part_key(upstream) + _deb_part_key(revision)


def _deb_warnings(version: str) -> list[str]:
    """dpkg's non-fatal complaints, all of them (dpkg itself stops at the first)."""
    _, upstream, revision = _parse_deb(version)
    found: list[str] = []
    if not upstream[0].isdigit():
        found.append(
            f"deb version {version!r}: the upstream version {upstream!r} does not start with a digit"
        )
    bad = _DEB_UPSTREAM_OK.sub("", upstream)
    if bad:
        found.append(
            f"deb version {version!r}: invalid character(s) {_chars(bad)} in the upstream version "
            "(allowed: letters, digits and . + ~ - :)"
        )
    bad = _DEB_REVISION_OK.sub("", revision)
    if bad:
        found.append(
            f"deb version {version!r}: invalid character(s) {_chars(bad)} in the revision "
            "(allowed: letters, digits and . + ~)"
        )
    return found


# --- rpm --------------------------------------------------------------------------------------------------

_RPM_TOKENS: Final = re.compile(r"[0-9]+|[A-Za-z]+|[~^]")
_RPM_PART_OK: Final = re.compile(r"[A-Za-z0-9._+~^]*")
# Token codes, ordered as rpmvercmp ranks what it finds at a position: TILDE < END < CARET < ALPHA < NUM.
_RPM_TILDE: Final = "\x01"
_RPM_END: Final = "\x02"
_RPM_CARET: Final = "\x03"
_RPM_ALPHA: Final = "\x04"
_RPM_NUM: Final = "\x05"
_RPM_NO_RELEASE: Final = "\x00"  # labelCompare: a missing release is older than any release
_RPM_RELEASE: Final = "\x01"


def _split_evr(v: str) -> tuple[str | None, str, str | None]:
    """librpm's parseEVR, verbatim: leading digits then ':' make the epoch; the last '-' starts the release."""
    s = len(v) - len(v.lstrip("0123456789"))
    if v[s : s + 1] == ":":
        epoch: str | None = v[:s] or "0"
        rest = v[s + 1 :]
    else:
        epoch, rest = None, v
    hyphen = rest.rfind("-")
    if hyphen >= 0:
        return epoch, rest[:hyphen], rest[hyphen + 1 :]
    return epoch, rest, None


def _parse_rpm(version: object) -> tuple[str | None, str, str | None]:
    v = _check_text("rpm", version)
    epoch, ver, release = _split_evr(v)
    if not ver:
        raise _invalid("rpm", v, "the version part is empty")
    if release == "":
        raise _invalid("rpm", v, "the release after the last '-' is empty")
    for name, part in (("version", ver), ("release", release)):
        if part is None:
            continue
        bad = _RPM_PART_OK.sub("", part)
        if bad:
            c = bad[0]
            if c == ":":
                why = "':' may only follow a numeric epoch at the start"
            elif c == "-":
                why = "'-' may appear only once, before the release"
            else:
                why = f"character {c!r} is not allowed"
            raise _invalid("rpm", v, f"{why} (in the {name} {part!r})")
    return epoch, ver, release


def _rpm_part_key(part: str) -> str:
    """Key of a version or release, ordered exactly like ``rpmvercmp``.

    Separators (anything but letters, digits, ``~`` and ``^``) only delimit segments, so they vanish here:
    "1.0_1" and "1.0.1", or "1..0" and "1.0", get the same key, as rpm says.
    """
    out = []
    for tok in _RPM_TOKENS.findall(part):
        c = tok[0]
        if c == "~":
            out.append(_RPM_TILDE)
        elif c == "^":
            out.append(_RPM_CARET)
        elif c <= "9":
            out.append(_RPM_NUM + _num(tok))
        else:
            out.append(_RPM_ALPHA + tok + "\x00")  # "\x00" < any letter: "ab" < "abc", as strcmp
    out.append(_RPM_END)
    return "".join(out)


def _rpm_key(version: str) -> str:
    epoch, ver, release = _parse_rpm(version)
    head = _num(epoch or "0") + _rpm_part_key(ver)
    if release is None:
        return head + _RPM_NO_RELEASE
    return head + _RPM_RELEASE + _rpm_part_key(release)


def _rpm_warnings(version: str) -> list[str]:
    epoch, _, _ = _parse_rpm(version)
    if version.startswith(":"):
        return [f"rpm version {version!r}: the epoch before ':' is empty; rpm reads it as {epoch}"]
    return []


# --- shared validation ------------------------------------------------------------------------------------


def _chars(bad: str) -> str:
    return ", ".join(repr(c) for c in dict.fromkeys(bad))


def _invalid(family: str, version: object, problem: str) -> InvalidVersionError:
    grammar = _GRAMMAR.get(family, "")
    return InvalidVersionError(f"invalid {family} version {version!r}: {problem}; {grammar}")


def _check_text(family: str, version: object) -> str:
    """Refuse what no package manager should ever be handed: non-strings, "", whitespace, control, non-ASCII."""
    if not isinstance(version, str):
        raise _invalid(family, version, f"expected a string, got {type(version).__name__}")
    if not version:
        raise _invalid(family, version, "the version is empty")
    if version.isascii() and version.isprintable() and " " not in version:
        return version  # the common case, checked in C
    for i, c in enumerate(version):
        if not c.isascii():
            raise _invalid(family, version, f"non-ASCII character {c!r} (U+{ord(c):04X}) at position {i}")
        if c.isspace():
            if i == 0 or not version[i:].strip():
                raise _invalid(family, version, "leading or trailing whitespace; strip it")
            raise _invalid(family, version, f"embedded whitespace at position {i}")
        if not c.isprintable():
            raise _invalid(family, version, f"control character {c!r} at position {i}")
    raise AssertionError("unreachable")  # pragma: no cover


# --- cache and public API ---------------------------------------------------------------------------------

_KEY_BUILDERS: Final[dict[str, Callable[[str], str]]] = {"deb": _deb_key, "rpm": _rpm_key}
_KEYS: Final[dict[str, dict[str, str]]] = {"deb": {}, "rpm": {}}


def _key(family: str, version: str) -> str:
    """Cached key of one version (the slow path of :func:`compare`)."""
    keys = _KEYS.get(family) if isinstance(family, str) else None
    if keys is None:
        raise InvalidVersionError(
            f"unknown version family {family!r} for version {version!r}; use one of {', '.join(FAMILIES)}"
        )
    if isinstance(version, str):
        key = keys.get(version)
        if key is not None:
            return key
    key = _KEY_BUILDERS[family](version)  # validates; raises InvalidVersionError
    if len(keys) >= CACHE_MAX_ENTRIES:
        keys.clear()  # cheaper than LRU bookkeeping on every hit; a fleet refills it in milliseconds
    keys[version] = key
    return key


def clear_cache() -> None:
    """Forget every cached sort key (for benchmarks and tests of the cold path)."""
    for keys in _KEYS.values():
        keys.clear()


def sort_key(family: str, version: str) -> tuple[str]:
    """Return a key whose natural order is the package manager's order.

    ``sorted(versions, key=lambda v: sort_key("deb", v))`` sorts like dpkg; keys of different families must
    not be compared with each other. The key is an opaque 1-tuple (an encoded string), cached per version.

    Raises:
        InvalidVersionError: ``version`` is not valid for ``family``, or ``family`` is unknown.
    """
    return (_key(family, version),)


def compare(family: str, a: str, b: str) -> int:
    """Compare two versions of one family the way dpkg (deb) or rpm's ``labelCompare`` (rpm) does.

    Both versions are validated even when they are equal strings (validation is cached, so that is cheap).

    Returns:
        -1 if ``a`` is older than ``b``, 0 if they are the same version (possibly written differently, e.g.
        ``1.0`` and ``1.00``), 1 if ``a`` is newer.

    Raises:
        InvalidVersionError: either version is invalid, or ``family`` is unknown.
    """
    try:
        keys = _KEYS[family]
        ka = keys[a]
        kb = keys[b]
    except (KeyError, TypeError):  # TypeError: unhashable input, reported by _key
        ka = _key(family, a)
        kb = _key(family, b)
    if ka < kb:
        return -1
    return 1 if ka > kb else 0  # neither less nor greater: equal keys, i.e. the same version


def validate(family: str, version: str) -> None:
    """Raise :class:`InvalidVersionError` if the family's package manager would refuse ``version``.

    Non-fatal dpkg complaints (see :func:`warnings`) do not raise: dpkg compares such versions anyway.
    Deliberately stricter than the tools where they are lenient *and* inconsistent, or the input is surely
    a mistake: whitespace anywhere (dpkg strips leading/trailing blanks, apt compares them), a signed deb
    epoch such as ``+1:`` (dpkg reads 1, apt compares the ``+``), non-ASCII and control characters (dpkg
    warns, rpm treats them as separators), and rpm characters a spec file's Version/Release would refuse.
    """
    _key(family, version)


def warnings(family: str, version: str) -> list[str]:
    """List the non-fatal problems of a valid version, e.g. dpkg's "version number does not start with digit".

    dpkg prints these as warnings and still compares the version; patchflow accepts and orders such versions
    exactly as dpkg does, and reports them here so that a baseline author can fix the source. For rpm the only
    warning is an empty epoch (``:1.0``), which rpm silently reads as 0.

    Raises:
        InvalidVersionError: the version is invalid (errors are not warnings), or ``family`` is unknown.
    """
    _key(family, version)
    return _deb_warnings(version) if family == "deb" else _rpm_warnings(version)


def latest(family: str, versions: Iterable[str]) -> str:
    """Return the newest of ``versions``; among equal versions written differently, the first one seen.

    Raises:
        InvalidVersionError: a version is invalid, or ``family`` is unknown.
        ValueError: ``versions`` is empty.
    """
    best: str | None = None
    best_key = ""
    for v in versions:
        k = _key(family, v)
        if best is None or k > best_key:
            best, best_key = v, k
    if best is None:
        raise ValueError(f"latest(): no {family} versions given")
    return best


def split_rpm_evr(version: str) -> tuple[str | None, str, str | None]:
    """Split an rpm EVR string into ``(epoch, version, release)`` exactly like librpm's ``parseEVR``.

    Leading digits followed by ':' are the epoch (an empty epoch before ':' becomes "0"); the release starts
    after the *last* '-'. A missing epoch or release is None, which matters: ``labelCompare`` treats a
    missing epoch as 0 but a missing release as older than any release.

    Raises:
        InvalidVersionError: the version is not valid (see :func:`validate`).
    """
    return _parse_rpm(version)


def split_deb(version: str) -> tuple[int, str, str]:
    """Split a deb version into ``(epoch, upstream, revision)`` like dpkg's ``parseversion``.

    The epoch is before the *first* ':' (0 when absent) and the revision after the *last* '-' of the rest
    ("" when absent, which compares equal to "0").

    Raises:
        InvalidVersionError: the version is not valid (see :func:`validate`).
    """
    epoch, upstream, revision = _parse_deb(version)
    return int(epoch), upstream, revision
