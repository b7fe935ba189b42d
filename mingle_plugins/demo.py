"""The demo: a newcomer worker learns the revoked ids and the clock of its neighbours.

Run it with ``celery mingle demo`` or ``python -m mingle_plugins.demo``. It needs
no server: the broker is the ``filesystem://`` transport in a temporary folder
and the workers are ``celery worker`` subprocesses of the running Python. It
needs the filesystem transport plugin (``pip install ./transports/filesystem``
in the celery-mingle-plugins checkout), without which the ``filesystem``
transport is not claimed and no worker would mingle.

Every worker runs in its own process group; they are stopped and the folder
is removed on exit, on Ctrl-C and on SIGTERM/SIGHUP.
"""

from __future__ import annotations

import argparse
import atexit
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

__all__ = ["EX_MISSING_PLUGIN", "INSTALL_HINT", "Demo", "main", "run_demo"]

#: Exit status when the filesystem transport plugin is not installed.
EX_MISSING_PLUGIN = 2

INSTALL_HINT = (
    "the demo needs the filesystem transport plugin: run `pip install ./transports/filesystem` "
    "in the celery-mingle-plugins checkout, then try again"
)

APP_MODULE = "mingledemo"

APP_TEMPLATE = '''\
"""The demo's Celery app (written by mingle_plugins.demo)."""
from celery import Celery

app = Celery("{module}")
app.conf.update({conf!r})


@app.task
def add(x, y):
    return x + y
'''


_MINGLE_LINE = re.compile(r"^\[[^\]]*\] (mingle: .*)$", re.M)
_SUMMARY = re.compile(
    r"mingle: summary: (\d+) neighbours, (\d+) merged, (\d+) ids merged, (\d+) rejected, "
    r"([\d.]+)s"
)


def demo_config(folder: Path, polling_interval: float = 0.1) -> dict[str, Any]:
    """The Celery configuration of the demo cluster in ``folder``."""
    broker = folder / "broker"
    return {
        "broker_url": "filesystem://",
        # filesystem:// with atomic message writes (kombu#1551), shipped by the filesystem plugin.
        "broker_transport": "mingle_filesystem.transport:AtomicFilesystemTransport",
        "broker_transport_options": {
            "data_folder_in": str(broker),
            "data_folder_out": str(broker),
            "control_folder": str(folder / "control"),
            "polling_interval": polling_interval,
        },
        "broker_connection_retry_on_startup": True,
        "worker_consumer": "mingle_plugins.consumer:Consumer",
        # The filesystem plugin counts the neighbours bound in the control folder:
        # the collection ends when all of them answered, not after an idle second.
        "mingle_expect_replies": True,
    }


def _claiming_plugin(app: Any) -> tuple[str | None, str]:
    """The plugin that claims the ``filesystem`` transport, or ``None`` and why not."""
    from .diagnostics import configure_app, decide_transport

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
    """The demo cluster: a folder, its worker processes, and their clean-up."""

    def __init__(self, neighbours: int = 3, revoke: int = 5, out: TextIO | None = None) -> None:
        self.neighbours = neighbours
        self.revoke = revoke
        self.out = out or sys.stdout
        self.folder = Path(tempfile.mkdtemp(prefix="mingle-demo-"))
        self.config = demo_config(self.folder)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self._app: Any = None
        self._closed = False
        #: Seconds the workers get to exit after SIGTERM before SIGKILL.
        self.grace = 0.5
        self._lock = threading.Lock()
        (self.folder / "broker").mkdir()
        (self.folder / "control").mkdir()
        (self.folder / "tmp").mkdir()
        (self.folder / f"{APP_MODULE}.py").write_text(
            APP_TEMPLATE.format(module=APP_MODULE, conf=self.config)
        )

    # -- output ------------------------------------------------------------

    def say(self, message: str = "") -> None:
        print(message, file=self.out, flush=True)

    # -- the cluster ---------------------------------------------------------

    @property
    def app(self) -> Any:
        if self._app is None:
            from celery import Celery

            self._app = Celery("mingle-demo-client")
            self._app.conf.update({k: v for k, v in self.config.items() if k != "worker_consumer"})
        return self._app

    def log_path(self, node: str) -> Path:
        return self.folder / f"{node.split('@')[0]}.log"

    def log(self, node: str) -> str:
        try:
            return self.log_path(node).read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start_worker(self, node: str) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.folder), env.get("PYTHONPATH")]))
        # kombu's filesystem transport moves each message it reads to the temporary
        # folder before deleting it: keep those files in the demo's folder too.
        env["TMPDIR"] = str(self.folder / "tmp")
        cmd = [
            sys.executable,
            "-m",
            "celery",
            "-A",
            APP_MODULE,
            "worker",
            "-n",
            node,
            "-P",
            "solo",
            "-l",
            "INFO",
            "--without-gossip",
            "--without-heartbeat",
            f"--logfile={self.log_path(node)}",
        ]
        with open(self.folder / f"{node.split('@')[0]}.out", "wb") as output:
            self.procs[node] = subprocess.Popen(
                cmd,
                cwd=self.folder,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def wait_ready(
        self, nodes: Sequence[str], timeout: float = 60.0, on_line: Callable[[str, str], None] | None = None
    ) -> None:
        """Wait for ``ready.`` in the logs; ``on_line(node, line)`` for each new ``mingle:`` line."""
        seen = dict.fromkeys(nodes, 0)
        pending = set(nodes)
        deadline = time.monotonic() + timeout
        while pending:
            for node in sorted(pending):
                log = self.log(node)
                if on_line is not None:
                    lines = _MINGLE_LINE.findall(log)
                    for line in lines[seen[node] :]:
                        on_line(node, line)
                    seen[node] = len(lines)
                if re.search(r"\bready\.", log):
                    pending.discard(node)
                elif self.procs[node].poll() is not None:
                    raise DemoFailed(
                        f"{node} exited with status {self.procs[node].returncode}:\n" + self._tail(node)
                    )
            if pending and time.monotonic() > deadline:
                raise DemoFailed(
                    f"{', '.join(sorted(pending))} not ready after {timeout:.0f}s:\n"
                    + "\n".join(self._tail(n) for n in sorted(pending))
                )
            time.sleep(0.05)

    def _tail(self, node: str) -> str:
        out = ""
        try:
            out = (self.folder / f"{node.split('@')[0]}.out").read_text(errors="replace")
        except FileNotFoundError:
            pass
        return "\n".join((self.log(node) + out).splitlines()[-20:])

    def inspect(self, nodes: Sequence[str], timeout: float = 1.0) -> Any:
        return self.app.control.inspect(destination=list(nodes), timeout=timeout)

    def clock_of(self, node: str, timeout: float = 10.0) -> int:
        """``inspect clock`` of one node, asked again until it answers (-1: never)."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self.inspect([node]).clock() or {}
            if node in reply or time.monotonic() > deadline:
                return int(reply[node]["clock"]) if node in reply else -1

    def ask_newcomer(self, node: str, ids: Sequence[str], timeout: float = 10.0) -> tuple[set[str], int]:
        """The revoked ids (of ``ids``) and the clock of ``node``, as ``inspect`` says."""
        deadline = time.monotonic() + timeout
        while True:
            reply = self.inspect([node]).revoked() or {}
            if node in reply or time.monotonic() > deadline:
                break
        return set(ids) & set(reply.get(node) or ()), self.clock_of(
            node, max(1.0, deadline - time.monotonic())
        )

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
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGTERM)
        deadline = time.monotonic() + self.grace
        for proc in self.procs.values():
            try:
                proc.wait(max(0.01, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(10)
        for proc in self.procs.values():  # children a worker may have left behind
            _signal_group(proc, signal.SIGKILL)
        if self._app is not None:
            self._app.close()
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
            reply = self.inspect(sorted(missing), timeout=0.5).revoked() or {}
            missing = {n for n in missing if not set(ids) <= set(reply.get(n) or ())}
        if missing:
            self.say(f"  {', '.join(sorted(missing))} did not get the revokes")
            return 1
        clocks = {n: self.clock_of(n) for n in names}
        top = max(clocks.values())
        self.say(f"  every worker has them; highest clock: {top}")

        self.say(f"starting {newcomer}; its mingle log:")
        self.start_worker(newcomer)
        self.wait_ready([newcomer], on_line=lambda node, line: self.say(f"  | {line}"))
        match = _SUMMARY.search(self.log(newcomer))
        took = float(match[5]) if match else float("nan")

        learnt, clock = self.ask_newcomer(newcomer, ids)
        self.say(f"inspect revoked: {newcomer} has {len(learnt)} of the {len(ids)} revoked ids")
        self.say(f"inspect clock:   {newcomer} is at {clock} (neighbours were at most {top})")
        from .status import print_status, query_status

        self.say("celery mingle status:")
        result = query_status(self.app, timeout=1.0, destination=[newcomer])
        if result["workers"]:
            print_status(result)
        ok = len(learnt) == len(ids) and clock > top
        if ok:
            self.say(
                f"OK: the newcomer learnt the {len(ids)} revoked ids and the clock from its "
                f"neighbours; its mingle took {took:.3f}s"
            )
        else:
            self.say("FAILED: the newcomer did not learn everything; its log:\n" + self._tail(newcomer))
        self.say(f"demo took {time.monotonic() - started:.1f}s; stopping {len(self.procs)} workers")
        return 0 if ok else 1


class DemoFailed(Exception):
    """A worker of the demo did not start."""


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def run_demo(workers: int = 3, revoke: int = 5) -> int:
    """Run the demo; return the exit status (0 ok, 1 failed, 2 plugin missing, 130 interrupted)."""
    demo = Demo(workers, revoke)
    atexit.register(demo.close)
    previous: dict[signal.Signals, Any] = {}

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is threading.main_thread():
        previous[signal.SIGINT] = signal.getsignal(signal.SIGINT)  # close() ignores it
        for sig in (signal.SIGTERM, signal.SIGHUP):
            previous[sig] = signal.signal(sig, stop)
    try:
        return demo.run()
    except KeyboardInterrupt:
        print("\ninterrupted: stopping the workers", file=sys.stderr, flush=True)
        return 130
    except DemoFailed as exc:
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
