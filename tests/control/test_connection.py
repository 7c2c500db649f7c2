"""patchflow's Temporal clients over mutual TLS, against a real frontend that requires client certificates.

A TLS terminator on 127.0.0.1 (Python's ``ssl``, ``CERT_REQUIRED``, ALPN ``h2``: what the Temporal frontend
does with ``global.tls.frontend.server.requireClientAuth: true``) forwards the gRPC bytes to the session's real
``temporal server start-dev``. Certificates are made here with ``cryptography``: a CA, the frontend's
certificate (names ``temporal`` and ``localhost``, no IP address, so the server-name setting is exercised), a
client certificate of that CA, and one of another CA. The terminator records why it refused each handshake, so
a refusal is shown to happen at the frontend for the stated reason, not merely somewhere.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import threading
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from prometheus_client import CollectorRegistry
from temporalio.testing import WorkflowEnvironment

from patchflow.config import Settings
from patchflow.control.connection import TemporalSettingsError, TemporalUnavailable, connect, temporal_tls
from patchflow.control.devserver import free_port
from patchflow.control.waves import wave_status
from patchflow.metrics import Metrics
from patchflow.service.api import create_app
from patchflow.service.worker import build_worker
from tests.api.test_api import write_plan
from tests.conftest import REPO_ROOT
from tests.test_cli import run as run_cli
from tests.workflows.conftest import dev_env  # noqa: F401 - a fixture

# ---------------------------------------------------------------------------------------------- certificates


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write(path: Path, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> tuple[Path, Path]:
    path.mkdir(parents=True, exist_ok=True)
    (path / "tls.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (path / "tls.key").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return path / "tls.crt", path / "tls.key"


def _builder(subject: str, issuer: x509.Name, public_key: Any, days: float) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=days))
    )


@dataclass
class Authority:
    """A CA that issues leaf certificates."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    pem: Path

    @classmethod
    def create(cls, name: str, directory: Path) -> Authority:
        key = _key()
        builder = _builder(
            name, x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]), key.public_key(), 30
        )
        cert = (
            builder.add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        directory.mkdir(parents=True, exist_ok=True)
        pem = directory / f"{name}.crt"
        pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(key, cert, pem)

    def issue(
        self, name: str, directory: Path, *, server_names: list[str] | None = None, days: float = 1
    ) -> tuple[Path, Path]:
        """A leaf: a server certificate for ``server_names`` (DNS), else a client certificate."""
        key = _key()
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server_names else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            _builder(name, self.cert.subject, key.public_key(), days)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if server_names:
            names = [x509.DNSName(n) for n in server_names]
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return _write(directory, key, builder.sign(self.key, hashes.SHA256()))


@dataclass
class Pki:
    ca: Path
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    """Issued by the frontend's CA to a component (``patchflow-worker``)."""
    intruder: tuple[Path, Path]
    """A client certificate of another CA."""
    other_ca: Path


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    ca = Authority.create("patchflow-temporal-ca", root / "ca")
    other = Authority.create("someone-elses-ca", root / "other")
    return Pki(
        ca=ca.pem,
        server=ca.issue("temporal", root / "temporal", server_names=["temporal", "localhost"]),
        client=ca.issue("patchflow-worker", root / "patchflow-worker"),
        intruder=other.issue("intruder", root / "intruder"),
        other_ca=other.pem,
    )


# ---------------------------------------------------------------------------------------------- the frontend


class MutualTlsFrontend:
    """TLS with required client certificates in front of a plaintext Temporal frontend (``upstream``)."""

    def __init__(self, upstream: str, pki: Pki) -> None:
        self.upstream = upstream.rsplit(":", 1)
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(*pki.server)
        self.context.load_verify_locations(pki.ca)
        self.context.verify_mode = ssl.CERT_REQUIRED
        self.context.set_alpn_protocols(["h2"])  # gRPC is HTTP/2
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.refusals: list[str] = []
        """Why each refused handshake was refused (OpenSSL's reason)."""
        self.accepted: list[str] = []
        """The client certificate subject of each accepted connection."""
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="mtls-frontend")

    def _run(self) -> None:
        async def serve() -> None:
            self._server = await asyncio.start_server(self._connection, "127.0.0.1", self.port)
            self._started.set()
            await self._stop.wait()
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self._server.wait_closed()

        self._stop = asyncio.Event()
        self._loop.run_until_complete(serve())
        self._loop.close()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await writer.start_tls(self.context)
        except (ssl.SSLError, OSError) as exc:
            self.refusals.append(getattr(exc, "reason", None) or type(exc).__name__)
            writer.transport.abort()
            return
        peer = writer.get_extra_info("peercert") or {}
        self.accepted.append(str(dict(part[0] for part in peer.get("subject", ())).get("commonName")))
        try:
            up_reader, up_writer = await asyncio.open_connection(self.upstream[0], int(self.upstream[1]))
        except OSError:
            writer.transport.abort()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (OSError, ssl.SSLError):
            pass
        finally:
            writer.transport.abort()

    def __enter__(self) -> MutualTlsFrontend:
        self._thread.start()
        assert self._started.wait(10), "the TLS frontend did not start"
        return self

    def __exit__(self, *_: object) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)

    def refusals_after(self, count: int) -> list[str]:
        """The refusals after the first ``count``, once there is one (the frontend's thread records it after
        the client has already seen the connection fail)."""
        for _ in range(100):
            if len(self.refusals) > count:
                break
            threading.Event().wait(0.05)
        return self.refusals[count:]


@pytest.fixture(scope="module")
def frontend(dev_env: WorkflowEnvironment, pki: Pki) -> Iterator[MutualTlsFrontend]:  # noqa: F811
    with MutualTlsFrontend(dev_env.client.service_client.config.target_host, pki) as tls:
        yield tls


def tls_settings(frontend: MutualTlsFrontend, pki: Pki, **overrides: Any) -> Settings:
    """Settings of a component holding ``pki.client``; ``overrides`` take fields away or change them."""
    fields: dict[str, Any] = {
        "temporal_address": frontend.address,
        "temporal_tls_ca": pki.ca,
        "temporal_tls_cert": pki.client[0],
        "temporal_tls_key": pki.client[1],
        "temporal_tls_server_name": "temporal",
        **overrides,
    }
    return Settings(**fields)


# ---------------------------------------------------------------------------------------------- tests


async def test_a_client_with_its_certificate_lists_and_starts(frontend: MutualTlsFrontend, pki: Pki) -> None:
    """The worker's certificate: connect, list, and start a workflow (on a queue no worker polls, then
    terminated) — everything goes through the TLS frontend, which saw the certificate's name."""
    client = await connect(tls_settings(frontend, pki))
    async for _ in client.list_workflows("WorkflowType = 'WaveWorkflow'", limit=1):
        break
    handle = await client.start_workflow(
        "NoSuchWorkflow", id=f"mtls-{uuid.uuid4()}", task_queue=f"mtls-{uuid.uuid4()}"
    )
    assert (await handle.describe()).status is not None
    await handle.terminate("test over")
    assert "patchflow-worker" in frontend.accepted


async def test_no_client_certificate_is_refused_with_a_clear_error(
    frontend: MutualTlsFrontend, pki: Pki
) -> None:
    refused = len(frontend.refusals)
    with pytest.raises(TemporalUnavailable) as caught:
        await connect(tls_settings(frontend, pki, temporal_tls_cert=None, temporal_tls_key=None))
    message = str(caught.value)
    assert message.startswith(f"cannot reach Temporal at {frontend.address}")
    assert "without a client certificate" in message and "PATCHFLOW_TEMPORAL_TLS_CERT" in message
    assert "PATCHFLOW_API_URL" in message, "operators are pointed at the API"
    # gRPC may try the handshake more than once (a busy machine): every try is refused, for this reason.
    assert set(frontend.refusals_after(refused)) == {"PEER_DID_NOT_RETURN_A_CERTIFICATE"}


async def test_a_certificate_of_another_ca_is_refused(frontend: MutualTlsFrontend, pki: Pki) -> None:
    refused = len(frontend.refusals)
    with pytest.raises(TemporalUnavailable) as caught:
        await connect(
            tls_settings(frontend, pki, temporal_tls_cert=pki.intruder[0], temporal_tls_key=pki.intruder[1])
        )
    assert f"client certificate {pki.intruder[0]}" in str(caught.value)
    assert "refused that certificate" in str(caught.value)
    # gRPC may try the handshake more than once (a busy machine): every try is refused, for this reason.
    assert set(frontend.refusals_after(refused)) == {"CERTIFICATE_VERIFY_FAILED"}


async def test_plain_grpc_is_refused_and_told_about_tls(frontend: MutualTlsFrontend) -> None:
    refused = len(frontend.refusals)
    with pytest.raises(TemporalUnavailable) as caught:
        await connect(Settings(temporal_address=frontend.address))
    assert "PATCHFLOW_TEMPORAL_TLS_CA, PATCHFLOW_TEMPORAL_TLS_CERT and PATCHFLOW_TEMPORAL_TLS_KEY" in str(
        caught.value
    )
    assert frontend.refusals_after(refused), "the frontend refused the plaintext connection"


async def test_the_frontend_is_verified_too(frontend: MutualTlsFrontend, pki: Pki) -> None:
    """A frontend whose certificate another CA signed, or that does not name the host dialled, is not
    talked to: the client certificate never helps an impostor."""
    with pytest.raises(TemporalUnavailable) as wrong_ca:
        await connect(tls_settings(frontend, pki, temporal_tls_ca=pki.other_ca))
    assert "the frontend's certificate did not verify" in str(wrong_ca.value)
    with pytest.raises(TemporalUnavailable) as wrong_name:
        await connect(tls_settings(frontend, pki, temporal_tls_server_name=None))  # 127.0.0.1 is not named
    assert "PATCHFLOW_TEMPORAL_TLS_SERVER_NAME" in str(wrong_name.value)


def test_tls_settings_that_cannot_work_say_which_variable(pki: Pki, tmp_path: Path) -> None:
    assert temporal_tls(Settings()) is False
    with pytest.raises(TemporalSettingsError, match="PATCHFLOW_TEMPORAL_TLS_CERT is set but .*_KEY is not"):
        temporal_tls(Settings(temporal_tls_cert=pki.client[0]))
    with pytest.raises(TemporalSettingsError, match="PATCHFLOW_TEMPORAL_TLS_KEY is set but .*_CERT is not"):
        temporal_tls(Settings(temporal_tls_key=pki.client[1]))
    missing = tmp_path / "absent.crt"
    with pytest.raises(TemporalSettingsError, match=f"PATCHFLOW_TEMPORAL_TLS_CA: cannot read {missing}"):
        temporal_tls(Settings(temporal_tls_ca=missing))
    with pytest.raises(
        TemporalSettingsError, match="PATCHFLOW_TEMPORAL_TLS_KEY: .* holds no PEM private key"
    ):
        temporal_tls(Settings(temporal_tls_cert=pki.client[0], temporal_tls_key=pki.client[0]))
    config = temporal_tls(Settings(temporal_tls_ca=pki.ca, temporal_tls_server_name="temporal"))
    assert not isinstance(config, bool) and config.client_cert is None and config.domain == "temporal"


async def test_the_api_reaches_temporal_through_mutual_tls(frontend: MutualTlsFrontend, pki: Pki) -> None:
    """The API's (and so its Slack handler's) one client: ready with the certificate, and without it
    ``/readyz`` says what is missing."""
    for settings, ready in (
        (tls_settings(frontend, pki), True),
        (tls_settings(frontend, pki, temporal_tls_cert=None, temporal_tls_key=None), False),
    ):
        app = create_app(settings, metrics=Metrics(CollectorRegistry()))
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as http:
            check = (await http.get("/readyz")).json()["checks"]["temporal"]
        assert check["ok"] is ready, check
        if not ready:
            assert "without a client certificate" in check["message"]


@pytest_asyncio.fixture
async def tls_worker(frontend: MutualTlsFrontend, pki: Pki, tmp_path: Path) -> AsyncIterator[Settings]:
    """A patchflow worker whose only way to Temporal is the TLS frontend, with its certificate."""
    settings = tls_settings(frontend, pki, data_dir=tmp_path / "data", task_queue=f"mtls-{uuid.uuid4()}")
    async with build_worker(await connect(settings), settings.task_queue, settings=settings):
        yield settings


async def test_a_wave_runs_with_worker_and_cli_behind_mutual_tls(
    tls_worker: Settings, pki: Pki, tmp_path: Path
) -> None:
    """The worker and the CLI (local mode, a process of its own) each through the TLS frontend with a
    certificate: start a wave, approve its gate, and it succeeds; the same CLI without a certificate is
    refused (exit 1) with what to set."""
    plans = tmp_path / "plans"
    plans.mkdir()
    plan = plans / write_plan(plans, "demo.yaml", time_scale=0.05)
    env: dict[str, str | None] = {
        "PATCHFLOW_TEMPORAL_ADDRESS": tls_worker.temporal_address,
        "PATCHFLOW_TASK_QUEUE": tls_worker.task_queue,
        "PATCHFLOW_TEMPORAL_TLS_CA": str(pki.ca),
        "PATCHFLOW_TEMPORAL_TLS_CERT": str(pki.client[0]),
        "PATCHFLOW_TEMPORAL_TLS_KEY": str(pki.client[1]),
        "PATCHFLOW_TEMPORAL_TLS_SERVER_NAME": "temporal",
    }

    async def patchflow(*args: str, **overrides: str | None) -> subprocess.CompletedProcess[str]:
        """``patchflow ARGS`` in a process of its own (``None`` overrides remove a variable)."""
        return await asyncio.to_thread(
            run_cli, *args, data_dir=tls_worker.data_dir, env_overrides={**env, **overrides}, timeout=120
        )

    started = await patchflow("wave", "start", str(plan), "--wait", "--timeout", "60", "--format", "json")
    assert started.returncode == 0, started.stderr
    wave_id = json.loads(started.stdout)["wave_id"]
    assert json.loads(started.stdout)["state"] == "waiting_approval"
    approved = await patchflow("wave", "approve", wave_id, "--stage", "prod", "--as", "ops-lead")
    assert approved.returncode == 0, approved.stderr

    client = await connect(tls_worker)
    deadline = asyncio.get_running_loop().time() + 60
    while (status := await wave_status(client, wave_id)).state != "succeeded":
        assert asyncio.get_running_loop().time() < deadline, status
        await asyncio.sleep(0.2)

    without = await patchflow(
        "wave", "status", wave_id, PATCHFLOW_TEMPORAL_TLS_CERT=None, PATCHFLOW_TEMPORAL_TLS_KEY=None
    )
    assert without.returncode == 1
    assert (
        without.stderr.startswith("error: cannot reach Temporal")
        and "without a client certificate" in without.stderr
    )


async def test_the_deploy_scripts_certificates_work_and_only_for_their_holders(
    dev_env: WorkflowEnvironment,  # noqa: F811
    tmp_path: Path,
) -> None:
    """What deploy/tls/make-temporal-certs.sh makes, used as deploy/ uses it: the frontend serves the
    ``temporal`` certificate and trusts the CA; the workers' certificate gets in (its address named in the
    certificate: 127.0.0.1), a certificate of a new CA made by another run does not."""
    script = REPO_ROOT / "deploy" / "tls" / "make-temporal-certs.sh"
    ours, theirs = tmp_path / "tls", tmp_path / "other-tls"
    for out in (ours, theirs):
        made = await asyncio.to_thread(
            subprocess.run, [str(script), str(out)], capture_output=True, timeout=60
        )
        assert made.returncode == 0, made.stderr
    pki = Pki(
        ca=ours / "temporal" / "ca.crt",
        server=(ours / "temporal" / "tls.crt", ours / "temporal" / "tls.key"),
        client=(ours / "patchflow-worker" / "tls.crt", ours / "patchflow-worker" / "tls.key"),
        intruder=(theirs / "patchflow-worker" / "tls.crt", theirs / "patchflow-worker" / "tls.key"),
        other_ca=theirs / "ca" / "ca.crt",
    )
    with MutualTlsFrontend(dev_env.client.service_client.config.target_host, pki) as tls:
        client = await connect(tls_settings(tls, pki, temporal_tls_server_name=None))
        async for _ in client.list_workflows(limit=1):
            break
        assert tls.accepted == ["patchflow-worker"]
        with pytest.raises(TemporalUnavailable):
            await connect(
                tls_settings(tls, pki, temporal_tls_cert=pki.intruder[0], temporal_tls_key=pki.intruder[1])
            )
        assert tls.refusals_after(0) == ["CERTIFICATE_VERIFY_FAILED"]
