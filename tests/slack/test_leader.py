"""Two API replicas on one PostgreSQL database post each Slack message once: only the holder of the notifier
lease (an advisory lock) posts; when it dies, the other takes over at its next refresh and announces what is
live (the waiting gate again: at least once, never never). Real ``patchflow api`` processes, a real wave on
the Temporal dev server, the Slack Web API stand-in."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from temporalio.testing import WorkflowEnvironment

from patchflow.control.devserver import free_port
from patchflow.core.wavemodel import GateDecision
from patchflow.service.slack import GATE_BLOCK_ID
from patchflow.store import db
from patchflow.testing.slack_api import SlackApiStandIn
from tests.conftest import REPO_ROOT
from tests.db.conftest import Databases
from tests.slack.conftest import CHANNEL
from tests.workflows.conftest import running_worker
from tests.workflows.test_wave import stage, wave_input
from workflows.wave import WaveWorkflow


@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[str]:
    """A migrated schema of the test PostgreSQL database (skipped without one, as in tests/db)."""
    databases = Databases(tmp_path)
    try:
        url = databases.new("postgresql")
        db.upgrade(url)
        yield url
    finally:
        databases.close()


class Replica:
    """One ``patchflow api`` process."""

    def __init__(self, name: str, env: dict[str, str], tmp_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = (tmp_path / f"api-{name}.log").open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "patchflow", "api"],
            env={**env, "PATCHFLOW_API_PORT": str(self.port), "PATCHFLOW_DATA_DIR": str(tmp_path / name)},
            cwd=REPO_ROOT,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def role(self) -> str | None:
        """What ``/readyz`` says about the notifier: ``leads``, ``stands by``, or None (not up yet)."""
        try:
            checks = httpx.get(f"{self.url}/readyz", timeout=2).json()["checks"]
        except (httpx.HTTPError, ValueError, KeyError):
            return None
        message = checks.get("slack_notifier", {}).get("message", "")
        return "leads" if "holds the notifier lease" in message else "stands by" if message else None

    def stop(self, sig: signal.Signals = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=30)
        self.log.close()


async def until(predicate: Callable[[], bool], what: str, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def test_two_api_replicas_post_each_message_once(
    dev_env: WorkflowEnvironment,
    make_fleet: Callable[..., Path],
    tmp_path: Path,
    slack_api: SlackApiStandIn,
    postgres: str,
) -> None:
    client = dev_env.client
    inp = wave_input(
        make_fleet({"dev": 1, "prod": 1}),
        tmp_path,
        [stage("dev"), stage("prod", gate="approval", approvers=["slack:U0ALICE"])],
    )

    def gate_messages() -> int:
        return sum(
            1
            for c in slack_api.calls("chat.postMessage")
            if any(b.get("block_id") == GATE_BLOCK_ID for b in c.args.get("blocks") or [])
        )

    def prod_completed() -> int:
        return sum(1 for c in slack_api.calls("chat.postMessage") if "stage prod completed" in c.args["text"])

    async with running_worker(client) as task_queue:
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("PATCHFLOW_")},
            "PATCHFLOW_DATABASE_URL": postgres,
            "PATCHFLOW_TEMPORAL_ADDRESS": client.service_client.config.target_host,
            "PATCHFLOW_TASK_QUEUE": task_queue,
            "PATCHFLOW_SLACK_BOT_TOKEN": slack_api.token,
            "PATCHFLOW_SLACK_API_URL": slack_api.url,
            "PATCHFLOW_SLACK_CHANNEL": CHANNEL,
            "PATCHFLOW_API_METRICS_REFRESH_SECONDS": "0.3",
        }
        first = Replica("a", env, tmp_path)
        second = None
        try:
            await until(lambda: first.role() == "leads", "the first replica never led")
            second = Replica("b", env, tmp_path)
            await until(lambda: second.role() == "stands by", "the second replica did not stand by")

            await client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue)
            await until(lambda: gate_messages() == 1, "no gate message")
            await asyncio.sleep(2.0)  # several refreshes of both replicas
            assert gate_messages() == 1

            first.stop(signal.SIGKILL)  # the leader dies without a word; its connection, and lock, go with it
            await until(lambda: second.role() == "leads", "the standby never took over")
            await until(lambda: gate_messages() == 2, "the new leader did not announce the waiting gate")

            handle = client.get_workflow_handle(inp.wave_id)
            await handle.execute_update(WaveWorkflow.approve, GateDecision(stage="prod", who="slack:U0ALICE"))
            await handle.result()
            await until(lambda: prod_completed() == 1, "the completion was not announced")
            await asyncio.sleep(1.5)
            assert prod_completed() == 1 and gate_messages() == 2
        finally:
            first.stop()
            if second is not None:
                second.stop()
    logs = "".join(
        (tmp_path / f"api-{n}.log").read_text() for n in ("a", "b") if (tmp_path / f"api-{n}.log").exists()
    )
    assert "Traceback" not in logs, logs
