"""Temporal going away is an outage, not a bug and not a missing wave: the API answers 503 with Retry-After,
and a worker started while Temporal is down waits for it (with backoff, saying so) instead of exiting.

Each test runs its own Temporal dev server (``temporal server start-dev``) so it can stop and start it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
from prometheus_client import CollectorRegistry

from patchflow.config import Settings
from patchflow.control.devserver import free_port, start_dev_server
from patchflow.metrics import Metrics
from patchflow.service.api import RETRY_AFTER_SECONDS, create_app
from patchflow.store import db
from tests.conftest import REPO_ROOT


async def test_actions_answer_503_with_retry_after_while_temporal_is_down(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'patchflow.db'}"
    db.upgrade(url)
    with db.open_session(db.get_engine(url)) as session:
        token = db.create_token(session, name="olga", role="operator")[1]
    auth = {"Authorization": f"Bearer {token}"}
    address = f"127.0.0.1:{free_port()}"
    server = start_dev_server(address, tmp_path / "temporal", ui=False)
    settings = Settings(data_dir=tmp_path, database_url=url, temporal_address=address)
    app = create_app(settings, metrics=Metrics(CollectorRegistry()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        try:
            # Connected: an unknown wave is a 404.
            assert (await client.post("/waves/wave-x/halt", headers=auth)).status_code == 404
        finally:
            server.stop()
        for method, path in (
            ("POST", "/waves/wave-x/halt"),
            ("POST", "/waves/wave-x/cancel"),
            ("GET", "/waves/wave-x"),
        ):
            response = await client.request(method, path, headers=auth)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == str(RETRY_AFTER_SECONDS)
            assert response.json()["error"]["code"] == "unavailable"
    with db.open_session(db.get_engine(url)) as session:
        rows = db.list_audit(session, wave_id="wave-x")
    # the 404 was a refused attempt; the outage refused nothing: recorded as unavailable, not as not_found
    assert [(r.action, r.detail["outcome"], r.refused) for r in rows] == [
        ("halt", "not_found", True),
        ("halt", "unavailable", False),
        ("cancel", "unavailable", False),
    ]


class Output:
    """A subprocess's stderr, read line by line in a thread, to wait for what it says."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        assert proc.stderr is not None
        self._stream = stream = proc.stderr
        self._thread = threading.Thread(target=lambda: self.lines.extend(stream), daemon=True)
        self._thread.start()

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not predicate(self.lines):
            assert time.monotonic() < deadline, "".join(self.lines)
            time.sleep(0.1)

    def text(self) -> str:
        self._thread.join(timeout=10)
        self._stream.close()
        return "".join(self.lines)


def test_a_worker_started_during_an_outage_waits_for_temporal(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("PATCHFLOW_")},
        "PATCHFLOW_DATA_DIR": str(tmp_path / "data"),
        "PATCHFLOW_TEMPORAL_ADDRESS": address,
        "PATCHFLOW_TASK_QUEUE": "outage-test",
        "PATCHFLOW_WORKER_METRICS_PORT": "none",
        "PATCHFLOW_TEMPORAL_METRICS_PORT": "none",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "patchflow", "worker"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    output = Output(proc)
    server = None
    try:
        # Down: it says so, and waits longer each time (1 s, 2 s, 4 s …) instead of exiting.
        output.wait_for(lambda lines: sum("retrying in" in line for line in lines) >= 3)
        assert proc.poll() is None
        waits = [
            line.split("retrying in ", 1)[1].split()[0] for line in output.lines if "retrying in" in line
        ]
        assert waits[:3] == ["1s", "2s", "4s"]
        assert f"Temporal at {address} is not available" in output.lines[0]

        server = start_dev_server(address, tmp_path / "temporal", ui=False)
        output.wait_for(
            lambda lines: any("worker polling task queue 'outage-test'" in line for line in lines)
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if server is not None:
            server.stop()
    text = output.text()
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "a bug" not in text
