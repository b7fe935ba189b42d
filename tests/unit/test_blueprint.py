"""The consumer blueprint puts our step where stock Mingle runs, for any hash seed."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from celery.worker.consumer.consumer import Consumer as StockConsumer
from celery.worker.consumer.mingle import Mingle as StockMingle

from mingle_plugins.consumer import Blueprint

ORDER_SCRIPT = """
import json
from celery import Celery
from mingle_plugins.consumer import Consumer
app = Celery("seeded", broker="memory://")
bp = Consumer.Blueprint(steps=app.steps["consumer"])
steps = bp.steps = bp.claim_steps()  # as Blueprint.apply does
print(json.dumps([s.name for s in bp._finalize_steps(steps)]))
"""

SEEDS = range(0, 400, 8)  # 50 hash seeds


def order_with_seed(seed: int) -> list[str]:
    env = dict(os.environ, PYTHONHASHSEED=str(seed))
    out = subprocess.run(
        [sys.executable, "-c", ORDER_SCRIPT], env=env, capture_output=True, text=True, check=True
    )
    return list(json.loads(out.stdout))


def test_order_for_many_hash_seeds() -> None:
    orders = {seed: order_with_seed(seed) for seed in SEEDS}
    for seed, order in orders.items():
        assert StockMingle.name not in order, seed
        assert order.count("mingle_plugins.bootstep.Mingle") == 1, seed
        pos = {name.rsplit(".", 1)[-1]: i for i, name in enumerate(order)}
        assert pos["Events"] < pos["Mingle"] < pos["Tasks"] < pos["Control"], (seed, order)
        assert pos["Mingle"] < pos["Gossip"], (seed, order)
        assert pos["Control"] < pos["PresenceStep"] < pos["Evloop"], (seed, order)
        assert pos["Evloop"] == len(order) - 1, (seed, order)


def test_no_celery_class_is_changed() -> None:
    before = (list(StockConsumer.Blueprint.default_steps), StockMingle.requires)
    bp = Blueprint()
    bp.steps = bp.claim_steps()
    bp._finalize_steps(bp.steps)
    assert StockConsumer.Blueprint.default_steps == before[0]
    assert "celery.worker.consumer.mingle:Mingle" in StockConsumer.Blueprint.default_steps
    from celery.worker.consumer.gossip import Gossip
    from celery.worker.consumer.tasks import Tasks

    assert StockMingle in Tasks.requires and StockMingle in Gossip.requires
