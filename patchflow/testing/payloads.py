"""The largest payload a client and the workers built on it exchange with Temporal (issue 17, item 1).

A pass-through :class:`~temporalio.converter.PayloadCodec` that notes the size of every set of payloads it
sees — workflow and activity inputs and results, Update/Query/Signal arguments and answers, continue-as-new
and child-workflow inputs — on both sides (encode: what this process sends; decode: what it receives). The
server checks the size of such a set against ``limit.blobSize`` (warning at 512 KiB, refusal at 2 MiB;
``shared/reference/temporal.md`` §1.1), so a set's total is what this reports.

Use :func:`recording_client` for the client that starts waves *and* the worker's client (the worker encodes
what workflows send: activity inputs, child inputs, results, query answers).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import dataclass

from temporalio.api.common.v1 import Payload
from temporalio.client import Client
from temporalio.converter import PayloadCodec

#: Temporal's ``limit.blobSize.warn`` default (the server logs TMPRL1103 past it).
WARN_BYTES = 512 * 1024
#: The size issue 17 asks every payload of a 100,000-instance stage to stay under.
TARGET_BYTES = 256 * 1024


@dataclass
class LargestPayload:
    size: int = 0
    """Bytes of the largest set of payloads seen (the sum of its payloads' serialised sizes)."""
    direction: str = ""
    """``encode`` (sent by this process) or ``decode`` (received)."""
    sample: str = ""
    """The start of its first payload's data, to tell which input or result it was."""
    fields: list[str] = dataclasses.field(default_factory=list)
    """Top-level field names of its first payload when that is a JSON object."""


class PayloadSizeRecorder(PayloadCodec):
    """Records the largest set of payloads; changes nothing."""

    def __init__(self, inner: PayloadCodec | None = None) -> None:
        self.inner = inner
        """The codec this one wraps (the claim check): what it sends is what is measured."""
        self.largest = LargestPayload()
        self.sets = 0
        self.by_kind: dict[str, LargestPayload] = {}
        """The largest payload set of each kind (its first payload's top-level fields, or its data's start)."""

    def _note(self, payloads: Sequence[Payload], direction: str) -> None:
        self.sets += 1
        if not payloads:
            return
        size = sum(p.ByteSize() for p in payloads)
        kind_best = max((b.size for b in self.by_kind.values()), default=0)
        if size < 16 * 1024 and size <= kind_best and self.by_kind:  # small: not worth parsing to classify
            return
        data = payloads[0].data
        fields: list[str] = []
        try:
            decoded = json.loads(data)
            if isinstance(decoded, dict):
                fields = list(decoded)
        except ValueError:
            pass
        seen = LargestPayload(size, direction, data[:120].decode("utf-8", "replace"), fields)
        kind = ",".join(fields[:8]) or seen.sample[:40]
        if size > self.by_kind.get(kind, LargestPayload()).size:
            self.by_kind[kind] = seen
        if size > self.largest.size:
            self.largest = seen

    def top(self, count: int = 8) -> list[LargestPayload]:
        """The largest payload set of each kind, largest first."""
        return sorted(self.by_kind.values(), key=lambda p: p.size, reverse=True)[:count]

    async def encode(self, payloads: Sequence[Payload]) -> list[Payload]:
        if self.inner is not None:
            payloads = await self.inner.encode(payloads)
        self._note(payloads, "encode")
        return list(payloads)

    async def decode(self, payloads: Sequence[Payload]) -> list[Payload]:
        self._note(payloads, "decode")
        if self.inner is not None:
            return await self.inner.decode(payloads)
        return list(payloads)


def recording_client(client: Client, recorder: PayloadSizeRecorder) -> Client:
    """``client`` with ``recorder`` as its payload codec (same connection, namespace and converter); the
    recorder wraps the client's own codec (the claim check), so it measures what goes over the wire."""
    if recorder.inner is None:
        recorder.inner = client.data_converter.payload_codec
    config = client.config()
    config["data_converter"] = dataclasses.replace(client.data_converter, payload_codec=recorder)
    return Client(**config)
