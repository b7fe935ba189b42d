"""A restarted worker that holds most ids (its --statedb) fetches only what it lacks, on real workers.

Two fast-profile workers hold 3,000 revoked ids; one is stopped (its state db keeps them), 10
more ids are revoked, and it starts again under the same name: its full-list request offers
its bucket digests (mingle_plugins.wire.reconcile), the neighbour answers with the buckets that
differ only, and the newcomer holds all 3,010 ids after it, having received a small part of the
list. On Redis and RabbitMQ. Also against a neighbour of a stock Celery (which ignores the offer
and sends everything): the same 3,010 ids.

The other direction: the newcomer's broadcast withholds its ids (mingle_plugins.hello.push), and
each neighbour is sent only the ids it lacks (5 that only the newcomer's state db holds); a node
whose set it cannot know (one that did not answer, a broker that gives no count) gets them all.

    python -m pytest tests/integration/test_reconcile.py -n 0
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from pathlib import Path

import pytest

FAST = {"mingle_profile": "fast"}


#: The INFO line of a neighbour of this package for the ids of one request (or push) it merged.
HELLO_FROM_B = re.compile(r"mingle: hello from b@rec: (\d+) ids received")


def _restarted_missing_ten(
    cluster, tmp_path: Path, stock_neighbour: bool, b_only: list[str] | None = None
) -> tuple[object, set[str]]:
    """a@rec and b@rec hold 3,000 ids (b also ``b_only``); b stops (its state db keeps them), a
    gets 10 more, b starts again: its summary, and the 3,010 ids."""
    statedb = tmp_path / "b.state"
    cluster.start("a@rec", **({"stock": True} if stock_neighbour else {"conf": FAST}))
    cluster.start("b@rec", conf=FAST, statedb=statedb)
    first = [str(uuid.uuid4()) for _ in range(3000)]
    cluster.revoke(first, batch=500, timeout=60)
    if b_only:
        cluster.revoke(b_only, destination=["b@rec"], timeout=30)
    cluster.stop_node("b@rec")  # a warm shutdown: the state db keeps the 3,000 ids
    later = [str(uuid.uuid4()) for _ in range(10)]
    cluster.revoke(later, destination=["a@rec"], timeout=30)
    summary = cluster.newcomer("b@rec", conf=FAST, statedb=statedb)
    return summary, set(first) | set(later)


def _eventually_holds(cluster, nodename: str, ids: set[str], timeout: float = 15.0) -> set[str]:
    """The ids of ``ids`` that ``nodename`` still lacks after up to ``timeout`` seconds (a push
    is sent after the newcomer's round and merged when the neighbour takes it)."""
    deadline = time.monotonic() + timeout
    while True:
        missing = ids - cluster.revoked(nodename)
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.3)


@pytest.mark.slow
def test_a_restarted_worker_fetches_only_the_ids_it_lacks(make_cluster, broker: str, tmp_path: Path) -> None:
    cluster = make_cluster(broker)
    summary, every = _restarted_missing_ten(cluster, tmp_path, stock_neighbour=False)
    held = cluster.revoked("b@rec")
    assert every <= held, f"missing {len(every - held)}"
    outcome = summary.nodes["a@rec"]
    # The ids of the buckets that differ only: 10 ids in at most 10 of 128 buckets (~24 each).
    assert 10 <= outcome.ids_received < 600, outcome
    assert not summary.rejected, summary.rejected


@pytest.mark.slow
def test_a_stock_neighbour_still_sends_everything(make_cluster, redis_url: str, tmp_path: Path) -> None:
    """Stock Celery ignores the ``mingle`` block: the newcomer learns every id all the same."""
    cluster = make_cluster(redis_url)
    summary, every = _restarted_missing_ten(cluster, tmp_path, stock_neighbour=True)
    assert every <= cluster.revoked("b@rec")
    assert summary.nodes["a@rec"].ids_received >= 3010


@pytest.mark.slow
def test_each_neighbour_is_sent_only_the_ids_it_lacks(make_cluster, broker: str, tmp_path: Path) -> None:
    """The newcomer's broadcast carries none of its 3,005 ids: a neighbour of this package merges
    the 5 it lacks and nothing else, where a stock hello would have made it take all 3,005."""
    cluster = make_cluster(broker)
    b_only = [str(uuid.uuid4()) for _ in range(5)]
    summary, every = _restarted_missing_ten(cluster, tmp_path, stock_neighbour=False, b_only=b_only)
    assert every <= cluster.revoked("b@rec")
    assert not _eventually_holds(cluster, "a@rec", set(b_only))
    newcomer_log = cluster.worker("b@rec").log()
    assert "mingle: the hello withheld the 3005 ids held: 5 ids sent to the 1 of 1 known" in newcomer_log
    if broker.startswith("redis"):  # the PUBLISH count: every node that received the hello is known
        assert "sent to the others" not in newcomer_log
    else:  # no count: every id to the nodes not known, the known one skipping them
        assert "all 3005 sent to the others (the broker does not say" in newcomer_log
    received = [int(n) for n in HELLO_FROM_B.findall(cluster.worker("a@rec").log())]
    assert received == [5], received  # the push of the 5; no line for the withheld broadcast
    assert not summary.rejected, summary.rejected


@pytest.mark.slow
def test_a_stock_neighbour_is_sent_what_it_lacks(make_cluster, redis_url: str, tmp_path: Path) -> None:
    """A stock reply carries its whole list: the stock neighbour is sent the 5 ids it lacks."""
    cluster = make_cluster(redis_url)
    b_only = [str(uuid.uuid4()) for _ in range(5)]
    _restarted_missing_ten(cluster, tmp_path, stock_neighbour=True, b_only=b_only)
    assert not _eventually_holds(cluster, "a@rec", set(b_only))
    assert "5 ids sent to the 1 of 1 known neighbours" in cluster.worker("b@rec").log()


@pytest.mark.slow
def test_a_node_that_did_not_answer_gets_every_id(make_cluster, redis_url: str, tmp_path: Path) -> None:
    """c@rec receives the hello but is stopped (SIGSTOP) until the newcomer is ready: it is not
    known, so the ids go to it in a broadcast (which a@rec, known, skips), as a stock hello's would."""
    cluster = make_cluster(redis_url)
    statedb = tmp_path / "b.state"
    cluster.start("a@rec", conf=FAST)
    cluster.start("c@rec", conf=FAST)
    cluster.start("b@rec", conf=FAST, statedb=statedb)
    first = [str(uuid.uuid4()) for _ in range(2000)]
    cluster.revoke(first, batch=500, timeout=60)
    b_only = [str(uuid.uuid4()) for _ in range(5)]
    cluster.revoke(b_only, destination=["b@rec"], timeout=30)
    cluster.stop_node("b@rec")
    silent = cluster.worker("c@rec")
    os.killpg(silent.proc.pid, signal.SIGSTOP)
    try:
        cluster.newcomer("b@rec", conf={**FAST, "mingle_answer_wait": 0}, statedb=statedb)
    finally:
        os.killpg(silent.proc.pid, signal.SIGCONT)
    log = cluster.worker("b@rec").log()
    assert "all 2005 sent to the others (1 nodes received the hello and were not heard)" in log, log[-3000:]
    assert not _eventually_holds(cluster, "c@rec", set(b_only))
    assert not _eventually_holds(cluster, "a@rec", set(b_only))
    received = [int(n) for n in HELLO_FROM_B.findall(cluster.worker("a@rec").log())]
    assert received == [5], received  # its push; the broadcast of all 2,005 it skipped
