"""The executors of one worker process: one per :class:`ExecutorRef`, built off the event loop.

Building an executor can take seconds (the simulated executor parses its fleet file: ≈ 4 s for 100,000
instances). Built on the event loop, that would stall every other activity of the worker, its heartbeats, and
the queries its workflows answer (issue 17: ``wave status`` < 1 s during a 100,000-instance wave). So it is
built in a thread, once: activities asking for the same executor meanwhile wait for that one build.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import astuple

from temporalio.exceptions import ApplicationError

from patchflow.core.wavemodel import ExecutorRef
from patchflow.errors import PatchflowError
from patchflow.executors.base import Executor


class ExecutorCache:
    """Executors by every field of their reference (two waves with different buckets or fleets get their own)."""

    def __init__(self, factory: Callable[[ExecutorRef], Executor]) -> None:
        self._factory = factory
        self._built: dict[tuple[object, ...], Executor] = {}
        self._building: dict[tuple[object, ...], asyncio.Future[Executor]] = {}

    async def get(self, ref: ExecutorRef) -> Executor:
        """The executor for ``ref``, built on first use; a reference it cannot build fails the activity for
        good (a bad fleet file, say: retrying would not mend it)."""
        key = astuple(ref)
        executor = self._built.get(key)
        if executor is not None:
            return executor
        building = self._building.get(key)
        if building is None:
            building = self._building[key] = asyncio.ensure_future(asyncio.to_thread(self._factory, ref))
            building.add_done_callback(lambda _: self._building.pop(key, None))
        try:
            # Shielded: a cancelled activity must not cancel a build other activities wait for.
            executor = await asyncio.shield(building)
        except PatchflowError as exc:
            raise ApplicationError(str(exc), type=type(exc).__name__, non_retryable=True) from exc
        self._built[key] = executor
        return executor
