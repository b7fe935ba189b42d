"""The store demo: a full restart loses the revoked ids without the store, keeps them with it.

Needs no server: the broker is kombu's ``filesystem://`` transport (with the
celery-mingle-filesystem plugin) and the store a SQLite file, both in a
temporary folder; the workers are ``celery worker`` subprocesses. Run it with
``celery mingle-store demo`` or ``python -m mingle_store.demo``.

Twice, once with the store plugin disabled (stock behaviour), once with it:

1. start two workers, revoke some ids with ``app.control.revoke``;
2. stop every worker (a full restart);
3. with the store only: revoke more ids while no worker is up (``mingle_store.api.revoke``, i.e.
   ``mingle_plugins.revoke``, what ``celery mingle revoke`` runs);
4. start a new worker and ask it (``inspect revoked``) which ids it has.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

__all__ = ["main", "run_demo"]

APP_TEMPLATE = '''\
"""A Celery app of the store demo (written by mingle_store.demo)."""
from celery import Celery

app = Celery("{module}")
app.conf.update({conf!r})
'''


class DemoFailed(Exception):
    """A worker of the demo did not start, or did not answer."""


class Part:
    """One cluster of the demo: its folder, app module, workers."""

    def __init__(self, root: Path, label: str, store_url: str | None, out: TextIO) -> None:
        self.label = label
        self.out = out
        self.folder = root / label
        for sub in ("broker", "control", "tmp"):
            (self.folder / sub).mkdir(parents=True)
        self.module = f"storedemo_{label}"
        self.config: dict[str, Any] = {
            "broker_url": "filesystem://",
            "broker_transport": "mingle_filesystem.transport:AtomicFilesystemTransport",
            "broker_transport_options": {
                "data_folder_in": str(self.folder / "broker"),
                "data_folder_out": str(self.folder / "broker"),
                "control_folder": str(self.folder / "control"),
                "polling_interval": 0.1,
            },
            "broker_connection_retry_on_startup": True,
            "worker_consumer": "mingle_plugins.consumer:Consumer",
            "mingle_expect_replies": True,
        }
        if store_url is None:
            self.config["mingle_disabled_plugins"] = ["store"]
        else:
            self.config["mingle_plugin_settings"] = {"store": {"url": store_url}}
        (self.folder / f"{self.module}.py").write_text(
            APP_TEMPLATE.format(module=self.module, conf=self.config)
        )
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        from celery import Celery

        self.app = Celery(f"{self.module}-client")
        self.app.conf.update({k: v for k, v in self.config.items() if k != "worker_consumer"})

    def say(self, message: str) -> None:
        print(f"[{self.label}] {message}", file=self.out, flush=True)

    def log(self, node: str) -> str:
        try:
            return (self.folder / f"{node.split('@')[0]}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def start(self, nodes: Sequence[str], timeout: float = 60.0) -> None:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(self.folder), env.get("PYTHONPATH")]))
        env["TMPDIR"] = str(self.folder / "tmp")
        for node in nodes:
            short = node.split("@")[0]
            cmd = [
                sys.executable,
                "-m",
                "celery",
                "-A",
                self.module,
                "worker",
                "-n",
                node,
                "-P",
                "solo",
                "-l",
                "INFO",
                "--without-gossip",
                "--without-heartbeat",
                f"--logfile={self.folder / (short + '.log')}",
            ]
            with open(self.folder / f"{short}.out", "wb") as output:
                self.procs[node] = subprocess.Popen(
                    cmd,
                    cwd=self.folder,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=output,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            if len(self.procs) == 1:  # the first creates the broadcast table alone
                self.wait_ready([node], timeout)
        self.wait_ready(nodes, timeout)

    def wait_ready(self, nodes: Sequence[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for node in nodes:
            while not re.search(r"\bready\.", self.log(node)):
                if self.procs[node].poll() is not None or time.monotonic() > deadline:
                    raise DemoFailed(
                        f"{node} did not start:\n" + "\n".join(self.log(node).splitlines()[-20:])
                    )
                time.sleep(0.05)

    def revoked_of(self, node: str, timeout: float = 15.0) -> set[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = self.app.control.inspect(destination=[node], timeout=0.5).revoked() or {}
            if node in reply:
                return set(reply[node] or ())
        raise DemoFailed(f"{node} did not answer inspect revoked")

    def mingle_lines(self, node: str) -> list[str]:
        return re.findall(r"^\[[^\]]*\] (mingle: .*)$", self.log(node), re.M)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            _signal_group(proc, signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                _signal_group(proc, signal.SIGKILL)
                proc.wait(10)
        self.procs.clear()

    def close(self) -> None:
        self.stop_all()
        self.app.close()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _story(part: Part, count: int, store: bool) -> tuple[int, int, int]:
    """Revoke, restart everything, ask the new worker: (ids revoked, offline ids, ids it has)."""
    from . import api

    first = ["w1@store-demo", "w2@store-demo"]
    part.say(f"starting {', '.join(first)} ...")
    part.start(first)
    ids = [str(uuid.uuid4()) for _ in range(count)]
    part.app.control.revoke(ids)
    part.say(f"app.control.revoke({count} ids): {', '.join(i[:8] for i in ids)} ...")
    for node in first:
        deadline = time.monotonic() + 15.0
        while not set(ids) <= part.revoked_of(node):
            if time.monotonic() > deadline:
                raise DemoFailed(f"{node} did not get the revokes")
    part.say("  both workers have them (inspect revoked)")
    if store:
        rows = api.stored(part.app)[1].rows
        deadline = time.monotonic() + 15.0
        while not set(ids) <= {i for i, _ in rows} and time.monotonic() < deadline:
            time.sleep(0.1)
            rows = api.stored(part.app)[1].rows
        part.say(f"  the workers recorded them in the store: it holds {len(rows)} ids")
    part.say("stopping every worker (a full restart) ...")
    part.stop_all()
    offline: list[str] = []
    if store:
        offline = [str(uuid.uuid4()) for _ in range(2)]
        result = api.revoke(part.app, offline)
        part.say(
            f"no worker up: mingle_store.api.revoke(2 ids) recorded={result.recorded}: "
            + ", ".join(i[:8] for i in offline)
        )
    newcomer = "w3@store-demo"
    part.say(f"starting {newcomer} (a new worker, nothing of the old ones on the broker); its mingle:")
    part.start([newcomer])
    for line in part.mingle_lines(newcomer):
        part.say(f"  | {line}")
    has = part.revoked_of(newcomer)
    kept = len(set(ids) & has)
    part.say(
        f"inspect revoked: {newcomer} has {kept} of the {count} ids revoked before the restart"
        + (f", {len(set(offline) & has)} of the 2 revoked while no worker was up" if store else "")
    )
    return count, len(set(offline) & has), kept


def run_demo(revoke: int = 5, out: TextIO | None = None) -> int:
    """Run the demo; 0 when stock lost the ids and the store kept them all."""
    out = out or sys.stdout
    try:
        import mingle_filesystem  # noqa: F401
    except ImportError:
        print(
            "error: the demo needs celery-mingle-filesystem (pip install ./transports/filesystem)",
            file=sys.stderr,
        )
        return 2
    root = Path(tempfile.mkdtemp(prefix="mingle-store-demo-"))
    parts: list[Part] = []
    try:
        print(f"mingle-store demo in {root}", file=out, flush=True)
        stock = Part(root, "stock", None, out)
        parts.append(stock)
        _, _, stock_kept = _story(stock, revoke, store=False)
        stock.close()
        url = f"sqlite:///{root / 'store.db'}"
        with_store = Part(root, "store", url, out)
        parts.append(with_store)
        with_store.say(f"store: {url}")
        _, offline_kept, store_kept = _story(with_store, revoke, store=True)
        ok = stock_kept == 0 and store_kept == revoke and offline_kept == 2
        print(
            f"{'OK' if ok else 'FAILED'}: after a full restart, stock kept {stock_kept} of {revoke} "
            f"revoked ids; with the store {store_kept} of {revoke}, and {offline_kept} of 2 revoked "
            "while no worker was up",
            file=out,
            flush=True,
        )
        return 0 if ok else 1
    except DemoFailed as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        for part in parts:
            part.close()
        shutil.rmtree(root, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mingle_store.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--revoke", type=int, default=5, help="how many task ids to revoke")
    args = parser.parse_args(argv)
    return run_demo(revoke=max(1, args.revoke))


if __name__ == "__main__":
    sys.exit(main())
