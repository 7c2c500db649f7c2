"""patchflow/metrics.py: every metric family asserted through ``registry.get_sample_value`` (house rule 12).

Each test builds its own ``Metrics`` on a fresh ``CollectorRegistry`` with a fixed clock, so nothing leaks
between tests and ages are exact.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from patchflow import metrics as metrics_module
from patchflow.config import Settings
from patchflow.core.compliance import InstanceCompliance
from patchflow.core.wavemodel import StageStatus, WaveStatus
from patchflow.errors import PatchflowError
from patchflow.metrics import (
    INSTANCE_STATES,
    STAGE_STATES,
    WAVE_STATES,
    Metrics,
    build_temporal_runtime,
    instrument_boto3_client,
    refresh_loop,
    render,
    serve_worker_metrics,
    start_http_exporter,
)

NOW = datetime(2026, 3, 10, 22, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry, clock: Clock) -> Metrics:
    return Metrics(registry, clock=clock)


def running_wave(wave_id: str = "w-1") -> WaveStatus:
    """Dev done (one failure within budget, one rolled back), Test running in a window, Prod not started."""
    return WaveStatus(
        wave_id=wave_id,
        plan_name="monthly",
        state="running",
        patch_set_id="ps-1",
        stages=[
            StageStatus(
                name="Dev",
                state="succeeded",
                instances={"i-1": "succeeded", "i-2": "failed", "i-3": "rolled_back"},
                errors=1,
                max_errors=1,
            ),
            StageStatus(
                name="Test",
                state="running",
                instances={
                    "i-10": "pending",
                    "i-11": "pending",
                    "i-12": "in_flight",
                    "i-13": "succeeded",
                    "i-14": "failed",
                    "i-15": "not_attempted",
                },
                errors=1,
                max_errors=2,
                window_start=NOW - timedelta(hours=1),
                window_cutoff=NOW + timedelta(minutes=90),
            ),
            StageStatus(name="Prod"),
        ],
    )


def waiting_wave(wave_id: str = "w-2") -> WaveStatus:
    return WaveStatus(
        wave_id=wave_id,
        plan_name="monthly",
        state="waiting_approval",
        patch_set_id="ps-1",
        stages=[
            StageStatus(
                name="Dev", state="succeeded", instances={"i-1": "succeeded"}, errors=0, max_errors=0
            ),
            StageStatus(name="Prod", state="waiting_approval"),
        ],
    )


def finished_wave(wave_id: str, state: str = "succeeded") -> WaveStatus:
    return WaveStatus(
        wave_id=wave_id,
        plan_name="monthly",
        state=state,
        patch_set_id="ps-1",
        stages=[StageStatus(name="Dev", state="succeeded", instances={"i-1": "succeeded"}, max_errors=0)],
    )


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the registry, except ``_created`` (a creation time, not state)."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in registry.collect()
        for s in family.samples
        if not s.name.endswith("_created")
    }


# ---------------------------------------------------------------------------------------------- state


def test_waves_by_state_counts_every_state(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.update_from_status(running_wave("w-1"))
    metrics.update_from_status(waiting_wave("w-2"))
    metrics.update_from_status(finished_wave("w-3", "halted"))

    value = registry.get_sample_value
    assert value("patchflow_waves", {"state": "running"}) == 1
    assert value("patchflow_waves", {"state": "waiting_approval"}) == 1
    assert value("patchflow_waves", {"state": "halted"}) == 1
    for state in ("succeeded", "failed", "cancelled"):
        assert value("patchflow_waves", {"state": state}) == 0
    assert value("patchflow_wave_state", {"wave_id": "w-3", "plan": "monthly", "state": "halted"}) == 1
    for state in WAVE_STATES:
        if state != "running":
            assert value("patchflow_wave_state", {"wave_id": "w-1", "plan": "monthly", "state": state}) == 0


def test_an_empty_registry_still_exports_zeroes(metrics: Metrics, registry: CollectorRegistry) -> None:
    # Alerts and panels never wait for a series to appear.
    for state in WAVE_STATES:
        assert registry.get_sample_value("patchflow_waves", {"state": state}) == 0
    assert registry.get_sample_value("patchflow_approvals_pending") == 0
    assert registry.get_sample_value("patchflow_approval_oldest_age_seconds") == 0


def test_stage_progress_errors_budget_and_state(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.update_from_status(running_wave())

    def instances(stage: str, state: str) -> float | None:
        return registry.get_sample_value(
            "patchflow_stage_instances", {"wave_id": "w-1", "stage": stage, "state": state}
        )

    assert [instances("Test", s) for s in INSTANCE_STATES] == [2, 1, 1, 1, 1, 0, 0]
    assert [instances("Dev", s) for s in INSTANCE_STATES] == [0, 0, 1, 1, 0, 1, 0]
    assert [instances("Prod", s) for s in INSTANCE_STATES] == [0] * len(INSTANCE_STATES)

    labels = {"wave_id": "w-1", "stage": "Test"}
    assert registry.get_sample_value("patchflow_stage_errors", labels) == 1
    assert registry.get_sample_value("patchflow_stage_max_errors", labels) == 2
    # Prod has not resolved its targets: no budget yet, rather than a misleading 0.
    assert (
        registry.get_sample_value("patchflow_stage_max_errors", {"wave_id": "w-1", "stage": "Prod"}) is None
    )
    assert registry.get_sample_value("patchflow_stage_errors", {"wave_id": "w-1", "stage": "Prod"}) == 0

    for state in STAGE_STATES:
        expected = 1 if state == "running" else 0
        assert registry.get_sample_value("patchflow_stage_state", {**labels, "state": state}) == expected


def test_window_time_remaining_counts_down_at_scrape_time(
    metrics: Metrics, registry: CollectorRegistry, clock: Clock
) -> None:
    metrics.update_from_status(running_wave())
    labels = {"wave_id": "w-1", "stage": "Test"}
    cutoff = (NOW + timedelta(minutes=90)).timestamp()

    assert registry.get_sample_value("patchflow_stage_window_remaining_seconds", labels) == 90 * 60
    assert registry.get_sample_value("patchflow_stage_window_cutoff_timestamp_seconds", labels) == cutoff
    clock.now += timedelta(minutes=30)  # no refresh in between: the value is computed when scraped
    assert registry.get_sample_value("patchflow_stage_window_remaining_seconds", labels) == 60 * 60
    clock.now += timedelta(hours=2)
    assert registry.get_sample_value("patchflow_stage_window_remaining_seconds", labels) == 0
    # Stages without a window limit, or not running in one, have no series.
    assert (
        registry.get_sample_value(
            "patchflow_stage_window_remaining_seconds", {"wave_id": "w-1", "stage": "Dev"}
        )
        is None
    )


def test_window_cutoff_without_timezone_is_utc(metrics: Metrics, registry: CollectorRegistry) -> None:
    status = running_wave()
    status.stages[1].window_cutoff = (NOW + timedelta(minutes=10)).replace(tzinfo=None)
    metrics.update_from_status(status)
    assert (
        registry.get_sample_value(
            "patchflow_stage_window_remaining_seconds", {"wave_id": "w-1", "stage": "Test"}
        )
        == 600
    )


def test_approval_age_of_an_older_wave_starts_when_first_seen_and_survives_refreshes(
    metrics: Metrics, registry: CollectorRegistry, clock: Clock
) -> None:
    metrics.update_from_status(waiting_wave("w-2"))
    labels = {"wave_id": "w-2", "stage": "Prod"}
    assert registry.get_sample_value("patchflow_approvals_pending") == 1
    assert (
        registry.get_sample_value("patchflow_approval_waiting_since_timestamp_seconds", labels)
        == NOW.timestamp()
    )

    clock.now = NOW + timedelta(hours=2)
    metrics.update_from_status(waiting_wave("w-2"))  # a later refresh must not restart the wait
    assert (
        registry.get_sample_value("patchflow_approval_waiting_since_timestamp_seconds", labels)
        == NOW.timestamp()
    )
    assert registry.get_sample_value("patchflow_approval_oldest_age_seconds") == 2 * 3600

    clock.now = NOW + timedelta(hours=3)
    metrics.update_from_status(waiting_wave("w-3"))  # younger: the oldest stays w-2's
    assert registry.get_sample_value("patchflow_approvals_pending") == 2
    assert registry.get_sample_value("patchflow_approval_oldest_age_seconds") == 3 * 3600

    approved = waiting_wave("w-2")
    approved.state, approved.stages[1].state = "running", "running"
    metrics.update_from_status(approved)
    assert registry.get_sample_value("patchflow_approvals_pending") == 1
    assert registry.get_sample_value("patchflow_approval_waiting_since_timestamp_seconds", labels) is None
    assert registry.get_sample_value("patchflow_approval_oldest_age_seconds") == 0


def test_approval_age_is_the_waves_own_from_the_first_scrape(
    metrics: Metrics, registry: CollectorRegistry, clock: Clock
) -> None:
    """The status says when the gate started waiting: an API that first sees the wave (a restart, a new
    replica) two hours into the wait reports two hours, not zero."""
    wave = waiting_wave("w-2")
    wave.stages[1].waiting_since = NOW - timedelta(hours=2)
    metrics.update_from_status(wave)
    labels = {"wave_id": "w-2", "stage": "Prod"}
    assert (
        registry.get_sample_value("patchflow_approval_waiting_since_timestamp_seconds", labels)
        == (NOW - timedelta(hours=2)).timestamp()
    )
    assert registry.get_sample_value("patchflow_approval_oldest_age_seconds") == 2 * 3600


def test_feeding_the_same_status_twice_changes_nothing(
    metrics: Metrics, registry: CollectorRegistry, clock: Clock
) -> None:
    statuses = [running_wave("w-1"), waiting_wave("w-2"), finished_wave("w-3")]
    for status in statuses:
        metrics.update_from_status(status)
    first = samples(registry)
    for status in statuses:
        metrics.update_from_status(status)
        metrics.update_from_status(status)
    assert samples(registry) == first
    assert registry.get_sample_value("patchflow_waves", {"state": "running"}) == 1


def test_a_status_replaces_the_previous_one(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.update_from_status(running_wave())
    later = running_wave()
    later.stages[1].instances = dict.fromkeys(later.stages[1].instances, "succeeded")
    later.stages[1].state, later.stages[1].errors = "soaking", 0
    metrics.update_from_status(later)
    labels = {"wave_id": "w-1", "stage": "Test"}
    assert registry.get_sample_value("patchflow_stage_instances", {**labels, "state": "succeeded"}) == 6
    assert registry.get_sample_value("patchflow_stage_instances", {**labels, "state": "pending"}) == 0
    assert registry.get_sample_value("patchflow_stage_errors", labels) == 0
    # A soaking stage is past its window: no time-remaining series.
    assert registry.get_sample_value("patchflow_stage_window_remaining_seconds", labels) is None


def test_finished_waves_are_forgotten_beyond_the_retention(clock: Clock) -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry, clock=clock, keep_finished_waves=2)
    metrics.update_from_status(running_wave("w-run"))
    for wave_id in ("w-a", "w-b", "w-c"):
        metrics.update_from_status(finished_wave(wave_id))

    def state(wave_id: str) -> float | None:
        return registry.get_sample_value(
            "patchflow_wave_state", {"wave_id": wave_id, "plan": "monthly", "state": "succeeded"}
        )

    assert state("w-a") is None
    assert state("w-b") == state("w-c") == 1
    assert registry.get_sample_value("patchflow_waves", {"state": "succeeded"}) == 2
    assert registry.get_sample_value("patchflow_waves", {"state": "running"}) == 1  # never evicted
    # A refresher listing the old wave again does not bring it back (no churn of series).
    metrics.update_from_status(finished_wave("w-a"))
    assert state("w-a") is None
    metrics.forget("w-b")
    metrics.update_from_status(finished_wave("w-b"))
    assert state("w-b") is None
    metrics.forget("w-run")  # an unfinished wave comes back with its next status
    metrics.update_from_status(running_wave("w-run"))
    assert registry.get_sample_value("patchflow_waves", {"state": "running"}) == 1


def test_unknown_states_are_exported_rather_than_dropped(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    # A newer worker may report a state this version does not know yet.
    status = finished_wave("w-9", state="paused")
    status.stages[0].instances = {"i-1": "quarantined"}
    metrics.update_from_status(status)
    assert registry.get_sample_value("patchflow_waves", {"state": "paused"}) == 1
    assert (
        registry.get_sample_value(
            "patchflow_stage_instances", {"wave_id": "w-9", "stage": "Dev", "state": "quarantined"}
        )
        == 1
    )


def test_no_instance_id_reaches_a_label(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.update_from_status(running_wave())
    metrics.update_compliance([compliance("i-77", "web", "NON_COMPLIANT", "CRITICAL")])
    values = {v for (_, labels) in samples(registry) for _, v in labels}
    names = {k for (_, labels) in samples(registry) for k, _ in labels}
    assert not {v for v in values if v.startswith("i-")}
    assert not names & {"instance_id", "instance"}


# ---------------------------------------------------------------------------------------------- compliance


def compliance(
    instance_id: str, group: str | None, status: str, level: str | None = None
) -> InstanceCompliance:
    return InstanceCompliance(
        instance_id=instance_id,
        patch_group=group,
        status=status,
        counts={},
        compliance_level=level,
        patches=[],
    )


def test_compliance_by_patch_group_and_severity(metrics: Metrics, registry: CollectorRegistry) -> None:
    results = [
        compliance("i-1", "web", "COMPLIANT"),
        compliance("i-2", "web", "COMPLIANT"),
        compliance("i-3", "web", "COMPLIANT"),
        compliance("i-4", "web", "NON_COMPLIANT", "CRITICAL"),
        compliance("i-5", "web", "NON_COMPLIANT", "HIGH"),
        compliance("i-6", None, "NON_COMPLIANT", None),
    ]
    metrics.update_compliance(results)
    metrics.update_compliance(results)  # idempotent

    value = registry.get_sample_value
    assert value("patchflow_compliance_instances", {"patch_group": "web", "status": "COMPLIANT"}) == 3
    assert value("patchflow_compliance_instances", {"patch_group": "web", "status": "NON_COMPLIANT"}) == 2
    assert (
        value("patchflow_compliance_noncompliant_instances", {"patch_group": "web", "severity": "CRITICAL"})
        == 1
    )
    assert (
        value("patchflow_compliance_noncompliant_instances", {"patch_group": "web", "severity": "HIGH"}) == 1
    )
    assert (
        value("patchflow_compliance_noncompliant_instances", {"patch_group": "web", "severity": "LOW"}) == 0
    )
    assert value("patchflow_compliance_instances", {"patch_group": "none", "status": "COMPLIANT"}) == 0
    assert (
        value(
            "patchflow_compliance_noncompliant_instances", {"patch_group": "none", "severity": "UNSPECIFIED"}
        )
        == 1
    )

    # Re-evaluating one group leaves the others alone; clearing forgets all.
    metrics.update_compliance([compliance("i-1", "web", "COMPLIANT")])
    assert value("patchflow_compliance_instances", {"patch_group": "web", "status": "NON_COMPLIANT"}) == 0
    assert value("patchflow_compliance_instances", {"patch_group": "none", "status": "NON_COMPLIANT"}) == 1
    metrics.clear_compliance()
    assert value("patchflow_compliance_instances", {"patch_group": "web", "status": "COMPLIANT"}) is None


# ---------------------------------------------------------------------------------------------- events


def test_patch_durations_by_executor_and_outcome(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.observe_patch("ssm", "succeeded", 42.0)
    metrics.observe_patch("ssm", "succeeded", 400.0)
    metrics.observe_patch("ssm", "timed_out", 7200.0)
    metrics.observe_patch("simulated", "a-new-status", -1.0)  # bounded labels, no negative durations

    labels = {"executor": "ssm", "outcome": "succeeded"}
    assert registry.get_sample_value("patchflow_patch_duration_seconds_count", labels) == 2
    assert registry.get_sample_value("patchflow_patch_duration_seconds_sum", labels) == 442
    assert registry.get_sample_value("patchflow_patch_duration_seconds_bucket", {**labels, "le": "60.0"}) == 1
    assert (
        registry.get_sample_value("patchflow_patch_duration_seconds_bucket", {**labels, "le": "600.0"}) == 2
    )
    assert (
        registry.get_sample_value(
            "patchflow_patch_duration_seconds_bucket",
            {"executor": "ssm", "outcome": "timed_out", "le": "7200.0"},
        )
        == 1
    )
    other = {"executor": "simulated", "outcome": "other"}
    assert registry.get_sample_value("patchflow_patch_duration_seconds_count", other) == 1
    assert registry.get_sample_value("patchflow_patch_duration_seconds_sum", other) == 0


def test_executor_errors_and_throttles(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.record_api_error("ssm", "SendCommand")
    metrics.record_throttle("ssm", "GetCommandInvocation")
    metrics.record_throttle("ssm", "GetCommandInvocation")
    assert (
        registry.get_sample_value(
            "patchflow_executor_api_errors_total", {"executor": "ssm", "operation": "SendCommand"}
        )
        == 1
    )
    assert (
        registry.get_sample_value(
            "patchflow_executor_throttles_total", {"executor": "ssm", "operation": "GetCommandInvocation"}
        )
        == 2
    )


class _FakeAws(BaseHTTPRequestHandler):
    """Answers AWS JSON-protocol calls with the next scripted ``(status, __type or None)``."""

    script: list[tuple[int, str | None]] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        status, error = self.script.pop(0)
        body = json.dumps(
            {"__type": error, "message": "scripted"} if error else {"CommandId": "c-1"}
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/x-amz-json-1.1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:  # silence the default stderr log
        pass


@pytest.fixture
def fake_aws() -> Iterator[tuple[str, type[_FakeAws]]]:
    handler = type("Handler", (_FakeAws,), {"script": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _ssm_client(endpoint: str, attempts: int) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "ssm",
        region_name="us-east-1",
        endpoint_url=endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
        config=Config(
            retries={"mode": "standard", "total_max_attempts": attempts}, connect_timeout=2, read_timeout=5
        ),
    )


def test_boto3_instrumentation_counts_throttles_per_attempt_and_errors_per_call(
    metrics: Metrics, registry: CollectorRegistry, fake_aws: tuple[str, type[_FakeAws]]
) -> None:
    from botocore.exceptions import ClientError

    endpoint, handler = fake_aws
    client = instrument_boto3_client(_ssm_client(endpoint, attempts=2), executor="ssm", metrics=metrics)
    handler.script[:] = [
        (400, "ThrottlingException"),  # retried ...
        (200, None),  # ... and succeeds: one throttle, no error
        (400, "ThrottlingException"),
        (400, "ThrottlingException"),  # retries exhausted: two throttles, one error
        (400, "InvalidInstanceId"),  # not retryable: one error, no throttle
    ]
    client.send_command(InstanceIds=["i-1"], DocumentName="AWS-RunPatchBaseline")
    for _ in range(2):
        with pytest.raises(ClientError):
            client.send_command(InstanceIds=["i-1"], DocumentName="AWS-RunPatchBaseline")

    labels = {"executor": "ssm", "operation": "SendCommand"}
    assert registry.get_sample_value("patchflow_executor_throttles_total", labels) == 3
    assert registry.get_sample_value("patchflow_executor_api_errors_total", labels) == 2


def test_boto3_instrumentation_counts_connection_failures(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    from botocore.exceptions import EndpointConnectionError

    client = instrument_boto3_client(
        _ssm_client(f"http://127.0.0.1:{_free_port()}", attempts=1), executor="ssm", metrics=metrics
    )
    with pytest.raises(EndpointConnectionError):
        client.describe_instance_information()
    labels = {"executor": "ssm", "operation": "DescribeInstanceInformation"}
    assert registry.get_sample_value("patchflow_executor_api_errors_total", labels) == 1
    assert registry.get_sample_value("patchflow_executor_throttles_total", labels) is None


# ---------------------------------------------------------------------------------------------- exposition


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_http_exporter_serves_the_registry_on_loopback(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.update_from_status(running_wave())
    exporter = start_http_exporter(0, registry=registry)
    try:
        assert exporter.address == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5) as response:
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            body = response.read().decode()
        assert 'patchflow_waves{state="running"} 1.0' in body
        assert 'patchflow_stage_instances{stage="Test",state="pending",wave_id="w-1"} 2.0' in body
    finally:
        exporter.stop()
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=2)


def test_http_exporter_on_a_taken_port_says_what_to_change(registry: CollectorRegistry) -> None:
    exporter = start_http_exporter(0, registry=registry)
    try:
        with pytest.raises(PatchflowError, match="PATCHFLOW_WORKER_METRICS_PORT"):
            start_http_exporter(exporter.port, registry=registry)
    finally:
        exporter.stop()


def test_render_for_an_api_route(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.update_from_status(waiting_wave())
    body, content_type = render(registry)
    assert content_type.startswith("text/plain")
    assert b"patchflow_approvals_pending 1.0" in body
    body, content_type = render(registry, accept="application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_default_registry_has_process_metrics_and_patchflow_metrics() -> None:
    body, _ = render()
    assert b"process_cpu_seconds_total" in body or b"python_info" in body
    assert b"patchflow_waves{" in body


# ---------------------------------------------------------------------------------------------- workers


@pytest.fixture
def fresh_worker_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    """serve_worker_metrics() is once-per-process; let each test start from scratch."""
    monkeypatch.setattr(metrics_module, "_worker_metrics", None)


@pytest.mark.usefixtures("fresh_worker_metrics")
def test_serve_worker_metrics_starts_the_worker_endpoint_once(
    metrics: Metrics, registry: CollectorRegistry
) -> None:
    settings = Settings(worker_metrics_port=0, temporal_metrics_port=None)
    served = serve_worker_metrics(settings, registry=registry)
    exporter = served.exporter
    assert exporter is not None and served.runtime is None
    try:
        assert exporter.address == "127.0.0.1"
        assert serve_worker_metrics(settings, registry=registry) is served
        with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5) as response:
            assert b"patchflow_waves" in response.read()
    finally:
        exporter.stop()


@pytest.mark.usefixtures("fresh_worker_metrics")
def test_serve_worker_metrics_refuses_one_port_for_both() -> None:
    with pytest.raises(PatchflowError, match="one port each"):
        serve_worker_metrics(Settings(worker_metrics_port=9999, temporal_metrics_port=9999))


def test_metrics_ports_default_to_loopback_and_can_be_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings()
    assert (defaults.metrics_bind_address, defaults.worker_metrics_port, defaults.temporal_metrics_port) == (
        "127.0.0.1",
        9461,
        9464,
    )
    monkeypatch.setenv("PATCHFLOW_WORKER_METRICS_PORT", "none")
    monkeypatch.setenv("PATCHFLOW_TEMPORAL_METRICS_PORT", "")
    settings = Settings()
    assert settings.worker_metrics_port is None and settings.temporal_metrics_port is None


def test_temporal_sdk_metrics_on_their_own_port() -> None:
    port = _free_port()
    runtime = build_temporal_runtime(port)  # the exporter lives as long as the Runtime object
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        assert response.status == 200
    with pytest.raises(PatchflowError, match="PATCHFLOW_TEMPORAL_METRICS_PORT"):
        build_temporal_runtime(port)
    del runtime


# ---------------------------------------------------------------------------------------------- refreshing


async def test_refresh_loop_feeds_statuses_and_survives_a_failed_fetch(
    metrics: Metrics, registry: CollectorRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def fetch() -> list[WaveStatus]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("Temporal is restarting")
        return [running_wave(), waiting_wave()]

    with caplog.at_level(logging.WARNING, logger="patchflow.metrics"):
        task = asyncio.create_task(refresh_loop(fetch, metrics=metrics, interval_seconds=0.01))
        for _ in range(200):
            if registry.get_sample_value("patchflow_approvals_pending") == 1:
                break
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert registry.get_sample_value("patchflow_waves", {"state": "running"}) == 1
    assert "refreshing wave metrics failed" in caplog.text
