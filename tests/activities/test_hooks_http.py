"""``http`` hook steps against a real HTTP server on 127.0.0.1: 2xx (or the listed statuses) passes."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from temporalio.testing import ActivityEnvironment

from activities.hooks import HookActivities
from patchflow.core.hooks import HookStep
from patchflow.core.wavemodel import ExecutorRef, HookPhaseInput


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        status = int(self.path.strip("/"))
        body = f"status {status}".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


@pytest.mark.parametrize(
    ("path", "expect", "status", "output"),
    [
        ("200", [], "succeeded", "HTTP 200: status 200"),
        ("204", [], "succeeded", "HTTP 204: "),
        ("503", [], "failed", "HTTP 503 from {url}/503: status 503"),
        ("200", [204], "failed", "HTTP 200 from {url}/200: status 200"),
    ],
)
async def test_http_steps_pass_on_2xx(
    server: str, path: str, expect: list[int], status: str, output: str
) -> None:
    step = HookStep(kind="http", name="http", url=f"{server}/{path}", timeout_seconds=5, expect_status=expect)
    inp = HookPhaseInput(
        executor=ExecutorRef(kind="simulated"),
        wave_id="w",
        stage="s",
        phase="pre_install",
        steps=[step],
        instance_ids=["i-1"],
    )
    result = await ActivityEnvironment().run(HookActivities().run_hook_phase, inp)
    (record,) = result.records["i-1"]
    assert (record.status, record.output) == (status, output.format(url=server).strip())
    assert bool(result.failed) is (status == "failed")
