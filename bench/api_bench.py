"""API benchmark: ``POST /baselines/evaluate`` against ``patchflow baseline evaluate`` on a 20,000-patch catalog.

Run: ``.venv/bin/python bench/api_bench.py [--catalog N] [--repeat N]``

Both sides do the same work on the same files: parse the baseline and the JSON catalog, evaluate, and print
every decision and the pinned set as JSON. The CLI is timed as a process (``--format json --no-store``, what
an operator waits for); the API as one HTTP request to a real uvicorn server on 127.0.0.1 with a bearer
token (upload, parse, evaluate, serialise, download). The best of ``--repeat`` runs of each is reported, and
the in-process steps of the API's path are timed too, to show where its time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from compliance_bench import build_catalog  # noqa: E402

from patchflow.config import Settings  # noqa: E402
from patchflow.metrics import Metrics  # noqa: E402
from patchflow.service.api import bind, create_app, make_server  # noqa: E402
from patchflow.service.apimodel import EvaluateRequest, EvaluationOut  # noqa: E402
from patchflow.store import db  # noqa: E402

AT = "2026-11-10T00:00:00Z"
BASELINE = """Name: bench
OperatingSystem: AMAZON_LINUX_2023
ApprovalRules:
  PatchRules:
    - PatchFilterGroup:
        PatchFilters:
          - {Key: CLASSIFICATION, Values: [Security, Bugfix]}
          - {Key: SEVERITY, Values: [Critical, Important, Medium]}
      ComplianceLevel: HIGH
      ApproveAfterDays: 7
RejectedPatches: ["pkg0001*"]
RejectedPatchesAction: BLOCK
"""


def best(runs: int, action: Any) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        action()
        times.append(time.perf_counter() - started)
    return min(times)


def cli_run(baseline: Path, catalog: Path, data_dir: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "patchflow",
            "baseline",
            "evaluate",
            str(baseline),
            "--catalog",
            str(catalog),
            "--at",
            AT,
            "--format",
            "json",
            "--no-store",
        ],
        capture_output=True,
        text=True,
        env={"PATCHFLOW_DATA_DIR": str(data_dir), "PATH": "/usr/bin:/bin"},
        check=True,
    )
    assert json.loads(proc.stdout)["decisions"], proc.stderr


class Server:
    """The API on a real uvicorn server in a thread, with a migrated SQLite database and an operator token."""

    def __init__(self, root: Path) -> None:
        url = f"sqlite:///{root / 'patchflow.db'}"
        db.upgrade(url)
        with db.open_session(db.get_engine(url)) as session:
            self.token = db.create_token(session, name="bench", role="operator")[1]
        from prometheus_client import CollectorRegistry

        settings = Settings(data_dir=root, database_url=url, temporal_address="127.0.0.1:1")
        sock = bind("127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self.server = make_server(create_app(settings, metrics=Metrics(CollectorRegistry())))
        self.thread = threading.Thread(
            target=lambda: asyncio.run(self.server.serve(sockets=[sock])), daemon=True
        )
        self.thread.start()
        while not self.server.started:
            time.sleep(0.05)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalog", type=int, default=20_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    patches, _ = build_catalog(random.Random(2026), args.catalog)
    catalog_text = json.dumps([p.model_dump(mode="json", exclude_defaults=True) for p in patches])
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "baseline.yaml").write_text(BASELINE)
        (root / "catalog.json").write_text(catalog_text)
        t_cli = best(args.repeat, lambda: cli_run(root / "baseline.yaml", root / "catalog.json", root))

        server = Server(root)
        body = {"baseline": BASELINE, "catalog": catalog_text, "at": AT}
        headers = {"Authorization": f"Bearer {server.token}"}
        with httpx.Client(base_url=server.url, timeout=600) as client:

            def request() -> None:
                response = client.post("/baselines/evaluate", json=body, headers=headers)
                assert response.status_code == 200, response.text[:500]
                assert len(response.json()["decisions"]) == args.catalog

            t_api = best(args.repeat, request)
        server.stop()

        # Where the API's time goes, in process: the route's own steps.
        from patchflow.service import api

        request_model = EvaluateRequest.model_validate(body)
        t_parse_eval = best(args.repeat, lambda: api._evaluate(request_model))
        result = api._evaluate(request_model)[1]
        t_out = best(args.repeat, lambda: EvaluationOut.model_validate(result.to_json()))

    print(f"catalog: {args.catalog} patches, {len(catalog_text) / 1e6:.1f} MB of JSON; best of {args.repeat}")
    print(f"  patchflow baseline evaluate (process, --format json) {t_cli:7.2f} s")
    print(
        f"  POST /baselines/evaluate (HTTP, uvicorn)             {t_api:7.2f} s   = {t_api / t_cli:.2f} x the CLI"
    )
    print(f"    of which: parse + evaluate {t_parse_eval:.2f} s, response model {t_out:.2f} s (in process)")
    print(f"  measured {datetime.now(UTC):%Y-%m-%d}")


if __name__ == "__main__":
    main()
