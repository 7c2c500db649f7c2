"""``patchflow lab …``: a fleet of real Debian machines on this box (loopback only), for demos and tests.

See :mod:`patchflow.testing.lab`. Needs root and Debian's ``mmdebstrap`` and ``dpkg-deb``.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from patchflow.cli.common import Fmt, emit_json, err, out
from patchflow.config import get_settings
from patchflow.core.documents import dump_yaml
from patchflow.errors import InputError

if TYPE_CHECKING:
    from patchflow.testing.prometheus import Prometheus

lab_app = typer.Typer(
    help="A lab fleet of real Debian hosts (own sshd on a 127.0.0.0/8 address each) and its apt repository.",
    no_args_is_help=True,
)


def _lab():  # type: ignore[no-untyped-def]
    from patchflow.testing.lab.fleet import Lab

    return Lab(get_settings().data_dir)


def _groups(values: list[str]) -> dict[str, int]:
    groups: dict[str, int] = {}
    for value in values:
        name, sep, count = value.partition("=")
        if not sep or not name.strip() or not count.isdigit():
            raise InputError(f"--group {value!r}: expected NAME=COUNT, e.g. --group prod=3")
        groups[name.strip()] = int(count)
    return groups


@lab_app.command("up")
def lab_up(
    group: Annotated[
        list[str] | None,
        typer.Option(
            "--group",
            help="NAME=COUNT hosts in a patch group (repeatable; default dev=1 test=1 prod=2).",
            show_default=False,
        ),
    ] = None,
    rpm_group: Annotated[
        list[str] | None,
        typer.Option(
            "--rpm-group",
            help="NAME=COUNT hosts whose lab packages are in an RPM database, patched with dnf (repeatable).",
            show_default=False,
        ),
    ] = None,
    base_address: Annotated[
        str,
        typer.Option("--base-address", help="First host address (127.0.0.0/8 only); the next hosts follow."),
    ] = "127.0.0.10",
    port: Annotated[int, typer.Option("--port", help="sshd port on every host address.")] = 2200,
    reboot_delay: Annotated[
        float, typer.Option("--reboot-delay", help="Seconds a rebooting host stays down.")
    ] = 1.0,
    mirror: Annotated[
        str | None,
        typer.Option("--mirror", help="Debian mirror for the first build (default: this machine's)."),
    ] = None,
) -> None:
    """Start the lab: build (once, cached) the Debian root, start the repository and every host."""
    lab = _lab()
    state = lab.up(
        _groups(group) if group else ({} if rpm_group else None),
        rpm_groups=_groups(rpm_group) if rpm_group else None,
        base_address=base_address,
        port=port,
        reboot_delay_seconds=reboot_delay,
        mirror=mirror,
    )
    for host in state["hosts"]:
        out.print(
            f"{host['id']}  {host['address']}:{host['port']}  {','.join(host['groups'])}  {host.get('family', 'deb')}"
        )
    out.print(f"repository: http://127.0.0.1:{state['http_port']}/ (suites lab, lab-updates, lab-security)")
    out.print(f"inventory: {lab.inventory_path}")


@lab_app.command("status")
def lab_status(fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table) -> None:
    """Per host: address, groups, state, boot id, reboot pending and the installed lab packages."""
    hosts = _lab().status()
    if fmt is Fmt.json:
        emit_json({"hosts": hosts})
        return
    print_hosts(hosts)


def print_hosts(hosts: list[dict[str, Any]]) -> None:
    table = Table(title="lab hosts")
    for column in ("host", "family", "address", "groups", "state", "boot id", "reboot", "packages"):
        table.add_column(column, overflow="fold")
    for h in hosts:
        table.add_row(
            h["id"],
            h["family"],
            f"{h['address']}:{h['port']}",
            ",".join(h["groups"]),
            h["state"],
            (h["boot_id"] or "")[:8],
            "pending" if h["reboot_pending"] else "",
            " ".join(f"{n}={v}" for n, v in h["packages"].items()),
        )
    out.print(table)


@lab_app.command("publish")
def lab_publish(
    name: Annotated[str, typer.Argument(help="Package name.", show_default=False)],
    version: Annotated[
        str, typer.Argument(help="Debian version, e.g. 1.2-1 or 1:2.0~rc1-1.", show_default=False)
    ],
    security: Annotated[
        bool, typer.Option("--security", help="Publish to lab-security (default lab-updates).")
    ] = False,
    depends: Annotated[
        list[str] | None,
        typer.Option(
            "--depends", help="A dependency, e.g. 'libfoo (>= 1.2-1)' (repeatable).", show_default=False
        ),
    ] = None,
    postinst_fails: Annotated[bool, typer.Option("--postinst-fails", help="Its postinst exits 1.")] = False,
    reboot: Annotated[bool, typer.Option("--reboot", help="Its postinst requests a reboot.")] = False,
    custom: Annotated[
        bool,
        typer.Option(
            "--custom",
            help="Publish to the lab's second repository, which no host uses unless a baseline's Sources name it.",
        ),
    ] = False,
) -> None:
    """Add a package version to the lab repository and re-index it (hosts see it at their next apt update)."""
    if custom and security:
        raise InputError("--custom and --security: the second repository has one suite (custom); drop one")
    lab = _lab()
    pkg = lab.publish(
        name,
        version,
        security=security,
        depends=depends or [],
        postinst_fails=postinst_fails,
        reboot=reboot,
        custom=custom,
    )
    if not custom:
        out.print(f"published {pkg.name} {pkg.version} to {pkg.suite}")
        return
    where = f": {lab.custom_source()}" if lab.is_up() else ""
    out.print(
        f"published {pkg.name} {pkg.version} to the custom repository (no host uses it; name it in a "
        f"baseline's Sources{where})"
    )


@lab_app.command("catalog")
def lab_catalog(
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write the catalog here (default: stdout).")
    ] = None,
    family: Annotated[
        str, typer.Option("--family", help="deb: the apt repository; rpm: the same versions as RPMs.")
    ] = "deb",
    custom: Annotated[
        bool, typer.Option("--custom", help="Include the second (custom) repository's versions.")
    ] = False,
) -> None:
    """patchflow's catalog of the lab repository (for `baseline evaluate --catalog`)."""
    if family not in ("deb", "rpm"):
        raise InputError(f"--family {family!r}: use deb (the apt repository) or rpm (the yum repository)")
    text = json.dumps(_lab().catalog(family, custom=custom), indent=1) + "\n"
    if output is None:
        out.file.write(text)
        return
    output.write_text(text)
    out.print(f"wrote {output}")


@lab_app.command("down")
def lab_down() -> None:
    """Stop every host and the repository server; remove the hosts (the built root stays cached)."""
    lab = _lab()
    was_up = lab.is_up()
    lab.down()
    out.print("lab is down" if was_up else "no lab was up")


def lab_inventory() -> Path:
    """The SSH inventory ``patchflow lab up`` wrote."""
    return _lab().inventory_path  # type: ignore[no-any-return]


DEBIAN_BASELINE = Path(__file__).resolve().parents[2] / "baselines" / "debian-default.yaml"
DEMO_GROUPS = {"dev": 1, "test": 2, "prod": 3}


#: Lifecycle hooks of the lab demo, on every instance: a maintenance marker on the host while it is patched
#: (what a drain or a "stop the app" step stands for), a package-database check after the install, and the
#: marker's removal in on_exit (which runs whatever happened).
DEMO_HOOKS: dict[str, Any] = {
    "pre_install": [
        {
            "command": "date -u +%FT%TZ > /var/tmp/patchflow-maintenance && echo maintenance begins",
            "timeout_seconds": 30,
        }
    ],
    "post_install": [
        {"command": 'test -z "$(dpkg --audit)" && echo dpkg database consistent', "timeout_seconds": 60}
    ],
    "on_exit": [
        {"command": "rm -f /var/tmp/patchflow-maintenance && echo maintenance ends", "timeout_seconds": 30}
    ],
}

#: The metric the lab demo's canary analysis reads: 1 while a lab host's SSH port answers (probed every second).
DEMO_METRIC = "patchflow_lab_ssh_up"


@contextlib.contextmanager
def demo_lab(executor: dict[str, Any] | None = None, *, analysis: bool = True) -> Iterator[Path]:
    """The lab for ``patchflow demo --lab``: started if it is not up (and then stopped afterwards), with a plan
    rolling the Debian default baseline out Dev → Test → Prod; yields the plan file.

    Every instance runs the :data:`DEMO_HOOKS`. Prod starts with a canary whose metric analysis (a real
    Prometheus scraping a probe of each host's SSH port: Debian's ``prometheus`` package) decides whether the rest
    of Prod is patched; without the package Prod has an approval gate instead.

    Args:
        executor: the plan's ``executor`` block (default: over SSH, with the lab's inventory, which is at
            :func:`lab_inventory` for a fake SSM endpoint to serve).
        analysis: start the Prometheus the canary's analysis reads (False: the caller brings its own plan).
    """
    lab = _lab()
    started = False
    if not lab.is_up():
        err.print("starting the lab (the first run builds a Debian root with mmdebstrap: about a minute) …")
        lab.up(DEMO_GROUPS)
        started = True
    try:
        demo = lab.dir / "demo"
        demo.mkdir(parents=True, exist_ok=True)
        (demo / "catalog.json").write_text(json.dumps(lab.catalog(), indent=1))
        with contextlib.ExitStack() as stack:
            prometheus = _demo_prometheus(stack, lab, demo) if analysis else None
            path = _write_demo_plan(lab, demo, executor, prometheus.url if prometheus else None)
            yield path
    finally:
        with contextlib.suppress(Exception):  # the table is a courtesy; stopping the lab is not
            print_hosts(lab.status())
        if started:
            lab.down()


def _demo_prometheus(stack: contextlib.ExitStack, lab: Any, demo: Path) -> Prometheus | None:
    """A real Prometheus scraping a probe of every lab host's SSH port (``patchflow_lab_ssh_up``), or None
    (said so) when Debian's ``prometheus`` is not installed."""
    from patchflow.testing.prometheus import PrometheusNotInstalled, prometheus_lab

    try:
        exporter, prometheus = stack.enter_context(prometheus_lab(demo / "prometheus"))
    except PrometheusNotInstalled:
        err.print(
            "prometheus is not installed (apt-get install prometheus): Prod gets an approval gate instead of "
            "a canary with metric analysis"
        )
        return None
    stop = threading.Event()
    hosts = [(h.id, h.address, h.port) for h in lab.hosts()]

    def probe() -> None:
        while not stop.is_set():
            for host_id, address, port in hosts:
                try:
                    with socket.create_connection((address, port), timeout=0.5):
                        up = 1.0
                except OSError:
                    up = 0.0
                exporter.set(DEMO_METRIC, up, instance_id=host_id)
            stop.wait(1.0)

    thread = threading.Thread(target=probe, name="lab-demo-probe", daemon=True)
    thread.start()
    stack.callback(thread.join, 5)
    stack.callback(stop.set)
    prometheus.wait_for(DEMO_METRIC)
    return prometheus


def _write_demo_plan(lab: Any, demo: Path, executor: dict[str, Any] | None, prometheus: str | None) -> Path:
    groups = {g for h in lab.hosts() for g in h.groups}
    prod: dict[str, Any] = {
        "name": "prod",
        "max_concurrency": "50%",
        "max_errors": 0,
        "on_failure": "rollback",
        "gate": {"approval": {"approvers": ["ops-lead"]}},
    }
    if prometheus is not None:
        prod["canary"] = {"count": 1, "soak_seconds": 2}
        prod["gate"] = {
            "analysis": {
                "prometheus": prometheus,
                "queries": [
                    {
                        "name": "ssh-up",
                        "query": f'min({DEMO_METRIC}{{instance_id=~"{{{{instances}}}}"}})',
                        "interval_seconds": 2,
                        "count": 3,
                        "success": "== 1",
                    }
                ],
                "inconclusive": "approval",
                "approvers": ["ops-lead"],
            }
        }
    stages: list[dict[str, Any]] = [
        {"name": "dev", "max_concurrency": 2, "max_errors": 0, "soak": "2s", "gate": "auto"},
        {"name": "test", "max_concurrency": "50%", "max_errors": 1, "soak": "2s", "gate": {"health": {}}},
        prod,
    ]
    executor = executor or {
        "kind": "ssh",
        "inventory": str(lab.inventory_path),
        "reboot_option": "RebootIfNeeded",
    }
    plan = {
        "name": "lab-demo",
        "baseline": str(DEBIAN_BASELINE),
        "catalog": str(demo / "catalog.json"),
        "executor": executor,
        "hooks": DEMO_HOOKS,
        "stages": [
            {**s, "targets": {"patch_group": s["name"]}, "window": "now"}
            for s in stages
            if s["name"] in groups
        ],
    }
    path = demo / "plan.yaml"
    how = "over SSH" if executor["kind"] == "ssh" else "through SSM (the fake endpoint)"
    canary = "; Prod: a canary analysed by Prometheus first" if prometheus else ""
    path.write_text(
        f"# Written by `patchflow demo --lab`: the Debian default baseline on the lab fleet {how}, lifecycle "
        f"hooks on every instance{canary}.\n" + dump_yaml(plan, sort_keys=False)
    )
    return path
