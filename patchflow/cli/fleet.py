"""``patchflow fleet …`` (the simulated fleet), ``patchflow window preview`` and ``patchflow ssm collect``."""

from __future__ import annotations

import contextlib
import sqlite3
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.table import Table

from patchflow.cli.common import (
    Fmt,
    emit_json,
    err,
    out,
    run_sync,
    shipped_file,
)
from patchflow.config import get_settings
from patchflow.core.timeutil import parse_instant
from patchflow.errors import InputError, PatchflowError

fleet_app = typer.Typer(help="The simulated fleet (demos and scale tests).", no_args_is_help=True)
window_app = typer.Typer(help="Maintenance-window schedules.", no_args_is_help=True)


def simulated_executor(fleet_file: Path) -> Any:
    from patchflow.executors.simulated import SimulatedExecutor, default_state_path
    from patchflow.executors.simulated.fleet import load_fleet

    fleet = load_fleet(resolve_fleet(str(fleet_file)))
    return SimulatedExecutor(fleet, default_state_path(get_settings().data_dir, fleet))


def resolve_fleet(fleet: str) -> Path:
    """A fleet file by path, or by the fleet's name: the file of the simulated fleet of that name whose state
    is in the data directory (most recently used first), else a shipped example fleet of that name."""
    if Path(fleet).exists() or "/" in fleet or fleet.endswith((".yaml", ".yml", ".json")):
        return Path(fleet)  # a path (a missing one is reported by the loader, with the path)
    known: dict[str, Path] = {}
    states = sorted(
        (get_settings().data_dir / "simulated").glob("*.sqlite"),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for state in states:
        name, source = _fleet_of_state(state)
        if name and source and Path(source).is_file():
            known.setdefault(name, Path(source))
    for example in sorted(shipped_file("examples").glob("*.yaml")):
        with contextlib.suppress(yaml.YAMLError, OSError):
            data = yaml.safe_load(example.read_text(encoding="utf-8"))
            if isinstance(data, dict) and ("instances" in data or "generate" in data):
                known.setdefault(str(data.get("name") or example.stem), example)
    if fleet in known:
        return known[fleet]
    names = ", ".join(sorted(known)) or "none yet"
    raise InputError(
        f"no fleet file {fleet!r} and no simulated fleet of that name (known fleets: {names}); give the fleet "
        "file's path"
    )


def _fleet_of_state(state: Path) -> tuple[str | None, str | None]:
    """(fleet name, fleet file) recorded in a simulated fleet's state database."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{state}?mode=ro", uri=True)) as conn:
            meta = dict(
                conn.execute("SELECT key, value FROM meta WHERE key IN ('fleet_name', 'fleet_source')")
            )
    except sqlite3.Error:
        return None, None
    return meta.get("fleet_name"), meta.get("fleet_source")


@fleet_app.command("status")
def fleet_status(
    fleet_file: Annotated[
        Path,
        typer.Argument(
            metavar="FLEET",
            help="Fleet file, or the name of a simulated fleet (e.g. demo).",
            show_default=False,
        ),
    ],
    fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table,
) -> None:
    """The simulated fleet's current state: per instance its packages and install count."""
    status = simulated_executor(fleet_file).status()
    if fmt is Fmt.json:
        emit_json(status)
        return
    table = Table(title=f"simulated fleet {status['fleet']} ({status['state_path']})")
    for column in ("instance", "patch group", "installs", "restores", "packages"):
        table.add_column(column, overflow="fold")
    for inst in status["instances"]:
        packages = ", ".join(f"{p['name']} {p['version']}" for p in inst["installed"])
        table.add_row(
            inst["id"],
            inst.get("patch_group") or "",
            str(inst["install_count"]),
            str(inst["restore_count"]),
            packages,
        )
    out.print(table)


@fleet_app.command("reset")
def fleet_reset(
    fleet_file: Annotated[
        Path,
        typer.Argument(metavar="FLEET", help="Fleet file, or a simulated fleet's name.", show_default=False),
    ],
) -> None:
    """Put the simulated fleet back to the state its file describes."""
    executor = simulated_executor(fleet_file)
    executor.reset()
    out.print(f"reset {executor.status()['state_path']}")


# ---------------------------------------------------------------------------------------------- windows


@window_app.command("preview")
def window_preview(
    schedule: Annotated[
        str,
        typer.Argument(metavar="SCHEDULE", help="cron(...), rate(...), at(...) or now.", show_default=False),
    ],
    timezone: Annotated[str, typer.Option("--timezone", help="IANA time zone of the schedule.")] = "UTC",
    offset_days: Annotated[int, typer.Option("--offset-days", help="ScheduleOffset (cron only, 1–6).")] = 0,
    duration_hours: Annotated[int, typer.Option("--duration-hours", help="Duration (1–24).")] = 4,
    cutoff_hours: Annotated[int, typer.Option("--cutoff-hours", help="Cutoff (0–23, < duration).")] = 1,
    after: Annotated[
        str, typer.Option("--after", help="List windows starting at or after this time.")
    ] = "now",
    count: Annotated[int, typer.Option("--count", min=1, max=1000, help="How many windows.")] = 5,
    fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table,
) -> None:
    """The next windows of a schedule, like DescribeMaintenanceWindowSchedule.

    The schedule counts as created at --after, as a stage that starts waiting then: like AWS, a period whose
    cron date has passed is skipped even when its --offset-days date is still ahead.
    """
    from patchflow.core.windows import WindowSpec, next_windows, validate_spec

    spec = WindowSpec(
        schedule=schedule,
        timezone=timezone,
        offset_days=offset_days,
        duration_hours=duration_hours,
        cutoff_hours=cutoff_hours,
    )
    validate_spec(spec)
    try:
        start = parse_instant(after, allow_now=True)
    except ValueError as exc:
        raise InputError(f"--after: {exc}") from None
    windows = [w.to_json() for w in next_windows(spec, start, count, created=start)]
    if fmt is Fmt.json:
        emit_json({"windows": windows})
        return
    table = Table(title=f"{schedule} ({timezone})")
    for column in ("start", "end", "cutoff"):
        table.add_column(column)
    for w in windows:
        table.add_row(w["start"], w["end"], w["cutoff"])
    out.print(table)


# ---------------------------------------------------------------------------------------------- stack


ssm_app = typer.Typer(
    help="AWS Systems Manager: scan a fleet into patchflow's catalog and inventory.", no_args_is_help=True
)


class Family(StrEnum):
    deb = "deb"
    rpm = "rpm"


@ssm_app.command("collect")
def ssm_collect(
    catalog: Annotated[
        Path, typer.Option("--catalog", help="Write the catalog (JSON) here.", show_default=False)
    ],
    inventory: Annotated[
        Path, typer.Option("--inventory", help="Write the inventory (JSON) here.", show_default=False)
    ],
    family: Annotated[
        Family | None,
        typer.Option("--family", help="Keep one package family (needed when the fleet mixes deb and rpm)."),
    ] = None,
    instance: Annotated[
        list[str] | None,
        typer.Option("--instance", help="Scan only these instance ids (repeatable); default: all."),
    ] = None,
    bucket: Annotated[
        str | None, typer.Option("--bucket", help="S3 bucket (default PATCHFLOW_SSM_BUCKET).")
    ] = None,
    region: Annotated[
        str | None, typer.Option("--region", help="AWS region (default PATCHFLOW_SSM_REGION / boto3 chain).")
    ] = None,
    endpoint_url: Annotated[
        str | None, typer.Option("--endpoint-url", help="SSM endpoint (a local fake, a VPC endpoint).")
    ] = None,
) -> None:
    """Scan instances (AWS-RunPatchBaseline Operation=Scan, DescribeInstancePatches, package listings) and write
    patchflow's catalog and inventory, so patchflow's baseline engine decides (``baseline evaluate|compliance``)."""
    from botocore.exceptions import BotoCoreError, ClientError

    from patchflow.executors.ssm import SsmExecutor, make_clients

    settings = get_settings()
    try:
        ssm, s3, ec2 = make_clients(
            region=region or settings.ssm_region, endpoint_url=endpoint_url or settings.ssm_endpoint_url
        )
    except BotoCoreError as exc:
        raise InputError(
            f"cannot create AWS clients: {exc}; set --region or PATCHFLOW_SSM_REGION and check credentials"
        ) from None
    executor = SsmExecutor(
        ssm,
        s3,
        ec2_client=ec2,
        bucket=bucket or settings.ssm_bucket or "",
        prefix=settings.ssm_prefix,
        max_requests_per_second=settings.ssm_max_requests_per_second,
        poll_initial_seconds=settings.ssm_poll_initial_seconds,
        poll_max_seconds=settings.ssm_poll_max_seconds,
    )
    try:
        collection = run_sync(executor.collect(instance or None))
    except (BotoCoreError, ClientError) as exc:
        raise PatchflowError(f"AWS refused the scan: {exc}") from None
    families = {i["platform"]["family"] for i in collection.inventory}
    if family is None and len(families) > 1:
        raise InputError(
            f"the fleet mixes {' and '.join(sorted(families))} instances; choose one with --family"
        )
    chosen = collection.only(family.value) if family is not None else collection
    chosen.write(catalog, inventory)
    out.print(
        f"wrote {len(chosen.catalog)} catalog entries to {catalog} and {len(chosen.inventory)} instance(s) to {inventory}"
    )
    for instance_id, why in sorted(collection.skipped.items()):
        err.print(f"skipped {instance_id}: {why}")
    for note in collection.notes:
        err.print(f"note: {note}")


# ---------------------------------------------------------------------------------------------- api
