"""Availability zones for disruption budgets (issue 14, part 2): fleet files, SSH inventories and EC2 (SSM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from patchflow.errors import InputError
from patchflow.executors.simulated import SimulatedExecutor
from patchflow.executors.simulated.fleet import load_fleet
from patchflow.executors.ssh import SshInventoryError, load_inventory
from patchflow.testing.ssm_endpoint import SsmEndpoint
from tests.executors.conftest import ssm_executor

PLATFORM = {"family": "deb", "product": "Ubuntu22.04"}


def fleet_file(tmp_path: Path, body: dict[str, object]) -> Path:
    path = tmp_path / "zones.json"
    path.write_text(json.dumps(body))
    return path


async def test_fleet_files_set_zones_one_or_dealt_out_in_turn(tmp_path: Path) -> None:
    path = fleet_file(
        tmp_path,
        {
            "instances": [{"id": "i-one", "platform": PLATFORM, "availability_zone": "eu-west-1c"}],
            "generate": [
                {"count": 4, "id_prefix": "i-0web", "platform": PLATFORM, "availability_zone": ["a1", "b1"]},
                {"count": 1, "id_prefix": "i-0db", "platform": PLATFORM},
            ],
        },
    )
    found = await SimulatedExecutor(load_fleet(path), tmp_path / "state.sqlite").discover()
    zones = {i.instance_id: i.availability_zone for i in found}
    assert zones["i-one"] == "eu-west-1c"
    web = sorted(k for k in zones if k.startswith("i-0web"))
    assert [zones[k] for k in web] == ["a1", "b1", "a1", "b1"]
    assert [v for k, v in zones.items() if k.startswith("i-0db")] == [None]


def test_a_bad_zone_in_a_fleet_file_is_located(tmp_path: Path) -> None:
    path = fleet_file(
        tmp_path, {"instances": [{"id": "i-one", "platform": PLATFORM, "availability_zone": ["a", "b"]}]}
    )
    with pytest.raises(InputError, match=r"instances\[0\]\.availability_zone: expected a zone name"):
        load_fleet(path)


def test_ssh_inventories_take_the_zone_as_a_host_var(tmp_path: Path) -> None:
    (tmp_path / "known_hosts").write_text("[127.0.10.5]:22 ssh-ed25519 AAAA\n")
    path = tmp_path / "inventory.yml"
    path.write_text(
        "all:\n  vars: {known_hosts: known_hosts}\n  children:\n    zone_a:\n"
        "      vars: {availability_zone: eu-west-1a}\n      hosts:\n        web-01: {ansible_host: 127.0.10.5}\n"
        "        web-02: {ansible_host: 127.0.10.6, availability_zone: eu-west-1b}\n"
    )
    hosts = load_inventory(path).hosts
    assert (hosts["web-01"].availability_zone, hosts["web-02"].availability_zone) == (
        "eu-west-1a",
        "eu-west-1b",
    )
    path.write_text(path.read_text().replace("eu-west-1b", "[1]"))
    with pytest.raises(SshInventoryError, match="availability_zone"):
        load_inventory(path)


async def test_ssm_discovery_reads_the_zone_from_describe_instances(endpoint: SsmEndpoint) -> None:
    """EC2 API Reference, ``Placement``: "AvailabilityZone — The Availability Zone of the instance" — read from
    the DescribeInstances call discovery already makes for the tags (moto's EC2 over real HTTP). Hybrid nodes
    (``mi-``) have none."""
    ec2 = endpoint.client("ec2")
    zone = ec2.describe_availability_zones()["AvailabilityZones"][1]["ZoneName"]
    unmanaged = ec2.run_instances(
        ImageId="ami-12c6146b", MinCount=1, MaxCount=1, Placement={"AvailabilityZone": zone}
    )["Instances"][0]["InstanceId"]
    managed = endpoint.register_instance("i-0dev0000000000001", tags={"Patch Group": "dev"})
    endpoint.register_instance("mi-0a1b2c3d4e5f60718")
    found = {i.instance_id: i for i in await ssm_executor(endpoint).discover()}
    assert found[unmanaged].availability_zone == zone
    expected = ec2.describe_instances(InstanceIds=[managed])["Reservations"][0]["Instances"][0]["Placement"]
    assert found[managed].availability_zone == expected["AvailabilityZone"]
    assert found["mi-0a1b2c3d4e5f60718"].availability_zone is None
