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

#: Address space a command may use: several times what validating any shipped file needs.
MEMORY_LIMIT_BYTES = 1536 * 1024 * 1024


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT_BYTES, MEMORY_LIMIT_BYTES))


def run(
    *args: str, data_dir: Path, timeout: float = 60, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``patchflow ARGS`` in a real process under the memory limit and a timeout."""
    full_env = {**os.environ, "PATCHFLOW_DATA_DIR": str(data_dir), **(env or {})}
    full_env.pop("PATCHFLOW_DEBUG", None)
    proc = subprocess.run(
        [sys.executable, "-m", "patchflow", *args],
        capture_output=True,
        text=True,
        env=full_env,
        cwd=REPO_ROOT,
        timeout=timeout,
        preexec_fn=_limit_memory,
    )
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


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
