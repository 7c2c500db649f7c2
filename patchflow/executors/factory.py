"""One executor per configuration (:class:`~patchflow.core.wavemodel.ExecutorRef`): the factory the worker's
activities and a plan's dry run share."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from patchflow.core.wavemodel import ExecutorRef
from patchflow.errors import InputError
from patchflow.executors.base import Executor


class ExecutorConfigError(InputError):
    """An executor configuration that cannot work (a missing path, no AWS region): retrying cannot help."""


def build_executor(ref: ExecutorRef, *, instrument: Callable[[Any], None] | None = None) -> Executor:
    """Build the executor ``ref`` describes.

    Args:
        ref: the executor configuration a wave carries.
        instrument: called with every SDK client the executor uses (the worker counts API calls by operation).

    Raises:
        ExecutorConfigError: the configuration cannot work.
    """
    if ref.kind == "simulated":
        from patchflow.executors.simulated import SimulatedExecutor
        from patchflow.executors.simulated.fleet import load_fleet

        if not ref.fleet_path or not ref.state_path:
            raise ExecutorConfigError("simulated executor needs fleet_path and state_path")
        return SimulatedExecutor(
            load_fleet(ref.fleet_path),
            Path(ref.state_path),
            time_scale=ref.time_scale,
            reboot_option=ref.reboot_option,
        )
    if ref.kind == "ssm":
        from botocore.exceptions import BotoCoreError

        from patchflow.executors.ssm import SsmExecutor, make_clients

        try:
            ssm, s3, ec2 = make_clients(region=ref.region, endpoint_url=ref.endpoint_url)
        except BotoCoreError as exc:  # no region, a broken profile: configuration, not a transient fault
            raise ExecutorConfigError(
                f"cannot create AWS clients for the ssm executor: {exc}; set executor.region in the plan, "
                "PATCHFLOW_SSM_REGION or AWS_REGION, and check the credentials chain"
            ) from exc
        if instrument is not None:
            for client in (ssm, s3, ec2):
                instrument(client)
        return SsmExecutor(
            ssm,
            s3,
            ec2_client=ec2,
            bucket=ref.bucket or "",
            prefix=ref.prefix,
            reboot_option=ref.reboot_option,
            health_command=ref.health_command,
            cloudwatch_log_group=ref.cloudwatch_log_group,
            max_requests_per_second=ref.max_requests_per_second,
            poll_initial_seconds=ref.poll_initial_seconds,
            poll_max_seconds=ref.poll_max_seconds,
        )
    if ref.kind == "ssh":
        from patchflow.executors.ssh import SshExecutor, load_inventory

        if not ref.inventory_path:
            raise ExecutorConfigError("ssh executor needs inventory_path (executor.inventory in the plan)")
        return SshExecutor(
            load_inventory(ref.inventory_path),
            reboot_option=ref.reboot_option,
            health_command=ref.health_command,
            max_connections=ref.max_connections,
        )
    raise ExecutorConfigError(f"unknown executor kind {ref.kind!r}")
