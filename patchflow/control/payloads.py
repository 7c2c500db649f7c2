"""Large payloads by reference: a claim-check payload codec over a content-addressed blob directory.

Temporal keeps every workflow and activity input and result, every child result, every continue-as-new state
and every Update/Query answer in its history, and checks each set of payloads against ``limit.blobSize``:
a warning (``TMPRL1103``) past 512 KiB, a refusal past 2 MiB (``shared/reference/temporal.md`` §1.1). A
stage's per-instance results grow with the fleet (≈ 100 bytes an instance), so a stage of ≈ 21,000 instances
was refused outright (issue 17, item 1).

Temporal's documented answer for large payloads is the *claim check*: a :class:`PayloadCodec` — run by the SDK
in every client and worker, outside workflow code — moves a payload past a size to an external store and
sends a small reference in its place; the reading side's codec fetches it back. Workflows still see whole
objects (their code and determinism are unchanged; histories recorded before keep replaying, an inline
payload decodes as itself), but nothing that travels through Temporal grows with the fleet: a reference is
≈ 130 bytes whatever the stage's size.

Why a codec and not the SDK's own ``DataConverter.external_storage``: that API is marked experimental in
temporalio 1.35 (its reference format is still changing — references are not yet codec-encoded "until a
release that can read them has been out long enough"), and a reference written into a history must stay
readable for as long as the history is kept: a wave paused for a month replays every one. The
:class:`~temporalio.converter.PayloadCodec` interface is the SDK's stable extension point, and the reference
format below is patchflow's own, versioned with it.

The store is a directory of immutable files named by the SHA-256 of their content (``<dir>/ab/abcd…``), by
default ``<PATCHFLOW_DATA_DIR>/payloads`` — the same data directory the embedded stack keeps its database in.
Every process that talks to Temporal for patchflow (workers, API, CLI, scheduler) must see the same directory:
on one machine that is automatic; workers on several machines share it (``PATCHFLOW_PAYLOAD_DIR`` on a shared
volume). A blob is written atomically (temporary file, then rename) and verified against its name when read:
a reference cannot name a path outside the directory, and a changed or truncated blob is refused, not
decoded.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_type_hints

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import (
    AdvancedJSONEncoder,
    CompositePayloadConverter,
    DefaultPayloadConverter,
    JSONPlainPayloadConverter,
    JSONTypeConverter,
    PayloadCodec,
    value_to_type,
)

from patchflow.errors import PatchflowError

if TYPE_CHECKING:
    from patchflow.config import Settings

#: ``metadata["encoding"]`` of a reference payload (the original's own encoding travels inside the blob).
CLAIM_ENCODING = b"binary/patchflow-claim"
#: Payloads at most this large (serialised) travel inline: every batch, gate and signal payload does, and so
#: does a page of ``wave status`` (≤ 2,000 instances, ≈ 200 KB) — queries are asked every few seconds, and a
#: page by reference would leave a blob behind for every answer. Below issue 17's 256 KB target.
DEFAULT_INLINE_BYTES = 240 * 1024
_DIGEST = re.compile(r"[0-9a-f]{64}")


class PayloadStoreError(PatchflowError):
    """A payload reference cannot be resolved: its blob is missing, unreadable or not what it names.

    In a worker this fails the workflow task, which Temporal retries: nothing is lost, the wave waits until
    the blob is readable (a shared volume mounted again)."""


def _checked(digest: str) -> str:
    """``digest`` if it is one (64 lowercase hex digits): a reference names nothing else."""
    if not _DIGEST.fullmatch(digest):
        raise PayloadStoreError(
            f"payload reference {digest[:80]!r} is not a SHA-256 digest (64 lowercase hex digits): refused"
        )
    return digest


class BlobStore:
    """Content-addressed, immutable blobs in a directory (created on first write, mode 0700)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def __str__(self) -> str:
        return str(self.directory)

    def entries(self) -> list[tuple[str, int, float]]:
        """Every blob's digest, size and when it was last written or referenced (POSIX time)."""
        found: list[tuple[str, int, float]] = []
        for path in sorted(self.directory.glob("??/*")) if self.directory.is_dir() else []:
            if _DIGEST.fullmatch(path.name):
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    found.append((path.name, stat.st_size, stat.st_mtime))
        return found

    def delete(self, digests: Sequence[str]) -> None:
        for digest in digests:
            self.path(digest).unlink(missing_ok=True)

    def path(self, digest: str) -> Path:
        return self.directory / _checked(digest)[:2] / digest

    def put(self, data: bytes) -> str:
        """Store ``data`` (idempotent) and return its digest."""
        digest = hashlib.sha256(data).hexdigest()
        target = self.path(digest)
        if target.exists():
            # Refreshed: pruning spares young blobs, and this one is about to be referenced again.
            with contextlib.suppress(OSError):
                os.utime(target)
            return digest
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
        return digest

    def get(self, digest: str) -> bytes:
        """The blob named ``digest``, verified against it."""
        target = self.path(digest)
        try:
            data = target.read_bytes()
        except FileNotFoundError:
            raise PayloadStoreError(
                f"payload blob {digest} is not in {self.directory}: every patchflow process that talks to "
                "Temporal (workers, API, CLI) must share one payload directory — on several machines, point "
                "PATCHFLOW_PAYLOAD_DIR at a shared volume"
            ) from None
        except OSError as exc:
            raise PayloadStoreError(f"cannot read payload blob {target}: {exc.strerror or exc}") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise PayloadStoreError(
                f"payload blob {target} does not match its digest (changed or truncated on disk): refused"
            )
        return data


class DatabaseBlobStore:
    """The same blobs in the history database (table ``payload_blobs``): for workers, API replicas and CLIs
    on several machines that share PostgreSQL but no file system."""

    def __init__(self, url: str) -> None:
        self.url = url

    def __str__(self) -> str:
        from patchflow.store import db

        return f"the history database {db.display_url(self.url)}"

    def _session(self) -> Any:
        from patchflow.store import db

        return db.open_session(db.get_engine(self.url, timeout_seconds=30))

    def put(self, data: bytes) -> str:
        from patchflow.store import db

        digest = hashlib.sha256(data).hexdigest()
        with db.translate_errors(self.url), self._session() as session:
            db.put_payload_blob(session, digest=digest, data=data)
            session.commit()
        return digest

    def get(self, digest: str) -> bytes:
        from patchflow.store import db

        _checked(digest)
        with db.translate_errors(self.url), self._session() as session:
            data = db.get_payload_blob(session, digest=digest)
        if data is None:
            raise PayloadStoreError(
                f"payload blob {digest} is not in {self}: every patchflow process that talks to Temporal must "
                "use the same payload store (PATCHFLOW_PAYLOAD_STORE, PATCHFLOW_DATABASE_URL)"
            )
        if hashlib.sha256(data).hexdigest() != digest:
            raise PayloadStoreError(f"payload blob {digest} in {self} does not match its digest: refused")
        return data

    def entries(self) -> list[tuple[str, int, float]]:
        from patchflow.store import db

        with db.translate_errors(self.url), self._session() as session:
            return [(d, n, t.timestamp()) for d, n, t in db.payload_blob_ages(session)]

    def delete(self, digests: Sequence[str]) -> None:
        from patchflow.store import db

        with db.translate_errors(self.url), self._session() as session:
            db.prune_payload_blobs(session, digests=digests)
            session.commit()


Store = BlobStore | DatabaseBlobStore


class ClaimCheckCodec(PayloadCodec):
    """Moves each payload larger than ``inline_bytes`` into ``store`` and sends a reference instead."""

    def __init__(self, store: Store, *, inline_bytes: int = DEFAULT_INLINE_BYTES) -> None:
        self.store = store
        self.inline_bytes = inline_bytes

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out: list[Payload] = []
        for payload in payloads:
            if payload.ByteSize() <= self.inline_bytes:
                out.append(payload)
                continue
            data = payload.SerializeToString()
            digest = await asyncio.to_thread(self.store.put, data)
            reference = json.dumps({"sha256": digest, "size": len(data)}, separators=(",", ":"))
            out.append(Payload(metadata={"encoding": CLAIM_ENCODING}, data=reference.encode()))
        return out

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        out: list[Payload] = []
        for payload in payloads:
            if payload.metadata.get("encoding") != CLAIM_ENCODING:
                out.append(payload)  # inline (also every payload recorded before this codec)
                continue
            try:
                digest = json.loads(payload.data)["sha256"]
                if not isinstance(digest, str):
                    raise TypeError
            except (ValueError, KeyError, TypeError):
                raise PayloadStoreError(
                    f"malformed payload reference {payload.data[:80]!r}: expected {{'sha256': …}}"
                ) from None
            data = await asyncio.to_thread(self.store.get, digest)
            original = Payload()
            original.ParseFromString(data)
            out.append(original)
        return out


def claim_check_codec(directory: Path, inline_bytes: int = DEFAULT_INLINE_BYTES) -> ClaimCheckCodec:
    return ClaimCheckCodec(BlobStore(directory), inline_bytes=inline_bytes)


def store_for(settings: Settings) -> Store:
    """The payload store the settings name: ``PATCHFLOW_PAYLOAD_STORE`` ``files`` (the payload directory),
    ``database`` (the history database), or ``auto`` — the database when ``PATCHFLOW_DATABASE_URL`` is set (a
    shared PostgreSQL: several machines), else the directory."""
    kind = settings.payload_store
    if kind == "database" or (kind == "auto" and settings.database_url):
        return DatabaseBlobStore(settings.database_url_resolved)
    return BlobStore(settings.payload_dir_resolved)


# ------------------------------------------------------------------------------------------------ converter


class ShallowDataclassEncoder(AdvancedJSONEncoder):
    """The SDK's JSON encoder, byte for byte the same output, without ``dataclasses.asdict``'s deep copy.

    ``AdvancedJSONEncoder`` turns a dataclass into a dict with ``dataclasses.asdict``, which copies the whole tree
    below it in Python before ``json`` walks it again. Handing ``json`` the fields one level at a time gives the
    same JSON — nested dataclasses come back through :meth:`default`, everything else is what ``json`` encodes
    anyway — at a seventh of the cost: 0.10 s instead of 0.70 s of CPU for a 100,000-instance wave result.
    That matters because workflows serialise their results *inside* their workflow task, where the SDK allows
    2 seconds before it declares a deadlock (``TMPRL1101``).
    """

    def default(self, o: Any) -> Any:
        if dataclasses.is_dataclass(o) and not isinstance(o, type):
            return {f.name: getattr(o, f.name) for f in dataclasses.fields(o)}
        return super().default(o)


class CachedDataclassDecoder(JSONTypeConverter):
    """The SDK's JSON-to-dataclass step (``value_to_type``'s dataclass branch: the same objects, the same
    errors) with each class's field types resolved once instead of on every value.

    ``value_to_type`` calls ``typing.get_type_hints`` for every dataclass *value* it builds, and with postponed
    annotations that evaluates every field's annotation string again: decoding a batch result of 25 instance
    outcomes evaluated 26 sets of annotations. In the 10,000-instance stage bench that was a third of the
    workflow thread's time (issue 17 item 3), inside workflow tasks.
    """

    def __init__(self) -> None:
        self._fields: dict[type, list[tuple[str, Any, bool]]] = {}

    def to_typed_value(self, hint: type, value: Any) -> Any:
        if not (isinstance(value, dict) and isinstance(hint, type) and dataclasses.is_dataclass(hint)):
            return JSONTypeConverter.Unhandled
        fields = self._fields.get(hint)
        if fields is None:
            hints = get_type_hints(hint)
            fields = [(f.name, hints[f.name], f.init) for f in dataclasses.fields(hint)]
            self._fields[hint] = fields
        init: dict[str, Any] = {}
        late: dict[str, Any] = {}
        for name, field_type, is_init in fields:
            if name not in value:
                continue  # a missing required field fails in the constructor, as in the SDK
            try:
                converted = value_to_type(field_type, value[name], [self])
            except Exception as err:
                raise TypeError(f"Failed converting field {name} on dataclass {hint}") from err
            (init if is_init else late)[name] = converted
        obj = hint(**init)
        for name, converted in late.items():
            object.__setattr__(obj, name, converted)
        return obj


class PatchflowPayloadConverter(CompositePayloadConverter):
    """Temporal's default payload converter with :class:`ShallowDataclassEncoder` for JSON (same encodings,
    same bytes: every other SDK client and every recorded history reads it unchanged) and
    :class:`CachedDataclassDecoder` for reading it back (the same objects)."""

    def __init__(self) -> None:
        super().__init__(
            *(
                JSONPlainPayloadConverter(
                    encoder=ShallowDataclassEncoder, custom_type_converters=[CachedDataclassDecoder()]
                )
                if isinstance(c, JSONPlainPayloadConverter)
                else c
                for c in DefaultPayloadConverter.default_encoding_payload_converters
            )
        )


# ------------------------------------------------------------------------------------------------- pruning


def claimed_digests(message: Message) -> set[str]:
    """The blob digests the reference payloads anywhere inside ``message`` (a history event, say) name."""
    found: set[str] = set()
    _walk(message, found)
    return found


def _walk(message: Message, found: set[str]) -> None:
    if isinstance(message, Payload):
        if message.metadata.get("encoding") == CLAIM_ENCODING:
            try:
                digest = json.loads(message.data)["sha256"]
            except (ValueError, KeyError, TypeError):
                return
            if isinstance(digest, str) and _DIGEST.fullmatch(digest):
                found.add(digest)
        return
    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            for item in value.values():
                if isinstance(item, Message):
                    _walk(item, found)
        elif isinstance(value, Message):
            _walk(value, found)
        else:  # a repeated message field
            for item in value:
                _walk(item, found)


@dataclasses.dataclass
class PruneReport:
    kept: int = 0
    removed: int = 0
    removed_bytes: int = 0
    workflows: int = 0
    """Workflow executions whose histories were read (open and closed, as long as the server keeps them)."""


async def prune(client: Client, store: Store, *, min_age: timedelta, dry_run: bool = False) -> PruneReport:
    """Remove the blobs no history the server still keeps refers to, and older than ``min_age``.

    Every execution the server still has is read — running waves (a wave paused for a month replays from its
    first event) and closed ones within the namespace's retention (``wave status`` of a finished wave decodes
    its result). ``min_age`` spares a blob written moments ago whose workflow task is not committed yet (a blob
    written again is refreshed, so it counts as young).
    """
    referenced: set[str] = set()
    report = PruneReport()
    async for execution in client.list_workflows():
        report.workflows += 1
        handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
        async for event in handle.fetch_history_events():
            referenced |= claimed_digests(event)
    cutoff = time.time() - min_age.total_seconds()
    doomed: list[str] = []
    for digest, size, touched in await asyncio.to_thread(store.entries):
        if digest in referenced or touched > cutoff:
            report.kept += 1
            continue
        doomed.append(digest)
        report.removed += 1
        report.removed_bytes += size
    if doomed and not dry_run:
        await asyncio.to_thread(store.delete, doomed)
    return report
