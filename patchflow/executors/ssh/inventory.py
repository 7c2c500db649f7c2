"""The SSH executor's inventory: Ansible-style YAML, so an existing Ansible inventory mostly just works.

::

    all:
      vars:
        ansible_user: root                               # or: user
        ansible_ssh_private_key_file: ~/.ssh/patchflow   # or: key_file
        known_hosts: ./known_hosts                       # required: host keys are always verified
      children:
        prod:
          vars: {health_command: "systemctl is-active nginx"}
          hosts:
            web-01: {ansible_host: 127.0.10.5, tags: {Patch Group: prod}}
            web-02: {ansible_host: 127.0.10.6, ansible_port: 2222, patch_group: prod}

Variables are inherited ``all`` → group → child group → host (the closest wins); a host listed in several
groups gets all of them. Recognised variables (Ansible's name first): ``ansible_host``/``address``,
``ansible_port``/``port`` (22), ``ansible_user``/``user`` (root; any other user runs the agent through
``sudo -n``), ``ansible_ssh_private_key_file``/``key_file``, ``known_hosts``, ``ansible_become`` (force
sudo), ``tags`` (a mapping, e.g. ``Patch Group``), ``patch_group`` (shorthand for that tag), ``family``
(deb/rpm), ``health_command``, ``reboot_command`` (``reboot``), ``availability_zone`` (the host's zone, for
disruption budgets and ``rollout: zone_by_zone``). Other variables are kept but unused.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchflow.core.documents import Document, PathPart, load_document, unknown_key
from patchflow.errors import InputError, Problem

_GROUP_KEYS = ("hosts", "vars", "children")
_VAR_ALIASES = {
    "address": ("ansible_host", "address"),
    "port": ("ansible_port", "port"),
    "user": ("ansible_user", "user"),
    "key_file": ("ansible_ssh_private_key_file", "key_file"),
}


class SshInventoryError(InputError):
    """The SSH inventory file is malformed (every problem located by line and field)."""


@dataclass(frozen=True)
class SshHost:
    """One host of the inventory, its variables resolved."""

    name: str
    address: str
    port: int = 22
    user: str = "root"
    key_file: Path | None = None
    known_hosts: Path | None = None
    groups: tuple[str, ...] = ()
    tags: dict[str, str] = field(default_factory=dict)
    family: str | None = None
    sudo: bool = False
    """Run the agent through ``sudo -n`` (any user but root, or ``ansible_become: true``)."""
    health_command: str | None = None
    reboot_command: str = "reboot"
    availability_zone: str | None = None
    """The host var ``availability_zone`` (None: not set)."""


@dataclass(frozen=True)
class SshInventory:
    source: str
    hosts: dict[str, SshHost]


def load_inventory(path: str | Path) -> SshInventory:
    """Read and validate an inventory file; every problem in it is reported at once."""
    doc = load_document(path, kind="SSH inventory", error=SshInventoryError)
    return parse_inventory(doc)


def parse_inventory(doc: Document) -> SshInventory:
    problems: list[Problem] = []
    base = Path(doc.source).resolve().parent

    def bad(where: tuple[PathPart, ...], message: str) -> None:
        problems.append(doc.problem(where, message))

    data = doc.data
    if not isinstance(data, dict):
        raise SshInventoryError(
            "an SSH inventory is a mapping of groups, e.g. all: {hosts: {web-01: {ansible_host: …}}}",
            source=doc.source,
        )
    # name -> (merged vars, groups, path of the host entry)
    found: dict[str, tuple[dict[str, Any], list[str], tuple[PathPart, ...]]] = {}

    def walk(name: str, group: Any, inherited: dict[str, Any], where: tuple[PathPart, ...]) -> None:
        if group is None:
            return
        if not isinstance(group, dict):
            bad(where, "expected a group: a mapping with hosts, vars and/or children")
            return
        for key in group:
            if key not in _GROUP_KEYS:
                bad((*where, str(key)), unknown_key(str(key), _GROUP_KEYS, context="a group"))
        gvars = group.get("vars") or {}
        if not isinstance(gvars, dict):
            bad((*where, "vars"), "expected a mapping of variables")
            gvars = {}
        merged = {**inherited, **_normalized(gvars)}
        hosts = group.get("hosts") or {}
        if not isinstance(hosts, dict):
            bad((*where, "hosts"), "expected a mapping of host names to their variables (or nothing)")
            hosts = {}
        for host_name, hvars in hosts.items():
            hwhere = (*where, "hosts", str(host_name))
            if hvars is not None and not isinstance(hvars, dict):
                bad(hwhere, "expected the host's variables as a mapping (or nothing)")
                continue
            entry = found.setdefault(str(host_name), ({}, [], hwhere))
            entry[0].update({**merged, **_normalized(hvars or {})})
            if name not in ("all", "ungrouped") and name not in entry[1]:
                entry[1].append(name)
        children = group.get("children") or {}
        if not isinstance(children, dict):
            bad((*where, "children"), "expected a mapping of child group names to groups")
            children = {}
        for child_name, child in children.items():
            walk(str(child_name), child, merged, (*where, "children", str(child_name)))

    for top, group in data.items():
        walk(str(top), group, {}, (str(top),))
    hosts: dict[str, SshHost] = {}
    for name, (hvars, groups, where) in found.items():
        host = _host(name, hvars, tuple(groups), where, base, bad)
        if host is not None:
            hosts[name] = host
    if not hosts and not problems:
        bad((), "the inventory lists no hosts")
    if problems:
        raise SshInventoryError("invalid SSH inventory", source=doc.source, problems=problems)
    return SshInventory(source=doc.source, hosts=hosts)


def _normalized(variables: dict[str, Any]) -> dict[str, Any]:
    """Short names (``address``, ``port``, …) become Ansible's, so a closer level's short name overrides a farther
    level's Ansible name."""
    out = dict(variables)
    for ansible_name, short in _VAR_ALIASES.values():
        if short in out:
            out[ansible_name] = out.pop(short)
    return out


def _var(hvars: dict[str, Any], key: str) -> Any:
    for alias in _VAR_ALIASES.get(key, (key,)):
        if alias in hvars:
            return hvars[alias]
    return None


def _host(
    name: str,
    hvars: dict[str, Any],
    groups: tuple[str, ...],
    where: tuple[PathPart, ...],
    base: Path,
    bad: Any,
) -> SshHost | None:
    ok = True

    def fail(key: str, message: str) -> None:
        nonlocal ok
        ok = False
        bad((*where, key), f"host {name}: {message}")

    address = _var(hvars, "address") or name
    if not isinstance(address, str) or not address.strip():
        fail("ansible_host", "expected the host's address (a name or an IP address)")
    port = _var(hvars, "port") or 22
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        fail("ansible_port", f"{port!r}: expected a port number from 1 to 65535")
    user = _var(hvars, "user") or "root"
    if not isinstance(user, str) or not user.strip():
        fail("ansible_user", "expected a user name")

    def path_var(key: str, value: Any, *, required: bool, hint: str) -> Path | None:
        if value is None:
            if required:
                fail(key, hint)
            return None
        if not isinstance(value, str) or not value.strip():
            fail(key, "expected a file path")
            return None
        resolved = (base / Path(value).expanduser()).resolve()
        if not resolved.is_file():
            fail(
                key, f"{value!r} does not exist (looked for {resolved}); paths are relative to the inventory"
            )
        return resolved

    key_file = path_var("ansible_ssh_private_key_file", _var(hvars, "key_file"), required=False, hint="")
    known_hosts = path_var(
        "known_hosts",
        hvars.get("known_hosts"),
        required=True,
        hint="no known_hosts file: set known_hosts: PATH (e.g. in all.vars); patchflow verifies every host key "
        "and never accepts an unknown one (collect keys with ssh-keyscan and check them)",
    )
    tags = hvars.get("tags") or {}
    if not isinstance(tags, dict) or not all(isinstance(v, str | int) for v in tags.values()):
        fail("tags", "expected a mapping of tag names to string values, e.g. {Patch Group: prod}")
        tags = {}
    tags = {str(k): str(v) for k, v in tags.items()}
    patch_group = hvars.get("patch_group")
    if patch_group is not None:
        if not isinstance(patch_group, str):
            fail("patch_group", "expected a patch group name")
        else:
            tags.setdefault("Patch Group", patch_group)
    family = hvars.get("family")
    if family is not None and family not in ("deb", "rpm"):
        fail("family", f"{family!r}: use deb or rpm (or leave it out: the executor detects it)")
    become = hvars.get("ansible_become", False)
    if not isinstance(become, bool):
        fail("ansible_become", "expected true or false")
        become = False
    for key in ("health_command", "reboot_command"):
        value = hvars.get(key)
        if value is not None and (not isinstance(value, str) or not value.strip()):
            fail(key, "expected a shell command")
    zone = hvars.get("availability_zone")
    if zone is not None and (not isinstance(zone, str) or not zone.strip()):
        fail("availability_zone", "expected a zone name, e.g. eu-west-1a")
    if not ok:
        return None
    return SshHost(
        name=name,
        address=str(address).strip(),
        port=int(port),
        user=str(user).strip(),
        key_file=key_file,
        known_hosts=known_hosts,
        groups=groups,
        tags=tags,
        family=family,
        sudo=bool(become) or str(user).strip() != "root",
        health_command=hvars.get("health_command"),
        reboot_command=hvars.get("reboot_command") or "reboot",
        availability_zone=str(zone).strip() if isinstance(zone, str) and zone.strip() else None,
    )
