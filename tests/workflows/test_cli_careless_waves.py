"""The wave commands under careless use (issue 16): real ``patchflow`` processes against the real Temporal dev
server — a broken plan is refused before anything starts, a missing worker is said within seconds, waiting has
a timeout, and SIGTERM stops the demo."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from temporalio.testing import WorkflowEnvironment

from patchflow.control.devserver import free_port
from patchflow.core.documents import dump_yaml
from tests.workflows.test_cli_waves import (
    cli,
    dev_server_env,
    embedded_env,
    fast_demo_plan,
    patchflow_process,
)


def demo_plan(directory: Path, **changes: Any) -> Path:
    """The shipped demo plan under a fresh name, with absolute paths, ten times faster, with ``changes`` to the
    prod stage."""
    # A name of its own: waves these tests leave behind on the shared dev server never look like another
    # test's plan (one wave per plan at a time).
    return fast_demo_plan(directory, name=f"careless-{uuid.uuid4().hex[:8]}", **changes)


def plan_name(path: Path) -> str:
    return str(yaml.safe_load(path.read_text())["name"])


@pytest.fixture
def env(dev_env: WorkflowEnvironment, tmp_path: Path) -> dict[str, str]:
    """The CLI's environment against the dev server, on a task queue of its own (no worker polls it)."""
    return dev_server_env(dev_env, tmp_path)


def kill_processes_mentioning(path: Path) -> None:
    """SIGKILL this user's processes whose command line names ``path`` (a test's own temporary directory)."""
    import signal

    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(path).encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except OSError:
            continue


async def _waves_on(dev_env: WorkflowEnvironment, task_queue: str) -> list[str]:
    return [wf.id async for wf in dev_env.client.list_workflows(f"TaskQueue = '{task_queue}'", limit=10)]


# ---------------------------------------------------------------------------------------------- 5. checks


async def test_wave_start_refuses_a_plan_whose_window_never_opens(
    dev_env: WorkflowEnvironment, env: dict[str, str], tmp_path: Path
) -> None:
    """``cron(0 2 30 2 ? *)`` (30 February) never opens: ``patchflow plan`` flags it, and ``wave start`` now
    refuses with the same problem (exit 2) instead of patching Dev and Test and failing at Prod."""
    plan = demo_plan(tmp_path, window={"schedule": "cron(0 2 30 2 ? *)", "duration_hours": 4})
    dry = cli("plan", str(plan), env=env)
    assert dry.returncode == 1 and "never opens" in dry.stdout
    started = cli("wave", "start", str(plan), env=env)
    assert started.returncode == 2, started.stderr
    assert f"not starting a wave of plan {plan_name(plan)}" in started.stderr
    assert "prod: the window schedule cron(0 2 30 2 ? *) never opens" in started.stderr
    assert await _waves_on(dev_env, env["PATCHFLOW_TASK_QUEUE"]) == []
    assert not (tmp_path / "data" / "patch-sets").exists()  # nothing pinned either

    no_targets = demo_plan(tmp_path, targets={"patch_group": "nobody"})
    refused = cli("wave", "start", str(no_targets), env=env)
    assert refused.returncode == 2 and "prod: no targets: patch group 'nobody'" in refused.stderr


# ---------------------------------------------------------------------------------------------- 6. SIGTERM


def test_demo_stops_cleanly_on_the_first_sigterm(tmp_path: Path) -> None:
    """SIGTERM (systemd, Kubernetes, ``kill``) used to be ignored while the demo waited at the approval gate,
    leaving it and its Temporal server running; now it stops like Ctrl-C: the worker and the API shut down,
    the embedded server stops, the viewer token is revoked."""
    import signal
    import threading
    import time

    from patchflow.control.devserver import port_open
    from patchflow.store import db

    port, api_port = free_port(), free_port()
    env = embedded_env(tmp_path, port, PATCHFLOW_API_PORT=str(api_port))
    demo = patchflow_process("demo", "--plan", str(demo_plan(tmp_path)), env=env)
    lines: list[str] = []
    readers = [
        threading.Thread(target=lambda s=stream: lines.extend(s), daemon=True)  # type: ignore[misc]
        for stream in (demo.stdout, demo.stderr)
    ]
    for reader in readers:
        reader.start()
    try:
        deadline = time.monotonic() + 120
        while not any("waiting for approval of prod" in line for line in lines):
            assert demo.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.2)
        demo.send_signal(signal.SIGTERM)
        code = demo.wait(timeout=30)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
            kill_processes_mentioning(tmp_path)  # the dev server it started, in a session of its own
    for reader in readers:
        reader.join(timeout=10)
    for stream in (demo.stdout, demo.stderr):
        stream.close()  # type: ignore[union-attr]
    output = "".join(lines)
    assert (
        code == 130 and "interrupted: the demo stopped its worker, API and Temporal dev server" in output
    ), output
    assert "Traceback" not in output and "Started server process" not in output
    assert not port_open("127.0.0.1", port) and not port_open("127.0.0.1", api_port)
    url = f"sqlite:///{tmp_path / 'data' / 'patchflow.db'}"
    with db.open_session(db.get_engine(url)) as session:
        tokens = db.list_tokens(session)
    assert [t.name for t in tokens] == ["demo-viewer"] and all(t.revoked for t in tokens)


# ---------------------------------------------------------------------------------------------- 7. no worker


def test_without_a_worker_commands_say_so_within_seconds(env: dict[str, str], tmp_path: Path) -> None:
    """Temporal up, no worker: ``wave start --wait`` used to hang silently, ``approve`` to take over a minute,
    ``status``/``list`` half a minute. Temporal's ``DescribeTaskQueue`` (workflowservice) lists the pollers of a
    task queue with their last access time; with none, each command says so at once (each call below is
    bounded by a timeout that the old behaviour exceeded; ``--wait`` gives a starting worker 10 s)."""
    queue = env["PATCHFLOW_TASK_QUEUE"]
    plan = demo_plan(tmp_path)
    started = cli("wave", "start", str(plan), "--wait", "--timeout", "600", env=env, timeout=45)
    assert started.returncode == 1, started.stderr
    assert f"no worker polls task queue '{queue}'" in started.stderr
    assert f"PATCHFLOW_TASK_QUEUE={queue} patchflow worker" in started.stderr
    wave_id = started.stderr.split("started wave ", 1)[1].split()[0]

    status = cli("wave", "status", wave_id, env=env, timeout=20)
    assert status.returncode == 1 and f"no worker polls task queue '{queue}'" in status.stderr
    approve = cli("wave", "approve", wave_id, "--stage", "prod", "--as", "ops-lead", env=env, timeout=20)
    assert approve.returncode == 1 and f"no worker polls task queue '{queue}'" in approve.stderr
    listed = cli("wave", "list", env=env, timeout=20)
    assert listed.returncode == 0 and wave_id in listed.stdout
    assert f"RUNNING (no worker polls task queue '{queue}')" in listed.stdout

    # One plan drives one fleet: a second wave is refused while the first runs (it cannot even answer here).
    second = cli("wave", "start", str(plan), env=env, timeout=20)
    assert second.returncode == 4, second.stderr
    assert (
        f"wave {wave_id} of plan {plan_name(plan)} is still running" in second.stderr
        and "--allow-concurrent" in second.stderr
    )
    anyway = cli("wave", "start", str(plan), "--allow-concurrent", env=env, timeout=20)
    assert anyway.returncode == 0 and "note: it waits until a worker comes" in anyway.stderr


@pytest.fixture
def worker(env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    """A ``patchflow worker`` process on the environment's task queue."""
    log = (tmp_path / "worker.log").open("wb")
    process = patchflow_process("worker", env={**os.environ, **env}, log=log)
    try:
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)
        log.close()


def test_wave_start_wait_has_a_timeout(env: dict[str, str], worker: None, tmp_path: Path) -> None:
    """With a worker, a wave whose first window opens on New Year's Day does not settle: ``--timeout`` ends the wait
    (exit 1) and says the wave goes on."""
    plan = demo_plan(tmp_path)
    data = yaml.safe_load(plan.read_text())
    data["stages"][0]["window"] = {"schedule": "cron(0 3 1 1 ? *)", "duration_hours": 1}  # New Year
    plan.write_text(dump_yaml(data))
    refused = cli("wave", "start", str(plan), "--timeout", "2", env=env)
    assert refused.returncode == 2 and "--timeout limits --wait" in refused.stderr
    waited = cli("wave", "start", str(plan), "--wait", "--timeout", "2", env=env, timeout=60)
    assert waited.returncode == 1, waited.stderr
    assert "did not settle within 2s; it keeps running: patchflow wave status" in waited.stderr


def test_wave_status_at_a_gate_says_who_approves_and_how(
    env: dict[str, str], worker: None, tmp_path: Path
) -> None:
    plan = demo_plan(tmp_path)
    data = yaml.safe_load(plan.read_text())
    data["stages"][0]["gate"] = {"approval": {"approvers": ["ops.lead", "sre-oncall"]}}
    plan.write_text(dump_yaml(data))
    started = cli("wave", "start", str(plan), "--wait", "--format", "json", env=env, timeout=90)
    assert started.returncode == 0, started.stderr
    wave_id = json.loads(started.stdout)["wave_id"]
    status = cli("wave", "status", wave_id, env=env)
    assert status.returncode == 0, status.stderr
    assert (
        f"waiting for approval of dev by ops.lead or sre-oncall: patchflow wave approve {wave_id} --stage dev "
        "--as ops.lead" in " ".join(status.stdout.split())
    )
