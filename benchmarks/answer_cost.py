"""What one neighbour spends answering a fast newcomer's digest request, this code against another.

For each code (this checkout, and ``--baseline REV``: that commit, checked out in a temporary git
worktree and put first on the workers' ``PYTHONPATH``), in the same run and the same virtualenv:
one real ``celery worker`` (``-P solo``, fast profile, Redis, a database of the run's own) gets
``--revoked`` ids (revoke commands of 5,000 ids), then ``--hellos`` digest requests as a fast
newcomer of this release sends them (``want: digest``, ``dv: 3``), each from a new node name,
with ``--change`` new ids revoked before each one (``0``: the steady state). Measured: the
worker's CPU time for each request (``/proc/<pid>/task/*/schedstat``, nanoseconds on a CPU,
read before the request and 50 ms after its reply), so that the figure is what the neighbour
spends, not how long the machine made the request wait; a revoke's own cost falls outside (it
is waited for first). One request before the measured ones is not counted: the first digest
after the fill is made from every id, by every code.

    python benchmarks/answer_cost.py --baseline 4e525d9 --revoked 50000 --hellos 40 --change 0,10
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path
from typing import Any

from benchlib import RedisSpace, code_state, log
from celery import Celery

ROOT = Path(__file__).resolve().parent.parent

APP = textwrap.dedent(
    """
    import os
    from celery import Celery
    app = Celery("answer_cost", broker=os.environ["ANSWER_COST_BROKER"])
    app.conf.update(
        worker_consumer="mingle_plugins.consumer:Consumer",
        mingle_profile="fast",
        control_exchange=os.environ["ANSWER_COST_TAG"],
        task_default_queue=os.environ["ANSWER_COST_TAG"],
        worker_hijack_root_logger=False,
    )
    """
)


def cpu_ns(pid: int) -> int:
    """Nanoseconds the process ``pid`` (all its threads) has run on a CPU."""
    total = 0
    for path in glob.glob(f"/proc/{pid}/task/*/schedstat"):
        try:
            total += int(Path(path).read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass  # a thread that ended meanwhile
    return total


def measure(code: Path, label: str, args: argparse.Namespace, change: int, folder: Path) -> dict[str, Any]:
    tag = f"answercost{uuid.uuid4().hex[:10]}"
    space = RedisSpace(tag)
    env = dict(os.environ, ANSWER_COST_BROKER=space.url, ANSWER_COST_TAG=tag)
    env["PYTHONPATH"] = os.pathsep.join([str(code), str(folder)])
    worker = subprocess.Popen(
        [args.python, "-m", "celery", "-A", "answer_cost_app", "worker", "-P", "solo", "-n", f"{tag}@bench"],
        env=env,
        cwd=folder,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    app = Celery("answer_cost_driver", broker=space.url)
    app.conf.update(control_exchange=tag)
    try:
        ids = [str(uuid.uuid4()) for _ in range(args.revoked)]

        def hello(k: int) -> None:
            arguments = {
                "from_node": f"newcomer{k}@bench",
                "revoked": [],
                "mingle": {"v": 2, "want": "digest", "dv": 3, "ages": [], "age_runs": True},
            }
            replies = app.control.broadcast("hello", arguments=arguments, reply=True, timeout=30, limit=1)
            ext = next(iter(replies[0].values())).get("mingle", {}) if replies else {}
            if "digest" not in ext:
                raise RuntimeError(f"{label}: no digest in the reply {replies!r}")

        deadline = time.monotonic() + 60
        while not app.control.ping(timeout=1.0):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{label}: the worker did not answer a ping within 60 s")
        for start in range(0, len(ids), 5000):
            app.control.revoke(ids[start : start + 5000])
        hello(-1)  # the first digest after the fill: made from every id, not counted
        spent: list[float] = []
        for k in range(args.hellos):
            if change:
                app.control.revoke([str(uuid.uuid4()) for _ in range(change)])
                app.control.ping(timeout=5.0, limit=1)  # handled in order: the revoke is done
            before = cpu_ns(worker.pid)
            hello(k)
            time.sleep(0.05)
            spent.append((cpu_ns(worker.pid) - before) / 1e6)
        return {
            "code": label,
            "change": change,
            "revoked": args.revoked,
            "hellos": args.hellos,
            "cpu_ms": spent,
            "median": statistics.median(spent),
            "min": min(spent),
            "max": max(spent),
        }
    finally:
        worker.terminate()
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
        space.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--baseline", help="a git revision to measure beside this checkout (a temporary worktree)")
    p.add_argument("--revoked", type=int, default=50_000)
    p.add_argument("--hellos", type=int, default=40)
    p.add_argument("--change", default="0,10", help="ids revoked before each request, comma-separated")
    p.add_argument("--json", type=Path)
    p.add_argument("--python", default=sys.executable, help="the Python that runs the workers")
    args = p.parse_args(argv)
    changes = [int(c) for c in args.change.split(",") if c.strip()]
    if args.hellos < 1 or args.revoked < 0 or any(c < 0 for c in changes):
        p.error("--hellos >= 1, --revoked and --change >= 0")
    with tempfile.TemporaryDirectory(prefix="answer-cost-") as tmp:
        folder = Path(tmp)
        (folder / "answer_cost_app.py").write_text(APP)
        codes = [(ROOT, f"this checkout ({code_state()})")]
        if args.baseline:
            base = folder / "baseline"
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(base), args.baseline],
                check=True,
            )
            codes.append((base, f"baseline {args.baseline}"))
        results = []
        try:
            for change in changes:
                for code, label in codes:
                    log(f"{label}: {args.revoked} ids, {args.hellos} requests, {change} revoked before each")
                    results.append(measure(code, label, args, change, folder))
        finally:
            if args.baseline:
                subprocess.run(
                    ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(folder / "baseline")],
                    check=False,
                )
    print(f"Neighbour CPU per digest request, {args.revoked} ids held (ms: median, min-max of {args.hellos})")
    print("| code | ids revoked before each | median | min-max |")
    print("|---|---|---|---|")
    for r in results:
        print(f"| {r['code']} | {r['change']} | {r['median']:.2f} | {r['min']:.2f}-{r['max']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
