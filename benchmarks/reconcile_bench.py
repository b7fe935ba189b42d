#!/usr/bin/env python
"""A restarted worker that holds most ids: set reconciliation against the full list, on real workers.

N fast-profile neighbours hold R revoked ids (real ``celery worker`` processes, Redis, its own
random DB). A worker with a state db was stopped when R - M of them were revoked, so its
state db holds all but M. Newcomers start, interleaved, ``--repeat`` times each:

- ``missing M, reconciled``: a copy of that state db, ``mingle_reconcile = True`` (the default);
- ``missing M, full list``: the same copy, ``mingle_reconcile = False`` (this package before
  reconciliation: the one full list of the fast profile);
- ``missing all, ...``: no state db (a new worker);
- with ``--baseline-python``, ``baseline fast``: the fast profile of an earlier release installed
  in another virtualenv (0.1.0, before reconciliation), with the same copy.

Measured per newcomer (see benchmarks/README.md for how): the mingle window (first to last
``mingle:`` log line), the TCP bytes it received in that window, and process start to ``ready.``.
Ratios are of medians, against the ``full list`` variant of the same case, in the same run.

    python benchmarks/reconcile_bench.py                       # N=1, R=50,000, M=10, 3 repeats
    python benchmarks/reconcile_bench.py --neighbours 8 --missing 10,1000 --json /tmp/rec.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
import tempfile
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from many_neighbours import free_redis_db, measure, mmm
from mingle_bench import code_state

from mingle_plugins.testkit import Cluster

FAST = {"mingle_profile": "fast"}


@dataclass
class Result:
    neighbours: int
    revoked: int
    missing: int | None  # None: the newcomer holds nothing
    variant: str  # a key of VARIANTS
    mingle_ms: float
    rx_bytes: int
    start_to_ready_ms: float
    heard: int


def copy_statedb(source: Path, target: Path) -> None:
    """Copy a shelve (one file or several, by the dbm in use) under a new name."""
    for path in source.parent.glob(source.name + "*"):
        shutil.copy(path, target.parent / (target.name + path.name[len(source.name) :]))


#: The variants: the settings of the newcomer, and whether it runs the ``--baseline-python``.
VARIANTS: dict[str, tuple[dict[str, Any], bool]] = {
    "reconciled": ({**FAST, "mingle_reconcile": True}, False),
    "full list": ({**FAST, "mingle_reconcile": False}, False),
    "baseline fast": (FAST, True),
}


def newcomer(
    cluster: Cluster,
    n: int,
    revoked: int,
    missing: int | None,
    variant: str,
    statedb: Path | None,
    baseline: str | None,
) -> Result:
    conf, old = VARIANTS[variant]
    start: dict[str, Any] = {"conf": conf, "statedb": statedb}
    if old:
        start["python"] = baseline
    m = measure(cluster, f"new-{uuid.uuid4().hex[:6]}@rec", timeout=120, **start)
    return Result(n, revoked, missing, variant, m.mingle_ms, m.rx_bytes, m.start_to_ready_ms, m.heard)


def report(results: Sequence[Result]) -> str:
    out = [
        "| N | R | newcomer holds | variant | mingle ms (min/med/max) | rx KiB | start to ready ms | heard |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cases = sorted({(r.neighbours, r.revoked, r.missing or 0) for r in results})
    ratios = ["", "| N | R | newcomer holds | against | rx: reconciled / it | mingle: reconciled / it |"]
    ratios.append("|---|---|---|---|---|---|")
    for n, rv, missing in cases:
        held = f"all but {missing}" if missing else "nothing"
        med: dict[str, tuple[float, float]] = {}
        for variant in VARIANTS:
            rs = [
                r
                for r in results
                if (r.neighbours, r.revoked, r.missing or 0, r.variant) == (n, rv, missing, variant)
            ]
            if not rs:
                continue
            med[variant] = (
                statistics.median(r.rx_bytes for r in rs),
                statistics.median(r.mingle_ms for r in rs),
            )
            heard = ", ".join(f"{r.heard}{'!' if r.heard < n else ''}" for r in rs)
            out.append(
                f"| {n} | {rv} | {held} | {variant} | {mmm([r.mingle_ms for r in rs])} "
                f"| {mmm([r.rx_bytes for r in rs], 1024, 1)} | {mmm([r.start_to_ready_ms for r in rs])} "
                f"| {heard} |"
            )
        for base in ("full list", "baseline fast"):
            if "reconciled" in med and base in med:
                (rx_r, ms_r), (rx_b, ms_b) = med["reconciled"], med[base]
                ratios.append(f"| {n} | {rv} | {held} | {base} | {rx_r / rx_b:.4f} | {ms_r / ms_b:.2f} |")
    return "\n".join(out + ratios + ["", "`!`: heard fewer neighbours than were started."])


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--neighbours", type=int, default=1)
    p.add_argument("--revoked", type=int, default=50_000)
    p.add_argument("--missing", type=ints, default=[10])
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--json", type=Path)
    p.add_argument(
        "--baseline-python",
        help="the interpreter of a virtualenv with an earlier release (e.g. 0.1.0): its fast "
        "profile is the variant 'baseline fast' (the same neighbours, the same state db)",
    )
    p.add_argument("--quick", action="store_true", help="R=5,000, 1 repeat")
    args = p.parse_args(argv)
    if args.quick:
        args.revoked, args.repeat = 5000, 1
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import benchlib

    print(f"# {benchlib.compile_checkout()}", file=sys.stderr)
    db = free_redis_db()
    results: list[Result] = []
    print(f"# {code_state()}; Redis DB {db}", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="mingle-rec-") as tmp:
        root = Path(tmp)
        cluster = Cluster.create(root / "app", f"redis://127.0.0.1:6379/{db}", app="rec_app")
        try:
            for i in range(args.neighbours):
                cluster.start(f"nb{i + 1}@rec", conf=FAST, timeout=60)
            # One state db per M: a worker stopped when R - M ids were revoked.
            ids = [str(uuid.uuid4()) for _ in range(args.revoked)]
            statedbs: dict[int, Path] = {}
            given = 0
            for missing in sorted(args.missing, reverse=True):
                upto = args.revoked - missing
                holder = f"holder{missing}@rec"
                statedbs[missing] = root / f"holder{missing}.state"
                cluster.start(holder, conf=FAST, statedb=statedbs[missing], timeout=60)
                cluster.revoke(ids[given:upto], timeout=300)
                given = upto
                if not set(ids[:upto]) <= cluster.revoked(holder, timeout=10):
                    raise RuntimeError(f"{holder} does not hold the {upto} ids")
                cluster.stop_node(holder)  # warm shutdown: its state db keeps them
            cluster.revoke(ids[given:], timeout=300)
            variants = [v for v in VARIANTS if args.baseline_python or not VARIANTS[v][1]]
            plan: list[tuple[int | None, str]] = []
            for missing in [*args.missing, None]:
                plan += [(missing, v) for v in variants]
            for rep in range(args.repeat):
                random.shuffle(plan)
                for missing, variant in plan:
                    statedb = None
                    if missing is not None:
                        statedb = root / f"copy-{uuid.uuid4().hex[:6]}.state"
                        copy_statedb(statedbs[missing], statedb)
                    r = newcomer(
                        cluster,
                        args.neighbours,
                        args.revoked,
                        missing,
                        variant,
                        statedb,
                        args.baseline_python,
                    )
                    results.append(r)
                    print(
                        f"[#{rep + 1}] holds {'all but ' + str(missing) if missing else 'nothing':14} "
                        f"{r.variant:10} mingle {r.mingle_ms:6.0f} ms rx {r.rx_bytes / 1024:8.1f} KiB "
                        f"start-to-ready {r.start_to_ready_ms:6.0f} ms heard {r.heard}",
                        file=sys.stderr,
                    )
        finally:
            cluster.close(grace=0)
            import redis

            redis.Redis(host="127.0.0.1", port=6379, db=db).flushdb()
    print(report(results))
    if args.json:
        payload: dict[str, Any] = {"code": code_state(), "results": [asdict(r) for r in results]}
        args.json.write_text(json.dumps(payload, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
