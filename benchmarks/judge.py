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

In each cell with R > 0, after those steady newcomers, ``--change`` new ids are revoked
on the neighbours of one cluster at a time (``app.control.revoke``, then every neighbour
is asked until it lists them; at R = 50,000, Celery's ``maxlen``, as many of the oldest
ids expire) and one newcomer of that cluster's variant is started: the first after the
change (checked: no neighbour logged another hello in between), measured against the
steady newcomers of the same variant and cell.

``--runs K`` repeats the whole measurement K times, with new clusters each run.

It prints a table of each variant's min/median/max, a table of ratios ours/stock (each
repeat's newcomer divided by the stock newcomer of the same run and repeat, min/median/max),
who heard all N at the largest cell, per run; fast's flatness in N per run; the first
newcomers after a change; and a table of the targets, each read from this run's
measurements. It writes every measurement to JSON, each run apart. See ``benchmarks/README.md``.

    python benchmarks/judge.py                 # Redis, N=1,8, R=0,50000, 3 repeats (~4 min)
    python benchmarks/judge.py --quick         # Redis, N=1, R=0, 1 repeat (smoke, ~10 s)
    python benchmarks/judge.py --full --runs 3 # Redis and RabbitMQ, N=1,8,32, R=0,50000, 3 runs of 3
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import re
import signal
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # from the directory of this script, inserted above

from mingle_plugins.testkit import APP_TEMPLATE, Cluster, Worker

VARIANTS = ("stock", "default", "fast")
OURS = "mingle_plugins.consumer:Consumer"
#: The app settings of each variant's cluster (neighbours and newcomers alike).
VARIANT_CONF: dict[str, dict[str, Any]] = {
    "stock": {},
    "default": {"worker_consumer": OURS},
    "fast": {"worker_consumer": OURS, "mingle_profile": "fast"},
}
#: The targets the last table reads from the measurements. Ready time of ``default`` at most
#: stock's + 5% (the median of the paired ratios of a cell); peak memory at most stock's (the
#: median ratio rounded to two decimals: VmHWM moves by a few pages between identical workers).
MAX_READY_RATIO = 1.05
MAX_HWM_RATIO = 1.00
#: ``fast`` at the largest N at most this times its time at the smallest N (same R, each run).
MAX_FLAT_RATIO = 1.5
#: ``fast``'s first newcomer after a small change at most this times a steady one (same cell and run).
MAX_AFTER_CHANGE_RATIO = 1.5
#: The kinds of newcomer: the ``--repeat`` ones of a cell, and the one right after a change.
STEADY = "steady"
AFTER = "after change"

LOG_LINE = re.compile(r"^\[(?P<ts>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(?P<ms>\d{3}): \w+/[\w-]+\] (?P<msg>.*)$")
#: A neighbour takes a hello: stock's ``hello`` handler logs ``sync with <node>``, this package's too.
TOOK_HELLO = re.compile(r"^\[[^\]]*\] sync with (?P<node>\S+)\s*$", re.M)
CLK_TCK = os.sysconf("SC_CLK_TCK")
log = benchlib.log


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


# -- one cluster ------------------------------------------------------------


@dataclass
class Measurement:
    broker: str
    neighbours: int
    revoked: int  # R of the cell (the ids of the changes before it come on top, see ``change``)
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
    run: int = 1  # which of the --runs
    kind: str = STEADY  # STEADY, or AFTER: the first newcomer after a change of the neighbours' sets
    #: AFTER only: ids added, held by a neighbour before and after (expired = the difference),
    #: how many neighbours logged this newcomer's hello, the other hellos they logged since the change
    change: dict[str, Any] | None = None

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
        self.space = benchlib.open_space(broker, tag, taken)
        self.directory = root / run_tag / broker / variant
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
        return f"{self.broker}/{self.variant} on {self.space.describe()}"

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

    def revoke(self, ids: Sequence[str], single: int = 0) -> None:
        """Revoke ``ids`` on every neighbour and wait until each lists them: the first ``single``
        one per message, the others 1000 a message.

        Celery's ``revoke`` handler stamps the ids of one message in the order of a ``set`` (hash
        order, random per process), so the ids of one batch are in another order on each
        neighbour. Once a set is full (``maxlen``), each new id pushes out the oldest: the oldest ids
        revoked one by one are the same on every neighbour, so a change keeps their sets equal."""
        if single:
            self.cluster.revoke(ids[:single], batch=1, timeout=600)
        if ids[single:]:
            self.cluster.revoke(ids[single:], batch=1000, timeout=600)

    def held_sets(self, ids: set[str], timeout: float) -> tuple[list[int], int, int]:
        """Ask every neighbour (``inspect revoked``) until it lists all of ``ids``: the number of
        ids each holds, how many neighbours hold another set than the first, and how many ids are
        not held by every neighbour."""
        deadline = time.monotonic() + timeout
        counts: collections.Counter[str] = collections.Counter()
        sizes, digests = [], []
        for worker in self.neighbours:
            while not ids <= (held := self.cluster.revoked(worker.nodename, timeout=30)):
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{worker.nodename} did not list the {len(ids)} new ids in {timeout}s")
                time.sleep(0.1)
            sizes.append(len(held))
            digests.append(hashlib.sha256("\n".join(sorted(held)).encode()).digest())
            counts.update(held)
        differ = sum(d != digests[0] for d in digests)
        return sizes, differ, sum(c < len(self.neighbours) for c in counts.values())

    def newcomer(self, rep: int, revoked: int, run: int, kind: str = STEADY) -> Measurement:
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
            return Measurement(
                broker=self.broker,
                neighbours=n,
                revoked=revoked,
                variant=self.variant,
                repeat=rep,
                nodename=name,
                ready_ms=(ready_ts - t0) * 1000,
                mingle_ms=(lines[-1][0] - lines[0][0]) * 1000 if lines else 0.0,
                heard=heard,
                newcomer_hwm_kb=newcomer_hwm,
                neighbour_hwm_kb=max(hwms, default=0),
                neighbour_hwm_median_kb=int(statistics.median(hwms)) if hwms else 0,
                newcomer_cpu_ms=cpu_ticks * 1000 / CLK_TCK,
                hwm_reset=reset,
                settle_s=settle,
                lines=[msg[:160] for _, msg in lines],
                run=run,
                kind=kind,
            )
        finally:
            self.cluster.stop_node(name, signal.SIGKILL)
            worker.log_path.unlink(missing_ok=True)
            worker.out_path.unlink(missing_ok=True)

    def after_change(self, count: int, revoked: int, run: int) -> Measurement:
        """Revoke ``count`` new ids on the neighbours (the cluster's revoke path: broadcasts, one id
        each, then every neighbour asked until it lists them all, and its set compared with the
        others'), then measure the next newcomer, and check from the neighbours' logs that no
        other hello came in between."""
        held_before = len(self.cluster.revoked(self.neighbours[0].nodename, timeout=30))
        offsets = [(w, w.log_path.stat().st_size) for w in self.neighbours]
        ids = [str(uuid.uuid4()) for _ in range(count)]
        self.cluster.revoke(ids, batch=1, wait=False)  # one per message: the same order everywhere
        sizes, differ, not_everywhere = self.held_sets(set(ids), timeout=120)
        m = self.newcomer(0, revoked, run, AFTER)
        seen: list[list[str]] = []
        for worker, offset in offsets:
            with open(worker.log_path, "rb") as f:
                f.seek(offset)
                text = f.read().decode(errors="replace")
            seen.append([hit["node"] for hit in TOOK_HELLO.finditer(text)])
        others = sorted({node for nodes in seen for node in nodes if node != m.nodename})
        m.change = {
            "added": count,
            "held_before": held_before,
            "held_after": sizes[0],
            "expired": held_before + count - sizes[0],
            "held_min": min(sizes),
            "held_max": max(sizes),
            # the neighbours' sets once they all listed the new ids: equal, or how far apart
            "sets_equal": differ == 0,
            "neighbours_differing": differ,
            "ids_not_on_every_neighbour": not_everywhere,
            "taken_by": sum(m.nodename in nodes for nodes in seen),
            "other_hellos": others,
            "first": not others,
        }
        return m

    def close(self) -> None:
        self.neighbours.clear()
        self.cluster.close(grace=0)
        try:
            self.space.close()
        except Exception as exc:  # the run's results are kept; say what was left
            log(f"cleaning up {self.space.describe()} failed: {exc!r}")


def describe(m: Measurement) -> str:
    head = f"[run {m.run} {m.broker} N={m.neighbours} R={m.revoked}"
    head += f" #{m.repeat + 1}]" if m.kind == STEADY else " first after the change]"
    text = (
        f"{head} {m.variant:7} ready {m.ready_ms:6.0f} ms mingle {m.mingle_ms:6.0f} ms "
        f"heard {m.heard}/{m.neighbours}{' DEAF' if m.deaf else ''} "
        f"hwm {m.newcomer_hwm_kb / 1024:5.1f} MiB neighbours {m.neighbour_hwm_kb / 1024:5.1f} MiB"
    )
    if m.change:
        c = m.change
        text += (
            f"; +{c['added']} ids, {c['expired']} expired, a neighbour holds {c['held_after']}, "
            + (
                "the same set on every neighbour"
                if c["sets_equal"]
                else f"{c['neighbours_differing']} neighbours with another set "
                f"({c['ids_not_on_every_neighbour']} ids not on every neighbour)"
            )
            + f"; hello taken by {c['taken_by']}/{m.neighbours}"
            + ("" if c["first"] else f"; NOT the first: {', '.join(c['other_hellos'])}")
        )
    return text


def run_broker(broker: str, root: Path, args: argparse.Namespace, out: list[Measurement], run: int) -> None:
    taken: set[int] = set()
    run_tag = uuid.uuid4().hex[:8]
    benches: list[ClusterBench] = []
    try:
        for variant in args.variants:
            benches.append(ClusterBench(broker, variant, root, args.pythons[variant], taken, run_tag))
            log(f"[run {run}] cluster {benches[-1].describe()}")
        plan: list[tuple[int, int]] = [(n, 0) for n in sorted(args.neighbours) if 0 in args.revoked]
        plan += [(n, r) for r in sorted(args.revoked) if r for n in sorted(args.neighbours, reverse=True)]
        revoked = 0
        changes = sum(1 for _, r in plan if r) if args.change else 0
        for index, (n, r) in enumerate(plan):
            if r != revoked:
                top = max(args.neighbours)
                for b in benches:
                    b.set_neighbours(top)
                ids = [str(uuid.uuid4()) for _ in range(r - revoked)]
                # The oldest ids one per message, enough for every change of the run to push out
                # the same ids on every neighbour (see ClusterBench.revoke).
                single = min(len(ids), max(100, args.change * changes)) if revoked == 0 else 0
                log(
                    f"[run {run} {broker}] revoking {len(ids)} ids on {top} neighbours of each cluster "
                    f"(the first {single} one per message)"
                )
                for b in benches:
                    b.revoke(ids, single)
                revoked = r
            for b in benches:
                b.set_neighbours(n)
            for rep in range(args.repeat):
                k = rep % len(benches)
                for b in benches[k:] + benches[:k]:  # the order rotates with the repeat
                    m = b.newcomer(rep, r, run)
                    out.append(m)
                    log(describe(m))
            if r and args.change:
                k = index % len(benches)
                for b in benches[k:] + benches[:k]:  # one cluster at a time: the change, its newcomer
                    m = b.after_change(args.change, r, run)
                    out.append(m)
                    log(describe(m))
    finally:
        for b in benches:
            b.close()


# -- report -----------------------------------------------------------------

Key = tuple[str, int, int]
Stats = dict[str, float]


def _stats(values: Sequence[float]) -> Stats | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def _mmm(values: Sequence[float], digits: int = 0, scale: float = 1.0) -> str:
    if not values:
        return "-"
    vals = sorted(v / scale for v in values)
    return f"{vals[0]:.{digits}f} / {statistics.median(vals):.{digits}f} / {vals[-1]:.{digits}f}"


def _fmt(v: Stats | None) -> str:
    return "-" if not v else f"{v['min']:.2f} / {v['median']:.2f} / {v['max']:.2f}"


def _heard(ms: Sequence[Measurement]) -> str:
    """The heard counts of the newcomers, ``;`` between runs, ``!`` on a deaf one."""
    runs = sorted({m.run for m in ms})
    return "; ".join(
        ", ".join(f"{m.heard}{'!' if m.deaf else ''}" for m in ms if m.run == run) for run in runs
    )


def _cell(key: Key) -> str:
    return f"{key[0]} {key[1]} x {key[2]:,}"


def steady(results: Sequence[Measurement]) -> list[Measurement]:
    return [m for m in results if m.kind == STEADY]


def cells(results: Sequence[Measurement]) -> dict[Key, dict[str, list[Measurement]]]:
    """The steady newcomers per cell and variant, every run together."""
    out: dict[Key, dict[str, list[Measurement]]] = {}
    for m in steady(results):
        out.setdefault((m.broker, m.neighbours, m.revoked), {}).setdefault(m.variant, []).append(m)
    return out


def paired_ratios(ours: Sequence[Measurement], stock: Sequence[Measurement], attr: str) -> list[float]:
    """Each newcomer of ours over the stock newcomer of the same run and repeat."""
    by_rep = {(m.run, m.repeat): m for m in stock}
    out = []
    for m in ours:
        s = by_rep.get((m.run, m.repeat))
        if s is not None and getattr(s, attr) > 0:
            out.append(getattr(m, attr) / getattr(s, attr))
    return out


def ratio_summary(results: Sequence[Measurement]) -> list[dict[str, Any]]:
    """Per cell and variant of ours: min/median/max of the paired ratios ours/stock (every run),
    and the median ready ratio of each run."""
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
                row[attr] = _stats(paired_ratios(ms, stock, attr))
            row["ready_median_by_run"] = {
                run: statistics.median(vals)
                for run in sorted({m.run for m in ms})
                if (vals := paired_ratios([m for m in ms if m.run == run], stock, "ready_ms"))
            }
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


def largest_cells(results: Sequence[Measurement]) -> dict[str, Key]:
    """Per broker, the cell of the most neighbours at the most revoked ids."""
    out: dict[str, Key] = {}
    for key in cells(results):
        best = out.get(key[0])
        if best is None or (key[2], key[1]) > (best[2], best[1]):
            out[key[0]] = key
    return out


def heard_rows(results: Sequence[Measurement], variants: Sequence[str]) -> list[dict[str, Any]]:
    """At each broker's largest cell, per run and over all runs: per variant, the steady newcomers
    that heard all N, of those started, and the heard counts."""
    rows = []
    all_cells = cells(results)
    runs = sorted({m.run for m in results})
    for broker, key in largest_cells(results).items():
        for run in [*runs, None] if len(runs) > 1 else runs:
            row: dict[str, Any] = {
                "broker": broker,
                "neighbours": key[1],
                "revoked": key[2],
                "run": run or "all",
            }
            for variant in variants:
                ms = [m for m in all_cells[key].get(variant, []) if run is None or m.run == run]
                row[variant] = {
                    "heard_all": sum(not m.deaf for m in ms),
                    "started": len(ms),
                    "heard": [m.heard for m in ms],
                }
            rows.append(row)
    return rows


def flat_rows(results: Sequence[Measurement], variants: Sequence[str]) -> list[dict[str, Any]]:
    """Per broker, at its largest R: each variant's median at the most neighbours over its median
    at the fewest, per run (and over all runs), for the ready time and the mingle window."""
    rows = []
    all_cells = cells(results)
    runs = sorted({m.run for m in results})
    for broker, top in largest_cells(results).items():
        ns = sorted(k[1] for k in all_cells if k[0] == broker and k[2] == top[2])
        if len(ns) < 2:
            continue
        low, high = (broker, ns[0], top[2]), (broker, ns[-1], top[2])
        for run in [*runs, None] if len(runs) > 1 else runs:
            for variant in variants:
                lo = [m for m in all_cells[low].get(variant, []) if run is None or m.run == run]
                hi = [m for m in all_cells[high].get(variant, []) if run is None or m.run == run]
                if not lo or not hi:
                    continue
                row: dict[str, Any] = {
                    "broker": broker,
                    "revoked": top[2],
                    "low": ns[0],
                    "high": ns[-1],
                    "run": run or "all",
                    "variant": variant,
                }
                for attr in ("ready_ms", "mingle_ms"):
                    a = statistics.median(getattr(m, attr) for m in lo)
                    b = statistics.median(getattr(m, attr) for m in hi)
                    row[attr] = {"low": a, "high": b, "ratio": b / a if a > 0 else None}
                rows.append(row)
    return rows


def after_change_rows(results: Sequence[Measurement]) -> list[dict[str, Any]]:
    """Each first newcomer after a change against the steady newcomers of its variant, cell and run."""
    rows = []
    base = steady(results)
    for m in results:
        if m.kind != AFTER:
            continue
        same = [
            s
            for s in base
            if (s.broker, s.neighbours, s.revoked, s.variant, s.run)
            == (m.broker, m.neighbours, m.revoked, m.variant, m.run)
        ]
        row: dict[str, Any] = {
            "broker": m.broker,
            "neighbours": m.neighbours,
            "revoked": m.revoked,
            "run": m.run,
            "variant": m.variant,
            "nodename": m.nodename,
            "change": m.change,
            "first": bool(m.change and m.change["first"]),
            "sets_equal": bool(m.change and m.change["sets_equal"]),
            "heard": m.heard,
            "deaf": m.deaf,
        }
        for attr in ("ready_ms", "mingle_ms"):
            steady_median = statistics.median(getattr(s, attr) for s in same) if same else None
            value = getattr(m, attr)
            row[attr] = {
                "after": value,
                "steady_median": steady_median,
                "ratio": value / steady_median if steady_median else None,
            }
        rows.append(row)
    return rows


def _status(ok: bool | None) -> str:
    return "not measured" if ok is None else ("met" if ok else "**not met**")


def targets(results: Sequence[Measurement], runs: int, repeat: int) -> list[dict[str, str]]:
    """Each target, read from this run's measurements: what was measured, and met or not."""
    out: list[dict[str, str]] = []
    shape = f"{runs} run(s) of {repeat}"

    def add(target: str, measured: str, ok: bool | None) -> None:
        out.append({"target": target, "measured": measured, "status": _status(ok)})

    ratios = [row for row in ratio_summary(results) if row["variant"] == "default"]
    ready = [row for row in ratios if row["ready_ms"]]
    if ready:
        good = [row for row in ready if row["ready_ms"]["median"] <= MAX_READY_RATIO]
        worst = max(ready, key=lambda row: row["ready_ms"]["median"])
        add(
            f"default ready at most stock's + {MAX_READY_RATIO - 1:.0%}, every cell "
            "(median of the paired ratios)",
            f"{len(good)} of {len(ready)} cells; the highest: "
            f"{_cell((worst['broker'], worst['neighbours'], worst['revoked']))}: "
            f"{worst['ready_ms']['median']:.2f}",
            len(good) == len(ready),
        )
    else:
        add(
            f"default ready at most stock's + {MAX_READY_RATIO - 1:.0%}, every cell",
            "no default newcomer",
            None,
        )
    for attr, who in (("newcomer_hwm_kb", "newcomer"), ("neighbour_hwm_kb", "neighbours")):
        rows = [row for row in ratios if row[attr]]
        target = f"default peak memory of the {who} at most stock's, every cell (median ratio, to 0.01)"
        if not rows:
            add(target, "no default newcomer", None)
            continue
        good = [row for row in rows if round(row[attr]["median"], 2) <= MAX_HWM_RATIO]
        worst = max(rows, key=lambda row: row[attr]["median"])
        add(
            target,
            f"{len(good)} of {len(rows)} cells; the highest: "
            f"{_cell((worst['broker'], worst['neighbours'], worst['revoked']))}: {worst[attr]['median']:.2f}",
            len(good) == len(rows),
        )

    ours = [m for m in results if m.variant != "stock"]
    deaf = [m for m in ours if m.deaf]
    stock_deaf = [m for m in results if m.variant == "stock" and m.deaf]
    add(
        "never deaf: every newcomer of this package (default, fast; steady and after a change) "
        f"hears every neighbour, every cell ({shape})",
        f"{len(deaf)} deaf of {len(ours)}; stock: {len(stock_deaf)} deaf of "
        f"{sum(m.variant == 'stock' for m in results)}",
        (not deaf) if ours else None,
    )
    by_cell = cells(results)
    for key in largest_cells(results).values():
        ms = [m for v, vms in by_cell[key].items() if v != "stock" for m in vms]
        stock = by_cell[key].get("stock", [])
        add(
            f"never deaf at {_cell(key)} (the largest cell): every steady newcomer of every profile "
            f"hears {key[1]} of {key[1]}, in {shape}",
            ", ".join(
                f"{v} {sum(not m.deaf for m in vms)}/{len(vms)}"
                for v, vms in by_cell[key].items()
                if v != "stock"
            )
            + f"; stock {sum(not m.deaf for m in stock)}/{len(stock)}",
            (not any(m.deaf for m in ms)) if ms else None,
        )

    flats = [row for row in flat_rows(results, ["fast"]) if row["run"] != "all"]
    for broker in dict.fromkeys(m.broker for m in results):
        rows = [row for row in flats if row["broker"] == broker]
        for attr, what in (("ready_ms", "ready"), ("mingle_ms", "mingle window")):
            if not rows:
                add(
                    f"flat in N ({broker}): fast {what} at the most neighbours at most "
                    f"{MAX_FLAT_RATIO}x at the fewest, every run",
                    "one N only, or no fast newcomer",
                    None,
                )
                continue
            vals = [row[attr]["ratio"] for row in rows]
            first = rows[0]
            add(
                f"flat in N: fast {what} at {_cell((broker, first['high'], first['revoked']))} at most "
                f"{MAX_FLAT_RATIO}x at {first['low']} x {first['revoked']:,}, every run ({runs})",
                ", ".join("-" if v is None else f"{v:.2f}" for v in vals) + " (by run)",
                all(v is not None and v <= MAX_FLAT_RATIO for v in vals),
            )

    changes = [row for row in after_change_rows(results) if row["variant"] == "fast"]
    firsts = [row for row in changes if row["first"] and row["sets_equal"]]
    for attr, what in (("ready_ms", "ready"), ("mingle_ms", "mingle window")):
        target = (
            f"first fast newcomer after a change: {what} at most {MAX_AFTER_CHANGE_RATIO}x the steady "
            "median of its cell and run, every cell with R > 0, every run"
        )
        if not firsts:
            add(target, "no first newcomer after a change" if not changes else "none was valid", None)
            continue
        vals = [row[attr]["ratio"] for row in firsts]
        good = [v for v in vals if v is not None and v <= MAX_AFTER_CHANGE_RATIO]
        worst = max(firsts, key=lambda row: row[attr]["ratio"] or 0)
        measured = (
            f"{len(good)} of {len(vals)}; the highest: "
            f"{_cell((worst['broker'], worst['neighbours'], worst['revoked']))} run {worst['run']}: "
            f"{worst[attr]['ratio']:.2f}"
        )
        not_first = sum(not row["first"] for row in changes)
        unequal = sum(row["first"] and not row["sets_equal"] for row in changes)
        if not_first:
            measured += f" ({not_first} not the first after the change: left out)"
        if unequal:
            measured += f" ({unequal} whose neighbours held different sets: left out)"
        add(target, measured, len(good) == len(vals))
    return out


def report(results: Sequence[Measurement], runs: int, repeat: int, variants: Sequence[str]) -> str:
    out = [
        f"Each cell: min / median / max over {runs} run(s) x {repeat} newcomer(s) per variant. ready = "
        "process start to `ready.`; mingle = first to last `mingle:` line; hwm = VmHWM (MiB) of the "
        "newcomer and the largest of its neighbours'; heard = neighbours in `sync with N nodes` per "
        "newcomer (`;` between runs), `!` = fewer than started.",
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
        "Ratios ours / stock (each repeat's newcomer over the stock newcomer of the same run and "
        "repeat; min / median / max over every run; < 1 means ours is lower). target: default ready "
        f"median <= {MAX_READY_RATIO:.2f}, both hwm medians <= {MAX_HWM_RATIO:.2f}, "
        "no deaf newcomer of ours.",
        "",
        "| broker | N | R | variant | ready | mingle | newcomer hwm | neighbour hwm | ready median by run "
        "| target |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in ratio_summary(results):
        target = "met" if row["target_met"] else "**not met**"
        if row["variant"] != "default":
            target = f"({target})"
        by_run = ", ".join(f"{v:.2f}" for v in row["ready_median_by_run"].values()) or "-"
        out.append(
            f"| {row['broker']} | {row['neighbours']} | {row['revoked']} | {row['variant']} | "
            f"{_fmt(row['ready_ms'])} | {_fmt(row['mingle_ms'])} | {_fmt(row['newcomer_hwm_kb'])} | "
            f"{_fmt(row['neighbour_hwm_kb'])} | {by_run} | {target} |"
        )

    out += [
        "",
        "Heard all N at the largest cell: per variant, the steady newcomers that heard every "
        "neighbour, of those started (the heard counts after `:` when one did not).",
        "",
        "| broker | N | R | run | " + " | ".join(variants) + " |",
        "|---|---|---|---|" + "---|" * len(variants),
    ]
    for row in heard_rows(results, variants):
        vals = []
        for v in variants:
            h = row[v]
            text = f"{h['heard_all']}/{h['started']}"
            if h["heard_all"] < h["started"]:
                text += ": " + ", ".join(f"{x}{'!' if x < row['neighbours'] else ''}" for x in h["heard"])
            vals.append(text)
        out.append(
            f"| {row['broker']} | {row['neighbours']} | {row['revoked']} | {row['run']} | "
            + " | ".join(vals)
            + " |"
        )

    flats = flat_rows(results, variants)
    out += [
        "",
        f"Flat in N: at the largest R, the median at the most neighbours over the median at the fewest, "
        f"per run (target for fast: at most {MAX_FLAT_RATIO}, ready and mingle both).",
        "",
    ]
    if flats:
        out += [
            "| broker | R | N | run | variant | ready ms (fewest / most) | ready ratio | mingle ms "
            "(fewest / most) | mingle ratio |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for row in flats:
            rd, mg = row["ready_ms"], row["mingle_ms"]
            out.append(
                f"| {row['broker']} | {row['revoked']} | {row['low']} -> {row['high']} | {row['run']} | "
                f"{row['variant']} | {rd['low']:.0f} / {rd['high']:.0f} | "
                f"{'-' if rd['ratio'] is None else format(rd['ratio'], '.2f')} | "
                f"{mg['low']:.0f} / {mg['high']:.0f} | "
                f"{'-' if mg['ratio'] is None else format(mg['ratio'], '.2f')} |"
            )
    else:
        out.append("(not measured: one neighbour count only)")

    changes = after_change_rows(results)
    out += [
        "",
        "The first newcomer after a change of the neighbours' sets (ids revoked, a neighbour's count "
        "before -> after: the ids beyond its maxlen expire), against the median of the steady newcomers "
        f"of its variant, cell and run (target for fast: at most {MAX_AFTER_CHANGE_RATIO}x). first: no "
        "neighbour logged another hello between the change and this newcomer's; equal sets: every "
        "neighbour held the same ids once it listed the new ones (else: the ids not on every neighbour).",
        "",
    ]
    if changes:
        out += [
            "| broker | N | R | run | variant | ids added / expired (held) | equal sets | first | heard "
            "| ready ms (after / steady) | ready ratio | mingle ms (after / steady) | mingle ratio |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in changes:
            c = row["change"] or {}
            cols = []
            for attr in ("ready_ms", "mingle_ms"):
                v = row[attr]
                base = "-" if v["steady_median"] is None else f"{v['steady_median']:.0f}"
                cols.append(f"{v['after']:.0f} / {base}")
                cols.append("-" if v["ratio"] is None else f"{v['ratio']:.2f}")
            out.append(
                f"| {row['broker']} | {row['neighbours']} | {row['revoked']} | {row['run']} | "
                f"{row['variant']} | "
                f"{c.get('added')} / {c.get('expired')} ({c.get('held_before')} -> {c.get('held_after')}) | "
                f"{'yes' if row['sets_equal'] else 'NO: ' + str(c.get('ids_not_on_every_neighbour'))} | "
                f"{'yes' if row['first'] else 'NO: ' + ', '.join(c.get('other_hellos', []))} | "
                f"{row['heard']}{'!' if row['deaf'] else ''} | " + " | ".join(cols) + " |"
            )
    else:
        out.append("(not measured: no cell with R > 0, or --change 0)")

    deaf = [m for m in results if m.deaf]
    out += ["", f"Deaf newcomers (heard fewer neighbours than were started): {len(deaf)}"]
    for m in deaf:
        which = f"#{m.repeat + 1}" if m.kind == STEADY else "first after the change"
        out.append(
            f"- {m.broker} N={m.neighbours} R={m.revoked} run {m.run} {m.variant} {which}: heard {m.heard}"
        )

    out += [
        "",
        "Targets, each read from the measurements above:",
        "",
        "| target | measured | met? |",
        "|---|---|---|",
    ]
    for t in targets(results, runs, repeat):
        out.append(f"| {t['target']} | {t['measured']} | {t['status']} |")
    return "\n".join(out)


def dump(ms: Sequence[Measurement]) -> list[dict[str, Any]]:
    return [{**asdict(m), "deaf": m.deaf} for m in ms]


def run_json(results: Sequence[Measurement], run: int, variants: Sequence[str]) -> dict[str, Any]:
    """One run's measurements and what the report reads from them, apart from the other runs'."""
    ms = [m for m in results if m.run == run]
    return {
        "run": run,
        "ratios": ratio_summary(ms),
        "heard_at_largest": heard_rows(ms, variants),
        "flat": flat_rows(ms, variants),
        "after_change": after_change_rows(ms),
        "measurements": dump(ms),
    }


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    benchlib.add_common_options(
        p, brokers="redis", variants=VARIANTS, repeat=3, repeat_help="newcomers per variant and cell, per run"
    )
    p.add_argument("--neighbours", default="1,8", help="comma-separated neighbour counts")
    p.add_argument("--revoked", default="0,50000", help="comma-separated revoked-id counts")
    p.add_argument("--runs", type=int, default=1, help="the whole measurement this many times (new clusters)")
    p.add_argument(
        "--change",
        type=int,
        default=10,
        help="ids revoked before the first newcomer after a change, in each cell with R > 0 (0: none)",
    )
    p.add_argument(
        "--venvs",
        choices=("clean", "current"),
        default="clean",
        help="clean: stock in a virtualenv of Celery alone, this package in one of Celery and it "
        "(installed, not editable); current: every variant in --python (this virtualenv)",
    )
    p.add_argument("--quick", action="store_true", help="Redis, N=1, R=0, 1 repeat")
    p.add_argument("--full", action="store_true", help="Redis and RabbitMQ, N=1,8,32, R=0,50000, 3 repeats")
    args = p.parse_args(argv)
    if args.quick:
        args.brokers, args.neighbours, args.revoked, args.repeat = "redis", "1", "0", 1
    if args.full:
        args.brokers, args.neighbours, args.revoked, args.repeat = "redis,rabbitmq", "1,8,32", "0,50000", 3
    benchlib.check_common_options(p, args, VARIANTS)
    args.neighbours = benchlib.ints(args.neighbours)
    args.revoked = benchlib.ints(args.revoked)
    if "stock" not in args.variants:
        p.error("the judge needs the stock variant (ratios are ours / stock)")
    if not args.neighbours or not args.revoked or min(args.neighbours) < 1 or min(args.revoked) < 0:
        p.error("--neighbours >= 1, --revoked >= 0")
    if args.runs < 1 or args.change < 0:
        p.error("--runs >= 1, --change >= 0")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    import celery
    import kombu

    if args.venvs == "clean":
        log("virtualenvs with only what a user installs (built once per version of the core)")
        stock_python, ours_python = benchlib.clean_pythons()
        args.pythons = {v: stock_python if v == "stock" else ours_python for v in args.variants}
        log(f"stock: {stock_python}; this package: {ours_python}")
    else:
        log(benchlib.compile_checkout())
        args.pythons = dict.fromkeys(args.variants, args.python)

    started = time.monotonic()
    load_start = os.getloadavg()
    results: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="mingle-judge-") as tmp:
        for run in range(1, args.runs + 1):
            log(f"run {run} of {args.runs}")
            for broker in args.brokers:
                run_broker(broker, Path(tmp), args, results, run)
    meta: Mapping[str, Any] = {
        "command": " ".join([Path(sys.argv[0]).name, *(sys.argv[1:] if argv is None else argv)]),
        "code": benchlib.code_state(),
        "celery": celery.__version__,
        "kombu": kombu.__version__,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "run_s": round(time.monotonic() - started),
        "runs": args.runs,
        "repeat": args.repeat,
        "change": args.change,
        "venvs": args.venvs,
        "pythons": args.pythons,
    }
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "meta": meta,
                    "ratios": ratio_summary(results),
                    "heard_at_largest": heard_rows(results, args.variants),
                    "flat": flat_rows(results, args.variants),
                    "after_change": after_change_rows(results),
                    "targets": targets(results, args.runs, args.repeat),
                    "measurements": dump(results),
                    "runs": [run_json(results, run, args.variants) for run in range(1, args.runs + 1)],
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
    if args.venvs == "clean":
        print("workers: stock in a virtualenv of celery[redis] alone, this package's in one with it as well")
    else:
        print(f"workers: every variant in {args.python} (this checkout's .pyc written first)")
    print()
    print(report(results, args.runs, args.repeat, args.variants))
    return 0


if __name__ == "__main__":
    sys.exit(main())
