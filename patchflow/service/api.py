"""patchflow's REST API (FastAPI): waves, gate decisions, plans, baselines, compliance, health and metrics.

Served by ``patchflow api`` (uvicorn on ``PATCHFLOW_API_HOST:PATCHFLOW_API_PORT``, 127.0.0.1:8000 by default)
and, next to the worker, by ``patchflow dev``. ``python -m patchflow.service.api --openapi`` prints the OpenAPI
document committed as ``deploy/openapi.json`` (a test fails when the two drift apart).

The API is an edge like the CLI: it talks to Temporal through :mod:`patchflow.control.waves` and to the history
database through :mod:`patchflow.store.db`; it never patches anything itself.

Authentication and roles
    Every route but ``/healthz`` and ``/readyz`` wants ``Authorization: Bearer <token>`` (``patchflow token
    create``). ``viewer`` reads; ``operator`` also starts, halts, resumes, cancels and rolls back waves and
    validates and evaluates plans and baselines; ``approver`` reads and answers approval gates; ``admin`` does
    everything. Answering a gate also needs the token's *name* among the stage's approvers: the API passes
    the name as ``who`` and the workflow's Update validator decides, exactly as for the CLI's ``--as``. No
    request body can name another actor (request models forbid unknown fields).

Errors
    Always ``{"error": {"code", "message", "problems"?}}``: 401 no or bad token, 403 role too weak, 404 unknown
    wave or route, 409 an action the wave refused (with the wave's reason), 413 body too large, 422 invalid
    request or document (``problems`` lists field paths, and lines for uploaded documents), 503 Temporal or
    the database unavailable. A 500 is a bug; its message never carries internals.

Audit
    Every call that could change a wave (start, halt, resume, cancel, rollback, approve, reject) is appended
    to the audit log with the token's name as actor and its outcome (``ok``, ``refused``, ``not_found``,
    ``invalid``, ``forbidden``); every refused one — and every 403, whatever the route — is recorded as a
    refused attempt with its reason (:func:`patchflow.store.db.append_refusal`, rate-limited).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import importlib
import importlib.util
import json
import logging
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Annotated, Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from temporalio.client import Client, WorkflowExecution
from temporalio.exceptions import WorkflowAlreadyStartedError
from temporalio.service import RPCError
from uvicorn.config import LOGGING_CONFIG

from patchflow.config import Settings, get_settings
from patchflow.core.wavemodel import MAX_PAGE_INSTANCES, WAVE_FINAL_STATES, WaveStatus
from patchflow.errors import InputError, NotFoundError, PatchflowError, Problem
from patchflow.metrics import DEFAULT_METRICS, Metrics, refresh_loop, render
from patchflow.service.apimodel import (
    MAX_TEXT,
    PLAN_NAME_PATTERN,
    ActionResult,
    BaselineRequest,
    BaselineValidation,
    CheckOut,
    ComplianceOut,
    ComplianceRequest,
    DryRunOut,
    DryRunRequest,
    ErrorDetail,
    ErrorResponse,
    EvaluateRequest,
    EvaluationOut,
    GateRequest,
    HealthOut,
    OperatorRequest,
    PlanRequest,
    PlanValidation,
    ProblemOut,
    ReadinessOut,
    StartWave,
    WaveDetail,
    WaveList,
    WaveStarted,
    WaveStateName,
    WaveSummary,
)
from patchflow.service.intake import PlanAccessRefused, PlansDirectory, parse_upload
from patchflow.store import db

if TYPE_CHECKING:
    from patchflow.core.baselines import Baseline
    from patchflow.core.evaluation import Evaluation, PatchSet
    from patchflow.core.plans import Plan
    from patchflow.core.wavemodel import WaveInput

log = logging.getLogger(__name__)

API_VERSION = "1.0"
"""Version of the HTTP contract in ``deploy/openapi.json`` (not of the package): bump it on breaking changes."""

STATUS_TIMEOUT_SECONDS = 5.0
"""How long one wave may take to answer its status query. A running wave whose workers are all gone never
answers; the list and the metrics refresher must not hang on it."""

LIST_BATCH = 20
"""Wave statuses fetched concurrently while listing (each costs a few Temporal RPCs)."""

MAX_LIST_SCAN = 1000
"""Most workflows a filtered list looks at before it returns what it found."""

MAX_TOKEN = 512
"""Longest bearer token worth hashing (patchflow's are ~60 characters)."""


# ---------------------------------------------------------------------------------------------- roles


READ = frozenset({db.Role.viewer, db.Role.operator, db.Role.approver, db.Role.admin})
OPERATE = frozenset({db.Role.operator, db.Role.admin})
DECIDE = frozenset({db.Role.approver, db.Role.admin})

PERMISSIONS: dict[str, frozenset[db.Role]] = {
    "read": READ,
    "start": OPERATE,
    "halt": OPERATE,
    "resume": OPERATE,
    "cancel": OPERATE,
    "rollback": OPERATE,
    "validate": OPERATE,
    "evaluate": OPERATE,
    "approve": DECIDE,
    "reject": DECIDE,
}
"""Which roles may do what. ``approve``/``reject`` additionally need the token's name among the approvers of
the stage (checked by the workflow)."""

MUTATING = frozenset({"start", "halt", "resume", "cancel", "rollback", "approve", "reject"})
"""Actions that land in the audit log, whatever their outcome."""

REFUSED_OUTCOMES = frozenset({"forbidden", "refused", "not_found", "invalid"})
"""Audit outcomes that are refused attempts (403, 409, 404, 422): recorded by ``db.append_refusal``."""


@dataclass(frozen=True)
class Principal:
    """Who is calling: the token's name is the identity the audit log and the approval gates see."""

    token_id: str
    name: str
    role: db.Role


# ---------------------------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An HTTP error with its JSON body (raised by routes and dependencies, rendered by a handler)."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def _error(
    status: int,
    code: str,
    message: str,
    problems: Sequence[ProblemOut] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = ErrorResponse(error=ErrorDetail(code=code, message=message, problems=list(problems)))
    return JSONResponse(body.model_dump(mode="json"), status_code=status, headers=headers)


def _input_problems(exc: InputError) -> list[ProblemOut]:
    return [ProblemOut(path=p.path, message=p.message, line=p.line) for p in exc.problems]


_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    413: "too_large",
    415: "unsupported_media_type",
}


def _install_error_handlers(app: FastAPI) -> None:
    """Every error leaves as ``{"error": {...}}``; none carries a traceback or echoes a huge input back."""

    @app.exception_handler(ApiError)
    async def api_error(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            ProblemOut(path=".".join(str(part) for part in e.get("loc", ())), message=str(e.get("msg", "")))
            for e in exc.errors()
        ]
        summary = "; ".join(f"{p.path}: {p.message}" for p in problems[:5])
        return _error(422, "invalid_request", f"invalid request: {summary}", problems)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_CODES.get(exc.status_code, "http_error")
        message = {404: "no such route; see /openapi.json for the API", 413: TOO_LARGE}.get(
            exc.status_code, str(exc.detail)
        )
        return _error(exc.status_code, code, message, headers=dict(exc.headers or {}))

    @app.exception_handler(PatchflowError)
    async def patchflow_error(_: Request, exc: PatchflowError) -> JSONResponse:
        from patchflow.control.waves import WaveActionRefused

        if isinstance(exc, InputError):
            return _error(422, "invalid_input", str(exc), _input_problems(exc))
        if isinstance(exc, NotFoundError):
            return _error(404, "not_found", str(exc))
        if isinstance(exc, WaveActionRefused):
            return _error(409, "refused", str(exc))
        # TemporalUnavailable, DatabaseError, a wave that did not answer: the request may work later.
        return _error(503, "unavailable", str(exc), headers=RETRY_LATER)

    @app.exception_handler(RPCError)
    async def temporal_error(_: Request, exc: RPCError) -> JSONResponse:
        return _error(503, "unavailable", f"Temporal did not answer: {exc.message}", headers=RETRY_LATER)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "internal", "internal error (a bug); the server log has the details")


TOO_LARGE = "request body too large; PATCHFLOW_API_MAX_BODY_BYTES sets the limit"

RETRY_AFTER_SECONDS = 5
RETRY_LATER = {"Retry-After": str(RETRY_AFTER_SECONDS)}
"""Sent with every 503: Temporal or the database is away, and a client (or ``patchflow`` through the API)
should try again after this many seconds rather than at once."""


class BodyLimit:
    """Refuse request bodies over ``max_body_size`` bytes with 413 in the API's error format.

    A declared ``Content-Length`` is refused before anything is read; a streamed body is counted as it
    arrives and cut when it passes the limit (the error surfaces where the route reads its body and reaches
    the handlers above). FastAPI's own ``max_body_size`` is not used: for a declared length it answers in
    plain text, from outside any middleware of ours.
    """

    def __init__(self, app: ASGIApp, max_body_size: int) -> None:
        self.app = app
        self.max_body_size = max_body_size

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_size:
            await _error(413, "too_large", TOO_LARGE)(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_size:
                    # FastAPI's HTTPException: the body reader re-raises it as is (anything else becomes 400).
                    raise HTTPException(413, TOO_LARGE)
            return message

        await self.app(scope, counted, send)


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "No token, or a malformed, unknown or revoked one."},
    403: {"model": ErrorResponse, "description": "The token's role may not do this."},
    422: {"model": ErrorResponse, "description": "Invalid request, with the path of every bad field."},
    503: {
        "model": ErrorResponse,
        "description": "Temporal or the database is unavailable; retry after the Retry-After header's seconds.",
    },
}
WAVE_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    404: {"model": ErrorResponse, "description": "No such wave."},
}
ACTION_RESPONSES: dict[int | str, dict[str, Any]] = {
    **WAVE_RESPONSES,
    409: {"model": ErrorResponse, "description": "The wave refused the action; the message says why."},
}


# ---------------------------------------------------------------------------------------------- state


class TemporalConnector:
    """The API's one Temporal client: connected at start-up, or on first use if Temporal was down then, so
    the API starts (and ``/healthz`` answers) whatever the order services come up in."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._client: Client | None = None
        self._lock = asyncio.Lock()

    async def get(self) -> Client:
        """The client.

        Raises:
            TemporalUnavailable: Temporal cannot be reached (rendered as 503).
            TemporalSettingsError: the TLS settings cannot work (503 as well, with what to fix).
        """
        if self._client is None:
            async with self._lock:
                if self._client is None:
                    from patchflow.control.connection import connect

                    self._client = await connect(self.settings)
        return self._client


class TokenVerifier:
    """Bearer tokens checked against the database, successful checks cached for ``ttl_seconds``.

    Verifying costs a scrypt hash (~40 ms of CPU), so a busy client would otherwise pay it on every request.
    Only successes are cached: a wrong token costs the full price every time, which is what slows guessing.
    The price of the cache is that a revoked token keeps working until its entry expires.
    """

    def __init__(
        self, database_url: str, *, ttl_seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.database_url = database_url
        self.ttl_seconds = ttl_seconds
        self._clock = clock
        self._cache: dict[str, tuple[float, Principal]] = {}

    async def verify(self, token: str) -> Principal | None:
        """The caller behind ``token``; ``None`` for a malformed, unknown, wrong or revoked one."""
        if not token or len(token) > MAX_TOKEN:
            return None
        # Keyed by a digest so the cache never holds a usable secret.
        key = hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()
        now = self._clock()
        hit = self._cache.get(key)
        if hit is not None and hit[0] > now:
            return hit[1]
        principal = await asyncio.to_thread(self._verify, token)
        if principal is None:
            self._cache.pop(key, None)
        elif self.ttl_seconds > 0:
            if len(self._cache) >= 1024:
                self._cache = {k: v for k, v in self._cache.items() if v[0] > now}
            self._cache[key] = (now + self.ttl_seconds, principal)
        return principal

    def _verify(self, token: str) -> Principal | None:
        with db.translate_errors(self.database_url), db.open_session(db.get_engine(self.database_url)) as s:
            role = db.verify_token(s, token=token)
            if role is None:
                return None
            # verify_token answers only the role; the name (the identity gates and the audit log see) comes
            # from the token's row, found by the id inside the token (pft_<id>_<secret>).
            token_id = token.strip().split("_", 2)[1]
            name = next((t.name for t in db.list_tokens(s, include_revoked=False) if t.id == token_id), None)
        return None if name is None else Principal(token_id=token_id, name=name, role=role)


class ApiState:
    """Everything the routes share; one per app (so tests can run several apps side by side)."""

    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.database_url = settings.database_url_resolved
        self.temporal = TemporalConnector(settings)
        self.tokens = TokenVerifier(self.database_url, ttl_seconds=settings.api_token_cache_seconds)
        self.plans = PlansDirectory(settings.api_plans_dir_resolved)
        """The only place plans named in requests are read from (:mod:`patchflow.service.intake`)."""
        self.notifier: Any = None
        """Posts wave transitions to Slack when a bot token is configured — in one replica only: the one
        holding :attr:`notifier_lease`."""
        self.notifier_lease = db.LeaderLease(self.database_url, "slack-notifier")
        self.notifier_leads = False
        """Whether this replica held the lease at the last refresh (``/readyz`` says so)."""
        if settings.slack_bot_token:  # the channel comes from each plan, else PATCHFLOW_SLACK_CHANNEL
            from patchflow.service.slack import WaveNotifier, make_web_client

            self.notifier = WaveNotifier(
                web_client=make_web_client(settings), channel=settings.slack_channel or ""
            )

    def audit(
        self,
        who: Principal,
        action: str,
        *,
        outcome: str,
        wave_id: str | None = None,
        stage: str | None = None,
        detail: dict[str, Any] | None = None,
        reason: str = "",
    ) -> None:
        """Append one API call to the audit log (blocking: call through ``asyncio.to_thread``); a refused one
        (:data:`REFUSED_OUTCOMES`) is recorded as a refused attempt with its ``reason``, rate-limited.

        Never raises: the wave has already acted (or refused) by now, and failing the request would make the
        client retry an action that happened. The wave keeps its own audit trail as well.
        """
        entry = {"via": "api", "outcome": outcome, "token_id": who.token_id, **(detail or {})}
        try:
            with (
                db.translate_errors(self.database_url),
                db.open_session(db.get_engine(self.database_url)) as s,
            ):
                if outcome not in REFUSED_OUTCOMES:  # ok, or an error of patchflow's own (Temporal down)
                    db.append_audit(
                        s, actor=who.name, action=action, wave_id=wave_id, stage=stage, detail=entry
                    )
                elif not db.append_refusal(
                    s,
                    actor=who.name,
                    action=action,
                    reason=reason or outcome,
                    wave_id=wave_id,
                    stage=stage,
                    detail=entry,
                ):
                    log.warning(
                        "refused %s by %s not audited: too many refusals this minute", action, who.name
                    )
        except Exception:  # noqa: BLE001 - see the docstring
            log.exception("could not write the audit entry %s %s by %s", action, wave_id or "", who.name)


def _state(request: Request) -> ApiState:
    state: ApiState = request.app.state.patchflow
    return state


StateDep = Annotated[ApiState, Depends(_state)]

# ---------------------------------------------------------------------------------------------- auth

_bearer = HTTPBearer(
    auto_error=False,
    description="An API token from `patchflow token create --name NAME --role ROLE`.",
)
_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


async def authenticate(
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    """The caller, or 401."""
    if credentials is None:
        raise ApiError(
            401,
            "unauthorized",
            "send 'Authorization: Bearer <token>' (create one with 'patchflow token create')",
            headers=_UNAUTHORIZED,
        )
    principal = await state.tokens.verify(credentials.credentials)
    if principal is None:
        raise ApiError(
            401, "unauthorized", "the bearer token is malformed, unknown or revoked", headers=_UNAUTHORIZED
        )
    return principal


def allowed(action: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: the caller, if its role may do ``action``; else 403 (audited for mutating actions)."""
    roles = PERMISSIONS[action]

    async def dependency(
        request: Request, state: StateDep, who: Annotated[Principal, Depends(authenticate)]
    ) -> Principal:
        if who.role in roles:
            return who
        needed = " or ".join(sorted(r.value for r in roles))
        message = f"token {who.name!r} has role {who.role.value}; {action} needs {needed}"
        wave_id = request.path_params.get("wave_id")
        await asyncio.to_thread(
            state.audit, who, action, outcome="forbidden", wave_id=wave_id, reason=message
        )
        raise ApiError(403, "forbidden", message)

    return dependency


Reader = Annotated[Principal, Depends(allowed("read"))]
WaveId = Annotated[
    str, PathParam(min_length=1, max_length=MAX_TEXT, pattern=r"^[^\x00-\x1f\x7f]+$", description="Wave id.")
]

# ---------------------------------------------------------------------------------------------- waves


def _quote(value: str) -> str:
    """A string literal of Temporal's visibility query language."""
    return "'" + value.replace("'", "''") + "'"


async def _status_or_none(client: Client, wave_id: str) -> WaveStatus | None:
    """The wave's status, or None when it cannot answer in time (no worker, or not initialised yet)."""
    from patchflow.control.waves import wave_status

    try:
        return await asyncio.wait_for(wave_status(client, wave_id), STATUS_TIMEOUT_SECONDS)
    except (PatchflowError, RPCError, TimeoutError):
        return None


async def recent_waves(
    client: Client,
    task_queue: str,
    *,
    state: str | None = None,
    plan: str | None = None,
    limit: int = 50,
) -> list[tuple[WorkflowExecution, WaveStatus | None]]:
    """Waves of ``task_queue``, newest first, with their status, optionally only those in ``state`` / of
    ``plan``.

    Temporal's visibility narrows the search (live states are running workflows, final ones closed ones;
    wave ids start with ``wave-<plan>-``); the exact filter is applied to each wave's own status. Waves of
    other task queues (other deployments, other tests sharing a server) are not this API's.
    """
    clauses = ["WorkflowType = 'WaveWorkflow'", f"TaskQueue = {_quote(task_queue)}"]
    if state is not None:
        clauses.append(f"ExecutionStatus {'!=' if state in WAVE_FINAL_STATES else '='} 'Running'")
    if plan is not None:
        clauses.append(f"WorkflowId STARTS_WITH {_quote(f'wave-{plan}-')}")
    found: list[tuple[WorkflowExecution, WaveStatus | None]] = []

    async def take(batch: list[WorkflowExecution]) -> None:
        statuses = await asyncio.gather(*(_status_or_none(client, e.id) for e in batch))
        for execution, status in zip(batch, statuses, strict=True):
            if state is not None and (status is None or status.state != state):
                continue
            if plan is not None and (status is None or status.plan_name != plan):
                continue
            found.append((execution, status))

    batch: list[WorkflowExecution] = []
    scanned = 0
    async for execution in client.list_workflows(" AND ".join(clauses), page_size=LIST_BATCH):
        batch.append(execution)
        scanned += 1
        if len(batch) == LIST_BATCH:
            await take(batch)
            batch = []
            if len(found) >= limit or scanned >= MAX_LIST_SCAN:
                break
    if batch:
        await take(batch)
    return found[:limit]


def _summary(execution: WorkflowExecution, status: WaveStatus | None) -> WaveSummary:
    return WaveSummary(
        wave_id=execution.id,
        plan=status.plan_name if status else None,
        state=status.state if status else None,
        workflow_status=execution.status.name if execution.status else None,
        started=execution.start_time,
        patch_set_id=status.patch_set_id if status else None,
        reason=status.reason if status else "",
    )


router = APIRouter()


@router.get(
    "/waves",
    response_model=WaveList,
    tags=["waves"],
    responses=ERROR_RESPONSES,
    summary="List waves, newest first",
)
async def list_waves(
    state: StateDep,
    _: Reader,
    wave_state: Annotated[
        WaveStateName | None,
        Query(alias="state", description="Only waves in this state."),
    ] = None,
    plan: Annotated[
        str | None, Query(pattern=PLAN_NAME_PATTERN, description="Only waves of this plan.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=200, description="At most this many waves.")] = 50,
) -> WaveList:
    """The waves this API's task queue runs (``patchflow wave list``), with their state."""
    client = await state.temporal.get()
    rows = await recent_waves(client, state.settings.task_queue, state=wave_state, plan=plan, limit=limit)
    return WaveList(waves=[_summary(execution, status) for execution, status in rows])


@router.get(
    "/waves/{wave_id}",
    response_model=WaveDetail,
    tags=["waves"],
    responses=WAVE_RESPONSES,
    summary="A wave with its stages and instances",
)
async def get_wave(
    state: StateDep,
    _: Reader,
    wave_id: WaveId,
    limit: Annotated[
        int | None,
        Query(
            ge=1,
            le=MAX_PAGE_INSTANCES,
            description="One page per stage: at most this many instances, with `instances_total` and "
            "`state_counts` (a few queries whatever the size of the wave). Without it: every instance.",
        ),
    ] = None,
    offset: Annotated[int, Query(ge=0, description="With `limit`: instances of each stage to skip.")] = 0,
) -> WaveDetail:
    """Per stage its state, error budget and window; per instance its state (``wave status``)."""
    from patchflow.control.waves import status_json, wave_status

    client = await state.temporal.get()
    try:
        status = await asyncio.wait_for(
            wave_status(client, wave_id, limit=limit, offset=offset), STATUS_TIMEOUT_SECONDS
        )
    except TimeoutError:
        raise ApiError(
            503,
            "unavailable",
            f"wave {wave_id} did not answer within {STATUS_TIMEOUT_SECONDS:.0f}s; is a worker polling task "
            f"queue {state.settings.task_queue!r}?",
            headers=RETRY_LATER,
        ) from None
    return WaveDetail.model_validate(status_json(status))


@router.post(
    "/waves",
    response_model=WaveStarted,
    status_code=201,
    tags=["waves"],
    responses={**ERROR_RESPONSES, 404: {"model": ErrorResponse, "description": "No such patch set."}},
    summary="Start a wave",
)
async def start_wave(
    state: StateDep,
    who: Annotated[Principal, Depends(allowed("start"))],
    body: StartWave,
    response: Response,
) -> WaveStarted:
    """Pin the plan's patch set (or take the given one) and start a wave as the token's name."""
    from patchflow.control import waves

    settings = state.settings
    detail = {"plan": body.plan, "patch_set": body.patch_set}

    def prepare(plan: Plan) -> tuple[PatchSet, WaveInput]:
        pinned = waves.pin_patch_set(plan, settings, patch_set=body.patch_set)
        return pinned, waves.wave_input(plan, settings, pinned, who=who.name)

    try:
        plan = await asyncio.to_thread(state.plans.load, body.plan)
        await _refuse_unstartable(plan, settings)
        client = await state.temporal.get()
        if not body.allow_concurrent:
            await waves.refuse_second_wave(
                client,
                plan.name,
                lambda running: (
                    f"follow it (GET /waves/{running}) or cancel it, or start a second wave anyway "
                    'with "allow_concurrent": true'
                ),
            )
        pinned, inp = await asyncio.to_thread(prepare, plan)
        await waves.start_wave(client, settings, inp)
    except (PatchflowError, RPCError) as exc:
        await asyncio.to_thread(
            state.audit, who, "start", outcome=_outcome(exc), detail=detail, reason=_first_line(exc)
        )
        raise
    except WorkflowAlreadyStartedError:  # a generated id collided: astronomically unlikely, but say so
        message = "a wave with the generated id already exists; retry"
        await asyncio.to_thread(state.audit, who, "start", outcome="refused", detail=detail, reason=message)
        raise ApiError(409, "refused", message) from None
    await asyncio.to_thread(
        state.audit,
        who,
        "start",
        outcome="ok",
        wave_id=inp.wave_id,
        detail={**detail, "patch_set": pinned.id},
    )
    response.headers["Location"] = f"/waves/{inp.wave_id}"
    return WaveStarted(
        wave_id=inp.wave_id, plan=inp.plan_name, patch_set_id=pinned.id, patches=len(inp.patches)
    )


async def _refuse_unstartable(plan: Plan, settings: Settings) -> None:
    """``wave start``'s checks (:func:`patchflow.control.dryrun.check_plan`): refuse (422) a wave that would not
    get through its stages — a window that never opens, a stage without targets — before anything starts."""
    from patchflow.control.dryrun import check_plan

    found = await check_plan(plan, settings, datetime.now(UTC))
    if found.problems:
        raise InputError(
            f"not starting a wave of plan {plan.name}: it would not get through its stages; fix the plan "
            "(POST /plans/validate shows the details)",
            problems=[Problem(path="", message=problem) for problem in found.problems],
        )


def _first_line(exc: Exception) -> str:
    """An error's first line: enough for the audit log, never a whole document's problems."""
    return (str(exc).splitlines() or [type(exc).__name__])[0]


def _outcome(exc: Exception) -> str:
    """How a refused or failed call is recorded in the audit log."""
    from patchflow.control.waves import WaveActionRefused

    if isinstance(exc, WaveActionRefused):
        return "refused"
    if isinstance(exc, NotFoundError):
        return "not_found"
    if isinstance(exc, InputError):
        return "invalid"
    return "unavailable"  # Temporal or the database: nothing was refused, nothing happened


async def _act(
    state: ApiState, who: Principal, wave_id: str, action: str, *, stage: str | None, comment: str
) -> ActionResult:
    """Send the operator Update as the token's name and audit the call, whatever the wave answers."""
    from patchflow.control.waves import act

    detail = {"comment": comment} if comment else {}
    try:
        client = await state.temporal.get()
        message = await act(client, wave_id, action, who=who.name, stage=stage, comment=comment)
    except (PatchflowError, RPCError) as exc:
        await asyncio.to_thread(
            state.audit,
            who,
            action,
            outcome=_outcome(exc),
            wave_id=wave_id,
            stage=stage,
            detail=detail,
            reason=str(exc),
        )
        raise
    await asyncio.to_thread(
        state.audit, who, action, outcome="ok", wave_id=wave_id, stage=stage, detail=detail
    )
    if action in ("approve", "reject") and stage is not None:
        await asyncio.to_thread(_record_decision, state, who, wave_id, stage, action, comment)
    return ActionResult(wave_id=wave_id, action=action, message=message)


def _record_decision(
    state: ApiState, who: Principal, wave_id: str, stage: str, decision: str, comment: str
) -> None:
    """Keep the gate decision (who, when, via the API) in the history database; like the audit, never fails
    a decision the wave has already taken."""
    try:
        with db.translate_errors(state.database_url), db.open_session(db.get_engine(state.database_url)) as s:
            db.record_decision(
                s,
                wave_id=wave_id,
                stage=stage,
                who=who.name,
                decision=decision,
                via=db.Via.api,
                at=datetime.now(UTC),
                comment=comment,
            )
    except Exception:  # noqa: BLE001 - see the docstring
        log.exception("could not record the %s of %s/%s by %s", decision, wave_id, stage, who.name)


def _action_route(summary: str, tag: str = "waves") -> dict[str, Any]:
    """What the six action routes share: one response shape, one set of documented errors."""
    return {"response_model": ActionResult, "tags": [tag], "responses": ACTION_RESPONSES, "summary": summary}


@router.post("/waves/{wave_id}/halt", **_action_route("Halt a wave"))
async def halt_wave(
    state: StateDep,
    who: Annotated[Principal, Depends(allowed("halt"))],
    wave_id: WaveId,
    body: OperatorRequest | None = None,
) -> ActionResult:
    """Stop dispatching (in-flight instances finish); the wave waits for resume, rollback or cancel."""
    return await _act(state, who, wave_id, "halt", stage=None, comment=body.comment if body else "")


@router.post("/waves/{wave_id}/resume", **_action_route("Resume a halted wave"))
async def resume_wave(
    state: StateDep,
    who: Annotated[Principal, Depends(allowed("resume"))],
    wave_id: WaveId,
    body: OperatorRequest | None = None,
) -> ActionResult:
    """Dispatch the not-attempted and rolled-back instances again, with a fresh error budget."""
    return await _act(state, who, wave_id, "resume", stage=None, comment=body.comment if body else "")


@router.post("/waves/{wave_id}/cancel", **_action_route("Cancel a wave"))
async def cancel_wave(
    state: StateDep,
    who: Annotated[Principal, Depends(allowed("cancel"))],
    wave_id: WaveId,
    body: OperatorRequest | None = None,
) -> ActionResult:
    """End the wave: nothing new starts; in-flight instances finish."""
    return await _act(state, who, wave_id, "cancel", stage=None, comment=body.comment if body else "")


@router.post("/waves/{wave_id}/rollback", **_action_route("Roll back the halted stage"))
async def rollback_wave(
    state: StateDep,
    who: Annotated[Principal, Depends(allowed("rollback"))],
    wave_id: WaveId,
    body: OperatorRequest | None = None,
) -> ActionResult:
    """Restore the halted stage's patched instances to their previous versions (the wave stays halted)."""
    return await _act(state, who, wave_id, "rollback", stage=None, comment=body.comment if body else "")


@router.post("/waves/{wave_id}/approve", **_action_route("Approve promotion into a stage", "gates"))
async def approve_gate(
    state: StateDep,
    who: Annotated[Principal, Depends(allowed("approve"))],
    wave_id: WaveId,
    body: GateRequest,
) -> ActionResult:
    """Approve as the token's name, which must be one of the stage's approvers (else 409 with the reason)."""
    return await _act(state, who, wave_id, "approve", stage=body.stage, comment=body.comment)


@router.post("/waves/{wave_id}/reject", **_action_route("Reject promotion into a stage", "gates"))
async def reject_gate(
    state: StateDep,
    who: Annotated[Principal, Depends(allowed("reject"))],
    wave_id: WaveId,
    body: GateRequest,
) -> ActionResult:
    """Reject as the token's name (one of the stage's approvers); the wave ends failed."""
    return await _act(state, who, wave_id, "reject", stage=body.stage, comment=body.comment)


# ---------------------------------------------------------------------------------------------- plans


@router.post(
    "/plans/validate",
    response_model=PlanValidation,
    tags=["plans"],
    responses=ERROR_RESPONSES,
    summary="Validate a plan file",
)
def validate_plan(
    state: StateDep, _: Annotated[Principal, Depends(allowed("validate"))], body: PlanRequest
) -> PlanValidation:
    """Every problem of the plan (``file:line: field.path``); ``valid`` is false when there is one. A path the
    API will not read (outside the plans directory, not a regular file, over 1 MiB) is a 422 instead."""
    try:
        plan = state.plans.load(body.plan)
    except PlanAccessRefused:
        raise
    except InputError as exc:
        problems = _input_problems(exc) or [ProblemOut(path="", message=exc.summary)]
        return PlanValidation(valid=False, problems=problems, message=str(exc))
    return PlanValidation(valid=True, plan=plan.name, stages=[s.name for s in plan.stages])


@router.post(
    "/plans/dry-run",
    response_model=DryRunOut,
    tags=["plans"],
    responses=ERROR_RESPONSES,
    summary="Dry-run a plan",
)
async def dry_run_plan(
    state: StateDep, _: Annotated[Principal, Depends(allowed("validate"))], body: DryRunRequest
) -> DryRunOut:
    """Per stage the resolved targets, windows and upgrades (``patchflow plan``); changes nothing."""
    from patchflow.control.dryrun import dry_run

    plan = await asyncio.to_thread(state.plans.load, body.plan)
    result = await dry_run(plan, state.settings, body.at or datetime.now(UTC))
    return DryRunOut.model_validate(result)


# ---------------------------------------------------------------------------------------------- baselines


def _baseline(text: str) -> Baseline:
    from patchflow.core.baselines import parse_baseline
    from patchflow.errors import BaselineError

    return parse_baseline(parse_upload(text, "baseline", BaselineError))


def _evaluate(body: EvaluateRequest) -> tuple[Baseline, Evaluation]:
    from patchflow.core.catalog import parse_catalog
    from patchflow.core.evaluation import evaluate
    from patchflow.errors import CatalogError

    baseline = _baseline(body.baseline)
    catalog = parse_catalog(parse_upload(body.catalog, "catalog", CatalogError))
    return baseline, evaluate(baseline, catalog, body.at or datetime.now(UTC), catalog_source="request body")


@router.post(
    "/baselines/validate",
    response_model=BaselineValidation,
    tags=["baselines"],
    responses=ERROR_RESPONSES,
    summary="Validate a baseline",
)
def validate_baseline(
    _: Annotated[Principal, Depends(allowed("validate"))], body: BaselineRequest
) -> BaselineValidation:
    """Check an uploaded baseline against the CreatePatchBaseline constraints; every problem, located."""
    try:
        baseline = _baseline(body.baseline)
    except InputError as exc:
        problems = _input_problems(exc) or [ProblemOut(path="", message=exc.summary)]
        return BaselineValidation(valid=False, problems=problems, message=str(exc))
    return BaselineValidation(
        valid=True,
        name=baseline.Name,
        operating_system=baseline.OperatingSystem,
        rules=len(baseline.ApprovalRules.PatchRules),
    )


@router.post(
    "/baselines/evaluate",
    response_model=EvaluationOut,
    tags=["baselines"],
    responses=ERROR_RESPONSES,
    summary="Evaluate a baseline against a catalog",
)
def evaluate_baseline(
    _: Annotated[Principal, Depends(allowed("evaluate"))], body: EvaluateRequest
) -> EvaluationOut:
    """Decide every catalog patch with its reason and show the patch set it would pin (nothing is stored)."""
    result = _evaluate(body)[1]
    return EvaluationOut.model_validate(result.to_json())


@router.post(
    "/compliance",
    response_model=ComplianceOut,
    tags=["baselines"],
    responses=ERROR_RESPONSES,
    summary="Per-instance compliance",
)
def compliance(
    state: StateDep, _: Annotated[Principal, Depends(allowed("evaluate"))], body: ComplianceRequest
) -> ComplianceOut:
    """Judge an inventory against the baseline evaluated over the catalog (like DescribeInstancePatchStates);
    the results also feed the compliance metrics of ``/metrics``."""
    from patchflow.core.compliance import judge, parse_inventory, summarise
    from patchflow.errors import InventoryError

    baseline, result = _evaluate(body)
    family = baseline.family
    if family is None:  # evaluate() refuses non-Linux baselines first; kept for the type checker
        raise InputError(f"compliance needs a Linux baseline; {baseline.OperatingSystem} is not supported")
    instances = parse_inventory(parse_upload(body.inventory, "inventory", InventoryError), family=family)
    results, notes = judge(
        instances,
        family=family,
        candidates=result.approved(),
        rejected_patches=list(baseline.RejectedPatches),
        rejected_action=baseline.RejectedPatchesAction,
        package_manager=baseline.package_manager,
    )
    state.metrics.update_compliance(results)
    return ComplianceOut.model_validate(
        {
            "patch_set_id": result.patch_set.id,
            "instances": [r.to_json() for r in results],
            "summary": summarise(results),
            "notes": notes,
        }
    )


# ---------------------------------------------------------------------------------------------- health


@router.get("/healthz", response_model=HealthOut, tags=["health"], summary="Liveness")
async def healthz() -> HealthOut:
    """The process is up and serving (no token needed). It checks nothing else on purpose: an orchestrator
    restarts the API when this fails, and a restart cures a hung process, not a Temporal or database outage
    (``/readyz`` reports those)."""
    return HealthOut()


@router.get(
    "/readyz",
    response_model=ReadinessOut,
    tags=["health"],
    summary="Readiness",
    responses={503: {"model": ReadinessOut, "description": "Temporal or the database is not usable."}},
)
async def readyz(state: StateDep) -> JSONResponse:
    """Temporal answers and the database is at this patchflow's schema (no token needed)."""
    checks: dict[str, CheckOut] = {}
    try:
        client = await state.temporal.get()
        await asyncio.wait_for(client.service_client.check_health(), STATUS_TIMEOUT_SECONDS)
        checks["temporal"] = CheckOut(ok=True, message=f"reachable at {state.settings.temporal_address}")
    except (PatchflowError, RPCError, TimeoutError) as exc:
        checks["temporal"] = CheckOut(ok=False, message=str(exc) or "no answer in time")

    def database() -> CheckOut:
        try:
            db.require_current(state.database_url)
        except Exception as exc:  # noqa: BLE001 - a probe reports every failure, it never raises one
            return CheckOut(ok=False, message=(str(exc).splitlines() or [type(exc).__name__])[0])
        return CheckOut(
            ok=True, message=f"{db.display_url(state.database_url)} at schema {db.head_revision()}"
        )

    checks["database"] = await asyncio.to_thread(database)
    if state.notifier is not None:  # informational: a standby replica is as ready as the leader
        role = "posts wave messages (holds the notifier lease)" if state.notifier_leads else "stands by"
        checks["slack_notifier"] = CheckOut(ok=True, message=role)
    ready = all(c.ok for c in checks.values())
    body = ReadinessOut(status="ready" if ready else "unready", checks=checks)
    return JSONResponse(body.model_dump(mode="json"), status_code=200 if ready else 503)


async def _metrics_access(
    request: Request,
    state: StateDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """A viewer token, unless ``PATCHFLOW_API_METRICS_PUBLIC`` opens the endpoint to an unauthenticated
    Prometheus."""
    if state.settings.api_metrics_public:
        return
    who = await authenticate(state, credentials)
    await allowed("read")(request, state, who)


@router.get("/metrics", include_in_schema=False, dependencies=[Depends(_metrics_access)])
async def prometheus_metrics(request: Request, state: StateDep) -> Response:
    """Prometheus exposition (OpenMetrics when the scraper asks for it) — a plain route, never a 307."""
    body, content_type = render(state.metrics.registry, accept=request.headers.get("accept"))
    return Response(body, media_type=content_type)


# ---------------------------------------------------------------------------------------------- the app


def _slack_router(state: ApiState) -> APIRouter | None:
    """``patchflow.service.slack``'s router (``POST /slack/actions``), if that module exists yet.

    Only the module's absence is tolerated: an import error inside it is a bug and surfaces.
    """
    if importlib.util.find_spec("patchflow.service.slack") is None:
        return None
    build = getattr(importlib.import_module("patchflow.service.slack"), "build_slack_router", None)
    if build is None:
        log.warning("patchflow.service.slack has no build_slack_router; Slack actions are not served")
        return None
    slack_router: APIRouter = build(settings=state.settings, get_client=state.temporal.get)
    return slack_router


async def _refresh_metrics(state: ApiState) -> Iterable[WaveStatus]:
    """The statuses the metrics refresher feeds in: the recent waves of this API's task queue."""
    try:
        client = await state.temporal.get()
    except PatchflowError:
        return []  # /readyz says so; a traceback every refresh would say nothing more
    rows = await recent_waves(client, state.settings.task_queue, limit=50)
    statuses = [status for _, status in rows if status is not None]
    if state.notifier is not None and await _leads_notifications(state):
        for status in statuses:  # Slack failures are logged by the notifier, never raised
            await state.notifier.observe(status, client=client)
    return statuses


async def _leads_notifications(state: ApiState) -> bool:
    """Whether this replica posts to Slack now: only the holder of the notifier lease does, so several
    replicas post each message once. A replica that takes over starts afresh — it announces what is live
    (a waiting gate, a running or halted stage), so nothing is missed at a hand-over, at the price of
    repeating those messages once."""
    leads = await asyncio.to_thread(state.notifier_lease.held)
    if leads != state.notifier_leads:
        log.info("Slack notifications: this replica %s", "leads" if leads else "stands by")
        state.notifier.reset()
        state.notifier_leads = leads
    return leads


def create_app(settings: Settings | None = None, *, metrics: Metrics = DEFAULT_METRICS) -> FastAPI:
    """The API application.

    Args:
        settings: default: read from the environment.
        metrics: where ``/metrics`` reads and the refresher writes (tests inject their own registry).
    """
    settings = settings or get_settings()
    state = ApiState(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        # Connect once now; if Temporal is down, routes connect on first use and /readyz reports it.
        with contextlib.suppress(PatchflowError):
            await state.temporal.get()
        refresher = asyncio.create_task(
            refresh_loop(
                lambda: _refresh_metrics(state),
                metrics=metrics,
                interval_seconds=settings.api_metrics_refresh_seconds,
            ),
            name="patchflow-metrics-refresh",
        )
        try:
            yield
        finally:
            refresher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await refresher
            state.notifier_lease.release()  # another replica takes over at its next refresh

    app = FastAPI(
        title="patchflow",
        version=API_VERSION,
        summary="Staged, pinned, durable OS patch rollouts above AWS Systems Manager Patch Manager.",
        lifespan=lifespan,
        # Operation ids are the route functions' names (list_waves, approve_gate), not path-derived ones.
        generate_unique_id_function=lambda route: route.name,
    )
    app.state.patchflow = state
    app.add_middleware(BodyLimit, max_body_size=settings.api_max_body_bytes)
    _install_error_handlers(app)
    app.include_router(router)
    slack = _slack_router(state)
    if slack is not None:
        # Slack's callback is not part of the REST contract (Slack signs it; no bearer token), so it stays
        # out of deploy/openapi.json and out of the fuzzing that reads it.
        app.include_router(slack, include_in_schema=False)
    # The web console (/ui) builds on this module's tokens, roles and wave listing: imported by name, not
    # statically, so the two modules do not import each other.
    importlib.import_module("patchflow.service.ui").mount_ui(app, state)
    return app


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document, independent of settings (what ``deploy/openapi.json`` holds)."""
    return create_app(Settings()).openapi()


# ---------------------------------------------------------------------------------------------- serving


def bind(host: str, port: int) -> socket.socket:
    """A listening socket for the API, bound here rather than by uvicorn, so a taken port is a clear error
    (uvicorn would exit the process) and port 0 tells which port it got.

    Raises:
        PatchflowError: the address cannot be bound.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise PatchflowError(
            f"cannot serve the API on {host}:{port} ({exc.strerror or exc}); choose another with "
            "PATCHFLOW_API_HOST / PATCHFLOW_API_PORT"
        ) from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves SIGINT/SIGTERM to its host process.

    ``patchflow dev`` runs the API next to a worker: Ctrl-C must stop both at once, as a KeyboardInterrupt
    that ends the event loop. A plain uvicorn server would take the signal for itself, shut only the API
    down and leave the worker running.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def make_server(
    app: FastAPI, *, log_config: dict[str, Any] | None = None, handle_signals: bool = True
) -> uvicorn.Server:
    """A uvicorn server for ``app``; run it with ``await server.serve(sockets=[bind(...)])``.

    Args:
        log_config: ``None`` leaves the process's logging alone (tests, embedding); the CLI passes uvicorn's.
        handle_signals: shut down gracefully on SIGINT/SIGTERM (then re-raise them). ``False`` when embedded
            in a process that handles them itself; the caller then runs the app's lifespan (see :func:`serve`).
    """
    config = uvicorn.Config(
        app,
        lifespan="on" if handle_signals else "off",
        ws="none",  # no websockets here; importing a websockets implementation only costs warnings
        log_config=log_config,
        server_header=False,
        timeout_graceful_shutdown=10,
    )
    return uvicorn.Server(config) if handle_signals else _EmbeddedServer(config)


async def serve(
    settings: Settings, *, announce: Callable[[str], None] | None = None, handle_signals: bool = True
) -> None:
    """Serve the API until SIGINT/SIGTERM (``patchflow api``), or until cancelled when embedded
    (``patchflow dev``, ``handle_signals=False``: see :func:`make_server`)."""
    sock = bind(settings.api_host, settings.api_port)
    host, port = sock.getsockname()[:2]
    if announce is not None:
        announce(f"patchflow API on http://{host}:{port} (OpenAPI at /openapi.json, docs at /docs)")
    app = create_app(settings)
    if handle_signals:
        await make_server(app, log_config=LOGGING_CONFIG).serve(sockets=[sock])
        return
    # Embedded, the host's Ctrl-C cancels this coroutine. uvicorn would run the lifespan in a task of its own
    # and log that task's cancellation as an error; run here, around the server, it simply ends.
    async with app.router.lifespan_context(app):
        await make_server(app, log_config=LOGGING_CONFIG, handle_signals=False).serve(sockets=[sock])


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m patchflow.service.api [--openapi]``."""
    parser = argparse.ArgumentParser(
        prog="python -m patchflow.service.api", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--openapi", action="store_true", help="print the OpenAPI document and exit")
    args = parser.parse_args(argv)
    if args.openapi:
        sys.stdout.write(json.dumps(openapi_document(), indent=2) + "\n")
        return
    run_api(get_settings(), announce=_to_stderr)


def _to_stderr(line: str) -> None:
    sys.stderr.write(line + "\n")


def run_api(settings: Settings, *, announce: Callable[[str], None]) -> None:
    """Serve until SIGTERM or Ctrl-C (both stop cleanly), warning when the history database is not current.

    The API still serves then: health and readiness answer and say the same, requests needing a token get 503.
    """
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        db.require_current(settings.database_url_resolved)
    except PatchflowError as exc:
        announce(f"warning: {exc}")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(settings, announce=announce))


if __name__ == "__main__":
    main()
