"""The console over plain HTTP, without a browser: what a reader without JavaScript gets, and what the server
enforces whatever the page shows (sessions, CSRF, roles). The browser tests (``test_browser.py``) drive the same
pages in Chromium."""

from __future__ import annotations

import html
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import pytest

from patchflow.service.ui import SESSION_COOKIE, SessionStore
from patchflow.store import db
from tests.ui.conftest import UiStack

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(page: httpx.Response) -> str:
    found = CSRF.search(page.text)
    assert found, page.text[:2000]
    return html.unescape(found.group(1))


@contextmanager
def sign_in(stack: UiStack, name: str) -> Iterator[httpx.Client]:
    """A client signed in as ``name`` through the sign-in form."""
    with httpx.Client(base_url=stack.url, timeout=30) as client:
        form = client.get("/ui/login")
        assert form.status_code == 200
        done = client.post(
            "/ui/login", data={"token": stack.tokens[name], "csrf": csrf_of(form), "next": "/ui/waves"}
        )
        assert done.status_code == 303, done.text
        assert done.headers["location"] == "/ui/waves"
        yield client


@pytest.fixture
def viewer(ui_stack: UiStack) -> Iterator[httpx.Client]:
    with sign_in(ui_stack, "vic") as client:
        yield client


def test_session_cookie_is_httponly_strict_and_pages_need_it(ui_stack: UiStack) -> None:
    """The session cookie is HttpOnly and SameSite=Strict (no Secure over plain HTTP); without it every page
    sends the browser to sign in and comes back afterwards."""
    with httpx.Client(base_url=ui_stack.url, timeout=30) as anonymous:
        page = anonymous.get("/ui/audit?period=30d")
        assert page.status_code == 303
        assert page.headers["location"] == "/ui/login?next=%2Fui%2Faudit%3Fperiod%3D30d"
        form = anonymous.get("/ui/login")
        assert (
            "Content-Security-Policy" in form.headers
            and "script-src 'self'" in form.headers["content-security-policy"]
        )
        signed = anonymous.post(
            "/ui/login",
            data={"token": ui_stack.tokens["vic"], "csrf": csrf_of(form), "next": "/ui/audit?period=30d"},
        )
        assert signed.status_code == 303 and signed.headers["location"] == "/ui/audit?period=30d"
        cookie = next(
            v for k, v in signed.headers.multi_items() if k == "set-cookie" and v.startswith(SESSION_COOKIE)
        )
        attributes = {part.strip().split("=")[0].lower() for part in cookie.split(";")}
        assert {"httponly", "path", "max-age"} <= attributes and "secure" not in attributes
        assert "samesite=strict" in cookie.lower()
        assert anonymous.get("/ui/audit").status_code == 200


def test_sign_in_refuses_bad_tokens_and_forged_forms(ui_stack: UiStack) -> None:
    with httpx.Client(base_url=ui_stack.url, timeout=30) as client:
        form = client.get("/ui/login")
        wrong = client.post("/ui/login", data={"token": "pft_nope_nope", "csrf": csrf_of(form)})
        assert wrong.status_code == 401 and "malformed, unknown or revoked" in wrong.text
        assert SESSION_COOKIE not in wrong.headers.get("set-cookie", "")
        # A form posted from elsewhere has no matching login cookie: refused even with a good token.
        forged = httpx.post(
            f"{ui_stack.url}/ui/login", data={"token": ui_stack.tokens["vic"], "csrf": "x.y.z"}
        )
        assert forged.status_code == 403 and "expired" in forged.text
        # An open redirect after sign-in is not possible.
        form = client.get("/ui/login")
        done = client.post(
            "/ui/login",
            data={"token": ui_stack.tokens["vic"], "csrf": csrf_of(form), "next": "https://evil.example/"},
        )
        assert done.headers["location"] == "/ui/waves"


def test_sessions_expire_and_end_with_their_token(ui_stack: UiStack) -> None:
    """Idle and absolute expiry (a clock injected into the store), sign-out, and revocation of the token."""
    now = [1000.0]
    store = SessionStore(idle_seconds=60, max_seconds=300, clock=lambda: now[0])
    cookie, _ = store.create("pft_x_y")
    now[0] += 59
    assert store.get(cookie) is not None
    now[0] += 61
    assert store.get(cookie) is None, "idle for more than 60 s"
    cookie, _ = store.create("pft_x_y")
    now[0] += 40
    assert store.get(cookie, touch=False) is not None  # a background refresh …
    now[0] += 40
    assert store.get(cookie) is None, "… does not restart the idle clock"
    cookie, _ = store.create("pft_x_y")
    for _ in range(7):  # 350 s in 50 s steps
        now[0] += 50
        alive = store.get(cookie)
    assert alive is None, "busy, but older than 300 s"

    # Over HTTP: the page's background refreshes (X-Patchflow-Poll) keep nobody signed in.
    sessions = ui_stack.app.state.patchflow_ui.sessions
    clock, real_clock = [0.0], sessions.clock
    sessions.clock = lambda: clock[0]
    try:
        with sign_in(ui_stack, "vic") as client:
            clock[0] = sessions.idle_seconds - 1
            assert client.get("/ui/waves", headers={"X-Patchflow-Poll": "1"}).status_code == 200
            clock[0] = sessions.idle_seconds + 1
            assert client.get("/ui/waves").status_code == 303
    finally:
        sessions.clock = real_clock

    with db.open_session(db.get_engine(ui_stack.settings.database_url_resolved)) as session:
        token_id, token = db.create_token(session, name="temp", role="viewer")
    with httpx.Client(base_url=ui_stack.url, timeout=30) as client:
        form = client.get("/ui/login")
        assert client.post("/ui/login", data={"token": token, "csrf": csrf_of(form)}).status_code == 303
        page = client.get("/ui/schedules")
        assert page.status_code == 200
        signed_out = client.post("/ui/logout", data={"csrf": csrf_of(page)})
        assert signed_out.status_code == 303
        assert client.get("/ui/schedules").status_code == 303  # the old session is gone
        form = client.get("/ui/login")
        assert client.post("/ui/login", data={"token": token, "csrf": csrf_of(form)}).status_code == 303
        ui_stack.app.state.patchflow.tokens.ttl_seconds = 0  # no cache: revocation is seen at once
        ui_stack.app.state.patchflow.tokens._cache.clear()
        with db.open_session(db.get_engine(ui_stack.settings.database_url_resolved)) as session:
            db.revoke_token(session, token_id=token_id)
        assert client.get("/ui/schedules").status_code == 303


def test_forms_need_the_session_csrf_token(ui_stack: UiStack) -> None:
    wave_id = ui_stack.start_wave("demo.yaml")
    with sign_in(ui_stack, "olga") as client:
        refused = client.post(f"/ui/waves/{wave_id}/act/cancel", data={"csrf": "guess", "confirmed": "yes"})
        assert refused.status_code == 403 and "did not come from this console" in refused.text
        assert ui_stack.wave(wave_id)["state"] not in ("cancelled",)
        page = client.get(f"/ui/waves/{wave_id}/confirm/cancel")
        refused = client.post(
            f"/ui/waves/{wave_id}/act/cancel", data={"csrf": csrf_of(page), "confirmed": "no"}
        )
        assert (
            refused.headers["location"] == f"/ui/waves/{wave_id}/confirm/cancel"
        )  # not confirmed: asks again
        done = client.post(
            f"/ui/waves/{wave_id}/act/cancel",
            data={"csrf": csrf_of(page), "confirmed": "yes", "comment": "test"},
        )
        assert done.status_code == 303
        # The outcome waits for the page the redirect leads to: a background refresh does not take it.
        polled = client.get(done.headers["location"], headers={"X-Patchflow-Poll": "1"})
        assert "cancel requested" not in polled.text
        assert "cancel requested" in client.get(done.headers["location"]).text
    ui_stack.wait_for(wave_id, lambda d: d["state"] == "cancelled")


def test_viewer_reads_everything_without_javascript_and_sees_no_buttons(
    ui_stack: UiStack, viewer: httpx.Client
) -> None:
    """Every page renders on the server: the data is in the HTML, the script only refreshes it."""
    ui_stack.reset_fleet()  # so this wave changes versions (its page shows them before → after)
    wave_id = ui_stack.start_wave("demo.yaml")
    ui_stack.wait_for(wave_id, lambda d: d["state"] == "waiting_approval")
    listed = viewer.get("/ui/waves", params={"state": "waiting_approval"})
    assert listed.status_code == 200 and wave_id in listed.text
    assert wave_id not in viewer.get("/ui/waves", params={"plan": "nodemo"}).text
    assert wave_id not in viewer.get("/ui/waves", params={"kind": "emergency"}).text

    page = viewer.get(f"/ui/waves/{wave_id}")
    assert page.status_code == 200
    text = page.text
    assert "waits for approval" not in text  # a viewer gets no gate form …
    assert "/confirm/" not in text and "Operator actions" not in text  # … and no action buttons
    assert "i-0test000000000004" in text and "Failure" in text  # the failed test instance and its detail
    assert "openssl" in text and "3.0.2-0ubuntu1.16" in text  # the pinned set
    # Versions before → after, as the worker recorded them in the history database (fleet.yaml: the 2024 image).
    # The wave's outbox writes them after the stage run ends and nothing waits for it: the page shows them once
    # the write has landed (seconds on a loaded machine).
    versions = re.compile(
        r'openssl\.amd64</span> <span class="mono">3\.0\.2-0ubuntu1\.10</span> → <span class="mono">3\.0\.2-0ubuntu1\.16<'
    )
    deadline = time.monotonic() + 60
    while not versions.search(dev := viewer.get(f"/ui/waves/{wave_id}", params={"stage": "dev"}).text):
        assert time.monotonic() < deadline, dev
        time.sleep(0.5)
    failed = viewer.get(f"/ui/waves/{wave_id}", params={"state": "failed"})
    assert failed.text.count('data-instance="') == 1

    # The server refuses what the page does not offer, and the audit log says so.
    confirm = viewer.get(f"/ui/waves/{wave_id}/confirm/halt")
    assert confirm.status_code == 403 and "halt needs admin or operator" in confirm.text
    halted = viewer.post(f"/ui/waves/{wave_id}/act/halt", data={"csrf": csrf_of(page), "confirmed": "yes"})
    assert halted.status_code == 403
    approve = viewer.post(
        f"/ui/waves/{wave_id}/gate",
        data={"csrf": csrf_of(page), "stage": "prod", "decision": "approve", "comment": "sneaky"},
    )
    assert approve.status_code == 403 and "approve needs admin or approver" in approve.text
    audit = viewer.get("/ui/audit", params={"wave": wave_id, "outcome": "forbidden"})
    assert audit.text.count("<tr data-entry>") == 3  # halt (its confirmation page), halt, approve
    assert "vic" in audit.text


def test_wave_page_paginates_and_searches(ui_stack: UiStack, viewer: httpx.Client) -> None:
    wave_id = ui_stack.start_wave("demo.yaml")
    ui_stack.wait_for(wave_id, lambda d: d["state"] == "waiting_approval")
    from patchflow.service import ui

    old = ui.PAGE_SIZE
    ui.PAGE_SIZE = 4
    try:
        first = viewer.get(f"/ui/waves/{wave_id}")
        assert first.text.count('data-instance="') == 4 and "Page 1 of 3" in first.text  # 3 dev + 6 test
        last = viewer.get(f"/ui/waves/{wave_id}", params={"page": 3})
        assert last.text.count('data-instance="') == 1
        found = viewer.get(f"/ui/waves/{wave_id}", params={"q": "test000000000004"})
        assert found.text.count('data-instance="') == 1
        by_stage = viewer.get(f"/ui/waves/{wave_id}", params={"stage": "dev"})
        assert by_stage.text.count('data-instance="') == 3
        bad = viewer.get(f"/ui/waves/{wave_id}", params={"stage": "nope"})
        assert bad.status_code == 422 and "stage: unknown value 'nope'" in html.unescape(bad.text)
    finally:
        ui.PAGE_SIZE = old
    assert viewer.get("/ui/waves/wave-nope-1").status_code == 404


def test_compliance_by_group_and_severity(ui_stack: UiStack, viewer: httpx.Client) -> None:
    """The figures POST /compliance produced, per patch group (the chart and the table)."""
    judged = ui_stack.judge_compliance()
    page = viewer.get("/ui/compliance")
    assert page.status_code == 200 and 'data-testid="compliance-chart"' in page.text
    by_group: dict[str, int] = {}
    for result in judged["instances"]:
        by_group[result["patch_group"] or "none"] = by_group.get(result["patch_group"] or "none", 0) + 1
    for group, count in by_group.items():
        assert re.search(rf"<th scope=\"row\">{group}</th><td>{count}</td>", page.text), (group, page.text)


async def test_cookies_are_secure_over_tls(ui_stack: UiStack) -> None:
    """Over https (here an ASGI request whose scope says so, as uvicorn sets it behind TLS or a trusted
    proxy's X-Forwarded-Proto) both cookies carry Secure."""
    transport = httpx.ASGITransport(app=ui_stack.app)
    async with httpx.AsyncClient(transport=transport, base_url="https://console.test") as client:
        form = await client.get("/ui/login")
        assert "secure" in form.headers["set-cookie"].lower()
        signed = await client.post("/ui/login", data={"token": ui_stack.tokens["vic"], "csrf": csrf_of(form)})
        assert signed.status_code == 303, signed.text
        session_cookie = next(
            v for k, v in signed.headers.multi_items() if k == "set-cookie" and v.startswith(SESSION_COOKIE)
        )
        assert "; secure" in session_cookie.lower() and "httponly" in session_cookie.lower()
