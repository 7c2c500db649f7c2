"""Canaries, metric analysis and alert blocking in running waves: the dev server, the simulated fleet, and a real
Prometheus (Debian's package) scraping an exporter whose per-host values the test sets.

Analysis semantics follow Argo Rollouts' AnalysisTemplate (count, interval, successCondition, failureLimit:
https://argo-rollouts.readthedocs.io/en/stable/features/analysis/); alert blocking follows kured's
``--alert-filter-regexp``/``--alert-filter-match-only`` (https://kured.dev/docs/configuration/): no dispatch while
a matching alert fires.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from temporalio.testing import WorkflowEnvironment

from activities.patching import build_executor
from patchflow.cli.waves import analysis_lines
from patchflow.control.waves import act, status_json, wave_status
from patchflow.core.analysis import AlertBlockSpec, AnalysisQuery, AnalysisSpec
from patchflow.core.wavemodel import StageInput
from patchflow.metrics import DEFAULT_REGISTRY
from patchflow.testing.prometheus import (
    ControlledExporter,
    Prometheus,
    PrometheusNotInstalled,
    running_prometheus,
)
from tests.workflows.conftest import instance_id, running_worker
from tests.workflows.helpers import instance_states, settle, stage, start, status_when, wave_input
from tests.workflows.test_histories import keep  # replays the fresh histories (and records them on request)

ALARM_RULES = {
    "groups": [
        {"name": "canary", "rules": [{"alert": "CanaryAlarm", "expr": "max(canary_alarm) > 0", "for": "0s"}]}
    ]
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlledExporter, Prometheus]]:
    try:
        with (
            ControlledExporter() as exporter,
            running_prometheus(tmp_path_factory.mktemp("prom"), [exporter.target], rules=ALARM_RULES) as prom,
        ):
            exporter.set("canary_alarm", 0, host="none")
            yield exporter, prom
    except PrometheusNotInstalled as exc:
        pytest.skip(str(exc))


@dataclass
class Tracking:
    """The real simulated executor, recording when each install started (wall clock)."""

    inner: Any
    starts: dict[str, float] = field(default_factory=dict)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def start_install(self, instance: str, patches: Any, *, operation_id: str) -> Any:
        self.starts.setdefault(instance, time.time())
        return await self.inner.start_install(instance, patches, operation_id=operation_id)


def tracking() -> tuple[dict[str, Tracking], Callable[[Any], Any]]:
    """An executor factory whose one :class:`Tracking` executor ends up in ``box["t"]``."""
    box: dict[str, Tracking] = {}

    def factory(ref: Any) -> Any:
        return box.setdefault("t", Tracking(build_executor(ref)))

    return box, factory


def analysis(prom: Prometheus, metric: str, **fields: Any) -> AnalysisSpec:
    """Error ratio of the analysed hosts (the worst one) below 5 %, measured 3 times a second apart."""
    query = AnalysisQuery(
        name="error-ratio",
        query=f'max({metric}{{host=~"{{{{instances}}}}"}})',
        success="< 0.05",
        interval_seconds=1,
        count=3,
        failure_limit=0,
    )
    return AnalysisSpec(prometheus=prom.url, queries=[query], **fields)


def canary_stage(prom: Prometheus, metric: str, **fields: Any) -> StageInput:
    spec = fields.pop("analysis", None) or analysis(prom, metric)
    return stage(
        "prod",
        max_concurrency="2",
        gate="analysis",
        analysis=spec,
        approvers=list(spec.approvers),
        canary_count=2,
        canary_soak_seconds=1,
        **fields,
    )


PROD = [instance_id("prod", n) for n in range(1, 6)]
CANARIES, REST = PROD[:2], PROD[2:]


def metric_name() -> str:
    return f"canary_errors_{uuid.uuid4().hex[:8]}"


async def test_a_healthy_canary_promotes_the_rest(
    dev_env: WorkflowEnvironment,
    make_fleet: Callable[..., Path],
    tmp_path: Path,
    lab: tuple[ControlledExporter, Prometheus],
) -> None:
    exporter, prom = lab
    metric = metric_name()
    for host in PROD:
        exporter.set(metric, 0.001, host=host)
    prom.wait_for(f'{metric}{{host="{PROD[-1]}"}}')
    inp = wave_input(make_fleet({"prod": 5}), tmp_path, [canary_stage(prom, metric)])
    box, factory = tracking()
    counted = (
        DEFAULT_REGISTRY.get_sample_value("patchflow_analysis_runs_total", {"result": "successful"}) or 0
    )
    async with running_worker(dev_env.client, factory) as tq:
        handle = await start(dev_env.client, tq, inp)
        result = await handle.result()
    await keep(dev_env.client, "canary-promoted", inp.wave_id)
    # the worker counts the analysis (its default registry)
    assert (
        DEFAULT_REGISTRY.get_sample_value("patchflow_analysis_runs_total", {"result": "successful"})
        == counted + 1
    )
    status = result.status
    prod = status.stages[0]
    assert status.state == "succeeded", status
    assert set(prod.instances.values()) == {"succeeded"} and len(prod.instances) == 5
    assert prod.analysis is not None and prod.analysis.result == "successful" and prod.analysis.instances == 2
    assert [m.verdict for m in prod.measurements] == ["successful"] * 3
    assert all(m.values == [0.001] for m in prod.measurements)
    # The canaries went first; the rest only after the last measurement.
    starts = box["t"].starts
    last_measurement = max(m.at.timestamp() for m in prod.measurements)
    assert max(starts[i] for i in CANARIES) < min(m.at.timestamp() for m in prod.measurements)
    assert min(starts[i] for i in REST) > last_measurement
    assert any(a.action == "analysis" and "analysis successful" in a.comment for a in status.audit)


async def test_an_unhealthy_canary_halts_and_rolls_back(
    dev_env: WorkflowEnvironment,
    make_fleet: Callable[..., Path],
    tmp_path: Path,
    lab: tuple[ControlledExporter, Prometheus],
) -> None:
    exporter, prom = lab
    metric = metric_name()
    exporter.set(metric, 0.2, host=CANARIES[1])  # one canary's error ratio is bad
    exporter.set(metric, 0.0, host=CANARIES[0])
    prom.wait_for(f'{metric}{{host="{CANARIES[1]}"}}')
    inp = wave_input(make_fleet({"prod": 5}), tmp_path, [canary_stage(prom, metric, on_failure="rollback")])
    box, factory = tracking()
    async with running_worker(dev_env.client, factory) as tq:
        handle = await start(dev_env.client, tq, inp)
        status = await settle(dev_env.client, inp.wave_id, {"halted"})
        prod = status.stages[0]
        assert "analysis failed" in status.reason and "0.2 does not satisfy '< 0.05'" in status.reason
        assert [m.verdict for m in prod.measurements] == [
            "failed"
        ]  # failure_limit 0: the first failure decides
        assert {instance_states(status, "prod")[i] for i in CANARIES} == {"rolled_back"}
        assert {instance_states(status, "prod")[i] for i in REST} == {"pending"}
        text = status_json(status)["stages"][0]
        assert text["analysis"]["result"] == "failed" and text["measurements"][0]["values"] == [0.2]
        shown = analysis_lines(text)  # what `wave status` prints under the stage table
        assert (
            shown[0]
            == "  prod: analysis failed over 2 instance(s): error-ratio 0 ok / 1 failed / 0 inconclusive"
        )
        assert shown[1].endswith("error-ratio failed 0.2: 0.2 does not satisfy '< 0.05'")
        await act(dev_env.client, inp.wave_id, "cancel", who="alice")
        result = await handle.result()
    await keep(dev_env.client, "canary-failed-rollback-cancel", inp.wave_id)
    assert set(box["t"].starts) == set(CANARIES), "the rest of the stage was attempted"
    assert {instance_states(result.status, "prod")[i] for i in REST} == {"not_attempted"}


async def test_a_missing_series_is_inconclusive_and_an_approver_decides(
    dev_env: WorkflowEnvironment,
    make_fleet: Callable[..., Path],
    tmp_path: Path,
    lab: tuple[ControlledExporter, Prometheus],
) -> None:
    _, prom = lab
    spec = analysis(prom, metric_name(), inconclusive="approval", approvers=["alice"])  # never exported
    inp = wave_input(make_fleet({"prod": 5}), tmp_path, [canary_stage(prom, "unused", analysis=spec)])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        status = await settle(dev_env.client, inp.wave_id, {"waiting_approval"})
        prod = status.stages[0]
        assert prod.state == "waiting_approval"
        assert prod.analysis is not None and prod.analysis.result == "inconclusive"
        # count 3 tolerates (3 - 1) // 2 = 1 inconclusive measurement: the second one decides
        no_series = ("inconclusive", "the query returned no series")
        assert [(m.verdict, m.detail) for m in prod.measurements] == [no_series, no_series]
        assert "analysis inconclusive" in prod.note
        assert {instance_states(status, "prod")[i] for i in REST} == {"pending"}
        await act(dev_env.client, inp.wave_id, "approve", who="alice", stage="prod")
        result = await handle.result()
    await keep(dev_env.client, "canary-inconclusive-approved", inp.wave_id)
    assert result.status.state == "succeeded"
    assert set(instance_states(result.status, "prod").values()) == {"succeeded"}


async def test_a_firing_alert_blocks_dispatch_until_it_resolves(
    dev_env: WorkflowEnvironment,
    make_fleet: Callable[..., Path],
    tmp_path: Path,
    lab: tuple[ControlledExporter, Prometheus],
) -> None:
    exporter, prom = lab
    exporter.set("canary_alarm", 1, host="db-1")
    prom.wait_for_alert("CanaryAlarm")
    block = AlertBlockSpec(prometheus=prom.url, match="^CanaryAlarm$", check_seconds=1)
    inp = wave_input(make_fleet({"prod": 3}), tmp_path, [stage("prod", block_on_alerts=block)])
    try:
        async with running_worker(dev_env.client) as tq:
            handle = await start(dev_env.client, tq, inp)
            blocked = await status_when(dev_env.client, inp.wave_id, lambda s: bool(s.stages[0].blocked_by))
            assert "CanaryAlarm" in blocked.stages[0].blocked_by, blocked
            await asyncio.sleep(2.5)  # two more checks: still blocked, nothing dispatched
            still = await wave_status(dev_env.client, inp.wave_id)
            assert set(instance_states(still, "prod").values()) == {"pending"}
            assert "firing alert(s) matching '^CanaryAlarm$': CanaryAlarm" in still.stages[0].blocked_by
            assert analysis_lines(status_json(still)["stages"][0])[0].startswith(
                "  prod: dispatch blocked: firing"
            )
            exporter.set("canary_alarm", 0, host="db-1")
            result = await handle.result()
        await keep(dev_env.client, "alerts-block-dispatch", inp.wave_id)
    finally:
        exporter.set("canary_alarm", 0, host="db-1")
    assert result.status.state == "succeeded"
    assert set(instance_states(result.status, "prod").values()) == {"succeeded"}


async def test_an_analysis_gate_without_canaries_compares_earlier_stages_with_the_unpatched(
    dev_env: WorkflowEnvironment,
    make_fleet: Callable[..., Path],
    tmp_path: Path,
    lab: tuple[ControlledExporter, Prometheus],
) -> None:
    """``compare: unpatched``: the baseline is the same query over the stage's own (not yet patched) targets."""
    exporter, prom = lab
    metric = metric_name()
    dev = [instance_id("dev", n) for n in (1, 2)]
    for host in dev:
        exporter.set(metric, 0.012, host=host)
    for host in PROD[:3]:
        exporter.set(metric, 0.01, host=host)
    prom.wait_for(f'{metric}{{host="{PROD[2]}"}}')
    spec = analysis(prom, metric, compare="unpatched")
    spec.queries[0].success = "result <= baseline * 1.5"
    spec.queries[0].count = 2
    inp = wave_input(
        make_fleet({"dev": 2, "prod": 3}),
        tmp_path,
        [stage("dev"), stage("prod", gate="analysis", analysis=spec)],
    )
    async with running_worker(dev_env.client) as tq:
        result = await (await start(dev_env.client, tq, inp)).result()
    await keep(dev_env.client, "analysis-gate-compare", inp.wave_id)
    prod = result.status.stages[1]
    assert result.status.state == "succeeded"
    assert prod.analysis is not None and prod.analysis.instances == 2 and prod.analysis.result == "successful"
    assert [(m.values, m.baseline, m.verdict) for m in prod.measurements] == [
        ([0.012], 0.01, "successful")
    ] * 2


async def test_a_resume_after_a_failed_canary_dispatches_no_held_instance(
    dev_env: WorkflowEnvironment,
    make_fleet: Callable[..., Path],
    tmp_path: Path,
    lab: tuple[ControlledExporter, Prometheus],
) -> None:
    """A canary fails its install (error budget 0): the wave halts; a resume must not dispatch the instances that
    wait for the canaries' analysis — they go only after it passed."""
    exporter, prom = lab
    metric = metric_name()
    for host in PROD:
        exporter.set(metric, 0.0, host=host)
    prom.wait_for(f'{metric}{{host="{PROD[-1]}"}}')
    fleet = make_fleet({"prod": 5}, behaviours={CANARIES[0]: {"fail": True}})
    inp = wave_input(fleet, tmp_path, [canary_stage(prom, metric)])
    box, factory = tracking()
    async with running_worker(dev_env.client, factory) as tq:
        handle = await start(dev_env.client, tq, inp)
        halted = await settle(dev_env.client, inp.wave_id, {"halted"})
        assert "exceeded max_errors 0" in halted.reason
        assert {instance_states(halted, "prod")[i] for i in REST} == {"pending"}
        await act(dev_env.client, inp.wave_id, "resume", who="alice")
        result = await handle.result()
    await keep(dev_env.client, "canary-failed-install-resumed", inp.wave_id)
    prod = result.status.stages[0]
    assert result.status.state == "succeeded"
    assert prod.analysis is not None and prod.analysis.instances == 1  # the canary that was patched
    assert min(box["t"].starts[i] for i in REST) > max(m.at.timestamp() for m in prod.measurements)
    assert [instance_states(result.status, "prod")[i] for i in PROD] == ["failed"] + ["succeeded"] * 4


@pytest.mark.parametrize("inconclusive", ["halt", "continue"])
async def test_an_inconclusive_analysis_halts_or_continues_as_the_plan_says(
    dev_env: WorkflowEnvironment,
    make_fleet: Callable[..., Path],
    tmp_path: Path,
    lab: tuple[ControlledExporter, Prometheus],
    inconclusive: str,
) -> None:
    _, prom = lab
    spec = analysis(prom, metric_name(), inconclusive=inconclusive)  # never exported: no series
    spec.queries[0].count = 1
    inp = wave_input(make_fleet({"prod": 5}), tmp_path, [canary_stage(prom, "unused", analysis=spec)])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        if inconclusive == "halt":
            halted = await settle(dev_env.client, inp.wave_id, {"halted"})
            assert "analysis inconclusive" in halted.reason
            assert {instance_states(halted, "prod")[i] for i in REST} == {"pending"}
            await act(dev_env.client, inp.wave_id, "resume", who="alice")  # an operator overrides it
        result = await handle.result()
    await keep(dev_env.client, f"canary-inconclusive-{inconclusive}", inp.wave_id)
    assert result.status.state == "succeeded"
    assert set(instance_states(result.status, "prod").values()) == {"succeeded"}
    expected = (
        "promoted (inconclusive: continue)" if inconclusive == "continue" else "overridden by an operator"
    )
    assert expected in result.status.stages[0].note or any(
        expected in a.comment for a in result.status.audit
    ), result.status.stages[0].note


def test_the_plan_reaches_the_wave_input(tmp_path: Path) -> None:
    """Plan keys → StageInput: the canary, the analysis and its approvers, and the plan's block_on_alerts as the
    default of every stage that has none of its own."""
    from datetime import UTC, datetime

    from patchflow.config import Settings
    from patchflow.control.waves import wave_input as plan_wave_input
    from patchflow.core.baselines import load_baseline
    from patchflow.core.catalog import load_catalog
    from patchflow.core.evaluation import evaluate
    from patchflow.core.plans import load_plan
    from tests.conftest import BASELINES_DIR, EXAMPLES_DIR

    path = tmp_path / "plan.yaml"
    path.write_text(
        f"name: canaries\nbaseline: {BASELINES_DIR / 'ubuntu-staged.yaml'}\n"
        f"catalog: {EXAMPLES_DIR / 'ubuntu-catalog.json'}\nexecutor: {{kind: simulated, fleet: {EXAMPLES_DIR / 'fleet.yaml'}}}\n"
        "block_on_alerts: {prometheus: 'http://127.0.0.1:9090', match: NodeDown}\n"
        "stages:\n"
        "  - name: dev\n    targets: {patch_group: dev}\n"
        "  - name: prod\n    targets: {patch_group: prod}\n"
        "    canary: {count: 3, soak_seconds: 120}\n"
        "    block_on_alerts: {prometheus: 'http://127.0.0.1:9091', match: Page, check_seconds: 5}\n"
        "    gate: {analysis: {prometheus: 'http://127.0.0.1:9090', inconclusive: approval, approvers: [bob],\n"
        "      queries: [{name: q, query: up, success: '> 0'}]}}\n"
    )
    plan = load_plan(path)
    pinned = evaluate(load_baseline(plan.baseline), load_catalog(plan.catalog), datetime.now(UTC)).patch_set
    dev, prod = plan_wave_input(plan, Settings(data_dir=tmp_path / "data"), pinned, who="alice").stages
    assert dev.block_on_alerts is not None and dev.block_on_alerts.match == "NodeDown"
    assert (dev.canary_count, dev.analysis, dev.gate) == (0, None, "auto")
    assert prod.block_on_alerts is not None and (
        prod.block_on_alerts.match,
        prod.block_on_alerts.check_seconds,
    ) == (
        "Page",
        5,
    )
    assert (prod.canary_count, prod.canary_soak_seconds, prod.gate, prod.approvers) == (
        3,
        120,
        "analysis",
        ["bob"],
    )
    assert prod.analysis is not None and prod.analysis.queries[0].success == "> 0"


async def test_a_halt_during_the_analysis_waits_and_a_resume_measures_on(
    dev_env: WorkflowEnvironment,
    make_fleet: Callable[..., Path],
    tmp_path: Path,
    lab: tuple[ControlledExporter, Prometheus],
) -> None:
    exporter, prom = lab
    metric = metric_name()
    for host in PROD:
        exporter.set(metric, 0.0, host=host)
    prom.wait_for(f'{metric}{{host="{PROD[-1]}"}}')
    spec = analysis(prom, metric)
    spec.queries[0].count = 4
    inp = wave_input(make_fleet({"prod": 5}), tmp_path, [canary_stage(prom, metric, analysis=spec)])
    async with running_worker(dev_env.client) as tq:
        handle = await start(dev_env.client, tq, inp)
        await status_when(dev_env.client, inp.wave_id, lambda s: bool(s.stages[0].measurements), tries=None)
        await act(dev_env.client, inp.wave_id, "halt", who="alice")
        halted = await settle(dev_env.client, inp.wave_id, {"halted"})
        assert halted.reason == "halted by an operator during the analysis"
        taken = len(halted.stages[0].measurements)
        await asyncio.sleep(2)  # nothing is measured while halted
        assert len((await wave_status(dev_env.client, inp.wave_id)).stages[0].measurements) == taken < 4
        await act(dev_env.client, inp.wave_id, "resume", who="alice")
        result = await handle.result()
    await keep(dev_env.client, "canary-analysis-halt-resume", inp.wave_id)
    prod = result.status.stages[0]
    assert result.status.state == "succeeded" and prod.analysis is not None
    assert [m.verdict for m in prod.measurements] == ["successful"] * 4
    assert set(instance_states(result.status, "prod").values()) == {"succeeded"}
