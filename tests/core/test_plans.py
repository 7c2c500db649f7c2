"""Rollout plan files: the documented keys, and located errors for everything else."""

from __future__ import annotations

from pathlib import Path

import pytest

from patchflow.core.plans import PlanError, load_plan, parse_duration
from patchflow.core.ratecontrol import Limit
from tests.conftest import EXAMPLES_DIR

GOOD_STAGE = "  - name: dev\n    targets: {patch_group: dev}\n    window: now\n"


def write_plan(tmp_path: Path, body: str) -> Path:
    (tmp_path / "b.yaml").write_text("Name: ok-name\nOperatingSystem: UBUNTU\n")
    (tmp_path / "c.json").write_text("[]")
    (tmp_path / "f.yaml").write_text("instances: []\n")
    path = tmp_path / "plan.yaml"
    path.write_text(
        "name: p\nbaseline: b.yaml\ncatalog: c.json\nexecutor: {kind: simulated, fleet: f.yaml}\n" + body
    )
    return path


def test_shipped_demo_plan() -> None:
    plan = load_plan(EXAMPLES_DIR / "demo-plan.yaml")
    assert [s.name for s in plan.stages] == ["dev", "test", "prod"]
    prod = plan.stages[2]
    assert prod.gate.kind == "approval" and prod.gate.approvers == ("ops-lead", "sre-oncall")
    assert prod.on_failure == "rollback" and str(prod.max_errors) == "10%"
    assert plan.stages[1].gate.kind == "health" and plan.stages[0].soak_seconds == 2
    assert plan.baseline.name == "ubuntu-staged.yaml" and plan.baseline.is_absolute()


def test_scheduled_window_and_explicit_ids(tmp_path: Path) -> None:
    plan = load_plan(
        write_plan(
            tmp_path,
            "stages:\n  - name: prod\n    targets: {instance_ids: [i-2, i-1]}\n"
            "    window: {schedule: 'cron(0 2 ? * TUE#2 *)', timezone: Europe/Berlin, offset_days: 3,"
            " duration_hours: 4, cutoff_hours: 1}\n    max_concurrency: '10%'\n    max_errors: 2\n    soak: 1d12h\n",
        )
    )
    stage = plan.stages[0]
    assert stage.targets.instance_ids == ("i-2", "i-1")
    assert stage.window.offset_days == 3 and stage.window.timezone == "Europe/Berlin"
    assert stage.soak_seconds == 36 * 3600


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("stages: []\n", "stages: required: a non-empty list"),
        ("stages:\n" + GOOD_STAGE + "    max_concurency: 5\n", "did you mean 'max_concurrency'"),
        ("stages:\n" + GOOD_STAGE + "    max_concurrency: 0\n", ":9: stages[0].max_concurrency"),
        ("stages:\n" + GOOD_STAGE + "    max_errors: 150%\n", "0%–100%"),
        ("stages:\n" + GOOD_STAGE + "    soak: 3 weeks\n", "write e.g. 0s, 90s, 30m"),
        ("stages:\n" + GOOD_STAGE + "    gate: {approval: {}}\n", "people allowed to approve"),
        ("stages:\n" + GOOD_STAGE + "    gate: manual\n", "use auto, {approval"),
        ("stages:\n" + GOOD_STAGE + "    on_failure: panic\n", "use halt or rollback"),
        (
            "stages:\n" + GOOD_STAGE + "    ramp: linear\n",
            ":9: stages[0].ramp: 'linear' is not a ramp; use none or exponential",
        ),
        (
            "stages:\n" + GOOD_STAGE + "    cutoff_behavior: CANCEL_TASK\n",
            ":9: stages[0].cutoff_behavior: 'CANCEL_TASK' is not a cutoff_behavior; use carry_over, continue or cancel",
        ),
        ("stages:\n" + GOOD_STAGE + GOOD_STAGE, "stage name 'dev' is used twice"),
        ("stages:\n  - name: x\n    targets: {patch_group: a, instance_ids: [b]}\n", "exactly one of"),
        (
            "stages:\n  - name: x\n    targets: {patch_group: a}\n    window: {schedule: 'cron(0 2 * * TUE#2 *)'}\n",
            "exactly one of day-of-month and day-of-week must be '?'",
        ),
        (
            "stages:\n  - name: x\n    targets: {patch_group: a}\n"
            "    window: {schedule: 'cron(0 2 * * ? *)', timezone: Mars/Olympus}\n",
            "stages[0].window.timezone",
        ),
    ],
)
def test_plan_errors_are_located(tmp_path: Path, body: str, expected: str) -> None:
    with pytest.raises(PlanError) as info:
        load_plan(write_plan(tmp_path, body))
    assert expected in str(info.value)
    assert str(tmp_path / "plan.yaml") in str(info.value)


def test_ramp_is_off_unless_a_stage_asks_for_ssms(tmp_path: Path) -> None:
    """User Guide, "Run commands at scale" describes SSM's exponential ramp; patchflow makes it a stage option.
    botocore's SSM model (``Command.MaxConcurrency``) says "The default value is 50."; patchflow's is 1 (the
    README's rate-control table says why)."""
    import botocore.session

    command = botocore.session.get_session().get_service_model("ssm").shape_for("Command")
    assert "The default value is 50." in command.members["MaxConcurrency"].documentation
    plan = load_plan(
        write_plan(
            tmp_path, "stages:\n" + GOOD_STAGE + GOOD_STAGE.replace("dev", "prod") + "    ramp: exponential\n"
        )
    )
    assert [s.ramp for s in plan.stages] == ["none", "exponential"]
    assert plan.stages[0].max_concurrency == Limit(1)


def test_cutoff_behavior_defaults_to_carry_over(tmp_path: Path) -> None:
    """botocore's model, RegisterTaskWithMaintenanceWindow ``CutoffBehavior``: AWS's default is CONTINUE_TASK;
    patchflow's is carry_over (the README's windows table says why)."""
    body = "".join(
        GOOD_STAGE.replace("dev", name) + (f"    cutoff_behavior: {name}\n" if name != "x" else "")
        for name in ("x", "carry_over", "continue", "cancel")
    )
    plan = load_plan(write_plan(tmp_path, "stages:\n" + body))
    assert [s.cutoff_behavior for s in plan.stages] == ["carry_over", "carry_over", "continue", "cancel"]


def test_missing_files_and_executor(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("name: p\nbaseline: nope.yaml\ncatalog: c.json\nexecutor: {kind: chef}\nstages: []\n")
    message = str(pytest.raises(PlanError, load_plan, path).value)
    assert "'nope.yaml' does not exist" in message and "paths are relative to the plan file" in message
    assert "'chef' is not an executor" in message


def test_durations() -> None:
    assert [parse_duration(t) for t in ("0s", "90s", "30m", "24h", "2d", "1h30m")] == [
        0,
        90,
        1800,
        86400,
        172800,
        5400,
    ]
    with pytest.raises(ValueError):
        parse_duration("")


def test_absurd_durations_and_scales_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at most 90d"):
        parse_duration("999999999999999999999d")
    path = write_plan(tmp_path, "stages:\n" + GOOD_STAGE + "    soak: 91d\n")
    path.write_text(path.read_text().replace("fleet: f.yaml}", "fleet: f.yaml, time_scale: .nan}"))
    message = str(pytest.raises(PlanError, load_plan, path).value)
    assert "at most 90d" in message and "time_scale" in message


def test_slack_channel(tmp_path: Path) -> None:
    good = write_plan(tmp_path, "slack_channel: C0123ABCD\nstages:\n" + GOOD_STAGE)
    assert load_plan(good).slack_channel == "C0123ABCD"
    bad = write_plan(tmp_path, "slack_channel: '#ops'\nstages:\n" + GOOD_STAGE)
    assert "is not a Slack channel id" in str(pytest.raises(PlanError, load_plan, bad).value)


def test_task_queue(tmp_path: Path) -> None:
    good = write_plan(tmp_path, "task_queue: patchflow-eu-central-1\nstages:\n" + GOOD_STAGE)
    assert load_plan(good).task_queue == "patchflow-eu-central-1"
    assert load_plan(write_plan(tmp_path, "stages:\n" + GOOD_STAGE)).task_queue is None
    bad = write_plan(tmp_path, "task_queue: 'eu central'\nstages:\n" + GOOD_STAGE)
    message = str(pytest.raises(PlanError, load_plan, bad).value)
    assert "plan.yaml:5: task_queue:" in message and "PATCHFLOW_TASK_QUEUE" in message
