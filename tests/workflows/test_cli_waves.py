"""The operator CLI end to end: real ``patchflow`` processes against a real Temporal server and worker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pytest
import yaml
from temporalio.testing import WorkflowEnvironment

from patchflow.control.devserver import free_port, port_open
from patchflow.core.documents import dump_yaml
from tests.conftest import EXAMPLES_DIR, REPO_ROOT


def cli(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "patchflow", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        cwd=REPO_ROOT,
        timeout=timeout,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


def fast_demo_plan(directory: Path, name: str | None = None, **prod_changes: Any) -> Path:
    """The shipped demo plan (under ``name``, if given), ten times faster, with absolute paths and
    ``prod_changes`` to its prod stage, written to ``directory/plan.yaml``."""
    plan = yaml.safe_load((EXAMPLES_DIR / "demo-plan.yaml").read_text())
    if name is not None:
        plan["name"] = name
    plan["baseline"] = str((EXAMPLES_DIR / plan["baseline"]).resolve())
    plan["catalog"] = str(EXAMPLES_DIR / plan["catalog"])
    plan["executor"]["fleet"] = str(EXAMPLES_DIR / plan["executor"]["fleet"])
    plan["executor"]["time_scale"] = 0.1
    for stage in plan["stages"]:
        stage["soak"] = "0s"
    plan["stages"][2].update(prod_changes)
    path = directory / "plan.yaml"
    path.write_text(dump_yaml(plan))
    return path


def dev_server_env(dev_env: WorkflowEnvironment, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment against the dev server, on a task queue of its own, data under ``tmp_path``."""
    return {
        "PATCHFLOW_TEMPORAL_ADDRESS": dev_env.client.service_client.config.target_host,
        "PATCHFLOW_TASK_QUEUE": f"tq-{uuid.uuid4()}",
        "PATCHFLOW_DATA_DIR": str(tmp_path / "data"),
        "PATCHFLOW_WORKER_METRICS_PORT": str(free_port()),
        "PATCHFLOW_TEMPORAL_METRICS_PORT": str(free_port()),
    }


def embedded_env(tmp_path: Path, port: int, **more: str) -> dict[str, str]:
    """This process's environment for a command that runs its own stack: Temporal on 127.0.0.1:``port``, data
    under ``tmp_path``, no metrics ports; ``more`` settings on top."""
    return {
        **os.environ,
        "PATCHFLOW_TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
        "PATCHFLOW_DATA_DIR": str(tmp_path / "data"),
        "PATCHFLOW_WORKER_METRICS_PORT": "none",
        "PATCHFLOW_TEMPORAL_METRICS_PORT": "none",
        **more,
    }


def patchflow_process(
    *args: str, env: dict[str, str], log: IO[bytes] | None = None, text: bool = True
) -> Any:
    """``patchflow ARGS`` started in the background; its output piped (or written to ``log``)."""
    return subprocess.Popen(
        [sys.executable, "-m", "patchflow", *args],
        env=env,
        cwd=REPO_ROOT,
        stdout=log or subprocess.PIPE,
        stderr=log or subprocess.PIPE,
        text=text and log is None,
    )


@pytest.fixture
def fast_plan(tmp_path: Path) -> Path:
    """The shipped demo plan, running ten times faster, with absolute paths."""
    return fast_demo_plan(tmp_path)


@pytest.fixture
def stack(dev_env: WorkflowEnvironment, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A ``patchflow worker`` process on its own task queue; yields the CLI's environment."""
    env = dev_server_env(dev_env, tmp_path)
    log = (tmp_path / "worker.log").open("wb")
    worker = patchflow_process("worker", env={**os.environ, **env}, log=log)
    try:
        yield env
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=15)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        log.close()


def test_wave_lifecycle_through_the_cli(stack: dict[str, str], fast_plan: Path) -> None:
    started = cli("wave", "start", str(fast_plan), "--wait", "--format", "json", env=stack)
    assert started.returncode == 0, started.stderr
    status = json.loads(started.stdout)
    wave_id = status["wave_id"]
    assert status["state"] == "waiting_approval"
    assert [s["state"] for s in status["stages"]] == ["succeeded", "succeeded", "waiting_approval"]
    test_stage = status["stages"][1]
    assert {i["id"]: i["state"] for i in test_stage["instances"]}["i-0test000000000004"] == "failed"

    refused = cli("wave", "approve", wave_id, "--stage", "prod", "--as", "mallory", env=stack)
    assert refused.returncode == 4
    assert "'mallory' may not approve stage 'prod'" in refused.stderr
    wrong_stage = cli("wave", "approve", wave_id, "--stage", "staging", "--as", "ops-lead", env=stack)
    assert wrong_stage.returncode == 4 and "no stage 'staging'" in wrong_stage.stderr

    approved = cli(
        "wave", "approve", wave_id, "--stage", "prod", "--as", "ops-lead", "-m", "CAB-1234", env=stack
    )
    assert approved.returncode == 0, approved.stderr
    # A gate takes one decision: a later one is refused (exit 4) with who decided and when.
    second = cli("wave", "reject", wave_id, "--stage", "prod", "--as", "sre-oncall", env=stack)
    assert second.returncode == 4, second.stderr
    assert "stage 'prod' was already approved by ops-lead at " in second.stderr
    deadline = time.monotonic() + 60
    while True:
        report = json.loads(cli("wave", "status", wave_id, "--format", "json", env=stack).stdout)
        if report["state"] == "succeeded" or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert report["state"] == "succeeded"
    assert report["patch_set_id"] == status["patch_set_id"]
    late = cli("wave", "reject", wave_id, "--stage", "prod", "--as", "sre-oncall", env=stack)
    assert late.returncode == 4 and "stage 'prod' was already approved by ops-lead at " in late.stderr
    for stage in report["stages"]:
        assert set(stage) >= {"name", "state", "instances"}
        for instance in stage["instances"]:
            assert set(instance) >= {"id", "state"}
    prod = report["stages"][2]
    assert len(prod["instances"]) == 20 and {i["state"] for i in prod["instances"]} == {"succeeded"}
    # --limit/--offset: one page per stage, with every stage's instance count and counts per state.
    paged = json.loads(
        cli("wave", "status", wave_id, "--limit", "5", "--offset", "15", "--format", "json", env=stack).stdout
    )
    assert [i["id"] for i in paged["stages"][2]["instances"]] == [i["id"] for i in prod["instances"]][15:]
    assert paged["stages"][2]["instances_total"] == 20 and paged["stages"][2]["state_counts"] == {
        "succeeded": 20
    }
    bad = cli("wave", "status", wave_id, "--limit", "0", env=stack)
    assert bad.returncode == 2 and "--limit" in bad.stderr and "Traceback" not in bad.stderr
    assert ("approve", "ops-lead", "CAB-1234") in {
        (a["action"], a["who"], a["comment"]) for a in report["audit"]
    }

    fleet = json.loads(
        cli("fleet", "status", str(EXAMPLES_DIR / "fleet.yaml"), "--format", "json", env=stack).stdout
    )
    counts = {i["id"]: i["install_count"] for i in fleet["instances"]}
    assert len(counts) == 29
    assert all(n == 1 for n in counts.values())  # the failing instance counted its one attempt too
    pinned = {
        p["name"]: p["version"]
        for p in json.loads(
            cli("patch-set", "show", status["patch_set_id"], "--format", "json", env=stack).stdout
        )["patches"]
    }
    for inst in fleet["instances"]:
        if inst["id"] == "i-0test000000000004":
            continue
        have = {p["name"]: p["version"] for p in inst["installed"]}
        assert have["openssl"] == pinned["openssl"]  # every stage installed the one pinned set

    # The history database has the wave (recorded by the worker's activities) and the CLI's gate decision.
    from patchflow.store import db

    with db.open_session(db.get_engine(f"sqlite:///{stack['PATCHFLOW_DATA_DIR']}/patchflow.db")) as session:
        assert db.get_wave(session, wave_id=wave_id).state == "succeeded"
        decisions = [(d.who, d.decision, d.via) for d in db.list_decisions(session, wave_id=wave_id)]
        assert ("ops-lead", "approve", "cli") in decisions

    listed = json.loads(cli("wave", "list", "--format", "json", env=stack).stdout)
    assert wave_id in {w["wave_id"] for w in listed}

    # The worker process exposes patchflow's metrics and the Temporal SDK's, each on its own port.
    own = (
        urllib.request.urlopen(f"http://127.0.0.1:{stack['PATCHFLOW_WORKER_METRICS_PORT']}/metrics")
        .read()
        .decode()
    )
    assert 'patchflow_patch_duration_seconds_count{executor="simulated",outcome="succeeded"} 28.0' in own
    sdk = (
        urllib.request.urlopen(f"http://127.0.0.1:{stack['PATCHFLOW_TEMPORAL_METRICS_PORT']}/metrics")
        .read()
        .decode()
    )
    assert "temporal_worker_task_slots_available" in sdk

    again = cli("wave", "resume", wave_id, env=stack)
    assert again.returncode == 4 and "has already ended" in again.stderr
    missing = cli("wave", "status", "wave-does-not-exist", env=stack)
    assert missing.returncode == 3 and "no wave 'wave-does-not-exist'" in missing.stderr


def test_plan_dry_run_changes_nothing(tmp_path: Path, fast_plan: Path) -> None:
    env = {"PATCHFLOW_DATA_DIR": str(tmp_path / "data")}
    proc = cli("plan", str(fast_plan), "--format", "json", env=env)
    assert proc.returncode == 0, proc.stderr
    dry = json.loads(proc.stdout)
    assert [s["name"] for s in dry["stages"]] == ["dev", "test", "prod"]
    assert [len(s["targets"]) for s in dry["stages"]] == [3, 6, 20]
    upgrades = {u["name"]: (u["from"], u["to"]) for u in dry["stages"][0]["targets"][0]["upgrades"]}
    assert upgrades["openssl"] == ("3.0.2-0ubuntu1.10", "3.0.2-0ubuntu1.16")
    fleet = json.loads(
        cli("fleet", "status", str(EXAMPLES_DIR / "fleet.yaml"), "--format", "json", env=env).stdout
    )
    assert all(i["install_count"] == 0 for i in fleet["instances"])
    assert not (tmp_path / "data" / "patch-sets").exists()


def test_window_preview_json(tmp_path: Path) -> None:
    proc = cli(
        "window", "preview", "cron(0 2 ? * TUE#2 *)", "--timezone", "Europe/Berlin", "--offset-days", "3",
        "--duration-hours", "4", "--cutoff-hours", "1", "--after", "2026-11-01T00:00:00Z", "--count", "2",
        "--format", "json", env={"PATCHFLOW_DATA_DIR": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["windows"] == [
        {
            "start": "2026-11-13T02:00:00+01:00",
            "end": "2026-11-13T06:00:00+01:00",
            "cutoff": "2026-11-13T05:00:00+01:00",
        },
        {
            "start": "2026-12-11T02:00:00+01:00",
            "end": "2026-12-11T06:00:00+01:00",
            "cutoff": "2026-12-11T05:00:00+01:00",
        },
    ]
    bad = cli("window", "preview", "cron(0 2 * * TUE#2 *)", "--after", "2026-11-01T00:00:00Z", env={})
    assert bad.returncode == 2 and "write cron(0 2 ? * TUE#2 *)" in bad.stderr


def test_demo_runs_end_to_end_visible_through_the_api_and_leaves_nothing_running(tmp_path: Path) -> None:
    import re
    import threading

    port, api_port = free_port(), free_port()
    demo = patchflow_process(
        "demo", "--approve", env=embedded_env(tmp_path, port, PATCHFLOW_API_PORT=str(api_port))
    )
    assert demo.stderr is not None and demo.stdout is not None
    stderr_lines: list[str] = []
    token: str | None = None
    for line in demo.stderr:  # the demo announces a viewer token before the wave runs
        stderr_lines.append(line)
        found = re.search(r"Bearer (\S+)'", line)
        if found:
            token = found.group(1)
            break
    assert token, "".join(stderr_lines)
    rest: list[str] = []
    reader = threading.Thread(target=lambda: rest.extend(demo.stderr or []), daemon=True)
    reader.start()
    seen_states: set[str] = set()
    metrics_text = ""
    deadline = time.monotonic() + 120
    while demo.poll() is None and time.monotonic() < deadline:
        try:
            request = urllib.request.Request(
                f"http://127.0.0.1:{api_port}/waves", headers={"Authorization": f"Bearer {token}"}
            )
            waves = json.loads(urllib.request.urlopen(request, timeout=5).read())["waves"]
            seen_states.update(w["state"] for w in waves)
            metrics_request = urllib.request.Request(
                f"http://127.0.0.1:{api_port}/metrics", headers={"Authorization": f"Bearer {token}"}
            )
            metrics_text = urllib.request.urlopen(metrics_request, timeout=5).read().decode() or metrics_text
        except OSError:
            pass
        if {"running", "waiting_approval"} & seen_states and "patchflow_waves" in metrics_text:
            break
        time.sleep(0.3)
    out, _ = demo.communicate(timeout=240)
    reader.join(timeout=10)
    assert demo.returncode == 0, out + "".join(stderr_lines + rest)
    assert {"running", "waiting_approval"} & seen_states, seen_states  # the wave was visible while it ran
    assert (
        'patchflow_waves{state="running"}' in metrics_text
        or 'patchflow_waves{state="waiting_approval"}' in metrics_text
    )
    assert "wave succeeded" in out and "i-0test000000000004 failed" in out
    assert "stage prod approved by ops-lead" in out + "".join(rest)
    assert not port_open("127.0.0.1", port) and not port_open("127.0.0.1", api_port)


def test_unreachable_server_is_a_clear_error(tmp_path: Path, fast_plan: Path) -> None:
    env = {"PATCHFLOW_TEMPORAL_ADDRESS": f"127.0.0.1:{free_port()}", "PATCHFLOW_DATA_DIR": str(tmp_path)}
    proc = cli("wave", "status", "wave-x", env=env)
    assert proc.returncode == 1 and "cannot reach Temporal" in proc.stderr and "patchflow dev" in proc.stderr


def test_dev_starts_the_embedded_stack_and_ctrl_c_stops_it(tmp_path: Path, fast_plan: Path) -> None:
    port, ui_port, api_port = free_port(), free_port(), free_port()
    env = embedded_env(tmp_path, port, PATCHFLOW_API_PORT=str(api_port))
    dev = patchflow_process("dev", "--ui-port", str(ui_port), env=env, text=False)
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port):
            assert dev.poll() is None, "patchflow dev exited early"
            assert time.monotonic() < deadline
            time.sleep(0.2)
        # The embedded worker serves waves: a whole wave runs through the CLI against it.
        started = cli("wave", "start", str(fast_plan), "--wait", "--format", "json", env=env)
        assert json.loads(started.stdout)["state"] == "waiting_approval"
        assert (tmp_path / "data" / "temporal.db").exists()  # persisted under the data directory
    finally:
        dev.send_signal(signal.SIGINT)
        _, stderr = dev.communicate(timeout=30)
    assert not port_open("127.0.0.1", port) and not port_open("127.0.0.1", ui_port)
    assert not port_open("127.0.0.1", api_port)
    assert b"Traceback" not in stderr and b"stopped" in stderr and b"patchflow API on" in stderr


def test_demo_through_the_ssm_executor_on_fake_aws(tmp_path: Path) -> None:
    port = free_port()
    env = {
        "PATCHFLOW_TEMPORAL_ADDRESS": f"127.0.0.1:{port}",
        "PATCHFLOW_DATA_DIR": str(tmp_path / "data"),
        "PATCHFLOW_SSM_POLL_INITIAL_SECONDS": "0.2",
        "PATCHFLOW_SSM_POLL_MAX_SECONDS": "0.5",
        "PATCHFLOW_SSM_MAX_REQUESTS_PER_SECOND": "200",
        "PATCHFLOW_API_PORT": str(free_port()),
    }
    proc = cli("demo", "--fake-aws", "--approve", env=env, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "fake AWS" in proc.stderr and "wave succeeded" in proc.stdout
    assert "i-0test000000000004 failed (SSM Failed" in proc.stdout
    assert not port_open("127.0.0.1", port)
