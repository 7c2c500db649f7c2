"""The web console at ``/ui``: server-rendered pages over the REST API's own data and permissions.

What it shows
    Waves (state, plan, kind, per-stage progress; filters), a wave (stage timeline with gates, windows,
    freezes, soak and outcome; error budgets; a paginated per-instance table with versions before → after and
    failure details; the pinned patch set), the approvals inbox, schedules, compliance by patch group and
    severity, and the audit log. Pages are plain HTML that read fine without JavaScript; ``console.js`` only
    refreshes the regions marked ``data-live`` by polling the same URL (short polling: no connection is held
    open, so any proxy in front of the API works).

Who may do what
    Exactly the REST API's rules (:data:`patchflow.service.api.PERMISSIONS`): sign-in takes an API token, and the
    token's role and name are the person's. Buttons a role may not use are not rendered, and the server refuses
    them anyway (audited like the API's refusals). Gate decisions go through the same workflow Update as
    ``POST /waves/{id}/approve``, whose validator checks the name against the stage's approvers.

Sessions
    A sign-in keeps the token in this process's memory and gives the browser a random session id in an
    ``HttpOnly``, ``SameSite=Strict`` cookie (``Secure`` when the request arrived over TLS). A session ends
    after :data:`SESSION_IDLE_SECONDS` without a request, :data:`SESSION_MAX_SECONDS` after sign-in, at sign-out,
    or as soon as its token is revoked (every request re-verifies it through the API's token cache). Sessions
    live in one API process: behind several replicas, route a browser to one of them (sticky sessions), or it
    signs in again. Every form carries a CSRF token bound to the session (the sign-in form one bound to a
    short-lived cookie), and every page is sent with a strict Content-Security-Policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import math
import secrets
import time
import urllib.parse
from collections import Counter, OrderedDict
from collections.abc import Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.routing import APIRoute
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError
from sqlmodel import Session
from temporalio.client import Client, WorkflowExecution, WorkflowExecutionDescription, WorkflowExecutionStatus
from temporalio.service import RPCError, RPCStatusCode

from patchflow.core.evaluation import PatchSet
from patchflow.core.patchsets import PatchSetStore
from patchflow.core.wavemodel import (
    WAVE_FINAL_STATES,
    WAVE_HALTED,
    WAVE_RUNNING,
    WAVE_STATES,
    WAVE_WAITING_APPROVAL,
    WaveInput,
    WaveStatus,
)
from patchflow.errors import NotFoundError, PatchflowError
from patchflow.service.api import (
    PERMISSIONS,
    STATUS_TIMEOUT_SECONDS,
    ApiState,
    Principal,
    _act,
    recent_waves,
)
from patchflow.service.apimodel import MAX_TEXT, GateRequest, OperatorRequest
from patchflow.store import db

PREFIX = "/ui"
HERE = Path(__file__).resolve().parent
TEMPLATES_DIR = HERE / "templates"
STATIC_DIR = HERE / "static"

SESSION_COOKIE = "patchflow_session"
LOGIN_COOKIE = "patchflow_login"
SESSION_IDLE_SECONDS = 30 * 60
"""A session unused this long is over (the next request goes to the sign-in page)."""
SESSION_MAX_SECONDS = 8 * 3600
"""No session outlives a working day, however busy."""
LOGIN_FORM_SECONDS = 15 * 60
"""How long a sign-in form (and its CSRF cookie) stays valid."""
MAX_SESSIONS = 10_000
"""Sessions kept at most; past it the least recently used go first."""
PAGE_SIZE = 50
"""Instances per page of a wave's instance table (a 10,000-instance stage is 200 pages)."""
AUDIT_PAGE_SIZE = 100
AUDIT_SCAN = 20_000
"""Most audit entries one audit page reads (newest window first); the page says when it stopped short."""
POLL_SECONDS = 3
"""How often an open page refreshes its live regions."""
POLL_HEADER = "x-patchflow-poll"
"""Sent by ``console.js`` with its background refreshes (which do not count as activity)."""
FINISHED_CACHE = 16
"""Finished waves whose status is kept (a 10,000-instance status is a few MB in memory)."""
LIST_LIMIT = 50
"""Waves on the list page (the REST API's default)."""

OPERATOR_ACTIONS: dict[str, str] = {
    "halt": "Stop dispatching: in-flight instances finish, the wave waits for resume, rollback or cancel.",
    "resume": "Dispatch the not-attempted and rolled-back instances again, with a fresh error budget.",
    "cancel": "End the wave: nothing new starts; in-flight instances finish. This cannot be undone.",
    "rollback": "Restore the halted stage's patched instances to their previous versions (the wave stays halted).",
}
"""The operator actions and what each does (shown on the confirmation page)."""

ACTION_STATES: dict[str, frozenset[str]] = {
    "halt": frozenset({WAVE_RUNNING}),
    "resume": frozenset({WAVE_HALTED}),
    "rollback": frozenset({WAVE_HALTED}),
    "cancel": frozenset({WAVE_RUNNING, WAVE_WAITING_APPROVAL, WAVE_HALTED}),
}
"""When a button is offered (the wave's validators have the last word and say why they refuse)."""

INSTANCE_STATES = ("pending", "in_flight", "succeeded", "failed", "not_attempted", "rolled_back")
DONE_STATES = frozenset({"succeeded", "failed", "not_attempted", "rolled_back"})
SEVERITIES = ("CRITICAL", "HIGH", "MEDIUM", "LOW", "INFORMATIONAL", "UNSPECIFIED")
AUDIT_OUTCOMES = ("ok", "refused", "forbidden", "not_found", "invalid", "error")
AUDIT_PERIODS = {"1d": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30), "all": None}

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
_SECURITY_HEADERS = {
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}


# ---------------------------------------------------------------------------------------------- sessions


@dataclass
class UiSession:
    """One signed-in browser."""

    token: str
    """The API token, kept server-side only: every request re-verifies it, so revoking it ends the session."""
    csrf: str
    created: float
    seen: float
    flashes: list[tuple[str, str]] = field(default_factory=list)
    """(kind, message) shown once on the next page: ``ok`` or ``error``."""


class SessionStore:
    """Sessions by a digest of their cookie (the store never holds a usable cookie value)."""

    def __init__(
        self,
        *,
        idle_seconds: float = SESSION_IDLE_SECONDS,
        max_seconds: float = SESSION_MAX_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        max_sessions: int = MAX_SESSIONS,
    ) -> None:
        self.idle_seconds = idle_seconds
        self.max_seconds = max_seconds
        self.clock = clock
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[str, UiSession] = OrderedDict()

    @staticmethod
    def _key(cookie: str) -> str:
        return hashlib.sha256(cookie.encode("utf-8", "surrogatepass")).hexdigest()

    def create(self, token: str) -> tuple[str, UiSession]:
        """A new session for ``token``; returns the cookie value and the session."""
        cookie = secrets.token_urlsafe(32)
        now = self.clock()
        session = UiSession(token=token, csrf=secrets.token_urlsafe(32), created=now, seen=now)
        self._sessions[self._key(cookie)] = session
        while len(self._sessions) > self.max_sessions:
            self._sessions.popitem(last=False)
        return cookie, session

    def get(self, cookie: str | None, *, touch: bool = True) -> UiSession | None:
        """The live session behind ``cookie``; None when unknown or expired.

        Args:
            touch: the request is the person's (their idle clock restarts); False for the page's own
                background refreshes, so a tab left open does not keep a session alive.
        """
        if not cookie or len(cookie) > 128:
            return None
        key = self._key(cookie)
        session = self._sessions.get(key)
        if session is None:
            return None
        now = self.clock()
        if now - session.seen > self.idle_seconds or now - session.created > self.max_seconds:
            del self._sessions[key]
            return None
        if touch:
            session.seen = now
            self._sessions.move_to_end(key)
        return session

    def drop(self, cookie: str | None) -> None:
        if cookie:
            self._sessions.pop(self._key(cookie), None)

    def __len__(self) -> int:
        return len(self._sessions)


class LoginForms:
    """CSRF for the sign-in form, before any session exists: a signed, dated value in a cookie and in the form.

    The key is per process and random, so a form served by one process is accepted by it alone (the page
    simply asks to sign in again after a restart).
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.time, max_age: float = LOGIN_FORM_SECONDS
    ) -> None:
        self._key = secrets.token_bytes(32)
        self.clock = clock
        self.max_age = max_age

    def issue(self) -> str:
        stamp = str(int(self.clock()))
        nonce = secrets.token_urlsafe(16)
        mac = hmac.new(self._key, f"{stamp}.{nonce}".encode(), hashlib.sha256).hexdigest()
        return f"{stamp}.{nonce}.{mac}"

    def valid(self, cookie: str | None, form: str | None) -> bool:
        if not cookie or not form or not hmac.compare_digest(cookie, form):
            return False
        parts = form.split(".")
        if len(parts) != 3 or not parts[0].isdigit():
            return False
        expected = hmac.new(self._key, f"{parts[0]}.{parts[1]}".encode(), hashlib.sha256).hexdigest()
        return hmac.compare_digest(expected, parts[2]) and self.clock() - int(parts[0]) <= self.max_age


class UiState:
    """What the console keeps beside the API's state (one per app)."""

    def __init__(self, api: ApiState) -> None:
        self.api = api
        self.sessions = SessionStore()
        self.login_forms = LoginForms()
        self._inputs: OrderedDict[str, WaveInput] = OrderedDict()
        self._patch_sets: OrderedDict[str, PatchSet] = OrderedDict()
        self.finished: OrderedDict[tuple[str, str], WaveStatus] = OrderedDict()
        """Statuses of finished waves by (wave id, run id): a completed workflow's result never changes."""

    async def wave_input(self, client: Client, wave_id: str) -> WaveInput | None:
        """The input the wave started with (stages, gates, approvers, freezes): read once, it never changes."""
        from patchflow.service.slack import fetch_wave_input

        cached = self._inputs.get(wave_id)
        if cached is None:
            try:
                cached = await fetch_wave_input(client, wave_id)
            except (PatchflowError, RPCError):
                return None
            self._inputs[wave_id] = cached
            while len(self._inputs) > 256:
                self._inputs.popitem(last=False)
        return cached

    def patch_set(self, patch_set_id: str) -> PatchSet | None:
        """The pinned set (blocking): the starter's file store, else the history database's copy."""
        if patch_set_id in self._patch_sets:
            return self._patch_sets[patch_set_id]
        found: PatchSet | None = None
        try:
            found = PatchSetStore(self.api.settings.patch_set_dir).load(patch_set_id)
        except (PatchflowError, OSError):
            try:
                with self.history() as s:
                    found = db.get_patch_set(s, patch_set_id=patch_set_id)
            except PatchflowError:
                found = None
        if found is not None:  # a missing set may appear later (another replica pinned it)
            self._patch_sets[patch_set_id] = found
            while len(self._patch_sets) > 64:
                self._patch_sets.popitem(last=False)
        return found

    @contextlib.contextmanager
    def history(self) -> Iterator[Session]:
        """A session on the history database, its errors translated (``DatabaseError``)."""
        url = self.api.database_url
        with db.translate_errors(url), db.open_session(db.get_engine(url)) as session:
            yield session


# ---------------------------------------------------------------------------------------------- viewer


@dataclass(frozen=True)
class Viewer:
    """The signed-in person as templates see them."""

    principal: Principal
    csrf: str

    @property
    def name(self) -> str:
        return self.principal.name

    @property
    def role(self) -> str:
        return self.principal.role.value

    def may(self, action: str) -> bool:
        return self.principal.role in PERMISSIONS[action]


class _SignIn(Exception):
    """No live session: send the browser to the sign-in page (and back here afterwards)."""


class UiError(Exception):
    """An error page: ``status`` and a message that says what happened and what to do."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _ui(request: Request) -> UiState:
    state: UiState = request.app.state.patchflow_ui
    return state


async def _viewer(request: Request) -> tuple[Viewer, UiSession]:
    ui = _ui(request)
    cookie = request.cookies.get(SESSION_COOKIE)
    session = ui.sessions.get(cookie, touch=POLL_HEADER not in request.headers)
    if session is None:
        raise _SignIn()
    principal = await ui.api.tokens.verify(session.token)
    if principal is None:  # revoked since sign-in
        ui.sessions.drop(cookie)
        raise _SignIn()
    return Viewer(principal, session.csrf), session


async def _form(request: Request) -> dict[str, str]:
    """The fields of a URL-encoded form (the only kind the console's forms send)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise UiError(415, "forms are sent as application/x-www-form-urlencoded")
    body = (await request.body()).decode("utf-8", "replace")
    return {k: v[0] for k, v in urllib.parse.parse_qs(body, keep_blank_values=True).items()}


def _check_csrf(session: UiSession, form: Mapping[str, str]) -> None:
    if not hmac.compare_digest(form.get("csrf", ""), session.csrf):
        raise UiError(
            403, "the form has expired or did not come from this console; reload the page and retry"
        )


def _safe_next(raw: str | None) -> str:
    """Where to go after sign-in or an action: a console path, never another site."""
    if raw and raw.startswith(PREFIX + "/") and not raw.startswith("//") and "\\" not in raw:
        return raw
    return f"{PREFIX}/waves"


# ---------------------------------------------------------------------------------------------- rendering


templates = Jinja2Templates(directory=str(TEMPLATES_DIR))


def _when(value: datetime | None) -> str:
    if value is None:
        return ""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _pct(part: float, whole: float) -> int:
    return 0 if whole <= 0 else max(0, min(100, round(100 * part / whole)))


templates.env.filters["when"] = _when
templates.env.globals.update(prefix=PREFIX, poll_seconds=POLL_SECONDS, pct=_pct)


def _page(
    request: Request,
    name: str,
    viewer: Viewer | None,
    session: UiSession | None = None,
    *,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    flashes = []
    # A background refresh never takes the messages: one racing a form's redirect would swallow its outcome.
    if session is not None and POLL_HEADER not in request.headers:
        flashes, session.flashes = session.flashes, []
    response = templates.TemplateResponse(
        request, name, {"viewer": viewer, "flashes": flashes, **context}, status_code=status
    )
    response.headers.update(_SECURITY_HEADERS)
    return response


def _redirect(url: str) -> RedirectResponse:
    response = RedirectResponse(url, status_code=303)
    response.headers.update(_SECURITY_HEADERS)
    return response


class _UiRoute(APIRoute):
    """Console routes answer in HTML: a sign-in redirect, or an error page instead of the API's JSON."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except _SignIn:
                if request.method == "GET":
                    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
                else:  # a form posted after the session ended: come back to the page it was on
                    target = urllib.parse.urlparse(request.headers.get("referer") or "").path
                return _redirect(f"{PREFIX}/login?" + urllib.parse.urlencode({"next": _safe_next(target)}))
            except UiError as exc:
                return await _error_page(request, exc.status, exc.message)
            except RequestValidationError as exc:
                problems = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ())[1:])}: {e.get('msg', '')}"
                    for e in exc.errors()
                )
                return await _error_page(request, 422, f"invalid request: {problems}")
            except NotFoundError as exc:
                return await _error_page(request, 404, str(exc))
            except (PatchflowError, RPCError, TimeoutError) as exc:
                message = getattr(exc, "message", None) if isinstance(exc, RPCError) else str(exc)
                return await _error_page(
                    request, 503, f"Temporal or the database did not answer: {message or 'timed out'}"
                )

        return route


async def _error_page(request: Request, status: int, message: str) -> HTMLResponse:
    viewer = session = None
    with contextlib.suppress(_SignIn, PatchflowError):
        viewer, session = await _viewer(request)
    return _page(request, "error.html", viewer, session, status=status, status_code=status, message=message)


router = APIRouter(prefix=PREFIX, route_class=_UiRoute, include_in_schema=False)


# ---------------------------------------------------------------------------------------------- sign-in


@router.get("")
@router.get("/")
async def home() -> RedirectResponse:
    return _redirect(f"{PREFIX}/waves")


def _login_page(request: Request, *, status: int = 200, error: str = "", next_url: str = "") -> HTMLResponse:
    ui = _ui(request)
    form_token = ui.login_forms.issue()
    response = _page(
        request, "login.html", None, status=status, error=error, form_token=form_token, next_url=next_url
    )
    response.set_cookie(
        LOGIN_COOKIE,
        form_token,
        max_age=int(LOGIN_FORM_SECONDS),
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.get("/login")
async def login_form(request: Request, next_url: Annotated[str, Query(alias="next")] = "") -> HTMLResponse:
    """The sign-in page. A link ending in ``#token=…`` (``patchflow demo`` prints one) signs in with
    JavaScript; the token in the fragment never reaches a server log."""
    return _login_page(request, next_url=_safe_next(next_url))


@router.post("/login")
async def login(request: Request) -> Response:
    ui = _ui(request)
    form = await _form(request)
    next_url = _safe_next(form.get("next"))
    if not ui.login_forms.valid(request.cookies.get(LOGIN_COOKIE), form.get("csrf")):
        return _login_page(
            request, status=403, error="The sign-in form expired; sign in again.", next_url=next_url
        )
    token = form.get("token", "").strip()
    principal = await ui.api.tokens.verify(token)
    if principal is None:
        return _login_page(
            request,
            status=401,
            error="That token is malformed, unknown or revoked. Create one with 'patchflow token create'.",
            next_url=next_url,
        )
    cookie, session = ui.sessions.create(token)
    session.flashes.append(("ok", f"Signed in as {principal.name} ({principal.role.value})."))
    response = _redirect(next_url)
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(ui.sessions.max_seconds),
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    response.delete_cookie(LOGIN_COOKIE, path=PREFIX)
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    ui = _ui(request)
    form = await _form(request)
    session = ui.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is not None:
        _check_csrf(session, form)
        ui.sessions.drop(request.cookies.get(SESSION_COOKIE))
    response = _redirect(f"{PREFIX}/login")
    response.delete_cookie(SESSION_COOKIE, path=PREFIX)
    return response


# ---------------------------------------------------------------------------------------------- waves


@dataclass(frozen=True)
class StageProgressView:
    """One stage's progress as a list row or a timeline entry shows it."""

    name: str
    state: str
    total: int
    done: int
    counts: dict[str, int]
    errors: int
    max_errors: int | None

    @property
    def percent(self) -> int:
        return _pct(self.done, self.total)


def stage_progress(status: WaveStatus) -> list[StageProgressView]:
    out = []
    for st in status.stages:
        counts = Counter(st.instances.values())
        out.append(
            StageProgressView(
                name=st.name,
                state=st.state,
                total=len(st.instances),
                done=sum(n for s, n in counts.items() if s in DONE_STATES),
                counts={s: counts.get(s, 0) for s in INSTANCE_STATES if counts.get(s)},
                errors=st.errors,
                max_errors=st.max_errors,
            )
        )
    return out


@dataclass(frozen=True)
class WaveRow:
    wave_id: str
    plan: str | None
    state: str | None
    kind: str | None
    started: datetime | None
    finished: datetime | None
    stages: list[StageProgressView]
    reason: str


def _wave_row(execution: WorkflowExecution, status: WaveStatus | None) -> WaveRow:
    return WaveRow(
        wave_id=execution.id,
        plan=status.plan_name if status else None,
        state=status.state if status else None,
        kind=status.kind if status else None,
        started=execution.start_time,
        finished=execution.close_time,
        stages=stage_progress(status) if status else [],
        reason=status.reason if status else "",
    )


def _choice(value: str, allowed: Iterable[str], what: str) -> str | None:
    if not value:
        return None
    if value not in allowed:
        raise UiError(422, f"{what}: unknown value {value!r}; choose one of {', '.join(allowed)}")
    return value


@router.get("/waves")
async def waves_page(request: Request, state: str = "", plan: str = "", kind: str = "") -> HTMLResponse:
    viewer, session = await _viewer(request)
    ui = _ui(request)
    wave_state = _choice(state, WAVE_STATES, "state")
    wave_kind = _choice(kind, ("standard", "emergency"), "kind")
    plan_name = plan.strip() or None
    if plan_name is not None and (
        len(plan_name) > 64 or not all(c.isalnum() or c in "_.-" for c in plan_name)
    ):
        raise UiError(422, f"plan: {plan_name!r} is not a plan name (letters, digits, '_', '.', '-')")
    client = await ui.api.temporal.get()
    rows = await recent_waves(
        client,
        ui.api.settings.task_queue,
        state=wave_state,
        plan=plan_name,
        limit=LIST_LIMIT if wave_kind is None else LIST_LIMIT * 4,
    )
    waves = [_wave_row(e, s) for e, s in rows if wave_kind is None or (s is not None and s.kind == wave_kind)]
    return _page(
        request,
        "waves.html",
        viewer,
        session,
        waves=waves[:LIST_LIMIT],
        states=WAVE_STATES,
        filters={"state": wave_state or "", "plan": plan_name or "", "kind": wave_kind or ""},
    )


@dataclass(frozen=True)
class StageView:
    """A stage on the wave page's timeline."""

    progress: StageProgressView
    gate: str
    approvers: list[str]
    window: str
    window_start: datetime | None
    window_cutoff: datetime | None
    soak_seconds: int
    max_concurrency: str
    max_errors_spec: str
    on_failure: str
    targets: str
    note: str
    decisions: list[Any]


@dataclass(frozen=True)
class InstanceRowView:
    stage: str
    instance_id: str
    state: str
    detail: str
    versions: list[tuple[str, str, str]]
    """(package, before, after) of the latest recorded operation."""
    attempts: int


def _window_text(inp_stage: Any) -> str:
    window = inp_stage.window
    text = window.schedule
    if window.schedule.strip().lower() != "now":
        text += f" ({window.timezone}"
        if window.offset_days:
            text += f", +{window.offset_days} days"
        text += f", {window.duration_hours} h, cutoff {window.cutoff_hours} h)"
    return text


def _stage_views(status: WaveStatus, inp: WaveInput | None, decisions: Sequence[Any]) -> list[StageView]:
    configs = {s.name: s for s in inp.stages} if inp is not None else {}
    views = []
    for progress, st in zip(stage_progress(status), status.stages, strict=True):
        config = configs.get(st.name)
        targets = ""
        if config is not None:
            targets = (
                f"patch group {config.patch_group}"
                if config.patch_group
                else f"{len(config.instance_ids)} listed instance(s)"
            )
        views.append(
            StageView(
                progress=progress,
                gate=config.gate if config else "",
                approvers=list(config.approvers) if config else [],
                window=_window_text(config) if config else "",
                window_start=st.window_start,
                window_cutoff=st.window_cutoff,
                soak_seconds=config.soak_seconds if config else 0,
                max_concurrency=config.max_concurrency if config else "",
                max_errors_spec=config.max_errors if config else "",
                on_failure=config.on_failure if config else "",
                targets=targets,
                note=st.note,
                decisions=[d for d in decisions if d.stage == st.name],
            )
        )
    return views


def _instance_rows(
    status: WaveStatus, *, stage: str | None, state: str | None, query: str
) -> list[tuple[str, str, str, str]]:
    """(stage, instance, state, detail) of every instance the filters keep, in dispatch order per stage."""
    needle = query.lower()
    rows = []
    for st in status.stages:
        if stage is not None and st.name != stage:
            continue
        for instance_id, instance_state in st.instances.items():
            if state is not None and instance_state != state:
                continue
            detail = st.details.get(instance_id, "")
            if needle and needle not in instance_id.lower() and needle not in detail.lower():
                continue
            rows.append((st.name, instance_id, instance_state, detail))
    return rows


def _page_of_results(
    ui: UiState, wave_id: str, rows: Sequence[tuple[str, str, str, str]]
) -> list[InstanceRowView]:
    """The rows of one page with what the history database recorded for each (blocking)."""
    views = []
    try:
        with ui.history() as s:
            recorded = {
                (stage, instance_id): db.list_instance_results(
                    s, wave_id=wave_id, stage=stage, instance_id=instance_id
                )
                for stage, instance_id, _, _ in rows
            }
    except PatchflowError:
        recorded = {}
    for stage, instance_id, state, detail in rows:
        results = [r for r in recorded.get((stage, instance_id), []) if r.finished_at is not None]
        last = results[-1] if results else None
        versions = []
        if last is not None:
            for package in sorted(set(last.versions_before) | set(last.versions_after)):
                versions.append(
                    (package, last.versions_before.get(package, ""), last.versions_after.get(package, ""))
                )
        views.append(
            InstanceRowView(
                stage=stage,
                instance_id=instance_id,
                state=state,
                detail=detail or (last.detail if last is not None and last.status != "succeeded" else ""),
                versions=versions,
                attempts=len({r.attempt for r in results}),
            )
        )
    return views


def _patch_coverage(status: WaveStatus) -> list[tuple[str, str]]:
    """Per stage, whether the pinned set is installed there: every stage installs exactly these versions, so
    a stage has them on the instances it patched (rolled back: restored to what they had)."""
    out = []
    for progress in stage_progress(status):
        succeeded = progress.counts.get("succeeded", 0)
        if progress.state == "rolled_back":
            text = "rolled back"
        elif progress.total and succeeded == progress.total:
            text = f"installed ({succeeded}/{progress.total})"
        elif succeeded:
            text = f"{succeeded}/{progress.total}"
        else:
            text = "no" if status.state in WAVE_FINAL_STATES or progress.state == "failed" else "not yet"
        out.append((progress.name, text))
    return out


@router.get("/waves/{wave_id}")
async def wave_page(
    request: Request, wave_id: str, stage: str = "", state: str = "", q: str = "", page: int = 1
) -> HTMLResponse:
    viewer, session = await _viewer(request)
    ui = _ui(request)
    if not wave_id or len(wave_id) > MAX_TEXT:
        raise UiError(404, "no such wave")
    client = await ui.api.temporal.get()
    status, description = await _wave_status(ui, client, wave_id)
    inp = await ui.wave_input(client, wave_id)
    stage_names = [s.name for s in status.stages]
    stage_filter = _choice(stage, stage_names, "stage")
    state_filter = _choice(state, INSTANCE_STATES, "state")
    query = q.strip()[:MAX_TEXT]
    rows = _instance_rows(status, stage=stage_filter, state=state_filter, query=query)
    pages = max(1, math.ceil(len(rows) / PAGE_SIZE))
    page = min(max(page, 1), pages)
    shown = rows[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]

    def read() -> tuple[list[InstanceRowView], list[Any], PatchSet | None]:
        try:
            with ui.history() as s:
                decisions = db.list_decisions(s, wave_id=wave_id)
        except PatchflowError:
            decisions = []
        return _page_of_results(ui, wave_id, shown), decisions, ui.patch_set(status.patch_set_id)

    instances, decisions, patch_set = await asyncio.to_thread(read)
    stages = _stage_views(status, inp, decisions)
    waiting = next((s for s in stages if s.progress.state == "waiting_approval"), None)
    actions = [a for a in OPERATOR_ACTIONS if status.state in ACTION_STATES[a] and viewer.may(a)]
    base_query = {k: v for k, v in {"stage": stage_filter, "state": state_filter, "q": query}.items() if v}
    return _page(
        request,
        "wave.html",
        viewer,
        session,
        status=200,
        wave=status,
        started=description.start_time,
        finished=description.close_time,
        started_by=inp.started_by if inp else "",
        freezes=inp.freezes if inp else [],
        freeze_override_by=inp.freeze_override_by if inp else "",
        stages=stages,
        waiting=waiting,
        actions=actions,
        final=status.state in WAVE_FINAL_STATES,
        instances=instances,
        total_rows=len(rows),
        page=page,
        pages=pages,
        page_size=PAGE_SIZE,
        filters={"stage": stage_filter or "", "state": state_filter or "", "q": query},
        page_link=lambda n: f"{PREFIX}/waves/{wave_id}?" + urllib.parse.urlencode({**base_query, "page": n}),
        stage_names=stage_names,
        instance_states=INSTANCE_STATES,
        patch_set=patch_set,
        coverage=_patch_coverage(status),
    )


async def _wave_status(
    ui: UiState, client: Client, wave_id: str
) -> tuple[WaveStatus, WorkflowExecutionDescription]:
    """The wave's status and its workflow's description (start and close times).

    A finished wave's status is its recorded result, which never changes: it is kept (per run) so paging
    through a large finished wave does not decode its result again for every page.
    """
    from patchflow.control.waves import wave_status

    try:
        description = await client.get_workflow_handle(wave_id).describe()
    except RPCError as exc:
        if exc.status in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise NotFoundError(f"no wave {wave_id!r}; the waves page lists them") from None
        raise
    if description.workflow_type != "WaveWorkflow":
        raise NotFoundError(f"no wave {wave_id!r}; the waves page lists them")
    key = (wave_id, description.run_id)
    cached = ui.finished.get(key)
    if cached is not None:
        return cached, description
    try:
        status = await asyncio.wait_for(wave_status(client, wave_id), STATUS_TIMEOUT_SECONDS)
    except TimeoutError:
        raise UiError(
            503,
            f"wave {wave_id} did not answer within {STATUS_TIMEOUT_SECONDS:.0f}s; is a worker polling task "
            f"queue {ui.api.settings.task_queue!r}?",
        ) from None
    if description.status == WorkflowExecutionStatus.COMPLETED:
        ui.finished[key] = status
        while len(ui.finished) > FINISHED_CACHE:
            ui.finished.popitem(last=False)
    return status, description


# ---------------------------------------------------------------------------------------------- actions


def _back(form: Mapping[str, str], wave_id: str) -> str:
    return _safe_next(form.get("back") or f"{PREFIX}/waves/{wave_id}")


async def _refuse(ui: UiState, viewer: Viewer, action: str, wave_id: str) -> UiError:
    """A role too weak for ``action``: audited like the API's refusal, answered with a 403 page."""
    await asyncio.to_thread(ui.api.audit, viewer.principal, action, outcome="forbidden", wave_id=wave_id)
    needed = " or ".join(sorted(r.value for r in PERMISSIONS[action]))
    return UiError(403, f"{viewer.name} has role {viewer.role}; {action} needs {needed}")


@router.get("/waves/{wave_id}/confirm/{action}")
async def confirm_page(request: Request, wave_id: str, action: str) -> HTMLResponse:
    viewer, session = await _viewer(request)
    ui = _ui(request)
    if action not in OPERATOR_ACTIONS:
        raise UiError(404, f"no action {action!r}; the actions are {', '.join(OPERATOR_ACTIONS)}")
    if not viewer.may(action):
        raise await _refuse(ui, viewer, action, wave_id)
    client = await ui.api.temporal.get()
    status, _ = await _wave_status(ui, client, wave_id)
    return _page(
        request,
        "confirm.html",
        viewer,
        session,
        wave=status,
        action=action,
        explanation=OPERATOR_ACTIONS[action],
    )


@router.post("/waves/{wave_id}/act/{action}")
async def act_on_wave(request: Request, wave_id: str, action: str) -> Response:
    viewer, session = await _viewer(request)
    ui = _ui(request)
    form = await _form(request)
    _check_csrf(session, form)
    if action not in OPERATOR_ACTIONS:
        raise UiError(404, f"no action {action!r}; the actions are {', '.join(OPERATOR_ACTIONS)}")
    if not viewer.may(action):
        raise await _refuse(ui, viewer, action, wave_id)
    if form.get("confirmed") != "yes":
        return _redirect(f"{PREFIX}/waves/{wave_id}/confirm/{action}")
    try:
        body = OperatorRequest(comment=form.get("comment", "").strip())
    except ValidationError as exc:
        session.flashes.append(("error", f"{action} not sent: comment: {exc.errors()[0]['msg']}"))
        return _redirect(_back(form, wave_id))
    await _send(ui, session, viewer, wave_id, action, stage=None, comment=body.comment)
    return _redirect(_back(form, wave_id))


async def _send(
    ui: UiState,
    session: UiSession,
    viewer: Viewer,
    wave_id: str,
    action: str,
    *,
    stage: str | None,
    comment: str,
) -> None:
    """Send the Update through the API's own path (audited, decisions recorded); the outcome is flashed."""
    try:
        result = await _act(ui.api, viewer.principal, wave_id, action, stage=stage, comment=comment)
    except NotFoundError as exc:
        session.flashes.append(("error", str(exc)))
    except PatchflowError as exc:  # WaveActionRefused: the wave's reason, as the API's 409 says it
        session.flashes.append(("error", str(exc)))
    except RPCError as exc:
        session.flashes.append(("error", f"Temporal did not answer: {exc.message}"))
    else:
        session.flashes.append(("ok", result.message))


@router.post("/waves/{wave_id}/gate")
async def answer_gate(request: Request, wave_id: str) -> Response:
    viewer, session = await _viewer(request)
    ui = _ui(request)
    form = await _form(request)
    _check_csrf(session, form)
    decision = form.get("decision", "")
    if decision not in ("approve", "reject"):
        raise UiError(422, "decision: choose approve or reject")
    if not viewer.may(decision):
        raise await _refuse(ui, viewer, decision, wave_id)
    comment = form.get("comment", "").strip()
    if not comment:
        session.flashes.append(("error", f"{decision} not sent: a comment is required (say why)"))
        return _redirect(_back(form, wave_id))
    try:
        body = GateRequest(stage=form.get("stage", ""), comment=comment)
    except ValidationError as exc:
        problem = exc.errors()[0]
        session.flashes.append(("error", f"{decision} not sent: {problem['loc'][0]}: {problem['msg']}"))
        return _redirect(_back(form, wave_id))
    await _send(ui, session, viewer, wave_id, decision, stage=body.stage, comment=body.comment)
    return _redirect(_back(form, wave_id))


# ---------------------------------------------------------------------------------------------- approvals


@dataclass(frozen=True)
class GateView:
    wave_id: str
    plan: str
    stage: str
    approvers: list[str]
    patch_set_id: str
    patches: int | None
    started: datetime | None
    earlier: list[StageProgressView]


@router.get("/approvals")
async def approvals_page(request: Request) -> HTMLResponse:
    viewer, session = await _viewer(request)
    ui = _ui(request)
    client = await ui.api.temporal.get()
    rows = await recent_waves(
        client, ui.api.settings.task_queue, state=WAVE_WAITING_APPROVAL, limit=LIST_LIMIT
    )
    mine: list[GateView] = []
    others: list[GateView] = []
    for execution, status in rows:
        if status is None:
            continue
        stage = next((s for s in status.stages if s.state == "waiting_approval"), None)
        if stage is None:
            continue
        inp = await ui.wave_input(client, execution.id)
        config = next((s for s in inp.stages if s.name == stage.name), None) if inp else None
        approvers = list(config.approvers) if config else []
        progress = stage_progress(status)
        gate = GateView(
            wave_id=execution.id,
            plan=status.plan_name,
            stage=stage.name,
            approvers=approvers,
            patch_set_id=status.patch_set_id,
            patches=len(inp.patches) if inp else None,
            started=execution.start_time,
            earlier=progress[: [p.name for p in progress].index(stage.name)],
        )
        (mine if viewer.name in approvers else others).append(gate)
    return _page(request, "approvals.html", viewer, session, mine=mine, others=others)


# ---------------------------------------------------------------------------------------------- schedules


@router.get("/schedules")
async def schedules_page(request: Request) -> HTMLResponse:
    from patchflow.control.scheduling import list_schedules

    viewer, session = await _viewer(request)
    client = await _ui(request).api.temporal.get()
    schedules = await list_schedules(client)
    return _page(request, "schedules.html", viewer, session, schedules=schedules)


# ---------------------------------------------------------------------------------------------- compliance


@dataclass(frozen=True)
class GroupCompliance:
    group: str
    compliant: int
    non_compliant: int
    by_severity: dict[str, int]

    @property
    def total(self) -> int:
        return self.compliant + self.non_compliant


def compliance_by_group(registry: Any) -> list[GroupCompliance]:
    """Compliance per patch group and severity, as the API's ``/metrics`` exports it (``POST /compliance``
    keeps it current): ``patchflow_compliance_instances`` and ``patchflow_compliance_noncompliant_instances``."""
    status: dict[str, Counter[str]] = {}
    severity: dict[str, Counter[str]] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == "patchflow_compliance_instances":
                status.setdefault(sample.labels["patch_group"], Counter())[sample.labels["status"]] += int(
                    sample.value
                )
            elif sample.name == "patchflow_compliance_noncompliant_instances":
                severity.setdefault(sample.labels["patch_group"], Counter())[sample.labels["severity"]] += (
                    int(sample.value)
                )
    return [
        GroupCompliance(
            group=group,
            compliant=counts.get("COMPLIANT", 0),
            non_compliant=counts.get("NON_COMPLIANT", 0),
            by_severity={s: severity.get(group, Counter()).get(s, 0) for s in SEVERITIES},
        )
        for group, counts in sorted(status.items())
    ]


@router.get("/compliance")
async def compliance_page(request: Request) -> HTMLResponse:
    viewer, session = await _viewer(request)
    groups = compliance_by_group(_ui(request).api.metrics.registry)
    widest = max((g.total for g in groups), default=0)
    return _page(
        request, "compliance.html", viewer, session, groups=groups, severities=SEVERITIES, widest=widest
    )


# ---------------------------------------------------------------------------------------------- audit


@router.get("/audit")
async def audit_page(
    request: Request,
    wave: str = "",
    actor: str = "",
    action: str = "",
    outcome: str = "",
    period: str = "7d",
    page: int = 1,
) -> HTMLResponse:
    viewer, session = await _viewer(request)
    ui = _ui(request)
    span = AUDIT_PERIODS.get(period, ...)
    if span is ...:
        raise UiError(422, f"period: choose one of {', '.join(AUDIT_PERIODS)}")
    outcome_filter = _choice(outcome, AUDIT_OUTCOMES, "outcome")
    wave_id = wave.strip()[:MAX_TEXT] or None
    since = datetime.now(UTC) - span if isinstance(span, timedelta) else None

    def read() -> list[Any]:
        with ui.history() as s:
            return db.list_audit(s, wave_id=wave_id, since=since, limit=AUDIT_SCAN)

    entries = await asyncio.to_thread(read)
    truncated = len(entries) >= AUDIT_SCAN
    actor_q, action_q = actor.strip().lower()[:MAX_TEXT], action.strip().lower()[:MAX_TEXT]
    kept = [
        e
        for e in reversed(entries)
        if (not actor_q or actor_q in e.actor.lower())
        and (not action_q or action_q == e.action.lower())
        and (outcome_filter is None or e.detail.get("outcome", "ok") == outcome_filter)
    ]
    pages = max(1, math.ceil(len(kept) / AUDIT_PAGE_SIZE))
    page = min(max(page, 1), pages)
    filters = {
        "wave": wave_id or "",
        "actor": actor.strip(),
        "action": action.strip(),
        "outcome": outcome_filter or "",
        "period": period,
    }
    query = {k: v for k, v in filters.items() if v}
    return _page(
        request,
        "audit.html",
        viewer,
        session,
        entries=kept[(page - 1) * AUDIT_PAGE_SIZE : page * AUDIT_PAGE_SIZE],
        total=len(kept),
        truncated=truncated,
        page=page,
        pages=pages,
        filters=filters,
        outcomes=AUDIT_OUTCOMES,
        periods=list(AUDIT_PERIODS),
        # The actions the period holds (token.create, approve …): whatever writers add later is offered too.
        actions=sorted({e.action for e in entries} | ({action.strip()} if action.strip() else set())),
        page_link=lambda n: f"{PREFIX}/audit?" + urllib.parse.urlencode({**query, "page": n}),
    )


# ---------------------------------------------------------------------------------------------- mounting


def mount_ui(app: FastAPI, state: ApiState) -> None:
    """Serve the console under ``/ui`` (pages and ``/ui/static``) from the API app; outside the OpenAPI
    document, like Slack's callback."""
    app.state.patchflow_ui = UiState(state)
    app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=str(STATIC_DIR)), name="ui-static")
