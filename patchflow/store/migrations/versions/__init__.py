"""The Alembic revision files, numbered in order (``0001_initial``, ``0002_wave_kind``, …). Each imports only
Alembic, SQLAlchemy and SQLModel's column types (it may import nothing else): a revision must keep working
whatever the models look like later.
"""
