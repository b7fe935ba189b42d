#!/usr/bin/env python
"""Benchmark a newcomer's mingle: stock Celery Mingle against this package.

Starts real ``celery worker`` processes (``-P solo``) on real brokers. For each
broker it starts neighbours one by one (all with ``mingle_profile = "fast"``),
then, against the same running neighbours, starts a newcomer again and again
(a new node name each time) in three variants, interleaved:

- ``stock``: stock Celery Mingle (the stock consumer, ``MINGLE_TEST_STOCK=1``);
- ``default``: this package with default settings (stock-equivalent);
- ``fast``: this package with ``mingle_profile = "fast"``.

Measured on the newcomer (see ``benchmarks/README.md`` for the method and its error):

- wall: from the first ``mingle:`` log line to the last (log timestamps, ms);
- rx: bytes read by the process (``/proc/<pid>/io`` rchar) from the
  ``mingle: searching`` line to the last ``mingle:`` line, sampled by a thread
  tailing the log file;
- hwm: peak RSS (``VmHWM``) once the worker is ready;
- cpu: utime+stime (``/proc/<pid>/stat``) from ``mingle: sync with N nodes``
  to ``mingle: sync complete``; for this package also the step's own
  ``merge_cpu`` (``mingle_status`` control command).

The matrix order per broker: N = 1, 4, 8 neighbours with no revoked ids, then
R ids revoked through ``app.control.revoke`` (batches of 1000, every
neighbour checked to hold all of them), then N = 8, 4, 1 (neighbours stopped
one by one). Prints a Markdown table of medians and one of stock/ours ratios.

    python benchmarks/mingle_bench.py                 # the full matrix
    python benchmarks/mingle_bench.py --quick         # N=1, R=0, 1 repetition, Redis
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import struct
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # from the directory of this script, inserted above

from mingle_plugins.testkit import Cluster, Worker

log = benchlib.log
#: Which code ran (imported from here by the other benchmarks too).
code_state = benchlib.code_state
VARIANTS: tuple[str, ...] = ("stock", "default", "fast")
FAST: dict[str, Any] = {"mingle_profile": "fast"}
#: How each variant's newcomer is started (keywords of ``mingle_plugins.testkit.Cluster.start``).
VARIANT_START: dict[str, dict[str, Any]] = {
    "stock": {"stock": True},
    "default": {},
    "fast": {"conf": FAST},
}

#: ``[2026-11-25 02:21:43,123: INFO/MainProcess] mingle: ...``
LOG_LINE = re.compile(r"^\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(?P<ms>\d{3}): \w+/[\w-]+\] (?P<msg>.*)$")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log_time(line: str) -> float | None:
    m = LOG_LINE.match(line)
    if not m:
        return None
    return time.mktime(time.strptime(m["ts"], "%Y-%m-%d %H:%M:%S")) + int(m["ms"]) / 1000


# -- /proc ------------------------------------------------------------------


def proc_rchar(pid: int) -> int:
    with open(f"/proc/{pid}/io", "rb") as f:
        for line in f:
            if line.startswith(b"rchar:"):
                return int(line.split()[1])
    raise RuntimeError(f"no rchar in /proc/{pid}/io")


def proc_cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)


# rchar counts read()/pread() only: recv()/recv_into() on sockets, which redis-py and
# py-amqp use, are not in it. Bytes received are read from the kernel's TCP counters
# (tcp_info.tcpi_bytes_received of every TCP socket the process holds) over NETLINK_SOCK_DIAG.
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_INET_DIAG_INFO = 2
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_TCPI_BYTES_RECEIVED = 128  # offset in struct tcp_info (Linux >= 4.1)


def socket_inodes(pid: int) -> set[int]:
    out: set[int] = set()
    base = f"/proc/{pid}/fd"
    for fd in os.listdir(base):
        try:
            link = os.readlink(f"{base}/{fd}")
        except OSError:  # closed meanwhile
            continue
        if link.startswith("socket:["):
            out.add(int(link[8:-1]))
    return out


def tcp_bytes_received(pid: int) -> dict[int, int]:
    """``{socket inode: bytes received}`` for every TCP socket of ``pid``."""
    inodes = socket_inodes(pid)
    found: dict[int, int] = {}
    for family in (socket.AF_INET, socket.AF_INET6):
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG) as s:
            # struct inet_diag_req_v2 (all states, ask for INET_DIAG_INFO), zeroed inet_diag_sockid
            req = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 1 << (_INET_DIAG_INFO - 1), 0xFFFFFFFF)
            req += bytes(48)
            s.send(struct.pack("=IHHII", 16 + len(req), _SOCK_DIAG_BY_FAMILY, 0x301, 1, 0) + req)
            done = False
            while not done:
                data = s.recv(1 << 20)
                off = 0
                while off + 16 <= len(data):
                    length, mtype = struct.unpack_from("=IH", data, off)
                    if mtype == _NLMSG_DONE:
                        done = True
                        break
                    if mtype == _NLMSG_ERROR:
                        raise OSError("NETLINK_SOCK_DIAG answered an error")
                    msg = off + 16  # struct inet_diag_msg: inode at 68, attributes from 72
                    if struct.unpack_from("=I", data, msg + 68)[0] in inodes:
                        inode = struct.unpack_from("=I", data, msg + 68)[0]
                        attr, end = msg + 72, off + length
                        while attr + 4 <= end:
                            alen, atype = struct.unpack_from("=HH", data, attr)
                            if alen < 4:
                                break
                            if atype == _INET_DIAG_INFO and alen - 4 >= _TCPI_BYTES_RECEIVED + 8:
                                found[inode] = struct.unpack_from(
                                    "=Q", data, attr + 4 + _TCPI_BYTES_RECEIVED
                                )[0]
                            attr += (alen + 3) & ~3
                    off += (length + 3) & ~3
    return found


def proc_hwm_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmHWM in /proc/{pid}/status")


# -- workers ----------------------------------------------------------------
# The workers are started by mingle_plugins.testkit (the launcher of the tests and the demo).


@dataclass
class Sample:
    """The newcomer's counters when the sampler saw one log line."""

    msg: str
    log_ts: float
    rchar: int
    tcp_rx: dict[int, int]
    cpu_ticks: int
    lag: float  # seconds between the line's log timestamp and the sample (ms resolution)


class Sampler(threading.Thread):
    """Tails a worker's log; samples /proc/<pid> at every ``mingle:`` line and at ``ready.``."""

    def __init__(self, worker: Worker, interval: float) -> None:
        super().__init__(daemon=True)
        self.worker = worker
        self.interval = interval
        self.samples: list[Sample] = []
        self.hwm_kb: int | None = None
        self.ready = threading.Event()
        self.stop_flag = threading.Event()
        self.error: str | None = None

    def run(self) -> None:
        pid, path = self.worker.pid, self.worker.log_path
        buf = b""
        fd: int | None = None
        try:
            while not self.stop_flag.is_set():
                if fd is None:
                    try:
                        fd = os.open(path, os.O_RDONLY)
                    except FileNotFoundError:
                        if self.worker.proc.poll() is not None:
                            return
                        time.sleep(self.interval)
                        continue
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    if self.worker.proc.poll() is not None:
                        return
                    time.sleep(self.interval)
                    continue
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for raw in lines:
                    line = raw.decode(errors="replace")
                    m = LOG_LINE.match(line)
                    if not m:
                        continue
                    if m["msg"].startswith("mingle:"):
                        ticks, rchar, rx = proc_cpu_ticks(pid), proc_rchar(pid), tcp_bytes_received(pid)
                        ts = log_time(line) or 0.0
                        self.samples.append(Sample(m["msg"], ts, rchar, rx, ticks, time.time() - ts))
                    elif re.search(r"\bready\.", m["msg"]):
                        self.hwm_kb = proc_hwm_kb(pid)
                        self.ready.set()
                        return
        except (OSError, RuntimeError) as exc:
            self.error = repr(exc)
        finally:
            if fd is not None:
                os.close(fd)


# -- one measurement --------------------------------------------------------


@dataclass
class Measurement:
    broker: str
    neighbours: int
    revoked: int
    variant: str
    nodename: str
    wall_ms: float
    rx_bytes: int  # TCP bytes received (kernel tcp_info) from "searching" to the last mingle line
    rchar: int  # /proc/<pid>/io rchar over the same span (file reads only: see tcp_bytes_received)
    hwm_kb: int
    cpu_ms: float  # /proc utime+stime between "sync with" and "sync complete" (10 ms ticks)
    step_cpu_ms: float | None  # the step's own merge_cpu (this package only)
    nodes_synced: int  # N of "mingle: sync with N nodes" (0: all alone)
    ids_merged: int | None  # from mingle_status (this package only)
    max_lag_ms: float  # the largest sampler lag seen (ms; log timestamps are truncated to ms)
    lines: list[str] = field(default_factory=list)


def summarise(sampler: Sampler) -> tuple[float, int, int, float, int, float]:
    samples = sampler.samples
    if not samples:
        raise RuntimeError(f"no mingle line sampled ({sampler.error})")
    first = next((s for s in samples if s.msg.startswith("mingle: searching")), samples[0])
    last = samples[-1]
    wall_ms = (last.log_ts - samples[0].log_ts) * 1000
    rx = sum(n - first.tcp_rx.get(inode, 0) for inode, n in last.tcp_rx.items())
    rchar = last.rchar - first.rchar
    start = next((s for s in samples if s.msg.startswith("mingle: sync with")), None)
    end = next((s for s in samples if s.msg.startswith("mingle: sync complete")), None)
    cpu_ms = (end.cpu_ticks - start.cpu_ticks) * 1000 / CLK_TCK if start and end else 0.0
    nodes = int(re.findall(r"\d+", start.msg)[0]) if start else 0
    max_lag = max(s.lag for s in samples) * 1000
    return wall_ms, rx, rchar, cpu_ms, nodes, max_lag


def measure_newcomer(
    bench: BrokerBench,
    variant: str,
    neighbours: int,
    revoked: int,
    interval: float,
    fast_conf: Mapping[str, Any] | None = None,
) -> Measurement:
    name = f"new-{variant}-{uuid.uuid4().hex[:6]}@bench"
    start = dict(VARIANT_START[variant])
    if variant == "fast" and fast_conf:
        start["conf"] = {**FAST, **fast_conf}
    worker = bench.cluster.start(name, wait=False, **start)
    sampler = Sampler(worker, interval)
    sampler.start()
    try:
        if not sampler.ready.wait(90):
            worker.wait_ready(1)  # raises with the log
            raise RuntimeError(f"{name} is ready, but its log was not sampled ({sampler.error})")
        sampler.join(5)
        wall_ms, rx, rchar, cpu_ms, nodes, max_lag = summarise(sampler)
        step_cpu_ms = ids_merged = None
        if variant != "stock":
            last = bench.mingle_status(name)
            if last:
                step_cpu_ms = float(last["merge_cpu"]) * 1000
                ids_merged = int(last["ids_merged"])
        return Measurement(
            bench.broker,
            neighbours,
            revoked,
            variant,
            name,
            wall_ms,
            rx,
            rchar,
            sampler.hwm_kb or 0,
            cpu_ms,
            step_cpu_ms,
            nodes,
            ids_merged,
            max_lag,
            [s.msg[:120] for s in sampler.samples],
        )
    finally:
        sampler.stop_flag.set()
        bench.cluster.stop_node(name, signal.SIGKILL)
        worker.log_path.unlink(missing_ok=True)
        worker.out_path.unlink(missing_ok=True)


# -- one broker -------------------------------------------------------------


class BrokerBench:
    """The app directory, the neighbours and a client app for one broker, on a Redis database
    or RabbitMQ virtual host of its own (a random empty one; its keys, or it, deleted at the end).

    Workers are stopped with SIGKILL: nothing of them is kept, and a warm (or cold)
    shutdown of a ``-P solo`` worker on RabbitMQ takes ~10 s here.
    """

    def __init__(self, broker: str, root: Path, python: str) -> None:
        self.broker = broker
        self.python = python
        self.directory = root / broker
        # Every name of the run holds the tag: its keys are deleted by name at the end.
        tag = f"minglebench-{uuid.uuid4().hex[:10]}"
        self.space = benchlib.open_space(broker, tag)
        conf = {"control_exchange": tag, "task_default_queue": tag}
        self.cluster = Cluster.create(self.directory, self.space.url, conf, python=python, app="bench_app")
        self.client = self.cluster.client
        self.neighbours: list[Worker] = []
        self.revoked = 0

    def set_neighbours(self, n: int) -> None:
        while len(self.neighbours) > n:
            self.cluster.stop_node(self.neighbours.pop().nodename, signal.SIGKILL)
        while len(self.neighbours) < n:
            name = f"neighbour{len(self.neighbours) + 1}@bench"
            self.neighbours.append(self.cluster.start(name, conf=FAST, timeout=60))

    def revoke(self, count: int, batch: int = 1000) -> None:
        """Revoke ``count`` new ids; return when every neighbour holds them."""
        self.cluster.revoke([str(uuid.uuid4()) for _ in range(count)], batch=batch, timeout=120)
        self.revoked += count

    def mingle_status(self, nodename: str) -> dict[str, Any] | None:
        last = (self.cluster.status(nodename, timeout=1) or {}).get("last")
        return dict(last) if isinstance(last, Mapping) else None

    def close(self) -> None:
        self.neighbours.clear()
        self.cluster.close(grace=0)
        try:
            self.space.close()
        except Exception as exc:  # the results are kept; say what was left
            log(f"cleaning up {self.space.describe()} failed: {exc!r}")


def run_broker(broker: str, root: Path, args: argparse.Namespace, out: list[Measurement]) -> None:
    bench = BrokerBench(broker, root, args.python)
    log(f"[{broker}] on {bench.space.describe()}")
    try:
        plan: list[tuple[int, int]] = [(n, 0) for n in sorted(args.neighbours) if 0 in args.revoked]
        plan += [(n, r) for r in sorted(args.revoked) if r for n in sorted(args.neighbours, reverse=True)]
        for n, r in plan:
            if r != bench.revoked:
                bench.set_neighbours(max(args.neighbours))
                log(f"[{broker}] revoking {r - bench.revoked} ids on {len(bench.neighbours)} neighbours")
                bench.revoke(r - bench.revoked)
            bench.set_neighbours(n)
            for rep in range(args.repeat):
                for variant in args.variants:
                    m = measure_newcomer(bench, variant, n, r, args.interval, args.fast_conf)
                    out.append(m)
                    log(
                        f"[{broker} N={n} R={r} #{rep + 1}] {variant:7} wall {m.wall_ms:7.0f} ms "
                        f"rx {m.rx_bytes / 1024:8.1f} KiB hwm {m.hwm_kb / 1024:6.1f} MiB "
                        f"cpu {m.cpu_ms:5.0f} ms step {_fmt(m.step_cpu_ms, 1)} ms nodes {m.nodes_synced} "
                        f"lag {m.max_lag_ms:.0f} ms"
                    )
    finally:
        bench.close()


# -- report -----------------------------------------------------------------


def _fmt(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or a <= 0:  # 0: below the measurement's resolution
        return "-"
    if b <= 0:
        return "inf" if a > 0 else "-"
    return f"{a / b:.1f}x"


def _median(values: Sequence[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def groups(
    results: Sequence[Measurement],
) -> Iterator[tuple[tuple[str, int, int], dict[str, list[Measurement]]]]:
    keys: list[tuple[str, int, int]] = []
    for m in results:
        if (m.broker, m.neighbours, m.revoked) not in keys:
            keys.append((m.broker, m.neighbours, m.revoked))
    for key in keys:
        by_variant: dict[str, list[Measurement]] = {}
        for m in results:
            if (m.broker, m.neighbours, m.revoked) == key:
                by_variant.setdefault(m.variant, []).append(m)
        yield key, by_variant


def medians(ms: Sequence[Measurement]) -> dict[str, float | None]:
    return {
        "wall_ms": _median([m.wall_ms for m in ms]),
        "rx_kib": _median([m.rx_bytes / 1024 for m in ms]),
        "hwm_mib": _median([m.hwm_kb / 1024 for m in ms]),
        "cpu_ms": _median([m.cpu_ms for m in ms]),
        "step_cpu_ms": _median([m.step_cpu_ms for m in ms]),
        "nodes": _median([m.nodes_synced for m in ms]),
        "ids_merged": _median([m.ids_merged for m in ms]),
    }


def report(results: Sequence[Measurement], repeat: int) -> str:
    out = [
        f"Medians of {repeat} run(s) per cell. wall = first to last `mingle:` line; "
        "rx = TCP bytes received (tcp_info) from `searching` to the last mingle line; "
        "hwm = VmHWM at `ready.`; cpu = utime+stime from `sync with` to `sync complete` (10 ms ticks); "
        "step cpu = the step's merge_cpu.",
        "",
        "| broker | N | R | variant | wall ms | rx KiB | hwm MiB | cpu ms | step cpu ms | nodes "
        "| ids merged |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (broker, n, r), by_variant in groups(results):
        for variant, ms in by_variant.items():
            md = medians(ms)
            out.append(
                f"| {broker} | {n} | {r} | {variant} | {_fmt(md['wall_ms'])} | {_fmt(md['rx_kib'], 1)} | "
                f"{_fmt(md['hwm_mib'], 1)} | {_fmt(md['cpu_ms'])} | {_fmt(md['step_cpu_ms'], 1)} | "
                f"{_fmt(md['nodes'])} | {_fmt(md['ids_merged'])} |"
            )
    out += [
        "",
        "Ratios stock / ours (medians; > 1 means ours is lower). cpu uses /proc for both sides.",
        "",
        "| broker | N | R | wall stock/default | wall stock/fast | rx stock/fast | cpu stock/fast "
        "| cpu stock/fast (step) | hwm stock/fast |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (broker, n, r), by_variant in groups(results):
        if "stock" not in by_variant:
            continue
        s = medians(by_variant["stock"])
        d = medians(by_variant.get("default", []))
        f = medians(by_variant.get("fast", []))
        out.append(
            f"| {broker} | {n} | {r} | {_ratio(s['wall_ms'], d['wall_ms'])} | "
            f"{_ratio(s['wall_ms'], f['wall_ms'])} | {_ratio(s['rx_kib'], f['rx_kib'])} | "
            f"{_ratio(s['cpu_ms'], f['cpu_ms'])} | {_ratio(s['cpu_ms'], f['step_cpu_ms'])} | "
            f"{_ratio(s['hwm_mib'], f['hwm_mib'])} |"
        )
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    benchlib.add_common_options(
        p,
        brokers="redis,rabbitmq",
        variants=VARIANTS,
        repeat=3,
        repeat_help="newcomer starts per variant and cell",
    )
    p.add_argument("--neighbours", default="1,4,8", help="comma-separated neighbour counts")
    p.add_argument("--revoked", default="0,50000", help="comma-separated revoked-id counts")
    p.add_argument(
        "--fast-conf",
        type=json.loads,
        default={},
        help='extra settings of the "fast" newcomer, as JSON, e.g. \'{"mingle_quiet_window": 0.02}\'',
    )
    p.add_argument("--interval", type=float, default=0.002, help="log sampler poll interval (s)")
    p.add_argument("--quick", action="store_true", help="N=1, R=0, 1 repetition, Redis only")
    args = p.parse_args(argv)
    if args.quick:
        args.brokers, args.neighbours, args.revoked, args.repeat = "redis", "1", "0", 1
    benchlib.check_common_options(p, args, VARIANTS)
    args.neighbours = benchlib.ints(args.neighbours)
    args.revoked = benchlib.ints(args.revoked)
    if not args.neighbours or not args.revoked or min(args.neighbours) < 1 or min(args.revoked) < 0:
        p.error("--neighbours >= 1, --revoked >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    benchlib.log(benchlib.compile_checkout())
    started = time.monotonic()
    results: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="mingle-bench-") as tmp:
        for broker in args.brokers:
            run_broker(broker, Path(tmp), args, results)
    if args.json:
        args.json.write_text(json.dumps([asdict(m) for m in results], indent=1))
    print_versions(started)
    print(report(results, args.repeat))
    return 0


def print_versions(started: float) -> None:
    """What ran: the versions, the machine's CPUs, the run time and the code measured."""
    import celery
    import kombu

    print(
        f"celery {celery.__version__}, kombu {kombu.__version__}, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} cpus, run time {time.monotonic() - started:.0f} s"
    )
    print(code_state())
    print()


if __name__ == "__main__":
    sys.exit(main())
