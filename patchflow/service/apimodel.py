"""The JSON shapes of patchflow's REST API (:mod:`patchflow.service.api`): request bodies, responses and errors.

Pydantic models, so FastAPI validates requests and writes ``deploy/openapi.json`` from them. Request models
forbid unknown fields (a typo fails loudly, and no body can smuggle in an identity) and refuse text that no
name, path or comment needs (control characters, lone surrogates) before it reaches Temporal or the
database. Response models mirror the CLI's ``--format json`` output, which stays the one contract.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from patchflow.core.analysis import finite
from patchflow.core.wavemodel import WAVE_STATES
from workflows.wave import MAX_COMMENT

MAX_TEXT = 200
"""Names, ids, paths: wave ids embed a plan name and a timestamp; the history database stores 200."""

MAX_DOCUMENT = 16_000_000
"""Characters of one uploaded document — a 20,000-patch catalog is about 5 MB of JSON (the body as a whole is
capped by ``PATCHFLOW_API_MAX_BODY_BYTES``)."""

EARLIEST_AT = datetime(2000, 1, 1, tzinfo=UTC)
LATEST_AT = datetime(2200, 1, 1, tzinfo=UTC)

WaveStateName = Literal["running", "waiting_approval", "halted", "succeeded", "failed", "cancelled"]
assert set(get_args(WaveStateName)) == set(WAVE_STATES), "WaveStateName must list every wave state"

PLAN_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$"  # the plan name rule of patchflow.core.plans
PATCH_SET_ID_PATTERN = r"^ps-[0-9a-f]{24}$"
_NO_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class _Model(BaseModel):
    # The docstrings under fields become their descriptions in deploy/openapi.json.
    model_config = ConfigDict(use_attribute_docstrings=True)


# ---------------------------------------------------------------------------------------------- errors


class ProblemOut(_Model):
    """One located problem: a request field (``body.stage``) or a place in an uploaded document."""

    path: str
    message: str
    line: int | None = None


class ErrorDetail(_Model):
    code: str
    """Stable, machine-readable: unauthorized, forbidden, not_found, refused, invalid_request, invalid_input,
    too_large, unavailable, internal …"""
    message: str
    """What went wrong and what to do, for a human."""
    problems: list[ProblemOut] = []


class ErrorResponse(_Model):
    error: ErrorDetail


# ---------------------------------------------------------------------------------------------- request types


def _plain(value: str) -> str:
    """Refuse what no name, path or comment needs and what breaks the stores behind the API: control
    characters (PostgreSQL cannot store NUL; file APIs reject it) and lone surrogates (not encodable)."""
    if _NO_CONTROL.search(value):
        raise ValueError("control characters are not allowed")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("not valid Unicode text (lone surrogate)") from None
    return value


def _sane_instant(value: datetime) -> datetime:
    """Keep evaluation times in a range where window and delay arithmetic cannot overflow."""
    if not EARLIEST_AT <= value < LATEST_AT:
        raise ValueError(f"must be between {EARLIEST_AT.year} and {LATEST_AT.year}")
    return value.astimezone(UTC)


PlainText = Annotated[str, AfterValidator(_plain)]
Instant = Annotated[AwareDatetime, AfterValidator(_sane_instant)]


class _Request(_Model):
    # Unknown fields are errors: a typo must not pass silently, and no body can smuggle in an identity.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)


class StartWave(_Request):
    plan: PlainText = Field(min_length=1, max_length=4096, examples=["demo-plan.yaml"])
    """Path of the plan file inside the server's plans directory (``PATCHFLOW_API_PLANS_DIR``, by default
    ``$PATCHFLOW_DATA_DIR/plans``), relative to it or absolute."""
    patch_set: str | None = Field(default=None, pattern=PATCH_SET_ID_PATTERN)
    """Install this stored patch set instead of evaluating the baseline now."""
    allow_concurrent: bool = False
    """Start even while another wave of the plan runs (both then patch the same fleet); refused (409) otherwise."""


class OperatorRequest(_Request):
    comment: PlainText = Field(default="", max_length=MAX_COMMENT)
    """Why (kept in the wave's audit log)."""


class GateRequest(_Request):
    stage: PlainText = Field(min_length=1, max_length=MAX_TEXT)
    """The stage whose approval gate this answers."""
    comment: PlainText = Field(default="", max_length=MAX_COMMENT)
    """Why (kept in the wave's audit log and the gate decision)."""


class PlanRequest(_Request):
    plan: PlainText = Field(min_length=1, max_length=4096)
    """Path of the plan file inside the server's plans directory (``PATCHFLOW_API_PLANS_DIR``, by default
    ``$PATCHFLOW_DATA_DIR/plans``), relative to it or absolute."""


class DryRunRequest(PlanRequest):
    at: Instant | None = None
    """Evaluate the baseline and windows as of this instant (RFC 3339 with an offset); default now."""


class BaselineRequest(_Request):
    baseline: PlainText = Field(min_length=1, max_length=MAX_DOCUMENT)
    """The baseline document (YAML or JSON text)."""


class EvaluateRequest(BaselineRequest):
    catalog: PlainText = Field(min_length=1, max_length=MAX_DOCUMENT)
    """The patch catalog (JSON or YAML text)."""
    at: Instant | None = None
    """Evaluation time; default now."""


class ComplianceRequest(EvaluateRequest):
    inventory: PlainText = Field(min_length=1, max_length=MAX_DOCUMENT)
    """The instance inventory (JSON or YAML text)."""


# ---------------------------------------------------------------------------------------------- response types


class HealthOut(_Model):
    status: Literal["ok"] = "ok"


class CheckOut(_Model):
    ok: bool
    message: str


class ReadinessOut(_Model):
    status: Literal["ready", "unready"]
    checks: dict[str, CheckOut]


class WaveSummary(_Model):
    wave_id: str
    plan: str | None = None
    state: str | None = None
    """Wave state; null when the wave could not be asked (no worker answered in time)."""
    workflow_status: str | None = None
    """Temporal's execution status (RUNNING, COMPLETED, TERMINATED …)."""
    started: datetime | None = None
    patch_set_id: str | None = None
    reason: str = ""


class WaveList(_Model):
    waves: list[WaveSummary]


class HookStepOut(_Model):
    """What one lifecycle hook step did on the instance."""

    phase: str
    """pre_install, post_install, post_reboot or on_exit."""
    step: str
    status: str
    """succeeded, failed or skipped."""
    duration_seconds: float
    output: str
    """The tail of the step's output, or why it failed or was skipped (at most 200 characters)."""


class InstanceOut(_Model):
    id: str
    state: str
    detail: str | None = None
    hooks: list[HookStepOut] = []
    """Lifecycle hook steps in the order they ran (empty for stages without hooks)."""


class RebootDebtOut(_Model):
    instances: int
    """Instances the stage patched that still wait for a reboot (non-compliant until rebooted)."""
    since: str | None
    """The oldest of them waits since (RFC 3339, UTC)."""
    deadline: str | None
    """When that debt becomes overdue (the stage's ``reboot.deadline_days``); null: no deadline."""
    overdue: bool
    reboot_window: str | None
    """The stage's reboot window: waiting_window, done, cancelled; null without one."""
    reboot_window_start: str | None


class QueryTallyOut(_Model):
    """How one analysis query's measurements went so far."""

    successful: int
    failed: int
    """Failed measurements (a query Prometheus could not answer counts as failed)."""
    inconclusive: int
    """No series, NaN, or a missing baseline."""


class AnalysisOut(_Model):
    """The stage's ``gate.analysis`` (Argo Rollouts' AnalysisTemplate semantics)."""

    result: str
    """Empty while it runs; then successful, failed or inconclusive."""
    instances: int
    """Instances analysed."""
    queries: dict[str, QueryTallyOut]
    """Query name → its tally."""


class MeasurementOut(_Model):
    """One measurement of one analysis query."""

    query: str
    at: str
    """When it was taken (RFC 3339, UTC)."""
    verdict: str
    """successful, failed, inconclusive or error."""
    values: list[float | None]
    """The query's values (its first series); null where Prometheus answered NaN or ±Inf."""
    baseline: float | None
    """With ``compare: unpatched``: the mean of the baseline query over the unpatched instances."""
    detail: str

    @field_validator("values", mode="after")
    @classmethod
    def _finite_values(cls, values: list[float | None]) -> list[float | None]:
        # JSON has no NaN or Infinity (an API answer with them would not even be sent).
        return [finite(v) for v in values]

    @field_validator("baseline", mode="after")
    @classmethod
    def _finite_baseline(cls, value: float | None) -> float | None:
        return finite(value)


class StageOut(_Model):
    name: str
    state: str
    errors: int
    max_errors: int | None
    max_concurrency: int | None
    window_start: str | None
    waiting_since: str | None = None
    """When the stage's approval gate started waiting (RFC 3339, UTC); null if it never waited."""
    note: str
    instances: list[InstanceOut]
    instances_total: int | None = None
    """With ``?limit=``: how many instances the stage has in all (``instances`` is one page of them); null when
    ``instances`` lists them all."""
    state_counts: dict[str, int] | None = None
    """With ``?limit=``: state → how many of the stage's instances (all pages) are in it."""
    disruption_budget: str | None = None
    """The stage's disruption budget and, while it runs, the groups at their limit and the zone rolling out."""
    reboot_debt: RebootDebtOut | None = None
    """Stages with ``reboot:`` (or NoReboot installs): instances patched and waiting for a reboot."""
    blocked_by: str | None = None
    """Why dispatch waits right now (``block_on_alerts``: the firing alerts, or an unreachable Prometheus);
    null when it does not."""
    analysis: AnalysisOut | None = None
    """Stages with ``gate.analysis``: the analysis so far (null before it starts)."""
    measurements: list[MeasurementOut] = []
    """The analysis' measurements, oldest first (the newest 60; ``analysis.queries`` counts them all)."""


class AuditOut(_Model):
    at: str
    who: str
    action: str
    stage: str
    comment: str


class WaveDetail(_Model):
    """The contract of ``patchflow wave status --format json``."""

    wave_id: str
    plan: str
    kind: str = "standard"
    """``standard`` (a plan's wave, by hand or by a schedule) or ``emergency`` (``patchflow emergency``)."""
    state: str
    reason: str
    patch_set_id: str
    stages: list[StageOut]
    audit: list[AuditOut]


class WaveStarted(_Model):
    wave_id: str
    plan: str
    patch_set_id: str
    patches: int
    """Package versions in the pinned set."""


class ActionResult(_Model):
    wave_id: str
    action: str
    message: str
    """What the wave answered, e.g. ``stage prod approved by ops-lead``."""


class PlanValidation(_Model):
    valid: bool
    plan: str | None = None
    stages: list[str] = []
    problems: list[ProblemOut] = []
    message: str = ""


class UpgradeOut(_Model):
    model_config = ConfigDict(populate_by_name=True, use_attribute_docstrings=True)

    name: str
    arch: str
    from_: str = Field(alias="from")
    to: str


class TargetOut(_Model):
    id: str
    online: bool
    upgrades: list[UpgradeOut]


class WindowOut(_Model):
    start: str | None
    end: str | None
    cutoff: str | None


class GroupLimitOut(_Model):
    size: int
    """The group's instances in the stage."""
    limit: int
    """At most this many of them out at once."""


class DisruptionOut(_Model):
    budget: str
    """``10% per tag:Cluster`` ("" with ``zone_by_zone`` alone)."""
    rollout: str
    """``concurrent_zones`` or ``zone_by_zone``."""
    groups: dict[str, GroupLimitOut]
    """Group (``(none)``: without the key) → its size and limit."""
    zones: list[str]
    """``zone_by_zone``: the zones in rollout order."""


class HooksPreviewOut(_Model):
    phases: dict[str, int]
    """Phase (pre_install, post_install, post_reboot, on_exit) → its steps as they run (``on_exit`` with the
    automatic undo steps); phases without steps are left out."""
    on_hook_failure: str
    """``fail_instance`` or ``halt_stage``."""


class RebootPreviewOut(_Model):
    policy: str
    """``if_needed``, ``always`` or ``never``."""
    window: str | None
    """The separate reboot window (``cron(…) UTC, 4h``); null: right after the install."""
    max_concurrency: str | None
    """Reboot window: instances rebooted at once; null: the stage's ``max_concurrency``."""
    deadline_days: int | None
    """Reboot debt older than this is overdue; null: no deadline."""


class CanaryPreviewOut(_Model):
    count: int
    """The stage's first ``count`` targets are patched first."""
    soak_seconds: int


class AnalysisQueryPreviewOut(_Model):
    name: str
    query: str
    """PromQL (``{{instances}}``: the analysed instance ids)."""
    success: str
    count: int
    interval_seconds: int
    failure_limit: int


class AnalysisPreviewOut(_Model):
    prometheus: str
    queries: list[AnalysisQueryPreviewOut]
    compare: str | None
    """``unpatched``, or null."""
    inconclusive: str
    """``approval``, ``halt`` or ``continue``."""


class AlertBlockPreviewOut(_Model):
    prometheus: str
    match: str
    """Regex searched in each firing alert's name."""
    check_seconds: int


class DryRunStage(_Model):
    name: str
    targets: list[TargetOut]
    missing: list[str]
    windows: list[WindowOut]
    max_concurrency: str
    max_errors: str
    gate: str
    approvers: list[str]
    on_failure: str
    soak_seconds: int
    problems: list[str]
    ramp: str = "none"
    """``none`` or ``exponential`` (SSM's ramp: 1, 2, 4, … instances up to max_concurrency)."""
    cutoff_behavior: str = "carry_over"
    """What each window's cutoff does: ``carry_over``, ``continue`` or ``cancel``."""
    disruption: DisruptionOut | None = None
    """The stage's disruption budget and zone order applied to its targets; null without either."""
    hooks: HooksPreviewOut | None = None
    """The stage's lifecycle hooks; null without any."""
    reboot: RebootPreviewOut | None = None
    """The stage's ``reboot:``; null: the executor's reboot option decides."""
    canary: CanaryPreviewOut | None = None
    analysis: AnalysisPreviewOut | None = None
    """``gate.analysis``: what promotes the canaries (or, without a canary, the stage)."""
    block_on_alerts: AlertBlockPreviewOut | None = None


class DryRunOut(_Model):
    """``patchflow plan --format json``: what a wave of this plan would do; nothing is changed."""

    plan: str
    patch_set_id: str
    patch_set_size: int
    evaluated_at: str
    stages: list[DryRunStage]
    problems: list[str]


class BaselineValidation(_Model):
    valid: bool
    name: str | None = None
    operating_system: str | None = None
    rules: int = 0
    problems: list[ProblemOut] = []
    message: str = ""


class DecisionOut(_Model):
    name: str
    arch: str
    version: str
    product: str | None
    decision: str
    reason: str
    compliance_level: str | None
    in_patch_set: bool


class PinnedPatchOut(_Model):
    name: str
    arch: str
    version: str
    compliance_level: str
    severity: str | None
    classification: str | None
    security: bool
    product: str | None
    advisory_id: str | None
    cve_ids: list[str]


class PatchSetOut(_Model):
    id: str
    family: str
    baseline_name: str | None
    operating_system: str | None
    evaluated_at: str
    catalog_digest: str
    baseline: dict[str, Any]
    patches: list[PinnedPatchOut]


class EvaluationOut(_Model):
    """``patchflow baseline evaluate --format json`` (the API does not store the set: a wave start pins it)."""

    patch_set: PatchSetOut
    decisions: list[DecisionOut]
    notes: list[str]


class PatchStateOut(_Model):
    name: str
    arch: str
    installed_version: str | None
    target_version: str | None
    state: str
    severity: str | None
    compliance_level: str | None


class InstanceComplianceOut(_Model):
    instance_id: str
    patch_group: str | None
    status: str
    compliance_level: str | None
    counts: dict[str, int]
    patches: list[PatchStateOut]


class ComplianceSummary(_Model):
    instances: int
    compliant: int
    non_compliant: int
    counts: dict[str, int]


class ComplianceOut(_Model):
    """``patchflow baseline compliance --format json``."""

    patch_set_id: str
    instances: list[InstanceComplianceOut]
    summary: ComplianceSummary
    notes: list[str]
