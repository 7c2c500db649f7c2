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


def test_baseline_sources_are_chosen_by_product_and_leave_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """AWS User Guide, "How to specify an alternative patch source repository (Linux)": a source applies to the
    product versions it names. The agent picks the sources naming the host's product (any case), writes them
    into the operation's private directory with the options that make apt/dnf use only them, says which it
    used (or why none), names an unreachable one from the package manager's error, and removes the directory
    — and its parent once empty — afterwards."""
    monkeypatch.setattr(agent, "SOURCES_DIR", str(tmp_path / "sources"))
    mine = {
        "name": "corp",
        "products": ["debian12"],
        "configuration": "deb [trusted=yes] http://127.0.0.1:9/c c main",
    }
    other = {
        "name": "ubu",
        "products": ["Ubuntu22.04"],
        "configuration": "deb http://127.0.0.1:9/u jammy main",
    }
    journal = {"operation_id": "w/s/h/install/0", "product": "Debian12", "sources": [other, mine]}
    used = agent._used_sources(journal)
    assert used == [mine]
    assert "from the baseline Sources corp" in agent._sources_note(journal, used)
    nowhere = agent._sources_note({**journal, "product": "Rocky9"}, [])
    assert "no baseline Source names its product Rocky9" in nowhere and "Debian12" not in nowhere
    assert agent._sources_note({"sources": []}, []) == ""

    opts = agent._prepare_sources("w/s/h/install/0", used, "deb")
    base = Path(agent._sources_dir("w/s/h/install/0"))
    assert (base / "sources.list").read_text() == mine["configuration"] + "\n"
    assert f"Dir::State::Lists={base}/lists" in opts and (base / "lists" / "partial").is_dir()
    error = "Err:1 http://127.0.0.1:9/c c InRelease\n  Could not connect to 127.0.0.1:9"
    assert agent._unreachable(used, error, "deb") == "corp"
    agent._drop_sources("w/s/h/install/0")
    assert not (tmp_path / "sources").exists()

    repo = {"name": "curated", "products": ["Debian12"], "configuration": "[curated-al]\nbaseurl=http://x/\n"}
    opts = agent._prepare_sources("w/s/h/install/1", [repo], "rpm")
    base = Path(agent._sources_dir("w/s/h/install/1"))
    assert f"--setopt=reposdir={base}/repos.d" in opts and "--setopt=skip_if_unavailable=False" in opts
    assert (base / "repos.d" / "00-curated.repo").read_text() == repo["configuration"]
    assert agent._unreachable([repo], "Failed to download metadata for repo 'curated-al'", "rpm") == "curated"
    agent._drop_sources("w/s/h/install/1")
    assert not (tmp_path / "sources").exists()
