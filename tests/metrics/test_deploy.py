"""deploy/prometheus and deploy/grafana, checked offline, plus one real Prometheus scraping patchflow.

promtool and prometheus come from Debian's ``prometheus`` package. Without them these tests skip with a
message naming the package, except in CI (``CI`` set), where a missing binary is a failure: CI installs it.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client import CollectorRegistry

from patchflow.core.analysis import Measurement
from patchflow.core.compliance import InstanceCompliance
from patchflow.core.documents import dump_yaml
from patchflow.core.wavemodel import StageStatus, WaveStatus
from patchflow.metrics import Exporter, Metrics, start_http_exporter
from patchflow.testing.prometheus import stop_process

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "deploy" / "prometheus"
GRAFANA_DIR = REPO / "deploy" / "grafana"
DASHBOARD = GRAFANA_DIR / "patchflow-dashboard.json"
SCHEMA = GRAFANA_DIR / "dashboard.schema.json"

EXTERNAL_METRICS = frozenset({"up", "temporal_worker_task_slots_available"})
"""Metrics the dashboard and rules use that patchflow does not define: Prometheus's own ``up``, and the
Temporal SDK's (name checked against temporalio 1.35's Prometheus output with the SDK's default naming)."""

GRAFANA_DURATION_MACROS = ("$__rate_interval", "$__interval", "$__range")


def binary(name: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    message = (
        f"'{name}' not found: it comes with Debian's 'prometheus' package (apt-get install -y prometheus)"
    )
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must install it before running the suite (.ci/run)")
    pytest.skip(message)


def run(*args: str, cwd: Path | None = None, stdin: bytes | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, cwd=cwd, input=stdin.decode() if stdin else None, capture_output=True, text=True, timeout=60
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def dashboard() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return data


def data_panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for panel in board["panels"]:
        if panel["type"] == "row":
            out.extend(panel.get("panels", []))
        else:
            out.append(panel)
    return out


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title / refId, PromQL with Grafana's variables replaced by what Grafana would send)."""
    return [
        (f"{panel['title']} / {target['refId']}", to_promql(target["expr"]))
        for panel in data_panels(dashboard())
        for target in panel["targets"]
    ]


def to_promql(expr: str) -> str:
    """Grafana substitutes variables before the query reaches Prometheus; do the same to check it."""
    for macro in GRAFANA_DURATION_MACROS:
        expr = expr.replace(macro, "5m")
    return re.sub(r"\$\{?[A-Za-z_][A-Za-z0-9_]*\}?", ".*", expr)


def rule_exprs() -> list[tuple[str, str]]:
    return [
        (rule.get("alert") or rule["record"], rule["expr"])
        for group in load_yaml(PROMETHEUS_DIR / "rules.yml")["groups"]
        for rule in group["rules"]
    ]


def recorded_names() -> set[str]:
    return {
        rule["record"]
        for group in load_yaml(PROMETHEUS_DIR / "rules.yml")["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


NOW = datetime.now(UTC)


def populated_metrics(registry: CollectorRegistry) -> Metrics:
    """A Metrics with a sample in every family: what the dashboard and the rules may refer to."""
    metrics = Metrics(registry)
    metrics.update_from_status(
        WaveStatus(
            wave_id="w-live",
            plan_name="monthly",
            state="running",
            patch_set_id="ps-1",
            stages=[
                StageStatus(
                    name="Dev",
                    state="running",
                    instances={"i-1": "succeeded", "i-2": "in_flight", "i-3": "pending", "i-4": "failed"},
                    errors=1,
                    max_errors=2,
                    window_cutoff=NOW + timedelta(hours=2),
                ),
                StageStatus(name="Prod"),
            ],
        )
    )
    metrics.update_from_status(
        WaveStatus(
            wave_id="w-gate",
            plan_name="monthly",
            state="waiting_approval",
            patch_set_id="ps-1",
            stages=[StageStatus(name="Prod", state="waiting_approval")],
        )
    )
    metrics.update_compliance(
        [
            InstanceCompliance("i-1", "web", "COMPLIANT", {}, None, []),
            InstanceCompliance("i-2", "web", "NON_COMPLIANT", {}, "CRITICAL", []),
        ]
    )
    metrics.observe_patch("simulated", "succeeded", 12.0)
    metrics.record_api_error("ssm", "SendCommand")
    metrics.record_throttle("ssm", "SendCommand")
    metrics.record_measurement(
        "w-live", "Dev", Measurement(query="error-rate", at=NOW, verdict="successful", values=[0.001])
    )
    metrics.record_analysis("successful")
    metrics.record_alert_block("alerts")
    return metrics


def exported_names() -> set[str]:
    registry = CollectorRegistry()
    populated_metrics(registry)
    return {sample.name for family in registry.collect() for sample in family.samples}


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: patchflow's, Temporal's, and ``up``."""
    names = set(re.findall(r"\b(?:patchflow|temporal)[_:][A-Za-z0-9_:]*", expr))
    if re.search(r"\bup\s*\{", expr):
        names.add("up")
    return names


# ---------------------------------------------------------------------------------------------- promtool


def test_promtool_check_config() -> None:
    result = run(binary("promtool"), "check", "config", str(PROMETHEUS_DIR / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules() -> None:
    result = run(binary("promtool"), "check", "rules", str(PROMETHEUS_DIR / "rules.yml"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 6 rules found" in result.stdout


def test_promtool_test_rules_every_alert_fires_and_stays_quiet() -> None:
    tests = load_yaml(PROMETHEUS_DIR / "rules_test.yml")["tests"]
    alerts = {name for name, _ in rule_exprs()} - recorded_names()
    firing = {t["alertname"] for case in tests for t in case.get("alert_rule_test", []) if t["exp_alerts"]}
    quiet = {t["alertname"] for case in tests for t in case.get("alert_rule_test", []) if not t["exp_alerts"]}
    assert firing == alerts and quiet == alerts, "every alert needs a firing and a not-firing case"

    result = run(binary("promtool"), "test", "rules", "rules_test.yml", cwd=PROMETHEUS_DIR)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_tells_the_operator_what_to_do() -> None:
    for group in load_yaml(PROMETHEUS_DIR / "rules.yml")["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            assert rule["labels"]["severity"] in ("warning", "critical"), rule["alert"]
            assert rule.get("for"), f"{rule['alert']}: a 'for' duration keeps one bad scrape from paging"
            assert rule["annotations"]["summary"] and len(rule["annotations"]["description"]) > 100


def test_worker_down_alerts_watch_a_scraped_job() -> None:
    jobs = {job["job_name"] for job in load_yaml(PROMETHEUS_DIR / "prometheus.yml")["scrape_configs"]}
    assert {"patchflow-api", "patchflow-worker", "patchflow-temporal-sdk"} <= jobs
    used = {
        job
        for _, expr in [*rule_exprs(), *dashboard_exprs()]
        for job in re.findall(r'job\s*=\s*"([^"]+)"', expr)
    }
    assert used and used <= jobs


def test_exposition_passes_promtool_check_metrics() -> None:
    from patchflow.metrics import render

    registry = CollectorRegistry()
    populated_metrics(registry)
    body, _ = render(registry)
    result = run(binary("promtool"), "check", "metrics", stdin=body)
    assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------------------------------------- grafana


def test_dashboard_matches_the_schema() -> None:
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator.check_schema(schema)
    jsonschema.Draft7Validator(schema).validate(dashboard())


@pytest.mark.parametrize(
    ("breakage", "path"),
    [
        (lambda d: d.update(titel=d.pop("title")), "title"),
        (lambda d: d.update(refresh=12), "refresh"),
        (lambda d: d.pop("templating"), "templating"),
        (lambda d: data_panels(d)[0]["targets"][0].pop("expr"), "expr"),
        (lambda d: data_panels(d)[0]["gridPos"].update(w=25), "gridPos"),
        (
            lambda d: data_panels(d)[0].update(datasource={"type": "prometheus", "uid": "prod-prom"}),
            "datasource",
        ),
    ],
    ids=["typo", "refresh-number", "no-templating", "no-expr", "too-wide", "hard-coded-datasource"],
)
def test_the_schema_catches_broken_dashboards(breakage: Any, path: str) -> None:
    board = dashboard()
    breakage(board)
    errors = list(jsonschema.Draft7Validator(json.loads(SCHEMA.read_text())).iter_errors(board))
    assert errors, f"a dashboard with a broken {path} passed the schema"


def test_dashboard_layout_ids_and_variables() -> None:
    board = dashboard()
    panels = board["panels"]
    ids = [p["id"] for p in panels] + [p["id"] for p in data_panels(board) if p not in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells: dict[tuple[int, int], str] = {}
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']} overlaps {cells[(x, y)]}"
                cells[(x, y)] = panel["title"]
    variables = {v["name"] for v in board["templating"]["list"]}
    for panel in data_panels(board):
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            used = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", target["expr"])) - {
                m.lstrip("$") for m in GRAFANA_DURATION_MACROS
            }
            assert used <= variables, f"{panel['title']}: undefined variable(s) {used - variables}"


def test_dashboard_covers_the_issue() -> None:
    used = {name for _, expr in dashboard_exprs() for name in metric_names(expr)}
    for name in (
        "patchflow_waves",
        "patchflow_stage_instances",
        "patchflow_stage_errors",
        "patchflow_stage_max_errors",
        "patchflow_patch_duration_seconds_bucket",
        "patchflow:compliance_compliant_ratio:by_patch_group",
        "patchflow_compliance_noncompliant_instances",
        "patchflow_approvals_pending",
        "patchflow_approval_waiting_since_timestamp_seconds",
        "patchflow_stage_window_remaining_seconds",
        "patchflow_executor_api_errors_total",
        "patchflow_executor_throttles_total",
        "patchflow_analysis_measurement",
        "patchflow_analysis_runs_total",
        "patchflow_alert_blocks_total",
    ):
        assert name in used, f"no panel shows {name}"


def test_every_promql_expression_parses(tmp_path: Path) -> None:
    """Each panel query wrapped as a recording rule, so promtool parses it offline."""
    exprs = dashboard_exprs()
    rules = {
        "groups": [
            {
                "name": "dashboard-exprs",
                "rules": [
                    {"record": f"dashboard:check_{n}", "expr": expr} for n, (_, expr) in enumerate(exprs)
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(dump_yaml(rules))
    result = run(binary("promtool"), "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in result.stdout

    # ... and the check bites: a broken expression fails.
    rules["groups"][0]["rules"] = [{"record": "dashboard:broken", "expr": "sum by (le (rate(x[5m]))"}]
    path.write_text(dump_yaml(rules))
    assert run(binary("promtool"), "check", "rules", str(path)).returncode != 0


def test_every_metric_name_in_dashboard_and_rules_exists() -> None:
    known = exported_names() | recorded_names() | EXTERNAL_METRICS
    for where, expr in [*dashboard_exprs(), *rule_exprs()]:
        names = metric_names(expr)
        assert names, f"{where}: no metric found in {expr!r}"
        assert names <= known, f"{where}: unknown metric(s) {sorted(names - known)}"


# ---------------------------------------------------------------------------------------------- real Prometheus


@pytest.fixture
def exporter() -> Iterator[Exporter]:
    registry = CollectorRegistry()
    populated_metrics(registry)
    running = start_http_exporter(0, registry=registry)
    try:
        yield running
    finally:
        running.stop()


def query(port: int, promql: str) -> dict[str, Any]:
    """The JSON answer of Prometheus's instant-query API."""
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as response:
        data: dict[str, Any] = json.loads(response.read())
    return data


def series(port: int, promql: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = query(port, promql)["data"]["result"]
    return result


def test_real_prometheus_scrapes_patchflow_and_answers_every_query(
    tmp_path: Path, exporter: Exporter
) -> None:
    prometheus = binary("prometheus")
    port = free_port()
    target = f"127.0.0.1:{exporter.port}"
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(PROMETHEUS_DIR / "rules.yml")],
        # One exporter under both patchflow job names, so worker-job queries have data too.
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]}
            for job in ("patchflow-api", "patchflow-worker")
        ],
    }
    (tmp_path / "prometheus.yml").write_text(dump_yaml(config))
    log = (tmp_path / "prometheus.log").open("w")
    process = subprocess.Popen(
        [
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        result: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            assert process.poll() is None, (tmp_path / "prometheus.log").read_text()
            try:
                # Three scrapes of both jobs: enough for rate() over the dashboard's windows.
                if series(port, 'count_over_time(up{job="patchflow-worker"}[1m]) >= 3'):
                    result = series(port, 'patchflow_waves{job="patchflow-api", state="running"}')
                    if result:
                        break
            except OSError:
                pass  # not listening yet
            time.sleep(0.25)
        assert result, f"no patchflow sample within 30 s: {(tmp_path / 'prometheus.log').read_text()}"
        assert result[0]["value"][1] == "1"

        for where, expr in dashboard_exprs():
            answer = query(port, expr)
            assert answer["status"] == "success", f"{where}: {answer}"
            if not metric_names(expr) & {"temporal_worker_task_slots_available"}:
                assert answer["data"]["result"], f"{where}: {expr!r} returned nothing"

        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5) as response:
            groups = json.loads(response.read())["data"]["groups"]
        assert {r["name"] for g in groups for r in g["rules"]} == {name for name, _ in rule_exprs()}
        assert all(r["health"] in ("ok", "unknown") for g in groups for r in g["rules"])
    finally:
        stop_process(process)
        log.close()
