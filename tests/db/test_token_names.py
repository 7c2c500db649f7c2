"""A token's name is the identity gates and the audit log see, so it can never stand for someone else: no
Slack namespace (``slack:U…`` would answer a gate meant for that Slack user), no second active token of the
same name — checked atomically on SQLite and PostgreSQL — and a token named so before the rule existed
authenticates no more."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlmodel import Session

from patchflow.core.approvers import approver_problem, token_name_problem
from patchflow.errors import InputError
from patchflow.store import db
from tests.db.test_db import cli


@pytest.mark.parametrize(
    "name",
    [
        "slack:U0APPROVER",
        "slack-group:S0OPS",
        "slack:",
        "slack:u0alice",
        "cli:root",
        "bob smith",
        "-x",
        "a\nb",
    ],
)
def test_names_that_could_pose_as_someone_else_are_refused(session: Session, name: str) -> None:
    with pytest.raises(InputError, match="^name: "):
        db.create_token(session, name=name, role="approver")
    assert db.list_tokens(session) == []


def test_slack_namespaces_say_why(session: Session) -> None:
    with pytest.raises(InputError, match="slack: namespace of Slack identities"):
        db.create_token(session, name="slack:U0APPROVER", role="approver")
    with pytest.raises(InputError, match="slack-group: namespace"):
        db.create_token(session, name="slack-group:S0OPS", role="approver")


def test_one_active_token_per_name(session: Session) -> None:
    first_id, _ = db.create_token(session, name="alice", role="approver")
    with pytest.raises(InputError, match=f"active token {first_id} is already named 'alice'.*revoke"):
        db.create_token(session, name="alice", role="admin")
    db.create_token(session, name="alice.ci", role="operator")  # another name is another identity
    db.revoke_token(session, token_id=first_id)
    second_id, _ = db.create_token(session, name="alice", role="approver")  # rotation: revoke, then create
    active = [(t.id, t.name) for t in db.list_tokens(session, include_revoked=False)]
    assert (second_id, "alice") in active and (first_id, "alice") not in active


def test_concurrent_creates_of_one_name_leave_one_active_token(url: str) -> None:
    outcomes: list[str] = []

    def create() -> None:
        engine = db.make_engine(url)
        try:
            with db.open_session(engine) as session:
                db.create_token(session, name="racer", role="viewer")
                outcomes.append("created")
        except InputError:
            outcomes.append("refused")
        finally:
            engine.dispose()

    threads = [threading.Thread(target=create) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["created", "refused", "refused", "refused"]


def test_a_token_named_like_a_slack_user_before_the_rule_authenticates_no_more(
    session: Session, engine: sa.Engine
) -> None:
    _, token = db.create_token(session, name="impostor", role="approver")
    assert db.verify_token(session, token=token) is db.Role.approver
    with engine.begin() as connection:  # as an older patchflow could have created it
        connection.execute(sa.text("UPDATE api_tokens SET name = 'slack:U0APPROVER'"))
    session.expire_all()
    assert db.verify_token(session, token=token) is None


def test_cli_refuses_a_slack_name_and_a_duplicate(url: str, tmp_path: Path) -> None:
    proc = cli(
        "token", "create", "--name", "slack:U0APPROVER", "--role", "approver", url=url, data_dir=tmp_path
    )
    assert proc.returncode == 2 and "slack: namespace of Slack identities" in proc.stderr
    assert (
        cli("token", "create", "--name", "ops", "--role", "approver", url=url, data_dir=tmp_path).returncode
        == 0
    )
    proc = cli("token", "create", "--name", "ops", "--role", "admin", url=url, data_dir=tmp_path)
    assert proc.returncode == 2 and "is already named 'ops'" in proc.stderr


@pytest.mark.parametrize(
    ("entry", "words"),
    [
        ("slack:U0123ABCD", None),
        ("slack:W0123ABCD", None),
        ("slack-group:S0456EFGH", None),
        ("ops-lead", None),
        ("alice@example.com", None),
        ("slack:u0123abcd", "no Slack user: write slack: and the member ID"),
        ("slack:S0456EFGH", "no Slack user"),
        ("slack-group:ops", "no Slack user group: write slack-group: and the group's ID"),
        ("slak:U0123ABCD", "only slack:U… and slack-group:S… entries have a ':'"),
        ("bob smith", "no name patchflow can match"),
    ],
)
def test_approver_entries(entry: str, words: str | None) -> None:
    problem = approver_problem(entry)
    assert (problem is None) if words is None else (problem is not None and words in problem)
    if words is None and not entry.startswith("slack"):
        assert token_name_problem(entry) is None  # every plain approver can be a token's name
