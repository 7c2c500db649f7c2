"""Lifecycle hooks in plans: the documented keys, a plan default with stage overrides, and a located error for
every mistake (``file:line: field.path``, what is wrong and how to fix it)."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchflow.core.hooks import (
    ASG_EXIT_STANDBY,
    EBS_RESTORE,
    ELB_REGISTER,
    HookStepRecord,
    compact,
    exit_steps,
    phase_budget_seconds,
    tail,
)
from patchflow.core.plans import PlanError, load_plan

ARN = "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/web/0123456789abcdef"
STAGE = "  - name: dev\n    targets: {patch_group: dev}\n    window: now\n"


def write_plan(tmp_path: Path, body: str, executor: str = "{kind: simulated, fleet: f.yaml}") -> Path:
    (tmp_path / "b.yaml").write_text("Name: ok-name\nOperatingSystem: UBUNTU\n")
    (tmp_path / "c.json").write_text("[]")
    (tmp_path / "f.yaml").write_text("instances: []\n")
    (tmp_path / "inv.yaml").write_text("all: {hosts: {}}\n")
    path = tmp_path / "plan.yaml"
    path.write_text(f"name: p\nbaseline: b.yaml\ncatalog: c.json\nexecutor: {executor}\n" + body)
    return path


FULL = f"""hooks:
  pre_install:
    - elb_deregister: {{target_groups: auto, drain_seconds: 30}}
    - asg_standby: {{decrement_desired: true}}
    - ebs_snapshot: {{volumes: root, retain_days: 14, restore_on_failure: true}}
    - {{command: "systemctl stop myapp", timeout_seconds: 120, success_codes: [0, 3]}}
  post_install: ["systemctl start myapp"]
  post_reboot:
    - http: {{url: "http://127.0.0.1:8080/health", timeout_seconds: 5}}
  on_exit:
    - elb_register: {{target_groups: ["{ARN}"]}}
  on_hook_failure: halt_stage
stages:
{STAGE}  - name: prod
    targets: {{patch_group: prod}}
    hooks: {{}}
"""


def test_plan_hooks_apply_to_every_stage_unless_it_sets_its_own(tmp_path: Path) -> None:
    plan = load_plan(write_plan(tmp_path, FULL))
    dev, prod = plan.stages
    assert prod.hooks is None  # ``hooks: {}`` turns the plan's hooks off for the stage
    hooks = dev.hooks
    assert hooks is not None and hooks.on_hook_failure == "halt_stage"
    kinds = [s.kind for s in hooks.pre_install]
    assert kinds == ["elb_deregister", "asg_standby", "ebs_snapshot", "command"]
    deregister, standby, snapshot, command = hooks.pre_install
    assert deregister.target_groups == [] and deregister.drain_seconds == 30
    assert standby.decrement_desired is True
    assert (snapshot.volumes, snapshot.retain_days, snapshot.restore_on_failure) == ("root", 14, True)
    assert command.command == "systemctl stop myapp" and command.success_codes == [0, 3]
    assert command.timeout_seconds == 120 and command.name == "command: systemctl stop myapp"
    assert hooks.post_install[0].command == "systemctl start myapp"  # a plain string is a command step
    assert hooks.post_reboot[0].url == "http://127.0.0.1:8080/health"
    assert hooks.on_exit[0].target_groups == [ARN]


def test_on_exit_undoes_the_drain_automatically(tmp_path: Path) -> None:
    """The documented decision: elb_deregister and asg_standby are undone in on_exit unless it does so itself,
    in reverse order; a snapshot with restore_on_failure restores first."""
    plan = load_plan(write_plan(tmp_path, FULL))
    hooks = plan.stages[0].hooks
    assert hooks is not None
    # on_exit has its own elb_register: only the standby is undone automatically, after the restore.
    assert [s.kind for s in exit_steps(hooks)] == [EBS_RESTORE, ASG_EXIT_STANDBY, ELB_REGISTER]
    hooks.on_exit = []
    assert [s.kind for s in hooks.steps("on_exit")] == [EBS_RESTORE, ASG_EXIT_STANDBY, ELB_REGISTER]
    hooks.pre_install = hooks.pre_install[3:]
    assert hooks.steps("on_exit") == []


def test_stage_hooks_override_the_plan_default(tmp_path: Path) -> None:
    body = "hooks: {pre_install: [a]}\nstages:\n" + STAGE + "    hooks: {post_install: [b]}\n"
    hooks = load_plan(write_plan(tmp_path, body)).stages[0].hooks
    assert hooks is not None and hooks.pre_install == [] and hooks.post_install[0].command == "b"


def test_plans_without_hooks_have_none(tmp_path: Path) -> None:
    assert load_plan(write_plan(tmp_path, "stages:\n" + STAGE)).stages[0].hooks is None


def test_ssm_document_runs_with_the_ssm_executor(tmp_path: Path) -> None:
    body = (
        "hooks:\n  pre_install:\n    - ssm_document: {name: AWS-ConfigureAWSPackage,"
        " parameters: {action: Install, name: [AmazonCloudWatchAgent]}}\nstages:\n" + STAGE
    )
    plan = load_plan(write_plan(tmp_path, body, "{kind: ssm, bucket: patchflow-test}"))
    step = plan.stages[0].hooks.pre_install[0]  # type: ignore[union-attr]
    assert step.document == "AWS-ConfigureAWSPackage"
    assert step.parameters == {"action": ["Install"], "name": ["AmazonCloudWatchAgent"]}


def _hooks(text: str) -> str:
    return "hooks:\n" + text + "stages:\n" + STAGE


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("hooks: [a]\nstages:\n" + STAGE, ":5: hooks: expected a mapping of phases"),
        (_hooks("  pre_instal: [a]\n"), ":6: hooks.pre_instal: unknown key; did you mean 'pre_install'"),
        (_hooks("  pre_install: a\n"), ":6: hooks.pre_install: expected a list of steps"),
        (_hooks("  pre_install: [{}]\n"), "hooks.pre_install[0]: expected a step mapping"),
        (
            _hooks("  pre_install: [{comand: x}]\n"),
            "hooks.pre_install[0].comand: unknown key; did you mean 'command'",
        ),
        (
            _hooks("  pre_install: [{command: ''}]\n"),
            "hooks.pre_install[0].command: expected a shell command",
        ),
        (
            _hooks("  pre_install: [{command: x, timeout_seconds: 0}]\n"),
            "hooks.pre_install[0].timeout_seconds: 0: expected seconds, a whole number from 1 to 86,400",
        ),
        (
            _hooks("  pre_install: [{command: x, success_codes: []}]\n"),
            "hooks.pre_install[0].success_codes: []: expected a non-empty list of exit codes",
        ),
        (
            _hooks("  pre_install: [{command: x, http: {url: 'http://a'}}]\n"),
            "command and http are two steps; split them",
        ),
        (
            _hooks("  pre_install: [{http: {url: 'http://a'}, timeout_seconds: 3}]\n"),
            "hooks.pre_install[0].timeout_seconds: unknown key next to http; its options go inside it",
        ),
        (
            _hooks("  pre_install: [{http: {url: ftp://a}}]\n"),
            "hooks.pre_install[0].http.url: 'ftp://a': expected",
        ),
        (
            _hooks("  pre_install: [{http: {url: 'http://a', expect_status: [500]}}]\n"),
            "http.expect_status: [500]: the step must answer 2xx",
        ),
        (
            _hooks("  pre_install: [{http: x}]\n"),
            "hooks.pre_install[0].http: expected a mapping of http's options",
        ),
        (
            _hooks("  pre_install: [{elb_deregister: {target_groups: [web]}}]\n"),
            "elb_deregister.target_groups: ['web']: expected auto",
        ),
        (
            _hooks("  pre_install: [{elb_deregister: {drain_seconds: 4000}}]\n"),
            "elb_deregister.drain_seconds: 4000: expected the longest wait for connections to drain, a whole number "
            "from 0 to 3,600",
        ),
        (
            _hooks("  pre_install: [{elb_deregister: {drain: 3}}]\n"),
            "elb_deregister.drain: unknown key; allowed: target_groups, drain_seconds",
        ),
        (
            _hooks("  pre_install: [{asg_standby: {decrement_desired: yes please}}]\n"),
            "asg_standby.decrement_desired: 'yes please': expected true or false",
        ),
        (
            _hooks("  on_exit: [{asg_exit_standby: {now: true}}]\n"),
            "hooks.on_exit[0].asg_exit_standby.now: unknown key",
        ),
        (
            _hooks("  pre_install: [{ebs_snapshot: {volumes: boot}}]\n"),
            "ebs_snapshot.volumes: 'boot': use root (the root volume) or all",
        ),
        (
            _hooks("  pre_install: [{ebs_snapshot: {retain_days: -1}}]\n"),
            "ebs_snapshot.retain_days: -1: expected days to keep the snapshot (0 = keep)",
        ),
        (
            _hooks("  pre_install: [{ebs_snapshot: {restore_on_failure: 1}}]\n"),
            "ebs_snapshot.restore_on_failure: 1: expected true or false",
        ),
        (
            _hooks("  pre_install: [{ssm_document: {name: AWS-RunShellScript}}]\n"),
            "hooks.pre_install[0].ssm_document: ssm_document needs the ssm executor (this plan's executor is "
            "simulated); use a command step instead",
        ),
        (
            _hooks("  on_hook_failure: halt\n"),
            ":6: hooks.on_hook_failure: 'halt': use fail_instance (the instance fails and counts against "
            "max_errors) or halt_stage",
        ),
        (
            _hooks("  pre_install: [" + ", ".join("x" for _ in range(21)) + "]\n"),
            "21 steps: at most 20 per phase",
        ),
        (
            "stages:\n" + STAGE + "    hooks: {post_reboot: [{http: {}}]}\n",
            ":9: stages[0].hooks.post_reboot[0].http.url: None: expected an http:// or https:// URL",
        ),
    ],
)
def test_hook_errors_are_located(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(PlanError) as info:
        load_plan(write_plan(tmp_path, body))
    assert expected in str(info.value)
    assert str(tmp_path / "plan.yaml") in str(info.value)


def test_ssm_document_parameter_errors(tmp_path: Path) -> None:
    body = _hooks("  pre_install: [{ssm_document: {name: '!', parameters: {a: [{b: c}]}}}]\n")
    message = str(pytest.raises(PlanError, load_plan, write_plan(tmp_path, body, "{kind: ssm}")).value)
    assert "ssm_document.name: '!': expected an SSM document name" in message
    assert "ssm_document.parameters: parameter 'a': expected a string or a list of strings" in message


def test_records_read_compactly() -> None:
    records = [
        HookStepRecord("pre_install", "elb_deregister", "succeeded", 1.5),
        HookStepRecord("pre_install", "command: a", "skipped", 0.5),
        HookStepRecord("on_exit", "command: b", "failed", 0.1, "exit 1: boom"),
    ]
    assert compact(records) == "pre_install ok 1/2 (1 skipped) 2.0s; on_exit FAILED command: b (exit 1: boom)"
    assert tail("x" * 300) == "…" + "x" * 199 and len(tail("x" * 300)) == 200


def test_phase_budget_covers_every_step(tmp_path: Path) -> None:
    hooks = load_plan(write_plan(tmp_path, FULL)).stages[0].hooks
    assert hooks is not None
    # 300 + (30 + 300) drain + 900 standby + 900 snapshot + (120 + 60) command
    assert phase_budget_seconds(hooks.pre_install) == 2610
