#!/usr/bin/env python
"""The physical floor of a newcomer's mingle with R revoked ids: one full list on loopback plus
one merge, measured in one process with no worker around them.

- ``redis raw``: LPUSH then BRPOP of the bytes kombu would put on Redis for the full list
  (the reply of the digest round: ids packed, with ages), with redis-py: the broker and the
  loopback alone;
- ``kombu``: the same reply published to a queue and consumed with kombu (serialise, base64
  body encoding of the Redis transport, transport, decode): what any kombu reply costs;
- ``merge``: the ids into an empty ``LimitedSet`` as this package merges them (one pass) and as
  Celery 5.7's ``merge_revoked`` does (``add`` per id).

    python benchmarks/floor.py                      # R = 50,000, Redis DB 4, best of 7
    python benchmarks/floor.py --revoked 10000 --repeat 11
"""

from __future__ import annotations

import argparse
import gc
import time
import timeit
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import redis
from celery.utils.collections import LimitedSet
from kombu import Connection, Exchange, Queue

from mingle_plugins.wire import compat, protocol


def best_ms(run: Callable[[], object], repeat: int) -> float:
    return min(timeit.repeat(run, number=1, repeat=repeat)) * 1000


def full_list_reply(count: int) -> dict[str, Any]:
    """The body a neighbour running this package sends in the digest round for ``count`` ids."""
    held = LimitedSet(maxlen=count * 2, expires=10800)
    for task_id in (str(uuid.uuid4()) for _ in range(count)):
        held.add(task_id, now=time.monotonic() - 60)
    ids = list(held)
    ask = {"v": protocol.VERSION, "want": "full", "ages": [], "packed": True}
    body = protocol.extend_reply(
        {"revoked": ids, "clock": 1}, ask, "n@floor", (), ages=lambda got: compat.revoked_ages(held, got)
    )
    return {"n@floor": body}


def measure(url: str, count: int, repeat: int) -> list[tuple[str, float]]:
    reply = full_list_reply(count)
    results: list[tuple[str, float]] = []
    with Connection(url) as conn:
        queue = Queue(f"mingle-floor-{uuid.uuid4().hex[:8]}", Exchange("", type="direct"), auto_delete=True)
        chan = conn.default_channel
        queue(chan).declare()
        producer = conn.Producer(serializer="json")
        got: list[Any] = []
        consumer = conn.Consumer([queue], callbacks=[lambda body, message: got.append(body)], accept=["json"])
        consumer.consume()

        def kombu_round_trip() -> None:
            got.clear()
            producer.publish(reply, routing_key=queue.name)
            while not got:
                conn.drain_events(timeout=5)

        results.append(("kombu: publish, transport, decode", best_ms(kombu_round_trip, repeat)))
        # The bytes kombu put on Redis for that message, pushed and popped raw.
        producer.publish(reply, routing_key=queue.name)
        client = redis.Redis.from_url(url)
        raw = client.rpop(queue.name)
        assert raw is not None
        results.append(
            ("redis raw: LPUSH + BRPOP of those bytes", best_ms(lambda: _raw(client, raw), repeat))
        )
        results.append(("(message size, KiB)", len(raw) / 1024))
        consumer.cancel()
        queue(chan).delete()
    body = reply["n@floor"]
    ids = protocol.unpack_ids(body["mingle"]["ids"])
    ages = dict(zip(ids, body["mingle"]["ages"], strict=True))

    def ours() -> None:
        compat.merge_aged(LimitedSet(maxlen=count * 2, expires=10800), ids, ages)

    def stock() -> None:
        target = LimitedSet(maxlen=count * 2, expires=10800)
        for task_id in ids:
            target.add(task_id)

    gc.disable()  # as the step does while it merges
    results.append(("merge: this package (one pass, with ages)", best_ms(ours, repeat)))
    results.append(("merge: add per id (Celery 5.7 merge_revoked)", best_ms(stock, repeat)))
    gc.enable()
    return results


def _raw(client: Any, raw: bytes) -> None:
    client.lpush("mingle-floor-raw", raw)
    client.brpop(["mingle-floor-raw"], timeout=5)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--url", default="redis://127.0.0.1:6379/4")
    p.add_argument("--revoked", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=7, help="best of this many")
    args = p.parse_args(argv)
    print(f"| R = {args.revoked} | best of {args.repeat}, ms |\n|---|---|")
    for name, value in measure(args.url, args.revoked, args.repeat):
        print(f"| {name} | {value:.1f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
