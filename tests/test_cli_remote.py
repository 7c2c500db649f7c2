"""The CLI in remote mode (``PATCHFLOW_API_URL`` + ``PATCHFLOW_TOKEN``), end to end over real HTTP.

The real API (uvicorn on 127.0.0.1, the module-scoped ``stack`` of tests/api/test_api.py: a worker, the session's
Temporal dev server, a migrated SQLite history database, one token per role) is driven by the real ``patchflow``
entry point — in process through :func:`patchflow.cli.main` (error handling and exit codes included), and once
as a subprocess. The boundary is attacked from the client side as well: a token that would inject a header, a
URL with credentials, plain http to another machine, a redirect to another origin (recording servers on
127.0.0.1 and 127.0.0.2 show where the token went).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from patchflow.config import Settings
from patchflow.control.devserver import free_port
from patchflow.metrics import Metrics
from patchflow.service.api import bind, create_app, make_server
from patchflow.store import db
from tests.api.test_api import Stack, stack  # noqa: F401 - stack is a fixture
from tests.test_cli import run as run_cli
from tests.workflows.conftest import dev_env  # noqa: F401 - a fixture

REMOTE_VARIABLES = ("PATCHFLOW_API_URL", "PATCHFLOW_TOKEN", "PATCHFLOW_API_INSECURE_HTTP")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


Cli = Callable[..., Result]


@pytest.fixture
def patchflow(
    stack: Stack,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> Cli:
    """``patchflow ARGS`` in process; ``as_token="ops-lead"`` runs it in remote mode with that token (or
    ``token=``/``url=`` given verbatim), ``as_token=None`` in local mode against the stack's Temporal."""

    def run(
        *args: str,
        as_token: str | None = None,
        token: str | None = None,
        url: str | None = None,
        env: dict[str, str] | None = None,
    ) -> Result:
        from patchflow.cli import main

        for name in [n for n in os.environ if n.startswith("PATCHFLOW_")]:
            monkeypatch.delenv(name)
        monkeypatch.setenv("PATCHFLOW_DATA_DIR", str(tmp_path / "cli-data"))
        monkeypatch.setenv("PATCHFLOW_TEMPORAL_ADDRESS", stack.settings.temporal_address)
        monkeypatch.setenv("PATCHFLOW_TASK_QUEUE", stack.settings.task_queue)
        monkeypatch.setenv("PATCHFLOW_DATABASE_URL", stack.settings.database_url_resolved)
        if as_token is not None:
            token, url = stack.tokens[as_token], stack.url
        for name, value in (("PATCHFLOW_TOKEN", token), ("PATCHFLOW_API_URL", url), *(env or {}).items()):
            if value is not None:
                monkeypatch.setenv(name, value)
        with pytest.raises(SystemExit) as exit_info:
            main(list(args))
        captured = capsys.readouterr()
        assert "Traceback" not in captured.err, captured.err
        code = exit_info.value.code
        return Result(code if isinstance(code, int) else 0, captured.out, captured.err)

    return run


def wave_at_gate(patchflow: Cli) -> str:
    """A wave of the demo plan started through the API as ``olga`` (operator), waiting at prod's gate."""
    started = patchflow(
        "wave", "start", "demo.yaml", "--allow-concurrent", "--wait", "--timeout", "60", "--format", "json",
        as_token="olga",
    )  # fmt: skip
    assert started.code == 0, started.err
    status = started.json()
    assert status["state"] == "waiting_approval", status
    wave_id: str = status["wave_id"]
    assert f"started wave {wave_id}" in started.err
    return wave_id


def audit_rows(stack: Stack, wave_id: str) -> list[tuple[str, str, str, str]]:  # noqa: F811
    """(actor, action, via, outcome) of the audit log's entries for the wave."""
    with stack.session() as session:
        rows = db.list_audit(session, wave_id=wave_id)
    return [(r.actor, r.action, r.detail.get("via", ""), r.detail.get("outcome", "")) for r in rows]


# ---------------------------------------------------------------------------------------------- acting


def test_approve_through_the_api_acts_and_is_audited_as_the_tokens_name(
    patchflow: Cli,
    stack: Stack,  # noqa: F811
) -> None:
    wave_id = wave_at_gate(patchflow)

    # The status hint never suggests --as in remote mode: the token says who acts.
    status = patchflow("wave", "status", wave_id, as_token="vic")
    assert status.code == 0, status.err
    assert f"patchflow wave approve {wave_id} --stage prod" in status.out and "--as" not in status.out

    approved = patchflow("wave", "approve", wave_id, "--stage", "prod", "-m", "CAB-1234", as_token="ops-lead")
    assert approved.code == 0, approved.err
    assert approved.out.strip() == "stage prod approved by ops-lead"

    # The wave, the API's audit log and the decision record all name the token's owner, via the API.
    detail = httpx.get(f"{stack.url}/waves/{wave_id}", headers=stack.auth("vic"), timeout=30).json()
    assert [(a["who"], a["action"], a["comment"]) for a in detail["audit"]][-1] == (
        "ops-lead",
        "approve",
        "CAB-1234",
    )
    assert audit_rows(stack, wave_id) == [
        ("olga", "start", "api", "ok"),
        ("ops-lead", "approve", "api", "ok"),
    ]
    with stack.session() as session:
        decisions = db.list_decisions(session, wave_id=wave_id)
    assert [(d.who, d.decision, d.via) for d in decisions] == [("ops-lead", "approve", "api")]

    # A gate takes one decision: the second one is refused by the wave (409) and exits 4, saying who decided.
    again = patchflow("wave", "approve", wave_id, "--stage", "prod", as_token="root")
    assert again.code == 4, again.err
    assert "already" in again.err and "ops-lead" in again.err
    assert ("root", "approve", "api", "refused") in audit_rows(stack, wave_id)


def test_output_formats_match_local_mode(patchflow: Cli) -> None:
    """``wave status`` and ``wave list`` print the same JSON through the API as against Temporal (the
    documented contract of ``wave status --format json``), and the same table."""
    wave_id = wave_at_gate(patchflow)
    local = patchflow("wave", "status", wave_id, "--format", "json")
    remote = patchflow("wave", "status", wave_id, "--format", "json", as_token="vic")
    assert local.code == remote.code == 0, local.err + remote.err
    assert remote.out == local.out
    assert remote.json()["stages"][2]["state"] == "waiting_approval"

    local_table = patchflow("wave", "status", wave_id)
    remote_table = patchflow("wave", "status", wave_id, as_token="vic")
    # the same table; only the hint differs: local mode knows the approvers (and suggests --as)
    assert remote_table.out.splitlines()[:-1] == local_table.out.splitlines()[:-1]

    local_rows = {r["wave_id"]: r for r in patchflow("wave", "list", "--format", "json").json()}
    remote_rows = {
        r["wave_id"]: r for r in patchflow("wave", "list", "--format", "json", as_token="vic").json()
    }
    assert remote_rows[wave_id] == local_rows[wave_id]
    assert set(remote_rows[wave_id]) == {"wave_id", "started", "workflow_status", "state", "plan"}
    assert patchflow("wave", "cancel", wave_id, as_token="olga").code == 0


def test_as_is_refused_through_the_api(patchflow: Cli, stack: Stack) -> None:  # noqa: F811
    """``--as`` is a claim the CLI cannot prove: refused (exit 2) before anything is sent, so nothing is
    approved and nothing reaches the audit log."""
    wave_id = wave_at_gate(patchflow)
    before = audit_rows(stack, wave_id)
    claimed = patchflow("wave", "approve", wave_id, "--stage", "prod", "--as", "ops-lead", as_token="alice")
    assert claimed.code == 2
    assert "--as ops-lead is not accepted through the API" in claimed.err
    for action in ("halt", "cancel"):
        assert patchflow("wave", action, wave_id, "--as", "someone", as_token="olga").code == 2
    assert audit_rows(stack, wave_id) == before
    status = patchflow("wave", "status", wave_id, "--format", "json", as_token="vic").json()
    assert status["state"] == "waiting_approval"
    assert patchflow("wave", "cancel", wave_id, as_token="olga").code == 0


def test_refusals_map_to_exit_codes_with_the_apis_reason(patchflow: Cli, stack: Stack) -> None:  # noqa: F811
    wave_id = wave_at_gate(patchflow)

    # an approver, but not one of prod's: the wave's validator refuses (409) → exit 4, with its reason
    alice = patchflow("wave", "approve", wave_id, "--stage", "prod", as_token="alice")
    assert alice.code == 4 and "'alice' may not approve stage 'prod'" in alice.err
    # a role that may not approve at all (403) → exit 4
    viewer = patchflow("wave", "approve", wave_id, "--stage", "prod", as_token="vic")
    assert viewer.code == 4
    assert "refused by the patchflow API: token 'vic' has role viewer" in viewer.err
    assert ("vic", "approve", "api", "forbidden") in audit_rows(stack, wave_id)
    operator = patchflow("wave", "halt", wave_id, as_token="ops-lead")
    assert operator.code == 4 and "role approver; halt needs" in operator.err

    # a token the API does not know (401) → exit 4, naming PATCHFLOW_TOKEN; the token is never echoed
    bogus = "pft_0123456789abcdef_not-a-real-secret"
    bad = patchflow("wave", "list", token=bogus, url=stack.url)
    assert bad.code == 4
    assert "refused the token in PATCHFLOW_TOKEN" in bad.err and "malformed, unknown or revoked" in bad.err
    assert bogus not in bad.err + bad.out

    # no such wave (404) → exit 3; an id that is not one (a path segment) never becomes a path
    assert patchflow("wave", "status", "wave-nope", as_token="vic").code == 3
    assert patchflow("wave", "status", "..", as_token="vic").code == 2
    slashed = patchflow("wave", "status", "a/../../tokens", as_token="vic")
    assert slashed.code == 2 and "is no wave id" in slashed.err

    # bad input (422) → exit 2, with every problem the API found
    long = patchflow("wave", "approve", wave_id, "--stage", "prod", "-m", "x" * 2000, as_token="ops-lead")
    assert long.code == 2 and "body.comment" in long.err
    outside = patchflow("plan", "../../etc/passwd", as_token="olga")
    assert outside.code == 2 and "outside the plans directory" in outside.err

    assert patchflow("wave", "cancel", wave_id, as_token="olga").code == 0


def test_start_refuses_a_second_wave_and_plan_dry_runs_on_the_server(patchflow: Cli) -> None:
    """Remote ``wave start`` gets local mode's checks from the API: a running wave of the plan refuses a
    second one (409: exit 4, with the CLI's option named), ``plan`` dry-runs on the server."""
    first = patchflow("wave", "start", "slow.yaml", "--allow-concurrent", "--format", "json", as_token="olga")
    assert first.code == 0, first.err
    wave_id = first.json()["wave_id"]
    assert set(first.json()) == {"wave_id", "patch_set_id"}
    second = patchflow("wave", "start", "slow.yaml", as_token="olga")
    assert second.code == 4, second.err
    assert "of plan demo is still running on its fleet" in second.err and "--allow-concurrent" in second.err
    assert patchflow("wave", "cancel", wave_id, "-m", "test over", as_token="olga").code == 0

    dry = patchflow("plan", "demo.yaml", "--format", "json", as_token="olga")
    assert dry.code == 0, dry.err
    assert dry.json()["plan"] == "demo" and [s["name"] for s in dry.json()["stages"]] == [
        "dev",
        "test",
        "prod",
    ]
    table = patchflow("plan", "demo.yaml", as_token="olga")
    assert table.code == 0 and "prod" in table.out


# ---------------------------------------------------------------------------------------------- set-up errors


def test_half_a_configuration_names_the_missing_variable(patchflow: Cli, stack: Stack) -> None:  # noqa: F811
    url_only = patchflow("wave", "list", url=stack.url)
    assert url_only.code == 2 and "PATCHFLOW_API_URL is set but PATCHFLOW_TOKEN is not" in url_only.err
    token_only = patchflow("wave", "list", token=stack.tokens["vic"])
    assert token_only.code == 2 and "PATCHFLOW_TOKEN is set but PATCHFLOW_API_URL is not" in token_only.err


def test_commands_the_api_does_not_offer_are_refused(patchflow: Cli) -> None:
    """Remote mode never falls back to Temporal: a schedule command says what to do instead."""
    refused = patchflow("schedule", "list", as_token="root")
    assert refused.code == 2
    assert "this command talks to Temporal directly" in refused.err and "PATCHFLOW_TOKEN" in refused.err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://127.0.0.1/", "must be an http:// or https:// URL"),
        ("127.0.0.1:8000", "must be an http:// or https:// URL"),
        ("http://admin:s3cret-pw@127.0.0.1:9/", "must not carry credentials"),
        ("http://127.0.0.1:9/?token=x", "without a query"),
        ("http://patchflow.example.com", "plain http:// to patchflow.example.com"),
        ("http://api.patchflow.internal:8000", "PATCHFLOW_API_INSECURE_HTTP=true"),
    ],
)
def test_urls_a_token_must_not_go_to_are_refused(patchflow: Cli, url: str, message: str) -> None:
    """Refused before any connection (exit 2); credentials in the URL are not echoed."""
    result = patchflow("wave", "list", token="pft_abc_def", url=url)
    assert result.code == 2 and message in result.err, result.err
    assert "s3cret-pw" not in result.err


def test_plain_http_to_another_host_needs_the_opt_in_and_warns(capsys: pytest.CaptureFixture[str]) -> None:
    from patchflow.cli.remote import checked_url
    from patchflow.errors import InputError

    with pytest.raises(InputError):
        checked_url("http://patchflow.internal:8000/", allow_insecure_http=False)
    assert checked_url("http://patchflow.internal:8000/base/", allow_insecure_http=True) == (
        "http://patchflow.internal:8000/base"
    )
    assert "over plain http" in capsys.readouterr().err
    for loopback in (
        "http://127.0.0.1:8000",
        "http://localhost:8000",
        "http://[::1]:8000",
        "http://127.9.9.9",
    ):
        assert checked_url(loopback, allow_insecure_http=False) == loopback
    assert "over plain http" not in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- the boundary


class Recorder:
    """A real HTTP server on ``host`` recording every request; answers 307 to ``redirect`` if set."""

    def __init__(self, host: str, redirect: str | None = None) -> None:
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                recorder.requests.append((self.command, self.path, dict(self.headers.items())))
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                if redirect is not None:
                    self.send_response(307)
                    self.send_header("Location", redirect + self.path)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                else:
                    body = b'{"waves": []}'
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)

            do_GET = do_POST = _any

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer((host, 0), Handler)
        self.url = f"http://{host}:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


def test_a_redirect_to_another_origin_never_gets_the_token(patchflow: Cli) -> None:
    """An API never redirects; a redirect (a misconfigured proxy, a hostile answer) is refused with exit 2
    and not followed, so the other origin receives nothing — not even a request."""
    with Recorder("127.0.0.2") as elsewhere, Recorder("127.0.0.1", redirect=elsewhere.url) as api:
        result = patchflow("wave", "approve", "wave-x", "--stage", "prod", token="pft_abc_def", url=api.url)
    assert result.code == 2
    assert f"redirect (HTTP 307 to {elsewhere.url}/waves/wave-x/approve)" in result.err
    assert elsewhere.requests == []
    [(method, path, headers)] = api.requests
    assert (method, path) == ("POST", "/waves/wave-x/approve")
    assert headers["Authorization"] == "Bearer pft_abc_def"


def test_httpx_drops_the_token_on_a_cross_origin_redirect_anyway() -> None:
    """The second line of defence, should anyone turn redirects on: httpx strips ``Authorization`` when a
    redirect leaves the origin (httpx ``_redirect_headers``: "Strip Authorization headers when responses are
    redirected away from the origin")."""
    with Recorder("127.0.0.2") as elsewhere, Recorder("127.0.0.1", redirect=elsewhere.url) as api:
        response = httpx.get(
            f"{api.url}/waves",
            headers={"Authorization": "Bearer pft_abc_def"},
            follow_redirects=True,
            timeout=10,
        )
    assert response.status_code == 200
    [(_, _, headers)] = elsewhere.requests
    assert "Authorization" not in headers and "authorization" not in {h.lower() for h in headers}


@pytest.mark.parametrize(
    ("token", "what"),
    [
        ("pft_abc_def\r\nX-Injected: yes", "a line break at position 12"),
        ("pft_abc_def\nX-Injected: yes", "a line break at position 12"),
        ("pft_abc def", "a space at position 8"),
        ("pft_abc\x1b[2Jdef", "a control character at position 8"),
        ("pft_abcdéf", "a non-ASCII character at position 9"),
    ],
)
def test_a_token_that_would_inject_a_header_is_refused_unsent(patchflow: Cli, token: str, what: str) -> None:
    with Recorder("127.0.0.1") as api:
        result = patchflow("wave", "list", token=token, url=api.url)
    assert result.code == 2 and f"PATCHFLOW_TOKEN holds {what}" in result.err, result.err
    assert "X-Injected" not in result.err
    assert api.requests == []


def test_surrounding_whitespace_of_a_token_is_not_part_of_it(patchflow: Cli, stack: Stack) -> None:  # noqa: F811
    """A token read from a file keeps its trailing newline (``PATCHFLOW_TOKEN=$(<file)`` would not)."""
    result = patchflow("wave", "list", "--format", "json", token=stack.tokens["vic"] + "\n", url=stack.url)
    assert result.code == 0, result.err


def test_an_api_that_is_down_is_a_clear_message(patchflow: Cli) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    result = patchflow("wave", "list", token="pft_abc_def", url=url)
    assert result.code == 1
    assert f"cannot reach the patchflow API at {url}" in result.err and "PATCHFLOW_API_URL" in result.err


@pytest.fixture
def api_without_temporal(stack: Stack) -> Iterator[str]:  # noqa: F811
    """A second real API on the stack's database whose Temporal is not there: every wave route answers 503."""
    settings = Settings(
        data_dir=stack.settings.data_dir,
        temporal_address=f"127.0.0.1:{free_port()}",
        database_url=stack.settings.database_url_resolved,
        api_metrics_refresh_seconds=60,
    )
    sock = bind("127.0.0.1", 0)
    server = make_server(create_app(settings, metrics=Metrics(CollectorRegistry())))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve(sockets=[sock])), daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the API did not come up"
        time.sleep(0.05)
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def test_temporal_unavailable_behind_the_api_says_when_to_retry(
    patchflow: Cli,
    stack: Stack,  # noqa: F811
    api_without_temporal: str,
) -> None:
    """503 with Retry-After → exit 1, the API's reason and when to try again."""
    result = patchflow("wave", "list", token=stack.tokens["vic"], url=api_without_temporal)
    assert result.code == 1, result.err
    assert "the patchflow API cannot act now: cannot reach Temporal" in result.err
    assert "try again in 5 s" in result.err


def test_the_real_process_refuses_a_bad_token_without_a_traceback(stack: Stack, tmp_path: Path) -> None:  # noqa: F811
    proc = run_cli(
        "wave", "approve", "wave-x", "--stage", "prod",
        data_dir=tmp_path,
        env_overrides={"PATCHFLOW_API_URL": stack.url, "PATCHFLOW_TOKEN": "pft_0123456789abcdef_wrong"},
    )  # fmt: skip
    assert proc.returncode == 4, proc.stderr
    assert proc.stderr.startswith("error: the patchflow API at")
