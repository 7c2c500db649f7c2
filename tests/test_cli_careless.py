"""The command line under careless input (issue 16): bounded memory, no hangs, exit codes that mean what they
say. Each test runs the real ``patchflow`` process; memory-hungry inputs run under an address-space limit
(``RLIMIT_AS``) and a timeout, so a regression fails the test instead of the machine."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tests.test_cli import run as cli_run

#: Address space a command may use: several times what validating any shipped file needs.
MEMORY_LIMIT_BYTES = 1536 * 1024 * 1024


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))


def run(
    *args: str, data_dir: Path, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``patchflow ARGS`` in a real process under the memory limit and a timeout."""
    return cli_run(
        *args, data_dir=data_dir, env_overrides=dict(env or {}), timeout=timeout, preexec_fn=_limit_memory
    )


# ---------------------------------------------------------------------------------------------- 1. aliases


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("Name: &a [*a]\n", 1),  # a cycle: the line map used to walk it forever
        ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n", 2),
        (  # "billion laughs": a few hundred bytes that expand to 9^8 nodes
            "a: &a [x, x, x, x, x, x, x, x, x]\n"
            + "".join(
                f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8)
            ),
            2,
        ),
    ],
)
def test_yaml_aliases_are_refused_with_their_line_in_bounded_memory(
    tmp_path: Path, text: str, line: int
) -> None:
    """Every file-reading command refuses aliases (as the REST API does) instead of expanding them."""
    path = tmp_path / "a.yaml"
    path.write_text(text)
    for args in (("baseline", "validate", str(path)), ("plan", str(path)), ("fleet", "status", str(path))):
        proc = run(*args, data_dir=tmp_path)
        assert proc.returncode == 2, (args, proc.stderr)
        assert "YAML aliases (*name) are not accepted" in proc.stderr
        assert f"{path}:{line}: alias *" in proc.stderr and "write the values out" in proc.stderr


def test_anchors_without_aliases_still_load(tmp_path: Path) -> None:
    path = tmp_path / "b.yaml"
    path.write_text(
        "Name: &n anchored-name\nOperatingSystem: UBUNTU\nApprovalRules:\n  PatchRules:\n"
        "    - PatchFilterGroup: {PatchFilters: [{Key: PRIORITY, Values: [Required]}]}\n"
        "      ApproveAfterDays: 0\n"
    )
    proc = run("baseline", "validate", str(path), data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------- 2. nesting


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_deep_nesting_is_bad_input_not_a_bug(tmp_path: Path, suffix: str) -> None:
    """``[[[[…]]]]`` 100,000 deep used to end in RecursionError (exit 70); it is bad input, located."""
    path = tmp_path / f"d{suffix}"
    path.write_text("\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    proc = run("baseline", "validate", str(path), data_dir=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "nested more than 64 levels deep" in proc.stderr
    assert f"{path}:2: level 65 opens here" in proc.stderr and "(column 65)" in proc.stderr


def test_json_just_deeper_than_the_limit_is_refused_too(tmp_path: Path) -> None:
    """Deep enough to exceed the limit but not the JSON decoder: still refused, at the right bracket."""
    path = tmp_path / "d.json"
    path.write_text('{"Name": "x", "a": "[[[\\"", "b":\n' + "[" * 70 + "]" * 70 + "}")
    proc = run("baseline", "validate", str(path), data_dir=tmp_path)
    assert proc.returncode == 2 and f"{path}:2: level 65 opens here" in proc.stderr, proc.stderr
    assert "(column 64)" in proc.stderr  # the object's { is level 1, so the 64th [ opens level 65


# ---------------------------------------------------------------------------------------------- 3. freezes


def write_plan(directory: Path, extra: str = "", **stage: str) -> Path:
    """The shipped demo plan with absolute paths, ``extra`` top-level YAML, and the first stage's keys
    replaced by ``stage`` (raw YAML values)."""
    from tests.conftest import EXAMPLES_DIR

    first = {
        "window": "now",
        "max_concurrency": "2",
        "max_errors": "0",
        **stage,
    }
    body = "".join(f"    {key}: {value}\n" for key, value in first.items())
    path = directory / "plan.yaml"
    path.write_text(
        f"name: careless\nbaseline: {EXAMPLES_DIR.parent / 'ubuntu-staged.yaml'}\n"
        f"catalog: {EXAMPLES_DIR / 'ubuntu-catalog.json'}\n"
        f"executor: {{kind: simulated, fleet: {EXAMPLES_DIR / 'fleet.yaml'}, time_scale: 0.1}}\n"
        f"{extra}"
        "stages:\n  - name: dev\n    targets: {patch_group: dev}\n" + body
    )
    return path


ICS = """BEGIN:VCALENDAR
VERSION:2.0
PRODID:-//patchflow tests//careless//EN
BEGIN:VEVENT
UID:chatty@patchflow.test
DTSTAMP:20260101T000000Z
DTSTART:20260101T000000Z
DURATION:PT30S
RRULE:FREQ={freq}
SUMMARY:Stand-up
END:VEVENT
END:VCALENDAR
"""


@pytest.mark.parametrize("freq", ["MINUTELY", "SECONDLY", "HOURLY"])
def test_a_freeze_repeating_every_minute_is_refused_naming_the_event(tmp_path: Path, freq: str) -> None:
    """RFC 5545 RRULE: FREQ=SECONDLY/MINUTELY/HOURLY expand to millions of occurrences over the 800 days a
    wave looks ahead; ``patchflow plan`` used to run for minutes and gigabytes. Refused, bounded, named."""
    (tmp_path / "chatty.ics").write_text(ICS.format(freq=freq).replace("\n", "\r\n"))
    plan = write_plan(tmp_path, extra="freezes:\n  - name: meetings\n    ical: chatty.ics\n")
    proc = run("plan", str(plan), data_dir=tmp_path / "data", timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "chatty.ics" in proc.stderr and "event 'Stand-up'" in proc.stderr
    assert f"RRULE:FREQ={freq}" in proc.stderr or "freeze occurrences" in proc.stderr


def test_binary_ics_content_is_never_echoed_raw(tmp_path: Path) -> None:
    (tmp_path / "bin.ics").write_bytes(
        b"\x00\x01\x1b[31mBEGIN:VCALENDAR\n\x07\xff\xfe garbage\nEND:VCALENDAR\n"
    )
    plan = write_plan(tmp_path, extra="freezes:\n  - name: meetings\n    ical: bin.ics\n")
    proc = run("plan", str(plan), data_dir=tmp_path / "data")
    assert proc.returncode == 2 and "not a readable iCalendar file" in proc.stderr
    assert not any(c in proc.stderr for c in "\x00\x01\x1b\x07"), repr(proc.stderr)


# ---------------------------------------------------------------------------------------------- 4. ranges


def test_absurd_numbers_in_a_plan_are_refused_at_validation_all_at_once(tmp_path: Path) -> None:
    """AWS ``SendCommand``: MaxConcurrency and MaxErrors are at most 7 characters (pattern
    ``^([1-9][0-9]*|[1-9][0-9]%|[1-9]%|100%)$``, resp. with 0). A 31-digit concurrency used to start a wave whose
    every history write then overflowed; now ``patchflow plan`` refuses it with every other range problem."""
    plan = write_plan(
        tmp_path,
        max_concurrency="1000000000000000000000000000000",
        max_errors="10000000",
        gate="{health: {max_unhealthy: 99999999999999999999}}",
    )
    proc = run("plan", str(plan), data_dir=tmp_path / "data")
    assert proc.returncode == 2, proc.stderr
    assert "(3 problems)" in proc.stderr
    assert f"{plan}:9: stages[0].max_concurrency: 1000000000000000000000000000000 is more than 9,999,999" in (
        proc.stderr
    )
    assert "AWS's MaxConcurrency takes at most 7 characters" in proc.stderr
    assert f"{plan}:10: stages[0].max_errors: 10000000 is more than 9,999,999" in proc.stderr
    assert "stages[0].gate.health.max_unhealthy: expected a whole number from 0 to 1,000,000" in proc.stderr
    at_limit = write_plan(tmp_path, max_concurrency="9999999", max_errors="'100%'")
    assert run("plan", str(at_limit), data_dir=tmp_path / "data").returncode == 0


def test_absurd_numbers_in_a_fleet_are_refused(tmp_path: Path) -> None:
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(
        "seed: 100000000000000000000000\ninstances:\n  - id: i-1\n    platform: {family: deb}\n"
        "    behaviour: {duration_seconds: 1.0e+300}\n"
    )
    proc = run("fleet", "status", str(fleet), data_dir=tmp_path / "data")
    assert proc.returncode == 2, proc.stderr
    assert f"{fleet}:1: seed: 100000000000000000000000 is out of range: use 0 to 2**63 - 1" in proc.stderr
    assert f"{fleet}:5: instances[0].behaviour.duration_seconds" in proc.stderr
    assert "at most 86,400 seconds" in proc.stderr


def test_approve_after_days_keeps_aws_range(tmp_path: Path) -> None:
    """AWS ``PatchRule.ApproveAfterDays``: valid range 0–360."""
    baseline = tmp_path / "b.yaml"
    baseline.write_text(
        "Name: big-days\nOperatingSystem: AMAZON_LINUX_2023\nApprovalRules:\n  PatchRules:\n"
        "    - PatchFilterGroup: {PatchFilters: []}\n      ApproveAfterDays: 1000000000000000000000000\n"
    )
    proc = run("baseline", "validate", str(baseline), data_dir=tmp_path)
    assert proc.returncode == 2 and "ApproveAfterDays" in proc.stderr and "use 0–360 days" in proc.stderr


# ---------------------------------------------------------------------------------------------- 8. read-only


@pytest.mark.parametrize("data_dir", ["/sys/patchflow-test-data", "/sys/kernel"])
def test_a_data_directory_that_cannot_be_written_is_not_a_bug(tmp_path: Path, data_dir: str) -> None:
    """``/sys`` refuses new files even to root: a data directory there (missing, or existing but unwritable)
    used to end in "internal error: PermissionError" (exit 70); now exit 1 with the path and what to do."""
    from tests.conftest import BASELINES_DIR, EXAMPLES_DIR

    for args in (
        ("baseline", "evaluate", str(BASELINES_DIR / "ubuntu-staged.yaml"), "--catalog",
         str(EXAMPLES_DIR / "ubuntu-catalog.json")),
        ("fleet", "status", str(EXAMPLES_DIR / "fleet.yaml")),
        ("plan", str(EXAMPLES_DIR / "demo-plan.yaml")),
    ):  # fmt: skip
        proc = run(*args, data_dir=Path(data_dir))
        assert proc.returncode == 1, (args, proc.stderr)
        assert f"error: cannot write {data_dir}" in proc.stderr
        assert f"PATCHFLOW_DATA_DIR ({data_dir}): make that directory writable" in proc.stderr
        assert "internal error" not in proc.stderr


# ---------------------------------------------------------------------------------------------- also


def test_export_errors_name_the_file_and_line(tmp_path: Path) -> None:
    baseline = tmp_path / "apt.yaml"
    baseline.write_text(
        "Name: apt-delay\nOperatingSystem: UBUNTU\nApprovalRules:\n  PatchRules:\n"
        "    - PatchFilterGroup: {PatchFilters: []}\n      ApproveAfterDays: 3\n"
    )
    proc = run("baseline", "export", str(baseline), "--aws", data_dir=tmp_path)
    assert proc.returncode == 2 and "<input>" not in proc.stderr
    assert f"{baseline}:6: ApprovalRules.PatchRules[0].ApproveAfterDays: AWS does not support" in proc.stderr


def test_a_freeze_until_the_year_3000_is_shown_and_flagged_never_as_none(tmp_path: Path) -> None:
    plan = write_plan(tmp_path, extra="freezes: [{name: forever, from: 2026-01-01, to: 3000-01-01}]\n")
    proc = run("plan", str(plan), "--at", "2026-11-10T00:00:00Z", data_dir=tmp_path / "data")
    assert "None" not in proc.stdout, proc.stdout
    assert "window: from 3000-01-02T00:00:00+00:00 (as soon as the gate passes)" in proc.stdout
    assert "its first window opens on 3000-01-02, more than 800 days away" in proc.stdout
    assert proc.returncode == 1


def test_a_baseline_reports_field_and_rule_problems_in_one_pass(tmp_path: Path) -> None:
    """Fix five, three more appear — no more: type errors and the CreatePatchBaseline checks of the rest come
    together, located in the original file even when a broken rule had to be set aside."""
    baseline = tmp_path / "many.yaml"
    baseline.write_text(
        "OperatingSystem: AMAZON_LINUX_2023\nApprovalRules:\n  PatchRules:\n"
        "    - PatchFilterGroup: {PatchFilters: [{Key: SEVERITY, Values: [Critical]}]}\n"
        '      ApproveAfterDays: "3"\n'
        "    - ApproveAfterDays: 5\n"
        "    - PatchFilterGroup: {PatchFilters: [{Key: CLASSIFICATION, Values: [Nope]}]}\n"
        "      ApproveAfterDays: 400\n"
        'RejectedPatches: ["bad name!"]\n'
    )
    proc = run("baseline", "validate", str(baseline), data_dir=tmp_path)
    assert proc.returncode == 2
    for expected in (
        ":1: Name: required field is missing",
        ":5: ApprovalRules.PatchRules[0].ApproveAfterDays: expected a whole number, got '3'",
        ":6: ApprovalRules.PatchRules[1].PatchFilterGroup: required field is missing",
        ":7: ApprovalRules.PatchRules[2].PatchFilterGroup.PatchFilters[0].Values[0]: 'Nope' is not a "
        "CLASSIFICATION value",
        ":8: ApprovalRules.PatchRules[2].ApproveAfterDays: 400 is out of range",
        ":9: RejectedPatches[0]: 'bad name!' contains whitespace",
    ):
        assert f"{baseline}{expected}" in proc.stderr, proc.stderr
    assert "(6 problems)" in proc.stderr


def test_catalogs_refuse_loose_booleans_unknown_keys_and_duplicates(tmp_path: Path) -> None:
    """A duplicate entry used to be accepted and change the content-addressed patch set id."""
    from tests.conftest import BASELINES_DIR

    catalog = tmp_path / "catalog.json"
    catalog.write_text(
        '{"patches": [\n'
        ' {"name": "a", "arch": "amd64", "version": "1.0-1", "family": "deb", "security": "yes"},\n'
        ' {"name": "b", "arch": "amd64", "version": "1.0-1", "family": "deb"},\n'
        ' {"name": "b", "arch": "amd64", "version": "1.0-1", "family": "deb"}\n'
        '], "generated": "2026-11-10"}\n'
    )
    proc = run(
        "baseline", "evaluate", str(BASELINES_DIR / "ubuntu-default.yaml"), "--catalog", str(catalog),
        data_dir=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 2 and "(3 problems)" in proc.stderr
    assert f"{catalog}:5: generated: unknown key; allowed: patches" in proc.stderr
    assert f"{catalog}:2: patches[0].security: expected true or false, got 'yes'" in proc.stderr
    assert f"{catalog}:4: patches[2]: the same patch as entry patches[1] (line 3)" in proc.stderr


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_a_reader_that_stops_reading_is_not_an_error(tmp_path: Path, fmt: str) -> None:
    """``patchflow … | head``: the pipe closes before patchflow has written everything; exit 0, nothing on
    stderr (click and rich used to exit 1)."""
    from tests.conftest import BASELINES_DIR, EXAMPLES_DIR

    env = {**os.environ, "PATCHFLOW_DATA_DIR": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "patchflow", "baseline", "evaluate", str(BASELINES_DIR / "ubuntu-staged.yaml"),
         "--catalog", str(EXAMPLES_DIR / "ubuntu-catalog.json"), "--no-store", "--format", fmt],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO_ROOT,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first line
    stderr = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=60) == 0 and stderr == b"", stderr


def test_exit_codes_mean_what_they_say(tmp_path: Path) -> None:
    """``--as ''`` is bad input (2), a refused freeze override a refused action (4) like a refused approval;
    neither needs Temporal (the address below has no server)."""
    from tests.conftest import EXAMPLES_DIR

    env = {"PATCHFLOW_TEMPORAL_ADDRESS": "127.0.0.1:1"}
    empty = run("wave", "approve", "wave-x", "--stage", "prod", "--as", "", data_dir=tmp_path, env=env)
    assert empty.returncode == 2 and "--as needs a name" in empty.stderr
    plan = str(EXAMPLES_DIR / "demo-plan.yaml")
    emergency = ("emergency", "--cve", "CVE-2026-1001", "--targets", "all", "--plan", plan)
    nobody = run(*emergency, "--as", " ", data_dir=tmp_path, env=env)
    assert nobody.returncode == 2 and "--as needs a name" in nobody.stderr
    refused = run(*emergency, "--override-freeze", "--approver", "mallory", data_dir=tmp_path, env=env)
    assert refused.returncode == 4 and "'mallory' may not override a change freeze" in refused.stderr


def test_schedules_refuse_daily_dst_edges_and_ids_with_spaces_before_connecting(tmp_path: Path) -> None:
    """Temporal's scheduler skips a wall time a spring-forward gap removes and fires some twice around a
    fall-back (measured in tests/workflows/test_schedules.py): daily schedules are refused there like weekly
    ones. Both refusals come before any connection (no server listens at the address below)."""
    from tests.conftest import EXAMPLES_DIR

    env = {"PATCHFLOW_TEMPORAL_ADDRESS": "127.0.0.1:1"}
    plan = str(EXAMPLES_DIR / "demo-plan.yaml")
    daily = run(
        "schedule", "create", plan, "--daily", "--at", "02:30", "--timezone", "Europe/Berlin",
        data_dir=tmp_path, env=env,
    )  # fmt: skip
    assert daily.returncode == 2 and "is at a daylight-saving change on" in daily.stderr, daily.stderr
    spaced = run("schedule", "create", plan, "--daily", "--id", "my schedule", data_dir=tmp_path, env=env)
    assert spaced.returncode == 2 and "--id 'my schedule': use letters, digits" in spaced.stderr


def _command_paths(command: object, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    for name, sub in getattr(command, "commands", {}).items():
        paths += _command_paths(sub, (*prefix, name))
    return paths


def test_help_shows_readable_types_and_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every command's --help: TEXT, INTEGER, PATH, table|json, nothing for a flag — never Python annotations."""
    import typer

    from patchflow import __version__
    from patchflow.cli.root import app, main

    paths = _command_paths(typer.main.get_command(app))
    assert ("wave", "start") in paths and len(paths) > 40
    for path in paths:
        with pytest.raises(SystemExit) as done:
            main([*path, "--help"])
        assert done.value.code == 0
        text = capsys.readouterr().out
        for python_type in ("<bool>", "<str>", "<int>", "<path>", "<list[", "<float>", "range>"):
            assert python_type not in text, (path, text)
    version = run("--version", data_dir=tmp_path)
    assert version.returncode == 0 and version.stdout == f"patchflow {__version__}\n"


def test_fleet_status_takes_a_fleet_by_name(tmp_path: Path) -> None:
    import json

    fleet = tmp_path / "somewhere" / "tiny.yaml"
    fleet.parent.mkdir()
    fleet.write_text("name: tiny\ninstances:\n  - id: i-1\n    platform: {family: deb}\n")
    data = tmp_path / "data"
    by_path = run("fleet", "status", str(fleet), "--format", "json", data_dir=data)
    assert by_path.returncode == 0, by_path.stderr
    by_name = run("fleet", "status", "tiny", "--format", "json", data_dir=data)
    assert by_name.returncode == 0, by_name.stderr
    assert json.loads(by_name.stdout)["state_path"] == json.loads(by_path.stdout)["state_path"]
    shipped = run("fleet", "status", "demo", "--format", "json", data_dir=data)
    assert shipped.returncode == 0 and len(json.loads(shipped.stdout)["instances"]) == 29
    unknown = run("fleet", "status", "nope", data_dir=data)
    assert unknown.returncode == 2 and "known fleets: demo, tiny" in unknown.stderr
