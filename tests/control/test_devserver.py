"""The embedded Temporal dev server keeps its SQLite file in write-ahead-log mode, and what it stored survives
a restart — also for a data directory written before WAL mode (rollback journal), which the first start
converts.

SQLite's file format (https://www.sqlite.org/fileformat2.html, "1.3 The Database Header"): header bytes 18 and
19 (file format write/read version) are 1 for the rollback journal and 2 for WAL.
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from pathlib import Path

from temporalio.client import Client

from patchflow.control.devserver import find_binary, free_port, port_open, start_dev_server


def _format_versions(db: Path) -> tuple[int, int]:
    header = db.read_bytes()[:20]
    assert header.startswith(b"SQLite format 3\x00"), header
    return header[18], header[19]


async def _start_and_list(address: str, start: str | None) -> list[str]:
    """Start workflow ``start`` (if given; no worker needed: it stays running) and list every workflow id."""
    client = await Client.connect(address)
    if start is not None:
        await client.start_workflow("NoSuchWorkflow", id=start, task_queue="nobody-polls")
    for _ in range(100):  # visibility is eventually consistent
        ids = [wf.id async for wf in client.list_workflows()]
        if start is None or start in ids:
            return ids
        await asyncio.sleep(0.1)
    return ids


def test_dev_server_database_is_in_wal_mode_and_persists_across_a_restart(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    server = start_dev_server(address, tmp_path, ui=False)
    try:
        assert asyncio.run(_start_and_list(address, "kept-across-restart")) == ["kept-across-restart"]
    finally:
        server.stop()
    db = tmp_path / "temporal.db"
    assert _format_versions(db) == (2, 2)  # WAL
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    server = start_dev_server(address, tmp_path, ui=False)
    try:
        assert asyncio.run(_start_and_list(address, None)) == ["kept-across-restart"]
    finally:
        server.stop()


def test_a_rollback_journal_database_from_before_is_converted_and_kept(tmp_path: Path) -> None:
    """A data directory written by an earlier patchflow (the server's default rollback journal)."""
    address = f"127.0.0.1:{free_port()}"
    old = subprocess.Popen(  # noqa: S603 - the server as earlier patchflow versions started it
        [
            find_binary("temporal"),
            *("server", "start-dev", "--ip", "127.0.0.1", "--port", address.rsplit(":", 1)[1]),
            *("--db-filename", str(tmp_path / "temporal.db"), "--headless", "--log-level", "error"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", int(address.rsplit(":", 1)[1])):
            assert old.poll() is None and time.monotonic() < deadline, "the dev server did not start"
            time.sleep(0.1)
        assert asyncio.run(_start_and_list(address, "from-before")) == ["from-before"]
    finally:
        old.terminate()
        old.wait(timeout=10)
    assert _format_versions(tmp_path / "temporal.db") == (1, 1)  # rollback journal
    server = start_dev_server(address, tmp_path, ui=False)
    try:
        assert asyncio.run(_start_and_list(address, None)) == ["from-before"]
    finally:
        server.stop()
    assert _format_versions(tmp_path / "temporal.db") == (2, 2)
