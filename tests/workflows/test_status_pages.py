"""``wave status`` in pages (issue 17: no Query payload grows with the fleet).

A running wave answers :meth:`WaveWorkflow.status_summary` (no instances) and :meth:`WaveWorkflow.instances_page`
(at most ``MAX_PAGE_INSTANCES`` a page); a running stage run answers ``progress_summary`` and ``progress_page``.
:func:`wave_status` assembles them into the same status the whole-status query gives.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from temporalio.client import WorkflowQueryRejectedError
from temporalio.common import QueryRejectCondition
from temporalio.testing import WorkflowEnvironment

from patchflow.control.waves import _live_page, _paged_progress, _running_wave_status, wave_status
from patchflow.core.wavemodel import (
    MAX_PAGE_INSTANCES,
    InstancePageInput,
    StageRunInput,
    StageRunResult,
    StageStatus,
    instance_page,
)
from tests.workflows.conftest import running_worker
from tests.workflows.helpers import PATCHES
from tests.workflows.test_wave import settle, stage, start, wave_input
from workflows.stage import StageRunWorkflow
from workflows.wave import WaveWorkflow


def test_a_page_is_capped_and_carries_only_its_instances_details() -> None:
    instances = {f"i-{n}": "succeeded" if n % 2 else "failed" for n in range(5000)}
    details = {i: "exit 1" for i, s in instances.items() if s == "failed"}
    page = instance_page(instances, details, InstancePageInput(stage="s", offset=10, limit=10**6))
    assert len(page.instances) == MAX_PAGE_INSTANCES and page.total == 5000
    assert list(page.instances)[0] == "i-10"
    assert set(page.details) == {i for i in page.instances if instances[i] == "failed"}
    last = instance_page(instances, details, InstancePageInput(stage="s", offset=4990, limit=50))
    assert list(last.instances) == [f"i-{n}" for n in range(4990, 5000)]
    assert instance_page(instances, details, InstancePageInput(stage="s", offset=9000)).instances == {}


async def test_paged_status_equals_the_whole_status(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet(
        {"dev": 23, "prod": 4},
        behaviours={"i-dev0000000000007": {"fail": True}},  # a failed instance carries a detail
    )
    inp = wave_input(
        fleet,
        tmp_path,
        [stage("dev", max_errors="1"), stage("prod", gate="approval", approvers=["alice"])],
    )
    async with running_worker(dev_env.client) as tq:
        await start(dev_env.client, tq, inp)
        await settle(dev_env.client, inp.wave_id, {"waiting_approval"})
        whole = await dev_env.client.get_workflow_handle(inp.wave_id).query(WaveWorkflow.status)
        paged = await wave_status(dev_env.client, inp.wave_id, page_size=5)  # 23 instances: 5 pages
    assert len(whole.stages[0].instances) == 23
    assert whole.stages[0].details  # the failed instance's detail travels in its page
    assert paged == whole
    assert list(paged.stages[0].instances) == list(whole.stages[0].instances)  # the same order


async def test_paged_progress_of_a_running_stage_run_has_every_instance(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    fleet = make_fleet({"dev": 9}, duration=1.0)
    inp = wave_input(fleet, tmp_path, [stage("dev", max_concurrency="2")])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        run_id = ""
        for _ in range(100):
            status = await dev_env.client.get_workflow_handle(inp.wave_id).query(WaveWorkflow.status)
            run_id = status.stages[0].active_run_id or ""
            if run_id:
                break
            await asyncio.sleep(0.1)
        assert run_id, "the stage run did not start"
        run = dev_env.client.get_workflow_handle(run_id)
        whole = await run.query(StageRunWorkflow.progress)
        paged = await _paged_progress(run, 2)
        assert set(paged.states) == set(whole.states) and len(paged.states) == 9
        assert paged.max_concurrency == whole.max_concurrency == 2
        live = await wave_status(dev_env.client, inp.wave_id, page_size=4)
        assert len(live.stages[0].instances) == 9
        assert (await handle.result()).status.state == "succeeded"


async def test_one_page_per_stage_with_counts_equals_the_slice_of_the_whole_status(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """``wave_status(limit=…, offset=…)`` (``wave status --limit``, ``GET /waves/{id}?limit=``): per stage the
    slice of the whole status — the same instances in the same order with the same live states — plus the
    stage's instance count and state counts; for the running stage the live states of its stage run (the wave
    itself still counts them pending). Checked while Prod has two long installs in flight and the rest
    pending, so the whole and the paged answer see the same states."""
    prod = {f"i-prod{n:013d}": {"duration_seconds": 120.0} for n in range(1, 10)}
    fleet = make_fleet({"dev": 11, "prod": 9}, behaviours={"i-dev00000000000004": {"fail": True}, **prod})
    inp = wave_input(fleet, tmp_path, [stage("dev", max_errors="1"), stage("prod", max_concurrency="2")])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        try:
            for _ in range(200):
                whole = await wave_status(dev_env.client, inp.wave_id)
                if Counter(whole.stages[1].instances.values())["pending"] == 7:
                    break
                await asyncio.sleep(0.1)
            assert whole.stages[1].active_run_id, "Prod's stage run is not running"
            paged = await wave_status(dev_env.client, inp.wave_id, limit=4, offset=1)
            again = await wave_status(dev_env.client, inp.wave_id)
        finally:
            await handle.terminate("test over")
    assert again == whole, "states changed while the test compared them"
    assert Counter(whole.stages[1].instances.values()) == {"pending": 7, "in_flight": 2}
    for full, page in zip(whole.stages, paged.stages, strict=True):
        ids = list(full.instances)[1:5]
        assert list(page.instances) == ids
        assert page.instances == {i: full.instances[i] for i in ids}
        assert page.details == {i: full.details[i] for i in ids if i in full.details}
        assert page.instances_total == len(full.instances)
        assert page.state_counts == dict(Counter(full.instances.values()))
        assert full.instances_total is None and full.state_counts == {}  # the whole status is not a page
    assert paged.stages[0].state_counts == {"succeeded": 10, "failed": 1}
    assert paged.stages[1].instances["i-prod0000000000002"] == "in_flight"  # live, from the stage run
    assert "i-dev00000000000004" in paged.stages[0].details  # the failed one's detail is on its page


async def test_a_finished_wave_is_paged_from_its_result(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    inp = wave_input(make_fleet({"dev": 6}), tmp_path, [stage("dev")])
    async with running_worker(dev_env.client) as tq:
        await (await start(dev_env.client, tq, inp)).result()
    # No worker now: a finished wave answers from its recorded result.
    # A wave that ends between wave status's describe and its queries: the server refuses them at once (no
    # worker would have to replay the wave's whole history); wave status then answers from the result.
    handle = dev_env.client.get_workflow_handle(inp.wave_id)
    for limit in (4, None):
        with pytest.raises(WorkflowQueryRejectedError):
            await asyncio.wait_for(
                _running_wave_status(dev_env.client, handle, 2, limit, 0, QueryRejectCondition.NOT_OPEN),
                10,
            )
    paged = await wave_status(dev_env.client, inp.wave_id, limit=4, offset=4)
    assert list(paged.stages[0].instances) == ["i-dev00000000000005", "i-dev00000000000006"]
    assert paged.stages[0].instances_total == 6 and paged.stages[0].state_counts == {"succeeded": 6}


def test_the_status_table_counts_every_instance_of_a_paged_status() -> None:
    """``wave status --limit`` prints the same per-stage counts as the whole status: from ``state_counts``, not
    from the page's instances."""
    from rich.console import Console

    from patchflow.cli.waves import stage_table
    from patchflow.control.waves import _paged_result, status_json
    from patchflow.core.wavemodel import StageStatus, WaveStatus

    instances = {f"i-{n}": "succeeded" if n % 4 else "failed" for n in range(40)}
    status = WaveStatus("w", "p", "running", "ps", [StageStatus(name="prod", instances=dict(instances))])
    whole = status_json(status)
    paged = status_json(_paged_result(status, offset=0, limit=1))
    assert len(paged["stages"][0]["instances"]) == 1 and paged["stages"][0]["state_counts"] == {
        "failed": 10,
        "succeeded": 30,
    }

    def table(doc: dict[str, object]) -> str:
        console = Console(width=300, record=True)
        console.print(stage_table(doc))
        return console.export_text()

    assert table(paged) == table(whole) and " 30 " in table(paged)


async def test_an_ended_stage_run_answers_from_its_result_without_a_worker(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path
) -> None:
    """A stage run ends moments before its wave records it; ``wave status`` then reads the run's result from the
    server instead of querying it — a query of a closed workflow has a worker replay its whole history (seconds
    for a large stage; issue 17: status < 1 s). Checked with no worker left: a query could not be answered."""
    fleet = make_fleet({"dev": 6}, behaviours={"i-dev00000000000003": {"fail": True}})
    inp = wave_input(fleet, tmp_path, [stage("dev")])
    ids = [f"i-dev{n:014d}" for n in range(1, 7)]
    run_input = StageRunInput(
        wave_id=inp.wave_id,
        stage="dev",
        instance_ids=ids,
        patches=list(PATCHES),
        executor=inp.executor,
        max_concurrency=1,
        max_errors=0,  # the failure of the third instance stops dispatch: three are never started
        batch_size=1,
        heartbeat_timeout_seconds=5,
    )
    run_id = f"{inp.wave_id}/dev/run-0-0"
    async with running_worker(dev_env.client) as tq:
        result: StageRunResult = await dev_env.client.execute_workflow(
            StageRunWorkflow.run, run_input, id=run_id, task_queue=tq
        )
    assert result.remaining == ids[3:] and result.states[ids[2]] == "failed"
    run = dev_env.client.get_workflow_handle(run_id, result_type=StageRunResult)

    progress = await asyncio.wait_for(_paged_progress(run, 2), 10)
    assert progress.states == {**result.states, **dict.fromkeys(ids[3:], "pending")}
    assert progress.errors == 1

    page = StageStatus(name="dev", state="running", instances=dict.fromkeys(ids[1:4], "pending"))
    page.state_counts = {"pending": 6}  # the wave counts a running stage's instances as pending
    await asyncio.wait_for(_live_page(run, page), 10)
    assert page.instances == {ids[1]: "succeeded", ids[2]: "failed", ids[3]: "pending"}
    assert page.details[ids[2]] == result.details[ids[2]] != ""
    assert page.state_counts == {"succeeded": 2, "failed": 1, "pending": 3}
    assert page.errors == 1
