"""Disruption budgets: grouping, per-group limits, and the scheduler that keeps them (issue 14, part 2)."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from patchflow.core.disruption import (
    CONCURRENT_ZONES,
    NONE_GROUP,
    ZONE_BY_ZONE,
    DisruptionBudget,
    DisruptionGate,
    group_key,
    group_members,
    only,
    per_problem,
    resolve_group_limit,
    resolve_limits,
)
from patchflow.core.instances import InstanceInfo
from patchflow.core.plans import PlanError, load_plan
from patchflow.core.ratecontrol import IN_FLIGHT, PENDING, RAMPS, Limit, StageScheduler
from tests.core.test_plans import GOOD_STAGE, write_plan


def test_groups_by_tag_or_zone_and_untagged_instances_share_the_none_group() -> None:
    fleet = [
        InstanceInfo("i-1", tags={"Cluster": "web"}, availability_zone="eu-west-1a"),
        InstanceInfo("i-2", tags={"Cluster": "db"}, availability_zone="eu-west-1b"),
        InstanceInfo("i-3", tags={"Cluster": "web"}),
        InstanceInfo("i-4", tags={"Cluster": ""}),
    ]
    assert group_members(fleet, "tag:Cluster") == {"web": ["i-1", "i-3"], "db": ["i-2"], NONE_GROUP: ["i-4"]}
    assert group_members(fleet, "availability_zone") == {
        "eu-west-1a": ["i-1"],
        "eu-west-1b": ["i-2"],
        NONE_GROUP: ["i-3", "i-4"],
    }
    asg = InstanceInfo("i-5", tags={"aws:autoscaling:groupName": "web-asg"})
    assert group_key(asg, "tag:aws:autoscaling:groupName") == "web-asg"


@pytest.mark.parametrize("per", ["availability_zone", "tag:Cluster", "tag:aws:autoscaling:groupName"])
def test_per_accepts_zone_and_tags(per: str) -> None:
    assert per_problem(per) is None


@pytest.mark.parametrize("per", ["zone", "tag:", "Cluster", 3, None])
def test_per_rejects_anything_else_and_says_what_to_use(per: object) -> None:
    assert "use availability_zone or tag:<Key>" in (per_problem(per) or "")


def test_percentages_round_down_per_group_but_never_below_one() -> None:
    assert resolve_group_limit(Limit(10, True), 3) == 1  # 10 % of 3 still lets one out
    assert resolve_group_limit(Limit(10, True), 25) == 2  # never more than 10 %
    assert resolve_group_limit(Limit(50, True), 5) == 2
    assert resolve_group_limit(Limit(100, True), 4) == 4
    assert resolve_group_limit(Limit(2), 1) == 2
    assert resolve_limits(Limit(34, True), {"a": ["1", "2", "3"], "b": ["4"] * 6}) == {"a": 1, "b": 2}


def scheduler(
    order: list[str],
    groups: dict[str, list[str]],
    limits: dict[str, int],
    *,
    zones: dict[str, list[str]] | None = None,
    concurrency: int = 10,
    batch_size: int = 1,
    max_errors: int = 100,
    ramp: str = "none",
) -> StageScheduler:
    gate = DisruptionGate.build(groups=groups, limits=limits, zones=zones or {}, pending=order)
    return StageScheduler(
        pending=deque(order),
        max_concurrency=concurrency,
        max_errors=max_errors,
        batch_size=batch_size,
        states=dict.fromkeys(order, PENDING),
        disruption=gate,
        ramp=ramp,
    )


def test_a_full_group_is_skipped_and_the_next_group_goes_in_order() -> None:
    s = scheduler(
        ["a1", "a2", "a3", "b1", "b2", "c1"],
        {"A": ["a1", "a2", "a3"], "B": ["b1", "b2"], "C": ["c1"]},
        {"A": 1, "B": 1, "C": 1},
    )
    assert s.take() == [["a1"], ["b1"], ["c1"]]
    assert s.remaining() == ["a2", "a3", "b2"]  # skipped ones stay first in line
    assert s.take() == []
    s.record("b1", "succeeded", counts_as_error=False)
    assert s.take() == [["b2"]]
    s.record("a1", "failed", counts_as_error=True)
    assert s.take() == [["a2"]]
    assert s.disruption is not None and s.disruption.summary("1 per tag:Cluster").startswith(
        "disruption budget 1 per tag:Cluster; at the limit: A 1/1, B 1/1, C 1/1"
    )


def test_batches_carry_only_what_the_budget_allows() -> None:
    s = scheduler(
        [f"a{i}" for i in range(6)] + [f"b{i}" for i in range(6)],
        {"A": [f"a{i}" for i in range(6)], "B": [f"b{i}" for i in range(6)]},
        {"A": 3, "B": 2},
        batch_size=4,
    )
    assert s.take() == [["a0", "a1", "a2", "b0"], ["b1"]]


def test_error_budget_stops_dispatch_as_before() -> None:
    s = scheduler(["a1", "b1", "a2"], {"A": ["a1", "a2"], "B": ["b1"]}, {"A": 1, "B": 1}, max_errors=0)
    assert s.take() == [["a1"], ["b1"]]
    s.record("a1", "failed", counts_as_error=True)
    assert s.budget_exceeded and s.take() == []
    s.record("b1", "succeeded", counts_as_error=False)
    assert s.finished and s.mark_not_attempted() == ["a2"]


def test_zone_by_zone_finishes_a_zone_before_the_next_starts() -> None:
    zones = {"z1": ["a1", "a2"], "z2": ["b1", "b2"]}
    s = scheduler(["b1", "a1", "b2", "a2"], {}, {}, zones={"z2": ["b1", "b2"], "z1": ["a1", "a2"]})
    assert zones  # zones go in the order of first appearance (z2 holds the first target)
    assert s.take() == [["b1"], ["b2"]]
    s.record("b1", "succeeded", counts_as_error=False)
    assert s.take() == []  # b2 still out: z1 waits
    s.record("b2", "failed", counts_as_error=False)
    assert s.take() == [["a1"], ["a2"]]


def test_without_a_gate_nothing_changes() -> None:
    plain = StageScheduler(pending=deque(["x", "y", "z"]), max_concurrency=2, max_errors=0)
    assert plain.take() == [["x"], ["y"]]
    assert plain.states == {"x": IN_FLIGHT, "y": IN_FLIGHT}


def test_only_keeps_the_order_and_drops_empty_groups() -> None:
    assert only({"A": ["1", "2"], "B": ["3"]}, ["2"]) == {"A": ["2"]}


@st.composite
def fleets(draw: st.DrawFn) -> tuple[list[str], dict[str, str], dict[str, str], dict[str, int], list[int]]:
    count = draw(st.integers(1, 40))
    ids = [f"i-{n:03d}" for n in range(count)]
    order = draw(st.permutations(ids))
    group_names = draw(st.lists(st.sampled_from("ABCDE"), min_size=count, max_size=count))
    zone_names = draw(st.lists(st.sampled_from(["z1", "z2", "z3"]), min_size=count, max_size=count))
    group_of = dict(zip(ids, group_names, strict=True))
    zone_of = dict(zip(ids, zone_names, strict=True))
    limits = {g: draw(st.integers(1, 4)) for g in "ABCDE"}
    picks = draw(st.lists(st.integers(0, 1000), min_size=count * 2, max_size=count * 2))
    return list(order), group_of, zone_of, limits, picks


@settings(max_examples=300, deadline=None)
@given(
    fleet=fleets(),
    concurrency=st.integers(1, 8),
    batch_size=st.integers(1, 3),
    zone_by_zone=st.booleans(),
    ramp=st.sampled_from(RAMPS),
)
def test_budget_never_exceeded_everything_dispatched_zone_order_kept(
    fleet: tuple[list[str], dict[str, str], dict[str, str], dict[str, int], list[int]],
    concurrency: int,
    batch_size: int,
    zone_by_zone: bool,
    ramp: str,
) -> None:
    """Random fleets, groups, limits and completion orders: at no point is a group over its limit or the stage
    over max_concurrency; every instance is dispatched exactly once (no deadlock); with zone_by_zone no instance
    of a zone starts before every instance of the zones before it finished, zones in order of first appearance;
    with or without the exponential ramp."""
    order, group_of, zone_of, limits, picks = fleet
    groups: dict[str, list[str]] = {}
    for i in order:
        groups.setdefault(group_of[i], []).append(i)
    zones: dict[str, list[str]] = {}
    if zone_by_zone:
        for i in order:
            zones.setdefault(zone_of[i], []).append(i)
    s = scheduler(
        order, groups, limits, zones=zones, concurrency=concurrency, batch_size=batch_size, ramp=ramp
    )
    out: list[str] = []
    started: list[str] = []
    finished: set[str] = set()
    rounds = 0
    while s.has_pending or out:
        rounds += 1
        assert rounds <= 4 * len(order) + 4, "no progress: deadlock"
        for batch in s.take():
            assert len(batch) <= batch_size
            for i in batch:
                if zone_by_zone:
                    earlier = list(zones).index(zone_of[i])
                    for z in list(zones)[:earlier]:
                        assert set(zones[z]) <= finished, f"{i} of {zone_of[i]} started before {z} finished"
                started.append(i)
                out.append(i)
        assert len(out) <= concurrency
        for g, limit in limits.items():
            assert sum(1 for i in out if group_of[i] == g) <= limit
        assert out, "nothing in flight and nothing dispatched: deadlock"
        done = out.pop(picks[rounds % len(picks)] % len(out))
        s.record(done, "succeeded", counts_as_error=False)
        finished.add(done)
    assert sorted(started) == sorted(order)
    assert s.finished
    if not zone_by_zone:  # the first instance always goes first
        assert started[0] == order[0]


# ---------------------------------------------------------------------------------------------- plan keys


def test_plan_keys_stage_budget_plan_default_and_opt_out(tmp_path: Path) -> None:
    plan = load_plan(
        write_plan(
            tmp_path,
            "disruption_budget: {max: '10%', per: 'tag:aws:autoscaling:groupName'}\n"
            "rollout: zone_by_zone\n"
            "stages:\n"
            + GOOD_STAGE
            + "  - name: test\n    targets: {patch_group: test}\n    disruption_budget: {max: 2, per: availability_zone}\n"
            "    rollout: concurrent_zones\n"
            "  - name: prod\n    targets: {patch_group: prod}\n    disruption_budget: none\n",
        )
    )
    dev, test, prod = plan.stages
    assert dev.disruption_budget == DisruptionBudget(Limit(10, True), "tag:aws:autoscaling:groupName")
    assert dev.rollout == ZONE_BY_ZONE
    assert test.disruption_budget == DisruptionBudget(Limit(2), "availability_zone")
    assert test.rollout == CONCURRENT_ZONES
    assert prod.disruption_budget is None and prod.rollout == ZONE_BY_ZONE
    assert str(dev.disruption_budget) == "10% per tag:aws:autoscaling:groupName"


def test_a_plan_without_the_keys_has_no_budget(tmp_path: Path) -> None:
    (stage,) = load_plan(write_plan(tmp_path, "stages:\n" + GOOD_STAGE)).stages
    assert stage.disruption_budget is None and stage.rollout == CONCURRENT_ZONES


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("    disruption_budget: {max: 0, per: 'tag:Cluster'}\n",
         ":9: stages[0].disruption_budget.max: 0 is not a budget; use a whole number ≥ 1 or a percentage"),
        ("    disruption_budget: {max: '10%', per: zone}\n",
         ":9: stages[0].disruption_budget.per: 'zone' is not a grouping key; use availability_zone or tag:<Key>"),
        ("    disruption_budget: {max: 1}\n", ":9: stages[0].disruption_budget.per: required: per"),
        ("    disruption_budget: {per: availability_zone}\n", ":9: stages[0].disruption_budget: required: max"),
        ("    disruption_budget: {max: 1, per: availability_zone, pre: 1}\n", "disruption_budget.pre"),
        ("    disruption_budget: 10%\n", "stages[0].disruption_budget: expected {max: N or 'P%'"),
        ("    rollout: zone-by-zone\n", ":9: stages[0].rollout: 'zone-by-zone' is not a rollout; use concurrent_zones or zone_by_zone"),
    ],
)  # fmt: skip
def test_plan_errors_name_the_line_and_field_and_the_fix(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(PlanError) as info:
        load_plan(write_plan(tmp_path, "stages:\n" + GOOD_STAGE + body))
    assert expected in str(info.value)


def test_plan_level_errors_are_located_too(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as info:
        load_plan(write_plan(tmp_path, "disruption_budget: none\nstages:\n" + GOOD_STAGE))
    assert ":5: disruption_budget: expected {max:" in str(info.value)


def test_a_long_queue_of_blocked_instances_is_not_rescanned() -> None:
    """10,000 instances listed cluster by cluster (100 clusters of 100, budget 1 each): the first of every
    cluster goes at once, then each completion lets the next of its cluster go — and the whole stage takes well
    under a second (the gate keeps one queue per group; rescanning the blocked instances ahead at every
    completion grows with the square of the stage)."""
    import time

    groups = {f"g{g:02d}": [f"i-{g:02d}-{n:02d}" for n in range(100)] for g in range(100)}
    order = [i for ids in groups.values() for i in ids]
    s = scheduler(order, groups, dict.fromkeys(groups, 1), concurrency=100, batch_size=5)
    began = time.perf_counter()
    out = [i for batch in s.take() for i in batch]
    assert out == [ids[0] for ids in groups.values()]
    done = 0
    while out:
        finished = out.pop(0)
        s.record(finished, "succeeded", counts_as_error=False)
        done += 1
        taken = [i for batch in s.take() for i in batch]
        assert len(taken) <= 1 and all(i[:4] == finished[:4] for i in taken)  # the next of the same cluster
        out += taken
    assert done == 10_000 and s.finished
    assert time.perf_counter() - began < 1.0
