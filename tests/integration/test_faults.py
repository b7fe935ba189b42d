"""Faults around a real mingle: hostile replies, brokers that go away, neighbours that die.

Anything that stops or restarts a broker uses a private ``redis-server`` on a
port of its own (:class:`tests.support.brokers.PrivateRedis`), never the
shared services. Every newcomer starts with ids in its ``--statedb`` and
mingles with a fake neighbour that never sends those ids back, so finding
them afterwards proves the newcomer kept them. A plugin hook that hangs
(the third fault of issue 7 part 4) is covered in ``test_bad_plugins.py``
(``hello_hangs``, ``on_reply_hangs``).
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_bad_plugins import new_ids, write_statedb
from tests.support.brokers import FakeNeighbour, PrivateRedis
from tests.support.workers import Worker, client_app

pytestmark = pytest.mark.slow

HUGE_CLOCK = 2**60
REVOKES_MAX = 100


def revoked_list(config: dict[str, Any], nodename: str, attempts: int = 3) -> list[str]:
    """``inspect revoked`` as the raw list (duplicates kept), from a fresh client connection."""
    last: Exception | None = None
    for _ in range(attempts):
        app = client_app(config)
        try:
            reply = app.control.inspect(destination=[nodename], timeout=5.0).revoked() or {}
            if nodename in reply:
                return list(reply[nodename])
        except Exception as exc:  # the broker may just have come back
            last = exc
        finally:
            app.close()
        time.sleep(0.5)
    raise AssertionError(f"{nodename} did not answer inspect revoked: {last!r}")


def clock_of(config: dict[str, Any], nodename: str) -> int:
    app = client_app(config)
    try:
        reply = app.control.inspect(destination=[nodename], timeout=5.0).clock() or {}
        return int(reply[nodename]["clock"])
    finally:
        app.close()


def wait_count(worker: Worker, text: str, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if worker.log().count(text) >= count:
            return
        if worker.proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(
        f"{text!r} not {count} times in the log of {worker.nodename}:\n{worker.log()[-4000:]}"
    )


def summaries(worker: Worker) -> list[str]:
    return [msg for _, msg in worker.mingle_lines() if msg.startswith("mingle: summary: ")]


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A private redis-server (not started yet); request it before ``make_cluster`` so that
    the workers stop before it does."""
    redis = PrivateRedis(tmp_path / "redis")
    try:
        yield redis
    finally:
        redis.close()


def good_neighbour(
    fakes: list[FakeNeighbour], directory: Path, config: dict[str, Any], theirs: list[str]
) -> FakeNeighbour:
    fake = FakeNeighbour(
        directory,
        config["broker_url"],
        config["control_exchange"],
        [{"body": {"fake@faults": {"revoked": theirs, "clock": 5}}, "clock": 5}],
    )
    fakes.append(fake)
    return fake


# -- A7: hostile replies ------------------------------------------------------


def test_hostile_replies_are_rejected_whole_and_bad_ids_alone(
    make_cluster, broker: str, fakes, tmp_path: Path
) -> None:
    cluster = make_cluster(broker)
    partial = {
        name: str(uuid.uuid4()) for name in ("mixed", "nested", "stamp", "neg", "huge", "str", "float")
    }
    good = new_ids(2)
    hostile: list[tuple[str, Any, str]] = [
        ("notdict@fake", "not a dict", r"reply is a str, not a mapping"),
        ("revoked_int@fake", {"revoked": 12345, "clock": 3}, r"revoked is a int, not a list or dict of ids"),
        (
            "clock_negative@fake",
            {"revoked": [partial["neg"]], "clock": -5},
            r"clock -5 is not an integer >= 0",
        ),
        ("clock_huge@fake", {"revoked": [partial["huge"]], "clock": HUGE_CLOCK}, r"above mingle_max_clock"),
        ("clock_str@fake", {"revoked": [partial["str"]], "clock": "12"}, r"clock '12' is not an integer"),
        ("clock_float@fake", {"revoked": [partial["float"]], "clock": 12.5}, r"clock 12.5 is not an integer"),
        (
            "too_many@fake",
            {"revoked": new_ids(REVOKES_MAX + 50), "clock": 3},
            rf"{REVOKES_MAX + 50} revoked ids is more than the {REVOKES_MAX} a worker keeps",
        ),
    ]
    # Sound bodies with one bad id each: the bad id is dropped alone, the valid one merged.
    bad_ids: list[tuple[str, Any]] = [
        ("revoked_mixed@fake", {"revoked": [partial["mixed"], 42], "clock": 3}),
        ("revoked_nested@fake", {"revoked": [partial["nested"], ["x"]]}),
        ("revoked_stamp@fake", {"revoked": {partial["stamp"]: [1.0, "x"], "other": "yesterday"}}),
    ]
    replies = [{"body": {node: reply}, "clock": HUGE_CLOCK} for node, reply, _ in hostile]
    replies += [{"body": {node: reply}, "clock": HUGE_CLOCK} for node, reply in bad_ids]
    replies.append({"body": ["a", "list", "body"], "clock": HUGE_CLOCK})  # not even {node: reply}
    replies.append({"body": {"good@fake": {"revoked": good, "clock": 7}}, "clock": HUGE_CLOCK})
    fake = FakeNeighbour(tmp_path, cluster.config["broker_url"], cluster.config["control_exchange"], replies)
    fakes.append(fake)
    fake.wait_listening()

    mine = new_ids()
    write_statedb(tmp_path / "state.db", mine)
    worker = cluster.start(
        "target@faults",
        args=[f"--statedb={tmp_path / 'state.db'}"],
        env={"CELERY_WORKER_REVOKES_MAX": str(REVOKES_MAX)},
    )
    worker.wait_for("mingle: summary: ")
    lines = [msg for _, msg in worker.mingle_lines()]
    for node, _, reason in hostile:
        found = [m for m in lines if m.startswith(f"mingle: rejected the reply of {node}: ")]
        assert len(found) == 1 and re.search(reason, found[0]), (node, found)
    assert any(
        re.match(r"mingle: rejected the reply of <malformed reply 1>: body is a list", m) for m in lines
    )
    rejected = len(hostile) + 1
    assert re.search(
        # The malformed message is a rejection, not a neighbour.
        rf"mingle: summary: {rejected + len(bad_ids)} neighbours, {1 + len(bad_ids)} accepted, "
        rf"{2 + len(bad_ids)} ids merged, 0 dropped by policy, {rejected} rejected, "
        r".*, 3 invalid ids dropped",
        worker.log(),
    )
    good = [*good, partial["mixed"], partial["nested"], partial["stamp"]]

    raw = revoked_list(cluster.config, worker.nodename)
    assert all(type(task_id) is str for task_id in raw)
    assert len(raw) == len(set(raw))
    assert set(raw) == set(mine) | set(good), "a rejected reply partly merged, a valid id not, or one lost"
    # Neither the reply bodies nor the reply headers moved the clock by 2**60 (or at all, much).
    assert clock_of(cluster.config, worker.nodename) < 10**6


# -- B2: a neighbour killed with SIGKILL during the newcomer's mingle -----------


@pytest.mark.redis
def test_neighbour_killed_mid_mingle(make_cluster, redis_url: str, fakes, tmp_path: Path) -> None:
    cluster = make_cluster(redis_url)
    victim = cluster.start("victim@faults")
    lost = new_ids()
    cluster.client.control.revoke(lost, destination=[victim.nodename])
    assert set(lost) <= cluster.revoked(victim.nodename)
    theirs = new_ids()
    good_neighbour(fakes, tmp_path, cluster.config, theirs).wait_listening()
    # Frozen, the victim cannot answer before it dies: it gets the hello and is killed holding it.
    os.killpg(victim.proc.pid, signal.SIGSTOP)
    mine = new_ids()
    write_statedb(tmp_path / "state.db", mine)
    newcomer = cluster.start("newcomer@faults", wait=False, args=[f"--statedb={tmp_path / 'state.db'}"])
    try:
        newcomer.wait_for("mingle: searching")
    finally:
        os.killpg(victim.proc.pid, signal.SIGKILL)
        victim.proc.wait(10)
    newcomer.wait_ready()
    assert newcomer.wait_for(
        r"mingle: summary: 1 neighbours, 1 accepted, 3 ids merged, 0 dropped by policy, 0 rejected"
    )
    revoked = cluster.revoked(newcomer.nodename)
    assert set(mine) | set(theirs) <= revoked
    assert not set(lost) & revoked


# -- B1: the broker restarted while the worker mingles -------------------------


def test_broker_restarted_during_the_mingle(
    private_redis: PrivateRedis, make_cluster, fakes, tmp_path: Path
) -> None:
    private_redis.start()
    # A long idle timeout keeps the newcomer collecting while the broker goes away.
    cluster = make_cluster(private_redis.url, {"mingle_hello_timeout": 6.0})
    theirs = new_ids()
    fake = good_neighbour(fakes, tmp_path, cluster.config, theirs)
    fake.wait_listening()
    mine = new_ids()
    write_statedb(tmp_path / "state.db", mine)
    worker = cluster.start("restart@faults", wait=False, args=[f"--statedb={tmp_path / 'state.db'}"])
    worker.wait_for("mingle: searching")
    deadline = time.monotonic() + 10
    while fake.answered() < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake.answered() == 1
    assert "mingle: summary" not in worker.log()  # still collecting
    private_redis.restart(down_for=1.0)

    worker.wait_ready(60)
    wait_count(worker, "mingle: summary: ", 1, timeout=30)
    log = worker.log()
    assert log.count("mingle: searching for neighbors") >= 2, log[-4000:]
    assert re.search(r"Connection to broker lost|Cannot connect to redis", log)
    revoked = set(revoked_list(cluster.config, worker.nodename))
    assert set(mine) <= revoked, "ids from --statedb were lost"
    last = summaries(worker)[-1]
    merged = re.match(r"mingle: summary: \d+ neighbours, (\d+) accepted", last)
    assert merged, last
    assert (set(theirs) <= revoked) == (merged[1] == "1"), (last, revoked)


# -- B4: the broker down when the worker starts --------------------------------


def test_broker_down_at_start(private_redis: PrivateRedis, make_cluster, fakes, tmp_path: Path) -> None:
    cluster = make_cluster(private_redis.url)
    mine = new_ids()
    write_statedb(tmp_path / "state.db", mine)
    worker = cluster.start("late@faults", wait=False, args=[f"--statedb={tmp_path / 'state.db'}"])
    # Stock retries at growing intervals; start the broker during the second wait (4 s).
    worker.wait_for(r"Trying again in 4\.00 seconds", timeout=30)
    assert "mingle: searching" not in worker.log()
    private_redis.start()
    theirs = new_ids()
    good_neighbour(fakes, tmp_path, cluster.config, theirs).wait_listening()

    worker.wait_ready(30)
    log = worker.log()
    assert log.count("mingle: searching for neighbors") == 1
    assert log.rindex("Cannot connect to redis") < log.index("mingle: searching for neighbors")
    assert re.search(
        r"mingle: summary: 1 neighbours, 1 accepted, 3 ids merged, 0 dropped by policy, 0 rejected", log
    ), log[-3000:]
    assert set(mine) | set(theirs) <= cluster.revoked(worker.nodename)


# -- B5: a consumer restart after a lost connection mingles again, no duplicates --


def test_reconnect_mingles_again_without_duplicates(
    private_redis: PrivateRedis, make_cluster, fakes, tmp_path: Path
) -> None:
    private_redis.start()
    cluster = make_cluster(private_redis.url)
    theirs = new_ids()
    fake = good_neighbour(fakes, tmp_path, cluster.config, theirs)
    fake.wait_listening()
    mine = new_ids()
    write_statedb(tmp_path / "state.db", mine)
    worker = cluster.start("reconnect@faults", args=[f"--statedb={tmp_path / 'state.db'}"])
    assert worker.wait_for(
        r"mingle: summary: 1 neighbours, 1 accepted, 3 ids merged, 0 dropped by policy, 0 rejected"
    )
    before = revoked_list(cluster.config, worker.nodename)
    assert sorted(before) == sorted(set(mine) | set(theirs))

    private_redis.restart(down_for=0.5)
    fake.wait_listening(2)
    wait_count(worker, "mingle: summary: ", 2, timeout=60)
    worker.wait_for(r"Connection to broker lost")
    second = summaries(worker)[1]
    assert re.match(
        r"mingle: summary: \d+ neighbours, [01] accepted, 0 ids merged, 0 dropped by policy, 0 rejected",
        second,
    ), second
    after = revoked_list(cluster.config, worker.nodename)
    assert len(after) == len(set(after)), "duplicated ids in the revoked set"
    assert set(after) == set(before)
