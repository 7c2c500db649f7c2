"""The claim-check payload codec (issue 17, item 1): large payloads travel by reference, and a reference can
neither reach outside the payload directory nor smuggle in content other than what it names.

The pattern is Temporal's documented answer to payload size limits (a ``PayloadCodec`` that stores large
payloads externally and sends a reference; SDK "Data encryption / payload codec" and "large payloads"
guidance); the limits themselves: ``shared/reference/temporal.md`` §1.1.
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from temporalio.api.common.v1 import Payload
from temporalio.converter import DataConverter

from patchflow.config import Settings
from patchflow.control.connection import data_converter
from patchflow.control.payloads import (
    CLAIM_ENCODING,
    BlobStore,
    ClaimCheckCodec,
    PatchflowPayloadConverter,
    PayloadStoreError,
    claim_check_codec,
)
from patchflow.core.hooks import HookStepRecord
from patchflow.core.wavemodel import (
    InstanceOutcome,
    PatchBatchResult,
    StageProgress,
    StageRunResult,
    StageStatus,
    WaveResult,
    WaveStatus,
)
from patchflow.store.db import Role


def payload(size: int) -> Payload:
    return Payload(metadata={"encoding": b"json/plain"}, data=b'"' + b"x" * size + b'"')


async def test_small_payloads_stay_inline_and_large_ones_become_references(tmp_path: Path) -> None:
    codec = claim_check_codec(tmp_path, inline_bytes=4096)
    small, large = payload(100), payload(100_000)
    encoded = await codec.encode([small, large])
    assert encoded[0] == small  # untouched
    assert encoded[1].metadata["encoding"] == CLAIM_ENCODING
    assert encoded[1].ByteSize() < 200  # the reference, not the data
    reference = json.loads(encoded[1].data)
    assert reference["sha256"] == hashlib.sha256(large.SerializeToString()).hexdigest()
    assert (tmp_path / reference["sha256"][:2] / reference["sha256"]).is_file()
    decoded = await codec.decode(encoded)
    assert decoded == [small, large]  # metadata (the original encoding) included


async def test_a_dataclass_round_trips_through_a_converter_with_the_codec(tmp_path: Path) -> None:
    converter = data_converter(Settings(data_dir=tmp_path, payload_inline_bytes=1024))
    status = StageStatus(
        name="prod",
        state="running",
        instances={f"i-{n:017d}": "succeeded" for n in range(5000)},
    )
    encoded = await converter.encode([status])
    assert encoded[0].metadata["encoding"] == CLAIM_ENCODING
    assert any((tmp_path / "payloads").rglob("*"))  # the default directory: <data_dir>/payloads
    [back] = await converter.decode(encoded, [StageStatus])
    assert back == status


async def test_the_same_content_is_stored_once(tmp_path: Path) -> None:
    codec = claim_check_codec(tmp_path, inline_bytes=1024)
    first = await codec.encode([payload(50_000)])
    second = await codec.encode([payload(50_000)])
    assert first == second
    assert len([p for p in tmp_path.rglob("*") if p.is_file()]) == 1


async def test_payloads_recorded_before_the_codec_decode_as_themselves(tmp_path: Path) -> None:
    """Histories written inline (every wave before this codec) keep replaying: decode leaves them alone."""
    codec = claim_check_codec(tmp_path, inline_bytes=1024)
    inline = payload(500_000)  # large, but recorded inline
    assert await codec.decode([inline]) == [inline]


def reference(digest: str) -> Payload:
    return Payload(metadata={"encoding": CLAIM_ENCODING}, data=json.dumps({"sha256": digest}).encode())


@pytest.mark.parametrize(
    "digest",
    [
        "../../../../etc/passwd",
        "/etc/passwd",
        "ab/../../secret",
        "A" * 64,  # upper case: not how the store names blobs
        "0" * 63,
        "0" * 64 + "/",
    ],
)
async def test_a_reference_cannot_name_a_path_outside_the_store(tmp_path: Path, digest: str) -> None:
    store = tmp_path / "payloads"
    (tmp_path / "secret").write_text("not a payload")
    codec = claim_check_codec(store)
    with pytest.raises(PayloadStoreError, match="not a SHA-256 digest"):
        await codec.decode([reference(digest)])


async def test_a_changed_blob_is_refused_not_decoded(tmp_path: Path) -> None:
    codec = claim_check_codec(tmp_path, inline_bytes=1024)
    [encoded] = await codec.encode([payload(10_000)])
    digest = json.loads(encoded.data)["sha256"]
    blob = tmp_path / digest[:2] / digest
    original = blob.read_bytes()
    blob.write_bytes(payload(10_001).SerializeToString())  # another payload under this name
    with pytest.raises(PayloadStoreError, match="does not match its digest"):
        await codec.decode([encoded])
    blob.write_bytes(original[: len(original) // 2])  # truncated
    with pytest.raises(PayloadStoreError, match="does not match its digest"):
        await codec.decode([encoded])


async def test_a_missing_blob_says_which_directory_and_what_to_share(tmp_path: Path) -> None:
    codec = ClaimCheckCodec(BlobStore(tmp_path / "elsewhere"))
    with pytest.raises(PayloadStoreError, match="PATCHFLOW_PAYLOAD_DIR") as info:
        await codec.decode([reference("0" * 64)])
    assert str(tmp_path / "elsewhere") in str(info.value)


@pytest.mark.parametrize("data", [b"not json", b"{}", b'{"sha256": 5}', b"[]"])
async def test_a_malformed_reference_is_refused(tmp_path: Path, data: bytes) -> None:
    codec = claim_check_codec(tmp_path)
    with pytest.raises(PayloadStoreError, match="malformed payload reference"):
        await codec.decode([Payload(metadata={"encoding": CLAIM_ENCODING}, data=data)])


def test_the_payload_directory_follows_the_settings(tmp_path: Path) -> None:
    assert Settings(data_dir=tmp_path).payload_dir_resolved == tmp_path / "payloads"
    shared = tmp_path / "shared"
    converter = data_converter(Settings(data_dir=tmp_path, payload_dir=shared))
    codec = converter.payload_codec
    assert isinstance(codec, ClaimCheckCodec) and codec.store.directory == shared
    assert converter.payload_converter_class is PatchflowPayloadConverter
    assert converter.external_storage is None  # see patchflow.control.payloads: the codec, not the SDK's


def _a_status() -> WaveStatus:
    return WaveStatus(
        wave_id="w-1",
        plan_name="web",
        patch_set_id="ps-1",
        state="running",
        stages=[
            StageStatus(
                name="prod",
                state="running",
                instances={"i-1": "succeeded", "i-2": "failed"},
                details={"i-2": "exit 100: E: Unable to locate package"},
                errors=1,
                max_errors=0,
                window_start=datetime(2026, 12, 3, 12, 0, 0, 500, tzinfo=UTC),
                hook_steps={"i-1": [HookStepRecord(phase="pre_install", step="drain", status="succeeded")]},
            )
        ],
    )


def test_the_payload_converter_writes_the_sdk_default_bytes_and_reads_them_back() -> None:
    """Same encodings, same bytes as ``DefaultPayloadConverter`` (other SDK clients and recorded histories read
    them unchanged): nested dataclasses, dicts of them, datetimes, None, sets, tuples, enums, plain values."""
    status = _a_status()
    values: list[Any] = [
        WaveResult(status=status),
        StageRunResult(
            states={"i-1": "succeeded"},
            details={},
            remaining=["i-3"],
            errors=0,
            budget_exceeded=False,
            stopped=False,
        ),
        None,
        b"raw",
        {"a": (1, 2), "b": {3}},
        Role.approver,
        [1.5, "x", True],
    ]
    default = DataConverter.default.payload_converter
    ours = PatchflowPayloadConverter()
    assert ours.to_payloads(values) == default.to_payloads(values)
    assert ours.from_payloads(ours.to_payloads([status]), [WaveStatus]) == [status]


def test_the_cached_dataclass_decoder_builds_what_the_sdk_builds() -> None:
    """:class:`CachedDataclassDecoder` resolves each class's field types once; what it builds must be what the SDK's
    ``value_to_type`` builds — nested dataclasses in lists and dicts, Optional fields, datetimes, defaults for
    missing optional fields — and it must fail where the SDK fails (a missing required field, a wrong type)."""
    outcome = InstanceOutcome("i-1", "failed", True, detail="exit 1", changed=2, pending_reboot=True)
    values: list[tuple[Any, type]] = [
        (PatchBatchResult(outcomes=[outcome, InstanceOutcome("i-2", "succeeded", False)]), PatchBatchResult),
        (WaveResult(status=_a_status()), WaveResult),
        (
            StageProgress(states={"i-1": "in_flight"}, errors=0, max_errors=1, max_concurrency=5),
            StageProgress,
        ),
    ]
    default = DataConverter.default.payload_converter
    ours = PatchflowPayloadConverter()
    for value, hint in values:
        payloads = default.to_payloads([value])
        assert ours.from_payloads(payloads, [hint]) == default.from_payloads(payloads, [hint]) == [value]
    # Fields written by a newer version are ignored, a missing optional field takes its default (as the SDK).
    older = default.to_payloads(
        [{"instance_id": "i-1", "status": "succeeded", "counts_as_error": False, "new": 1}]
    )
    assert ours.from_payloads(older, [InstanceOutcome]) == [InstanceOutcome("i-1", "succeeded", False)]
    for bad in (
        {"instance_id": "i-1"},
        {"instance_id": "i-1", "status": "x", "counts_as_error": False, "changed": "two"},
    ):
        payloads = default.to_payloads([bad])
        with pytest.raises(Exception) as sdk:
            default.from_payloads(payloads, [InstanceOutcome])
        with pytest.raises(type(sdk.value)):
            ours.from_payloads(payloads, [InstanceOutcome])
