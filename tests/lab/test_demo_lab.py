"""What ``patchflow demo --lab`` runs (issue 14, "Done when"): lifecycle hooks on every instance, and Prod
starting with a canary whose analysis reads a real Prometheus scraping a probe of the lab hosts' SSH ports.

The whole demo was run by hand on a fresh lab (README "A full plan"); here its plan and its Prometheus are built
on the session's lab, and the plan is loaded the way the demo loads it."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import pytest

from patchflow.cli.lab import DEMO_HOOKS, DEMO_METRIC, _demo_prometheus, _write_demo_plan
from patchflow.core.plans import load_plan
from patchflow.testing.lab.fleet import Lab
from patchflow.testing.prometheus import PrometheusNotInstalled, prometheus_binary

pytestmark = pytest.mark.lab


def test_the_lab_demo_plan_has_hooks_everywhere_and_a_canary_analysed_by_prometheus(
    lab: Lab, tmp_path: Path
) -> None:
    try:
        prometheus_binary()
    except PrometheusNotInstalled:
        pytest.skip("Debian's prometheus is not installed")
    (tmp_path / "catalog.json").write_text("{}")
    with contextlib.ExitStack() as stack:
        prometheus = _demo_prometheus(stack, lab, tmp_path)
        assert prometheus is not None and prometheus.url.startswith("http://127.0.0.1:")
        url = prometheus.url
        # The probe reports every lab host, up while its sshd answers, through a real scrape.
        hosts = {h.id for h in lab.hosts()}
        deadline = time.monotonic() + 30
        while {s["metric"]["instance_id"] for s in prometheus.query(f"{DEMO_METRIC} == 1")} != hosts:
            assert time.monotonic() < deadline, prometheus.query(DEMO_METRIC)
            time.sleep(0.5)
        plan_path = _write_demo_plan(lab, tmp_path, None, url)
    plan = load_plan(plan_path)
    assert plan.stages, "the session lab has dev/test/prod groups"
    for stage in plan.stages:  # hooks on every instance of every stage
        assert stage.hooks is not None
        assert [s.command for s in stage.hooks.steps("pre_install")] == [
            DEMO_HOOKS["pre_install"][0]["command"]
        ]
    prod = next(s for s in plan.stages if s.name == "prod")
    assert prod.canary is not None and prod.canary.count == 1
    assert prod.gate.analysis is not None and prod.gate.analysis.prometheus == url


def test_without_prometheus_the_lab_demo_keeps_an_approval_gate(lab: Lab, tmp_path: Path) -> None:
    (tmp_path / "catalog.json").write_text("{}")
    plan = load_plan(_write_demo_plan(lab, tmp_path, None, None))
    prod = next(s for s in plan.stages if s.name == "prod")
    assert prod.canary is None and prod.gate.kind == "approval" and prod.gate.approvers == ("ops-lead",)
