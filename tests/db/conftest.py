"""Fixtures of the persistence tests: every test runs on SQLite and on PostgreSQL.

PostgreSQL comes from ``PATCHFLOW_TEST_POSTGRES_URL``; when it is unset, CI (``CI`` set) uses the server at
127.0.0.1:5432 and a developer machine skips the PostgreSQL half with a message saying how to enable it.
The session works in schemas of its own (``pf_test_<random>``, dropped at the end), so parallel runs and the
database's other users are never touched.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session

from patchflow.store import db

CI_POSTGRES_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
TABLES = (
    "waves",
    "stages",
    "stage_instances",
    "instance_results",
    "patch_sets",
    "gate_decisions",
    "payload_blobs",
    "audit_log",
    "api_tokens",
)


def postgres_url() -> str | None:
    url = os.environ.get("PATCHFLOW_TEST_POSTGRES_URL")
    if url:
        return url
    return CI_POSTGRES_URL if os.environ.get("CI") else None


class Databases:
    """Makes empty databases: SQLite files, or fresh schemas of the test PostgreSQL database."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._pg_admin: Engine | None = None
        self._pg_url: str | None = None
        self._schemas: list[str] = []

    def postgres(self) -> None:
        """Connect to the test server, or skip (no URL outside CI) / fail (a URL that does not answer)."""
        if self._pg_admin is not None:
            return
        url = postgres_url()
        if url is None:
            pytest.skip(
                "PostgreSQL half skipped: set PATCHFLOW_TEST_POSTGRES_URL (e.g. "
                f"{CI_POSTGRES_URL}) or CI=1 to run the persistence tests on PostgreSQL too"
            )
        admin = db.make_engine(url)
        try:
            with admin.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        except sa.exc.OperationalError as exc:
            admin.dispose()
            pytest.fail(f"the test PostgreSQL server at {db.display_url(url)} does not answer: {exc.orig}")
        self._pg_admin, self._pg_url = admin, url

    def new(self, backend: str) -> str:
        """The URL of a new, empty database."""
        if backend == "sqlite":
            return f"sqlite:///{self.directory / f'{secrets.token_hex(4)}.db'}"
        self.postgres()
        assert self._pg_admin is not None and self._pg_url is not None
        schema = f"pf_test_{secrets.token_hex(6)}"
        with self._pg_admin.begin() as connection:
            connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        self._schemas.append(schema)
        # Every connection of this URL (also a CLI subprocess's) sees only the new schema.
        url = make_url(self._pg_url).update_query_dict({"options": f"-csearch_path={schema}"})
        return url.render_as_string(hide_password=False)

    def close(self) -> None:
        if self._pg_admin is None:
            return
        with self._pg_admin.begin() as connection:
            for schema in self._schemas:
                connection.execute(sa.text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        self._pg_admin.dispose()


@pytest.fixture(scope="session")
def databases(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Databases]:
    made = Databases(tmp_path_factory.mktemp("databases"))
    yield made
    made.close()


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, databases: Databases) -> str:
    """The database under test; the PostgreSQL half skips (or fails in CI) as described above."""
    if request.param == "postgresql":
        databases.postgres()
    return str(request.param)


@pytest.fixture
def empty_url(backend: str, databases: Databases) -> str:
    """A database without any table."""
    return databases.new(backend)


@pytest.fixture(scope="session")
def _migrated_postgres(backend: str, databases: Databases) -> str | None:
    if backend != "postgresql":
        return None
    url = databases.new(backend)
    db.upgrade(url)
    return url


@pytest.fixture
def url(backend: str, databases: Databases, _migrated_postgres: str | None) -> str:
    """A migrated, empty database: a new SQLite file, or the session's PostgreSQL schema truncated."""
    if _migrated_postgres is None:
        fresh = databases.new(backend)
        db.upgrade(fresh)
        return fresh
    engine = db.make_engine(_migrated_postgres)
    try:
        with engine.begin() as connection:  # the audit log refuses TRUNCATE: lifted for this transaction
            connection.execute(sa.text("ALTER TABLE audit_log DISABLE TRIGGER audit_log_no_truncate"))
            connection.execute(sa.text(f"TRUNCATE {', '.join(TABLES)} RESTART IDENTITY"))
            connection.execute(sa.text("ALTER TABLE audit_log ENABLE TRIGGER audit_log_no_truncate"))
    finally:
        engine.dispose()
    return _migrated_postgres


@pytest.fixture
def engine(url: str) -> Iterator[Engine]:
    made = db.make_engine(url)
    yield made
    made.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with db.open_session(engine) as opened:
        yield opened
