"""Real ``celery worker`` processes on Redis with the store on Redis or PostgreSQL: a full restart
keeps the ids, a revoke sent while no worker is up reaches the next one, two workers record an id
once, expired ids are not brought back, a store down does not stop a worker.

The workers run this interpreter, where the plugin is installed (its ``celery.mingle`` entry point).
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mingle_store import api
from mingle_store.backends import RevocationStore
from tests.support import services
from tests.support.workers import Cluster

pytestmark = pytest.mark.redis


@pytest.fixture(params=["redis", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    services.require("redis")
    return str(request.param)


def wait_recorded(store: RevocationStore, ids: list[str], timeout: float = 15.0) -> list[tuple[str, float]]:
    """The store's rows once it holds every id (the workers record in the background)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = store.load(None, None).rows
        if set(ids) <= {i for i, _ in rows} or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def revoked_of(cluster: Cluster, node: str) -> set[str]:
    for _ in range(3):  # an inspect reply can be missed once
        ids = cluster.revoked(node)
        if ids:
            return ids
    return set()


def test_full_restart_keeps_the_ids_and_an_offline_revoke_reaches_the_next_worker(
    backend: str,
    store_conf: dict[str, Any],
    store: RevocationStore,
    make_cluster: Callable[..., Cluster],
) -> None:
    cluster = make_cluster(None, {"mingle_plugin_settings": {"store": store_conf}})
    cluster.start("w1@store")
    cluster.start("w2@store")
    ids = [str(uuid.uuid4()) for _ in range(20)]
    cluster.client.control.revoke(ids)  # plain Celery: both workers receive it and record it

    rows = wait_recorded(store, ids)
    assert sorted(i for i, _ in rows) == sorted(ids)  # once per id, though two workers recorded it

    cluster.close()  # a full restart: no worker is left
    offline = [str(uuid.uuid4()) for _ in range(3)]
    if backend == "postgres":  # the command, through celery's own CLI
        env = dict(os.environ, PYTHONPATH=str(cluster.directory))
        done = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "proj", "mingle", "revoke", *offline],
            cwd=cluster.directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "revoked 3 task(s); recorded in: store@127.0.0.1" in done.stdout
        listed = subprocess.run(
            [sys.executable, "-m", "celery", "-A", "proj", "mingle-store", "list", "--json"],
            cwd=cluster.directory,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert listed.returncode == 0, listed.stderr
        ages = {row["id"]: row["age"] for row in json.loads(listed.stdout)["ids"]}
        assert set(ages) == {*ids, *offline} and all(age >= 0 for age in ages.values())
    else:
        assert api.revoke(cluster.client, offline).recorded

    w3 = cluster.start("w3@store")
    assert {*ids, *offline} <= revoked_of(cluster, "w3@store")
    assert "mingle: summary: 1 neighbours, 1 accepted, 23 ids merged" in w3.log()


def test_expired_ids_are_not_brought_back(
    store_conf: dict[str, Any], store: RevocationStore, make_cluster: Callable[..., Cluster]
) -> None:
    services.require("redis")
    now = time.time()
    store.record({"revoked-2h-ago": now - 7200, "revoked-now": now}, None, None)
    cluster = make_cluster(None, {"mingle_plugin_settings": {"store": store_conf}})
    cluster.start("w1@expiry", env={"CELERY_WORKER_REVOKE_EXPIRES": "3600"})
    assert revoked_of(cluster, "w1@expiry") == {"revoked-now"}
    cluster.start("w2@expiry")  # stock expiry, 3 hours: the worker's own bound decides
    assert {"revoked-2h-ago", "revoked-now"} <= revoked_of(cluster, "w2@expiry")


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A store that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


def test_a_store_down_at_start_does_not_stop_the_worker(
    silent_port: int, make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    services.require("redis")
    down = {"url": f"redis://127.0.0.1:{silent_port}/0", "timeout": 0.5, "source": "store@down"}
    cluster = make_cluster(None, {"mingle_plugin_settings": {"store": down}})
    cluster.start("w1@down")
    ids = [str(uuid.uuid4()) for _ in range(5)]
    cluster.client.control.revoke(ids)  # recorded nowhere: one log line
    w2 = cluster.start("w2@down")
    assert set(ids) <= revoked_of(cluster, "w2@down")  # from the neighbour
    lines = [m for _, m in w2.mingle_lines() if "not reached" in m]
    # Once at the mingle; the writer's first failed attempt in the background (a trim, 0.5 s
    # later: after the check when the machine is idle, before it when loaded) once at most.
    at_mingle = [m for m in lines if "mingling with the neighbours only" in m]
    writer = [m for m in lines if "not reached (1 attempt): no revoke waiting; its trim" in m]
    assert len(at_mingle) == 1 and len(writer) <= 1 and len(lines) == len(at_mingle) + len(writer), lines
    status = cluster.client.control.broadcast("mingle_status", reply=True, destination=["w2@down"], timeout=5)
    (answer,) = status
    assert answer["w2@down"]["last"]["sources_unreached"] == ["store@down"]
    assert answer["w2@down"]["last"]["accepted"] == ["w1@down"]
