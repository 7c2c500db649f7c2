"""The history database on SQLite and PostgreSQL: migrations, idempotent writes, the audit log, UTC
timestamps, API tokens, filters, and the ``patchflow db`` / ``patchflow token`` commands end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from sqlmodel import Session, SQLModel, func, select

from patchflow.core.evaluation import PatchSet, PinnedPatch
from patchflow.core.wavemodel import AuditEntry, StageStatus, WaveStatus
from patchflow.errors import InputError, NotFoundError
from patchflow.store import db
from tests.db.conftest import TABLES
from tests.test_cli import run as run_cli

T0 = datetime(2026, 11, 10, 2, 0, tzinfo=UTC)


def status(
    wave_id: str = "wave-web-1",
    *,
    plan: str = "web",
    state: str = "running",
    started: datetime = T0,
    canary: str = "running",
    instances: dict[str, str] | None = None,
    audit: list[AuditEntry] | None = None,
    kind: str = "standard",
) -> WaveStatus:
    """A two-stage wave snapshot: canary (with instances) and prod (not started)."""
    return WaveStatus(
        wave_id=wave_id,
        plan_name=plan,
        state=state,
        patch_set_id="ps-0123456789abcdef01234567",
        stages=[
            StageStatus(
                name="canary",
                state=canary,
                instances=instances if instances is not None else {"i-2": "succeeded", "i-1": "in_flight"},
                details={"i-2": "2 packages"},
                errors=0,
                max_errors=1,
                max_concurrency=2,
                window_start=started,
                window_cutoff=started + timedelta(hours=1),
                note="",
            ),
            StageStatus(name="prod"),
        ],
        audit=audit if audit is not None else [AuditEntry(at=started, who="alice", action="start")],
        kind=kind,
    )


def count(session: Session, model: type[SQLModel]) -> int:
    return session.exec(select(func.count()).select_from(model)).one()


def patch_set() -> PatchSet:
    patches = (PinnedPatch("openssl", "x86_64", "3.0.8-1.amzn2023.0.14", severity="Critical", security=True),)
    baseline = {"Name": "web", "OperatingSystem": "AMAZON_LINUX_2023"}
    evaluated = T0 - timedelta(days=1)
    return PatchSet(
        id=PatchSet.content_id(baseline, "sha256:abc", evaluated, patches),
        family="rpm",
        baseline=baseline,
        evaluated_at=evaluated,
        catalog_digest="sha256:abc",
        patches=patches,
    )


# ---------------------------------------------------------------------------------------------- migrations


def test_migrations_upgrade_an_empty_database_and_match_the_models(empty_url: str) -> None:
    assert db.current_revision(empty_url) is None
    assert db.upgrade(empty_url) == db.head_revision()

    engine = db.make_engine(empty_url)
    try:
        with engine.connect() as connection:
            assert set(TABLES) <= set(sa.inspect(connection).get_table_names())
    finally:
        engine.dispose()
    # `alembic check`: autogenerate against the upgraded database finds nothing to do.
    config = db.alembic_config()
    config.attributes["database_url"] = empty_url
    command.check(config)

    # The migration also goes down cleanly (triggers and functions included) and up again.
    command.downgrade(config, "base")
    assert db.current_revision(empty_url) is None
    assert db.upgrade(empty_url) == db.head_revision()


def test_revision_0002_gives_waves_recorded_before_it_their_kind(empty_url: str) -> None:
    """Emergency waves are recognised by their ids; the rest are standard. Down again with rows that
    reference the waves (a batch-mode drop would have to recreate the referenced table)."""
    db.upgrade(empty_url, revision="0001")
    ids = {
        "wave-web-20261110T020000Z-emergency-0a1b2c": "emergency",  # as `patchflow emergency` names them
        "wave-web-20261110T020000Z-0a1b2c": "standard",
        "wave-db-emergency-1-20261110T020000Z-0a1b2c": "standard",  # a plan named db-emergency-1
    }
    engine = db.make_engine(empty_url)
    try:
        with engine.begin() as connection:
            for wave_id in ids:
                connection.execute(
                    sa.text(
                        "INSERT INTO waves (id, plan, state, patch_set_id, started_by, started_at, reason, "
                        "updated_at) VALUES (:id, 'web', 'succeeded', 'ps-1', 'alice', :at, '', :at)"
                    ),
                    {"id": wave_id, "at": T0},
                )
                connection.execute(
                    sa.text(
                        "INSERT INTO stages (wave_id, name, position, state, errors, note, updated_at) "
                        "VALUES (:id, 'canary', 0, 'succeeded', 0, '', :at)"
                    ),
                    {"id": wave_id, "at": T0},
                )
        assert db.upgrade(empty_url) == db.head_revision()
        with db.open_session(engine) as session:
            assert {w.id: w.kind for w in db.list_waves(session)} == ids
            assert [w.id for w in db.list_waves(session, kind="emergency")] == [
                "wave-web-20261110T020000Z-emergency-0a1b2c"
            ]
        config = db.alembic_config()
        config.attributes["database_url"] = empty_url
        command.downgrade(config, "0001")
        with engine.connect() as connection:
            columns = {c["name"] for c in sa.inspect(connection).get_columns("waves")}
            assert "kind" not in columns and "state" in columns
            assert connection.execute(sa.text("SELECT count(*) FROM stages")).scalar_one() == 3
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------- waves


def test_recording_the_same_wave_status_twice_writes_each_row_once(session: Session) -> None:
    snapshot = status()
    db.record_wave_status(session, status=snapshot, at=T0 + timedelta(minutes=5))
    db.record_wave_status(session, status=snapshot, at=T0 + timedelta(minutes=5))  # a retried activity

    assert [count(session, m) for m in (db.Wave, db.Stage, db.StageInstance, db.AuditRecord)] == [1, 2, 2, 1]
    wave = db.get_wave(session, wave_id="wave-web-1")
    assert (wave.plan, wave.state, wave.started_by, wave.started_at, wave.finished_at) == (
        "web",
        "running",
        "alice",
        T0,
        None,
    )
    assert [s.name for s in wave.stages] == ["canary", "prod"]
    canary = wave.stages[0]
    assert [(i.instance_id, i.state, i.detail) for i in canary.instances] == [
        ("i-2", "succeeded", "2 packages"),  # dispatch order, not alphabetical
        ("i-1", "in_flight", ""),
    ]
    assert (canary.max_errors, canary.max_concurrency, canary.window_cutoff) == (
        1,
        2,
        T0 + timedelta(hours=1),
    )


def test_a_newer_snapshot_updates_and_a_stale_one_is_ignored(session: Session) -> None:
    audit = [AuditEntry(at=T0, who="alice", action="start")]
    db.record_wave_status(session, status=status(audit=audit), at=T0 + timedelta(minutes=1))
    halted = status(
        state="halted",
        canary="halted",
        instances={"i-2": "succeeded", "i-1": "failed"},
        audit=[*audit, AuditEntry(at=T0 + timedelta(minutes=9), who="bob", action="halt", stage="canary")],
    )
    db.record_wave_status(session, status=halted, at=T0 + timedelta(minutes=10))
    # A slow retry of the first snapshot's activity arrives last: it must not move the wave backwards.
    db.record_wave_status(session, status=status(audit=audit), at=T0 + timedelta(minutes=1))

    wave = db.get_wave(session, wave_id="wave-web-1")
    assert (wave.state, wave.stages[0].state) == ("halted", "halted")
    assert {i.instance_id: i.state for i in wave.stages[0].instances} == {"i-2": "succeeded", "i-1": "failed"}
    assert [(a.actor, a.action, a.stage) for a in db.list_audit(session, wave_id="wave-web-1")] == [
        ("alice", "start", None),
        ("bob", "halt", "canary"),
    ]


def test_finished_at_is_the_first_final_snapshot(session: Session) -> None:
    done = status(state="succeeded", canary="succeeded", instances={"i-1": "succeeded"})
    db.record_wave_status(session, status=done, at=T0 + timedelta(hours=1))
    db.record_wave_status(session, status=done, at=T0 + timedelta(hours=2))  # re-read result, later
    assert db.get_wave(session, wave_id="wave-web-1").finished_at == T0 + timedelta(hours=1)


def test_unknown_wave_is_not_found(session: Session) -> None:
    with pytest.raises(NotFoundError, match="no wave 'nope'"):
        db.get_wave(session, wave_id="nope")


def record_started(session: Session, wave_id: str, started: datetime, **fields: Any) -> None:
    """Record the snapshot of a wave taken when it started (``fields``: see :func:`status`)."""
    db.record_wave_status(session, status=status(wave_id, started=started, **fields), at=started)


def listed(session: Session) -> Callable[..., list[str]]:
    """``ids(**filters)``: the ids ``list_waves`` returns."""
    return lambda **filters: [w.id for w in db.list_waves(session, **filters)]


def test_list_waves_filters_by_state_plan_and_start(session: Session) -> None:
    for wave_id, plan, state, day in [
        ("w1", "web", "running", 0),
        ("w2", "web", "succeeded", 1),
        ("w3", "db", "halted", 2),
    ]:
        record_started(session, wave_id, T0 + timedelta(days=day), plan=plan, state=state)
    ids = listed(session)

    assert ids() == ["w3", "w2", "w1"]  # newest first
    assert ids(state="running") == ["w1"]
    assert ids(plan="web") == ["w2", "w1"]
    assert ids(since=T0 + timedelta(days=1)) == ["w3", "w2"]
    assert ids(plan="web", since=T0 + timedelta(hours=1), state="succeeded") == ["w2"]
    assert ids(plan="web", state="halted") == []
    assert ids(limit=1, offset=1) == ["w2"]
    # `since` in another zone means the same instant.
    assert ids(since=(T0 + timedelta(days=1)).astimezone(timezone(timedelta(hours=-5)))) == ["w3", "w2"]
    with pytest.raises(InputError, match="unknown wave state 'done'"):
        db.list_waves(session, state="done")
    with pytest.raises(InputError, match="no timezone"):
        db.list_waves(session, since=datetime(2026, 11, 10))
    with pytest.raises(InputError, match="limit"):
        db.list_waves(session, limit=0)


def test_waves_record_their_kind_and_list_by_kind_and_finished(session: Session) -> None:
    for wave_id, kind, state, hour in [
        ("w-std-done", "standard", "succeeded", 0),
        ("w-emergency", "emergency", "succeeded", 1),
        ("w-std-failed", "standard", "failed", 2),
        ("w-std-waiting", "standard", "waiting_approval", 3),
        ("w-emergency-running", "emergency", "running", 4),
    ]:
        record_started(session, wave_id, T0 + timedelta(hours=hour), state=state, kind=kind)
    ids = listed(session)

    assert db.get_wave(session, wave_id="w-emergency").kind == "emergency"
    assert db.get_wave(session, wave_id="w-std-done").kind == "standard"
    assert ids(kind="emergency") == ["w-emergency-running", "w-emergency"]
    assert ids(kind="standard") == ["w-std-waiting", "w-std-failed", "w-std-done"]
    assert ids(finished=True) == ["w-std-failed", "w-emergency", "w-std-done"]
    assert ids(finished=False) == ["w-emergency-running", "w-std-waiting"]
    # What `compliance report` asks for: the plan's latest finished standard wave.
    assert ids(plan="web", kind=db.WaveKind.standard, finished=True, limit=1) == ["w-std-failed"]
    with pytest.raises(InputError, match="kind: unknown value 'urgent'; choose one of standard, emergency"):
        db.list_waves(session, kind="urgent")


# ---------------------------------------------------------------------------------------------- results


def test_instance_results_are_idempotent_and_a_finished_result_is_never_undone(session: Session) -> None:
    key: dict[str, Any] = {"wave_id": "w1", "stage": "canary", "instance_id": "i-1", "attempt": 0}
    started, finished = T0, T0 + timedelta(minutes=3)
    db.record_instance_result(session, **key, status="in_flight", started_at=started, command_id="cmd-1")
    final: dict[str, Any] = {
        "status": "succeeded",
        "started_at": started + timedelta(seconds=30),  # a retry's own start: the first one is kept
        "finished_at": finished,
        "detail": "2 packages",
        "versions_before": {"openssl.x86_64": "3.0.8-1"},
        "versions_after": {"openssl.x86_64": "3.0.8-2"},
    }
    db.record_instance_result(session, **key, **final)
    db.record_instance_result(session, **key, **final)
    db.record_instance_result(session, **key, status="in_flight", started_at=started)  # a late retry
    db.record_instance_result(
        session, **{**key, "attempt": 1}, status="failed", started_at=T0, finished_at=T0
    )
    db.record_instance_result(session, **key, operation="restore", status="succeeded", started_at=T0)

    rows = db.list_instance_results(session, wave_id="w1")
    assert [(r.attempt, r.operation, r.status) for r in rows] == [
        (0, "install", "succeeded"),
        (0, "restore", "succeeded"),
        (1, "install", "failed"),
    ]
    first = rows[0]
    assert (first.started_at, first.finished_at, first.command_id) == (started, finished, "cmd-1")
    assert (first.versions_before, first.versions_after) == (
        {"openssl.x86_64": "3.0.8-1"},
        {"openssl.x86_64": "3.0.8-2"},
    )
    assert db.list_instance_results(session, wave_id="w1", stage="canary", instance_id="i-9") == []
    with pytest.raises(InputError, match="operation"):
        db.record_instance_result(session, **key, operation="reboot", status="x", started_at=T0)


def test_patch_sets_are_saved_once_and_verified_on_read(session: Session) -> None:
    pinned = patch_set()
    assert db.save_patch_set(session, patch_set=pinned) == pinned.id
    assert db.save_patch_set(session, patch_set=pinned) == pinned.id
    assert count(session, db.PatchSetRecord) == 1
    assert db.get_patch_set(session, patch_set_id=pinned.id) == pinned

    tampered = {**pinned.to_json(), "patches": [{**pinned.patches[0].to_json(), "version": "3.0.9-1"}]}
    session.exec(sa.update(db.PatchSetRecord).values(content=tampered))
    session.commit()
    with pytest.raises(InputError, match="was modified"):
        db.get_patch_set(session, patch_set_id=pinned.id)
    with pytest.raises(NotFoundError):
        db.get_patch_set(session, patch_set_id="ps-nope")


def test_gate_decisions_are_idempotent_and_validated(session: Session) -> None:
    decision: dict[str, Any] = {
        "wave_id": "w1",
        "stage": "prod",
        "who": "carol",
        "at": T0,
        "comment": "looks good",
    }
    db.record_decision(session, **decision, decision="approve", via="slack")
    db.record_decision(session, **decision, decision="approve", via="slack")
    db.record_decision(
        session, **{**decision, "who": "dave", "at": T0 - timedelta(minutes=1)}, decision="reject", via="cli"
    )
    assert [(d.who, d.decision, d.via) for d in db.list_decisions(session, wave_id="w1")] == [
        ("dave", "reject", "cli"),
        ("carol", "approve", "slack"),
    ]
    with pytest.raises(InputError, match="via: unknown value 'email'; choose one of cli, api, slack"):
        db.record_decision(session, **decision, decision="approve", via="email")
    with pytest.raises(InputError, match="decision: unknown value 'maybe'"):
        db.record_decision(session, **decision, decision="maybe", via="api")


# ---------------------------------------------------------------------------------------------- audit log


def test_audit_log_is_ordered_and_append_only(session: Session) -> None:
    db.append_audit(session, at=T0 + timedelta(seconds=2), actor="alice", action="halt", wave_id="w1")
    db.append_audit(
        session, at=T0, actor="bob", action="approve", wave_id="w1", stage="prod", detail={"n": 1}
    )
    db.append_audit(session, at=T0, actor="carol", action="token.create")  # same instant: append order
    db.append_audit(session, at=T0, actor="x", action="resume", key="retry-1")
    db.append_audit(session, at=T0, actor="x", action="resume", key="retry-1")  # a retried writer
    assert [(a.actor, a.action) for a in db.list_audit(session)] == [
        ("bob", "approve"),
        ("carol", "token.create"),
        ("x", "resume"),
        ("alice", "halt"),
    ]
    assert [a.actor for a in db.list_audit(session, wave_id="w1")] == ["bob", "alice"]
    assert [a.actor for a in db.list_audit(session, since=T0 + timedelta(seconds=1))] == ["alice"]
    assert db.list_audit(session, wave_id="w1")[0].detail == {"n": 1}

    # No function changes or removes an entry…
    public = [name for name, value in vars(db).items() if callable(value) and not name.startswith("_")]
    assert [name for name in public if "audit" in name] == [
        "append_audit",
        "audit_row_hash",
        "verify_audit_chain",
        "list_audit",
    ]
    # (the one remover: payload blobs that no Temporal history names any more — its own table, not the log)
    removers = [name for name in public if re.match(r"(update|delete|remove|edit|purge|prune)_", name)]
    assert removers == ["prune_payload_blobs"]
    # …and the database refuses it from anyone else.
    table = db.AuditRecord.__table__  # type: ignore[attr-defined]
    for statement in (sa.update(table).values(actor="mallory"), sa.delete(table)):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            session.exec(statement)
        session.rollback()
    assert count(session, db.AuditRecord) == 4
    with pytest.raises(InputError):
        db.append_audit(session, actor=" ", action="halt")


# ---------------------------------------------------------------------------------------------- time


def test_timestamps_are_stored_and_returned_in_utc(session: Session) -> None:
    paris = timezone(timedelta(hours=1))
    local = datetime(2026, 11, 10, 3, 0, tzinfo=paris)  # = T0
    db.record_wave_status(session, status=status(started=local), at=local)
    wave = db.get_wave(session, wave_id="wave-web-1")
    for value in (wave.started_at, wave.stages[0].window_start):
        assert value == T0
        assert value is not None and value.utcoffset() == timedelta(0)
    db.append_audit(session, at=local, actor="alice", action="halt")
    entry = db.list_audit(session)[-1]
    assert (entry.at, entry.at.tzinfo) == (T0, UTC)

    with pytest.raises(InputError, match="no timezone"):
        db.record_wave_status(session, status=status(started=datetime(2026, 11, 10)))
    with pytest.raises(InputError, match="no timezone"):
        db.append_audit(session, at=datetime(2026, 11, 10), actor="alice", action="halt")
    if session.get_bind().dialect.name == "postgresql":
        columns = {c["name"]: c["type"] for c in sa.inspect(session.connection()).get_columns("waves")}
        assert getattr(columns["started_at"], "timezone", False), "timestamp with time zone"


# ---------------------------------------------------------------------------------------------- tokens


def test_tokens_are_hashed_and_verified(session: Session) -> None:
    token_id, token = db.create_token(session, name="ci", role="operator", at=T0)
    secret = token.split("_", 2)[2]
    assert token.startswith(f"pft_{token_id}_") and len(secret) >= 40

    row = session.connection().execute(sa.text("SELECT * FROM api_tokens")).one()
    stored = " ".join(str(value) for value in row)
    assert secret not in stored and token not in stored
    assert row.secret_hash.startswith("scrypt$")

    assert db.verify_token(session, token=token, at=T0 + timedelta(minutes=5)) is db.Role.operator
    assert db.list_tokens(session)[0].last_used_at == T0 + timedelta(minutes=5)
    wrong = token[:-1] + ("A" if token[-1] != "A" else "B")
    other_id = f"pft_{'0' * 12}_{secret}"
    for bad in (wrong, other_id, "", "pft_", f"pft_{token_id}", f"Bearer {token}", secret):
        assert db.verify_token(session, token=bad) is None, bad

    revoked = db.revoke_token(session, token_id=token_id, at=T0 + timedelta(hours=1))
    assert (revoked.revoked, revoked.revoked_at) == (True, T0 + timedelta(hours=1))
    assert db.verify_token(session, token=token) is None
    assert db.revoke_token(session, token_id=token_id).revoked_at == T0 + timedelta(hours=1)  # no-op
    assert db.list_tokens(session, include_revoked=False) == []
    assert "secret_hash" not in db.TokenPublic.model_fields
    with pytest.raises(NotFoundError, match="patchflow token list"):
        db.revoke_token(session, token_id="nope")


def test_token_input_is_validated(session: Session) -> None:
    with pytest.raises(
        InputError, match="role: unknown value 'root'; choose one of viewer, operator, approver, admin"
    ):
        db.create_token(session, name="ci", role="root")
    with pytest.raises(InputError, match="name"):
        db.create_token(session, name="  ", role="viewer")
    assert count(session, db.ApiToken) == 0


# ---------------------------------------------------------------------------------------------- errors


def test_unusable_databases_give_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="is not a database URL"):
        db.make_engine("nonsense")
    with pytest.raises(InputError, match="supports sqlite and postgresql, not 'mysql'"):
        db.make_engine("mysql://u:pw@host/db")
    unreachable = "postgresql://postgres:s3cret@127.0.0.1:1/test"
    with pytest.raises(
        db.DatabaseError,
        match=r"cannot use the database at postgresql://postgres:\*\*\*@127.0.0.1:1/test: connection failed",
    ) as caught:
        db.current_revision(unreachable)
    assert "s3cret" not in str(caught.value)
    (tmp_path / "file").write_text("")
    with pytest.raises(db.DatabaseError, match="PATCHFLOW_DATABASE_URL"):
        db.upgrade(f"sqlite:///{tmp_path / 'file' / 'patchflow.db'}")

    empty = f"sqlite:///{tmp_path / 'empty.db'}"
    with pytest.raises(
        db.DatabaseError,
        match=f"schema revision none, this patchflow needs {db.head_revision()}; run 'patchflow db upgrade'",
    ):
        db.require_current(empty)
    engine = db.make_engine(empty)
    try:
        with (
            pytest.raises(db.DatabaseError, match="no patchflow schema"),
            db.translate_errors(empty),
            db.open_session(engine) as session,
        ):
            db.list_waves(session)
    finally:
        engine.dispose()


# ---------------------------------------------------------------------------------------------- CLI


def cli(*args: str, url: str | None, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """``patchflow ARGS`` on database ``url`` (None: the default), no other PATCHFLOW_ setting inherited."""
    inherited = {k: None for k in os.environ if k.startswith("PATCHFLOW_") and k != "PATCHFLOW_DATA_DIR"}
    overrides: dict[str, str | None] = {**inherited, "PATCHFLOW_DATABASE_URL": url}
    return run_cli(*args, data_dir=data_dir, env_overrides=overrides, timeout=60)


def test_cli_upgrades_and_manages_tokens(empty_url: str, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return cli(*args, url=empty_url, data_dir=tmp_path)

    proc = run("token", "list")
    assert proc.returncode == 1 and "run 'patchflow db upgrade'" in proc.stderr
    proc = run("db", "current", "--check")
    assert proc.returncode == 1 and "none (empty database" in proc.stdout
    head = db.head_revision()
    assert f"upgraded from an empty database to revision {head}" in run("db", "upgrade").stdout
    assert f"already at revision {head}" in run("db", "upgrade").stdout
    assert run("db", "current", "--check").stdout.rstrip().endswith(f"{head} (head)")

    proc = run("token", "create", "--name", "ci", "--role", "approver")
    assert proc.returncode == 0, proc.stderr
    token = proc.stdout.strip()
    token_id = token.split("_")[1]
    assert re.fullmatch(r"pft_[0-9a-f]{12}_\S{40,}", token) and "shown once" in proc.stderr

    proc = run("token", "create", "--name", "ci", "--role", "root")
    assert proc.returncode == 2 and "role: unknown value 'root'; choose one of viewer" in proc.stderr
    listed = run("token", "list", "--format", "json")
    assert token.split("_", 2)[2] not in listed.stdout and "hash" not in listed.stdout
    assert [(t["id"], t["name"], t["role"], t["revoked"]) for t in json.loads(listed.stdout)] == [
        (token_id, "ci", "approver", False)
    ]

    engine = db.make_engine(empty_url)
    try:
        with db.open_session(engine) as session:
            assert db.verify_token(session, token=token) is db.Role.approver
            assert "revoked API token" in run("token", "revoke", token_id).stdout
            assert db.verify_token(session, token=token) is None
            assert [(a.action, a.detail["token_id"]) for a in db.list_audit(session)] == [
                ("token.create", token_id),
                ("token.revoke", token_id),
            ]
            assert db.list_audit(session)[0].actor.startswith("cli:")
    finally:
        engine.dispose()
    table = run("token", "list")
    assert token_id in table.stdout and "revoked 20" in table.stdout
    proc = run("token", "revoke", "nope")
    assert proc.returncode == 3 and "no API token 'nope'" in proc.stderr


def test_cli_defaults_to_sqlite_under_the_data_dir(tmp_path: Path) -> None:
    proc = cli("db", "upgrade", url=None, data_dir=tmp_path / "data")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "data" / "patchflow.db").is_file()
    assert f"sqlite:///{tmp_path / 'data' / 'patchflow.db'}" in proc.stdout


@pytest.mark.parametrize(
    ("url", "code", "message"),
    [
        (
            "postgresql://postgres:pw@127.0.0.1:1/test",
            1,
            "cannot use the database at postgresql://postgres:***@127.0.0.1:1/test",
        ),
        ("not a url", 2, "'not a url' is not a database URL; set PATCHFLOW_DATABASE_URL"),
    ],
)
def test_cli_reports_bad_database_urls(url: str, code: int, message: str, tmp_path: Path) -> None:
    proc = cli("db", "upgrade", url=url, data_dir=tmp_path)
    assert (proc.returncode, proc.stdout) == (code, "")
    assert message in proc.stderr and proc.stderr.startswith("error: ")


def test_the_shared_engines_dispose_of_what_they_no_longer_keep(tmp_path: Path) -> None:
    """The process keeps a few shared engines; one pushed out is disposed of (its pooled connections closed),
    never dropped with connections still open (psycopg warns when a connection is garbage-collected open)."""
    urls = [f"sqlite:///{tmp_path}/db{n}.sqlite" for n in range(10)]
    first = db.get_engine(urls[0])
    with first.connect() as conn:
        conn.execute(sa.text("select 1"))
    assert first.pool.checkedin() == 1  # type: ignore[attr-defined]
    assert db.get_engine(urls[0]) is first  # shared while kept
    for url in urls[1:]:
        db.get_engine(url)
    assert first.pool.checkedin() == 0  # type: ignore[attr-defined]
    assert db.get_engine(urls[0]) is not first  # a new engine once pushed out
