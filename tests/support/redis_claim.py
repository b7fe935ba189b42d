"""A Redis database of one's own on a shared server: claimed, waited for, released.

The tests (``services.redis_db``) and the benchmarks (``benchmarks/benchlib.py``) claim their
databases the same way, so that neither takes one the other uses: a database is free when it
holds no key at all; it is claimed with ``SET NX`` of :data:`CLAIM_KEY` (which makes it not
empty for everyone else); it is released by ``FLUSHDB`` only while the claim is still one's own.
When every database is taken, a claimer waits (other runs end and release theirs) instead of
failing at once. No pytest here: the benchmarks import it.
"""

from __future__ import annotations

import os
import random
import time
import uuid
from collections.abc import Iterable
from typing import Any

__all__ = ["CLAIM_KEY", "CLAIM_SECONDS", "WAIT_SECONDS", "claim", "release"]

#: The key that claims a Redis database for one run (``SET NX``: two runs never share one).
CLAIM_KEY = "celery-mingle-plugins:tests:claim"
#: A claim left by a run that died ends after this many seconds (its data stays: the database is
#: not empty, so no later run takes it; nothing is flushed that a run did not claim).
CLAIM_SECONDS = 6 * 3600
#: How long a claimer waits for a database to be free when all are taken.
WAIT_SECONDS = float(os.environ.get("MINGLE_REDIS_WAIT", "180"))


def claim(
    host: str, port: int, databases: Iterable[int], wait: float = WAIT_SECONDS
) -> tuple[int, Any, str] | None:
    """``(db, client, token)`` of a free database of ``databases`` now claimed, trying them in a
    random order every half second for up to ``wait`` seconds; ``None`` if none came free."""
    import redis

    token = f"{os.getpid()}:{uuid.uuid4().hex}"
    deadline = time.monotonic() + wait
    databases = list(databases)
    while True:
        candidates = list(databases)
        random.shuffle(candidates)
        for db in candidates:
            client = redis.Redis(host=host, port=port, db=db)
            try:
                if client.dbsize() == 0 and client.set(CLAIM_KEY, token, nx=True, ex=CLAIM_SECONDS):
                    return db, client, token
            except redis.RedisError:
                pass
            client.close()
        if time.monotonic() >= deadline:
            return None
        time.sleep(0.5)


def release(client: Any, token: str) -> None:
    """``FLUSHDB`` of a claimed database, if the claim is still ``token``'s; then close."""
    try:
        if client.get(CLAIM_KEY) == token.encode():
            client.flushdb()
    finally:
        client.close()
