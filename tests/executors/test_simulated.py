"""The simulated fleet: fleet files (parsing, validation, generation) and the SimulatedExecutor's durability.

The executor tests are about the promises Temporal rollouts rely on: an install runs at most once per
(operation id, instance) whatever happens — duplicates, races between workers, a worker killed mid-install —
and a retry after a crash waits only for the time the install had left.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest

from patchflow.core import versions
from patchflow.core.catalog import load_catalog
from patchflow.errors import InputError, InvalidVersionError, NotFoundError
from patchflow.executors.base import InstallResult, OperationNotStartedError, Package, PackageChange
from patchflow.executors.simulated import SimulatedExecutor, default_state_path
from patchflow.executors.simulated.fleet import MAX_INSTANCES, Behaviour, Fleet, generated_id, load_fleet
from tests.conftest import EXAMPLES_DIR, REPO_ROOT

T = TypeVar("T")

FLEET = """\
name: unit
seed: 7
instances:
  - id: i-deb
    tags: {"Patch Group": dev, Name: web-1}
    platform: {family: deb, product: Ubuntu22.04}
    installed:
      - {name: openssl, arch: amd64, version: 3.0.2-0ubuntu1.10}
      - {name: libssl3, arch: amd64, version: 3.0.2-0ubuntu1.20}
      - {name: curl, arch: amd64, version: 7.81.0-1ubuntu1.14}
      - {name: tool, arch: amd64, version: 1.0~rc1}
      - {name: epochy, arch: amd64, version: "1:0.9"}
      - {name: multi, arch: i386, version: "1.0"}
    behaviour: {duration_seconds: 1.0}
  - id: i-rpm
    tags: {PatchGroup: test}
    platform: {family: rpm, product: AmazonLinux2023}
    installed:
      - {name: kernel, arch: x86_64, version: 6.1.0~rc1-1.amzn2023}
      - {name: bash, arch: x86_64, version: "1:5.1-1"}
      - {name: snap, arch: x86_64, version: 1.0^git1-1}
      - {name: glibc, arch: x86_64, version: 2.34-100}
    behaviour: {duration_seconds: 1.0}
  - id: i-fail
    platform: {family: deb}
    installed: [{name: openssl, arch: amd64, version: 3.0.2-0ubuntu1.10}]
    behaviour: {duration_seconds: 1.0, fail: true, fail_health: true}
  - id: i-reboot
    platform: {family: deb}
    installed: [{name: openssl, arch: amd64, version: 3.0.2-0ubuntu1.10}]
    behaviour: {duration_seconds: 1.0, reboot: true}
  - id: i-offline
    platform: {family: deb}
    installed: [{name: openssl, arch: amd64, version: 3.0.2-0ubuntu1.10}]
    behaviour: {duration_seconds: 1.0, offline: true}
generate:
  - count: 3
    id_prefix: i-0gen
    tags: {"Patch Group": prod}
    platform: {family: deb, product: Ubuntu22.04}
    installed: [{name: openssl, arch: amd64, version: 3.0.2-0ubuntu1.10}]
    behaviour: {duration_seconds: [1.0, 2.0], reboot_rate: 0.5}
"""

OPENSSL_FIX = [Package("openssl", "amd64", "3.0.2-0ubuntu1.15")]


def run(coro: Coroutine[Any, Any, T]) -> T:
    """pytest-asyncio is not installed: every async scenario runs in its own loop."""
    return asyncio.run(coro)


def write_fleet(tmp_path: Path, text: str = FLEET, name: str = "fleet.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    return load_fleet(write_fleet(tmp_path))


@pytest.fixture
def make_executor(tmp_path: Path, fleet: Fleet) -> Callable[..., SimulatedExecutor]:
    """A factory: each call is a *new* executor object on the same state file (like a restarted worker)."""

    def make(time_scale: float = 0.0, state_path: Path | None = None) -> SimulatedExecutor:
        return SimulatedExecutor(fleet, state_path or tmp_path / "state.sqlite", time_scale=time_scale)

    return make


def installed(executor: SimulatedExecutor, instance_id: str) -> dict[str, str]:
    return {p.name: p.version for p in run(executor.scan(instance_id))}


def counts(executor: SimulatedExecutor, instance_id: str) -> tuple[int, int]:
    row = next(i for i in executor.status()["instances"] if i["id"] == instance_id)
    return row["install_count"], row["restore_count"]


def operation_rows(state_path: Path) -> list[tuple[str, str, str, float]]:
    """Raw operations table, read without the executor (as a crash test observer)."""
    if not state_path.exists():
        return []
    conn = sqlite3.connect(state_path, timeout=10)
    try:
        return conn.execute("SELECT operation_id, instance_id, status, started_at FROM operations").fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return []
    finally:
        conn.close()


# ------------------------------------------------------------------------------------------- fleet files


def test_fleet_file_loads_explicit_and_generated_instances_sorted_by_id(fleet: Fleet, tmp_path: Path) -> None:
    assert fleet.name == "unit"
    assert fleet.seed == 7
    assert [i.id for i in fleet.instances] == sorted(i.id for i in fleet.instances)
    assert len(fleet.instances) == 8
    by_id = {i.id: i for i in fleet.instances}
    deb = by_id["i-deb"]
    assert deb.family == "deb" and deb.product == "Ubuntu22.04"
    assert deb.patch_group == "dev" and deb.tags["Name"] == "web-1"
    assert [p.name for p in deb.installed] == sorted(p.name for p in deb.installed)
    assert by_id["i-rpm"].patch_group == "test"  # the PatchGroup spelling
    assert by_id["i-fail"].product is None and by_id["i-fail"].patch_group is None
    assert by_id["i-fail"].behaviour == Behaviour(duration_seconds=1.0, fail=True, fail_health=True)
    generated = [i for i in fleet.instances if i.id.startswith("i-0gen")]
    assert [i.id for i in generated] == ["i-0gen0000000000001", "i-0gen0000000000002", "i-0gen0000000000003"]
    assert all(i.patch_group == "prod" and 1.0 <= i.behaviour.duration_seconds <= 2.0 for i in generated)
    assert fleet.digest == hashlib.sha256((tmp_path / "fleet.yaml").read_bytes()).hexdigest()


def test_generated_id_rule() -> None:
    assert generated_id("i-0prod", 3, 50) == "i-0prod000000000003"
    assert len(generated_id("i-0prod", 3, 50)) == len("i-") + 17
    assert generated_id("mi-0abc", 12, 20) == "mi-0abc0000000000012"
    assert generated_id("web", 1, 1) == "web00000000000001"  # no '-': the whole id is 17 characters
    # A prefix that leaves no room still gets as many digits as the count needs, so ids never collide.
    assert generated_id("i-0123456789abcdef0", 7, 100) == "i-0123456789abcdef0007"


def test_json_fleet_and_default_name(tmp_path: Path) -> None:
    data = {"instances": [{"id": "i-1", "platform": {"family": "rpm"}, "installed": []}]}
    fleet = load_fleet(write_fleet(tmp_path, json.dumps(data), name="lab-fleet.json"))
    assert fleet.name == "lab-fleet" and fleet.seed == 0
    assert fleet.instances[0].behaviour == Behaviour()


def test_digest_is_of_the_bytes(tmp_path: Path) -> None:
    lf = load_fleet(write_fleet(tmp_path, FLEET, "lf.yaml"))
    (tmp_path / "crlf.yaml").write_bytes(FLEET.replace("\n", "\r\n").encode())
    crlf = load_fleet(tmp_path / "crlf.yaml")
    assert crlf.instances == lf.instances
    assert crlf.digest != lf.digest


def behaviours(fleet: Fleet) -> dict[str, Behaviour]:
    return {i.id: i.behaviour for i in fleet.instances}


GEN = """\
seed: {seed}
generate:
  - count: 200
    id_prefix: i-0a
    platform: {{family: deb}}
    behaviour: {{duration_seconds: [1.0, 5.0], fail_rate: 0.5, reboot_rate: 0.25}}
  - behaviour: {{offline_rate: 1.0, fail_health_rate: 0.0}}
    platform: {{product: X, family: rpm}}
    id_prefix: i-0b
    count: 5
"""


def test_generation_is_deterministic_and_order_independent(tmp_path: Path) -> None:
    first = load_fleet(write_fleet(tmp_path, GEN.format(seed=42), "a.yaml"))
    again = load_fleet(write_fleet(tmp_path, GEN.format(seed=42), "b.yaml"))
    assert behaviours(first) == behaviours(again)
    # Entries and keys in another order: each draw depends only on (seed, id, field), not on position.
    a, b = GEN.format(seed=42).split("  - ")[1:]
    swapped = load_fleet(write_fleet(tmp_path, f"seed: 42\ngenerate:\n  - {b}  - {a}", "c.yaml"))
    assert behaviours(swapped) == behaviours(first)
    other_seed = load_fleet(write_fleet(tmp_path, GEN.format(seed=43), "d.yaml"))
    assert behaviours(other_seed) != behaviours(first)

    drawn = [b for i, b in behaviours(first).items() if i.startswith("i-0a")]
    assert all(1.0 <= b.duration_seconds <= 5.0 for b in drawn)
    assert len({b.duration_seconds for b in drawn}) == 200  # really drawn per instance
    assert 70 <= sum(b.fail for b in drawn) <= 130  # rate 0.5 of 200
    assert 25 <= sum(b.reboot for b in drawn) <= 75
    assert not any(b.offline or b.fail_health for b in drawn)
    assert all(b.offline and not b.fail_health for i, b in behaviours(first).items() if i.startswith("i-0b"))


def test_generation_does_not_depend_on_hash_randomisation(tmp_path: Path) -> None:
    path = write_fleet(tmp_path, GEN.format(seed=5))
    script = (
        "import sys; from patchflow.executors.simulated.fleet import load_fleet; "
        "print(repr([(i.id, i.behaviour) for i in load_fleet(sys.argv[1]).instances]))"
    )
    outputs = {
        subprocess.run(
            [sys.executable, "-c", script, str(path)],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for hash_seed in ("1", "2")
    }
    assert len(outputs) == 1
    assert outputs.pop() == repr([(i.id, i.behaviour) for i in load_fleet(path).instances]) + "\n"


BASE_INSTANCE = "  - id: i-1\n    platform: {family: deb}\n"

INVALID = [
    # (file text, "line: path: message" fragment that must appear)
    (
        "instancs: []\n" + "instances:\n" + BASE_INSTANCE,
        ":1: instancs: unknown field 'instancs'; did you mean 'instances'?",
    ),
    ("seed: forty\ninstances:\n" + BASE_INSTANCE, ":1: seed: expected a whole number, got str 'forty'"),
    ("name: 'my fleet'\ninstances:\n" + BASE_INSTANCE, ":1: name: 'my fleet' is not a valid fleet name"),
    (
        "instances:\n" + BASE_INSTANCE + "    tag: {}\n",
        ":4: instances[0].tag: unknown field 'tag'; did you mean 'tags'?",
    ),
    (
        "instances:\n" + BASE_INSTANCE + BASE_INSTANCE,
        ":4: instances[1].id: duplicate instance id: i-1 (from instances[0])",
    ),
    ("instances:\n  - platform: {family: deb}\n", ":2: instances[0]: required field 'id' is missing"),
    (
        "instances:\n  - id: i 1\n    platform: {family: deb}\n",
        ":2: instances[0].id: 'i 1' is not a valid instance id",
    ),
    ("instances:\n  - id: i-1\n", ":2: instances[0]: required field 'platform' is missing"),
    (
        "instances:\n  - id: i-1\n    platform: {family: msi}\n",
        ":3: instances[0].platform.family: 'msi' is not a package family; use one of: deb, rpm",
    ),
    (
        "instances:\n  - id: i-1\n    platform: {family: deb, produkt: X}\n",
        ":3: instances[0].platform.produkt: unknown field 'produkt'; did you mean 'product'?",
    ),
    (
        "instances:\n  - id: i-1\n    platform: Ubuntu22.04\n",
        ":3: instances[0].platform: expected a mapping with fields family, product",
    ),
    (
        "instances:\n" + BASE_INSTANCE + "    tags: {Patch Group: 1}\n",
        ":4: instances[0].tags.Patch Group: tag values are strings, got int 1: quote it",
    ),
    (
        "instances:\n" + BASE_INSTANCE + "    installed:\n      - {name: a, arch: amd64, version: '1:'}\n",
        ":5: instances[0].installed[0].version: invalid deb version '1:': nothing after the colon",
    ),
    (
        "instances:\n  - id: i-1\n    platform: {family: rpm}\n    installed:\n      - {name: a, arch: x, version: 1.0-1-1}\n",
        ":5: instances[0].installed[0].version: invalid rpm version '1.0-1-1'",
    ),
    (
        "instances:\n" + BASE_INSTANCE + "    installed:\n      - {name: a, arch: amd64}\n",
        ":5: instances[0].installed[0]: required field 'version' is missing",
    ),
    (
        "instances:\n"
        + BASE_INSTANCE
        + "    installed:\n      - {name: a, arch: x, version: '1'}\n      - {name: a, arch: x, version: '2'}\n",
        ":6: instances[0].installed[1]: a (x) is listed twice",
    ),
    (
        "instances:\n" + BASE_INSTANCE + "    installed:\n      - {name: a, arch: x, verison: '1'}\n",
        ":5: instances[0].installed[0].verison: unknown field 'verison'; did you mean 'version'?",
    ),
    (
        "instances:\n" + BASE_INSTANCE + "    behaviour: {duration_seconds: -2}\n",
        ":4: instances[0].behaviour.duration_seconds: durations cannot be negative, got -2",
    ),
    (
        "instances:\n" + BASE_INSTANCE + "    behaviour: {duration_seconds: [5, 1]}\n",
        ":4: instances[0].behaviour.duration_seconds: the range [min, max] has min > max",
    ),
    (
        "instances:\n" + BASE_INSTANCE + "    behaviour: {duration_seconds: [1, 2, 3]}\n",
        ":4: instances[0].behaviour.duration_seconds: a duration range is [min, max]",
    ),
    (
        "instances:\n" + BASE_INSTANCE + "    behaviour: {duration_seconds: soon}\n",
        ":4: instances[0].behaviour.duration_seconds: expected seconds (or a [min, max] range) as a number",
    ),
    (
        "instances:\n" + BASE_INSTANCE + "    behaviour: {fail: 'yes'}\n",
        ":4: instances[0].behaviour.fail: expected true or false, got str 'yes'",
    ),
    (
        "instances:\n" + BASE_INSTANCE + "    behaviour: {fail_rate: 0.5}\n",
        ":4: instances[0].behaviour.fail_rate: unknown field 'fail_rate'; did you mean 'fail'? (rates are for 'generate' entries)",
    ),
    ("instances: {id: i-1}\n", ":1: instances: expected a list, got dict"),
    (
        "generate:\n  - {count: 0, id_prefix: i-0, platform: {family: deb}}\n",
        ":2: generate[0].count: count must be at least 1, got 0",
    ),
    (
        "generate:\n  - {count: '5', id_prefix: i-0, platform: {family: deb}}\n",
        ":2: generate[0].count: expected a whole number, got str '5'",
    ),
    (
        "generate:\n  - {id_prefix: i-0, platform: {family: deb}}\n",
        ":2: generate[0]: required field 'count' is missing",
    ),
    (
        "generate:\n  - {count: 1, platform: {family: deb}}\n",
        ":2: generate[0]: required field 'id_prefix' is missing",
    ),
    (
        f"generate:\n  - {{count: {MAX_INSTANCES + 1}, id_prefix: i-0, platform: {{family: deb}}}}\n",
        f":2: generate[0].count: the fleet would have {MAX_INSTANCES + 1} instances; the limit is {MAX_INSTANCES}",
    ),
    (
        "generate:\n  - count: 1\n    id_prefix: i-0\n    platform: {family: deb}\n    behaviour: {fail_rate: 1.5}\n",
        ":5: generate[0].behaviour.fail_rate: 1.5 is outside 0..1",
    ),
    (
        "generate:\n  - count: 1\n    id_prefix: i-0\n    platform: {family: deb}\n    behaviour: {reboot_rate: -0.1}\n",
        ":5: generate[0].behaviour.reboot_rate: -0.1 is outside 0..1",
    ),
    (
        "generate:\n  - count: 1\n    id_prefix: i-0\n    platform: {family: deb}\n    behaviour: {fail: true}\n",
        ":5: generate[0].behaviour.fail: unknown field 'fail'; did you mean 'fail_rate'?",
    ),
    (
        "instances:\n  - id: i-00000000000000002\n    platform: {family: deb}\n"
        "generate:\n  - {count: 3, id_prefix: i-, platform: {family: deb}}\n",
        ":5: generate[0].id_prefix: duplicate instance id: i-00000000000000002 (from instances[0])",
    ),
    ("instances: []\n", ":1: the fleet has no instances"),
    ("- id: i-1\n", ":1: expected a mapping with fields name, seed, instances, generate; got list"),
]


@pytest.mark.parametrize(("text", "expected"), INVALID, ids=[e.split(": ", 2)[-1][:40] for _, e in INVALID])
def test_every_validation_error_is_located(tmp_path: Path, text: str, expected: str) -> None:
    path = write_fleet(tmp_path, text)
    with pytest.raises(InputError) as info:
        load_fleet(path)
    assert f"{path}{expected}" in str(info.value), str(info.value)
    assert info.value.exit_code == 2


def test_all_problems_reported_at_once(tmp_path: Path) -> None:
    text = "seed: x\ninstances:\n  - id: i-1\n    platform: {family: msi}\n    behaviour: {fail: 1}\n"
    with pytest.raises(InputError) as info:
        load_fleet(write_fleet(tmp_path, text))
    assert "(3 problems)" in str(info.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [(None, "fleet file not found"), ("", "fleet file is empty"), ("instances: [\n", "not valid YAML")],
)
def test_unreadable_fleet_files(tmp_path: Path, content: str | None, expected: str) -> None:
    path = tmp_path / "fleet.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=expected):
        load_fleet(path)


# ------------------------------------------------------------------------------------------- the example


def test_example_fleet_matches_the_ubuntu_catalog() -> None:
    fleet = load_fleet(EXAMPLES_DIR / "fleet.yaml")
    groups = [i.patch_group for i in fleet.instances]
    assert (groups.count("dev"), groups.count("test"), groups.count("prod")) == (3, 6, 20)
    assert [i.patch_group for i in fleet.instances if i.behaviour.fail] == ["test"]
    assert not any(i.behaviour.fail_health or i.behaviour.offline for i in fleet.instances)
    assert all(0.5 <= i.behaviour.duration_seconds <= 3.0 for i in fleet.instances)
    newest: dict[tuple[str, str], str] = {}
    for patch in load_catalog(EXAMPLES_DIR / "ubuntu-catalog.json"):
        newest[patch.key] = versions.latest("deb", [patch.version, newest.get(patch.key, patch.version)])
    for instance in fleet.instances:
        assert (instance.family, instance.product) == ("deb", "Ubuntu22.04")
        older = [p for p in instance.installed if (p.name, p.arch) in newest]
        assert older, instance.id
        # Every catalogued package is strictly older than the catalog's newest, so patches apply everywhere.
        assert all(versions.compare("deb", p.version, newest[(p.name, p.arch)]) < 0 for p in older), (
            instance.id
        )


# ------------------------------------------------------------------------------------------- executor


def test_discover_and_health(make_executor: Callable[..., SimulatedExecutor]) -> None:
    executor = make_executor()
    infos = {i.instance_id: i for i in run(executor.discover())}
    assert len(infos) == 8
    assert infos["i-deb"].patch_group == "dev" and infos["i-deb"].family == "deb"
    assert infos["i-deb"].product == "Ubuntu22.04"
    assert infos["i-rpm"].patch_group == "test"
    assert [i for i, info in infos.items() if not info.online] == ["i-offline"]
    assert run(executor.health_check("i-deb")).healthy
    assert not run(executor.health_check("i-fail")).healthy
    with pytest.raises(NotFoundError, match="i-nope"):
        run(executor.health_check("i-nope"))


def test_upgrades_follow_exact_deb_order(make_executor: Callable[..., SimulatedExecutor]) -> None:
    executor = make_executor()
    patches = [
        Package("openssl", "amd64", "3.0.2-0ubuntu1.15"),  # older installed: upgraded
        Package("libssl3", "amd64", "3.0.2-0ubuntu1.15"),  # newer installed: never downgraded
        Package("curl", "amd64", "7.81.0-1ubuntu1.014"),  # the same version for dpkg (14 == 014): untouched
        Package("tool", "amd64", "1.0"),  # 1.0~rc1 < 1.0
        Package("epochy", "amd64", "2.0"),  # 1:0.9 > 0:2.0
        Package("multi", "amd64", "2.0"),  # installed only for i386: another package
        Package("absent", "amd64", "9.9"),  # not installed: never added
        Package("openssl", "amd64", "3.0.2-0ubuntu1.12"),  # a lower duplicate pin loses to the higher one
    ]
    result = run(executor.install("i-deb", patches, operation_id="op-1"))
    assert result.status == "succeeded" and not result.rebooted and not result.counts_as_error
    assert set(result.changed) == {
        PackageChange("openssl", "amd64", "3.0.2-0ubuntu1.10", "3.0.2-0ubuntu1.15"),
        PackageChange("tool", "amd64", "1.0~rc1", "1.0"),
    }
    assert installed(executor, "i-deb") == {
        "openssl": "3.0.2-0ubuntu1.15",
        "libssl3": "3.0.2-0ubuntu1.20",
        "curl": "7.81.0-1ubuntu1.14",
        "tool": "1.0",
        "epochy": "1:0.9",
        "multi": "1.0",
    }
    assert counts(executor, "i-deb") == (1, 0)


def test_upgrades_follow_exact_rpm_order(make_executor: Callable[..., SimulatedExecutor]) -> None:
    executor = make_executor()
    patches = [
        Package("kernel", "x86_64", "6.1.0-1.amzn2023"),  # ~rc1 sorts before the release
        Package("bash", "x86_64", "5.2-1"),  # epoch 1 beats a bigger version at epoch 0
        Package("snap", "x86_64", "1.0-1"),  # ^git1 is a post-release snapshot: newer than 1.0
        Package("glibc", "x86_64", "2.34-99"),
    ]
    result = run(executor.install("i-rpm", patches, operation_id="op-1"))
    assert result.changed == (PackageChange("kernel", "x86_64", "6.1.0~rc1-1.amzn2023", "6.1.0-1.amzn2023"),)
    with pytest.raises(InvalidVersionError):
        run(executor.install("i-rpm", [Package("bash", "x86_64", "1.0-")], operation_id="op-2"))


def test_same_operation_twice_installs_once(make_executor: Callable[..., SimulatedExecutor]) -> None:
    executor = make_executor()
    first = run(executor.install("i-deb", OPENSSL_FIX, operation_id="wave-1"))
    second = run(executor.install("i-deb", OPENSSL_FIX, operation_id="wave-1"))
    assert second == first and len(first.changed) == 1
    assert counts(executor, "i-deb") == (1, 0)
    # A new operation runs again (install_count counts runs) but finds nothing left to do.
    third = run(executor.install("i-deb", OPENSSL_FIX, operation_id="wave-2"))
    assert third.status == "succeeded" and third.changed == ()
    assert counts(executor, "i-deb") == (2, 0)


def test_reusing_an_operation_id_for_another_request_is_refused(
    make_executor: Callable[..., SimulatedExecutor],
) -> None:
    executor = make_executor()
    run(executor.install("i-deb", OPENSSL_FIX, operation_id="op"))
    other_packages = [Package("curl", "amd64", "7.81.0-1ubuntu1.18")]
    with pytest.raises(ValueError, match=r"already used for a different request \(install on i-deb\)"):
        run(executor.install("i-deb", other_packages, operation_id="op"))
    with pytest.raises(ValueError, match="already used"):
        run(executor.restore("i-deb", OPENSSL_FIX, operation_id="op"))
    with pytest.raises(ValueError, match="already used"):
        run(
            executor.install("i-reboot", OPENSSL_FIX, operation_id="op")
        )  # an id names one instance's operation
    assert counts(executor, "i-deb") == (1, 0) and counts(executor, "i-reboot") == (0, 0)


def test_operation_result(make_executor: Callable[..., SimulatedExecutor], tmp_path: Path) -> None:
    async def scenario() -> None:
        executor = make_executor(time_scale=0.2)
        assert await executor.operation_result("op") is None  # never ran
        task = asyncio.create_task(executor.install("i-deb", OPENSSL_FIX, operation_id="op"))
        while not operation_rows(tmp_path / "state.sqlite"):
            await asyncio.sleep(0.005)
        assert await executor.operation_result("op") is None  # still running
        result = await task
        assert await make_executor().operation_result("op") == result
        await executor.install("i-offline", OPENSSL_FIX, operation_id="offline")
        assert await executor.operation_result("offline") is None  # undeliverable: never recorded

    run(scenario())


def test_failure_reboot_and_offline(make_executor: Callable[..., SimulatedExecutor], tmp_path: Path) -> None:
    executor = make_executor()
    failed = run(executor.install("i-fail", OPENSSL_FIX, operation_id="op"))
    assert failed.status == "failed" and failed.counts_as_error and failed.changed == ()
    assert installed(executor, "i-fail")["openssl"] == "3.0.2-0ubuntu1.10"
    assert counts(executor, "i-fail") == (1, 0)  # the install ran (and failed)
    assert run(executor.install("i-fail", OPENSSL_FIX, operation_id="op")) == failed

    rebooted = run(executor.install("i-reboot", OPENSSL_FIX, operation_id="op-reboot"))
    assert rebooted.status == "succeeded" and rebooted.rebooted

    offline = run(executor.install("i-offline", OPENSSL_FIX, operation_id="op-offline"))
    assert offline.status == "undeliverable" and not offline.counts_as_error
    assert run(executor.restore("i-offline", OPENSSL_FIX, operation_id="op2")).status == "undeliverable"
    assert counts(executor, "i-offline") == (0, 0)
    assert [row[1] for row in operation_rows(tmp_path / "state.sqlite")].count("i-offline") == 0
    with pytest.raises(NotFoundError):
        run(executor.install("i-nope", OPENSSL_FIX, operation_id="op-nope"))


def test_start_install_twice_and_from_a_new_executor_starts_one_install(
    make_executor: Callable[..., SimulatedExecutor], tmp_path: Path
) -> None:
    async def openssl(executor: SimulatedExecutor) -> str:
        return next(p.version for p in await executor.scan("i-deb") if p.name == "openssl")

    async def scenario() -> None:
        executor = make_executor(time_scale=0.2)
        assert await executor.start_install("i-deb", OPENSSL_FIX, operation_id="op") is None
        assert await executor.start_install("i-deb", OPENSSL_FIX, operation_id="op") is None
        # A worker that died right after the start: a new executor object on the same state.
        assert (
            await make_executor(time_scale=0.2).start_install("i-deb", OPENSSL_FIX, operation_id="op") is None
        )
        rows = operation_rows(tmp_path / "state.sqlite")
        assert [(r[0], r[1], r[2]) for r in rows] == [("op", "i-deb", "running")]
        assert await openssl(executor) == "3.0.2-0ubuntu1.10"  # started, not done
        with pytest.raises(ValueError, match="already used for a different request"):
            await executor.start_install(
                "i-deb", [Package("curl", "amd64", "7.81.0-1ubuntu1.18")], operation_id="op"
            )

        finished = await make_executor(time_scale=0.2).finish_install("i-deb", operation_id="op")

        assert finished.status == "succeeded" and len(finished.changed) == 1
        assert await make_executor().finish_install("i-deb", operation_id="op") == finished  # recorded
        assert await executor.start_install("i-deb", OPENSSL_FIX, operation_id="op") == finished
        assert await executor.install("i-deb", OPENSSL_FIX, operation_id="op") == finished
        assert counts(executor, "i-deb") == (1, 0)
        assert await openssl(executor) == "3.0.2-0ubuntu1.15"

    run(scenario())


def test_finish_install_waits_only_for_the_remaining_time(
    make_executor: Callable[..., SimulatedExecutor],
) -> None:
    """A retried wait (another executor object, as after a worker crash) waits out what is left of the install,
    not its whole duration again. The margins are wide so a loaded machine cannot make the test flaky: waiting the
    whole 3 s again would take at least 3 s, the remaining half second far less than 2 s."""

    async def scenario() -> float:
        executor = make_executor(time_scale=3.0)  # a 3 s install
        assert await executor.start_install("i-deb", OPENSSL_FIX, operation_id="op") is None
        await asyncio.sleep(2.5)
        begin = time.monotonic()
        await make_executor(time_scale=3.0).finish_install("i-deb", operation_id="op")
        return time.monotonic() - begin

    assert run(scenario()) < 2.0


def test_finish_install_without_start_is_a_clear_error(
    make_executor: Callable[..., SimulatedExecutor],
) -> None:
    executor = make_executor()
    with pytest.raises(OperationNotStartedError, match="'never' was never started") as raised:
        run(executor.finish_install("i-deb", operation_id="never"))
    assert isinstance(raised.value, NotFoundError)
    # Offline: start answers at once and records nothing, so there is nothing to finish.
    offline = run(executor.start_install("i-offline", OPENSSL_FIX, operation_id="off"))
    assert offline is not None and offline.status == "undeliverable"
    with pytest.raises(OperationNotStartedError):
        run(executor.finish_install("i-offline", operation_id="off"))
    # An id of another instance's install, or of a restore, is refused rather than answered.
    assert run(executor.start_install("i-deb", OPENSSL_FIX, operation_id="op")) is None
    with pytest.raises(ValueError, match="names the install on i-deb; expected the install on i-reboot"):
        run(executor.finish_install("i-reboot", operation_id="op"))
    run(executor.restore("i-deb", OPENSSL_FIX, operation_id="rb"))
    with pytest.raises(ValueError, match="names the restore on i-deb"):
        run(executor.finish_install("i-deb", operation_id="rb"))
    with pytest.raises(NotFoundError):
        run(executor.finish_install("i-nope", operation_id="op"))


def test_restore_is_idempotent_and_never_adds(make_executor: Callable[..., SimulatedExecutor]) -> None:
    executor = make_executor()
    run(executor.install("i-deb", OPENSSL_FIX, operation_id="install"))
    back = [Package("openssl", "amd64", "3.0.2-0ubuntu1.10"), Package("absent", "amd64", "1.0")]
    first = run(executor.restore("i-deb", back, operation_id="rollback"))
    assert first.status == "succeeded"
    assert first.changed == (PackageChange("openssl", "amd64", "3.0.2-0ubuntu1.15", "3.0.2-0ubuntu1.10"),)
    assert run(executor.restore("i-deb", back, operation_id="rollback")) == first
    assert installed(executor, "i-deb")["openssl"] == "3.0.2-0ubuntu1.10"
    assert "absent" not in installed(executor, "i-deb")
    assert counts(executor, "i-deb") == (1, 1)
    # A bad patch does not make the rollback fail.
    assert run(executor.restore("i-fail", back, operation_id="rollback-fail")).status == "succeeded"


def test_state_persists_across_executor_objects(make_executor: Callable[..., SimulatedExecutor]) -> None:
    run(make_executor().install("i-deb", OPENSSL_FIX, operation_id="op"))
    restarted = make_executor()
    assert installed(restarted, "i-deb")["openssl"] == "3.0.2-0ubuntu1.15"
    assert counts(restarted, "i-deb") == (1, 0)
    again = run(restarted.install("i-deb", OPENSSL_FIX, operation_id="op"))
    assert len(again.changed) == 1  # the recorded result, not a second run
    assert counts(restarted, "i-deb") == (1, 0)


def test_concurrent_duplicates_apply_once(make_executor: Callable[..., SimulatedExecutor]) -> None:
    one, other = make_executor(time_scale=0.2), make_executor(time_scale=0.2)

    async def race() -> tuple[list[InstallResult], float]:
        start = time.monotonic()
        results = await asyncio.gather(
            *(ex.install("i-deb", OPENSSL_FIX, operation_id="op") for ex in (one, one, other, other, one))
        )
        return list(results), time.monotonic() - start

    results, elapsed = run(race())
    assert all(r == results[0] for r in results) and len(results[0].changed) == 1
    assert elapsed < 0.6  # they waited together for one 0.2 s install, not five in a row
    assert counts(one, "i-deb") == (1, 0)


RACER = """\
import asyncio, sys
from pathlib import Path
from patchflow.executors.base import Package
from patchflow.executors.simulated import SimulatedExecutor
from patchflow.executors.simulated.fleet import load_fleet

fleet, state, operation, scale = load_fleet(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], float(sys.argv[4])
executor = SimulatedExecutor(fleet, state, time_scale=scale)
patches = [Package("openssl", "amd64", "3.0.2-0ubuntu1.15")]
print(asyncio.run(executor.install("i-deb", patches, operation_id=operation)).changed, flush=True)
"""


def start_worker(tmp_path: Path, operation: str, scale: float) -> subprocess.Popen[str]:
    script = tmp_path / "worker.py"
    script.write_text(RACER)
    args = [sys.executable, str(script), str(tmp_path / "fleet.yaml"), str(tmp_path / "state.sqlite")]
    return subprocess.Popen([*args, operation, str(scale)], stdout=subprocess.PIPE, text=True, cwd=REPO_ROOT)


def test_two_worker_processes_race_on_one_operation(
    tmp_path: Path, make_executor: Callable[..., SimulatedExecutor]
) -> None:
    workers = [start_worker(tmp_path, "op-race", 0.3) for _ in range(3)]
    outputs = [w.communicate(timeout=30)[0] for w in workers]
    assert all(w.returncode == 0 for w in workers)
    assert len(set(outputs)) == 1 and "3.0.2-0ubuntu1.15" in outputs[0]
    assert counts(make_executor(), "i-deb") == (1, 0)


def wait_for_running(state_path: Path, timeout: float = 15.0) -> float:
    """Block until an operation is recorded as running; return its started_at."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = operation_rows(state_path)
        if rows:
            assert rows[0][2] == "running"
            return rows[0][3]
        time.sleep(0.01)
    raise AssertionError("the worker never recorded its operation")


def test_killed_worker_resumes_with_only_the_remaining_time(
    tmp_path: Path, make_executor: Callable[..., SimulatedExecutor]
) -> None:
    worker = start_worker(tmp_path, "op-crash", 3.0)  # i-deb: 1.0 s x 3.0 = 3 s
    started_at = wait_for_running(tmp_path / "state.sqlite")
    time.sleep(1.0)
    worker.send_signal(signal.SIGKILL)  # no cleanup, no finally blocks: a dead worker
    worker.communicate(timeout=10)  # reaps it and closes its pipe
    executor = make_executor(time_scale=3.0)  # a new worker process would build a new executor
    assert counts(executor, "i-deb") == (0, 0)  # nothing applied while the operation still runs
    expected = started_at + 3.0 - time.time()
    begin = time.monotonic()
    result = run(executor.install("i-deb", OPENSSL_FIX, operation_id="op-crash"))
    elapsed = time.monotonic() - begin
    assert 0 < expected < 2.1
    # The remaining time, never a fresh 3 s; the upper margin is wide so a loaded machine cannot make it flaky.
    assert expected - 0.05 <= elapsed < 2.9
    assert len(result.changed) == 1
    assert counts(executor, "i-deb") == (1, 0)


def test_cancelled_attempt_is_completed_once_by_a_new_executor(
    make_executor: Callable[..., SimulatedExecutor], tmp_path: Path
) -> None:
    async def scenario() -> tuple[float, float, InstallResult]:
        first = make_executor(time_scale=3.0)  # a 3 s install
        task = asyncio.create_task(first.install("i-deb", OPENSSL_FIX, operation_id="op"))
        while not operation_rows(tmp_path / "state.sqlite"):
            await asyncio.sleep(0.01)
        started_at = operation_rows(tmp_path / "state.sqlite")[0][3]
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        expected = started_at + 3.0 - time.time()
        begin = time.monotonic()
        result = await make_executor(time_scale=3.0).install("i-deb", OPENSSL_FIX, operation_id="op")
        return expected, time.monotonic() - begin, result

    # The new executor waits out what is left (about 2 s), never the whole 3 s again; the upper margin is wide
    # so a loaded machine cannot make the test flaky.
    expected, elapsed, result = run(scenario())
    assert expected - 0.05 <= elapsed < 2.9
    assert len(result.changed) == 1
    assert counts(make_executor(), "i-deb") == (1, 0)


def test_cancel_stops_a_running_install_like_ssms_cancel_command(
    make_executor: Callable[..., SimulatedExecutor],
) -> None:
    """Like SSM's CancelCommand (botocore's model: Cancelled is terminal and, per ``Command.ErrorCount``, no error):
    a cancelled install changes nothing, is not counted, and every later call reads the ``cancelled`` result."""

    async def scenario() -> tuple[bool, InstallResult, bool]:
        executor = make_executor(time_scale=1.0)
        assert await executor.start_install("i-deb", OPENSSL_FIX, operation_id="op") is None
        waiting = asyncio.create_task(
            make_executor(time_scale=1.0).finish_install("i-deb", operation_id="op")
        )
        cancelled = await executor.cancel("op")
        await asyncio.sleep(1.1)  # past the install's time: it must not complete after all
        return cancelled, await waiting, await executor.cancel("op")

    cancelled, result, again = run(scenario())
    assert cancelled and not again
    assert (result.status, result.counts_as_error, result.changed) == ("cancelled", False, ())
    executor = make_executor()
    assert installed(executor, "i-deb")["openssl"] != "3.0.2-0ubuntu1.15"
    assert counts(executor, "i-deb") == (0, 0)
    assert run(executor.operation_result("op")) == result
    assert not run(executor.cancel("unknown"))


def test_an_abandoned_operation_still_finishes_on_the_instance(
    make_executor: Callable[..., SimulatedExecutor], tmp_path: Path
) -> None:
    """Like an SSM command, a dead worker's install completes on time; reads and retries see it."""

    async def abandon() -> None:
        task = asyncio.create_task(
            make_executor(time_scale=1.0).install("i-deb", OPENSSL_FIX, operation_id="op")
        )
        while not operation_rows(tmp_path / "state.sqlite"):
            await asyncio.sleep(0.005)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    run(abandon())
    time.sleep(1.1)  # past its 1 s
    executor = make_executor(time_scale=1.0)
    finished = run(executor.operation_result("op"))
    assert finished is not None and len(finished.changed) == 1
    assert installed(executor, "i-deb")["openssl"] == "3.0.2-0ubuntu1.15"
    assert counts(executor, "i-deb") == (1, 0)
    begin = time.monotonic()
    assert len(run(executor.install("i-deb", OPENSSL_FIX, operation_id="op")).changed) == 1
    assert time.monotonic() - begin < 0.9  # the recorded result, not a second 1 s install
    assert counts(executor, "i-deb") == (1, 0)


def test_status_shape(make_executor: Callable[..., SimulatedExecutor], fleet: Fleet, tmp_path: Path) -> None:
    executor = make_executor()
    run(executor.install("i-deb", OPENSSL_FIX, operation_id="op"))
    status = executor.status()
    assert json.loads(json.dumps(status)) == status
    assert status["fleet"] == "unit" and status["state_path"] == str(tmp_path / "state.sqlite")
    assert [i["id"] for i in status["instances"]] == [i.id for i in fleet.instances]
    deb = next(i for i in status["instances"] if i["id"] == "i-deb")
    assert set(deb) >= {
        "id",
        "tags",
        "patch_group",
        "platform",
        "installed",
        "install_count",
        "restore_count",
    }
    assert deb["platform"] == {"family": "deb", "product": "Ubuntu22.04"}
    assert deb["patch_group"] == "dev" and deb["tags"]["Name"] == "web-1"
    assert {"name": "openssl", "arch": "amd64", "version": "3.0.2-0ubuntu1.15"} in deb["installed"]
    assert (deb["install_count"], deb["restore_count"]) == (1, 0)


def test_reset_restores_the_initial_state(make_executor: Callable[..., SimulatedExecutor]) -> None:
    executor = make_executor()
    run(executor.install("i-deb", OPENSSL_FIX, operation_id="op"))
    run(executor.restore("i-deb", [Package("curl", "amd64", "1.0")], operation_id="op2"))
    executor.reset()
    assert installed(executor, "i-deb")["openssl"] == "3.0.2-0ubuntu1.10"
    assert installed(executor, "i-deb")["curl"] == "7.81.0-1ubuntu1.14"
    assert counts(executor, "i-deb") == (0, 0)
    assert len(run(executor.install("i-deb", OPENSSL_FIX, operation_id="op")).changed) == 1  # forgotten
    assert counts(executor, "i-deb") == (1, 0)


def test_state_file_of_another_fleet_is_refused(tmp_path: Path, fleet: Fleet) -> None:
    state = tmp_path / "state.sqlite"
    SimulatedExecutor(fleet, state).status()
    edited = load_fleet(write_fleet(tmp_path, FLEET.replace("seed: 7", "seed: 8"), "edited.yaml"))
    with pytest.raises(InputError, match="belongs to another fleet file"):
        SimulatedExecutor(edited, state).status()


def test_default_state_path_and_time_scale(tmp_path: Path, fleet: Fleet) -> None:
    path = default_state_path(tmp_path, fleet)
    assert path == tmp_path / "simulated" / f"unit-{fleet.digest[:16]}.sqlite"
    SimulatedExecutor(fleet, path).status()  # creates the directories
    assert path.exists()
    with pytest.raises(ValueError, match="time_scale"):
        SimulatedExecutor(fleet, path, time_scale=-1)


def test_many_concurrent_first_uses_of_a_fresh_state_file(fleet: Fleet, tmp_path: Path) -> None:
    """Scans of a whole fleet at once on a state file nobody created yet (a report's first run): switching the
    file to WAL used to fail some of them with 'database is locked'."""
    for attempt in range(40):
        state = tmp_path / f"state-{attempt}.sqlite"
        executors = [SimulatedExecutor(fleet, state) for _ in range(12)]

        async def scan_all(executors: list[SimulatedExecutor] = executors) -> list[list[Package]]:
            return await asyncio.gather(
                *(
                    executor.scan(fleet.instances[n % len(fleet.instances)].id)
                    for n, executor in enumerate(executors)
                )
            )

        results = run(scan_all())
        assert len(results) == len(executors) and all(results)


# ------------------------------------------------------------------------------- batches (issue 17 item 3)


def test_a_batch_answers_each_instance_as_single_calls_would(tmp_path: Path, fleet: Fleet) -> None:
    """``start_installs`` / ``finish_installs`` (one transaction per batch) against ``start_install`` /
    ``finish_install`` one instance at a time, on two copies of the same fleet: the same answer per instance —
    results, undeliverable, the per-instance errors — and the same state afterwards. A bad entry is its own
    answer and never fails the rest of the batch."""
    ids = [i.id for i in fleet.instances] + ["i-nope"]
    patches = [*OPENSSL_FIX, Package("kernel", "x86_64", "6.1.0-1.amzn2023")]

    def ops(prefix: str) -> list[tuple[str, str]]:
        return [(i, f"{prefix}/{i}") for i in ids]

    async def singles(executor: SimulatedExecutor) -> list[object]:
        answers: list[object] = []
        for instance_id, op in ops("w"):
            try:
                started = await executor.start_install(instance_id, patches, operation_id=op)
                answers.append(started or await executor.finish_install(instance_id, operation_id=op))
            except (NotFoundError, ValueError) as exc:
                answers.append(exc)
        return answers

    async def batched(executor: SimulatedExecutor) -> list[object]:
        started = await executor.start_installs(ops("w"), patches)
        running = [(i, op) for (i, op), s in zip(ops("w"), started, strict=True) if s is None]
        finished = dict(zip(running, await executor.finish_installs(running), strict=True))
        return [finished.get(pair, s) for pair, s in zip(ops("w"), started, strict=True)]

    one = SimulatedExecutor(fleet, tmp_path / "one.sqlite", time_scale=0.01)
    many = SimulatedExecutor(fleet, tmp_path / "many.sqlite", time_scale=0.01)
    expected, got = run(singles(one)), run(batched(many))

    def comparable(answer: object) -> object:
        if isinstance(answer, Exception):
            return (type(answer), str(answer))
        assert isinstance(answer, InstallResult)
        return (answer.instance_id, answer.status, answer.changed, answer.rebooted, answer.message)

    assert [comparable(a) for a in got] == [comparable(a) for a in expected]
    assert {comparable(a)[1] for a in got if not isinstance(a, Exception)} >= {
        "succeeded",
        "failed",
        "undeliverable",
    }
    assert isinstance(got[-1], NotFoundError)  # i-nope: its own answer, the others went on
    strip = [{k: v for k, v in i.items() if k != "state_path"} for i in one.status()["instances"]]
    assert strip == [{k: v for k, v in i.items() if k != "state_path"} for i in many.status()["instances"]]

    # Idempotent per operation id, like the single calls: the batch again installs nothing more...
    again = run(many.start_installs(ops("w"), patches))
    assert [comparable(a) for a in again] == [comparable(a) for a in got]
    assert counts(many, "i-deb") == (1, 0)
    # ...and an id reused for another request is refused for that entry alone.
    reused = run(many.start_installs([("i-rpm", "w/i-deb"), ("i-deb", "w2/i-deb")], OPENSSL_FIX))
    assert isinstance(reused[0], ValueError) and "already used" in str(reused[0]) and reused[1] is None
    assert isinstance(run(many.finish_installs([("i-deb", "never")]))[0], OperationNotStartedError)

    # Zero simulated time: the batch's send completes (and records) the install and answers its result, which
    # the wait — or a single finish_install — then finds; no second install runs.
    instant = SimulatedExecutor(fleet, tmp_path / "instant.sqlite", time_scale=0.0)
    sent = run(instant.start_installs([("i-deb", "z"), ("i-fail", "zf")], OPENSSL_FIX))
    assert [r.status if isinstance(r, InstallResult) else r for r in sent] == ["succeeded", "failed"]
    assert run(instant.finish_install("i-deb", operation_id="z")) == sent[0]
    assert run(instant.finish_installs([("i-deb", "z")])) == [sent[0]]
    assert counts(instant, "i-deb") == (1, 0)


def test_a_batch_completes_each_install_when_its_own_time_is_up(tmp_path: Path) -> None:
    """One ``finish_installs`` over a 0.2 s and a 2 s install: the short one is completed (and its instance
    patched, visible to other readers) while the long one still runs — not when the batch's last one ends."""
    text = """\
name: times
instances:
  - {id: i-short, platform: {family: deb}, installed: [{name: openssl, arch: amd64, version: 3.0.2-0ubuntu1.10}],
     behaviour: {duration_seconds: 0.2}}
  - {id: i-long, platform: {family: deb}, installed: [{name: openssl, arch: amd64, version: 3.0.2-0ubuntu1.10}],
     behaviour: {duration_seconds: 2.0}}
"""
    fleet = load_fleet(write_fleet(tmp_path, text))
    state = tmp_path / "state.sqlite"
    executor = SimulatedExecutor(fleet, state)
    pairs = [("i-long", "op-long"), ("i-short", "op-short")]

    async def scenario() -> tuple[list[InstallResult | Exception], dict[str, str], float]:
        assert await executor.start_installs(pairs, OPENSSL_FIX) == [None, None]
        begin = time.monotonic()
        waiting = asyncio.create_task(executor.finish_installs(pairs))
        await asyncio.sleep(1.0)
        # An observer that never settles anything: what the batch itself has written by now.
        conn = sqlite3.connect(state, timeout=10)
        try:
            done = dict(conn.execute("SELECT instance_id, status FROM operations").fetchall())
        finally:
            conn.close()
        results = await waiting
        return results, done, time.monotonic() - begin

    results, done_after_1s, elapsed = run(scenario())
    assert done_after_1s == {"i-short": "done", "i-long": "running"}
    assert [r.status for r in results if isinstance(r, InstallResult)] == ["succeeded", "succeeded"]
    assert elapsed >= 1.9  # the long one was waited for, not cut short
    assert counts(executor, "i-short") == (1, 0) and counts(executor, "i-long") == (1, 0)


def test_a_state_file_replaced_under_the_same_name_is_reopened(tmp_path: Path, fleet: Fleet) -> None:
    """Connections are kept per thread (closing the last one of a WAL database checkpoints it): one kept open on
    a file that was since removed and created anew must not go on writing into the removed file."""
    state = tmp_path / "state.sqlite"
    executor = SimulatedExecutor(fleet, state)
    run(executor.install("i-deb", OPENSSL_FIX, operation_id="op"))
    assert counts(executor, "i-deb") == (1, 0)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{state}{suffix}").unlink(missing_ok=True)
    fresh = SimulatedExecutor(fleet, state)
    assert counts(fresh, "i-deb") == (0, 0)  # a new, empty state file
    # ``counts`` reads in this thread, on the connection the old object kept: it must see the new file.
    assert counts(executor, "i-deb") == (0, 0)
    run(executor.install("i-deb", OPENSSL_FIX, operation_id="op-2"))
    assert counts(fresh, "i-deb") == (1, 0)


def test_instances_of_one_image_share_their_read_only_parts(tmp_path: Path) -> None:
    """Issue 17 item 2: every worker loads the fleet, so equal tags, package lists, packages and behaviours are
    one object each (a 100,000-instance fleet file: 342 → 290 MiB of worker RSS); different values never are."""
    text = """\
seed: 3
instances:
  - {id: i-a, tags: {"Patch Group": web}, platform: {family: deb},
     installed: [{name: openssl, arch: amd64, version: 3.0.2-0ubuntu1.10}]}
  - {id: i-b, tags: {"Patch Group": web}, platform: {family: deb},
     installed: [{name: openssl, arch: amd64, version: 3.0.2-0ubuntu1.10}]}
  - {id: i-c, tags: {"Patch Group": db}, platform: {family: deb},
     installed: [{name: openssl, arch: amd64, version: 3.0.2-0ubuntu1.11}]}
generate:
  - {count: 3, id_prefix: i-0g, tags: {"Patch Group": web}, platform: {family: deb},
     installed: [{name: openssl, arch: amd64, version: 3.0.2-0ubuntu1.10}]}
"""
    by_id = {i.id: i for i in load_fleet(write_fleet(tmp_path, text)).instances}
    a, b, c = by_id["i-a"], by_id["i-b"], by_id["i-c"]
    generated = [i for i in by_id.values() if i.id.startswith("i-0g")]
    for other in (b, *generated):
        assert other.tags is a.tags and other.installed is a.installed and other.behaviour is a.behaviour
    assert c.tags == {"Patch Group": "db"} and c.tags is not a.tags
    assert (
        c.installed == [Package("openssl", "amd64", "3.0.2-0ubuntu1.11")] and c.installed is not a.installed
    )
    assert a.patch_group == "web" and c.patch_group == "db"
