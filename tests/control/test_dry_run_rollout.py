"""``patchflow plan`` shows per stage what issue 14's rollout controls will do: lifecycle hooks (steps per
phase), reboots, the canary and its analysis queries, and alert blocking (the stage's own, else the plan's).
The full example plan (README "A full plan") is dry-run against the example fleet by a real process."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import yaml

from tests.conftest import BASELINES_DIR, EXAMPLES_DIR
from tests.test_cli import run as cli

AT = "2026-11-10T00:00:00Z"


def full_plan(tmp_path: Path) -> Path:
    """The full example plan on the simulated example fleet (a copy: waves elsewhere upgrade the original)."""
    plan = yaml.safe_load((EXAMPLES_DIR / "full-plan.yaml").read_text())
    shutil.copy(EXAMPLES_DIR / "fleet.yaml", tmp_path / "fleet.yaml")
    plan["baseline"] = str(BASELINES_DIR / "ubuntu-staged.yaml")
    plan["catalog"] = str(EXAMPLES_DIR / "ubuntu-catalog.json")
    plan["executor"] = {"kind": "simulated", "fleet": "fleet.yaml"}
    plan["stages"][0]["block_on_alerts"] = {"prometheus": "http://127.0.0.1:9090", "match": "^Dev$"}
    plan["stages"][0]["reboot"] = {"policy": "never"}
    plan["stages"][0]["hooks"] = {"pre_install": ["echo draining"], "on_hook_failure": "halt_stage"}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    return path


def test_the_table_shows_hooks_reboots_canary_analysis_and_alert_blocking(tmp_path: Path) -> None:
    shown = cli("plan", str(full_plan(tmp_path)), "--at", AT, data_dir=tmp_path / "data", check=True).stdout
    text = " ".join(shown.split())
    dev, rest = text.split(" test: ", 1)
    test, prod = rest.split(" prod: ", 1)
    hooks = "hooks: pre_install 4, post_install 1, post_reboot 1, on_exit 2 step(s); on_hook_failure fail_instance"
    assert hooks in test and hooks in prod  # the plan's; on_exit: ExitStandby and re-registration, automatic
    assert "hooks: pre_install 1 step(s); on_hook_failure halt_stage" in dev  # the stage's own
    assert "reboot: never (instances needing one stay reboot debt)" in dev
    assert "reboot: if_needed, right after the install" in test
    assert (
        "reboot: if_needed, in the reboot window cron(0 4 ? * SUN *) Europe/Berlin, 2h, 10% at once, "
        "overdue after 7 day(s)"
    ) in prod
    assert "canary: the first 2 target(s), soak 600s, then the analysis" in prod
    assert (
        'analysis at http://prometheus:9090: error-rate `sum(rate(http_errors_total{instance_id=~"{{instances}}"}'
        "[5m]))` < 0.01, 10x every 60s, failure_limit 2, compare unpatched; inconclusive: approval"
    ) in prod
    assert "canary" not in dev + test and "analysis at" not in dev + test
    assert "block_on_alerts: no dispatch while an alert matching ^Dev$ fires at http://127.0.0.1:9090" in dev
    plan_wide = (
        "block_on_alerts: no dispatch while an alert matching ^(NodeDown|HighErrorRate)$ fires at "
        "http://prometheus:9090 (checked every 60s)"
    )
    assert plan_wide in test and plan_wide in prod and plan_wide not in dev


def test_the_json_carries_the_same(tmp_path: Path) -> None:
    result = cli("plan", str(full_plan(tmp_path)), "--at", AT, "--format", "json", data_dir=tmp_path / "data")
    dev, test, prod = json.loads(result.stdout)["stages"]
    assert prod["hooks"] == {
        "phases": {"pre_install": 4, "post_install": 1, "post_reboot": 1, "on_exit": 2},
        "on_hook_failure": "fail_instance",
    }
    assert prod["reboot"] == {
        "policy": "if_needed",
        "window": "cron(0 4 ? * SUN *) Europe/Berlin, 2h",
        "max_concurrency": "10%",
        "deadline_days": 7,
    }
    assert test["reboot"] == {
        "policy": "if_needed",
        "window": None,
        "max_concurrency": None,
        "deadline_days": None,
    }
    assert prod["canary"] == {"count": 2, "soak_seconds": 600}
    assert prod["analysis"]["queries"] == [
        {
            "name": "error-rate",
            "query": 'sum(rate(http_errors_total{instance_id=~"{{instances}}"}[5m]))',
            "success": "< 0.01",
            "count": 10,
            "interval_seconds": 60,
            "failure_limit": 2,
        }
    ]
    assert (prod["analysis"]["compare"], prod["analysis"]["inconclusive"]) == ("unpatched", "approval")
    assert dev["hooks"] == {"phases": {"pre_install": 1}, "on_hook_failure": "halt_stage"}
    assert dev["canary"] is None and dev["analysis"] is None
    assert dev["block_on_alerts"] == {
        "prometheus": "http://127.0.0.1:9090",
        "match": "^Dev$",
        "check_seconds": 60,
    }
    assert prod["block_on_alerts"]["match"] == "^(NodeDown|HighErrorRate)$"


def test_a_plan_without_them_shows_none(tmp_path: Path) -> None:
    plan = yaml.safe_load((EXAMPLES_DIR / "demo-plan.yaml").read_text())
    shutil.copy(EXAMPLES_DIR / "fleet.yaml", tmp_path / "fleet.yaml")
    plan["baseline"] = str(BASELINES_DIR / "ubuntu-staged.yaml")
    plan["catalog"] = str(EXAMPLES_DIR / "ubuntu-catalog.json")
    plan["executor"]["fleet"] = "fleet.yaml"
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(plan, sort_keys=False))
    shown = cli("plan", str(path), "--at", AT, data_dir=tmp_path / "data", check=True).stdout
    assert not {"hooks:", "reboot:", "canary:", "analysis at", "block_on_alerts:"} & set(shown.split())
    stages = json.loads(cli("plan", str(path), "--format", "json", data_dir=tmp_path / "data").stdout)[
        "stages"
    ]
    for stage in stages:
        assert [stage[k] for k in ("hooks", "reboot", "canary", "analysis", "block_on_alerts")] == [None] * 5
