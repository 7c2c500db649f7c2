"""Alembic environment: runs on the connection :func:`patchflow.store.db.upgrade` hands over (one transaction),
or on ``PATCHFLOW_DATABASE_URL`` / the default SQLite file when Alembic's own tooling calls it."""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from patchflow.store import db

config = context.config
target_metadata = db.metadata


def _configure(**kwargs: object) -> None:
    context.configure(
        target_metadata=target_metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds the table instead (a no-op on PostgreSQL).
        render_as_batch=True,
        compare_type=True,
        **kwargs,  # type: ignore[arg-type]
    )


def _url() -> str:
    url = config.attributes.get("database_url") or config.get_main_option("sqlalchemy.url")
    if url:
        return str(url)
    from patchflow.config import get_settings

    return get_settings().database_url_resolved


def run_offline() -> None:
    """Emit SQL instead of running it (``alembic upgrade --sql``), e.g. for a DBA to review."""
    _configure(url=_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def _run(connection: Connection) -> None:
    _configure(connection=connection)
    with context.begin_transaction():
        context.run_migrations()


def run_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = db.make_engine(_url())
    try:
        with engine.begin() as connection:
            _run(connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_offline()
else:
    run_online()
