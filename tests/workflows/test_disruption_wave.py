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
from types import SimpleNamespace
from typing import Any

from temporalio.testing import WorkflowEnvironment

from activities.patching import build_executor
from patchflow.control.waves import wave_status
from patchflow.core.wavemodel import ExecutorRef, WaveInput
from patchflow.executors.base import Package
from patchflow.executors.simulated.fleet import load_fleet
from tests.workflows.conftest import running_worker
from tests.workflows.test_rate_control import wave as rate_wave
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
    """:func:`tests.workflows.test_rate_control.wave` with every target allowed in flight (the budget binds),
    its simulated state in a fresh directory (a fleet can be patched by several waves of one test)."""
    state_dir = tmp_path / uuid.uuid4().hex[:6]
    state_dir.mkdir()
    return rate_wave(fleet, state_dir, **{"max_concurrency": "100%", **stage_fields})


def max_out(events: list[tuple[str, str]], key: dict[str, str]) -> dict[str, int]:
    """The largest number of instances of each group out at once, replaying the recorded events."""
    out: dict[str, int] = {}
    peak: dict[str, int] = {}
    for kind, instance in events:
        group = key[instance]
        out[group] = out.get(group, 0) + (1 if kind == "start" else -1)
        peak[group] = max(peak.get(group, 0), out[group])
    return peak


def assert_zone_after_zone(events: list[tuple[str, str]], zone_of: dict[str, str], zones: list[str]) -> None:
    """Every install of each zone finished before the first install of the next zone started."""
    for before, after in zip(zones, zones[1:], strict=False):
        first_start = next(n for n, (kind, i) in enumerate(events) if kind == "start" and zone_of[i] == after)
        last_finish = max(
            n for n, (kind, i) in enumerate(events) if kind == "finish" and zone_of[i] == before
        )
        assert last_finish < first_start, f"{after} started before {before} finished"


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
    assert_zone_after_zone(events, zone_of, expected_order)
    assert all(p <= 2 for p in max_out(events, zone_of).values())
    assert max(max_out(events, zone_of).values()) == 2
    assert result.status.stages[0].disruption == "2 per availability_zone; zone_by_zone"


async def test_budget_and_zone_order_survive_continue_as_new(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    """A stage run that continues as new several times (``history_event_limit``) rebuilds its budget and zone
    order from what it carries: clusters stay within ``max: 1`` and zones still finish one after another."""
    fleet, cluster_of, zone_of = write_fleet(tmp_path, duration=0.05)
    inp = wave(fleet, tmp_path, disruption_max="1", disruption_per="tag:Cluster", rollout="zone_by_zone")
    inp.history_event_limit = 60
    (result, _), events = await run(dev_env, inp)
    assert result.status.state == "succeeded", result.status
    assert set(result.status.stages[0].instances.values()) == {"succeeded"}
    runs = [wf async for wf in dev_env.client.list_workflows(f"WorkflowId = '{inp.wave_id}/prod/run-0-0'")]
    assert len(runs) >= 2, "the stage run should have continued as new"
    assert all(p == 1 for p in max_out(events, cluster_of).values())
    zones = list(dict.fromkeys(zone_of[i] for i in result.status.stages[0].instances))
    assert_zone_after_zone(events, zone_of, zones)


def test_the_plan_keys_reach_the_wave_input(tmp_path: Path) -> None:
    """``disruption_budget`` and ``rollout`` (the plan's default and a stage's own) travel to the stages of the
    wave's input as written; a stage without them gets the defaults that dispatch exactly as before."""
    from patchflow.config import Settings
    from patchflow.control.waves import wave_input
    from patchflow.core.plans import load_plan
    from tests.core.test_plans import GOOD_STAGE, write_plan

    path = write_plan(
        tmp_path,
        "disruption_budget: {max: '10%', per: 'tag:aws:autoscaling:groupName'}\nrollout: zone_by_zone\n"
        "stages:\n"
        + GOOD_STAGE
        + "  - name: prod\n    targets: {patch_group: prod}\n    disruption_budget: none\n"
        "    rollout: concurrent_zones\n",
    )
    fleet, _, _ = write_fleet(tmp_path, duration=0)
    (tmp_path / "f.yaml").write_text(fleet.read_text())  # the plan's fleet: wave_input reads it
    pinned = SimpleNamespace(id="ps-000000000000000000000000", patches=(), sources=lambda: ())
    inp = wave_input(load_plan(path), Settings(data_dir=tmp_path / "data"), pinned, wave_id="w")  # type: ignore[arg-type]
    dev, prod = inp.stages
    assert (dev.disruption_max, dev.disruption_per, dev.rollout) == (
        "10%",
        "tag:aws:autoscaling:groupName",
        "zone_by_zone",
    )
    assert (prod.disruption_max, prod.disruption_per, prod.rollout) == ("", "", "concurrent_zones")


async def test_resolve_targets_returns_each_group_and_zone_with_its_ids(tmp_path: Path) -> None:
    """Only when asked (a stage with a budget or zone_by_zone): group → ids in dispatch order, untagged instances
    in ``(none)``; a stage without the keys gets none of it."""
    from temporalio.testing import ActivityEnvironment

    from activities.patching import WaveActivities
    from patchflow.core.wavemodel import ResolveTargetsInput

    fleet, cluster_of, zone_of = write_fleet(tmp_path, duration=0)
    ref = wave(fleet, tmp_path).executor
    env = ActivityEnvironment()
    plain = await env.run(
        WaveActivities().resolve_targets, ResolveTargetsInput(executor=ref, patch_group="prod")
    )
    assert (plain.groups, plain.zones) == ({}, {})
    asked = await env.run(
        WaveActivities().resolve_targets,
        ResolveTargetsInput(executor=ref, patch_group="prod", group_by="tag:Cluster", zones=True),
    )
    assert asked.instance_ids == plain.instance_ids == sorted(cluster_of)
    assert list(asked.groups) == ["api", "db", "(none)", "web"]  # first appearance in the sorted targets
    assert asked.groups == {g: [i for i in asked.instance_ids if cluster_of[i] == g] for g in asked.groups}
    assert asked.zones == {z: [i for i in asked.instance_ids if zone_of[i] == z] for z in ZONES}


def test_status_json_and_table_show_the_budget_only_when_there_is_one() -> None:
    from rich.console import Console

    from patchflow.cli.waves import stage_table
    from patchflow.control.waves import status_json
    from patchflow.core.wavemodel import StageStatus, WaveStatus

    budgeted = StageStatus(
        name="prod", note="", disruption="disruption budget 1 per tag:Cluster; at the limit: web 1/1"
    )
    status = WaveStatus("w", "p", "running", "ps", [budgeted, StageStatus(name="dev")])
    as_json = status_json(status)
    assert as_json["stages"][0]["disruption_budget"] == budgeted.disruption
    assert "disruption_budget" not in as_json["stages"][1]  # unchanged for stages without a budget
    console = Console(width=400, record=True)
    console.print(stage_table(as_json))
    assert "at the limit: web 1/1" in console.export_text()


def test_a_dry_run_previews_each_groups_limit_and_the_zone_order(tmp_path: Path) -> None:
    """``patchflow plan`` (a real process) shows, per stage, each group's size and limit under the budget and
    the zones in rollout order; ``--format json`` carries the same as ``disruption``."""
    from tests.conftest import BASELINES_DIR, EXAMPLES_DIR
    from tests.test_cli import run as cli

    fleet, _, _ = write_fleet(tmp_path, duration=0)
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        f"name: budget\nbaseline: {BASELINES_DIR / 'ubuntu-staged.yaml'}\n"
        f"catalog: {EXAMPLES_DIR / 'ubuntu-catalog.json'}\nexecutor: {{kind: simulated, fleet: {fleet}}}\n"
        "stages:\n  - name: prod\n    targets: {patch_group: prod}\n    max_concurrency: 100%\n"
        "    disruption_budget: {max: '34%', per: 'tag:Cluster'}\n    rollout: zone_by_zone\n"
    )
    shown = cli("plan", str(plan), data_dir=tmp_path / "data", check=True).stdout
    assert (
        "disruption budget 34% per tag:Cluster: api ≤ 1 of 4, db ≤ 1 of 3, (none) ≤ 1 of 2, web ≤ 2 of 7; "
        "zone_by_zone, zones in order: eu-west-1a, eu-west-1b, eu-west-1c"
    ) in " ".join(shown.split())
    as_json = json.loads(cli("plan", str(plan), "--format", "json", data_dir=tmp_path / "data").stdout)
    assert as_json["stages"][0]["disruption"]["groups"]["web"] == {"size": 7, "limit": 2}
