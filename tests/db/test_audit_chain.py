"""The audit log cannot be rewritten: the database refuses what revision 0001's triggers missed (SQLite's
``INSERT OR REPLACE``, PostgreSQL's ``TRUNCATE``), and the hash chain reveals what even a database owner who
bypasses every trigger changes — ``patchflow audit verify`` names the first broken row.

PostgreSQL: "CREATE TRIGGER" (a statement-level ``BEFORE TRUNCATE`` trigger; TRUNCATE fires no row trigger).
SQLite: "The ON CONFLICT clause" (REPLACE deletes the conflicting row; delete triggers fire only with
``recursive_triggers``), hence a ``BEFORE INSERT`` check for an existing id or key.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from sqlalchemy.engine import Engine
from sqlmodel import Session

from patchflow.core.wavemodel import AuditEntry
from patchflow.store import db
from tests.db.test_db import cli, status

T0 = datetime(2026, 11, 10, 2, 0, tzinfo=UTC)


def fill(session: Session, n: int = 5) -> None:
    for i in range(n):
        db.append_audit(
            session,
            at=T0 + timedelta(seconds=i),
            actor=f"user{i}",
            action="halt",
            wave_id="w1",
            detail={"i": i},
        )


@contextlib.contextmanager
def as_database_owner(engine: Engine) -> Iterator[sa.Connection]:
    """A connection on which the append-only triggers are lifted — what the database's owner can always do.
    They come back afterwards (the PostgreSQL schema is shared by the tests of a session)."""
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as connection:
        if postgres:
            connection.execute(sa.text("ALTER TABLE audit_log DISABLE TRIGGER USER"))
        else:
            for trigger in ("audit_log_no_update", "audit_log_no_delete", "audit_log_no_replace"):
                connection.execute(sa.text(f"DROP TRIGGER {trigger}"))
        yield connection
    if postgres:
        with engine.begin() as connection:
            connection.execute(sa.text("ALTER TABLE audit_log ENABLE TRIGGER USER"))


def in_threads(url: str, writers: int, work: Callable[[Session, int], None]) -> None:
    """Run ``work(session, n)`` in ``writers`` threads at once, each with its own engine (as API replicas,
    workers and CLI processes are), and fail with any writer's exception."""
    errors: list[BaseException] = []

    def run(n: int) -> None:
        engine = db.make_engine(url)
        try:
            with db.open_session(engine) as session:
                work(session, n)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)
        finally:
            engine.dispose()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors


@contextlib.contextmanager
def fresh_session(url: str) -> Iterator[Session]:
    engine = db.make_engine(url)
    try:
        with db.open_session(engine) as session:
            yield session
    finally:
        engine.dispose()


def test_appends_form_one_chain_and_verify_reports_its_head(session: Session) -> None:
    fill(session, 3)
    snapshot = status(
        audit=[AuditEntry(at=T0, who="alice", action="start"), AuditEntry(at=T0, who="bob", action="halt")]
    )
    db.record_wave_status(session, status=snapshot, at=T0)
    db.record_wave_status(session, status=snapshot, at=T0)  # a retried activity appends nothing
    db.append_audit(session, actor="x", action="resume", key="retry-1")
    db.append_audit(session, actor="x", action="resume", key="retry-1")

    result = db.verify_audit_chain(session)
    assert result.ok and result.rows == 6 and result.broken_at is None
    rows = session.connection().execute(sa.select(db.AuditRecord.__table__).order_by(sa.text("id"))).all()  # type: ignore[attr-defined]
    assert [r.id for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[0].prev_hash == db.AUDIT_GENESIS
    assert all(later.prev_hash == earlier.row_hash for earlier, later in zip(rows, rows[1:], strict=False))
    assert all(db.audit_row_hash(r, r.prev_hash) == r.row_hash for r in rows)
    assert result.head == rows[-1].row_hash
    assert db.verify_audit_chain(session, expected_head=rows[2].row_hash).ok
    assert db.list_audit(session)[0].row_hash == rows[0].row_hash


def test_an_empty_log_is_intact(session: Session) -> None:
    result = db.verify_audit_chain(session)
    assert (result.ok, result.rows, result.head) == (True, 0, None)


def test_sqlite_refuses_insert_or_replace_over_an_entry(session: Session, backend: str) -> None:
    if backend != "sqlite":
        pytest.skip("INSERT OR REPLACE is SQLite's; PostgreSQL's upsert fires the UPDATE guard")
    fill(session, 2)
    db.append_audit(session, actor="x", action="resume", key="k1")
    for statement in (
        # the same id: REPLACE would delete row 1 without firing its DELETE trigger
        "INSERT OR REPLACE INTO audit_log (id, at, actor, action, detail) "
        "VALUES (1, '2026-01-01 00:00:00', 'mallory', 'approve', '{}')",
        # a new id, but the same idempotency key: REPLACE would delete row 3 through the UNIQUE constraint
        "INSERT OR REPLACE INTO audit_log (at, actor, action, detail, key) "
        "VALUES ('2026-01-01 00:00:00', 'mallory', 'approve', '{}', 'k1')",
        "REPLACE INTO audit_log (id, at, actor, action, detail) "
        "VALUES (2, '2026-01-01 00:00:00', 'mallory', 'approve', '{}')",
    ):
        with pytest.raises(sa.exc.DBAPIError, match="append-only"):
            session.connection().exec_driver_sql(statement)
        session.rollback()
    assert [a.actor for a in db.list_audit(session)] == ["user0", "user1", "x"]
    assert db.verify_audit_chain(session).ok


def test_postgresql_refuses_truncate(session: Session, backend: str) -> None:
    if backend != "postgresql":
        pytest.skip("TRUNCATE is PostgreSQL's (SQLite has none; DELETE is refused by revision 0001)")
    fill(session, 2)
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        session.connection().exec_driver_sql("TRUNCATE audit_log")
    session.rollback()
    with pytest.raises(sa.exc.DBAPIError, match="append-only"):
        session.connection().exec_driver_sql(
            "INSERT INTO audit_log (id, at, actor, action, detail) "
            "VALUES (1, now(), 'mallory', 'x', '{}') "
            "ON CONFLICT (id) DO UPDATE SET actor = 'mallory'"
        )
    session.rollback()
    assert len(db.list_audit(session)) == 2


def test_an_owner_edit_breaks_the_chain_at_the_edited_row(session: Session, engine: Engine) -> None:
    fill(session, 5)
    with as_database_owner(engine) as owner:
        owner.execute(sa.text("UPDATE audit_log SET actor = 'mallory' WHERE id = 3"))
    result = db.verify_audit_chain(session)
    assert (result.ok, result.broken_at, result.rows) == (False, 3, 2)
    assert "row 3's content does not match its hash" in result.problem


def test_an_owner_deletion_breaks_the_chain_at_the_next_row(session: Session, engine: Engine) -> None:
    fill(session, 5)
    with as_database_owner(engine) as owner:
        owner.execute(sa.text("DELETE FROM audit_log WHERE id = 2"))
    result = db.verify_audit_chain(session)
    assert (result.ok, result.broken_at) == (False, 3)
    assert "row 3 does not link to row 1" in result.problem


def test_a_row_inserted_around_patchflow_breaks_the_chain(session: Session, engine: Engine) -> None:
    fill(session, 2)
    with engine.begin() as connection:  # no trigger refuses a new row: the chain does
        connection.execute(
            sa.text(
                "INSERT INTO audit_log (id, at, actor, action, detail) VALUES (3, :at, 'mallory', 'x', '{}')"
            ),
            {"at": T0},
        )
    fill(session, 1)
    result = db.verify_audit_chain(session)
    assert (result.ok, result.broken_at) == (False, 3) and "carries no hash" in result.problem


def test_a_rewritten_chain_is_caught_by_a_head_recorded_earlier(session: Session, engine: Engine) -> None:
    """Recomputing every later hash hides an edit from the walk alone; the head noted before does not."""
    fill(session, 4)
    noted = db.verify_audit_chain(session).head
    assert noted is not None
    with as_database_owner(engine) as owner:
        owner.execute(sa.text("UPDATE audit_log SET actor = 'mallory' WHERE id = 2"))
        rows = owner.execute(sa.select(db.AuditRecord.__table__).order_by(sa.text("id"))).all()  # type: ignore[attr-defined]
        prev = db.AUDIT_GENESIS
        for row in rows:
            new_hash = db.audit_row_hash(row, prev)
            owner.execute(
                sa.text("UPDATE audit_log SET prev_hash = :p, row_hash = :h WHERE id = :id"),
                {"p": prev, "h": new_hash, "id": row.id},
            )
            prev = new_hash
    assert db.verify_audit_chain(session).ok  # internally consistent again…
    caught = db.verify_audit_chain(session, expected_head=noted)
    assert not caught.ok and "no longer in the chain" in caught.problem  # …but not the chain noted before


def test_concurrent_writers_keep_one_linear_chain(url: str) -> None:
    """Writers in several threads, each with its own connection, never link two rows to the same
    predecessor."""

    def write(session: Session, n: int) -> None:
        for i in range(10):
            db.append_audit(session, actor=f"w{n}", action="halt", detail={"i": i})

    in_threads(url, 4, write)
    with fresh_session(url) as session:
        result = db.verify_audit_chain(session)
    assert (result.ok, result.rows) == (True, 40), result.problem


def test_revision_0003_chains_the_rows_written_before_it(empty_url: str) -> None:
    db.upgrade(empty_url, revision="0002")
    engine = db.make_engine(empty_url)
    try:
        with engine.begin() as connection:
            for i in range(3):
                connection.execute(
                    sa.text(
                        "INSERT INTO audit_log (at, actor, action, detail, key) "
                        "VALUES (:at, :actor, 'start', :detail, :key)"
                    ),
                    {
                        "at": T0 + timedelta(seconds=i),
                        "actor": f"old{i}",
                        "detail": '{"n": 1}',
                        "key": f"k{i}",
                    },
                )
        assert db.upgrade(empty_url) == db.head_revision()
        with db.open_session(engine) as session:
            db.append_audit(session, actor="new", action="halt")
            result = db.verify_audit_chain(session)
            assert (result.ok, result.rows) == (True, 4), result.problem
        config = db.alembic_config()
        config.attributes["database_url"] = empty_url
        command.downgrade(config, "0002")
        with engine.connect() as connection:
            columns = {c["name"] for c in sa.inspect(connection).get_columns("audit_log")}
            assert "row_hash" not in columns
            assert connection.execute(sa.text("SELECT count(*) FROM audit_log")).scalar_one() == 4
    finally:
        engine.dispose()


def test_cli_audit_verify_reports_the_first_broken_row(url: str, engine: Engine, tmp_path: Path) -> None:
    with db.open_session(engine) as session:
        fill(session, 3)
    proc = cli("audit", "verify", url=url, data_dir=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "audit log intact: 3 row(s), head " in proc.stdout
    head = proc.stdout.split("head ")[1].split(";")[0]
    assert cli("audit", "verify", "--head", head, url=url, data_dir=tmp_path).returncode == 0

    with as_database_owner(engine) as owner:
        owner.execute(sa.text("UPDATE audit_log SET action = 'approve' WHERE id = 2"))
    proc = cli("audit", "verify", url=url, data_dir=tmp_path)
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: audit log broken at row 2: row 2's content does not match its hash")
    proc = cli("audit", "verify", "--format", "json", url=url, data_dir=tmp_path)
    assert proc.returncode == 1 and '"broken_at": 2' in proc.stdout


# ---------------------------------------------------------------------------------------------- refusals


def test_refused_attempts_are_recorded_flagged_and_rate_limited(session: Session, engine: Engine) -> None:
    for i in range(3):
        assert db.append_refusal(
            session,
            actor="mallory",
            action="approve",
            reason=f"'mallory' may not approve stage 'prod' ({i})",
            at=T0 + timedelta(seconds=i),
            wave_id="w1",
            stage="prod",
            detail={"via": "api"},
            per_minute=3,
        )
    # a fourth in the same minute is not written; ordinary entries are never limited
    assert not db.append_refusal(
        session, actor="mallory", action="approve", reason="x", at=T0 + timedelta(seconds=30), per_minute=3
    )
    db.append_audit(session, actor="alice", action="halt", at=T0 + timedelta(seconds=31))
    # a minute after the first, there is room again
    assert db.append_refusal(
        session, actor="mallory", action="approve", reason="y", at=T0 + timedelta(seconds=61), per_minute=3
    )

    rows = db.list_audit(session)
    assert [(r.actor, r.refused) for r in rows] == [("mallory", True)] * 3 + [
        ("alice", False),
        ("mallory", True),
    ]
    assert rows[0].detail == {"via": "api", "reason": "'mallory' may not approve stage 'prod' (0)"}
    assert (rows[0].wave_id, rows[0].stage) == ("w1", "prod")
    assert db.verify_audit_chain(session).ok

    # the flag is part of the hash: turning a refusal into an accepted action is detected
    with as_database_owner(engine) as owner:
        owner.execute(sa.text("UPDATE audit_log SET refused = false WHERE id = 2"))
    assert db.verify_audit_chain(session).broken_at == 2


def test_concurrent_refusals_never_exceed_the_limit(url: str) -> None:
    """The count and the append share the chain's lock: a flood from several writers stops exactly at it."""

    def flood(session: Session, n: int) -> None:
        for i in range(5):
            db.append_refusal(
                session, actor=f"bot{n}", action="slack.request", reason=f"forged {i}", at=T0, per_minute=6
            )

    in_threads(url, 4, flood)
    with fresh_session(url) as session:
        assert len(db.list_audit(session)) == 6
        assert db.verify_audit_chain(session).ok
