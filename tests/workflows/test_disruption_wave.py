"""Disruption budgets and zone-by-zone rollouts in running waves (issue 14, part 2; dev server).

A simulated fleet of several clusters (tag ``Cluster``) spread over three availability zones; a thin wrapper around
the simulated executor records, in order, every install's start and finish. An instance is out at least from its
install's start to its finish (the workflow counts it out longer: from its batch's dispatch until the batch's last
step finished), so the maximum observed per group is a lower bound of what the workflow let out — and must stay
within the budget.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from temporalio.testing import WorkflowEnvironment

from activities.patching import build_executor
from patchflow.control.waves import wave_status
from patchflow.core.wavemodel import ExecutorRef, StageInput, WaveInput
from patchflow.core.windows import WindowSpec
from patchflow.executors.base import Package
from patchflow.executors.simulated.fleet import load_fleet
from tests.workflows.conftest import running_worker
from workflows.wave import WaveWorkflow

PATCHES = [Package("openssl", "amd64", "3.0.2-0ubuntu1.16")]
ZONES = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]
#: Cluster → instances; untagged instances (no ``Cluster``) form the group ``(none)``.
CLUSTERS = {"web": 7, "api": 4, "db": 3, None: 2}


@dataclass
class Recording:
    """Wraps the real simulated executor and records every install's start and finish, in order."""

    inner: Any
    events: list[tuple[str, str]] = field(default_factory=list)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def start_install(self, instance: str, patches: Any, *, operation_id: str) -> Any:
        self.events.append(("start", instance))
        return await self.inner.start_install(instance, patches, operation_id=operation_id)

    async def finish_install(self, instance: str, *, operation_id: str) -> Any:
        result = await self.inner.finish_install(instance, operation_id=operation_id)
        self.events.append(("finish", instance))
        return result


def write_fleet(tmp_path: Path, duration: float) -> tuple[Path, dict[str, str], dict[str, str]]:
    """The fleet file, and each instance's cluster (``(none)`` untagged) and zone."""
    generate = []
    for cluster, count in CLUSTERS.items():
        name = cluster or "none"
        tags = {"Patch Group": "prod", **({"Cluster": cluster} if cluster else {})}
        generate.append(
            {
                "count": count,
                "id_prefix": f"i-0{name}",
                "tags": tags,
                "availability_zone": list(ZONES),
                "platform": {"family": "deb", "product": "Ubuntu22.04"},
                "installed": [{"name": "openssl", "arch": "amd64", "version": "3.0.2-0ubuntu1.10"}],
                "behaviour": {"duration_seconds": duration},
            }
        )
    path = tmp_path / f"clusters-{uuid.uuid4().hex[:6]}.json"
    path.write_text(json.dumps({"name": path.stem, "generate": generate}))
    fleet = load_fleet(path)
    cluster_of = {i.id: i.tags.get("Cluster", "(none)") for i in fleet.instances}
    zone_of = {i.id: i.availability_zone or "(none)" for i in fleet.instances}
    return path, cluster_of, zone_of


def wave(fleet: Path, tmp_path: Path, **stage_fields: Any) -> WaveInput:
    fields: dict[str, Any] = {
        "name": "prod",
        "window": WindowSpec(schedule="now"),
        "max_concurrency": "100%",
        "max_errors": "0",
        "patch_group": "prod",
    }
    fields.update(stage_fields)
    return WaveInput(
        wave_id=f"wave-budget-{uuid.uuid4().hex[:8]}",
        plan_name="budget",
        patch_set_id="ps-000000000000000000000000",
        patches=PATCHES,
        executor=ExecutorRef(
            kind="simulated",
            fleet_path=str(fleet),
            state_path=str(tmp_path / f"{uuid.uuid4().hex[:6]}.sqlite"),
        ),
        stages=[StageInput(**fields)],
        heartbeat_timeout_seconds=5,
    )


def max_out(events: list[tuple[str, str]], key: dict[str, str]) -> dict[str, int]:
    """The largest number of instances of each group out at once, replaying the recorded events."""
    out: dict[str, int] = {}
    peak: dict[str, int] = {}
    for kind, instance in events:
        group = key[instance]
        out[group] = out.get(group, 0) + (1 if kind == "start" else -1)
        peak[group] = max(peak.get(group, 0), out[group])
    return peak


async def run(
    env: WorkflowEnvironment, inp: WaveInput, *, watch: Callable[[str], Any] | None = None
) -> tuple[Any, list[tuple[str, str]]]:
    recordings: list[Recording] = []

    def factory(ref: ExecutorRef) -> Any:
        recordings.append(Recording(build_executor(ref)))
        return recordings[-1]

    async with running_worker(env.client, factory) as tq:
        handle = await env.client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)
        watched = await watch(inp.wave_id) if watch else None
        result = await handle.result()
    events = [e for r in recordings for e in r.events]
    return (result, watched), events


async def test_the_budget_per_cluster_is_never_exceeded_and_status_shows_it(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """``disruption_budget: {max: "34%", per: "tag:Cluster"}`` with ``max_concurrency: 100%``: each cluster's
    limit is 34 % of its size rounded down, at least 1 (web 7 → 2, api 4 → 1, db 3 → 1, untagged 2 → 1). The
    maximum observed per cluster stays within it, while clusters run side by side; the same wave without the
    budget starts the whole web cluster at once (the test would notice a budget that does nothing). While the
    stage runs, ``wave status`` shows the budget and the clusters at their limit."""
    fleet, cluster_of, _ = write_fleet(tmp_path, duration=0.4)
    limits = {"web": 2, "api": 1, "db": 1, "(none)": 1}

    async def watch(wave_id: str) -> str:
        for _ in range(200):
            status = await wave_status(dev_env.client, wave_id)
            if "at the limit" in status.stages[0].disruption:
                return status.stages[0].disruption
            await asyncio.sleep(0.05)
        return ""

    inp = wave(fleet, tmp_path, disruption_max="34%", disruption_per="tag:Cluster")
    (result, seen), events = await run(dev_env, inp, watch=watch)
    assert result.status.state == "succeeded", result.status
    assert set(result.status.stages[0].instances.values()) == {"succeeded"}
    peak = max_out(events, cluster_of)
    assert all(peak[g] <= limits[g] for g in limits), peak
    assert peak["web"] == 2  # the budget, not something else, is what held web back
    assert max_out(events, dict.fromkeys(cluster_of, "all"))["all"] >= 4  # clusters went side by side
    assert seen.startswith("disruption budget 34% per tag:Cluster; at the limit: "), seen
    assert result.status.stages[0].disruption == "34% per tag:Cluster"

    unbudgeted = wave(fleet, tmp_path)
    (result, _), events = await run(dev_env, unbudgeted)
    assert result.status.state == "succeeded"
    assert max_out(events, cluster_of)["web"] == CLUSTERS["web"]
    assert result.status.stages[0].disruption == ""


async def test_zone_by_zone_finishes_each_zone_before_the_next(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """``rollout: zone_by_zone`` (GCP OS Config's ZONE_BY_ZONE rollout mode) with a budget of 2 per
    ``availability_zone``: every install of a zone finished before the first of the next zone started, zones in
    the order of their first instance in the dispatch order, and never more than 2 of a zone out at once."""
    fleet, _, zone_of = write_fleet(tmp_path, duration=0.2)
    inp = wave(
        fleet, tmp_path, disruption_max="2", disruption_per="availability_zone", rollout="zone_by_zone"
    )
    (result, _), events = await run(dev_env, inp)
    assert result.status.state == "succeeded", result.status
    targets = list(result.status.stages[0].instances)
    expected_order = list(dict.fromkeys(zone_of[i] for i in targets))
    assert len(expected_order) == 3
    started_zones = list(dict.fromkeys(zone_of[i] for kind, i in events if kind == "start"))
    assert started_zones == expected_order
    for before, after in zip(expected_order, expected_order[1:], strict=False):
        first_start = next(n for n, (kind, i) in enumerate(events) if kind == "start" and zone_of[i] == after)
        last_finish = max(
            n for n, (kind, i) in enumerate(events) if kind == "finish" and zone_of[i] == before
        )
        assert last_finish < first_start, f"{after} started before {before} finished"
    assert all(p <= 2 for p in max_out(events, zone_of).values())
    assert max(max_out(events, zone_of).values()) == 2
    assert result.status.stages[0].disruption == "2 per availability_zone; zone_by_zone"
