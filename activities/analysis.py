"""Canary analysis and alert blocking: the activities that ask Prometheus' HTTP API.

``measure`` runs one query (and its baseline) through ``/api/v1/query`` and judges it
(:func:`patchflow.core.analysis.measurement_verdict`); ``check_alerts`` reads ``/api/v1/alerts`` and names the
firing alerts that block dispatch. Neither raises for what Prometheus answers or fails to answer: an unreachable
Prometheus is a measurement in error (a failure) or a blocked dispatch (fail safe), said so in the result —
retrying for minutes inside the activity would only hide it from the operator. Both record metrics
(``patchflow_analysis_*``, ``patchflow_alert_blocks_total``).
"""

from __future__ import annotations

import asyncio
import json
import math
import urllib.error
import urllib.parse
import urllib.request
from datetime import UTC, datetime
from typing import Any

from temporalio import activity

from patchflow.core.analysis import (
    ERROR,
    MAX_KEPT_VALUES,
    AlertCheckInput,
    AlertCheckResult,
    AnalysisRunInput,
    MeasureInput,
    Measurement,
    baseline_query,
    blocking_alerts,
    expand_query,
    measurement_verdict,
)
from patchflow.metrics import DEFAULT_METRICS, Metrics

#: One Prometheus request may take this long (the activity's start-to-close timeout is longer).
REQUEST_TIMEOUT_SECONDS = 10.0


class PrometheusError(Exception):
    """Prometheus did not answer, or answered with an error."""


class AnalysisActivities:
    """Prometheus queries for analysis and alert blocking.

    Args:
        metrics: where measurements, analysis results and alert blocks are counted.
        timeout: seconds one HTTP request to Prometheus may take.
    """

    def __init__(
        self, metrics: Metrics = DEFAULT_METRICS, *, timeout: float = REQUEST_TIMEOUT_SECONDS
    ) -> None:
        self._metrics = metrics
        self._timeout = timeout

    @activity.defn
    async def measure(self, inp: MeasureInput) -> Measurement:
        """One measurement of one query over the analysed instances (and the baseline ones when comparing)."""
        query = inp.query
        now = datetime.now(UTC)
        try:
            values = await self._values(
                inp.prometheus, expand_query(query.query, inp.instance_ids, inp.baseline_ids)
            )
            baseline: float | None = None
            if inp.compare:
                found = await self._values(inp.prometheus, baseline_query(query.query, inp.baseline_ids))
                finite = [v for v in found if not math.isnan(v)]
                baseline = sum(finite) / len(finite) if finite else None
        except PrometheusError as exc:
            measurement = Measurement(query=query.name, at=now, verdict=ERROR, detail=str(exc))
        else:
            verdict, detail = measurement_verdict(query.success, values, baseline, compare=inp.compare)
            measurement = Measurement(
                query=query.name,
                at=now,
                verdict=verdict,
                values=values[:MAX_KEPT_VALUES],
                baseline=baseline,
                detail=detail,
            )
        self._metrics.record_measurement(inp.wave_id, inp.stage, measurement)
        return measurement

    @activity.defn
    async def record_analysis(self, inp: AnalysisRunInput) -> None:
        """An analysis ended with ``inp.result`` (counted in ``patchflow_analysis_runs_total``)."""
        self._metrics.record_analysis(inp.result)

    @activity.defn
    async def check_alerts(self, inp: AlertCheckInput) -> AlertCheckResult:
        """The firing alerts that block dispatch; an unreachable Prometheus blocks too."""
        spec = inp.spec
        try:
            data = await self._get(spec.prometheus, "/api/v1/alerts", {})
            alerts = data.get("alerts", [])
            if not isinstance(alerts, list):
                raise PrometheusError("the answer has no alert list")
        except PrometheusError as exc:
            self._metrics.record_alert_block("unreachable")
            return AlertCheckResult(
                blocking=[],
                reason=f"Prometheus at {spec.prometheus} cannot be asked for alerts ({exc}): blocked, to be safe",
            )
        names = blocking_alerts(alerts, spec.match)
        if not names:
            return AlertCheckResult(blocking=[])
        self._metrics.record_alert_block("alerts")
        return AlertCheckResult(
            blocking=names, reason=f"firing alert(s) matching {spec.match!r}: {', '.join(names)}"
        )

    async def _values(self, prometheus: str, promql: str) -> list[float]:
        """The instant query's values: one per series (a scalar: one); NaN stays NaN."""
        data = await self._get(prometheus, "/api/v1/query", {"query": promql})
        kind, result = data.get("resultType"), data.get("result")
        if kind == "scalar" and isinstance(result, list):
            return [float(result[1])]
        if kind == "vector" and isinstance(result, list):
            return [float(item["value"][1]) for item in result]
        raise PrometheusError(f"expected an instant vector or scalar, got {kind!r}")

    async def _get(self, prometheus: str, path: str, params: dict[str, str]) -> dict[str, Any]:
        url = prometheus.rstrip("/") + path + ("?" + urllib.parse.urlencode(params) if params else "")
        return await asyncio.to_thread(_get_json, url, self._timeout)


def _get_json(url: str, timeout: float) -> dict[str, Any]:
    """GET a Prometheus API URL; its ``data`` on success (the API's documented envelope)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - the plan's Prometheus
            body = json.loads(response.read())
    except urllib.error.HTTPError as exc:
        try:
            error = json.loads(exc.read()).get("error", "")
        except (ValueError, OSError):
            error = ""
        raise PrometheusError(f"HTTP {exc.code}" + (f": {error}" if error else "")) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise PrometheusError(f"unreachable: {getattr(exc, 'reason', exc)}") from None
    if (
        not isinstance(body, dict)
        or body.get("status") != "success"
        or not isinstance(body.get("data"), dict)
    ):
        raise PrometheusError(f"unexpected answer: {str(body)[:200]}")
    data: dict[str, Any] = body["data"]
    return data
