"""One lab host's "hardware": ``python -m patchflow.testing.lab.supervisor HOST_DIR``.

Mounts the host's overlay root (read-only shared layers + its own upper directory), then boots it: clears
``/run`` (a tmpfs on a real machine), draws a new boot id, and starts the host's PID 1 (``/usr/sbin/lab-init``,
which runs sshd on the host's loopback address) under ``unshare --pid --mount --fork --kill-child
--mount-proc`` inside a ``chroot``. The boot id is bind-mounted over ``/proc/sys/kernel/random/boot_id`` in
the host's own mount namespace, so tools on the host read it exactly where Linux keeps it.

When PID 1 exits (``reboot`` on the host signals it) the kernel kills every other process of the host's PID
namespace — a reboot really stops the host. The supervisor waits ``reboot_delay_seconds`` and boots again.
SIGTERM powers the host off: PID 1 and its namespace are killed, the overlay is unmounted, the supervisor exits.

``HOST_DIR/state.json`` says ``booting``/``up``/``rebooting``/``down`` with the boot id, the unshare process id
and the supervisor's own.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any


def _write_state(host_dir: Path, **state: Any) -> None:
    tmp = host_dir / "state.json.tmp"
    tmp.write_text(json.dumps({**state, "supervisor_pid": os.getpid(), "at": time.time()}))
    tmp.replace(host_dir / "state.json")


def _clear_run(root: Path) -> None:
    run = root / "run"
    if run.is_dir():
        for entry in run.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    (run / "sshd").mkdir(parents=True, exist_ok=True)
    (run / "lock").mkdir(parents=True, exist_ok=True)


def main(host_dir: Path) -> int:
    from patchflow.testing.lab.rootfs import is_mounted, mount_overlay

    cfg = json.loads((host_dir / "host.json").read_text())
    root = Path(cfg["root"])
    if not is_mounted(root):
        mount_overlay([Path(p) for p in cfg["lower"]], host_dir / "upper", host_dir / "work", root)
    stopping = threading.Event()
    child: subprocess.Popen[bytes] | None = None

    def stop(signum: int, frame: Any) -> None:
        stopping.set()
        if child is not None and child.poll() is None:
            child.kill()  # unshare --kill-child takes PID 1, and with it the whole namespace

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    boot_id_file = host_dir / "boot_id"
    with open(host_dir / "console.log", "ab", buffering=0) as console:
        while not stopping.is_set():
            _clear_run(root)
            boot_id = str(uuid.uuid4())
            boot_id_file.write_text(boot_id + "\n")
            _write_state(host_dir, state="booting", boot_id=boot_id)
            console.write(f"--- boot {boot_id} at {time.strftime('%H:%M:%S')}\n".encode())
            init = (
                f"hostname {cfg['id']} && mount --bind {boot_id_file} {root}/proc/sys/kernel/random/boot_id"
                f" && exec chroot {root} /usr/sbin/lab-init"
            )
            child = subprocess.Popen(
                [
                    "unshare",
                    "--pid",
                    "--mount",
                    "--uts",
                    "--fork",
                    "--kill-child",
                    f"--mount-proc={root}/proc",
                    "sh",
                    "-c",
                    init,
                ],
                stdout=console,
                stderr=console,
                stdin=subprocess.DEVNULL,
            )
            _write_state(host_dir, state="up", boot_id=boot_id, pid=child.pid)
            child.wait()
            if stopping.is_set():
                break
            _write_state(host_dir, state="rebooting", boot_id=boot_id)
            console.write(b"--- rebooting\n")
            stopping.wait(float(cfg.get("reboot_delay_seconds", 1.0)))
    subprocess.run(["umount", str(root)], check=False, capture_output=True)
    _write_state(host_dir, state="down")
    return 0


if __name__ == "__main__":
    sys.exit(main(Path(sys.argv[1])))
