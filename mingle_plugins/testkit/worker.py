"""The pieces of the test kit: app modules, broker settings, and one worker process.

Use them through :mod:`mingle_plugins.testkit`, which re-exports them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..model import MingleSummary, NodeOutcome

__all__ = [
    "APP_TEMPLATE",
    "ATOMIC_FILESYSTEM",
    "CONF_ENV",
    "MINGLE_LINE",
    "STOCK_ENV",
    "Worker",
    "client_app",
    "filesystem_conf",
    "summary_from_dict",
    "write_app",
]

#: A worker started with this variable set (``start(..., stock=True)``) runs stock Celery Mingle.
STOCK_ENV = "MINGLE_TEST_STOCK"
#: JSON settings one worker adds to the app's (``start(..., conf={...})``).
CONF_ENV = "MINGLE_TEST_CONF"

APP_TEMPLATE = """\
import json
import os

from celery import Celery

app = Celery("{name}")
app.conf.update({conf!r})
app.conf.update(json.loads(os.environ.get("MINGLE_TEST_CONF") or "{{}}"))
if os.environ.get("MINGLE_TEST_STOCK"):  # this worker runs stock Celery Mingle
    app.conf.worker_consumer = "celery.worker.consumer:Consumer"


@app.task
def noop():
    return None
"""

#: A ``mingle:`` line of a worker's log file: ``ts`` and ``msg`` groups.
MINGLE_LINE = re.compile(r"^\[(?P<ts>[\d\- :,]+): \w+/[\w-]+\] (?P<msg>mingle: .*)$", re.M)

#: ``filesystem://`` with atomic message writes (kombu#1551), from the celery-mingle-filesystem plugin.
ATOMIC_FILESYSTEM = "mingle_filesystem.transport:AtomicFilesystemTransport"


def write_app(
    directory: Path, broker: str, conf: Mapping[str, Any] | None = None, name: str = "proj"
) -> dict[str, Any]:
    """Write ``<directory>/<name>.py``, a Celery app on ``broker`` with this package's consumer.

    :return: its configuration (``conf`` over the defaults, with a new ``control_exchange``).
    """
    config: dict[str, Any] = {
        "broker_url": broker,
        "control_exchange": f"mingletest-{uuid.uuid4().hex[:10]}",
        "worker_consumer": "mingle_plugins.consumer:Consumer",
        "broker_connection_retry_on_startup": True,
        "worker_hijack_root_logger": True,
    }
    if broker.startswith("amqp"):
        # An idle solo worker on RabbitMQ sees SIGTERM only when its event loop wakes up (~10 s).
        config["broker_heartbeat"] = 4
    config.update(conf or {})
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.py").write_text(APP_TEMPLATE.format(name=name, conf=config))
    return config


def filesystem_conf(
    folder: Path, polling_interval: float = 0.1, transport: str | None = ATOMIC_FILESYSTEM
) -> dict[str, Any]:
    """Settings of a ``filesystem://`` broker in ``folder`` (its ``broker`` and ``control`` are made).

    Mingle works there only with a plugin that claims the transport (celery-mingle-filesystem);
    ``transport=None`` keeps kombu's own transport class.
    """
    for sub in ("broker", "control"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf: dict[str, Any] = {
        "broker_url": "filesystem://",
        "broker_transport_options": {
            "data_folder_in": str(folder / "broker"),
            "data_folder_out": str(folder / "broker"),
            "control_folder": str(folder / "control"),
            "polling_interval": polling_interval,
        },
        # The filesystem plugin counts the neighbours bound in the control folder.
        "mingle_expect_replies": True,
    }
    if transport:
        conf["broker_transport"] = transport
    return conf


def client_app(config: Mapping[str, Any]) -> Any:
    """A Celery app in this process with the same broker and control exchange."""
    from celery import Celery

    from ..wire.compat import exclusive_replies

    app = Celery("client")
    app.conf.update({k: v for k, v in config.items() if k != "worker_consumer"})
    exclusive_replies(app.control.mailbox)  # kombu < 5.6 declares a shared one: RabbitMQ 4.3 refuses it
    return app


def summary_from_dict(data: Mapping[str, Any]) -> MingleSummary:
    """A :class:`MingleSummary` from its ``as_dict()`` (keys this version does not know are left out)."""
    known = {f.name for f in dataclasses.fields(MingleSummary)}
    fields = {k: v for k, v in data.items() if k in known}
    outcome_fields = {f.name for f in dataclasses.fields(NodeOutcome)}
    fields["nodes"] = {
        node: NodeOutcome(**{k: v for k, v in outcome.items() if k in outcome_fields})
        for node, outcome in (fields.get("nodes") or {}).items()
    }
    return MingleSummary(**fields)


class Worker:
    """One ``celery worker -P solo`` process in its own process group, logging to a file."""

    def __init__(
        self,
        directory: Path,
        nodename: str,
        *,
        python: str | Path = sys.executable,
        app: str = "proj",
        args: Sequence[str] = (),
        env: Mapping[str, str | None] | None = None,
        loglevel: str = "INFO",
    ) -> None:
        self.directory = directory
        self.nodename = nodename
        stem = nodename.replace("@", "_")
        self.log_path = directory / f"{stem}.log"
        self.out_path = directory / f"{stem}.out"
        self.log_path.unlink(missing_ok=True)
        self.cmd = [str(python), "-m", "celery", "-A", app, "worker", "-n", nodename, "-P", "solo"]
        self.cmd += ["-l", loglevel, "--without-gossip", "--without-heartbeat", f"--logfile={self.log_path}"]
        self.cmd += args
        # The kit's own switches (MINGLE_TEST*) are given per worker, never inherited.
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("MINGLE_TEST")}
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), full_env.get("PYTHONPATH")]))
        for key, value in (env or {}).items():
            if value is None:
                full_env.pop(key, None)
            else:
                full_env[key] = value
        with open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(
                self.cmd,
                cwd=directory,
                env=full_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        """The worker's log file so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output(self) -> str:
        """What the process printed outside its log file (stdout and stderr)."""
        try:
            return self.out_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def tail(self, lines: int = 40) -> str:
        return "\n".join((self.log() + self.output()).splitlines()[-lines:])

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until the log matches ``pattern``; raise ``AssertionError`` with the log if not."""
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = regex.search(self.log())
            if match:
                return match
            if self.proc.poll() is not None:
                match = regex.search(self.log())  # its last lines, written as it exited
                if match:
                    return match
                break
            time.sleep(0.05)
        raise AssertionError(
            f"{self.nodename}: {pattern!r} not in the log after {timeout}s "
            f"(exit code {self.proc.poll()}):\n{self.log()[-4000:]}\n{self.output()[-2000:]}"
        )

    def wait_ready(self, timeout: float = 30.0) -> None:
        self.wait_for(r"\bready\.", timeout)

    def mingle_lines(self) -> list[tuple[float, str]]:
        """``(timestamp, message)`` of every ``mingle:`` log line."""
        out = []
        for m in MINGLE_LINE.finditer(self.log()):
            stamp, millis = m["ts"].split(",")
            out.append(
                (time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000, m["msg"])
            )
        return out

    def mingle_seconds(self) -> float:
        """From the first ``mingle:`` log line to the last."""
        lines = self.mingle_lines()
        assert lines, f"no mingle line in {self.log_path}"
        return lines[-1][0] - lines[0][0]

    def send_signal(self, sig: int, group_only_if_running: bool = True) -> None:
        """Send ``sig`` to the worker's process group (by default, only while the worker runs)."""
        if self.proc.poll() is None or not group_only_if_running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        """Send ``sig`` and wait; SIGKILL the group after ``timeout`` seconds."""
        self.send_signal(sig)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.send_signal(signal.SIGKILL)
            self.proc.wait(10)
