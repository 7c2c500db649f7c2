"""AnalysisActivities against a real Prometheus (Debian's package) scraping an exporter the test controls.

Measurements follow Argo Rollouts' Prometheus provider and AnalysisTemplate
(https://argo-rollouts.readthedocs.io/en/stable/features/analysis/ and .../analysis/prometheus/): an instant
query through ``/api/v1/query``, judged by the success condition. Alert blocking follows kured
(https://kured.dev/docs/configuration/: ``--prometheus-url``, ``--alert-filter-regexp`` with
``--alert-filter-match-only``, ``--alert-firing-only``), reading ``/api/v1/alerts``
(https://prometheus.io/docs/prometheus/latest/querying/api/#alerts).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from activities.analysis import AnalysisActivities
from patchflow.core.analysis import (
    ERROR,
    FAILED,
    INCONCLUSIVE,
    SUCCESSFUL,
    AlertBlockSpec,
    AlertCheckInput,
    AnalysisQuery,
    MeasureInput,
)
from patchflow.metrics import Metrics
from patchflow.testing.prometheus import (
    ControlledExporter,
    Prometheus,
    PrometheusNotInstalled,
    free_port,
    running_prometheus,
)

#: Fires while any host's ``canary_alarm`` is 1 (``for: 0s``: at the first evaluation).
RULES = {
    "groups": [
        {
            "name": "canary",
            "rules": [
                {"alert": "CanaryAlarm", "expr": "max(canary_alarm) > 0", "for": "0s"},
                {"alert": "Unrelated", "expr": "vector(1)", "for": "0s"},
            ],
        }
    ]
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ControlledExporter, Prometheus]]:
    try:
        with (
            ControlledExporter() as exporter,
            running_prometheus(tmp_path_factory.mktemp("prom"), [exporter.target], rules=RULES) as prom,
        ):
            yield exporter, prom
    except PrometheusNotInstalled as exc:
        pytest.skip(str(exc))


def acts() -> tuple[AnalysisActivities, CollectorRegistry]:
    registry = CollectorRegistry()
    return AnalysisActivities(Metrics(registry)), registry


def measure_input(prom: Prometheus, success: str, ids: list[str], **fields: object) -> MeasureInput:
    return MeasureInput(
        prometheus=prom.url,
        query=AnalysisQuery(
            name="errors", query='max(canary_errors{host=~"{{instances}}"})', success=success
        ),
        instance_ids=ids,
        wave_id="w",
        stage="prod",
        **fields,  # type: ignore[arg-type]
    )


async def test_measurements_judge_what_prometheus_scraped(lab: tuple[ControlledExporter, Prometheus]) -> None:
    exporter, prom = lab
    exporter.set("canary_errors", 0.001, host="i-good.1")
    exporter.set("canary_errors", 0.2, host="i-bad.2")
    exporter.set("canary_errors", 0.9, host="i-good11")  # "i-good.1" as a regex would match it: it must not
    prom.wait_for('canary_errors{host="i-good11"}')
    activities, registry = acts()

    good = await activities.measure(measure_input(prom, "< 0.01", ["i-good.1"]))
    assert (good.verdict, good.values) == (SUCCESSFUL, [0.001])
    bad = await activities.measure(measure_input(prom, "< 0.01", ["i-good.1", "i-bad.2"]))
    assert bad.verdict == FAILED and bad.values == [0.2] and "0.2 does not satisfy" in bad.detail
    missing = await activities.measure(measure_input(prom, "< 0.01", ["i-nowhere"]))
    assert (missing.verdict, missing.values) == (INCONCLUSIVE, [])

    labels = {"wave_id": "w", "stage": "prod", "query": "errors"}
    assert registry.get_sample_value("patchflow_analysis_measurement", labels) is not None
    for verdict in (SUCCESSFUL, FAILED, INCONCLUSIVE):
        assert registry.get_sample_value("patchflow_analysis_measurements_total", {"verdict": verdict}) == 1


async def test_the_baseline_is_the_same_query_over_the_unpatched(
    lab: tuple[ControlledExporter, Prometheus],
) -> None:
    exporter, prom = lab
    exporter.set("canary_errors", 0.03, host="canary-1")
    exporter.set("canary_errors", 0.02, host="old-1")
    exporter.set("canary_errors", 0.01, host="old-2")
    prom.wait_for('canary_errors{host="old-2"}')
    activities, _ = acts()
    inp = measure_input(
        prom, "result <= baseline * 1.5", ["canary-1"], baseline_ids=["old-1", "old-2"], compare=True
    )
    measured = await activities.measure(inp)  # max over the baseline hosts: 0.02; 0.03 <= 0.03
    assert (measured.verdict, measured.baseline) == (SUCCESSFUL, 0.02)
    exporter.set("canary_errors", 0.05, host="canary-1")
    prom.wait_for('canary_errors{host="canary-1"} == 0.05')
    assert (await activities.measure(inp)).verdict == FAILED


async def test_an_unreachable_prometheus_is_an_error_and_blocks(tmp_path: Path) -> None:
    activities, registry = acts()
    nowhere = f"http://127.0.0.1:{free_port()}"
    measured = await activities.measure(
        MeasureInput(
            prometheus=nowhere, query=AnalysisQuery(name="q", query="up", success="< 1"), instance_ids=["a"]
        )
    )
    assert measured.verdict == ERROR and "unreachable" in measured.detail
    checked = await activities.check_alerts(AlertCheckInput(AlertBlockSpec(prometheus=nowhere, match=".")))
    assert checked.reason.startswith(f"Prometheus at {nowhere} cannot be asked for alerts")
    assert "blocked, to be safe" in checked.reason
    assert registry.get_sample_value("patchflow_alert_blocks_total", {"reason": "unreachable"}) == 1


async def test_a_bad_query_is_an_error(lab: tuple[ControlledExporter, Prometheus]) -> None:
    _, prom = lab
    activities, _ = acts()
    inp = MeasureInput(
        prometheus=prom.url, query=AnalysisQuery(name="q", query="sum(", success="< 1"), instance_ids=[]
    )
    measured = await activities.measure(inp)
    assert measured.verdict == ERROR and "HTTP 400" in measured.detail


async def test_only_a_firing_matching_alert_blocks(lab: tuple[ControlledExporter, Prometheus]) -> None:
    exporter, prom = lab
    activities, registry = acts()
    spec = AlertBlockSpec(prometheus=prom.url, match="^CanaryAlarm$")
    exporter.set("canary_alarm", 0, host="a")
    prom.wait_for_alert("Unrelated")  # rules are evaluated: an unrelated alert fires and does not block
    prom.wait_for_alert("CanaryAlarm", firing=False)
    assert (await activities.check_alerts(AlertCheckInput(spec))).reason == ""

    exporter.set("canary_alarm", 1, host="a")
    prom.wait_for_alert("CanaryAlarm")
    blocked = await activities.check_alerts(AlertCheckInput(spec))
    assert blocked.blocking == ["CanaryAlarm"] and "CanaryAlarm" in blocked.reason
    assert registry.get_sample_value("patchflow_alert_blocks_total", {"reason": "alerts"}) == 1

    exporter.set("canary_alarm", 0, host="a")
    prom.wait_for_alert("CanaryAlarm", firing=False)
    assert (await activities.check_alerts(AlertCheckInput(spec))).blocking == []


def test_only_the_newest_waves_keep_their_measurement_gauges() -> None:
    from datetime import UTC, datetime

    from patchflow.core.analysis import Measurement
    from patchflow.metrics import MEASURED_WAVES_KEPT

    registry = CollectorRegistry()
    metrics = Metrics(registry)
    for n in range(MEASURED_WAVES_KEPT + 3):
        metrics.record_measurement(
            f"w-{n}", "prod", Measurement(query="q", at=datetime.now(UTC), verdict=SUCCESSFUL, values=[n])
        )
    value = registry.get_sample_value
    assert value("patchflow_analysis_measurement", {"wave_id": "w-0", "stage": "prod", "query": "q"}) is None
    assert value("patchflow_analysis_measurement", {"wave_id": "w-2", "stage": "prod", "query": "q"}) is None
    newest = f"w-{MEASURED_WAVES_KEPT + 2}"
    assert value("patchflow_analysis_measurement", {"wave_id": newest, "stage": "prod", "query": "q"}) == (
        MEASURED_WAVES_KEPT + 2
    )
    assert value("patchflow_analysis_measurement", {"wave_id": "w-3", "stage": "prod", "query": "q"}) == 3
