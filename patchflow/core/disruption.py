"""Disruption budgets that know clusters and zones (issue 14, part 2).

A stage's ``disruption_budget: {max: "10%" | N, per: KEY}`` keeps at most that many instances of one *group* out
at once, on top of ``max_concurrency``; ``rollout: zone_by_zone`` finishes one availability zone before the next
starts. The rules a reader cannot guess:

* **Groups.** ``per`` is ``availability_zone`` or ``tag:<Key>`` (``tag:aws:autoscaling:groupName`` groups by
  Auto Scaling group, ``tag:Cluster`` by a tag of your own). Instances without the key form one group of their
  own, :data:`NONE_GROUP` (``(none)``), budgeted like any other: an untagged instance is never unbounded.
* **Percentages** resolve per group against that group's size *in the stage* and round **down**, but never
  below 1 (:func:`resolve_group_limit`): 10 % of a 3-instance group still lets 1 out, 10 % of 25 lets 2. This is
  the opposite rounding of ``max_concurrency`` (which rounds up): a budget says "never more than".
* **Out** means dispatched and not finished: the instance's batch is in flight in the stage run, which spans
  its whole lifecycle (pre_install hooks, install, post_install, reboot, post_reboot, on_exit). A batch carries
  only instances the budget allows, so a larger batch never overshoots it.
* **Order.** Dispatch keeps the stage's order; an instance whose group is at its limit is skipped (it stays
  first in line) and the next instance of another group goes. Something is always dispatched when nothing is in
  flight (every limit is ≥ 1), so a budget can slow a stage down but never deadlock it.
* **zone_by_zone** (GCP OS Config's ``ZONE_BY_ZONE`` rollout mode): zones go in the order of their first
  appearance in the stage's dispatch order; no instance of a zone is dispatched until every instance of the
  zones before it was attempted and finished. Instances without a zone form the zone ``(none)``, in its place
  of first appearance like any other. ``concurrent_zones`` (the default) does not order zones at all.

:class:`DisruptionGate` is the pure state machine :class:`patchflow.core.ratecontrol.StageScheduler` consults;
it rebuilds from its inputs and the pending instances alone (a stage run continues as new with nothing in
flight), so nothing else has to be carried across continue-as-new or windows.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from patchflow.core.instances import InstanceInfo
from patchflow.core.ratecontrol import Limit

NONE_GROUP = "(none)"
"""The group (and zone) of instances without the ``per`` key."""
PER_AVAILABILITY_ZONE = "availability_zone"
TAG_PREFIX = "tag:"
CONCURRENT_ZONES = "concurrent_zones"
ZONE_BY_ZONE = "zone_by_zone"
ROLLOUTS: tuple[str, ...] = (CONCURRENT_ZONES, ZONE_BY_ZONE)


@dataclass(frozen=True)
class DisruptionBudget:
    """A stage's ``disruption_budget``: at most ``max`` instances of one group out at once."""

    max: Limit
    """Per group: an absolute number, or a percentage of the group's size in the stage (see
    :func:`resolve_group_limit`)."""
    per: str
    """``availability_zone`` or ``tag:<Key>``."""

    def __str__(self) -> str:
        return f"{self.max} per {self.per}"


def per_problem(per: object) -> str | None:
    """Why ``per`` is not a grouping key (None: it is one)."""
    if per == PER_AVAILABILITY_ZONE:
        return None
    if isinstance(per, str) and per.startswith(TAG_PREFIX) and per[len(TAG_PREFIX) :].strip():
        return None
    return (
        f"{per!r} is not a grouping key; use availability_zone or tag:<Key> "
        "(e.g. tag:aws:autoscaling:groupName for Auto Scaling groups, tag:Cluster)"
    )


def group_key(instance: InstanceInfo, per: str) -> str:
    """The group ``instance`` belongs to under ``per`` (:data:`NONE_GROUP` without the key)."""
    if per == PER_AVAILABILITY_ZONE:
        return instance.availability_zone or NONE_GROUP
    return instance.tags.get(per[len(TAG_PREFIX) :]) or NONE_GROUP


def group_members(instances: Iterable[InstanceInfo], per: str) -> dict[str, list[str]]:
    """group → instance ids, groups in order of first appearance and ids in the order given."""
    groups: dict[str, list[str]] = {}
    for instance in instances:
        groups.setdefault(group_key(instance, per), []).append(instance.instance_id)
    return groups


def resolve_group_limit(limit: Limit, size: int) -> int:
    """Instances of a group of ``size`` (in the stage) allowed out at once: percentages round down, never
    below 1."""
    if limit.percent:
        return max(1, math.floor(size * limit.value / 100))
    return max(1, limit.value)


def resolve_limits(limit: Limit, groups: dict[str, list[str]]) -> dict[str, int]:
    """Each group's limit, resolved against its size."""
    return {group: resolve_group_limit(limit, len(ids)) for group, ids in groups.items()}


def only(groups: dict[str, list[str]], keep: Iterable[str]) -> dict[str, list[str]]:
    """``groups`` restricted to the ids in ``keep`` (empty groups dropped, order kept): what a stage run carries
    across continue-as-new."""
    wanted = set(keep)
    narrowed = {g: [i for i in ids if i in wanted] for g, ids in groups.items()}
    return {g: ids for g, ids in narrowed.items() if ids}


@dataclass
class DisruptionGate:
    """Which pending instances the disruption budget and the zone order let out now — and, while it is in use,
    the stage run's queue of pending instances.

    Pending instances wait in one queue per (zone, group), by their position in the dispatch order; a heap of
    the queues' heads that may go yields the first allowed instance in dispatch order in O(log n), however long
    the queue of blocked ones ahead of it (a 10,000-instance stage of one large cluster must not rescan it
    at every completion). Build it with :meth:`build`; the scheduler takes :meth:`next_allowed`, then reports
    :meth:`start` and :meth:`finish`. Deterministic: dicts, lists and a heap of comparable tuples only.
    """

    group_of: dict[str, str]
    """instance → budget group (empty without a budget)."""
    limits: dict[str, int]
    """group → instances allowed out at once; a group without a limit is unbounded (no budget)."""
    zone_of: dict[str, str] = field(default_factory=dict)
    """instance → zone (empty unless ``zone_by_zone``)."""
    zone_order: list[str] = field(default_factory=list)
    out: dict[str, int] = field(default_factory=dict)
    """group → instances out now."""
    zone_left: dict[str, int] = field(default_factory=dict)
    """zone → instances not finished yet (pending or out)."""
    order: list[str] = field(default_factory=list)
    """The pending instances the gate was built with, in dispatch order (a queue entry is a position here)."""
    queues: dict[tuple[str, str], deque[int]] = field(default_factory=dict)
    """(zone, group) → positions of its pending instances, ascending (zone ``""`` without a zone order)."""
    heads: list[tuple[int, str, str]] = field(default_factory=list)
    """Heap of (position, zone, group) of queue heads that may be able to go; stale entries are dropped when
    they surface."""
    zone: str = ""
    """The zone rolling out (``""``: no zone order, or every zone finished)."""
    waiting: int = 0
    """Pending instances (in the queues)."""

    @classmethod
    def build(
        cls,
        *,
        groups: dict[str, list[str]],
        limits: dict[str, int],
        zones: dict[str, list[str]],
        pending: Iterable[str],
    ) -> DisruptionGate:
        """The gate of a stage run: ``groups``/``zones`` map group/zone → ids (zones in rollout order)."""
        gate = cls(
            group_of={i: g for g, ids in groups.items() for i in ids},
            limits=dict(limits),
            zone_of={i: z for z, ids in zones.items() for i in ids},
            zone_order=list(zones),
        )
        for position, instance_id in enumerate(pending):
            zone = ""
            if zones:
                zone = gate.zone_of.setdefault(instance_id, NONE_GROUP)
                if zone not in gate.zone_order:
                    gate.zone_order.append(zone)
                gate.zone_left[zone] = gate.zone_left.get(zone, 0) + 1
            gate.order.append(instance_id)
            gate.queues.setdefault((zone, gate.group(instance_id)), deque()).append(position)
        gate.waiting = len(gate.order)
        gate._advance_zone()
        return gate

    def group(self, instance_id: str) -> str:
        return self.group_of.get(instance_id, NONE_GROUP)

    def current_zone(self) -> str | None:
        """The zone being rolled out (None: no zone order, or every zone finished)."""
        return self.zone if self.zone_order and self.zone else None

    def full(self, group: str) -> bool:
        limit = self.limits.get(group)
        return limit is not None and self.out.get(group, 0) >= limit

    def next_allowed(self) -> str | None:
        """The first pending instance (in dispatch order) that may go out now, taken off its queue; None when
        every pending instance must wait."""
        while self.heads:
            position, zone, group = self.heads[0]
            queue = self.queues.get((zone, group))
            heapq.heappop(self.heads)
            if not queue or queue[0] != position or zone != self.zone or self.full(group):
                continue  # stale: taken already, another zone, or the group filled up since
            queue.popleft()
            self.waiting -= 1
            self._push(zone, group)
            return self.order[position]
        return None

    def start(self, instance_id: str) -> None:
        group = self.group(instance_id)
        self.out[group] = self.out.get(group, 0) + 1

    def finish(self, instance_id: str) -> None:
        """``instance_id`` came back (any outcome): its group has room again, and its zone may be finished."""
        group = self.group(instance_id)
        if self.out.get(group, 0) > 0:
            self.out[group] -= 1
        if self.zone_order:
            zone = self.zone_of.get(instance_id, NONE_GROUP)
            if self.zone_left.get(zone, 0) > 0:
                self.zone_left[zone] -= 1
            if zone == self.zone and not self.zone_left[zone]:
                self._advance_zone()
                return
        self._push("" if not self.zone_order else self.zone, group)

    def pending(self) -> list[str]:
        """The instances still waiting, in dispatch order."""
        return [self.order[p] for p in heapq.merge(*self.queues.values())]

    def clear(self) -> list[str]:
        """Drop every waiting instance (a stop: they become ``not_attempted``); returns them in order."""
        left = self.pending()
        self.queues.clear()
        self.heads.clear()
        self.waiting = 0
        return left

    def _push(self, zone: str, group: str) -> None:
        queue = self.queues.get((zone, group))
        if queue:
            heapq.heappush(self.heads, (queue[0], zone, group))

    def _advance_zone(self) -> None:
        """Move to the first unfinished zone (or stay at ``""``) and offer its queues."""
        if self.zone_order:
            self.zone = next((z for z in self.zone_order if self.zone_left.get(z, 0)), "")
        for zone, group in self.queues:
            if zone == self.zone:
                self._push(zone, group)

    def summary(self, budget: str) -> str:
        """One short line for ``wave status``: the budget, the groups at their limit, the zone rolling out."""
        parts = [f"disruption budget {budget}"] if budget else []
        full = [f"{g} {self.out[g]}/{self.limits[g]}" for g in self.out if self.out[g] and self.full(g)]
        if full:
            shown = ", ".join(full[:3]) + (f" and {len(full) - 3} more" if len(full) > 3 else "")
            parts.append(f"at the limit: {shown}")
        zone = self.current_zone()
        if zone is not None:
            parts.append(f"zone {zone} ({self.zone_order.index(zone) + 1} of {len(self.zone_order)})")
        return "; ".join(parts)


def preview(
    budget: DisruptionBudget | None, rollout: str, targets: list[InstanceInfo]
) -> dict[str, object] | None:
    """What a stage's budget and rollout would do to ``targets`` (dispatch order), for a plan's dry run: each
    group's size and limit, and the zone order; None when the stage has neither."""
    zone_by_zone = rollout == ZONE_BY_ZONE
    if budget is None and not zone_by_zone:
        return None
    groups = group_members(targets, budget.per) if budget else {}
    return {
        "budget": str(budget) if budget else "",
        "rollout": rollout,
        "groups": {
            g: {"size": len(ids), "limit": resolve_group_limit(budget.max, len(ids))}
            for g, ids in groups.items()
            if budget
        },
        "zones": list(group_members(targets, PER_AVAILABILITY_ZONE)) if zone_by_zone else [],
    }
