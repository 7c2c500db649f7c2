"""Rollout plans: which baseline, which executor and fleet, and the ordered stages of a wave.

A plan is a YAML (or JSON) file; every error names ``file:line: field.path`` and says what is allowed.
Paths inside a plan (baseline, catalog, fleet) are relative to the plan file. See the README section
"Rollout plans" for the keys.

Gates guard the promotion *into* a stage: ``auto`` (none), ``approval`` (one of the listed approvers must
approve; anyone else is refused), or ``health`` (the instances patched by the earlier stages must pass the
executor's health check — and, if given, an HTTP endpoint must answer 2xx — after their soak).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from patchflow.core.analysis import (
    INCONCLUSIVE_CHOICES,
    AlertBlockSpec,
    AnalysisQuery,
    AnalysisSpec,
    ExpressionError,
    parse_success,
    uses_baseline,
)
from patchflow.core.approvers import approver_problem
from patchflow.core.disruption import CONCURRENT_ZONES, ROLLOUTS, DisruptionBudget, per_problem
from patchflow.core.documents import Document, PathPart, load_document, suggest, unknown_key
from patchflow.core.freezes import FreezeRule, parse_freezes
from patchflow.core.hooks import Hooks, parse_hooks
from patchflow.core.ratecontrol import CARRY_OVER, CUTOFF_BEHAVIORS, RAMP_NONE, RAMPS, Limit, parse_limit
from patchflow.core.reboots import RebootSpec, parse_reboot
from patchflow.core.windows import ScheduleError, WindowSpec, parse_window_spec
from patchflow.errors import InputError, Problem


class PlanError(InputError):
    """A rollout plan file is malformed."""


_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
_DURATION_RE = re.compile(r"^(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?$")
EXECUTOR_KINDS = ("simulated", "ssm", "ssh")
_SIMULATED_EXECUTOR_KEYS = ("kind", "fleet", "time_scale")
_SSM_EXECUTOR_KEYS = (
    "kind",
    "region",
    "endpoint_url",
    "bucket",
    "prefix",
    "reboot_option",
    "health_command",
    "cloudwatch_log_group",
)
_SSH_EXECUTOR_KEYS = ("kind", "inventory", "reboot_option", "health_command", "max_connections")
_BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9]$")
#: Upper bound of soak times: longer waits are a typo, not a plan (and would overflow timers).
MAX_DURATION_SECONDS = 90 * 24 * 3600
#: Largest absolute ``max_concurrency``/``max_errors``: AWS ``SendCommand`` takes MaxConcurrency and MaxErrors
#: of at most 7 characters (so 9,999,999 instances, or a percentage); larger numbers would overflow the
#: history database's integer columns.
MAX_LIMIT = 9_999_999
#: Largest ``gate.health.max_unhealthy``: far more instances than any stage has (fleets hold at most 100,000).
MAX_UNHEALTHY = 1_000_000
#: Largest ``executor.time_scale``: 1 is real time, 0 makes every simulated operation instant.
MAX_TIME_SCALE = 1000


def parse_duration(text: str) -> int:
    """``"0s"``, ``"30m"``, ``"24h"``, ``"1d12h"`` → seconds.

    Raises:
        ValueError: with the accepted forms.
    """
    match = _DURATION_RE.match(text.strip()) if text.strip() else None
    if match is None or not any(match.groups()):
        raise ValueError(f"{text!r} is not a duration; write e.g. 0s, 90s, 30m, 24h, 2d or 1d12h")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    total = ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    if total > MAX_DURATION_SECONDS:
        raise ValueError(f"{text!r} is longer than the 90 days a wave may wait; use at most 90d")
    return total


@dataclass(frozen=True)
class Targets:
    """A stage's targets: a patch group (tag ``Patch Group``/``PatchGroup``) or explicit instance ids."""

    patch_group: str | None = None
    instance_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class Gate:
    kind: str = "auto"
    """``auto``, ``approval`` or ``health``."""
    approvers: tuple[str, ...] = ()
    max_unhealthy: int = 0
    """health: instances allowed to fail the health check before the gate closes."""
    expire_after: int = 0
    """approval: seconds without a decision after which the gate expires (the wave ends failed); 0 = never."""
    remind_after: int = 0
    """approval: seconds without a decision after which the approvers are reminded once; 0 = half of
    ``expire_after`` (none when the gate never expires)."""
    url: str | None = None
    """health: an HTTP(S) endpoint that must answer 2xx."""
    analysis: AnalysisSpec | None = None
    """analysis: the metric analysis (of the stage's canaries, or else of what earlier stages patched)."""


@dataclass(frozen=True)
class Stage:
    name: str
    targets: Targets
    window: WindowSpec
    max_concurrency: Limit
    max_errors: Limit
    soak_seconds: int = 0
    gate: Gate = field(default_factory=Gate)
    on_failure: str = "halt"
    """``halt`` or ``rollback`` (restore the stage's patched instances, then halt)."""
    ramp: str = RAMP_NONE
    """``none`` (``max_concurrency`` from the start) or ``exponential`` (SSM's ramp: 1, 2, 4, … up to it)."""
    cutoff_behavior: str = CARRY_OVER
    """What the window's cutoff does: ``carry_over``, ``continue`` or ``cancel`` (see
    :mod:`patchflow.core.ratecontrol`)."""
    disruption_budget: DisruptionBudget | None = None
    """At most this many instances of one group out at once, on top of ``max_concurrency`` (the stage's own, else
    the plan's; see :mod:`patchflow.core.disruption`). None: no budget."""
    rollout: str = CONCURRENT_ZONES
    """``concurrent_zones`` or ``zone_by_zone`` (finish one availability zone before the next starts)."""
    hooks: Hooks | None = None
    """Lifecycle hooks per instance (the stage's own ``hooks``, else the plan's); None: no hooks, the install
    alone (see :mod:`patchflow.core.hooks`)."""
    canary: Canary | None = None
    """Patch the first ``count`` targets, soak, analyse (``gate.analysis``), then the rest."""
    block_on_alerts: AlertBlockSpec | None = None
    """No dispatch while a matching Prometheus alert fires (None: the plan's ``block_on_alerts``)."""
    reboot: RebootSpec | None = None
    """``reboot:`` (the stage's, else the plan's): patchflow installs with ``NoReboot`` and reboots itself
    (:mod:`patchflow.core.reboots`); None: the executor's ``reboot_option`` decides, as before."""


@dataclass(frozen=True)
class Canary:
    """``canary: {count: N, soak_seconds: S}``."""

    count: int
    soak_seconds: int = 0


@dataclass(frozen=True)
class ExecutorConfig:
    kind: str
    fleet: Path | None = None
    time_scale: float = 1.0
    """Simulated executor: multiplies every simulated duration (demos and tests run faster)."""
    region: str | None = None
    """SSM executor: AWS region (None: settings, then the boto3 chain)."""
    endpoint_url: str | None = None
    """SSM executor: another endpoint than AWS's (a local fake, a VPC endpoint)."""
    bucket: str | None = None
    """SSM executor: S3 bucket for override lists, operation records and command output."""
    prefix: str | None = None
    """SSM executor: key prefix inside the bucket."""
    reboot_option: str = "RebootIfNeeded"
    """SSM executor: ``RebootIfNeeded`` or ``NoReboot``."""
    health_command: str | None = None
    """SSM executor: shell command whose exit code 0 means healthy (None: always healthy)."""
    cloudwatch_log_group: str | None = None
    """SSM executor: also send command output to this CloudWatch Logs group."""
    inventory: Path | None = None
    """SSH executor: the Ansible-style inventory file (see :mod:`patchflow.executors.ssh.inventory`)."""
    max_connections: int = 10
    """SSH executor: hosts talked to at once (and SSH connections kept open) per worker."""


@dataclass(frozen=True)
class Plan:
    name: str
    source: Path
    baseline: Path
    catalog: Path
    executor: ExecutorConfig
    stages: tuple[Stage, ...]
    undeliverable_counts_as_error: bool = False
    """Count offline/undeliverable targets against the error budget (SSM never does)."""
    slack_channel: str | None = None
    """Slack channel id (``C…``) for this plan's wave messages and approval buttons."""
    freezes: tuple[FreezeRule, ...] = ()
    """Change freezes of this plan (the global freeze file adds to them); see :mod:`patchflow.core.freezes`."""
    freeze_override_approvers: tuple[str, ...] = ()
    """Who may approve an emergency wave that overrides a freeze (the global freeze file adds to them)."""
    task_queue: str | None = None
    """The Temporal task queue this plan's waves run on (its workers' ``PATCHFLOW_TASK_QUEUE``: one per AWS
    account or region); None: the starting side's ``PATCHFLOW_TASK_QUEUE``."""
    block_on_alerts: AlertBlockSpec | None = None
    """Every stage's alert blocking unless the stage sets its own."""
    reboot: RebootSpec | None = None
    """The plan-level ``reboot:`` default (already applied to every stage without its own)."""


_PLAN_KEYS = (
    "name",
    "description",
    "baseline",
    "catalog",
    "executor",
    "stages",
    "undeliverable_counts_as_error",
    "slack_channel",
    "freezes",
    "freeze_override_approvers",
    "task_queue",
    "disruption_budget",
    "rollout",
    "hooks",
    "block_on_alerts",
    "reboot",
)
_AWS_NAMES = {"max_concurrency": "MaxConcurrency", "max_errors": "MaxErrors"}
#: A stage's options that take one of a few words: key → (allowed values, the default first; how to choose).
_STAGE_CHOICES: dict[str, tuple[tuple[str, ...], str]] = {
    "ramp": (
        RAMPS,
        "none starts max_concurrency instances at once; exponential starts one, then two more, then doubles "
        "up to max_concurrency (SSM's ramp)",
    ),
    "cutoff_behavior": (
        CUTOFF_BEHAVIORS,
        "at the window's cutoff, carry_over starts nothing more and carries the rest to the next window; "
        "continue goes on until every target is done (AWS's CONTINUE_TASK); cancel cancels what is running "
        "and halts the wave (AWS's CANCEL_TASK)",
    ),
}
_STAGE_KEYS = (
    "name",
    "targets",
    "window",
    "max_concurrency",
    "max_errors",
    "soak",
    "gate",
    "on_failure",
    *_STAGE_CHOICES,
    "disruption_budget",
    "rollout",
    "hooks",
    "canary",
    "block_on_alerts",
    "reboot",
)
_BUDGET_KEYS = ("max", "per")
_ROLLOUT_HINT = (
    "concurrent_zones dispatches every zone at once; zone_by_zone finishes one availability zone (every instance "
    "attempted and finished) before the next starts, zones in the order their first instance is dispatched"
)


class _Checker:
    """Collects located problems while the steps of :func:`parse_plan` walk the document."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.base_dir = Path(doc.source).resolve().parent
        self.problems: list[Problem] = []

    def bad(self, path: tuple[PathPart, ...], message: str) -> None:
        self.problems.append(self.doc.problem(path, message))

    def unknown_keys(
        self, raw: dict[Any, Any], allowed: tuple[str, ...], where: tuple[PathPart, ...]
    ) -> bool:
        """Report every key of ``raw`` not in ``allowed``; True when there were none."""
        unknown = [str(key) for key in raw if key not in allowed]
        for key in unknown:
            self.bad((*where, key), unknown_key(key, allowed))
        return not unknown

    def existing_file(self, key: str, value: Any, path: tuple[PathPart, ...]) -> Path:
        """A file named relative to the plan; reported (and ``Path()``) when it is missing."""
        if not isinstance(value, str) or not value:
            self.bad(path, f"required: the path of the {key} file, relative to the plan")
            return Path()
        resolved = (self.base_dir / value).resolve()
        if not resolved.is_file():
            self.bad(
                path, f"{value!r} does not exist (looked for {resolved}); paths are relative to the plan file"
            )
        return resolved


def parse_plan(doc: Document) -> Plan:
    """Validate a parsed plan document; every problem in the file is reported at once.

    Steps: the top-level keys, the name, the baseline and catalog files, the executor, the plan-wide
    options, the freezes, the stages; then either every problem or the plan.
    """
    data = doc.data
    if not isinstance(data, dict):
        raise PlanError(
            "a plan must be a mapping with name, baseline, catalog, executor and stages", source=doc.source
        )
    check = _Checker(doc)
    check.unknown_keys(data, _PLAN_KEYS, ())
    name = _plan_name(data.get("name"), check)
    baseline = check.existing_file("baseline", data.get("baseline"), ("baseline",))
    catalog = check.existing_file("catalog", data.get("catalog"), ("catalog",))
    executor = _parse_executor(data.get("executor"), check)
    options = _plan_options(data, check)
    freezes = parse_freezes(
        data.get("freezes"), doc=doc, path=("freezes",), base_dir=check.base_dir, problems=check.problems
    )
    defaults = _parse_disruption(data, (), check.bad, (None, CONCURRENT_ZONES))
    stages = _parse_stages(data.get("stages"), check, defaults or (None, CONCURRENT_ZONES))
    stages = _with_hooks(data, stages, executor.kind, check)
    block = (
        parse_block_on_alerts(data["block_on_alerts"], ("block_on_alerts",), check.bad)
        if "block_on_alerts" in data
        else None
    )
    reboot = _reboot(data, ("reboot",), check.bad)
    if reboot is not None:  # the plan's default for every stage without its own
        stages = [s if s.reboot is not None else dataclasses.replace(s, reboot=reboot) for s in stages]
    if check.problems:
        raise PlanError("invalid rollout plan", source=doc.source, problems=check.problems)
    return Plan(
        name=name,
        source=Path(doc.source).resolve(),
        baseline=baseline,
        catalog=catalog,
        executor=executor,
        stages=tuple(stages),
        freezes=tuple(freezes),
        block_on_alerts=block,
        reboot=reboot,
        **options,
    )


def _plan_name(name: Any, check: _Checker) -> str:
    if not isinstance(name, str) or not _NAME_RE.match(name):
        check.bad(
            ("name",),
            "required: 1–64 characters of letters, digits, '_', '-' and '.', starting with a letter or digit",
        )
        return "invalid"
    return name


def _parse_executor(raw: Any, check: _Checker) -> ExecutorConfig:
    if not isinstance(raw, dict):
        check.bad(("executor",), "required: {kind: simulated, fleet: PATH}")
        return ExecutorConfig(kind="invalid")
    kind = raw.get("kind")
    allowed = {"ssm": _SSM_EXECUTOR_KEYS, "ssh": _SSH_EXECUTOR_KEYS}.get(str(kind), _SIMULATED_EXECUTOR_KEYS)
    for key in raw:
        if key not in allowed:
            check.bad(("executor", str(key)), unknown_key(str(key), allowed, context=str(kind)))
    if kind not in EXECUTOR_KINDS:
        check.bad(
            ("executor", "kind"), f"{kind!r} is not an executor; use one of {', '.join(EXECUTOR_KINDS)}"
        )
    fleet = (
        check.existing_file("fleet", raw.get("fleet"), ("executor", "fleet")) if kind == "simulated" else None
    )
    scale = raw.get("time_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or not 0 <= scale <= MAX_TIME_SCALE:
        check.bad(
            ("executor", "time_scale"),
            f"{scale!r}: expected a number from 0 to {MAX_TIME_SCALE} (1 = real time)",
        )
        scale = 1.0
    ssm = _ssm_options(raw, check.bad) if kind == "ssm" else {}
    if kind == "ssh":
        ssm = _ssh_options(raw, check.bad)
        ssm["inventory"] = check.existing_file("inventory", raw.get("inventory"), ("executor", "inventory"))
    return ExecutorConfig(kind=str(kind), fleet=fleet, time_scale=float(scale), **ssm)


def _plan_options(data: dict[str, Any], check: _Checker) -> dict[str, Any]:
    """The optional plan-wide settings, as :class:`Plan` fields (invalid ones reported and left at default)."""
    slack_channel = data.get("slack_channel")
    if slack_channel is not None and (
        not isinstance(slack_channel, str) or not re.fullmatch(r"[CG][A-Z0-9]{6,20}", slack_channel)
    ):
        check.bad(
            ("slack_channel",),
            f"{slack_channel!r} is not a Slack channel id; use the C… id from the channel's details",
        )
        slack_channel = None
    undeliverable = data.get("undeliverable_counts_as_error", False)
    if not isinstance(undeliverable, bool):
        check.bad(("undeliverable_counts_as_error",), "expected true or false")
        undeliverable = False
    override_approvers = data.get("freeze_override_approvers", [])
    if not isinstance(override_approvers, list) or not all(
        isinstance(a, str) and a.strip() for a in override_approvers
    ):
        check.bad(("freeze_override_approvers",), "expected a list of the people who may override a freeze")
        override_approvers = []
    task_queue = data.get("task_queue")
    if task_queue is not None and (
        not isinstance(task_queue, str)
        or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:/\-]{0,199}", task_queue)
    ):
        check.bad(
            ("task_queue",),
            f"{task_queue!r} is not a task queue name; use the PATCHFLOW_TASK_QUEUE of the workers that should run "
            "this plan (letters, digits, '_', '-', '.', ':', '/'; up to 200)",
        )
        task_queue = None
    return {
        "undeliverable_counts_as_error": undeliverable,
        "slack_channel": slack_channel,
        "freeze_override_approvers": tuple(a.strip() for a in override_approvers),
        "task_queue": task_queue,
    }


def _parse_stages(
    raw_stages: Any, check: _Checker, disruption: tuple[DisruptionBudget | None, str]
) -> list[Stage]:
    if not isinstance(raw_stages, list) or not raw_stages:
        check.bad(("stages",), "required: a non-empty list of stages (e.g. dev, test, prod)")
        return []
    stages: list[Stage] = []
    seen: set[str] = set()
    for i, raw in enumerate(raw_stages):
        where: tuple[PathPart, ...] = ("stages", i)
        if not isinstance(raw, dict):
            check.bad(where, "expected a stage mapping with name, targets, window, …")
            continue
        stage = _parse_stage(raw, where, check.bad)
        own = _parse_disruption(raw, where, check.bad, disruption)
        if stage is None or own is None:
            continue
        stage = replace(stage, disruption_budget=own[0], rollout=own[1])
        if stage.name in seen:
            check.bad((*where, "name"), f"stage name {stage.name!r} is used twice")
        seen.add(stage.name)
        stages.append(stage)
    return stages


def _with_hooks(
    data: dict[str, Any], stages: list[Stage], executor_kind: str, check: _Checker
) -> list[Stage]:
    """Each stage with its lifecycle hooks: its own ``hooks``, else the plan's ``hooks`` (``hooks: {}`` in a
    stage turns the plan's off for it)."""
    default = None
    if "hooks" in data:
        default = parse_hooks(data["hooks"], ("hooks",), check.bad, executor_kind=executor_kind)
    raw_stages = data.get("stages")
    raws = raw_stages if isinstance(raw_stages, list) else []
    out: list[Stage] = []
    for stage in stages:
        index = next(
            i for i, raw in enumerate(raws) if isinstance(raw, dict) and raw.get("name") == stage.name
        )
        raw = raws[index]
        hooks = default
        if "hooks" in raw:
            hooks = parse_hooks(
                raw["hooks"], ("stages", index, "hooks"), check.bad, executor_kind=executor_kind
            )
        out.append(replace(stage, hooks=hooks) if hooks is not None and hooks.has_steps else stage)
    return out


def _ssm_options(raw: dict[str, Any], bad: Any) -> dict[str, Any]:
    """The SSM executor's keys, validated (credentials never go in a plan: the boto3 chain supplies them)."""
    out: dict[str, Any] = {}
    for key in ("region", "endpoint_url", "bucket", "prefix", "health_command", "cloudwatch_log_group"):
        value = raw.get(key)
        if value is None:
            continue
        if not isinstance(value, str) or not value.strip():
            bad(("executor", key), "expected a non-empty string")
            continue
        out[key] = value.strip()
    url = out.get("endpoint_url")
    if url is not None and not re.match(r"^https?://[^/\s]+", url):
        bad(("executor", "endpoint_url"), f"{url!r}: expected an http:// or https:// URL")
    bucket = out.get("bucket")
    if bucket is not None and not _BUCKET_RE.match(bucket):
        bad(("executor", "bucket"), f"{bucket!r} is not an S3 bucket name (3–63 of a-z, 0-9, '.', '-')")
    reboot = raw.get("reboot_option", "RebootIfNeeded")
    if reboot not in ("RebootIfNeeded", "NoReboot"):
        bad(("executor", "reboot_option"), f"{reboot!r}: use RebootIfNeeded or NoReboot")
    else:
        out["reboot_option"] = reboot
    return out


def _ssh_options(raw: dict[str, Any], bad: Any) -> dict[str, Any]:
    """The SSH executor's keys besides the inventory, validated."""
    out: dict[str, Any] = {}
    command = raw.get("health_command")
    if command is not None:
        if not isinstance(command, str) or not command.strip():
            bad(("executor", "health_command"), "expected a shell command (exit 0 = healthy)")
        else:
            out["health_command"] = command.strip()
    reboot = raw.get("reboot_option", "RebootIfNeeded")
    if reboot not in ("RebootIfNeeded", "NoReboot"):
        bad(("executor", "reboot_option"), f"{reboot!r}: use RebootIfNeeded or NoReboot")
    else:
        out["reboot_option"] = reboot
    limit = raw.get("max_connections", 10)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= 1000:
        bad(("executor", "max_connections"), f"{limit!r}: expected a whole number from 1 to 1000")
    else:
        out["max_connections"] = limit
    return out


def _parse_targets(raw_targets: Any, where: tuple[PathPart, ...], bad: Any) -> Targets | None:
    """A stage's ``targets``: ``{patch_group: NAME}`` or ``{instance_ids: [ID, …]}``; None after a located problem."""
    if isinstance(raw_targets, dict) and len(raw_targets) == 1 and "patch_group" in raw_targets:
        group = raw_targets["patch_group"]
        if not isinstance(group, str) or not 1 <= len(group) <= 256:
            bad((*where, "targets", "patch_group"), "expected a patch group name (1–256 characters)")
            return None
        return Targets(patch_group=group)
    if isinstance(raw_targets, dict) and len(raw_targets) == 1 and "instance_ids" in raw_targets:
        ids = raw_targets["instance_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(x, str) and x for x in ids):
            bad((*where, "targets", "instance_ids"), "expected a non-empty list of instance ids")
            return None
        if len(set(ids)) != len(ids):
            bad((*where, "targets", "instance_ids"), "an instance id is listed twice")
            return None
        return Targets(instance_ids=tuple(ids))
    bad((*where, "targets"), "required: exactly one of {patch_group: NAME} or {instance_ids: [ID, …]}")
    return None


def _parse_stage(raw: dict[str, Any], where: tuple[PathPart, ...], bad: Any) -> Stage | None:
    ok = True
    for key in raw:
        if key not in _STAGE_KEYS:
            bad(
                (*where, str(key)),
                unknown_key(str(key), _STAGE_KEYS),
            )
            ok = False
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        bad((*where, "name"), "required: 1–64 characters of letters, digits, '_', '-' and '.'")
        ok = False

    targets = _parse_targets(raw.get("targets"), where, bad)
    if targets is None:
        ok = False

    window: WindowSpec | None = None
    try:
        window = parse_window_spec(raw.get("window", "now"), path=f"stages[{where[-1]}].window")
    except ScheduleError as exc:
        for problem in exc.problems or [Problem(path="", message=exc.summary)]:
            # problem.path is "stages[i].window.<field>": keep the field so the line number is exact.
            sub = problem.path.rsplit(".window", 1)[-1].lstrip(".")
            bad((*where, "window", *([sub] if sub else [])), problem.message or exc.summary)
        ok = False

    limits: dict[str, Limit] = {}
    for key, default in (("max_concurrency", "1"), ("max_errors", "0")):
        try:
            limits[key] = parse_limit(raw.get(key, default), kind=key)
        except ValueError as exc:
            bad((*where, key), str(exc))
            ok = False
            continue
        if not limits[key].percent and limits[key].value > MAX_LIMIT:
            bad(
                (*where, key),
                f"{limits[key].value} is more than {MAX_LIMIT:,} (AWS's {_AWS_NAMES[key]} takes at most 7 "
                "characters); use a percentage such as '100%' for all targets",
            )
            ok = False

    soak = 0
    raw_soak = raw.get("soak", "0s")
    try:
        soak = parse_duration(str(raw_soak)) if isinstance(raw_soak, str | int) else parse_duration("")
    except ValueError as exc:
        bad((*where, "soak"), str(exc))
        ok = False

    gate = _parse_gate(raw.get("gate", "auto"), (*where, "gate"), bad)
    if gate is None:
        ok = False

    on_failure = raw.get("on_failure", "halt")
    if on_failure not in ("halt", "rollback"):
        bad((*where, "on_failure"), f"{on_failure!r}: use halt or rollback")
        ok = False

    choices = _parse_stage_choices(raw, where, bad)
    ok, canary, block = _stage_extras(raw, where, bad, ok=ok)
    reboot = _reboot(raw, (*where, "reboot"), bad)
    if "reboot" in raw and reboot is None:
        ok = False
    if not ok or targets is None or window is None or gate is None or choices is None:
        return None
    return Stage(
        name=str(name),
        targets=targets,
        window=window,
        max_concurrency=limits["max_concurrency"],
        max_errors=limits["max_errors"],
        soak_seconds=soak,
        gate=gate,
        on_failure=str(on_failure),
        ramp=choices["ramp"],
        cutoff_behavior=choices["cutoff_behavior"],
        canary=canary,
        block_on_alerts=block,
        reboot=reboot,
    )


def _parse_disruption(
    raw: dict[str, Any], where: tuple[PathPart, ...], bad: Any, default: tuple[DisruptionBudget | None, str]
) -> tuple[DisruptionBudget | None, str] | None:
    """A stage's (or, with ``where`` empty, the plan's default) ``disruption_budget`` and ``rollout``; a stage
    without them takes the plan's, and ``disruption_budget: none`` turns the plan's off. None after a located
    problem."""
    budget, rollout = default
    ok = True
    if "disruption_budget" in raw:
        budget = None
        body = raw["disruption_budget"]
        path = (*where, "disruption_budget")
        if body == "none" and where:
            pass
        elif not isinstance(body, dict):
            off = " (or none to turn the plan's budget off for this stage)" if where else ""
            bad(path, f"expected {{max: N or 'P%', per: availability_zone or tag:<Key>}}{off}")
            ok = False
        else:
            budget = _parse_budget(body, path, bad)
            ok = budget is not None
    if "rollout" in raw:
        rollout = raw["rollout"]
        if rollout not in ROLLOUTS:
            bad(
                (*where, "rollout"),
                f"{rollout!r} is not a rollout; use {' or '.join(ROLLOUTS)} ({_ROLLOUT_HINT})",
            )
            ok = False
    return (budget, str(rollout)) if ok else None


def _parse_budget(body: dict[str, Any], path: tuple[PathPart, ...], bad: Any) -> DisruptionBudget | None:
    ok = True
    for key in body:
        if key not in _BUDGET_KEYS:
            bad((*path, str(key)), unknown_key(str(key), _BUDGET_KEYS))
            ok = False
    limit: Limit | None = None
    if "max" not in body:
        bad(path, "required: max, the instances of one group allowed out at once (e.g. 1 or '10%')")
        ok = False
    else:
        try:
            limit = parse_limit(body["max"], kind="max_concurrency")
        except ValueError:
            bad(
                (*path, "max"),
                f"{body['max']!r} is not a budget; use a whole number ≥ 1 or a percentage 1%–100% of each group "
                "(e.g. 1 or '10%'; a percentage rounds down but never below 1)",
            )
            ok = False
        else:
            if not limit.percent and limit.value > MAX_LIMIT:
                bad(
                    (*path, "max"),
                    f"{limit.value} is more than {MAX_LIMIT:,}; use a percentage such as '100%'",
                )
                ok = False
    per = body.get("per")
    problem = (
        "required: per, what groups the instances (availability_zone or tag:<Key>)" if per is None else None
    )
    problem = problem or per_problem(per)
    if problem:
        bad((*path, "per"), problem)
        ok = False
    return DisruptionBudget(max=limit, per=str(per).strip()) if ok and limit is not None else None


def _reboot(raw: dict[str, Any], where: tuple[PathPart, ...], bad: Any) -> RebootSpec | None:
    """``reboot:`` of a stage or of the plan (None when absent, or after its located problems)."""
    if "reboot" not in raw:
        return None
    spec, problems = parse_reboot(raw["reboot"], path=tuple(where))
    for path, message in problems:
        bad(path, message)
    return spec


def _parse_stage_choices(raw: dict[str, Any], where: tuple[PathPart, ...], bad: Any) -> dict[str, str] | None:
    """The stage's one-word options (``ramp``, ``cutoff_behavior``), their defaults filled in; None after a
    located problem."""
    out: dict[str, str] = {}
    for key, (allowed, hint) in _STAGE_CHOICES.items():
        value = raw.get(key, allowed[0])
        if value not in allowed:
            choices = f"{', '.join(allowed[:-1])} or {allowed[-1]}"
            bad((*where, key), f"{value!r} is not a {key}; use {choices} ({hint})")
        else:
            out[key] = str(value)
    return out if len(out) == len(_STAGE_CHOICES) else None


_APPROVAL_KEYS = ("approvers", "expire_after", "remind_after")


def _approval_timing(
    body: dict[str, Any], approvers: tuple[str, ...], where: tuple[PathPart, ...], bad: Any
) -> Gate | None:
    """An approval gate's optional ``expire_after`` and ``remind_after`` durations (``72h``, ``3d``)."""
    ok = True
    for key in body:
        if key not in _APPROVAL_KEYS:
            bad((*where, "approval", str(key)), unknown_key(str(key), _APPROVAL_KEYS))
            ok = False
    seconds: dict[str, int] = {}
    for key in ("expire_after", "remind_after"):
        value = body.get(key, "0s")
        try:
            seconds[key] = parse_duration(value) if isinstance(value, str) else parse_duration("")
        except ValueError as exc:
            bad((*where, "approval", key), str(exc))
            ok = False
    expire, remind = seconds.get("expire_after", 0), seconds.get("remind_after", 0)
    if len(seconds) == 2 and expire and remind >= expire:
        bad(
            (*where, "approval", "remind_after"),
            "must be shorter than expire_after (remind before it expires)",
        )
        ok = False
    return (
        Gate(kind="approval", approvers=approvers, expire_after=expire, remind_after=remind) if ok else None
    )


def _parse_gate(raw: Any, where: tuple[PathPart, ...], bad: Any) -> Gate | None:
    if raw == "auto":
        return Gate()
    if isinstance(raw, dict) and len(raw) == 1 and "approval" in raw:
        body = raw["approval"]
        approvers = body.get("approvers") if isinstance(body, dict) else None
        if (
            not isinstance(approvers, list)
            or not approvers
            or not all(isinstance(a, str) and a for a in approvers)
        ):
            bad(
                (*where, "approval", "approvers"),
                "required: a non-empty list of the people allowed to approve",
            )
            return None
        if not _approvers_valid(approvers, (*where, "approval", "approvers"), bad):
            return None
        return _approval_timing(body, tuple(approvers), where, bad)
    if isinstance(raw, dict) and len(raw) == 1 and "health" in raw:
        body = raw["health"] if raw["health"] is not None else {}
        if not isinstance(body, dict):
            bad((*where, "health"), "expected {max_unhealthy: N, url: URL} (both optional)")
            return None
        for key in body:
            if key not in ("max_unhealthy", "url"):
                bad((*where, "health", str(key)), f"unknown key{suggest(str(key), ('max_unhealthy', 'url'))}")
                return None
        max_unhealthy = body.get("max_unhealthy", 0)
        if (
            isinstance(max_unhealthy, bool)
            or not isinstance(max_unhealthy, int)
            or not 0 <= max_unhealthy <= MAX_UNHEALTHY
        ):
            bad((*where, "health", "max_unhealthy"), f"expected a whole number from 0 to {MAX_UNHEALTHY:,}")
            return None
        url = body.get("url")
        if url is not None and (not isinstance(url, str) or not url.startswith(("http://", "https://"))):
            bad((*where, "health", "url"), "expected an http:// or https:// URL")
            return None
        return Gate(kind="health", max_unhealthy=max_unhealthy, url=url)
    if isinstance(raw, dict) and len(raw) == 1 and "analysis" in raw:
        analysis = parse_analysis(raw["analysis"], (*where, "analysis"), bad)
        return None if analysis is None else Gate(kind="analysis", analysis=analysis)
    bad(
        where,
        "use auto, {approval: {approvers: [NAME, …]}}, {health: {max_unhealthy: N, url: URL}} or "
        "{analysis: {prometheus: URL, queries: [...]}}",
    )
    return None


def _approvers_valid(approvers: list[str], where: tuple[PathPart, ...], bad: Any) -> bool:
    """Each entry is ``slack:U…``, ``slack-group:S…`` or a plain name (:mod:`patchflow.core.approvers`)."""
    problems = [(i, approver_problem(a)) for i, a in enumerate(approvers)]
    for i, problem in problems:
        if problem:
            bad((*where, i), problem)
    return not any(problem for _, problem in problems)


# ---------------------------------------------------------------------------------------------- canaries, analysis

#: Most queries one analysis runs, and measurements one query takes: the stage's status records each one.
MAX_QUERIES = 10
MAX_MEASUREMENTS = 100
_ANALYSIS_KEYS = ("prometheus", "queries", "compare", "inconclusive", "approvers")
_QUERY_KEYS = ("name", "query", "success", "interval_seconds", "count", "failure_limit", "inconclusive_limit")
_CANARY_KEYS = ("count", "soak_seconds")
_ALERT_KEYS = ("prometheus", "match", "check_seconds")


def _whole(value: Any, low: int, high: int) -> int | None:
    """``value`` when it is a whole number from ``low`` to ``high`` (booleans are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        return None
    return value


def _prometheus_url(body: dict[str, Any], where: tuple[PathPart, ...], bad: Any) -> str | None:
    url = body.get("prometheus")
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
        bad((*where, "prometheus"), "required: the Prometheus server's base URL, e.g. http://prometheus:9090")
        return None
    return url.rstrip("/")


def _stage_extras(
    raw: dict[str, Any], where: tuple[PathPart, ...], bad: Any, *, ok: bool
) -> tuple[bool, Canary | None, AlertBlockSpec | None]:
    """A stage's optional ``canary`` and ``block_on_alerts``; ``ok`` turns False after a located problem."""
    canary = _parse_canary(raw["canary"], (*where, "canary"), bad) if "canary" in raw else None
    block = (
        parse_block_on_alerts(raw["block_on_alerts"], (*where, "block_on_alerts"), bad)
        if "block_on_alerts" in raw
        else None
    )
    if ("canary" in raw and canary is None) or ("block_on_alerts" in raw and block is None):
        ok = False
    return ok, canary, block


def _parse_canary(raw: Any, where: tuple[PathPart, ...], bad: Any) -> Canary | None:
    """``canary: {count: N, soak_seconds: S}``: the first N targets go first."""
    if not isinstance(raw, dict):
        bad(where, "expected {count: N, soak_seconds: S} (the first N targets, then S seconds of soak)")
        return None
    ok = True
    for key in raw:
        if key not in _CANARY_KEYS:
            bad((*where, str(key)), unknown_key(str(key), _CANARY_KEYS))
            ok = False
    count = _whole(raw.get("count"), 1, MAX_LIMIT)
    if count is None:
        bad((*where, "count"), f"required: how many targets go first, a whole number from 1 to {MAX_LIMIT:,}")
        ok = False
    soak = _whole(raw.get("soak_seconds", 0), 0, MAX_DURATION_SECONDS)
    if soak is None:
        bad((*where, "soak_seconds"), f"expected seconds from 0 to {MAX_DURATION_SECONDS:,} (90 days)")
        ok = False
    return Canary(count=count, soak_seconds=soak) if ok and count is not None and soak is not None else None


def parse_analysis(raw: Any, where: tuple[PathPart, ...], bad: Any) -> AnalysisSpec | None:
    """``gate.analysis``: Prometheus, the queries (Argo Rollouts' AnalysisTemplate fields), the baseline and
    what an inconclusive result does."""
    if not isinstance(raw, dict):
        bad(where, "expected {prometheus: URL, queries: [{name, query, success, …}], inconclusive: halt}")
        return None
    ok = True
    for key in raw:
        if key not in _ANALYSIS_KEYS:
            bad((*where, str(key)), unknown_key(str(key), _ANALYSIS_KEYS))
            ok = False
    url = _prometheus_url(raw, where, bad)
    compare = raw.get("compare", "")
    if compare not in ("", "unpatched"):
        bad(
            (*where, "compare"),
            f"{compare!r}: the only baseline is unpatched (the stage's unpatched instances)",
        )
        ok = False
    inconclusive = raw.get("inconclusive", "halt")
    if inconclusive not in INCONCLUSIVE_CHOICES:
        bad(
            (*where, "inconclusive"),
            f"{inconclusive!r}: use approval (an approver decides), halt (the wave halts) or continue (promote)",
        )
        ok = False
    approvers = raw.get("approvers", [])
    if not isinstance(approvers, list) or not all(isinstance(a, str) and a for a in approvers):
        bad((*where, "approvers"), "expected a list of the people who may approve an inconclusive analysis")
        approvers, ok = [], False
    elif approvers and not _approvers_valid(approvers, (*where, "approvers"), bad):
        ok = False
    if inconclusive == "approval" and not approvers:
        bad(
            (*where, "approvers"),
            "required with inconclusive: approval: the people who may approve an inconclusive analysis",
        )
        ok = False
    queries = _parse_queries(raw.get("queries"), (*where, "queries"), bad, compare=compare == "unpatched")
    if not ok or url is None or queries is None:
        return None
    return AnalysisSpec(
        prometheus=url,
        queries=queries,
        compare=str(compare),
        inconclusive=str(inconclusive),
        approvers=list(approvers),
    )


def _parse_queries(
    raw: Any, where: tuple[PathPart, ...], bad: Any, *, compare: bool
) -> list[AnalysisQuery] | None:
    if not isinstance(raw, list) or not raw or len(raw) > MAX_QUERIES:
        bad(where, f"required: a list of 1 to {MAX_QUERIES} queries, each {{name, query, success, …}}")
        return None
    queries: list[AnalysisQuery] = []
    names: set[str] = set()
    for i, entry in enumerate(raw):
        query = _parse_query(entry, (*where, i), bad, compare=compare)
        if query is None:
            continue
        if query.name in names:
            bad((*where, i, "name"), f"query name {query.name!r} is used twice")
            continue
        names.add(query.name)
        queries.append(query)
    return queries if len(queries) == len(raw) else None


def _parse_query(raw: Any, where: tuple[PathPart, ...], bad: Any, *, compare: bool) -> AnalysisQuery | None:
    """One query: its PromQL, its success expression (parsed now: a typo is found before the wave starts), and
    its count, interval and limits."""
    if not isinstance(raw, dict):
        bad(where, "expected {name, query, success, interval_seconds, count, failure_limit}")
        return None
    ok = True
    for key in raw:
        if key not in _QUERY_KEYS:
            bad((*where, str(key)), unknown_key(str(key), _QUERY_KEYS))
            ok = False
    name = raw.get("name")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        bad((*where, "name"), "required: 1–64 characters of letters, digits, '_', '-' and '.'")
        ok = False
    promql = raw.get("query")
    if not isinstance(promql, str) or not promql.strip():
        bad(
            (*where, "query"),
            'required: the PromQL, e.g. sum(rate(errors_total{instance=~"{{instances}}"}[5m]))',
        )
        ok = False
    success = raw.get("success")
    if not isinstance(success, str):
        bad(
            (*where, "success"),
            "required: a condition on result, e.g. '< 0.01' or 'result <= baseline * 1.2'",
        )
        ok = False
    else:
        try:
            parse_success(success)
            if uses_baseline(success) and not compare:
                bad((*where, "success"), "uses baseline: add compare: unpatched to the analysis")
                ok = False
        except ExpressionError as exc:
            bad((*where, "success"), f"{success!r}: {exc}")
            ok = False
    numbers: dict[str, int] = {}
    for key, default, low, high in (
        ("interval_seconds", 60, 1, 24 * 3600),
        ("count", 1, 1, MAX_MEASUREMENTS),
        ("failure_limit", 0, 0, MAX_MEASUREMENTS),
    ):
        value = _whole(raw.get(key, default), low, high)
        if value is None:
            bad((*where, key), f"{raw.get(key)!r}: expected a whole number from {low} to {high:,}")
            ok = False
        else:
            numbers[key] = value
    count = numbers.get("count", 1)
    if numbers.get("failure_limit", 0) >= count:
        bad(
            (*where, "failure_limit"),
            f"must be smaller than count ({count}), or no measurement could ever fail the analysis",
        )
        ok = False
    limit = raw.get("inconclusive_limit")
    if limit is not None and (_whole(limit, 0, MAX_MEASUREMENTS) is None or limit >= count):
        bad(
            (*where, "inconclusive_limit"),
            f"{limit!r}: expected a whole number from 0 to count - 1 ({count - 1})",
        )
        ok = False
    if not ok:
        return None
    return AnalysisQuery(
        name=str(name),
        query=str(promql),
        success=str(success),
        interval_seconds=numbers["interval_seconds"],
        count=count,
        failure_limit=numbers["failure_limit"],
        inconclusive_limit=limit,
    )


def parse_block_on_alerts(raw: Any, where: tuple[PathPart, ...], bad: Any) -> AlertBlockSpec | None:
    """``block_on_alerts: {prometheus: URL, match: REGEX, check_seconds: 60}`` (kured's alert blocking)."""
    if not isinstance(raw, dict):
        bad(where, "expected {prometheus: URL, match: REGEX, check_seconds: 60}")
        return None
    ok = True
    for key in raw:
        if key not in _ALERT_KEYS:
            bad((*where, str(key)), unknown_key(str(key), _ALERT_KEYS))
            ok = False
    url = _prometheus_url(raw, where, bad)
    match = raw.get("match")
    if not isinstance(match, str) or not match:
        bad(
            (*where, "match"),
            "required: a regex of the alert names that block, e.g. ^(NodeDown|HighErrorRate)$",
        )
        ok = False
    else:
        try:
            re.compile(match)
        except re.error as exc:
            bad((*where, "match"), f"{match!r} is not a regex: {exc}")
            ok = False
    check = _whole(raw.get("check_seconds", 60), 1, 3600)
    if check is None:
        bad(
            (*where, "check_seconds"),
            "expected seconds from 1 to 3,600 (how often a blocked stage checks again)",
        )
        ok = False
    if not ok or url is None or check is None:
        return None
    return AlertBlockSpec(prometheus=url, match=str(match), check_seconds=check)


def load_plan(path: str | Path) -> Plan:
    """Load and validate a plan file."""
    return parse_plan(load_document(path, kind="plan", error=PlanError))
