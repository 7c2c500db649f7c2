"""The lab fleet: ``up``, ``status``, ``publish``, ``catalog``, ``run``, ``down``.

State lives under ``<data dir>/lab/``::

    cache/           the Debian base and the initial-packages layer (kept across up/down)
    repo/            the lab apt repository (see :mod:`.repo`), served on 127.0.0.1:<http_port>
    repo/custom/     the second repository, served beside it and configured on no host (baseline Sources)
    ssh/             the lab's client key (id_ed25519) and known_hosts with every host's own key
    hosts/<id>/      host.json, upper/ work/ root/ (the overlay), boot_id, state.json, console.log
    lab.json         the running lab: hosts, addresses, groups, process ids, the repository's port
    inventory.yml    an SSH inventory for patchflow's ssh executor (Ansible-style YAML)
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from patchflow.core.documents import dump_yaml
from patchflow.errors import InputError, NotFoundError
from patchflow.testing.lab.repo import (
    CUSTOM_SUITE,
    CUSTOM_YUM_ID,
    LabPackage,
    LabRepo,
    custom_source,
    sources_list,
    yum_repo,
)
from patchflow.testing.lab.rootfs import (
    LabSetupError,
    ensure_base,
    ensure_layer,
    is_mounted,
    require_tools,
)

_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
"""Daemons this process started (repository server, host supervisors): kept so they are not garbage-collected
while running, and reaped by :meth:`Lab.down`."""

DEFAULT_GROUPS: dict[str, int] = {"dev": 1, "test": 1, "prod": 2}
_FIRST_HOST = ipaddress.IPv4Address("127.0.0.2")  # 127.0.0.1 is the repository's (and everyone's)
_LAST_HOST = ipaddress.IPv4Address("127.255.255.254")


@dataclass
class LabHost:
    id: str
    address: str
    port: int
    groups: list[str] = field(default_factory=list)
    family: str = "deb"
    """``deb`` (apt/dpkg) or ``rpm`` (dnf/rpm with an RPM database holding the lab's packages)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "address": self.address,
            "port": self.port,
            "groups": self.groups,
            "family": self.family,
        }


class Lab:
    """A lab under ``data_dir/lab``."""

    def __init__(self, data_dir: Path, *, cache_dir: Path | None = None) -> None:
        self.dir = Path(data_dir) / "lab"
        self.repo = LabRepo(self.dir / "repo")
        self.custom_repo = LabRepo(self.dir / "repo" / "custom", suites=(CUSTOM_SUITE,), yum_id=CUSTOM_YUM_ID)
        """The second repository: served with the first, configured on no host (what baseline Sources name)."""
        self._cache = cache_dir

    # ------------------------------------------------------------------------------------------ paths
    @property
    def cache(self) -> Path:
        """Built roots (shared by labs that name the same cache: tests reuse the data directory's)."""
        return self._cache or self.dir / "cache"

    @property
    def state_file(self) -> Path:
        return self.dir / "lab.json"

    @property
    def inventory_path(self) -> Path:
        return self.dir / "inventory.yml"

    @property
    def key_path(self) -> Path:
        return self.dir / "ssh" / "id_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        return self.dir / "ssh" / "known_hosts"

    def host_dir(self, host_id: str) -> Path:
        return self.dir / "hosts" / host_id

    def state(self) -> dict[str, Any]:
        if not self.state_file.is_file():
            raise NotFoundError(f"no lab is up under {self.dir}: run `patchflow lab up` first")
        data: dict[str, Any] = json.loads(self.state_file.read_text())
        return data

    def hosts(self) -> list[LabHost]:
        return [
            LabHost(h["id"], h["address"], h["port"], list(h["groups"]), h.get("family", "deb"))
            for h in self.state()["hosts"]
        ]

    def is_up(self) -> bool:
        return self.state_file.is_file()

    # ----------------------------------------------------------------------------------------- up
    def up(
        self,
        groups: dict[str, int] | None = None,
        *,
        base_address: str = "127.0.0.10",
        port: int = 2200,
        http_port: int = 0,
        reboot_delay_seconds: float = 1.0,
        mirror: str | None = None,
        timeout_seconds: float = 60.0,
        extra_packages: tuple[str, ...] = (),
        rpm_groups: dict[str, int] | None = None,
    ) -> dict[str, Any]:
        """Build (or reuse) the roots, start the repository server and every host; write the inventory.

        Raises:
            InputError: bad groups, or an address outside 127.0.0.0/8.
            LabSetupError: not root, a missing tool, a build failure, or a host that did not come up.
        """
        require_tools("mmdebstrap", "dpkg-deb", "unshare", "chroot", "ssh-keygen", "mount", "nsenter")
        if self.is_up():
            raise LabSetupError(f"a lab is already up under {self.dir}: run `patchflow lab down` first")
        hosts = self._plan_hosts(
            {**(groups if groups is not None else DEFAULT_GROUPS), **(rpm_groups or {})},
            base_address,
            port,
            rpm=set(rpm_groups or {}),
        )
        self.dir.mkdir(parents=True, exist_ok=True)
        self._ensure_repos()
        base = ensure_base(self.cache, mirror=mirror, log=self.dir / "build.log", extra=extra_packages)
        layer = ensure_layer(self.cache, base, self.repo.root, self.repo.initial())
        lower = {"deb": [layer, base]}
        if any(h.family == "rpm" for h in hosts):
            require_tools("rpmbuild", "createrepo_c", "modifyrepo_c", "rpm")
            self.repo.create_yum()
            self.custom_repo.create_yum()
            rpm_base = ensure_base(
                self.cache, mirror=mirror, log=self.dir / "build.log", extra=(*extra_packages, "dnf", "rpm")
            )
            rpm_layer = ensure_layer(
                self.cache, rpm_base, self.repo.root, self.repo.initial(), rpms=self.repo.initial_rpms()
            )
            lower["rpm"] = [rpm_layer, rpm_base]
        self._client_key()
        httpd_pid, http_port = self._start_httpd(http_port)
        state: dict[str, Any] = {
            "hosts": [h.to_json() for h in hosts],
            "http_port": http_port,
            "httpd_pid": httpd_pid,
            "supervisors": {},
        }
        self.state_file.write_text(json.dumps(state, indent=1))
        known: list[str] = []
        try:
            for host in hosts:
                known.append(self._create_host(host, lower[host.family], http_port, reboot_delay_seconds))
                state["supervisors"][host.id] = self._start_supervisor(host)
                self.state_file.write_text(json.dumps(state, indent=1))
            self.known_hosts_path.write_text("".join(known))
            self._wait_listening(hosts, timeout_seconds)
        except BaseException:
            self.down()
            raise
        self._write_inventory(hosts)
        return state

    def _plan_hosts(
        self,
        groups: dict[str, int],
        base_address: str,
        port: int,
        *,
        rpm: set[str] = frozenset(),  # type: ignore[assignment]
    ) -> list[LabHost]:
        try:
            first = ipaddress.IPv4Address(base_address)
        except ValueError as exc:
            raise InputError(
                f"--base-address {base_address!r} is not an IPv4 address in 127.0.0.0/8"
            ) from exc
        total = sum(groups.values())
        if total < 1 or any(n < 0 for n in groups.values()):
            raise InputError("the lab needs at least one host: e.g. --group dev=1 --group prod=2")
        if not 1 <= port <= 65535:
            raise InputError(f"--port {port}: expected 1–65535")
        hosts: list[LabHost] = []
        n = 0
        for group, count in groups.items():
            for _ in range(count):
                address = first + n
                if not _FIRST_HOST <= address <= _LAST_HOST:
                    raise InputError(
                        f"host address {address} is outside 127.0.0.2–127.255.255.254: the lab only uses loopback "
                        "addresses; choose another --base-address"
                    )
                n += 1
                hosts.append(
                    LabHost(f"lab-{n:02d}", str(address), port, [group], "rpm" if group in rpm else "deb")
                )
        return hosts

    def _client_key(self) -> None:
        if self.key_path.is_file():
            return
        self.key_path.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "patchflow-lab", "-f", str(self.key_path)],
            check=True,
        )

    def _start_httpd(self, port: int) -> tuple[int, int]:
        port_file = self.dir / "http.port"
        port_file.unlink(missing_ok=True)
        log = open(self.dir / "httpd.log", "ab")  # noqa: SIM115 - handed to the child process
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "patchflow.testing.lab.httpd",
                str(self.repo.root),
                str(port_file),
                str(port),
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        _CHILDREN[proc.pid] = proc
        deadline = time.monotonic() + 15
        while not port_file.is_file():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise LabSetupError(f"the lab repository server did not start; see {self.dir / 'httpd.log'}")
            time.sleep(0.05)
        return proc.pid, int(port_file.read_text())

    def _create_host(self, host: LabHost, lower: list[Path], http_port: int, reboot_delay: float) -> str:
        hdir = self.host_dir(host.id)
        if hdir.exists():
            if is_mounted(hdir / "root"):
                subprocess.run(["umount", str(hdir / "root")], check=False)
            shutil.rmtree(hdir)
        upper = hdir / "upper"
        upper.mkdir(parents=True)
        put = _UpperWriter(upper, lower)
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", host.id, "-f", str(hdir / "host_key")],
            check=True,
        )
        put.file("etc/ssh/ssh_host_ed25519_key", (hdir / "host_key").read_text(), 0o600)
        put.file("etc/ssh/ssh_host_ed25519_key.pub", (hdir / "host_key.pub").read_text(), 0o644)
        put.file(
            "etc/ssh/sshd_config.d/lab.conf",
            f"ListenAddress {host.address}:{host.port}\n"
            "HostKey /etc/ssh/ssh_host_ed25519_key\n"
            "PermitRootLogin prohibit-password\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "MaxSessions 50\n"
            "MaxStartups 100\n",
            0o644,
        )
        authorized = (self.key_path.with_suffix(".pub")).read_text()
        put.file("root/.ssh/authorized_keys", authorized, 0o600, dir_mode=0o700)
        uid, gid = put.owner("home/deploy")
        put.file("home/deploy/.ssh/authorized_keys", authorized, 0o600, uid=uid, gid=gid, dir_mode=0o700)
        put.file("etc/apt/sources.list.d/lab.list", sources_list(http_port), 0o644)
        if host.family == "rpm":
            put.file("etc/yum.repos.d/lab.repo", yum_repo(http_port), 0o644)
            put.file("etc/dnf/vars/releasever", "lab\n", 0o644)
        put.file("etc/hostname", host.id + "\n", 0o644)
        put.file("etc/hosts", f"127.0.0.1 localhost\n{host.address} {host.id}\n", 0o644)
        (hdir / "host.json").write_text(
            json.dumps(
                {
                    **host.to_json(),
                    "root": str(hdir / "root"),
                    "lower": [str(p) for p in lower],
                    "reboot_delay_seconds": reboot_delay,
                }
            )
        )
        key_type, key_b64 = (hdir / "host_key.pub").read_text().split()[:2]
        return f"[{host.address}]:{host.port} {key_type} {key_b64}\n"

    def _start_supervisor(self, host: LabHost) -> int:
        hdir = self.host_dir(host.id)
        log = open(hdir / "supervisor.log", "ab")  # noqa: SIM115 - handed to the child process
        proc = subprocess.Popen(
            [sys.executable, "-m", "patchflow.testing.lab.supervisor", str(hdir)],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        _CHILDREN[proc.pid] = proc
        return proc.pid

    def _wait_listening(self, hosts: list[LabHost], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(hosts)
        while pending:
            pending = [h for h in pending if not _listening(h.address, h.port)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise LabSetupError(
                    f"lab hosts did not start sshd within {timeout:.0f}s: {', '.join(h.id for h in pending)}; "
                    f"see {self.host_dir(pending[0].id) / 'console.log'}"
                )
            time.sleep(0.1)

    def wait_up(self, host_id: str, timeout_seconds: float = 60.0) -> None:
        """Wait until a host (after a reboot) listens again."""
        host = self._host(host_id)
        self._wait_listening([host], timeout_seconds)

    def _write_inventory(self, hosts: list[LabHost]) -> None:
        children: dict[str, Any] = {}
        for host in hosts:
            for group in host.groups:
                children.setdefault(group, {"hosts": {}})["hosts"][host.id] = {
                    "ansible_host": host.address,
                    "ansible_port": host.port,
                    "tags": {"Patch Group": group},
                    **({"family": "rpm"} if host.family == "rpm" else {}),
                }
        inventory = {
            "all": {
                "vars": {
                    "ansible_user": "root",
                    "ansible_ssh_private_key_file": str(self.key_path),
                    "known_hosts": str(self.known_hosts_path),
                },
                "children": children,
            }
        }
        self.inventory_path.write_text(
            "# Written by `patchflow lab up`: the lab hosts for patchflow's ssh executor.\n"
            + dump_yaml(inventory, sort_keys=False)
        )

    # -------------------------------------------------------------------------------------- status
    def status(self) -> list[dict[str, Any]]:
        """Per host: id, family, address, groups, state, boot id, reboot pending, installed lab packages."""
        names = {p.name for p in self.repo.packages()}
        out = []
        for host in self.hosts():
            hdir = self.host_dir(host.id)
            state = _read_json(hdir / "state.json")
            root = hdir / "root"
            installed = self._installed(host, root) if is_mounted(root) else {}
            out.append(
                {
                    "id": host.id,
                    "family": host.family,
                    "address": host.address,
                    "port": host.port,
                    "groups": host.groups,
                    "state": state.get("state", "down"),
                    "boot_id": state.get("boot_id"),
                    "reboot_pending": (root / "run" / "reboot-required").exists(),
                    "packages": {n: v for n, v in sorted(installed.items()) if n in names},
                    "packages_total": len(installed),
                }
            )
        return out

    def installed(self, host_id: str) -> dict[str, str]:
        """Every package installed on the host (name → version, with dpkg's status ``installed``)."""
        return self._installed(self._host(host_id), self.host_dir(host_id) / "root")

    @staticmethod
    def _installed(host: LabHost, root: Path) -> dict[str, str]:
        if host.family == "rpm":  # the lab's packages are in the host's RPM database
            proc = subprocess.run(
                [
                    "rpm",
                    f"--root={root}",
                    "-qa",
                    "--qf",
                    "%{NAME} %|EPOCH?{%{EPOCH}:}:{}|%{VERSION}-%{RELEASE}\\n",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            return dict(line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
        return _dpkg_status(root / "var/lib/dpkg/status")

    # ------------------------------------------------------------------------------------- publish
    def _ensure_repos(self) -> None:
        if not self.repo.manifest_path.is_file():
            self.repo.create()
        if not self.custom_repo.manifest_path.is_file():
            self.custom_repo.create([])

    def publish(self, name: str, version: str, *, custom: bool = False, **kwargs: Any) -> LabPackage:
        """Add a version to the lab repository, or with ``custom`` to the second repository (no host uses it
        unless a baseline's Sources name it)."""
        self._ensure_repos()
        if custom:
            return self.custom_repo.publish(name, version, suite=CUSTOM_SUITE, **kwargs)
        return self.repo.publish(name, version, **kwargs)

    def catalog(self, family: str = "deb", *, custom: bool = False) -> list[dict[str, Any]]:
        """patchflow's catalog of the lab repository; with ``custom`` the second repository's versions too
        (``repository``: ``custom`` for apt, ``lab-custom`` for yum: what a baseline's Sources name)."""
        self._ensure_repos()
        return self.repo.catalog(family) + (self.custom_repo.catalog(family) if custom else [])

    def custom_source(self, family: str = "deb") -> str:
        """The second repository as a baseline ``Sources`` ``Configuration`` (an apt line or a yum repo file)
        for the running lab's repository server."""
        return custom_source(int(self.state()["http_port"]), family)

    # ----------------------------------------------------------------------------------------- run
    def run(self, host_id: str, command: str, *, timeout: float = 300.0) -> subprocess.CompletedProcess[str]:
        """Run a shell command as root inside a host (its namespaces and root), like a console login."""
        return subprocess.run(
            self.shell_argv(host_id, command),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C"},
        )

    def shell_argv(self, host_id: str, command: str) -> list[str]:
        """The argv of :meth:`run` (for callers that start it themselves, e.g. in a CPU-accounting cgroup)."""
        self._host(host_id)
        return [
            "nsenter",
            "-t",
            str(self._pid1(host_id)),
            "-m",
            "-p",
            "-r",
            "-w",
            "--",
            "/bin/sh",
            "-c",
            command,
        ]

    def _pid1(self, host_id: str) -> int:
        state = _read_json(self.host_dir(host_id) / "state.json")
        if state.get("state") != "up" or "pid" not in state:
            raise LabSetupError(f"lab host {host_id} is {state.get('state', 'down')}, not up")
        children = Path(f"/proc/{state['pid']}/task/{state['pid']}/children").read_text().split()
        if not children:
            raise LabSetupError(f"lab host {host_id} has no PID 1 (it is booting or going down)")
        return int(children[0])

    def _host(self, host_id: str) -> LabHost:
        for host in self.hosts():
            if host.id == host_id:
                return host
        raise NotFoundError(f"no lab host {host_id!r}; `patchflow lab status` lists them")

    # ---------------------------------------------------------------------------------------- down
    def down(self) -> None:
        """Stop every host and the repository server; remove the hosts (the cache stays)."""
        if not self.state_file.is_file():
            return
        state = json.loads(self.state_file.read_text())
        for host_id, pid in state.get("supervisors", {}).items():
            _signal(pid, signal.SIGTERM, str(self.host_dir(host_id)))
        deadline = time.monotonic() + 15
        for host_id, pid in state.get("supervisors", {}).items():
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            hstate = _read_json(self.host_dir(host_id) / "state.json")
            if _alive(pid):
                _signal(pid, signal.SIGKILL, str(self.host_dir(host_id)))
            if "pid" in hstate:
                _signal(int(hstate["pid"]), signal.SIGKILL, str(self.host_dir(host_id)))
        if state.get("httpd_pid"):
            _signal(int(state["httpd_pid"]), signal.SIGTERM, str(self.repo.root))
        for pid in [*state.get("supervisors", {}).values(), state.get("httpd_pid")]:
            child = _CHILDREN.pop(pid, None) if pid else None
            if child is not None:
                try:
                    child.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    child.kill()
                    child.wait()
        for host in state.get("hosts", []):
            root = self.host_dir(host["id"]) / "root"
            for _ in range(50):
                if not is_mounted(root):
                    break
                subprocess.run(["umount", str(root)], check=False, capture_output=True)
                time.sleep(0.1)
        for host in state.get("hosts", []):
            if not is_mounted(self.host_dir(host["id"]) / "root"):
                shutil.rmtree(self.host_dir(host["id"]), ignore_errors=True)
        self.state_file.unlink(missing_ok=True)
        self.inventory_path.unlink(missing_ok=True)


class _UpperWriter:
    """Writes files into an overlay's upper directory before it is mounted, giving each new parent
    directory the owner and mode it has in the lower layers (so ``/root`` stays 0700, ``/home/deploy``
    stays deploy's)."""

    def __init__(self, upper: Path, lower: list[Path]) -> None:
        self.upper = upper
        self.lower = lower

    def _lower_stat(self, rel: str) -> os.stat_result | None:
        for layer in self.lower:
            path = layer / rel
            if path.exists():
                return path.stat()
        return None

    def owner(self, rel: str) -> tuple[int, int]:
        st = self._lower_stat(rel)
        return (st.st_uid, st.st_gid) if st else (0, 0)

    def file(
        self, rel: str, content: str, mode: int, *, uid: int = 0, gid: int = 0, dir_mode: int = 0o755
    ) -> None:
        parts = Path(rel).parts
        for i in range(1, len(parts)):
            sub = "/".join(parts[:i])
            target = self.upper / sub
            if target.is_dir():
                continue
            target.mkdir()
            st = self._lower_stat(sub)
            if st is not None:
                os.chown(target, st.st_uid, st.st_gid)
                target.chmod(st.st_mode & 0o7777)
            else:
                os.chown(target, uid, gid)
                target.chmod(dir_mode)
        path = self.upper / rel
        path.write_text(content)
        os.chown(path, uid, gid)
        path.chmod(mode)


def _dpkg_status(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    out: dict[str, str] = {}
    for stanza in path.read_text().split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line.startswith(" ") and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if "Package" in fields and "Version" in fields and fields.get("Status", "").endswith(" installed"):
            out[fields["Package"]] = fields["Version"]
    return out


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    except (OSError, ValueError):
        return {}


def _listening(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=0.5) as sock:
            sock.settimeout(2)
            return sock.recv(4).startswith(b"SSH")
    except OSError:
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _signal(pid: int, sig: int, marker: str) -> None:
    """Signal a lab process — only if its command line names ``marker`` (a stale lab.json after a machine
    reboot must never make ``lab down`` kill an unrelated process that reuses a recorded pid)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return
    if marker not in cmdline:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.kill(pid, sig)
