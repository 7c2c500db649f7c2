"""The SSH executor's inventory: Ansible-style YAML, inherited variables, located errors.

The layout follows Ansible's YAML inventory (docs.ansible.com, "How to build your inventory": ``all``,
``hosts``, ``vars``, ``children``; ``ansible_host``, ``ansible_port``, ``ansible_user``,
``ansible_ssh_private_key_file``).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from patchflow.executors.ssh import SshInventoryError, load_inventory


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    (tmp_path / "known_hosts").write_text("[127.0.10.5]:22 ssh-ed25519 AAAA\n")
    (tmp_path / "id_ed25519").write_text("key\n")
    return tmp_path


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "inventory.yml"
    path.write_text(text)
    return path


def test_variables_inherit_from_all_to_groups_to_hosts(keys: Path) -> None:
    path = write(
        keys,
        """
all:
  vars:
    ansible_user: deploy
    ansible_ssh_private_key_file: id_ed25519
    known_hosts: known_hosts
  hosts:
    bastion: {ansible_host: 127.0.10.1, ansible_user: root}
  children:
    prod:
      vars: {health_command: "systemctl is-active nginx", ansible_port: 2222}
      hosts:
        web-01: {ansible_host: 127.0.10.5, tags: {Patch Group: prod, Team: web}}
        web-02: {address: 127.0.10.6, port: 22, patch_group: prod}
      children:
        prod-db:
          hosts:
            db-01:
""",
    )
    inv = load_inventory(path)
    assert set(inv.hosts) == {"bastion", "web-01", "web-02", "db-01"}
    web1, web2, db, bastion = (inv.hosts[n] for n in ("web-01", "web-02", "db-01", "bastion"))
    assert (web1.address, web1.port, web1.user, web1.sudo) == ("127.0.10.5", 2222, "deploy", True)
    assert web1.tags == {"Patch Group": "prod", "Team": "web"} and web1.groups == ("prod",)
    assert web1.health_command == "systemctl is-active nginx"
    assert web1.key_file == keys / "id_ed25519" and web1.known_hosts == keys / "known_hosts"
    assert (web2.address, web2.port, web2.tags) == ("127.0.10.6", 22, {"Patch Group": "prod"})
    assert db.address == "db-01" and db.groups == ("prod-db",) and db.port == 2222  # vars flow to children
    assert (bastion.user, bastion.sudo, bastion.groups) == ("root", False, ())


def test_every_mistake_is_reported_with_its_line(keys: Path) -> None:
    path = write(
        keys,
        """all:
  vars:
    known_hosts: known_hosts
  hosts:
    a: {ansible_host: 127.0.10.1, ansible_port: 70000}
    b: {ansible_host: 127.0.10.2, ansible_ssh_private_key_file: missing_key}
  childs:
    x: {}
""",
    )
    with pytest.raises(SshInventoryError) as err:
        load_inventory(path)
    text = str(err.value)
    assert (
        f"{path}:5: all.hosts.a.ansible_port: host a: 70000: expected a port number from 1 to 65535" in text
    )
    assert f"{path}:6: all.hosts.b.ansible_ssh_private_key_file: host b: 'missing_key' does not exist" in text
    assert f"{path}:7: all.childs: unknown key; did you mean 'children'?" in text


def test_known_hosts_is_required_never_accept_any(keys: Path) -> None:
    path = write(keys, "all:\n  hosts:\n    web-01: {ansible_host: 127.0.10.5}\n")
    with pytest.raises(SshInventoryError, match="no known_hosts file.*never accepts an unknown one"):
        load_inventory(path)


def test_an_inventory_without_hosts_or_not_a_mapping_is_refused(keys: Path) -> None:
    with pytest.raises(SshInventoryError, match="lists no hosts"):
        load_inventory(write(keys, "all:\n  vars: {known_hosts: known_hosts}\n"))
    with pytest.raises(SshInventoryError, match="mapping of groups"):
        load_inventory(write(keys, "- web-01\n"))
