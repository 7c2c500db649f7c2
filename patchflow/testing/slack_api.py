"""A local Slack Web API stand-in for TESTS AND DEMOS: a small real HTTP server on ``127.0.0.1``.

patchflow talks to Slack only through slack_sdk's ``WebClient``, whose ``base_url`` can point anywhere
(``../shared/reference/libraries.md`` §2.2), so tests and the demo exercise the real client over real HTTP
against this server instead of mocking it. It answers the few methods patchflow calls, with Slack's response
shapes and error codes, and records every call so tests can assert on what was posted:

* ``chat.postMessage`` (stores the message; answers ``channel`` and a fresh ``ts``), ``chat.update``
  (``message_not_found`` for an unknown ``channel``/``ts``), ``chat.postEphemeral``;
* ``usergroups.users.list`` from the groups given to the constructor (``no_such_subteam`` otherwise);
* ``auth.test``; any other method answers ``unknown_method``;
* a wrong bearer token answers ``invalid_auth``; :meth:`SlackApiStandIn.rate_limit` makes the next calls of a
  method answer HTTP 429 with ``Retry-After``, as Slack does when a rate tier is exceeded.

Use it as a context manager::

    with SlackApiStandIn(usergroups={"S0OPS": ["U0BOB"]}) as slack:
        client = WebClient(token=slack.token, base_url=slack.url)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass
class SlackCall:
    """One request the stand-in received."""

    method: str
    """The Web API method, e.g. ``chat.postMessage``."""
    args: dict[str, Any]
    """JSON body, form fields or query parameters (form values decoded to single strings)."""
    headers: dict[str, str] = field(default_factory=dict)
    at: float = 0.0
    """``time.monotonic()`` when it arrived."""
    status: int = 200
    response: dict[str, Any] = field(default_factory=dict)
    """What the stand-in answered (``ts`` of a posted message, ``error`` …)."""


class SlackApiStandIn:
    """A recording Slack Web API on a free port of 127.0.0.1 (see the module docstring)."""

    def __init__(
        self, *, token: str = "xoxb-test-token", usergroups: Mapping[str, Sequence[str]] | None = None
    ) -> None:
        self.token = token
        self.usergroups: dict[str, list[str]] = {k: list(v) for k, v in (usergroups or {}).items()}
        self.messages: dict[tuple[str, str], dict[str, Any]] = {}
        """(channel, ts) → the stored message (``text``, ``blocks``), updated by ``chat.update``."""
        self._calls: list[SlackCall] = []
        self._lock = threading.Lock()
        self._rate_limited: dict[str, tuple[int, int]] = {}
        self._ts = itertools.count(1)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> SlackApiStandIn:
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                stand_in._serve(self)

            def do_POST(self) -> None:  # noqa: N802
                stand_in._serve(self)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - silence the access log
                return

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},  # stop() returns within one poll
            name="slack-stand-in",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> SlackApiStandIn:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The Web API base URL for ``WebClient(base_url=...)`` and ``PATCHFLOW_SLACK_API_URL``."""
        assert self._server is not None, "start the stand-in first"
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/"

    # ------------------------------------------------------------------------------------------ scripting

    def rate_limit(self, method: str, *, times: int = 1, retry_after: int = 0) -> None:
        """The next ``times`` calls of ``method`` answer HTTP 429 with ``Retry-After: retry_after``."""
        with self._lock:
            self._rate_limited[method] = (times, retry_after)

    def calls(self, method: str | None = None) -> list[SlackCall]:
        """The calls received so far (of one method, or all), oldest first."""
        with self._lock:
            return [c for c in self._calls if method is None or c.method == method]

    async def wait_for(
        self, method: str, predicate: Callable[[SlackCall], bool] = lambda _c: True, *, timeout: float = 10.0
    ) -> SlackCall:
        """The first call of ``method`` matching ``predicate``, waiting for it (asyncio: the loop keeps running)."""
        deadline = time.monotonic() + timeout
        while True:
            for call in self.calls(method):
                if predicate(call):
                    return call
            if time.monotonic() > deadline:
                seen = [(c.method, c.args) for c in self.calls()]
                raise AssertionError(f"no matching {method} call within {timeout} s; calls: {seen}")
            await asyncio.sleep(0.02)

    # ------------------------------------------------------------------------------------------ serving

    def _serve(self, request: BaseHTTPRequestHandler) -> None:
        parsed = urllib.parse.urlsplit(request.path)
        method = parsed.path.rsplit("/", 1)[-1]
        length = int(request.headers.get("Content-Length") or 0)
        raw = request.rfile.read(length) if length else b""
        args: dict[str, Any] = {k: v[-1] for k, v in urllib.parse.parse_qs(parsed.query).items()}
        content_type = request.headers.get("Content-Type") or ""
        if raw and content_type.startswith("application/json"):
            args.update(json.loads(raw))
        elif raw:
            args.update({k: v[-1] for k, v in urllib.parse.parse_qs(raw.decode()).items()})
        for key in ("blocks", "users"):  # form-encoded calls send these as JSON strings
            if isinstance(args.get(key), str):
                with contextlib.suppress(ValueError):
                    args[key] = json.loads(args[key])
        call = SlackCall(method=method, args=args, headers=dict(request.headers.items()), at=time.monotonic())
        with self._lock:
            self._calls.append(call)
            limited = self._rate_limited.get(method)
            extra: dict[str, str] = {}
            if limited and limited[0] > 0:
                self._rate_limited[method] = (limited[0] - 1, limited[1])
                call.status, call.response = 429, {"ok": False, "error": "ratelimited"}
                extra["Retry-After"] = str(limited[1])
            else:
                call.response = self._answer(method, args, request.headers.get("Authorization") or "")
        self._reply(request, call.status, call.response, extra)

    def _answer(self, method: str, args: dict[str, Any], authorization: str) -> dict[str, Any]:
        if authorization != f"Bearer {self.token}":
            return {"ok": False, "error": "invalid_auth"}
        if method == "auth.test":
            return {
                "ok": True,
                "url": "https://patchflow-test.slack.com/",
                "team": "test",
                "user": "patchflow",
            }
        if method == "chat.postMessage":
            channel = str(args.get("channel") or "")
            if not channel:
                return {"ok": False, "error": "channel_not_found"}
            ts = f"{1_700_000_000 + next(self._ts)}.000100"
            message = {"ts": ts, "text": args.get("text", ""), "blocks": args.get("blocks", [])}
            self.messages[(channel, ts)] = message
            return {"ok": True, "channel": channel, "ts": ts, "message": message}
        if method == "chat.update":
            key = (str(args.get("channel") or ""), str(args.get("ts") or ""))
            if key not in self.messages:
                return {"ok": False, "error": "message_not_found"}
            self.messages[key].update(text=args.get("text", ""), blocks=args.get("blocks", []))
            return {"ok": True, "channel": key[0], "ts": key[1], "text": args.get("text", "")}
        if method == "chat.postEphemeral":
            if not args.get("channel") or not args.get("user"):
                return {"ok": False, "error": "invalid_arguments"}
            return {"ok": True, "message_ts": f"{time.time():.6f}"}
        if method == "usergroups.users.list":
            group = str(args.get("usergroup") or "")
            if group not in self.usergroups:
                return {"ok": False, "error": "no_such_subteam"}
            return {"ok": True, "users": list(self.usergroups[group])}
        return {"ok": False, "error": "unknown_method"}

    @staticmethod
    def _reply(
        request: BaseHTTPRequestHandler,
        status: int,
        body: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        data = json.dumps(body).encode()
        request.send_response(status)
        request.send_header("Content-Type", "application/json; charset=utf-8")
        request.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(data)
