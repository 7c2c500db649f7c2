"""Patch real lab hosts to one pinned set: patchflow's SSH executor against Ansible's apt module, same hosts,
same inventory, same concurrency, in the same run. Needs root (the lab) and ``ansible-playbook``.

    .venv/bin/python bench/lab_bench.py [--hosts 50] [--forks 10] [--single 5]

Rounds, each on freshly booted hosts (``lab down`` + ``lab up``: every host starts from the same packages):

1. **raw apt, one host at a time** (``--single`` hosts): ``apt-get update && apt-get install -y name=version …``
   run directly in the host (no SSH) — the floor any tool pays per host.
2. **patchflow, one host at a time** (the same number of hosts): ``SshExecutor.install`` — per-host overhead
   over raw apt (SSH, the journal, the simulation check, package lists, ``dpkg --audit``).
3. **patchflow, all hosts, concurrency ``--forks``** — wall time.
4. **Ansible, all hosts, ``forks`` = ``--forks``** — ``ansible-playbook`` with ``ansible.builtin.apt`` pinned to
   the same ``name=version`` list, ``update_cache: true``, pipelining on, facts off, SSH ControlPersist (its
   defaults), the lab's known_hosts.

Every round checks afterwards that every host has exactly the pinned versions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from patchflow.config import Settings
from patchflow.executors.base import Package
from patchflow.executors.ssh import SshExecutor, load_inventory
from patchflow.testing.lab.fleet import Lab

PINS = [
    Package("app", "all", "1.1-1"),
    Package("libfoo", "all", "1.1-1"),
    Package("daemon-lab", "all", "1.0-2"),
    Package("libssl-lab", "all", "3.0.2-1"),
    Package("openssl-lab", "all", "3.0.2-1"),
    Package("python-lab", "all", "3.11.2-2"),
    Package("sudo-lab", "all", "1.9.13-2"),
]
"""The Debian default baseline's patch set on the lab catalog, without the kernel (Ansible's apt module does
not reboot; patchflow runs with NoReboot here)."""


def fresh_lab(lab: Lab, hosts: int) -> list[str]:
    lab.down()
    lab.up({"bench": hosts}, base_address="127.0.88.10", port=2299, extra_packages=("python3-apt",))
    return [h.id for h in lab.hosts()]


def check_pinned(lab: Lab, hosts: list[str]) -> None:
    for host in hosts:
        installed = lab.installed(host)
        wrong = {p.name: installed.get(p.name) for p in PINS if installed.get(p.name) != p.version}
        if wrong:
            raise SystemExit(f"{host} does not have the pinned versions: {wrong}")


def raw_apt(lab: Lab, hosts: list[str]) -> list[float]:
    pins = " ".join(f"{p.name}={p.version}" for p in PINS)
    times = []
    for host in hosts:
        start = time.perf_counter()
        proc = lab.run(host, f"apt-get update -q && apt-get install -y -q --no-install-recommends {pins}")
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(f"raw apt failed on {host}: {proc.stdout[-500:]}{proc.stderr[-500:]}")
    return times


async def patchflow_round(
    lab: Lab, hosts: list[str], concurrency: int, tag: str
) -> tuple[float, list[float]]:
    executor = SshExecutor(
        load_inventory(lab.inventory_path), reboot_option="NoReboot", max_connections=concurrency
    )
    per_host: list[float] = []
    window = asyncio.Semaphore(concurrency)  # a stage's max_concurrency: at most this many hosts in flight

    async def one(host: str) -> None:
        async with window:
            start = time.perf_counter()
            result = await executor.install(host, PINS, operation_id=f"bench-{tag}/bench/{host}/install/0")
            per_host.append(time.perf_counter() - start)
        if result.status != "succeeded":
            raise SystemExit(f"patchflow failed on {host}: {result.message}")

    start = time.perf_counter()
    try:
        await asyncio.gather(*(one(h) for h in hosts))
    finally:
        await executor.close()
    return time.perf_counter() - start, per_host


def ansible_round(lab: Lab, hosts: list[str], forks: int, ansible: str) -> float:
    work = Path(tempfile.mkdtemp(prefix="lab-bench-ansible-"))
    inventory = {
        "all": {
            "vars": {
                "ansible_user": "root",
                "ansible_ssh_private_key_file": str(lab.key_path),
                "ansible_ssh_common_args": f"-o UserKnownHostsFile={lab.known_hosts_path} -o StrictHostKeyChecking=yes",
                "ansible_python_interpreter": "/usr/bin/python3",
            },
            "hosts": {
                h.id: {"ansible_host": h.address, "ansible_port": h.port}
                for h in lab.hosts()
                if h.id in hosts
            },
        }
    }
    (work / "inventory.yml").write_text(yaml.safe_dump(inventory))
    playbook = [
        {
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "install the pinned set",
                    "ansible.builtin.apt": {
                        "name": [f"{p.name}={p.version}" for p in PINS],
                        "update_cache": True,
                        "install_recommends": False,
                    },
                }
            ],
        }
    ]
    (work / "playbook.yml").write_text(yaml.safe_dump(playbook))
    env = {
        "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": str(work),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        "ANSIBLE_LOCAL_TEMP": str(work / "tmp"),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(work / "cp"),
        "ANSIBLE_NOCOLOR": "1",
    }
    start = time.perf_counter()
    proc = subprocess.run(
        [ansible, "-i", str(work / "inventory.yml"), "--forks", str(forks), str(work / "playbook.yml")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"ansible-playbook failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    shutil.rmtree(work, ignore_errors=True)
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--forks", type=int, default=10)
    parser.add_argument("--single", type=int, default=5, help="hosts for the one-at-a-time rounds")
    parser.add_argument(
        "--ansible-playbook",
        default=shutil.which("ansible-playbook") or str(Path(sys.executable).with_name("ansible-playbook")),
    )
    args = parser.parse_args()
    lab = Lab(Path(tempfile.mkdtemp(prefix="lab-bench-")), cache_dir=Settings().data_dir / "lab" / "cache")
    results: dict[str, object] = {"hosts": args.hosts, "forks": args.forks, "pins": len(PINS)}
    try:
        hosts = fresh_lab(lab, max(args.hosts, args.single))
        single = hosts[: args.single]
        raw = raw_apt(lab, single)
        check_pinned(lab, single)
        hosts = fresh_lab(lab, args.hosts)
        _, pf_single = asyncio.run(patchflow_round(lab, single, 1, "single"))
        check_pinned(lab, single)
        hosts = fresh_lab(lab, args.hosts)
        pf_wall, pf_hosts = asyncio.run(patchflow_round(lab, hosts, args.forks, "fleet"))
        check_pinned(lab, hosts)
        hosts = fresh_lab(lab, args.hosts)
        ans_wall = ansible_round(lab, hosts, args.forks, args.ansible_playbook)
        check_pinned(lab, hosts)
    finally:
        lab.down()
        shutil.rmtree(lab.dir.parent, ignore_errors=True)
    raw_median, pf_median = statistics.median(raw), statistics.median(pf_single)
    results.update(
        raw_apt_per_host_s=round(raw_median, 3),
        patchflow_per_host_s=round(pf_median, 3),
        patchflow_overhead_pct=round(100 * (pf_median - raw_median) / raw_median, 1),
        patchflow_wall_s=round(pf_wall, 2),
        patchflow_fleet_per_host_median_s=round(statistics.median(pf_hosts), 3),
        ansible_wall_s=round(ans_wall, 2),
        speedup_vs_ansible=round(ans_wall / pf_wall, 2),
    )
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
