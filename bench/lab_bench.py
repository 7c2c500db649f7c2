"""Patch real lab hosts to one pinned set: raw apt, patchflow's SSH executor and Ansible's apt module, on the
same kind of hosts, at the same concurrency, interleaved in the same run. Needs root (the lab, cgroups) and
``ansible-playbook``.

    .venv/bin/python bench/lab_bench.py [--hosts 50] [--forks 10] [--single 5] [--reps 3]

Each repetition boots ``2 × single + 3 × hosts`` fresh lab hosts (every host starts from the same packages,
and no host is patched twice) and runs, in an order that rotates between repetitions:

* **one host at a time, paired** (``--single`` pairs): raw apt on one host, then patchflow on the next —
  back to back, so both see the same neighbours. *Raw apt* is ``apt-get update && apt-get install -y
  --no-install-recommends name=version …`` run directly in the host (``nsenter``, no SSH): the same apt
  work patchflow does, and the floor any tool pays per host. *patchflow* is what a wave does:
  ``SshExecutor.start_install`` then, if the install is still under way, ``finish_install`` (SSH, the
  operation journal, apt's plan checked before dpkg runs, package lists before/after, ``dpkg --audit``).
* **the fleet** (``--hosts`` hosts, ``--forks`` in flight): raw apt (threads), patchflow (a stage's
  ``max_concurrency``), Ansible (``ansible-playbook --forks``, ``ansible.builtin.apt`` with the same
  ``name=version`` list, ``update_cache: true``, pipelining on, facts off, ControlPersist, the lab's
  known_hosts).

Besides wall time it measures **CPU time** (user + system, cgroup v1 ``cpuacct``), which neighbours on a
shared machine disturb far less: *host* CPU is every process of the lab hosts (sshd, the agent, apt, dpkg);
*controller* CPU is patchflow's executor (this process, moved into its own cgroup for the round) or
``ansible-playbook`` with its forks and SSH processes (ControlPersist masters included). The lab's
repository server is accounted apart (``repo``). Every round checks that every host ends with exactly the
pinned versions. Prints one JSON document: per-repetition samples, then medians and ranges.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from patchflow.config import Settings
from patchflow.executors.base import Package
from patchflow.executors.ssh import SshExecutor, SshInventory, load_inventory
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

RAW_APT = "apt-get update -q && apt-get install -y -q --no-install-recommends " + " ".join(
    f"{p.name}={p.version}" for p in PINS
)
CPUACCT = Path("/sys/fs/cgroup/cpuacct")


@dataclass
class Sample:
    """One measured round: wall seconds, CPU seconds on the hosts, CPU seconds on the controller."""

    wall_s: float
    host_cpu_s: float
    controller_cpu_s: float = 0.0
    ssh_commands: int = 0
    load: float = field(default_factory=lambda: os.getloadavg()[0])


class CpuGroups:
    """cgroup v1 ``cpuacct`` groups ``hosts``, ``controller`` and ``repo`` under ``pfbench-<pid>``."""

    def __init__(self) -> None:
        self.root = CPUACCT / f"pfbench-{os.getpid()}"
        self.home = CPUACCT / _own_cgroup()
        self.lock = threading.Lock()
        for name in ("hosts", "controller", "repo"):
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def seconds(self, name: str) -> float:
        return int((self.root / name / "cpuacct.usage").read_text()) / 1e9

    def adopt(self, name: str, pids: list[int]) -> None:
        """Move processes and, recursively, their children into a group (new children inherit it)."""
        todo = list(pids)
        while todo:
            pid = todo.pop()
            with contextlib.suppress(OSError):
                (self.root / name / "cgroup.procs").write_text(str(pid))
                for task in Path(f"/proc/{pid}/task").iterdir():
                    todo += [int(c) for c in (task / "children").read_text().split()]

    @contextlib.contextmanager
    def inside(self, name: str) -> Iterator[None]:
        """Run this process (all its threads) in a group for the duration."""
        (self.root / name / "cgroup.procs").write_text(str(os.getpid()))
        try:
            yield
        finally:
            (self.home / "cgroup.procs").write_text(str(os.getpid()))

    def argv(self, name: str, argv: list[str]) -> list[str]:
        """``argv`` started inside a group (a shell joins it, then execs)."""
        procs = str(self.root / name / "cgroup.procs")
        return ["sh", "-c", 'echo $$ > "$0" && exec "$@"', procs, *argv]

    def remove(self) -> None:
        for name in ("hosts", "controller", "repo"):
            group = self.root / name
            for pid in (group / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (self.home / "cgroup.procs").write_text(pid)
            with contextlib.suppress(OSError):
                group.rmdir()
        with contextlib.suppress(OSError):
            self.root.rmdir()


def _own_cgroup() -> str:
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "cpuacct" in controllers.split(","):
            return path.lstrip("/")
    raise SystemExit("no cgroup v1 cpuacct hierarchy: the benchmark needs it for CPU accounting")


def boot(lab: Lab, cpu: CpuGroups, hosts: int) -> list[str]:
    lab.down()
    lab.up({"bench": hosts}, base_address="127.0.88.10", port=2299, extra_packages=("python3-apt",))
    state = lab.state()
    cpu.adopt("hosts", list(state["supervisors"].values()))
    cpu.adopt("repo", [int(state["httpd_pid"])])
    return [h.id for h in lab.hosts()]


def check_pinned(lab: Lab, hosts: list[str]) -> None:
    for host in hosts:
        installed = lab.installed(host)
        wrong = {p.name: installed.get(p.name) for p in PINS if installed.get(p.name) != p.version}
        if wrong:
            raise SystemExit(f"{host} does not have the pinned versions: {wrong}")


def measured(cpu: CpuGroups, run: Callable[[], int]) -> Sample:
    """Run a round; its wall time and the CPU the hosts and the controller spent meanwhile."""
    host0, ctl0, start = cpu.seconds("hosts"), cpu.seconds("controller"), time.perf_counter()
    commands = run()
    wall = time.perf_counter() - start
    return Sample(
        round(wall, 3),
        round(cpu.seconds("hosts") - host0, 3),
        round(cpu.seconds("controller") - ctl0, 3),
        commands,
    )


def raw_apt(lab: Lab, cpu: CpuGroups, hosts: list[str], forks: int) -> int:
    def one(host: str) -> None:
        proc = subprocess.run(
            cpu.argv("hosts", lab.shell_argv(host, RAW_APT)),
            capture_output=True,
            text=True,
            check=False,
            env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LANG": "C"},
        )
        if proc.returncode != 0:
            raise SystemExit(f"raw apt failed on {host}: {proc.stdout[-500:]}{proc.stderr[-500:]}")

    with ThreadPoolExecutor(forks) as pool:
        list(pool.map(one, hosts))
    return 0


def patchflow(inventory: SshInventory, cpu: CpuGroups, hosts: list[str], concurrency: int) -> int:
    """A stage's send-then-wait on each host, at most ``concurrency`` hosts in flight; SSH commands sent.

    The inventory is read before (a worker reads it once per wave, not per host: parsing the 160-host YAML
    takes ≈ 75 ms, which the one-host rounds would otherwise count as patchflow's)."""
    executor = SshExecutor(inventory, reboot_option="NoReboot", max_connections=concurrency)

    async def fleet() -> None:
        window = asyncio.Semaphore(concurrency)  # a stage's max_concurrency

        async def one(host: str) -> None:
            async with window:
                op = f"bench-{time.time_ns()}/bench/{host}/install/0"
                result = await executor.start_install(host, PINS, operation_id=op)
                if result is None:
                    result = await executor.finish_install(host, operation_id=op)
            if result.status != "succeeded":
                raise SystemExit(f"patchflow failed on {host}: {result.message}")

        try:
            await asyncio.gather(*(one(h) for h in hosts))
        finally:
            await executor.close()

    with cpu.inside("controller"):
        asyncio.run(fleet())
    return executor.commands_sent


def ansible(lab: Lab, cpu: CpuGroups, hosts: list[str], forks: int, playbook_bin: str) -> int:
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
    argv = [
        playbook_bin,
        "-i",
        str(work / "inventory.yml"),
        "--forks",
        str(forks),
        str(work / "playbook.yml"),
    ]
    proc = subprocess.run(cpu.argv("controller", argv), capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise SystemExit(f"ansible-playbook failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


def repetition(lab: Lab, cpu: CpuGroups, args: argparse.Namespace, rep: int) -> dict[str, object]:
    h, s = args.hosts, args.single
    hosts = boot(lab, cpu, 2 * s + 3 * h)
    inventory = load_inventory(lab.inventory_path)
    pairs, fleets = hosts[: 2 * s], [hosts[2 * s + i * h : 2 * s + (i + 1) * h] for i in range(3)]
    out: dict[str, object] = {"raw_single": [], "patchflow_single": []}
    for i in range(s):  # raw then patchflow, or the other way round: neither always runs first
        order = [("raw_single", pairs[2 * i]), ("patchflow_single", pairs[2 * i + 1])]
        for name, host in order if (i + rep) % 2 == 0 else order[::-1]:
            if name == "raw_single":
                sample = measured(cpu, lambda host=host: raw_apt(lab, cpu, [host], 1))
            else:
                sample = measured(cpu, lambda host=host: patchflow(inventory, cpu, [host], 1))
            out[name].append(asdict(sample))  # type: ignore[attr-defined]
    rounds: dict[str, Callable[[list[str]], int]] = {
        "raw_fleet": lambda hs: raw_apt(lab, cpu, hs, args.forks),
        "patchflow_fleet": lambda hs: patchflow(inventory, cpu, hs, args.forks),
        "ansible_fleet": lambda hs: ansible(lab, cpu, hs, args.forks, args.ansible_playbook),
    }
    names = list(rounds)
    names = names[rep % 3 :] + names[: rep % 3]
    for name, group in zip(names, fleets, strict=True):
        out[name] = asdict(measured(cpu, lambda name=name, group=group: rounds[name](group)))
    out["repo_cpu_s"] = round(cpu.seconds("repo"), 3)
    check_pinned(lab, hosts)
    return out


def summary(reps: list[dict[str, object]]) -> dict[str, object]:
    def med(values: list[float]) -> dict[str, float]:
        return {
            "median": round(statistics.median(values), 3),
            "min": round(min(values), 3),
            "max": round(max(values), 3),
        }

    def singles(name: str, key: str) -> list[float]:
        return [x[key] for r in reps for x in r[name]]  # type: ignore[attr-defined]

    def fleet(name: str, key: str) -> list[float]:
        return [r[name][key] for r in reps]  # type: ignore[index]

    pair_wall = [
        100 * (p["wall_s"] / r["wall_s"] - 1)
        for rep in reps
        for r, p in zip(rep["raw_single"], rep["patchflow_single"], strict=True)  # type: ignore[call-overload]
    ]
    out: dict[str, object] = {
        "raw_single_wall_s": med(singles("raw_single", "wall_s")),
        "patchflow_single_wall_s": med(singles("patchflow_single", "wall_s")),
        "overhead_wall_pct_paired": med(pair_wall),
        "raw_single_host_cpu_s": med(singles("raw_single", "host_cpu_s")),
        "patchflow_single_host_cpu_s": med(singles("patchflow_single", "host_cpu_s")),
        "patchflow_single_controller_cpu_s": med(singles("patchflow_single", "controller_cpu_s")),
        "patchflow_ssh_commands_per_host": med(singles("patchflow_single", "ssh_commands")),
    }
    raw_cpu = statistics.median(singles("raw_single", "host_cpu_s"))
    out["overhead_host_cpu_pct"] = round(
        100 * (statistics.median(singles("patchflow_single", "host_cpu_s")) / raw_cpu - 1), 1
    )
    for name in ("raw_fleet", "patchflow_fleet", "ansible_fleet"):
        for key in ("wall_s", "host_cpu_s", "controller_cpu_s"):
            out[f"{name}_{key}"] = med(fleet(name, key))
    out["ansible_over_patchflow_wall"] = med(
        [
            a / p
            for a, p in zip(fleet("ansible_fleet", "wall_s"), fleet("patchflow_fleet", "wall_s"), strict=True)
        ]
    )
    cpu = [
        (a + b) / (c + d)
        for a, b, c, d in zip(
            fleet("ansible_fleet", "host_cpu_s"),
            fleet("ansible_fleet", "controller_cpu_s"),
            fleet("patchflow_fleet", "host_cpu_s"),
            fleet("patchflow_fleet", "controller_cpu_s"),
            strict=True,
        )
    ]
    out["ansible_over_patchflow_total_cpu"] = med(cpu)
    out["patchflow_fleet_over_raw_fleet_wall"] = med(
        [p / r for p, r in zip(fleet("patchflow_fleet", "wall_s"), fleet("raw_fleet", "wall_s"), strict=True)]
    )
    loads = [x["load"] for r in reps for x in r["raw_single"]] + [  # type: ignore[attr-defined]
        r[n]["load"]  # type: ignore[index]
        for r in reps
        for n in ("raw_fleet", "patchflow_fleet", "ansible_fleet")
    ]
    out["load_average_1min"] = med(loads)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--forks", type=int, default=10)
    parser.add_argument("--single", type=int, default=5, help="raw apt / patchflow pairs, one host at a time")
    parser.add_argument("--reps", type=int, default=3, help="repetitions (rounds interleaved, order rotated)")
    parser.add_argument(
        "--first-rep", type=int, default=0, help="number of the first repetition (it sets the rounds' order)"
    )
    parser.add_argument(
        "--ansible-playbook",
        default=shutil.which("ansible-playbook") or str(Path(sys.executable).with_name("ansible-playbook")),
    )
    args = parser.parse_args()
    if 2 * args.single + 3 * args.hosts > 240:
        raise SystemExit("at most 240 lab hosts per repetition (127.0.88.10 …): lower --hosts or --single")
    lab = Lab(Path(tempfile.mkdtemp(prefix="lab-bench-")), cache_dir=Settings().data_dir / "lab" / "cache")
    cpu = CpuGroups()
    reps = []
    started = time.strftime("%Y-%m-%d %H:%M:%S %z")
    try:
        for rep in range(args.first_rep, args.first_rep + args.reps):
            reps.append(repetition(lab, cpu, args, rep))
            print(f"repetition {rep - args.first_rep + 1}/{args.reps} done", file=sys.stderr, flush=True)
    finally:
        lab.down()
        cpu.remove()
        shutil.rmtree(lab.dir.parent, ignore_errors=True)
    result = {
        "started": started,
        "hosts": args.hosts,
        "forks": args.forks,
        "single": args.single,
        "reps": args.reps,
        "pins": len(PINS),
        "summary": summary(reps),
        "repetitions": reps,
    }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
