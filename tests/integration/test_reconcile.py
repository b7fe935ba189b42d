"""A restarted worker that holds most ids (its --statedb) fetches only what it lacks, on real workers.

Two fast-profile workers hold 3,000 revoked ids; one is stopped (its state db keeps them), 10
more ids are revoked, and it starts again under the same name: its full-list request offers
its bucket digests (mingle_plugins.wire.reconcile), the neighbour answers with the buckets that
differ only, and the newcomer holds all 3,010 ids after it, having received a small part of the
list. On Redis and RabbitMQ. Also against a neighbour of a stock Celery (which ignores the offer
and sends everything): the same 3,010 ids.

    python -m pytest tests/integration/test_reconcile.py -n 0
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

FAST = {"mingle_profile": "fast"}


def _restarted_missing_ten(cluster, tmp_path: Path, stock_neighbour: bool) -> tuple[object, set[str]]:
    """a@rec and b@rec hold 3,000 ids; b stops (its state db keeps them), a gets 10 more, b
    starts again: its summary, and the 3,010 ids."""
    statedb = tmp_path / "b.state"
    cluster.start("a@rec", **({"stock": True} if stock_neighbour else {"conf": FAST}))
    cluster.start("b@rec", conf=FAST, statedb=statedb)
    first = [str(uuid.uuid4()) for _ in range(3000)]
    cluster.revoke(first, batch=500, timeout=60)
    cluster.stop_node("b@rec")  # a warm shutdown: the state db keeps the 3,000 ids
    later = [str(uuid.uuid4()) for _ in range(10)]
    cluster.revoke(later, destination=["a@rec"], timeout=30)
    summary = cluster.newcomer("b@rec", conf=FAST, statedb=statedb)
    return summary, set(first) | set(later)


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
