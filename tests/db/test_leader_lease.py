"""One holder of a duty among the processes sharing a database (the API's Slack notifier): a PostgreSQL
advisory lock held by a dedicated connection, or a ``flock`` beside a SQLite file. PostgreSQL: "Advisory
Locks" (session-level locks are released when the session ends, however it ends)."""

from __future__ import annotations

import time

import sqlalchemy as sa

from patchflow.store import db


def test_one_holder_at_a_time_and_a_hand_over_on_release(url: str) -> None:
    first, second = db.LeaderLease(url, "slack-notifier"), db.LeaderLease(url, "slack-notifier")
    other_duty = db.LeaderLease(url, "something-else")
    try:
        assert first.held() and first.held()  # holding it again is still holding it
        assert not second.held()
        assert other_duty.held()  # another duty, another lease
        first.release()
        assert second.held() and not first.held()
    finally:
        for lease in (first, second, other_duty):
            lease.release()


def test_a_holder_whose_connection_dies_loses_the_lease(url: str, backend: str) -> None:
    if backend != "postgresql":
        return  # SQLite: the kernel drops a dead process's flock; the release test above covers the hand-over
    first, second = db.LeaderLease(url, "slack-notifier"), db.LeaderLease(url, "slack-notifier")
    try:
        assert first.held() and not second.held()
        assert first._connection is not None
        pid = first._connection.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        engine = db.make_engine(url)
        try:
            with engine.begin() as admin:  # as if the holder's process or network died
                admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        finally:
            engine.dispose()
        deadline = time.monotonic() + 10  # the backend exits (and frees its locks) a moment after the signal
        while not second.held():
            assert time.monotonic() < deadline, "the lease was not freed with its connection"
            time.sleep(0.05)
        assert not first.held()  # it notices at its next check, and stands by
    finally:
        first.release()
        second.release()
