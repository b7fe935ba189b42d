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


@pytest.mark.slow
def test_a_restarted_worker_fetches_only_the_ids_it_lacks(make_cluster, broker: str, tmp_path: Path) -> None:
    cluster = make_cluster(broker)
    statedb = tmp_path / "b.state"
    cluster.start("a@rec", conf=FAST)
    cluster.start("b@rec", conf=FAST, statedb=statedb)
    first = [str(uuid.uuid4()) for _ in range(3000)]
    cluster.revoke(first, batch=500, timeout=60)
    cluster.stop_node("b@rec")  # a warm shutdown: the state db keeps the 3,000 ids
    later = [str(uuid.uuid4()) for _ in range(10)]
    cluster.revoke(later, destination=["a@rec"], timeout=30)
    summary = cluster.newcomer("b@rec", conf=FAST, statedb=statedb)
    held = cluster.revoked("b@rec")
    assert set(first) | set(later) <= held, f"missing {len(set(first) | set(later) - held)}"
    outcome = summary.nodes["a@rec"]
    # The ids of the buckets that differ only: 10 ids in at most 10 of 128 buckets (~24 each).
    assert 10 <= outcome.ids_received < 600, outcome
    assert not summary.rejected, summary.rejected


@pytest.mark.slow
def test_a_stock_neighbour_still_sends_everything(make_cluster, redis_url: str, tmp_path: Path) -> None:
    """Stock Celery ignores the ``mingle`` block: the newcomer learns every id all the same."""
    cluster = make_cluster(redis_url)
    statedb = tmp_path / "b.state"
    cluster.start("a@rec", stock=True)
    cluster.start("b@rec", conf=FAST, statedb=statedb)
    first = [str(uuid.uuid4()) for _ in range(3000)]
    cluster.revoke(first, batch=500, timeout=60)
    cluster.stop_node("b@rec")
    later = [str(uuid.uuid4()) for _ in range(10)]
    cluster.revoke(later, destination=["a@rec"], timeout=30)
    summary = cluster.newcomer("b@rec", conf=FAST, statedb=statedb)
    assert set(first) | set(later) <= cluster.revoked("b@rec")
    assert summary.nodes["a@rec"].ids_received >= 3010
