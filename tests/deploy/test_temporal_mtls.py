"""Temporal behind mutual TLS in deploy/: the certificate script's output, and who gets which certificate.

Offline, like tests/deploy/test_deploy_files.py: the script runs (OpenSSL), its certificates are read back with
``cryptography``, and the compose file, the Kubernetes manifests and the Temporal Helm values are parsed to
check that the frontend requires client certificates and that only the API (which also serves Slack), the
workers, the read-only Temporal UI and the one-shot namespace job hold one — each its own, never the CA's key,
and no operator's. That those certificates work against a frontend requiring them is shown in
tests/control/test_connection.py.
"""

from __future__ import annotations

import stat
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.deploy.test_deploy_files import (
    CERT_SCRIPT,
    COMPOSE_DIR,
    K8S_DIR,
    TLS_SOURCE,
    bind_mounts,
    load_yaml,
    patchflow_services,
    run,
    service_env,
    services,
    settings_from,
    temporal_certs,  # noqa: F401 - a fixture
)

COMPONENTS = {"temporal", "patchflow-api", "patchflow-worker", "temporal-ui", "temporal-admin"}
"""The certificate directories the script makes (besides ``ca``): one server, four clients."""

COMPOSE_HOLDERS = {
    "temporal": "temporal",
    "temporal-ui": "temporal-ui",
    "temporal-namespace": "temporal-admin",
    "patchflow-api": "patchflow-api",
    "patchflow-worker": "patchflow-worker",
}
"""compose service → the one certificate directory it mounts; every other service mounts none."""

HELM_VALUES = K8S_DIR / "temporal" / "values-mtls.yaml"


def certificate(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def usages(cert: x509.Certificate) -> set[x509.ObjectIdentifier]:
    return set(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


# ---------------------------------------------------------------------------------------------- the script


def test_the_script_makes_a_ca_and_one_certificate_per_component(temporal_certs: Path) -> None:  # noqa: F811
    assert {p.name for p in temporal_certs.iterdir()} == COMPONENTS | {"ca"}
    assert stat.S_IMODE(temporal_certs.stat().st_mode) == 0o700, "other users of the host cannot look inside"
    assert stat.S_IMODE((temporal_certs / "ca" / "ca.key").stat().st_mode) == 0o600
    ca = certificate(temporal_certs / "ca" / "ca.crt")
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca

    for component in COMPONENTS:
        directory = temporal_certs / component
        assert {p.name for p in directory.iterdir()} == {"tls.crt", "tls.key", "ca.crt"}, component
        assert (directory / "ca.crt").read_bytes() == (temporal_certs / "ca" / "ca.crt").read_bytes()
        cert = certificate(directory / "tls.crt")
        cert.verify_directly_issued_by(ca)
        assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == component
        assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        key = serialization.load_pem_private_key((directory / "tls.key").read_bytes(), password=None)
        assert key.public_key() == cert.public_key(), f"{component}: the key is the certificate's"
        if component == "temporal":
            # the frontend's and internode certificate; Temporal's system worker presents it as a client
            assert usages(cert) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            assert {"temporal", "temporal-frontend.temporal.svc.cluster.local", "localhost"} <= set(
                names.get_values_for_type(x509.DNSName)
            )
        else:
            assert usages(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}, f"{component} is a client only"


def test_running_it_again_renews_the_leaves_and_keeps_the_ca(tmp_path: Path) -> None:
    out = tmp_path / "tls"
    assert run(str(CERT_SCRIPT), str(out)).returncode == 0
    first_ca = (out / "ca" / "ca.crt").read_bytes()
    first_api = certificate(out / "patchflow-api" / "tls.crt")
    again = run(str(CERT_SCRIPT), str(out), "--days", "30", "--client", "worker-eu", "--san", "127.0.0.7")
    assert again.returncode == 0, again.stderr
    assert (out / "ca" / "ca.crt").read_bytes() == first_ca
    renewed = certificate(out / "patchflow-api" / "tls.crt")
    assert renewed.serial_number != first_api.serial_number
    assert (renewed.not_valid_after_utc - renewed.not_valid_before_utc).days == 30
    assert usages(certificate(out / "worker-eu" / "tls.crt")) == {ExtendedKeyUsageOID.CLIENT_AUTH}
    names = certificate(out / "temporal" / "tls.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert "127.0.0.7" in {str(ip) for ip in names.value.get_values_for_type(x509.IPAddress)}


@pytest.mark.parametrize(
    "args", [["--client", "ca"], ["--client", "../etc"], ["--days", "many"], ["--bogus"], []], ids=str
)
def test_the_script_refuses_bad_arguments(tmp_path: Path, args: list[str]) -> None:
    out = [str(tmp_path / "tls")] if args else []
    result = run(str(CERT_SCRIPT), *out, *args)
    assert result.returncode == 2 and result.stderr, result.stderr
    assert not (tmp_path / "tls").exists() or not any((tmp_path / "tls").iterdir())


# ---------------------------------------------------------------------------------------------- compose


def _tls_mounts(service: dict[str, Any]) -> list[tuple[PurePosixPath, str]]:
    return [
        (PurePosixPath(source), target)
        for source, target in bind_mounts(service)
        if PurePosixPath(source).is_relative_to(TLS_SOURCE)
    ]


def _inside(path: str, mounts: list[tuple[PurePosixPath, str]], certs: Path) -> bool:
    """Whether ``path`` (in the container) is a file the script makes, in one of ``mounts``."""
    for source, target in mounts:
        if PurePosixPath(path).is_relative_to(target):
            made = certs / source.relative_to(TLS_SOURCE) / PurePosixPath(path).relative_to(target)
            return made.is_file()
    return False


def test_compose_mounts_each_certificate_into_its_component_only(temporal_certs: Path) -> None:  # noqa: F811
    holders = {}
    for name, svc in services().items():
        mounts = _tls_mounts(svc)
        for source, target in mounts:
            assert source != TLS_SOURCE and source.parent == TLS_SOURCE, (
                f"{name} mounts {source}: one directory"
            )
            assert source.name != "ca", f"{name} mounts the CA's key"
            assert f"./{source}:{target}:ro" in [str(v) for v in svc["volumes"]], (
                f"{name}: mount it read-only"
            )
        if mounts:
            holders[name] = [source.name for source, _ in mounts]
    assert holders == {service: [directory] for service, directory in COMPOSE_HOLDERS.items()}
    assert "tls/" in (COMPOSE_DIR / ".gitignore").read_text().split()


def test_the_compose_frontend_requires_client_certificates(temporal_certs: Path) -> None:  # noqa: F811
    temporal = services()["temporal"]
    env = temporal["environment"]
    mounts = _tls_mounts(temporal)
    assert env["TEMPORAL_TLS_REQUIRE_CLIENT_AUTH"] == "true"
    for variable in (
        "TEMPORAL_TLS_FRONTEND_CERT",
        "TEMPORAL_TLS_FRONTEND_KEY",
        "TEMPORAL_TLS_CLIENT1_CA_CERT",
        "TEMPORAL_TLS_CLIENT2_CA_CERT",
        "TEMPORAL_TLS_SERVER_CERT",
        "TEMPORAL_TLS_SERVER_KEY",
        "TEMPORAL_TLS_SERVER_CA_CERT",
    ):
        assert _inside(env[variable], mounts, temporal_certs), f"temporal: {variable} is no mounted file"
    # the names the clients check the server's certificate against are in it (the script's SANs)
    names = certificate(temporal_certs / "temporal" / "tls.crt").extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    dns = set(names.value.get_values_for_type(x509.DNSName))
    assert {env["TEMPORAL_TLS_FRONTEND_SERVER_NAME"], env["TEMPORAL_TLS_INTERNODE_SERVER_NAME"]} <= dns


def test_only_the_api_and_the_workers_of_patchflow_talk_tls_to_temporal(
    temporal_certs: Path,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, svc in patchflow_services().items():
        env = service_env(svc)
        tls = {k: v for k, v in env.items() if k.startswith("PATCHFLOW_TEMPORAL_TLS_")}
        if svc["command"][0] not in ("api", "worker"):
            assert not tls and not _tls_mounts(svc), f"{name} never talks to Temporal: no certificate"
            continue
        settings = settings_from({k: v for k, v in env.items() if k.startswith("PATCHFLOW_")}, monkeypatch)
        assert settings.temporal_address.split(":")[0] == "temporal"
        mounts = _tls_mounts(svc)
        for field in ("temporal_tls_ca", "temporal_tls_cert", "temporal_tls_key"):
            assert _inside(str(getattr(settings, field)), mounts, temporal_certs), f"{name}: {field}"
        cert = certificate(temporal_certs / mounts[0][0].name / "tls.crt")
        assert usages(cert) == {ExtendedKeyUsageOID.CLIENT_AUTH}


def test_the_compose_ui_is_read_only_and_the_namespace_job_uses_its_own_certificate(
    temporal_certs: Path,  # noqa: F811
) -> None:
    ui = services()["temporal-ui"]
    env = ui["environment"]
    assert env["TEMPORAL_DISABLE_WRITE_ACTIONS"] == "true", "a UI with a certificate must not act"
    assert env["TEMPORAL_TLS_ENABLE_HOST_VERIFICATION"] == "true"
    for variable in ("TEMPORAL_TLS_CA", "TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY"):
        assert _inside(env[variable], _tls_mounts(ui), temporal_certs), f"temporal-ui: {variable}"
    job = services()["temporal-namespace"]
    script = job["entrypoint"][-1]
    words = script.replace('"', " ").split()
    for flag in ("--tls-ca-path", "--tls-cert-path", "--tls-key-path"):
        assert _inside(words[words.index(flag) + 1], _tls_mounts(job), temporal_certs), flag
    assert script.count("$$tls") == 2, "both the describe and the create use TLS"


# ---------------------------------------------------------------------------------------------- kubernetes


def manifests() -> list[dict[str, Any]]:
    objects = []
    for name in load_yaml(K8S_DIR / "kustomization.yaml")["resources"]:
        with (K8S_DIR / name).open() as handle:
            objects += [o for o in yaml.safe_load_all(handle) if o]
    return objects


def test_kubernetes_gives_certificates_to_the_api_and_the_workers_only() -> None:
    objects = manifests()
    config = next(o for o in objects if o["kind"] == "ConfigMap")
    assert not [k for k in config["data"] if k.startswith("PATCHFLOW_TEMPORAL_TLS_")], "not for every pod"
    secrets = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Secret"}
    expected = {
        "patchflow-api": "patchflow-temporal-api-tls",
        "patchflow-worker": "patchflow-temporal-worker-tls",
    }
    seen = {}
    for workload in (o for o in objects if o["kind"] in ("Deployment", "Job")):
        name = workload["metadata"]["name"]
        pod = workload["spec"]["template"]["spec"]
        tls_volumes = {
            v["name"]: v["secret"]["secretName"]
            for v in pod.get("volumes", [])
            if "secret" in v and v["secret"]["secretName"] in set(expected.values())
        }
        for container in pod["containers"]:
            env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
            tls = {k: v for k, v in env.items() if k.startswith("PATCHFLOW_TEMPORAL_TLS_")}
            if name not in expected:
                assert not tls and not tls_volumes, f"{name} never talks to Temporal: no certificate"
                continue
            [volume] = tls_volumes
            [mount] = [m for m in container["volumeMounts"] if m["name"] == volume]
            assert mount["readOnly"] is True
            assert set(tls) == {
                "PATCHFLOW_TEMPORAL_TLS_CA",
                "PATCHFLOW_TEMPORAL_TLS_CERT",
                "PATCHFLOW_TEMPORAL_TLS_KEY",
            }
            for variable, path in tls.items():
                inside = PurePosixPath(path)
                assert inside.parent == PurePosixPath(mount["mountPath"]), f"{name}: {variable}"
                assert inside.name in secrets[tls_volumes[volume]]["stringData"], f"{name}: {variable}"
            seen[name] = tls_volumes[volume]
    assert seen == expected, "each its own Secret"


def test_the_temporal_helm_values_require_client_certificates() -> None:
    values = load_yaml(HELM_VALUES)
    server = values["server"]
    mounts = {m["name"]: m["mountPath"] for m in server["additionalVolumeMounts"]}
    secrets = {v["name"]: v["secret"]["secretName"] for v in server["additionalVolumes"]}
    assert (
        set(mounts) == set(secrets) == {"temporal-tls"} and secrets["temporal-tls"] == "temporal-server-tls"
    )
    root = PurePosixPath(mounts["temporal-tls"])
    for side in ("frontend", "internode"):
        tls = server["config"]["tls"][side]
        assert tls["server"]["requireClientAuth"] is True, side
        files = [tls["server"]["certFile"], tls["server"]["keyFile"], *tls["server"]["clientCaFiles"]]
        files += tls["client"]["rootCaFiles"]
        assert all(
            PurePosixPath(f).parent == root and PurePosixPath(f).name in {"tls.crt", "tls.key", "ca.crt"}
            for f in files
        ), side
    assert (
        server["config"]["tls"]["frontend"]["client"]["serverName"]
        == "temporal-frontend.temporal.svc.cluster.local"
    )

    web = values["web"]
    env = {e["name"]: e["value"] for e in web["additionalEnv"]}
    assert env["TEMPORAL_DISABLE_WRITE_ACTIONS"] == "true"
    ui_root = PurePosixPath(web["additionalVolumeMounts"][0]["mountPath"])
    assert web["additionalVolumes"][0]["secret"]["secretName"] == "temporal-ui-tls"
    for variable in ("TEMPORAL_TLS_CA", "TEMPORAL_TLS_CERT", "TEMPORAL_TLS_KEY"):
        assert PurePosixPath(env[variable]).parent == ui_root, variable
    assert values["admintools"]["enabled"] is False, "no shell with Temporal access for whoever may exec"
