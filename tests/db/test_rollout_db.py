"""The history database keeps what a stage's rollout controls did (``stages.rollout``): each analysis
measurement, the analysis' result, alert blocking, the disruption budget and the reboot debt summed up."""

from __future__ import annotations

import math
from datetime import timedelta

import sqlalchemy as sa
from alembic import command
from sqlmodel import Session

from patchflow.core.analysis import AnalysisSummary, Measurement, QueryTally
from patchflow.store import db
from tests.db.test_db import T0, status


def test_the_rollout_of_a_stage_is_recorded_and_updated(session: Session) -> None:
    snapshot = status()
    canary = snapshot.stages[0]
    canary.disruption = "1 per tag:Cluster"
    canary.blocked_by = "alert NodeDown is firing"
    canary.analysis = AnalysisSummary(
        tallies={"error-rate": QueryTally(successful=1, inconclusive=1)}, instances=2
    )
    canary.measurements = [
        Measurement(
            "error-rate", T0 + timedelta(seconds=30), "successful", [0.001, 0.002], None, "0.0015 < 0.01"
        ),
        Measurement(
            "error-rate", T0 + timedelta(seconds=90), "inconclusive", [math.nan, math.inf], None, "no data"
        ),
    ]
    canary.reboot_debt = {"i-2": T0 + timedelta(minutes=5)}  # per instance: status only
    canary.reboot_debt_count = 1
    canary.reboot_debt_since = T0 + timedelta(minutes=5)
    canary.reboot_deadline_days = 3
    canary.reboot_window_start = T0 + timedelta(days=1)
    canary.reboot_state = "waiting_window"
    db.record_wave_status(session, status=snapshot, at=T0 + timedelta(minutes=6))

    stages = db.get_wave(session, wave_id="wave-web-1").stages
    assert stages[0].rollout == {
        "disruption_budget": "1 per tag:Cluster",
        "blocked_by": "alert NodeDown is firing",
        "analysis": {
            "result": "",
            "instances": 2,
            "queries": {"error-rate": {"successful": 1, "failed": 0, "inconclusive": 1}},
        },
        "measurements": [
            {
                "query": "error-rate",
                "at": "2026-11-10T02:00:30+00:00",
                "verdict": "successful",
                "values": [0.001, 0.002],
                "baseline": None,
                "detail": "0.0015 < 0.01",
            },
            {  # JSON has no NaN or Infinity (and PostgreSQL refuses them): recorded as null
                "query": "error-rate",
                "at": "2026-11-10T02:01:30+00:00",
                "verdict": "inconclusive",
                "values": [None, None],
                "baseline": None,
                "detail": "no data",
            },
        ],
        "reboot_debt": {
            "instances": 1,
            "since": "2026-11-10T02:05:00+00:00",
            "deadline_days": 3,
            "reboot_window": "waiting_window",
            "reboot_window_start": "2026-11-11T02:00:00+00:00",
        },
    }
    assert stages[1].rollout is None  # a stage that uses none of them

    canary.blocked_by = ""
    canary.analysis.result = "successful"
    canary.reboot_debt, canary.reboot_debt_count, canary.reboot_debt_since = {}, 0, None
    canary.reboot_state = "done"
    db.record_wave_status(session, status=snapshot, at=T0 + timedelta(days=1, minutes=10))
    rollout = db.get_wave(session, wave_id="wave-web-1").stages[0].rollout
    assert rollout is not None
    assert "blocked_by" not in rollout
    assert rollout["analysis"]["result"] == "successful"
    assert len(rollout["measurements"]) == 2
    assert rollout["reboot_debt"] == {
        "instances": 0,
        "since": None,
        "deadline_days": 3,
        "reboot_window": "done",
        "reboot_window_start": "2026-11-11T02:00:00+00:00",
    }

    # A late retry of the first snapshot moves nothing back.
    canary.analysis.result = ""
    db.record_wave_status(session, status=snapshot, at=T0 + timedelta(minutes=6))
    rollout = db.get_wave(session, wave_id="wave-web-1").stages[0].rollout
    assert rollout is not None and rollout["analysis"]["result"] == "successful"


def test_revision_0005_leaves_the_stages_before_it_without_a_rollout(empty_url: str) -> None:
    db.upgrade(empty_url, revision="0004")
    engine = db.make_engine(empty_url)
    try:
        with engine.begin() as connection:
            connection.execute(
                sa.text(
                    "INSERT INTO waves (id, plan, state, patch_set_id, started_by, started_at, reason, updated_at, "
                    "kind) VALUES ('w', 'web', 'succeeded', 'ps-1', 'alice', :at, '', :at, 'standard')"
                ),
                {"at": T0},
            )
            connection.execute(
                sa.text(
                    "INSERT INTO stages (wave_id, name, position, state, errors, note, updated_at) "
                    "VALUES ('w', 'canary', 0, 'succeeded', 0, '', :at)"
                ),
                {"at": T0},
            )
        assert db.upgrade(empty_url) == db.head_revision()
        with db.open_session(engine) as session:
            (stage,) = db.get_wave(session, wave_id="w").stages
            assert stage.name == "canary" and stage.rollout is None
        config = db.alembic_config()
        config.attributes["database_url"] = empty_url
        command.downgrade(config, "0004")
        with engine.connect() as connection:
            assert "rollout" not in {c["name"] for c in sa.inspect(connection).get_columns("stages")}
    finally:
        engine.dispose()
