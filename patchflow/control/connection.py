"""The one way patchflow connects to Temporal: :func:`connect`, used by the API (and its Slack handler), the
worker, ``dev``/``demo`` and the CLI in local mode.

Production runs the Temporal frontend behind mutual TLS (``deploy/``): only the processes holding a client
certificate issued by the deployment's CA — the API and the workers — can talk to it, so reaching the
frontend's port is no longer enough to act on a wave as anyone. ``PATCHFLOW_TEMPORAL_TLS_*`` name the files;
unset, the client speaks plain gRPC (the embedded dev server).
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

from temporalio.client import Client
from temporalio.converter import DataConverter
from temporalio.service import TLSConfig

from patchflow.config import Settings
from patchflow.control.payloads import ClaimCheckCodec, PatchflowPayloadConverter, store_for
from patchflow.errors import PatchflowError


class TemporalUnavailable(PatchflowError):
    """The Temporal frontend cannot be reached, or did not answer: the request may work later (HTTP 503)."""


class TemporalSettingsError(PatchflowError):
    """The Temporal client settings cannot work as given (a TLS file that cannot be read, a certificate
    without its key): retrying will not help, the configuration must change. Not an :class:`InputError`: the
    API answers it as 503 with this message (Temporal is unusable for it), the CLI exits 2."""

    exit_code = 2


PEM_MARKERS: dict[str, tuple[bytes, ...]] = {
    "temporal_tls_ca": (b"-----BEGIN CERTIFICATE-----",),
    "temporal_tls_cert": (b"-----BEGIN CERTIFICATE-----",),
    "temporal_tls_key": (
        b"-----BEGIN PRIVATE KEY-----",
        b"-----BEGIN EC PRIVATE KEY-----",
        b"-----BEGIN RSA PRIVATE KEY-----",
    ),
}
"""What each TLS file must contain (PEM): a file of the wrong kind is named at start-up, not at the handshake."""

MAX_PEM_BYTES = 1024 * 1024
"""Largest certificate, key or CA bundle file read (a bundle of a few hundred CAs is ~250 KB)."""


def temporal_tls(settings: Settings) -> TLSConfig | bool:
    """The client TLS configuration ``PATCHFLOW_TEMPORAL_TLS_*`` describe; ``False`` (plain gRPC) when none
    is set.

    * ``…_CA``: the CA bundle that signed the frontend's certificate (unset: the system's roots);
    * ``…_CERT`` and ``…_KEY``: this component's client certificate and key, presented to a frontend that
      requires client authentication; both or neither;
    * ``…_SERVER_NAME``: the name the frontend's certificate is checked against (and sent as SNI) when it is
      not the host of ``PATCHFLOW_TEMPORAL_ADDRESS``.

    Raises:
        TemporalSettingsError: a certificate without a key (or the reverse), or a file that cannot be read
            or holds no PEM of the right kind; the message names the variable and the file.
    """
    if not (
        settings.temporal_tls_ca
        or settings.temporal_tls_cert
        or settings.temporal_tls_key
        or settings.temporal_tls_server_name
    ):
        return False
    if bool(settings.temporal_tls_cert) != bool(settings.temporal_tls_key):
        given, missing = (
            ("CERT", "KEY") if settings.temporal_tls_cert else ("KEY", "CERT")
        )  # one of the two is set
        raise TemporalSettingsError(
            f"PATCHFLOW_TEMPORAL_TLS_{given} is set but PATCHFLOW_TEMPORAL_TLS_{missing} is not: a client "
            "certificate needs its private key (both files come from the same component's directory, e.g. "
            "tls.crt and tls.key)"
        )
    return TLSConfig(
        server_root_ca_cert=_pem(settings.temporal_tls_ca, "temporal_tls_ca"),
        client_cert=_pem(settings.temporal_tls_cert, "temporal_tls_cert"),
        client_private_key=_pem(settings.temporal_tls_key, "temporal_tls_key"),
        domain=settings.temporal_tls_server_name or None,
    )


def _pem(path: Path | None, field: str) -> bytes | None:
    if path is None:
        return None
    variable = f"PATCHFLOW_{field.upper()}"
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise TemporalSettingsError(
            f"{variable}: cannot read {path} ({exc.strerror or exc}); point it at the PEM file "
            "(deploy/tls/make-temporal-certs.sh writes one directory per component)"
        ) from None
    if len(data) > MAX_PEM_BYTES:
        raise TemporalSettingsError(
            f"{variable}: {path} is larger than {MAX_PEM_BYTES} bytes: not a PEM file"
        )
    if not any(marker in data for marker in PEM_MARKERS[field]):
        kind = "private key" if field == "temporal_tls_key" else "certificate"
        raise TemporalSettingsError(f"{variable}: {path} holds no PEM {kind} ('-----BEGIN …' block)")
    return data


def data_converter(settings: Settings) -> DataConverter:
    """Temporal's default converter with patchflow's claim-check codec: payloads past
    ``PATCHFLOW_PAYLOAD_INLINE_BYTES`` travel by reference to the store ``PATCHFLOW_PAYLOAD_STORE`` names
    (:mod:`patchflow.control.payloads`), and JSON encoded without ``dataclasses.asdict``'s deep copy (the same
    bytes, a seventh of the CPU: :class:`~patchflow.control.payloads.ShallowDataclassEncoder`)."""
    return dataclasses.replace(
        DataConverter.default,
        payload_converter_class=PatchflowPayloadConverter,
        payload_codec=ClaimCheckCodec(store_for(settings), inline_bytes=settings.payload_inline_bytes),
    )


async def connect(settings: Settings, *, attempts: int = 1) -> Client:
    """A client of the Temporal frontend at ``PATCHFLOW_TEMPORAL_ADDRESS``, over TLS when
    ``PATCHFLOW_TEMPORAL_TLS_*`` say so; ``attempts`` tries half a second apart (a server that is starting).

    Raises:
        TemporalSettingsError: the TLS settings cannot work (see :func:`temporal_tls`).
        TemporalUnavailable: the frontend cannot be reached or refused the connection (also a TLS handshake
            it refused: no or an untrusted client certificate); the message says what to check.
    """
    tls = temporal_tls(settings)
    last: Exception | None = None
    for attempt in range(attempts):
        try:
            return await Client.connect(
                settings.temporal_address, tls=tls, data_converter=data_converter(settings)
            )
        except Exception as exc:  # noqa: BLE001 - the SDK raises RuntimeError for connection failures
            last = exc
            if attempt + 1 < attempts:
                await asyncio.sleep(0.5)
    raise TemporalUnavailable(_unreachable(settings, tls, last))


def _unreachable(settings: Settings, tls: TLSConfig | bool, error: Exception | None) -> str:
    """Why the frontend could not be used, and what to check: the SDK's reasons are terse (``transport
    error``, ``Connection reset``), and a refused client certificate looks like a dropped connection."""
    address = settings.temporal_address
    reason = " ".join(str(error).split()) if error is not None else "no answer"
    message = f"cannot reach Temporal at {address} ({reason})"
    if not tls:
        return (
            f"{message}; start the embedded stack with 'patchflow dev' or set PATCHFLOW_TEMPORAL_ADDRESS. If "
            "this frontend requires TLS (as deploy/ sets it up, with client certificates), set "
            "PATCHFLOW_TEMPORAL_TLS_CA, PATCHFLOW_TEMPORAL_TLS_CERT and PATCHFLOW_TEMPORAL_TLS_KEY"
        )
    assert isinstance(tls, TLSConfig)
    if "InvalidCertificate" in reason or "certificate verify failed" in reason:
        return (
            f"{message}; the frontend's certificate did not verify: PATCHFLOW_TEMPORAL_TLS_CA must hold the CA "
            "that signed it, and it must name the host dialled (else set PATCHFLOW_TEMPORAL_TLS_SERVER_NAME to "
            "a name it carries)"
        )
    if tls.client_cert is None:
        return (
            f"{message}; over TLS without a client certificate: if the frontend requires client "
            "authentication (deploy/ sets it up so), set PATCHFLOW_TEMPORAL_TLS_CERT and "
            "PATCHFLOW_TEMPORAL_TLS_KEY to this component's certificate — operators act through the REST API "
            "instead (PATCHFLOW_API_URL and PATCHFLOW_TOKEN)"
        )
    return (
        f"{message}; over TLS with the client certificate {settings.temporal_tls_cert}: if the frontend "
        "dropped the connection it refused that certificate — it must be issued by a CA the frontend trusts "
        "for clients (its clientCaFiles) and not have expired"
    )
