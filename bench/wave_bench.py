"""Rollout benchmarks on the embedded Temporal dev server (real server, real worker, simulated fleet).

Run: ``.venv/bin/python bench/wave_bench.py [scale|makespan|all] [--instances N]``

* ``scale`` — one 10,000-instance stage, zero-duration patches, ``max_concurrency`` 500: wall time,
  instances per second, the largest workflow history (events) among the wave and its stage runs (including
  continue-as-new runs), and the peak memory of the process hosting the worker.
* ``payloads`` — one stage per ``--sizes`` entry (default 10,000 and 20,000 instances, zero-duration patches,
  ``max_concurrency`` 500): the largest set of payloads the client and the worker exchanged with Temporal
  (:mod:`patchflow.testing.payloads`), against the 512 KiB warning and issue 17's 256 KB target.
* ``makespan`` — 200 instances with heterogeneous durations (seeded, 1–10 s scaled by 0.1) under
  ``max_concurrency`` 10: the wave's makespan against the lower bound max(Σd/C, max d) and against fixed
  batches of 10 (Ansible's ``serial``), computed from the same durations.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import random
import resource
import sys
import tempfile
import time
import uuid
from pathlib import Path

from temporalio.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from patchflow.config import Settings  # noqa: E402
from patchflow.control.connection import data_converter  # noqa: E402
from patchflow.control.devserver import free_port, start_dev_server  # noqa: E402
from patchflow.core.wavemodel import ExecutorRef, StageInput, WaveInput  # noqa: E402
from patchflow.core.windows import WindowSpec  # noqa: E402
from patchflow.executors.base import Package  # noqa: E402
from patchflow.executors.simulated import SimulatedExecutor  # noqa: E402
from patchflow.executors.simulated.fleet import load_fleet  # noqa: E402
from patchflow.service.worker import build_worker  # noqa: E402
from patchflow.testing.payloads import (  # noqa: E402
    TARGET_BYTES,
    WARN_BYTES,
    PayloadSizeRecorder,
    recording_client,
)
from workflows.wave import WaveWorkflow  # noqa: E402

PATCHES = [Package("openssl", "amd64", "3.0.2-0ubuntu1.16")]
INSTALLED = [{"name": "openssl", "arch": "amd64", "version": "3.0.2-0ubuntu1.10"}]


def write_fleet(path: Path, durations: list[float]) -> None:
    instances = [
        {
            "id": f"i-{n:017d}",
            "tags": {"Patch Group": "bench"},
            "platform": {"family": "deb", "product": "Ubuntu22.04"},
            "installed": INSTALLED,
            "behaviour": {"duration_seconds": d},
        }
        for n, d in enumerate(durations)
    ]
    # JSON: parsed by ``json`` (fast at 100,000 instances), and it has no YAML aliases for the loader to refuse.
    path.write_text(json.dumps({"name": "bench", "instances": instances}))


async def run_wave(
    client: Client, fleet: Path, work: Path, concurrency: str, time_scale: float
) -> tuple[float, str]:
    inp = WaveInput(
        wave_id=f"wave-bench-{uuid.uuid4().hex[:8]}",
        plan_name="bench",
        patch_set_id="ps-000000000000000000000000",
        patches=PATCHES,
        executor=ExecutorRef(
            kind="simulated",
            fleet_path=str(fleet),
            state_path=str(work / "state.sqlite"),
            time_scale=time_scale,
        ),
        stages=[
            StageInput(
                name="bench",
                window=WindowSpec("now"),
                max_concurrency=concurrency,
                max_errors="0",
                patch_group="bench",
            )
        ],
    )
    task_queue = f"bench-{uuid.uuid4()}"
    async with build_worker(client, task_queue):
        start = time.perf_counter()
        result = await client.execute_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue)
        elapsed = time.perf_counter() - start
    assert result.status.state == "succeeded", result.status.reason
    return elapsed, inp.wave_id


async def largest_history(client: Client, wave_id: str) -> tuple[int, int]:
    """(largest event count of any execution of this wave, number of executions)."""
    largest, runs = 0, 0
    query = f"WorkflowId = '{wave_id}' OR WorkflowId STARTS_WITH '{wave_id}/'"
    async for wf in client.list_workflows(query):
        history = await client.get_workflow_handle(wf.id, run_id=wf.run_id).fetch_history()
        largest = max(largest, len(history.events))
        runs += 1
    return largest, runs


async def scale(client: Client, instances: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_fleet(work / "fleet.json", [0.0] * instances)
        elapsed, wave_id = await run_wave(client, work / "fleet.json", work, "500", 1.0)
        status = SimulatedExecutor(load_fleet(work / "fleet.json"), work / "state.sqlite").status()
        assert all(i["install_count"] == 1 for i in status["instances"])
        await asyncio.sleep(2)  # visibility is eventually consistent
        events, runs = await largest_history(client, wave_id)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"scale: {instances} instances, max_concurrency 500, zero-duration patches")
    print(f"  wall time {elapsed:.1f} s, {instances / elapsed:.0f} instances/s")
    print(f"  largest workflow history {events} events across {runs} executions (wave + stage runs)")
    print(f"  peak RSS of the process hosting the worker {peak:.0f} MiB")


async def payloads(client: Client, sizes: list[int], timeout: float) -> None:
    print("payloads: one stage, zero-duration patches, max_concurrency 500")
    print(f"  {'instances':>10} {'largest payload':>16} {'vs 512 KiB':>10} {'wall s':>7}  which")
    for size in sizes:
        recorder = PayloadSizeRecorder()
        recorded = recording_client(client, recorder)
        with tempfile.TemporaryDirectory() as tmp:
            work = Path(tmp)
            write_fleet(work / "fleet.json", [0.0] * size)
            start = time.perf_counter()
            try:
                elapsed, _ = await asyncio.wait_for(
                    run_wave(recorded, work / "fleet.json", work, "500", 1.0), timeout
                )
                ended = "finished"
            except TimeoutError:  # e.g. a payload past 2 MiB: the server refuses it and the wave cannot go on
                elapsed, ended = time.perf_counter() - start, f"did not finish in {timeout:.0f} s"
        largest = recorder.largest
        which = f"{largest.direction}: {', '.join(largest.fields[:6]) or largest.sample[:60]}"
        verdict = (
            "over" if largest.size > WARN_BYTES else ("under" if largest.size < TARGET_BYTES else "near")
        )
        print(
            f"  {size:>10,} {largest.size / 1024:>13,.0f} KiB {largest.size / WARN_BYTES:>9.2f}x {elapsed:>7.1f}"
            f"  {which} ({verdict}; {recorder.sets} payload sets; {ended})"
        )
        for kind in recorder.top(8):
            print(
                f"  {'':>10} {kind.size / 1024:>13,.0f} KiB {'':>18}  {kind.direction}: {', '.join(kind.fields[:8])}"
            )


def sliding_window(durations: list[float], concurrency: int) -> float:
    """The makespan of a sliding window with no overhead at all: instances in dispatch order, each started the
    instant one of ``concurrency`` slots frees (what a stage run does, minus every round trip)."""
    slots = [0.0] * concurrency
    for duration in durations:
        heapq.heappush(slots, heapq.heappop(slots) + duration)
    return max(slots)


async def makespan(client: Client) -> None:
    rng = random.Random(2026)
    scale_factor, concurrency, count = 0.1, 10, 200
    durations = [rng.uniform(1.0, 10.0) for _ in range(count)]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        write_fleet(work / "fleet.json", durations)
        elapsed, _ = await run_wave(client, work / "fleet.json", work, str(concurrency), scale_factor)
    scaled = [d * scale_factor for d in durations]
    bound = max(sum(scaled) / concurrency, max(scaled))
    batches = sum(max(scaled[i : i + concurrency]) for i in range(0, count, concurrency))
    ideal = sliding_window(scaled, concurrency)
    print(
        f"makespan: {count} instances, durations 1–10 s x {scale_factor} (seed 2026), max_concurrency {concurrency}"
    )
    print(f"  lower bound max(Σd/C, max d) {bound:.2f} s")
    print(f"  patchflow wave                {elapsed:.2f} s  ({elapsed / bound:.2f} x bound)")
    print(
        f"  zero-overhead sliding window  {ideal:.2f} s  ({ideal / bound:.3f} x bound: the same dispatch order, "
        "each instance started the instant a slot frees)"
    )
    print(f"  fixed batches of {concurrency} (serial)   {batches:.2f} s  ({batches / bound:.2f} x bound)")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("which", nargs="?", default="all", choices=["scale", "makespan", "payloads", "all"])
    parser.add_argument("--instances", type=int, default=10_000)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 20_000])
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds one payloads wave may take")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as data:
        address = f"127.0.0.1:{free_port()}"
        server = start_dev_server(address, Path(data), ui=False)
        try:
            # patchflow's converter: payloads past 240 KiB travel by reference (patchflow.control.payloads)
            settings = Settings(data_dir=Path(data))
            client = await Client.connect(address, data_converter=data_converter(settings))
            if args.which in ("makespan", "all"):
                await makespan(client)
            if args.which in ("scale", "all"):
                await scale(client, args.instances)
            if args.which in ("payloads", "all"):
                await payloads(client, args.sizes, args.timeout)
        finally:
            server.stop()


if __name__ == "__main__":
    asyncio.run(main())
