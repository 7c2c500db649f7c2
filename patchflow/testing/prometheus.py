"""A real Prometheus (Debian's ``prometheus`` package) scraping an exporter whose values the caller controls.

For the canary-analysis tests and ``patchflow demo --lab``: :class:`ControlledExporter` serves
``/metrics`` on 127.0.0.1 with exactly the samples set on it (``set("http_errors_ratio", 0.2,
instance="i-1")``), and :func:`running_prometheus` starts ``prometheus`` on a free loopback port scraping it every
second (rules evaluated every second too), waits until it answers, and stops it by its PID afterwards::

    with ControlledExporter() as exporter, running_prometheus(tmp_dir, [exporter.target], rules=...) as prom:
        exporter.set("errors", 0.0, instance="i-1")
        prom.wait_for('errors{instance="i-1"}')

Nothing here is used by production code paths.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import yaml

#: Where Debian's package puts the binary (``apt-get install -y prometheus``).
PROMETHEUS_BINARY = "/usr/bin/prometheus"


class PrometheusNotInstalled(RuntimeError):
    """No ``prometheus`` binary: it comes with Debian's ``prometheus`` package."""


def prometheus_binary() -> str:
    """The ``prometheus`` binary (on PATH, else Debian's path)."""
    found = shutil.which("prometheus") or (PROMETHEUS_BINARY if os.path.exists(PROMETHEUS_BINARY) else None)
    if found is None:
        raise PrometheusNotInstalled(
            "'prometheus' not found: it comes with Debian's 'prometheus' package (apt-get install -y prometheus)"
        )
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
        for k, v in sorted(labels.items())
    )
    return "{" + ",".join(escaped) + "}"


class _QuietServer(ThreadingHTTPServer):
    """A scraper that hangs up mid-answer (Prometheus stopped during a scrape) is not an error worth a traceback
    on the demo's terminal."""

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)


class ControlledExporter:
    """A tiny Prometheus exporter on 127.0.0.1 serving exactly the gauges set on it (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the http.server API
                body = exporter.render().encode()
                self.send_response(200 if self.path.startswith("/metrics") else 404)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self._server = _QuietServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="controlled-exporter", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def target(self) -> str:
        """``host:port`` for a scrape config."""
        return f"127.0.0.1:{self.port}"

    def set(self, name: str, value: float, **labels: str) -> None:
        """Serve ``name{labels} value`` from the next scrape on."""
        with self._lock:
            self._samples[(name, tuple(sorted(labels.items())))] = value

    def remove(self, name: str, **labels: str) -> None:
        """Stop serving the sample (its series goes stale in Prometheus)."""
        with self._lock:
            self._samples.pop((name, tuple(sorted(labels.items()))), None)

    def render(self) -> str:
        with self._lock:
            items = sorted(self._samples.items())
        lines: list[str] = []
        typed: set[str] = set()
        for (name, labels), value in items:
            if name not in typed:
                lines.append(f"# TYPE {name} gauge")
                typed.add(name)
            lines.append(f"{name}{_labels(dict(labels))} {value!r}")
        return "\n".join(lines) + "\n"

    def start(self) -> ControlledExporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> ControlledExporter:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class Prometheus:
    """A running Prometheus: its URL and a few HTTP API helpers."""

    def __init__(self, url: str, process: subprocess.Popen[bytes], log: Path) -> None:
        self.url = url
        self.process = process
        self.log = log

    def api(self, path: str, **params: str) -> Any:
        """``data`` of an HTTP API answer (``/api/v1/...``)."""
        query = ("?" + urllib.parse.urlencode(params)) if params else ""
        with urllib.request.urlopen(self.url + path + query, timeout=5) as response:  # noqa: S310 - loopback
            body = json.loads(response.read())
        return body["data"]

    def query(self, promql: str) -> list[dict[str, Any]]:
        """The instant query's result list."""
        result: list[dict[str, Any]] = self.api("/api/v1/query", query=promql)["result"]
        return result

    def alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.api("/api/v1/alerts")["alerts"]
        return alerts

    def wait_for(self, promql: str, *, timeout: float = 30, present: bool = True) -> list[dict[str, Any]]:
        """Wait until the query returns series (``present``) or none; its last result. Raises TimeoutError."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(promql)
            if bool(result) == present:
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"{promql!r} still {'empty' if present else result} after {timeout:.0f}s")
            time.sleep(0.2)

    def wait_for_alert(self, name: str, *, firing: bool = True, timeout: float = 30) -> None:
        """Wait until alert ``name`` fires (or no longer does)."""
        deadline = time.monotonic() + timeout
        while True:
            now = any(a["labels"].get("alertname") == name and a["state"] == "firing" for a in self.alerts())
            if now == firing:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"alert {name} {'not firing' if firing else 'still firing'} after {timeout:.0f}s"
                )
            time.sleep(0.2)


@contextmanager
def running_prometheus(
    directory: Path,
    targets: list[str],
    *,
    rules: dict[str, Any] | None = None,
    scrape_interval: str = "1s",
    startup_timeout: float = 30,
) -> Iterator[Prometheus]:
    """Prometheus on a free 127.0.0.1 port, scraping ``targets`` (job ``controlled``) every ``scrape_interval``,
    with ``rules`` (a rule file's content: ``{"groups": [...]}``) evaluated as often; stopped by PID at the end
    (SIGTERM, then SIGKILL). Its data, config and log live under ``directory``.

    Raises:
        PrometheusNotInstalled: no binary.
        TimeoutError: it did not get ready within ``startup_timeout`` seconds (its log in the message).
    """
    binary = prometheus_binary()
    directory.mkdir(parents=True, exist_ok=True)
    config: dict[str, Any] = {
        "global": {"scrape_interval": scrape_interval, "evaluation_interval": scrape_interval},
        "scrape_configs": [{"job_name": "controlled", "static_configs": [{"targets": targets}]}],
    }
    if rules is not None:
        (directory / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
        config["rule_files"] = [str(directory / "rules.yml")]
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log_path = directory / "prometheus.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={directory / 'prometheus.yml'}",
                f"--storage.tsdb.path={directory / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    prometheus = Prometheus(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_ready(prometheus, startup_timeout)
        yield prometheus
    finally:
        stop_process(process)


def _wait_ready(prometheus: Prometheus, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if prometheus.process.poll() is not None:
            raise TimeoutError(f"prometheus exited: {prometheus.log.read_text()}")
        try:
            with urllib.request.urlopen(prometheus.url + "/-/ready", timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.2)
    raise TimeoutError(f"prometheus not ready within {timeout:.0f}s: {prometheus.log.read_text()}")


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Stop a process started here by its PID: SIGTERM, then SIGKILL after 10 s."""
    if process.poll() is not None:
        return
    os.kill(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


@contextmanager
def prometheus_lab(
    directory: Path, *, rules: dict[str, Any] | None = None
) -> Iterator[tuple[ControlledExporter, Prometheus]]:
    """A :class:`ControlledExporter` and a Prometheus scraping it (``rules`` evaluated every second): what a demo
    of canary analysis needs (``patchflow demo --lab``). Both stopped at the end."""
    with (
        ControlledExporter() as exporter,
        running_prometheus(directory, [exporter.target], rules=rules) as prom,
    ):
        yield exporter, prom
