"""What docs/operations.md says about Flower, checked against a running Flower (from PyPI).

Flower listens to the events of a Redis cluster; a newcomer started with ``-E`` mingles, and
Flower's HTTP API shows it: in the workers table's data (``/workers?json=1``) its event counters
include one ``worker-mingle`` (the event's fields are not kept), and through ``/api/workers``
(Flower's own ``inspect``) its revoked list holds the ids it learnt by mingling.
"""

from __future__ import annotations

import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import services

pytestmark = [pytest.mark.redis, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class Flower:
    def __init__(self, directory: Path) -> None:
        self.port = free_port()
        self.log = directory / "flower.log"
        env = dict(os.environ, PYTHONPATH=str(directory))
        env.pop(services.REQUIRE_ENV, None)
        env["FLOWER_UNAUTHENTICATED_API"] = "true"  # Flower 2 answers /api/* with 401 without auth
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "celery",
                    "-A",
                    "proj",
                    "flower",
                    "--address=127.0.0.1",
                    f"--port={self.port}",
                ],
                cwd=directory,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=10) as response:
            body = response.read().decode()
        return json.loads(body) if body.startswith(("{", "[")) else body

    def wait_until(self, what: str, check: Any, timeout: float = 30.0) -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"flower exited {self.proc.returncode}:\n{self.log.read_text()}"
            try:
                found = check()
            except (urllib.error.URLError, ConnectionError):
                found = None
            if found:
                return found
            time.sleep(0.2)
        raise AssertionError(f"flower: {what} not seen after {timeout}s:\n{self.log.read_text()[-3000:]}")

    def workers_table(self) -> dict[str, dict[str, Any]]:
        """The data of Flower's workers page: one row per worker that sent events."""
        return {row["hostname"]: row for row in self.get("/workers?json=1")["data"]}

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture
def flower(make_cluster: Any, redis_url: str) -> Iterator[tuple[Flower, Any]]:
    if importlib.util.find_spec("flower") is None:
        services.missing("flower is not installed (pip install -r requirements-test.txt)")
    cluster = make_cluster(redis_url)
    running = Flower(cluster.directory)
    try:
        running.wait_until("/healthcheck", lambda: running.get("/healthcheck") == "OK")
        # Flower captures events in a thread of its own: wait until it has seen one of ours.
        probe = f"probe-{uuid.uuid4().hex[:6]}@flower"
        with cluster.client.connection_for_write() as conn:
            dispatcher = cluster.client.events.Dispatcher(conn, hostname=probe)

            def probe_seen() -> bool:
                dispatcher.send("worker-heartbeat", freq=2.0)
                return probe in running.workers_table()

            running.wait_until("an event sent after it started", probe_seen)
            dispatcher.close()
        yield running, cluster
    finally:
        running.stop()


def test_flower_counts_the_worker_mingle_event_and_shows_the_learnt_ids(flower: tuple[Flower, Any]) -> None:
    running, cluster = flower
    cluster.start("w1@flower")
    ids = {str(uuid.uuid4()) for _ in range(3)}
    cluster.client.control.revoke(sorted(ids))
    # -E: the worker sends events (with --without-heartbeat --without-gossip, as the test workers
    # run, it would send none: docs/operations.md).
    newcomer = cluster.start("newcomer@flower", args=["-E"])
    newcomer.wait_for(
        r"mingle: summary: 1 neighbours, 1 accepted, 3 ids merged, 0 dropped by policy, 0 rejected"
    )

    row = running.wait_until(
        "the newcomer's worker-mingle event", lambda: running.workers_table().get("newcomer@flower")
    )
    assert row["worker-mingle"] == 1
    # The test workers run --without-heartbeat, so no worker-online (sent by the heart) is counted.
    assert "worker-online" not in row
    # Flower's state keeps the counter, not the event's fields.
    assert "ids_merged" not in row and "merged_from" not in row
    assert "w1@flower" not in running.workers_table()  # without -E, w1 sent no event

    info = running.get("/api/workers?refresh=1&workername=newcomer@flower")["newcomer@flower"]
    assert set(info["revoked"]) == ids
