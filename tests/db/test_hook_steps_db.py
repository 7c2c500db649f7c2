"""The history database keeps what each instance's lifecycle hooks did (``stage_instances.hook_steps``)."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from alembic import command
from sqlmodel import Session

from patchflow.core.hooks import HookStepRecord
from patchflow.store import db
from tests.db.test_db import T0, status


def test_hook_steps_are_recorded_per_instance_and_updated(session: Session) -> None:
    snapshot = status()
    canary = snapshot.stages[0]
    canary.hook_steps = {
        "i-2": [
            HookStepRecord(
                "pre_install", "elb_deregister", "succeeded", 1.25, "deregistered 1 of 1", ["elb:arn|80"]
            ),
            HookStepRecord("on_exit", "command: cleanup", "failed", 0.5, "exit 1: no"),
        ]
    }
    db.record_wave_status(session, status=snapshot, at=T0 + timedelta(minutes=1))
    wave = db.get_wave(session, wave_id="wave-web-1")
    steps = {i.instance_id: i.hook_steps for i in wave.stages[0].instances}
    assert steps["i-1"] == []
    assert steps["i-2"] == [
        {
            "phase": "pre_install",
            "step": "elb_deregister",
            "status": "succeeded",
            "duration_seconds": 1.25,
            "output": "deregistered 1 of 1",
        },  # ``undo`` is the workflow's business, not history
        {
            "phase": "on_exit",
            "step": "command: cleanup",
            "status": "failed",
            "duration_seconds": 0.5,
            "output": "exit 1: no",
        },
    ]
    canary.hook_steps["i-1"] = [HookStepRecord("pre_install", "command: a", "succeeded", 0.1)]
    db.record_wave_status(session, status=snapshot, at=T0 + timedelta(minutes=2))
    wave = db.get_wave(session, wave_id="wave-web-1")
    assert [s["step"] for i in wave.stages[0].instances if i.instance_id == "i-1" for s in i.hook_steps] == [
        "command: a"
    ]


def test_revision_0004_adds_an_empty_list_to_the_rows_before_it(empty_url: str) -> None:
    db.upgrade(empty_url, revision="0003")
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
                    "INSERT INTO stage_instances (wave_id, stage, instance_id, position, state, detail, updated_at) "
                    "VALUES ('w', 'canary', 'i-1', 0, 'succeeded', '', :at)"
                ),
                {"at": T0},
            )
        assert db.upgrade(empty_url, revision="0004") == "0004"
        with db.open_session(engine) as session:
            (instance,) = session.exec(sa.select(db.StageInstance)).scalars()  # type: ignore[call-overload]
            assert instance.hook_steps == []
        config = db.alembic_config()
        config.attributes["database_url"] = empty_url
        command.downgrade(config, "0003")
        with engine.connect() as connection:
            assert "hook_steps" not in {
                c["name"] for c in sa.inspect(connection).get_columns("stage_instances")
            }
    finally:
        engine.dispose()
