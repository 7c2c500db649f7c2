"""The SSH executor: fleets without SSM, driven agentlessly over SSH (:mod:`.executor`), an Ansible-style
inventory (:mod:`.inventory`) and the stdlib-only program it runs on each host (:mod:`.agent`).

May import: :mod:`patchflow.core`, :mod:`patchflow.executors.base`, asyncssh.
"""

from patchflow.executors.ssh.executor import REBOOT_OPTIONS, HostUnreachable, SshExecutor
from patchflow.executors.ssh.inventory import SshHost, SshInventory, SshInventoryError, load_inventory

__all__ = [
    "REBOOT_OPTIONS",
    "HostUnreachable",
    "SshExecutor",
    "SshHost",
    "SshInventory",
    "SshInventoryError",
    "load_inventory",
]
