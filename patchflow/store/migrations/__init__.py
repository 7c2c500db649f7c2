"""Alembic migrations of the history database, shipped inside the package so an installed patchflow can
run ``patchflow db upgrade`` without an ``alembic.ini`` (:func:`patchflow.store.db.alembic_config` builds the
configuration in code).

New revision, after changing the models in :mod:`patchflow.store.db`::

    python -m patchflow.store.migrations "add a column"      # autogenerates against a scratch SQLite database

then review the generated file (server defaults for new NOT NULL columns, hand-written data moves) and run
the suite: ``tests/db`` checks that the models and the migrations agree on SQLite and PostgreSQL.

May import: Alembic, SQLAlchemy and :mod:`patchflow.store.db` (the models autogenerate compares against).
Revision files are history: never rename their ids or edit a released one.
"""
