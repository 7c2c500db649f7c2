"""patchflow's Prometheus metrics: the one home of every metric (house rule 12).

Two kinds of metric live here, and they are fed differently:

* **State metrics** describe what is true *now* — waves by state, stage progress, errors against the budget,
  approvals waiting and for how long, maintenance-window time left, compliance by patch group. They are
  snapshots: :meth:`Metrics.update_from_status` replaces everything known about one wave with what a
  :class:`~patchflow.core.wavemodel.WaveStatus` says, so feeding the same status twice changes nothing, and a
  process that restarts only needs the next refresh to be right again. A custom collector renders them at
  scrape time, which is also what lets the *ages* (approval waiting time, window time left) be exact at
  the moment Prometheus asks rather than at the moment of the last refresh.
* **Event metrics** count things that happened in this process — patch durations (histogram), executor
  API errors and throttles (counters). Activities and executors call :meth:`Metrics.observe_patch`,
  :meth:`Metrics.record_api_error` and :meth:`Metrics.record_throttle`, or wire a boto3 client with
  :func:`instrument_boto3_client`.

Where they are served: the API renders :data:`DEFAULT_REGISTRY` on ``GET /metrics`` with :func:`render`;
each worker serves its own registry on ``PATCHFLOW_WORKER_METRICS_PORT`` and the Temporal SDK's metrics on
``PATCHFLOW_TEMPORAL_METRICS_PORT`` (:func:`serve_worker_metrics`).

Rules that keep the metrics cheap and correct:

* **No instance ids in labels.** A fleet of 10,000 instances would be 10,000 series per metric; labels are
  bounded sets (states, executor kinds, operations, patch groups, severities) plus wave and stage names,
  and finished waves are forgotten after :attr:`WaveTracker.keep_finished_waves` newer ones finished.
* **Never from workflow code.** A workflow replays; a prometheus-client call there would count again on
  every replay. Workflows emit through ``workflow.metric_meter()`` (served on the Temporal SDK port).
* **No multiprocess mode.** Run the API as one process per container and scale with replicas:
  prometheus-client's multiprocess mode cannot carry custom collectors, drops ``_created`` series and
  needs a wiped directory per start (``../shared/reference/libraries.md`` §3).
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from threading import Thread
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from patchflow.core.analysis import Measurement
from patchflow.core.baselines import COMPLIANCE_ORDER
from patchflow.core.ratecontrol import (
    CANCELLED,
    FAILED,
    IN_FLIGHT,
    NOT_ATTEMPTED,
    PENDING,
    ROLLED_BACK,
    SUCCEEDED,
)
from patchflow.core.wavemodel import (
    STAGE_RUNNING,
    STAGE_STATES,
    STAGE_WAITING_APPROVAL,
    STAGE_WAITING_WINDOW,
    WAVE_FINAL_STATES,
    WAVE_STATES,
    WaveStatus,
)
from patchflow.errors import PatchflowError

if TYPE_CHECKING:
    from temporalio.runtime import Runtime

    from patchflow.config import Settings
    from patchflow.core.compliance import InstanceCompliance

log = logging.getLogger(__name__)

# Every known value is exported (0 when nothing is in it), so a dashboard shows a stable set of series and an
# alert on "== 1" or "> 0" never depends on a series appearing for the first time.
INSTANCE_STATES: tuple[str, ...] = (
    PENDING,
    IN_FLIGHT,
    SUCCEEDED,
    FAILED,
    NOT_ATTEMPTED,
    ROLLED_BACK,
    CANCELLED,
)
WINDOWED_STAGE_STATES = frozenset({STAGE_RUNNING, STAGE_WAITING_WINDOW})
"""Stage states in which "time left in the window" means something (a soaking stage is past its window)."""

PATCH_OUTCOMES = frozenset({"succeeded", "failed", "timed_out", "undeliverable", "error"})
"""Executor statuses (plus ``error``: the install call raised); anything else is exported as ``other`` so a
new executor status cannot grow the label set unnoticed."""

PATCH_DURATION_BUCKETS: tuple[float, ...] = (
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
    300,
    600,
    900,
    1200,
    1800,
    2700,
    3600,
    5400,
    7200,
    float("inf"),
)
"""Seconds. From the simulated executor (sub-second) to SSM installs with a reboot (minutes), up to two hours,
past which an install is a problem whatever its exact duration."""

NO_PATCH_GROUP = "none"
"""Label value for instances without a patch group (an empty label value would equal a missing label)."""

COMPLIANT = "COMPLIANT"
NON_COMPLIANT = "NON_COMPLIANT"

THROTTLE_ERROR_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
        "RequestThrottled",
        "SlowDown",
        "EC2ThrottledException",
        "ProvisionedThroughputExceededException",
        "BandwidthLimitExceeded",
    }
)
"""AWS error codes that mean "slow down" (the throttling codes botocore's standard retry mode retries)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _timestamp(value: datetime) -> float:
    """Seconds since the epoch; naive datetimes are UTC, as everywhere else in patchflow."""
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class _StageSnapshot:
    name: str
    state: str
    instances: dict[str, int]
    """Instance state → count (instance ids themselves never reach a label)."""
    errors: int
    max_errors: int | None
    window_cutoff: datetime | None
    reboot_debt: int = 0
    """Instances patched and still waiting for a reboot (``StageStatus.reboot_debt_count``)."""
    reboot_debt_since: datetime | None = None
    """The oldest of them waits since (``StageStatus.reboot_debt_since``)."""


@dataclass(frozen=True)
class _WaveSnapshot:
    wave_id: str
    plan: str
    state: str
    stages: tuple[_StageSnapshot, ...]


@dataclass
class _GroupCompliance:
    by_status: Tally[str] = field(default_factory=Tally)
    by_severity: Tally[str] = field(default_factory=Tally)
    """Non-compliant instances by their most severe compliance level."""


STATE_METRICS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("patchflow_waves", "Waves this process tracks, by wave state.", ("state",)),
    (
        "patchflow_wave_state",
        "1 for the wave's current state, 0 for every other state.",
        ("wave_id", "plan", "state"),
    ),
    (
        "patchflow_stage_state",
        "1 for the stage's current state, 0 for every other state.",
        ("wave_id", "stage", "state"),
    ),
    (
        "patchflow_stage_instances",
        "Instances of a stage by instance state (pending, in_flight, succeeded, failed, not_attempted, "
        "rolled_back, cancelled).",
        ("wave_id", "stage", "state"),
    ),
    (
        "patchflow_stage_errors",
        "Failures counted against the stage's error budget in its current attempt.",
        ("wave_id", "stage"),
    ),
    (
        "patchflow_stage_max_errors",
        "Failures the stage tolerates; one more halts dispatch (absent until the stage resolved its targets).",
        ("wave_id", "stage"),
    ),
    (
        "patchflow_reboot_debt_instances",
        "Instances a stage patched that still wait for a reboot (reboot debt: non-compliant until rebooted).",
        ("wave_id", "stage"),
    ),
    (
        "patchflow_reboot_debt_since_timestamp_seconds",
        "Since when the stage's oldest reboot debt waits (Unix time; absent without debt): alert on its age.",
        ("wave_id", "stage"),
    ),
    ("patchflow_approvals_pending", "Stages waiting for an approval to be promoted into.", ()),
    (
        "patchflow_approval_waiting_since_timestamp_seconds",
        "Since when a stage waits for approval (Unix time, as the wave recorded it).",
        ("wave_id", "stage"),
    ),
    (
        "patchflow_approval_oldest_age_seconds",
        "How long the longest-waiting approval has waited (0 when none waits).",
        (),
    ),
    (
        "patchflow_stage_window_cutoff_timestamp_seconds",
        "When the current maintenance window stops admitting new instances (Unix time).",
        ("wave_id", "stage"),
    ),
    (
        "patchflow_stage_window_remaining_seconds",
        "Seconds until the current maintenance window's cutoff (0 once past it).",
        ("wave_id", "stage"),
    ),
    (
        "patchflow_compliance_instances",
        "Instances by patch group and compliance status (COMPLIANT, NON_COMPLIANT).",
        ("patch_group", "status"),
    ),
    (
        "patchflow_compliance_noncompliant_instances",
        "Non-compliant instances by patch group and their most severe missing patch's compliance level.",
        ("patch_group", "severity"),
    ),
)
"""The state metrics (all gauges): name, help, labels. Rendered at scrape time by :class:`_StateCollector`."""


_MAX_FORGOTTEN = 10_000
"""How many evicted wave ids to remember (a few hundred KB at most)."""


def _known_plus(known: tuple[str, ...], *seen: str) -> tuple[str, ...]:
    """The known values in their documented order, then any unexpected ones (a newer worker's new state)."""
    extra = sorted({s for s in seen if s not in known})
    return (*known, *extra)


# ---------------------------------------------------------------------------------------------- state: waves


def _wave_snapshot(status: WaveStatus) -> _WaveSnapshot:
    """What the metrics keep of a status: states and counts, never the per-instance map."""
    return _WaveSnapshot(
        wave_id=status.wave_id,
        plan=status.plan_name,
        state=status.state,
        stages=tuple(
            _StageSnapshot(
                name=stage.name,
                state=stage.state,
                instances=dict(Tally(stage.instances.values())),
                errors=stage.errors,
                max_errors=stage.max_errors,
                window_cutoff=stage.window_cutoff,
                reboot_debt=stage.reboot_debt_count,
                reboot_debt_since=stage.reboot_debt_since,
            )
            for stage in status.stages
        ),
    )


class WaveTracker:
    """The waves the state metrics describe: the latest snapshot of each, since when each of its stages
    waits for approval, and which finished waves are still exported.

    Replaced by the refresher (an asyncio task) and read by the exporter's thread, hence the lock.

    Args:
        clock: the current time, for the first sighting of a waiting approval.
        keep_finished_waves: how many finished waves keep their series (oldest forgotten first).
    """

    def __init__(self, *, clock: Callable[[], datetime], keep_finished_waves: int) -> None:
        self._clock = clock
        self.keep_finished_waves = keep_finished_waves
        self._lock = threading.Lock()
        self._waves: dict[str, _WaveSnapshot] = {}
        self._waiting_since: dict[str, dict[str, datetime]] = {}
        """wave id → stage → when this process first saw the stage waiting for approval."""
        self._finished: OrderedDict[str, None] = OrderedDict()
        """Finished waves still exported, oldest first."""
        self._forgotten: OrderedDict[str, None] = OrderedDict()
        """Finished waves already evicted, so a refresher that lists them again does not bring them back."""

    def update(self, status: WaveStatus) -> None:
        """Replace everything known about one wave with ``status`` (see :meth:`Metrics.update_from_status`)."""
        now = self._clock()
        snapshot = _wave_snapshot(status)
        finished = status.state in WAVE_FINAL_STATES
        with self._lock:
            if finished and status.wave_id in self._forgotten:
                return
            self._forgotten.pop(status.wave_id, None)
            self._waves[status.wave_id] = snapshot
            self._track_waiting(status, finished=finished, now=now)
            self._track_finished(status.wave_id, finished=finished)

    def _track_waiting(self, status: WaveStatus, *, finished: bool, now: datetime) -> None:
        """Since when each stage waits: the wave's own record; for waves started before the status carried
        it, the first time this process saw the stage waiting."""
        previous = self._waiting_since.pop(status.wave_id, {})
        waiting = {
            stage.name: stage.waiting_since or previous.get(stage.name, now)
            for stage in status.stages
            if stage.state == STAGE_WAITING_APPROVAL and not finished
        }
        if waiting:
            self._waiting_since[status.wave_id] = waiting

    def _track_finished(self, wave_id: str, *, finished: bool) -> None:
        if not finished:
            self._finished.pop(wave_id, None)
            return
        self._finished.setdefault(wave_id, None)
        while len(self._finished) > self.keep_finished_waves:
            oldest, _ = self._finished.popitem(last=False)
            self._drop(oldest)

    def forget(self, wave_id: str) -> None:
        """Stop exporting a wave; it comes back only if a later status shows it unfinished."""
        with self._lock:
            self._drop(wave_id)

    def _drop(self, wave_id: str) -> None:
        self._waves.pop(wave_id, None)
        self._waiting_since.pop(wave_id, None)
        self._finished.pop(wave_id, None)
        self._forgotten[wave_id] = None
        while len(self._forgotten) > _MAX_FORGOTTEN:
            self._forgotten.popitem(last=False)

    def snapshot(self) -> tuple[list[_WaveSnapshot], dict[tuple[str, str], datetime]]:
        """The waves by id, and (wave id, stage) → since when it waits for approval."""
        with self._lock:
            waves = sorted(self._waves.values(), key=lambda w: w.wave_id)
            waiting = {
                (wave_id, stage): since
                for wave_id, stages in self._waiting_since.items()
                for stage, since in stages.items()
            }
            return waves, waiting


# ---------------------------------------------------------------------------------------------- state: compliance


class ComplianceTally:
    """Instances by patch group and compliance status, and the non-compliant ones by severity."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._groups: dict[str, _GroupCompliance] = {}

    def update(self, results: Iterable[InstanceCompliance]) -> None:
        """Replace the counts of every patch group present in ``results`` (see
        :meth:`Metrics.update_compliance`)."""
        fresh: dict[str, _GroupCompliance] = {}
        for result in results:
            counts = fresh.setdefault(result.patch_group or NO_PATCH_GROUP, _GroupCompliance())
            counts.by_status[result.status] += 1
            if result.status == NON_COMPLIANT:
                counts.by_severity[result.compliance_level or "UNSPECIFIED"] += 1
        with self._lock:
            self._groups.update(fresh)

    def clear(self) -> None:
        with self._lock:
            self._groups.clear()

    def snapshot(self) -> dict[str, _GroupCompliance]:
        with self._lock:
            return dict(self._groups)


# ---------------------------------------------------------------------------------------------- rendering


class _StateCollector(Collector):
    """Renders the state metrics at scrape time (see the module docstring): one family per
    :data:`STATE_METRICS` entry, filled by one function per kind of state."""

    def __init__(
        self, waves: WaveTracker, compliance: ComplianceTally, clock: Callable[[], datetime]
    ) -> None:
        self._waves = waves
        self._compliance = compliance
        self._clock = clock

    @staticmethod
    def _empty() -> dict[str, GaugeMetricFamily]:
        return {
            name: GaugeMetricFamily(name, doc, labels=list(labels)) for name, doc, labels in STATE_METRICS
        }

    def describe(self) -> Iterable[Metric]:
        # Names only: lets the registry detect duplicates without running collect() at registration.
        return list(self._empty().values())

    def collect(self) -> Iterable[Metric]:
        families = self._empty()
        waves, waiting = self._waves.snapshot()
        now = self._clock().timestamp()
        _render_waves(families, waves, now)
        _render_approvals(families, waiting, now)
        _render_compliance(families, self._compliance.snapshot())
        return list(families.values())


def _render_waves(f: dict[str, GaugeMetricFamily], waves: list[_WaveSnapshot], now: float) -> None:
    """Waves by state, each wave's state, and per stage its state, instances, error budget and window."""
    tally = Tally(w.state for w in waves)
    for state in _known_plus(WAVE_STATES, *tally):
        f["patchflow_waves"].add_metric([state], tally.get(state, 0))
    for wave in waves:
        for state in _known_plus(WAVE_STATES, wave.state):
            f["patchflow_wave_state"].add_metric([wave.wave_id, wave.plan, state], int(state == wave.state))
        for stage in wave.stages:
            _render_stage(f, [wave.wave_id, stage.name], stage, now)


def _render_stage(
    f: dict[str, GaugeMetricFamily], labels: list[str], stage: _StageSnapshot, now: float
) -> None:
    for state in _known_plus(STAGE_STATES, stage.state):
        f["patchflow_stage_state"].add_metric([*labels, state], int(state == stage.state))
    for state in _known_plus(INSTANCE_STATES, *stage.instances):
        f["patchflow_stage_instances"].add_metric([*labels, state], stage.instances.get(state, 0))
    f["patchflow_stage_errors"].add_metric(labels, stage.errors)
    f["patchflow_reboot_debt_instances"].add_metric(labels, stage.reboot_debt)
    if stage.reboot_debt and stage.reboot_debt_since is not None:
        f["patchflow_reboot_debt_since_timestamp_seconds"].add_metric(
            labels, _timestamp(stage.reboot_debt_since)
        )
    if stage.max_errors is not None:
        f["patchflow_stage_max_errors"].add_metric(labels, stage.max_errors)
    if stage.window_cutoff is not None and stage.state in WINDOWED_STAGE_STATES:
        cutoff = _timestamp(stage.window_cutoff)
        f["patchflow_stage_window_cutoff_timestamp_seconds"].add_metric(labels, cutoff)
        f["patchflow_stage_window_remaining_seconds"].add_metric(labels, max(0.0, cutoff - now))


def _render_approvals(
    f: dict[str, GaugeMetricFamily], waiting: dict[tuple[str, str], datetime], now: float
) -> None:
    """Approvals pending, since when each waits, and the age of the oldest (exact at scrape time)."""
    f["patchflow_approvals_pending"].add_metric([], len(waiting))
    for (wave_id, stage_name), since in sorted(waiting.items()):
        f["patchflow_approval_waiting_since_timestamp_seconds"].add_metric(
            [wave_id, stage_name], _timestamp(since)
        )
    oldest = min((_timestamp(since) for since in waiting.values()), default=now)
    f["patchflow_approval_oldest_age_seconds"].add_metric([], max(0.0, now - oldest))


def _render_compliance(f: dict[str, GaugeMetricFamily], compliance: dict[str, _GroupCompliance]) -> None:
    for group, counts in sorted(compliance.items()):
        for status in (COMPLIANT, NON_COMPLIANT):
            f["patchflow_compliance_instances"].add_metric([group, status], counts.by_status.get(status, 0))
        for severity in _known_plus(COMPLIANCE_ORDER, *counts.by_severity):
            f["patchflow_compliance_noncompliant_instances"].add_metric(
                [group, severity], counts.by_severity.get(severity, 0)
            )


# ---------------------------------------------------------------------------------------------- events


#: Waves whose latest analysis measurements stay exported (``patchflow_analysis_measurement``) per process.
MEASURED_WAVES_KEPT = 20


class PatchEvents:
    """The event metrics: patch durations, executor API errors and throttles (counted in this process)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.patch_duration = Histogram(
            "patchflow_patch_duration_seconds",
            "Time to patch one instance, by executor kind and outcome.",
            ["executor", "outcome"],
            buckets=PATCH_DURATION_BUCKETS,
            registry=registry,
        )
        self.executor_api_errors = Counter(
            "patchflow_executor_api_errors",
            "Executor backend API calls that failed after the client's own retries.",
            ["executor", "operation"],
            registry=registry,
        )
        self.executor_throttles = Counter(
            "patchflow_executor_throttles",
            "Executor backend API attempts refused for rate (each retried attempt counts).",
            ["executor", "operation"],
            registry=registry,
        )
        self.history_database_up = Gauge(
            "patchflow_history_database_up",
            "1 when this process's last use of the history database succeeded, 0 when it failed (writes are "
            "retried: history catches up when the database returns).",
            registry=registry,
        )
        self.history_write_failures = Counter(
            "patchflow_history_write_failures",
            "History database writes that failed (the wave's outbox retries them until they succeed).",
            registry=registry,
        )
        self.reboots = Counter(
            "patchflow_reboots",
            "Reboots patchflow ran after NoReboot installs (plan: reboot), by executor kind and outcome "
            "(succeeded, failed).",
            ["executor", "outcome"],
            registry=registry,
        )
        self.gate_reminders = Counter(
            "patchflow_gate_reminders",
            "Approval gates that waited past their reminder time without a decision (plan: remind_after).",
            registry=registry,
        )
        self.analysis_measurement = Gauge(
            "patchflow_analysis_measurement",
            "The latest value a canary analysis query measured (its first series; NaN: no value), by wave, stage "
            "and query.",
            ["wave_id", "stage", "query"],
            registry=registry,
        )
        self.analysis_measurements = Counter(
            "patchflow_analysis_measurements",
            "Canary analysis measurements taken, by verdict (successful, failed, inconclusive, error).",
            ["verdict"],
            registry=registry,
        )
        self.analysis_runs = Counter(
            "patchflow_analysis_runs",
            "Canary analyses finished, by result (successful, failed, inconclusive).",
            ["result"],
            registry=registry,
        )
        self._measured: OrderedDict[tuple[str, str, str], None] = OrderedDict()
        """The analysis gauges' label sets, least recently measured first."""
        self.alert_blocks = Counter(
            "patchflow_alert_blocks",
            "Dispatch checks that found the stage blocked (block_on_alerts), by reason (alerts, unreachable).",
            ["reason"],
            registry=registry,
        )

    def observe_reboot(self, executor: str, outcome: str) -> None:
        self.reboots.labels(executor=executor, outcome=outcome).inc()

    def observe_patch(self, executor: str, outcome: str, seconds: float) -> None:
        label = outcome if outcome in PATCH_OUTCOMES else "other"
        self.patch_duration.labels(executor=executor, outcome=label).observe(max(0.0, seconds))

    def record_api_error(self, executor: str, operation: str) -> None:
        self.executor_api_errors.labels(executor=executor, operation=operation).inc()

    def record_throttle(self, executor: str, operation: str) -> None:
        self.executor_throttles.labels(executor=executor, operation=operation).inc()

    def record_measurement(self, wave: str, stage: str, measurement: Measurement) -> None:
        value = measurement.values[0] if measurement.values else math.nan
        labels = (wave, stage, measurement.query)
        self.analysis_measurement.labels(*labels).set(value)
        self.analysis_measurements.labels(verdict=measurement.verdict).inc()
        # Wave ids must not grow the series count without bound: keep the newest waves' gauges only.
        self._measured.pop(labels, None)
        self._measured[labels] = None
        waves = list(dict.fromkeys(w for w, _, _ in self._measured))
        for old in waves[: max(0, len(waves) - MEASURED_WAVES_KEPT)]:
            for key in [k for k in self._measured if k[0] == old]:
                del self._measured[key]
                self.analysis_measurement.remove(*key)

    def history_database(self, *, reachable: bool, write: bool) -> None:
        self.history_database_up.set(1 if reachable else 0)
        if write and not reachable:
            self.history_write_failures.inc()


# ---------------------------------------------------------------------------------------------- the whole


class Metrics:
    """Every patchflow metric, registered on one injectable :class:`~prometheus_client.CollectorRegistry`:
    the wave and compliance state (:class:`WaveTracker`, :class:`ComplianceTally`, rendered at scrape time)
    and the event metrics (:class:`PatchEvents`).

    Production uses :data:`DEFAULT_METRICS`; tests build ``Metrics(CollectorRegistry(), clock=...)`` and
    assert with ``registry.get_sample_value(...)``.

    Args:
        registry: where every metric is registered (one ``Metrics`` per registry).
        clock: the current time, for approval ages and window time left (tests pass a fixed one).
        keep_finished_waves: how many finished (succeeded/failed/cancelled) waves keep their per-wave series;
            older ones are forgotten, so wave ids cannot grow the series count without bound.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        *,
        clock: Callable[[], datetime] = _utcnow,
        keep_finished_waves: int = 20,
    ) -> None:
        self.registry = registry
        self.waves = WaveTracker(clock=clock, keep_finished_waves=keep_finished_waves)
        self.compliance = ComplianceTally()
        self.events = PatchEvents(registry)
        registry.register(_StateCollector(self.waves, self.compliance, clock))
        self.gate_reminders = self.events.gate_reminders

    # ------------------------------------------------------------------------------------------ waves

    def update_from_status(self, status: WaveStatus) -> None:
        """Replace everything known about one wave with ``status`` (idempotent: same status, same metrics).

        A stage's approval wait starts when the wave says its gate started waiting
        (:attr:`~patchflow.core.wavemodel.StageStatus.waiting_since`), so the age is true from the first
        scrape, also in an API that restarted; only waves started before the status carried it fall back to
        the first time this process saw the stage waiting.
        """
        self.waves.update(status)

    def forget(self, wave_id: str) -> None:
        """Stop exporting a wave; it comes back only if a later status shows it unfinished."""
        self.waves.forget(wave_id)

    # ------------------------------------------------------------------------------------- compliance

    def update_compliance(self, results: Iterable[InstanceCompliance]) -> None:
        """Replace the compliance counts of every patch group present in ``results``.

        Groups absent from ``results`` keep their previous counts, so evaluating one patch group (one
        baseline) does not erase the others. Instances without a patch group count under ``none``.
        """
        self.compliance.update(results)

    def clear_compliance(self) -> None:
        """Forget every patch group's compliance (before a full re-evaluation that may drop groups)."""
        self.compliance.clear()

    # ------------------------------------------------------------------------------------------ events

    def observe_patch(self, executor: str, outcome: str, seconds: float) -> None:
        """One instance's install took ``seconds`` and ended in ``outcome`` (an executor status or ``error``)."""
        self.events.observe_patch(executor, outcome, seconds)

    def reboots(self, executor: str, outcomes: Iterable[Any]) -> None:
        """patchflow rebooted instances (the ``reboot_batch`` activity): one count per instance and outcome."""
        for outcome in outcomes:
            self.events.observe_reboot(executor, "succeeded" if outcome.status == "succeeded" else "failed")

    def record_api_error(self, executor: str, operation: str) -> None:
        """A backend API call failed for good (after the client's retries)."""
        self.events.record_api_error(executor, operation)

    def record_throttle(self, executor: str, operation: str) -> None:
        """A backend API attempt was refused for rate (the client may still retry and succeed)."""
        self.events.record_throttle(executor, operation)

    def record_measurement(self, wave: str, stage: str, measurement: Measurement) -> None:
        """A canary analysis measurement was taken (its value and verdict)."""
        self.events.record_measurement(wave, stage, measurement)

    def record_analysis(self, result: str) -> None:
        """A canary analysis finished with ``result``."""
        self.events.analysis_runs.labels(result=result).inc()

    def record_alert_block(self, reason: str) -> None:
        """A dispatch check found the stage blocked (``alerts`` firing, or Prometheus ``unreachable``)."""
        self.events.alert_blocks.labels(reason=reason).inc()

    def history_database(self, *, reachable: bool, write: bool = True) -> None:
        """The history database took (or refused, or did not answer) this process's last write — or, with
        ``write=False``, its start-up check."""
        self.events.history_database(reachable=reachable, write=write)


def _default_registry() -> CollectorRegistry:
    """patchflow's own registry, plus the process/platform/GC collectors prometheus-client's global one has.

    Own rather than ``prometheus_client.REGISTRY``: what ``/metrics`` shows is decided here, not by whichever
    library happens to register on the global registry.
    """
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


DEFAULT_REGISTRY = _default_registry()
DEFAULT_METRICS = Metrics(DEFAULT_REGISTRY)
"""The production instance: activities, executors and the API use it unless a test injects another."""


# ---------------------------------------------------------------------------------------------- exposition


def render(registry: CollectorRegistry = DEFAULT_REGISTRY, accept: str | None = None) -> tuple[bytes, str]:
    """The exposition body and its content type, for the API's ``GET /metrics`` route.

    A plain route instead of ``app.mount("/metrics", make_asgi_app(...))``: a mount answers ``GET /metrics``
    with ``307 → /metrics/``. Prometheus follows it, but curl, httpx and many health checkers do not, and
    the redirect also shows up in the OpenAPI-driven tests. Pass the request's ``Accept`` header to get
    OpenMetrics when the scraper asks for it.
    """
    if accept:
        encoder, content_type = choose_encoder(accept)
        return encoder(registry), content_type
    return generate_latest(registry), CONTENT_TYPE_LATEST


@dataclass
class Exporter:
    """A running prometheus-client HTTP endpoint (a daemon thread); :meth:`stop` frees the port."""

    server: WSGIServer
    thread: Thread

    @property
    def address(self) -> str:
        return str(self.server.server_address[0])

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def start_http_exporter(
    port: int, addr: str = "127.0.0.1", registry: CollectorRegistry = DEFAULT_REGISTRY
) -> Exporter:
    """Serve ``registry`` on ``http://addr:port/metrics`` from a daemon thread (port 0: any free port).

    Loopback by default: exposing metrics beyond the machine is an operator's decision.

    Raises:
        PatchflowError: the port is taken or the address is not local, with what to change.
    """
    try:
        server, thread = start_http_server(port, addr=addr, registry=registry)
    except OSError as exc:
        raise PatchflowError(
            f"cannot serve metrics on {addr}:{port} ({exc.strerror or exc}); choose another port with "
            "PATCHFLOW_WORKER_METRICS_PORT (one per worker on a host), or 'none' to disable the endpoint"
        ) from None
    return Exporter(server, thread)


# ---------------------------------------------------------------------------------------------- workers


def build_temporal_runtime(port: int, addr: str = "127.0.0.1") -> Runtime:
    """A Temporal ``Runtime`` whose SDK metrics are served by the SDK's own exporter on ``addr:port``.

    A separate port because the SDK's Rust core cannot register on a prometheus-client registry. The SDK's
    naming defaults are kept (durations in milliseconds, counters without ``_total``) because the
    community Temporal dashboards expect them; changing them later renames every series.
    The exporter lives as long as the Runtime object: keep a reference (``Runtime.set_default`` does), or
    garbage collection closes the port.

    Raises:
        PatchflowError: the port is taken.
    """
    from temporalio.runtime import PrometheusConfig, Runtime, TelemetryConfig

    try:
        return Runtime(
            telemetry=TelemetryConfig(
                metrics=PrometheusConfig(bind_address=f"{addr}:{port}"),
                global_tags={"service": "patchflow-worker"},
            )
        )
    except ValueError as exc:  # the SDK reports a bind failure as ValueError
        raise PatchflowError(
            f"cannot serve Temporal SDK metrics on {addr}:{port} ({exc}); choose another port with "
            "PATCHFLOW_TEMPORAL_METRICS_PORT, or 'none' to disable the endpoint"
        ) from None


@dataclass
class WorkerMetrics:
    """What :func:`serve_worker_metrics` started (either may be None when disabled)."""

    exporter: Exporter | None
    runtime: Runtime | None


_worker_metrics: WorkerMetrics | None = None
_worker_metrics_lock = threading.Lock()


def serve_worker_metrics(
    settings: Settings, *, registry: CollectorRegistry = DEFAULT_REGISTRY
) -> WorkerMetrics:
    """Start a worker process's two metrics endpoints; call once, **before** the first Temporal client.

    * ``settings.worker_metrics_port``: patchflow's own metrics (this process's registry);
    * ``settings.temporal_metrics_port``: the Temporal SDK's, through a Runtime made the process default
      (``Runtime.set_default``), which is why it must happen before ``Client.connect``.

    Idempotent per process: ``dev`` and ``worker`` can both call it; later calls return the first result.
    """
    global _worker_metrics
    with _worker_metrics_lock:
        if _worker_metrics is not None:
            return _worker_metrics
        addr = settings.metrics_bind_address
        own, sdk = settings.worker_metrics_port, settings.temporal_metrics_port
        if own is not None and own == sdk and own != 0:
            raise PatchflowError(
                f"PATCHFLOW_WORKER_METRICS_PORT and PATCHFLOW_TEMPORAL_METRICS_PORT are both {own}; the worker's "
                "metrics and the Temporal SDK's need one port each"
            )
        runtime = None
        if sdk is not None:
            from temporalio.runtime import Runtime

            runtime = build_temporal_runtime(sdk, addr)
            Runtime.set_default(runtime, error_if_already_set=False)
        exporter = start_http_exporter(own, addr, registry) if own is not None else None
        _worker_metrics = WorkerMetrics(exporter=exporter, runtime=runtime)
        return _worker_metrics


# ---------------------------------------------------------------------------------------------- refreshing


async def refresh_loop(
    fetch: Callable[[], Awaitable[Iterable[WaveStatus]]],
    *,
    metrics: Metrics = DEFAULT_METRICS,
    interval_seconds: float = 15.0,
) -> None:
    """Feed the wave statuses ``fetch`` returns into ``metrics`` every ``interval_seconds``, until cancelled.

    For the API process (the workers see batches, not waves). A failed fetch is logged and retried on the
    next tick: stale state metrics are better than a dead refresher.
    """
    while True:
        try:
            for status in await fetch():
                metrics.update_from_status(status)
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - Temporal down, a wave not answering: try again next tick
            log.warning("refreshing wave metrics failed; retrying in %.0fs", interval_seconds, exc_info=True)
        await asyncio.sleep(interval_seconds)


# ---------------------------------------------------------------------------------------------- boto3


def instrument_boto3_client(client: Any, *, executor: str, metrics: Metrics = DEFAULT_METRICS) -> Any:
    """Count a boto3 client's throttled attempts and failed calls, by operation; returns the client.

    Uses botocore's event hooks, so the executor's code stays unchanged: ``needs-retry`` fires once per
    attempt (a throttled attempt counts even when the retry succeeds), ``after-call`` and
    ``after-call-error`` once per call, after the retries (a final error counts once). The handlers
    return None, so they never change botocore's retry decisions.
    """

    def on_attempt(response: Any = None, event_name: str = "", **_: Any) -> None:
        if response is None:  # a connection error: botocore retries it, the final one is counted below
            return
        if _error_code(response[1]) in THROTTLE_ERROR_CODES or getattr(response[0], "status_code", 0) == 429:
            metrics.record_throttle(executor, _operation_name(event_name))

    def on_call(parsed: Any = None, event_name: str = "", **_: Any) -> None:
        if _error_code(parsed):
            metrics.record_api_error(executor, _operation_name(event_name))

    def on_call_error(event_name: str = "", **_: Any) -> None:
        metrics.record_api_error(executor, _operation_name(event_name))

    events = client.meta.events
    events.register("needs-retry", on_attempt)
    events.register("after-call", on_call)
    events.register("after-call-error", on_call_error)
    return client


def _error_code(parsed: Any) -> str | None:
    if isinstance(parsed, dict):
        error = parsed.get("Error")
        if isinstance(error, dict) and error.get("Code"):
            return str(error["Code"])
    return None


def _operation_name(event_name: str) -> str:
    """``SendCommand`` from ``after-call.ssm.SendCommand`` (every botocore event names the operation last)."""
    return event_name.rsplit(".", 1)[-1] if event_name.count(".") >= 2 else "unknown"
