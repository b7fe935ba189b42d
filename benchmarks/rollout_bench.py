#!/usr/bin/env python
"""Benchmark a rollout: K newcomers started at once against N running neighbours holding R revoked ids.

Starts real ``celery worker`` processes (``-P solo``) on real brokers. Per broker it starts
N neighbours one by one (``mingle_profile = "fast"``, as ``mingle_bench.py`` does), revokes
R ids on them (``app.control.revoke`` in batches of 1000, every neighbour checked to hold
all of them), then for each K and variant starts K newcomers at the same moment (new node
names each round), waits until all are ready and the workers are quiet again, measures,
and kills the K newcomers (the neighbours stay). Variants:

- ``stock``: stock Celery Mingle (the stock consumer, ``MINGLE_TEST_STOCK=1``);
- ``fast``: this package with ``mingle_profile = "fast"``.

Measured per round (see ``benchmarks/README.md`` for the method and its error):

- wall: per newcomer, from its first ``mingle:`` log line to its last (log timestamps);
  the median and the max over the K newcomers;
- ids learned: per newcomer, how many of the R ids its ``inspect revoked`` lists (counted);
- hello waits: per newcomer and neighbour, from the newcomer's ``mingle: searching`` line to the
  neighbour's ``sync with <newcomer>`` line (a ``-P solo`` neighbour takes hellos one at a time);
- broker bytes: on Redis, ``INFO stats`` ``total_net_input_bytes + total_net_output_bytes``
  before the newcomers start and once the workers are quiet again (server wide); on both
  brokers, the TCP payload bytes sent and received by the workers' sockets over the same
  span (kernel ``tcp_info``, this benchmark's workers only);
- neighbours' CPU: utime+stime of the N neighbours over the same span (what answering cost).

Prints a Markdown table and one of stock/fast ratios.

    python benchmarks/rollout_bench.py                              # N=16, K=8,16, R=50000, Redis
    python benchmarks/rollout_bench.py --brokers redis,rabbitmq
    python benchmarks/rollout_bench.py --neighbours 2 --newcomers 2 --revoked 100    # seconds
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import signal
import socket
import statistics
import struct
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # from the directory of this script, inserted above
import mingle_bench as mb

from mingle_plugins.testkit import Worker

VARIANTS: tuple[str, ...] = ("stock", "fast")
#: How each variant's newcomers are started (keywords of ``mingle_plugins.testkit.Cluster.start``).
VARIANT_START: dict[str, dict[str, Any]] = {
    "stock": {"stock": True},
    "fast": {"conf": mb.FAST},
}
READY = re.compile(r"^\[[^]]*\] .*\bready\.", re.M)
#: ``mingle: sync with 16 nodes`` (stock counts the non-empty replies, this package the neighbours).
SYNC_WITH = re.compile(r"^mingle: sync with (\d+) nodes")

#: ``[2026-11-27 13:08:24,855: INFO/MainProcess] sync with roll-stock-6b78-8@bench``: a neighbour
#: takes a hello (stock's handler logs it before it builds the reply; this package's wraps it).
TOOK_HELLO = re.compile(r"^\[(?P<ts>[\d\- :]+,\d{3}): \w+/[\w-]+\] sync with (?P<node>\S+)$", re.M)
#: Stock's and this package's default ``mingle_hello_timeout``.
HELLO_TIMEOUT = 1.0

#: A round is over once, over one ``SETTLE_WINDOW``, the workers' sockets moved fewer than
#: ``SETTLE_BYTES`` and the workers used fewer than ``SETTLE_TICKS`` CPU ticks (all together).
SETTLE_WINDOW = 0.5
SETTLE_BYTES = 64 * 1024
SETTLE_TICKS = 10


# -- the bytes ---------------------------------------------------------------
# mingle_bench.tcp_bytes_received reads what a process received; a rollout needs what the
# workers sent too (what the broker received), for every TCP socket of ~32 processes: one
# NETLINK_SOCK_DIAG dump of all sockets, then the sockets of each process from /proc.
_TCPI_BYTES_ACKED = 120  # offset in struct tcp_info (Linux >= 4.1); bytes_received follows at 128


def tcp_counters() -> dict[int, tuple[int, int]]:
    """``{socket inode: (bytes sent and acked, bytes received)}`` of every TCP socket visible here."""
    found: dict[int, tuple[int, int]] = {}
    need = mb._TCPI_BYTES_RECEIVED + 8
    for family in (socket.AF_INET, socket.AF_INET6):
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, mb._NETLINK_SOCK_DIAG) as s:
            # struct inet_diag_req_v2 (all states, ask for INET_DIAG_INFO), zeroed inet_diag_sockid
            req = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 1 << (mb._INET_DIAG_INFO - 1), 0xFFFFFFFF)
            req += bytes(48)
            s.send(struct.pack("=IHHII", 16 + len(req), mb._SOCK_DIAG_BY_FAMILY, 0x301, 1, 0) + req)
            done = False
            while not done:
                data = s.recv(1 << 20)
                off = 0
                while off + 16 <= len(data):
                    length, mtype = struct.unpack_from("=IH", data, off)
                    if mtype == mb._NLMSG_DONE:
                        done = True
                        break
                    if mtype == mb._NLMSG_ERROR:
                        raise OSError("NETLINK_SOCK_DIAG answered an error")
                    msg = off + 16  # struct inet_diag_msg: inode at 68, attributes from 72
                    inode = struct.unpack_from("=I", data, msg + 68)[0]
                    attr, end = msg + 72, off + length
                    while attr + 4 <= end:
                        alen, atype = struct.unpack_from("=HH", data, attr)
                        if alen < 4:
                            break
                        if atype == mb._INET_DIAG_INFO and alen - 4 >= need:
                            found[inode] = struct.unpack_from("=QQ", data, attr + 4 + _TCPI_BYTES_ACKED)
                        attr += (alen + 3) & ~3
                    off += (length + 3) & ~3
    return found


def workers_tcp(pids: Sequence[int]) -> dict[tuple[int, int], tuple[int, int]]:
    """``{(pid, socket inode): (sent, received)}`` of the TCP sockets of ``pids`` (gone ones left out)."""
    counters = tcp_counters()
    out: dict[tuple[int, int], tuple[int, int]] = {}
    for pid in pids:
        try:
            inodes = mb.socket_inodes(pid)
        except OSError:  # the process is gone
            continue
        for inode in inodes:
            if inode in counters:
                out[(pid, inode)] = counters[inode]
    return out


class TcpTracker:
    """The workers' TCP bytes since it was made: every socket's last counters, sampled by :meth:`update`.

    A socket closed between two samples keeps the counters of its last sample; one opened and
    closed between two samples is missed (``closed`` counts the sockets gone since their last sample).
    """

    def __init__(self, pids: Sequence[int]) -> None:
        self.before = workers_tcp(pids)
        self.seen = dict(self.before)
        self.last = self.before

    def update(self, pids: Sequence[int]) -> int:
        """Sample the sockets of ``pids``; return the bytes (sent + received) so far."""
        self.last = workers_tcp(pids)
        self.seen.update(self.last)
        return sum(self.totals())

    def totals(self) -> tuple[int, int]:
        """(bytes sent, bytes received) since the tracker was made."""
        sent = sum(s - self.before.get(key, (0, 0))[0] for key, (s, _) in self.seen.items())
        received = sum(r - self.before.get(key, (0, 0))[1] for key, (_, r) in self.seen.items())
        return sent, received

    @property
    def closed(self) -> int:
        return len(self.seen.keys() - self.last.keys())


def cpu_ticks(pids: Sequence[int]) -> int:
    """utime + stime of ``pids`` (gone ones count 0), in ``CLK_TCK`` ticks."""
    total = 0
    for pid in pids:
        try:
            total += mb.proc_cpu_ticks(pid)
        except OSError:
            pass
    return total


class RedisInfo:
    """``INFO stats`` network counters of the Redis server (server wide: every client's bytes)."""

    def __init__(self, url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(url)

    def bytes(self) -> int:
        stats = self.client.info("stats")
        return int(stats["total_net_input_bytes"]) + int(stats["total_net_output_bytes"])

    def close(self) -> None:
        self.client.close()


# -- one round ---------------------------------------------------------------


@dataclass
class Newcomer:
    nodename: str
    wall_ms: float  # first to last mingle: log line
    ready_s: float  # from the start of the round to the bench seeing its "ready." line
    nodes_synced: int  # N of "mingle: sync with N nodes" (0: all alone); may count newcomers ready before it
    ids_learned: int  # how many of the R ids its inspect revoked lists
    ids_extra: int  # ids it lists that were not revoked by this bench (should be 0)
    ids_merged: int | None  # mingle_status last.ids_merged (this package only)
    cpu_ms: float  # its utime+stime once the workers are quiet (imports included: ~1 s)
    #: per neighbour: seconds from its "mingle: searching" line until that neighbour took its
    #: (first) hello, from the neighbour's "sync with <newcomer>" log line; None: never taken
    hello_waits_s: list[float | None]
    lines: list[str] = field(default_factory=list)


@dataclass
class Round:
    broker: str
    neighbours: int
    newcomers: int
    revoked: int
    variant: str
    repeat: int
    background_bytes_per_s: float | None  # Redis INFO over --background seconds, neighbours idle
    all_ready_s: float  # from the first start to the last newcomer's ready. line (bench clock)
    window_s: float  # from the first start until the workers were quiet again
    settled: bool  # False: --settle-timeout passed first
    broker_bytes_at_ready: int | None  # Redis INFO in+out (server wide); None on RabbitMQ
    broker_bytes: int | None  # the same, once settled
    tcp_sent: int  # the workers' TCP bytes sent (neighbours + newcomers), once settled
    tcp_received: int
    tcp_bytes_at_ready: int
    sockets_closed: int  # sockets gone since their last sample (every 0.5 s): bytes after it are missed
    neighbours_cpu_ms: float  # utime+stime of the N neighbours over the window (answering the hellos)
    newcomer_results: list[Newcomer] = field(default_factory=list)

    @property
    def tcp_bytes(self) -> int:
        return self.tcp_sent + self.tcp_received

    @property
    def bytes_through_broker(self) -> int:
        """INFO on Redis, the workers' TCP bytes on RabbitMQ (no management plugin needed)."""
        return self.broker_bytes if self.broker_bytes is not None else self.tcp_bytes


def wait_quiet(pids: Sequence[int], tracker: TcpTracker, timeout: float) -> bool:
    """Wait until the workers neither move bytes nor use CPU (see ``SETTLE_*``); False: timed out."""
    deadline = time.monotonic() + timeout
    last, last_ticks = tracker.update(pids), cpu_ticks(pids)
    while True:
        time.sleep(SETTLE_WINDOW)
        now, ticks = tracker.update(pids), cpu_ticks(pids)
        if now - last < SETTLE_BYTES and ticks - last_ticks < SETTLE_TICKS:
            return True
        if time.monotonic() > deadline:
            return False
        last, last_ticks = now, ticks


def log_sizes(workers: Sequence[Worker]) -> list[int]:
    return [w.log_path.stat().st_size if w.log_path.exists() else 0 for w in workers]


def hello_waits(
    neighbours: Sequence[Worker], offsets: Sequence[int], searching: dict[str, float]
) -> dict[str, list[float | None]]:
    """``{newcomer: [seconds from its "mingle: searching" line until each neighbour took its
    (first) hello, None: not taken]}``, from the neighbours' log lines written since ``offsets``."""
    waits: dict[str, list[float | None]] = {name: [] for name in searching}
    for worker, offset in zip(neighbours, offsets, strict=True):
        with open(worker.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        took: dict[str, float] = {}
        for m in TOOK_HELLO.finditer(text):
            if m["node"] in searching and m["node"] not in took:
                took[m["node"]] = mb.log_time(m[0]) or 0.0
        for name, start in searching.items():
            waits[name].append(took[name] - start if name in took else None)
    return waits


def count_revoked(bench: mb.BrokerBench, nodename: str, expected: set[str]) -> tuple[int, int]:
    """(ids of ``expected`` the node lists in ``inspect revoked``, other ids it lists)."""
    for _ in range(3):  # a reply of 50,000 ids takes a moment; a node that does not answer is asked again
        listed = bench.cluster.revoked(nodename, timeout=10)
        if listed or not expected:
            return len(listed & expected), len(listed - expected)
    return 0, 0


def run_round(
    bench: mb.BrokerBench,
    variant: str,
    k: int,
    expected: set[str],
    repeat: int,
    args: argparse.Namespace,
    redis_info: RedisInfo | None,
) -> Round:
    neighbour_pids = [w.pid for w in bench.neighbours]
    background = None
    if redis_info is not None and args.background > 0:
        b0 = redis_info.bytes()
        time.sleep(args.background)
        background = (redis_info.bytes() - b0) / args.background
    tag = uuid.uuid4().hex[:4]
    names = [f"roll-{variant}-{tag}-{i + 1}@bench" for i in range(k)]
    tracker = TcpTracker(neighbour_pids)
    offsets = log_sizes(bench.neighbours)
    neighbours_ticks = cpu_ticks(neighbour_pids)
    broker_before = redis_info.bytes() if redis_info else None
    started = time.monotonic()
    workers: list[Worker] = []
    try:
        for name in names:  # Popen only: the K processes start within a few ms
            workers.append(bench.cluster.start(name, wait=False, **VARIANT_START[variant]))
        pids = neighbour_pids + [w.pid for w in workers]
        ready_at: dict[str, float] = {}
        deadline = started + args.ready_timeout
        next_sample = started
        while len(ready_at) < k:
            for w in workers:
                if w.nodename in ready_at:
                    continue
                if READY.search(w.log()):
                    ready_at[w.nodename] = time.monotonic() - started
                elif w.proc.poll() is not None or time.monotonic() > deadline:
                    w.wait_ready(0)  # raises with its log
            if time.monotonic() >= next_sample:  # sockets closed before the end keep their bytes
                tracker.update(pids)
                next_sample += SETTLE_WINDOW
            time.sleep(0.05)
        all_ready = time.monotonic() - started
        broker_at_ready = redis_info.bytes() if redis_info else None
        tcp_at_ready = tracker.update(pids)
        settled = wait_quiet(pids, tracker, args.settle_timeout)
        broker_after = redis_info.bytes() if redis_info else None
        window = time.monotonic() - started
        neighbours_ticks = cpu_ticks(neighbour_pids) - neighbours_ticks
        newcomer_ticks = [cpu_ticks([w.pid]) for w in workers]
        sent, received = tracker.totals()
        mingle_lines = {w.nodename: w.mingle_lines() for w in workers}
        waits = hello_waits(
            bench.neighbours, offsets, {name: lines[0][0] for name, lines in mingle_lines.items() if lines}
        )
        # Counted after the bytes: each inspect revoked reply carries the R ids through the broker.
        results = []
        for w, ticks in zip(workers, newcomer_ticks, strict=True):
            lines = mingle_lines[w.nodename]
            if not lines:
                raise RuntimeError(f"{w.nodename}: no mingle line\n{w.tail()}")
            sync = next((SYNC_WITH.match(msg) for _, msg in lines if SYNC_WITH.match(msg)), None)
            learned, extra = count_revoked(bench, w.nodename, expected)
            merged = None
            if variant != "stock":
                last = bench.mingle_status(w.nodename)
                merged = int(last["ids_merged"]) if last else None
            results.append(
                Newcomer(
                    w.nodename,
                    (lines[-1][0] - lines[0][0]) * 1000,
                    ready_at[w.nodename],
                    int(sync[1]) if sync else 0,
                    learned,
                    extra,
                    merged,
                    ticks * 1000 / mb.CLK_TCK,
                    waits[w.nodename],
                    [msg[:120] for _, msg in lines],
                )
            )
        return Round(
            bench.broker,
            len(bench.neighbours),
            k,
            len(expected),
            variant,
            repeat,
            background,
            all_ready,
            window,
            settled,
            None if broker_before is None or broker_at_ready is None else broker_at_ready - broker_before,
            None if broker_before is None or broker_after is None else broker_after - broker_before,
            sent,
            received,
            tcp_at_ready,
            tracker.closed,
            neighbours_ticks * 1000 / mb.CLK_TCK,
            results,
        )
    finally:
        for w in workers:
            bench.cluster.stop_node(w.nodename, signal.SIGKILL)
            keep_log(w, args.logs)


def keep_log(worker: Worker, logs: Path | None) -> None:
    """Move the worker's log to ``logs`` (``--logs``), or delete it."""
    if logs is not None and worker.log_path.exists():
        logs.mkdir(parents=True, exist_ok=True)
        shutil.move(worker.log_path, logs / worker.log_path.name)
    worker.log_path.unlink(missing_ok=True)
    worker.out_path.unlink(missing_ok=True)


def run_broker(broker: str, root: Path, args: argparse.Namespace, out: list[Round]) -> None:
    bench = mb.BrokerBench(broker, root, args.python)
    log(f"[{broker}] on {bench.space.describe()}")
    redis_info = RedisInfo(bench.space.url) if broker == "redis" else None
    try:
        log(f"[{broker}] starting {args.neighbours} neighbours")
        while len(bench.neighbours) < args.neighbours:  # as BrokerBench.set_neighbours, with a log level
            name = f"neighbour{len(bench.neighbours) + 1}@bench"
            bench.neighbours.append(
                bench.cluster.start(name, conf=mb.FAST, timeout=60, loglevel=args.neighbour_loglevel)
            )
        ids = [str(uuid.uuid4()) for _ in range(args.revoked)]
        if ids:
            log(f"[{broker}] revoking {len(ids)} ids; waiting until every neighbour lists all of them")
            bench.cluster.revoke(ids, batch=1000, timeout=300)
        expected = set(ids)
        for rep in range(args.repeat):
            for k in args.newcomers:
                for variant in args.variants:
                    r = run_round(bench, variant, k, expected, rep + 1, args, redis_info)
                    out.append(r)
                    walls = [n.wall_ms for n in r.newcomer_results]
                    learned = [n.ids_learned for n in r.newcomer_results]
                    alone = sum(n.nodes_synced == 0 for n in r.newcomer_results)
                    taken = sorted(w for n in r.newcomer_results for w in n.hello_waits_s if w is not None)
                    hellos = sum(len(n.hello_waits_s) for n in r.newcomer_results)
                    log(
                        f"[{broker} N={r.neighbours} K={k} R={r.revoked} #{rep + 1}] {variant:5} "
                        f"wall median {statistics.median(walls):6.0f} ms max {max(walls):6.0f} ms, "
                        f"ids min {min(learned)}/{r.revoked} ({sum(n < r.revoked for n in learned)} short, "
                        f"{alone} all alone), hellos taken after median "
                        f"{statistics.median(taken) if taken else 0:.2f} s max {max(taken, default=0):.2f} s "
                        f"({hellos - len(taken)} of {hellos} not taken), broker {_mib(r.broker_bytes)} MiB, "
                        f"tcp {_mib(r.tcp_bytes)} MiB, neighbours' cpu {r.neighbours_cpu_ms / 1000:.1f} s, "
                        f"all ready {r.all_ready_s:.1f} s, window {r.window_s:.1f} s"
                        + ("" if r.settled else " (not settled)")
                    )
            dead = [w.nodename for w in bench.neighbours if w.proc.poll() is not None]
            if dead:
                raise RuntimeError(f"neighbours died: {dead}")
    finally:
        neighbours = list(bench.neighbours)
        bench.close()  # and the run's keys (bindings, reply queues of killed newcomers) or vhost
        for worker in neighbours:
            keep_log(worker, args.logs)
        if redis_info is not None:
            redis_info.close()


# -- report ------------------------------------------------------------------


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value / 2**20:.2f}"


def groups(rounds: Sequence[Round]) -> Iterator[tuple[tuple[str, int, int, int], dict[str, list[Round]]]]:
    keys: list[tuple[str, int, int, int]] = []
    for r in rounds:
        if (r.broker, r.neighbours, r.newcomers, r.revoked) not in keys:
            keys.append((r.broker, r.neighbours, r.newcomers, r.revoked))
    for key in keys:
        by_variant: dict[str, list[Round]] = {}
        for r in rounds:
            if (r.broker, r.neighbours, r.newcomers, r.revoked) == key:
                by_variant.setdefault(r.variant, []).append(r)
        yield key, by_variant


def cell(rounds: Sequence[Round]) -> dict[str, Any]:
    """One table row: newcomers of every round pooled, bytes the median of the rounds."""
    newcomers = [n for r in rounds for n in r.newcomer_results]
    r_ids = rounds[0].revoked
    short = sum(n.ids_learned < r_ids for n in newcomers)
    broker = [r.broker_bytes for r in rounds if r.broker_bytes is not None]
    return {
        "wall_median": statistics.median(n.wall_ms for n in newcomers),
        "wall_max": max(n.wall_ms for n in newcomers),
        "ids_min": min(n.ids_learned for n in newcomers),
        "short": short,
        "count": len(newcomers),
        "nodes": (min(n.nodes_synced for n in newcomers), max(n.nodes_synced for n in newcomers)),
        "ready": statistics.median(r.all_ready_s for r in rounds),
        "broker": statistics.median(broker) if broker else None,
        "tcp": statistics.median(r.tcp_bytes for r in rounds),
        "cpu": statistics.median(r.neighbours_cpu_ms for r in rounds) / 1000,
        "in_time": sum(w is not None and w <= HELLO_TIMEOUT for n in newcomers for w in n.hello_waits_s),
        "hellos": sum(len(n.hello_waits_s) for n in newcomers),
        "through": statistics.median(r.bytes_through_broker for r in rounds),
    }


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or a <= 0 or b <= 0:
        return "-"
    return f"{a / b:.1f}x"


def report(rounds: Sequence[Round], repeat: int) -> str:
    out = [
        f"{repeat} round(s) per row; wall = first to last `mingle:` line of each newcomer (median and max "
        "over the newcomers of the row); ids learned = the fewest of the R ids any newcomer lists in "
        "`inspect revoked`; nodes = the N of its `mingle: sync with N nodes`; hellos taken within 1 s = "
        "(newcomer, neighbour) pairs where the neighbour logged `sync with <newcomer>` at most 1 s (the "
        "hello timeout) after the newcomer's `mingle: searching`; all ready = start to the "
        "last `ready.`; broker MiB = Redis `INFO stats` net input+output (server wide) on Redis, the "
        "workers' TCP bytes on RabbitMQ; workers' TCP MiB = bytes sent+received by the sockets of the "
        "neighbours and newcomers (kernel tcp_info); neighbours' CPU = utime+stime of the N neighbours "
        "(answering the hellos); all three from the start of the newcomers until the workers are quiet "
        "again.",
        "",
        "| broker | N | K | R | variant | wall median ms | wall max ms | ids learned (min/R) | all got R "
        "| nodes | hellos taken within 1 s | all ready s | broker MiB | workers' TCP MiB "
        "| neighbours' CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (broker, n, k, r_ids), by_variant in groups(rounds):
        for variant, rs in by_variant.items():
            c = cell(rs)
            all_got = "yes" if not c["short"] else f"no ({c['short']} of {c['count']} short)"
            nodes = f"{c['nodes'][0]}" if c["nodes"][0] == c["nodes"][1] else "{}-{}".format(*c["nodes"])
            out.append(
                f"| {broker} | {n} | {k} | {r_ids} | {variant} | {c['wall_median']:.0f} "
                f"| {c['wall_max']:.0f} | {c['ids_min']}/{r_ids} | {all_got} | {nodes} "
                f"| {c['in_time']}/{c['hellos']} | {c['ready']:.1f} "
                f"| {_mib(c['through'])} | {_mib(c['tcp'])} | {c['cpu']:.2f} |"
            )
    out += [
        "",
        "Ratios stock / fast (> 1 means fast is lower).",
        "",
        "| broker | N | K | R | wall median stock/fast | wall max stock/fast | broker bytes stock/fast "
        "| workers' TCP stock/fast | neighbours' CPU stock/fast |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (broker, n, k, r_ids), by_variant in groups(rounds):
        if "stock" not in by_variant or "fast" not in by_variant:
            continue
        s, f = cell(by_variant["stock"]), cell(by_variant["fast"])
        out.append(
            f"| {broker} | {n} | {k} | {r_ids} | {_ratio(s['wall_median'], f['wall_median'])} "
            f"| {_ratio(s['wall_max'], f['wall_max'])} | {_ratio(s['through'], f['through'])} "
            f"| {_ratio(s['tcp'], f['tcp'])} | {_ratio(s['cpu'], f['cpu'])} |"
        )
    notes = []
    background = [r.background_bytes_per_s for r in rounds if r.background_bytes_per_s is not None]
    if background:
        notes.append(
            f"Redis background before the rounds (INFO, neighbours idle, server wide): "
            f"{min(background) / 1024:.1f}-{max(background) / 1024:.1f} KiB/s."
        )
    unsettled = [f"{r.variant} K={r.newcomers}" for r in rounds if not r.settled]
    if unsettled:
        notes.append(f"Not quiet before --settle-timeout (bytes counted until then): {', '.join(unsettled)}.")
    closed = sum(r.sockets_closed for r in rounds)
    if closed:
        notes.append(
            f"{closed} worker socket(s) closed during a round: workers' TCP misses what they moved after "
            "their last sample (sampled every 0.5 s)."
        )
    return "\n".join(out + (["", *notes] if notes else []))


def log(msg: str) -> None:
    mb.log(msg)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    benchlib.add_common_options(
        p,
        brokers="redis",
        variants=VARIANTS,
        repeat=1,
        repeat_help="rounds per K and variant",
        json_help="also write every round, every newcomer, to this JSON file",
    )
    p.add_argument("--neighbours", type=int, default=16, help="running neighbours")
    p.add_argument("--newcomers", default="8,16", help="comma-separated K: newcomers started at once")
    p.add_argument("--revoked", type=int, default=50000, help="ids revoked on the neighbours")
    p.add_argument("--background", type=float, default=2.0, help="seconds of Redis background before a round")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds for all K to be ready")
    p.add_argument("--settle-timeout", type=float, default=60.0, help="seconds for the workers to be quiet")
    p.add_argument("--logs", type=Path, help="keep the workers' log files in this folder")
    p.add_argument("--neighbour-loglevel", default="INFO", help="e.g. DEBUG: when each hello was answered")
    args = p.parse_args(argv)
    benchlib.check_common_options(p, args, VARIANTS)
    args.newcomers = benchlib.ints(args.newcomers)
    if args.neighbours < 1 or not args.newcomers or min(args.newcomers) < 1 or args.revoked < 0:
        p.error("--neighbours >= 1, --newcomers >= 1, --revoked >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    benchlib.log(benchlib.compile_checkout())
    started = time.monotonic()
    rounds: list[Round] = []
    with tempfile.TemporaryDirectory(prefix="mingle-rollout-") as tmp:
        for broker in args.brokers:
            run_broker(broker, Path(tmp), args, rounds)
    if args.json:
        args.json.write_text(
            json.dumps(
                [
                    {**asdict(r), "tcp_bytes": r.tcp_bytes, "bytes_through_broker": r.bytes_through_broker}
                    for r in rounds
                ],
                indent=1,
            )
        )
    mb.print_versions(started)
    print(report(rounds, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
