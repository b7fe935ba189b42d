#!/usr/bin/env python
"""Reproduce: a neighbour that answers late, and a fast newcomer that knows it is there.

Starts ``--neighbours`` workers (fast profile) on a broker, optionally revokes ``--revoked``
ids on all of them, then ``--repeat`` times: pauses the last neighbour (SIGSTOP), starts a
newcomer (``mingle_profile = "fast"`` + ``--conf``, DEBUG log), and resumes the neighbour
``--pause`` seconds after the newcomer logged ``mingle: searching``. Prints the newcomer's
collection lines: on Redis the hello says how many subscribers it reached, so every
neighbour should be heard (``sync with N nodes``).

    python benchmarks/slow_neighbour.py --broker redis --neighbours 4 --pause 0.15
    python benchmarks/slow_neighbour.py --broker redis --revoked 1000     # + the digest round
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # from the directory of this script, inserted above
import mingle_bench as mb


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--broker", default="redis", choices=benchlib.BROKERS)
    p.add_argument("--neighbours", type=int, default=4)
    p.add_argument("--revoked", type=int, default=0)
    p.add_argument("--pause", type=float, default=0.15, help="seconds the last neighbour stays paused")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--conf", type=json.loads, default={}, help="extra settings of the newcomer (JSON)")
    args = p.parse_args()
    heard = []
    with tempfile.TemporaryDirectory(prefix="mingle-slow-") as tmp:
        bench = mb.BrokerBench(args.broker, Path(tmp), sys.executable)
        try:
            bench.set_neighbours(args.neighbours)
            if args.revoked:
                bench.revoke(args.revoked)
            slow = bench.neighbours[-1]
            conf = {**mb.FAST, **args.conf}
            for i in range(args.repeat):
                os.kill(slow.pid, signal.SIGSTOP)
                try:
                    newcomer = bench.cluster.start(f"late{i}@bench", wait=False, conf=conf, loglevel="DEBUG")
                    deadline = time.monotonic() + 60
                    while "mingle: searching" not in newcomer.log() and time.monotonic() < deadline:
                        time.sleep(0.002)
                    time.sleep(args.pause)
                finally:
                    os.kill(slow.pid, signal.SIGCONT)
                newcomer.wait_ready()
                lines = [
                    line[11:23] + " " + line.split("] ", 1)[1][:100]
                    for line in newcomer.log().splitlines()
                    if any(k in line for k in ("reached", "collected", "sync with", "summary"))
                ]
                print(f"-- newcomer {i + 1}\n" + "\n".join(lines), flush=True)
                heard += [line for line in lines if "sync with" in line]
                bench.cluster.stop_node(newcomer.nodename, signal.SIGKILL)
        finally:
            for worker in bench.neighbours:
                try:
                    os.kill(worker.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            bench.close()
    complete = sum(f"sync with {args.neighbours} nodes" in line for line in heard)
    print(f"{complete} of {args.repeat} newcomers heard all {args.neighbours} neighbours")
    return 0 if complete == args.repeat else 1


if __name__ == "__main__":
    sys.exit(main())
