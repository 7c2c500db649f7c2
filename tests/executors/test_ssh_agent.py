"""The on-host agent of the SSH executor, without SSH: its JSON stand-in (Debian's python3-minimal has no
json module), its bootstrap over stdin, and ssh plans in rollout plans."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from patchflow.core import versions
from patchflow.core.documents import parse_document
from patchflow.core.plans import PlanError, parse_plan
from patchflow.errors import InvalidVersionError
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


VERSIONS = st.builds(
    lambda epoch, upstream, revision: f"{epoch}{upstream}{revision}",
    st.sampled_from(["", "0:", "1:", "2:", "10:"]),
    st.from_regex(r"[0-9][0-9a-zA-Z.+~]{0,8}", fullmatch=True),
    st.sampled_from(["", "-1", "-0", "-1.1", "-1~bpo1", "-2+deb12u1", "-10", "-a1"]),
)
TRICKY = [
    ("1.0", "1.0-0"),
    ("1.0~rc1-1", "1.0-1"),
    ("1.0~~", "1.0~"),
    ("1.0", "1.0+b1"),
    ("1:0.1", "2.0"),
    ("3.0.2-1", "3.0.10-1"),
    ("1.01", "1.1"),
    ("1.0a", "1.0+"),
    ("2.30-1ubuntu1", "2.30-1"),
    ("0:1.0-1", "1.0-1"),
]


def _dpkg_order(a: str, b: str) -> int:
    def holds(op: str) -> bool:
        return subprocess.run(["dpkg", "--compare-versions", a, op, b], check=False).returncode == 0

    return -1 if holds("lt") else 0 if holds("eq") else 1


def _sign(n: int) -> int:
    return (n > 0) - (n < 0)


@pytest.mark.skipif(not Path("/usr/bin/dpkg").exists(), reason="needs dpkg to compare with")
@pytest.mark.parametrize(("a", "b"), TRICKY)
def test_the_agents_version_order_is_dpkgs_on_tricky_versions(a: str, b: str) -> None:
    """The agent decides which pinned packages are below their version without a ``dpkg --compare-versions``
    process per package; its order must be dpkg's (Debian Policy 5.6.12 "Version", dpkg ``version.c``)."""
    assert _sign(agent.debian_compare(a, b)) == _dpkg_order(a, b)
    assert _sign(agent.debian_compare(b, a)) == _dpkg_order(b, a)


@pytest.mark.skipif(not Path("/usr/bin/dpkg").exists(), reason="needs dpkg to compare with")
@given(VERSIONS, VERSIONS)
def test_the_agents_version_order_is_dpkgs(a: str, b: str) -> None:
    """The agent is standalone on the host (no patchflow imports), so it carries its own copy of the order:
    it must agree with dpkg and with :func:`patchflow.core.versions.compare`."""
    assert _sign(agent.debian_compare(a, b)) == _dpkg_order(a, b)
    with contextlib.suppress(InvalidVersionError):
        assert _sign(agent.debian_compare(a, b)) == _sign(versions.compare("deb", a, b))
    assert agent._compare(a, "lt", b) == (_dpkg_order(a, b) < 0)


def _journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **fields: object) -> dict[str, object]:
    monkeypatch.setattr(agent, "JOURNAL_DIR", str(tmp_path / "operations"))
    journal = {
        "operation_id": "w/dev/h/install/0",
        "kind": "install",
        "packages": [["app", "all", "1.1-1"]],
        "state": "transacted",
        "pid": None,
        "boot_id": agent._boot_id(),
        "started_at": 1.0,
        "before": [["app", "all", "1.0-1"]],
        **fields,
    }
    agent._save(journal)
    return journal


def _transacted(reboot_required: bool) -> dict[str, object]:
    return {
        "status": "succeeded",
        "message": "installed 1 package(s)",
        "changed": [["app", "all", "1.0-1", "1.1-1"]],
        "reboot_required": reboot_required,
        "audit": "",
    }


def test_wait_closes_a_finished_install_in_the_same_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``wait`` with ``close``: no reboot needed -> ``done`` at once (no separate ``mark`` round trip)."""
    _journal(tmp_path, monkeypatch, result=_transacted(False))
    journal = agent.op_wait({"operation_id": "w/dev/h/install/0", "seconds": 1, "close": "RebootIfNeeded"})[
        "journal"
    ]
    assert journal["state"] == "done"
    assert journal["final"]["status"] == "succeeded" and not journal["final"]["pending_reboot"]
    assert agent._load("w/dev/h/install/0")["state"] == "done"  # written to the journal on the host


def test_wait_leaves_a_reboot_to_the_executor_and_closes_no_reboot_as_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _journal(tmp_path, monkeypatch, result=_transacted(True))
    request = {"operation_id": "w/dev/h/install/0", "seconds": 1}
    assert agent.op_wait({**request, "close": "RebootIfNeeded"})["journal"]["state"] == "transacted"
    assert agent.op_wait(request)["journal"]["state"] == "transacted"  # no close: unchanged behaviour
    closed = agent.op_wait({**request, "close": "NoReboot"})["journal"]
    assert closed["state"] == "done" and closed["final"]["pending_reboot"] is True
    assert "pending_reboot: the host requires a reboot" in closed["final"]["message"]


@pytest.mark.skipif(not Path("/usr/bin/dpkg-query").exists(), reason="needs a dpkg machine")
def test_wait_wakes_when_the_transaction_dies_and_records_it_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait is woken by the transaction's exit (a pidfd), not by the end of its polling interval."""
    proc = subprocess.Popen(["sleep", "0.3"])
    _journal(tmp_path, monkeypatch, state="started", pid=proc.pid, before=[])
    started = time.monotonic()
    try:
        journal = agent.op_wait({"operation_id": "w/dev/h/install/0", "seconds": 20, "close": "NoReboot"})[
            "journal"
        ]
    finally:
        proc.wait()
    assert time.monotonic() - started < 10
    assert journal["state"] == "done" and journal["final"]["status"] == "failed"
    assert "interrupted" in journal["final"]["message"]


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


def _plan_hook(tmp_path: Path, actions: list[str], **spec: object) -> tuple[int, list[str]]:
    """Run the agent's DPkg::Pre-Install-Pkgs hook on apt's protocol-3 input; (exit status, report lines)."""
    report = tmp_path / "plan"
    report.unlink(missing_ok=True)
    source = agent.plan_hook(
        dict(spec.get("wanted", {})),  # type: ignore[call-overload]
        dict(spec.get("pinned", {})),  # type: ignore[call-overload]
        list(spec.get("remove", [])),  # type: ignore[call-overload]
        str(report),
    )
    # apt.conf(5), DPkg::Tools::Options::cmd::Version 3: "VERSION 3", the configuration space, a blank line,
    # then one action per line: name old-version old-arch old-multiarch direction new-version new-arch
    # new-multiarch and the .deb file, **CONFIGURE** or **REMOVE**.
    stdin = "VERSION 3\nAPT::Architecture=amd64\nDPkg::Pre-Install-Pkgs::=x\n\n" + "\n".join(actions) + "\n"
    (tmp_path / "hook").write_text(source)
    (tmp_path / "hook").chmod(0o700)
    proc = subprocess.run([str(tmp_path / "hook")], input=stdin, text=True, check=False)
    assert not (tmp_path / "plan.actions").exists()
    return proc.returncode, report.read_text().splitlines()


def test_the_plan_hook_lets_exactly_the_pinned_set_through(tmp_path: Path) -> None:
    pinned = {"app": "1.1-1", "libfoo": "1:1.1-1", "libnew": "1.0-1"}
    wanted = {"app": "1.1-1", "libfoo": "1:1.1-1"}
    ok = [
        "app 1.0-1 amd64 same < 1.1-1 amd64 same /var/cache/apt/archives/app_1.1-1_amd64.deb",
        "libfoo 1:1.0-1 all none < 1:1.1-1 all none /var/cache/apt/archives/libfoo_1%3a1.1-1_all.deb",
        "app 1.0-1 amd64 same < 1.1-1 amd64 same **CONFIGURE**",
    ]
    assert _plan_hook(tmp_path, ok, wanted=wanted, pinned=pinned) == (0, ["END\tok"])
    # A set member the resolver pulls in at its candidate, not its pin: stop, and ask for the pin.
    pulled = [*ok, "libnew - - none < 1.1-1 all none /var/cache/apt/archives/libnew_1.1-1_all.deb"]
    assert _plan_hook(tmp_path, pulled, wanted=wanted, pinned=pinned) == (
        1,
        ["R\tlibnew\t1.0-1", "END\tfail"],
    )
    # ... and at its pin it passes.
    at_pin = [*ok, "libnew - - none < 1.0-1 all none /var/cache/apt/archives/libnew_1.0-1_all.deb"]
    assert _plan_hook(tmp_path, at_pin, wanted=wanted, pinned=pinned)[0] == 0
    # Anything outside the set, a requested package at another version, or a removal nobody asked for: stop.
    outside = [
        *ok,
        "libbar 2.0-1 all none < 2.1-1 all none /var/cache/apt/archives/libbar_2.1-1_all.deb",
        "tool - - none < 3.1~rc1-1 all none /var/cache/apt/archives/tool_3.1~rc1-1_all.deb",
        "daemon 1.0-1 all none > - - none **REMOVE**",
    ]
    status, report = _plan_hook(tmp_path, outside, wanted=wanted, pinned=pinned)
    assert status == 1
    assert report == [
        "O\tlibbar 2.0-1 -> 2.1-1",
        "O\ttool 3.1~rc1-1",
        "O\tdaemon 1.0-1 -> removed",
        "END\tfail",
    ]
    wrong = ["app 1.0-1 amd64 same < 1.2-1 amd64 same /var/cache/apt/archives/app_1.2-1_amd64.deb"]
    assert _plan_hook(tmp_path, wrong, wanted=wanted, pinned=pinned) == (
        1,
        ["O\tapp 1.0-1 -> 1.2-1", "END\tfail"],
    )
    # A line that is not a protocol-3 action stops it too (fail closed).
    assert (
        _plan_hook(tmp_path, ["app 1.1-1 /x.deb"], wanted=wanted)[1][0]
        == "O\t(unreadable plan line) app 1.1-1 /x.deb"
    )
    # A removal the restore asked for passes.
    removal = ["daemon 1.0-1 all none > - - none **REMOVE**"]
    assert _plan_hook(tmp_path, removal, remove=["daemon"]) == (0, ["END\tok"])
