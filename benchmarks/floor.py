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

    python benchmarks/floor.py                      # R = 50,000, a free Redis DB, best of 7
    python benchmarks/floor.py --revoked 10000 --repeat 11
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
import timeit
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis
from celery.utils.collections import LimitedSet
from kombu import Connection, Exchange, Queue

sys.path.insert(0, str(Path(__file__).resolve().parent))

import benchlib  # from the directory of this script, inserted above

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


def measure(url: str, count: int, repeat: int, tag: str) -> list[tuple[str, float]]:
    reply = full_list_reply(count)
    results: list[tuple[str, float]] = []
    with Connection(url) as conn:
        queue = Queue(tag, Exchange("", type="direct"), auto_delete=True)
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
            (
                "redis raw: LPUSH + BRPOP of those bytes",
                best_ms(lambda: _raw(client, raw, f"{tag}-raw"), repeat),
            )
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


def _raw(client: Any, raw: bytes, key: str) -> None:
    client.lpush(key, raw)
    client.brpop([key], timeout=5)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--url", help="a Redis URL (default: a random database of 1-15 that is empty, cleaned up)")
    p.add_argument("--revoked", type=int, default=50_000)
    p.add_argument("--repeat", type=int, default=7, help="best of this many")
    args = p.parse_args(argv)
    print(f"| R = {args.revoked} | best of {args.repeat}, ms |\n|---|---|")
    tag = f"mingle-floor-{uuid.uuid4().hex[:8]}"
    space = None if args.url else benchlib.RedisSpace(tag)
    try:
        url = args.url if space is None else space.url
        for name, value in measure(url, args.revoked, args.repeat, tag):
            print(f"| {name} | {value:.1f} |")
    finally:
        if space is not None:
            space.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
