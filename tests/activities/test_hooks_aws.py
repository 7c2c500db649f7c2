"""The AWS built-in hook steps against moto's server: real boto3 over real HTTP on 127.0.0.1.

The activity runs in Temporal's ``ActivityEnvironment`` (real heartbeats, real heartbeat details on a retry) on
a simulated fleet whose instances carry ``ec2_instance_id`` tags naming moto's EC2 instances of an Auto Scaling
group registered in an ELBv2 target group.
"""

from __future__ import annotations

import dataclasses
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from temporalio.testing import ActivityEnvironment

from activities.hooks import (
    TAG_EXPIRES,
    TAG_INSTANCE,
    TAG_OPERATION,
    TAG_WAVE,
    HookActivities,
    hook_operation_id,
)
from patchflow.core.documents import dump_yaml
from patchflow.core.hooks import (
    ASG_EXIT_STANDBY,
    ASG_STANDBY,
    EBS_SNAPSHOT,
    ELB_DEREGISTER,
    ELB_REGISTER,
    Hooks,
    HookStep,
    exit_steps,
)
from patchflow.core.wavemodel import ExecutorRef, HookPhaseInput, HookPhaseResult

REGION = "eu-west-1"
WAVE = "wave-hooks-1"


@dataclasses.dataclass
class Cloud:
    url: str
    ec2: Any
    elb: Any
    asg: Any
    target_group: str
    ec2_ids: list[str]

    def targets(self) -> dict[str, int]:
        rows = self.elb.describe_target_health(TargetGroupArn=self.target_group)["TargetHealthDescriptions"]
        return {r["Target"]["Id"]: r["Target"]["Port"] for r in rows}

    def lifecycle(self, ec2_id: str) -> str:
        rows = self.asg.describe_auto_scaling_instances(InstanceIds=[ec2_id])["AutoScalingInstances"]
        return str(rows[0]["LifecycleState"])

    def desired(self) -> int:
        return int(self.asg.describe_auto_scaling_groups()["AutoScalingGroups"][0]["DesiredCapacity"])

    def snapshots(self) -> list[dict[str, Any]]:
        """The snapshots of this wave (moto's account also holds its AMIs' snapshots)."""
        filters = [{"Name": f"tag:{TAG_WAVE}", "Values": [WAVE]}]
        return list(self.ec2.describe_snapshots(OwnerIds=["self"], Filters=filters)["Snapshots"])


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch) -> Iterator[Cloud]:
    """moto's server with an Auto Scaling group of two instances, both registered (port 80) in a target group
    whose deregistration delay is 1 s."""
    from moto.server import ThreadedMotoServer

    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_SESSION_TOKEN": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(key, value)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        # moto keeps its state per process, not per server: start from an empty account.
        urllib.request.urlopen(urllib.request.Request(f"{url}/moto-api/reset", method="POST")).close()

        def client(service: str) -> Any:
            return boto3.client(service, region_name=REGION, endpoint_url=url)

        ec2, elb, asg = client("ec2"), client("elbv2"), client("autoscaling")
        vpc = ec2.describe_vpcs()["Vpcs"][0]["VpcId"]
        subnet = ec2.describe_subnets()["Subnets"][0]["SubnetId"]
        ami = ec2.describe_images()["Images"][0]["ImageId"]
        ec2.create_launch_template(
            LaunchTemplateName="web-template", LaunchTemplateData={"ImageId": ami, "InstanceType": "t3.micro"}
        )
        group = elb.create_target_group(
            Name="web", Protocol="HTTP", Port=80, VpcId=vpc, TargetType="instance"
        )
        arn = group["TargetGroups"][0]["TargetGroupArn"]
        elb.modify_target_group_attributes(
            TargetGroupArn=arn, Attributes=[{"Key": "deregistration_delay.timeout_seconds", "Value": "1"}]
        )
        asg.create_auto_scaling_group(
            AutoScalingGroupName="web",
            LaunchTemplate={"LaunchTemplateName": "web-template"},
            MinSize=0,
            MaxSize=4,
            DesiredCapacity=2,
            VPCZoneIdentifier=subnet,
        )
        ids = sorted(i["InstanceId"] for i in asg.describe_auto_scaling_instances()["AutoScalingInstances"])
        elb.register_targets(TargetGroupArn=arn, Targets=[{"Id": i, "Port": 80} for i in ids])
        yield Cloud(url, ec2, elb, asg, arn, ids)
    finally:
        server.stop()


@pytest.fixture
def ref(cloud: Cloud, tmp_path: Path) -> ExecutorRef:
    """A simulated fleet: web-1 and web-2 are the group's EC2 instances (``ec2_instance_id`` tags), lab-1 has
    no EC2 instance."""
    instances = [
        {
            "id": name,
            "tags": {"Patch Group": "web", **({"ec2_instance_id": ec2_id} if ec2_id else {})},
            "platform": {"family": "deb", "product": "Ubuntu22.04"},
            "installed": [{"name": "openssl", "arch": "amd64", "version": "3.0.2-0ubuntu1.10"}],
            "behaviour": {"duration_seconds": 0},
        }
        for name, ec2_id in (("web-1", cloud.ec2_ids[0]), ("web-2", cloud.ec2_ids[1]), ("lab-1", None))
    ]
    fleet = tmp_path / "fleet.yaml"
    fleet.write_text(dump_yaml({"name": "hooks", "instances": instances}))
    return ExecutorRef(
        kind="simulated",
        fleet_path=str(fleet),
        state_path=str(tmp_path / "state.sqlite"),
        region=REGION,
        endpoint_url=cloud.url,
    )


PRE_INSTALL = [
    HookStep(kind=ELB_DEREGISTER, name=ELB_DEREGISTER, drain_seconds=10),
    HookStep(kind=ASG_STANDBY, name=ASG_STANDBY, decrement_desired=True),
    HookStep(kind=EBS_SNAPSHOT, name=EBS_SNAPSHOT, volumes="root", retain_days=14),
]


async def run_phase(
    ref: ExecutorRef,
    phase: str,
    steps: list[HookStep],
    instance_ids: list[str],
    *,
    heartbeats: list[Any] | None = None,
    resume_from: Any = None,
    **fields: Any,
) -> HookPhaseResult:
    """One ``run_hook_phase`` activity (``resume_from``: the heartbeat details of an earlier attempt)."""
    env = ActivityEnvironment()
    if resume_from is not None:
        env.info = dataclasses.replace(env.info, heartbeat_details=[resume_from], attempt=2)
    if heartbeats is not None:
        env.on_heartbeat = lambda *details: heartbeats.append(details[0] if details else None)
    inp = HookPhaseInput(
        executor=ref, wave_id=WAVE, stage="web", phase=phase, steps=steps, instance_ids=instance_ids, **fields
    )
    result: HookPhaseResult = await env.run(HookActivities(poll_seconds=0.1).run_hook_phase, inp)
    return result


def undo_of(result: HookPhaseResult) -> dict[str, list[str]]:
    return {i: [u for r in records for u in r.undo] for i, records in result.records.items()}


async def test_deregistration_drains_and_on_exit_registers_again(cloud: Cloud, ref: ExecutorRef) -> None:
    """ELBv2 DeregisterTargets (API Reference): "The load balancer stops sending requests to targets that are
    deregistering, but uses connection draining to ensure that in-flight traffic completes on the existing
    connections" — the target is ``draining`` for the target group's deregistration delay
    (``deregistration_delay.timeout_seconds``, 0–3600 s, default 300: Application Load Balancers User Guide,
    "Deregistration delay"), so the step waits for it (at most ``drain_seconds``). "If you specified a port
    override when you registered a target, you must specify both the target ID and the port when you deregister
    it": the undo record keeps the port, and on_exit registers the instance in exactly that group and port."""
    web1, web2 = cloud.ec2_ids
    pre = await run_phase(ref, "pre_install", PRE_INSTALL[:1], ["web-1"])
    (record,) = pre.records["web-1"]
    assert record.status == "succeeded" and record.output.startswith("deregistered 1 of 1 target(s)")
    assert record.undo == [f"elb:{cloud.target_group}|80"]
    assert cloud.targets() == {web2: 80}  # web-1 left; web-2 serves on
    assert not pre.failed

    steps = exit_steps(Hooks(pre_install=PRE_INSTALL[:1]))
    assert [s.kind for s in steps] == [ELB_REGISTER]  # the automatic undo
    done = await run_phase(ref, "on_exit", steps, ["web-1"], undo=undo_of(pre))
    assert [r.status for r in done.records["web-1"]] == ["succeeded"]
    assert cloud.targets() == {web1: 80, web2: 80}


async def test_standby_decrements_desired_capacity_and_exit_restores_it(
    cloud: Cloud, ref: ExecutorRef
) -> None:
    """Amazon EC2 Auto Scaling API Reference, EnterStandby: "If you choose to decrement the desired capacity of
    the Auto Scaling group, the instances can enter standby as long as the desired capacity … after the
    instances are placed into standby is equal to or greater than the minimum capacity"; without it "the Auto
    Scaling group launches new instances to replace the instances on standby" (``ShouldDecrementDesiredCapacity``).
    ExitStandby moves the instance back to InService and increments the desired capacity again."""
    web1, web2 = cloud.ec2_ids
    assert cloud.desired() == 2
    pre = await run_phase(ref, "pre_install", PRE_INSTALL[1:2], ["web-1"])
    assert [r.status for r in pre.records["web-1"]] == ["succeeded"]
    assert cloud.lifecycle(web1) == "Standby" and cloud.lifecycle(web2) == "InService"
    assert cloud.desired() == 1  # decremented: no replacement is launched meanwhile

    done = await run_phase(ref, "on_exit", exit_steps(Hooks(pre_install=PRE_INSTALL[1:2])), ["web-1"])
    assert [(r.step, r.status) for r in done.records["web-1"]] == [(ASG_EXIT_STANDBY, "succeeded")]
    assert cloud.lifecycle(web1) == "InService" and cloud.desired() == 2


async def test_snapshot_is_tagged_with_the_wave_and_the_operation(cloud: Cloud, ref: ExecutorRef) -> None:
    """Amazon EC2 API Reference, CreateSnapshot: ``TagSpecifications`` — "The tags to apply to the snapshot
    during creation" (ResourceType ``snapshot``), so a snapshot is never untagged, not even briefly. Like
    AWS-PatchInstanceWithRollback's PrePatchSnapshot step (Systems Manager Automation Runbook Reference), the
    snapshot is of the instance's root volume (``IdentifyRootVolume``) and taken before the install."""
    web1 = cloud.ec2_ids[0]
    pre = await run_phase(ref, "pre_install", PRE_INSTALL[2:], ["web-1"])
    (record,) = pre.records["web-1"]
    assert record.status == "succeeded", record.output
    (snapshot,) = cloud.snapshots()
    described = cloud.ec2.describe_instances(InstanceIds=[web1])["Reservations"][0]["Instances"][0]
    root = next(m for m in described["BlockDeviceMappings"] if m["DeviceName"] == described["RootDeviceName"])
    assert snapshot["VolumeId"] == root["Ebs"]["VolumeId"]
    tags = {t["Key"]: t["Value"] for t in snapshot["Tags"]}
    op = hook_operation_id(
        HookPhaseInput(
            executor=ref, wave_id=WAVE, stage="web", phase="pre_install", steps=[], instance_ids=[]
        ),
        "web-1",
        0,
    )
    assert tags[TAG_WAVE] == WAVE and tags[TAG_OPERATION] == op and tags[TAG_INSTANCE] == "web-1"
    assert op == "wave-hooks-1/web/web-1/install/0/hooks/pre_install/0"
    assert tags[TAG_EXPIRES][:4].isdigit()  # retain_days: 14 → an expiry date
    assert record.undo == [f"snap:{snapshot['SnapshotId']}|{root['Ebs']['VolumeId']}|root"]


async def test_a_second_run_changes_nothing(cloud: Cloud, ref: ExecutorRef) -> None:
    """Idempotent on retry: each built-in looks before it acts (already deregistered, already in Standby, a
    snapshot tagged with this operation id exists), and a retried attempt resumes from its heartbeat details
    without calling AWS for the steps it finished."""
    web1, web2 = cloud.ec2_ids
    beats: list[Any] = []
    first = await run_phase(ref, "pre_install", PRE_INSTALL, ["web-1", "web-2"], heartbeats=beats)
    assert all(r.status == "succeeded" for i in ("web-1", "web-2") for r in first.records[i])
    assert cloud.targets() == {} and cloud.desired() == 0 and len(cloud.snapshots()) == 2
    state = (
        cloud.targets(),
        cloud.lifecycle(web1),
        cloud.lifecycle(web2),
        cloud.desired(),
        cloud.snapshots(),
    )

    # The same phase again (a retry whose heartbeat was lost): every step finds its work done.
    second = await run_phase(ref, "pre_install", PRE_INSTALL, ["web-1", "web-2"])
    assert [r.status for r in second.records["web-1"]] == ["skipped", "skipped", "succeeded"]
    assert second.records["web-1"][0].output == "not registered in any target group"
    assert second.records["web-1"][1].output.startswith("already in Standby")
    assert second.records["web-1"][2].output.startswith("0 new, 1 existing snapshot(s)")
    assert (
        cloud.targets(),
        cloud.lifecycle(web1),
        cloud.lifecycle(web2),
        cloud.desired(),
        cloud.snapshots(),
    ) == state

    # A retry resuming from the last heartbeat returns the recorded steps as they were, doing nothing.
    resumed = await run_phase(ref, "pre_install", PRE_INSTALL, ["web-1", "web-2"], resume_from=beats[-1])
    assert resumed.records == first.records
    assert cloud.snapshots() == state[-1]

    # And the undo still knows the ports: on_exit brings both back.
    await run_phase(
        ref, "on_exit", exit_steps(Hooks(pre_install=PRE_INSTALL)), ["web-1", "web-2"], undo=undo_of(first)
    )
    assert cloud.targets() == {web1: 80, web2: 80} and cloud.desired() == 2


async def test_hosts_without_an_ec2_instance_are_skipped(cloud: Cloud, ref: ExecutorRef) -> None:
    result = await run_phase(ref, "pre_install", PRE_INSTALL[:2], ["lab-1"])
    assert [(r.status, r.output) for r in result.records["lab-1"]] == [
        ("skipped", "no EC2 instance id: give the host an ec2_instance_id tag to use AWS steps")
    ] * 2
    assert not result.failed and len(cloud.targets()) == 2


class DrainingElb:
    """moto's ELBv2 drops a deregistered target at once; AWS keeps it ``draining`` for the group's
    deregistration delay. This wrapper (real moto calls underneath) reports a target deregistered less than
    ``delay`` seconds ago as ``draining``, as ELBv2 does."""

    def __init__(self, real: Any, delay: float) -> None:
        self._real = real
        self._delay = delay
        self._since: dict[tuple[str, str], float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def deregister_targets(self, **kwargs: Any) -> Any:
        import time

        for target in kwargs["Targets"]:
            self._since[(kwargs["TargetGroupArn"], target["Id"])] = time.monotonic()
        return self._real.deregister_targets(**kwargs)

    def describe_target_health(self, **kwargs: Any) -> Any:
        import time

        answer = self._real.describe_target_health(**kwargs)
        for (arn, ec2_id), since in self._since.items():
            if arn == kwargs["TargetGroupArn"] and time.monotonic() - since < self._delay:
                answer["TargetHealthDescriptions"].append(
                    {"Target": {"Id": ec2_id, "Port": 80}, "TargetHealth": {"State": "draining"}}
                )
        return answer


@pytest.mark.parametrize(("drain_seconds", "waited", "note"), [(10, True, ""), (0, False, "still draining")])
async def test_deregistration_waits_while_targets_drain(
    cloud: Cloud, ref: ExecutorRef, drain_seconds: int, waited: bool, note: str
) -> None:
    """Application Load Balancers User Guide, "Deregistration delay": a deregistering target is ``draining``
    until the delay is over, then ``unused``; the step waits for that, for at most ``drain_seconds``."""

    def clients(service: str, r: ExecutorRef) -> Any:
        real = boto3.client(service, region_name=r.region, endpoint_url=r.endpoint_url)
        return DrainingElb(real, delay=1.0) if service == "elbv2" else real

    env = ActivityEnvironment()
    step = HookStep(kind=ELB_DEREGISTER, name=ELB_DEREGISTER, drain_seconds=drain_seconds)
    inp = HookPhaseInput(
        executor=ref, wave_id=WAVE, stage="web", phase="pre_install", steps=[step], instance_ids=["web-1"]
    )
    result = await env.run(HookActivities(aws=clients, poll_seconds=0.1).run_hook_phase, inp)
    (record,) = result.records["web-1"]
    assert record.status == "succeeded"
    assert (record.duration_seconds >= 1.0) is waited
    assert ("still draining after 0 s" in record.output) is bool(note)
