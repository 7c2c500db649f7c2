"""Throughput of deb/rpm version comparison: patchflow vs univers vs the C libraries (apt_pkg, librpm).

A fleet repeats a few thousand distinct versions endlessly, so the workload is 1,000,000 comparisons drawn
Zipf-like from a pool of ~5,000 realistic versions per family (the fixture generator's distribution), 80 %
of pairs being two versions of the same package (neighbours in an upgrade chain). Every implementation
compares the same pairs, each inside a plain Python ``for`` loop, so the loop overhead is shared.

Measured:

* patchflow ``compare``: warm cache (all keys built), cold cache (cache emptied first: one 1M pass that
  builds ~10k keys on the way) and uncached (cache emptied before *every* comparison, the no-repetition
  worst case; a sample, extrapolated);
* univers ``DebianVersion`` / ``RpmVersion``: parse both strings and make a three-way comparison (a sample,
  extrapolated: it is too slow for 1M in reasonable time);
* ``apt_pkg.version_compare`` and ``rpm.labelCompare`` under Debian's ``/usr/bin/python3`` on the same pairs
  (read from a temporary file); for rpm both on pre-split EVR tuples (labelCompare's own cost) and including
  the parseEVR split (what a caller holding strings pays).

Run: ``.venv/bin/python bench/versions_bench.py`` (``--help`` for sizes).
"""

from __future__ import annotations

import argparse
import bisect
import importlib.util
import itertools
import json
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

from patchflow.core import versions

ROOT = Path(__file__).resolve().parents[1]
GENERATOR = ROOT / "tests" / "fixtures" / "versions" / "generate.py"
SYSTEM_PYTHON = "/usr/bin/python3"

# Runs under /usr/bin/python3: argv = [pairs file, family]; prints JSON timings and a checksum of the signs.
ORACLE_SCRIPT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[3])
from generate import split_evr
path, family = sys.argv[1], sys.argv[2]
with open(path, encoding="ascii") as f:
    pairs = [tuple(line.rstrip("\n").split("\t")) for line in f]
out = {}
if family == "deb":
    import apt_pkg
    apt_pkg.init_system()
    vc = apt_pkg.version_compare
    t = time.perf_counter()
    for a, b in pairs:
        vc(a, b)
    out["apt_pkg.version_compare"] = time.perf_counter() - t
    signs = [vc(a, b) for a, b in pairs]
else:
    import rpm
    lc = rpm.labelCompare
    split = [(split_evr(a), split_evr(b)) for a, b in pairs]
    t = time.perf_counter()
    for a, b in split:
        lc(a, b)
    out["rpm.labelCompare (pre-split EVR)"] = time.perf_counter() - t
    t = time.perf_counter()
    for a, b in pairs:
        lc(split_evr(a), split_evr(b))
    out["rpm.labelCompare + parseEVR split"] = time.perf_counter() - t
    signs = [lc(a, b) for a, b in split]
signs = [(s > 0) - (s < 0) for s in signs]
out["checksum"] = sum(i * s for i, s in enumerate(signs))
print(json.dumps(out))
"""


def load_generator() -> ModuleType:
    """The oracle fixture generator (stdlib-only at import), reused for realistic versions."""
    spec = importlib.util.spec_from_file_location("versions_fixture_generator", GENERATOR)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fleet_pairs(
    pool: list[str], count: int, rng: random.Random, zipf_s: float = 1.1
) -> list[tuple[str, str]]:
    """Zipf-like pairs; most are two versions of one package (neighbours in the pool's upgrade chains)."""
    n = len(pool)
    rank_to_index = list(range(n))
    rng.shuffle(rank_to_index)  # popularity is unrelated to position in the pool
    cum = list(itertools.accumulate(1.0 / (rank + 1) ** zipf_s for rank in range(n)))
    total = cum[-1]

    def draw() -> int:
        return rank_to_index[bisect.bisect_left(cum, rng.random() * total)]

    pairs = []
    for _ in range(count):
        i = draw()
        j = min(n - 1, max(0, i + rng.randint(-3, 3))) if rng.random() < 0.8 else draw()
        pairs.append((pool[i], pool[j]))
    return pairs


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_patchflow(family: str, pairs: list[tuple[str, str]], sample: int) -> dict[str, float]:
    """Seconds per 1M-equivalent pass for warm, cold and uncached patchflow compare."""
    cmp = versions.compare

    def run(ps: list[tuple[str, str]]) -> None:
        for a, b in ps:
            cmp(family, a, b)

    def run_uncached(ps: list[tuple[str, str]]) -> None:
        clear = versions.clear_cache
        for a, b in ps:
            clear()
            cmp(family, a, b)

    versions.clear_cache()
    cold = timed(lambda: run(pairs))
    warm = min(timed(lambda: run(pairs)) for _ in range(3))
    uncached = timed(lambda: run_uncached(pairs[:sample])) * len(pairs) / sample
    versions.clear_cache()
    return {
        "patchflow compare, warm cache": warm,
        "patchflow compare, cold cache": cold,
        f"patchflow compare, no cache ({sample:,} timed, extrapolated)": uncached,
    }


def bench_univers(
    family: str, pairs: list[tuple[str, str]], sample: int
) -> tuple[dict[str, float], int, int]:
    """(timings, wrong answers, InvalidVersion errors) of univers on the first ``sample`` pairs."""
    try:
        from univers.versions import DebianVersion, RpmVersion
    except ImportError:
        print("univers is not installed (pip install -e '.[bench]'); skipping it", file=sys.stderr)
        return {}, 0, 0
    cls = DebianVersion if family == "deb" else RpmVersion
    subset = pairs[:sample]

    def run() -> None:
        for a, b in subset:
            x, y = cls(a), cls(b)
            (x > y) - (x < y)

    wrong = invalid = 0
    for a, b in subset[:20_000]:
        try:
            x, y = cls(a), cls(b)
        except Exception:  # univers raises its own InvalidVersion or ValueError
            invalid += 1
            continue
        wrong += ((x > y) - (x < y)) != versions.compare(family, a, b)
    if invalid:
        subset = [(a, b) for a, b in subset if _univers_ok(cls, a) and _univers_ok(cls, b)]
    seconds = timed(run) * len(pairs) / len(subset)
    return {f"univers {cls.__name__} ({len(subset):,} timed, extrapolated)": seconds}, wrong, invalid


def _univers_ok(cls: Callable[[str], object], v: str) -> bool:
    try:
        cls(v)
    except Exception:
        return False
    return True


def bench_oracle(family: str, pairs: list[tuple[str, str]]) -> dict[str, float]:
    """Timings of the C libraries under Debian's interpreter; checks they give patchflow's answers."""
    with tempfile.NamedTemporaryFile("w", encoding="ascii", suffix=".tsv") as f:
        f.writelines(f"{a}\t{b}\n" for a, b in pairs)
        f.flush()
        try:
            proc = subprocess.run(
                [SYSTEM_PYTHON, "-c", ORACLE_SCRIPT, f.name, family, str(GENERATOR.parent)],
                capture_output=True,
                text=True,
                check=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            print(
                f"{SYSTEM_PYTHON} with python3-apt/python3-rpm unavailable ({exc}); skipping", file=sys.stderr
            )
            return {}
    out = json.loads(proc.stdout)
    checksum = sum(i * versions.compare(family, a, b) for i, (a, b) in enumerate(pairs))
    if out.pop("checksum") != checksum:
        raise SystemExit(f"{family}: the C library and patchflow disagree on the benchmark pairs")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=1_000_000, help="comparisons per family")
    parser.add_argument("--pool", type=int, default=5_000, help="distinct versions per family")
    parser.add_argument("--sample", type=int, default=100_000, help="pairs timed for the slow variants")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    gen = load_generator()
    rng = random.Random(args.seed)
    print(
        f"Python {sys.version.split()[0]}; {args.pairs:,} comparisons per family from {args.pool:,} versions"
    )
    header = f"{'family':6}  {'implementation':58}  {'seconds/1M':>10}  {'cmp/s':>11}"
    print(header)
    print("-" * len(header))
    for family in versions.FAMILIES:
        pool = gen.version_pool(rng, family, args.pool)
        pairs = fleet_pairs(pool, args.pairs, rng)
        results = bench_patchflow(family, pairs, args.sample)
        univers_times, wrong, invalid = bench_univers(family, pairs, args.sample)
        results |= univers_times
        results |= bench_oracle(family, pairs)
        for name, seconds in results.items():
            per_million = seconds * 1_000_000 / args.pairs
            print(f"{family:6}  {name:58}  {per_million:10.3f}  {args.pairs / seconds:11,.0f}")
        warm = results["patchflow compare, warm cache"]
        for name, seconds in results.items():
            if name.startswith(("apt_pkg", "rpm.labelCompare", "univers")):
                print(f"{family:6}  speed ratio patchflow(warm) / {name}: {seconds / warm:.2f}")
        if univers_times:
            print(f"{family:6}  univers on 20,000 pairs: {wrong} wrong, {invalid} refused (InvalidVersion)")
        print()


if __name__ == "__main__":
    main()
