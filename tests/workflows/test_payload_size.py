"""No payload grows with the fleet (issue 17, item 1; STYLE.md rule 13).

Temporal's server logs a warning (TMPRL1103) for any payload set past ``limit.blobSize.warn`` = 512 KiB and
refuses one past ``limit.blobSize.error`` = 2 MiB (``shared/reference/temporal.md`` §1.1; server
``common/dynamicconfig/constants.go``). A stage of 20,000 instances on the simulated fleet, zero-time patches,
runs through a client and a worker whose payload codec records every payload set either side sends or receives
(:mod:`patchflow.testing.payloads`), wrapped around the claim-check codec every patchflow process uses
(:mod:`patchflow.control.payloads`); the largest set that goes over the wire must stay under the warning.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from temporalio.testing import WorkflowEnvironment

from patchflow.control.payloads import claim_check_codec
from patchflow.core.wavemodel import ExecutorRef, StageInput, WaveInput
from patchflow.core.windows import WindowSpec
from patchflow.executors.base import Package
from patchflow.service.worker import build_worker
from patchflow.testing.payloads import TARGET_BYTES, WARN_BYTES, PayloadSizeRecorder, recording_client
from workflows.wave import WaveWorkflow

INSTANCES = 20_000


def write_fleet(path: Path, count: int) -> None:
    """A fleet file of ``count`` identical instances of group ``big`` (JSON: parsed fast, no YAML aliases)."""
    installed = [{"name": "openssl", "arch": "amd64", "version": "3.0.2-0ubuntu1.10"}]
    instances = [
        {
            "id": f"i-{n:017d}",
            "tags": {"Patch Group": "big"},
            "platform": {"family": "deb", "product": "Ubuntu22.04"},
            "installed": installed,
            "behaviour": {"duration_seconds": 0.0},
        }
        for n in range(count)
    ]
    path.write_text(json.dumps({"name": "big", "instances": instances}))


@pytest.mark.timeout(600)
async def test_no_payload_reaches_the_warning_at_20000_instances(
    dev_env: WorkflowEnvironment, tmp_path: Path
) -> None:
    blobs = tmp_path / "payloads"
    recorder = PayloadSizeRecorder(claim_check_codec(blobs))
    client = recording_client(dev_env.client, recorder)
    fleet = tmp_path / "fleet.json"
    write_fleet(fleet, INSTANCES)
    inp = WaveInput(
        wave_id=f"wave-payloads-{uuid.uuid4().hex[:8]}",
        plan_name="payloads",
        patch_set_id="ps-000000000000000000000000",
        patches=[Package("openssl", "amd64", "3.0.2-0ubuntu1.16")],
        executor=ExecutorRef(
            kind="simulated", fleet_path=str(fleet), state_path=str(tmp_path / "state.sqlite"), time_scale=1.0
        ),
        stages=[
            StageInput(
                name="big", window=WindowSpec("now"), max_concurrency="500", max_errors="0", patch_group="big"
            )
        ],
    )
    task_queue = f"tq-{uuid.uuid4()}"
    async with build_worker(client, task_queue):
        result = await client.execute_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=task_queue)
    assert result.status.state == "succeeded", result.status.reason
    # The result came back whole through its reference: every instance, each with its state.
    instances = result.status.stages[0].instances
    assert len(instances) == INSTANCES and set(instances.values()) == {"succeeded"}
    assert any(blobs.rglob("*")), "nothing travelled by reference"
    assert recorder.sets > 100  # the recorder saw the traffic (activities, child runs, results)
    largest = recorder.largest
    assert largest.size < WARN_BYTES, (
        f"largest payload set {largest.size:,} bytes ({largest.direction}; fields {largest.fields}; "
        f"starts {largest.sample[:80]!r})"
    )
    assert largest.size < TARGET_BYTES  # issue 17's target for 100,000 instances holds at 20,000 already
