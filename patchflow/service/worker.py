"""Building and running patchflow's Temporal worker (``patchflow worker``, and inside ``dev`` / ``demo``)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta

from temporalio.client import Client
from temporalio.worker import Worker

from activities.analysis import AnalysisActivities
from activities.hooks import HookActivities
from activities.patching import ExecutorFactory, WaveActivities, build_executor
from activities.scheduling import ScheduleActivities
from patchflow.config import Settings
from workflows.reboot import RebootWindowWorkflow
from workflows.scheduled import ScheduledWaveWorkflow
from workflows.stage import StageRunWorkflow
from workflows.wave import WaveWorkflow

WORKFLOWS: Sequence[type] = (WaveWorkflow, StageRunWorkflow, ScheduledWaveWorkflow, RebootWindowWorkflow)


def build_worker(
    client: Client,
    task_queue: str,
    *,
    factory: ExecutorFactory = build_executor,
    database_url: str | None = None,
    settings: Settings | None = None,
    graceful_shutdown: timedelta = timedelta(),
    hooks: HookActivities | None = None,
) -> Worker:
    """A worker serving every patchflow workflow and activity on ``task_queue``.

    With ``database_url``, activities record results and wave snapshots in the history database.
    ``graceful_shutdown``: how long running activities may finish after ``shutdown()`` before they are cancelled
    and retried on another worker (``patchflow worker`` passes ``PATCHFLOW_WORKER_SHUTDOWN_GRACE_SECONDS``; the
    fleet's installs are never cancelled by a shutdown, see :func:`activities.patching._cancelled`).
    ``hooks``: the lifecycle hook activities (default: built with ``factory`` and boto3's clients).
    """
    acts = WaveActivities(factory, database_url=database_url, client=client)
    scheduling = ScheduleActivities(settings, client)
    hook_acts = hooks or HookActivities(factory)
    analysis = AnalysisActivities()
    return Worker(
        client,
        task_queue=task_queue,
        workflows=list(WORKFLOWS),
        activities=[
            acts.resolve_targets,
            acts.next_window,
            acts.patch_batch,  # kept for waves started before the send/wait split (their histories call it)
            acts.send_patch_batch,
            acts.wait_patch_batch,
            acts.rollback_instances,
            acts.health_check,
            acts.remind_gate,
            acts.reboot_batch,
            acts.record_wave,
            hook_acts.run_hook_phase,
            scheduling.scheduled_wave_start,
            scheduling.scheduled_wave_allowed,
            scheduling.prepare_scheduled_wave,
            analysis.measure,
            analysis.record_analysis,
            analysis.check_alerts,
        ],
        # Every activity is async (executors await I/O), so no thread pool is needed.
        max_concurrent_activities=200,
        graceful_shutdown_timeout=graceful_shutdown,
    )
