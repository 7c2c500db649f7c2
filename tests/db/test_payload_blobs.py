"""Payload blobs in the history database (``PATCHFLOW_PAYLOAD_STORE=database``): the claim-check store for
workers and API replicas on several machines that share PostgreSQL but no file system. The same contract as
the directory store (``tests/control/test_payloads.py``): content-addressed, idempotent, verified on read."""

from __future__ import annotations

import hashlib
import json

import pytest
import sqlalchemy as sa

from patchflow.config import Settings
from patchflow.control.payloads import (
    CLAIM_ENCODING,
    ClaimCheckCodec,
    DatabaseBlobStore,
    PayloadStoreError,
    store_for,
)
from patchflow.store import db
from tests.control.test_payloads import payload


async def test_large_payloads_round_trip_through_the_database(url: str) -> None:
    codec = ClaimCheckCodec(DatabaseBlobStore(url), inline_bytes=1024)
    small, large = payload(10), payload(300_000)
    encoded = await codec.encode([small, large, large])
    assert encoded[0] == small and encoded[1].metadata["encoding"] == CLAIM_ENCODING
    assert await codec.decode(encoded) == [small, large, large]
    entries = DatabaseBlobStore(url).entries()
    assert [(d, n) for d, n, _ in entries] == [
        (hashlib.sha256(large.SerializeToString()).hexdigest(), large.ByteSize())
    ]  # stored once


async def test_a_changed_row_is_refused_and_a_missing_one_named(url: str) -> None:
    store = DatabaseBlobStore(url)
    codec = ClaimCheckCodec(store, inline_bytes=1024)
    [encoded] = await codec.encode([payload(5000)])
    digest = json.loads(encoded.data)["sha256"]
    engine = db.get_engine(url)
    with engine.begin() as connection:
        connection.execute(
            sa.text("UPDATE payload_blobs SET data = :data WHERE digest = :digest"),
            {"data": payload(5001).SerializeToString(), "digest": digest},
        )
    with pytest.raises(PayloadStoreError, match="does not match its digest"):
        await codec.decode([encoded])
    store.delete([digest])
    assert store.entries() == []
    with pytest.raises(PayloadStoreError, match="is not in the history database"):
        await codec.decode([encoded])
    with pytest.raises(PayloadStoreError, match="not a SHA-256 digest"):
        store.get("' OR 1=1 --")


def test_auto_follows_the_database_url(tmp_path) -> None:  # type: ignore[no-untyped-def]
    shared = "postgresql+psycopg://patchflow@127.0.0.1:5432/patchflow"
    assert isinstance(store_for(Settings(data_dir=tmp_path, database_url=shared)), DatabaseBlobStore)
    files = store_for(Settings(data_dir=tmp_path))
    assert not isinstance(files, DatabaseBlobStore) and str(files) == str(tmp_path / "payloads")
    forced = store_for(Settings(data_dir=tmp_path, payload_store="database"))
    assert isinstance(forced, DatabaseBlobStore) and forced.url == f"sqlite:///{tmp_path / 'patchflow.db'}"
    assert not isinstance(
        store_for(Settings(data_dir=tmp_path, database_url=shared, payload_store="files")), DatabaseBlobStore
    )
