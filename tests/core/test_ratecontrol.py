"""Rate control: SSM's MaxConcurrency/MaxErrors patterns, rounding, and the dispatch state machine."""

from __future__ import annotations

from collections import deque
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patchflow.core.ratecontrol import (
    CANCELLED,
    CUTOFF_BEHAVIORS,
    RAMPS,
    Limit,
    StageScheduler,
    batch_size_for,
    dispatch_deadline,
    parse_limit,
    ramp_allowance,
    resolve_concurrency,
    resolve_errors,
)

RUN_AT_SCALE = """User Guide, "Run commands at scale": "The queueing system delivers the command to a single node and
waits until the system acknowledges the initial invocation before sending the command to two more nodes. The system
exponentially sends commands to more nodes until the system meets the value of max-concurrency." """


@pytest.mark.parametrize(
    ("value", "kind", "expected"),
    [
        (10, "max_concurrency", Limit(10)),
        ("10", "max_concurrency", Limit(10)),
        ("25%", "max_concurrency", Limit(25, percent=True)),
        ("100%", "max_concurrency", Limit(100, percent=True)),
        (0, "max_errors", Limit(0)),
        ("0%", "max_errors", Limit(0, percent=True)),
        ("7%", "max_errors", Limit(7, percent=True)),
    ],
)
def test_parse_accepts_ssm_patterns(value: object, kind: str, expected: Limit) -> None:
    assert parse_limit(value, kind=kind) == expected


@pytest.mark.parametrize(
    ("value", "kind"),
    [(0, "max_concurrency"), ("0%", "max_concurrency"), ("101%", "max_errors"), ("-1", "max_errors"),
     ("05", "max_errors"), ("ten", "max_concurrency"), (True, "max_errors"), (1.5, "max_concurrency"), ("", "max_errors")],
)  # fmt: skip
def test_parse_rejects_everything_else_with_the_allowed_forms(value: object, kind: str) -> None:
    with pytest.raises(ValueError, match="e.g. 10 or '25%'"):
        parse_limit(value, kind=kind)


def test_rounding_is_documented_and_safe() -> None:
    assert resolve_concurrency(Limit(10, True), 5) == 1  # rounds up, never 0
    assert resolve_concurrency(Limit(15, True), 10) == 2
    assert resolve_concurrency(Limit(25, True), 12) == 3
    assert resolve_concurrency(Limit(50), 3) == 50
    assert resolve_errors(Limit(10, True), 50) == 5  # SSM: 10 % of 50 stops at the 6th failure
    assert resolve_errors(Limit(10, True), 15) == 1  # rounds down
    assert resolve_errors(Limit(3), 100) == 3


def test_n_plus_one_failure_stops_dispatch_and_in_flight_finishes() -> None:
    s = StageScheduler(pending=deque(f"i{n}" for n in range(10)), max_concurrency=3, max_errors=1)
    assert s.take() == [["i0"], ["i1"], ["i2"]]
    s.record("i0", "failed", counts_as_error=True)
    assert not s.budget_exceeded and s.take() == [["i3"]]
    s.record("i1", "failed", counts_as_error=True)  # failure 2 > max_errors 1
    assert s.budget_exceeded and s.take() == []
    assert not s.finished  # i2 and i3 still in flight: they finish
    s.record("i2", "failed", counts_as_error=True)
    s.record("i3", "succeeded", counts_as_error=False)
    assert s.finished and s.errors == 3
    assert s.mark_not_attempted() == [f"i{n}" for n in range(4, 10)]
    assert s.states["i9"] == "not_attempted" and s.states["i3"] == "succeeded"


def test_undeliverable_does_not_count_unless_told() -> None:
    s = StageScheduler(pending=deque(["a", "b"]), max_concurrency=2, max_errors=0)
    s.take()
    s.record("a", "undeliverable", counts_as_error=False)
    assert not s.budget_exceeded and s.states["a"] == "failed" and s.details["a"] == "undeliverable"


def test_a_cancelled_invocation_is_reported_and_never_counted() -> None:
    """botocore's model, ``Command.ErrorCount`` ("Failed or Execution Timed Out"): with max_errors 0, a cancelled
    instance neither stops dispatch nor consumes the budget; it is reported ``cancelled``."""
    s = StageScheduler(pending=deque(["a", "b", "c"]), max_concurrency=1, max_errors=0)
    assert s.take() == [["a"]]
    s.record("a", "cancelled", counts_as_error=False, detail="SSM Cancelled (command c-1)")
    assert (s.errors, s.budget_exceeded) == (0, False)
    assert s.states["a"] == CANCELLED and s.details["a"] == "SSM Cancelled (command c-1)"
    assert s.take() == [["b"]]
    s.record("b", "failed", counts_as_error=True)
    assert s.budget_exceeded and s.take() == [] and s.states["b"] == "failed"


def rounds(s: StageScheduler) -> list[int]:
    """Dispatch in rounds, every round finishing all that is in flight: how many started per round."""
    started: list[int] = []
    while not s.finished:
        started.append(sum(len(b) for b in s.take()))
        for instance_id in list(s.in_flight):
            s.record(instance_id, "succeeded", counts_as_error=False)
    return started


def test_exponential_ramp_starts_with_one_then_two_more_then_doubles_up_to_max_concurrency() -> None:
    """User Guide, "Run commands at scale" (quoted in RUN_AT_SCALE): one node, two more, then exponentially
    more until max-concurrency; patchflow's default is no ramp."""
    ramped = StageScheduler(
        pending=deque(str(n) for n in range(40)), max_concurrency=10, max_errors=0, ramp="exponential"
    )
    # 8 < 10; the next step (16) would reach max_concurrency: the sliding window of 10 takes over.
    assert rounds(ramped) == [1, 2, 4, 8, 10, 10, 5]
    plain = StageScheduler(pending=deque(str(n) for n in range(40)), max_concurrency=10, max_errors=0)
    assert rounds(plain) == [10, 10, 10, 10]  # the default: no ramp
    assert rounds(
        StageScheduler(pending=deque("abc"), max_concurrency=1, max_errors=0, ramp="exponential")
    ) == [1, 1, 1]
    assert rounds(
        StageScheduler(pending=deque("abcdef"), max_concurrency=2, max_errors=0, ramp="exponential")
    ) == [1, 2, 2, 1]


def test_each_ramp_step_waits_for_the_whole_previous_step() -> None:
    """User Guide, "Run commands at scale" (see RUN_AT_SCALE): the next nodes get the command only after the
    earlier ones answered; patchflow waits for their results, so a failing first instance stops the ramp at once."""
    s = StageScheduler(
        pending=deque(f"i{n}" for n in range(20)), max_concurrency=50, max_errors=0, ramp="exponential"
    )
    assert s.take() == [["i0"]]
    assert s.take() == []  # the first instance is still patching
    s.record("i0", "succeeded", counts_as_error=False)
    assert s.take() == [["i1"], ["i2"]]
    s.record("i1", "succeeded", counts_as_error=False)
    assert s.take() == []  # i2 of the same step still runs
    s.record("i2", "succeeded", counts_as_error=False)
    assert [i for b in s.take() for i in b] == ["i3", "i4", "i5", "i6"]
    s.record("i3", "failed", counts_as_error=True)  # failure 1 > max_errors 0: no further step
    for instance_id in ("i4", "i5", "i6"):
        s.record(instance_id, "succeeded", counts_as_error=False)
    assert s.take() == [] and s.finished and len(s.pending) == 13


def test_the_ramp_resumes_where_it_was_after_continue_as_new() -> None:
    """A stage run continues as new with nothing in flight; the ``dispatched`` count it carries is the ramp's
    position, so the new run goes on with the next step instead of starting over at one."""
    s = StageScheduler(
        pending=deque("defghijk"), max_concurrency=8, max_errors=0, ramp="exponential", dispatched=3
    )
    assert sum(len(b) for b in s.take()) == 4
    assert [ramp_allowance(d, 0, 8) for d in (0, 1, 2, 3, 5, 7, 8)] == [1, 2, 1, 4, 2, None, None]
    assert ramp_allowance(7, 1, 8) == 0  # the step of 8 = max_concurrency waits for the step before it
    assert RAMPS == ("none", "exponential")


def test_cutoff_behaviors_are_awss_two_and_patchflows_carry_over() -> None:
    """botocore's SSM service model, RegisterTaskWithMaintenanceWindow ``CutoffBehavior``: CONTINUE_TASK ("any tasks
    that are running continue. The default value.") and CANCEL_TASK (Run Command: CancelCommand at the cutoff).
    patchflow adds carry_over, its default: no start after the cutoff, the rest in the next window."""
    import botocore.session

    request = (
        botocore.session.get_session()
        .get_service_model("ssm")
        .shape_for("RegisterTaskWithMaintenanceWindowRequest")
    )
    assert request.members["CutoffBehavior"].enum == ["CONTINUE_TASK", "CANCEL_TASK"]
    assert "The default value." in request.members["CutoffBehavior"].documentation
    assert CUTOFF_BEHAVIORS == ("carry_over", "continue", "cancel")
    cutoff, freeze = datetime(2026, 12, 1, 5, tzinfo=UTC), datetime(2026, 12, 1, 9, tzinfo=UTC)
    assert dispatch_deadline("carry_over", cutoff, freeze) == cutoff
    assert dispatch_deadline("cancel", cutoff, freeze) == cutoff
    assert dispatch_deadline("continue", cutoff, freeze) == freeze  # past the window, never into a freeze
    assert dispatch_deadline("continue", cutoff, None) is None


@given(st.integers(1, 2000), st.integers(0, 200), st.sampled_from(RAMPS))
def test_scheduler_never_exceeds_concurrency(concurrency: int, targets: int, ramp: str) -> None:
    s = StageScheduler(
        pending=deque(str(n) for n in range(targets)),
        max_concurrency=concurrency,
        max_errors=targets,
        batch_size=batch_size_for(concurrency),
        ramp=ramp,
    )
    dispatched: list[str] = []
    while not s.finished:
        for batch in s.take():
            assert len(batch) <= 50
            dispatched.extend(batch)
        assert len(s.in_flight) <= concurrency
        for instance_id in list(s.in_flight)[:3]:
            s.record(instance_id, "succeeded", counts_as_error=False)
    assert dispatched == [str(n) for n in range(targets)]  # each once, in order


def test_batch_size() -> None:
    assert [batch_size_for(c) for c in (1, 10, 20, 21, 500, 5000)] == [1, 1, 1, 2, 25, 50]
