"""What every command group shares, as public helpers: the output consoles, ``--format``, JSON output, running a
coroutine, the Temporal client, the history database of a worker, and serving until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from patchflow.config import Settings


class PatchflowConsole(Console):
    """A rich console for which a reader that stopped reading (``patchflow … | head``) is not an error."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise SystemExit(0)


out = PatchflowConsole(soft_wrap=False, width=None if sys.stdout.isatty() else 200)
err = PatchflowConsole(stderr=True, width=None if sys.stderr.isatty() else 200)


SHIPPED = Path(__file__).resolve().parents[1] / "baselines"
"""The baselines and examples shipped with patchflow: package data of an installed patchflow, and in a source
checkout a link to the repository's ``baselines/``."""


def shipped_file(*parts: str) -> Path:
    """A file shipped with patchflow, e.g. ``shipped_file("examples", "demo-plan.yaml")``."""
    return SHIPPED.joinpath(*parts)


AllowConcurrentOpt = Annotated[
    bool,
    typer.Option(
        "--allow-concurrent",
        help="Start even while another wave of the plan runs (both then patch the same fleet).",
    ),
]
"""``wave start`` and ``emergency``: one wave at a time on a plan's fleet unless the operator says otherwise."""


class Fmt(StrEnum):
    table = "table"
    json = "json"


_LABELS = {
    "str": "TEXT",
    "int": "INTEGER",
    "int range": "INTEGER",
    "float": "NUMBER",
    "float range": "NUMBER",
    "path": "PATH",
    "Path": "PATH",
    "file": "FILE",
    "directory": "DIRECTORY",
    "datetime": "TIME",
}


def readable_help(command: Any) -> None:
    """Give every parameter of ``command`` and its subcommands a readable type in ``--help``: ``TEXT``,
    ``INTEGER``, ``PATH``, ``table|json``, nothing for a flag — typer labels them with Python annotations
    (``<str>``, ``<list[str]>``, ``<bool>``). Parameters typer does not label that way are left alone."""
    for param in getattr(command, "params", []):
        _readable_type(param)
    get_help_option = getattr(command, "get_help_option", None)
    if get_help_option is not None:

        def help_option(ctx: Any, get_help_option: Any = get_help_option) -> Any:
            option = get_help_option(ctx)
            if option is not None:
                _readable_type(option)
            return option

        command.get_help_option = help_option
    for sub in getattr(command, "commands", {}).values():
        readable_help(sub)


def _readable_type(param: Any) -> None:
    original = getattr(type(param), "display_type", None)
    if original is not None:

        def display_type(ctx: Any, param: Any = param, original: Any = original) -> str | None:
            label = str(original(param, ctx))
            if not (label.startswith("<") and label.endswith(">")):
                return label
            label = label[1:-1]
            repeated = label.startswith("list[") and label.endswith("]")
            if repeated:
                label = label[5:-1]
            if label == "bool" and getattr(param, "is_flag", False):
                return None
            return _LABELS.get(label, label if "|" in label else label.upper())

        param.display_type = display_type


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def run_sync(coro: Any) -> Any:
    return asyncio.run(coro)


def run_until_interrupted(coro: Any) -> Any:
    """Run ``coro`` to the end; SIGTERM, like Ctrl-C, cancels it (its ``finally`` blocks run: workers shut
    down, servers stop) and then raises ``KeyboardInterrupt``.

    ``asyncio.run`` does this for SIGINT only. SIGTERM turned into a ``KeyboardInterrupt`` by
    :func:`terminate_like_interrupt` would instead surface at an arbitrary point inside the event loop — in the
    middle of the Temporal worker's machinery — and the process could hang instead of stopping.
    """
    terminated = False

    async def main() -> Any:
        nonlocal terminated
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None

        def stop() -> None:
            nonlocal terminated
            terminated = True
            task.cancel()

        previous = signal.getsignal(signal.SIGTERM)
        loop.add_signal_handler(signal.SIGTERM, stop)
        try:
            return await coro
        finally:
            loop.remove_signal_handler(signal.SIGTERM)
            signal.signal(signal.SIGTERM, previous)

    try:
        return asyncio.run(main())
    except asyncio.CancelledError:
        if terminated:
            raise KeyboardInterrupt from None
        raise


async def temporal_client(settings: Settings) -> Any:
    """The Temporal client of a CLI command (local mode). With ``PATCHFLOW_API_URL`` and ``PATCHFLOW_TOKEN``
    set the CLI acts through the REST API only: a command the API does not offer is refused, never run
    against Temporal behind the operator's back (see :mod:`patchflow.cli.remote`)."""
    from patchflow.cli.remote import refuse_direct_temporal
    from patchflow.control.connection import connect

    refuse_direct_temporal(settings)
    return await connect(settings)


# ---------------------------------------------------------------------------------------------- plan


def history_database(settings: Settings, *, migrate: bool = False) -> str:
    """The history database for this worker, ready to use.

    ``patchflow dev`` and ``demo`` (``migrate=True``) and the embedded default (a SQLite file under the data
    directory) are migrated on the spot; a worker on a shared database (PostgreSQL) requires it to be at this
    patchflow's schema already — migrations are an operator's step there (``patchflow db upgrade``).
    """
    from patchflow.store import db

    url = settings.database_url_resolved
    if migrate or url.startswith("sqlite"):
        db.upgrade(url)
    else:
        db.require_current(url)
    return url


async def serve_until_stopped(worker: Any, *others: Any) -> None:
    """Run the worker (and e.g. the API) until SIGINT/SIGTERM, then stop them gracefully.

    A plain cancellation would cut the worker's in-flight RPCs and print their tracebacks; instead the API is
    cancelled first and the worker shuts down as Temporal intends (in-flight activities finish or heartbeat-time
    out and are retried elsewhere).
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    worker_task = asyncio.create_task(worker.run())
    other_tasks = [asyncio.ensure_future(o) for o in others]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait({worker_task, stopper, *other_tasks}, return_when=asyncio.FIRST_COMPLETED)
    for task in other_tasks:
        task.cancel()
    for task in other_tasks:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    if not worker_task.done():
        await worker.shutdown()
    stopper.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await stopper
    for task in (worker_task, *other_tasks):
        if task in done and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]
    await worker_task


def terminate_like_interrupt() -> None:
    """SIGTERM (systemd, Kubernetes, plain ``kill``) stops cleanly, exactly like Ctrl-C."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
