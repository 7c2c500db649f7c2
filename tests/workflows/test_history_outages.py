"""History database outages never stall patching and never lose history (issue 12 item 3).

A TCP proxy on 127.0.0.1 sits between the worker and PostgreSQL (127.0.0.1:5432, or
``PATCHFLOW_TEST_POSTGRES_URL``): paused it accepts connections and never answers (a hung server), refusing it
resets every connection. Each test works in a database of its own, dropped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import urllib.request
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import psycopg
import pytest
import pytest_asyncio
from sqlalchemy.engine import make_url
from temporalio.client import WorkflowExecutionStatus
from temporalio.testing import WorkflowEnvironment

from patchflow.control.devserver import free_port
from patchflow.control.waves import wave_status
from patchflow.service.worker import build_worker
from patchflow.store import db
from tests.conftest import REPO_ROOT
from tests.workflows.test_wave import settle, stage, start, wave_input

POSTGRES_URL = os.environ.get(
    "PATCHFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


class PausableProxy:
    """Forwards 127.0.0.1:<port> to the PostgreSQL server. ``pause()``: connections are accepted and what they
    send is held (the server never answers); ``refuse()``: every connection is reset at once, new ones too;
    ``resume()``: held bytes flow again and new connections are forwarded."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.mode = "forward"
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        self.resume()
        self._close_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def pause(self) -> None:
        self.mode = "paused"
        self._flowing.clear()

    def refuse(self) -> None:
        self.mode = "refuse"
        self._flowing.set()
        self._close_all()

    def resume(self) -> None:
        self.mode = "forward"
        self._flowing.set()

    def _close_all(self) -> None:
        for writer in self._writers:
            writer.transport.abort()
        self._writers.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.mode == "refuse":
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self._writers += [writer, up_writer]

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    await self._flowing.wait()
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))


@pytest.fixture
def database() -> Iterator[str]:
    """A fresh, migrated database on the test PostgreSQL server (skipped when none answers)."""
    base = make_url(POSTGRES_URL)
    name = f"pf_wf_{secrets.token_hex(4)}"
    admin = (
        f"host={base.host} port={base.port or 5432} user={base.username or 'postgres'} dbname={base.database}"
    )
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.skip(f"no PostgreSQL at {base.host}:{base.port} ({exc}); set PATCHFLOW_TEST_POSTGRES_URL")
    with conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = base.set(database=name).render_as_string(hide_password=False)
    db.upgrade(url)
    try:
        yield url
    finally:
        for engine_url in (url,):
            with contextlib.suppress(Exception):
                db.get_engine(engine_url).dispose()
        with psycopg.connect(admin, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest_asyncio.fixture
async def proxy(database: str) -> AsyncIterator[PausableProxy]:
    target = make_url(database)
    proxy = PausableProxy(target.host or "127.0.0.1", target.port or 5432)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def through(database: str, proxy: PausableProxy) -> str:
    return make_url(database).set(port=proxy.port).render_as_string(hide_password=False)


async def wait_until_patched(client: object, wave_id: str, timeout: float = 60) -> None:
    """The wave's own state (a query, not the database) says every stage succeeded."""
    status = await settle(client, wave_id, {"succeeded"}, timeout=timeout)  # type: ignore[arg-type]
    assert all(s == "succeeded" for st in status.stages for s in st.instances.values())


def recorded(database: str, wave_id: str) -> tuple[str, dict[str, dict[str, str]]]:
    """(recorded wave state, instance → versions after) straight from PostgreSQL, not through the proxy."""
    with db.open_session(db.get_engine(database)) as session:
        wave = db.get_wave(session, wave_id=wave_id)
        results = db.list_instance_results(session, wave_id=wave_id)
    return wave.state, {r.instance_id: r.versions_after for r in results if r.finished_at is not None}


@pytest.mark.parametrize("outage", ["hangs", "refuses"])
async def test_patching_goes_on_while_the_history_database_is_out_and_history_catches_up(
    outage: str,
    dev_env: WorkflowEnvironment,
    make_fleet: Callable[..., Path],
    tmp_path: Path,
    database: str,
    proxy: PausableProxy,
) -> None:
    """Before: history writes were awaited inside the install activity without connect or statement timeouts
    (a hung database stopped the wave), and a failed write was swallowed (a refusing database lost history for
    good). Now the stage patches at full speed while the database is out, the wave's outbox retries the
    history until the database answers, and the wave ends once its history is complete."""
    inp = wave_input(
        make_fleet({"dev": 2, "prod": 6}, duration=0.2),
        tmp_path,
        [stage("dev", max_concurrency="2"), stage("prod", max_concurrency="2")],
        record_history=True,
    )
    client = dev_env.client
    task_queue = f"tq-{uuid.uuid4()}"
    async with build_worker(client, task_queue, database_url=through(database, proxy)):
        handle = await start(client, task_queue, inp)
        if outage == "hangs":
            proxy.pause()
        else:
            proxy.refuse()
        await wait_until_patched(client, inp.wave_id, timeout=60)  # patching never waited for the database
        assert (await handle.describe()).status == WorkflowExecutionStatus.RUNNING  # history not caught up
        await asyncio.sleep(1)
        proxy.resume()
        result = await asyncio.wait_for(handle.result(), timeout=120)
    assert result.status.state == "succeeded"
    state, versions = recorded(database, inp.wave_id)
    assert state == "succeeded"
    every = {i for st in result.status.stages for i in st.instances}
    assert set(versions) == every  # no result lost, including those finished during the outage
    assert {v["openssl.amd64"] for v in versions.values()} == {"3.0.2-0ubuntu1.16"}
    status = await wave_status(client, inp.wave_id)
    assert status.state == "succeeded"


async def test_a_worker_starts_without_the_history_database_and_says_so(
    dev_env: WorkflowEnvironment, tmp_path: Path, database: str, proxy: PausableProxy
) -> None:
    """``patchflow worker`` used to refuse to start while the database was down. It starts, says so on stderr
    and in its log, and ``patchflow_history_database_up`` is 0."""
    proxy.refuse()
    metrics_port = free_port()
    env = {
        **os.environ,
        "PATCHFLOW_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "PATCHFLOW_TASK_QUEUE": f"tq-{uuid.uuid4()}",
        "PATCHFLOW_DATA_DIR": str(tmp_path / "data"),
        "PATCHFLOW_DATABASE_URL": through(database, proxy),
        "PATCHFLOW_WORKER_METRICS_PORT": str(metrics_port),
        "PATCHFLOW_TEMPORAL_METRICS_PORT": "none",
    }
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "patchflow", "worker"], cwd=REPO_ROOT, env=env, stdout=out, stderr=out
        )
    try:
        for _ in range(300):
            if "worker polling" in log.read_text(errors="replace"):
                break
            assert worker.poll() is None, log.read_text(errors="replace")
            await asyncio.sleep(0.1)
        text = log.read_text(errors="replace")
        assert "worker polling" in text, text
        assert "history database" in text and "is unavailable" in text and "starts without it" in text
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
            metrics = response.read().decode()
        assert "patchflow_history_database_up 0.0" in metrics
    finally:
        worker.terminate()
        try:
            worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
