"""Rate control with SSM's semantics: MaxConcurrency as a sliding window, MaxErrors as a tolerance.

* ``max_concurrency`` — how many instances may be in flight at once (a number, or a percentage of the
  stage's targets). Percentages round **up** and never below 1: 10 % of 5 instances is 1, 15 % of 10 is 2.
* ``max_errors`` — how many failures are *tolerated*; failure N+1 stops dispatch (``0`` stops at the first
  failure, ``3`` at the fourth, 10 % of 50 at the sixth). Percentages round **down**: 10 % of 15 tolerates 1.
  Work already in flight when the budget is exceeded finishes (and may fail too, so the final failure count
  can exceed the budget, as in SSM); instances never started are reported ``not_attempted``.
* Only statuses that count as errors (``failed``, ``timed_out``) consume the budget, as SSM's
  ``Command.ErrorCount`` counts "Failed or Execution Timed Out"; ``undeliverable`` targets are reported but do
  not (SSM's Delivery Timed Out / Undeliverable), unless a plan says so, and ``cancelled`` ones (SSM Cancelled,
  Terminated; an operator's cancel) are reported as ``cancelled`` and never count.
* ``ramp: exponential`` (off by default) ramps up as SSM's Run Command does (User Guide, "Run commands at
  scale"): one instance first, two more once it finished, then four, eight, … until a step reaches
  ``max_concurrency``, after which the sliding window applies. Each step waits until the previous one finished
  (SSM waits for the invocation's acknowledgement; a patch's result is the safer signal). See
  :func:`ramp_allowance`.
* ``cutoff_behavior`` decides what a maintenance window's cutoff (end − Cutoff) does to a stage run:
  ``carry_over`` (the default) starts nothing after it, lets in-flight work finish and carries the rest to the
  next window; ``continue`` (AWS's ``CONTINUE_TASK``) goes on dispatching, with the same rate control, until
  every target is done; ``cancel`` (AWS's ``CANCEL_TASK``) cancels the in-flight work at the cutoff through the
  executor (SSM: CancelCommand) and leaves the rest ``not_attempted``. No instance starts in a change freeze,
  whatever the behaviour (see :func:`dispatch_deadline`).

:class:`StageScheduler` is a pure, deterministic state machine so the workflow can drive it and replay it.
With a :class:`patchflow.core.disruption.DisruptionGate` it also keeps each group's disruption budget and the
zone order (``rollout: zone_by_zone``); without one it dispatches exactly as before.
"""

from __future__ import annotations

import math
import re
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # disruption imports Limit from here
    from patchflow.core.disruption import DisruptionGate

_CONCURRENCY_RE = re.compile(r"^([1-9][0-9]*|[1-9][0-9]%|[1-9]%|100%)$")
_ERRORS_RE = re.compile(r"^([1-9][0-9]*|0|[1-9][0-9]%|[0-9]%|100%)$")


@dataclass(frozen=True)
class Limit:
    """A MaxConcurrency/MaxErrors value: an absolute number or a percentage of the targets."""

    value: int
    percent: bool = False

    def __str__(self) -> str:
        return f"{self.value}%" if self.percent else str(self.value)


def parse_limit(value: object, *, kind: str) -> Limit:
    """Parse ``10``, ``"10"`` or ``"10%"`` with SSM's patterns.

    Args:
        value: the plan value.
        kind: ``max_concurrency`` or ``max_errors`` (they have different patterns: errors may be 0).

    Raises:
        ValueError: with the allowed forms.
    """
    text = str(value).strip() if isinstance(value, int | str) and not isinstance(value, bool) else None
    pattern = _CONCURRENCY_RE if kind == "max_concurrency" else _ERRORS_RE
    if text is None or not pattern.match(text):
        allowed = (
            "a whole number ≥ 1 or a percentage 1%–100%"
            if kind == "max_concurrency"
            else "a whole number ≥ 0 or a percentage 0%–100%"
        )
        raise ValueError(f"{value!r} is not a valid {kind}; use {allowed} (e.g. 10 or '25%')")
    if text.endswith("%"):
        return Limit(int(text[:-1]), percent=True)
    return Limit(int(text))


def resolve_concurrency(limit: Limit, targets: int) -> int:
    """Instances allowed in flight for a stage of ``targets`` instances (≥ 1)."""
    if limit.percent:
        return max(1, math.ceil(targets * limit.value / 100))
    return max(1, limit.value)


def resolve_errors(limit: Limit, targets: int) -> int:
    """Failures tolerated for a stage of ``targets`` instances."""
    if limit.percent:
        return math.floor(targets * limit.value / 100)
    return limit.value


RAMP_NONE = "none"
RAMP_EXPONENTIAL = "exponential"
RAMPS: tuple[str, ...] = (RAMP_NONE, RAMP_EXPONENTIAL)


def ramp_allowance(dispatched: int, in_flight: int, max_concurrency: int) -> int | None:
    """How many more instances the exponential ramp lets start now; None once it reached ``max_concurrency``.

    The ramp releases steps of 1, 2, 4, … instances: step *k* holds dispatch numbers ``2**k - 1`` up to
    ``2**(k+1) - 2``. A step starts only when nothing is in flight (every earlier step finished); the first step
    of ``max_concurrency`` or more instances ends the ramp, and the plain sliding window takes over.

    Args:
        dispatched: instances dispatched so far in this run.
        in_flight: instances dispatched and not finished.
        max_concurrency: the stage's resolved concurrency (≥ 1).
    """
    start, size = 0, 1
    while size < max_concurrency and dispatched >= start + size:
        start, size = start + size, size * 2
    if dispatched == start and in_flight:
        return 0  # the next step waits until the previous one finished
    if size >= max_concurrency:
        return None
    return start + size - dispatched


CARRY_OVER = "carry_over"
CONTINUE = "continue"
CANCEL = "cancel"
CUTOFF_BEHAVIORS: tuple[str, ...] = (CARRY_OVER, CONTINUE, CANCEL)


def dispatch_deadline(
    behavior: str, cutoff: datetime | None, freeze_start: datetime | None
) -> datetime | None:
    """The instant from which a stage run starts no new instance (None: no limit).

    Args:
        behavior: the stage's ``cutoff_behavior``.
        cutoff: the window's end − Cutoff, already moved forward to a change freeze that cuts the window.
        freeze_start: where the first change freeze after the window opens begins (None: none ahead).
            ``continue`` runs past the window's cutoff and end (AWS's ``CONTINUE_TASK``), never into a freeze.
    """
    return freeze_start if behavior == CONTINUE else cutoff


def batch_size_for(concurrency: int) -> int:
    """How many instances one dispatch (one activity / one SSM command) carries.

    Small concurrency gets single-instance dispatch — a true sliding window, no stragglers holding slots;
    large concurrency gets batches (at most 50, SSM's InstanceIds limit) so a 10,000-instance stage stays far
    inside Temporal's history limits: about 20 dispatches are in flight at any concurrency.
    """
    return max(1, min(50, math.ceil(concurrency / 20)))


# Instance states reported by waves.
PENDING = "pending"
IN_FLIGHT = "in_flight"
SUCCEEDED = "succeeded"
FAILED = "failed"
NOT_ATTEMPTED = "not_attempted"
ROLLED_BACK = "rolled_back"
CANCELLED = "cancelled"
"""Started, then cancelled before it finished (an operator, a cutoff, or the executor reported it cancelled)."""


#: Executor statuses that are instance states of their own; every other one (failed, timed_out, undeliverable)
#: is ``failed``, with the status kept as the detail.
_FINAL_STATES = {"succeeded": SUCCEEDED, "failed": FAILED, "cancelled": CANCELLED}


@dataclass
class StageScheduler:
    """Which instances to dispatch next, given results so far.

    Attributes:
        pending: instance ids not yet dispatched, in dispatch order.
        max_concurrency: instances allowed in flight at once.
        max_errors: failures tolerated; the next one stops dispatch.
        errors: failures counted so far (carried across windows and continue-as-new).
        ramp: ``none``, or ``exponential`` to start with one instance and double (see :func:`ramp_allowance`).
        dispatched: instances dispatched so far in this stage run (carried across continue-as-new: the ramp's
            position; a new window's run ramps up again, as a new SSM command would).
        disruption: the stage's disruption budget and zone order (None: none; dispatch in plain order). Given
            one, the gate takes over ``pending`` (which it leaves empty): read what is left through
            :attr:`has_pending` and :meth:`remaining`, which work either way.
    """

    pending: deque[str]
    max_concurrency: int
    max_errors: int
    batch_size: int = 1
    errors: int = 0
    in_flight: dict[str, None] = field(default_factory=dict)
    """Insertion-ordered set of dispatched ids (dicts keep order; sets would break determinism)."""
    states: dict[str, str] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    ramp: str = RAMP_NONE
    dispatched: int = 0
    disruption: DisruptionGate | None = None

    def __post_init__(self) -> None:
        if self.disruption is not None:
            self.pending.clear()  # the gate's queues hold them (it was built from the same instances)

    @property
    def has_pending(self) -> bool:
        """Instances not dispatched yet."""
        return bool(self.pending) or (self.disruption is not None and self.disruption.waiting > 0)

    def remaining(self) -> list[str]:
        """The instances not dispatched yet, in dispatch order."""
        return self.disruption.pending() if self.disruption is not None else list(self.pending)

    @property
    def budget_exceeded(self) -> bool:
        return self.errors > self.max_errors

    def take(self) -> list[list[str]]:
        """Batches to dispatch now (empty once the budget is exceeded or nothing fits)."""
        batches: list[list[str]] = []
        if self.budget_exceeded:
            return batches
        free = self.max_concurrency - len(self.in_flight)
        if self.ramp == RAMP_EXPONENTIAL:
            allowed = ramp_allowance(self.dispatched, len(self.in_flight), self.max_concurrency)
            free = free if allowed is None else min(free, allowed)
        if self.disruption is not None:
            return self._take_within(self.disruption, free)
        while free > 0 and self.pending:
            size = min(self.batch_size, free, len(self.pending))
            batch = [self.pending.popleft() for _ in range(size)]
            for instance_id in batch:
                self.in_flight[instance_id] = None
                self.states[instance_id] = IN_FLIGHT
            batches.append(batch)
            free -= size
            self.dispatched += size
        return batches

    def _take_within(self, gate: DisruptionGate, free: int) -> list[list[str]]:
        """:meth:`take` under a disruption budget: the first pending instances (in dispatch order) whose group is
        below its limit and whose zone is rolling out; the others keep their place in line."""
        batches: list[list[str]] = []
        batch: list[str] = []
        while free > 0:
            instance_id = gate.next_allowed()
            if instance_id is None:
                break
            gate.start(instance_id)
            self.in_flight[instance_id] = None
            self.states[instance_id] = IN_FLIGHT
            batch.append(instance_id)
            free -= 1
            self.dispatched += 1
            if len(batch) == self.batch_size:
                batches.append(batch)
                batch = []
        if batch:
            batches.append(batch)
        return batches

    def record(self, instance_id: str, status: str, *, counts_as_error: bool, detail: str = "") -> None:
        """Record one instance's outcome (``status`` is the executor's: succeeded/failed/cancelled/…)."""
        if self.disruption is not None and instance_id in self.in_flight:
            self.disruption.finish(instance_id)
        self.in_flight.pop(instance_id, None)
        self.states[instance_id] = _FINAL_STATES.get(status, FAILED)
        if detail or status not in _FINAL_STATES:
            self.details[instance_id] = detail or status
        if counts_as_error:
            self.errors += 1

    @property
    def idle(self) -> bool:
        """Nothing in flight."""
        return not self.in_flight

    @property
    def finished(self) -> bool:
        """Nothing more will happen in this stage without an operator (all done, or stopped and drained)."""
        return self.idle and (not self.has_pending or self.budget_exceeded)

    def mark_not_attempted(self) -> list[str]:
        """After a stop, the instances never started become ``not_attempted``; returns them."""
        left = list(self.pending) + (self.disruption.clear() if self.disruption is not None else [])
        self.pending.clear()
        for instance_id in left:
            self.states[instance_id] = NOT_ATTEMPTED
        return left
