"""Real ``celery worker`` processes for integration tests.

Each test cluster gets its own ``control_exchange``, so that workers of other
tests (or of a developer's own runs) on the same broker never answer its hello.
"""

from __future__ import annotations

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

from celery import Celery

APP_TEMPLATE = """\
import os

from celery import Celery

app = Celery("{name}")
app.conf.update({conf!r})
if os.environ.get("MINGLE_TEST_STOCK"):  # this worker runs stock Celery Mingle
    app.conf.worker_consumer = "celery.worker.consumer:Consumer"


@app.task
def noop():
    return None
"""

MINGLE_LINE = re.compile(r"^\[(?P<ts>[\d\- :,]+): \w+/[\w-]+\] (?P<msg>mingle: .*)$", re.M)


def write_app(
    directory: Path, broker: str, conf: Mapping[str, Any] | None = None, name: str = "proj"
) -> dict[str, Any]:
    """Write ``<directory>/<name>.py``, a Celery app on ``broker``; return its config."""
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


def client_app(config: Mapping[str, Any]) -> Celery:
    """An app in this process with the same broker and control exchange."""
    app = Celery("client")
    app.conf.update({k: v for k, v in config.items() if k not in ("worker_consumer",)})
    return app


class Worker:
    """One ``celery worker`` process, logging to a file."""

    def __init__(
        self,
        directory: Path,
        nodename: str,
        *,
        python: str | Path = sys.executable,
        app: str = "proj",
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        loglevel: str = "INFO",
    ) -> None:
        self.directory = directory
        self.nodename = nodename
        self.log_path = directory / f"{nodename.replace('@', '_')}.log"
        self.log_path.unlink(missing_ok=True)
        cmd = [
            str(python),
            "-m",
            "celery",
            "-A",
            app,
            "worker",
            "-n",
            nodename,
            "-P",
            "solo",
            "-l",
            loglevel,
            "--without-gossip",
            "--without-heartbeat",
            f"--logfile={self.log_path}",
            *args,
        ]
        full_env = dict(os.environ)
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), full_env.get("PYTHONPATH")]))
        full_env.pop("MINGLE_TESTS_REQUIRE_SERVICES", None)
        full_env.update(env or {})
        self.cmd = cmd
        self.proc = subprocess.Popen(
            cmd,
            cwd=directory,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def output(self) -> str:
        """What the process printed outside its log file (after it exited)."""
        if self.proc.poll() is None or self.proc.stdout is None:
            return ""
        return self.proc.stdout.read().decode(errors="replace")

    def wait_for(self, pattern: str, timeout: float = 30.0) -> re.Match[str]:
        """Wait until the log matches ``pattern``; fail with the log if it does not."""
        regex = re.compile(pattern, re.M)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = regex.search(self.log())
            if match:
                return match
            if self.proc.poll() is not None:
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
            ts = time.mktime(time.strptime(m["ts"].split(",")[0], "%Y-%m-%d %H:%M:%S"))
            out.append((ts + int(m["ts"].split(",")[1]) / 1000, m["msg"]))
        return out

    def mingle_seconds(self) -> float:
        """From the first ``mingle:`` log line to the last."""
        lines = self.mingle_lines()
        assert lines, f"no mingle line in {self.log_path}"
        return lines[-1][0] - lines[0][0]

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


class Cluster:
    """Workers sharing one app directory; stops them all on close."""

    def __init__(
        self, directory: Path, config: Mapping[str, Any], python: str | Path = sys.executable
    ) -> None:
        self.directory = directory
        self.config = dict(config)
        self.python = python
        self.workers: list[Worker] = []
        self._client: Celery | None = None

    @property
    def client(self) -> Celery:
        if self._client is None:
            self._client = client_app(self.config)
        return self._client

    def start(self, nodename: str, *, wait: bool = True, **kwargs: Any) -> Worker:
        kwargs.setdefault("python", self.python)
        worker = Worker(self.directory, nodename, **kwargs)
        self.workers.append(worker)
        if wait:
            worker.wait_ready()
            self.wait_listening(nodename)
        return worker

    def wait_listening(self, nodename: str, timeout: float = 15.0) -> None:
        """Wait until the node answers a ping: on Redis its pidbox subscription is asynchronous,
        and a broadcast (a revoke) sent right after ``ready.`` could be lost."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client.control.ping(destination=[nodename], timeout=0.5):
                return
        raise AssertionError(f"{nodename} does not answer pings after {timeout}s")

    def revoked(self, nodename: str, timeout: float = 5.0) -> set[str]:
        reply = self.client.control.inspect(destination=[nodename], timeout=timeout).revoked() or {}
        return set(reply.get(nodename) or ())

    def clock(self, nodename: str, timeout: float = 5.0) -> int:
        reply = self.client.control.inspect(destination=[nodename], timeout=timeout).clock() or {}
        return int(reply[nodename]["clock"])

    def close(self) -> None:
        for worker in self.workers:  # signal them all first: they stop in parallel
            if worker.proc.poll() is None:
                try:
                    os.killpg(worker.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for worker in self.workers:
            worker.stop()
        if self._client is not None:
            self._client.close()
            self._client = None
