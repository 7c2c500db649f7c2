"""CLI commands of the history database (``patchflow db …``), its audit log (``patchflow audit …``) and of
API tokens (``patchflow token …``).

Registered on the main app by :mod:`patchflow.cli`. :mod:`patchflow.store.db` (SQLAlchemy, Alembic) is imported
inside the commands, so other commands do not pay for it at start-up.
"""

from __future__ import annotations

import getpass
import json
import sys
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from patchflow.cli.common import Fmt
from patchflow.config import Settings, get_settings
from patchflow.core.timeutil import format_instant

if TYPE_CHECKING:
    from sqlmodel import Session

    from patchflow.errors import PatchflowError

db_app = typer.Typer(help="The history database: schema migrations.", no_args_is_help=True)
token_app = typer.Typer(help="API tokens: bearer tokens with a role, hashed at rest.", no_args_is_help=True)
audit_app = typer.Typer(help="The audit log: append-only and hash-chained.", no_args_is_help=True)

payloads_app = typer.Typer(
    help="Payloads that travel through Temporal by reference (the payload directory).", no_args_is_help=True
)

out = Console(soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def register(app: typer.Typer) -> None:
    """Add ``db``, ``audit`` and ``token`` to the main app."""
    app.add_typer(db_app, name="db")
    app.add_typer(audit_app, name="audit")
    app.add_typer(token_app, name="token")
    app.add_typer(payloads_app, name="payloads")


def _url() -> str:
    return get_settings().database_url_resolved


def _actor() -> str:
    """Who ran the command, for the audit log (the OS user; the CLI has no other identity yet)."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "cli:unknown"


def audit_refusal(
    settings: Settings,
    exc: PatchflowError,
    *,
    action: str,
    wave_id: str | None = None,
    stage: str | None = None,
    claimed: str | None = None,
) -> None:
    """Record a CLI action the wave refused (exit 4) or that named no such wave (exit 3) as a refused attempt,
    by the OS user (``--as`` is a claim, kept in the detail). Best effort: the error is what the user sees;
    a database that cannot take the record costs a note on stderr, never the exit code."""
    from patchflow.control.waves import WaveActionRefused
    from patchflow.errors import NotFoundError
    from patchflow.store import db

    if not isinstance(exc, WaveActionRefused | NotFoundError):
        return
    url = settings.database_url_resolved
    try:
        with db.translate_errors(url), db.open_session(db.get_engine(url)) as session:
            recorded = db.append_refusal(
                session,
                actor=_actor(),
                action=action,
                reason=(str(exc).splitlines() or [type(exc).__name__])[0],
                wave_id=wave_id,
                stage=stage,
                detail={"via": "cli", **({"as": claimed} if claimed else {})},
            )
    except Exception as error:  # noqa: BLE001 - see the docstring
        sys.stderr.write(f"note: the refusal was not recorded in the audit log ({error})\n")
        return
    if not recorded:
        sys.stderr.write(
            "note: the refusal was not recorded in the audit log (too many refusals this minute)\n"
        )


def _session(url: str) -> Session:
    """A session on a database whose schema is current (else a DatabaseError saying to upgrade)."""
    from patchflow.store import db

    db.require_current(url)
    return db.open_session(db.get_engine(url))


# ---------------------------------------------------------------------------------------------- db


@db_app.command("upgrade")
def upgrade_command(
    revision: Annotated[str, typer.Option(help="Target revision.")] = "head",
) -> None:
    """Create or migrate the database schema (PATCHFLOW_DATABASE_URL, else SQLite under the data dir)."""
    from patchflow.store import db

    url = _url()
    before = db.current_revision(url)
    after = db.upgrade(url, revision=revision)
    change = "already at" if before == after else f"upgraded from {before or 'an empty database'} to"
    sys.stdout.write(f"{db.display_url(url)}: {change} revision {after}\n")


@db_app.command("current")
def current_command(
    check: Annotated[
        bool, typer.Option("--check", help="Exit 1 unless the schema is at this patchflow's head.")
    ] = False,
) -> None:
    """Show the schema revision of the database and whether it is the newest this patchflow knows."""
    from patchflow.store import db

    url = _url()
    current, head = db.current_revision(url), db.head_revision()
    if current == head:
        note = "(head)"
    elif current is None:
        note = "(empty database; run 'patchflow db upgrade')"
    else:
        note = f"(head is {head}; run 'patchflow db upgrade')"
    sys.stdout.write(f"{db.display_url(url)}: {current or 'none'} {note}\n")
    if check and current != head:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------- audit


@audit_app.command("verify")
def audit_verify_command(
    head: Annotated[
        str | None,
        typer.Option(
            "--head",
            help="A head hash printed by an earlier verification: it must still be in the intact chain.",
        ),
    ] = None,
    fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table,
) -> None:
    """Walk the audit log's hash chain and report the first broken link (exit 1), else the head to note."""
    from patchflow.store import db

    url = _url()
    with db.translate_errors(url), _session(url) as session:
        result = db.verify_audit_chain(session, expected_head=head)
    if fmt is Fmt.json:
        sys.stdout.write(
            json.dumps(
                {
                    "ok": result.ok,
                    "rows": result.rows,
                    "head": result.head,
                    "broken_at": result.broken_at,
                    "problem": result.problem,
                },
                indent=2,
            )
            + "\n"
        )
    elif result.ok:
        sys.stdout.write(
            f"audit log intact: {result.rows} row(s), head {result.head or '(empty)'}; note the head to "
            "check later with --head\n"
        )
    else:
        where = f" at row {result.broken_at}" if result.broken_at is not None else ""
        sys.stderr.write(
            f"error: audit log broken{where}: {result.problem} ({result.rows} row(s) before it intact)\n"
        )
    if not result.ok:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------------------------- tokens


@token_app.command("create")
def token_create_command(
    name: Annotated[str, typer.Option("--name", help="What the token is for (ci, grafana, alice).")],
    role: Annotated[str, typer.Option("--role", help="viewer, operator, approver or admin.")],
) -> None:
    """Create an API token and print it once: only a hash is stored, so it cannot be shown again.

    The token alone goes to stdout (``TOKEN=$(patchflow token create …)``); the rest goes to stderr.
    """
    from patchflow.store import db

    url = _url()
    with db.translate_errors(url), _session(url) as session:
        token_id, token = db.create_token(session, name=name, role=role)
        db.append_audit(
            session,
            actor=_actor(),
            action="token.create",
            detail={"token_id": token_id, "name": name, "role": role},
        )
    sys.stderr.write(
        f"created API token {token_id} ({name.strip()}, role {role}); it is shown once, store it now\n"
    )
    sys.stdout.write(token + "\n")


@token_app.command("list")
def token_list_command(
    fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table,
) -> None:
    """List API tokens (ids, names, roles, use and revocation; never secrets)."""
    from patchflow.store import db

    url = _url()
    with db.translate_errors(url), _session(url) as session:
        tokens = db.list_tokens(session)
    if fmt is Fmt.json:
        sys.stdout.write(json.dumps([t.model_dump(mode="json") for t in tokens], indent=2) + "\n")
        return
    table = Table("id", "name", "role", "created", "last used", "status")
    for t in tokens:
        status = f"revoked {format_instant(t.revoked_at)}" if t.revoked and t.revoked_at else "active"
        table.add_row(
            t.id,
            t.name,
            t.role,
            format_instant(t.created_at),
            format_instant(t.last_used_at) if t.last_used_at else "never",
            status,
        )
    out.print(table)


@token_app.command("revoke")
def token_revoke_command(
    token_id: Annotated[str, typer.Argument(metavar="ID", help="Token id (from 'patchflow token list').")],
) -> None:
    """Revoke an API token: requests bearing it are refused from now on."""
    from patchflow.store import db

    url = _url()
    with db.translate_errors(url), _session(url) as session:
        token = db.revoke_token(session, token_id=token_id)
        db.append_audit(session, actor=_actor(), action="token.revoke", detail={"token_id": token_id})
    sys.stdout.write(f"revoked API token {token.id} ({token.name}, role {token.role})\n")


@payloads_app.command("prune")
def payloads_prune(
    min_age_hours: Annotated[
        float,
        typer.Option(min=0.0, help="Only blobs older than this many hours (a fresh one may be in use)."),
    ] = 1.0,
    dry_run: Annotated[bool, typer.Option(help="Report what would be removed; remove nothing.")] = False,
    fmt: Annotated[Fmt, typer.Option("--format", help="Output format.")] = Fmt.table,
) -> None:
    """Remove payload blobs no workflow history on the Temporal server refers to any more.

    Every execution the server still keeps is read (running waves, and finished ones within the namespace's
    retention), so nothing a wave may replay or a `wave status` may read is removed. Run it from one machine,
    e.g. daily from cron; it reads every kept history, so it takes a while on a busy server.
    """
    from datetime import timedelta

    from patchflow.cli.common import run_sync, temporal_client
    from patchflow.control.payloads import prune, store_for

    settings = get_settings()
    store = store_for(settings)

    async def main() -> object:
        client = await temporal_client(settings)
        return await prune(client, store, min_age=timedelta(hours=min_age_hours), dry_run=dry_run)

    report = run_sync(main())
    if fmt is Fmt.json:
        print(json.dumps({**vars(report), "store": str(store), "dry_run": dry_run}))
        return
    verb = "would remove" if dry_run else "removed"
    print(
        f"{store}: {verb} {report.removed} blob(s) ({report.removed_bytes:,} bytes), kept "
        f"{report.kept}; {report.workflows} workflow histories read"
    )
