"""The on-host half of the SSH executor: a standard-library Python 3 program patchflow sends over SSH.

It is never installed: each call runs ``[sudo -n] python3 -c BOOTSTRAP`` and sends this file's source plus
one request as JSON on stdin; the answer is one JSON object on stdout. Operations:

* ``facts`` — boot id, package family and product, installed packages, reboot required, ``dpkg --audit``.
* ``start`` — begin an install/restore under an operation id (idempotent): write the **operation journal**
  ``/var/lib/patchflow/operations/<sha256(id)>.json`` (state ``started``, the package list *before*), then
  run the transaction in a detached process (``setsid``), so a dropped connection or a dead worker never
  stops a package transaction half-way. With ``wait`` it then waits like ``wait`` below (up to that many
  seconds, closing the operation when no reboot is due), so a short install is one SSH command. A second
  ``start`` with the same id returns the journal.
* ``wait`` — block up to N seconds while the journal says ``started`` (woken by the transaction's exit); a
  transaction whose process died (killed, or the host rebooted under it) is recorded as failed
  (``interrupted``). With ``close`` (the reboot option) it also closes a transacted operation that needs no
  reboot (``done``): an install that outlives ``start``'s wait is two SSH round trips, ``start`` and ``wait``.
* ``get``, ``mark`` (compare-and-set the state, e.g. ``transacted`` → ``done``), ``reboot`` (``transacted`` →
  ``rebooting``, then run the reboot command detached), ``cancel`` (kill the transaction's process group).

The transaction (Debian, apt/dpkg): ``apt-get update``; decide the exact ``name=version`` requests (an
install only raises installed packages that are below the pinned version; a restore sets each given
version, an empty version removes the package); run ``apt-get install`` with exactly those requests and
**check the plan before dpkg runs**: a ``DPkg::Pre-Install-Pkgs`` hook (:data:`PLAN_HOOK`) sees every action
apt is about to hand to dpkg and stops the transaction if it would install, upgrade, downgrade or remove
anything not in the pinned set (nothing is changed; any other package of the set the resolver pulls in is
requested at its pinned version and apt runs again). This checks the very plan apt executes, in the same
run, instead of a separate ``apt-get -s`` simulation before it. Then record the package list *after*,
``dpkg --audit`` and whether a reboot is required (``/var/run/reboot-required``). A failed install is reverted
to the versions before it (so the host is never left half-configured) unless the request says otherwise.

**Baseline Sources.** An install whose request names sources for this host's product uses exactly those
repositories, and leaves the host's own configuration, lists and caches untouched: everything lives in a
private directory ``/var/lib/patchflow/sources/<sha256(id)>`` that is removed when the transaction ends (also
when it fails, is cancelled, or dies with the host). apt gets ``-o Dir::Etc::SourceList=…``,
``Dir::Etc::SourceParts``, ``Dir::State::Lists`` and ``Dir::Cache`` pointing there (its ``update`` fills the
private lists, never ``/var/lib/apt/lists``); dnf gets ``--setopt=reposdir=…`` (only the sources' repo files,
so every other repository is off) and private ``cachedir``/``system_cachedir``. A source that cannot be
fetched fails the install before anything changes. Restores and the revert of a failed install use the
host's own repositories (the versions they go back to came from there).
"""

from __future__ import annotations

import fcntl
import os
import sys
import time

# Every call starts a fresh interpreter on the host, so the agent imports at the top only what every call
# needs; ``re``, ``subprocess``, ``contextlib``, ``select`` and ``signal`` are imported where they are used
# (an agent call that only reads the journal does not pay for them).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any
try:
    from _sha256 import sha256 as _sha256  # CPython <= 3.11: the builtin module, no OpenSSL to load
except ImportError:  # pragma: no cover - newer CPython
    from hashlib import sha256 as _sha256

try:
    import json
except ImportError:  # Debian's python3-minimal has no json module: a small stand-in below
    json = None  # type: ignore[assignment]

JOURNAL_DIR = "/var/lib/patchflow/operations"
SOURCES_DIR = "/var/lib/patchflow/sources"
"""Private repository configuration of installs with baseline Sources (one directory per operation, removed
when its transaction ends)."""
TAIL = 3000
APT_ENV = {
    "DEBIAN_FRONTEND": "noninteractive",
    "LANG": "C",
    "LC_ALL": "C",
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
}
APT_OPTS = [
    "-q",
    "-o",
    "Dpkg::Use-Pty=0",
    "-o",
    "DPkg::Lock::Timeout=300",
    "-o",
    "Dpkg::Options::=--force-confdef",
    "-o",
    "Dpkg::Options::=--force-confold",
    "--no-install-recommends",
]


# ------------------------------------------------------------------------------------------ JSON
_NUMBER = r"-?\d+(\.\d+)?([eE][+-]?\d+)?"
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}


def dumps(obj: Any) -> str:
    """JSON text of ``obj`` (dicts, lists, str, int, float, bool, None) without the json module."""
    if json is not None:
        return json.dumps(obj)
    if obj is None:
        return "null"
    if obj is True:
        return "true"
    if obj is False:
        return "false"
    if isinstance(obj, (int, float)):
        return repr(obj)
    if isinstance(obj, str):
        out = []
        for ch in obj:
            code = ord(ch)
            if ch in ('"', "\\"):
                out.append("\\" + ch)
            elif code < 0x20 or code > 0x7E:
                if code > 0xFFFF:
                    code -= 0x10000
                    out.append("\\u%04x\\u%04x" % (0xD800 + (code >> 10), 0xDC00 + (code & 0x3FF)))  # noqa: UP031
                else:
                    out.append("\\u%04x" % code)  # noqa: UP031
            else:
                out.append(ch)
        return '"' + "".join(out) + '"'
    if isinstance(obj, dict):
        return "{" + ", ".join(dumps(str(k)) + ": " + dumps(v) for k, v in obj.items()) + "}"
    if isinstance(obj, (list, tuple)):
        return "[" + ", ".join(dumps(v) for v in obj) + "]"
    raise TypeError(f"cannot encode {type(obj).__name__}")


def loads(text: str) -> Any:
    """Parse JSON text without the json module."""
    if json is not None:
        return json.loads(text)
    value, end = _value(text, _skip(text, 0))
    if _skip(text, end) != len(text):
        raise ValueError("extra data after JSON value")
    return value


def _skip(s: str, i: int) -> int:
    while i < len(s) and s[i] in " \t\r\n":
        i += 1
    return i


def _value(s: str, i: int) -> tuple[Any, int]:
    ch = s[i]
    if ch == "{":
        obj: dict[str, Any] = {}
        i = _skip(s, i + 1)
        if s[i] == "}":
            return obj, i + 1
        while True:
            key, i = _string(s, _skip(s, i))
            i = _skip(s, i)
            if s[i] != ":":
                raise ValueError(f"expected ':' at {i}")
            obj[key], i = _value(s, _skip(s, i + 1))
            i = _skip(s, i)
            if s[i] == "}":
                return obj, i + 1
            if s[i] != ",":
                raise ValueError(f"expected ',' at {i}")
            i = _skip(s, i + 1)
    if ch == "[":
        arr: list[Any] = []
        i = _skip(s, i + 1)
        if s[i] == "]":
            return arr, i + 1
        while True:
            item, i = _value(s, _skip(s, i))
            arr.append(item)
            i = _skip(s, i)
            if s[i] == "]":
                return arr, i + 1
            if s[i] != ",":
                raise ValueError(f"expected ',' at {i}")
            i += 1
    if ch == '"':
        return _string(s, i)
    for word, val in (("true", True), ("false", False), ("null", None)):
        if s.startswith(word, i):
            return val, i + len(word)
    m = _re().compile(_NUMBER).match(s, i)
    if not m:
        raise ValueError(f"unexpected {ch!r} at {i}")
    num = m.group(0)
    return (float(num) if m.group(1) or m.group(2) else int(num)), m.end()


def _string(s: str, i: int) -> tuple[str, int]:
    if s[i] != '"':
        raise ValueError(f"expected a string at {i}")
    out: list[str] = []
    i += 1
    while True:
        ch = s[i]
        if ch == '"':
            return "".join(out), i + 1
        if ch == "\\":
            esc = s[i + 1]
            if esc == "u":
                code = int(s[i + 2 : i + 6], 16)
                i += 6
                if 0xD800 <= code < 0xDC00 and s.startswith("\\u", i):
                    low = int(s[i + 2 : i + 6], 16)
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    i += 6
                out.append(chr(code))
                continue
            out.append(_ESCAPES[esc])
            i += 2
            continue
        out.append(ch)
        i += 1


# ------------------------------------------------------------------------------------------ helpers
def _re() -> Any:
    """The ``re`` module, imported on first use (its own cache keeps the compiled patterns)."""
    import re

    return re


def _run(cmd: list[str], timeout: float | None = None) -> tuple[int, str]:
    import subprocess

    proc = subprocess.run(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        env=APT_ENV,
        timeout=timeout,
        check=False,
    )
    return proc.returncode, proc.stdout.decode("utf-8", "replace")


def _spawn(cmd: list[str]) -> Any:
    """Start a read-only check that runs alongside the next step; :func:`_collect` its output."""
    import subprocess

    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=APT_ENV
    )


def _collect(proc: Any) -> str:
    out, _ = proc.communicate()
    return str(out.decode("utf-8", "replace"))


def _boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


FAMILY: str | None = None
"""The package family the inventory names for this host (None: detect)."""


def _family() -> str:
    if FAMILY:
        return FAMILY
    if os.path.exists("/usr/bin/dpkg-query"):
        return "deb"
    if os.path.exists("/usr/bin/rpm"):
        return "rpm"
    return ""


def _os_release() -> dict[str, str]:
    fields: dict[str, str] = {}
    try:
        with open("/etc/os-release") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                fields[key] = value.strip('"')
    except OSError:
        pass
    return fields


def _product() -> str:
    fields = _os_release()
    if not fields:
        return ""
    name = {
        "debian": "Debian",
        "ubuntu": "Ubuntu",
        "rhel": "RedhatEnterpriseLinux",
        "amzn": "AmazonLinux",
    }.get(fields.get("ID", ""), fields.get("ID", "").capitalize())
    return name + fields.get("VERSION_ID", "")


def _packages() -> list[list[str]]:
    """Installed packages as [name, arch, version] (dpkg: only those dpkg considers installed or half-done)."""
    if _family() == "rpm":
        rc, out = _run(
            ["rpm", "-qa", "--qf", "%{NAME} %{ARCH} %|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\n"]
        )
        return [line.split(" ", 2) for line in out.splitlines() if line.count(" ") == 2]
    rc, out = _run(["dpkg-query", "-W", "-f", "${Package} ${Architecture} ${Version} ${db:Status-Abbrev}\\n"])
    pkgs = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[3][1:2] not in ("n", "c"):  # not "not-installed"/"config-files"
            pkgs.append(parts[:3])
    return pkgs


def _reboot_required() -> bool:
    if _family() == "rpm" and _which("needs-restarting"):
        rc, _ = _run(["needs-restarting", "-r"])
        return rc == 1
    return os.path.exists("/var/run/reboot-required")


def _which(tool: str) -> bool:
    return any(os.access(os.path.join(d, tool), os.X_OK) for d in APT_ENV["PATH"].split(":"))


def _audit() -> str:
    if _family() != "deb":
        return ""
    rc, out = _run(["dpkg", "--audit"])
    return out.strip()


def _rpm_less(a: str, b: str) -> bool:
    """rpm's own order (``rpm.vercmp`` through rpm's embedded Lua): is EVR ``a`` older than ``b``?"""
    expr = "%{lua: print(rpm.vercmp('" + a.replace("'", "") + "', '" + b.replace("'", "") + "'))}"
    rc, out = _run(["rpm", "--eval", expr])
    return out.strip() == "-1"


def _compare(a: str, op: str, b: str) -> bool:
    """``dpkg --compare-versions a op b`` without a process per comparison (dpkg's own algorithm, below);
    dpkg itself decides what this cannot parse."""
    try:
        order = debian_compare(a, b)
    except ValueError:
        order = None
    if order is None or op not in _OPS:
        import subprocess

        return subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False).returncode == 0
    return _OPS[op](order)


_OPS = {
    "lt": lambda c: c < 0,
    "le": lambda c: c <= 0,
    "eq": lambda c: c == 0,
    "ne": lambda c: c != 0,
    "ge": lambda c: c >= 0,
    "gt": lambda c: c > 0,
}
_DIGITS = "0123456789"


def debian_compare(a: str, b: str) -> int:
    """Debian's version order (dpkg ``lib/dpkg/version.c``: ``dpkg_version_compare``): epoch as a number,
    then upstream version, then revision, each by ``verrevcmp``. Negative, 0 or positive.

    Raises:
        ValueError: an epoch that is not a number.
    """
    (ea, ua, ra), (eb, ub, rb) = _split_version(a), _split_version(b)
    if ea != eb:
        return -1 if ea < eb else 1
    return _verrevcmp(ua, ub) or _verrevcmp(ra, rb)


def _split_version(version: str) -> tuple[int, str, str]:
    epoch, colon, rest = version.strip().partition(":")
    if not colon:
        epoch, rest = "0", version.strip()
    if not epoch.isdigit():
        raise ValueError(f"bad epoch in {version!r}")
    upstream, dash, revision = rest.rpartition("-")
    return (int(epoch), upstream, revision) if dash else (int(epoch), rest, "")


def _char_order(c: str) -> int:
    if c == "~":
        return -1
    if c.isascii() and c.isalpha():
        return ord(c)
    return ord(c) + 256


def _verrevcmp(a: str, b: str) -> int:
    i = j = 0
    while i < len(a) or j < len(b):
        while (i < len(a) and a[i] not in _DIGITS) or (j < len(b) and b[j] not in _DIGITS):
            ac = _char_order(a[i]) if i < len(a) and a[i] not in _DIGITS else 0
            bc = _char_order(b[j]) if j < len(b) and b[j] not in _DIGITS else 0
            if ac != bc:
                return ac - bc
            i, j = i + 1, j + 1
        while i < len(a) and a[i] == "0":
            i += 1
        while j < len(b) and b[j] == "0":
            j += 1
        first_diff = 0
        while i < len(a) and a[i] in _DIGITS and j < len(b) and b[j] in _DIGITS:
            first_diff = first_diff or ord(a[i]) - ord(b[j])
            i, j = i + 1, j + 1
        if i < len(a) and a[i] in _DIGITS:
            return 1
        if j < len(b) and b[j] in _DIGITS:
            return -1
        if first_diff:
            return first_diff
    return 0


def _tail(text: str, n: int = TAIL) -> str:
    text = text.strip()
    return text if len(text) <= n else "…" + text[-n:]


# ------------------------------------------------------------------------------------------ journal
def _path(operation_id: str) -> str:
    return os.path.join(JOURNAL_DIR, _sha256(operation_id.encode()).hexdigest()[:40] + ".json")


def _load(operation_id: str) -> dict[str, Any] | None:
    try:
        with open(_path(operation_id), encoding="utf-8") as f:
            data: dict[str, Any] = loads(f.read())
            return data
    except (OSError, ValueError):
        return None


def _save(journal: dict[str, Any]) -> None:
    os.makedirs(JOURNAL_DIR, mode=0o700, exist_ok=True)
    path = _path(journal["operation_id"])
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(dumps(journal))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class _Lock:
    """An exclusive lock over the journal directory (every state transition takes it)."""

    def __enter__(self) -> _Lock:
        os.makedirs(JOURNAL_DIR, mode=0o700, exist_ok=True)
        self.fd = os.open(os.path.join(JOURNAL_DIR, ".lock"), os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)


def _update(operation_id: str, expect: str | None, **changes: Any) -> dict[str, Any] | None:
    """Compare-and-set: apply ``changes`` if the journal's state is ``expect`` (None: any)."""
    with _Lock():
        journal = _load(operation_id)
        if journal is None or (expect is not None and journal.get("state") != expect):
            return journal
        journal.update(changes)
        journal["updated_at"] = time.time()
        _save(journal)
        return journal


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ operations
def op_facts(req: dict[str, Any]) -> dict[str, Any]:
    return {
        "boot_id": _boot_id(),
        "family": _family(),
        "product": _product(),
        "os_name": _os_release().get("NAME", ""),
        "os_version": _os_release().get("VERSION_ID", ""),
        "packages": _packages() if req.get("packages", True) else [],
        "reboot_required": _reboot_required(),
        "audit": _audit(),
        "now": time.time(),
    }


def op_inventory(req: dict[str, Any]) -> dict[str, Any]:
    """The package database and what the repositories offer for it (Debian): every package dpkg knows with
    its state (``ii`` = installed cleanly; ``iF``, ``iU`` … = half-done), and every version the configured apt
    sources offer for an installed package, with the suite and codename of its source and the version's
    section and priority. ``refresh`` (default) runs ``apt-get update`` first. The indexes are the ones apt
    itself lists (``apt-get indextargets``), read through ``apt-helper cat-file`` (any compression apt keeps)."""
    if _family() != "deb":
        return {"error": "the package inventory is implemented for apt/dpkg hosts only"}
    if req.get("refresh", True):
        rc, out = _run(["apt-get", "update", *APT_OPTS[:5]], timeout=600)
        if rc != 0:
            return {"error": "apt-get update failed: " + _tail(out, 1500)}
    rc, out = _run(["dpkg-query", "-W", "-f", "${Package} ${Architecture} ${Version} ${db:Status-Abbrev}\\n"])
    installed = []
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[3][1:2] not in ("n", "c"):
            installed.append([parts[0], parts[1], parts[2], parts[3][:2]])
    names = {p[0] for p in installed}
    rc, out = _run(
        [
            "apt-get",
            "indextargets",
            "--format",
            "$(FILENAME)\t$(SUITE)\t$(CODENAME)",
            "Identifier: Packages",
        ]
    )
    offered = []
    for line in out.splitlines():
        filename, _, rest = line.partition("\t")
        suite, _, codename = rest.partition("\t")
        if not filename or not os.path.exists(filename):
            continue  # listed by the sources but not downloaded (yet)
        rc, text = _run(["/usr/lib/apt/apt-helper", "cat-file", filename], timeout=600)
        for stanza in text.split("\n\n"):
            fields = {}
            for entry in stanza.splitlines():
                if entry and entry[0] not in " \t" and ":" in entry:
                    key, _, value = entry.partition(":")
                    fields[key] = value.strip()
            if fields.get("Package") in names and fields.get("Version"):
                offered.append(
                    [
                        fields["Package"],
                        fields.get("Architecture", ""),
                        fields["Version"],
                        suite,
                        codename,
                        fields.get("Section", ""),
                        fields.get("Priority", ""),
                    ]
                )
    return {"boot_id": _boot_id(), "installed": installed, "offered": offered, "now": time.time()}


def op_start(req: dict[str, Any]) -> dict[str, Any]:
    operation_id = req["operation_id"]
    with _Lock():
        journal = _load(operation_id)
        if journal is not None:
            return {"journal": journal, "new": False}
        journal = {
            "operation_id": operation_id,
            "kind": req["kind"],
            "packages": req["packages"],
            "sources": req.get("sources") or [],
            "product": _product(),
            "revert_on_failure": req.get("revert_on_failure", True),
            "state": "started",
            "pid": None,
            "boot_id": _boot_id(),
            "started_at": time.time(),
            "before": _packages(),
        }
        _save(journal)
    pid = os.fork()
    if pid == 0:  # the transaction: detached from the SSH session
        try:
            os.setsid()
            devnull = os.open(os.devnull, os.O_RDWR)
            log = os.open(_path(operation_id)[:-5] + ".log", os.O_CREAT | os.O_WRONLY | os.O_APPEND, 0o600)
            os.dup2(devnull, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            _update(operation_id, "started", pid=os.getpid())
            _transact(operation_id)
        finally:
            os._exit(0)
    if req.get("wait"):  # wait here for a short transaction: the install is then one SSH command
        answer = op_wait(
            {"operation_id": operation_id, "seconds": req["wait"], "close": req.get("close")}, child=pid
        )
        return {**answer, "new": True}
    return {"journal": journal, "new": True}


def op_wait(req: dict[str, Any], child: int | None = None) -> dict[str, Any]:
    """Wait for the transaction (:func:`_wait`). With ``close`` (the executor's reboot option) a transacted
    operation that needs no reboot by patchflow is closed (``transacted`` -> ``done``) in the same call, so an
    install costs two SSH round trips (``start``, ``wait``), not three — or one, when ``start`` itself waits
    (``child``: the transaction's process, which ``start`` forked, before the journal names it)."""
    answer = _wait(req, child)
    journal = answer.get("journal")
    if req.get("close") and journal is not None and journal.get("state") == "transacted":
        answer["journal"] = _close(journal, req["close"])
    return answer


def _close(journal: dict[str, Any], reboot_option: str) -> dict[str, Any]:
    result = journal["result"]
    reboot = bool(result.get("reboot_required")) and result["status"] == "succeeded"
    reboot = reboot and journal.get("kind") == "install"
    if reboot and reboot_option != "NoReboot":
        return journal  # RebootIfNeeded: the executor reboots the host and closes the operation after
    final = final_record(result, pending_reboot=reboot)
    return _update(journal["operation_id"], "transacted", state="done", final=final) or journal


def final_record(
    result: dict[str, Any],
    *,
    pending_reboot: bool = False,
    rebooted: bool = False,
    boot_id: str | None = None,
) -> dict[str, Any]:
    """The journal's ``final`` of a closed operation (``done``), written by the agent (:func:`_close`) or by
    the executor after a reboot or a reboot decision."""
    message = result.get("message", "")
    if pending_reboot:
        message += "; pending_reboot: the host requires a reboot (RebootOption NoReboot)"
    if rebooted:
        message += f"; rebooted (new boot id {boot_id})"
    return {
        "status": result["status"],
        "message": message,
        "rebooted": rebooted,
        "pending_reboot": pending_reboot,
        "finished_at": time.time(),
    }


def _wait(req: dict[str, Any], child: int | None = None) -> dict[str, Any]:
    """Block up to ``seconds`` while the journal says ``started``; a dead transaction is recorded as failed."""
    operation_id = req["operation_id"]
    deadline = time.time() + float(req.get("seconds", 10))
    while True:
        journal = _load(operation_id)
        if journal is None or journal.get("state") != "started":
            return {"journal": journal, "now": time.time()}
        lost = journal.get("boot_id") != _boot_id() or (
            not _alive(journal.get("pid"))
            and (journal.get("pid") or time.time() - journal["started_at"] > 30)
        )
        if lost:
            # Re-read under the lock: the transaction may have finished between the read and the check.
            after = _packages()
            result = _result(
                journal,
                after,
                "failed",
                "the package transaction was interrupted (its process died or the host rebooted under it); "
                + ("dpkg --audit: " + _tail(_audit(), 500) if _audit() else "dpkg --audit is clean"),
            )
            journal = _update(
                operation_id, "started", state="transacted", after=result.pop("after"), result=result
            )
            _drop_sources(operation_id)
            return {"journal": journal, "now": time.time()}
        if time.time() >= deadline:
            return {"journal": journal, "now": time.time()}
        _sleep_on(journal.get("pid") or child, min(deadline - time.time(), 1.0))


def _sleep_on(pid: int | None, seconds: float) -> None:
    """Sleep up to ``seconds``, waking as soon as process ``pid`` exits (a pidfd, Linux 5.3+; else 0.1 s
    steps): the answer leaves the host when the transaction ends, not up to a polling interval later."""
    fd = None
    if pid and hasattr(os, "pidfd_open"):
        try:
            fd = os.pidfd_open(pid)
        except OSError:
            fd = None
    if fd is None:
        time.sleep(min(max(seconds, 0.0), 0.1))
        return
    import select

    try:
        select.select([fd], [], [], max(seconds, 0.0))
    finally:
        os.close(fd)


def op_get(req: dict[str, Any]) -> dict[str, Any]:
    return {"journal": _load(req["operation_id"]), "now": time.time()}


def op_mark(req: dict[str, Any]) -> dict[str, Any]:
    return {"journal": _update(req["operation_id"], req["expect"], **req["set"])}


def op_reboot(req: dict[str, Any]) -> dict[str, Any]:
    """``transacted`` → ``rebooting``, and only the caller that made that move runs the reboot command."""
    with _Lock():
        journal = _load(req["operation_id"])
        moved = journal is not None and journal.get("state") == "transacted"
        if moved:
            assert journal is not None
            journal.update(
                state="rebooting", reboot_boot_id=_boot_id(), reboot_at=time.time(), updated_at=time.time()
            )
            _save(journal)
    if moved:
        import subprocess

        # Detached and delayed, so this answer reaches patchflow before the host goes down.
        subprocess.Popen(
            ["/bin/sh", "-c", "sleep 1; " + req["command"]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            env=APT_ENV,
        )
    return {"journal": journal}


def op_cancel(req: dict[str, Any]) -> dict[str, Any]:
    import contextlib
    import signal

    journal = _load(req["operation_id"])
    if journal is not None and journal.get("state") == "started" and _alive(journal.get("pid")):
        with contextlib.suppress(OSError):
            os.killpg(journal["pid"], signal.SIGTERM)
        time.sleep(float(req.get("grace", 2)))
        with contextlib.suppress(OSError):
            os.killpg(journal["pid"], signal.SIGKILL)
        after = _packages()
        result = _result(journal, after, req.get("status", "failed"), req.get("message", "cancelled"))
        journal = _update(
            req["operation_id"], "started", state="transacted", after=result.pop("after"), result=result
        )
        _drop_sources(req["operation_id"])
    return {"journal": journal}


# ------------------------------------------------------------------------------------------ transaction
def _result(
    journal: dict[str, Any],
    after: list[list[str]],
    status: str,
    message: str,
    *,
    audit: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The transaction's result; ``after`` is the package list now (kept in the result for the journal)."""
    before = {(n, a): v for n, a, v in journal["before"]}
    now = {(n, a): v for n, a, v in after}
    changed = [
        [n, a, before.get((n, a), ""), now.get((n, a), "")]
        for (n, a) in sorted(set(before) | set(now))
        if before.get((n, a)) != now.get((n, a))
    ]
    out = {
        "status": status,
        "message": message,
        "changed": changed,
        "reboot_required": _reboot_required(),
        "audit": _audit() if audit is None else audit,
        "after": after,
    }
    out.update(extra)
    return out


def _requests(journal: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """(name → exact version to request, names to remove) for this operation on this host."""
    installed: dict[str, str] = {}
    for n, _a, v in journal["before"]:  # listed when the operation started, under the journal lock
        installed[n] = v
    wanted: dict[str, str] = {}
    remove: list[str] = []
    for name, _arch, version in journal["packages"]:
        current = installed.get(name)
        if journal["kind"] == "install":
            older = _rpm_less(current, version) if current is not None and _family() == "rpm" else None
            if current is not None and (older if older is not None else _compare(current, "lt", version)):
                wanted[name] = version
        elif version == "":
            if current is not None:
                remove.append(name)
        elif current != version:
            wanted[name] = version
    return wanted, remove


PLAN_HOOK = r"""#!/bin/sh
# patchflow: apt's DPkg::Pre-Install-Pkgs hook for one transaction (removed when it ends)
W=@WANTED@
P=@PINNED@
R=@REMOVE@
out=@REPORT@
fail=0
sed -e '1,/^$/d' > "$out.actions" || exit 1
while IFS= read -r line; do
  [ -n "$line" ] || continue
  set -f; set -- $line; set +f
  if [ $# -lt 9 ]; then echo "O	(unreadable plan line) $line" >> "$out"; fail=1; continue; fi
  name=$1 old=$2 new=$6 target=$9
  case $target in
    '**CONFIGURE**') continue ;;
    '**REMOVE**')
      case "$R" in *" $name "*) ;; *) echo "O	$name $old -> removed" >> "$out"; fail=1 ;; esac
      continue ;;
  esac
  case "$W" in *" $name=$new "*) continue ;; esac
  case "$W" in
    *" $name="*) ;;
    *) case "$P" in
         *" $name="*)
           pin=${P#* "$name="}; pin=${pin%% *}
           [ "$pin" = "$new" ] || { echo "R	$name	$pin" >> "$out"; fail=1; }
           continue ;;
       esac ;;
  esac
  if [ "$old" = - ]; then echo "O	$name $new" >> "$out"; else echo "O	$name $old -> $new" >> "$out"; fi
  fail=1
done < "$out.actions"
rm -f "$out.actions"
if [ $fail = 1 ]; then echo "END	fail" >> "$out"; exit 1; fi
echo "END	ok" >> "$out"
"""
"""The ``DPkg::Pre-Install-Pkgs`` hook of an install (apt.conf(5), protocol version 3: the configuration space,
a blank line, then one line per action, ``name old-version old-arch old-multiarch direction new-version
new-arch new-multiarch file``, the file being ``**CONFIGURE**`` or ``**REMOVE**`` for those): it sees the exact
plan apt is about to hand to dpkg and stops it (exit 1: apt aborts before dpkg runs) when the plan installs,
upgrades, downgrades or removes anything outside the pinned set, or takes a set member at another version than
its pin (which the next attempt requests pinned). A POSIX shell script (with ``sed``, both Essential in
Debian), so the check costs no interpreter start-up. Its report: ``R name version`` (re-pin), ``O change``
(outside the set), then ``END ok|fail``, tab-separated, one run after another."""


def _sh_quote(text: str) -> str:
    """``text`` as one single-quoted shell word."""
    return "'" + text.replace("'", "'\\''") + "'"


def _sh_words(words: list[str]) -> str:
    """A space-framed list as one single-quoted shell word (``' a b '``), for ``case`` look-ups."""
    return _sh_quote(" " + " ".join(words) + " ")


def plan_hook(wanted: dict[str, str], pinned: dict[str, str], remove: list[str], report: str) -> str:
    """:data:`PLAN_HOOK` for one apt run."""
    return (
        PLAN_HOOK.replace("@WANTED@", _sh_words([f"{n}={v}" for n, v in sorted(wanted.items())]))
        .replace("@PINNED@", _sh_words([f"{n}={v}" for n, v in sorted(pinned.items())]))
        .replace("@REMOVE@", _sh_words(list(remove)))
        .replace("@REPORT@", _sh_quote(report))
    )


def _apt_checked(
    operation_id: str,
    wanted: dict[str, str],
    remove: list[str],
    pinned: dict[str, str],
    downgrades: bool,
    sources: list[str] | None = None,
) -> tuple[str, int, str, list[str]]:
    """Install with the plan checked by :data:`PLAN_HOOK` inside the transaction (no separate simulation).

    Returns ``(outcome, exit status, output, changes outside the set)``; the outcome is ``refused`` (apt stopped
    before dpkg ran: the resolver refused, a download failed, or the plan left the pinned set — nothing was
    changed) or ``ran`` (dpkg ran; the exit status says how it went). Set members the resolver pulls in are
    requested at their pinned versions and apt runs again.
    """
    base = _path(operation_id)[:-5]
    hook, report, archives = base + ".hook", base + ".plan", base + ".archives"
    rc, out, outside = 0, "", []
    try:
        # apt downloads into a private directory removed afterwards: a refused plan leaves no .deb behind.
        os.makedirs(os.path.join(archives, "partial"), mode=0o700, exist_ok=True)
        for _ in range(10):
            _write(hook, plan_hook(wanted, pinned, remove, report), 0o700)
            _unlink(report)
            checked = [
                *(sources or []),
                *("-o", f"DPkg::Pre-Install-Pkgs::={hook}", "-o", f"DPkg::Tools::Options::{hook}::Version=3"),
                *("-o", f"Dir::Cache::Archives={archives}/"),
            ]
            rc, out = _apt_install(wanted, remove, downgrades, checked)
            try:
                with open(report, encoding="utf-8") as f:
                    verdicts = [line.rstrip("\n").split("\t", 2) for line in f if "\t" in line]
            except OSError:
                verdicts = []
            if not verdicts:  # the hook never ran: apt stopped before dpkg (or had nothing to do)
                return ("refused" if rc != 0 else "ran"), rc, out, []
            outside = [v[1] for v in verdicts if v[0] == "O"]
            if ["END", "ok"] in verdicts:  # dpkg ran (at least once: apt may call it more than once)
                return "ran", rc, out, outside
            repin = {v[1]: v[2] for v in verdicts if v[0] == "R" and len(v) == 3}
            if outside or not repin:
                return "refused", rc, out, outside
            wanted.update(repin)  # set members the resolver pulled in: at their pinned versions
        return "refused", rc, out, outside
    finally:
        _unlink(hook)
        _unlink(report)
        _remove_tree(archives)


def _unlink(path: str) -> None:
    try:  # noqa: SIM105 - contextlib is not imported by every agent call
        os.unlink(path)
    except OSError:
        pass


def _apt_install(
    wanted: dict[str, str], remove: list[str], downgrades: bool, options: list[str] | None = None
) -> tuple[int, str]:
    """``apt-get install`` of exactly these versions and removals, with extra apt ``options``."""
    args = [f"{n}={v}" for n, v in sorted(wanted.items())] + [f"{n}-" for n in remove]
    cmd = (
        ["apt-get", "-y", *APT_OPTS, *(options or [])]
        + (["--allow-downgrades"] if downgrades else [])
        + ["install", *args]
    )
    return _run(cmd, timeout=None)


# ------------------------------------------------------------------------------------------ baseline Sources
_APT_FETCH_ERROR = r"^(Err:|E: |W: Failed to fetch|W: Some index files failed)"
_REPO_SECTION = r"(?m)^\s*\[([^\]]+)\]\s*$"


def _sources_dir(operation_id: str) -> str:
    return os.path.join(SOURCES_DIR, _sha256(operation_id.encode()).hexdigest()[:40])


def _used_sources(journal: dict[str, Any]) -> list[dict[str, Any]]:
    """The request's sources that name this host's product (case-insensitive), in baseline order."""
    product = (journal.get("product") or "").lower()
    return [
        s for s in journal.get("sources") or [] if product and product in [p.lower() for p in s["products"]]
    ]


def _sources_note(journal: dict[str, Any], used: list[dict[str, Any]]) -> str:
    """What the result message says about Sources ("" without any)."""
    if used:
        return (
            " from the baseline Sources "
            + ", ".join(s["name"] for s in used)
            + " (the host's own repository "
            "configuration, lists and caches were not touched)"
        )
    if journal.get("sources"):
        named = sorted({p for s in journal["sources"] for p in s["products"]})
        return (
            f" from the host's own repositories: no baseline Source names its product "
            f"{journal.get('product') or '(unknown)'} (they name {', '.join(named)})"
        )
    return ""


def _write(path: str, text: str, mode: int = 0o644) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text if text.endswith("\n") else text + "\n")
    os.chmod(path, mode)


def _prepare_sources(operation_id: str, used: list[dict[str, Any]], family: str) -> list[str]:
    """Write the sources into the operation's private directory; the options that make apt/dnf use only them."""
    _drop_sources(operation_id)
    base = _sources_dir(operation_id)
    os.makedirs(SOURCES_DIR, mode=0o755, exist_ok=True)
    if family == "deb":
        for sub in ("sources.list.d", "lists/partial", "cache/archives/partial"):
            os.makedirs(os.path.join(base, sub), mode=0o755, exist_ok=True)
        os.chmod(base, 0o755)  # apt's download sandbox user (_apt) must reach lists/partial
        _write(os.path.join(base, "sources.list"), "".join(s["configuration"].strip() + "\n" for s in used))
        return [
            "-o",
            f"Dir::Etc::SourceList={base}/sources.list",
            "-o",
            f"Dir::Etc::SourceParts={base}/sources.list.d",
            "-o",
            f"Dir::State::Lists={base}/lists",
            "-o",
            f"Dir::Cache={base}/cache",
        ]
    os.makedirs(os.path.join(base, "repos.d"), mode=0o755, exist_ok=True)
    os.makedirs(os.path.join(base, "cache"), mode=0o755, exist_ok=True)
    for n, source in enumerate(used):
        _write(os.path.join(base, "repos.d", f"{n:02d}-{source['name']}.repo"), source["configuration"])
    return [
        f"--setopt=reposdir={base}/repos.d",
        f"--setopt=cachedir={base}/cache",
        f"--setopt=system_cachedir={base}/cache",
        "--setopt=skip_if_unavailable=False",
    ]


def _drop_sources(operation_id: str) -> None:
    """Remove the operation's private directory (and the parent when it is empty): nothing stays behind."""
    import contextlib

    _remove_tree(_sources_dir(operation_id))
    with contextlib.suppress(OSError):
        os.rmdir(SOURCES_DIR)  # only when empty


def _remove_tree(base: str) -> None:
    """Remove a directory the agent made, with everything in it (symbolic links are removed, not followed)."""
    import contextlib

    if not os.path.isdir(base) or os.path.islink(base):
        return
    for root, dirs, files in os.walk(base, topdown=False):
        for name in files:
            _unlink(os.path.join(root, name))
        for name in dirs:
            path = os.path.join(root, name)
            with contextlib.suppress(OSError):
                os.unlink(path) if os.path.islink(path) else os.rmdir(path)
    with contextlib.suppress(OSError):
        os.rmdir(base)


def _unreachable(used: list[dict[str, Any]], out: str, family: str) -> str:
    """Which sources the failed fetch names (by URL for apt, by repo id for dnf), for the message."""
    named = []
    for source in used:
        conf = source["configuration"]
        if family == "deb":
            words = [w for w in conf.split() if "://" in w]
            keys = words[:1]
        else:
            keys = [f"'{k}'" for k in _re().findall(_REPO_SECTION, conf)] + [
                f'"{k}"' for k in _re().findall(_REPO_SECTION, conf)
            ]
        if any(k in out for k in keys):
            named.append(source["name"])
    return ", ".join(named or [s["name"] for s in used])


def _transact(operation_id: str) -> None:
    journal = _load(operation_id)
    assert journal is not None
    try:
        family = _family()
        result = (
            _transact_deb(journal) if family == "deb" else _transact_rpm(journal) if family == "rpm" else None
        )
        if result is None:
            result = _result(journal, _packages(), "failed", "unsupported package family on this host")
    except Exception as exc:  # noqa: BLE001 - every failure must reach the journal
        result = _result(journal, _packages(), "failed", f"the agent failed: {exc!r}")
    finally:
        _drop_sources(operation_id)
    _update(operation_id, "started", state="transacted", after=result.pop("after"), result=result)


def _apt_update(
    journal: dict[str, Any], used: list[dict[str, Any]]
) -> tuple[list[str], dict[str, Any] | None]:
    """``apt-get update`` of the host's repositories, or of only the baseline Sources into private lists.

    Returns the apt options of the transaction and, when the repositories cannot be read, its failed result.
    """
    if not used:
        rc, out = _run(["apt-get", "update", *APT_OPTS[:5]], timeout=600)
        if rc != 0:
            return [], _result(journal, _packages(), "failed", "apt-get update failed: " + _tail(out, 1500))
        return [], None
    opts = _prepare_sources(journal["operation_id"], used, "deb")
    rc, out = _run(["apt-get", "update", *APT_OPTS[:5], *opts], timeout=600)
    errors = [line for line in out.splitlines() if _re().match(_APT_FETCH_ERROR, line)]
    if rc != 0 or errors:
        return opts, _result(
            journal,
            _packages(),
            "failed",
            f"the baseline Source {_unreachable(used, out, 'deb')} cannot be reached: "
            + _tail("\n".join(errors) or out, 1500)
            + "; nothing was changed (the host's own repositories were not touched)",
        )
    return opts, None


def _transact_deb(journal: dict[str, Any]) -> dict[str, Any]:
    used = _used_sources(journal)
    auditing = _spawn(["dpkg", "--audit"])  # read-only, alongside apt-get update (which only touches lists)
    opts, failed = _apt_update(journal, used)
    audit = _collect(auditing).strip()
    if failed is not None:
        return failed
    if audit:
        return _result(
            journal,
            _packages(),
            "failed",
            "the package database is broken before the transaction (dpkg --audit): " + _tail(audit, 1500),
        )
    wanted, remove = _requests(journal)
    if not wanted and not remove:
        return _result(journal, _packages(), "succeeded", "nothing to do: every package is at its version")
    pinned = {n: v for n, _a, v in journal["packages"] if v}
    downgrades = journal["kind"] == "restore"
    outcome, rc, out, outside = _apt_checked(
        journal["operation_id"], wanted, remove, pinned, downgrades, opts
    )
    if outcome == "refused" and outside:
        return _result(
            journal,
            _packages(),
            "failed",
            "the resolver would also change packages outside the pinned set: "
            + ", ".join(outside)
            + "; nothing was changed",
            outside=outside,
        )
    if outcome == "refused":
        return _result(
            journal,
            _packages(),
            "failed",
            "the resolver refused the pinned versions"
            + _sources_note(journal, used)
            + "; nothing was changed: "
            + _tail(out, 1500),
        )
    auditing = _spawn(["dpkg", "--audit"])
    after = _packages()
    audit = _collect(auditing).strip()
    if rc == 0 and not audit:
        verb = "installed" if journal["kind"] == "install" else "restored"
        removed = f", removed {len(remove)}" if remove else ""
        note = _sources_note(journal, used)
        return _result(
            journal, after, "succeeded", f"{verb} {len(wanted)} package(s){removed}{note}", audit=audit
        )
    message = f"apt-get install failed (exit {rc}): {_tail(out, 1500)}"
    if outside:
        message += " | the resolver also planned changes outside the pinned set: " + ", ".join(outside)
    if audit:
        message += " | dpkg --audit: " + _tail(audit, 500)
    if journal["kind"] == "install" and journal.get("revert_on_failure", True):
        message += " | " + _revert(journal, after)
    return _result(journal, _packages(), "failed", message, output_tail=_tail(out))


DNF = ["dnf", "-y", "--setopt=install_weak_deps=False", "--setopt=keepcache=False"]
_DNF_SECTIONS = (
    "Installing",
    "Upgrading",
    "Downgrading",
    "Reinstalling",
    "Removing",
    "Installing dependencies",
    "Installing weak dependencies",
    "Removing dependent packages",
    "Removing unused dependencies",
)


def _evr(version: str) -> str:
    return version[2:] if version.startswith("0:") else version


def _dnf_plan(out: str) -> list[tuple[str, str, str]]:
    """(section, name, version) rows of dnf's transaction table."""
    rows = []
    section = ""
    for line in out.splitlines():
        if line.rstrip().endswith(":") and line.rstrip(":").strip() in _DNF_SECTIONS:
            section = line.rstrip(":").strip()
            continue
        if not line.strip() or line.startswith("Transaction Summary"):
            section = "" if line.startswith("Transaction") else section
            continue
        parts = line.split()
        if section and line.startswith(" ") and len(parts) >= 4 and parts[0] != "replacing":
            rows.append((section, parts[0], parts[2]))
    return rows


def _transact_rpm(journal: dict[str, Any]) -> dict[str, Any]:
    used = _used_sources(journal)
    opts = _prepare_sources(journal["operation_id"], used, "rpm") if used else []
    rc, out = _run(["dnf", "-q", "-y", *opts, "makecache", "--refresh"], timeout=600)
    if rc != 0 and used:
        return _result(
            journal,
            _packages(),
            "failed",
            f"the baseline Source {_unreachable(used, out, 'rpm')} cannot be reached: "
            + _tail(out, 1500)
            + "; nothing was changed (the host's own repositories were not touched)",
            audit="",
        )
    if rc != 0:
        return _result(journal, _packages(), "failed", "dnf makecache failed: " + _tail(out, 1500))
    wanted, remove = _requests(journal)
    if not wanted and not remove:
        return _result(
            journal, _packages(), "succeeded", "nothing to do: every package is at its version", audit=""
        )
    pinned = {n: _evr(v) for n, _a, v in journal["packages"] if v}
    outside: list[str] = []
    for _ in range(10):
        specs = [f"{n}-{v}" for n, v in sorted(wanted.items())]
        rc, out = _run(
            ["dnf", "--assumeno", "--setopt=install_weak_deps=False", *opts, "install", *specs], timeout=600
        )
        if "Error:" in out or (rc != 0 and "Operation aborted" not in out):
            return _result(
                journal,
                _packages(),
                "failed",
                "the resolver refused the pinned versions"
                + _sources_note(journal, used)
                + "; nothing was changed: "
                + _tail(out, 1500),
                audit="",
            )
        outside, repin = [], False
        for section, name, version in _dnf_plan(out):
            if section.startswith("Removing"):
                outside.append(f"{name} -> removed")
            elif _evr(wanted.get(name, "")) == _evr(version):
                continue
            elif name in pinned and name not in wanted:
                if pinned[name] == _evr(version):
                    continue
                wanted[name] = pinned[name]
                repin = True
            else:
                outside.append(f"{name} -> {version}")
        if not repin:
            break
    if outside:
        return _result(
            journal,
            _packages(),
            "failed",
            "the resolver would also change packages outside the pinned set: "
            + ", ".join(outside)
            + "; nothing was changed",
            audit="",
            outside=outside,
        )
    specs = [f"{n}-{v}" for n, v in sorted(wanted.items())]
    rc, out = _run([*DNF, *opts, "install", *specs])
    after = _packages()
    if rc == 0:
        verb = "installed" if journal["kind"] == "install" else "restored"
        note = _sources_note(journal, used)
        return _result(
            journal, after, "succeeded", f"{verb} {len(wanted)} package(s) with dnf{note}", audit=""
        )
    return _result(journal, after, "failed", f"dnf install failed (exit {rc}): {_tail(out, 1500)}", audit="")


def _revert(journal: dict[str, Any], after: list[list[str]]) -> str:
    """Put every package the failed transaction touched back to its version before it."""
    before = {n: v for n, _a, v in journal["before"]}
    now = {n: v for n, _a, v in after}
    wanted = {n: v for n, v in before.items() if n in now and now[n] != v}
    remove = [n for n in now if n not in before]
    if not wanted and not remove:
        return "nothing to revert"
    rc, out = _apt_install(wanted, remove, True)
    audit = _audit()
    if rc == 0 and not audit:
        return "reverted to the versions before the transaction (dpkg --audit is clean)"
    return f"reverting failed (exit {rc}): " + _tail(out + "\n" + audit, 800)


OPERATIONS = {
    "facts": op_facts,
    "inventory": op_inventory,
    "start": op_start,
    "wait": op_wait,
    "get": op_get,
    "mark": op_mark,
    "reboot": op_reboot,
    "cancel": op_cancel,
}


def main(text: str) -> None:
    global FAMILY
    call = loads(text)
    FAMILY = call["request"].get("family") or None
    answer = OPERATIONS[call["op"]](call["request"])
    sys.stdout.write("\n" + dumps(answer) + "\n")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # the answer is out; skip the interpreter's teardown (the host pays for every call)


AGENT_CACHE = "/var/lib/patchflow/agent"
"""Where the host keeps the agent's compiled code, one file per agent version and Python (``marshal``), so a
call does not compile ~45 KB of source again. Made only on a host that already has ``/var/lib/patchflow``
(the first install creates it), owned by the agent's user, mode 0700; a cache whose directory is not owned by
the agent's user or is writable by anyone else is neither read nor written."""

BOOTSTRAP = f"""import sys,os,marshal
d=sys.stdin.read();n=d.index(chr(10));k,h=d[:n].split();k=int(k);p={AGENT_CACHE!r};c=None;ok=False
f=p+'/'+h+'-'+hex(sys.hexversion)[2:]+'.bin'
try:
 if not os.path.isdir(p):os.mkdir(p,0o700)
 s=os.stat(p);ok=s.st_uid==os.geteuid() and not s.st_mode&0o22
 if ok:c=marshal.loads(open(f,'rb').read())
except Exception:c=None
if c is None:
 c=compile(d[n+1:n+1+k],'patchflow_agent','exec')
 try:
  if ok:t=f+'.'+str(os.getpid());open(t,'wb').write(marshal.dumps(c));os.replace(t,f)
 except Exception:pass
g={{'__name__':'patchflow_agent'}};exec(c,g);g['main'](d[n+1+k:])"""
"""What ``python3 -I -S -c`` runs on the host. Its stdin is ``<length of the agent source> <sha256 of it>\n<agent
source><call JSON>`` (no json module needed: Debian's python3-minimal lacks it). The compiled agent is
cached under :data:`AGENT_CACHE` by the source's hash (a changed agent is a new file; a corrupt file is
compiled again)."""


_HEADERS: dict[str, str] = {}
"""The controller's ``<length> <sha256>\n<source>`` prefix per agent source (hashed once, not per call)."""


def payload(agent_source: str, op: str, request: dict[str, Any]) -> str:
    """The stdin of one agent call."""
    head = _HEADERS.get(agent_source)
    if head is None:
        digest = _sha256(agent_source.encode("utf-8")).hexdigest()
        head = _HEADERS[agent_source] = f"{len(agent_source)} {digest}\n{agent_source}"
    return head + dumps({"op": op, "request": request})
