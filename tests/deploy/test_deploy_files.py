"""deploy/compose and deploy/kubernetes, checked offline: schemas, and that every name in them is real.

Nothing here starts a container. The files are validated against the Compose Specification schema and the
Kubernetes 1.32 OpenAPI schemas (``kubernetes-validate``), rendered by ``docker compose config`` and
``kubectl kustomize`` when those exist, and cross-checked against patchflow itself: every ``PATCHFLOW_*``
variable is a :class:`~patchflow.config.Settings` field with a valid value, every ``patchflow …`` command
exists, every probe path is a route of the API, every metrics port is the one the settings make the process
serve, and Prometheus and Grafana point at what the stack runs. ``deploy/README.md`` lists what is not checked.

``kubectl`` and ``promtool`` are missing-means-skip locally and missing-means-fail under ``CI`` (like
tests/metrics/test_deploy.py); ``docker compose`` is optional everywhere (no Compose plugin is packaged for
the machines the suite runs on).
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterable, Iterator, Mapping
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from starlette.routing import Match
from typer.testing import CliRunner

from patchflow.config import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
COMPOSE_FILE = COMPOSE_DIR / "compose.yaml"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
K8S_DIR = DEPLOY / "kubernetes"
SCHEMAS = Path(__file__).resolve().parent / "schemas"
DASHBOARD = DEPLOY / "grafana" / "patchflow-dashboard.json"

KUBERNETES_VERSION = "1.32"
PATCHFLOW_IMAGE = "patchflow"
"""Name of the image built from deploy/compose/Dockerfile (kustomize rewrites it to a registry path)."""

METRICS_JOBS: dict[str, str] = {
    "patchflow-api": "api_port",
    "patchflow-worker": "worker_metrics_port",
    "patchflow-temporal-sdk": "temporal_metrics_port",
}
"""Prometheus job → the setting that names the port its targets serve on."""

K8S_PORTS: dict[str, str] = {
    "http": "api_port",
    "worker-metrics": "worker_metrics_port",
    "sdk-metrics": "temporal_metrics_port",
}
"""Named container port → the setting that makes patchflow listen on it."""

ENV_NAME = re.compile(r"\bPATCHFLOW_[A-Z0-9_]+\b")
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
SETTINGS_ENV = frozenset(f"PATCHFLOW_{name.upper()}" for name in Settings.model_fields)


# ---------------------------------------------------------------------------------------------- helpers


def binary(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path:
        return path
    message = f"'{name}' not found: {hint}"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must provide it")
    pytest.skip(message)


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=60)


def load_yaml(path: Path) -> Any:
    with path.open() as handle:
        return yaml.safe_load(handle)


def load_json(path: Path) -> Any:
    with path.open() as handle:
        return json.load(handle)


def project_version() -> str:
    with (REPO / "pyproject.toml").open("rb") as handle:
        version: str = tomllib.load(handle)["project"]["version"]
    return version


def settings_from(env: Mapping[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings as a process with exactly ``env`` (and no other PATCHFLOW_* variable) would read them."""
    for name in list(os.environ):
        if name.startswith("PATCHFLOW_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return Settings()


def unknown_settings(names: Iterable[str]) -> set[str]:
    """The PATCHFLOW_* names among ``names`` that are no Settings field (``PATCHFLOW_SLACK_`` from a comment's
    ``PATCHFLOW_SLACK_*`` is a prefix: fine if some field starts with it)."""
    unknown = set()
    for name in names:
        if not ENV_NAME.fullmatch(name):
            continue
        if name.endswith("_"):
            if not any(field.startswith(name) for field in SETTINGS_ENV):
                unknown.add(name)
        elif name not in SETTINGS_ENV:
            unknown.add(name)
    return unknown


@cache
def api_app() -> Any:
    from patchflow.service.api import create_app

    return create_app(Settings())


def is_api_route(path: str) -> bool:
    """Whether the API answers GET ``path`` with a route of its own (not the 404 fallback)."""
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "root_path": "",
        "headers": [],
        "query_string": b"",
    }
    return any(route.matches(scope)[0] is Match.FULL for route in api_app().routes)


def cli_command(args: list[str]) -> list[str]:
    """The subcommand words of a ``patchflow`` argument list (options and their values dropped)."""
    words: list[str] = []
    for arg in args:
        if arg.startswith("-"):
            break
        words.append(arg)
    return words


def assert_cli_command_exists(args: list[str], where: str) -> None:
    from patchflow.cli import app

    words = cli_command(args)
    assert words, f"{where}: no patchflow subcommand in {args}"
    result = CliRunner().invoke(app, [*words, "--help"])
    assert result.exit_code == 0, f"{where}: 'patchflow {' '.join(words)}' is not a command: {result.output}"


def image_tag(image: str) -> str | None:
    """The tag of an image reference (None when it has none; digests count as pinned)."""
    if "@sha256:" in image:
        return "@digest"
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


# ---------------------------------------------------------------------------------------------- compose model


def interpolate(value: str, env: Mapping[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``, ``${VAR:?error}`` and ``$$``."""

    def replace(match: re.Match[str]) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if name in env and (env[name] or op not in (":-", ":?")):
            return env[name]
        if op in (":-", "-"):
            return arg
        if op in (":?", "?"):
            raise AssertionError(f"compose would refuse to start: {name} unset ({arg})")
        return ""

    return INTERPOLATION.sub(replace, value).replace("$$", "$")


def dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines of an env file (comments and blank lines skipped)."""
    values: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f"{path.name}: not KEY=VALUE: {line!r}"
            values[key.strip()] = value.strip()
    return values


def compose() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(COMPOSE_FILE)
    return data


def services() -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = compose()["services"]
    return result


def example_env() -> dict[str, str]:
    return dotenv(COMPOSE_DIR / ".env.example")


def service_env(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as the container sees it: env_file examples, then ``environment``."""
    env: dict[str, str] = {}
    files = service.get("env_file", [])
    for name in [files] if isinstance(files, str) else files:
        env.update(dotenv(COMPOSE_DIR / f"{name}.example"))
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    for key, value in raw.items():
        env[key] = interpolate(str(value), example_env())
    return env


def patchflow_services() -> dict[str, dict[str, Any]]:
    return {
        name: svc
        for name, svc in services().items()
        if str(svc.get("image", "")).split(":")[0] == PATCHFLOW_IMAGE
    }


def one_shots() -> set[str]:
    """Services something waits on to *complete*: they run once and exit."""
    return {
        target
        for svc in services().values()
        for target, dep in (svc.get("depends_on") or {}).items()
        if isinstance(dep, dict) and dep.get("condition") == "service_completed_successfully"
    }


def bind_mounts(service: dict[str, Any]) -> list[tuple[str, str]]:
    """(source, target) of the service's host-path mounts (named volumes excluded)."""
    mounts: list[tuple[str, str]] = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            if volume.get("type") == "bind":
                mounts.append((volume["source"], volume["target"]))
            continue
        source, _, rest = interpolate(volume, example_env()).partition(":")
        if source.startswith((".", "/")):
            mounts.append((source, rest.split(":")[0]))
    return mounts


def mounted_source(service: dict[str, Any], target: str) -> Path:
    """The host file mounted at ``target`` (or inside a mounted directory), which must exist."""
    for source, mount_target in bind_mounts(service):
        inside = PurePosixPath(target).is_relative_to(mount_target)
        if inside:
            path = (COMPOSE_DIR / source / PurePosixPath(target).relative_to(mount_target)).resolve()
            assert path.exists(), f"{target} is mounted from {source}, which has no {path}"
            return path
    raise AssertionError(f"nothing is mounted at {target}")


TLS_SOURCE = PurePosixPath("tls")
"""Where compose.yaml mounts the Temporal certificates from: ``make-temporal-certs.sh tls`` (git-ignored)."""
CERT_SCRIPT = DEPLOY / "tls" / "make-temporal-certs.sh"


@pytest.fixture(scope="session")
def temporal_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What ``deploy/tls/make-temporal-certs.sh`` makes (openssl: missing means skip, or fail under CI)."""
    binary("openssl", "install OpenSSL's command line (Debian: apt-get install -y openssl)")
    out = tmp_path_factory.mktemp("temporal-certs") / "tls"
    result = run(str(CERT_SCRIPT), str(out))
    assert result.returncode == 0, result.stderr
    return out


def healthcheck_urls(service: dict[str, Any]) -> list[tuple[int, str]]:
    test = " ".join(service.get("healthcheck", {}).get("test", []))
    return [(int(port), path) for port, path in re.findall(r"http://127\.0\.0\.1:(\d+)(/[^'\"\s]*)", test)]


# ---------------------------------------------------------------------------------------------- compose


def compose_validator() -> jsonschema.protocols.Validator:
    schema = load_json(SCHEMAS / "compose-spec.json")
    jsonschema.Draft201909Validator.check_schema(schema)
    validator: jsonschema.protocols.Validator = jsonschema.Draft201909Validator(schema)
    return validator


def test_compose_matches_the_compose_specification() -> None:
    errors = [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in compose_validator().iter_errors(compose())
    ]
    assert not errors, "\n".join(errors)


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["services"]["patchflow-api"].update(
            healthchek=d["services"]["patchflow-api"].pop("healthcheck")
        ),
        lambda d: next(iter(d["services"]["patchflow-api"]["depends_on"].values())).update(condition="done"),
        lambda d: d["services"]["patchflow-worker"]["deploy"].update(replicas="two"),
        lambda d: d["volumes"].update({"bad volume name!": None}),
        lambda d: d.update(volume={}),
    ],
    ids=["typo", "bad-condition", "replicas-not-integer", "bad-volume-name", "unknown-top-level-key"],
)
def test_the_compose_schema_catches_broken_files(breakage: Callable[[dict[str, Any]], Any]) -> None:
    broken = copy.deepcopy(compose())
    breakage(broken)
    assert list(compose_validator().iter_errors(broken)), "a broken compose.yaml passed the schema"


def compose_client() -> list[str] | None:
    """``docker compose`` (v2 plugin) or ``docker-compose`` (v1), whichever answers ``version``."""
    for command in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(command[0]) and run(*command, "version").returncode == 0:
            return command
    return None


def test_docker_compose_config(tmp_path: Path) -> None:
    command = compose_client()
    if command is None:
        pytest.skip("neither 'docker compose' (the Compose plugin) nor 'docker-compose' is installed")
    # A copy of deploy/ with the example env files in place of the operator's filled-in ones.
    shutil.copytree(DEPLOY, tmp_path / "deploy")
    workdir = tmp_path / "deploy" / "compose"
    for example in workdir.glob("*.example"):
        shutil.copy(example, workdir / example.name.removesuffix(".example"))
    result = run(*command, "--file", "compose.yaml", "config", "--quiet", cwd=workdir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_depends_on_names_services_with_sensible_conditions() -> None:
    all_services = services()
    for name, svc in all_services.items():
        for target, dep in (svc.get("depends_on") or {}).items():
            assert target in all_services, f"{name} depends on {target!r}, which is no service"
            condition = dep["condition"] if isinstance(dep, dict) else "service_started"
            if condition == "service_healthy":
                assert "healthcheck" in all_services[target], (
                    f"{name} waits for {target} healthy: no healthcheck"
                )


def test_every_service_has_a_healthcheck_or_runs_once() -> None:
    shots = one_shots()
    for name, svc in services().items():
        if name in shots:
            assert "healthcheck" not in svc, f"{name} runs once; a healthcheck would never pass"
            assert svc.get("restart", "no").startswith(("no", "on-failure")), (
                f"{name} runs once: restart must not be always/unless-stopped"
            )
        else:
            assert "healthcheck" in svc, f"{name} runs for good and has no healthcheck"


def test_images_are_pinned() -> None:
    for name, svc in services().items():
        image = interpolate(svc["image"], example_env())
        tag = image_tag(image)
        assert tag and tag != "latest", f"{name}: image {image!r} is not pinned to a tag"
    for name, svc in patchflow_services().items():
        assert image_tag(svc["image"]) == project_version(), f"{name}: tag the image with the project version"
        assert svc["build"]["dockerfile"] == str(DOCKERFILE.relative_to(REPO))
    for line in DOCKERFILE.read_text().splitlines():
        if line.startswith("FROM "):
            base = line.split()[1]
            assert (image_tag(base) or "latest") != "latest", f"Dockerfile: {line}"


def test_every_file_compose_names_exists(temporal_certs: Path) -> None:
    for name, svc in services().items():
        for source, target in bind_mounts(svc):
            if PurePosixPath(source).is_relative_to(TLS_SOURCE):  # made by the script, never committed
                made = temporal_certs / PurePosixPath(source).relative_to(TLS_SOURCE)
                assert made.is_dir(), (
                    f"{name}: make-temporal-certs.sh makes no {source} (mounted at {target})"
                )
                continue
            assert (COMPOSE_DIR / source).exists(), f"{name}: {source} (mounted at {target}) does not exist"
        if "build" in svc:
            context = COMPOSE_DIR / svc["build"]["context"]
            assert context.resolve() == REPO, f"{name}: the build context is the repository root"
            assert (context / svc["build"]["dockerfile"]).is_file()
        files = svc.get("env_file", [])
        for env_file in [files] if isinstance(files, str) else files:
            assert (COMPOSE_DIR / f"{env_file}.example").is_file(), f"{name}: no {env_file}.example to copy"
            assert env_file in (COMPOSE_DIR / ".gitignore").read_text().split(), (
                f"{env_file} must stay out of git"
            )
    assert ".env" in (COMPOSE_DIR / ".gitignore").read_text().split()


def test_interpolated_variables_come_from_the_env_example() -> None:
    text = COMPOSE_FILE.read_text()
    documented = example_env()
    used = set()
    for name, op, _ in INTERPOLATION.findall(text):
        used.add(name)
        if op in ("", ":?", "?"):
            assert name in documented, f"compose.yaml needs {name}: add it to .env.example"
    assert set(documented) <= used, f".env.example sets unused variables: {set(documented) - used}"
    assert not unknown_settings(documented), ".env is for compose; patchflow settings go to patchflow.env"
    for name, value in documented.items():
        assert "password" not in name.lower() or value.startswith("change-me"), f"{name}: no real secret here"


def test_every_patchflow_variable_is_a_setting() -> None:
    for path in [*COMPOSE_DIR.rglob("*"), *K8S_DIR.rglob("*"), DEPLOY / "README.md"]:
        if path.is_file() and path.name not in ("Dockerfile.dockerignore",):
            unknown = unknown_settings(ENV_NAME.findall(path.read_text()))
            assert not unknown, f"{path.relative_to(REPO)}: {sorted(unknown)} are not Settings fields"


def test_patchflow_services_settings_are_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, svc in patchflow_services().items():
        env = service_env(svc)
        settings = settings_from({k: v for k, v in env.items() if k.startswith("PATCHFLOW_")}, monkeypatch)
        assert settings.temporal_address.split(":")[0] in services(), f"{name}: Temporal is a compose service"
        assert settings.database_url and "@postgresql:" in settings.database_url
        assert settings.metrics_bind_address == "0.0.0.0", (
            f"{name}: Prometheus scrapes from another container"
        )
        if settings.api_plans_dir is not None:
            mounted_source(svc, str(settings.api_plans_dir))
        # data_dir is a named volume, shared by the API and the workers (pinned patch sets).
        assert any(str(v).endswith(f":{settings.data_dir}") for v in svc["volumes"]), (
            f"{name}: data_dir volume"
        )


def test_patchflow_commands_exist() -> None:
    for name, svc in patchflow_services().items():
        assert_cli_command_exists(svc["command"], f"compose service {name}")
    assert 'ENTRYPOINT ["patchflow"]' in DOCKERFILE.read_text()
    with (REPO / "pyproject.toml").open("rb") as handle:
        assert "patchflow" in tomllib.load(handle)["project"]["scripts"]


def test_patchflow_healthchecks_probe_real_routes_and_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, svc in patchflow_services().items():
        if name in one_shots():
            continue
        settings = settings_from(
            {k: v for k, v in service_env(svc).items() if k.startswith("PATCHFLOW_")}, monkeypatch
        )
        urls = healthcheck_urls(svc)
        assert urls, f"{name}: the healthcheck probes no http://127.0.0.1 URL"
        for port, path in urls:
            if svc["command"][0] == "api":
                assert port == settings.api_port and is_api_route(path), (
                    f"{name}: {port}{path} is no API route"
                )
                published = {interpolate(p, example_env()).rsplit(":", 1)[-1] for p in svc.get("ports", [])}
                assert published == {str(settings.api_port)}, f"{name}: publish the API port"
            else:
                assert svc["command"][0] == "worker", f"{name}: unexpected patchflow service"
                assert (port, path) == (settings.worker_metrics_port, "/metrics"), f"{name}: {port}{path}"


def test_compose_prometheus_scrapes_what_the_services_serve(monkeypatch: pytest.MonkeyPatch) -> None:
    prometheus = services()["prometheus"]
    config = load_yaml(mounted_source(prometheus, "/etc/prometheus/prometheus.yml"))
    host_config = load_yaml(DEPLOY / "prometheus" / "prometheus.yml")
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {job["job_name"] for job in host_config["scrape_configs"]} == set(METRICS_JOBS)

    for rule_file in config["rule_files"]:
        source = mounted_source(prometheus, str(PurePosixPath("/etc/prometheus") / rule_file))
        assert source == (DEPLOY / "prometheus" / "rules.yml").resolve(), "reuse deploy/prometheus/rules.yml"

    for job_name, job in jobs.items():
        targets = [
            (host, int(port))
            for static in job.get("static_configs", [])
            for host, port in (t.rsplit(":", 1) for t in static["targets"])
        ] + [(host, int(sd["port"])) for sd in job.get("dns_sd_configs", []) for host in sd["names"]]
        assert targets, f"{job_name}: no targets"
        for host, port in targets:
            assert host in patchflow_services(), f"{job_name}: {host} is no patchflow service"
            svc = patchflow_services()[host]
            settings = settings_from(
                {k: v for k, v in service_env(svc).items() if k.startswith("PATCHFLOW_")}, monkeypatch
            )
            assert port == getattr(settings, METRICS_JOBS[job_name]), f"{job_name}: {host} serves elsewhere"
        if job_name == "patchflow-api":
            assert is_api_route(job.get("metrics_path", "/metrics"))
            assert settings.api_metrics_public or "authorization" in job, "the API's /metrics wants a token"


def test_promtool_accepts_the_compose_prometheus_config(tmp_path: Path) -> None:
    promtool = binary(
        "promtool", "it comes with Debian's 'prometheus' package (apt-get install -y prometheus)"
    )
    shutil.copy(COMPOSE_DIR / "prometheus" / "prometheus.yml", tmp_path / "prometheus.yml")
    shutil.copy(DEPLOY / "prometheus" / "rules.yml", tmp_path / "rules.yml")
    result = run(promtool, "check", "config", str(tmp_path / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_is_provisioned_with_the_dashboard() -> None:
    grafana = services()["grafana"]
    provisioning = mounted_source(grafana, "/etc/grafana/provisioning")
    datasources = [
        ds
        for f in sorted((provisioning / "datasources").glob("*.yaml"))
        for ds in load_yaml(f)["datasources"]
    ]
    providers = [
        p for f in sorted((provisioning / "dashboards").glob("*.yaml")) for p in load_yaml(f)["providers"]
    ]
    assert len(datasources) == 1 and len(providers) == 1

    datasource = datasources[0]
    variable = next(v for v in load_json(DASHBOARD)["templating"]["list"] if v["type"] == "datasource")
    assert datasource["type"] == variable["query"] == "prometheus"
    assert datasource["uid"] == variable["current"]["value"], "the dashboard's default data source"
    host, port = datasource["url"].removeprefix("http://").split(":")
    assert host in services() and host == "prometheus"
    assert f":{port}/-/ready" in " ".join(services()[host]["healthcheck"]["test"]), "Prometheus's port"

    folder = PurePosixPath(providers[0]["options"]["path"])
    dashboards = [t for _, t in bind_mounts(grafana) if PurePosixPath(t).parent == folder]
    assert dashboards, f"nothing is mounted into the provider's path {folder}"
    for target in dashboards:
        assert mounted_source(grafana, target) == DASHBOARD.resolve()


def test_temporal_services_use_the_mounted_files() -> None:
    temporal = services()["temporal"]
    dynamic = temporal["environment"]["DYNAMIC_CONFIG_FILE_PATH"]
    config = load_yaml(mounted_source(temporal, str(PurePosixPath("/etc/temporal") / dynamic)))
    assert isinstance(config, dict) and config
    for key, entries in config.items():
        assert isinstance(entries, list) and all("value" in e for e in entries), f"dynamic config {key}"
    schema = services()["temporal-schema"]
    script = schema["entrypoint"][-1]
    assert os.access(mounted_source(schema, script), os.X_OK)
    init = mounted_source(services()["postgresql"], "/docker-entrypoint-initdb.d/10-patchflow.sh")
    assert os.access(init, os.X_OK)
    assert "POSTGRES_PATCHFLOW_PASSWORD" in services()["postgresql"]["environment"]


def test_dockerfile_copies_existing_paths_and_exposes_patchflow_ports() -> None:
    text = DOCKERFILE.read_text()
    for line in text.splitlines():
        if line.startswith("COPY ") and "--from=" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), f"Dockerfile: {source} does not exist"
    exposed = {int(p) for p in re.findall(r"^EXPOSE (.+)$", text, re.M)[0].split()}
    defaults = Settings.model_fields
    assert exposed == {defaults[s].default for s in METRICS_JOBS.values()}
    assert re.search(r"^USER 10001$", text, re.M), "a numeric user, as the Kubernetes pods expect"


# ---------------------------------------------------------------------------------------------- kubernetes


@pytest.fixture(scope="module")
def rendered() -> list[dict[str, Any]]:
    kubectl = binary("kubectl", "install Debian's or Kubernetes' kubectl (it renders kustomizations offline)")
    result = run(kubectl, "kustomize", str(K8S_DIR))
    assert result.returncode == 0, result.stderr
    objects = [obj for obj in yaml.safe_load_all(result.stdout) if obj]
    assert objects
    return objects


def of_kind(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [obj for obj in objects if obj["kind"] == kind]


def named(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any] | None:
    return next((o for o in of_kind(objects, kind) if o["metadata"]["name"] == name), None)


def pod_templates(objects: list[dict[str, Any]]) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """(workload, pod template) of every Deployment and Job."""
    for obj in objects:
        if obj["kind"] in ("Deployment", "Job"):
            yield obj, obj["spec"]["template"]


def containers(
    objects: list[dict[str, Any]],
) -> Iterator[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
    for workload, template in pod_templates(objects):
        for container in template["spec"]["containers"]:
            yield workload, template, container


def k8s_settings_env(objects: list[dict[str, Any]], container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            config_map = named(objects, "ConfigMap", source["configMapRef"]["name"])
            assert config_map, f"no ConfigMap {source['configMapRef']['name']}"
            env.update(config_map["data"])
        if "secretRef" in source:
            secret = named(objects, "Secret", source["secretRef"]["name"])
            assert secret, f"no Secret {source['secretRef']['name']}"
            env.update(secret.get("stringData", {}))
    env.update({e["name"]: e["value"] for e in container.get("env", []) if "value" in e})
    return env


def selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_kustomization_lists_every_manifest() -> None:
    listed = set(load_yaml(K8S_DIR / "kustomization.yaml")["resources"])
    present = {p.name for p in K8S_DIR.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == present


def test_every_object_matches_the_kubernetes_schemas(rendered: list[dict[str, Any]]) -> None:
    kinds = set()
    for obj in rendered:
        kinds.add(obj["kind"])
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # a CRD: checked against its own schema below
        where = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{where}: {'.'.join(map(str, exc.path))}: {exc.message}")
    assert {"Namespace", "ConfigMap", "Secret", "Deployment", "Service", "Job"} <= kinds
    assert {"PodDisruptionBudget", "ServiceMonitor"} <= kinds


@pytest.mark.parametrize(
    "breakage",
    [
        lambda d: d["spec"]["template"]["spec"]["containers"][0].update(livenesProbe={}),
        lambda d: d["spec"].update(replicas="three"),
        lambda d: d["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"].update(cpu=[1]),
    ],
    ids=["typo", "replicas-not-integer", "bad-quantity"],
)
def test_the_kubernetes_schemas_catch_broken_objects(
    rendered: list[dict[str, Any]], breakage: Callable[[dict[str, Any]], Any]
) -> None:
    deployment = copy.deepcopy(of_kind(rendered, "Deployment")[0])
    breakage(deployment)
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_servicemonitors_match_their_schema_and_the_services(rendered: list[dict[str, Any]]) -> None:
    schema = load_json(SCHEMAS / "servicemonitor.schema.json")
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    jobs: set[str] = set()
    for monitor in of_kind(rendered, "ServiceMonitor"):
        name = monitor["metadata"]["name"]
        errors = [
            f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(monitor)
        ]
        assert not errors, f"ServiceMonitor/{name}: " + "; ".join(errors)
        matched = [
            s
            for s in of_kind(rendered, "Service")
            if selects(monitor["spec"]["selector"]["matchLabels"], s["metadata"].get("labels", {}))
        ]
        assert len(matched) == 1, f"ServiceMonitor/{name} selects {len(matched)} Services"
        service = matched[0]
        ports = {p["name"] for p in service["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports, f"ServiceMonitor/{name}: Service has no port {endpoint['port']}"
            job = service["metadata"]["name"]  # the operator's default job label
            for relabel in endpoint.get("relabelings", []):
                if relabel.get("targetLabel") == "job":
                    job = relabel["replacement"]
            jobs.add(job)
            assert METRICS_JOBS.get(job) == K8S_PORTS[endpoint["port"]], f"{job} scrapes the wrong port"
            if job == "patchflow-api":
                assert is_api_route(endpoint["path"])
                credentials = endpoint["authorization"]["credentials"]
                secret = named(rendered, "Secret", credentials["name"])
                assert secret and credentials["key"] in secret["stringData"], "the token Secret exists"
            else:
                assert endpoint["path"] == "/metrics"
    assert jobs == set(METRICS_JOBS), "the jobs the alert rules and the dashboard select on"


def test_the_servicemonitor_schema_catches_typos(rendered: list[dict[str, Any]]) -> None:
    monitor = copy.deepcopy(of_kind(rendered, "ServiceMonitor")[0])
    monitor["spec"]["endpoints"][0]["intervall"] = "30s"
    validator = jsonschema.Draft202012Validator(load_json(SCHEMAS / "servicemonitor.schema.json"))
    assert list(validator.iter_errors(monitor))


def test_config_and_secret_keys_are_valid_settings(
    rendered: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for workload, _, container in containers(rendered):
        env = k8s_settings_env(rendered, container)
        assert not unknown_settings(env), f"{workload['metadata']['name']}: {sorted(unknown_settings(env))}"
        settings = settings_from(env, monkeypatch)
        assert settings.database_url, "several replicas need the shared history database"
        assert settings.metrics_bind_address == "0.0.0.0"
        mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
        assert "/tmp" in mounts, "read-only root filesystem: /tmp must be a volume"
        if container["args"][0] in ("api", "worker"):
            assert str(settings.data_dir) in mounts, "data_dir must be a writable volume"
            assert settings.api_plans_dir is not None and str(settings.api_plans_dir) in mounts


def test_container_commands_exist(rendered: list[dict[str, Any]]) -> None:
    commands = set()
    for workload, _, container in containers(rendered):
        assert "command" not in container, "keep the image's ENTRYPOINT (patchflow); set args"
        assert_cli_command_exists(container["args"], f"{workload['kind']}/{workload['metadata']['name']}")
        commands.add(tuple(cli_command(container["args"])))
    assert commands == {("api",), ("worker",), ("db", "upgrade")}


def test_ports_and_probes_are_the_ones_patchflow_serves(
    rendered: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    for workload, _, container in containers(rendered):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        settings = settings_from(k8s_settings_env(rendered, container), monkeypatch)
        ports = {p["name"]: p["containerPort"] for p in container.get("ports", [])}
        for name, number in ports.items():
            assert name in K8S_PORTS, f"{where}: unknown port {name}"
            assert number == getattr(settings, K8S_PORTS[name]), (
                f"{where}: {name} is not where patchflow listens"
            )
        if workload["kind"] == "Job":
            assert not ports and "livenessProbe" not in container
            continue
        assert "livenessProbe" in container, f"{where}: no liveness probe"
        role = container["args"][0]
        if role == "api":
            assert "readinessProbe" in container
        for kind in ("startupProbe", "livenessProbe", "readinessProbe"):
            probe = container.get(kind)
            if probe is None:
                continue
            http = probe["httpGet"]
            assert http["port"] in ports, f"{where}: {kind} probes port {http['port']}, not declared"
            if role == "api":
                assert ports[http["port"]] == settings.api_port and is_api_route(http["path"]), where
            else:
                assert (http["port"], http["path"]) == ("worker-metrics", "/metrics"), where
        if role == "api":
            assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
            assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"


def test_pods_are_hardened_and_sized(rendered: list[dict[str, Any]]) -> None:
    run_as = int(re.findall(r"^USER (\d+)$", DOCKERFILE.read_text(), re.M)[0])
    for workload, template, container in containers(rendered):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = template["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, where
        assert pod["securityContext"]["runAsUser"] == run_as, f"{where}: the image's user"
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", where
        assert pod.get("automountServiceAccountToken") is False, f"{where}: patchflow never calls the K8s API"
        security = container["securityContext"]
        assert security["readOnlyRootFilesystem"] is True, where
        assert security["allowPrivilegeEscalation"] is False, where
        assert security["capabilities"]["drop"] == ["ALL"], where
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]), f"{where}: requests"
        assert "memory" in resources["limits"], f"{where}: memory limit"
        image = container["image"]
        assert image_tag(image) == project_version(), f"{where}: image {image} is not the project version"
    namespace = of_kind(rendered, "Namespace")[0]
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_references_between_objects_resolve(rendered: list[dict[str, Any]]) -> None:
    deployments = of_kind(rendered, "Deployment")
    for workload, template, _ in containers(rendered):
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        pod = template["spec"]
        if "serviceAccountName" in pod:
            assert named(rendered, "ServiceAccount", pod["serviceAccountName"]), where
        for volume in pod.get("volumes", []):
            for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
                if key in volume and not volume[key].get("optional"):
                    ref = volume[key].get("name") or volume[key].get("secretName")
                    assert named(rendered, kind, ref), f"{where}: volume {volume['name']} names no {kind}"
        if workload["kind"] == "Deployment":
            labels = template["metadata"]["labels"]
            assert selects(workload["spec"]["selector"]["matchLabels"], labels), where
    for service in of_kind(rendered, "Service"):
        matched = [
            d
            for d in deployments
            if selects(service["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(matched) == 1, f"Service/{service['metadata']['name']} selects {len(matched)} Deployments"
        ports = {
            p["name"]
            for c in matched[0]["spec"]["template"]["spec"]["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, (
                f"Service/{service['metadata']['name']}: no port {port['targetPort']}"
            )
    budgets = of_kind(rendered, "PodDisruptionBudget")
    for budget in budgets:
        matched = [
            d
            for d in deployments
            if selects(budget["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"])
        ]
        assert len(matched) == 1, f"PodDisruptionBudget/{budget['metadata']['name']}"
    worker = named(rendered, "Deployment", "patchflow-worker")
    assert worker and worker["spec"]["replicas"] >= 2, "several workers on the task queue"
    assert any(
        selects(b["spec"]["selector"]["matchLabels"], worker["spec"]["template"]["metadata"]["labels"])
        for b in budgets
    ), "the workers need a PodDisruptionBudget"


def test_example_secrets_hold_placeholders_only(rendered: list[dict[str, Any]]) -> None:
    for secret in of_kind(rendered, "Secret"):
        assert "example" in " ".join(secret["metadata"].get("annotations", {})), "mark example Secrets"
        for key, value in secret["stringData"].items():
            assert "REPLACE-ME" in value, f"Secret/{secret['metadata']['name']}: {key} is not a placeholder"
