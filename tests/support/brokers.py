"""Private broker processes that a test may stop, kill and restart.

The shared services (Redis on 6379, RabbitMQ on 5672) are used by other
people's tests and must never be stopped; a test that needs a broker to go
away starts its own ``redis-server`` here, on a free port, without
persistence, and stops it at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.support import services

__all__ = ["FakeNeighbour", "PrivateRedis", "free_port"]


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """One ``redis-server`` on its own port, started and stopped by the test.

    The port stays the same across :meth:`stop` / :meth:`start`, so clients
    (workers) configured with :attr:`url` reconnect to the new process.
    """

    def __init__(self, directory: Path, port: int | None = None, db: int = 0) -> None:
        self.binary = shutil.which("redis-server")
        if self.binary is None:
            services.missing("redis-server is not installed (needed for a private broker)")
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/{db}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self, timeout: float = 10.0) -> None:
        """Start the server (again) and wait until it accepts connections."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        self.starts += 1
        log = self.directory / f"redis-{self.port}-{self.starts}.log"
        assert self.binary is not None
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                "--logfile",
                str(log),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if services.reachable("127.0.0.1", self.port, timeout=0.2):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        text = log.read_text(errors="replace") if log.exists() else ""
        raise RuntimeError(f"private redis-server on port {self.port} did not start:\n{text[-2000:]}")

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGKILL, timeout: float = 10.0) -> None:
        """Stop the server (SIGKILL by default: a broker that crashes) and wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        self.proc.wait(timeout)
        deadline = time.monotonic() + timeout
        while services.reachable("127.0.0.1", self.port, timeout=0.2) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self, down_for: float = 0.0) -> None:
        self.stop()
        if down_for:
            time.sleep(down_for)
        self.start()

    def close(self) -> None:
        self.stop()


FAKE_NEIGHBOUR = Path(__file__).resolve().parents[1] / "fixtures" / "fake_neighbour.py"


class FakeNeighbour:
    """A process that answers every ``hello`` of a cluster with crafted replies.

    ``replies`` is a list of ``{"body": <JSON>, "clock": <header clock or None>}``;
    see ``tests/fixtures/fake_neighbour.py``. A real neighbour learns the
    newcomer's ids from its hello and sends them back; this one never does, so
    a test can tell ids the newcomer kept from ids it got back.
    """

    def __init__(
        self,
        directory: Path,
        broker: str,
        control_exchange: str,
        replies: list[dict[str, Any]],
        name: str = "fake",
        python: str | Path = sys.executable,
    ) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.replies_path = directory / f"{name}-replies.json"
        self.replies_path.write_text(json.dumps(replies))
        self.out_path = directory / f"{name}-out.txt"
        self._out = self.out_path.open("wb")
        self.proc = subprocess.Popen(
            [str(python), str(FAKE_NEIGHBOUR), broker, control_exchange, str(self.replies_path)],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        return self.out_path.read_text(errors="replace")

    def wait_listening(self, count: int = 1, timeout: float = 30.0) -> None:
        """Wait until the process bound its queue ``count`` times (once per connection)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.output().count("listening") >= count:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(
            f"fake neighbour not listening (exit {self.proc.poll()}):\n{self.output()[-3000:]}"
        )

    def answered(self) -> int:
        return self.output().count("replied ")

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
        self._out.close()
