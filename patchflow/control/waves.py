"""Starting and operating waves through the Temporal client (used by the CLI, later the API and schedules).

A wave is started from a plan: the baseline is evaluated once (or a given patch set is taken), the set is
pinned in the content-addressed store, and the workflow receives everything it needs in its input.
"""

from __future__ import annotations

import asyncio
import getpass
import itertools
import re
import secrets
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import (
    Client,
    WorkflowExecutionStatus,
    WorkflowHandle,
    WorkflowQueryFailedError,
    WorkflowQueryRejectedError,
    WorkflowUpdateFailedError,
)
from temporalio.common import QueryRejectCondition
from temporalio.service import RPCError, RPCStatusCode

from patchflow.config import Settings
from patchflow.control.connection import TemporalUnavailable
from patchflow.core.baselines import load_baseline
from patchflow.core.catalog import load_catalog
from patchflow.core.evaluation import PatchSet, evaluate
from patchflow.core.freezes import FreezeCalendar, FreezePeriod, load_freeze_file, periods_for_wave
from patchflow.core.hooks import HookStepRecord
from patchflow.core.patchsets import PatchSetStore
from patchflow.core.plans import Plan
from patchflow.core.ratecontrol import PENDING
from patchflow.core.reboots import deadline
from patchflow.core.wavemodel import (
    MAX_PAGE_INSTANCES,
    WAVE_FINAL_STATES,
    ExecutorRef,
    GateDecision,
    InstancePage,
    InstancePageInput,
    OperatorAction,
    StageInput,
    StageProgress,
    StageRunResult,
    StageStatus,
    WaveInput,
    WaveResult,
    WaveStatus,
    analysis_json,
    instance_page,
)
from patchflow.errors import InputError, NotFoundError, PatchflowError
from patchflow.executors.base import Package
from workflows.stage import StageRunWorkflow
from workflows.wave import WaveWorkflow

_NO_SUCH_WORKFLOW = (RPCStatusCode.NOT_FOUND, RPCStatusCode.INVALID_ARGUMENT)
"""What Temporal answers for an id that names no workflow (or could not); anything else is an outage."""


class WaveActionRefused(PatchflowError):
    """An operator action was refused by the wave (not allowed, or not applicable now)."""

    exit_code = 4


class NoWorkerError(PatchflowError):
    """No worker polls the task queue a wave runs on: a query or an operator action would wait for one."""


#: A worker long-polls its task queue (about a minute per poll), so one that polled this recently is alive.
WORKER_SEEN_SECONDS = 90
#: How long a running wave may take to answer a status query before the CLI says so (a worker that stopped
#: less than :data:`WORKER_SEEN_SECONDS` ago still looks alive; a busy one answers well within this).
QUERY_TIMEOUT = timedelta(seconds=30)


async def worker_polls(client: Client, task_queue: str) -> bool:
    """Whether a worker polled ``task_queue`` for workflow tasks in the last :data:`WORKER_SEEN_SECONDS`
    (Temporal's ``DescribeTaskQueue`` lists recent pollers with their last access time)."""
    request = DescribeTaskQueueRequest(
        namespace=client.namespace,
        task_queue=TaskQueue(name=task_queue),
        task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
    )
    try:
        response = await client.workflow_service.describe_task_queue(request, timeout=QUERY_TIMEOUT)
    except RPCError as exc:
        if exc.status == RPCStatusCode.UNIMPLEMENTED:
            return True  # a server that cannot tell (the time-skipping test server): assume a worker, refuse nothing
        raise
    seen = datetime.now(UTC) - timedelta(seconds=WORKER_SEEN_SECONDS)
    return any(p.last_access_time.ToDatetime(tzinfo=UTC) >= seen for p in response.pollers)


def no_worker_message(task_queue: str, wave_id: str) -> str:
    return (
        f"no worker polls task queue {task_queue!r}, so nothing runs wave {wave_id} or answers for it; start "
        f"one: PATCHFLOW_TASK_QUEUE={task_queue} patchflow worker (or patchflow dev)"
    )


#: How long a command looks for a worker's poll before it says none polls: a worker that has just started (the
#: demo's, a restarted one) shows among the task queue's pollers only once its first poll reached the server.
WORKER_GRACE_SECONDS = 5.0


async def require_worker(client: Client, task_queue: str, wave_id: str) -> None:
    """Raise :class:`NoWorkerError` within :data:`WORKER_GRACE_SECONDS` when no worker polls ``task_queue``,
    instead of waiting for one without a word."""
    deadline = time.monotonic() + WORKER_GRACE_SECONDS
    while not await worker_polls(client, task_queue):
        if time.monotonic() >= deadline:
            raise NoWorkerError(no_worker_message(task_queue, wave_id))
        await asyncio.sleep(0.5)


def local_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001 - no passwd entry in some containers
        return "unknown"


def executor_ref(plan: Plan, settings: Settings) -> ExecutorRef:
    if plan.executor.kind == "simulated":
        from patchflow.executors.simulated import default_state_path
        from patchflow.executors.simulated.fleet import load_fleet

        assert plan.executor.fleet is not None
        fleet = load_fleet(plan.executor.fleet)
        return ExecutorRef(
            kind="simulated",
            fleet_path=str(plan.executor.fleet),
            state_path=str(default_state_path(settings.data_dir, fleet)),
            time_scale=plan.executor.time_scale,
        )
    if plan.executor.kind == "ssm":
        bucket = plan.executor.bucket or settings.ssm_bucket
        if not bucket:
            raise InputError(
                f"plan {plan.name!r} uses the ssm executor but names no S3 bucket: set executor.bucket in "
                f"{plan.source} or PATCHFLOW_SSM_BUCKET"
            )
        return ExecutorRef(
            kind="ssm",
            region=plan.executor.region or settings.ssm_region,
            endpoint_url=plan.executor.endpoint_url or settings.ssm_endpoint_url,
            bucket=bucket,
            prefix=plan.executor.prefix or settings.ssm_prefix,
            reboot_option=plan.executor.reboot_option,
            health_command=plan.executor.health_command,
            cloudwatch_log_group=plan.executor.cloudwatch_log_group,
            max_requests_per_second=settings.ssm_max_requests_per_second,
            poll_initial_seconds=settings.ssm_poll_initial_seconds,
            poll_max_seconds=settings.ssm_poll_max_seconds,
        )
    if plan.executor.kind == "ssh":
        return ExecutorRef(
            kind="ssh",
            inventory_path=str(plan.executor.inventory),
            reboot_option=plan.executor.reboot_option,
            health_command=plan.executor.health_command,
            max_connections=plan.executor.max_connections,
        )
    raise InputError(f"executor {plan.executor.kind!r} is not supported yet")


def pin_patch_set(
    plan: Plan, settings: Settings, *, patch_set: str | None = None, at: datetime | None = None
) -> PatchSet:
    """Evaluate the plan's baseline once (or load the given set) and store the pinned result."""
    store = PatchSetStore(settings.patch_set_dir)
    if patch_set is not None:
        pinned = store.resolve(patch_set)
        baseline = load_baseline(plan.baseline)
        if baseline.family != pinned.family:
            raise InputError(
                f"patch set {pinned.id} holds {pinned.family} packages; the plan's baseline is {baseline.family}"
            )
        store.save(pinned)
        return pinned
    baseline = load_baseline(plan.baseline)
    catalog = load_catalog(plan.catalog)
    result = evaluate(baseline, catalog, at or datetime.now(UTC), catalog_source=str(plan.catalog))
    store.save(result.patch_set)
    remember_patch_set(settings, result.patch_set)
    return result.patch_set


def remember_patch_set(settings: Settings, pinned: PatchSet) -> None:
    """Keep the pinned set in the history database too (best effort: the file store is authoritative)."""
    import logging

    from patchflow.store import db

    try:
        url = settings.database_url_resolved
        engine = db.get_engine(url, timeout_seconds=10)  # a hanging database must not hold a wave's start
        with db.translate_errors(url), db.open_session(engine) as session:
            db.save_patch_set(session, patch_set=pinned)
    except Exception as exc:  # noqa: BLE001 - never block a wave on the history database
        logging.getLogger(__name__).debug("patch set %s not recorded: %s", pinned.id, exc)


def freeze_calendar(settings: Settings) -> FreezeCalendar:
    """The global freeze file named by PATCHFLOW_FREEZE_FILE (none: an empty calendar)."""
    if settings.freeze_file is None:
        return FreezeCalendar()
    return load_freeze_file(settings.freeze_file)


def plan_freezes(plan: Plan, settings: Settings, at: datetime) -> list[FreezePeriod]:
    """The plan's and the global change freezes as the periods a wave starting at ``at`` carries."""
    rules = [*plan.freezes, *freeze_calendar(settings).rules]
    return periods_for_wave(rules, at) if rules else []


def check_freeze_override(plan: Plan, settings: Settings, approver: str) -> None:
    """Refuse a freeze override (:class:`WaveActionRefused`, exit 4) unless ``approver`` is one of the plan's or
    the freeze file's override approvers; no approver at all is bad input (exit 2)."""
    allowed = {*plan.freeze_override_approvers, *freeze_calendar(settings).override_approvers}
    approver = approver.strip()
    if not approver:
        raise InputError(
            "overriding a change freeze needs --approver NAME (one of the freeze override approvers)"
        )
    if approver not in allowed:
        listed = (
            ", ".join(sorted(allowed))
            or "nobody: add freeze_override_approvers to the plan or override_approvers to the freeze file"
        )
        raise WaveActionRefused(f"{approver!r} may not override a change freeze; allowed: {listed}")


def wave_input(
    plan: Plan,
    settings: Settings,
    pinned: PatchSet,
    *,
    wave_id: str | None = None,
    who: str = "",
    freeze_override_by: str = "",
    kind: str = "standard",
) -> WaveInput:
    """Everything a wave needs, from the plan. ``freeze_override_by`` (checked by
    :func:`check_freeze_override`) starts the wave without its change freezes."""
    stages = [
        StageInput(
            name=s.name,
            window=s.window,
            max_concurrency=str(s.max_concurrency),
            max_errors=str(s.max_errors),
            soak_seconds=s.soak_seconds,
            gate=s.gate.kind,
            approvers=list(s.gate.analysis.approvers if s.gate.analysis else s.gate.approvers),
            max_unhealthy=s.gate.max_unhealthy,
            health_url=s.gate.url,
            on_failure=s.on_failure,
            patch_group=s.targets.patch_group,
            instance_ids=list(s.targets.instance_ids),
            ramp=s.ramp,
            cutoff_behavior=s.cutoff_behavior,
            expire_after_seconds=s.gate.expire_after,
            remind_after_seconds=s.gate.remind_after,
            disruption_max=str(s.disruption_budget.max) if s.disruption_budget else "",
            disruption_per=s.disruption_budget.per if s.disruption_budget else "",
            rollout=s.rollout,
            hooks=s.hooks,
            canary_count=s.canary.count if s.canary else 0,
            canary_soak_seconds=s.canary.soak_seconds if s.canary else 0,
            analysis=s.gate.analysis,
            block_on_alerts=s.block_on_alerts or plan.block_on_alerts,
            reboot=s.reboot,
        )
        for s in plan.stages
    ]
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    return WaveInput(
        wave_id=wave_id or f"wave-{plan.name}-{stamp}-{secrets.token_hex(3)}",
        plan_name=plan.name,
        patch_set_id=pinned.id,
        patches=[Package(p.name, p.arch, p.version) for p in pinned.patches],
        executor=executor_ref(plan, settings),
        stages=stages,
        undeliverable_counts_as_error=plan.undeliverable_counts_as_error,
        heartbeat_timeout_seconds=settings.heartbeat_timeout_seconds,
        started_by=who or local_user(),
        record_history=True,
        slack_channel=plan.slack_channel,
        freezes=[] if freeze_override_by.strip() else plan_freezes(plan, settings, datetime.now(UTC)),
        freeze_override_by=freeze_override_by.strip(),
        kind=kind,
        task_queue=plan.task_queue or "",
        sources=list(pinned.sources()),
    )


async def start_wave(client: Client, settings: Settings, inp: WaveInput) -> WorkflowHandle[Any, Any]:
    """Start the wave on the plan's task queue (its workers), else on PATCHFLOW_TASK_QUEUE."""
    return await client.start_workflow(
        WaveWorkflow.run, inp, id=inp.wave_id, task_queue=inp.task_queue or settings.task_queue
    )


async def _handle(client: Client, wave_id: str) -> WorkflowHandle[Any, Any]:
    handle = client.get_workflow_handle(wave_id, result_type=WaveResult)
    try:
        await handle.describe()
    except RPCError as exc:
        if exc.status not in _NO_SUCH_WORKFLOW:
            raise TemporalUnavailable(
                f"Temporal did not answer about wave {wave_id} ({exc.message})"
            ) from None
        raise NotFoundError(
            f"no wave {wave_id!r} ({exc.message}); list waves with 'patchflow wave list'"
        ) from None
    return handle


async def wave_status(
    client: Client,
    wave_id: str,
    *,
    page_size: int = MAX_PAGE_INSTANCES,
    limit: int | None = None,
    offset: int = 0,
) -> WaveStatus:
    """The wave's status with the live per-instance progress of its running stage merged in.

    A running wave answers in pages (:meth:`WaveWorkflow.status_summary`, then each stage's instances
    ``page_size`` at a time), so no answer grows with the fleet; a worker of a version without the paged queries
    is asked the whole status at once.

    With ``limit``, only one page per stage: its instances ``offset`` to ``offset + limit`` (in the stage's order)
    with their live states, plus how many instances the stage has (``instances_total``) and how many are in each
    state (``state_counts``) — a handful of queries whatever the size of the wave (issue 17: ``wave status`` of a
    100,000-instance wave during its run).
    """
    handle = await _handle(client, wave_id)
    description = await handle.describe()
    if description.status == WorkflowExecutionStatus.COMPLETED:
        # A finished wave answers from its recorded result: no worker needed.
        result: WaveResult = await handle.result()
        return result.status if limit is None else _paged_result(result.status, offset, limit)
    await require_worker(client, description.task_queue, wave_id)
    # A running wave's queries are refused by the server once it has closed (it may end between the describe and
    # them): a closed wave's query would have a worker replay its whole history — seconds for a large wave —
    # while its result is the server's to give. A wave that failed or was terminated has no result: asked anyway.
    running = description.status == WorkflowExecutionStatus.RUNNING
    reject = QueryRejectCondition.NOT_OPEN if running else None
    try:
        return await _running_wave_status(client, handle, page_size, limit, offset, reject)
    except WorkflowQueryRejectedError:
        return await wave_status(client, wave_id, page_size=page_size, limit=limit, offset=offset)


async def _running_wave_status(
    client: Client,
    handle: WorkflowHandle[Any, Any],
    page_size: int,
    limit: int | None,
    offset: int,
    reject: QueryRejectCondition | None,
) -> WaveStatus:
    """:func:`wave_status` of a wave that was not completed when described (see there)."""
    wave_id = handle.id
    if limit is not None:
        try:
            return await _one_page_status(client, handle, offset, limit, reject)
        except (
            WorkflowQueryFailedError
        ):  # a worker without the counting queries: the whole status, then a page
            pass
        except RPCError as exc:
            raise PatchflowError(
                f"wave {wave_id} did not answer ({exc.message}); is a worker running?"
            ) from None
        whole = await _running_wave_status(client, handle, page_size, None, 0, reject)
        return _paged_result(whole, offset, limit)
    try:
        try:
            status = await _paged_status(handle, page_size, reject)
        except WorkflowQueryFailedError:  # a worker without the paged queries (older version)
            status = await _query(handle, reject, WaveWorkflow.status)
    except RPCError as exc:
        raise PatchflowError(f"wave {wave_id} did not answer ({exc.message}); is a worker running?") from None
    for stage in status.stages:
        if stage.active_run_id:
            try:
                progress = await _paged_progress(
                    client.get_workflow_handle(stage.active_run_id, result_type=StageRunResult), page_size
                )
            except (RPCError, WorkflowQueryFailedError):
                continue
            stage.instances.update(progress.states)
            stage.hook_steps.update(progress.hook_steps)
            stage.errors = progress.errors
            stage.disruption = progress.disruption or stage.disruption
            stage.blocked_by = progress.blocked_by
    return status


async def _query(handle: WorkflowHandle[Any, Any], reject: QueryRejectCondition | None, *query: Any) -> Any:
    """One status query (``query``: the query and its argument, if any), refused by the server when
    ``reject`` says so."""
    return await handle.query(*query, reject_condition=reject, rpc_timeout=QUERY_TIMEOUT)


def _paged_result(status: WaveStatus, offset: int, limit: int) -> WaveStatus:
    """A whole status cut to one page per stage, with the stage totals and state counts (see :func:`wave_status`)."""
    for stage in status.stages:
        ids = list(itertools.islice(stage.instances, max(0, offset), max(0, offset) + max(0, limit)))
        stage.instances_total = len(stage.instances)
        stage.state_counts = dict(Counter(stage.instances.values()))
        stage.instances = {i: stage.instances[i] for i in ids}
        stage.details = {i: stage.details[i] for i in ids if i in stage.details}
        stage.hook_steps = {i: stage.hook_steps[i] for i in ids if i in stage.hook_steps}
        stage.reboot_debt = {i: stage.reboot_debt[i] for i in ids if i in stage.reboot_debt}
    return status


async def _one_page_status(
    client: Client,
    handle: WorkflowHandle[Any, Any],
    offset: int,
    limit: int,
    reject: QueryRejectCondition | None,
) -> WaveStatus:
    """One page per stage from a running wave: its summary, each stage's page with the state counts, and for the
    running stage the live states of that page's instances and the counts of its run (see :func:`wave_status`)."""
    status: WaveStatus = await _query(handle, reject, WaveWorkflow.status_summary)

    async def fill(stage: StageStatus) -> None:
        page: InstancePage = await _query(
            handle,
            reject,
            WaveWorkflow.instances_page,
            InstancePageInput(stage=stage.name, offset=offset, limit=limit, counts=True),
        )
        stage.instances, stage.details, stage.hook_steps = page.instances, page.details, page.hook_steps
        stage.instances_total, stage.state_counts = page.total, page.counts
        if stage.active_run_id:
            await _live_page(
                client.get_workflow_handle(stage.active_run_id, result_type=StageRunResult), stage
            )

    for stage in status.stages:  # one query at a time: see _all_pages
        await fill(stage)
    return status


async def _live_page(run: WorkflowHandle[Any, Any], stage: StageStatus) -> None:
    """Merge a running stage run into a stage's page: the live states of the page's instances, the run's errors
    and disruption line, and the state counts — the wave counts the run's instances as pending until the run
    ends, so those are replaced by the run's own counts. A run that has just ended answers from its result."""
    page = InstancePageInput(stage="", ids=list(stage.instances), counts=True)
    try:
        try:
            # One after the other, not at once: see _all_pages.
            progress = await _query(run, QueryRejectCondition.NOT_OPEN, StageRunWorkflow.progress_summary)
            live = await _query(run, QueryRejectCondition.NOT_OPEN, StageRunWorkflow.progress_page, page)
        except WorkflowQueryRejectedError:
            ended = await _ended_run(run)
            if ended is None:
                return
            progress = StageProgress(states={}, errors=ended.errors, max_errors=0, max_concurrency=0)
            live = instance_page(_run_states(ended), ended.details, page, ended.hook_steps)
    except RPCError:
        return  # the run is not up yet, or answered an error: the wave's view
    stage.instances.update(live.instances)
    stage.details.update(live.details)
    stage.hook_steps.update(live.hook_steps)
    stage.errors, stage.disruption, stage.blocked_by = (
        progress.errors,
        progress.disruption,
        progress.blocked_by,
    )
    counts = Counter(stage.state_counts)
    counts[PENDING] -= live.total
    counts.update(live.counts)
    stage.state_counts = {state: n for state, n in counts.items() if n > 0}


async def _summary(handle: WorkflowHandle[Any, Any]) -> WaveStatus:
    """A running wave's status without its instances (the whole status from a worker without the query)."""
    try:
        summary: WaveStatus = await handle.query(WaveWorkflow.status_summary, rpc_timeout=QUERY_TIMEOUT)
    except WorkflowQueryFailedError:
        summary = await handle.query(WaveWorkflow.status, rpc_timeout=QUERY_TIMEOUT)
    return summary


async def _paged_status(
    handle: WorkflowHandle[Any, Any], page_size: int, reject: QueryRejectCondition | None
) -> WaveStatus:
    status: WaveStatus = await _query(handle, reject, WaveWorkflow.status_summary)

    async def fill(stage: StageStatus) -> None:
        async def fetch(offset: int) -> InstancePage:
            page: InstancePage = await _query(
                handle,
                reject,
                WaveWorkflow.instances_page,
                InstancePageInput(stage=stage.name, offset=offset, limit=page_size),
            )
            return page

        for page in await _all_pages(fetch):
            stage.instances.update(page.instances)
            stage.details.update(page.details)
            stage.hook_steps.update(page.hook_steps)

    for stage in status.stages:  # one query at a time: see _all_pages
        await fill(stage)
    return status


async def _ended_run(run: WorkflowHandle[Any, Any]) -> StageRunResult | None:
    """The result of a stage run whose query the server refused because the run had ended; None when it ended
    without one (failed, terminated: the wave's view stands).

    A run ends moments before its wave records it. Querying it then would have a worker replay its whole
    history — a closed workflow is in no worker's cache, and a stage run of tens of thousands of instances
    takes seconds to replay — while its result is the server's to give (issue 17: ``wave status`` < 1 s).
    """
    description = await run.describe()
    if description.status != WorkflowExecutionStatus.COMPLETED:
        return None
    result = await run.result()  # the caller's handle decodes it (``result_type=StageRunResult``)
    return result if isinstance(result, StageRunResult) else None


def _run_states(result: StageRunResult) -> dict[str, str]:
    """Every instance of an ended run with its state, as its ``progress`` query gave them (not started:
    pending)."""
    return {**result.states, **dict.fromkeys(result.remaining, PENDING)}


async def _paged_progress(handle: WorkflowHandle[Any, Any], page_size: int) -> StageProgress:
    """A running stage run's progress, its states fetched in pages (see :func:`wave_status`); a run that has just
    ended answers from its result."""
    refuse_closed = QueryRejectCondition.NOT_OPEN
    try:
        try:
            progress: StageProgress = await _query(handle, refuse_closed, StageRunWorkflow.progress_summary)
        except WorkflowQueryFailedError:  # an older worker
            whole: StageProgress = await _query(handle, refuse_closed, StageRunWorkflow.progress)
            return whole

        async def fetch(offset: int) -> InstancePage:
            page: InstancePage = await _query(
                handle,
                refuse_closed,
                StageRunWorkflow.progress_page,
                InstancePageInput(stage="", offset=offset, limit=page_size),
            )
            return page

        for page in await _all_pages(fetch):
            progress.states.update(page.instances)
            progress.hook_steps.update(page.hook_steps)
        return progress
    except WorkflowQueryRejectedError:
        ended = await _ended_run(handle)
        if ended is None:
            raise WorkflowQueryFailedError("the stage run ended without a result") from None
        return StageProgress(
            states=_run_states(ended),
            errors=ended.errors,
            max_errors=0,
            max_concurrency=0,
            hook_steps=dict(ended.hook_steps),
        )


async def _all_pages(fetch: Callable[[int], Awaitable[InstancePage]]) -> list[InstancePage]:
    """Every page, in order: the first says how many there are, the rest follow one query at a time.

    Never several queries of one workflow at once: while a workflow task is running the server holds a query
    back, and further queries arriving meanwhile were answered ≈ 1 s late — measured on a stage run of 33,333
    instances on the embedded dev server: two queries at once 1.19 s at the median, the same two one after the
    other 0.20 s (``bench/README.md``, issue 17 item 2).
    """
    first = await fetch(0)
    size = len(first.instances)
    if not size or size >= first.total:
        return [first]
    return [first, *[await fetch(offset) for offset in range(size, first.total, size)]]


async def gate_approvers(client: Client, wave_id: str, stage: str) -> list[str]:
    """Who may approve ``stage`` of the wave: from the wave's input (the first event of its history), so the
    plan file need not be at hand; empty when it cannot be read."""
    handle = client.get_workflow_handle(wave_id)
    try:
        async for event in handle.fetch_history_events():
            payloads = event.workflow_execution_started_event_attributes.input.payloads
            (inp,) = await client.data_converter.decode(payloads, [WaveInput])
            return next((list(s.approvers) for s in inp.stages if s.name == stage), [])
    except (RPCError, ValueError, TypeError):
        pass
    return []


def _step_json(record: HookStepRecord) -> dict[str, Any]:
    """A lifecycle hook step record in the status JSON (``undo`` is internal and left out)."""
    return {
        "phase": record.phase,
        "step": record.step,
        "status": record.status,
        "duration_seconds": record.duration_seconds,
        "output": record.output,
    }


def reboot_debt_json(st: StageStatus, now: datetime | None = None) -> dict[str, Any]:
    """A stage's reboot debt for ``wave status`` (``{}`` for stages that never had any: older outputs keep
    their shape): how many instances wait for a reboot, since when, when that is overdue, and the stage's
    reboot window (``reboot.window``)."""
    if not st.reboot_debt_count and not st.reboot_state:
        return {}
    now = now or datetime.now(UTC)
    due = deadline(st.reboot_debt_since, st.reboot_deadline_days) if st.reboot_debt_since else None
    return {
        "reboot_debt": {
            "instances": st.reboot_debt_count,
            "since": st.reboot_debt_since.isoformat() if st.reboot_debt_since else None,
            "deadline": due.isoformat() if due else None,
            "overdue": due is not None and now >= due,
            "reboot_window": st.reboot_state or None,
            "reboot_window_start": st.reboot_window_start.isoformat() if st.reboot_window_start else None,
        }
    }


def status_json(status: WaveStatus) -> dict[str, Any]:
    """The documented JSON contract of ``wave status --format json``."""
    return {
        "wave_id": status.wave_id,
        "plan": status.plan_name,
        "kind": status.kind,
        "state": status.state,
        "reason": status.reason,
        "patch_set_id": status.patch_set_id,
        "stages": [
            {
                "name": st.name,
                "state": st.state,
                "errors": st.errors,
                "max_errors": st.max_errors,
                "max_concurrency": st.max_concurrency,
                "window_start": st.window_start.isoformat() if st.window_start else None,
                "waiting_since": st.waiting_since.isoformat() if st.waiting_since else None,
                "note": st.note,
                **(
                    {"instances_total": st.instances_total, "state_counts": st.state_counts}
                    if st.instances_total is not None
                    else {}
                ),
                **({"disruption_budget": st.disruption} if st.disruption else {}),
                **analysis_json(st),
                "instances": [
                    {
                        "id": i,
                        "state": s,
                        **({"detail": st.details[i]} if i in st.details else {}),
                        **(
                            {"hooks": [_step_json(r) for r in st.hook_steps[i]]}
                            if st.hook_steps.get(i)
                            else {}
                        ),
                    }
                    for i, s in st.instances.items()
                ],
                **reboot_debt_json(st),
            }
            for st in status.stages
        ],
        "audit": [{**asdict(a), "at": a.at.isoformat()} for a in status.audit],
    }


async def act(
    client: Client, wave_id: str, action: str, *, who: str, stage: str | None = None, comment: str = ""
) -> str:
    """Send an operator Update; a refusal raises :class:`WaveActionRefused` with the wave's reason."""
    handle = await _handle(client, wave_id)
    description = await handle.describe()
    if description.status == WorkflowExecutionStatus.RUNNING:
        await require_worker(client, description.task_queue, wave_id)
    try:
        if action in ("approve", "reject"):
            if not stage:
                raise InputError(f"{action} needs --stage NAME")
            method = WaveWorkflow.approve if action == "approve" else WaveWorkflow.reject
            return str(
                await handle.execute_update(method, GateDecision(stage=stage, who=who, comment=comment))
            )
        methods = {
            "halt": WaveWorkflow.halt,
            "resume": WaveWorkflow.resume,
            "cancel": WaveWorkflow.cancel,
            "rollback": WaveWorkflow.rollback,
        }
        return str(await handle.execute_update(methods[action], OperatorAction(who=who, reason=comment)))
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        message = getattr(cause, "message", None) or str(cause or exc)
        if _WAVE_CLOSED in message:  # the wave ended while the Update waited to be admitted
            raise await _wave_ended(client, wave_id, action, stage) from None
        raise WaveActionRefused(f"{action} refused: {message}") from None
    except RPCError as exc:
        if "already completed" in exc.message or _WAVE_CLOSED in exc.message:
            raise await _wave_ended(client, wave_id, action, stage) from None
        if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            raise TemporalUnavailable(f"{action} not sent: Temporal did not answer ({exc.message})") from None
        raise WaveActionRefused(f"{action} refused: {exc.message}") from None


_WAVE_CLOSED = "aborted by closing workflow"
"""Temporal's words for an Update that was still waiting when its workflow closed (e.g. a rejection ended it)."""


async def _wave_ended(client: Client, wave_id: str, action: str, stage: str | None) -> WaveActionRefused:
    """The refusal of an action on a wave that has ended, naming the gate's decision where there was one."""
    decided = await _gate_decided(client, wave_id, stage) if action in ("approve", "reject") else ""
    return WaveActionRefused(
        f"{action} refused: {decided}wave {wave_id} has already ended; see 'patchflow wave status {wave_id}'"
    )


async def _gate_decided(client: Client, wave_id: str, stage: str | None) -> str:
    """Who decided the stage's gate of an ended wave, and when (a gate takes one decision): '' if nobody did."""
    try:
        status = await wave_status(client, wave_id)
    except PatchflowError:
        return ""
    for entry in status.audit:
        if entry.stage == stage and entry.action in ("approve", "reject"):
            verb = "approved" if entry.action == "approve" else "rejected"
            return (
                f"stage {stage!r} was already {verb} by {entry.who} at {entry.at:%Y-%m-%d %H:%M:%S} UTC; "
                "a gate takes one decision; "
            )
    return ""


async def list_waves(client: Client, *, limit: int = 50) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    served: dict[str, bool] = {}  # task queue → a worker polls it (running waves on others cannot answer)
    async for wf in client.list_workflows("WorkflowType = 'WaveWorkflow'", limit=limit):
        row: dict[str, Any] = {
            "wave_id": wf.id,
            "started": wf.start_time.isoformat() if wf.start_time else None,
            "workflow_status": wf.status.name if wf.status else None,
            "state": None,
        }
        running = wf.status == WorkflowExecutionStatus.RUNNING
        if running and wf.task_queue not in served:
            served[wf.task_queue] = await worker_polls(client, wf.task_queue)
        try:
            status: WaveStatus | None = None
            if wf.status == WorkflowExecutionStatus.COMPLETED:  # from its result: no worker needed
                status = (await client.get_workflow_handle(wf.id, result_type=WaveResult).result()).status
            elif running and served[wf.task_queue]:
                status = await _summary(client.get_workflow_handle(wf.id))
            elif running:
                row["note"] = f"no worker polls task queue {wf.task_queue!r}"
            if status is not None:
                row["state"] = status.state
                row["plan"] = status.plan_name
        except RPCError:
            pass
        rows.append(row)
    return rows


async def running_wave_of(client: Client, plan_name: str) -> str | None:
    """The id of a running wave of the plan, if any: the one fleet a plan drives takes one wave at a time.

    Waves are named ``wave-<plan>-<YYYYMMDDTHHMMSSZ>-…`` (by hand, by a schedule, in an emergency); each
    candidate's plan is confirmed by a query where a worker can answer. A candidate that cannot answer (no
    worker, an error) counts as running: a second wave on the same fleet is the risk to avoid.

    Raises:
        RPCError: the server cannot list workflows (e.g. without visibility, as the time-skipping test server).
    """
    query = "WorkflowType = 'WaveWorkflow' AND ExecutionStatus = 'Running'"
    named = re.compile(rf"wave-{re.escape(plan_name)}-\d{{8}}T\d{{6}}Z-.+")
    async for execution in client.list_workflows(query):
        if not named.fullmatch(execution.id):
            continue
        if not await worker_polls(client, execution.task_queue):
            return execution.id
        try:
            status = await _summary(client.get_workflow_handle(execution.id))
        except RPCError:
            return execution.id
        if status.plan_name == plan_name and status.state not in WAVE_FINAL_STATES:  # not one just closing
            return execution.id
    return None


async def refuse_second_wave(client: Client, plan_name: str, what_to_do: Callable[[str], str]) -> None:
    """One wave at a time on a plan's fleet (``wave start``, ``emergency``, ``POST /waves``): refuse while a wave
    of the plan runs, ``what_to_do(running_wave_id)`` telling the caller's way out. A server that cannot list
    workflows (the time-skipping test server) cannot be asked: nothing is refused.

    Raises:
        WaveActionRefused: a wave of the plan is running.
    """
    try:
        running = await running_wave_of(client, plan_name)
    except RPCError as exc:
        if exc.status != RPCStatusCode.UNIMPLEMENTED:
            raise
        return
    if running is not None:
        raise WaveActionRefused(
            f"wave {running} of plan {plan_name} is still running on its fleet; {what_to_do(running)}"
        )


def is_settled(status: WaveStatus) -> bool:
    """Finished, halted, or stopped at a gate: where ``wave start --wait`` returns."""
    return status.state in WAVE_FINAL_STATES or status.state in ("halted", "waiting_approval")


def resolve_plan_path(path: str | Path) -> Path:
    return Path(path).resolve()
