#!/usr/bin/env python
"""Peak memory of this package's default worker against a stock worker, in the same run.

Per R of ``--revoked``, one cluster per variant (``stock``: no ``worker_consumer``; ``default``:
this package with no setting) on its own Redis database or RabbitMQ virtual host, each with
``--neighbours`` neighbours holding R revoked ids (the same ids in both). Then ``--repeat``
newcomers per variant, alternately (stock, default, default, stock, ...), each ``celery worker
-P solo`` started under a new node name and SIGKILLed after its measurement:

- ``hwm@ready`` / ``rss@ready``: the newcomer's ``VmHWM`` / ``VmRSS`` (``/proc/<pid>/status``)
  read as soon as its log file has the ``ready.`` line (polled every 5 ms);
- ``hwm``: its ``VmHWM`` once it and its neighbours use no CPU (the answers it took after
  ``ready.`` included);
- ``neighbour hwm``: the largest ``VmHWM`` of the neighbours, reset to their RSS
  (``/proc/<pid>/clear_refs``) before the newcomer starts: the peak of answering its hello.

It prints each variant's median (min-max) in MiB and the ratio of the medians default / stock.

**Compiled or not.** pip compiles the modules it installs (Celery's, kombu's: their ``.pyc``
files are there), but an editable install of this checkout has none, and with
``PYTHONDONTWRITEBYTECODE=1`` (set on this machine) Python never writes them: every worker of
this package then compiles it from source at each start, whose temporary peak stays in
``VmHWM`` (~0.5 MiB on top of stock at R = 0 in the test virtualenv, ~1.2 MiB in one with this
package alone). ``--compile`` writes the ``.pyc`` files of the checkout's packages first
(``python -m compileall``, into the ``__pycache__`` folders git ignores): the package as a
wheel installs it. The header says which of the two was measured.

    python benchmarks/memory_bench.py                               # Redis, N = 1, R = 0, 7 newcomers each
    python benchmarks/memory_bench.py --revoked 0,50000 --repeat 5
    python benchmarks/memory_bench.py --neighbours 0 --repeat 9     # no neighbour: the start-up alone
    python benchmarks/memory_bench.py --compile                     # this package's .pyc files written first
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # from the directory of this script, inserted above
import judge  # the judge's clusters and /proc readers

VARIANTS = ("stock", "default")
READY = re.compile(rb"@\S+ ready\.")
log = benchlib.log


@dataclass
class Sample:
    broker: str
    neighbours: int
    revoked: int
    variant: str
    repeat: int
    hwm_ready_kb: int
    rss_ready_kb: int
    hwm_kb: int
    neighbour_hwm_kb: int


def measure(bench: judge.ClusterBench, rep: int, revoked: int) -> Sample:
    """One newcomer of ``bench``'s variant: its memory at ``ready.`` and once quiet."""
    name = f"mem-{bench.variant}-{uuid.uuid4().hex[:6]}-{bench.run_tag}@memory"
    pids = [w.pid for w in bench.neighbours]
    for pid in pids:
        judge.reset_hwm(pid)
    worker = bench.cluster.start(name, wait=False)
    try:
        deadline = time.monotonic() + 180
        hwm_ready = rss_ready = None
        while hwm_ready is None:
            try:
                text = worker.log_path.read_bytes()
            except OSError:
                text = b""
            if READY.search(text):
                hwm_ready = judge.proc_field_kb(worker.pid, "VmHWM") or 0
                rss_ready = judge.proc_field_kb(worker.pid, "VmRSS") or 0
                break
            if worker.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not get ready:\n{worker.tail()}")
            time.sleep(0.005)
        judge.wait_quiet([worker.pid, *pids])
        return Sample(
            broker=bench.broker,
            neighbours=len(pids),
            revoked=revoked,
            variant=bench.variant,
            repeat=rep,
            hwm_ready_kb=hwm_ready,
            rss_ready_kb=rss_ready or 0,
            hwm_kb=judge.proc_field_kb(worker.pid, "VmHWM") or 0,
            neighbour_hwm_kb=max((judge.proc_field_kb(p, "VmHWM") or 0 for p in pids), default=0),
        )
    finally:
        bench.cluster.stop_node(name, signal.SIGKILL)
        worker.log_path.unlink(missing_ok=True)
        worker.out_path.unlink(missing_ok=True)


def run_broker(broker: str, root: Path, args: argparse.Namespace, out: list[Sample]) -> None:
    taken: set[int] = set()
    run_tag = uuid.uuid4().hex[:8]
    benches: list[judge.ClusterBench] = []
    try:
        for variant in args.variants:
            benches.append(judge.ClusterBench(broker, variant, root, args.python, taken, run_tag))
            log(f"cluster {benches[-1].describe()}")
        for b in benches:
            b.set_neighbours(args.neighbours)
        held = 0
        for r in sorted(args.revoked):
            if r > held:
                ids = [str(uuid.uuid4()) for _ in range(r - held)]
                log(f"{broker}: revoking {len(ids)} ids on the neighbours of each cluster")
                for b in benches:
                    b.revoke(ids)
                held = r
            for rep in range(args.repeat):
                order = benches if rep % 2 == 0 else benches[::-1]
                for b in order:
                    s = measure(b, rep, r)
                    out.append(s)
                    log(
                        f"{broker} N={s.neighbours} R={r} #{rep + 1} {s.variant:7} "
                        f"hwm@ready {s.hwm_ready_kb / 1024:6.2f} rss@ready {s.rss_ready_kb / 1024:6.2f} "
                        f"hwm {s.hwm_kb / 1024:6.2f} neighbour hwm {s.neighbour_hwm_kb / 1024:6.2f} MiB"
                    )
    finally:
        for b in benches:
            b.close()


FIELDS = (
    ("hwm_ready_kb", "hwm@ready"),
    ("rss_ready_kb", "rss@ready"),
    ("hwm_kb", "hwm"),
    ("neighbour_hwm_kb", "neighbour hwm"),
)


def _median(values: Sequence[int]) -> float:
    return statistics.median(values) / 1024 if values else 0.0


def report(samples: Sequence[Sample], variants: Sequence[str]) -> str:
    rows = [
        "MiB, median (min-max) over the newcomers of each variant; ratio = median default / median stock",
        "",
        "| broker | N | R | measure | " + " | ".join(variants) + " | ratio | default - stock |",
        "|---|---|---|---|" + "---|" * len(variants) + "---|---|",
    ]
    cells = sorted({(s.broker, s.neighbours, s.revoked) for s in samples})
    for broker, n, r in cells:
        for attr, label in FIELDS:
            if attr == "neighbour_hwm_kb" and n == 0:
                continue
            cols, med = [], {}
            for v in variants:
                vals = [
                    getattr(s, attr)
                    for s in samples
                    if (s.broker, s.neighbours, s.revoked, s.variant) == (broker, n, r, v)
                ]
                med[v] = _median(vals)
                cols.append(f"{med[v]:.2f} ({min(vals) / 1024:.2f}-{max(vals) / 1024:.2f})" if vals else "-")
            ratio = f"{med['default'] / med['stock']:.3f}" if med.get("stock") and "default" in med else "-"
            diff = f"{med['default'] - med['stock']:+.2f}" if med.get("stock") and "default" in med else "-"
            rows.append(
                f"| {broker} | {n} | {r:,} | {label} | " + " | ".join(cols) + f" | {ratio} | {diff} |"
            )
    return "\n".join(rows)


#: The checkout's package folders (this package, its transports and plugins), from its top folder.
CHECKOUT_PACKAGES = ("mingle_plugins", "transports", "plugins")


def compile_checkout(python: str) -> str:
    """``python -m compileall`` over the checkout's packages; what was done, for the header."""
    top = Path(__file__).resolve().parent.parent
    folders = [str(top / name) for name in CHECKOUT_PACKAGES if (top / name).is_dir()]
    subprocess.run([python, "-m", "compileall", "-q", *folders], check=True, stdout=subprocess.DEVNULL)
    return f"compiled first (python -m compileall {', '.join(CHECKOUT_PACKAGES)})"


def bytecode_state(python: str) -> str:
    """Whether the workers' ``mingle_plugins`` loads from ``.pyc`` files or compiles its source."""
    probe = (
        "import importlib.util, os, mingle_plugins.bootstep as m; "
        "c = importlib.util.cache_from_source(m.__file__); "
        "print(int(os.path.exists(c) and os.path.getmtime(c) >= os.path.getmtime(m.__file__)))"
    )
    fresh = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.strip() == "1"
    if fresh:
        return "this package's .pyc files are there (as a wheel installs them)"
    unwritten = " and PYTHONDONTWRITEBYTECODE is set" if os.environ.get("PYTHONDONTWRITEBYTECODE") else ""
    return f"no .pyc files of this package{unwritten}: its workers compile it from source (see --compile)"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    benchlib.add_common_options(
        p, brokers="redis", variants=VARIANTS, repeat=7, repeat_help="newcomers per variant and cell"
    )
    p.add_argument("--neighbours", type=int, default=1, help="neighbours of each cluster (0: none)")
    p.add_argument("--revoked", default="0", help="comma-separated revoked-id counts held by the neighbours")
    p.add_argument("--compile", action="store_true", help="write the .pyc files of the checkout first")
    args = p.parse_args(argv)
    benchlib.check_common_options(p, args, VARIANTS)
    args.revoked = benchlib.ints(args.revoked)
    if args.neighbours < 0 or not args.revoked or min(args.revoked) < 0:
        p.error("--neighbours >= 0, --revoked >= 0")
    if args.neighbours == 0 and max(args.revoked) > 0:
        p.error("revoked ids need a neighbour to hold them")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    samples: list[Sample] = []
    if args.compile:
        log(compile_checkout(args.python))
    bytecode = bytecode_state(args.python)
    with tempfile.TemporaryDirectory(prefix="mingle-memory-") as tmp:
        for broker in args.brokers:
            run_broker(broker, Path(tmp), args, samples)
    print(benchlib.code_state())
    print(f"workers: {args.python}; {bytecode}")
    print()
    print(report(samples, args.variants))
    if args.json:
        args.json.write_text(json.dumps([asdict(s) for s in samples], indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
