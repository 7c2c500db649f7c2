"""The on-host agent of the SSH executor, without SSH: its JSON stand-in (Debian's python3-minimal has no
json module), its bootstrap over stdin, and ssh plans in rollout plans."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patchflow.core.documents import parse_document
from patchflow.core.plans import PlanError, parse_plan
from patchflow.executors.ssh import agent
from patchflow.executors.ssh.executor import AGENT_SOURCE

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@given(json_values)
def test_the_json_stand_in_agrees_with_the_json_module(value: object) -> None:
    real = agent.json
    agent.json = None  # type: ignore[assignment]
    try:
        text = agent.dumps(value)
        assert json.loads(text) == value
        assert agent.loads(text) == value
        assert agent.loads(json.dumps(value)) == value
    finally:
        agent.json = real


def test_bootstrap_runs_the_agent_from_stdin_without_the_json_module(tmp_path: Path) -> None:
    # A python3 where `import json` fails, like python3-minimal: the agent must still answer.
    (tmp_path / "json.py").write_text("raise ImportError('no json in python3-minimal')\n")
    proc = subprocess.run(
        [sys.executable, "-S", "-c", agent.BOOTSTRAP],
        input=agent.payload(AGENT_SOURCE, "get", {"operation_id": "never-started"}),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    answer = json.loads(proc.stdout.strip().splitlines()[-1])
    assert answer["journal"] is None and isinstance(answer["now"], float)


def _plan(tmp_path: Path, executor: str) -> str:
    (tmp_path / "b.yaml").write_text("x")
    (tmp_path / "c.json").write_text("[]")
    (tmp_path / "inventory.yml").write_text("all: {}")
    return f"""name: lab
baseline: b.yaml
catalog: c.json
executor: {executor}
stages:
  - {{name: dev, targets: {{patch_group: dev}}, window: {{schedule: now}}, max_concurrency: "1", max_errors: "0"}}
"""


def test_plans_take_the_ssh_executor(tmp_path: Path) -> None:
    text = _plan(
        tmp_path, "{kind: ssh, inventory: inventory.yml, reboot_option: NoReboot, max_connections: 5}"
    )
    plan = parse_plan(parse_document(text, source=str(tmp_path / "plan.yaml"), kind="plan"))
    assert plan.executor.kind == "ssh" and plan.executor.inventory == tmp_path / "inventory.yml"
    assert plan.executor.reboot_option == "NoReboot" and plan.executor.max_connections == 5


def test_ssh_plan_mistakes_are_located(tmp_path: Path) -> None:
    text = _plan(tmp_path, "{kind: ssh, inventory: nope.yml, max_connections: 0, bucket: b}")
    with pytest.raises(PlanError) as err:
        parse_plan(parse_document(text, source=str(tmp_path / "plan.yaml"), kind="plan"))
    message = str(err.value)
    assert "executor.inventory: 'nope.yml' does not exist" in message
    assert "executor.max_connections: 0: expected a whole number from 1 to 1000" in message
    assert "executor.bucket: unknown key" in message


@pytest.mark.skipif(not Path("/usr/bin/apt-get").exists(), reason="needs an apt/dpkg machine")
def test_the_package_inventory_reads_dpkg_and_the_apt_indexes_of_this_machine() -> None:
    """The ``inventory`` operation (what the fake SSM endpoint's Scan reads on a host), run here without
    ``apt-get update``: dpkg's packages with their states, and what the downloaded indexes offer for them
    (read through ``apt-helper cat-file``, whatever compression apt keeps them in)."""
    answer = agent.op_inventory({"refresh": False})
    assert "error" not in answer, answer
    dpkg = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${Version} ${db:Status-Abbrev}\\n"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    expected = {line.split()[0]: line.split()[1] for line in dpkg if line.split()[2:3] == ["ii"]}
    assert {n: v for n, _a, v, state in answer["installed"] if state == "ii"} == expected
    names = {n for n, *_ in answer["installed"]}
    assert all(row[0] in names and len(row) == 7 for row in answer["offered"])
    if any(Path("/var/lib/apt/lists").glob("*_Packages*")):  # indexes were downloaded on this machine
        assert answer["offered"]
