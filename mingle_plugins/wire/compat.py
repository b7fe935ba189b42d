"""Every access to a private Celery or kombu attribute, and every difference between versions.

Celery 5.7 sends and merges revoked ids only (``state.merge_revoked``, local
stamps); 5.3 to 5.6 send the ``LimitedSet``'s stamp dict and merge it with
``revoked.update`` (the sender's stamps). Nothing else in this package looks
at a private attribute: when a Celery or kombu release changes one, this is
the module to change.
"""

from __future__ import annotations

import heapq
import operator
import time
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from itertools import chain, islice, repeat
from operator import itemgetter
from typing import Any

from celery.utils.log import get_logger
from celery.worker import state as worker_state
from kombu.entity import Queue

#: The logger of Celery's control commands (stock ``hello`` logs "sync with NODE" there).
_control_logger = get_logger("celery.worker.control")

__all__ = [
    "CONTROL_STEP",
    "count_fanout_receivers",
    "exclusive_replies",
    "hello_reply_without_ids",
    "merge_aged",
    "revoked_ages",
    "merge_ids",
    "ObservedStamps",
    "observed_stamps",
    "publish_hello",
    "revoked_for_hello",
    "revoked_stamps",
    "revoked_stamps_view",
    "sends_ids_only",
    "size_revoked_set",
]

#: The name of Celery's remote-control consumer step (where the pidbox node lives).
CONTROL_STEP = "celery.worker.consumer.control.Control"


def _exclusive_reply_queue(self: Any) -> Any:
    base: Any = type(self).__mro__[1]
    queue = base.get_reply_queue(self)
    if queue.exclusive:
        return queue
    return Queue(  # type: ignore[no-untyped-call]
        queue.name,
        exchange=queue.exchange,
        routing_key=queue.routing_key,
        durable=False,
        exclusive=True,
        auto_delete=True,
        expires=queue.expires,
        message_ttl=queue.message_ttl,
    )


_EXCLUSIVE_CLASSES: dict[type, type] = {}


def exclusive_replies(mailbox: Any) -> Any:
    """Make ``mailbox`` (a kombu ``Mailbox``) collect its replies in an exclusive queue.

    kombu 5.6+ declares its reply queue ``<oid>.reply.<exchange>.pidbox``
    exclusive; kombu up to 5.5 declares it non-durable and not exclusive, which
    RabbitMQ 4.3 refuses (541, and the connection closed). On those, this one
    mailbox object becomes an instance of a subclass whose reply queue is the
    one kombu 5.6+ declares (same name, exchange, routing key, ``x-expires`` and
    TTL; exclusive). The copies ``mailbox(connection)`` makes (one per Celery
    ``broadcast``, each with its own oid) keep that class; no kombu class is
    changed. Returns the mailbox.
    """
    cls = type(mailbox)
    if cls in _EXCLUSIVE_CLASSES.values() or mailbox.get_reply_queue().exclusive:
        return mailbox
    sub = _EXCLUSIVE_CLASSES.get(cls)
    if sub is None:
        sub = type(f"Exclusive{cls.__name__}", (cls,), {"get_reply_queue": _exclusive_reply_queue})
        _EXCLUSIVE_CLASSES[cls] = sub
    mailbox.__dict__.pop("reply_queue", None)  # computed again, by the subclass
    mailbox.__class__ = sub
    return mailbox


def sends_ids_only(state: Any = worker_state) -> bool:
    """True on Celery 5.7+, whose hello carries ids only (``state.merge_revoked``)."""
    return hasattr(state, "merge_revoked")


def revoked_stamps_view(revoked_set: Any) -> Mapping[str, Any]:
    """A ``LimitedSet``'s ``{id: (stamp, ...)}`` itself (its private ``_data``), to read only:
    membership in it is a C-level dict lookup, where ``id in revoked_set`` is a Python call."""
    data: Mapping[str, Any] = revoked_set._data
    return data


class ObservedStamps(dict[Any, Any]):
    """A ``LimitedSet``'s ``{id: entry}`` (its private ``_data``) that notes the keys written or
    removed since it was last :meth:`drained <drain>`: every way Celery's ``LimitedSet`` (5.3 to
    5.7) and this module change it goes through a method below (``update`` notes each key as it
    goes in). A ``clear``, or more changes than :attr:`limit` between two drains, is noted as
    "read them all" instead, so that the notes never grow past a fraction of the set.
    Everything else (lookups, iteration, ``len``) is the dict's own, at C speed.
    """

    __slots__ = ("_changed", "_lost", "index", "limit")

    def __init__(self, data: Mapping[Any, Any]) -> None:
        super().__init__(data)
        self._changed: list[Any] = []
        self._lost = True  # nothing noted yet: the first reader reads every key
        #: more changes than this between two drains are noted as "read them all"
        self.limit = 4096
        #: what the reader keeps between two drains (:mod:`mingle_plugins.answering.own_set`)
        self.index: Any = None

    def _note(self, key: Any) -> None:
        if not self._lost:
            self._changed.append(key)
            if len(self._changed) > self.limit:
                self._lose()

    def _lose(self) -> None:
        self._lost = True
        self._changed = []

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        self._note(key)

    def __delitem__(self, key: Any) -> None:
        super().__delitem__(key)
        self._note(key)

    def pop(self, key: Any, *default: Any) -> Any:
        value = super().pop(key, *default)
        self._note(key)
        return value

    def popitem(self) -> tuple[Any, Any]:
        item = super().popitem()
        self._note(item[0])
        return item

    def setdefault(self, key: Any, default: Any = None) -> Any:
        value = super().setdefault(key, default)
        self._note(key)
        return value

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        if isinstance(other, Mapping):
            super().update(other, **kwargs)
            for key in chain(other.keys(), kwargs):
                if self._lost:
                    break
                self._note(key)
        else:  # pairs, maybe an iterator: each key noted as it goes in
            super().update(self._noted(other), **kwargs)
            for key in kwargs:
                self._note(key)

    def _noted(self, pairs: Iterable[Any]) -> Iterator[Any]:
        for pair in pairs:
            if not self._lost:
                self._note(pair[0])
            yield pair

    def clear(self) -> None:
        self._lose()
        super().clear()

    def __ior__(self, other: Any) -> ObservedStamps:  # type: ignore[misc]
        self._lose()
        super().__ior__(other)
        return self

    def __reduce__(self) -> tuple[Any, ...]:  # pickled (a pickle serializer, a statedb) as a dict
        return (dict, (dict(self),))

    def drain(self) -> list[Any] | None:
        """The keys noted since the last drain (each is in the dict or was removed from it), and
        a fresh start; ``None`` when they were too many or written in bulk: read every key."""
        changed, lost = self._changed, self._lost
        self._changed, self._lost = [], False
        self.limit = max(4096, len(self) // 4)
        return None if lost else changed


def observed_stamps(revoked_set: Any) -> ObservedStamps:
    """The ``_data`` of ``revoked_set`` as an :class:`ObservedStamps`, put in place (the same keys
    and entries) the first time: one per set, whoever asks. A set whose ``_data`` was replaced
    since (a ``LimitedSet`` of another release) gets a new one, which starts with "read them all"."""
    data = revoked_set._data
    if type(data) is ObservedStamps:
        return data
    observed = ObservedStamps(data)
    revoked_set._data = observed
    return observed


def revoked_stamps(revoked_set: Any) -> dict[str, Any]:
    """A copy of a ``LimitedSet``'s ``{id: (stamp, id)}`` (its private ``_data``)."""
    return dict(revoked_set._data)


def revoked_ages(revoked_set: Any, ids: Sequence[str]) -> list[int]:
    """How long ago each of ``ids`` was revoked, in whole seconds (from the ``LimitedSet``'s
    ``time.monotonic()`` stamps, which only mean something on this host); 0 for an id it
    does not hold, and for a stamp ahead of this clock (a 5.3-5.6 sender's own)."""
    # Whole seconds: expiries are hours, and 50,000 integers encode and decode much faster.
    return list(iter_revoked_ages(revoked_set, ids))


def _ages_of_stamps(now: float, stamps: Iterable[float]) -> Iterator[int]:
    """``max(0, int(now - stamp))`` of each stamp, with C-level maps."""
    return map(max, map(int, map(now.__sub__, stamps)), repeat(0))


def iter_revoked_ages(revoked_set: Any, ids: Sequence[str]) -> Iterator[int]:
    """:func:`revoked_ages`, one at a time (no list of them: the reply's runs are made of it);
    C-level maps when every id is held (the usual case: a reply's ids are the set's own)."""
    now = time.monotonic()
    data = revoked_set._data
    if all(map(data.__contains__, ids)):
        return _ages_of_stamps(now, map(itemgetter(0), map(data.__getitem__, ids)))
    return (max(0, int(now - data[i][0])) if i in data else 0 for i in ids)


def revoked_age_runs(revoked_set: Any, ids: Sequence[str]) -> list[float]:
    """The ages of ``ids`` as runs (:func:`mingle_plugins.wire.protocol.age_runs`).

    A reply's ids come oldest first (Celery 5.7 lists its set in stamp order), so the ages only
    go down: each run ends where the stamps pass ``now - age``, found by bisection, one step per
    run instead of one per id. Ids in another order, or not held, take one pass over them.
    """
    from .protocol import age_runs

    now = time.monotonic()
    data = revoked_set._data
    try:
        stamps = list(map(itemgetter(0), map(data.__getitem__, ids)))
    except KeyError:  # an id no longer held
        return age_runs(iter_revoked_ages(revoked_set, ids))
    if any(map(operator.gt, stamps, islice(stamps, 1, None))):  # not oldest first
        return age_runs(_ages_of_stamps(now, stamps))
    out: list[float] = []
    start, total = 0, len(stamps)
    while start < total:
        age = int(now - stamps[start])
        if age <= 0:  # this stamp and every later one: age 0
            out += (0, total - start)
            break
        end = bisect_right(stamps, now - age, start)
        # Float rounding at a boundary: the slow way rather than a run that is off by one id.
        off = end < total and int(now - stamps[end]) == age
        if end <= start or int(now - stamps[end - 1]) != age or off:
            return age_runs(_ages_of_stamps(now, stamps))
        out += (age, end - start)
        start = end
    return out


def hello_reply_without_ids(state: Any, from_node: str) -> dict[str, Any] | None:
    """Stock ``hello``'s reply with an empty ``revoked`` of the installed Celery's type: its
    log line, its purge and its clock, without the copy of every id (``list(revoked)``,
    sorted: 3 ms for 50,000 in a small process, ~20 ms in a busy worker, on Celery 5.7)
    that the digest round would throw away."""
    if from_node == state.hostname:
        return None
    _control_logger.info("sync with %s", from_node)
    worker_state.revoked.purge()
    return {"revoked": [] if sends_ids_only() else {}, "clock": state.app.clock.forward()}


def merge_aged(
    revoked_set: Any, ids: Sequence[str], ages: Mapping[str, float], *, unique: bool = False
) -> int:
    """Merge ids with their ages: each is stamped when it was revoked, not now.

    An id already held keeps the older of the two stamps (so a mingle never renews
    a lease), and an id older than the set's ``expires`` is not added. Returns how
    many ids were too old. ``unique``: the caller knows ``ids`` holds each id once
    (a reply's ids are), which spares a set of them.
    """
    now = time.monotonic()
    expires = revoked_set.expires
    data = revoked_set._data
    aligned = getattr(ages, "aligned", None)  # checks.AlignedAges: the wire's list, no lookup table
    given = aligned(ids) if aligned is not None else None
    ages_of: Sequence[float] = given if given is not None else list(map(ages.get, ids, repeat(0)))
    if expires and ages_of and max(ages_of) >= expires:
        kept = [(task_id, age) for task_id, age in zip(ids, ages_of, strict=True) if age < expires]
        too_old = len(ids) - len(kept)
        ids, ages_of = [task_id for task_id, _ in kept], [age for _, age in kept]
    else:
        too_old = 0
    held: Iterable[tuple[str, float]] = ()
    if unique:  # no set or dict of the ids beside them (a newcomer's peak memory)
        count = sum(map(data.__contains__, ids))
        if count == len(ids):  # all held already (a restarted neighbour's, a second neighbour's)
            held, ids, ages_of = zip(ids, ages_of, strict=True), [], []
        elif count:
            held = [(task_id, age) for task_id, age in zip(ids, ages_of, strict=True) if task_id in data]
            ages_of = [age for task_id, age in zip(ids, ages_of, strict=True) if task_id not in data]
            ids = [task_id for task_id in ids if task_id not in data]
    elif data.keys() & ids or len(set(ids)) != len(ids):  # the ids not held yet, each once
        fresh = dict(zip(ids, ages_of, strict=True))
        held = [(task_id, fresh.pop(task_id)) for task_id in data.keys() & fresh.keys()]
        ids, ages_of = list(fresh), list(fresh.values())
        del fresh
    # Restamped before the new ids are added: ``held`` may be a lazy pass over the reply.
    _restamp_older(revoked_set, held, now)
    _add_many(revoked_set, ids, map(now.__sub__, ages_of))
    return too_old


def _restamp_older(revoked_set: Any, held: Iterable[tuple[str, float]], now: float) -> None:
    """Give each held id (``(id, age)`` pairs) whose age says it was revoked earlier than its
    stamp that earlier stamp, as ``revoked_set.add(id, now=stamp)`` would, in one pass.

    ``add`` per id on a full set discards the old entry, pushes the new one and purges (the heap
    churns: ~0.1 s for 50,000 ids held); here the dict is updated once and the heap rebuilt once.
    """
    data = revoked_set._data
    # Usually none is older (the same revokes, stamped from the same ages): find out first.
    # Sorted by id: sequence numbers in a fixed order.
    older = sorted((task_id, now - age) for task_id, age in held if now - age < data[task_id][0])
    if not older:
        return
    sample = data[older[0][0]]
    sequence = getattr(revoked_set, "_seq", None)
    entries: dict[str, tuple[Any, ...]]
    if isinstance(sample, tuple) and len(sample) == 3 and sequence is not None:
        entries = {task_id: (stamp, next(sequence), task_id) for task_id, stamp in older}
    elif isinstance(sample, tuple) and len(sample) == 2:
        entries = {task_id: (stamp, task_id) for task_id, stamp in older}
    else:  # a LimitedSet of another shape: its own add, one id at a time
        for task_id, stamp in older:
            revoked_set.add(task_id, now=stamp)
        return
    data.update(entries)
    heap = revoked_set._heap
    heap[:] = data.values()  # the replaced entries are gone from the heap, not left behind
    heapq.heapify(heap)
    revoked_set.purge()


def _add_many(revoked_set: Any, ids: Sequence[str], stamps: Iterable[float]) -> None:
    """``revoked_set.add(id, now=stamp)`` for ids it does not hold, in one pass.

    One update of its dict and one ``heapify`` instead of a ``heappush`` per id
    (``benchmarks/floor.py``, 50,000 ids: 42 ms for the whole merge against 60 ms
    for ``LimitedSet.add`` per id, which sets no ages). The entry is ``(stamp,
    sequence, id)`` on Celery 5.7 and ``(stamp, id)`` before: taken from an
    entry of the set (or of a new one), with the loop as the fallback. The entries
    go straight into the heap (no list of them beside it: peak memory).
    """
    if not ids:
        return
    data, heap = revoked_set._data, revoked_set._heap
    sample = next(iter(data.values()), None)
    if sample is None:
        probe = type(revoked_set)()
        probe.add("probe")
        sample = next(iter(probe._data.values()))
    sequence = getattr(revoked_set, "_seq", None)
    start = len(heap)
    if isinstance(sample, tuple) and len(sample) == 3 and sequence is not None:
        heap.extend(zip(stamps, sequence, ids, strict=False))  # the count never ends
    elif isinstance(sample, tuple) and len(sample) == 2:
        heap.extend(zip(stamps, ids, strict=False))
    else:  # a LimitedSet of another shape: its own add, one id at a time
        for task_id, stamp in zip(ids, stamps, strict=False):
            revoked_set.add(task_id, now=stamp)
        return
    data.update(zip(ids, islice(heap, start, None), strict=True))
    heapq.heapify(heap)
    revoked_set.purge()


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


def revoked_subset_for_hello(state: Any, ids: Sequence[str]) -> Any:
    """The ``ids`` of this node's revoked set (those it still holds) in the installed Celery's
    hello format, as :func:`revoked_for_hello` sends the whole set."""
    data = state.revoked._data
    if sends_ids_only(state):
        return [task_id for task_id in ids if task_id in data]
    return {task_id: data[task_id] for task_id in ids if task_id in data}


def no_revoked_for_hello(state: Any) -> Any:
    """An empty revoked set in the installed Celery's hello format."""
    return [] if sends_ids_only(state) else {}


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
    ticket: str | None,
    timeout: float,
    producer: Any,
) -> None:
    """kombu's private ``Mailbox._publish`` of ``hello``: what Celery's broadcast sends
    (``ticket`` ``None``: no reply asked)."""
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
