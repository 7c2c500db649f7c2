"""Baseline ``Sources`` on SSM nodes: the ``AWS-RunShellScript`` steps around an ``InstallOverrideList`` install.

Why shell steps: ``AWS-RunPatchBaseline`` applies a baseline's ``Sources`` only through the baseline it evaluates
— the node's patch-group/default baseline or a ``BaselineOverride`` — and the User Guide ("Using the
BaselineOverride parameter", "Using baseline override and Install Override List at the same time") says "You
can't use these two parameters at the same time. The patching document fails if both parameters are supplied,
and it doesn't perform any scans or installs on the managed node." patchflow installs its pinned set with
``InstallOverrideList``, so it cannot hand SSM the Sources; it configures them on the node for the duration of
the install instead, the way Patch Manager describes them ("Only specified repositories are used for
patching"; they do not become "the new default repositories": "After the patching operation is complete, the
repositories previously configured as the defaults for the node's operating system remain the defaults").

* **configure** (before the install): write the sources into ``/var/lib/patchflow/sources/<sha256(id)>``,
  fetch them once with only them configured (into that directory: a source that cannot be reached ends the
  step ``Failed`` with its error, and nothing on the node has changed), then point the package manager at
  them — apt: an ``/etc/apt/apt.conf.d/99patchflow-sources-<digest>`` snippet setting ``Dir::Etc::SourceList``,
  ``Dir::Etc::SourceParts``, ``Dir::State::Lists`` and ``Dir::Cache`` to that directory (the node's own lists
  and caches are neither read nor refreshed); dnf/yum: ``reposdir`` and ``cachedir`` in ``[main]`` of
  ``/etc/dnf/dnf.conf`` (``/etc/yum.conf``), the original kept beside the sources.
* **cleanup** (after the install, whatever its outcome — also after a failed configure, a cancel or an
  execution timeout): remove the snippet, put the original main configuration back byte for byte, remove the
  directory (and ``/var/lib/patchflow`` when that leaves it empty). Idempotent: running it twice, or without
  a configure, is harmless.

While the steps are in place (from configure to cleanup, including a ``RebootIfNeeded`` reboot) *every* apt or
dnf run on the node sees only the Sources — the price of doing it without SSM's help; the SSH executor passes
them per command instead. Configurations travel base64-encoded, so no quoting in a source can break a script.
"""

from __future__ import annotations

import base64
import hashlib
import shlex
from collections.abc import Sequence

from patchflow.core.instances import RepoSource

__all__ = ["SOURCES_ROOT", "apt_conf_path", "cleanup_script", "configure_script", "sources_dir"]

SOURCES_ROOT = "/var/lib/patchflow/sources"
_APT_FETCH_ERROR = r"^(Err:|E: |W: Failed to fetch|W: Some index files failed)"


def _digest(operation_id: str) -> str:
    return hashlib.sha256(operation_id.encode()).hexdigest()


def sources_dir(operation_id: str) -> str:
    """The node directory holding one operation's sources (the SSH agent uses the same layout)."""
    return f"{SOURCES_ROOT}/{_digest(operation_id)[:40]}"


def apt_conf_path(operation_id: str) -> str:
    """The apt configuration snippet that points apt at the operation's sources while it is configured."""
    return f"/etc/apt/apt.conf.d/99patchflow-sources-{_digest(operation_id)[:12]}"


def _put(text: str, target: str) -> str:
    """A shell line writing ``text`` to ``target`` (quoted path), whatever characters the text holds."""
    encoded = base64.b64encode(text.encode()).decode()
    return f"printf '%s' {encoded} | base64 -d > {target}"


def _names(sources: Sequence[RepoSource]) -> str:
    return ", ".join(s.name for s in sources)


def configure_script(family: str, operation_id: str, sources: Sequence[RepoSource]) -> list[str]:
    """The ``commands`` of the configure step (see the module docstring); exits 3 when a source cannot be read."""
    if not sources:
        raise ValueError("configure_script needs at least one source")
    d = sources_dir(operation_id)
    fail = (
        f'printf "%s\\n" "$out" >&2; rm -rf "$d"; rmdir {SOURCES_ROOT} /var/lib/patchflow 2>/dev/null || true; '
        f'echo "patchflow: the baseline Sources '
        f'({_names(sources)}) cannot be reached with only them configured; nothing was changed" >&2; exit 3'
    )
    lines = ["set -eu", f"d={shlex.quote(d)}"]
    if family == "deb":
        conf = apt_conf_path(operation_id)
        listing = "".join(s.configuration.strip() + "\n" for s in sources)
        apt_conf = (
            f"// patchflow: the baseline Sources ({_names(sources)}) of one install; its cleanup step removes this\n"
            f'Dir::Etc::SourceList "{d}/sources.list";\n'
            f'Dir::Etc::SourceParts "{d}/sources.list.d";\n'
            f'Dir::State::Lists "{d}/lists/";\n'
            f'Dir::Cache "{d}/cache/";\n'
        )
        lines += [
            f"conf={shlex.quote(conf)}",
            'rm -rf "$d" "$conf"',
            'mkdir -p "$d/sources.list.d" "$d/lists/partial" "$d/cache/archives/partial"',
            f'chmod 755 {SOURCES_ROOT} "$d"',
            _put(listing, '"$d/sources.list"'),
            'opts="-o Dir::Etc::SourceList=$d/sources.list -o Dir::Etc::SourceParts=$d/sources.list.d '
            '-o Dir::State::Lists=$d/lists -o Dir::Cache=$d/cache"',
            "out=$(apt-get update -q $opts 2>&1) || { " + fail + "; }",
            f"if printf '%s\\n' \"$out\" | grep -Eq '{_APT_FETCH_ERROR}'; then {fail}; fi",
            _put(apt_conf, '"$conf"'),
        ]
    else:
        lines += [
            "if command -v dnf >/dev/null 2>&1; then tool=dnf; main=/etc/dnf/dnf.conf; "
            "else tool=yum; main=/etc/yum.conf; fi",
            'rm -rf "$d"',
            'mkdir -p "$d/repos.d" "$d/cache"',
            *(
                _put(s.configuration.strip() + "\n", f'"$d/repos.d/{n:02d}-{s.name}.repo"')
                for n, s in enumerate(sources)
            ),
            'opts="--setopt=reposdir=$d/repos.d --setopt=cachedir=$d/cache --setopt=system_cachedir=$d/cache '
            '--setopt=skip_if_unavailable=False"',
            "out=$($tool -q -y $opts makecache 2>&1) || { " + fail + "; }",
            # The main configuration as it is (or an empty [main] when the node has none), kept to restore.
            'if [ -f "$main" ]; then cp -p "$main" "$d/main.conf.orig"; cp "$main" "$d/main.src"; '
            "else printf '[main]\\n' > \"$d/main.src\"; fi",
            # [main] gets our reposdir/cachedir (any of its own are dropped while the sources are configured).
            'awk -v d="$d" \'BEGIN{m=0} /^\\[/{m=($0=="[main]")} '
            "m && /^(reposdir|cachedir|system_cachedir)[ \\t]*=/{next} {print} "
            '$0=="[main]"{print "reposdir=" d "/repos.d"; print "cachedir=" d "/cache"; '
            'print "system_cachedir=" d "/cache"}\' "$d/main.src" > "$d/main.conf"',
            'cat "$d/main.conf" > "$main"',
        ]
    lines.append(
        f'echo "patchflow: the baseline Sources ({_names(sources)}) are configured for this install"'
    )
    return lines


def cleanup_script(family: str, operation_id: str) -> list[str]:
    """The ``commands`` of the cleanup step: everything the configure step did is undone (idempotent)."""
    d = sources_dir(operation_id)
    lines = ["set -eu", f"d={shlex.quote(d)}"]
    if family == "deb":
        lines.append(f"rm -f {shlex.quote(apt_conf_path(operation_id))}")
    else:
        lines += [
            "if command -v dnf >/dev/null 2>&1; then main=/etc/dnf/dnf.conf; else main=/etc/yum.conf; fi",
            'if [ -f "$d/main.conf.orig" ]; then cat "$d/main.conf.orig" > "$main"; '
            'elif [ -f "$d/main.conf" ]; then rm -f "$main"; fi',
        ]
    lines += [
        'rm -rf "$d"',
        f"rmdir {SOURCES_ROOT} /var/lib/patchflow 2>/dev/null || true",
        'echo "patchflow: the baseline Sources of this install are removed; the node\'s own repositories are back"',
    ]
    return lines
