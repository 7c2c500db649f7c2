"""The dataclasses that cross the Temporal boundary: workflow, activity, update and query payloads.

House rule: one dataclass in, one out; new fields get defaults, at the end (old histories must still
decode). Everything here is plain data — no behaviour that touches I/O — so workflows import it through
``workflow.unsafe.imports_passed_through()``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from patchflow.core.analysis import AlertBlockSpec, AnalysisSpec, AnalysisSummary, Measurement
from patchflow.core.freezes import FreezePeriod
from patchflow.core.hooks import Hooks, HookStep, HookStepRecord
from patchflow.core.instances import Package, RepoSource
from patchflow.core.reboots import RebootSpec
from patchflow.core.windows import WindowSpec

# Wave states (the CLI/API contract).
WAVE_RUNNING = "running"
WAVE_WAITING_APPROVAL = "waiting_approval"
WAVE_HALTED = "halted"
WAVE_SUCCEEDED = "succeeded"
WAVE_FAILED = "failed"
WAVE_CANCELLED = "cancelled"
WAVE_FINAL_STATES = frozenset({WAVE_SUCCEEDED, WAVE_FAILED, WAVE_CANCELLED})

# Stage states.
STAGE_NOT_STARTED = "not_started"
STAGE_WAITING_APPROVAL = "waiting_approval"
STAGE_WAITING_WINDOW = "waiting_window"
STAGE_RUNNING = "running"
STAGE_SOAKING = "soaking"
STAGE_HALTED = "halted"
STAGE_SUCCEEDED = "succeeded"
STAGE_FAILED = "failed"
STAGE_ROLLED_BACK = "rolled_back"
STAGE_CANCELLED = "cancelled"

#: Every wave and stage state, in lifecycle order (metrics export each one; the database validates against them).
WAVE_STATES: tuple[str, ...] = (
    WAVE_RUNNING,
    WAVE_WAITING_APPROVAL,
    WAVE_HALTED,
    WAVE_SUCCEEDED,
    WAVE_FAILED,
    WAVE_CANCELLED,
)
STAGE_STATES: tuple[str, ...] = (
    STAGE_NOT_STARTED,
    STAGE_WAITING_APPROVAL,
    STAGE_WAITING_WINDOW,
    STAGE_RUNNING,
    STAGE_SOAKING,
    STAGE_HALTED,
    STAGE_SUCCEEDED,
    STAGE_FAILED,
    STAGE_ROLLED_BACK,
    STAGE_CANCELLED,
)


@dataclass
class ExecutorRef:
    """Everything an activity needs to build the executor (workflows never build one)."""

    kind: str
    fleet_path: str | None = None
    state_path: str | None = None
    time_scale: float = 1.0
    # SSM executor (resolved from the plan and settings when the wave starts, so every worker agrees):
    region: str | None = None
    endpoint_url: str | None = None
    bucket: str | None = None
    prefix: str = "patchflow"
    reboot_option: str = "RebootIfNeeded"
    health_command: str | None = None
    cloudwatch_log_group: str | None = None
    max_requests_per_second: float | None = None
    """Client-side cap on AWS requests per worker (None: no cap)."""
    poll_initial_seconds: float = 2.0
    poll_max_seconds: float = 30.0
    # SSH executor (reboot_option and health_command above apply too):
    inventory_path: str | None = None
    max_connections: int = 10


@dataclass
class StageInput:
    """One stage of a wave, fully resolved by the starter (paths, limits as the plan wrote them)."""

    name: str
    window: WindowSpec
    max_concurrency: str
    """As the plan wrote it: ``"10"`` or ``"25%"`` (percentages resolve against the stage's target count)."""
    max_errors: str
    soak_seconds: int = 0
    gate: str = "auto"
    approvers: list[str] = field(default_factory=list)
    max_unhealthy: int = 0
    health_url: str | None = None
    on_failure: str = "halt"
    patch_group: str | None = None
    instance_ids: list[str] = field(default_factory=list)
    """Explicit targets (dispatched in the listed order); empty when ``patch_group`` is used."""
    ramp: str = "none"
    """``none`` or ``exponential`` (1, 2, 4, … instances up to max_concurrency; see
    :func:`patchflow.core.ratecontrol.ramp_allowance`)."""
    cutoff_behavior: str = "carry_over"
    """``carry_over``, ``continue`` or ``cancel``: what the window's cutoff does (:mod:`patchflow.core.ratecontrol`)."""
    expire_after_seconds: int = 0
    """Approval gate: no decision within this long and the gate expires — the wave ends failed, as if
    rejected. 0 = the gate waits for a decision as long as it takes."""
    remind_after_seconds: int = 0
    """Approval gate: remind the approvers once after this long without a decision (audit entry, worker log,
    ``patchflow_gate_reminders``). 0 = half of ``expire_after_seconds`` (no reminder when that is 0 too)."""
    disruption_max: str = ""
    """``disruption_budget.max`` as the plan wrote it (``"1"``, ``"10%"``: per group, against its size in the
    stage); empty: no disruption budget (:mod:`patchflow.core.disruption`)."""
    disruption_per: str = ""
    """``disruption_budget.per``: ``availability_zone`` or ``tag:<Key>``."""
    rollout: str = "concurrent_zones"
    """``concurrent_zones`` or ``zone_by_zone`` (one availability zone finished before the next starts)."""
    hooks: Hooks | None = None
    """Lifecycle hooks per instance (:mod:`patchflow.core.hooks`); None: the install alone, as before hooks."""
    canary_count: int = 0
    """``canary.count``: patch these first targets, soak, analyse, then the rest (0: no canary)."""
    canary_soak_seconds: int = 0
    """``canary.soak_seconds``: between the canaries' last install and their analysis."""
    analysis: AnalysisSpec | None = None
    """``gate.analysis`` (then ``gate`` is ``analysis``): of the canaries, or else of what earlier stages
    patched, before promotion into the stage."""
    block_on_alerts: AlertBlockSpec | None = None
    """No dispatch while a matching Prometheus alert fires (the stage's, else the plan's)."""
    reboot: RebootSpec | None = None
    """The stage's ``reboot:`` (:mod:`patchflow.core.reboots`): installs with ``NoReboot``, patchflow reboots.
    None: the executor's ``reboot_option`` decides, exactly as before."""


@dataclass
class WaveInput:
    wave_id: str
    plan_name: str
    patch_set_id: str
    patches: list[Package]
    """The pinned patch set: every stage installs exactly these versions."""
    executor: ExecutorRef
    stages: list[StageInput]
    undeliverable_counts_as_error: bool = False
    heartbeat_timeout_seconds: int = 30
    """How long a dead worker's patch batch goes unnoticed before another worker resumes it."""
    started_by: str = ""
    history_event_limit: int = 0
    """Stage runs continue as new past this many history events; 0 = when Temporal suggests it (~4,000)."""
    record_history: bool = False
    """Record the wave's progress in the history database (``patchflow db``) through the record_wave activity."""
    slack_channel: str | None = None
    """The plan's Slack channel for wave messages (else the API's PATCHFLOW_SLACK_CHANNEL)."""
    freezes: list[FreezePeriod] = field(default_factory=list)
    """Change freezes (plan + global), expanded to UTC periods when the wave started: no window opens in one."""
    freeze_override_by: str = ""
    """Emergency waves: who approved ignoring the freezes (then ``freezes`` is empty); audited at the start."""
    kind: str = "standard"
    """``standard`` (from a plan, by hand or by a schedule) or ``emergency`` (``patchflow emergency``)."""
    task_queue: str = ""
    """The plan's task queue ("" = the starter's ``PATCHFLOW_TASK_QUEUE``): where the wave is started."""
    sources: list[RepoSource] = field(default_factory=list)
    """The patch set's baseline ``Sources``: hosts of the products they name install from exactly these
    repositories, and keep their own afterwards (at most 20 sources of 1,024 characters: no fleet-sized data)."""


@dataclass
class StageRunInput:
    """One run of a stage inside one maintenance window (a child workflow; continues as new when long)."""

    wave_id: str
    stage: str
    instance_ids: list[str]
    """Still to dispatch, in dispatch order."""
    patches: list[Package]
    executor: ExecutorRef
    max_concurrency: int
    max_errors: int
    batch_size: int
    attempt: int = 0
    """Bumped when an operator resumes a stage, so re-dispatched instances get fresh operation ids."""
    errors_so_far: int = 0
    cutoff: datetime | None = None
    """No new instance starts at or after this instant (window end − Cutoff); None = no limit."""
    undeliverable_counts_as_error: bool = False
    heartbeat_timeout_seconds: int = 30
    states: dict[str, str] = field(default_factory=dict)
    """Carried across continue-as-new: final states of instances already done in this run."""
    details: dict[str, str] = field(default_factory=dict)
    history_event_limit: int = 0
    """Continue as new past this many history events; 0 = when Temporal suggests it."""
    history_outbox: bool = False
    """The wave records the run's instance results itself (``record_wave`` with ``results``): the batch
    activities never write the history database. False for runs of waves started before the outbox."""
    ramp: str = "none"
    """``none`` or ``exponential``: the scheduler's ramp (each window's run ramps up from one instance)."""
    dispatched_so_far: int = 0
    """Carried across continue-as-new: instances this run dispatched before (the ramp's position)."""
    cancel_at_cutoff: bool = False
    """``cutoff_behavior: cancel``: at ``cutoff``, cancel the in-flight instances too (SSM: CancelCommand)."""
    sources: list[RepoSource] = field(default_factory=list)
    """The patch set's baseline ``Sources`` (:attr:`WaveInput.sources`)."""
    disruption_groups: dict[str, list[str]] = field(default_factory=dict)
    """Disruption budget: group → its instances of ``instance_ids`` (empty: no budget)."""
    disruption_limits: dict[str, int] = field(default_factory=dict)
    """Disruption budget: group → instances allowed out at once (resolved against the group's size in the
    whole stage, so a later run or continue-as-new keeps the same limits)."""
    zones: dict[str, list[str]] = field(default_factory=dict)
    """``rollout: zone_by_zone``: zone → its instances of ``instance_ids``, zones in rollout order (empty: no
    zone order)."""
    disruption_budget: str = ""
    """The budget as the plan wrote it (``10% per tag:Cluster``), for ``wave status``."""
    hooks: Hooks | None = None
    """The stage's lifecycle hooks (a few steps, never per instance); None: the install alone."""
    hook_steps: dict[str, list[HookStepRecord]] = field(default_factory=dict)
    """Carried across continue-as-new: the hook step records of instances already done in this run."""
    block_on_alerts: AlertBlockSpec | None = None
    """Before each batch is dispatched, no matching alert may fire (:attr:`StageInput.block_on_alerts`)."""
    reboot_policy: str = ""
    """The stage's ``reboot.policy`` when patchflow reboots right after each install, in the instance's batch
    (``if_needed`` or ``always``); "" = no reboot step (the install's own reboot option applies)."""
    pending_reboot: list[str] = field(default_factory=list)
    """Carried across continue-as-new: instances of this run patched and still waiting for a reboot."""


@dataclass
class StageRunResult:
    states: dict[str, str]
    """Final state per attempted instance (succeeded / failed / cancelled)."""
    details: dict[str, str]
    remaining: list[str]
    """Not started: the window closed, an operator halted, or the error budget stopped dispatch."""
    errors: int
    budget_exceeded: bool
    stopped: bool
    """An operator asked the run to stop (halt or cancel)."""
    cut_off: bool = False
    """``cancel_at_cutoff``: the cutoff passed with work left (in-flight instances cancelled, or never started)."""
    hook_steps: dict[str, list[HookStepRecord]] = field(default_factory=dict)
    """instance id → what its lifecycle hooks did (only instances of stages with hooks)."""
    halt_reason: str = ""
    """Why the run stopped dispatching by itself (``on_hook_failure: halt_stage``); empty for an operator's stop."""
    pending_reboot: list[str] = field(default_factory=list)
    """Succeeded instances whose patches wait for a reboot (SSM: ``INSTALLED_PENDING_REBOOT``): reboot debt."""


#: Most instances one page of a status query carries: ≈ 100 bytes each (id, state, detail), so a page stays
#: under 256 KB (issue 17: no payload grows with the fleet).
MAX_PAGE_INSTANCES = 2000


@dataclass
class InstancePageInput:
    """Which instances of a stage a paged status query returns (``instances_page``, ``progress_page``)."""

    stage: str
    """The stage's name (ignored by a stage run, which has one)."""
    offset: int = 0
    """Instances to skip, in the order the stage first saw them."""
    limit: int = MAX_PAGE_INSTANCES
    """At most this many (capped at :data:`MAX_PAGE_INSTANCES`)."""
    ids: list[str] = field(default_factory=list)
    """When given, exactly these instances (those the answerer knows), instead of ``offset``/``limit``: a paged
    ``wave status`` asks a running stage run for the live states of the wave's page."""
    counts: bool = False
    """Also count the states of *all* instances (:attr:`InstancePage.counts`): a paged ``wave status`` shows
    how many instances are in each state without fetching them."""


@dataclass
class InstancePage:
    instances: dict[str, str]
    """instance id → state, for this page."""
    details: dict[str, str]
    """instance id → detail, for this page's instances that have one."""
    total: int
    """How many instances the stage (or stage run) has in all pages."""
    hook_steps: dict[str, list[HookStepRecord]] = field(default_factory=dict)
    """instance id → its lifecycle hook step records, for this page's instances that have them."""
    counts: dict[str, int] = field(default_factory=dict)
    """state → how many instances (of all pages) are in it; only when the request asked (``counts``)."""


def instance_page(
    instances: dict[str, str],
    details: dict[str, str],
    page: InstancePageInput,
    hook_steps: dict[str, list[HookStepRecord]] | None = None,
) -> InstancePage:
    """One page of ``instances`` (insertion order) with the details (and hook step records) of its instances."""
    if page.ids:
        ids = [i for i in page.ids[:MAX_PAGE_INSTANCES] if i in instances]
    else:
        limit = max(0, min(page.limit, MAX_PAGE_INSTANCES))
        offset = max(0, page.offset)
        ids = list(itertools.islice(instances, offset, offset + limit))
    steps = hook_steps or {}
    return InstancePage(
        instances={i: instances[i] for i in ids},
        details={i: details[i] for i in ids if i in details},
        total=len(instances),
        hook_steps={i: steps[i] for i in ids if i in steps},
        counts=dict(Counter(instances.values())) if page.counts else {},
    )


@dataclass
class StageProgress:
    """What a running stage run reports to ``wave status``."""

    states: dict[str, str]
    errors: int
    max_errors: int
    max_concurrency: int
    disruption: str = ""
    """The disruption budget now: the budget, the groups at their limit, the zone rolling out (empty: none)."""
    hook_steps: dict[str, list[HookStepRecord]] = field(default_factory=dict)
    """instance id → lifecycle hook step records so far (filled from ``progress_page``)."""
    blocked_by: str = ""
    """Why dispatch waits (``block_on_alerts``): the alerts that fire, or Prometheus unreachable."""


@dataclass
class PatchBatchInput:
    executor: ExecutorRef
    wave_id: str
    stage: str
    instance_ids: list[str]
    patches: list[Package]
    attempt: int = 0
    cancel: bool = False
    """wait_patch_batch: the wave was cancelled while these installs were being sent; cancel them at once
    instead of waiting for them."""
    record_results: bool = True
    """wait_patch_batch writes each result to the history database itself (stage runs of waves started before
    the history outbox); False when the wave records them (:attr:`StageRunInput.history_outbox`)."""
    cancel_reason: str = ""
    """Why ``cancel`` (the instances' detail); empty: an operator's cancel."""
    sources: list[RepoSource] = field(default_factory=list)
    """The patch set's baseline ``Sources`` (:attr:`WaveInput.sources`); installs only."""


@dataclass
class RebootBatchInput:
    """Reboot these instances now (the ``reboot_batch`` activity), each at most once per operation id."""

    executor: ExecutorRef
    wave_id: str
    stage: str
    instance_ids: list[str]
    attempt: int = 0


@dataclass
class InstanceOutcome:
    instance_id: str
    status: str
    """Executor status: succeeded, failed, timed_out, undeliverable, cancelled."""
    counts_as_error: bool
    detail: str = ""
    changed: int = 0
    pending_reboot: bool = False
    """The install succeeded and the instance waits for a reboot (``InstallResult.pending_reboot``)."""
    rebooted: bool = False
    """patchflow rebooted the instance after its install (the ``reboot_batch`` activity)."""


@dataclass
class PatchBatchResult:
    outcomes: list[InstanceOutcome]


@dataclass
class HookPhaseInput:
    """Run one lifecycle phase's steps on a batch of instances (the ``run_hook_phase`` activity)."""

    executor: ExecutorRef
    """Builds the executor for command steps; its ``region``/``endpoint_url`` also serve the AWS built-ins."""
    wave_id: str
    stage: str
    phase: str
    steps: list[HookStep]
    instance_ids: list[str]
    attempt: int = 0
    failed_instance_ids: list[str] = field(default_factory=list)
    """on_exit: instances whose install or hooks failed (``ebs_snapshot`` with ``restore_on_failure`` restores
    them)."""
    undo: dict[str, list[str]] = field(default_factory=dict)
    """on_exit: instance id → what pre_install recorded for undoing (elb_deregister's ``ARN|port`` targets)."""
    rebooted_instance_ids: list[str] = field(default_factory=list)
    """post_reboot: instances the reboot step rebooted; the others run post_reboot only when their install left
    no reboot pending (else their steps are skipped)."""


@dataclass
class HookPhaseResult:
    records: dict[str, list[HookStepRecord]]
    """instance id → the phase's step records, in step order."""
    failed: dict[str, str] = field(default_factory=dict)
    """instance id → which step failed and why (instances absent here passed the phase)."""


@dataclass
class ResolveTargetsInput:
    executor: ExecutorRef
    patch_group: str | None = None
    instance_ids: list[str] = field(default_factory=list)
    group_by: str = ""
    """A disruption budget's ``per`` (``availability_zone``, ``tag:<Key>``): also return the targets' groups."""
    zones: bool = False
    """``rollout: zone_by_zone``: also return the targets' availability zones."""


@dataclass
class ResolveTargetsResult:
    instance_ids: list[str]
    """Dispatch order: explicit ids as listed, a patch group sorted by instance id."""
    missing: list[str] = field(default_factory=list)
    """Explicit ids the executor does not know (reported, not silently dropped)."""
    offline: list[str] = field(default_factory=list)
    groups: dict[str, list[str]] = field(default_factory=dict)
    """``group_by``: group → instance ids (groups in order of first appearance, ids in dispatch order;
    instances without the key in group ``(none)``)."""
    zones: dict[str, list[str]] = field(default_factory=dict)
    """``zones``: availability zone → instance ids, the same way (unknown zone: ``(none)``)."""


@dataclass
class GateReminder:
    """An approval gate has waited ``waited_seconds`` for a decision (the ``remind_gate`` activity)."""

    wave_id: str
    plan_name: str
    stage: str
    approvers: list[str]
    waited_seconds: int
    expires_at: datetime | None = None


@dataclass
class StageAttempt:
    """One attempt of one stage (an operator resume starts the next one)."""

    stage: str
    attempt: int


@dataclass
class RecordWaveInput:
    """Ask an activity to snapshot the wave into the history database (the workflow never touches it)."""

    wave_id: str
    at: datetime
    """The workflow's time of the snapshot: a retried activity carries the same instant, so it cannot move
    the recorded wave backwards."""
    outbox: bool = False
    """Sent by the wave's history outbox: a failed write fails the activity, which is retried until the
    database takes it (history is never lost). False (waves started before the outbox): failures are logged."""
    executor: ExecutorRef | None = None
    """Where ``results`` are read from (the executor's operation records)."""
    results: list[StageAttempt] = field(default_factory=list)
    """Stage attempts whose instance results (status, versions before and after) to record as well."""


@dataclass
class WindowInput:
    spec: WindowSpec
    after: datetime
    freezes: list[FreezePeriod] = field(default_factory=list)
    """No window may open inside these periods (see :mod:`patchflow.core.freezes`)."""


@dataclass
class WindowResult:
    found: bool
    start: datetime | None = None
    end: datetime | None = None
    cutoff: datetime | None = None
    note: str = ""
    """Why the window is later or shorter than the schedule alone says (a change freeze), for the operator."""
    freeze_start: datetime | None = None
    """The first change freeze after the window opens begins here (None: none ahead). No instance starts in it,
    whatever the stage's ``cutoff_behavior`` (when it cuts the window, ``end`` and ``cutoff`` are at most this)."""


@dataclass
class RollbackInput:
    executor: ExecutorRef
    wave_id: str
    stage: str
    instance_ids: list[str]
    attempt: int = 0


@dataclass
class RollbackResult:
    rolled_back: list[str]
    failed: dict[str, str] = field(default_factory=dict)


@dataclass
class HealthInput:
    executor: ExecutorRef
    instance_ids: list[str]
    url: str | None = None


@dataclass
class HealthReport:
    unhealthy: dict[str, str]
    """instance id (or the URL) → why it failed the check."""
    checked: int = 0


@dataclass
class GateDecision:
    """An approve/reject Update."""

    stage: str
    who: str
    comment: str = ""


@dataclass
class OperatorAction:
    """A halt/resume/cancel/rollback Update."""

    who: str
    reason: str = ""


@dataclass
class AuditEntry:
    at: datetime
    who: str
    action: str
    stage: str = ""
    comment: str = ""


@dataclass
class StageStatus:
    name: str
    state: str = STAGE_NOT_STARTED
    instances: dict[str, str] = field(default_factory=dict)
    details: dict[str, str] = field(default_factory=dict)
    errors: int = 0
    max_errors: int | None = None
    max_concurrency: int | None = None
    window_start: datetime | None = None
    window_cutoff: datetime | None = None
    active_run_id: str | None = None
    """Workflow id of the running stage run, whose live progress ``wave status`` merges in."""
    note: str = ""
    waiting_since: datetime | None = None
    """When the stage's approval gate started waiting (workflow time); set on entering ``waiting_approval``,
    kept afterwards. None for stages that never waited (and for waves started before the field existed)."""
    disruption: str = ""
    """The stage's disruption budget (``10% per tag:Cluster; zone_by_zone``); while it runs, also the groups at
    their limit and the zone rolling out. Empty: no budget."""
    hook_steps: dict[str, list[HookStepRecord]] = field(default_factory=dict)
    """instance id → what its lifecycle hooks did (phase, step, status, duration, output tail); only stages
    with hooks. Paged like ``instances`` (``instances_page``)."""
    measurements: list[Measurement] = field(default_factory=list)
    """The analysis' measurements, newest last (at most :data:`~patchflow.core.analysis.MAX_KEPT_MEASUREMENTS`;
    ``analysis`` counts them all)."""
    analysis: AnalysisSummary | None = None
    """The stage's analysis (``gate.analysis``): per query how its measurements went, and the result."""
    blocked_by: str = ""
    """Why dispatch waits right now (``block_on_alerts``); empty when it does not."""
    reboot_debt: dict[str, datetime] = field(default_factory=dict)
    """Reboot debt: instance id → since when it waits for a reboot (its install finished with
    ``pending_reboot``); an instance leaves it when rebooted. Grows with the stage, like ``instances``:
    summaries carry only the counts below."""
    reboot_debt_count: int = 0
    """``len(reboot_debt)`` (kept in summaries, which leave the per-instance dicts out)."""
    reboot_deadline_days: int = 0
    """The stage's ``reboot.deadline_days``: debt older than this is overdue (0 = no deadline)."""
    reboot_window_start: datetime | None = None
    """The reboot window the stage's debt waits for (``reboot.window``); None: none scheduled."""
    reboot_state: str = ""
    """"" (no reboot window), ``waiting_window``, ``done`` or ``cancelled``: the stage's reboot window."""
    reboot_debt_since: datetime | None = None
    """The oldest reboot debt of the stage (kept in summaries; per instance: ``reboot_debt`` and the details)."""
    instances_total: int | None = None
    """Set by a *paged* ``wave status`` (:func:`patchflow.control.waves.wave_status` with ``limit``), never by the
    workflow: how many instances the stage has in all; ``instances`` then holds one page of them."""
    state_counts: dict[str, int] = field(default_factory=dict)
    """With :attr:`instances_total`: state → how many of the stage's instances are in it (all pages)."""


def analysis_json(st: StageStatus) -> dict[str, Any]:
    """A stage's alert blocking, analysis and measurements as JSON (``wave status --format json``, the API and
    the history database): keys present only when the plan uses them."""
    out: dict[str, Any] = {}
    if st.blocked_by:
        out["blocked_by"] = st.blocked_by
    if st.analysis is not None:
        out["analysis"] = {
            "result": st.analysis.result,
            "instances": st.analysis.instances,
            "queries": {name: asdict(tally) for name, tally in st.analysis.tallies.items()},
        }
    if st.measurements:
        out["measurements"] = [{**asdict(m), "at": m.at.isoformat()} for m in st.measurements]
    return out


@dataclass
class RebootWindowInput:
    """A stage's reboot window (``RebootWindowWorkflow``): wait for it, then reboot ``instance_ids``."""

    wave_id: str
    stage: str
    instance_ids: list[str]
    executor: ExecutorRef
    window: WindowSpec
    max_concurrency: int
    max_errors: int
    """Reboot failures tolerated; the next one stops rebooting (the rest stay reboot debt)."""
    attempt: int = 0
    heartbeat_timeout_seconds: int = 30
    freezes: list[FreezePeriod] = field(default_factory=list)


@dataclass
class RebootWindowResult:
    rebooted: list[str]
    failed: dict[str, str] = field(default_factory=dict)
    """instance id → why its reboot failed (it stays reboot debt)."""
    window_start: datetime | None = None
    """When the reboot window opened (None: the schedule had no future window)."""
    note: str = ""


@dataclass
class WaveStatus:
    wave_id: str
    plan_name: str
    state: str
    patch_set_id: str
    stages: list[StageStatus]
    reason: str = ""
    audit: list[AuditEntry] = field(default_factory=list)
    kind: str = "standard"
    """``standard`` or ``emergency`` (from :attr:`WaveInput.kind`)."""


@dataclass
class WaveResult:
    status: WaveStatus


@dataclass
class ScheduledWaveInput:
    """What a Temporal Schedule starts on each firing: a plan to turn into a fresh wave (see
    :mod:`patchflow.core.schedules`)."""

    schedule_id: str
    plan_path: str
    """The plan file, as the workers see it: the baseline is evaluated afresh at every firing."""
    wait_days: int = 0
    """Calendar days to wait after the firing before the wave starts (offsets the calendar cannot express)."""
    at: str = "02:00"
    """The schedule's wall-clock start time (HH:MM) in ``timezone``: the wave starts then, ``wait_days`` later."""
    timezone: str = "UTC"
    started_by: str = ""
    """Who created the schedule (the wave is started by ``schedule:<id>`` on their behalf)."""
    plan_name: str = ""
    check_schedule: bool | None = None
    """Before starting a wave after a wait, check that the schedule still exists and is not paused (a firing
    of a schedule paused or deleted during the wait is dropped). None: only when a schedule started this run."""


@dataclass
class ScheduleCheckInput:
    schedule_id: str


@dataclass
class ScheduleCheckResult:
    allowed: bool
    reason: str = ""


@dataclass
class WaveStartInput:
    """When a wave fired at ``fired_at`` starts after ``wait_days`` (wall clock resolved in an activity)."""

    fired_at: datetime
    wait_days: int
    at: str
    timezone: str


@dataclass
class WaveStartResult:
    starts_at: datetime


@dataclass
class PrepareWaveInput:
    """Evaluate the plan's baseline now, pin the patch set and build the wave's input."""

    plan_path: str
    wave_id: str
    started_by: str


@dataclass
class PrepareWaveResult:
    wave: WaveInput | None
    """None: no wave starts (``skipped`` says why)."""
    skipped: str = ""


@dataclass
class ScheduledWaveResult:
    wave_id: str
    state: str
    patch_set_id: str
    reason: str = ""
