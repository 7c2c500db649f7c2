"""Slack approvals: wave messages with Approve / Reject buttons, and the ``POST /slack/actions`` endpoint.

Built on slack_sdk alone (``SignatureVerifier`` + ``WebClient``), not Bolt: patchflow needs one interactivity
endpoint and a few ``chat.*`` calls, and Bolt's listener model would add machinery, an ``auth.test`` round trip
and a second place where requests are acknowledged (``../shared/reference/libraries.md`` §2.3).

**Who may click.** A gate's approvers (``gate: {approval: {approvers: [...]}}`` in the plan) may name Slack
identities next to plain names: ``slack:U0123ABC`` (a user) or ``slack-group:S0123ABC`` (a user group, whose
members are read with ``usergroups.users.list`` and cached for ``slack_group_cache_seconds``). A click by Slack
user U counts iff ``slack:U`` is listed or U belongs to a listed group. The Update then carries the *matched
entry* as ``who`` (so the workflow's validator, which checks ``who in approvers``, agrees — it stays the one
authority) and ``via Slack by <user name>`` as the comment.

**A click, step by step** (:class:`SlackActions`):

1. The signature is checked on the raw body before anything is parsed. A request is accepted only while
   ``|now − X-Slack-Request-Timestamp| < slack_replay_window_seconds`` (≤ 300): exactly 300 s old — or 300 s
   in the future — is refused, whatever the clock's resolution. A (timestamp, signature) pair seen before
   within the window is refused as a replay. All of these answer 401, change nothing and leave a refused
   attempt in the audit log (actor ``slack:unverified``; rate-limited, see ``db.append_refusal``).
2. The wave's input (its stages and approvers) is read from the first event of its history; an unknown wave
   or stage, a stage without an approval gate, and a user who is not an approver get an ephemeral message
   saying why (``chat.postEphemeral``) — nothing is sent to the wave, and the audit log records the refused
   attempt as ``slack:<user id>``.
3. The decision goes to the workflow as an Update started with ``wait_for_stage=ACCEPTED`` and an Update id
   derived from the click (team, user, action, ``action_ts``): a Slack retry of the same click re-attaches to
   the same Update instead of deciding twice. The validator's refusals come back as ephemeral messages.
4. Slack wants an answer within 3 s. The endpoint waits at most ``slack_ack_seconds`` for the outcome and
   answers 200 either way; the rest (``chat.update`` of the message with the outcome and the approver, the
   history database's decision and audit rows) runs in a background task.

**Notifications.** :func:`transitions` diffs two :class:`~patchflow.core.wavemodel.WaveStatus` snapshots (pure) and
:func:`notify_transitions` posts a message per change: a gate starts waiting (with buttons), a stage starts,
halts, fails, completes or is cancelled, a promotion is rejected. :class:`WaveNotifier` remembers the previous
snapshot per wave for a refresh loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.http_retry.builtin_handlers import ConnectionErrorRetryHandler, RateLimitErrorRetryHandler
from slack_sdk.signature import Clock, SignatureVerifier
from temporalio.client import Client, WorkflowUpdateFailedError, WorkflowUpdateStage
from temporalio.service import RPCError, RPCStatusCode

from patchflow.config import Settings
from patchflow.core.approvers import SLACK_GROUP_PREFIX, SLACK_USER_PREFIX
from patchflow.core.wavemodel import (
    STAGE_CANCELLED,
    STAGE_FAILED,
    STAGE_HALTED,
    STAGE_NOT_STARTED,
    STAGE_ROLLED_BACK,
    STAGE_RUNNING,
    STAGE_SOAKING,
    STAGE_SUCCEEDED,
    STAGE_WAITING_APPROVAL,
    STAGE_WAITING_WINDOW,
    WAVE_FAILED,
    GateDecision,
    StageStatus,
    WaveInput,
    WaveStatus,
)
from patchflow.errors import NotFoundError, PatchflowError
from workflows.wave import WaveWorkflow

logger = logging.getLogger(__name__)

APPROVE_ACTION_ID = "patchflow_gate_approve"
REJECT_ACTION_ID = "patchflow_gate_reject"
GATE_BLOCK_ID = "patchflow_gate"
"""``block_id`` of the buttons' actions block: removed from the message once the gate is answered."""
OUTCOME_BLOCK_ID = "patchflow_outcome"
UNVERIFIED_ACTOR = "slack:unverified"
"""Audit actor of a request refused before its sender could be verified (its payload names nobody trusted)."""
REFUSED_OUTCOMES = frozenset({"unauthorised", "refused", "not_found"})
"""Click outcomes that are refused attempts (recorded in the audit log); ``error`` is patchflow's failure."""

SIGNATURE_HEADER = "x-slack-signature"
TIMESTAMP_HEADER = "x-slack-request-timestamp"
MAX_BODY_BYTES = 1024 * 1024
"""A block_actions payload carries the whole message (≤ 50 blocks), form-encoded: generous, but bounded."""
_SLACK_ID = re.compile(r"[A-Z0-9]{2,32}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")  # int() alone would also accept " 12", "1_2", "+12"
_MAX_FIELD = 255  # ids, names, action_ts from the payload: Slack's are far shorter
DECISION_TIMEOUT_SECONDS = 120.0
"""How long a click's background task waits for the wave to take the decision before telling the clicker."""

# Slack Block Kit limits (characters).
_HEADER_MAX = 150
_SECTION_MAX = 3000
_FIELD_MAX = 2000
_VALUE_MAX = 2000


# ============================================================================================ errors


class SlackRequestRejected(PatchflowError):
    """A request to ``POST /slack/actions`` that is refused before anything happens (HTTP ``status_code``).

    Belongs under ``PatchflowError`` in the tree of :mod:`patchflow.errors`; it never leaves this module's
    endpoint, which turns it into a JSON error.
    """

    def __init__(self, message: str, *, status_code: int = 401) -> None:
        super().__init__(message)
        self.status_code = status_code


# ============================================================================================ verification


class _CallableClock(Clock):
    """Adapts a ``() -> float`` to the ``.now()`` object slack_sdk's verifier expects."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock

    def now(self) -> float:
        return self._clock()


class ReplayGuard:
    """Remembers the (timestamp, signature) pairs of accepted requests while they could still be replayed.

    A pair may be forgotten once its timestamp is ``window_seconds`` old, because the timestamp check refuses
    it from then on. Memory is bounded: past ``max_entries`` the oldest pairs go first, which could let a
    replay through only under a flood of genuine requests — and then the Update id (one per click) still
    prevents a second decision. Per process: several API replicas each keep their own.
    """

    def __init__(self, window_seconds: float, *, max_entries: int = 10_000) -> None:
        self._window = window_seconds
        self._max = max_entries
        self._seen: OrderedDict[tuple[int, str], None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._seen)

    def check_and_remember(self, timestamp: int, signature: str, now: float) -> bool:
        """True if the pair is new (and now remembered); False for a replay."""
        while self._seen:
            (oldest_ts, _sig), _ = next(iter(self._seen.items()))
            if oldest_ts + self._window > now and len(self._seen) < self._max:
                break
            self._seen.popitem(last=False)
        key = (timestamp, signature)
        if key in self._seen:
            return False
        self._seen[key] = None
        return True


class RequestVerifier:
    """Slack's request signing (v0 HMAC-SHA256 of ``v0:{timestamp}:{raw body}``), a strict time window and
    replay refusal, each failure with a reason that says what to check.

    The window is strict — accepted iff ``|now − timestamp| < window_seconds`` — so a request exactly 300 s
    old (or ahead) is refused. slack_sdk's own check is ``abs(now − ts) > 300`` with a float clock, which
    refuses 300 s in practice but would accept it with a whole-second clock; checking first here makes the
    boundary independent of the clock.
    """

    def __init__(
        self,
        signing_secret: str,
        *,
        window_seconds: float = 300,
        clock: Callable[[], float] = time.time,
        max_remembered: int = 10_000,
    ) -> None:
        self._clock = clock
        self._window = window_seconds
        self._verifier = SignatureVerifier(signing_secret, clock=_CallableClock(clock))
        self.replays = ReplayGuard(window_seconds, max_entries=max_remembered)

    def verify(self, body: bytes, *, timestamp: str | None, signature: str | None) -> None:
        """Raise :class:`SlackRequestRejected` unless the raw ``body`` is signed, fresh and new."""
        if not signature:
            raise SlackRequestRejected("missing X-Slack-Signature header: only Slack may call this endpoint")
        if not timestamp:
            raise SlackRequestRejected(
                "missing X-Slack-Request-Timestamp header: only Slack may call this endpoint"
            )
        if not _TIMESTAMP.fullmatch(timestamp):
            raise SlackRequestRejected("X-Slack-Request-Timestamp is not a Unix time in whole seconds")
        ts = int(timestamp)
        now = self._clock()
        age = now - ts
        if age >= self._window:
            raise SlackRequestRejected(
                f"request timestamp is {age:.0f} s old; requests {self._window:.0f} s old or older are refused "
                "(replay protection) — check the server's clock if Slack's requests are fresh"
            )
        if -age >= self._window:
            raise SlackRequestRejected(
                f"request timestamp is {-age:.0f} s in the future; the window is ±{self._window:.0f} s — "
                "check the server's clock"
            )
        try:
            body.decode("utf-8")
        except UnicodeDecodeError:
            raise SlackRequestRejected("the body is not UTF-8, so it cannot be Slack's") from None
        if not self._verifier.is_valid(body=body, timestamp=timestamp, signature=signature):
            raise SlackRequestRejected(
                "signature mismatch: the body was altered or signed with another secret "
                "(check PATCHFLOW_SLACK_SIGNING_SECRET against the Slack app's signing secret)"
            )
        if not self.replays.check_and_remember(ts, signature, now):
            raise SlackRequestRejected("replayed request: this exact signed request was already received")


# ============================================================================================ approvers


def mention(entry: str) -> str:
    """An approver entry as Slack mrkdwn: ``slack:U1`` → ``<@U1>``, ``slack-group:S1`` → ``<!subteam^S1>``."""
    if entry.startswith(SLACK_USER_PREFIX) and _SLACK_ID.fullmatch(entry[len(SLACK_USER_PREFIX) :]):
        return f"<@{entry[len(SLACK_USER_PREFIX) :]}>"
    if entry.startswith(SLACK_GROUP_PREFIX) and _SLACK_ID.fullmatch(entry[len(SLACK_GROUP_PREFIX) :]):
        return f"<!subteam^{entry[len(SLACK_GROUP_PREFIX) :]}>"
    return escape(entry)


class UserGroups:
    """Members of Slack user groups (``usergroups.users.list``), cached for ``ttl_seconds``.

    The cache bounds Slack calls when a gate is clicked repeatedly; the TTL bounds how long someone removed
    from a group can still approve. Failures are not cached, so a fixed scope or group works on the next click.
    """

    def __init__(
        self,
        web_client: WebClient,
        *,
        ttl_seconds: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
        max_groups: int = 512,
    ) -> None:
        self._client = web_client
        self._ttl = ttl_seconds
        self._clock = clock
        self._max = max_groups
        self._cache: OrderedDict[str, tuple[float, frozenset[str]]] = OrderedDict()

    async def members(self, group_id: str) -> frozenset[str]:
        """User ids in the group. Raises ``SlackClientError`` (or ``OSError``) when Slack cannot tell."""
        cached = self._cache.get(group_id)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        response = await asyncio.to_thread(self._client.usergroups_users_list, usergroup=group_id)
        users = frozenset(str(u) for u in (response.get("users") or []))
        self._cache[group_id] = (self._clock() + self._ttl, users)
        self._cache.move_to_end(group_id)
        while len(self._cache) > self._max:
            self._cache.popitem(last=False)
        return users


@dataclass(frozen=True)
class ApproverMatch:
    """Which approver entry a Slack user acts as, or why none."""

    entry: str | None
    """The matched entry of the stage's approvers (``slack:U…`` or ``slack-group:S…``); None: not allowed."""
    why: str = ""
    """When ``entry`` is None: the reason, for the user's ephemeral message."""


async def match_approver(user_id: str, approvers: Sequence[str], groups: UserGroups) -> ApproverMatch:
    """Map a Slack user to one of a gate's approver entries: the user's own entry first, then listed groups
    in order (the first group that contains the user wins)."""
    direct = f"{SLACK_USER_PREFIX}{user_id}"
    if direct in approvers:
        return ApproverMatch(direct)
    group_entries = [a for a in approvers if a.startswith(SLACK_GROUP_PREFIX)]
    problems: list[str] = []
    for entry in group_entries:
        try:
            members = await groups.members(entry[len(SLACK_GROUP_PREFIX) :])
        except SlackApiError as exc:
            problems.append(
                f"could not read the members of {entry} (Slack said {exc.response.get('error')!r})"
            )
            continue
        except (SlackClientError, OSError) as exc:
            problems.append(f"could not read the members of {entry} ({exc})")
            continue
        if user_id in members:
            return ApproverMatch(entry)
    listed = ", ".join(approvers)
    if not any(a.startswith((SLACK_USER_PREFIX, SLACK_GROUP_PREFIX)) for a in approvers):
        why = (
            f"this gate's approvers ({listed}) name no Slack user or group, so it cannot be answered from Slack; "
            f"use the CLI or the API, or add {direct} to the plan"
        )
    else:
        why = f"you are not one of this gate's approvers ({listed}): {direct} is not listed"
        if group_entries:
            why += f" and you are not a member of {', '.join(group_entries)}"
    if problems:
        why += "; " + "; ".join(problems)
    return ApproverMatch(None, why)


# ============================================================================================ messages


def escape(text: str) -> str:
    """Escape Slack's three control characters, so a name or comment cannot ping ``<!channel>`` or link."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _plain(text: str, limit: int = _HEADER_MAX) -> dict[str, Any]:
    return {"type": "plain_text", "text": _clip(text, limit), "emoji": True}


def _mrkdwn(text: str, limit: int = _SECTION_MAX) -> dict[str, Any]:
    return {"type": "mrkdwn", "text": _clip(text, limit)}


@dataclass(frozen=True)
class StageTally:
    """One stage's results so far: its state and how many instances are in each instance state."""

    name: str
    state: str
    counts: dict[str, int] = field(default_factory=dict)
    errors: int = 0
    max_errors: int | None = None
    note: str = ""


def tally(status: WaveStatus) -> list[StageTally]:
    """Results so far of every stage of a wave, in stage order."""
    return [tally_stage(st) for st in status.stages]


def tally_stage(st: StageStatus) -> StageTally:
    """One stage's :class:`StageTally`."""
    counts: dict[str, int] = {}
    for state in st.instances.values():
        counts[state] = counts.get(state, 0) + 1
    return StageTally(st.name, st.state, counts, st.errors, st.max_errors, st.note)


def _tally_line(t: StageTally) -> str:
    counts = ", ".join(f"{n} {state}" for state, n in sorted(t.counts.items())) or "no instances yet"
    budget = f"; errors {t.errors}/{t.max_errors} tolerated" if t.max_errors is not None and t.errors else ""
    note = f" — _{escape(t.note)}_" if t.note else ""
    return f"• *{escape(t.name)}* ({t.state}): {counts}{budget}{note}"


class _Versioned(Protocol):
    """A package version: :class:`~patchflow.executors.base.Package` or a pinned patch."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> str: ...


def summarize_patches(patch_set_id: str, patches: Sequence[_Versioned], *, show: int = 8) -> str:
    """``ps-…: 12 packages — openssl 3.0.2-0ubuntu1.16, curl 7.81.0-1ubuntu1.18, … and 4 more`` (mrkdwn)."""
    shown = ", ".join(f"{escape(p.name)} {escape(p.version)}" for p in patches[:show])
    more = f" and {len(patches) - show} more" if len(patches) > show else ""
    noun = "package" if len(patches) == 1 else "packages"
    return f"`{escape(patch_set_id)}`: {len(patches)} {noun}" + (f" — {shown}{more}" if patches else "")


def gate_button_value(wave_id: str, stage: str) -> str:
    """What the buttons carry: the wave and the stage, as compact JSON (Slack allows 2,000 characters)."""
    value = json.dumps({"wave_id": wave_id, "stage": stage}, separators=(",", ":"))
    if len(value) > _VALUE_MAX:
        raise ValueError(f"wave id and stage name are too long for a Slack button ({len(value)} characters)")
    return value


def _overview(status: WaveStatus, stage: str) -> dict[str, Any]:
    return {
        "type": "section",
        "fields": [
            _mrkdwn(f"*Wave*\n`{escape(status.wave_id)}`", _FIELD_MAX),
            _mrkdwn(f"*Plan*\n{escape(status.plan_name)}", _FIELD_MAX),
            _mrkdwn(f"*Stage*\n{escape(stage)}", _FIELD_MAX),
            _mrkdwn(f"*Wave state*\n{escape(status.state)}", _FIELD_MAX),
        ],
    }


def _results(results_so_far: Sequence[StageTally]) -> dict[str, Any]:
    lines = "\n".join(_tally_line(t) for t in results_so_far) or "nothing has run yet"
    return {"type": "section", "text": _mrkdwn(f"*Results so far*\n{lines}")}


def build_gate_message(
    status: WaveStatus,
    stage: str,
    patch_set_summary: str,
    results_so_far: Sequence[StageTally] | None = None,
    *,
    approvers: Sequence[str] = (),
) -> list[dict[str, Any]]:
    """Block Kit for "this gate waits for you": the wave, the stage, the patch set, the results so far, who
    may approve (Slack entries render as mentions, so they are notified) and the Approve / Reject buttons.

    Args:
        patch_set_summary: mrkdwn, e.g. from :func:`summarize_patches`.
        results_so_far: per stage; None = computed from ``status`` with :func:`tally`.
        approvers: the gate's approver entries, when known.
    """
    value = gate_button_value(status.wave_id, stage)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": _plain(f"Approval needed: promote wave to {stage}")},
        _overview(status, stage),
        {"type": "section", "text": _mrkdwn(f"*Patch set*\n{patch_set_summary}")},
        _results(tally(status) if results_so_far is None else results_so_far),
    ]
    if approvers:
        who = ", ".join(mention(a) for a in approvers)
        blocks.append({"type": "context", "elements": [_mrkdwn(f"Approvers: {who}")]})
    blocks.append(
        {
            "type": "actions",
            "block_id": GATE_BLOCK_ID,
            "elements": [
                {
                    "type": "button",
                    "action_id": APPROVE_ACTION_ID,
                    "style": "primary",
                    "text": _plain("Approve", 75),
                    "value": value,
                },
                {
                    "type": "button",
                    "action_id": REJECT_ACTION_ID,
                    "style": "danger",
                    "text": _plain("Reject", 75),
                    "value": value,
                    "confirm": {
                        "title": _plain("Reject this promotion?", 100),
                        "text": _mrkdwn(
                            f"The wave ends *failed* and stage *{escape(stage)}* never starts.", 300
                        ),
                        "confirm": _plain("Reject", 30),
                        "deny": _plain("Keep waiting", 30),
                        "style": "danger",
                    },
                },
            ],
        }
    )
    return blocks


def gate_text(status: WaveStatus, stage: str) -> str:
    """Notification text of a gate message (shown where blocks are not: push notifications, screen readers)."""
    return f"Wave {status.wave_id} ({status.plan_name}) waits for approval to promote to {stage}"


# Notification kinds (Transition.kind).
GATE_WAITING = "gate_waiting"
STAGE_STARTED = "stage_started"
STAGE_COMPLETED = "stage_completed"
STAGE_HALTED_EVENT = "stage_halted"
STAGE_FAILED_EVENT = "stage_failed"
STAGE_CANCELLED_EVENT = "stage_cancelled"
GATE_REJECTED = "gate_rejected"

_EVENT_TITLES = {
    STAGE_STARTED: ("▶️", "started"),
    STAGE_COMPLETED: ("✅", "completed"),
    STAGE_HALTED_EVENT: ("⏸️", "halted"),
    STAGE_FAILED_EVENT: ("❌", "failed"),
    STAGE_CANCELLED_EVENT: ("⛔", "cancelled"),
    GATE_REJECTED: ("🚫", "promotion rejected"),
}


def build_stage_message(
    status: WaveStatus, stage: str, event: str, *, detail: str = ""
) -> list[dict[str, Any]]:
    """Block Kit for a stage that started, halted, failed, completed or was cancelled (``event`` is one of the
    ``STAGE_*``/``GATE_REJECTED`` kinds); a halt or failure shows the wave's reason and what to do."""
    emoji, verb = _EVENT_TITLES[event]
    title = f"{emoji} Stage {stage} {verb}" + (f" ({detail})" if detail else "")
    st = next((s for s in status.stages if s.name == stage), None)
    blocks: list[dict[str, Any]] = [{"type": "header", "text": _plain(title)}, _overview(status, stage)]
    if st is not None:
        blocks.append({"type": "section", "text": _mrkdwn(_tally_line(tally_stage(st)))})
    if status.reason and event in (STAGE_HALTED_EVENT, STAGE_FAILED_EVENT, GATE_REJECTED):
        blocks.append({"type": "section", "text": _mrkdwn(f"*Reason*\n{escape(status.reason)}")})
    if event == STAGE_HALTED_EVENT:
        hint = (
            f"`patchflow wave resume|rollback|cancel {escape(status.wave_id)}` (or the API) decides what next"
        )
        blocks.append({"type": "context", "elements": [_mrkdwn(hint)]})
    return blocks


def stage_text(status: WaveStatus, stage: str, event: str, *, detail: str = "") -> str:
    _emoji, verb = _EVENT_TITLES[event]
    return f"Wave {status.wave_id} ({status.plan_name}): stage {stage} {verb}" + (
        f" ({detail})" if detail else ""
    )


def build_outcome_blocks(original: Sequence[Mapping[str, Any]] | None, outcome: str) -> list[dict[str, Any]]:
    """The answered gate message: the original blocks without the buttons, plus the outcome (mrkdwn)."""
    kept = [
        dict(b)
        for b in (original or [])
        if b.get("block_id") not in (GATE_BLOCK_ID, OUTCOME_BLOCK_ID) and b.get("type") != "actions"
    ]
    return [*kept, {"type": "section", "block_id": OUTCOME_BLOCK_ID, "text": _mrkdwn(outcome)}]


# ============================================================================================ posting


def make_web_client(settings: Settings) -> WebClient:
    """A ``WebClient`` for ``settings.slack_api_url`` that retries 429s (honouring ``Retry-After``) and
    connection errors: slack_sdk retries neither 429s nor, beyond one attempt, connections by default."""
    if settings.slack_bot_token is None:
        raise PatchflowError(
            "Slack is not configured: set PATCHFLOW_SLACK_BOT_TOKEN to the app's bot token (xoxb-…)"
        )
    return WebClient(
        token=settings.slack_bot_token.get_secret_value(),
        base_url=settings.slack_api_url,
        timeout=10,
        retry_handlers=[
            ConnectionErrorRetryHandler(max_retry_count=2),
            RateLimitErrorRetryHandler(max_retry_count=3),
        ],
    )


def post_gate_message(
    web_client: WebClient,
    *,
    channel: str,
    status: WaveStatus,
    stage: str,
    patch_set_summary: str,
    approvers: Sequence[str] = (),
) -> str:
    """Post the gate message with its buttons; returns the message ``ts`` (raises ``SlackApiError``)."""
    response = web_client.chat_postMessage(
        channel=channel,
        text=gate_text(status, stage),
        blocks=build_gate_message(status, stage, patch_set_summary, approvers=approvers),
    )
    return str(response["ts"])


def post_stage_message(
    web_client: WebClient, *, channel: str, status: WaveStatus, stage: str, event: str, detail: str = ""
) -> str:
    """Post a stage started/halted/failed/completed/cancelled message; returns its ``ts``."""
    response = web_client.chat_postMessage(
        channel=channel,
        text=stage_text(status, stage, event, detail=detail),
        blocks=build_stage_message(status, stage, event, detail=detail),
    )
    return str(response["ts"])


# ============================================================================================ notifications


@dataclass(frozen=True)
class Transition:
    """Something about a stage worth a message."""

    kind: str
    """``GATE_WAITING``, ``STAGE_STARTED``, ``STAGE_COMPLETED``, ``STAGE_HALTED_EVENT``, ``STAGE_FAILED_EVENT``,
    ``STAGE_CANCELLED_EVENT`` or ``GATE_REJECTED``."""
    stage: str
    detail: str = ""
    """``resumed`` when a halted stage runs again."""


# Stage states collapse into phases; a message is due when a stage's phase changes. "soaking" counts as done:
# the stage's instances are patched, and soaking → succeeded must not announce the completion twice.
_PHASES = {
    STAGE_NOT_STARTED: "idle",
    STAGE_WAITING_APPROVAL: "gate",
    STAGE_WAITING_WINDOW: "active",
    STAGE_RUNNING: "active",
    STAGE_SOAKING: "done",
    STAGE_SUCCEEDED: "done",
    STAGE_HALTED: "halted",
    STAGE_ROLLED_BACK: "halted",
    STAGE_FAILED: "failed",
    STAGE_CANCELLED: "cancelled",
}
_PHASE_EVENTS = {
    "gate": GATE_WAITING,
    "active": STAGE_STARTED,
    "done": STAGE_COMPLETED,
    "halted": STAGE_HALTED_EVENT,
    "failed": STAGE_FAILED_EVENT,
    "cancelled": STAGE_CANCELLED_EVENT,
}
_LIVE_PHASES = ("gate", "active", "halted")


def transitions(previous: WaveStatus | None, current: WaveStatus) -> list[Transition]:
    """What changed between two snapshots of one wave, in stage order (pure).

    ``previous=None`` means "nothing announced yet" (a new wave, or a watcher that restarted): only what is
    live now is announced — a waiting gate, a running stage, a halted stage — not the history before it.
    Between two snapshots only the latest phase of each stage counts: a stage that started and finished
    between two refreshes is announced as completed.
    """
    if previous is not None and previous.wave_id != current.wave_id:
        raise ValueError(f"snapshots of two waves: {previous.wave_id} and {current.wave_id}")
    before = {s.name: _PHASES.get(s.state, "idle") for s in previous.stages} if previous is not None else None
    out: list[Transition] = []
    for st in current.stages:
        phase = _PHASES.get(st.state, "idle")
        if before is None:
            if phase in _LIVE_PHASES:
                out.append(Transition(_PHASE_EVENTS[phase], st.name))
            continue
        old = before.get(st.name, "idle")
        if phase == old:
            continue
        if phase == "idle":
            if old == "gate" and current.state == WAVE_FAILED:
                out.append(Transition(GATE_REJECTED, st.name))
            continue
        detail = "resumed" if phase == "active" and old == "halted" else ""
        out.append(Transition(_PHASE_EVENTS[phase], st.name, detail))
    return out


@dataclass(frozen=True)
class WaveContext:
    """What a gate message shows beyond the wave's status: the patch set and each gate's approvers."""

    patch_set_summary: str
    approvers: dict[str, list[str]] = field(default_factory=dict)
    """stage → approver entries."""
    channel: str | None = None
    """The plan's Slack channel, when it names one."""

    @classmethod
    def from_input(cls, inp: WaveInput) -> WaveContext:
        return cls(
            patch_set_summary=summarize_patches(inp.patch_set_id, inp.patches),
            approvers={s.name: list(s.approvers) for s in inp.stages if s.gate in ("approval", "analysis")},
            channel=inp.slack_channel,
        )


async def notify_transitions(
    previous: WaveStatus | None,
    current: WaveStatus,
    *,
    channel: str,
    web_client: WebClient,
    context: WaveContext | None = None,
) -> list[Transition]:
    """Post one message per :func:`transitions` change to ``channel``; returns those that were posted.

    A message Slack refuses (or cannot be reached for, after the client's retries) is logged and skipped,
    never raised: a refresh loop must keep running when Slack is down.

    Args:
        context: patch set summary and approvers for gate messages (:func:`wave_context`); None = the patch
            set id alone and no approver mentions.
    """
    posted: list[Transition] = []
    for change in transitions(previous, current):
        try:
            if change.kind == GATE_WAITING:
                await asyncio.to_thread(
                    post_gate_message,
                    web_client,
                    channel=channel,
                    status=current,
                    stage=change.stage,
                    patch_set_summary=(
                        context.patch_set_summary if context else f"`{escape(current.patch_set_id)}`"
                    ),
                    approvers=context.approvers.get(change.stage, []) if context else [],
                )
            else:
                await asyncio.to_thread(
                    post_stage_message,
                    web_client,
                    channel=channel,
                    status=current,
                    stage=change.stage,
                    event=change.kind,
                    detail=change.detail,
                )
        except (SlackClientError, OSError) as exc:
            logger.warning(
                "Slack: could not post %s of wave %s to %s: %s", change.kind, current.wave_id, channel, exc
            )
            continue
        posted.append(change)
    return posted


async def fetch_wave_input(client: Client, wave_id: str) -> WaveInput:
    """The input a wave was started with (its stages and approvers), from the first event of its history.

    The wave's status does not carry approvers, and the input never changes during a run, so its start event
    is the authoritative copy. Raises :class:`NotFoundError` for an unknown id or a workflow that is no wave.
    """
    handle = client.get_workflow_handle(wave_id)
    try:
        async for event in handle.fetch_history_events(page_size=1):
            if not event.HasField("workflow_execution_started_event_attributes"):
                break
            attrs = event.workflow_execution_started_event_attributes
            if attrs.workflow_type.name != "WaveWorkflow":
                break
            [inp] = await client.data_converter.decode(attrs.input.payloads, [WaveInput])
            return inp  # type: ignore[no-any-return]
    except RPCError as exc:
        if exc.status not in (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT):
            raise
    raise NotFoundError(f"patchflow has no wave {wave_id!r} (see 'patchflow wave list')")


async def wave_context(client: Client, wave_id: str) -> WaveContext:
    """The :class:`WaveContext` of a running wave (one history read; cache it per wave)."""
    return WaveContext.from_input(await fetch_wave_input(client, wave_id))


class WaveNotifier:
    """Posts what changed in each wave since the last snapshot it saw: drive it from a refresh loop.

    ``await notifier.observe(status)`` per wave per refresh. The first snapshot of a wave announces what is
    live (see :func:`transitions`); a wave's context (patch set summary, approvers) is read once from Temporal
    when ``client`` is given. Only stage names and states are kept between refreshes (a wave's instance map can
    hold thousands of entries), for at most ``max_waves`` waves (least recently observed forgotten first).
    """

    def __init__(
        self, *, web_client: WebClient, channel: str, client: Client | None = None, max_waves: int = 1000
    ) -> None:
        self._web_client = web_client
        self._channel = channel
        self._client = client
        self._max = max_waves
        self._seen: OrderedDict[str, tuple[WaveStatus, WaveContext | None]] = OrderedDict()

    async def observe(self, status: WaveStatus, *, client: Client | None = None) -> list[Transition]:
        """Post what changed since the wave's last snapshot; returns the posted changes.

        Args:
            client: the Temporal client to read the wave's context with, when the notifier was built without
                one (an API that connects lazily passes the one it has now).
        """
        previous, context = self._seen.get(status.wave_id, (None, None))
        client = client or self._client
        if context is None and client is not None:
            try:
                context = await wave_context(client, status.wave_id)
            except (PatchflowError, RPCError) as exc:
                logger.warning("Slack: no context for wave %s: %s", status.wave_id, exc)
        channel = (context.channel if context is not None and context.channel else None) or self._channel
        posted = (
            await notify_transitions(
                previous, status, channel=channel, web_client=self._web_client, context=context
            )
            if channel
            else []  # neither the plan nor the settings name a channel
        )
        slim = WaveStatus(
            wave_id=status.wave_id,
            plan_name=status.plan_name,
            state=status.state,
            patch_set_id=status.patch_set_id,
            stages=[StageStatus(name=s.name, state=s.state) for s in status.stages],
        )
        self._seen[status.wave_id] = (slim, context)
        self._seen.move_to_end(status.wave_id)
        while len(self._seen) > self._max:
            self._seen.popitem(last=False)
        return posted

    def forget(self, wave_id: str) -> None:
        """Drop a wave (once its final state was observed); observing it again announces what is live."""
        self._seen.pop(wave_id, None)

    def reset(self) -> None:
        """Forget every wave: the next snapshots announce what is live (a replica taking over, or handing
        over, the notifications)."""
        self._seen.clear()


# ============================================================================================ actions


@dataclass(frozen=True)
class GateClick:
    """An Approve or Reject click, read from a ``block_actions`` payload."""

    wave_id: str
    stage: str
    approve: bool
    user_id: str
    user_name: str
    team_id: str
    action_ts: str
    """Slack's time of the click: the same on a retry of the same click, new on every click."""
    channel_id: str | None = None
    message_ts: str | None = None
    message_blocks: list[dict[str, Any]] | None = None

    @property
    def verb(self) -> str:
        return "approve" if self.approve else "reject"

    @property
    def update_id(self) -> str:
        """The Update id: one per click, identical on Slack's retries of it (so they cannot decide twice)."""
        action = APPROVE_ACTION_ID if self.approve else REJECT_ACTION_ID
        return f"slack/{self.team_id}/{self.user_id}/{action}/{self.action_ts}"


def _bad(message: str) -> SlackRequestRejected:
    return SlackRequestRejected(message, status_code=400)


def _text_field(obj: Mapping[str, Any], key: str, what: str, *, required: bool = True) -> str:
    value = obj.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value or len(value) > _MAX_FIELD:
        raise _bad(f"payload: {what} is missing or malformed")
    return value


def _object(obj: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, dict) else {}


def parse_gate_click(body: bytes) -> GateClick | None:
    """The click in a verified request body; None for interactions that are not patchflow's gate buttons.

    Raises:
        SlackRequestRejected: (400) a malformed form, payload or button value.
    """
    try:
        form = urllib.parse.parse_qs(body.decode("utf-8"), max_num_fields=16)
    except (UnicodeDecodeError, ValueError):
        raise _bad("the body is not a form-encoded Slack interaction") from None
    values = form.get("payload")
    if not values or len(values) != 1:
        raise _bad("the form has no single 'payload' field")
    try:
        payload = json.loads(values[0])
    except ValueError:
        raise _bad("payload is not JSON") from None
    except RecursionError:  # signed, yet nested deeper than the parser recurses: no Slack payload is
        raise _bad("payload is nested too deeply to be a Slack interaction") from None
    if not isinstance(payload, dict):
        raise _bad("payload is not a JSON object")
    if payload.get("type") != "block_actions":
        return None
    actions = payload.get("actions")
    if not isinstance(actions, list):
        raise _bad("payload: actions is missing")
    ours = [
        a
        for a in actions
        if isinstance(a, dict) and a.get("action_id") in (APPROVE_ACTION_ID, REJECT_ACTION_ID)
    ]
    if not ours:
        return None
    action = ours[0]
    try:
        value = json.loads(_text_field(action, "value", "the button's value"))
    except (ValueError, RecursionError):
        raise _bad("payload: the button's value is not patchflow's") from None
    if not isinstance(value, dict):
        raise _bad("payload: the button's value is not patchflow's")
    user = payload.get("user")
    if not isinstance(user, dict):
        raise _bad("payload: user is missing")
    user_id = _text_field(user, "id", "user.id")
    if not _SLACK_ID.fullmatch(user_id):
        raise _bad("payload: user.id is not a Slack user id")
    team, container, message, channel = (
        _object(payload, k) for k in ("team", "container", "message", "channel")
    )
    blocks = message.get("blocks")
    return GateClick(
        wave_id=_text_field(value, "wave_id", "the button's wave id"),
        stage=_text_field(value, "stage", "the button's stage"),
        approve=action["action_id"] == APPROVE_ACTION_ID,
        user_id=user_id,
        user_name=(
            _text_field(user, "name", "user.name", required=False)
            or _text_field(user, "username", "user.username", required=False)
            or user_id
        ),
        team_id=_text_field(team, "id", "team.id", required=False)
        or str(user.get("team_id") or "-")[:_MAX_FIELD],
        action_ts=_text_field(action, "action_ts", "the action's action_ts"),
        channel_id=(
            _text_field(container, "channel_id", "container.channel_id", required=False)
            or _text_field(channel, "id", "channel.id", required=False)
            or None
        ),
        message_ts=(
            _text_field(container, "message_ts", "container.message_ts", required=False)
            or _text_field(message, "ts", "message.ts", required=False)
            or None
        ),
        message_blocks=[b for b in blocks if isinstance(b, dict)] if isinstance(blocks, list) else None,
    )


@dataclass(frozen=True)
class Reply:
    """How a click ended, as the endpoint's JSON answer and as the clicker's ephemeral message."""

    ok: bool
    outcome: str
    """``applied``, ``unauthorised``, ``refused``, ``not_found``, ``pending``, ``ignored`` or ``error``."""
    message: str
    who: str = ""
    """The approver entry the decision was made as (``applied`` only)."""

    def as_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "outcome": self.outcome, "message": self.message}


def _refusal_reason(exc: WorkflowUpdateFailedError) -> str:
    cause = exc.cause
    return str(getattr(cause, "message", None) or cause or exc)


class SlackActions:
    """The ``POST /slack/actions`` endpoint and its background work (see the module docstring).

    Args:
        settings: Slack settings (signing secret, bot token, API URL, windows) and the history database URL.
        get_client: returns the Temporal client (called per click, so the API may reconnect).
        web_client: the Slack client; default :func:`make_web_client` (None without a bot token).
        clock: Unix time for the signature window (tests pin it to probe the boundaries).
        record_history: also write the decision and an audit entry to the history database
            (``settings.database_url_resolved``); failures are logged, never shown to the clicker.
    """

    def __init__(
        self,
        *,
        settings: Settings,
        get_client: Callable[[], Awaitable[Client]],
        web_client: WebClient | None = None,
        clock: Callable[[], float] = time.time,
        record_history: bool = True,
    ) -> None:
        self._settings = settings
        self._get_client = get_client
        self._ack_seconds = settings.slack_ack_seconds
        self._history_url = settings.database_url_resolved if record_history else None
        self._verifier = (
            RequestVerifier(
                settings.slack_signing_secret.get_secret_value(),
                window_seconds=settings.slack_replay_window_seconds,
                clock=clock,
            )
            if settings.slack_signing_secret is not None
            and settings.slack_signing_secret.get_secret_value().strip()
            else None
        )
        if web_client is None and settings.slack_bot_token is not None:
            web_client = make_web_client(settings)
        self._web_client = web_client
        self._groups = (
            UserGroups(web_client, ttl_seconds=settings.slack_group_cache_seconds)
            if web_client is not None
            else None
        )
        self._tasks: set[asyncio.Task[None]] = set()

    def router(self) -> APIRouter:
        router = APIRouter(tags=["slack"])
        router.add_api_route(
            "/slack/actions",
            self.post,
            methods=["POST"],
            summary="Slack interactivity: Approve / Reject clicks on wave gate messages",
            description=(
                "Called by Slack, signed with the app's signing secret (X-Slack-Signature, "
                "X-Slack-Request-Timestamp). Answers within Slack's 3 s; the decision goes to the wave as an "
                "Update and the message is updated with the outcome."
            ),
            responses={
                200: {"description": "Handled: the JSON says how (the clicker also gets a Slack message)"},
                400: {"description": "Signed, but not a well-formed Slack interaction payload"},
                401: {
                    "description": "Missing or bad signature, stale or future timestamp, a replay, or Slack not "
                    "configured on this server"
                },
                413: {"description": "Body larger than a Slack interaction can be"},
            },
            openapi_extra={
                "parameters": [
                    {
                        "name": "X-Slack-Signature",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                    {
                        "name": "X-Slack-Request-Timestamp",
                        "in": "header",
                        "required": True,
                        "schema": {"type": "string"},
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/x-www-form-urlencoded": {
                            "schema": {
                                "type": "object",
                                "properties": {"payload": {"type": "string", "description": "JSON"}},
                                "required": ["payload"],
                            }
                        }
                    },
                },
            },
        )
        return router

    async def drain(self) -> None:
        """Wait for the background work of clicks already answered (shutdown, tests)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    # ------------------------------------------------------------------------------------------ endpoint

    async def post(self, request: Request) -> JSONResponse:
        """Verify, parse, decide within ``slack_ack_seconds``, answer; the follow-up runs in the background."""
        if self._verifier is None or self._web_client is None:
            missing = (
                "PATCHFLOW_SLACK_SIGNING_SECRET" if self._verifier is None else "PATCHFLOW_SLACK_BOT_TOKEN"
            )
            # 401, not 503: nothing can be verified, and a fuzzer (or a monitor) must not read it as a crash.
            logger.warning("Slack: a request to /slack/actions, but %s is not set", missing)
            message = (
                f"Slack is not configured on this server, so no request can be verified: set {missing} "
                "(see deploy/slack/README.md)"
            )
            await self._audit_unverified(request, message, 401)
            return _error(401, message)
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        body = await request.body()  # the raw bytes: the signature covers them exactly as sent
        if len(body) > MAX_BODY_BYTES:
            return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            self._verifier.verify(
                body,
                timestamp=request.headers.get(TIMESTAMP_HEADER),
                signature=request.headers.get(SIGNATURE_HEADER),
            )
            click = parse_gate_click(body)
        except SlackRequestRejected as exc:
            logger.info("Slack: refused a request to /slack/actions: %s", exc)
            await self._audit_unverified(request, str(exc), exc.status_code)
            return _error(exc.status_code, str(exc))
        if click is None:
            return JSONResponse(Reply(True, "ignored", "not a patchflow gate button").as_json())

        answer: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        task = asyncio.create_task(self._decide(click, answer), name=f"slack-click-{click.update_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        try:
            reply = await asyncio.wait_for(asyncio.shield(answer), timeout=self._ack_seconds)
        except TimeoutError:
            reply = Reply(
                True, "pending", "received; the message will show the outcome once the wave has answered"
            )
        return JSONResponse(reply.as_json())

    # ------------------------------------------------------------------------------------------ decision

    async def _decide(self, click: GateClick, answer: asyncio.Future[Reply]) -> None:
        """Apply the click, hand the answer to the waiting request, then tell Slack and the history."""
        try:
            # Bounded: a wave without a running worker never accepts the Update, and a click must not leave
            # a task behind forever. The Update itself may still be applied later; the message says so.
            reply = await asyncio.wait_for(self._apply(click), timeout=DECISION_TIMEOUT_SECONDS)
        except TimeoutError:
            reply = Reply(
                False,
                "error",
                f"wave {click.wave_id} did not answer within {DECISION_TIMEOUT_SECONDS:.0f} s (is a patchflow "
                f"worker running?); your {click.verb} may still be applied — check "
                f"'patchflow wave status {click.wave_id}' before clicking again",
            )
        except Exception:  # noqa: BLE001 - a click must never turn into a 500 or a silent failure
            logger.exception("Slack: click %s failed", click.update_id)
            reply = Reply(
                False,
                "error",
                f"patchflow could not process your click on wave {click.wave_id}; check "
                f"'patchflow wave status {click.wave_id}' before trying again",
            )
        if not answer.done():
            answer.set_result(reply)
        if reply.outcome in REFUSED_OUTCOMES:
            await self._audit_refusal(
                actor=f"{SLACK_USER_PREFIX}{click.user_id}",
                action=click.verb,
                reason=reply.message,
                wave_id=click.wave_id,
                stage=click.stage,
                detail={
                    "slack_user_name": click.user_name,
                    "update_id": click.update_id,
                    "outcome": reply.outcome,
                },
            )
        logger.info(
            "Slack: %s of %s/%s by %s (%s): %s — %s",
            click.verb,
            click.wave_id,
            click.stage,
            click.user_id,
            click.user_name,
            reply.outcome,
            reply.message,
        )
        try:
            if reply.outcome == "applied":
                await self._announce(click, reply)
            else:
                await self._tell(click, reply.message)
        except Exception:  # noqa: BLE001 - the decision stands; a failed follow-up is only logged
            logger.exception("Slack: follow-up of click %s failed", click.update_id)

    async def _apply(self, click: GateClick) -> Reply:
        assert self._groups is not None
        where = f"stage {click.stage!r} of wave {click.wave_id}"
        try:
            client = await self._get_client()
        except Exception as exc:  # noqa: BLE001 - whatever the connection error, the clicker hears why
            return Reply(
                False, "error", f"patchflow cannot reach Temporal right now ({exc}); nothing changed"
            )
        try:
            inp = await fetch_wave_input(client, click.wave_id)
        except NotFoundError as exc:
            return Reply(False, "not_found", f"{exc}; nothing changed")
        stage = next((s for s in inp.stages if s.name == click.stage), None)
        if stage is None:
            names = ", ".join(s.name for s in inp.stages)
            return Reply(
                False,
                "not_found",
                f"wave {click.wave_id} has no stage {click.stage!r} (its stages: {names}); nothing changed",
            )
        if stage.gate not in ("approval", "analysis"):  # analysis: an inconclusive one waits for approval
            return Reply(False, "refused", f"{where} has no approval gate; nothing changed")
        match = await match_approver(click.user_id, stage.approvers, self._groups)
        if match.entry is None:
            return Reply(
                False, "unauthorised", f"you may not {click.verb} {where}: {match.why}. Nothing changed."
            )

        decision = GateDecision(stage=click.stage, who=match.entry, comment=f"via Slack by {click.user_name}")
        handle = client.get_workflow_handle(click.wave_id)
        try:
            update = await handle.start_update(
                WaveWorkflow.approve if click.approve else WaveWorkflow.reject,
                decision,
                id=click.update_id,
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            )
            result = await update.result()
        except WorkflowUpdateFailedError as exc:
            return Reply(False, "refused", f"{click.verb} refused: {_refusal_reason(exc)}; nothing changed")
        except RPCError as exc:
            if "already completed" in exc.message or exc.status == RPCStatusCode.NOT_FOUND:
                return Reply(False, "refused", f"wave {click.wave_id} has already ended; nothing changed")
            raise
        return Reply(True, "applied", str(result), who=match.entry)

    # ------------------------------------------------------------------------------------------ refusals

    async def _audit_unverified(self, request: Request, reason: str, status_code: int) -> None:
        """A request refused before anyone could be identified (forged, stale, replayed, malformed, or Slack
        not configured): its payload is not trusted, so the actor is ``slack:unverified``."""
        await self._audit_refusal(
            actor=UNVERIFIED_ACTOR,
            action="slack.request",
            reason=reason,
            detail={"remote": request.client.host if request.client else None, "status": status_code},
        )

    async def _audit_refusal(
        self,
        *,
        actor: str,
        action: str,
        reason: str,
        wave_id: str | None = None,
        stage: str | None = None,
        detail: dict[str, Any] | None = None,
    ) -> None:
        """Record a refused attempt in the audit log (rate-limited; best effort: never fails the request)."""
        if self._history_url is None:
            return
        url = self._history_url

        def write() -> bool:
            from patchflow.store import db

            with db.translate_errors(url), db.open_session(db.get_engine(url)) as session:
                return db.append_refusal(
                    session,
                    actor=actor,
                    action=action,
                    reason=reason,
                    wave_id=wave_id,
                    stage=stage,
                    detail={"via": "slack", **(detail or {})},
                )

        try:
            if not await asyncio.to_thread(write):
                logger.warning(
                    "Slack: refused %s by %s not audited: too many refusals this minute", action, actor
                )
        except Exception as exc:  # noqa: BLE001 - the refusal stands; its record is best effort
            logger.warning("Slack: refused %s by %s not audited: %s", action, actor, exc)

    # ------------------------------------------------------------------------------------------ follow-up

    async def _tell(self, click: GateClick, text: str) -> None:
        """An ephemeral message: only the clicker sees it, in the channel of the message they clicked."""
        if self._web_client is None or click.channel_id is None:
            return
        try:
            await asyncio.to_thread(
                self._web_client.chat_postEphemeral,
                channel=click.channel_id,
                user=click.user_id,
                text=escape(text),  # names from plans and payloads must not turn into mentions or links
            )
        except (SlackClientError, OSError) as exc:
            logger.warning("Slack: could not tell %s why (%s): %s", click.user_id, text, exc)

    async def _announce(self, click: GateClick, reply: Reply) -> None:
        """Replace the buttons with the outcome and the approver, and record the decision."""
        verb = "Approved" if click.approve else "Rejected"
        emoji = "✅" if click.approve else "🚫"
        at = _click_time(click)
        as_entry = f" as {mention(reply.who)}" if reply.who != f"{SLACK_USER_PREFIX}{click.user_id}" else ""
        outcome = (
            f"{emoji} *{verb}* by <@{click.user_id}>{as_entry} at {at:%Y-%m-%d %H:%M:%S} UTC — "
            f"{escape(reply.message)}"
        )
        if self._web_client is not None and click.channel_id and click.message_ts:
            try:
                await asyncio.to_thread(
                    self._web_client.chat_update,
                    channel=click.channel_id,
                    ts=click.message_ts,
                    text=f"{verb}: stage {click.stage} of wave {click.wave_id} by {click.user_name}",
                    blocks=build_outcome_blocks(click.message_blocks, outcome),
                )
            except (SlackClientError, OSError) as exc:
                logger.warning("Slack: could not update the message of wave %s: %s", click.wave_id, exc)
        if self._history_url is not None:
            try:
                await asyncio.to_thread(self._record, click, reply, at)
            except Exception as exc:  # noqa: BLE001 - the wave decided; history is best effort here
                logger.warning(
                    "Slack: decision %s not recorded in the history database: %s", click.update_id, exc
                )

    def _record(self, click: GateClick, reply: Reply, at: datetime) -> None:
        """Decision row and audit entry; both idempotent (a Slack retry carries the same click time and id)."""
        from patchflow.store import db

        url = self._history_url or ""
        with db.translate_errors(url), db.open_session(db.get_engine(url)) as session:
            db.record_decision(
                session,
                wave_id=click.wave_id,
                stage=click.stage,
                who=reply.who,
                decision=click.verb,
                via="slack",
                at=at,
                comment=f"via Slack by {click.user_name}",
            )
            db.append_audit(
                session,
                actor=reply.who,
                action=click.verb,
                at=at,
                wave_id=click.wave_id,
                stage=click.stage,
                detail={
                    "via": "slack",
                    "slack_user": click.user_id,
                    "slack_user_name": click.user_name,
                    "update_id": click.update_id,
                },
                key=click.update_id,
            )


def _click_time(click: GateClick) -> datetime:
    try:
        return datetime.fromtimestamp(float(click.action_ts), UTC)
    except (ValueError, OverflowError, OSError):
        return datetime.now(UTC)


def _error(status_code: int, message: str) -> JSONResponse:
    return JSONResponse({"ok": False, "error": message}, status_code=status_code)


def build_slack_router(
    *,
    settings: Settings,
    get_client: Callable[[], Awaitable[Client]],
    web_client: WebClient | None = None,
    clock: Callable[[], float] = time.time,
    record_history: bool = True,
) -> APIRouter:
    """The ``POST /slack/actions`` router for the API (``app.include_router(build_slack_router(...))``).

    Safe to include when Slack is not configured: the route then answers 401 to everything and trusts nothing.
    """
    return SlackActions(
        settings=settings,
        get_client=get_client,
        web_client=web_client,
        clock=clock,
        record_history=record_history,
    ).router()
