"""The README's full example plan (``baselines/examples/full-plan.yaml``) loads, and a wave started from it
carries every rollout feature of issue 14 into its stages — hooks, disruption budgets, zone order, reboots,
the canary with its analysis and alert blocking — as the README's "A full plan" says."""

from __future__ import annotations

from pathlib import Path

from patchflow.config import Settings
from patchflow.control.waves import pin_patch_set, wave_input
from patchflow.core.hooks import ON_EXIT, POST_REBOOT, PRE_INSTALL
from patchflow.core.plans import load_plan
from tests.conftest import EXAMPLES_DIR, REPO_ROOT

FULL_PLAN = EXAMPLES_DIR / "full-plan.yaml"


def test_the_full_example_plan_reaches_every_stage_of_a_wave(tmp_path: Path) -> None:
    plan = load_plan(FULL_PLAN)
    settings = Settings(data_dir=tmp_path)
    inp = wave_input(plan, settings, pin_patch_set(plan, settings))
    dev, test, prod = inp.stages

    # Plan-wide hooks on every stage: the drain first, and its undo although on_exit lists nothing.
    for stage in inp.stages:
        assert stage.hooks is not None
        assert [s.kind for s in stage.hooks.steps(PRE_INSTALL)][:3] == [
            "elb_deregister",
            "asg_standby",
            "ebs_snapshot",
        ]
        assert stage.hooks.steps(POST_REBOOT)
        assert {s.kind for s in stage.hooks.steps(ON_EXIT)} >= {"asg_exit_standby", "elb_register"}

    # The plan's budget per Auto Scaling group; Prod's own per cluster, zone by zone.
    assert (dev.disruption_max, dev.disruption_per) == ("10%", "tag:aws:autoscaling:groupName")
    assert (prod.disruption_max, prod.disruption_per, prod.rollout) == ("1", "tag:Cluster", "zone_by_zone")

    # patchflow reboots: Dev and Test inside their batches, Prod in its own reboot window with a deadline.
    assert dev.reboot is not None and dev.reboot.policy == "if_needed" and dev.reboot.window is None
    assert prod.reboot is not None and prod.reboot.window is not None and prod.reboot.deadline_days == 7

    # Prod: two canaries, then the analysis decides; alerts block every stage (the plan's default).
    assert (prod.canary_count, prod.canary_soak_seconds, prod.gate) == (2, 600, "analysis")
    assert prod.analysis is not None and prod.analysis.compare == "unpatched"
    assert prod.approvers == ["ops-lead"]
    assert all(s.block_on_alerts is not None for s in (dev, test, prod))
    assert test.gate == "health"


def test_the_readme_points_at_the_full_example_plan() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    assert "baselines/examples/full-plan.yaml" in readme
