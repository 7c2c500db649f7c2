"""The ``patchflow`` command line.

Errors a user can cause are printed as ``error: …`` with their location and a hint, and exit non-zero
(2: bad input, 3: not found); a traceback never reaches the terminal unless ``PATCHFLOW_DEBUG=1``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import sys
import traceback
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table

from patchflow.cli import compliance as cli_compliance
from patchflow.cli import db as cli_db
from patchflow.cli import emergency as cli_emergency
from patchflow.cli import fleet as cli_fleet
from patchflow.cli import lab as cli_lab
from patchflow.cli import schedule as cli_schedule
from patchflow.cli import stack as cli_stack
from patchflow.cli import waves as cli_waves
from patchflow.cli.common import PatchflowConsole, readable_help
from patchflow.config import get_settings
from patchflow.core import versions
from patchflow.core.baselines import Baseline, dump_baseline, export_aws, load_baseline, parse_baseline
from patchflow.core.catalog import load_catalog
from patchflow.core.compliance import Instance, judge, load_inventory, summarise
from patchflow.core.documents import load_document, locate
from patchflow.core.evaluation import Evaluation, PatchSet, PinnedPatch, evaluate
from patchflow.core.patchsets import PatchSetStore
from patchflow.core.timeutil import format_instant, parse_instant
from patchflow.errors import BaselineError, ExportError, InputError, PatchflowError

app = typer.Typer(
    name="patchflow",
    help="Staged, pinned, durable OS patch rollouts above AWS Systems Manager Patch Manager.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
baseline_app = typer.Typer(
    help="Baselines as code: validate, evaluate, check compliance, export.", no_args_is_help=True
)
patch_set_app = typer.Typer(help="Pinned, content-addressed patch sets.", no_args_is_help=True)
versions_app = typer.Typer(help="Exact deb and rpm version order.", no_args_is_help=True)


def _show_version(value: bool) -> None:
    if value:
        sys.stdout.write(f"patchflow {_version()}\n")
        raise typer.Exit()


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("patchflow")
    except PackageNotFoundError:  # a source checkout that was never installed
        from patchflow import __version__

        return __version__


@app.callback()
def _root(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", help="Print patchflow's version and exit.", is_eager=True, callback=_show_version
        ),
    ] = False,
) -> None:
    """Staged, pinned, durable OS patch rollouts above AWS Systems Manager Patch Manager."""


app.add_typer(baseline_app, name="baseline")
app.add_typer(patch_set_app, name="patch-set")
app.add_typer(versions_app, name="version")
app.command("plan")(cli_waves.plan_command)
app.add_typer(cli_waves.wave_app, name="wave")
app.add_typer(cli_fleet.fleet_app, name="fleet")
app.add_typer(cli_fleet.window_app, name="window")
app.add_typer(cli_fleet.ssm_app, name="ssm")
app.add_typer(cli_compliance.compliance_app, name="compliance")
app.add_typer(cli_schedule.schedule_app, name="schedule")
app.add_typer(cli_emergency.emergency_app, name="emergency")
cli_db.register(app)  # patchflow db …, patchflow token …
app.command("worker")(cli_stack.worker_command)
app.command("dev")(cli_stack.dev_command)
app.command("demo")(cli_stack.demo_command)
app.command("api")(cli_stack.api_command)
app.add_typer(cli_lab.lab_app, name="lab")

# Piped output (CI logs, files) gets wide tables instead of 80 folded columns.
out = PatchflowConsole(soft_wrap=False, width=None if sys.stdout.isatty() else 200)


class OutputFormat(StrEnum):
    table = "table"
    json = "json"


class FileFormat(StrEnum):
    json = "json"
    yaml = "yaml"


class VersionFamily(StrEnum):
    deb = "deb"
    rpm = "rpm"


def _emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def _parse_at(value: str) -> Any:
    try:
        return parse_instant(value, allow_now=True)
    except ValueError as exc:
        raise InputError(f"--at: {exc}") from None


def _store() -> PatchSetStore:
    return PatchSetStore(get_settings().patch_set_dir)


# ---------------------------------------------------------------------------------------------- baseline


@baseline_app.command("validate")
def baseline_validate(
    files: Annotated[
        list[Path],
        typer.Argument(metavar="FILE...", help="Baseline files (YAML or JSON).", show_default=False),
    ],
) -> None:
    """Check baseline files against the CreatePatchBaseline constraints; report every problem."""
    failures: list[PatchflowError] = []
    for path in files:
        try:
            baseline = load_baseline(path)
        except PatchflowError as exc:
            failures.append(exc)
            continue
        rules = len(baseline.ApprovalRules.PatchRules)
        out.print(
            f"ok: {path} ({baseline.Name}, {baseline.OperatingSystem}, {rules} rule{'s' if rules != 1 else ''})"
        )
    if failures:
        for failure in failures:
            _print_error(failure)
        raise typer.Exit(2)


def _evaluate(baseline_path: Path, catalog_path: Path, at: str) -> tuple[Baseline, Evaluation]:
    baseline = load_baseline(baseline_path)
    catalog = load_catalog(catalog_path)
    return baseline, evaluate(baseline, catalog, _parse_at(at), catalog_source=str(catalog_path))


@baseline_app.command("evaluate")
def baseline_evaluate(
    baseline_file: Annotated[
        Path, typer.Argument(metavar="BASELINE", help="Baseline file.", show_default=False)
    ],
    catalog: Annotated[
        Path, typer.Option("--catalog", help="Patch catalog (JSON list of patches).", show_default=False)
    ],
    at: Annotated[
        str, typer.Option("--at", help="Evaluation time, RFC 3339 (e.g. 2026-11-10T02:00:00Z) or 'now'.")
    ] = "now",
    fmt: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.table,
    store: Annotated[
        bool, typer.Option("--store/--no-store", help="Keep the pinned patch set in the data directory.")
    ] = True,
) -> None:
    """Decide every catalog patch (with the reason) and pin the resulting patch set."""
    _, result = _evaluate(baseline_file, catalog, at)
    if store:
        _store().save(result.patch_set)
    if fmt is OutputFormat.json:
        _emit_json(result.to_json())
        return
    table = Table(title=f"Evaluation at {format_instant(result.patch_set.evaluated_at)}")
    for column in ("package", "arch", "version", "decision", "level", "reason"):
        table.add_column(column, overflow="fold")
    styles = {"approved": "green", "rejected": "red", "not_approved": "yellow"}
    for d in result.decisions:
        marker = " *" if d.in_patch_set else ""
        table.add_row(
            d.patch.name,
            d.patch.arch,
            d.patch.version + marker,
            f"[{styles[d.decision]}]{d.decision}[/]",
            d.compliance_level or "",
            d.reason,
        )
    out.print(table)
    counts = {
        k: sum(1 for d in result.decisions if d.decision == k)
        for k in ("approved", "rejected", "not_approved")
    }
    out.print(
        f"patch set [bold]{result.patch_set.id}[/]: {len(result.patch_set.patches)} package version(s) pinned (*); "
        f"{counts['approved']} approved, {counts['rejected']} rejected, {counts['not_approved']} not approved"
    )
    for note in result.notes:
        out.print(f"note: {note}")


@baseline_app.command("compliance")
def baseline_compliance(
    baseline_file: Annotated[
        Path, typer.Argument(metavar="BASELINE", help="Baseline file.", show_default=False)
    ],
    inventory: Annotated[
        Path, typer.Option("--inventory", help="Instance inventory (JSON).", show_default=False)
    ],
    catalog: Annotated[
        Path | None,
        typer.Option("--catalog", help="Patch catalog; not needed with --patch-set.", show_default=False),
    ] = None,
    at: Annotated[str, typer.Option("--at", help="Evaluation time, RFC 3339 or 'now'.")] = "now",
    patch_set: Annotated[
        str | None,
        typer.Option(
            "--patch-set", help="Judge against a pinned patch set (id or file) instead of re-evaluating."
        ),
    ] = None,
    fmt: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.table,
) -> None:
    """Per-instance patch compliance states, like DescribeInstancePatchStates."""
    baseline = load_baseline(baseline_file)
    family = baseline.family
    if family is None:
        raise InputError(f"compliance needs a Linux baseline; {baseline.OperatingSystem} is not supported")
    candidates: list[PinnedPatch]
    rejected: list[str] = list(baseline.RejectedPatches)
    action: str = baseline.RejectedPatchesAction
    if patch_set is not None:
        if catalog is not None or at != "now":
            raise InputError("--patch-set judges against a pinned set: leave out --catalog and --at")
        pinned: PatchSet = _store().resolve(patch_set)
        if pinned.family != family:
            raise InputError(
                f"patch set {pinned.id} holds {pinned.family} packages but the baseline is for {family}"
            )
        candidates = list(pinned.compliance_targets())
        set_id = pinned.id
        # The set was pinned with its own baseline: its rejected list is the one that applies.
        rejected = list(pinned.baseline.get("RejectedPatches", []))
        action = str(pinned.baseline.get("RejectedPatchesAction", "ALLOW_AS_DEPENDENCY"))
    else:
        if catalog is None:
            raise InputError(
                "give --catalog FILE to evaluate the baseline, or --patch-set ID to use a pinned set"
            )
        _, result = _evaluate(baseline_file, catalog, at)
        candidates = result.approved()
        set_id = result.patch_set.id
    instances: list[Instance] = load_inventory(inventory, family=family)
    results, notes = judge(
        instances,
        family=family,
        candidates=candidates,
        rejected_patches=rejected,
        rejected_action=action,
        package_manager=baseline.package_manager,
    )
    if fmt is OutputFormat.json:
        _emit_json(
            {
                "patch_set_id": set_id,
                "instances": [r.to_json() for r in results],
                "summary": summarise(results),
                "notes": notes,
            }
        )
        return
    table = Table(title=f"Patch compliance against {set_id}")
    columns = (
        "instance",
        "group",
        "status",
        "installed",
        "other",
        "pending reboot",
        "rejected",
        "missing",
        "failed",
        "level",
    )
    for column in columns:
        table.add_column(column)
    for r in results:
        c = r.counts
        status = "[green]COMPLIANT[/]" if r.status == "COMPLIANT" else "[red]NON_COMPLIANT[/]"
        table.add_row(
            r.instance_id,
            r.patch_group or "",
            status,
            *(
                str(c[k])
                for k in (
                    "InstalledCount",
                    "InstalledOtherCount",
                    "InstalledPendingRebootCount",
                    "InstalledRejectedCount",
                    "MissingCount",
                    "FailedCount",
                )
            ),
            r.compliance_level or "",
        )
    out.print(table)
    summary = summarise(results)
    out.print(
        f"{summary['instances']} instance(s): {summary['compliant']} compliant, {summary['non_compliant']} non-compliant"
    )
    for note in notes:
        out.print(f"note: {note}")


@baseline_app.command("export")
def baseline_export(
    baseline_file: Annotated[
        Path, typer.Argument(metavar="BASELINE", help="Baseline file.", show_default=False)
    ],
    aws: Annotated[
        bool,
        typer.Option("--aws", help="Write a CreatePatchBaseline request body (aws ssm … --cli-input-json)."),
    ] = False,
    fmt: Annotated[FileFormat, typer.Option("--format", help="Output format.")] = FileFormat.json,
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write to this file instead of stdout.")
    ] = None,
) -> None:
    """Write a baseline back in AWS's format."""
    if not aws:
        raise InputError("choose an export target: --aws (the CreatePatchBaseline request format)")
    doc = load_document(baseline_file, kind="baseline", error=BaselineError)
    try:
        body = export_aws(parse_baseline(doc))
    except ExportError as exc:
        raise ExportError(exc.summary, source=doc.source, problems=locate(exc.problems, doc)) from None
    text = dump_baseline(body, fmt.value)
    if output is None:
        sys.stdout.write(text)
    else:
        try:
            output.write_text(text, encoding="utf-8")
        except OSError as exc:
            raise InputError(f"cannot write {output}: {exc.strerror}") from None
        out.print(f"wrote {output}")


# ---------------------------------------------------------------------------------------------- patch sets


@patch_set_app.command("list")
def patch_set_list() -> None:
    """List the pinned patch sets stored in the data directory."""
    store = _store()
    for set_id in store.list_ids():
        ps = store.load(set_id)
        out.print(
            f"{ps.id}  {ps.baseline.get('Name')}  evaluated {format_instant(ps.evaluated_at)}  "
            f"{len(ps.patches)} package(s)"
        )


@patch_set_app.command("show")
def patch_set_show(
    patch_set_id: Annotated[
        str, typer.Argument(metavar="ID", help="Patch set id or file.", show_default=False)
    ],
    fmt: Annotated[OutputFormat, typer.Option("--format", help="Output format.")] = OutputFormat.table,
) -> None:
    """Show the packages a patch set pins."""
    ps = _store().resolve(patch_set_id)
    if fmt is OutputFormat.json:
        _emit_json(ps.to_json())
        return
    table = Table(title=f"{ps.id} ({ps.baseline.get('Name')}, evaluated {format_instant(ps.evaluated_at)})")
    for column in ("package", "arch", "version", "level", "severity"):
        table.add_column(column)
    for p in ps.patches:
        table.add_row(p.name, p.arch, p.version, p.compliance_level, p.severity or "")
    out.print(table)


# ---------------------------------------------------------------------------------------------- versions


@versions_app.command("compare")
def version_compare(
    family: Annotated[
        VersionFamily,
        typer.Argument(metavar="FAMILY", help="Version family: deb or rpm.", show_default=False),
    ],
    a: Annotated[str, typer.Argument(metavar="A", help="First version.", show_default=False)],
    b: Annotated[str, typer.Argument(metavar="B", help="Second version.", show_default=False)],
) -> None:
    """Compare two versions exactly as dpkg or rpm would: prints '<', '=' or '>'."""
    result = versions.compare(family.value, a, b)
    sys.stdout.write({-1: "<", 0: "=", 1: ">"}[result] + "\n")


# ---------------------------------------------------------------------------------------------- entry point


def _print_error(exc: PatchflowError) -> None:
    sys.stderr.write(f"error: {exc}\n")


def _die(code: int) -> NoReturn:
    _flush()
    raise SystemExit(code)


def run() -> NoReturn:
    """Console-script entry point.

    Leaves with ``os._exit`` once the output is flushed: a process that used the Temporal client can abort
    at interpreter shutdown (temporalio/sdk-python#300), which must not turn a finished command into a
    random exit code.
    """
    code = 0
    try:
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    _flush()
    os._exit(code)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError):  # a reader that went away (`| head`) is not an error
            stream.flush()


def _reader_went_away() -> bool:
    """Whether stdout's reader closed the pipe (``patchflow … | head``): click then wraps stdout to keep it
    quiet and exits 1; for a command line that is a normal way to stop reading, so patchflow exits 0."""
    return type(sys.stdout).__name__.endswith("PacifyFlushWrapper")  # click's, or typer's copy of click


def main(argv: list[str] | None = None) -> None:
    """Run the app, turning every error into a message and an exit code."""
    command = typer.main.get_command(app)
    readable_help(command)
    try:
        command.main(args=argv, prog_name="patchflow", standalone_mode=True)
    except PatchflowError as exc:
        _print_error(exc)
        _die(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        _die(130)
    except SystemExit as exc:
        if exc.code == 1 and _reader_went_away():
            raise SystemExit(0) from None
        raise
    except OSError as exc:
        message = _unwritable(exc)
        if message is None:
            _internal_error(exc)
        sys.stderr.write(f"error: {message}\n")
        _die(1)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: no traceback for users
        _internal_error(exc)


def _internal_error(exc: BaseException) -> NoReturn:
    if os.environ.get("PATCHFLOW_DEBUG"):
        traceback.print_exception(exc)
    sys.stderr.write(
        f"patchflow: internal error: {type(exc).__name__}: {exc}\n"
        "This is a bug; rerun with PATCHFLOW_DEBUG=1 for the traceback and report it.\n"
    )
    _die(70)


_UNWRITABLE = {errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT, errno.ENOTDIR}


def _unwritable(exc: OSError) -> str | None:
    """What to tell a user whose data directory (or another path patchflow writes) cannot be written: the path
    and what to do; None for other OS errors (those are bugs)."""
    if exc.errno not in _UNWRITABLE or not exc.filename:
        return None
    path = Path(os.fsdecode(exc.filename))
    data_dir = get_settings().data_dir
    what = f"cannot write {path}: {exc.strerror}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"{what}; free some space there"
    if path == data_dir or data_dir in path.parents or path in data_dir.parents:
        return (
            f"{what}; patchflow keeps its state in PATCHFLOW_DATA_DIR ({data_dir}): make that directory "
            "writable for this user, or set PATCHFLOW_DATA_DIR to a writable directory"
        )
    return f"{what}; check that this user may write there"


if __name__ == "__main__":
    run()
