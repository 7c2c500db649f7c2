"""The CLI through patchflow's REST API (remote mode): ``PATCHFLOW_API_URL`` and ``PATCHFLOW_TOKEN`` both set.

The wave commands (``plan``, ``wave start|status|list|approve|reject|halt|resume|cancel|rollback``) then
send their requests to the API with ``Authorization: Bearer <token>`` instead of talking to Temporal: the API
decides who acts (the token's name), checks the token's role, and audits the call. This is the production
set-up: operators hold tokens, only the API and the workers hold Temporal client certificates, and ``--as`` —
a claim the CLI cannot prove — is refused. Commands the API does not offer (schedules, emergencies) are
refused too, rather than quietly going to Temporal.

The boundary is kept on this side as well: only ``http(s)`` URLs without credentials, plain ``http`` only to
this machine unless ``PATCHFLOW_API_INSECURE_HTTP`` says otherwise, a token that cannot smuggle a header, and
no redirect followed (an API route never redirects; following one would replay the request, token included,
wherever the answer points). Answers map to the CLI's exit codes: 422/413 → 2 (bad input, with every
problem), 404 → 3, 401/403/409 → 4 (refused, with the API's reason), 503 and unreachable → 1.
"""

from __future__ import annotations

import ipaddress
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import quote

import httpx

from patchflow import __version__
from patchflow.config import Settings
from patchflow.core.wavemodel import WAVE_FINAL_STATES
from patchflow.errors import InputError, NotFoundError, PatchflowError, Problem

REQUEST_TIMEOUT = httpx.Timeout(connect=10.0, read=120.0, write=30.0, pool=10.0)
"""Starting a wave pins its patch set and a dry run lists the fleet: both can take a while on the server."""

WAIT_POLL_SECONDS = 0.5
"""How often ``wave start --wait`` asks for the wave's state."""

WAIT_MAX_FAILURES = 40
"""Consecutive failed polls (~20 s) after which ``--wait`` stops waiting, as in local mode."""


class ApiRefused(PatchflowError):
    """The API refused the call: no valid token (401), a role that may not (403), or the wave refused (409)."""

    exit_code = 4


class ApiUnavailable(PatchflowError):
    """The API cannot be reached, or it cannot reach Temporal or its database (503): try again later."""


@dataclass(frozen=True)
class RemoteApi:
    """patchflow's REST API at ``url``, called with ``token``."""

    url: str
    """Base URL, without a trailing slash (the API may live under a path prefix)."""
    token: str

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, Any] | None = None,
    ) -> Any:
        """One request; the decoded JSON answer of a 2xx, else the error the answer means (see the module)."""
        headers = {
            "Authorization": f"Bearer {self.token}",
            "Accept": "application/json",
            "User-Agent": f"patchflow-cli/{__version__}",
        }
        try:
            with httpx.Client(timeout=REQUEST_TIMEOUT, follow_redirects=False) as client:
                response = client.request(method, self.url + path, json=body, params=params, headers=headers)
        except httpx.TimeoutException:
            raise ApiUnavailable(
                f"the patchflow API at {self.url} did not answer {method} {path} in time; it may still have "
                "acted — check with 'patchflow wave list' before repeating an action"
            ) from None
        except httpx.TransportError as exc:
            raise ApiUnavailable(
                f"cannot reach the patchflow API at {self.url} ({_reason(exc)}); check PATCHFLOW_API_URL and "
                "that the API runs (for a private CA: SSL_CERT_FILE names its bundle)"
            ) from None
        return self._answer(method, path, response)

    def _answer(self, method: str, path: str, response: httpx.Response) -> Any:
        status = response.status_code
        if response.is_redirect or 300 <= status < 400:
            raise InputError(
                f"the patchflow API at {self.url} answered {method} {path} with a redirect (HTTP {status} to "
                f"{_safe_location(response.headers.get('location', ''))}); patchflow follows none, so the token "
                "goes nowhere else: set PATCHFLOW_API_URL to the address the API itself serves on"
            )
        code, message, problems = _error_of(response)
        if response.is_success:
            if code is not None or not _is_json(response):
                raise PatchflowError(
                    f"{self.url} answered {method} {path} with something other than patchflow's JSON API "
                    f"(HTTP {status}, {response.headers.get('content-type') or 'no content type'}); is "
                    "PATCHFLOW_API_URL the API's base URL?"
                )
            return response.json()
        if status == 401:
            raise ApiRefused(
                f"the patchflow API at {self.url} refused the token in PATCHFLOW_TOKEN ({message}); ask an "
                "admin for a valid one ('patchflow token create --name NAME --role ROLE')"
            )
        if status == 403:
            raise ApiRefused(f"refused by the patchflow API: {message}")
        if status == 409:
            raise ApiRefused(message)
        if status == 404:
            if code == "not_found" and message.startswith("no such route"):
                raise InputError(
                    f"{self.url} has no route {method} {path}; is PATCHFLOW_API_URL the patchflow API's base "
                    "URL (and the API as new as this CLI)?"
                )
            raise NotFoundError(message)
        if status in (400, 413, 422):
            raise InputError(message, problems=problems)
        if status == 503:
            retry = response.headers.get("retry-after", "")
            after = f"; try again in {retry} s" if retry.isdigit() else "; try again later"
            raise ApiUnavailable(f"the patchflow API cannot act now: {message}{after}")
        raise PatchflowError(f"the patchflow API failed {method} {path} (HTTP {status}): {message}")


# ---------------------------------------------------------------------------------------------- set-up


def remote_api(settings: Settings) -> RemoteApi | None:
    """The API to act through, or ``None`` (local mode: neither variable set).

    Raises:
        InputError: only one of the two variables is set, or either cannot be used safely (see the module).
    """
    url = (settings.api_url or "").strip()
    token = settings.token.get_secret_value().strip() if settings.token is not None else ""
    if not url and not token:
        return None
    if not token:
        raise InputError(
            "PATCHFLOW_API_URL is set but PATCHFLOW_TOKEN is not: set PATCHFLOW_TOKEN to your API token "
            "('patchflow token create' prints one), or unset PATCHFLOW_API_URL to talk to Temporal directly"
        )
    if not url:
        raise InputError(
            "PATCHFLOW_TOKEN is set but PATCHFLOW_API_URL is not: set PATCHFLOW_API_URL to the patchflow API's "
            "base URL (e.g. https://patchflow.example.com), or unset PATCHFLOW_TOKEN to talk to Temporal directly"
        )
    return RemoteApi(
        url=checked_url(url, allow_insecure_http=settings.api_insecure_http), token=checked_token(token)
    )


def checked_url(url: str, *, allow_insecure_http: bool) -> str:
    """``url`` as a base URL (no trailing slash), if a token may be sent there.

    Raises:
        InputError: not ``http(s)``, no host, credentials, a query or fragment, or plain ``http`` to another
            machine without ``PATCHFLOW_API_INSECURE_HTTP`` (the token would cross the network in clear).
    """
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        raise InputError(
            "PATCHFLOW_API_URL is not a URL; use the API's base URL, e.g. https://patchflow.example.com"
        ) from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise InputError(
            f"PATCHFLOW_API_URL must be an http:// or https:// URL with a host (got scheme "
            f"{parsed.scheme or 'none'!r}); e.g. https://patchflow.example.com"
        )
    if parsed.userinfo:
        raise InputError(
            "PATCHFLOW_API_URL must not carry credentials (user:password@): the API takes the token from "
            "PATCHFLOW_TOKEN only"
        )
    if parsed.query or parsed.fragment:
        raise InputError("PATCHFLOW_API_URL must be a base URL, without a query (?…) or fragment (#…)")
    if parsed.scheme == "http" and not _is_loopback(parsed.host):
        if not allow_insecure_http:
            raise InputError(
                f"PATCHFLOW_API_URL is plain http:// to {parsed.host}: the token would cross the network "
                "unencrypted. Use https:// (TLS in front of the API), or, on a network you trust, set "
                "PATCHFLOW_API_INSECURE_HTTP=true"
            )
        sys.stderr.write(
            f"warning: sending the API token to {parsed.host} over plain http (PATCHFLOW_API_INSECURE_HTTP)\n"
        )
    base = parsed.copy_with(path=parsed.path.rstrip("/") or "/")
    return str(base).rstrip("/")


def checked_token(token: str) -> str:
    """The token, if it is one HTTP header can carry as it is.

    Raises:
        InputError: a character outside printable ASCII — a line break would end the header and start another
            (header injection), a space or control character is never part of a token. The token itself is
            never echoed.
    """
    for position, char in enumerate(token, start=1):
        if not "!" <= char <= "~":
            what = (
                "a line break"
                if char in "\r\n"
                else "a space"
                if char == " "
                else "a control character"
                if ord(char) < 0x20 or ord(char) == 0x7F
                else "a non-ASCII character"
            )
            raise InputError(
                f"PATCHFLOW_TOKEN holds {what} at position {position}: it must be exactly the token "
                "'patchflow token create' printed (pft_…)"
            )
    return token


def _is_loopback(host: str) -> bool:
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: whatever it resolves to, it is not known to stay on this machine


def refuse_direct_temporal(settings: Settings) -> None:
    """Refuse a command that would talk to Temporal directly while the CLI is set to act through the API.

    Raises:
        InputError: ``PATCHFLOW_API_URL`` and ``PATCHFLOW_TOKEN`` are set (or only one of them).
    """
    if remote_api(settings) is None:
        return
    raise InputError(
        "this command talks to Temporal directly (schedules and emergency waves have no API route), and with "
        "PATCHFLOW_API_URL and PATCHFLOW_TOKEN set the CLI acts through the patchflow API only. Run it without "
        "them, where a Temporal client certificate is configured (PATCHFLOW_TEMPORAL_TLS_*)"
    )


def refuse_as(who: str | None) -> None:
    """``--as`` names an actor the CLI cannot prove: through the API, the token is who acts.

    Raises:
        InputError: ``--as`` was given.
    """
    if who is not None:
        raise InputError(
            f"--as {who} is not accepted through the API: PATCHFLOW_TOKEN's name is who acts (the API decides). "
            f"Leave --as out, or use {who}'s own token"
        )


# ---------------------------------------------------------------------------------------------- the calls


def _wave_path(wave_id: str, *rest: str) -> str:
    """``/waves/<id>/…`` with the id one quoted path segment: an id can never reach another route."""
    if not wave_id.strip(".") or "/" in wave_id:
        raise InputError(f"{wave_id!r} is no wave id; list waves with 'patchflow wave list'")
    return "/".join(("/waves", quote(wave_id, safe=""), *rest))


_STAGE_ROLLOUT_KEYS = ("blocked_by", "analysis", "measurements", "disruption_budget", "reboot_debt")
"""Stage keys ``wave status --format json`` leaves out when empty (the API answers them as null or [])."""


def wave_status(api: RemoteApi, wave_id: str, *, limit: int | None = None, offset: int = 0) -> dict[str, Any]:
    """``GET /waves/{id}`` in the shape of ``wave status --format json``: as in local mode, an instance without
    a detail has no ``detail`` key, and a stage has its rollout keys (``blocked_by``, ``analysis``,
    ``measurements``, ``disruption_budget``, ``reboot_debt``) only when it uses them; ``limit``/``offset``: one
    page per stage (``instances_total`` and ``state_counts`` only then)."""
    params = {"limit": limit, "offset": offset} if limit is not None else None
    status: dict[str, Any] = api.call("GET", _wave_path(wave_id), params=params)
    for stage in status.get("stages", []):
        if stage.get("instances_total") is None:
            stage.pop("instances_total", None)
            stage.pop("state_counts", None)
        for key in _STAGE_ROLLOUT_KEYS:
            if not stage.get(key):
                stage.pop(key, None)
        for instance in stage.get("instances", []):
            if instance.get("detail") is None:
                instance.pop("detail", None)
            if not instance.get("hooks"):
                instance.pop("hooks", None)
    return status


def list_waves(api: RemoteApi, *, limit: int = 50) -> list[dict[str, Any]]:
    """``GET /waves`` (the API's task queue, newest first) as the rows of ``wave list --format json``."""
    answer = api.call("GET", "/waves", params={"limit": limit})
    rows: list[dict[str, Any]] = []
    for wave in answer.get("waves", []):
        row: dict[str, Any] = {
            "wave_id": wave["wave_id"],
            "started": _isoformat(wave.get("started")),
            "workflow_status": wave.get("workflow_status"),
            "state": wave.get("state"),
        }
        if wave.get("plan") is not None:
            row["plan"] = wave["plan"]
        rows.append(row)
    return rows


def act(api: RemoteApi, wave_id: str, action: str, *, stage: str | None, comment: str) -> str:
    """``POST /waves/{id}/<action>`` as the token's name; the wave's answer."""
    body: dict[str, Any] = {"comment": comment}
    if action in ("approve", "reject"):
        if not stage:
            raise InputError(f"{action} needs --stage NAME")
        body["stage"] = stage
    result = api.call("POST", _wave_path(wave_id, action), body=body)
    return str(result["message"])


def dry_run(api: RemoteApi, plan: str, at: datetime | None = None) -> dict[str, Any]:
    """``POST /plans/dry-run``: ``patchflow plan`` on the server, for a plan of its plans directory."""
    body: dict[str, Any] = {"plan": plan}
    if at is not None:
        body["at"] = at.isoformat()
    result: dict[str, Any] = api.call("POST", "/plans/dry-run", body=body)
    return result


def start_wave(api: RemoteApi, plan: str, *, patch_set: str | None, allow_concurrent: bool) -> dict[str, str]:
    """``POST /waves`` as the token's name. The API runs local mode's checks itself: a plan that would not get
    through its stages is refused (422: exit 2, every problem), and so is a second wave of a plan while one
    runs (409: exit 4) unless ``allow_concurrent``.

    Returns ``{"wave_id", "patch_set_id"}``, as local mode prints them.
    """
    body: dict[str, Any] = {"plan": plan, "allow_concurrent": allow_concurrent}
    if patch_set is not None:
        body["patch_set"] = patch_set
    try:
        started = api.call("POST", "/waves", body=body)
    except ApiRefused as exc:
        if "allow_concurrent" not in str(exc):
            raise
        raise ApiRefused(f"{exc} (here: patchflow wave start --allow-concurrent)") from None
    return {"wave_id": str(started["wave_id"]), "patch_set_id": str(started["patch_set_id"])}


def wait_settled(
    api: RemoteApi,
    wave_id: str,
    *,
    timeout: float | None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Poll ``GET /waves/{id}`` until the wave finished, halted or waits at a gate (``wave start --wait``).

    Raises:
        PatchflowError: ``timeout`` passed, or the API could not say for :data:`WAIT_MAX_FAILURES` polls.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    failures = 0
    last = ""
    while True:
        try:
            status = wave_status(api, wave_id)
        except ApiUnavailable as exc:  # a worker starting, Temporal restarting: as local mode, wait a while
            failures += 1
            if failures >= WAIT_MAX_FAILURES:
                raise PatchflowError(f"stopped waiting for wave {wave_id}: {exc}") from None
        else:
            failures = 0
            if status["state"] in WAVE_FINAL_STATES or status["state"] in ("halted", "waiting_approval"):
                return status
            summary = ", ".join(f"{s['name']} {s['state']}" for s in status["stages"])
            if progress is not None and summary != last:
                progress(f"  {status['state']}: {summary}")
                last = summary
        if deadline is not None and time.monotonic() > deadline:
            raise PatchflowError(
                f"wave {wave_id} did not settle within {timeout:.0f}s; it keeps running: "
                f"patchflow wave status {wave_id}"
            )
        time.sleep(WAIT_POLL_SECONDS)


# ---------------------------------------------------------------------------------------------- answers


def _error_of(response: httpx.Response) -> tuple[str | None, str, list[Problem]]:
    """(code, message, problems) of an answer in the API's error format; for anything else, a message made of
    the status line (a proxy's HTML page is not shown)."""
    fallback = f"HTTP {response.status_code} {response.reason_phrase}".strip()
    if not _is_json(response):
        return None, f"{fallback} (not an answer of patchflow's API)", []
    try:
        data = response.json()
    except ValueError:
        return None, fallback, []
    error = data.get("error") if isinstance(data, dict) else None
    if not isinstance(error, dict):
        return None, fallback, []
    problems = [
        Problem(path=str(p.get("path", "")), message=str(p.get("message", "")), line=p.get("line"))
        for p in error.get("problems") or []
        if isinstance(p, dict)
    ]
    return str(error.get("code", "")), str(error.get("message") or fallback), problems


def _is_json(response: httpx.Response) -> bool:
    return response.headers.get("content-type", "").split(";")[0].strip() == "application/json"


def _reason(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _safe_location(location: str) -> str:
    """A redirect target to show: scheme, host and path only (no credentials or query it may carry)."""
    try:
        url = httpx.URL(location)
    except (httpx.InvalidURL, ValueError, TypeError):
        return "an invalid location"
    if not url.host:
        return url.path or "/"
    port = f":{url.port}" if url.port else ""
    return f"{url.scheme}://{url.host}{port}{url.path}"


def _isoformat(value: str | None) -> str | None:
    """The API's RFC 3339 timestamp (``…Z``) as local mode prints it (``datetime.isoformat``: ``…+00:00``)."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value).isoformat()
    except ValueError:
        return value
