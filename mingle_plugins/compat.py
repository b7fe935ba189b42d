"""Every access to a private Celery or kombu attribute, and every difference between versions.

Celery 5.7 sends and merges revoked ids only (``state.merge_revoked``, local
stamps); 5.3 to 5.6 send the ``LimitedSet``'s stamp dict and merge it with
``revoked.update`` (the sender's stamps). Nothing else in this package looks
at a private attribute: when a Celery or kombu release changes one, this is
the module to change.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from celery.worker import state as worker_state

__all__ = [
    "count_fanout_receivers",
    "merge_aged",
    "revoked_ages",
    "merge_ids",
    "publish_hello",
    "revoked_for_hello",
    "revoked_stamps",
    "revoked_stamps_view",
    "sends_ids_only",
    "size_revoked_set",
]


def sends_ids_only(state: Any = worker_state) -> bool:
    """True on Celery 5.7+, whose hello carries ids only (``state.merge_revoked``)."""
    return hasattr(state, "merge_revoked")


def revoked_stamps_view(revoked_set: Any) -> Mapping[str, Any]:
    """A ``LimitedSet``'s ``{id: (stamp, ...)}`` itself (its private ``_data``), to read only:
    membership in it is a C-level dict lookup, where ``id in revoked_set`` is a Python call."""
    data: Mapping[str, Any] = revoked_set._data
    return data


def revoked_stamps(revoked_set: Any) -> dict[str, Any]:
    """A copy of a ``LimitedSet``'s ``{id: (stamp, id)}`` (its private ``_data``)."""
    return dict(revoked_set._data)


def revoked_ages(revoked_set: Any, ids: Sequence[str]) -> list[int]:
    """How long ago each of ``ids`` was revoked, in seconds (from the ``LimitedSet``'s
    ``time.monotonic()`` stamps, which only mean something on this host)."""
    # Whole seconds: expiries are hours, and 50,000 integers encode and decode much faster.
    now = time.monotonic()
    data = revoked_set._data
    return [max(0, int(now - data[i][0])) if i in data else 0 for i in ids]


def merge_aged(revoked_set: Any, ids: Sequence[str], ages: Mapping[str, float]) -> int:
    """Merge ids with their ages: each is stamped when it was revoked, not now.

    An id already held keeps the older of the two stamps (so a mingle never renews
    a lease), and an id older than the set's ``expires`` is not added. Returns how
    many ids were too old.
    """
    now = time.monotonic()
    expires = revoked_set.expires
    data = revoked_set._data
    add = revoked_set.add
    too_old = 0
    for task_id in ids:
        age = ages.get(task_id, 0)
        if expires and age >= expires:
            too_old += 1
            continue
        stamp = now - age
        held = data.get(task_id)
        if held is None or stamp < held[0]:
            add(task_id, now=stamp)
    return too_old


def size_revoked_set(revoked_set: Any, maxlen: int | None, expires: float | None) -> None:
    """Give the worker's revoked set (a ``LimitedSet``, made at import from the environment)
    another size and expiry; the ids beyond go now, oldest first."""
    if maxlen is not None:
        revoked_set.maxlen = maxlen
    if expires is not None:
        revoked_set.expires = expires
    revoked_set.purge()


def revoked_for_hello(state: Any) -> Any:
    """This node's revoked ids in the installed Celery's hello format."""
    if sends_ids_only(state):
        return list(state.revoked)  # oldest first, as stock 5.7
    return state.revoked._data  # the stamp dict, as stock 5.3 to 5.6


def merge_ids(state: Any, ids: Sequence[str], stamps: Mapping[str, float] | None) -> None:
    """Merge ``ids`` into the worker's revoked set as the installed Celery merges a reply.

    5.7: ``state.merge_revoked(ids)`` (stamped with the local clock). 5.3 to 5.6:
    ``revoked.update`` with the sender's stamps where it sent them, else now.
    """
    if not ids:
        return
    if sends_ids_only(state):
        state.merge_revoked(list(ids))
        return
    now = time.monotonic()
    given = stamps or {}
    state.revoked.update({task_id: given.get(task_id, now) for task_id in ids})


def publish_hello(
    mailbox: Any,
    chan: Any,
    arguments: Mapping[str, Any],
    destination: Sequence[str] | None,
    ticket: str,
    timeout: float,
    producer: Any,
) -> None:
    """kombu's private ``Mailbox._publish`` of ``hello``: what Celery's broadcast sends."""
    mailbox._publish(
        "hello",
        dict(arguments),
        destination=destination,
        reply_ticket=ticket,
        channel=chan,
        timeout=timeout,
        producer=producer,
    )


class _PublishCounter:
    """Wraps a redis client: remembers how many subscribers each PUBLISH reached."""

    def __init__(self, client: Any, counts: list[int]) -> None:
        self._client = client
        self._counts = counts

    def publish(self, *args: Any, **kwargs: Any) -> Any:
        receivers = self._client.publish(*args, **kwargs)
        self._counts.append(int(receivers))
        return receivers

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)


@contextmanager
def count_fanout_receivers(connection: Any, chan: Any) -> Iterator[list[int]]:
    """On Redis, count the subscribers a fanout publish reaches (else count nothing).

    kombu publishes a fanout message with ``PUBLISH``, whose answer is the number
    of subscribers that got it: the other workers' pidbox consumers. kombu drops
    that number, so the channel's client is wrapped for this one publish (on this
    channel instance only, through its ``conn_or_acquire``).
    """
    counts: list[int] = []
    original = getattr(chan, "conn_or_acquire", None)
    if connection.transport.driver_type != "redis" or original is None:
        yield counts
        return

    @contextmanager
    def counting(client: Any = None) -> Iterator[Any]:
        with original(client) as real:
            yield _PublishCounter(real, counts)

    chan.conn_or_acquire = counting
    try:
        yield counts
    finally:
        del chan.conn_or_acquire
