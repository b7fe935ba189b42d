"""Issue 22 on real workers, on the Redis and PostgreSQL stores (one suite, parametrised):

- a bad entry in the store is skipped alone (one WARNING line), the 10 good ids are all learnt after
  a full restart, and the worker deletes the bad entry afterwards;
- revokes sent while the store is down (both ways) are kept by the workers and written once it is
  back: 6 of 6 after a full restart; ``celery mingle revoke`` exits 69 naming the store;
- a worker stopping while the store is down keeps its revokes beside its ``--statedb`` and writes
  them at its next start;
- with ``mingle_hmac_keys``, a flood of unsigned or forged entries evicts none of the ids recorded.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mingle_store.backends import LAYOUT, Limits, RevocationStore, open_store
from tests.support import services
from tests.support.workers import Cluster

pytestmark = pytest.mark.redis


@pytest.fixture(params=["redis", "postgres"])
def backend(request: pytest.FixtureRequest) -> str:
    services.require("redis")
    return str(request.param)


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.2)


def ids_in(store: RevocationStore) -> set[str]:
    try:
        return {i for i, _ in store.load(None, None).rows}
    except Exception:  # the store is still coming back
        return set()


def revoked_of(cluster: Cluster, node: str, expected: set[str], timeout: float = 20.0) -> set[str]:
    """``inspect revoked`` of the node, asked again until it holds ``expected`` (or time is up)."""
    deadline = time.monotonic() + timeout
    while True:
        ids = cluster.revoked(node)
        if expected <= ids or time.monotonic() > deadline:
            return ids
        time.sleep(0.2)


def inject(url: str, name: str, member: bytes, score: float) -> None:
    """Write one entry straight into the store, as anyone with access to the key or table can."""
    if url.startswith("redis"):
        import redis

        redis.Redis.from_url(url).zadd(f"{name}:v{LAYOUT}", {member: score})
        return
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute(f"INSERT INTO {name}_v{LAYOUT} (id, revoked_at) VALUES (%s, %s)", (member, score))


def log_lines(text: str, needle: str) -> list[str]:
    return [line for line in text.splitlines() if needle in line]


# -- 1. per-entry validation on load ----------------------------------------------------------------

BAD_ENTRIES: dict[str, tuple[bytes, float | None, str]] = {
    # kind: (member, score (None: now), the reason the worker logs)
    "not-utf8": (b"\xff\xfe-not-utf8", None, "id not UTF-8"),
    "empty": (b"", None, "empty id"),
    "2000-chars": (b"x" * 2000, None, "id too long"),
    "10-MB": (b"y" * 10_000_000, None, "id too long"),
    "future-time": (b"revoked-in-ten-years", time.time() + 10 * 365 * 86400, "bad revoke time"),
}


@pytest.fixture
def isolated_store(isolated_store_url: str) -> Iterator[tuple[dict[str, Any], RevocationStore]]:
    conf = {"url": isolated_store_url, "name": f"mingle_bad_{uuid.uuid4().hex[:8]}"}
    store = open_store(conf["url"], conf["name"], timeout=10.0)
    yield conf, store
    store.forget()


@pytest.mark.parametrize("kind", list(BAD_ENTRIES))
def test_a_bad_entry_is_skipped_alone_and_the_ten_good_ids_are_learnt_after_a_full_restart(
    backend: str,
    kind: str,
    isolated_store: tuple[dict[str, Any], RevocationStore],
    make_cluster: Callable[..., Cluster],
) -> None:
    conf, store = isolated_store
    cluster = make_cluster(None, {"mingle_plugin_settings": {"store": conf}})
    cluster.start("w1@bad")
    good = [str(uuid.uuid4()) for _ in range(10)]
    cluster.client.control.revoke(good)  # plain Celery: the worker records them
    wait_until(lambda: set(good) <= ids_in(store), 20, "the worker to record the 10 ids")
    member, score, reason = BAD_ENTRIES[kind]
    at = time.time() if score is None else score
    if backend == "postgres" and len(member) > 8192:
        import psycopg

        # The table's primary key cannot index an id this long: PostgreSQL refuses the entry itself.
        with pytest.raises(psycopg.errors.ProgramLimitExceeded):
            inject(conf["url"], conf["name"], member, at)
        assert store.count() == 10
        return
    inject(conf["url"], conf["name"], member, at)
    assert store.count() == 11

    cluster.close()  # a full restart
    w2 = cluster.start("w2@bad")
    learnt = revoked_of(cluster, "w2@bad", set(good))
    assert len(set(good) & learnt) == 10, w2.tail()
    warnings = [line for line in w2.log().splitlines() if "WARNING" in line and "mingle: revocation" in line]
    assert len(warnings) == 1, warnings
    assert f"skipped 1 invalid entries (1 {reason}); the 10 valid ones are used" in warnings[0]
    summary = cluster.summary("w2@bad")
    assert summary is not None and summary.nodes["store@127.0.0.1"].ids_merged == 10
    # The worker deletes the bad entry afterwards (in the background): the store is clean again.
    wait_until(lambda: store.count() == 10, 20, "the bad entry to be deleted")
    assert "deleted 1 invalid entries" in w2.log()


# -- 2. nothing acknowledged is lost ----------------------------------------------------------------


def celery_cli(cluster: Cluster, *args: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join(filter(None, [str(cluster.directory), os.environ.get("PYTHONPATH")]))
    env = dict(os.environ, PYTHONPATH=path)
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "proj", *args],
        cwd=cluster.directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def down_conf(store: Any) -> dict[str, Any]:
    return {"url": store.url, "name": "mingle_down", "timeout": 0.5, "retry_max": 1.0}


def test_revokes_sent_while_the_store_is_down_are_written_once_it_is_back(
    backend: str, stoppable_store: Any, make_cluster: Callable[..., Cluster]
) -> None:
    conf = down_conf(stoppable_store)
    cluster = make_cluster(None, {"mingle_plugin_settings": {"store": conf}})
    w1 = cluster.start("w1@down")
    w2 = cluster.start("w2@down")
    stoppable_store.stop()

    by_cli = [str(uuid.uuid4()) for _ in range(3)]
    done = celery_cli(cluster, "mingle", "revoke", *by_cli)
    assert done.returncode == 69, done.stdout + done.stderr
    assert done.stdout == ""
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith(
        "error: revoked 3 task(s) on the workers up now only; not recorded: plugin 'store'"
    )
    assert "revocation store store@127.0.0.1" in line and "did not take the ids" in line
    assert "nowhere" not in line
    listed = celery_cli(cluster, "mingle-store", "status")
    assert listed.returncode == 69 and "not reached" in listed.stderr

    by_api = [str(uuid.uuid4()) for _ in range(3)]
    cluster.client.control.revoke(by_api)
    every = {*by_cli, *by_api}
    for node in ("w1@down", "w2@down"):
        assert every <= revoked_of(cluster, node, every), f"{node} did not get the 6 revokes"
    for worker in (w1, w2):
        wait_until(lambda w=worker: "revokes kept in memory" in w.log(), 10, "the recorder's warning")
        first = log_lines(worker.log(), "not reached (1 attempt)")
        assert len(first) == 1 and "WARNING" in first[0] and "written again with back-off" in first[0]
    # What the operator reads meanwhile: the pending writes in mingle status, a problem of check.
    shown = celery_cli(cluster, "mingle", "status", "-d", "w1@down")
    assert "w1@down: plugin 'store': " in shown.stdout and "pending_writes 6" in shown.stdout, shown.stdout
    checked = celery_cli(cluster, "mingle", "check")
    assert checked.returncode == 70, checked.stdout + checked.stderr  # a plugin reports a problem
    assert (
        "a plugin reports: w1@down: plugin 'store': 6 revokes not written to the store yet" in checked.stdout
    )

    stoppable_store.start()
    store = open_store(conf["url"], conf["name"], timeout=5.0)
    wait_until(lambda: every <= ids_in(store), 30, "the workers to write the 6 kept revokes")
    for worker in (w1, w2):
        wait_until(lambda w=worker: "reached again after" in w.log(), 10, "the recovery line")
    listed = celery_cli(cluster, "mingle-store", "status", "--json")
    assert listed.returncode == 0, listed.stderr
    status = json.loads(listed.stdout)
    assert status["reachable"] and status["in_force"] == 6 and status["layout"] == LAYOUT

    cluster.close()  # a full restart
    w3 = cluster.start("w3@down")
    learnt = revoked_of(cluster, "w3@down", every)
    assert len(every & learnt) == 6, w3.tail()
    store.forget()


def test_a_worker_stopping_while_the_store_is_down_keeps_its_revokes_beside_its_statedb(
    backend: str, stoppable_store: Any, make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    conf = down_conf(stoppable_store)
    cluster = make_cluster(None, {"mingle_plugin_settings": {"store": conf}})
    statedb = tmp_path / "w1.state"
    journal = Path(f"{statedb}.mingle-store.json")
    w1 = cluster.start("w1@sd", statedb=statedb)
    w2 = cluster.start("w2@sd")  # no --statedb: says that it loses them
    stoppable_store.stop()
    ids = cluster.revoke([str(uuid.uuid4()) for _ in range(3)])
    wait_until(journal.exists, 10, "the journal beside the statedb")
    assert set(json.loads(journal.read_text())["ids"]) == set(ids)

    cluster.stop_node("w1@sd")
    cluster.stop_node("w2@sd")
    (kept,) = log_lines(w1.log(), "not reached at shutdown")
    assert "WARNING" in kept and f"3 revokes not written (kept in {journal}" in kept
    (lost,) = log_lines(w2.log(), "not reached at shutdown")
    assert "3 revokes not written (lost from this worker: it has no --statedb to keep them)" in lost
    assert set(json.loads(journal.read_text())["ids"]) == set(ids)

    stoppable_store.start()
    store = open_store(conf["url"], conf["name"], timeout=5.0)
    again = cluster.start("w1@sd", statedb=statedb)
    wait_until(lambda: set(ids) <= ids_in(store), 30, "the restarted worker to write its kept revokes")
    assert log_lines(again.log(), "3 revokes kept by the last run, not written yet: writing them")
    wait_until(lambda: not journal.exists(), 10, "the journal to be removed once written")
    store.forget()


def test_a_worker_killed_while_the_store_is_down_keeps_the_revokes_it_acknowledged(
    backend: str, stoppable_store: Any, make_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    conf = down_conf(stoppable_store)
    cluster = make_cluster(None, {"mingle_plugin_settings": {"store": conf}})
    statedb = tmp_path / "w1.state"
    journal = Path(f"{statedb}.mingle-store.json")
    cluster.start("w1@kill", statedb=statedb)
    stoppable_store.stop()
    ids = [str(uuid.uuid4()) for _ in range(2)]
    replies = cluster.client.control.revoke(ids, reply=True, timeout=5)  # acknowledged by the worker
    assert replies and "ok" in replies[0]["w1@kill"]
    assert set(json.loads(journal.read_text())["ids"]) == set(ids)  # written before the answer
    cluster.stop_node("w1@kill", signal.SIGKILL)  # no shutdown at all

    stoppable_store.start()
    store = open_store(conf["url"], conf["name"], timeout=5.0)
    cluster.start("w1@kill", statedb=statedb)
    wait_until(
        lambda: set(ids) <= ids_in(store), 30, "the restarted worker to write the acknowledged revokes"
    )
    store.forget()


# -- 3. bounded, attributable growth ------------------------------------------------------------------


def test_with_keys_a_flood_of_unsigned_or_forged_entries_evicts_no_recorded_id(
    backend: str,
    isolated_store: tuple[dict[str, Any], RevocationStore],
    make_cluster: Callable[..., Cluster],
) -> None:
    conf, _ = isolated_store
    conf = {**conf, "timeout": 15.0}  # a load wades through the whole flood once (Redis: ~4 s per million)
    keys = ["fleet-key-1"]
    app_conf = {
        "mingle_plugin_settings": {"store": conf},
        "mingle_hmac_keys": keys,  # no mingle_accept_unsigned: the store's reply is an extra source
        "mingle_revokes_max": 1000,
        "mingle_plugin_timeout": 30.0,  # the store's timeout is capped by it
    }
    cluster = make_cluster(None, app_conf)
    cluster.start("w1@flood")
    good = [str(uuid.uuid4()) for _ in range(10)]
    cluster.client.control.revoke(good)
    signed = open_store(conf["url"], conf["name"], timeout=30.0, limits=Limits(keys=tuple(keys)))
    wait_until(lambda: set(good) <= ids_in(signed), 20, "the worker to record the 10 ids, signed")

    now = time.time()
    size = 1_000_000  # the flood
    flood = {f"flood-{i}".encode(): now + 1 for i in range(size)}  # newer than every good id
    if conf["url"].startswith("redis"):
        import redis

        client = redis.Redis.from_url(conf["url"])
        members = list(flood.items())
        for i in range(0, size, 50_000):  # unsigned
            client.zadd(f"{conf['name']}:v{LAYOUT}", dict(members[i : i + 50_000]))
        client.zadd(f"{conf['name']}:v{LAYOUT}", {b"forged-1": now + 2, b"forged-2": now + 2})
        client.hset(f"{conf['name']}:v{LAYOUT}:mac", mapping={b"forged-1": "0" * 64, b"forged-2": "1" * 64})
    else:
        import psycopg

        with psycopg.connect(conf["url"]) as conn, conn.cursor() as cur:
            with cur.copy(f"COPY {conf['name']}_v{LAYOUT} (id, revoked_at) FROM STDIN") as copy:
                for row in flood.items():
                    copy.write_row(row)
            cur.executemany(
                f"INSERT INTO {conf['name']}_v{LAYOUT} (id, revoked_at, mac) VALUES (%s, %s, %s)",
                [(b"forged-1", now + 2, "0" * 64), (b"forged-2", now + 2, "1" * 64)],
            )
    assert signed.count() == size + 12

    cluster.close()  # a full restart
    w2 = cluster.start("w2@flood")
    learnt = revoked_of(cluster, "w2@flood", set(good))
    assert len(set(good) & learnt) == 10, w2.tail()
    assert not {i for i in learnt if i.startswith(("flood-", "forged-"))}
    (line,) = log_lines(w2.log(), "invalid entries (")
    assert (
        f"skipped {size + 2} invalid entries (2 bad MAC, {size} unsigned); the 10 valid ones are used" in line
    )
    wait_until(lambda: signed.count() == 10, 60, "the refused entries to be deleted")
    status = cluster.client.control.broadcast(
        "mingle_status", reply=True, timeout=5, destination=["w2@flood"]
    )
    store_state = status[0]["w2@flood"]["plugin_status"]["store"]
    assert store_state["reachable"] is True and store_state["ids_in_force"] == 10, store_state
    assert store_state["pending_writes"] == 0 and "problem" not in store_state, store_state
    # A recorder later bounds the store by age, among the signed entries only.
    cluster.client.control.revoke(["after-the-flood"])
    wait_until(lambda: "after-the-flood" in ids_in(signed), 20, "a new revoke to be recorded")
    assert set(good) <= ids_in(signed)


def test_the_worker_log_says_what_the_store_brought_apart_from_the_neighbours(
    backend: str,
    isolated_store: tuple[dict[str, Any], RevocationStore],
    make_cluster: Callable[..., Cluster],
) -> None:
    conf, store = isolated_store
    store.record({"from-the-store": time.time()}, None, None)
    cluster = make_cluster(None, {"mingle_plugin_settings": {"store": conf}})
    cluster.start("w1@count")
    cluster.client.control.revoke(["from-w1"])
    wait_until(lambda: "from-w1" in ids_in(store), 20, "the revoke to be recorded")
    w2 = cluster.start("w2@count")
    assert {"from-the-store", "from-w1"} <= revoked_of(cluster, "w2@count", {"from-the-store", "from-w1"})
    lines = [m for _, m in w2.mingle_lines() if m.startswith("mingle: revocation store store@")]
    assert len(lines) == 1
    # The neighbour answered first with both ids: the store's reply brought nothing new.
    assert re.search(
        r"store@127\.0\.0\.1: 2 ids, \d merged; neighbours: \d ids merged; 0 revokes waiting", lines[0]
    )


def test_nowhere_is_said_only_when_no_store_is_configured(make_cluster: Callable[..., Cluster]) -> None:
    services.require("redis")
    cluster = make_cluster(None, {"mingle_plugin_settings": {"store": {"url": None}}})
    done = celery_cli(cluster, "mingle", "revoke", "no-store-1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        "revoked 1 task(s); recorded in: nowhere (no plugin keeps revokes: workers up now only)"
    )
