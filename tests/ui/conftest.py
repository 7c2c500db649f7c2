"""The console's fixtures: a real API (with the console) and a worker recording into a migrated SQLite history
database, against the session's Temporal dev server, on the simulated example fleet; and a headless Debian
Chromium driven by Selenium.

Chromium comes from Debian (``chromium`` + ``chromium-driver``): when missing, the set-up installs them with
apt-get if it runs as root, else the browser tests skip (under ``CI`` they fail instead). Nothing downloads a
browser of its own: Selenium is given both paths, so its driver manager never runs. axe-core comes from the npm
registry into a folder outside the repository (``PATCHFLOW_AXE_DIR``, default ``~/.cache/patchflow/axe``).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from patchflow.config import Settings
from patchflow.metrics import Metrics
from patchflow.service.api import bind, create_app, make_server
from patchflow.service.worker import build_worker
from patchflow.store import db
from tests.api.test_api import ROLES, write_plan
from tests.conftest import BASELINES_DIR, EXAMPLES_DIR
from tests.workflows.conftest import dev_env  # noqa: F401 - a fixture

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1280,1000",
)
ARTIFACTS = Path(
    os.environ.get("PATCHFLOW_UI_ARTIFACTS") or Path(tempfile.gettempdir()) / "patchflow-ui-artifacts"
)
"""Where the browser tests leave a screenshot of every page they visit."""


@dataclass
class UiStack:
    url: str
    settings: Settings
    metrics: Metrics
    tokens: dict[str, str]
    """Token name → API token (the names are what gates and the audit log see)."""
    app: Any

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def start_wave(self, plan: str, who: str = "olga") -> str:
        """Start a wave of the plan; the console tests keep several waves of one plan open at once."""
        body = {"plan": plan, "allow_concurrent": True}
        response = httpx.post(f"{self.url}/waves", json=body, headers=self.auth(who), timeout=30)
        assert response.status_code == 201, response.text
        wave_id: str = response.json()["wave_id"]
        return wave_id

    def wave(self, wave_id: str) -> dict[str, Any]:
        response = httpx.get(f"{self.url}/waves/{wave_id}", headers=self.auth("vic"), timeout=30)
        assert response.status_code == 200, response.text
        detail: dict[str, Any] = response.json()
        return detail

    def reset_fleet(self) -> None:
        """Put the simulated example fleet back to its initial versions (waves of earlier tests patched it),
        as ``patchflow demo`` does before its wave."""
        from patchflow.executors.simulated import SimulatedExecutor, default_state_path
        from patchflow.executors.simulated.fleet import load_fleet

        fleet = load_fleet(EXAMPLES_DIR / "fleet.yaml")
        SimulatedExecutor(fleet, default_state_path(self.settings.data_dir, fleet)).reset()

    def judge_compliance(self) -> dict[str, Any]:
        """POST /compliance with the shipped Ubuntu example inventory (as an operator): the console's
        compliance page shows what this produced."""
        body = {
            "baseline": (BASELINES_DIR / "ubuntu-staged.yaml").read_text(),
            "catalog": (EXAMPLES_DIR / "ubuntu-catalog.json").read_text(),
            "inventory": (EXAMPLES_DIR / "ubuntu-inventory.json").read_text(),
            "at": "2026-11-10T00:00:00Z",
        }
        response = httpx.post(f"{self.url}/compliance", json=body, headers=self.auth("olga"), timeout=30)
        assert response.status_code == 200, response.text
        judged: dict[str, Any] = response.json()
        return judged

    def wait_for(self, wave_id: str, predicate: Any, timeout: float = 60) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            detail = self.wave(wave_id)
            if predicate(detail):
                return detail
            assert time.monotonic() < deadline, detail
            time.sleep(0.1)


@pytest.fixture(scope="module")
def ui_stack(dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[UiStack]:  # noqa: F811
    """The API (console included) and a worker with the history database on one loop in a thread, as
    ``patchflow dev`` runs them; one token per role; the demo plan fast (``demo.yaml``) and slow
    (``slow.yaml``)."""
    root = tmp_path_factory.mktemp("ui")
    database_url = f"sqlite:///{root / 'patchflow.db'}"
    db.upgrade(database_url)
    plans = root / "plans"
    plans.mkdir()
    write_plan(plans, "demo.yaml", time_scale=0.05)
    write_plan(plans, "slow.yaml", time_scale=3.0)
    target = dev_env.client.service_client.config.target_host
    metrics = Metrics(CollectorRegistry())
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    holder: dict[str, Any] = {}
    failure: list[BaseException] = []
    task_queue = f"ui-{os.urandom(4).hex()}"

    async def main() -> None:
        client = await Client.connect(target)
        settings = Settings(
            data_dir=root / "data",
            temporal_address=target,
            task_queue=task_queue,
            database_url=database_url,
            api_plans_dir=plans,
            api_metrics_refresh_seconds=0.5,
        )
        worker = build_worker(client, task_queue, database_url=database_url, settings=settings)
        async with worker:
            app = create_app(settings, metrics=metrics)
            server = make_server(app)
            holder.update(settings=settings, server=server, app=app)
            await server.serve(sockets=[sock])

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by the fixture, not lost in the thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="ui-stack", daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert not failure, failure
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "the API did not come up"
        time.sleep(0.05)
    tokens: dict[str, str] = {}
    with db.open_session(db.get_engine(database_url)) as session:
        for name, role in ROLES.items():
            tokens[name] = db.create_token(session, name=name, role=role)[1]
    try:
        yield UiStack(url=url, settings=holder["settings"], metrics=metrics, tokens=tokens, app=holder["app"])
    finally:
        holder["server"].should_exit = True
        thread.join(timeout=30)
        assert not failure, failure


# ---------------------------------------------------------------------------------------------- browser


def _install_debian_chromium() -> str | None:
    """Install Debian's chromium and chromium-driver when missing; the reason when they cannot be had."""
    if CHROMIUM.exists() and CHROMEDRIVER.exists():
        return None
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        return "Debian's chromium and chromium-driver are not installed (apt-get install -y chromium chromium-driver)"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run([apt, "update", "-qq"], check=False, env=env, capture_output=True, timeout=600)
    done = subprocess.run(
        [apt, "install", "-y", "-qq", "chromium", "chromium-driver"],
        env=env,
        capture_output=True,
        timeout=900,
    )
    if done.returncode != 0 or not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        return f"apt-get could not install chromium and chromium-driver: {done.stderr.decode()[-500:]}"
    return None


def _missing(reason: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def chromium_ready() -> None:
    reason = _install_debian_chromium()
    if reason is not None:
        _missing(reason)


@pytest.fixture
def browser(chromium_ready: None, tmp_path: Path) -> Iterator[Any]:
    """A fresh headless Chromium (its own profile directory) driven through chromedriver."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'profile'}")
    service = Service(executable_path=str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def _axe_dir() -> Path:
    return Path(os.environ.get("PATCHFLOW_AXE_DIR") or Path.home() / ".cache" / "patchflow" / "axe")


@pytest.fixture(scope="session")
def axe_source() -> str:
    """axe-core's browser script, installed from the npm registry into a test-only folder when missing."""
    folder = _axe_dir()
    script = folder / "node_modules" / "axe-core" / "axe.min.js"
    if not script.exists():
        npm = shutil.which("npm")
        if npm is None:
            _missing("npm is not installed, so axe-core cannot be installed for the accessibility checks")
        folder.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(
            [str(npm), "install", "--no-audit", "--no-fund", "--prefix", str(folder), "axe-core@4"],
            capture_output=True,
            timeout=600,
        )
        if done.returncode != 0 or not script.exists():
            _missing(f"npm could not install axe-core: {done.stderr.decode()[-500:]}")
    return script.read_text()
