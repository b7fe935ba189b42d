#!/usr/bin/env python
"""The judge: a whole cluster of this package's workers against a whole cluster of stock workers.

In the same run, per broker, it stands up one cluster per variant, each on its own
Redis database or RabbitMQ virtual host (and its own control exchange):

- ``stock``: every worker runs stock Celery Mingle (``worker_consumer`` unset);
- ``default``: every worker runs this package with no setting (the drop-in promise:
  the newcomer's mingle and the neighbours' answering both ours);
- ``fast``: every worker runs this package with ``mingle_profile = "fast"``.

In each cell (N neighbours holding R revoked ids) it starts a newcomer ``--repeat``
times per variant, interleaved (the order rotates each repeat), and measures what the
user waits for: from the newcomer's process start (just before ``Popen``) to its
``ready.`` log line; beside it the mingle window (first to last ``mingle:`` line), the
peak RSS of the newcomer and of its neighbours (``VmHWM``, the neighbours' reset with
``/proc/<pid>/clear_refs`` before each newcomer), and how many neighbours the newcomer
heard (``mingle: sync with N nodes``; ``all alone`` is 0). Every newcomer that heard
fewer neighbours than were started is marked, stock's too.

It prints a table of each variant's min/median/max, then a table of ratios ours/stock
(each repeat's newcomer divided by the stock newcomer of the same repeat, min/median/max
over the repeats), and writes every measurement to JSON. See ``benchmarks/README.md``.

    python benchmarks/judge.py                 # Redis, N=1,8, R=0,50000, 3 repeats (~5 min)
    python benchmarks/judge.py --quick         # Redis, N=1, R=0, 1 repeat (smoke, ~30 s)
    python benchmarks/judge.py --full          # Redis and RabbitMQ, N=1,8,32, R=0,50000, 3 repeats
"""

from __future__ import annotations

import argparse
import contextlib
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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mingle_plugins.testkit import APP_TEMPLATE, Cluster, Worker

REDIS_HOST = "redis://127.0.0.1:6379"
AMQP_HOST = "amqp://guest:guest@127.0.0.1:5672"
BROKERS = ("redis", "rabbitmq")
VARIANTS = ("stock", "default", "fast")
OURS = "mingle_plugins.consumer:Consumer"
#: The app settings of each variant's cluster (neighbours and newcomers alike).
VARIANT_CONF: dict[str, dict[str, Any]] = {
    "stock": {},
    "default": {"worker_consumer": OURS},
    "fast": {"worker_consumer": OURS, "mingle_profile": "fast"},
}
#: Targets of issue 24 (point 1), checked in the ratio table for ``default``; the peak-memory
#: ratio is compared rounded to two decimals (VmHWM moves by a few pages between identical runs).
MAX_READY_RATIO = 1.05
MAX_HWM_RATIO = 1.00

LOG_LINE = re.compile(r"^\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(?P<ms>\d{3}): \w+/[\w-]+\] (?P<msg>.*)$")
CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def log_lines(text: str) -> list[tuple[float, str]]:
    """``(timestamp, message)`` of every log line of a worker's log file."""
    out = []
    for line in text.splitlines():
        m = LOG_LINE.match(line)
        if m:
            ts = time.mktime(time.strptime(m["ts"], "%Y-%m-%d %H:%M:%S")) + int(m["ms"]) / 1000
            out.append((ts, m["msg"]))
    return out


# -- /proc ------------------------------------------------------------------


def proc_field_kb(pid: int, name: str) -> int | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def proc_cpu_ticks(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return 0
    fields = data[data.rindex(b")") + 2 :].split()
    return int(fields[11]) + int(fields[12])


def reset_hwm(pid: int) -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0, own processes)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def wait_quiet(pids: Sequence[int], quiet: float = 0.3, timeout: float = 10.0) -> float:
    """Wait until the processes use no CPU tick over ``quiet`` seconds; the seconds waited."""
    start = time.monotonic()
    before = sum(proc_cpu_ticks(p) for p in pids)
    while time.monotonic() - start < timeout:
        time.sleep(quiet)
        now = sum(proc_cpu_ticks(p) for p in pids)
        if now - before <= 1:
            break
        before = now
    return time.monotonic() - start


# -- brokers: one database / virtual host per cluster -----------------------


class RedisSpace:
    """A Redis database of its own (random, empty when chosen); its keys of the run deleted at the end."""

    def __init__(self, taken: set[int], tag: str) -> None:
        import redis

        self.tag = tag
        free = []
        for db in range(1, 16):
            if db in taken:
                continue
            with contextlib.closing(redis.Redis.from_url(f"{REDIS_HOST}/{db}")) as r:
                if r.dbsize() == 0:
                    free.append(db)
        pool = free or [db for db in range(1, 16) if db not in taken]
        self.db = random.choice(pool)
        taken.add(self.db)
        self.url = f"{REDIS_HOST}/{self.db}"

    def close(self) -> int:
        import redis

        deleted = 0
        with contextlib.closing(redis.Redis.from_url(self.url)) as r:
            for key in list(r.scan_iter(match=f"*{self.tag}*", count=1000)):
                deleted += int(r.delete(key))
            # kombu 5.7 keeps the deadlines of every binding in one sorted set of the database
            for member in r.zscan_iter("_kombu.binding_deadlines", match=f"*{self.tag}*"):
                r.zrem("_kombu.binding_deadlines", member[0])
        return deleted


class RabbitSpace:
    """A RabbitMQ virtual host of its own (``rabbitmqctl add_vhost``), deleted at the end."""

    def __init__(self, taken: set[int], tag: str) -> None:
        self.vhost = tag
        subprocess.run(["rabbitmqctl", "-q", "add_vhost", self.vhost], check=True, capture_output=True)
        subprocess.run(
            ["rabbitmqctl", "-q", "set_permissions", "-p", self.vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
        )
        self.url = f"{AMQP_HOST}/{self.vhost}"

    def close(self) -> int:
        subprocess.run(["rabbitmqctl", "-q", "delete_vhost", self.vhost], capture_output=True)
        return 0


# -- one cluster ------------------------------------------------------------


@dataclass
class Measurement:
    broker: str
    neighbours: int
    revoked: int
    variant: str
    repeat: int
    nodename: str
    ready_ms: float  # process start (before Popen) to the `ready.` log line
    mingle_ms: float  # first to last `mingle:` line
    heard: int  # N of `mingle: sync with N nodes` (0: all alone)
    newcomer_hwm_kb: int  # VmHWM of the newcomer once it and its neighbours are quiet
    neighbour_hwm_kb: int  # the largest VmHWM of the neighbours (reset before the newcomer)
    neighbour_hwm_median_kb: int
    newcomer_cpu_ms: float  # utime+stime of the newcomer at `ready.` (10 ms ticks)
    hwm_reset: bool  # whether every neighbour's VmHWM could be reset
    settle_s: float
    lines: list[str] = field(default_factory=list)

    @property
    def deaf(self) -> bool:
        return self.heard < self.neighbours


class ClusterBench:
    """One variant's cluster on its own database / virtual host."""

    def __init__(
        self, broker: str, variant: str, root: Path, python: str, taken: set[int], run_tag: str
    ) -> None:
        self.broker = broker
        self.variant = variant
        tag = f"judge-{run_tag}-{variant}"
        self.space: RedisSpace | RabbitSpace = (
            RedisSpace(taken, tag) if broker == "redis" else RabbitSpace(taken, tag)
        )
        self.directory = root / broker / variant
        self.directory.mkdir(parents=True, exist_ok=True)
        config: dict[str, Any] = {
            "broker_url": self.space.url,
            "control_exchange": tag,
            "task_default_queue": tag,
            "broker_connection_retry_on_startup": True,
            "worker_hijack_root_logger": True,
            **VARIANT_CONF[variant],
        }
        if broker == "rabbitmq":
            config["broker_heartbeat"] = 4
        (self.directory / "judge_app.py").write_text(APP_TEMPLATE.format(name="judge", conf=config))
        self.cluster = Cluster(self.directory, config, python=python, app="judge_app")
        self.neighbours: list[Worker] = []
        self.run_tag = run_tag

    def describe(self) -> str:
        where = f"db {self.space.db}" if isinstance(self.space, RedisSpace) else f"vhost {self.space.vhost}"
        return f"{self.broker}/{self.variant} on {where}"

    def set_neighbours(self, n: int, batch: int = 4) -> None:
        while len(self.neighbours) > n:
            self.cluster.stop_node(self.neighbours.pop().nodename, signal.SIGKILL)
        while len(self.neighbours) < n:
            started = []
            for _ in range(min(batch, n - len(self.neighbours))):
                name = f"nb{len(self.neighbours) + 1}-{self.variant}-{self.run_tag}@judge"
                worker = self.cluster.start(name, wait=False)
                self.neighbours.append(worker)
                started.append(worker)
            for worker in started:
                worker.wait_ready(180)
                self.cluster.wait_listening(worker.nodename, timeout=60)

    def revoke(self, ids: Sequence[str]) -> None:
        self.cluster.revoke(ids, batch=1000, timeout=600)

    def newcomer(self, rep: int, revoked: int) -> Measurement:
        n = len(self.neighbours)
        name = f"new-{self.variant}-{uuid.uuid4().hex[:6]}-{self.run_tag}@judge"
        pids = [w.pid for w in self.neighbours]
        reset = all([reset_hwm(p) for p in pids])
        t0 = time.time()
        worker = self.cluster.start(name, wait=False)
        try:
            ready_ts = None
            cpu_ticks = 0
            deadline = time.monotonic() + 180
            while ready_ts is None:
                for ts, msg in log_lines(worker.log()):
                    if re.search(r"\bready\.", msg):
                        ready_ts = ts
                        cpu_ticks = proc_cpu_ticks(worker.pid)
                        break
                if ready_ts is None:
                    if worker.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"{name} did not get ready:\n{worker.tail()}")
                    time.sleep(0.01)
            settle = wait_quiet([worker.pid, *pids])
            newcomer_hwm = proc_field_kb(worker.pid, "VmHWM") or 0
            hwms = [proc_field_kb(p, "VmHWM") or 0 for p in pids]
            lines = [(ts, msg) for ts, msg in log_lines(worker.log()) if msg.startswith("mingle:")]
            heard = 0
            for _, msg in lines:
                m = re.match(r"mingle: sync with (\d+) nodes", msg)
                if m:
                    heard = int(m.group(1))
            mingle_ms = (lines[-1][0] - lines[0][0]) * 1000 if lines else 0.0
            assert ready_ts is not None
            return Measurement(
                self.broker,
                n,
                revoked,
                self.variant,
                rep,
                name,
                (ready_ts - t0) * 1000,
                mingle_ms,
                heard,
                newcomer_hwm,
                max(hwms, default=0),
                int(statistics.median(hwms)) if hwms else 0,
                cpu_ticks * 1000 / CLK_TCK,
                reset,
                settle,
                [msg[:160] for _, msg in lines],
            )
        finally:
            self.cluster.stop_node(name, signal.SIGKILL)
            worker.log_path.unlink(missing_ok=True)
            worker.out_path.unlink(missing_ok=True)

    def close(self) -> None:
        self.neighbours.clear()
        self.cluster.close(grace=0)
        with contextlib.suppress(Exception):
            self.space.close()


def run_broker(broker: str, root: Path, args: argparse.Namespace, out: list[Measurement]) -> None:
    taken: set[int] = set()
    run_tag = uuid.uuid4().hex[:8]
    benches: list[ClusterBench] = []
    try:
        for variant in args.variants:
            benches.append(ClusterBench(broker, variant, root, args.python, taken, run_tag))
            log(f"cluster {benches[-1].describe()}")
        plan: list[tuple[int, int]] = [(n, 0) for n in sorted(args.neighbours) if 0 in args.revoked]
        plan += [(n, r) for r in sorted(args.revoked) if r for n in sorted(args.neighbours, reverse=True)]
        revoked = 0
        for n, r in plan:
            if r != revoked:
                top = max(args.neighbours)
                for b in benches:
                    b.set_neighbours(top)
                ids = [str(uuid.uuid4()) for _ in range(r - revoked)]
                log(f"[{broker}] revoking {len(ids)} ids on {top} neighbours of each cluster")
                for b in benches:
                    b.revoke(ids)
                revoked = r
            for b in benches:
                b.set_neighbours(n)
            for rep in range(args.repeat):
                k = rep % len(benches)
                for b in benches[k:] + benches[:k]:  # the order rotates with the repeat
                    m = b.newcomer(rep, r)
                    out.append(m)
                    log(
                        f"[{broker} N={n} R={r} #{rep + 1}] {m.variant:7} ready {m.ready_ms:6.0f} ms "
                        f"mingle {m.mingle_ms:6.0f} ms heard {m.heard}/{n}{' DEAF' if m.deaf else ''} "
                        f"hwm {m.newcomer_hwm_kb / 1024:5.1f} MiB "
                        f"neighbours {m.neighbour_hwm_kb / 1024:5.1f} MiB"
                    )
    finally:
        for b in benches:
            b.close()


# -- report -----------------------------------------------------------------


def _mmm(values: Sequence[float], digits: int = 0, scale: float = 1.0) -> str:
    if not values:
        return "-"
    vals = sorted(v / scale for v in values)
    return f"{vals[0]:.{digits}f} / {statistics.median(vals):.{digits}f} / {vals[-1]:.{digits}f}"


def _heard(ms: Sequence[Measurement]) -> str:
    return ", ".join(f"{m.heard}{'!' if m.deaf else ''}" for m in ms)


Key = tuple[str, int, int]


def cells(results: Sequence[Measurement]) -> dict[Key, dict[str, list[Measurement]]]:
    out: dict[Key, dict[str, list[Measurement]]] = {}
    for m in results:
        out.setdefault((m.broker, m.neighbours, m.revoked), {}).setdefault(m.variant, []).append(m)
    return out


def paired_ratios(ours: Sequence[Measurement], stock: Sequence[Measurement], attr: str) -> list[float]:
    by_rep = {m.repeat: m for m in stock}
    out = []
    for m in ours:
        s = by_rep.get(m.repeat)
        if s is not None and getattr(s, attr) > 0:
            out.append(getattr(m, attr) / getattr(s, attr))
    return out


def ratio_summary(results: Sequence[Measurement]) -> list[dict[str, Any]]:
    """Per cell and variant of ours: min/median/max of the paired ratios ours/stock."""
    rows = []
    for (broker, n, r), by_variant in cells(results).items():
        stock = by_variant.get("stock")
        if not stock:
            continue
        for variant, ms in by_variant.items():
            if variant == "stock":
                continue
            row: dict[str, Any] = {"broker": broker, "neighbours": n, "revoked": r, "variant": variant}
            for attr in ("ready_ms", "mingle_ms", "newcomer_hwm_kb", "neighbour_hwm_kb"):
                vals = paired_ratios(ms, stock, attr)
                row[attr] = (
                    {"min": min(vals), "median": statistics.median(vals), "max": max(vals)} if vals else None
                )
            ready, nh, wh = row["ready_ms"], row["newcomer_hwm_kb"], row["neighbour_hwm_kb"]
            row["target_met"] = bool(
                ready
                and nh
                and wh
                and ready["median"] <= MAX_READY_RATIO
                and round(nh["median"], 2) <= MAX_HWM_RATIO
                and round(wh["median"], 2) <= MAX_HWM_RATIO
                and not any(m.deaf for m in ms)
            )
            rows.append(row)
    return rows


def report(results: Sequence[Measurement], repeat: int) -> str:
    out = [
        f"Each cell: min / median / max over {repeat} newcomer(s) per variant. ready = process start to "
        "`ready.`; mingle = first to last `mingle:` line; hwm = VmHWM (MiB) of the newcomer and the largest "
        "of its neighbours'; heard = neighbours in `sync with N nodes` per newcomer, "
        "`!` = fewer than started.",
        "",
        "| broker | N | R | variant | ready ms | mingle ms | newcomer hwm MiB | neighbour hwm MiB | heard |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (broker, n, r), by_variant in cells(results).items():
        for variant in VARIANTS:
            ms = by_variant.get(variant)
            if not ms:
                continue
            out.append(
                f"| {broker} | {n} | {r} | {variant} | {_mmm([m.ready_ms for m in ms])} | "
                f"{_mmm([m.mingle_ms for m in ms])} | {_mmm([m.newcomer_hwm_kb for m in ms], 1, 1024)} | "
                f"{_mmm([m.neighbour_hwm_kb for m in ms], 1, 1024)} | {_heard(ms)} |"
            )
    out += [
        "",
        "Ratios ours / stock (each repeat's newcomer over the stock newcomer of the same repeat; "
        "min / median / max; < 1 means ours is lower). target: default ready median <= "
        f"{MAX_READY_RATIO:.2f}, both hwm medians <= {MAX_HWM_RATIO:.2f}, no deaf newcomer of ours.",
        "",
        "| broker | N | R | variant | ready | mingle | newcomer hwm | neighbour hwm | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def fmt(v: dict[str, float] | None) -> str:
        return "-" if not v else f"{v['min']:.2f} / {v['median']:.2f} / {v['max']:.2f}"

    for row in ratio_summary(results):
        target = "met" if row["target_met"] else "**not met**"
        if row["variant"] != "default":
            target = f"({target})"
        out.append(
            f"| {row['broker']} | {row['neighbours']} | {row['revoked']} | {row['variant']} | "
            f"{fmt(row['ready_ms'])} | {fmt(row['mingle_ms'])} | {fmt(row['newcomer_hwm_kb'])} | "
            f"{fmt(row['neighbour_hwm_kb'])} | {target} |"
        )
    deaf = [m for m in results if m.deaf]
    out += ["", f"Deaf newcomers (heard fewer neighbours than were started): {len(deaf)}"]
    for m in deaf:
        out.append(
            f"- {m.broker} N={m.neighbours} R={m.revoked} {m.variant} #{m.repeat + 1}: heard {m.heard}"
        )
    return "\n".join(out)


def code_state() -> str:
    import mingle_plugins

    where = Path(mingle_plugins.__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(where), "status", "--porcelain", "--", "."], capture_output=True, text=True
        ).stdout.split()
    except OSError:
        return f"mingle_plugins from {where}"
    changed = [name for name in dirty if name.endswith(".py")]
    return f"mingle_plugins from {where} at {head or '?'}" + (
        f" + uncommitted changes in {', '.join(changed)}" if changed else ""
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--brokers", default="redis", help="comma-separated: redis, rabbitmq")
    p.add_argument("--neighbours", default="1,8", help="comma-separated neighbour counts")
    p.add_argument("--revoked", default="0,50000", help="comma-separated revoked-id counts")
    p.add_argument("--repeat", type=int, default=3, help="newcomers per variant and cell")
    p.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated: stock, default, fast")
    p.add_argument("--quick", action="store_true", help="Redis, N=1, R=0, 1 repeat")
    p.add_argument("--full", action="store_true", help="Redis and RabbitMQ, N=1,8,32, R=0,50000, 3 repeats")
    p.add_argument("--json", type=Path, help="write every measurement and the ratios to this JSON file")
    p.add_argument("--python", default=sys.executable, help="the Python that runs the workers")
    args = p.parse_args(argv)
    if args.quick:
        args.brokers, args.neighbours, args.revoked, args.repeat = "redis", "1", "0", 1
    if args.full:
        args.brokers, args.neighbours, args.revoked, args.repeat = "redis,rabbitmq", "1,8,32", "0,50000", 3
    args.brokers = [b.strip() for b in args.brokers.split(",") if b.strip()]
    args.neighbours = [int(n) for n in str(args.neighbours).split(",")]
    args.revoked = [int(r) for r in str(args.revoked).split(",")]
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for b in args.brokers:
        if b not in BROKERS:
            p.error(f"unknown broker {b!r}")
    for v in args.variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}")
    if "stock" not in args.variants:
        p.error("the judge needs the stock variant (ratios are ours / stock)")
    if min(args.neighbours) < 1 or min(args.revoked) < 0 or args.repeat < 1:
        p.error("--neighbours >= 1, --revoked >= 0, --repeat >= 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import celery
    import kombu

    started = time.monotonic()
    load_start = os.getloadavg()
    results: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="mingle-judge-") as tmp:
        for broker in args.brokers:
            run_broker(broker, Path(tmp), args, results)
    meta: Mapping[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "code": code_state(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "run_s": round(time.monotonic() - started),
    }
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "meta": meta,
                    "ratios": ratio_summary(results),
                    "measurements": [{**asdict(m), "deaf": m.deaf} for m in results],
                },
                indent=1,
            )
        )
    print(
        f"celery {meta['celery']}, kombu {meta['kombu']}, python {meta['python']}, {meta['cpus']} cpus, "
        f"run time {meta['run_s']} s, load average {load_start[0]:.1f} at start, "
        f"{meta['load_end'][0]:.1f} at end"
    )
    print(meta["code"])
    print()
    print(report(results, args.repeat))
    return 0


if __name__ == "__main__":
    sys.exit(main())
