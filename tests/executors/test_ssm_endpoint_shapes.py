"""The fake SSM endpoint speaks botocore's SSM shapes, and Run Command's statuses as AWS documents them.

Every operation :class:`~patchflow.testing.ssm_endpoint.SsmEndpoint` serves is called through real boto3 and its
RAW response — the HTTP JSON body, before botocore parses it — is checked against botocore's SSM service model
(``botocore.session.get_session().get_service_model('ssm')``, the shapes of the API reference): every member
exists, required members are present, enums, string lengths and patterns, list and number bounds, JSON types,
timestamps as epoch seconds (the ``json`` protocol). Members with no value are omitted, not sent as ``""``.

Where AWS's own documented responses differ from the model, the documented responses win; each such member is
listed in :data:`DOCUMENTED` with its source. The clock is injected, so no test sleeps.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import botocore.session
import pytest
from botocore.exceptions import ClientError
from botocore.model import Shape, StructureShape

from patchflow.executors.base import Package
from patchflow.testing.ssm_endpoint import AvailablePatch, SsmEndpoint, Timings

MODEL = botocore.session.get_session().get_service_model("ssm")
BUCKET = "shapes-test"
SNAPSHOT = "521c3536-930c-4aa9-950e-01234567abcd"
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
#: ``2021-04-08T16:13:07.913Z``: UTC, milliseconds, ``Z``.
AWS_STRING_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
#: An ISO 8601 duration as AWS writes it (``PT0.203S``, ``PT1M5.5S``); never negative.
AWS_DURATION = re.compile(r"^PT(?=\d)(\d+H)?(\d+M)?(\d+(\.\d+)?S)?$")
NEVER_INSTALLED = frozenset({"INSTALLED_OTHER", "NOT_APPLICABLE"})


# ------------------------------------------------------------------------------------------ the validator


@dataclass(frozen=True)
class Documented:
    """A member whose documented responses differ from the model: this check replaces the model's."""

    check: Callable[[Any, dict[str, Any]], str | None]
    """(value, the structure holding it) → a problem, or None."""
    source: str


def string_time(value: Any, _: dict[str, Any]) -> str | None:
    if value == "" or (isinstance(value, str) and AWS_STRING_TIME.match(value)):
        return None
    return f"{value!r} is neither AWS's 2021-04-08T16:13:07.913Z form nor empty"


def duration(value: Any, _: dict[str, Any]) -> str | None:
    ok = isinstance(value, str) and AWS_DURATION.match(value)
    return None if ok else f"{value!r} is not an ISO 8601 duration such as PT0.203S"


def bucket_or_empty(value: Any, _: dict[str, Any]) -> str | None:
    ok = value == "" or (isinstance(value, str) and 3 <= len(value) <= 63)
    return None if ok else f"{value!r} is neither a bucket name nor empty"


def blank_for_installed_other(value: Any, row: dict[str, Any]) -> str | None:
    if value == "":
        ok = row.get("State") in NEVER_INSTALLED
        return (
            None
            if ok
            else f"blank, but the row is {row.get('State')}: only INSTALLED_OTHER/NOT_APPLICABLE rows are"
        )
    return None if isinstance(value, str) else f"{value!r} is not a string"


def patch_group(value: Any, _: dict[str, Any]) -> str | None:
    ok = isinstance(value, str) and len(value) <= 256
    return None if ok else f"{value!r} is not a patch group name"


DOCUMENTED: dict[tuple[str, str], Documented] = {
    # The model's StringDateTime pattern allows one fractional digit and only '-' offsets, so it rejects what AWS
    # returns: "ExecutionStartDateTime": "2019-02-14T19:26:26.439Z" (AWS CLI reference, get-command-invocation
    # example). Empty until the plugin starts: "If the plugin hasn't started to run, the string is empty" (API
    # reference, GetCommandInvocation, both members).
    ("GetCommandInvocationResult", "ExecutionStartDateTime"): Documented(
        string_time, "get-command-invocation example; GetCommandInvocation member docs"
    ),
    ("GetCommandInvocationResult", "ExecutionEndDateTime"): Documented(
        string_time, "get-command-invocation example; GetCommandInvocation member docs"
    ),
    # Typed StringDateTime, but a duration: "ExecutionElapsedTime": "PT0.541S" (get-command-invocation example).
    ("GetCommandInvocationResult", "ExecutionElapsedTime"): Documented(
        duration, "get-command-invocation example"
    ),
    # S3BucketName is 3-63 characters, yet "OutputS3BucketName": "" when no bucket was given (AWS CLI reference,
    # list-commands example; the same Command shape answers SendCommand) and in a plugin's output location
    # (list-command-invocations example).
    ("Command", "OutputS3BucketName"): Documented(bucket_or_empty, "list-commands example"),
    ("CommandPlugin", "OutputS3BucketName"): Documented(bucket_or_empty, "list-command-invocations example"),
    # Required, yet blank for patches the baseline did not approve: "Title": "", "Classification": "",
    # "Severity": "" on an InstalledOther row (describe-instance-patches example; User Guide, "Patch compliance
    # state values": INSTALLED_OTHER/NOT_APPLICABLE rows carry no classification or severity).
    ("PatchComplianceData", "Classification"): Documented(
        blank_for_installed_other, "describe-instance-patches"
    ),
    ("PatchComplianceData", "Severity"): Documented(blank_for_installed_other, "describe-instance-patches"),
    # Required (1-256 characters), but a node outside every patch group has no name. AWS documents no response
    # for that case; the endpoint sends "" (the one undocumented value here, not verified against AWS).
    ("InstancePatchState", "PatchGroup"): Documented(patch_group, "undocumented; see above"),
}

#: Members whose documentation or documented examples show an empty string (the model has no minimum length).
DOCUMENTED_EMPTY: dict[tuple[str, str], str] = {
    ("GetCommandInvocationResult", "Comment"): 'get-command-invocation example ("Comment": "")',
    (
        "GetCommandInvocationResult",
        "StandardOutputUrl",
    ): '"If an S3 bucket wasn\'t specified, then this string is empty"',
    (
        "GetCommandInvocationResult",
        "StandardErrorUrl",
    ): '"If the command hasn\'t finished running, then this string is empty"',
    (
        "GetCommandInvocationResult",
        "StandardOutputContent",
    ): '"If the command hasn\'t finished running [...] empty"',
    ("GetCommandInvocationResult", "StandardErrorContent"): "get-command-invocation example",
    ("CommandInvocation", "Comment"): "list-command-invocations example",
    ("CommandInvocation", "StandardOutputUrl"): "list-command-invocations example",
    ("CommandInvocation", "StandardErrorUrl"): "list-command-invocations example",
    ("CommandPlugin", "StandardOutputUrl"): "list-command-invocations example",
    ("CommandPlugin", "StandardErrorUrl"): "list-command-invocations example",
    ("CommandPlugin", "OutputS3KeyPrefix"): "list-command-invocations example",
    ("Command", "Comment"): "list-commands example (a command sent without one)",
    ("Command", "OutputS3KeyPrefix"): "list-commands example",
}


def java_pattern(pattern: str) -> re.Pattern[str]:
    """A model pattern for Python's ``re``: the Unicode classes become their ``re`` counterparts."""
    return re.compile(pattern.replace(r"\p{L}", r"\w").replace(r"\p{N}", r"\d").replace(r"\p{Z}", r"\s"))


def violations(shape: Shape, value: Any, path: str, owner: tuple[str, str] | None = None) -> list[str]:
    """Every way ``value`` breaks ``shape`` (empty when it conforms)."""
    kind = shape.type_name
    if kind == "structure":
        assert isinstance(shape, StructureShape)
        if not isinstance(value, dict):
            return [f"{path}: expected an object, got {value!r}"]
        problems = [f"{path}.{m}: required member missing" for m in shape.required_members if m not in value]
        for name, member_value in value.items():
            if name not in shape.members:
                problems.append(f"{path}.{name}: not a member of {shape.name}")
                continue
            member = shape.members[name]
            documented = DOCUMENTED.get((shape.name, name))
            if documented is not None:
                problem = documented.check(member_value, value)
                problems += [f"{path}.{name}: {problem} ({documented.source})"] if problem else []
            else:
                problems += violations(member, member_value, f"{path}.{name}", (shape.name, name))
        return problems
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: expected a list, got {value!r}"]
        problems = bounds(shape, len(value), path, "items")
        for index, item in enumerate(value):
            problems += violations(shape.member, item, f"{path}[{index}]")  # type: ignore[attr-defined]
        return problems
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{path}: expected a map, got {value!r}"]
        problems = []
        for key, item in value.items():
            problems += violations(shape.key, key, f"{path} key", None)  # type: ignore[attr-defined]
            problems += violations(shape.value, item, f"{path}[{key!r}]")  # type: ignore[attr-defined]
        return problems
    if kind == "string":
        return string_violations(shape, value, path, owner)
    if kind in ("integer", "long"):
        if isinstance(value, bool) or not isinstance(value, int):
            return [f"{path}: expected an integer, got {value!r}"]
        return bounds(shape, value, path, "")
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{path}: expected true or false, got {value!r}"]
    if kind == "timestamp":  # the json protocol: epoch seconds
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
        return [] if ok else [f"{path}: expected epoch seconds, got {value!r}"]
    return [f"{path}: the validator does not know {kind} shapes"]


def string_violations(shape: Shape, value: Any, path: str, owner: tuple[str, str] | None) -> list[str]:
    if not isinstance(value, str):
        return [f"{path}: expected a string, got {value!r}"]
    if value == "" and "min" not in shape.metadata and owner not in DOCUMENTED_EMPTY:
        return [f"{path}: an empty string; a member without a value is omitted"]
    problems = bounds(shape, len(value), path, "characters")
    if shape.enum and value not in shape.enum:
        problems.append(f"{path}: {value!r} is not one of {shape.enum}")
    pattern = shape.metadata.get("pattern")
    if pattern and not java_pattern(pattern).search(value):
        problems.append(f"{path}: {value!r} does not match {pattern}")
    return problems


def bounds(shape: Shape, size: int, path: str, unit: str) -> list[str]:
    low, high = shape.metadata.get("min"), shape.metadata.get("max")
    if (low is not None and size < low) or (high is not None and size > high):
        return [f"{path}: {size} {unit} outside {low}-{high}".replace("  ", " ")]
    return []


# --------------------------------------------------------------------------------- raw response capture


@dataclass
class Raw:
    operation: str
    status: int
    body: dict[str, Any]


@dataclass
class Clock:
    now: float = 1_780_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Capture:
    raws: list[Raw] = field(default_factory=list)

    def __call__(self, http_response: Any, model: Any, **_: Any) -> None:
        content = http_response.content.decode() or "{}"
        self.raws.append(Raw(model.name, http_response.status_code, json.loads(content)))

    def last(self, operation: str) -> dict[str, Any]:
        return next(r.body for r in reversed(self.raws) if r.operation == operation)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def endpoint(clock: Clock) -> Iterator[SsmEndpoint]:
    with SsmEndpoint(
        timings=Timings(not_found_seconds=0.2, pending_seconds=1, run_seconds=2), clock=clock
    ) as ep:
        ep.client("s3").create_bucket(Bucket=BUCKET)
        yield ep


@pytest.fixture
def capture(endpoint: SsmEndpoint) -> Iterator[Capture]:
    seen = Capture()
    ssm = endpoint.client("ssm")
    ssm.meta.events.register("after-call.ssm", seen)
    yield seen
    ssm.meta.events.unregister("after-call.ssm", seen)


def served_operations() -> set[str]:
    """Every SSM operation the endpoint answers itself (its ``_op_<action>`` methods)."""
    names = [n.removeprefix("_op_") for n in dir(SsmEndpoint) if n.startswith("_op_")]
    return {"".join(part.title() for part in n.split("_")) for n in names}


def error_code(call: Callable[[], Any]) -> str:
    with pytest.raises(ClientError) as caught:
        call()
    return str(caught.value.response["Error"]["Code"])


# ---------------------------------------------------------------------------------------------- the tests


def test_every_operation_answers_in_botocores_ssm_shapes(
    endpoint: SsmEndpoint, capture: Capture, clock: Clock
) -> None:
    """Each raw response conforms to the output shape of its operation in botocore's SSM model, except where
    :data:`DOCUMENTED` names AWS's documented responses; error codes are among the operation's modelled errors
    (or the common ThrottlingException/ValidationException)."""
    ssm, s3 = endpoint.client("ssm"), endpoint.client("s3")
    web = endpoint.register_instance(
        "i-0123456789abcdef0",
        tags={"Patch Group": "web"},
        packages=[
            Package("openssl", "amd64", "3.0.2-0ubuntu1.10"),
            Package("curl", "amd64", "7.81.0-1ubuntu1.14"),
            Package("tzdata", "all", "2024a-0ubuntu0.22.04"),
        ],
        available=[
            AvailablePatch("openssl", "amd64", "3.0.2-0ubuntu1.16", cve_ids=("CVE-2024-5535",)),
            AvailablePatch("curl", "amd64", "7.81.0-1ubuntu1.18", classification="Bugfix", severity="Low"),
        ],
    )
    db = endpoint.register_instance(
        "mi-0a1b2c3d4e5f60718",
        tags={"Owner": "dba"},  # no patch group
        platform="Amazon Linux",
        platform_version="2023",
        packages=[Package("bind-libs", "x86_64", "32:9.16.23-1.amzn2023")],
        available=[AvailablePatch("bind-libs", "x86_64", "32:9.16.23-5.amzn2023", severity="Critical")],
    )
    endpoint.register_instance("i-0bbbbbbbbbbbbbbb1", online=False)
    endpoint.register_instance(
        "i-0ccccccccccccccc1", platform="Microsoft Windows Server 2022", platform_version="10"
    )

    ssm.describe_instance_information()
    ssm.describe_instance_information(Filters=[{"Key": "PingStatus", "Values": ["ConnectionLost"]}])
    ssm.list_tags_for_resource(ResourceType="ManagedInstance", ResourceId=db)

    scan = ssm.send_command(
        Targets=[{"Key": "tag:Patch Group", "Values": ["web"]}],
        DocumentName="AWS-RunPatchBaseline",
        Parameters={"Operation": ["Scan"]},
    )["Command"]
    assert error_code(lambda: ssm.get_command_invocation(CommandId=scan["CommandId"], InstanceId=web)) in (
        "InvocationDoesNotExist",
        "InvalidPluginName",
    )
    clock.advance(0.5)  # visible, Pending
    ssm.get_command_invocation(CommandId=scan["CommandId"], InstanceId=web, PluginName="PatchLinux")
    ssm.list_command_invocations(CommandId=scan["CommandId"], Details=True)
    clock.advance(1)  # In Progress
    ssm.get_command_invocation(CommandId=scan["CommandId"], InstanceId=web, PluginName="PatchLinux")
    ssm.list_commands(CommandId=scan["CommandId"])
    clock.advance(5)  # done
    ssm.get_command_invocation(CommandId=scan["CommandId"], InstanceId=web, PluginName="PatchLinux")

    s3.put_object(Bucket=BUCKET, Key="lists/web.yaml", Body=b"patches:\n  - id: 'openssl.amd64'\n")
    install = ssm.send_command(
        InstanceIds=[web, db],
        DocumentName="AWS-RunPatchBaseline",
        Comment="patchflow install",
        Parameters={
            "Operation": ["Install"],
            "SnapshotId": [SNAPSHOT],
            "InstallOverrideList": [f"s3://{BUCKET}/lists/web.yaml"],
            "RebootOption": ["NoReboot"],
        },
        OutputS3BucketName=BUCKET,
        OutputS3KeyPrefix="out",
        CloudWatchOutputConfig={"CloudWatchOutputEnabled": True, "CloudWatchLogGroupName": "patchflow"},
        MaxConcurrency="50%",
        MaxErrors="1",
        TimeoutSeconds=600,
    )["Command"]
    endpoint.script(db, "fail", applies_to="shell", times=1)
    shell = ssm.send_command(
        InstanceIds=[db, "i-0bbbbbbbbbbbbbbb1", "i-0ccccccccccccccc1"],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["uptime"]},
    )["Command"]
    cancelled = ssm.send_command(
        InstanceIds=[web], DocumentName="AWS-RunShellScript", Parameters={"commands": ["sleep 60"]}
    )["Command"]
    ssm.cancel_command(CommandId=cancelled["CommandId"])  # while Pending: it never runs
    nobody = ssm.send_command(
        Targets=[{"Key": "tag:Patch Group", "Values": ["nobody"]}],
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["true"]},
    )["Command"]
    clock.advance(10)
    for command in (install, shell, cancelled):
        for invocation in ssm.list_command_invocations(CommandId=command["CommandId"], Details=True)[
            "CommandInvocations"
        ]:
            plugin = {"PluginName": "PatchLinux"} if command["DocumentName"] == "AWS-RunPatchBaseline" else {}
            ssm.get_command_invocation(
                CommandId=command["CommandId"], InstanceId=invocation["InstanceId"], **plugin
            )
    ssm.list_command_invocations(InstanceId=web, Filters=[{"key": "Status", "value": "Success"}])
    ssm.list_commands(Filters=[{"key": "Status", "value": "Failed"}], MaxResults=2)
    ssm.list_commands(CommandId=nobody["CommandId"])
    ssm.list_commands(InstanceId=web, Filters=[{"key": "DocumentName", "value": "AWS-RunPatchBaseline"}])
    ssm.describe_instance_patch_states(InstanceIds=[web, db])
    ssm.describe_instance_patches(InstanceId=web)
    ssm.describe_instance_patches(
        InstanceId=db, Filters=[{"Key": "State", "Values": ["INSTALLED_PENDING_REBOOT"]}]
    )
    assert error_code(lambda: ssm.list_commands(CommandId="00000000-0000-0000-0000-000000000000")) == (
        "InvalidCommandId"
    )
    assert error_code(lambda: ssm.describe_instance_patches(InstanceId="i-0dddddddddddddddd")) == (
        "InvalidInstanceId"
    )

    assert served_operations() <= {r.operation for r in capture.raws}, (
        "an operation the endpoint serves went unchecked"
    )
    problems: list[str] = []
    for raw in capture.raws:
        operation = MODEL.operation_model(raw.operation)
        if raw.status >= 300:
            modelled = {e.name for e in operation.error_shapes} | {
                "ThrottlingException",
                "ValidationException",
            }
            if raw.body.get("__type") not in modelled:
                problems.append(f"{raw.operation}: error {raw.body.get('__type')!r} is not modelled")
            continue
        problems += violations(operation.output_shape, raw.body, raw.operation)
    assert problems == []


def test_the_validator_catches_what_the_endpoint_used_to_send() -> None:
    """The checks bite: the mistakes the endpoint made before it followed the model are all reported."""
    invocation = {
        "CommandId": "ef7fdfd8-9b57-4151-a15c-db9a12345678",
        "InstanceId": "i-1234567890abcdef0",
        "ExecutionStartDateTime": "2026-12-02T10:02:00.789824+00:00",
        "ExecutionElapsedTime": "PT-0.300S",
        "Status": "Done",
        "Surprise": 1,
    }
    found = violations(MODEL.operation_model("GetCommandInvocation").output_shape, invocation, "G")
    assert [p.split(":")[0] for p in found] == [
        "G.ExecutionStartDateTime",
        "G.ExecutionElapsedTime",
        "G.Status",
        "G.Surprise",
    ]
    state = {
        "InstanceId": "i-1234567890abcdef0",
        "PatchGroup": "web",
        "BaselineId": "pb-0713accee01234567",
        "SnapshotId": "",
        "InstallOverrideList": "",
        "OwnerInformation": "",
        "OperationStartTime": 1.0,
        "Operation": "Scan",
    }
    found = violations(MODEL.shape_for("InstancePatchState"), state, "S")
    assert sorted({p.split(":")[0] for p in found}) == [
        "S.InstallOverrideList",
        "S.OperationEndTime",
        "S.OwnerInformation",
        "S.SnapshotId",
    ]
    row = {
        "Title": "t",
        "KBId": "k",
        "Classification": "",
        "Severity": "",
        "State": "MISSING",
        "InstalledTime": 0,
    }
    assert len(violations(MODEL.shape_for("PatchComplianceData"), row, "P")) == 2  # blank only for OTHER rows


@dataclass(frozen=True)
class Case:
    outcomes: tuple[str, ...]
    """Scripted outcome per instance (``offline`` = not online, so Undeliverable)."""
    max_errors: str
    status: str
    details: str


CASES = {
    "all succeed": Case(("success", "success"), "0", "Success", "Success"),
    "only invocation delivery timed out": Case(("delivery_timeout",), "0", "TimedOut", "Delivery Timed Out"),
    "delivery timeouts within MaxErrors": Case(("delivery_timeout", "success"), "1", "Failed", "Incomplete"),
    "4 undeliverable + 1 success is Success": Case(
        ("offline",) * 4 + ("success",), "0", "Success", "Success"
    ),
    "all undeliverable is Failed": Case(("offline", "offline"), "0", "Failed", "Failed"),
    "invalid platform and access denied do not count": Case(
        ("invalid_platform", "access_denied", "success"), "0", "Success", "Success"
    ),
    "one failure over MaxErrors 0": Case(("fail", "success"), "0", "Failed", "Failed"),
    "failures within MaxErrors": Case(("fail", "success", "success"), "1", "Failed", "Incomplete"),
    "execution timeouts over MaxErrors": Case(("timeout", "success"), "0", "TimedOut", "Execution Timed Out"),
    "percent MaxErrors": Case(("fail",) + ("success",) * 9, "10%", "Failed", "Incomplete"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_command_status_follows_the_user_guide(endpoint: SsmEndpoint, clock: Clock, case: Case) -> None:
    """User Guide, "Understanding command statuses" ("Detailed status for a command"; Undeliverable, Invalid
    Platform and Access Denied "contribute to whether the parent command status is Success or Failed", Delivery
    Timed Out to "Success, Incomplete, or Delivery Timed Out"); API reference, ``Command``: ``ErrorCount`` is
    "Failed or Execution Timed Out", ``CompletedCount`` counts terminal invocations. The coarse ``Status`` of a
    detailed status other than Success is never Success (AWS does not document that mapping)."""
    ids = []
    for n, outcome in enumerate(case.outcomes):
        instance_id = endpoint.register_instance(f"i-0{n:016x}", online=outcome != "offline")
        if outcome not in ("offline", "success"):
            endpoint.script(instance_id, outcome, applies_to="any")  # type: ignore[arg-type]
        ids.append(instance_id)
    ssm = endpoint.client("ssm")
    sent = ssm.send_command(
        InstanceIds=ids,
        DocumentName="AWS-RunShellScript",
        Parameters={"commands": ["true"]},
        MaxErrors=case.max_errors,
    )["Command"]
    assert (sent["Status"], sent["StatusDetails"]) == ("Pending", "Pending")
    clock.advance(1.5)
    running = ssm.list_commands(CommandId=sent["CommandId"])["Commands"][0]
    assert (running["Status"], running["StatusDetails"]) == ("InProgress", "In Progress")
    clock.advance(5)
    done = ssm.list_commands(CommandId=sent["CommandId"])["Commands"][0]
    assert (done["Status"], done["StatusDetails"]) == (case.status, case.details)
    errors = sum(1 for o in case.outcomes if o in ("fail", "timeout"))
    counts = (done["TargetCount"], done["CompletedCount"], done["ErrorCount"], done["DeliveryTimedOutCount"])
    assert counts == (len(ids), len(ids), errors, case.outcomes.count("delivery_timeout"))


def test_cancelled_rate_exceeded_access_denied_and_no_instances_in_tag(
    endpoint: SsmEndpoint, clock: Clock
) -> None:
    """User Guide, "Understanding command statuses": Cancelled ("canceled before it was completed"), Rate
    Exceeded (more targets than the account's pending-invocation quota: "canceled the command before executing
    it on any node"), Access Denied (a resource group the caller may not use), No Instances In Tag. A command
    cancelled on only some of its instances is not Cancelled: it completes Incomplete. ``ListCommands`` status
    filters take the detailed statuses (``NoInstancesInTag``, ``LimitExceeded``)."""
    ssm = endpoint.client("ssm")
    ids = [endpoint.register_instance(f"i-0{n:016x}", tags={"team": "a"}) for n in range(3)]
    endpoint.register_resource_group("secret", ids[:1], accessible=False)

    def send(**target: Any) -> str:
        return str(
            ssm.send_command(DocumentName="AWS-RunShellScript", Parameters={"commands": ["true"]}, **target)[
                "Command"
            ]["CommandId"]
        )

    whole = send(InstanceIds=ids[:2])
    part = send(InstanceIds=ids)
    ssm.cancel_command(CommandId=whole)
    ssm.cancel_command(CommandId=part, InstanceIds=ids[:1])
    denied = send(Targets=[{"Key": "resource-groups:Name", "Values": ["secret"]}])
    nobody = send(Targets=[{"Key": "tag:team", "Values": ["b"]}])
    endpoint.pending_invocation_limit = 4  # 2 invocations of `part` are pending; 3 more would be 5
    too_many = send(Targets=[{"Key": "tag:team", "Values": ["a"]}])
    clock.advance(10)

    def status(command_id: str) -> tuple[str, str]:
        command = ssm.list_commands(CommandId=command_id)["Commands"][0]
        return command["Status"], command["StatusDetails"]

    assert status(whole) == ("Cancelled", "Cancelled")
    assert status(part) == ("Failed", "Incomplete")
    assert status(denied) == ("Failed", "Access Denied")
    assert status(nobody) == ("Failed", "No Instances In Tag")
    assert status(too_many) == ("Failed", "Rate Exceeded")
    invocations = ssm.list_command_invocations(CommandId=too_many)["CommandInvocations"]
    assert {i["StatusDetails"] for i in invocations} == {"Cancelled"}  # it ran nowhere

    def filtered(value: str) -> set[str]:
        return {
            c["CommandId"] for c in ssm.list_commands(Filters=[{"key": "Status", "value": value}])["Commands"]
        }

    assert filtered("NoInstancesInTag") == {nobody}
    assert filtered("LimitExceeded") == {too_many}
    assert filtered("Incomplete") == {part}


def test_execution_times_are_aws_strings_and_never_negative(endpoint: SsmEndpoint, clock: Clock) -> None:
    """API reference, ``GetCommandInvocation``: start and end are empty until the plugin starts; AWS writes them
    ``2019-02-14T19:26:26.439Z`` and the elapsed time ``PT0.541S`` (AWS CLI reference, get-command-invocation
    example). An invocation cancelled while pending never started: no times and no (negative) duration."""
    ssm = endpoint.client("ssm")
    node = endpoint.register_instance("i-0123456789abcdef0")
    endpoint.script(node, "slow", seconds=65.25, applies_to="shell", times=1)
    slow = ssm.send_command(
        InstanceIds=[node], DocumentName="AWS-RunShellScript", Parameters={"commands": ["x"]}
    )
    pending = ssm.send_command(
        InstanceIds=[node], DocumentName="AWS-RunShellScript", Parameters={"commands": ["y"]}
    )
    clock.advance(0.5)
    ssm.cancel_command(CommandId=pending["Command"]["CommandId"])

    def invocation(sent: dict[str, Any]) -> dict[str, Any]:
        got = ssm.get_command_invocation(CommandId=sent["Command"]["CommandId"], InstanceId=node)
        return {
            k: got.get(k) for k in ("ExecutionStartDateTime", "ExecutionElapsedTime", "ExecutionEndDateTime")
        }

    assert invocation(slow) == {
        "ExecutionStartDateTime": "",
        "ExecutionElapsedTime": None,
        "ExecutionEndDateTime": "",
    }
    clock.advance(70)
    start = clock.now - 70 + 0.5
    times = invocation(slow)
    assert times["ExecutionElapsedTime"] == "PT1M5.25S"
    assert AWS_STRING_TIME.match(times["ExecutionStartDateTime"]) and AWS_STRING_TIME.match(
        times["ExecutionEndDateTime"]
    )
    assert (
        times["ExecutionStartDateTime"]
        == datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    )
    never_ran = invocation(pending)
    assert never_ran == {
        "ExecutionStartDateTime": "",
        "ExecutionElapsedTime": None,
        "ExecutionEndDateTime": "",
    }


def test_patch_states_count_security_only_and_name_a_snapshot(endpoint: SsmEndpoint, clock: Clock) -> None:
    """API reference, ``InstancePatchState``: ``SecurityNonCompliantCount`` counts non-compliant patches a
    vendor advisory classifies as Security; ``OtherNonCompliantCount`` those neither Critical (the baseline's
    compliance level; none here, as predefined baselines report UNSPECIFIED) nor Security. User Guide,
    AWS-RunPatchBaseline, "Snapshot ID": without one, "Systems Manager generates a different Snapshot ID for each
    managed node the command is sent to". ``InstallOverrideList`` and ``OwnerInformation`` appear only with a
    value."""
    ssm = endpoint.client("ssm")
    packages = [
        Package("openssl", "amd64", "1.0"),
        Package("curl", "amd64", "1.0"),
        Package("zlib", "amd64", "1.0"),
    ]
    available = [
        AvailablePatch("openssl", "amd64", "1.1"),
        AvailablePatch("curl", "amd64", "1.1", classification="Bugfix", severity="Low"),
        AvailablePatch("zlib", "amd64", "1.1", classification="Enhancement", severity="Low"),
    ]
    ids = [endpoint.register_instance(f"i-0{n:016x}", packages=packages, available=available) for n in (1, 2)]
    ssm.send_command(InstanceIds=ids, DocumentName="AWS-RunPatchBaseline", Parameters={"Operation": ["Scan"]})
    clock.advance(10)
    states = ssm.describe_instance_patch_states(InstanceIds=ids)["InstancePatchStates"]
    assert [
        (s["MissingCount"], s["SecurityNonCompliantCount"], s["OtherNonCompliantCount"]) for s in states
    ] == [
        (3, 1, 2),
        (3, 1, 2),
    ]
    assert all(GUID.match(s["SnapshotId"]) for s in states)
    assert states[0]["SnapshotId"] != states[1]["SnapshotId"]
    assert not {"InstallOverrideList", "OwnerInformation"} & set(states[0])
    ssm.send_command(
        InstanceIds=ids,
        DocumentName="AWS-RunPatchBaseline",
        Parameters={"Operation": ["Scan"], "SnapshotId": [SNAPSHOT]},
    )
    clock.advance(10)
    states = ssm.describe_instance_patch_states(InstanceIds=ids)["InstancePatchStates"]
    assert {s["SnapshotId"] for s in states} == {SNAPSHOT}
    rows = ssm.describe_instance_patches(InstanceId=ids[0])["Patches"]
    assert all("CVEIds" not in r for r in rows)  # none known: omitted, not ""
