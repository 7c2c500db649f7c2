"""Slack approvals end to end: signed requests to a real HTTP server, a real wave on the Temporal dev server,
and a local Slack Web API stand-in reached through ``WebClient(base_url=...)``."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from slack_sdk.signature import SignatureVerifier
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from patchflow.config import Settings
from patchflow.control.waves import wave_status
from patchflow.core.wavemodel import StageStatus, WaveStatus
from patchflow.service.slack import (
    APPROVE_ACTION_ID,
    GATE_BLOCK_ID,
    GATE_REJECTED,
    GATE_WAITING,
    OUTCOME_BLOCK_ID,
    REJECT_ACTION_ID,
    STAGE_CANCELLED_EVENT,
    STAGE_COMPLETED,
    STAGE_FAILED_EVENT,
    STAGE_HALTED_EVENT,
    STAGE_STARTED,
    ReplayGuard,
    Transition,
    UserGroups,
    WaveNotifier,
    build_gate_message,
    build_slack_router,
    make_web_client,
    match_approver,
    notify_transitions,
    parse_gate_click,
    transitions,
)
from patchflow.store import db
from patchflow.testing.slack_api import SlackApiStandIn, SlackCall
from tests.conftest import REPO_ROOT
from tests.slack.conftest import CHANNEL, SIGNING_SECRET, serve_actions
from tests.workflows.conftest import running_worker
from tests.workflows.test_wave import stage, wave_input
from workflows.wave import WaveWorkflow

NOW = 1_700_000_000.0
ACK_LIMIT = 3.0  # Slack's deadline for an answer


# ------------------------------------------------------------------------------------------ helpers


def signed(body: bytes, ts: float, *, secret: str = SIGNING_SECRET) -> dict[str, str]:
    """Headers Slack would send: the real v0 signature of ``body`` at ``ts``."""
    timestamp = str(int(ts))
    signature = SignatureVerifier(secret).generate_signature(timestamp=timestamp, body=body)
    assert signature is not None
    return {
        "X-Slack-Request-Timestamp": timestamp,
        "X-Slack-Signature": signature,
        "Content-Type": "application/x-www-form-urlencoded",
    }


def form(payload: Any) -> bytes:
    return urllib.parse.urlencode({"payload": json.dumps(payload)}).encode()


def other_action(nonce: int = 0) -> bytes:
    """A well-formed interaction that is not patchflow's (answered 200 "ignored" once verified); a new
    ``nonce`` makes a new request (the same one twice is a replay)."""
    return form({"type": "block_actions", "user": {"id": "U0ALICE"}, "actions": [{"action_id": f"x{nonce}"}]})


def gate_message(slack_api: SlackApiStandIn, stage_name: str) -> SlackCall:
    """The gate message posted for ``stage_name`` (its buttons carry the stage)."""
    for call in slack_api.calls("chat.postMessage"):
        blocks = call.args.get("blocks") or []
        if blocks and blocks[-1].get("block_id") == GATE_BLOCK_ID:
            value = json.loads(blocks[-1]["elements"][0]["value"])
            if value["stage"] == stage_name:
                return call
    raise AssertionError(f"no gate message for {stage_name}: {[c.args for c in slack_api.calls()]}")


def click(
    message: SlackCall,
    *,
    user: str,
    name: str,
    approve: bool = True,
    action_ts: str | None = None,
    value: dict[str, str] | None = None,
) -> bytes:
    """The block_actions payload Slack sends when ``user`` clicks a button of the posted ``message``."""
    blocks = message.args["blocks"]
    button = blocks[-1]["elements"][0 if approve else 1]
    assert button["action_id"] == (APPROVE_ACTION_ID if approve else REJECT_ACTION_ID)
    channel, ts = message.response["channel"], message.response["ts"]
    return form(
        {
            "type": "block_actions",
            "team": {"id": "T0TEST", "domain": "patchflow-test"},
            "user": {"id": user, "username": name, "name": name, "team_id": "T0TEST"},
            "api_app_id": "A0PATCHFLOW",
            "container": {"type": "message", "message_ts": ts, "channel_id": channel, "is_ephemeral": False},
            "trigger_id": "1.2.3",
            "channel": {"id": channel, "name": "patches"},
            "message": {"type": "message", "ts": ts, "text": message.args.get("text"), "blocks": blocks},
            "response_url": "https://hooks.slack.com/actions/T0TEST/1/unused",
            "actions": [
                {
                    "type": "button",
                    "block_id": GATE_BLOCK_ID,
                    "action_id": button["action_id"],
                    "value": json.dumps(value) if value is not None else button["value"],
                    "action_ts": action_ts or f"{time.time():.6f}",
                }
            ],
        }
    )


async def post(url: str, body: bytes, headers: dict[str, str] | None = None) -> tuple[httpx.Response, float]:
    """POST to /slack/actions (signed now unless ``headers`` are given); returns the response and its time."""
    if headers is None:
        headers = signed(body, time.time())
    async with httpx.AsyncClient(timeout=10) as client:
        started = time.perf_counter()
        response = await client.post(f"{url}/slack/actions", content=body, headers=headers)
        elapsed = time.perf_counter() - started
    assert response.status_code < 500, response.text
    assert elapsed < ACK_LIMIT, f"answered in {elapsed:.2f} s"
    return response, elapsed


def ephemerals_to(slack_api: SlackApiStandIn, user: str) -> list[str]:
    return [c.args["text"] for c in slack_api.calls("chat.postEphemeral") if c.args.get("user") == user]


async def no_client() -> Client:
    raise AssertionError("a request that fails verification must not reach Temporal")


class Watcher:
    """What the API's refresh loop does: poll the wave's status and let the notifier post what changed."""

    def __init__(self, client: Client, wave_id: str, settings: Settings) -> None:
        self.client, self.wave_id = client, wave_id
        assert settings.slack_channel is not None
        # As the API builds it: no client yet (it connects lazily), handed over on each refresh.
        self.notifier = WaveNotifier(web_client=make_web_client(settings), channel=settings.slack_channel)
        self.posted: list[Transition] = []

    async def until(self, predicate: Callable[[WaveStatus], bool], timeout: float = 30) -> WaveStatus:
        deadline = time.monotonic() + timeout
        while True:
            status = await wave_status(self.client, self.wave_id)
            self.posted += await self.notifier.observe(status, client=self.client)
            if predicate(status):
                return status
            assert status.state not in ("succeeded", "failed", "cancelled"), f"wave ended {status.state}"
            assert time.monotonic() < deadline, f"wave stuck in {status.state}"
            await asyncio.sleep(0.1)


def waiting_at(stage_name: str) -> Callable[[WaveStatus], bool]:
    return lambda s: (
        s.state == "waiting_approval"
        and any(st.name == stage_name and st.state == "waiting_approval" for st in s.stages)
    )


# ------------------------------------------------------------------------------------------ verification


async def test_signature_timestamp_and_replay_boundaries(settings: Settings) -> None:
    clock = [NOW]
    body = other_action()
    async with serve_actions(settings, no_client, clock=lambda: clock[0]) as (url, _actions):
        nonces = iter(range(1, 1000))

        async def status_at(age: float, **kwargs: Any) -> tuple[int, str]:
            fresh = other_action(next(nonces))
            response, _ = await post(url, fresh, signed(fresh, NOW - age, **kwargs))
            return response.status_code, response.text

        # Accepted strictly inside the window, either side of now.
        assert (await status_at(0))[0] == 200
        assert (await status_at(299))[0] == 200
        assert (await status_at(-299))[0] == 200
        # Exactly 300 s old or ahead is outside; so is everything beyond.
        for age, words in (
            (300, "300 s old"),
            (301, "301 s old"),
            (-300, "300 s in the future"),
            (-301, "future"),
        ):
            code, text = await status_at(age)
            assert code == 401 and words in text, (age, text)
        # A float clock: 299.9 s old is in, 300.1 s is out (slack_sdk alone would accept 300.0 with whole seconds).
        clock[0] = NOW + 0.9
        assert (await status_at(299))[0] == 200
        clock[0] = NOW + 0.1
        code, text = await status_at(300)
        assert code == 401 and "old" in text
        clock[0] = NOW

        # Signed with another secret, or tampered after signing.
        code, text = await status_at(1, secret="not-the-secret")
        assert code == 401 and "signature mismatch" in text
        headers = signed(body, NOW - 2)
        tampered = body.replace(b"U0ALICE", b"U0MALLO")
        response, _ = await post(url, tampered, headers)
        assert response.status_code == 401 and "signature mismatch" in response.text

        # Missing or malformed headers.
        for drop, words in (
            ("X-Slack-Signature", "missing X-Slack-Signature"),
            ("X-Slack-Request-Timestamp", "missing X-Slack-Request-Timestamp"),
        ):
            headers = signed(body, NOW - 3)
            del headers[drop]
            response, _ = await post(url, body, headers)
            assert response.status_code == 401 and words in response.text
        for bad_ts in ("1_700_000_000", "+1699999996", "1.7e9", "-5", "abc"):
            headers = {**signed(body, NOW - 4), "X-Slack-Request-Timestamp": bad_ts}
            response, _ = await post(url, body, headers)
            assert response.status_code == 401 and "whole seconds" in response.text, bad_ts

        # Replays: the identical signed request is accepted once.
        headers = signed(body, NOW - 5)
        first, _ = await post(url, body, headers)
        again, _ = await post(url, body, headers)
        assert first.status_code == 200 and first.json()["outcome"] == "ignored"
        assert again.status_code == 401 and "replayed" in again.text

        # Not UTF-8 (cannot be Slack's), too large, not a payload: refused, never a 500.
        response, _ = await post(url, b"\xff\xfe", {**signed(b"", NOW), "X-Slack-Signature": "v0=00"})
        assert response.status_code == 401 and "UTF-8" in response.text
        big = b"payload=" + b"x" * (1024 * 1024 + 1)
        response, _ = await post(url, big, signed(big, NOW))
        assert response.status_code == 413


async def test_real_clock_refuses_a_301_second_old_request(settings: Settings) -> None:
    body = other_action()
    async with serve_actions(settings, no_client) as (url, _actions):
        stale, _ = await post(url, body, signed(body, time.time() - 301))
        fresh, _ = await post(url, body, signed(body, time.time()))
    assert stale.status_code == 401 and "old" in stale.json()["error"]
    assert fresh.status_code == 200


async def test_malformed_signed_payloads_are_400(settings: Settings) -> None:
    bodies = {
        b"not a form at all": "no single 'payload'",
        b"payload=%7Bnot-json": "not JSON",
        form([1, 2]): "not a JSON object",
        form({"type": "block_actions"}): "actions is missing",
        form(
            {
                "type": "block_actions",
                "actions": [{"action_id": APPROVE_ACTION_ID, "value": "w", "action_ts": "1"}],
            }
        ): "not patchflow's",
        form(
            {
                "type": "block_actions",
                "actions": [
                    {
                        "action_id": APPROVE_ACTION_ID,
                        "value": '{"wave_id": "w", "stage": "s"}',
                        "action_ts": "1",
                    }
                ],
            }
        ): "user is missing",
        form(
            {
                "type": "block_actions",
                "user": {"id": "<!channel>"},
                "actions": [
                    {
                        "action_id": APPROVE_ACTION_ID,
                        "value": '{"wave_id": "w", "stage": "s"}',
                        "action_ts": "1",
                    }
                ],
            }
        ): "not a Slack user id",
    }
    # Signed but nested 50,000 levels deep (about 300 KB, under the body limit): the parser's recursion
    # would give out long before; a 400, never a 500.
    deep = "[" * 50_000 + "]" * 50_000
    bodies[
        form({"type": "block_actions", "actions": [], "message": {"blocks": "x"}}).replace(
            b"%22x%22", urllib.parse.quote(deep).encode()
        )
    ] = "nested too deeply"
    bodies[urllib.parse.urlencode({"payload": deep}).encode()] = "nested too deeply"
    async with serve_actions(settings, no_client) as (url, _actions):
        for body, words in bodies.items():
            response, _ = await post(url, body)
            assert response.status_code == 400 and words in response.text, (body, response.text)
        # Other interaction types are none of patchflow's business.
        response, _ = await post(url, form({"type": "view_submission"}))
        assert response.json()["outcome"] == "ignored"


async def test_unconfigured_endpoint_trusts_nothing(tmp_path: Path) -> None:
    bare = Settings(data_dir=tmp_path / "data")
    db.upgrade(bare.database_url_resolved)
    async with serve_actions(bare, no_client) as (url, _actions):
        body = other_action()
        response, _ = await post(url, body)
    assert response.status_code == 401 and "PATCHFLOW_SLACK_SIGNING_SECRET" in response.text
    [row] = refusals(bare)
    assert row.actor == "slack:unverified" and "not configured" in row.detail["reason"]


def refusals(settings: Settings) -> list[db.AuditRecordPublic]:
    with db.open_session(db.get_engine(settings.database_url_resolved)) as session:
        return [r for r in db.list_audit(session, limit=1000) if r.refused]


async def test_refused_requests_leave_rate_limited_audit_rows(settings: Settings) -> None:
    """Forged, stale, replayed and malformed requests each leave a refused attempt (who could not be verified,
    why refused); a flood of forged requests stops adding rows at the limit."""
    db.upgrade(settings.database_url_resolved)
    async with serve_actions(settings, no_client) as (url, _actions):
        forged = other_action(1)
        await post(url, forged, signed(forged, time.time(), secret="not-the-secret"))
        stale = other_action(2)
        await post(url, stale, signed(stale, time.time() - 301))
        replayed = other_action(3)
        headers = signed(replayed, time.time())
        assert (await post(url, replayed, headers))[0].status_code == 200
        assert (await post(url, replayed, headers))[0].status_code == 401
        assert (await post(url, b"payload=%7Bnot-json"))[0].status_code == 400
        rows = refusals(settings)
        assert [(r.actor, r.action, r.detail["via"], r.detail["status"]) for r in rows] == [
            ("slack:unverified", "slack.request", "slack", 401),
            ("slack:unverified", "slack.request", "slack", 401),
            ("slack:unverified", "slack.request", "slack", 401),
            ("slack:unverified", "slack.request", "slack", 400),
        ]
        reasons = [r.detail["reason"] for r in rows]
        for words, reason in zip(("signature mismatch", "old", "replayed", "not JSON"), reasons, strict=True):
            assert words in reason
        assert all(r.detail["remote"] == "127.0.0.1" for r in rows)

        for nonce in range(db.REFUSALS_PER_MINUTE + 5):
            body = other_action(100 + nonce)
            response, _ = await post(url, body, signed(body, time.time(), secret="flood"))
            assert response.status_code == 401
    assert len(refusals(settings)) == db.REFUSALS_PER_MINUTE
    with db.open_session(db.get_engine(settings.database_url_resolved)) as session:
        assert db.verify_audit_chain(session).ok


def test_replay_memory_is_bounded_and_forgets_what_the_window_refuses() -> None:
    guard = ReplayGuard(300, max_entries=3)
    assert guard.check_and_remember(1000, "a", now=1000)
    assert not guard.check_and_remember(1000, "a", now=1001)
    for n in range(10):
        assert guard.check_and_remember(1000 + n, f"s{n}", now=1000 + n)
    assert len(guard) == 3
    assert guard.check_and_remember(2000, "late", now=2000)  # everything older than 300 s went
    assert len(guard) == 1


# ------------------------------------------------------------------------------------------ messages


def status_of(*stages: tuple[str, str], state: str = "running", reason: str = "") -> WaveStatus:
    return WaveStatus(
        wave_id="wave-demo-1",
        plan_name="demo",
        state=state,
        patch_set_id="ps-0123",
        stages=[StageStatus(name=n, state=s) for n, s in stages],
        reason=reason,
    )


def test_transitions_announce_each_phase_change_once() -> None:
    s = status_of
    assert transitions(None, s(("dev", "not_started"), ("prod", "not_started"))) == []
    # A watcher that starts late announces what is live, not the history.
    assert transitions(
        None, s(("dev", "succeeded"), ("prod", "waiting_approval"), state="waiting_approval")
    ) == [Transition(GATE_WAITING, "prod")]
    steps = [
        s(("dev", "not_started"), ("prod", "not_started")),
        s(("dev", "running"), ("prod", "not_started")),
        s(("dev", "running"), ("prod", "not_started")),
        s(("dev", "soaking"), ("prod", "not_started")),
        s(("dev", "succeeded"), ("prod", "waiting_approval"), state="waiting_approval"),
        s(("dev", "succeeded"), ("prod", "running")),
        s(("dev", "succeeded"), ("prod", "rolled_back"), state="halted"),
        s(("dev", "succeeded"), ("prod", "halted"), state="halted"),
        s(("dev", "succeeded"), ("prod", "running")),
        s(("dev", "succeeded"), ("prod", "succeeded"), state="succeeded"),
    ]
    seen = [t for before, after in zip(steps, steps[1:], strict=False) for t in transitions(before, after)]
    assert seen == [
        Transition(STAGE_STARTED, "dev"),
        Transition(STAGE_COMPLETED, "dev"),  # soaking → succeeded is not announced again
        Transition(GATE_WAITING, "prod"),
        Transition(STAGE_STARTED, "prod"),
        Transition(STAGE_HALTED_EVENT, "prod"),  # rolled_back → halted is one halt
        Transition(STAGE_STARTED, "prod", "resumed"),
        Transition(STAGE_COMPLETED, "prod"),
    ]
    gate = s(("dev", "succeeded"), ("prod", "waiting_approval"), state="waiting_approval")
    assert transitions(gate, s(("dev", "succeeded"), ("prod", "not_started"), state="failed")) == [
        Transition(GATE_REJECTED, "prod")
    ]
    assert transitions(gate, s(("dev", "succeeded"), ("prod", "cancelled"), state="cancelled")) == [
        Transition(STAGE_CANCELLED_EVENT, "prod")
    ]
    assert transitions(s(("dev", "running")), s(("dev", "failed"), state="failed")) == [
        Transition(STAGE_FAILED_EVENT, "dev")
    ]
    with pytest.raises(ValueError, match="two waves"):
        transitions(s(("dev", "running")), WaveStatus("other", "demo", "running", "ps", []))


def test_gate_message_blocks_carry_buttons_and_escape_untrusted_text() -> None:
    status = status_of(("dev", "succeeded"), ("prod", "waiting_approval"), state="waiting_approval")
    status.stages[0].instances = {"i-1": "succeeded", "i-2": "failed"}
    status.stages[0].note = "<!channel> 1 instance(s) failed & more"
    blocks = build_gate_message(
        status, "prod", "`ps-0123`: 2 packages", approvers=["slack:U0ALICE", "slack-group:S0OPS", "<bob>"]
    )
    text = json.dumps(blocks)
    assert "<!channel>" not in text and "&lt;!channel&gt; 1 instance(s) failed &amp; more" in text
    assert "<@U0ALICE>" in text and "<!subteam^S0OPS>" in text and "&lt;bob&gt;" in text
    assert "1 failed, 1 succeeded" in text and "`ps-0123`: 2 packages" in text
    actions = blocks[-1]
    assert actions["block_id"] == GATE_BLOCK_ID
    assert [e["action_id"] for e in actions["elements"]] == [APPROVE_ACTION_ID, REJECT_ACTION_ID]
    assert actions["elements"][1]["confirm"]["style"] == "danger"
    assert len(blocks[0]["text"]["text"]) <= 150
    # The button value round-trips through the payload parser.
    payload = {
        "type": "block_actions",
        "user": {"id": "U0ALICE", "name": "alice"},
        "team": {"id": "T1"},
        "actions": [{**actions["elements"][1], "action_ts": "1700000000.5"}],
    }
    parsed = parse_gate_click(form(payload))
    assert parsed is not None and (parsed.wave_id, parsed.stage, parsed.approve) == (
        "wave-demo-1",
        "prod",
        False,
    )
    assert parsed.update_id == f"slack/T1/U0ALICE/{REJECT_ACTION_ID}/1700000000.5"


async def test_group_membership_is_cached_and_failures_say_why(
    slack_api: SlackApiStandIn, settings: Settings
) -> None:
    groups = UserGroups(make_web_client(settings), ttl_seconds=60)
    approvers = ["alice", "slack-group:S0NOPE", "slack-group:S0OPS"]
    assert (await match_approver("U0CAROL", approvers, groups)).entry == "slack-group:S0OPS"
    assert (await match_approver("U0BOB", approvers, groups)).entry == "slack-group:S0OPS"
    denied = await match_approver("U0MALLORY", approvers, groups)
    assert denied.entry is None
    assert "not a member of slack-group:S0NOPE, slack-group:S0OPS" in denied.why
    assert "could not read the members of slack-group:S0NOPE (Slack said 'no_such_subteam')" in denied.why
    # S0OPS was asked once; the failing group is asked again each time (failures are not cached).
    lookups = [c.args["usergroup"] for c in slack_api.calls("usergroups.users.list")]
    assert lookups.count("S0OPS") == 1 and lookups.count("S0NOPE") == 3
    plain = await match_approver("U0ALICE", ["alice", "bob"], groups)
    assert plain.entry is None and "name no Slack user or group" in plain.why


async def test_posting_retries_rate_limits(slack_api: SlackApiStandIn, settings: Settings) -> None:
    slack_api.rate_limit("chat.postMessage", times=1, retry_after=0)
    current = status_of(("dev", "running"))
    posted = await notify_transitions(None, current, channel=CHANNEL, web_client=make_web_client(settings))
    assert posted == [Transition(STAGE_STARTED, "dev")]
    assert [c.status for c in slack_api.calls("chat.postMessage")] == [429, 200]
    # Slack refusing a message is logged, never raised into the refresh loop.
    posted = await notify_transitions(None, current, channel="", web_client=make_web_client(settings))
    assert posted == []


# ------------------------------------------------------------------------------------------ end to end


async def test_gate_approved_from_slack(
    dev_env: WorkflowEnvironment,
    make_fleet: Callable[..., Path],
    tmp_path: Path,
    slack_api: SlackApiStandIn,
    settings: Settings,
) -> None:
    db.upgrade(settings.database_url_resolved)
    client = dev_env.client
    fleet = make_fleet({"dev": 1, "prod": 2, "dr": 1})
    inp = wave_input(
        fleet,
        tmp_path,
        [
            stage("dev"),
            stage("prod", gate="approval", approvers=["slack:U0ALICE", "alice"]),
            stage("dr", gate="approval", approvers=["slack-group:S0OPS"]),
        ],
    )

    async def get_client() -> Client:
        return client

    async with running_worker(client) as tq, serve_actions(settings, get_client) as (url, actions):
        await client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)
        watcher = Watcher(client, inp.wave_id, settings)
        await watcher.until(waiting_at("prod"))
        message = gate_message(slack_api, "prod")
        assert "<@U0ALICE>" in json.dumps(message.args["blocks"])

        # An unknown stage, someone not listed, a group member where no group is listed: nothing changes.
        response, _ = await post(
            url, click(message, user="U0ALICE", name="alice", value={"wave_id": inp.wave_id, "stage": "prd"})
        )
        assert response.json()["outcome"] == "not_found" and "no stage 'prd'" in response.json()["message"]
        for user, words in (
            ("U0MALLORY", "slack:U0MALLORY is not listed"),
            ("U0BOB", "slack:U0BOB is not listed"),
        ):
            response, _ = await post(url, click(message, user=user, name=user.lower()))
            assert response.json()["outcome"] == "unauthorised" and words in response.json()["message"]
            await actions.drain()
            assert any(words in text for text in ephemerals_to(slack_api, user))
        status = await wave_status(client, inp.wave_id)
        assert status.state == "waiting_approval" and [a.action for a in status.audit] == ["start"]
        assert slack_api.calls("chat.update") == []
        assert any("no stage 'prd'" in text for text in ephemerals_to(slack_api, "U0ALICE"))

        # Alice approves; then Slack retries the same click (new signature, same action): one decision.
        alice = click(message, user="U0ALICE", name="alice")
        response, elapsed = await post(url, alice)
        assert response.json()["outcome"] == "applied" and elapsed < settings.slack_ack_seconds
        retry_headers = {
            **signed(alice, time.time() + 3),  # Slack retries after its 3 s timeout
            "X-Slack-Retry-Num": "1",
            "X-Slack-Retry-Reason": "http_timeout",
        }
        retried, _ = await post(url, alice, retry_headers)
        # The retry re-attaches to the same Update (same id) and reports its result, rather than being
        # refused as a second decision on a gate that no longer waits.
        assert retried.status_code == 200 and retried.json() == response.json()
        assert retried.json() == {
            "ok": True,
            "outcome": "applied",
            "message": "stage prod approved by slack:U0ALICE",
        }
        updated = await slack_api.wait_for("chat.update", lambda c: c.args["ts"] == message.response["ts"])
        outcome = updated.args["blocks"][-1]
        assert (
            outcome["block_id"] == OUTCOME_BLOCK_ID and "*Approved* by <@U0ALICE>" in outcome["text"]["text"]
        )
        assert all(b.get("type") != "actions" for b in updated.args["blocks"])

        # dr: only members of the S0OPS group.
        await watcher.until(waiting_at("dr"))
        dr = gate_message(slack_api, "dr")
        response, _ = await post(url, click(dr, user="U0MALLORY", name="mallory"))
        assert "not a member of slack-group:S0OPS" in response.json()["message"]
        response, _ = await post(url, click(dr, user="U0BOB", name="bob"))
        assert response.json()["outcome"] in ("applied", "pending")
        final = await watcher.until(lambda s: s.state == "succeeded")
        await actions.drain()

        assert len(ephemerals_to(slack_api, "U0ALICE")) == 1  # the unknown stage; nothing about the retry

        # A late click on the answered gate changes nothing and says why.
        response, _ = await post(url, click(message, user="U0ALICE", name="alice"))
        assert response.json()["outcome"] == "refused" and "already ended" in response.json()["message"]

    decisions = [
        (a.action, a.who, a.stage, a.comment) for a in final.audit if a.action in ("approve", "reject")
    ]
    assert decisions == [
        ("approve", "slack:U0ALICE", "prod", "via Slack by alice"),
        ("approve", "slack-group:S0OPS", "dr", "via Slack by bob"),
    ]
    dr_update = next(c for c in slack_api.calls("chat.update") if c.args["ts"] == dr.response["ts"])
    assert "by <@U0BOB> as <!subteam^S0OPS>" in dr_update.args["blocks"][-1]["text"]["text"]
    assert [c.args["usergroup"] for c in slack_api.calls("usergroups.users.list")] == ["S0OPS"]  # cached
    kinds = {(t.kind, t.stage) for t in watcher.posted}
    assert {(GATE_WAITING, "prod"), (GATE_WAITING, "dr"), (STAGE_COMPLETED, "dr")} <= kinds
    with db.open_session(db.get_engine(settings.database_url_resolved)) as session:
        rows = db.list_decisions(session, wave_id=inp.wave_id)
        audit = db.list_audit(session, wave_id=inp.wave_id)
    assert [(r.who, r.decision, r.via) for r in rows] == [
        ("slack:U0ALICE", "approve", "slack"),
        ("slack-group:S0OPS", "approve", "slack"),
    ]
    assert [(a.actor, a.detail["slack_user"]) for a in audit if not a.refused] == [
        ("slack:U0ALICE", "U0ALICE"),
        ("slack-group:S0OPS", "U0BOB"),
    ]
    # Every click that changed nothing left a refused attempt, by the Slack user who clicked, with the reason.
    assert [(a.actor, a.action, a.stage, a.detail["outcome"]) for a in audit if a.refused] == [
        ("slack:U0ALICE", "approve", "prd", "not_found"),
        ("slack:U0MALLORY", "approve", "prod", "unauthorised"),
        ("slack:U0BOB", "approve", "prod", "unauthorised"),
        ("slack:U0MALLORY", "approve", "dr", "unauthorised"),
        ("slack:U0ALICE", "approve", "prod", "refused"),
    ]
    assert (
        "slack:U0MALLORY is not listed"
        in next(a for a in audit if a.refused and a.actor == "slack:U0MALLORY").detail["reason"]
    )


async def test_slow_temporal_still_answers_in_time_and_a_rejection_updates_the_message(
    dev_env: WorkflowEnvironment,
    make_fleet: Callable[..., Path],
    tmp_path: Path,
    slack_api: SlackApiStandIn,
    settings: Settings,
) -> None:
    client = dev_env.client
    inp = wave_input(
        make_fleet({"dev": 1, "prod": 1}),
        tmp_path,
        [stage("dev"), stage("prod", gate="approval", approvers=["slack:U0ALICE"])],
    )

    async def slow_client() -> Client:
        await asyncio.sleep(1.0)  # longer than the ack budget below
        return client

    quick = settings.model_copy(update={"slack_ack_seconds": 0.3})
    async with (
        running_worker(client) as tq,
        serve_actions(quick, slow_client, record_history=False) as (url, actions),
    ):
        handle = await client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)
        watcher = Watcher(client, inp.wave_id, settings)
        await watcher.until(waiting_at("prod"))
        message = gate_message(slack_api, "prod")
        response, elapsed = await post(url, click(message, user="U0ALICE", name="alice", approve=False))
        assert response.json()["outcome"] == "pending" and elapsed < 1.0
        updated = await slack_api.wait_for("chat.update")
        assert "*Rejected* by <@U0ALICE>" in updated.args["blocks"][-1]["text"]["text"]
        result = await handle.result()
        await watcher.until(lambda s: True)  # one last refresh sees the rejection
        await actions.drain()
    assert result.status.state == "failed" and "rejected by slack:U0ALICE" in result.status.reason
    assert Transition(GATE_REJECTED, "prod") in watcher.posted


async def test_unknown_wave_is_an_ephemeral_message(
    dev_env: WorkflowEnvironment, slack_api: SlackApiStandIn, settings: Settings
) -> None:
    async def get_client() -> Client:
        return dev_env.client

    payload = {
        "type": "block_actions",
        "user": {"id": "U0ALICE", "name": "alice"},
        "team": {"id": "T0TEST"},
        "container": {"channel_id": CHANNEL, "message_ts": "1.2"},
        "actions": [
            {
                "action_id": APPROVE_ACTION_ID,
                "value": '{"wave_id": "wave-gone", "stage": "prod"}',
                "action_ts": "1700000000.1",
            }
        ],
    }
    async with serve_actions(settings, get_client) as (url, actions):
        response, _ = await post(url, form(payload))
        await actions.drain()
    assert response.status_code == 200 and response.json()["outcome"] == "not_found"
    assert ephemerals_to(slack_api, "U0ALICE") == [
        "patchflow has no wave 'wave-gone' (see 'patchflow wave list'); nothing changed"
    ]


def test_app_manifest_points_slack_at_the_endpoint_with_the_scopes_it_needs() -> None:
    manifest = yaml.safe_load((REPO_ROOT / "deploy" / "slack" / "manifest.yaml").read_text())
    interactivity = manifest["settings"]["interactivity"]
    assert interactivity["is_enabled"] is True
    assert interactivity["request_url"] == "https://<your-host>/slack/actions"
    assert sorted(manifest["oauth_config"]["scopes"]["bot"]) == ["chat:write", "usergroups:read"]
    routes = build_slack_router(settings=Settings(), get_client=no_client).routes
    assert [getattr(r, "path", None) for r in routes] == [
        urllib.parse.urlsplit(interactivity["request_url"]).path
    ]


async def test_the_api_refresh_loop_posts_to_the_plans_channel(
    dev_env: WorkflowEnvironment, make_fleet: Callable[..., Path], tmp_path: Path, slack_api: SlackApiStandIn
) -> None:
    """The API's own refresh loop (not a test double) announces a waiting gate in the channel the plan names."""
    from patchflow.metrics import Metrics
    from patchflow.service.api import ApiState, _refresh_metrics

    client = dev_env.client
    fleet = make_fleet({"dev": 1, "prod": 1})
    inp = wave_input(
        fleet, tmp_path, [stage("dev"), stage("prod", gate="approval", approvers=["slack:U0ALICE"])]
    )
    inp.slack_channel = "C0PLANCHAN"
    async with running_worker(client) as tq:
        api_settings = Settings(
            data_dir=tmp_path / "data",
            temporal_address=client.service_client.config.target_host,
            task_queue=tq,
            slack_bot_token=slack_api.token,
            slack_api_url=slack_api.url,
            slack_channel=CHANNEL,  # the fallback; the plan's channel wins
        )
        from prometheus_client import CollectorRegistry

        state = ApiState(api_settings, Metrics(CollectorRegistry()))
        await client.start_workflow(WaveWorkflow.run, inp, id=inp.wave_id, task_queue=tq)
        deadline = time.monotonic() + 30
        while True:
            await _refresh_metrics(state)
            gates = [
                c
                for c in slack_api.calls("chat.postMessage")
                if "Approve" in json.dumps(c.args.get("blocks"))
            ]
            if gates:
                break
            assert time.monotonic() < deadline, [c.args for c in slack_api.calls()]
            await asyncio.sleep(0.2)
        await client.get_workflow_handle(inp.wave_id).cancel()
        state.notifier_lease.release()  # what the app's lifespan does on shutdown
    assert {c.args["channel"] for c in slack_api.calls("chat.postMessage")} == {"C0PLANCHAN"}
