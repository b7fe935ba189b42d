"""The demo: a newcomer worker learns the revoked ids and the clock of its neighbours.

Run it with ``celery mingle demo`` or ``python -m mingle_plugins.demo``. It needs
no server: the broker is the ``filesystem://`` transport in a temporary folder
and the workers are ``celery worker`` subprocesses of the running Python. It
needs the filesystem transport plugin (``pip install ./transports/filesystem``
in the celery-mingle-plugins checkout), without which the ``filesystem``
transport is not claimed and no worker would mingle.

The workers are started by :mod:`mingle_plugins.testkit` (the launcher of the
tests, see docs/testing-plugins.md), each in its own process group; they are
stopped and the folder is removed on exit, on Ctrl-C and on SIGTERM/SIGHUP.

The newcomer's clock is shown twice: ``CLOCK before->after`` of its mingle
(``celery mingle status``), then ``inspect clock``, which is higher by one for
each control message the worker received since (Celery moves a worker's clock
on every message of its pidbox, the ``inspect`` itself included).
"""

from __future__ import annotations

import argparse
import atexit
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from .answering.control import STATUS_COMMAND
from .testkit import MINGLE_LINE, Cluster

__all__ = ["EX_MISSING_PLUGIN", "INSTALL_HINT", "Demo", "main", "run_demo"]

#: Exit status when the filesystem transport plugin is not installed.
EX_MISSING_PLUGIN = 2

INSTALL_HINT = (
    "the demo needs the filesystem transport plugin: run `pip install ./transports/filesystem` "
    "in the celery-mingle-plugins checkout, then try again"
)

APP_MODULE = "mingledemo"

_SUMMARY = re.compile(
    r"mingle: summary: (\d+) neighbours, (\d+) accepted, (\d+) ids merged, \d+ dropped by policy, "
    r"(\d+) rejected, ([\d.]+)s"
)


def _claiming_plugin(app: Any) -> tuple[str | None, str]:
    """The plugin that claims the ``filesystem`` transport, or ``None`` and why not."""
    from .plugins.diagnostics import configure_app, decide_transport

    config, _ = configure_app(app)
    pm = config.pm
    decision = decide_transport(app, config.runner, "filesystem", settings=config.settings, stock=())
    if decision.compatible:
        return decision.decided_by, ""
    if decision.refused:
        return None, f"plugin {decision.decided_by!r} refuses the filesystem transport"
    for rec in pm.records:
        if rec.name == "filesystem" or rec.distribution == "celery-mingle-filesystem":
            if rec.status != "loaded":
                return None, f"the filesystem plugin is installed but {rec.status}: {rec.reason}"
    return None, INSTALL_HINT


class Demo:
    """The demo cluster (a :class:`~mingle_plugins.testkit.Cluster` in a temporary folder)."""

    def __init__(self, neighbours: int = 3, revoke: int = 5, out: TextIO | None = None) -> None:
        self.neighbours = neighbours
        self.revoke = revoke
        self.out = out or sys.stdout
        self.folder = Path(tempfile.mkdtemp(prefix="mingle-demo-"))
        self.cluster = Cluster.filesystem(self.folder, app=APP_MODULE)
        self.config = self.cluster.config
        #: Seconds the workers get to exit after SIGTERM before SIGKILL.
        self.grace = 0.5
        #: Remote-control messages this demo sent (each moves every worker's clock by one).
        self.sent: list[str] = []
        self._closed = False
        self._lock = threading.Lock()
        #: The signal that interrupted the demo (set by run_demo's handler), or ``None``.
        self.interrupted: int | None = None

    def checkpoint(self) -> None:
        """Raise :class:`Interrupted` again if a signal came: its first raise may have landed in
        library code that swallows every exception while it cleans up (kombu does)."""
        if self.interrupted is not None:
            raise Interrupted(self.interrupted)

    # -- output ------------------------------------------------------------

    def say(self, message: str = "") -> None:
        self.checkpoint()
        print(message, file=self.out, flush=True)

    # -- the cluster ---------------------------------------------------------

    @property
    def app(self) -> Any:
        return self.cluster.client

    def start_worker(self, node: str) -> None:
        self.cluster.start(node, wait=False)

    def wait_ready(
        self, nodes: Sequence[str], timeout: float = 60.0, on_line: Callable[[str, str], None] | None = None
    ) -> None:
        """Wait for ``ready.`` in the logs; ``on_line(node, line)`` for each new ``mingle:`` line.

        The logs tell; no control message is sent, so no worker's clock moves.
        """
        seen = dict.fromkeys(nodes, 0)
        pending = set(nodes)
        deadline = time.monotonic() + timeout
        while pending:
            for node in sorted(pending):
                worker = self.cluster.worker(node)
                log = worker.log()
                if on_line is not None:
                    lines = [m["msg"] for m in MINGLE_LINE.finditer(log)]
                    for line in lines[seen[node] :]:
                        on_line(node, line)
                    seen[node] = len(lines)
                if re.search(r"\bready\.", log):
                    pending.discard(node)
                elif worker.proc.poll() is not None:
                    raise DemoFailed(
                        f"{node} exited with status {worker.proc.returncode}:\n{worker.tail(20)}"
                    )
            if pending and time.monotonic() > deadline:
                raise DemoFailed(
                    f"{', '.join(sorted(pending))} not ready after {timeout:.0f}s:\n"
                    + "\n".join(self.cluster.worker(n).tail(20) for n in sorted(pending))
                )
            self.checkpoint()
            time.sleep(0.05)

    def inspect(self, command: str, nodes: Sequence[str], timeout: float = 1.0) -> dict[str, Any]:
        """``inspect <command>`` of ``nodes`` in one broadcast (counted in :attr:`sent`)."""
        self.checkpoint()
        self.sent.append(f"inspect {command}")
        inspect = self.app.control.inspect(destination=list(nodes), timeout=timeout)
        replies = dict(getattr(inspect, command)() or {})
        self.checkpoint()
        return replies

    def ask(self, command: str, nodes: Sequence[str], timeout: float = 10.0) -> dict[str, Any]:
        """``inspect <command>``, asked again until every node answered (or ``timeout``)."""
        deadline = time.monotonic() + timeout
        replies: dict[str, Any] = {}
        while True:
            replies.update(self.inspect(command, [n for n in nodes if n not in replies]))
            if set(nodes) <= set(replies) or time.monotonic() > deadline:
                return replies

    def clocks(self, nodes: Sequence[str]) -> dict[str, int]:
        """``inspect clock`` of ``nodes`` (-1: no answer)."""
        replies = self.ask("clock", nodes)
        return {n: int(replies[n]["clock"]) if n in replies else -1 for n in nodes}

    def status(self, node: str) -> dict[str, Any]:
        """``celery mingle status`` of ``node``: a ``mingle_status`` broadcast, then a ``ping``."""
        from .client.status import query_status

        self.sent += [STATUS_COMMAND, "ping"]
        return query_status(self.app, timeout=1.0, destination=[node])

    # -- clean-up ------------------------------------------------------------

    def close(self) -> None:
        """Stop every worker (process groups) and remove the folder; safe to call twice."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        if threading.current_thread() is threading.main_thread():
            # A second Ctrl-C (or a SIGTERM) must not stop the clean-up half-way;
            # run_demo() puts the handlers back afterwards.
            for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
                signal.signal(sig, signal.SIG_IGN)
        # A worker on a polling transport takes ~4 s to shut down; the demo's
        # workers have nothing to save, so they get a short grace, then SIGKILL.
        self.cluster.close(grace=self.grace)
        shutil.rmtree(self.folder, ignore_errors=True)

    # -- the story -------------------------------------------------------------

    def run(self) -> int:
        started = time.monotonic()
        plugin, why = _claiming_plugin(self.app)
        if plugin is None:
            print(f"error: {why}", file=sys.stderr, flush=True)
            return EX_MISSING_PLUGIN
        names = [f"demo{i}@mingle-demo" for i in range(1, self.neighbours + 1)]
        newcomer = "newcomer@mingle-demo"
        self.say(
            f"mingle demo: {self.neighbours} worker(s), then a newcomer, on filesystem:// "
            f"(plugin {plugin!r} claims it)"
        )
        self.say(f"folder: {self.folder}")

        # The first worker creates the broadcast exchange's table alone: kombu's
        # filesystem transport creates that file without a lock.
        self.say(f"starting {', '.join(names)} ...")
        self.start_worker(names[0])
        self.wait_ready(names[:1])
        for node in names[1:]:
            self.start_worker(node)
        self.wait_ready(names)
        self.say(f"  {len(names)} worker(s) ready after {time.monotonic() - started:.1f}s")

        ids = [str(uuid.uuid4()) for _ in range(self.revoke)]
        self.app.control.revoke(ids)
        self.say(f"revoked {len(ids)} task ids: {', '.join(i[:8] for i in ids)} ...")
        deadline = time.monotonic() + 15.0
        missing = set(names)
        while missing and time.monotonic() < deadline:
            reply = self.inspect("revoked", sorted(missing), timeout=0.5)
            missing = {n for n in missing if not set(ids) <= set(reply.get(n) or ())}
        if missing:
            self.say(f"  {', '.join(sorted(missing))} did not get the revokes")
            return 1
        top = max(self.clocks(names).values())
        self.say(f"  every worker has them; highest clock: {top}")

        self.say(f"starting {newcomer}; its mingle log:")
        self.start_worker(newcomer)
        self.wait_ready([newcomer], on_line=lambda node, line: self.say(f"  | {line}"))
        match = _SUMMARY.search(self.cluster.worker(newcomer).log())
        took = float(match[5]) if match else float("nan")
        sent_before = len(self.sent)

        from .client.status import print_status

        self.say("celery mingle status:")
        result = self.status(newcomer)
        if result["workers"]:
            print_status(result)
        last = (result["workers"].get(newcomer) or {}).get("last") or {}
        after = int(last.get("clock_after", -1))
        self.say(
            f"  CLOCK {last.get('clock_before')}->{after}: its Lamport clock before and after its mingle; "
            f"its neighbours were at most at {top}"
        )
        learnt = set(ids) & set(self.ask("revoked", [newcomer]).get(newcomer) or ())
        self.say(f"inspect revoked: {newcomer} has {len(learnt)} of the {len(ids)} revoked ids")
        clock = self.clocks([newcomer])[newcomer]
        self.say(
            f"inspect clock:   {newcomer} is at {clock} = {after} after its mingle "
            + _moved(clock - after, self.sent[sent_before:])
        )
        ok = len(learnt) == len(ids) and after > top
        if ok:
            self.say(
                f"OK: the newcomer learnt the {len(ids)} revoked ids and the clock from its "
                f"neighbours; its mingle took {took:.3f}s"
            )
        else:
            tail = self.cluster.worker(newcomer).tail(20)
            self.say("FAILED: the newcomer did not learn everything; its log:\n" + tail)
        self.say(f"demo took {time.monotonic() - started:.1f}s; stopping {len(self.cluster.workers)} workers")
        return 0 if ok else 1


def _moved(ticks: int, sent: Sequence[str]) -> str:
    """Why a worker's clock moved ``ticks`` since its mingle, when this demo sent ``sent`` since:
    Celery moves a worker's clock by one for each control message it receives (for any node)."""
    why = "each moves a worker's clock by one"
    if ticks == len(sent):
        return f"+ {ticks} control messages received since\n                 ({', '.join(sent)}): {why}"
    return (
        f"+ {ticks} control messages received since ({why});\n                 "
        f"this demo sent {len(sent)} of them ({', '.join(sent)})"
    )


class DemoFailed(Exception):
    """A worker of the demo did not start."""


class Interrupted(BaseException):
    """SIGINT, SIGTERM or SIGHUP came: the demo stops its workers and exits with 128 + the signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def run_demo(workers: int = 3, revoke: int = 5) -> int:
    """Run the demo; return the exit status (0 ok, 1 failed, 2 plugin missing, 130 interrupted)."""
    demo = Demo(workers, revoke)
    atexit.register(demo.close)
    previous: dict[signal.Signals, Any] = {}

    def stop(signum: int, frame: FrameType | None) -> None:
        # Remembered first: should the raise land where it is swallowed, the next checkpoint
        # raises it again, and the end of the run still reports it.
        if demo.interrupted is not None:
            return  # a second signal: the clean-up is under way
        demo.interrupted = signum
        raise Interrupted(signum)

    def interrupted(signum: int) -> int:
        print("\ninterrupted: stopping the workers", file=sys.stderr, flush=True)
        return 128 + signum

    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # close() ignores them
            previous[sig] = signal.signal(sig, stop)
    try:
        status = demo.run()
        return interrupted(demo.interrupted) if demo.interrupted is not None else status
    except Interrupted as exc:
        return interrupted(exc.signum)
    except KeyboardInterrupt:  # SIGINT before the handler was installed, or outside the main thread
        return interrupted(signal.SIGINT)
    except DemoFailed as exc:
        if demo.interrupted is not None:  # a worker stopped by the same Ctrl-C (its terminal's group)
            return interrupted(demo.interrupted)
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    finally:
        demo.close()
        atexit.unregister(demo.close)
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mingle_plugins.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=3, help="workers started before the newcomer")
    parser.add_argument("--revoke", type=int, default=5, help="how many task ids to revoke")
    args = parser.parse_args(argv)
    return run_demo(workers=max(1, args.workers), revoke=max(1, args.revoke))


if __name__ == "__main__":
    sys.exit(main())
