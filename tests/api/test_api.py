"""The REST API end to end: a real uvicorn server against the session's Temporal dev server, a worker and a
real (migrated) SQLite history database.

The server and its worker share one event loop in a background thread, as ``patchflow dev`` runs them, so
the synchronous schemathesis run and the async tests both find a live worker behind the API.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CollectorRegistry
from sqlmodel import Session
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from patchflow.config import Settings
from patchflow.control.devserver import free_port
from patchflow.core.documents import dump_yaml
from patchflow.metrics import Metrics
from patchflow.service.api import TokenVerifier, bind, create_app, make_server, openapi_document
from patchflow.store import db
from tests.conftest import BASELINES_DIR, EXAMPLES_DIR, REPO_ROOT
from tests.workflows.conftest import dev_env, running_worker  # noqa: F401 - dev_env is a fixture

AT = "2026-11-10T00:00:00Z"
ROLES = {  # token name → role; the names are what approval gates and the audit log see
    "vic": "viewer",
    "olga": "operator",
    "ops-lead": "approver",  # listed on the demo plan's prod gate
    "alice": "approver",  # an approver, but not of prod
    "root": "admin",
}


@dataclass
class Stack:
    url: str
    settings: Settings
    metrics: Metrics
    tokens: dict[str, str]
    """Token name → bearer token."""

    def auth(self, name: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[name]}"}

    def session(self) -> Session:
        return db.open_session(db.get_engine(self.settings.database_url_resolved))


def write_plan(plans: Path, name: str, *, time_scale: float) -> str:
    """The shipped demo plan, with the files it names copied next to it (the API reads nothing outside its
    plans directory), no soaks and a faster clock; returns its file name."""
    plan = yaml.safe_load((EXAMPLES_DIR / "demo-plan.yaml").read_text())
    for where, key in ((plan, "baseline"), (plan, "catalog"), (plan["executor"], "fleet")):
        source = (EXAMPLES_DIR / where[key]).resolve()
        (plans / source.name).write_text(source.read_text())
        where[key] = source.name
    plan["executor"]["time_scale"] = time_scale
    for stage in plan["stages"]:
        stage["soak"] = "0s"
    (plans / name).write_text(dump_yaml(plan))
    return name


@pytest.fixture(scope="module")
def stack(dev_env: WorkflowEnvironment, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:  # noqa: F811
    """The API and a worker on one loop in a thread (as ``patchflow dev`` runs them), a migrated SQLite
    database with one token per role, and plans under the API's plans directory."""
    root = tmp_path_factory.mktemp("api")
    database_url = f"sqlite:///{root / 'patchflow.db'}"
    db.upgrade(database_url)
    plans = root / "plans"
    plans.mkdir()
    write_plan(plans, "demo.yaml", time_scale=0.05)
    write_plan(plans, "slow.yaml", time_scale=1.0)
    target = dev_env.client.service_client.config.target_host
    metrics = Metrics(CollectorRegistry())
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    holder: dict[str, Any] = {}
    failure: list[BaseException] = []

    async def main() -> None:
        client = await Client.connect(target)
        async with running_worker(client) as task_queue:
            settings = Settings(
                data_dir=root / "data",
                temporal_address=target,
                task_queue=task_queue,
                database_url=database_url,
                api_plans_dir=plans,
                api_metrics_refresh_seconds=0.3,
            )
            server = make_server(create_app(settings, metrics=metrics))
            holder.update(settings=settings, server=server)
            await server.serve(sockets=[sock])

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # noqa: BLE001 - reported by the fixture, not lost in the thread
            failure.append(exc)

    thread = threading.Thread(target=run, name="api-stack", daemon=True)
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
        yield Stack(url=url, settings=holder["settings"], metrics=metrics, tokens=tokens)
    finally:
        holder["server"].should_exit = True
        thread.join(timeout=30)
        assert not failure, failure


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.url, timeout=30) as client:
        yield client


async def wait_for(
    http: httpx.AsyncClient,
    stack: Stack,
    wave_id: str,
    predicate: Callable[[dict[str, Any]], bool],
    timeout: float = 45,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        response = await http.get(f"/waves/{wave_id}", headers=stack.auth("vic"))
        if response.status_code == 200 and predicate(detail := response.json()):
            return detail
        assert time.monotonic() < deadline, response.text
        await asyncio.sleep(0.1)


def audit_of(stack: Stack, wave_id: str) -> list[tuple[str, str, str]]:
    """(actor, action, outcome) of the API's audit entries for a wave, oldest first."""
    with stack.session() as session:
        rows = db.list_audit(session, wave_id=wave_id)
    return [(r.actor, r.action, r.detail["outcome"]) for r in rows if r.detail.get("via") == "api"]


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] == code and error["message"], error
    return error


# ---------------------------------------------------------------------------------------------- waves


async def test_full_flow_start_approve_succeed(stack: Stack, http: httpx.AsyncClient) -> None:
    started = await http.post("/waves", json={"plan": "demo.yaml"}, headers=stack.auth("olga"))
    assert started.status_code == 201, started.text
    wave_id = started.json()["wave_id"]
    assert started.headers["location"] == f"/waves/{wave_id}"
    assert started.json()["plan"] == "demo" and started.json()["patches"] > 0

    detail = await wait_for(http, stack, wave_id, lambda d: d["state"] == "waiting_approval")
    stages = {s["name"]: s for s in detail["stages"]}
    assert stages["prod"]["state"] == "waiting_approval"
    assert {i["state"] for i in stages["dev"]["instances"]} == {"succeeded"}
    assert detail["audit"][0]["who"] == "olga"  # the token's name started it

    # One page per stage (issue 17: a status of a huge wave in a few queries), with the counts of all pages.
    page = await http.get(f"/waves/{wave_id}", params={"limit": 1, "offset": 1}, headers=stack.auth("vic"))
    assert page.status_code == 200, page.text
    paged = {s["name"]: s for s in page.json()["stages"]}
    for name, whole in stages.items():
        assert [i["id"] for i in paged[name]["instances"]] == [i["id"] for i in whole["instances"]][1:2]
        assert paged[name]["instances_total"] == len(whole["instances"])
        assert paged[name]["state_counts"] == dict(Counter(i["state"] for i in whole["instances"]))
    assert stages["dev"]["instances_total"] is None  # without ?limit= every instance is listed
    for bad in ({"limit": 0}, {"limit": 2001}, {"limit": 5, "offset": -1}):
        assert_error(
            await http.get(f"/waves/{wave_id}", params=bad, headers=stack.auth("vic")), 422, "invalid_request"
        )

    listed = await http.get("/waves", params={"state": "waiting_approval"}, headers=stack.auth("vic"))
    assert wave_id in [w["wave_id"] for w in listed.json()["waves"]]
    by_plan = await http.get("/waves", params={"plan": "demo"}, headers=stack.auth("vic"))
    assert wave_id in [w["wave_id"] for w in by_plan.json()["waves"]]
    other = await http.get("/waves", params={"plan": "nodemo"}, headers=stack.auth("vic"))
    assert other.json()["waves"] == []

    # The gate waits: the approvals metric says so, since when the wave itself says it started waiting.
    since = datetime.fromisoformat(stages["prod"]["waiting_since"])
    assert stages["dev"]["waiting_since"] is None and since <= datetime.now(UTC)
    deadline = time.monotonic() + 10
    labels = {"wave_id": wave_id, "stage": "prod"}
    while not stack.metrics.registry.get_sample_value(
        "patchflow_approval_waiting_since_timestamp_seconds", labels
    ):
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    assert (
        stack.metrics.registry.get_sample_value("patchflow_approval_waiting_since_timestamp_seconds", labels)
        == since.timestamp()
    )

    gate = {"stage": "prod", "comment": "change 42"}
    # an approver who is not on the prod gate: the workflow's validator refuses, with its reason
    refused = await http.post(f"/waves/{wave_id}/approve", json=gate, headers=stack.auth("alice"))
    assert "'alice' may not approve stage 'prod'" in assert_error(refused, 409, "refused")["message"]
    # an operator may operate, not approve
    assert_error(
        await http.post(f"/waves/{wave_id}/approve", json=gate, headers=stack.auth("olga")), 403, "forbidden"
    )
    # no body can act for another name: naming the approver is refused before anything reaches the wave
    smuggled = await http.post(
        f"/waves/{wave_id}/approve", json={**gate, "who": "ops-lead"}, headers=stack.auth("alice")
    )
    assert "body.who" in [p["path"] for p in assert_error(smuggled, 422, "invalid_request")["problems"]]

    approved = await http.post(f"/waves/{wave_id}/approve", json=gate, headers=stack.auth("ops-lead"))
    assert approved.status_code == 200, approved.text
    assert approved.json() == {
        "wave_id": wave_id,
        "action": "approve",
        "message": "stage prod approved by ops-lead",
    }
    detail = await wait_for(http, stack, wave_id, lambda d: d["state"] == "succeeded")
    assert [(a["who"], a["action"]) for a in detail["audit"]][-1] == ("ops-lead", "approve")

    assert audit_of(stack, wave_id) == [
        ("olga", "start", "ok"),
        ("alice", "approve", "refused"),
        ("olga", "approve", "forbidden"),
        ("ops-lead", "approve", "ok"),
    ]
    with stack.session() as session:
        decisions = db.list_decisions(session, wave_id=wave_id)
    assert [(d.who, d.decision, d.via, d.comment) for d in decisions] == [
        ("ops-lead", "approve", "api", "change 42")
    ]

    # /metrics shows the finished wave (the refresher reads it from Temporal)
    sample = {"wave_id": wave_id, "plan": "demo", "state": "succeeded"}
    deadline = time.monotonic() + 10
    while stack.metrics.registry.get_sample_value("patchflow_wave_state", sample) != 1.0:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    scraped = await http.get("/metrics", headers=stack.auth("vic"))
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("text/plain")
    assert f'patchflow_wave_state{{plan="demo",state="succeeded",wave_id="{wave_id}"}} 1.0' in scraped.text
    assert "patchflow_approvals_pending 0.0" in scraped.text
    openmetrics = await http.get(
        "/metrics", headers={**stack.auth("vic"), "Accept": "application/openmetrics-text"}
    )
    assert openmetrics.headers["content-type"].startswith("application/openmetrics-text")
    assert openmetrics.text.endswith("# EOF\n")


async def test_operator_actions_are_applied_refused_and_audited(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    started = await http.post("/waves", json={"plan": "slow.yaml"}, headers=stack.auth("root"))
    assert started.status_code == 201, started.text
    wave_id = started.json()["wave_id"]
    await wait_for(http, stack, wave_id, lambda d: d["state"] == "running")

    assert_error(await http.post(f"/waves/{wave_id}/halt", headers=stack.auth("vic")), 403, "forbidden")
    assert_error(await http.post(f"/waves/{wave_id}/halt", headers=stack.auth("ops-lead")), 403, "forbidden")
    halted = await http.post(
        f"/waves/{wave_id}/halt", json={"comment": "hold on"}, headers=stack.auth("olga")
    )
    assert halted.status_code == 200, halted.text
    await wait_for(http, stack, wave_id, lambda d: d["state"] == "halted")
    resumed = await http.post(f"/waves/{wave_id}/resume", headers=stack.auth("olga"))
    assert resumed.json()["message"] == "resumed"
    cancelled = await http.post(f"/waves/{wave_id}/cancel", json={}, headers=stack.auth("olga"))
    assert cancelled.status_code == 200, cancelled.text
    await wait_for(http, stack, wave_id, lambda d: d["state"] == "cancelled")
    late = await http.post(f"/waves/{wave_id}/rollback", headers=stack.auth("olga"))
    assert "refused" in assert_error(late, 409, "refused")["message"]

    assert audit_of(stack, wave_id) == [
        ("root", "start", "ok"),
        ("vic", "halt", "forbidden"),
        ("ops-lead", "halt", "forbidden"),
        ("olga", "halt", "ok"),
        ("olga", "resume", "ok"),
        ("olga", "cancel", "ok"),
        ("olga", "rollback", "refused"),
    ]
    with stack.session() as session:
        halt = next(
            r for r in db.list_audit(session, wave_id=wave_id) if r.action == "halt" and r.actor == "olga"
        )
    assert halt.detail["comment"] == "hold on" and halt.detail["token_id"]
    with stack.session() as session:
        rows = db.list_audit(session, wave_id=wave_id)
    assert [(r.actor, r.action) for r in rows if r.refused] == [
        ("vic", "halt"),
        ("ops-lead", "halt"),
        ("olga", "rollback"),
    ]
    assert "refused" in rows[-1].detail["reason"] and rows[-1].refused

    listed = await http.get("/waves", params={"state": "cancelled"}, headers=stack.auth("vic"))
    assert [w["wave_id"] for w in listed.json()["waves"]] == [wave_id]


async def test_start_refuses_a_second_wave_of_a_plan_and_a_plan_that_cannot_finish(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """``POST /waves`` runs ``wave start``'s checks: one wave at a time on a plan's fleet (409 naming the running
    wave, unless ``allow_concurrent``), and a plan whose stage window never opens is refused (422) before
    anything starts."""
    plans = stack.settings.api_plans_dir_resolved
    plan = yaml.safe_load((plans / "slow.yaml").read_text())
    plan["name"] = "one-at-a-time"
    (plans / "one-at-a-time.yaml").write_text(dump_yaml(plan))
    first = await http.post("/waves", json={"plan": "one-at-a-time.yaml"}, headers=stack.auth("olga"))
    assert first.status_code == 201, first.text
    first_id = first.json()["wave_id"]
    try:
        second = await http.post("/waves", json={"plan": "one-at-a-time.yaml"}, headers=stack.auth("olga"))
        message = assert_error(second, 409, "refused")["message"]
        assert first_id in message and "allow_concurrent" in message
        anyway = await http.post(
            "/waves",
            json={"plan": "one-at-a-time.yaml", "allow_concurrent": True},
            headers=stack.auth("olga"),
        )
        assert anyway.status_code == 201, anyway.text
        await http.post(f"/waves/{anyway.json()['wave_id']}/cancel", json={}, headers=stack.auth("olga"))
    finally:
        await http.post(f"/waves/{first_id}/cancel", json={}, headers=stack.auth("olga"))

    plan["name"] = "never-opens"
    plan["stages"][-1]["window"] = {"schedule": "cron(0 2 30 2 ? *)", "duration_hours": 4}  # 30 February
    (plans / "never-opens.yaml").write_text(dump_yaml(plan))
    refused = await http.post("/waves", json={"plan": "never-opens.yaml"}, headers=stack.auth("olga"))
    error = assert_error(refused, 422, "invalid_input")
    assert "would not get through its stages" in error["message"]
    last = plan["stages"][-1]["name"]
    assert [
        p["message"].startswith(f"{last}: the window schedule cron(0 2 30 2 ? *) never opens")
        for p in error["problems"]
    ] == [True]
    listed = await http.get("/waves", params={"plan": "never-opens"}, headers=stack.auth("vic"))
    assert listed.json()["waves"] == []  # nothing started


async def test_unknown_waves_and_plans(stack: Stack, http: httpx.AsyncClient) -> None:
    assert_error(await http.get("/waves/wave-nope", headers=stack.auth("vic")), 404, "not_found")
    missing = await http.post("/waves/wave-nope/cancel", headers=stack.auth("olga"))
    assert_error(missing, 404, "not_found")
    assert audit_of(stack, "wave-nope") == [("olga", "cancel", "not_found")]
    error = assert_error(
        await http.post("/waves", json={"plan": "absent.yaml"}, headers=stack.auth("olga")),
        422,
        "invalid_input",
    )
    assert "plan file not found" in error["message"]
    outside = await http.post("/waves", json={"plan": "../../etc/passwd"}, headers=stack.auth("olga"))
    assert "outside the plans directory" in assert_error(outside, 422, "invalid_input")["message"]
    unknown_set = await http.post(
        "/waves", json={"plan": "demo.yaml", "patch_set": "ps-" + "0" * 24}, headers=stack.auth("olga")
    )
    assert_error(unknown_set, 404, "not_found")


# ---------------------------------------------------------------------------------------------- auth


async def test_authentication_boundary(stack: Stack, http: httpx.AsyncClient) -> None:
    for headers in (
        {},
        {"Authorization": "Bearer"},
        {"Authorization": "Basic b2xnYTpwdw=="},
        {"Authorization": "Bearer not-a-token"},
        {"Authorization": "Bearer pft_000000000000_wrong"},
        # the right id with a wrong secret, and a token far too long to be worth hashing
        {"Authorization": f"Bearer {stack.tokens['root'].rsplit('_', 1)[0]}_forged"},
        {"Authorization": "Bearer " + "x" * 5000},
    ):
        for method, path in (("GET", "/waves"), ("POST", "/waves"), ("GET", "/metrics")):
            response = await http.request(method, path, headers=headers, json={"plan": "demo.yaml"})
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"

    with stack.session() as session:
        token_id, token = db.create_token(session, name="leaver", role="admin")
        db.revoke_token(session, token_id=token_id)
    revoked = await http.get("/waves", headers={"Authorization": f"Bearer {token}"})
    assert_error(revoked, 401, "unauthorized")

    # a viewer reads but cannot start, validate or approve
    assert (await http.get("/waves", headers=stack.auth("vic"))).status_code == 200
    for path, body in (
        ("/waves", {"plan": "demo.yaml"}),
        ("/plans/validate", {"plan": "demo.yaml"}),
        ("/baselines/validate", {"baseline": "x: 1"}),
        ("/waves/any/approve", {"stage": "prod"}),
    ):
        assert_error(await http.post(path, json=body, headers=stack.auth("vic")), 403, "forbidden")
    # health needs no token
    assert (await http.get("/healthz")).json() == {"status": "ok"}
    # every 403 left a refused attempt with the reason, whatever the route
    with stack.session() as session:
        refused = [
            (r.action, r.detail["reason"]) for r in db.list_audit(session) if r.refused and r.actor == "vic"
        ]
    assert [action for action, _ in refused[-4:]] == ["start", "validate", "validate", "approve"]
    assert all("has role viewer" in reason for _, reason in refused[-4:])


async def test_token_cache_trusts_a_verified_token_for_its_ttl(stack: Stack) -> None:
    now = [0.0]
    verifier = TokenVerifier(stack.settings.database_url_resolved, ttl_seconds=30, clock=lambda: now[0])
    with stack.session() as session:
        token_id, token = db.create_token(session, name="cached", role="viewer")
    principal = await verifier.verify(token)
    assert principal is not None and (principal.name, principal.role) == ("cached", "viewer")
    with stack.session() as session:
        db.revoke_token(session, token_id=token_id)
    now[0] = 29.0
    assert await verifier.verify(token) == principal  # cached: no scrypt, no database
    now[0] = 30.5
    assert await verifier.verify(token) is None  # expired: checked again, and revoked


async def test_a_flood_of_refused_calls_is_audited_up_to_the_limit(tmp_path: Path) -> None:
    """A token hammering an action it may not take: each call is refused, but the audit log grows by at most
    ``REFUSALS_PER_MINUTE`` rows a minute (its own database: the module's refusals would count too)."""
    url = f"sqlite:///{tmp_path / 'flood.db'}"
    db.upgrade(url)
    with db.open_session(db.get_engine(url)) as session:
        token = db.create_token(session, name="bot", role="viewer")[1]
    settings = Settings(data_dir=tmp_path, database_url=url, temporal_address=f"127.0.0.1:{free_port()}")
    app = create_app(settings, metrics=Metrics(CollectorRegistry()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        for _ in range(db.REFUSALS_PER_MINUTE + 15):
            response = await client.post("/waves/w/halt", headers={"Authorization": f"Bearer {token}"})
            assert_error(response, 403, "forbidden")
    with db.open_session(db.get_engine(url)) as session:
        rows = db.list_audit(session, limit=1000)
        assert len(rows) == db.REFUSALS_PER_MINUTE and all(r.refused and r.actor == "bot" for r in rows)
        assert db.verify_audit_chain(session).ok


def test_a_cli_action_the_wave_refuses_is_audited(stack: Stack, tmp_path: Path) -> None:
    """``patchflow wave approve --as mallory`` (exit 4): recorded as the OS user, ``--as`` kept as a claim."""
    with httpx.Client(base_url=stack.url, timeout=30) as http:
        started = http.post("/waves", json={"plan": "demo.yaml"}, headers=stack.auth("olga"))
        wave_id = started.json()["wave_id"]
        deadline = time.monotonic() + 45
        while http.get(f"/waves/{wave_id}", headers=stack.auth("vic")).json()["state"] != "waiting_approval":
            assert time.monotonic() < deadline
            time.sleep(0.2)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "patchflow",
                "wave",
                "approve",
                wave_id,
                "--stage",
                "prod",
                "--as",
                "mallory",
            ],
            env={**os.environ, **cli_env(stack, tmp_path)},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        http.post(f"/waves/{wave_id}/cancel", headers=stack.auth("olga"))
    assert proc.returncode == 4, proc.stderr
    with stack.session() as session:
        [row] = [r for r in db.list_audit(session, wave_id=wave_id) if r.refused]
    assert row.actor.startswith("cli:") and (row.action, row.stage) == ("approve", "prod")
    assert row.detail["via"] == "cli" and row.detail["as"] == "mallory"
    assert "'mallory' may not approve stage 'prod'" in row.detail["reason"]


def cli_env(stack: Stack, data_dir: Path) -> dict[str, str]:
    """What a ``patchflow`` subprocess needs to reach this stack's Temporal, task queue and database."""
    return {
        "PATCHFLOW_DATA_DIR": str(data_dir),
        "PATCHFLOW_DATABASE_URL": stack.settings.database_url_resolved,
        "PATCHFLOW_TEMPORAL_ADDRESS": stack.settings.temporal_address,
        "PATCHFLOW_TASK_QUEUE": stack.settings.task_queue,
    }


# ---------------------------------------------------------------------------------------------- health


async def test_health_and_readiness(stack: Stack, http: httpx.AsyncClient) -> None:
    assert (await http.get("/healthz")).status_code == 200
    ready = await http.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready"
    assert {name: c["ok"] for name, c in ready.json()["checks"].items()} == {
        "temporal": True,
        "database": True,
    }


async def test_readiness_reports_what_is_missing(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        temporal_address=f"127.0.0.1:{free_port()}",
        database_url=f"sqlite:///{tmp_path / 'never-migrated.db'}",
    )
    app = create_app(settings, metrics=Metrics(CollectorRegistry()))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as client:
        response = await client.get("/readyz")
        assert response.status_code == 503
        checks = response.json()["checks"]
        assert not checks["temporal"]["ok"] and "cannot reach Temporal" in checks["temporal"]["message"]
        assert not checks["database"]["ok"] and "patchflow db upgrade" in checks["database"]["message"]
        assert (await client.get("/healthz")).status_code == 200
        # requests that need a token say why they cannot be served
        unavailable = await client.get("/waves", headers={"Authorization": "Bearer pft_abc_def"})
        assert "patchflow db upgrade" in assert_error(unavailable, 503, "unavailable")["message"]


# ---------------------------------------------------------------------------------------------- input


async def test_malformed_requests_get_json_errors(stack: Stack, http: httpx.AsyncClient) -> None:
    admin = stack.auth("root")
    error = assert_error(await http.post("/waves", json={"plan": 5}, headers=admin), 422, "invalid_request")
    assert [p["path"] for p in error["problems"]] == ["body.plan"]
    error = assert_error(await http.post("/waves", json={}, headers=admin), 422, "invalid_request")
    assert "body.plan" in error["message"]
    for body in (
        {"plan": "x" * 10_000},
        {"plan": "demo\x00.yaml"},
        {"plan": "demo.yaml", "patch_set": "../../secrets"},
        {"plan": "demo.yaml", "started_by": "someone-else"},
    ):
        assert_error(await http.post("/waves", json=body, headers=admin), 422, "invalid_request")
    assert_error(
        await http.post("/waves/w/halt", json={"comment": "x" * 1001}, headers=admin), 422, "invalid_request"
    )
    assert_error(
        await http.post("/waves/w/approve", json={"stage": ["prod"]}, headers=admin), 422, "invalid_request"
    )
    bad_json = await http.post(
        "/waves", content=b'{"plan": ', headers={**admin, "Content-Type": "application/json"}
    )
    assert_error(bad_json, 422, "invalid_request")
    not_json = await http.post(
        "/waves", content=b"plan=demo", headers={**admin, "Content-Type": "text/plain"}
    )
    assert_error(not_json, 422, "invalid_request")
    huge = await http.post(
        "/baselines/validate",
        json={"baseline": "x" * (stack.settings.api_max_body_bytes + 1)},
        headers=admin,
    )
    assert_error(huge, 413, "too_large")

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"baseline": "'
        for _ in range(stack.settings.api_max_body_bytes // 65536 + 1):
            yield b"x" * 65536
        yield b'"}'

    streamed = await http.post(
        "/baselines/validate", content=chunks(), headers={**admin, "Content-Type": "application/json"}
    )
    assert_error(streamed, 413, "too_large")
    bad_query = await http.get("/waves", params={"state": "asleep", "limit": 0}, headers=admin)
    assert {p["path"] for p in assert_error(bad_query, 422, "invalid_request")["problems"]} == {
        "query.state",
        "query.limit",
    }
    injection = await http.get("/waves", params={"plan": "x' OR 'a'='a"}, headers=admin)
    assert_error(injection, 422, "invalid_request")
    naive = await http.post(
        "/plans/dry-run", json={"plan": "demo.yaml", "at": "2026-11-10T00:00:00"}, headers=admin
    )
    assert_error(naive, 422, "invalid_request")
    assert_error(await http.get("/nowhere", headers=admin), 404, "not_found")
    assert_error(await http.delete("/waves", headers=admin), 405, "method_not_allowed")


# ---------------------------------------------------------------------------------------------- documents


async def test_plans_validate_and_dry_run(stack: Stack, http: httpx.AsyncClient) -> None:
    operator = stack.auth("olga")
    valid = await http.post("/plans/validate", json={"plan": "demo.yaml"}, headers=operator)
    assert valid.json() == {
        "valid": True,
        "plan": "demo",
        "stages": ["dev", "test", "prod"],
        "problems": [],
        "message": "",
    }
    plans = stack.settings.api_plans_dir
    assert plans is not None
    (plans / "broken.yaml").write_text("name: broken\nstages: []\nexecutor: {kind: warp}\n")
    invalid = (await http.post("/plans/validate", json={"plan": "broken.yaml"}, headers=operator)).json()
    assert invalid["valid"] is False
    assert {"stages", "executor.kind", "baseline"} <= {p["path"] for p in invalid["problems"]}
    assert all(p["line"] for p in invalid["problems"] if p["path"] in ("stages", "executor.kind"))

    # An approver entry patchflow could never match (a Slack id in lower case) is a located problem.
    plan = yaml.safe_load((plans / "demo.yaml").read_text())
    plan["stages"][2]["gate"] = {"approval": {"approvers": ["ops-lead", "slack:u0alice"]}}
    (plans / "typo.yaml").write_text(yaml.safe_dump(plan))
    typo = (await http.post("/plans/validate", json={"plan": "typo.yaml"}, headers=operator)).json()
    [problem] = typo["problems"]
    assert problem["path"] == "stages[2].gate.approval.approvers[1]" and problem["line"]
    assert "no Slack user: write slack: and the member ID" in problem["message"]

    # A fleet of its own: the waves of the other tests have already upgraded the example fleet.
    fleet = yaml.safe_load((EXAMPLES_DIR / "fleet.yaml").read_text())
    (plans / "dry-fleet.yaml").write_text(dump_yaml({**fleet, "name": "dry-run"}))
    plan = yaml.safe_load((plans / "demo.yaml").read_text())
    (plans / "dry.yaml").write_text(
        dump_yaml({**plan, "executor": {"kind": "simulated", "fleet": "dry-fleet.yaml"}})
    )
    dry = await http.post("/plans/dry-run", json={"plan": "dry.yaml", "at": AT}, headers=operator)
    assert dry.status_code == 200, dry.text
    result = dry.json()
    assert result["plan"] == "demo" and result["evaluated_at"].startswith("2026-11-10")
    dev = result["stages"][0]
    assert dev["name"] == "dev" and len(dev["targets"]) == 3
    assert {"name", "arch", "from", "to"} == set(dev["targets"][0]["upgrades"][0])


async def test_baselines_validate_evaluate_and_compliance(stack: Stack, http: httpx.AsyncClient) -> None:
    operator = stack.auth("olga")
    baseline = (BASELINES_DIR / "ubuntu-staged.yaml").read_text()
    catalog = (EXAMPLES_DIR / "ubuntu-catalog.json").read_text()
    valid = (await http.post("/baselines/validate", json={"baseline": baseline}, headers=operator)).json()
    assert valid["valid"] is True and valid["rules"] >= 1

    broken = baseline.replace("ApproveAfterDays: 3", "ApproveAfterDays: 999", 1)
    assert broken != baseline
    invalid = (await http.post("/baselines/validate", json={"baseline": broken}, headers=operator)).json()
    assert invalid["valid"] is False and invalid["problems"][0]["line"]
    assert "ApproveAfterDays" in invalid["problems"][0]["path"]
    laughs = "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n"
    assert (
        "aliases"
        in (await http.post("/baselines/validate", json={"baseline": laughs}, headers=operator)).json()[
            "message"
        ]
    )
    huge_number = (  # more digits than Python converts: a ValueError inside the YAML parser
        await http.post("/baselines/validate", json={"baseline": "Name: " + "9" * 5000}, headers=operator)
    ).json()
    assert huge_number["valid"] is False and "4300 digits" in huge_number["message"]
    deep = "[" * 10_000 + "]" * 10_000
    assert (
        "nested"
        in (await http.post("/baselines/validate", json={"baseline": deep}, headers=operator)).json()[
            "message"
        ]
    )

    evaluated = await http.post(
        "/baselines/evaluate", json={"baseline": baseline, "catalog": catalog, "at": AT}, headers=operator
    )
    assert evaluated.status_code == 200, evaluated.text
    pins = {p["name"]: p["version"] for p in evaluated.json()["patch_set"]["patches"]}
    assert pins["openssl"] == "3.0.2-0ubuntu1.15"  # as `patchflow baseline evaluate` (tests/test_cli.py)
    bad_catalog = await http.post(
        "/baselines/evaluate", json={"baseline": baseline, "catalog": '[{"name": 1}]'}, headers=operator
    )
    assert assert_error(bad_catalog, 422, "invalid_input")["problems"]

    inventory = json.dumps(
        [
            {
                "instance_id": "i-0aaa0000000000001",
                "patch_group": "web",
                "platform": {"family": "deb", "product": "Ubuntu22.04"},
                "installed": [{"name": "openssl", "arch": "amd64", "version": "3.0.2-0ubuntu1.10"}],
            }
        ]
    )
    judged = await http.post(
        "/compliance",
        json={"baseline": baseline, "catalog": catalog, "inventory": inventory, "at": AT},
        headers=operator,
    )
    assert judged.status_code == 200, judged.text
    assert judged.json()["summary"]["non_compliant"] == 1
    assert (
        stack.metrics.registry.get_sample_value(
            "patchflow_compliance_instances", {"patch_group": "web", "status": "NON_COMPLIANT"}
        )
        == 1.0
    )


# ---------------------------------------------------------------------------------------------- contract


def test_openapi_is_committed_and_current() -> None:
    committed = json.loads((REPO_ROOT / "deploy" / "openapi.json").read_text())
    assert committed == json.loads(json.dumps(openapi_document())), (
        "deploy/openapi.json is stale: python -m patchflow.service.api --openapi > deploy/openapi.json"
    )
    assert "/metrics" not in committed["paths"] and "/slack/actions" not in committed["paths"]


def test_openapi_flag_prints_the_document() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "patchflow.service.api", "--openapi"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(json.dumps(openapi_document()))


def test_schemathesis_finds_no_server_error(stack: Stack) -> None:
    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis.checks import not_a_server_error

    schema = schemathesis.openapi.from_url(f"{stack.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) == 16  # 15 paths, /waves with GET and POST
    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(schemathesis.GenerationMode.POSITIVE),
            operation.as_strategy(schemathesis.GenerationMode.NEGATIVE),
        )

        @given(case=strategy)
        @settings(
            max_examples=25,
            deadline=None,
            database=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            case.call_and_validate(
                base_url=stack.url, headers=stack.auth("root"), checks=[not_a_server_error], timeout=30
            )

        check()


# ---------------------------------------------------------------------------------------------- cli


def test_patchflow_api_command_serves_and_stops(stack: Stack, tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "PATCHFLOW_DATA_DIR": str(tmp_path),
        "PATCHFLOW_DATABASE_URL": stack.settings.database_url_resolved,
        "PATCHFLOW_TEMPORAL_ADDRESS": stack.settings.temporal_address,
        "PATCHFLOW_TASK_QUEUE": stack.settings.task_queue,
        "PATCHFLOW_API_PORT": str(port),
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "patchflow", "api"],
        env=env,
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (
                proc.stderr.read() if proc.stderr else ""
            )
            time.sleep(0.1)
        response = httpx.get(f"http://127.0.0.1:{port}/waves", headers=stack.auth("vic"), timeout=10)
        assert response.status_code == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=20)
    assert proc.returncode == 0, stderr
    assert "Traceback" not in stderr
    assert f"patchflow API on http://127.0.0.1:{port}" in stderr


# ---------------------------------------------------------------------------------------------- rollout status


async def test_wave_status_carries_analysis_measurements_and_alert_blocking(
    stack: Stack, http: httpx.AsyncClient, tmp_path: Path
) -> None:
    """``GET /waves/{id}`` answers a stage's ``analysis``, ``measurements`` and ``blocked_by`` as ``wave status
    --format json`` has them, so a remote ``wave status`` (``PATCHFLOW_API_URL``) shows them too. A real
    Prometheus (Debian's package) answers the analysis: ``vector(0.001)`` passes ``< 0.01``, ``vector(NaN)`` is
    inconclusive (JSON has no NaN: the API answers null). Alert blocking fails safe on a Prometheus that cannot
    be asked, as kured does (https://kured.dev/docs/configuration/)."""
    from patchflow.cli.remote import RemoteApi
    from patchflow.cli.remote import wave_status as remote_wave_status
    from patchflow.control.waves import status_json, wave_status
    from patchflow.testing.prometheus import PrometheusNotInstalled, running_prometheus

    plans = stack.settings.api_plans_dir_resolved
    fleet = yaml.safe_load((EXAMPLES_DIR / "fleet.yaml").read_text())
    (plans / "analysed-fleet.yaml").write_text(dump_yaml({**fleet, "name": "analysed"}))
    plan = yaml.safe_load((plans / "demo.yaml").read_text())
    dev, test_stage = plan["stages"][0], plan["stages"][1]
    try:
        with running_prometheus(tmp_path / "prom", []) as prom:
            queries = [
                {
                    "name": "ok",
                    "query": "vector(0.001)",
                    "interval_seconds": 1,
                    "count": 2,
                    "success": "< 0.01",
                },
                {
                    "name": "nan",
                    "query": "vector(NaN)",
                    "interval_seconds": 1,
                    "count": 1,
                    "success": "< 0.01",
                },
            ]
            dev["canary"] = {"count": 1, "soak_seconds": 0}
            dev["gate"] = {
                "analysis": {"prometheus": prom.url, "queries": queries, "inconclusive": "continue"}
            }
            test_stage["block_on_alerts"] = {
                "prometheus": f"http://127.0.0.1:{free_port()}",  # nobody answers there
                "match": "^NodeDown$",
                "check_seconds": 1,
            }
            (plans / "analysed.yaml").write_text(
                dump_yaml(
                    {
                        **plan,
                        "name": "analysed",
                        "executor": {**plan["executor"], "fleet": "analysed-fleet.yaml"},
                        "stages": [dev, test_stage],
                    }
                )
            )
            started = await http.post("/waves", json={"plan": "analysed.yaml"}, headers=stack.auth("root"))
            assert started.status_code == 201, started.text
            wave_id = started.json()["wave_id"]
            detail = await wait_for(
                http, stack, wave_id, lambda d: bool(d["stages"][1].get("blocked_by")), timeout=90
            )
    except PrometheusNotInstalled as exc:
        pytest.skip(str(exc))
    try:
        first, second = detail["stages"]
        assert first["analysis"] == {
            "result": "inconclusive",
            "instances": 1,
            "queries": {
                "ok": {"successful": 2, "failed": 0, "inconclusive": 0},
                "nan": {"successful": 0, "failed": 0, "inconclusive": 1},
            },
        }
        by_query = {m["query"]: m for m in first["measurements"]}
        assert len(first["measurements"]) == 3
        assert by_query["ok"]["verdict"] == "successful" and by_query["ok"]["values"] == [0.001]
        assert by_query["nan"]["verdict"] == "inconclusive" and by_query["nan"]["values"] == [None]
        assert first["blocked_by"] is None and second["analysis"] is None and second["measurements"] == []
        assert "cannot be asked for alerts" in second["blocked_by"]

        # The remote CLI's status is the local one, key for key (NaN aside, which JSON cannot carry).
        remote = await asyncio.to_thread(
            remote_wave_status, RemoteApi(stack.url, stack.tokens["vic"]), wave_id
        )
        client = await Client.connect(stack.settings.temporal_address)
        local = status_json(await wave_status(client, wave_id))
        for measurement in local["stages"][0]["measurements"]:
            measurement["values"] = [None if v != v else v for v in measurement["values"]]
        for stage in (remote, local):
            stage.pop("audit")
        assert remote["stages"][1].pop("blocked_by") and local["stages"][1].pop("blocked_by")
        assert remote == local
    finally:
        cancelled = await http.post(f"/waves/{wave_id}/cancel", json={}, headers=stack.auth("olga"))
        assert cancelled.status_code == 200, cancelled.text


async def test_the_dry_run_shows_hooks_reboots_canary_analysis_and_alert_blocking(
    stack: Stack, http: httpx.AsyncClient
) -> None:
    """``POST /plans/dry-run`` answers per stage what ``patchflow plan --format json`` shows of its rollout
    controls (null where the plan sets none)."""
    plans = stack.settings.api_plans_dir_resolved
    fleet = yaml.safe_load((EXAMPLES_DIR / "fleet.yaml").read_text())
    (plans / "controls-fleet.yaml").write_text(dump_yaml({**fleet, "name": "controls"}))
    plan = yaml.safe_load((plans / "demo.yaml").read_text())
    prod = plan["stages"][2]
    prod["hooks"] = {
        "pre_install": ["systemctl stop app"],
        "post_reboot": [{"http": {"url": "http://127.0.0.1:1/"}}],
    }
    prod["reboot"] = {"policy": "always", "deadline_days": 2}
    prod["canary"] = {"count": 1, "soak_seconds": 30}
    prod["gate"] = {
        "analysis": {
            "prometheus": "http://127.0.0.1:9090",
            "queries": [{"name": "errors", "query": 'up{host=~"{{instances}}"}', "success": "== 1"}],
        }
    }
    plan["block_on_alerts"] = {
        "prometheus": "http://127.0.0.1:9090",
        "match": "^NodeDown$",
        "check_seconds": 5,
    }
    (plans / "controls.yaml").write_text(
        dump_yaml(
            {**plan, "name": "controls", "executor": {"kind": "simulated", "fleet": "controls-fleet.yaml"}}
        )
    )
    dry = await http.post(
        "/plans/dry-run", json={"plan": "controls.yaml", "at": AT}, headers=stack.auth("olga")
    )
    assert dry.status_code == 200, dry.text
    dev, _, shown = dry.json()["stages"]
    assert shown["hooks"] == {
        "phases": {"pre_install": 1, "post_reboot": 1},
        "on_hook_failure": "fail_instance",
    }
    assert shown["reboot"] == {
        "policy": "always",
        "window": None,
        "max_concurrency": None,
        "deadline_days": 2,
    }
    assert shown["canary"] == {"count": 1, "soak_seconds": 30}
    assert shown["analysis"] == {
        "prometheus": "http://127.0.0.1:9090",
        "queries": [
            {
                "name": "errors",
                "query": 'up{host=~"{{instances}}"}',
                "success": "== 1",
                "count": 1,
                "interval_seconds": 60,
                "failure_limit": 0,
            }
        ],
        "compare": None,
        "inconclusive": "halt",
    }
    block = {"prometheus": "http://127.0.0.1:9090", "match": "^NodeDown$", "check_seconds": 5}
    assert shown["block_on_alerts"] == dev["block_on_alerts"] == block
    assert [dev[k] for k in ("hooks", "reboot", "canary", "analysis")] == [None] * 4
