"""A worker builds each executor once, off its event loop (issue 17: a 100,000-instance fleet file takes seconds
to parse, and a blocked loop delays every heartbeat and every ``wave status`` query the worker answers)."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest
from temporalio.exceptions import ApplicationError

from activities.executors import ExecutorCache
from patchflow.core.wavemodel import ExecutorRef
from patchflow.errors import InventoryError
from patchflow.executors.base import Executor


class _Built:
    """Stands for an executor: the cache only hands out what the factory returned."""


async def test_a_slow_build_runs_off_the_loop_once_for_every_activity_waiting() -> None:
    calls: list[str] = []
    threads: list[int] = []

    def factory(ref: ExecutorRef) -> Executor:
        calls.append(ref.kind)
        threads.append(threading.get_ident())
        time.sleep(0.5)  # CPU-bound parsing would hold the loop just the same
        return _Built()  # type: ignore[return-value]

    cache = ExecutorCache(factory)
    ref = ExecutorRef(kind="simulated", fleet_path="/fleet.json")
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beat = asyncio.ensure_future(ticker())
    first, second = await asyncio.gather(cache.get(ref), cache.get(ref))
    beat.cancel()
    assert first is second and calls == ["simulated"]
    assert threads[0] != threading.get_ident()
    assert ticks >= 10, "the event loop stood still while the executor was built"
    assert await cache.get(ref) is first and calls == ["simulated"]
    other = await cache.get(ExecutorRef(kind="simulated", fleet_path="/other.json"))
    assert other is not first and len(calls) == 2


async def test_a_reference_that_cannot_be_built_fails_for_good_and_is_built_again_when_asked_again() -> None:
    attempts = 0

    def factory(ref: ExecutorRef) -> Executor:
        nonlocal attempts
        attempts += 1
        if attempts == 1:
            raise InventoryError("fleet.json: line 3: expected a list of instances")
        return _Built()  # type: ignore[return-value]

    cache = ExecutorCache(factory)
    ref = ExecutorRef(kind="simulated", fleet_path="/fleet.json")
    with pytest.raises(ApplicationError) as caught:
        await cache.get(ref)
    assert caught.value.non_retryable and "line 3" in str(caught.value)
    assert caught.value.type == "InventoryError"
    assert isinstance(await cache.get(ref), _Built) and attempts == 2  # the fleet file was mended meanwhile
