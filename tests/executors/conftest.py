"""Fixtures shared by the executor tests: the faithful SSM endpoint (patchflow.testing) with the bucket the
executor writes command output and override lists to, and an ``SsmExecutor`` on it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from patchflow.executors.ssm import SsmExecutor
from patchflow.testing.ssm_endpoint import SsmEndpoint, Timings

BUCKET = "patchflow-test"
#: Commands that find their instance, start and finish within a fraction of a second.
FAST = Timings(not_found_seconds=0.1, pending_seconds=0.05, run_seconds=0.1)


@pytest.fixture
def endpoint() -> Iterator[SsmEndpoint]:
    """The SSM endpoint with quick command timings and :data:`BUCKET`."""
    with SsmEndpoint(timings=Timings(**vars(FAST))) as ep:
        ep.client("s3").create_bucket(Bucket=BUCKET)
        yield ep


def ssm_executor(ep: SsmEndpoint, **options: Any) -> SsmExecutor:
    """A fresh executor object (a new worker, as far as state goes) with quick polling; ``options`` override."""
    settings: dict[str, Any] = {
        "bucket": BUCKET,
        "prefix": "pf",
        "max_requests_per_second": None,
        "poll_initial_seconds": 0.05,
        "poll_max_seconds": 0.2,
    }
    settings.update(options)
    return SsmExecutor(ep.client("ssm"), ep.client("s3"), ec2_client=ep.client("ec2"), **settings)
