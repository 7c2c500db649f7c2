"""The lifecycle hook activity: one phase of a stage's hooks on one batch of instances.

:class:`HookActivities` holds an executor factory (command steps) and an AWS client factory (the built-ins:
ELBv2, Auto Scaling, EC2), so tests point both at their fleets and at moto's server without monkeypatching.

Idempotent on retry (house rule 4): every finished step record is heartbeated, and a retried attempt resumes
from those details, skipping the steps already done. The built-ins also look before they act — a target
already deregistered, an instance already in Standby, a snapshot already tagged with this step's operation id
are left alone — so a step cut short by a worker crash before its heartbeat does nothing twice either.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from temporalio import activity

from activities.executors import ExecutorCache
from activities.patching import ExecutorFactory, build_executor, heartbeating, install_operation_id
from patchflow.core.hooks import (
    ASG_EXIT_STANDBY,
    ASG_STANDBY,
    COMMAND,
    EBS_RESTORE,
    EBS_SNAPSHOT,
    ELB_DEREGISTER,
    ELB_REGISTER,
    HTTP,
    ON_EXIT,
    POST_REBOOT,
    SSM_DOCUMENT,
    STEP_FAILED,
    STEP_SKIPPED,
    STEP_SUCCEEDED,
    HookStep,
    HookStepRecord,
    tail,
)
from patchflow.core.wavemodel import ExecutorRef, HookPhaseInput, HookPhaseResult
from patchflow.executors.base import Executor

AwsClientFactory = Callable[[str, ExecutorRef], Any]
"""(service name, executor reference) → a boto3 client (region and endpoint from the reference)."""

#: An EC2 instance id (SSM managed EC2 instances use it as their id).
EC2_ID_RE = re.compile(r"^i-(?:[0-9a-f]{8}|[0-9a-f]{17})$")
#: The tag (simulated fleet, SSH inventory ``tags``) naming a host's EC2 instance for the built-in steps.
EC2_ID_TAG = "ec2_instance_id"
#: Snapshot tags (CreateSnapshot TagSpecifications).
TAG_WAVE = "patchflow:wave-id"
TAG_OPERATION = "patchflow:operation-id"
TAG_INSTANCE = "patchflow:instance-id"
TAG_EXPIRES = "patchflow:expires"
TAG_RESTORE = "patchflow:restore-on-failure"


def hook_operation_id(inp: HookPhaseInput, instance_id: str, index: int) -> str:
    """Idempotency key of one step on one instance: ``<install operation id>/hooks/<phase>/<index>``."""
    base = install_operation_id(inp.wave_id, inp.stage, instance_id, inp.attempt)
    return f"{base}/hooks/{inp.phase}/{index}"


def boto3_clients(service: str, ref: ExecutorRef) -> Any:
    """The production AWS client factory: the executor's region and endpoint, the boto3 credential chain."""
    import boto3

    return boto3.client(service, region_name=ref.region, endpoint_url=ref.endpoint_url)


class _Skip(Exception):
    """A step with nothing to do (its message says why): recorded ``skipped``."""


class _Fail(Exception):
    """A step that failed (its message says why): recorded ``failed``."""


class HookActivities:
    """The lifecycle hook activity.

    Args:
        factory: builds executors (command and ssm_document steps).
        aws: builds boto3 clients for the built-in steps.
        poll_seconds: how often draining targets, standby transitions and restores are looked at.
    """

    def __init__(
        self,
        factory: ExecutorFactory = build_executor,
        aws: AwsClientFactory = boto3_clients,
        *,
        poll_seconds: float = 5.0,
    ) -> None:
        self._factory = factory
        self._aws = aws
        self._poll_seconds = poll_seconds
        self._executors = ExecutorCache(factory)
        self._clients: dict[tuple[object, ...], Any] = {}

    async def _executor(self, ref: ExecutorRef) -> Executor:
        return await self._executors.get(ref)

    def _client(self, service: str, ref: ExecutorRef) -> Any:
        key = (service, ref.region, ref.endpoint_url)
        if key not in self._clients:
            self._clients[key] = self._aws(service, ref)
        return self._clients[key]

    @activity.defn(name="run_hook_phase")
    async def run_hook_phase(self, inp: HookPhaseInput) -> HookPhaseResult:
        """Run ``inp.phase``'s steps on every instance of the batch, concurrently; in step order per instance.

        A failing step ends the phase for its instance (``on_exit`` runs every step regardless). Finished step
        records are heartbeated; a retry skips them.
        """
        records = _resumed(activity.info().heartbeat_details, inp.instance_ids)

        async def one(instance_id: str) -> None:
            mine = records[instance_id]
            for index, step in enumerate(inp.steps):
                if index < len(mine):  # finished by an earlier attempt
                    if mine[index].status == STEP_FAILED and inp.phase != ON_EXIT:
                        return
                    continue
                record = await self._run_step(inp, instance_id, index, step)
                mine.append(record)
                activity.heartbeat(_details(records))
                if record.status == STEP_FAILED and inp.phase != ON_EXIT:
                    return

        async with heartbeating(details=lambda: _details(records)):
            await asyncio.gather(*(one(i) for i in inp.instance_ids))
        failed: dict[str, str] = {}
        for instance_id in inp.instance_ids:
            bad = next((r for r in records[instance_id] if r.status == STEP_FAILED), None)
            if bad is not None:
                failed[instance_id] = f"{inp.phase} step {bad.step!r} failed" + (
                    f": {bad.output}" if bad.output else ""
                )
        return HookPhaseResult(records=records, failed=failed)

    async def _run_step(
        self, inp: HookPhaseInput, instance_id: str, index: int, step: HookStep
    ) -> HookStepRecord:
        started = time.monotonic()
        undo: list[str] = []
        try:
            status, output, undo = await self._step(inp, instance_id, index, step)
        except _Skip as exc:
            status, output = STEP_SKIPPED, str(exc)
        except _Fail as exc:
            status, output = STEP_FAILED, str(exc)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - an AWS or executor error fails this step, not the batch
            status, output = STEP_FAILED, f"{type(exc).__name__}: {exc}"
        return HookStepRecord(
            phase=inp.phase,
            step=step.name,
            status=status,
            duration_seconds=round(time.monotonic() - started, 3),
            output=tail(output),
            undo=undo,
        )

    async def _step(
        self, inp: HookPhaseInput, instance_id: str, index: int, step: HookStep
    ) -> tuple[str, str, list[str]]:
        """(status, output, undo) of one step; raises :class:`_Skip` or :class:`_Fail`."""
        if inp.phase == POST_REBOOT and index == 0:
            await self._require_rebooted(inp, instance_id)
        if step.kind in (COMMAND, SSM_DOCUMENT):
            return await self._command(inp, instance_id, index, step)
        if step.kind == HTTP:
            return await self._http(step)
        ec2_id = await self._ec2_id(inp.executor, instance_id)
        if step.kind == ELB_DEREGISTER:
            return await asyncio.to_thread(self._elb_deregister, inp.executor, ec2_id, step)
        if step.kind == ELB_REGISTER:
            return await asyncio.to_thread(
                self._elb_register, inp.executor, ec2_id, step, inp.undo.get(instance_id, [])
            )
        if step.kind == ASG_STANDBY:
            return await asyncio.to_thread(self._asg_standby, inp.executor, ec2_id, step.decrement_desired)
        if step.kind == ASG_EXIT_STANDBY:
            return await asyncio.to_thread(self._asg_exit_standby, inp.executor, ec2_id)
        if step.kind == EBS_SNAPSHOT:
            op = hook_operation_id(inp, instance_id, index)
            return await asyncio.to_thread(self._ebs_snapshot, inp, instance_id, ec2_id, step, op)
        if step.kind == EBS_RESTORE:
            if instance_id not in inp.failed_instance_ids:
                raise _Skip("the instance did not fail: nothing to restore")
            return await asyncio.to_thread(
                self._ebs_restore, inp.executor, ec2_id, inp.undo.get(instance_id, [])
            )
        raise _Fail(f"unknown step kind {step.kind!r}")

    # --------------------------------------------------------------------------- commands and HTTP

    async def _require_rebooted(self, inp: HookPhaseInput, instance_id: str) -> None:
        """post_reboot steps run once the instance rebooted (the reboot step's list, or the install's own
        reboot) or when its install left no reboot pending; otherwise they are skipped."""
        if instance_id in inp.rebooted_instance_ids:
            return
        op = install_operation_id(inp.wave_id, inp.stage, instance_id, inp.attempt)
        result = await (await self._executor(inp.executor)).operation_result(op)
        if result is not None and result.pending_reboot and not result.rebooted:
            raise _Skip("a reboot is still pending: post_reboot runs after the reboot")

    async def _command(
        self, inp: HookPhaseInput, instance_id: str, index: int, step: HookStep
    ) -> tuple[str, str, list[str]]:
        executor = await self._executor(inp.executor)
        op = hook_operation_id(inp, instance_id, index)
        document = step.document if step.kind == SSM_DOCUMENT else None
        extra: dict[str, Any] = {"document": document, "parameters": step.parameters} if document else {}
        result = await executor.run_command(
            instance_id, step.command, timeout_seconds=step.timeout_seconds, operation_id=op, **extra
        )
        said = f": {result.output.strip()}" if result.output.strip() else ""
        if result.status != "finished":
            raise _Fail(f"{result.status}{said}")
        if result.exit_code not in step.success_codes:
            raise _Fail(f"exit {result.exit_code}{said}")
        return STEP_SUCCEEDED, f"exit {result.exit_code}{said}", []

    async def _http(self, step: HookStep) -> tuple[str, str, list[str]]:
        status, body = await asyncio.to_thread(_get, step.url, step.timeout_seconds)
        wanted = step.expect_status or list(range(200, 300))
        if status not in wanted:
            raise _Fail(f"HTTP {status} from {step.url}: {body}" if status else f"{step.url}: {body}")
        return STEP_SUCCEEDED, f"HTTP {status}: {body}", []

    # --------------------------------------------------------------------------- AWS built-ins

    async def _ec2_id(self, ref: ExecutorRef, instance_id: str) -> str:
        """The instance's EC2 id: its ``ec2_instance_id`` tag, else its own id when that is an EC2 id (SSM);
        else the step is skipped."""
        tags = _tags(await self._executor(ref), instance_id)
        if tags.get(EC2_ID_TAG):
            return tags[EC2_ID_TAG]
        if EC2_ID_RE.match(instance_id):
            return instance_id
        raise _Skip(f"no EC2 instance id: give the host an {EC2_ID_TAG} tag to use AWS steps")

    def _target_health(self, elb: Any, arn: str, ec2_id: str) -> list[dict[str, Any]]:
        rows = elb.describe_target_health(TargetGroupArn=arn)["TargetHealthDescriptions"]
        return [r for r in rows if r["Target"]["Id"] == ec2_id]

    def _instance_groups(self, elb: Any, ec2_id: str) -> list[str]:
        """``target_groups: auto``: every instance-type target group the instance is registered in."""
        arns: list[str] = []
        for page in elb.get_paginator("describe_target_groups").paginate():
            for group in page["TargetGroups"]:
                if group.get("TargetType", "instance") == "instance":
                    arns.append(group["TargetGroupArn"])
        return [a for a in arns if self._target_health(elb, a, ec2_id)]

    def _elb_deregister(self, ref: ExecutorRef, ec2_id: str, step: HookStep) -> tuple[str, str, list[str]]:
        """Deregister the instance's targets, then wait (at most ``drain_seconds``) while they drain.

        ELBv2 keeps a deregistered target ``draining`` for the target group's deregistration delay, finishing
        in-flight requests; it is gone (or ``unused``) once that is over."""
        elb = self._client("elbv2", ref)
        groups = step.target_groups or self._instance_groups(elb, ec2_id)
        undo: list[str] = []
        deregistered = 0
        for arn in groups:
            for row in self._target_health(elb, arn, ec2_id):
                state = row.get("TargetHealth", {}).get("State", "")
                if state == "unused" and row.get("TargetHealth", {}).get("Reason") == "Target.NotRegistered":
                    continue
                target = {
                    "Id": ec2_id,
                    **({"Port": row["Target"]["Port"]} if "Port" in row["Target"] else {}),
                }
                undo.append(f"elb:{arn}|{target.get('Port', '')}")
                if state != "draining":
                    elb.deregister_targets(TargetGroupArn=arn, Targets=[target])
                    deregistered += 1
        if not undo:
            raise _Skip("not registered in any target group")
        deadline = time.monotonic() + step.drain_seconds
        draining = self._draining(elb, ec2_id, undo)
        while draining and time.monotonic() < deadline:
            time.sleep(min(self._poll_seconds, max(0.0, deadline - time.monotonic())))
            draining = self._draining(elb, ec2_id, undo)
        note = f"; {draining} target(s) still draining after {step.drain_seconds} s" if draining else ""
        return STEP_SUCCEEDED, f"deregistered {deregistered} of {len(undo)} target(s){note}", undo

    def _draining(self, elb: Any, ec2_id: str, undo: list[str]) -> int:
        arns = {entry[4:].split("|", 1)[0] for entry in undo}
        return sum(
            1
            for arn in arns
            for row in self._target_health(elb, arn, ec2_id)
            if row.get("TargetHealth", {}).get("State") == "draining"
        )

    def _elb_register(
        self, ref: ExecutorRef, ec2_id: str, step: HookStep, undo: list[str]
    ) -> tuple[str, str, list[str]]:
        """Register the instance again: in the target groups (and ports) its elb_deregister took it out of, or
        the listed groups; targets already registered (and not draining) are left alone."""
        elb = self._client("elbv2", ref)
        targets = [entry[4:].split("|", 1) for entry in undo if entry.startswith("elb:")]
        if step.target_groups:
            wanted = set(step.target_groups)
            ports = {arn: port for arn, port in targets if arn in wanted}
            targets = [[arn, ports.get(arn, "")] for arn in step.target_groups]
        if not targets:
            raise _Skip("nothing to register: pre_install deregistered no target")
        registered = 0
        for arn, port in targets:
            present = [
                r
                for r in self._target_health(elb, arn, ec2_id)
                if (not port or str(r["Target"].get("Port", "")) == port)
                and r.get("TargetHealth", {}).get("State") not in ("draining", "unused")
            ]
            if present:
                continue
            target: dict[str, Any] = {"Id": ec2_id, **({"Port": int(port)} if port else {})}
            elb.register_targets(TargetGroupArn=arn, Targets=[target])
            registered += 1
        if not registered:
            raise _Skip(f"already registered in {len(targets)} target group(s)")
        return STEP_SUCCEEDED, f"registered in {registered} target group(s)", []

    def _asg_state(self, asg: Any, ec2_id: str) -> dict[str, Any] | None:
        rows = asg.describe_auto_scaling_instances(InstanceIds=[ec2_id])["AutoScalingInstances"]
        return rows[0] if rows else None

    def _wait_lifecycle(self, asg: Any, ec2_id: str, wanted: str, timeout: float = 600) -> str:
        deadline = time.monotonic() + timeout
        while True:
            row = self._asg_state(asg, ec2_id)
            state = row["LifecycleState"] if row else "gone"
            if state == wanted or time.monotonic() > deadline:
                return state
            time.sleep(self._poll_seconds)

    def _asg_standby(self, ref: ExecutorRef, ec2_id: str, decrement: bool) -> tuple[str, str, list[str]]:
        """EnterStandby (``ShouldDecrementDesiredCapacity``), then wait for ``Standby``."""
        asg = self._client("autoscaling", ref)
        row = self._asg_state(asg, ec2_id)
        if row is None:
            raise _Skip("not in an Auto Scaling group")
        state = row["LifecycleState"]
        if state == "Standby":
            raise _Skip(f"already in Standby in {row['AutoScalingGroupName']}")
        if state not in ("InService", "EnteringStandby"):
            raise _Fail(
                f"cannot enter Standby from {state} (Auto Scaling group {row['AutoScalingGroupName']})"
            )
        if state == "InService":
            asg.enter_standby(
                InstanceIds=[ec2_id],
                AutoScalingGroupName=row["AutoScalingGroupName"],
                ShouldDecrementDesiredCapacity=decrement,
            )
        final = self._wait_lifecycle(asg, ec2_id, "Standby")
        if final != "Standby":
            raise _Fail(f"still {final} after entering Standby")
        return (
            STEP_SUCCEEDED,
            f"Standby in {row['AutoScalingGroupName']} (desired decremented: {decrement})",
            [],
        )

    def _asg_exit_standby(self, ref: ExecutorRef, ec2_id: str) -> tuple[str, str, list[str]]:
        """ExitStandby (Auto Scaling increments the desired capacity again if entering decremented it)."""
        asg = self._client("autoscaling", ref)
        row = self._asg_state(asg, ec2_id)
        if row is None:
            raise _Skip("not in an Auto Scaling group")
        if row["LifecycleState"] not in ("Standby", "Pending", "Pending:Wait", "Pending:Proceed"):
            raise _Skip(f"not in Standby ({row['LifecycleState']})")
        if row["LifecycleState"] == "Standby":
            asg.exit_standby(InstanceIds=[ec2_id], AutoScalingGroupName=row["AutoScalingGroupName"])
        final = self._wait_lifecycle(asg, ec2_id, "InService")
        if final != "InService":
            raise _Fail(f"still {final} after leaving Standby")
        return STEP_SUCCEEDED, f"InService in {row['AutoScalingGroupName']}", []

    def _ebs_snapshot(
        self, inp: HookPhaseInput, instance_id: str, ec2_id: str, step: HookStep, op: str
    ) -> tuple[str, str, list[str]]:
        """Snapshot the root (or every) EBS volume, tagged with the wave, the step's operation id and the
        instance; snapshots already tagged with this operation id are reused, not taken again."""
        ec2 = self._client("ec2", inp.executor)
        reservations = ec2.describe_instances(InstanceIds=[ec2_id])["Reservations"]
        if not reservations or not reservations[0]["Instances"]:
            raise _Fail(f"EC2 instance {ec2_id} not found")
        described = reservations[0]["Instances"][0]
        root = described.get("RootDeviceName")
        volumes = [
            (m["DeviceName"], m["Ebs"]["VolumeId"])
            for m in described.get("BlockDeviceMappings", [])
            if "Ebs" in m and (step.volumes == "all" or m["DeviceName"] == root)
        ]
        if not volumes:
            raise _Skip(f"{ec2_id} has no {'root ' if step.volumes == 'root' else ''}EBS volume")
        existing = {
            s["VolumeId"]: s["SnapshotId"]
            for s in ec2.describe_snapshots(
                OwnerIds=["self"], Filters=[{"Name": f"tag:{TAG_OPERATION}", "Values": [op]}]
            )["Snapshots"]
        }
        tags = [
            {"Key": TAG_WAVE, "Value": inp.wave_id},
            {"Key": TAG_OPERATION, "Value": op},
            {"Key": TAG_INSTANCE, "Value": instance_id},
            {"Key": "Name", "Value": f"patchflow {inp.wave_id} {instance_id}"[:255]},
        ]
        if step.retain_days:
            expires = datetime.now(UTC) + timedelta(days=step.retain_days)
            tags.append({"Key": TAG_EXPIRES, "Value": expires.strftime("%Y-%m-%dT%H:%M:%SZ")})
        if step.restore_on_failure:
            tags.append({"Key": TAG_RESTORE, "Value": "true"})
        undo: list[str] = []
        taken = 0
        for device, volume in volumes:
            snapshot = existing.get(volume)
            if snapshot is None:
                snapshot = ec2.create_snapshot(
                    VolumeId=volume,
                    Description=f"patchflow pre_install snapshot of {device} ({op})"[:255],
                    TagSpecifications=[{"ResourceType": "snapshot", "Tags": tags}],
                )["SnapshotId"]
                taken += 1
            undo.append(f"snap:{snapshot}|{volume}|{'root' if device == root else device}")
        ids = ", ".join(u.split("|", 1)[0][5:] for u in undo)
        return STEP_SUCCEEDED, f"{taken} new, {len(undo) - taken} existing snapshot(s): {ids}", undo

    def _ebs_restore(self, ref: ExecutorRef, ec2_id: str, undo: list[str]) -> tuple[str, str, list[str]]:
        """Replace the failed instance's root volume from its pre_install snapshot (EC2
        CreateReplaceRootVolumeTask: the instance keeps its id, addresses and other volumes)."""
        roots = [u[5:].split("|") for u in undo if u.startswith("snap:") and u.endswith("|root")]
        if not roots:
            raise _Skip("no root volume snapshot from pre_install")
        ec2 = self._client("ec2", ref)
        snapshot = roots[0][0]
        task = ec2.create_replace_root_volume_task(InstanceId=ec2_id, SnapshotId=snapshot)
        task_id = task["ReplaceRootVolumeTask"]["ReplaceRootVolumeTaskId"]
        return STEP_SUCCEEDED, f"replacing the root volume from {snapshot} (task {task_id})", []


def _tags(executor: Executor, instance_id: str) -> dict[str, str]:
    """The instance's tags where the executor knows them without a round trip (simulated fleet file, SSH
    inventory); empty otherwise (SSM: the id is the EC2 id)."""
    fleet = getattr(executor, "fleet", None)
    if fleet is not None:
        found = next((i for i in fleet.instances if i.id == instance_id), None)
        return dict(found.tags) if found is not None else {}
    inventory = getattr(executor, "inventory", None)
    if inventory is not None and instance_id in getattr(inventory, "hosts", {}):
        return dict(inventory.hosts[instance_id].tags)
    return {}


def _get(url: str, timeout: float) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 - operator-configured URL
            return int(response.status), response.read(2000).decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read(2000).decode("utf-8", "replace") if exc.fp else ""
    except (urllib.error.URLError, OSError) as exc:
        return 0, f"unreachable: {exc}"


def _resumed(details: Any, instance_ids: list[str]) -> dict[str, list[HookStepRecord]]:
    """The step records an earlier attempt heartbeated (empty lists for a first attempt)."""
    records: dict[str, list[HookStepRecord]] = {i: [] for i in instance_ids}
    if details:
        saved = details[0] if isinstance(details[0], dict) else {}
        for instance_id, rows in saved.items():
            if instance_id in records and isinstance(rows, list):
                records[instance_id] = [HookStepRecord(**row) for row in rows]
    return records


def _details(records: dict[str, list[HookStepRecord]]) -> dict[str, list[dict[str, Any]]]:
    return {i: [dataclasses.asdict(r) for r in rows] for i, rows in records.items() if rows}
