#!/usr/bin/env python
"""Hundreds of neighbours on a 2-core machine: a newcomer's mingle against N answerers.

A real ``celery worker`` newcomer (stock Celery Mingle, or this package's fast profile)
starts against N neighbours that are *lightweight answerers*: a few processes
(``--procs``), each holding N/procs neighbours. What is real and what is not:

- real: the broker (Redis), one broker channel per neighbour (its own pidbox queue and
  its own pub/sub subscription, so the hello's PUBLISH counts N receivers), kombu's
  pidbox ``Node`` of each neighbour, Celery's own control handlers (``Panel.data``)
  with this package's answering code installed on each node exactly as the worker's
  bootstep installs it (``install_handlers``: the checked ``hello``, the digests kept
  per change of the revoked set, the ages, the ``mingle`` reply block), and the newcomer, a whole
  ``celery worker`` process measured from process start to ``ready.``;
- not real: the neighbours are not whole workers (no task consumer, no event loop, no
  heartbeat); the neighbours of one process share Celery's process-global revoked set
  (``celery.worker.state.revoked``), so all N hold the same R ids, as in
  ``mingle_bench.py``, and the same digest tree (made once per process and change, where
  N real workers would each keep their own); and the neighbours of one process answer one after another on
  one core, where N real workers would each have their own process (so the time until
  the last reply is an upper bound of a real fleet's on this machine).

For each N in ``--neighbours`` and each variant, the newcomer is started ``--repeat``
times (interleaved), under a new node name each time. Reported per cell (min/median/max):
newcomer start to ``ready.`` (what the user waits for), the mingle window (first to last
``mingle:`` line), TCP bytes the newcomer received during the mingle, the newcomer's CPU
time from start to ``ready.``, and how many neighbours it heard ("heard" column, every
newcomer that heard fewer than N is marked ``!``, stock too). The fast/stock ratio of
the medians is printed beside, and the fast profile's ratio to its own N=1 figure (the
issue's target: 512 x 50,000 at most 3x 1 x 50,000).

    python benchmarks/many_neighbours.py --quick                       # N=1,32, R=1000, 1 repeat
    python benchmarks/many_neighbours.py --neighbours 1,128,256,512 --revoked 50000 --repeat 3 \\
        --json /tmp/many.json

Redis only: on RabbitMQ the fast profile counts neighbours through the presence queue,
which the lightweight answerers do not join.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from mingle_bench import LOG_LINE, Sampler, code_state, log_time, proc_cpu_ticks, summarise

from mingle_plugins.testkit import Cluster

CLK_TCK = os.sysconf("SC_CLK_TCK")
VARIANTS: dict[str, dict[str, Any]] = {
    "stock": {"stock": True},
    "fast": {"conf": {"mingle_profile": "fast"}},
}


# -- the answerers (a child process) ------------------------------------------


def answerer(config_path: str, names: Sequence[str], revoked: int, seed: int) -> int:
    """Serve ``names`` as neighbours on one kombu connection, one channel each, until killed."""
    from celery import Celery
    from celery.utils.collections import AttributeDict
    from celery.worker import control, state

    from mingle_plugins.answering.control import install_handlers
    from mingle_plugins.bootstep import Mingle
    from mingle_plugins.wire.compat import CONTROL_STEP

    config = json.loads(Path(config_path).read_text())
    app = Celery("answerers", set_as_current=False)
    app.conf.update({k: v for k, v in config.items() if k != "worker_consumer"})
    rng = random.Random(seed)  # every process holds the same ids: N identical neighbours
    now = time.monotonic()
    for i in range(revoked):
        state.revoked.add(str(uuid.UUID(int=rng.getrandbits(128), version=4)), now - (revoked - i) * 0.01)
    conn = app.connection_for_write()
    conn.ensure_connection(max_retries=3)
    nodes = []
    for name in names:
        consumer = SimpleNamespace(
            app=app, hostname=name, controller=SimpleNamespace(state=state), connection=conn, hub=None
        )
        node = app.control.mailbox.Node(
            name,
            handlers=dict(control.Panel.data),
            state=AttributeDict(app=app, hostname=name, consumer=consumer, tset=set),
            channel=conn.channel(),
        )
        step = Mingle(consumer)
        parent = SimpleNamespace(
            blueprint=SimpleNamespace(steps={CONTROL_STEP: SimpleNamespace(box=SimpleNamespace(node=node))})
        )
        install_handlers(parent, step)
        node.listen()
        nodes.append(node)
    print(f"listening {len(nodes)}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        try:
            conn.drain_events(timeout=1)
        except TimeoutError:
            continue
        except OSError as exc:  # socket.timeout is an OSError too
            if "timed out" in str(exc):
                continue
            raise


class Answerers:
    """``n`` neighbours in ``procs`` child processes."""

    def __init__(self, config_path: Path, n: int, revoked: int, procs: int, seed: int) -> None:
        self.n = n
        self.children: list[subprocess.Popen[str]] = []
        names = [f"nb{i + 1}@many" for i in range(n)]
        for p in range(min(procs, n)):
            share = names[p::procs]
            self.children.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        __file__,
                        "--answerer",
                        str(config_path),
                        "--names",
                        ",".join(share),
                        "--revoked",
                        str(revoked),
                        "--seed",
                        str(seed),
                    ],
                    stdout=subprocess.PIPE,
                    text=True,
                    start_new_session=True,
                )
            )
        for child in self.children:
            line = child.stdout.readline() if child.stdout else ""
            if not line.startswith("listening"):
                self.close()
                raise RuntimeError(f"an answerer process did not start (exit {child.poll()})")

    def wait_idle(self, quiet: float = 0.5, limit: float = 600.0) -> float:
        """Wait until no answerer process used CPU for ``quiet`` seconds (replies to a newcomer
        that is gone are still being sent); return the seconds waited."""
        started = time.monotonic()
        last, still_since = -1, time.monotonic()
        while time.monotonic() - started < limit:
            ticks = sum(proc_cpu_ticks(c.pid) for c in self.children)
            if ticks != last:
                last, still_since = ticks, time.monotonic()
            elif time.monotonic() - still_since >= quiet:
                break
            time.sleep(0.1)
        return time.monotonic() - started

    def close(self) -> None:
        for child in self.children:
            if child.poll() is None:
                os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        self.children.clear()


# -- one newcomer --------------------------------------------------------------


@dataclass
class Result:
    neighbours: int
    revoked: int
    variant: str
    start_to_ready_ms: float
    mingle_ms: float
    rx_bytes: int
    cpu_ms: float  # utime+stime of the newcomer from process start to ``ready.`` (10 ms ticks)
    heard: int


def ready_time(path: Path) -> float | None:
    for line in path.read_text(errors="replace").splitlines():
        m = LOG_LINE.match(line)
        if m and re.search(r"\bready\.", m["msg"]):
            return log_time(line)
    return None


@dataclass
class Measured:
    """One newcomer, from process start to ``ready.``."""

    start_to_ready_ms: float
    mingle_ms: float  # first to last ``mingle:`` line
    rx_bytes: int  # TCP bytes received in the mingle window
    cpu_ms: float  # utime+stime from process start to ``ready.`` (10 ms ticks)
    heard: int  # N of "mingle: sync with N nodes"


def measure(cluster: Cluster, name: str, timeout: float = 180, **start: Any) -> Measured:
    """Start a newcomer (``start``: keywords of :meth:`Cluster.start`), measure it, kill it."""
    started = time.time()
    worker = cluster.start(name, wait=False, **start)
    sampler = Sampler(worker, 0.002)
    sampler.start()
    try:
        if not sampler.ready.wait(timeout):
            worker.wait_ready(1)
            raise RuntimeError(f"{name}: ready, but its log was not sampled ({sampler.error})")
        cpu_ms = proc_cpu_ticks(worker.pid) * 1000 / CLK_TCK
        sampler.join(5)
        wall_ms, rx, _rchar, _cpu, heard, _lag = summarise(sampler)
        ready = ready_time(worker.log_path) or time.time()
        return Measured((ready - started) * 1000, wall_ms, rx, cpu_ms, heard)
    finally:
        sampler.stop_flag.set()
        cluster.stop_node(name, signal.SIGKILL)
        worker.log_path.unlink(missing_ok=True)
        worker.out_path.unlink(missing_ok=True)


def newcomer(cluster: Cluster, variant: str, n: int, revoked: int) -> Result:
    m = measure(cluster, f"new-{variant}-{uuid.uuid4().hex[:6]}@many", **VARIANTS[variant])
    return Result(n, revoked, variant, m.start_to_ready_ms, m.mingle_ms, m.rx_bytes, m.cpu_ms, m.heard)


# -- the report ------------------------------------------------------------------


def mmm(values: Sequence[float], scale: float = 1.0, digits: int = 0) -> str:
    if not values:
        return "-"
    lo, med, hi = min(values) / scale, statistics.median(values) / scale, max(values) / scale
    return f"{lo:.{digits}f} / {med:.{digits}f} / {hi:.{digits}f}"


def report(results: Sequence[Result]) -> str:
    out = [
        "| N | R | variant | start to ready ms (min/med/max) | mingle ms | rx KiB | newcomer cpu ms "
        "| heard |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cells = sorted({(r.neighbours, r.revoked) for r in results})
    medians: dict[tuple[int, int, str], float] = {}
    for n, rv in cells:
        for variant in VARIANTS:
            rs = [r for r in results if (r.neighbours, r.revoked, r.variant) == (n, rv, variant)]
            if not rs:
                continue
            medians[(n, rv, variant)] = statistics.median(r.start_to_ready_ms for r in rs)
            heard = ", ".join(f"{r.heard}{'!' if r.heard < n else ''}" for r in rs)
            out.append(
                f"| {n} | {rv} | {variant} | {mmm([r.start_to_ready_ms for r in rs])} "
                f"| {mmm([r.mingle_ms for r in rs])} | {mmm([r.rx_bytes for r in rs], 1024, 1)} "
                f"| {mmm([r.cpu_ms for r in rs])} | {heard} |"
            )
    out += [
        "",
        "| N | R | fast / stock (median start to ready) | fast / fast at the smallest N |",
        "|---|---|---|---|",
    ]
    for n, rv in cells:
        fast, stock = medians.get((n, rv, "fast")), medians.get((n, rv, "stock"))
        base_n = min(c[0] for c in cells if c[1] == rv)
        base = medians.get((base_n, rv, "fast"))
        ratio = f"{fast / stock:.2f}" if fast and stock else "-"
        flat = f"{fast / base:.2f} (vs N={base_n})" if fast and base else "-"
        out.append(f"| {n} | {rv} | {ratio} | {flat} |")
    out.append("")
    out.append("`!`: the newcomer heard fewer neighbours than were answering.")
    return "\n".join(out)


# -- main ------------------------------------------------------------------------


def free_redis_db() -> int:
    """A Redis DB (1-15) claimed for this run as the tests claim theirs (the machine's Redis is
    shared; waited for while every one is taken); the run's ``FLUSHDB`` at the end releases it."""
    import benchlib

    claimed = benchlib.claim_redis(range(1, 16))
    if claimed is None:
        raise RuntimeError("no Redis DB among 1-15 came free")
    db, client, _ = claimed
    client.close()
    return db


def drop_reply_queues(db: int) -> None:
    """Delete the replies that no newcomer will read (a stock newcomer gives up after 1 s while
    hundreds of full lists are still on their way: gigabytes in a shared Redis)."""
    import redis

    r = redis.Redis(host="127.0.0.1", port=6379, db=db)
    for key in r.scan_iter(match="*reply.*pidbox*", count=1000):
        r.delete(key)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x]

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--neighbours", type=ints, default=[1, 128, 256, 512])
    p.add_argument("--revoked", type=int, default=50_000)
    p.add_argument("--variants", type=lambda s: s.split(","), default=list(VARIANTS))
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--procs", type=int, default=2, help="answerer processes (default 2, one per core)")
    p.add_argument("--json", type=Path, help="write every measurement here")
    p.add_argument("--quick", action="store_true", help="N=1,32, R=1000, 1 repeat")
    p.add_argument("--answerer", help=argparse.SUPPRESS)
    p.add_argument("--names", help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.neighbours, args.revoked, args.repeat = [1, 32], 1000, 1
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variants: {', '.join(sorted(unknown))} (known: {', '.join(VARIANTS)})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.answerer:
        return answerer(args.answerer, args.names.split(","), args.revoked, args.seed)
    import benchlib

    print(f"# {benchlib.compile_checkout()}", file=sys.stderr)
    db = free_redis_db()
    url = f"redis://127.0.0.1:6379/{db}"
    results: list[Result] = []
    print(f"# {code_state()}; Redis DB {db}; {args.procs} answerer processes", file=sys.stderr)
    with tempfile.TemporaryDirectory(prefix="mingle-many-") as tmp:
        cluster = Cluster.create(Path(tmp), url, app="many_app")
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps(dict(cluster.config)))
        try:
            for n in args.neighbours:
                answerers = Answerers(config_path, n, args.revoked, args.procs, seed=db)
                try:
                    # Each neighbour makes its digest tree at the first digest request it gets
                    # (mingle_plugins.answering.own_set): one fast newcomer first, not counted, so that every
                    # measured one sees the steady state.
                    warm = newcomer(cluster, "fast", n, args.revoked)
                    answerers.wait_idle()
                    drop_reply_queues(db)
                    print(f"[N={n}] warm-up fast newcomer: {warm.start_to_ready_ms:.0f} ms", file=sys.stderr)
                    for rep in range(args.repeat):
                        for variant in args.variants:
                            r = newcomer(cluster, variant, n, args.revoked)
                            answerers.wait_idle()
                            drop_reply_queues(db)
                            results.append(r)
                            print(
                                f"[N={n} R={args.revoked} #{rep + 1}] {variant:5} start-to-ready "
                                f"{r.start_to_ready_ms:7.0f} ms mingle {r.mingle_ms:7.0f} ms "
                                f"rx {r.rx_bytes / 1024:9.1f} KiB cpu {r.cpu_ms:6.0f} ms heard {r.heard}",
                                file=sys.stderr,
                            )
                finally:
                    answerers.close()
        finally:
            cluster.close(grace=0)
            import redis

            redis.Redis(host="127.0.0.1", port=6379, db=db).flushdb()
    print(report(results))
    if args.json:
        args.json.write_text(
            json.dumps({"code": code_state(), "results": [asdict(r) for r in results]}, indent=1)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
