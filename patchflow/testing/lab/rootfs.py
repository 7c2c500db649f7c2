"""The root file systems lab hosts share: a Debian base and a layer with the lab's initial packages.

Both are built once and cached under ``<lab>/cache/`` (the base takes about a minute and ~200 MB; the layer a
second): every host mounts ``layer:base`` read-only as the lower directories of its own overlayfs, so fifty
hosts cost fifty small upper directories.

The base is ``mmdebstrap --variant=apt`` of Debian bookworm with ``openssh-server``, ``python3-minimal`` and
``sudo`` from Debian's packages, then adjusted for the lab: no host keys (each host gets its own), no Debian
sources (hosts use the lab repository), a ``deploy`` user with password-less sudo (to exercise the executor's
sudo path), ``/usr/sbin/lab-init`` (the host's PID 1: runs sshd, exits on SIGTERM) and ``/usr/sbin/reboot``
(signals PID 1, so a reboot really stops every process of the host; the lab boots it again).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from patchflow.errors import PatchflowError
from patchflow.testing.lab.repo import LabPackage

SUITE = "bookworm"
INCLUDE = ("openssh-server", "python3-minimal", "sudo")
LAYOUT_VERSION = "1"
"""Bump when the post-processing below changes, so cached bases are rebuilt."""

LAB_INIT = """#!/bin/sh
# PID 1 of a patchflow lab host: run sshd until SIGTERM (a reboot or the lab going down).
trap 'kill -TERM "$SSHD" 2>/dev/null; exit 0' TERM INT
mkdir -p /run/sshd
/usr/sbin/sshd -D -e &
SSHD=$!
wait "$SSHD"
"""
REBOOT = """#!/bin/sh
# patchflow lab: a reboot stops PID 1 (and so every process of this host); the lab boots the host again.
kill -TERM 1
"""


class LabSetupError(PatchflowError):
    """The lab cannot be built or started here (a missing tool, not root, no mirror)."""

    exit_code = 1


def require_tools(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        raise LabSetupError(
            f"the lab needs {', '.join(missing)}: install Debian's packages "
            "(apt-get install mmdebstrap dpkg-dev openssh-client util-linux)"
        )
    if os.geteuid() != 0:
        raise LabSetupError("the lab needs root (overlayfs, namespaces and chroot): run it as root")


def default_mirror() -> str:
    """The Debian mirror this machine's apt uses (``PATCHFLOW_LAB_MIRROR`` overrides it)."""
    env = os.environ.get("PATCHFLOW_LAB_MIRROR")
    if env:
        return env
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.is_file():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:") and "security" not in line:
                return line.split()[1]
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1] if not parts[1].startswith("[") else parts[2]
    return "http://deb.debian.org/debian"


def base_key(extra: Sequence[str] = ()) -> str:
    include = ",".join([*INCLUDE, *sorted(extra)])
    return hashlib.sha256(f"{SUITE}|{include}|{LAYOUT_VERSION}".encode()).hexdigest()[:12]


def ensure_base(
    cache: Path, *, mirror: str | None = None, log: Path | None = None, extra: Sequence[str] = ()
) -> Path:
    """The cached Debian base root, built first if missing.

    Args:
        extra: more Debian packages in the root (e.g. ``python3-apt`` for Ansible's apt module); another set
            is another cached root.
    """
    target = cache / f"rootfs-{SUITE}-{base_key(extra)}"
    if target.is_dir():
        return target
    require_tools("mmdebstrap", "unshare", "chroot")
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f"{target.name}.building-{os.getpid()}"  # concurrent builders never share a directory
    if tmp.exists():
        shutil.rmtree(tmp)
    cmd = [
        "mmdebstrap",
        "--variant=apt",
        "--mode=root",
        f"--include={','.join([*INCLUDE, *sorted(extra)])}",
        SUITE,
        str(tmp),
        mirror or default_mirror(),
    ]
    with open(log or os.devnull, "ab") as out:
        proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, check=False)
    if proc.returncode != 0:
        raise LabSetupError(
            f"mmdebstrap failed (exit {proc.returncode}) building the lab's Debian base"
            + (f"; see {log}" if log else "")
            + ": check that Debian's mirror is reachable (PATCHFLOW_LAB_MIRROR)"
        )
    _adjust_base(tmp)
    _publish(tmp, target)
    return target


def _publish(tmp: Path, target: Path) -> None:
    """Move a finished build into place; if another process finished first, keep theirs."""
    try:
        tmp.rename(target)
    except OSError:
        if not target.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


def _adjust_base(root: Path) -> None:
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    for lst in (root / "var/lib/apt/lists").glob("*"):
        if lst.is_file():
            lst.unlink()
    for path, text in (("usr/sbin/lab-init", LAB_INIT), ("usr/sbin/reboot", REBOOT)):
        (root / path).write_text(text)
        (root / path).chmod(0o755)
    (root / "etc/apt/apt.conf.d/90patchflow-lab").write_text(
        'APT::Install-Recommends "false";\nAcquire::Languages "none";\nDpkg::Use-Pty "0";\n'
    )
    subprocess.run(["chroot", str(root), "useradd", "-m", "-s", "/bin/sh", "-p", "*", "deploy"], check=True)
    (root / "etc/sudoers.d/deploy").write_text("deploy ALL=(ALL) NOPASSWD: ALL\n")
    (root / "etc/sudoers.d/deploy").chmod(0o440)


@contextmanager
def overlay(lower: Sequence[Path], upper: Path, work: Path, mountpoint: Path) -> Iterator[Path]:
    """Mount an overlay for the duration of the block."""
    mount_overlay(lower, upper, work, mountpoint)
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False)


def mount_overlay(lower: Sequence[Path], upper: Path, work: Path, mountpoint: Path) -> None:
    for d in (upper, work, mountpoint):
        d.mkdir(parents=True, exist_ok=True)
    opts = f"lowerdir={':'.join(str(p) for p in lower)},upperdir={upper},workdir={work}"
    proc = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(mountpoint)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise LabSetupError(f"cannot mount the overlay at {mountpoint}: {proc.stderr.strip()}")


def is_mounted(path: Path) -> bool:
    target = str(path.resolve())
    with open("/proc/mounts") as mounts:
        return any(line.split()[1] == target for line in mounts)


def ensure_layer(
    cache: Path, base: Path, repo_root: Path, initial: Sequence[LabPackage], *, rpms: Sequence[Path] = ()
) -> Path:
    """The layer (an overlay upper directory) with the lab's initial packages installed over ``base``: the
    Debian packages with dpkg, or — for RPM hosts — the given RPM files with rpm (into the root's RPM
    database, which then holds only the lab's packages)."""
    digest = hashlib.sha256(base.name.encode())
    for pkg in initial:
        digest.update(f"{pkg.name}={pkg.version};".encode())
    for rpm in rpms:
        digest.update(rpm.name.encode())
    target = cache / f"layer-{digest.hexdigest()[:12]}"
    if target.is_dir():
        return target
    tmp = cache / f"{target.name}.building-{os.getpid()}"
    if tmp.exists():
        subprocess.run(["umount", str(tmp / "root")], check=False, capture_output=True)
        shutil.rmtree(tmp)
    with overlay([base], tmp / "upper", tmp / "work", tmp / "root") as root:
        staging = root / "tmp" / "lab-initial"
        staging.mkdir(parents=True)
        for path in rpms or [repo_root / pkg.filename for pkg in initial]:
            shutil.copy(path, staging)
        install = "rpm -i /tmp/lab-initial/*.rpm" if rpms else "dpkg -i /tmp/lab-initial/*.deb"
        proc = subprocess.run(
            ["chroot", str(root), "sh", "-c", install],
            capture_output=True,
            text=True,
            check=False,
        )
        shutil.rmtree(staging)
        if proc.returncode != 0:
            raise LabSetupError(
                f"installing the lab's initial packages failed: {(proc.stdout + proc.stderr)[-2000:]}"
            )
    _publish(tmp / "upper", target)
    shutil.rmtree(tmp, ignore_errors=True)
    return target
