"""The history database: waves, stage and instance results, pinned patch sets, the append-only audit log and
API tokens (:mod:`~patchflow.store.db`, SQLModel on SQLite or PostgreSQL), with its Alembic migrations
(:mod:`patchflow.store.migrations`).

May import: :mod:`patchflow.core`, :mod:`patchflow.errors`, SQLModel/SQLAlchemy and Alembic. Never Temporal,
executors, the service edges or the CLI: activities, the API and the CLI write and read through it.
"""
