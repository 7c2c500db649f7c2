"""The pure domain: data in, decisions out.

Holds distro version order (:mod:`~patchflow.core.versions`), catalogs, baselines and their matching,
SSM's patch evaluation, compliance, pinned patch sets, emergency fix selection, reports, plans, maintenance
windows, change freezes, schedule calendars, rate control, the wave data model and the executor-facing data
(:mod:`~patchflow.core.instances`).

May import: the standard library, pydantic, PyYAML, python-dateutil, packaging, icalendar and
recurring-ical-events, and :mod:`patchflow.errors`. Never Temporal, boto3, SQL, HTTP, Slack, Prometheus,
typer/rich or the settings — an import-linter contract in ``pyproject.toml`` keeps it so. Reading a local file a
user named (a baseline, a plan) is the one kind of I/O allowed here.
"""
