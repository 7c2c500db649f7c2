"""Lifecycle hooks per instance: what runs before and after each instance's install.

A plan (or one of its stages) sets ``hooks``::

    hooks:
      pre_install:  [{elb_deregister: {target_groups: auto, drain_seconds: 300}},
                     {asg_standby: {decrement_desired: true}},
                     {ebs_snapshot: {volumes: root, retain_days: 14}},
                     {command: "systemctl stop myapp", timeout_seconds: 120, success_codes: [0]}]
      post_install: [...]   # after the packages, before any reboot
      post_reboot:  [...]   # after the reboot (or when the install left no reboot pending)
      on_exit:      [...]   # always, for every instance whose pre_install began
      on_hook_failure: fail_instance   # or halt_stage

Per instance the phases run in :data:`PHASES` order; inside a phase the steps run in the listed order and the
first failing step ends the phase (``on_exit`` runs every step, best effort). Undoing the traffic drain is
automatic: an ``on_exit`` without its own ``elb_register``/``asg_exit_standby`` gets them (in reverse order of
``pre_install``) whenever ``pre_install`` has ``elb_deregister``/``asg_standby`` — see :func:`exit_steps`.

This module only parses and holds data (pure): the steps run in :mod:`activities.hooks`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from patchflow.core.documents import PathPart, unknown_key

PRE_INSTALL = "pre_install"
POST_INSTALL = "post_install"
POST_REBOOT = "post_reboot"
ON_EXIT = "on_exit"
#: The phases in lifecycle order (the reboot, when there is one, comes between post_install and post_reboot).
PHASES = (PRE_INSTALL, POST_INSTALL, POST_REBOOT, ON_EXIT)
FAIL_INSTANCE = "fail_instance"
HALT_STAGE = "halt_stage"
ON_HOOK_FAILURE = (FAIL_INSTANCE, HALT_STAGE)

COMMAND = "command"
SSM_DOCUMENT = "ssm_document"
HTTP = "http"
ELB_DEREGISTER = "elb_deregister"
ELB_REGISTER = "elb_register"
ASG_STANDBY = "asg_standby"
ASG_EXIT_STANDBY = "asg_exit_standby"
EBS_SNAPSHOT = "ebs_snapshot"
EBS_RESTORE = "ebs_restore"
"""Not a plan key: the automatic on_exit step of an ``ebs_snapshot`` with ``restore_on_failure``."""
STEP_KINDS = (
    COMMAND,
    SSM_DOCUMENT,
    HTTP,
    ELB_DEREGISTER,
    ELB_REGISTER,
    ASG_STANDBY,
    ASG_EXIT_STANDBY,
    EBS_SNAPSHOT,
)

# Step record statuses.
STEP_SUCCEEDED = "succeeded"
STEP_FAILED = "failed"
STEP_SKIPPED = "skipped"
"""Nothing to do (already in the wanted state, no EC2 instance id, a reboot still pending): not a failure."""

#: Longest output tail a step record keeps (characters).
OUTPUT_TAIL = 200
MAX_STEPS_PER_PHASE = 20
MAX_TIMEOUT_SECONDS = 24 * 3600
MAX_DRAIN_SECONDS = 3600
"""ELBv2's ``deregistration_delay.timeout_seconds`` ranges 0–3600 s: a longer drain is a typo."""
MAX_RETAIN_DAYS = 3650
_ARN_RE = re.compile(
    r"^arn:aws[a-z-]*:elasticloadbalancing:[a-z0-9-]+:\d{12}:targetgroup/[\w-]{1,32}/[0-9a-f]+$"
)
_DOCUMENT_RE = re.compile(r"^[A-Za-z0-9_.\-:/]{3,128}$")


@dataclass
class HookStep:
    """One step of a phase (a flat record: only the fields of its ``kind`` matter; it crosses the Temporal
    boundary in :class:`~patchflow.core.wavemodel.StageRunInput`)."""

    kind: str
    """One of :data:`STEP_KINDS`."""
    name: str
    """How records and messages name the step: ``command: systemctl stop myapp`` (shortened), ``elb_deregister``."""
    command: str = ""
    """command: the shell command (SSH: on the host as root; SSM: AWS-RunShellScript)."""
    timeout_seconds: int = 600
    """command, ssm_document, http: a step running longer fails."""
    success_codes: list[int] = field(default_factory=lambda: [0])
    """command, ssm_document: exit codes that count as success."""
    document: str = ""
    """ssm_document: the SSM document's name (SSM executor only)."""
    parameters: dict[str, list[str]] = field(default_factory=dict)
    """ssm_document: the document's parameters (SendCommand ``Parameters``)."""
    url: str = ""
    """http: the URL that must answer."""
    expect_status: list[int] = field(default_factory=list)
    """http: the statuses that pass; empty = any 2xx."""
    target_groups: list[str] = field(default_factory=list)
    """elb_deregister/elb_register: target group ARNs; empty = ``auto`` (every group the instance is
    registered in; elb_register: the groups the instance's elb_deregister took it out of)."""
    drain_seconds: int = 300
    """elb_deregister: wait at most this long for the targets to finish draining (ELBv2 deregistration delay)."""
    decrement_desired: bool = False
    """asg_standby: ``ShouldDecrementDesiredCapacity`` (no replacement instance is launched meanwhile)."""
    volumes: str = "root"
    """ebs_snapshot: ``root`` or ``all`` of the instance's EBS volumes."""
    retain_days: int = 0
    """ebs_snapshot: tag the snapshot ``patchflow:expires`` this many days ahead (0 = keep)."""
    restore_on_failure: bool = False
    """ebs_snapshot: when the instance fails, replace its root volume from the snapshot in ``on_exit``
    (EC2 CreateReplaceRootVolumeTask, the restore AWS-PatchInstanceWithRollback does by hand)."""


@dataclass
class Hooks:
    """A stage's lifecycle hooks (the plan's ``hooks`` unless the stage sets its own)."""

    pre_install: list[HookStep] = field(default_factory=list)
    post_install: list[HookStep] = field(default_factory=list)
    post_reboot: list[HookStep] = field(default_factory=list)
    on_exit: list[HookStep] = field(default_factory=list)
    on_hook_failure: str = FAIL_INSTANCE
    """``fail_instance`` (the instance fails and counts against max_errors) or ``halt_stage`` (the stage also
    stops dispatching: the wave halts once the instances in flight are done)."""

    def steps(self, phase: str) -> list[HookStep]:
        """The steps of ``phase`` as they run (``on_exit`` with its automatic undo steps: :func:`exit_steps`)."""
        if phase == ON_EXIT:
            return exit_steps(self)
        steps: list[HookStep] = getattr(self, phase)
        return steps

    @property
    def has_steps(self) -> bool:
        return any(getattr(self, phase) for phase in PHASES)


@dataclass
class HookStepRecord:
    """What one step did on one instance (wave status, history database, API)."""

    phase: str
    step: str
    """The step's :attr:`HookStep.name`."""
    status: str
    """succeeded, failed or skipped."""
    duration_seconds: float = 0.0
    output: str = ""
    """The tail of the step's output or why it failed (at most :data:`OUTPUT_TAIL` characters)."""
    undo: list[str] = field(default_factory=list)
    """What undoing the step needs later (elb_deregister: ``ARN|port`` of each target it deregistered)."""


def tail(text: str, limit: int = OUTPUT_TAIL) -> str:
    """The last ``limit`` characters of ``text``, stripped (a leading ``…`` when cut)."""
    text = text.strip()
    return text if len(text) <= limit else "…" + text[-(limit - 1) :]


def compact(records: Sequence[HookStepRecord]) -> str:
    """One line for ``wave status``: ``pre_install ok 3/3 2.1s; on_exit FAILED command: x (exit 1)``."""
    parts: list[str] = []
    for phase in PHASES:
        mine = [r for r in records if r.phase == phase]
        if not mine:
            continue
        seconds = sum(r.duration_seconds for r in mine)
        failed = next((r for r in mine if r.status == STEP_FAILED), None)
        if failed is not None:
            parts.append(
                f"{phase} FAILED {failed.step}" + (f" ({failed.output[-60:]})" if failed.output else "")
            )
            continue
        done = sum(1 for r in mine if r.status == STEP_SUCCEEDED)
        skipped = len(mine) - done
        parts.append(
            f"{phase} ok {done}/{len(mine)}"
            + (f" ({skipped} skipped)" if skipped else "")
            + f" {seconds:.1f}s"
        )
    return "; ".join(parts)


def exit_steps(hooks: Hooks) -> list[HookStep]:
    """``on_exit`` as it runs: the undo of ``pre_install``'s drain first, then the plan's own steps.

    Decision (documented in the README): undoing ``elb_deregister`` and ``asg_standby`` is automatic, because an
    instance left out of its load balancer or in Standby is an outage nobody asked for. ``on_exit`` gets an
    ``elb_register`` (to exactly the target groups and ports the instance was deregistered from) and an
    ``asg_exit_standby`` unless it lists its own; they come in reverse order of ``pre_install`` (exit Standby —
    the Auto Scaling group re-registers the instance with its own load balancers — before re-registering in
    the explicitly named target groups). Both check the state first, so they are no-ops for an instance whose
    drain never happened. An ``ebs_snapshot`` with ``restore_on_failure`` adds an ``ebs_restore`` first (only a
    failed instance is restored, before it is put back into service).
    """
    own = {step.kind for step in hooks.on_exit}
    undo: list[HookStep] = []
    for step in reversed(hooks.pre_install):
        if step.kind == ELB_DEREGISTER and ELB_REGISTER not in own:
            undo.append(
                HookStep(kind=ELB_REGISTER, name=ELB_REGISTER, target_groups=list(step.target_groups))
            )
        elif step.kind == ASG_STANDBY and ASG_EXIT_STANDBY not in own:
            undo.append(HookStep(kind=ASG_EXIT_STANDBY, name=ASG_EXIT_STANDBY))
    restore = [
        HookStep(kind=EBS_RESTORE, name=EBS_RESTORE)
        for step in hooks.pre_install
        if step.kind == EBS_SNAPSHOT and step.restore_on_failure
    ][:1]
    return [*restore, *undo, *hooks.on_exit]


# ------------------------------------------------------------------------------------------------ parsing

Bad = Callable[[tuple[PathPart, ...], str], None]
_HOOK_KEYS = (*PHASES, "on_hook_failure")
_STEP_HELP = (
    "a step is one of: {command: CMD, timeout_seconds: N, success_codes: [0]}, "
    "{ssm_document: {name: NAME, parameters: {…}}}, {http: {url: URL}}, "
    "{elb_deregister: {target_groups: auto, drain_seconds: 300}}, {elb_register: {target_groups: auto}}, "
    "{asg_standby: {decrement_desired: true}}, {asg_exit_standby: {}}, "
    "{ebs_snapshot: {volumes: root, retain_days: 14}}"
)


def parse_hooks(raw: Any, where: tuple[PathPart, ...], bad: Bad, *, executor_kind: str = "") -> Hooks | None:
    """A ``hooks`` mapping (plan-level or a stage's); None after a located problem.

    ``executor_kind`` refuses steps the plan's executor cannot run (``ssm_document`` needs the SSM executor).
    """
    if not isinstance(raw, dict):
        bad(
            where,
            "expected a mapping of phases (pre_install, post_install, post_reboot, on_exit) to step lists",
        )
        return None
    ok = True
    for key in raw:
        if key not in _HOOK_KEYS:
            bad((*where, str(key)), unknown_key(str(key), _HOOK_KEYS))
            ok = False
    phases: dict[str, list[HookStep]] = {}
    for phase in PHASES:
        steps = _parse_phase(raw.get(phase, []), (*where, phase), bad, executor_kind)
        if steps is None:
            ok = False
        else:
            phases[phase] = steps
    policy = raw.get("on_hook_failure", FAIL_INSTANCE)
    if policy not in ON_HOOK_FAILURE:
        bad(
            (*where, "on_hook_failure"),
            f"{policy!r}: use fail_instance (the instance fails and counts against max_errors) or halt_stage "
            "(the stage also stops dispatching)",
        )
        ok = False
    if not ok:
        return None
    return Hooks(**phases, on_hook_failure=str(policy))


def _parse_phase(
    raw: Any, where: tuple[PathPart, ...], bad: Bad, executor_kind: str
) -> list[HookStep] | None:
    if raw is None:
        return []
    if not isinstance(raw, list):
        bad(where, f"expected a list of steps; {_STEP_HELP}")
        return None
    if len(raw) > MAX_STEPS_PER_PHASE:
        bad(
            where,
            f"{len(raw)} steps: at most {MAX_STEPS_PER_PHASE} per phase (put longer sequences in a script)",
        )
        return None
    steps = [_parse_step(item, (*where, i), bad, executor_kind) for i, item in enumerate(raw)]
    if any(step is None for step in steps):
        return None
    return [step for step in steps if step is not None]


def _parse_step(raw: Any, where: tuple[PathPart, ...], bad: Bad, executor_kind: str) -> HookStep | None:
    if isinstance(raw, str):
        raw = {COMMAND: raw}
    if not isinstance(raw, dict) or not raw:
        bad(where, f"expected a step mapping; {_STEP_HELP}")
        return None
    kinds = [k for k in raw if k in STEP_KINDS]
    if len(kinds) != 1:
        if kinds:
            bad(where, f"one step per list item: {' and '.join(map(str, kinds))} are two steps; split them")
        else:
            key = str(next(iter(raw)))
            bad((*where, key), unknown_key(key, STEP_KINDS) + f"; {_STEP_HELP}")
        return None
    kind = str(kinds[0])
    if kind == COMMAND:
        return _command(raw, where, bad)
    body = raw[kind] if raw[kind] is not None else {}
    extra = [k for k in raw if k != kind]
    if extra:
        bad(
            (*where, str(extra[0])),
            f"unknown key next to {kind}; its options go inside it: {{{kind}: {{…}}}}",
        )
        return None
    if not isinstance(body, dict):
        bad((*where, kind), f"expected a mapping of {kind}'s options; {_STEP_HELP}")
        return None
    parser = _PARSERS[kind]
    return parser(body, (*where, kind), bad, executor_kind)


class _Fields:
    """Reads one step's options, reporting each problem at its own path."""

    def __init__(self, body: dict[str, Any], where: tuple[PathPart, ...], bad: Bad, allowed: tuple[str, ...]):
        self.body = body
        self.where = where
        self._bad = bad
        self.ok = True
        for key in body:
            if key not in allowed:
                self.bad(str(key), unknown_key(str(key), allowed))

    def bad(self, key: str, message: str) -> None:
        self.ok = False
        self._bad((*self.where, key), message)

    def whole(self, key: str, default: int, low: int, high: int, what: str) -> int:
        value = self.body.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            self.bad(key, f"{value!r}: expected {what}, a whole number from {low} to {high:,}")
            return default
        return value

    def flag(self, key: str) -> bool:
        value = self.body.get(key, False)
        if not isinstance(value, bool):
            self.bad(key, f"{value!r}: expected true or false")
            return False
        return value

    def codes(self, key: str, default: list[int], what: str) -> list[int]:
        value = self.body.get(key, default)
        if (
            not isinstance(value, list)
            or not value
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 999 for c in value)
        ):
            self.bad(key, f"{value!r}: expected a non-empty list of {what}, e.g. [0]")
            return default
        return list(value)


def _command(raw: dict[str, Any], where: tuple[PathPart, ...], bad: Bad) -> HookStep | None:
    f = _Fields(raw, where, bad, (COMMAND, "timeout_seconds", "success_codes"))
    command = raw.get(COMMAND)
    if not isinstance(command, str) or not command.strip():
        f.bad(COMMAND, "expected a shell command, e.g. command: systemctl stop myapp")
        command = ""
    timeout = f.whole("timeout_seconds", 600, 1, MAX_TIMEOUT_SECONDS, "seconds")
    codes = f.codes("success_codes", [0], "exit codes")
    if not f.ok:
        return None
    short = " ".join(command.split())
    return HookStep(
        kind=COMMAND,
        name=f"command: {short[:60]}{'…' if len(short) > 60 else ''}",
        command=command.strip(),
        timeout_seconds=timeout,
        success_codes=codes,
    )


def _ssm_document(
    body: dict[str, Any], where: tuple[PathPart, ...], bad: Bad, executor_kind: str
) -> HookStep | None:
    f = _Fields(body, where, bad, ("name", "parameters", "timeout_seconds", "success_codes"))
    if executor_kind and executor_kind != "ssm":
        bad(
            where,
            f"ssm_document needs the ssm executor (this plan's executor is {executor_kind}); "
            "use a command step instead",
        )
        f.ok = False
    name = body.get("name")
    if not isinstance(name, str) or not _DOCUMENT_RE.match(name):
        f.bad("name", f"{name!r}: expected an SSM document name or ARN, e.g. AWS-RunShellScript")
        name = ""
    params = body.get("parameters", {})
    parameters: dict[str, list[str]] = {}
    if not isinstance(params, dict):
        f.bad("parameters", "expected a mapping of parameter names to a value or a list of values")
    else:
        for key, value in params.items():
            values = value if isinstance(value, list) else [value]
            if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
                f.bad("parameters", f"parameter {key!r}: expected a string or a list of strings")
                continue
            parameters[str(key)] = [str(v) for v in values]
    timeout = f.whole("timeout_seconds", 600, 1, MAX_TIMEOUT_SECONDS, "seconds")
    codes = f.codes("success_codes", [0], "exit codes")
    if not f.ok:
        return None
    return HookStep(
        kind=SSM_DOCUMENT,
        name=f"ssm_document: {name}",
        document=str(name),
        parameters=parameters,
        timeout_seconds=timeout,
        success_codes=codes,
    )


def _http(body: dict[str, Any], where: tuple[PathPart, ...], bad: Bad, _kind: str) -> HookStep | None:
    f = _Fields(body, where, bad, ("url", "timeout_seconds", "expect_status"))
    url = body.get("url")
    if not isinstance(url, str) or not re.match(r"^https?://[^/\s]+", url):
        f.bad("url", f"{url!r}: expected an http:// or https:// URL")
        url = ""
    timeout = f.whole("timeout_seconds", 10, 1, 3600, "seconds")
    expect: list[int] = []
    if "expect_status" in body:
        expect = f.codes("expect_status", [200], "HTTP statuses")
        if any(not 200 <= s <= 299 for s in expect):
            f.bad("expect_status", f"{expect!r}: the step must answer 2xx; list statuses from 200 to 299")
    if not f.ok:
        return None
    return HookStep(
        kind=HTTP, name=f"http: {url[:60]}", url=str(url), timeout_seconds=timeout, expect_status=expect
    )


def _target_groups(f: _Fields) -> list[str]:
    value = f.body.get("target_groups", "auto")
    if value == "auto":
        return []
    if (
        not isinstance(value, list)
        or not value
        or not all(isinstance(a, str) and _ARN_RE.match(a) for a in value)
    ):
        f.bad(
            "target_groups",
            f"{value!r}: expected auto (every target group the instance is registered in) or a list of target "
            "group ARNs (arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID)",
        )
        return []
    return list(value)


def _elb_deregister(
    body: dict[str, Any], where: tuple[PathPart, ...], bad: Bad, _kind: str
) -> HookStep | None:
    f = _Fields(body, where, bad, ("target_groups", "drain_seconds"))
    groups = _target_groups(f)
    drain = f.whole("drain_seconds", 300, 0, MAX_DRAIN_SECONDS, "the longest wait for connections to drain")
    if not f.ok:
        return None
    return HookStep(kind=ELB_DEREGISTER, name=ELB_DEREGISTER, target_groups=groups, drain_seconds=drain)


def _elb_register(body: dict[str, Any], where: tuple[PathPart, ...], bad: Bad, _kind: str) -> HookStep | None:
    f = _Fields(body, where, bad, ("target_groups",))
    groups = _target_groups(f)
    return HookStep(kind=ELB_REGISTER, name=ELB_REGISTER, target_groups=groups) if f.ok else None


def _asg_standby(body: dict[str, Any], where: tuple[PathPart, ...], bad: Bad, _kind: str) -> HookStep | None:
    f = _Fields(body, where, bad, ("decrement_desired",))
    decrement = f.flag("decrement_desired")
    return HookStep(kind=ASG_STANDBY, name=ASG_STANDBY, decrement_desired=decrement) if f.ok else None


def _asg_exit(body: dict[str, Any], where: tuple[PathPart, ...], bad: Bad, _kind: str) -> HookStep | None:
    f = _Fields(body, where, bad, ())
    return HookStep(kind=ASG_EXIT_STANDBY, name=ASG_EXIT_STANDBY) if f.ok else None


def _ebs_snapshot(body: dict[str, Any], where: tuple[PathPart, ...], bad: Bad, _kind: str) -> HookStep | None:
    f = _Fields(body, where, bad, ("volumes", "retain_days", "restore_on_failure"))
    volumes = body.get("volumes", "root")
    if volumes not in ("root", "all"):
        f.bad("volumes", f"{volumes!r}: use root (the root volume) or all (every attached EBS volume)")
    retain = f.whole("retain_days", 0, 0, MAX_RETAIN_DAYS, "days to keep the snapshot (0 = keep)")
    restore = f.flag("restore_on_failure")
    if not f.ok:
        return None
    return HookStep(
        kind=EBS_SNAPSHOT,
        name=EBS_SNAPSHOT,
        volumes=str(volumes),
        retain_days=retain,
        restore_on_failure=restore,
    )


_PARSERS: dict[str, Callable[[dict[str, Any], tuple[PathPart, ...], Bad, str], HookStep | None]] = {
    SSM_DOCUMENT: _ssm_document,
    HTTP: _http,
    ELB_DEREGISTER: _elb_deregister,
    ELB_REGISTER: _elb_register,
    ASG_STANDBY: _asg_standby,
    ASG_EXIT_STANDBY: _asg_exit,
    EBS_SNAPSHOT: _ebs_snapshot,
}


def phase_budget_seconds(steps: Sequence[HookStep]) -> int:
    """The longest one phase may take on a batch (its activity's start-to-close timeout): every step's own
    limit (commands, HTTP: ``timeout_seconds``; drains: ``drain_seconds``; Standby transitions and snapshots:
    10 minutes each) plus a margin per step, and five minutes for the batch."""
    total = 300
    for step in steps:
        if step.kind in (COMMAND, SSM_DOCUMENT, HTTP):
            total += step.timeout_seconds + 60
        elif step.kind == ELB_DEREGISTER:
            total += step.drain_seconds + 300
        else:
            total += 900
    return total
