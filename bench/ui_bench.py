"""Web console benchmark: the wave page of a finished 10,000-instance wave, served by the real API.

Run: ``.venv/bin/python bench/ui_bench.py [--instances N] [--repeat R]``

A real Temporal dev server and worker run one wave of N instances (zero-duration patches, 1 % of them failing,
inside the error budget) on the simulated fleet with its history recorded in SQLite; then the API serves the
console in a thread of its own and a signed-in viewer fetches pages of the wave's instance table (first,
middle, last; filtered to the failures; a search), each R times. Printed: median and worst latency per kind of
page, measured at the client (the whole request: status from Temporal, history database reads, rendering),
and the median CPU time the request cost this process (the API and the client, not the Temporal server),
which other work on a shared machine does not inflate. Target: under 300 ms per page on 2 cores.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import os
import re
import statistics
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import yaml
from temporalio.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from patchflow.config import Settings  # noqa: E402
from patchflow.control.devserver import free_port, start_dev_server  # noqa: E402
from patchflow.core.baselines import load_baseline  # noqa: E402
from patchflow.core.catalog import load_catalog  # noqa: E402
from patchflow.core.evaluation import evaluate  # noqa: E402
from patchflow.core.patchsets import PatchSetStore  # noqa: E402
from patchflow.core.wavemodel import ExecutorRef, StageInput, WaveInput  # noqa: E402
from patchflow.core.windows import WindowSpec  # noqa: E402
from patchflow.executors.base import Package  # noqa: E402
from patchflow.service.api import bind, create_app, make_server  # noqa: E402
from patchflow.service.worker import build_worker  # noqa: E402
from patchflow.store import db  # noqa: E402
from workflows.wave import WaveWorkflow  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "baselines" / "examples"
INSTALLED = [
    {"name": "openssl", "arch": "amd64", "version": "3.0.2-0ubuntu1.10"},
    {"name": "libssl3", "arch": "amd64", "version": "3.0.2-0ubuntu1.10"},
    {"name": "curl", "arch": "amd64", "version": "7.81.0-1ubuntu1.14"},
    {"name": "libcurl4", "arch": "amd64", "version": "7.81.0-1ubuntu1.14"},
    {"name": "bash", "arch": "amd64", "version": "5.1-6ubuntu1"},
    {"name": "tzdata", "arch": "amd64", "version": "2024a-0ubuntu0.22.04"},
]
CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def write_fleet(path: Path, instances: int) -> None:
    rows = [
        {
            "id": f"i-{n:017d}",
            "tags": {"Patch Group": "bench"},
            "platform": {"family": "deb", "product": "Ubuntu22.04"},
            "installed": INSTALLED,
            "behaviour": {"duration_seconds": 0.0, **({"fail": True} if n % 100 == 7 else {})},
        }
        for n in range(instances)
    ]
    path.write_text(yaml.safe_dump({"name": "bench", "instances": rows}, sort_keys=False))


async def run_wave(client: Client, settings: Settings, fleet: Path, instances: int) -> str:
    """One finished wave of ``instances`` with its patch set pinned and its history recorded."""
    result = evaluate(
        load_baseline(EXAMPLES.parent / "ubuntu-staged.yaml"),
        load_catalog(EXAMPLES / "ubuntu-catalog.json"),
        datetime.now(UTC),
        catalog_source="ubuntu-catalog.json",
    )
    PatchSetStore(settings.patch_set_dir).save(result.patch_set)
    inp = WaveInput(
        wave_id=f"wave-bench-{uuid.uuid4().hex[:8]}",
        plan_name="bench",
        patch_set_id=result.patch_set.id,
        patches=[Package(p.name, p.arch, p.version) for p in result.patch_set.patches],
        executor=ExecutorRef(
            kind="simulated", fleet_path=str(fleet), state_path=str(settings.data_dir / "state.sqlite")
        ),
        stages=[
            StageInput(
                name="bench",
                window=WindowSpec("now"),
                max_concurrency="500",
                max_errors=str(instances // 50),
                patch_group="bench",
            )
        ],
        started_by="bench",
        record_history=True,
    )
    database_url = settings.database_url_resolved
    async with build_worker(client, settings.task_queue, database_url=database_url, settings=settings):
        started = time.perf_counter()
        done = await client.execute_workflow(
            WaveWorkflow.run, inp, id=inp.wave_id, task_queue=settings.task_queue
        )
        print(f"wave of {instances} instances {done.status.state} in {time.perf_counter() - started:.1f} s")
    assert done.status.state == "succeeded", done.status.reason
    return inp.wave_id


def serve(settings: Settings) -> tuple[str, Any, threading.Thread]:
    """The API (console included) on a free port, in a thread with its own event loop."""
    sock = bind("127.0.0.1", 0)
    server = make_server(create_app(settings))
    thread = threading.Thread(
        target=lambda: asyncio.run(server.serve(sockets=[sock])), name="api", daemon=True
    )
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    for _ in range(300):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.05)
    return url, server, thread


def measure(
    client: httpx.Client, path: str, params: dict[str, Any], repeat: int, expect: str
) -> tuple[list[float], list[float]]:
    """Wall time and CPU time (this process: the API and the client, not the Temporal server) per request."""
    walls, cpus = [], []
    for _ in range(repeat):
        started, cpu = time.perf_counter(), time.process_time()
        response = client.get(path, params=params)
        walls.append(time.perf_counter() - started)
        cpus.append(time.process_time() - cpu)
        assert response.status_code == 200, response.text[:500]
        assert expect in response.text, f"{expect!r} not on {path} {params}"
    return walls, cpus


def line(name: str, walls: list[float], cpus: list[float]) -> str:
    ms = [statistics.median(walls), max(walls), statistics.median(cpus)]
    return f"  {name:<14}" + "".join(f"{v * 1000:>9.0f}" for v in ms)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        address = f"127.0.0.1:{free_port()}"
        temporal = start_dev_server(address, work / "temporal", ui=False)
        try:
            settings = Settings(
                data_dir=work / "data",
                temporal_address=address,
                task_queue=f"bench-{uuid.uuid4()}",
                database_url=f"sqlite:///{work / 'patchflow.db'}",
            )
            settings.data_dir.mkdir()
            db.upgrade(settings.database_url_resolved)
            write_fleet(work / "fleet.yaml", args.instances)

            async def wave() -> str:
                return await run_wave(
                    await Client.connect(address), settings, work / "fleet.yaml", args.instances
                )

            wave_id = asyncio.run(wave())
            with db.open_session(db.get_engine(settings.database_url_resolved)) as session:
                _, token = db.create_token(session, name="bench-viewer", role="viewer")
            url, server, thread = serve(settings)
            try:
                report(url, token, wave_id, args.instances, args.repeat)
            finally:
                server.should_exit = True
                thread.join(timeout=30)
        finally:
            temporal.stop()


def report(url: str, token: str, wave_id: str, instances: int, repeat: int) -> None:
    with httpx.Client(base_url=url, timeout=60) as client:
        form = client.get("/ui/login")
        found = CSRF.search(form.text)
        assert found is not None
        signed = client.post("/ui/login", data={"token": token, "csrf": html.unescape(found.group(1))})
        assert signed.status_code == 303, signed.text
        pages = -(-instances // 50)
        path = f"/ui/waves/{wave_id}"
        cases = [
            ("first page", {}, "Page 1 of"),
            ("middle page", {"page": pages // 2}, f"Page {pages // 2} of"),
            ("last page", {"page": pages}, f"Page {pages} of"),
            ("failed only", {"state": "failed"}, "Failure"),
            ("search", {"q": "00000000000004242"}, "i-00000000000004242"),
        ]
        print(f"console wave page, {instances} instances, {repeat} requests each (ms; load {load()}):")
        print(f"  {'page':<14}{'median':>9}{'worst':>9}{'CPU':>9}")
        # The first request reads and decodes the finished wave's status (kept afterwards) and the patch set.
        print(line("first request", *measure(client, path, {}, 1, "Page 1 of")))
        for name, params, expect in cases:
            print(line(name, *measure(client, path, params, repeat, expect)))
        print(line("waves list", *measure(client, "/ui/waves", {}, max(3, repeat // 4), wave_id)))


def load() -> str:
    """The machine's 1-minute load average: on a shared machine, wall times grow with it."""
    return f"{os.getloadavg()[0]:.1f}"


if __name__ == "__main__":
    main()
