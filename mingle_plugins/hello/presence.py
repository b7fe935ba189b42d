"""Presence on AMQP: a queue whose consumer count is the number of neighbours running this package.

On Redis a newcomer knows how many workers its hello reached (the answer of
``PUBLISH``); an AMQP fanout publish says nothing, so without a count the
fast profile ends the collection a quiet window after the last reply. With
``mingle_presence`` every worker of this package on AMQP consumes, once its
own mingle is done and its remote control listens, the queue
``<control_exchange>.mingle.presence.v2`` (see :func:`presence_queue`: durable
with auto-delete, ``x-expires`` and an explicit ``x-queue-type: classic``, which
RabbitMQ 4.3 accepts; it goes with the last worker; nothing is ever sent to it).
A newcomer reads the queue's consumer count P with a passive declare on a
short-lived channel of its own, before the hello. The collection rule
(:class:`PresenceCount`):

1. wait until P replies flagged ``mingle.present_v2`` came (the timeout after the
   last reply bounds the wait, as with the Redis count: a busy neighbour is
   waited for);
2. the counted neighbours name the nodes they know that are not counted
   (``mingle.uncounted``: stock workers and workers of this package without
   presence, seen by their hello request or their reply; see
   :class:`PresenceState` for how they forget the ones that left); each named
   node that has not replied yet and whose pidbox queue has a consumer (a
   passive declare) is awaited the same way;
3. then the hello ends at once, unless a reply came from a node neither counted
   nor named, a name could not be checked, a list was cut or more than
   :data:`MAX_CHECKS` names are to be checked: then the quiet window runs after
   the last reply, as without presence.

P = 0 (no queue: the broker answers 404), or a count the broker will not give
(permissions, a channel or connection error): the quiet window, as before.

Rolling upgrades: 0.1 (up to a14d253) used ``<control_exchange>.mingle.presence``,
non-durable, and the request and reply keys ``presence`` / ``present``. This
version uses another queue and other keys (:data:`REQUEST_KEY`,
:data:`PRESENT_KEY`), so the two never meet on one queue (redeclaring a queue
with other flags is ``406 PRECONDITION_FAILED``): each version counts its own
kind, and sees the other as workers without presence, which the counted ones
name and newcomers await by their pidbox queue (or the quiet window).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Literal

from celery import bootsteps
from kombu.common import ignore_errors
from kombu.entity import Queue
from kombu.messaging import Consumer

from ..wire.compat import CONTROL_STEP
from .checks import InvalidReply, check_nodename, shown

__all__ = [
    "LEGACY_SUFFIX",
    "MAX_CHECKS",
    "MAX_NAMED",
    "PRESENT_KEY",
    "REQUEST_KEY",
    "REVERIFY_AFTER",
    "VERIFY_AFTER",
    "PresenceCount",
    "PresenceState",
    "PresenceStep",
    "SideChannel",
    "count_consumers",
    "pidbox_checks",
    "declare_apart",
    "presence_queue",
    "queue_exists",
    "queue_name",
]

logger = logging.getLogger("mingle_plugins")

#: The most node names a worker keeps (and sends) of the neighbours that are not counted.
MAX_NAMED = 32
#: The most named nodes a newcomer checks in one hello (a node that is gone costs a passive
#: declare, ~1 ms on loopback); beyond, or when a list was cut, it checks none and the quiet
#: window applies.
MAX_CHECKS = 32
#: A node named by its hello request is checked when this worker answers a hello this long
#: after (a stock worker listens ~1 s after its hello); one known to listen, after REVERIFY_AFTER
#: (each check of a queue that is gone, or another connection's exclusive one, is an error line
#: in RabbitMQ's log).
VERIFY_AFTER = 5.0
REVERIFY_AFTER = 3600.0
#: The presence queue is deleted this long after it was last used without a consumer
#: (``x-expires``): a guard for a worker that declared it and died before consuming.
QUEUE_EXPIRES = 60.0
#: The queue name's suffix after the control exchange (0.1 used ``.mingle.presence``, non-durable:
#: a name of its own, so that the two versions never redeclare one queue with other flags).
SUFFIX = ".mingle.presence.v2"
LEGACY_SUFFIX = ".mingle.presence"
#: The hello request's ``mingle`` key saying that its sender will be counted in this queue.
REQUEST_KEY = "presence_v2"
#: The reply's ``mingle`` key of a worker counted in it now (0.1's keys are ``presence``, ``present``).
PRESENT_KEY = "present_v2"

Phase = Literal["wait", "window", "done"]


def queue_name(app: Any) -> str:
    """The presence queue of the app's control exchange."""
    return f"{app.conf.control_exchange}{SUFFIX}"


def presence_queue(name: str, no_declare: bool = False) -> Queue:
    """The presence queue: deleted with its last consumer; no message is ever sent to it.

    Durable with auto-delete, not transient (RabbitMQ 4.3 refuses a transient
    non-exclusive queue), and shared by every worker, so not exclusive;
    ``x-expires`` deletes it 60 s after it was last used without a consumer (a
    worker that declared it and died before consuming), and an explicit
    ``x-queue-type: classic`` keeps it a classic queue on a vhost whose default
    queue type is quorum (quorum queues refuse auto-delete). Every worker
    declares it with these same arguments (other ones would be refused, 406).
    """
    return Queue(  # type: ignore[no-untyped-call]
        name,
        durable=True,
        auto_delete=True,
        expires=QUEUE_EXPIRES,
        queue_arguments={"x-queue-type": "classic"},
        no_declare=no_declare,
    )


def declare_apart(connection: Any, queue: Queue) -> None:
    """Declare ``queue`` on a connection of its own, closed after: whatever the broker refuses
    (a policy, a permission, a limit; RabbitMQ answers some refusals by closing the
    *connection*, 541) costs that connection, never the worker's consumer connection."""
    with connection.clone(heartbeat=0) as conn:
        conn.ensure_connection(max_retries=1)
        channel = conn.channel()
        try:
            queue(channel).declare()  # type: ignore[no-untyped-call]
        finally:
            ignore_errors(conn, channel.close)  # type: ignore[no-untyped-call]


class SideChannel:
    """One short-lived channel of the connection, for passive declares (never the consumer's own).

    A passive declare of a missing queue makes the broker close the channel
    (404); py-amqp reopens it, and a channel that did not reopen is replaced.
    """

    def __init__(self, connection: Any) -> None:
        self.connection = connection
        self._channel: Any = None

    def consumers(self, queue: str) -> int | None:
        """The number of consumers of ``queue``: 0 when it does not exist (404), 1 when it is
        another connection's exclusive queue (405: Celery 5.5+ declares pidbox queues
        exclusive; such a queue lives as long as its owner's connection), ``None`` when the
        broker does not say (refused, or a channel or connection error; logged at DEBUG)."""
        try:
            if self._channel is None or not getattr(self._channel, "is_open", True):
                self._channel = self.connection.channel()
            _, _, count = self._channel.queue_declare(queue=queue, passive=True)
            return int(count)
        except Exception as exc:
            code = getattr(exc, "reply_code", None)
            if code in (404, 405):
                return 0 if code == 404 else 1
            logger.debug("mingle: cannot count the consumers of %s: %r", shown(queue), exc)
            self.close()
            return None

    def close(self) -> None:
        channel, self._channel = self._channel, None
        if channel is not None:
            try:
                channel.close()
            except Exception as exc:  # a closed connection: nothing to release
                logger.debug("mingle: closing a side channel: %r", exc)


def count_consumers(connection: Any, queue: str) -> int | None:
    """:meth:`SideChannel.consumers` on a channel of its own, closed after."""
    side = SideChannel(connection)
    try:
        return side.consumers(queue)
    finally:
        side.close()


def queue_exists(connection: Any, queue: str) -> bool:
    """Whether ``queue`` exists, by a passive declare on a channel of its own (``False`` also
    when the broker does not say: the caller declares it then, apart)."""
    channel = None
    try:
        channel = connection.channel()
        channel.queue_declare(queue=queue, passive=True)
        return True
    except Exception as exc:  # 404: missing; anything else: declared apart, which says more
        logger.debug("mingle: passive declare of %s: %r", shown(queue), exc)
        return False
    finally:
        if channel is not None:
            ignore_errors(connection, channel.close)  # type: ignore[no-untyped-call]


@contextmanager
def pidbox_checks(connection: Any, mailbox: Any) -> Iterator[Callable[[str], bool | None]]:
    """``listening(node)``: whether that node's pidbox queue has a consumer (``None``: the broker
    does not say), by passive declares on one side channel, closed after."""
    side = SideChannel(connection)

    def listening(node: str) -> bool | None:
        count = side.consumers(mailbox.get_queue(node).name)
        return None if count is None else count > 0

    try:
        yield listening
    finally:
        side.close()


def _flags(body: Any) -> tuple[bool, list[str], bool]:
    """``(present, uncounted names, list cut)`` of one reply body (a non-mapping: not present)."""
    ext = body.get("mingle") if isinstance(body, Mapping) else None
    if not isinstance(ext, Mapping) or ext.get(PRESENT_KEY) is not True:
        return False, [], False
    names = ext.get("uncounted")
    named = [n for n in names if isinstance(n, str)] if isinstance(names, list) else []
    return True, named[:MAX_NAMED], ext.get("uncounted_more") is True or len(named) > MAX_NAMED


class PresenceCount:
    """The collection rule of one broadcast, with ``counted`` neighbours in the presence queue.

    ``listening(node)`` says whether a node's pidbox queue has a consumer
    (``None``: cannot say); it is asked once per named node, and may deliver
    replies into the collection while it runs.
    """

    def __init__(self, counted: int, listening: Callable[[str], bool | None], own: str | None = None) -> None:
        self.counted = counted
        self.own = own
        self._listening = listening
        #: node name -> listening, for every named node checked
        self.checked: dict[str, bool | None] = {}
        self.present: set[str] = set()
        self.awaited: list[str] = []
        self.unsure = ""

    def _check(self, node: str) -> bool | None:
        if node not in self.checked:
            alive = self._listening(node)
            self.checked[node] = alive
            state = "cannot be checked" if alive is None else "listens" if alive else "does not listen"
            logger.debug("mingle: %s is not counted; its pidbox %s", shown(node), state)
        return self.checked[node]

    def phase(self, replies: Mapping[str, Any]) -> Phase:
        """``"wait"`` (idle timeout after the last reply), ``"window"`` (quiet window after it)
        or ``"done"``; judged again when a check let more replies in."""
        while True:
            seen = len(replies)
            phase = self._phase(list(replies.items()))
            if len(replies) == seen:
                return phase

    def _phase(self, items: list[tuple[str, Any]]) -> Phase:
        present: set[str] = set()
        named: dict[str, None] = {}
        cut = False
        for node, body in items:
            flagged, names, more = _flags(body)
            if flagged and node != self.own:
                present.add(node)
                named.update(dict.fromkeys(names))
                cut = cut or more
        self.present = present
        replied = {node for node, _ in items}
        others = [node for node in named if node not in present and node != self.own]
        unchecked = [node for node in others if node not in replied and node not in self.checked]
        unsure = ""
        if cut:
            unsure = "a counted neighbour's list of uncounted nodes was cut"
        elif len(self.checked) + len(unchecked) > MAX_CHECKS:
            unsure = f"more than {MAX_CHECKS} uncounted nodes named"
        awaited: list[str] = []
        for node in others:
            if node in replied:  # no need to ask whether it listens
                awaited.append(node)
                continue
            if unsure and node not in self.checked:
                continue  # the quiet window will cover it: no check that costs as much
            alive = self._check(node)
            if alive is None:
                unsure = unsure or f"{shown(node)} could not be checked"
            elif alive:
                awaited.append(node)
        self.awaited = awaited
        if len(present) < self.counted or not replied.issuperset(awaited):
            return "wait"
        unknown = replied - present - set(awaited) - {self.own}
        if unknown:
            unsure = unsure or f"{shown(sorted(unknown)[0])} replied, neither counted nor named"
        self.unsure = unsure
        return "window" if unsure else "done"


class PresenceState:
    """This worker's presence: the consumer while it is counted, and the uncounted nodes it saw.

    ``queue`` is ``None`` when the worker does not take part (no
    ``mingle_presence``, not AMQP, or mingle off): then it neither joins nor
    keeps names.

    A node that replied to this worker's hello is known to listen. A node named
    by its hello request is not yet (a stock worker starts listening about 1 s
    after its hello, once its own mingle is done): right after this worker
    answers a hello :data:`VERIFY_AFTER` seconds later or more, it asks once
    whether that node's pidbox queue has a consumer, and forgets it if not (a
    worker that stopped soon after it started); a node known to listen is asked
    again after :data:`REVERIFY_AFTER`. So the names newcomers have to check are
    mostly the ones that still listen.
    """

    def __init__(self, queue: str | None = None) -> None:
        self.queue = queue
        #: the nodes not counted that this worker saw, oldest first, with when they were last
        #: known to be there (``time.monotonic()``)
        self.uncounted: dict[str, float] = {}
        #: those of them named by a hello request, not yet seen listening
        self.unverified: set[str] = set()
        #: whether names were dropped to keep :data:`MAX_NAMED`
        self.cut = False
        self._verifying = False
        self._consumer: Any = None
        self._channel: Any = None

    @property
    def enabled(self) -> bool:
        return self.queue is not None

    @property
    def present(self) -> bool:
        """Whether this worker consumes the presence queue now (newcomers count it)."""
        return self._consumer is not None

    # -- the names of the neighbours that are not counted ------------------------------

    def _saw(self, node: Any, counted: bool, listens: bool) -> None:
        try:
            name = check_nodename(node)
        except InvalidReply:
            return
        self.uncounted.pop(name, None)
        self.unverified.discard(name)
        if counted:
            return
        self.uncounted[name] = time.monotonic()
        if not listens:
            self.unverified.add(name)
        while len(self.uncounted) > MAX_NAMED:
            oldest = next(iter(self.uncounted))
            del self.uncounted[oldest]
            self.unverified.discard(oldest)
            self.cut = True

    def saw_request(self, node: Any, ext: Any) -> None:
        """A hello request: its sender is counted once it said so (:data:`REQUEST_KEY`)."""
        if self.enabled:
            self._saw(node, isinstance(ext, Mapping) and ext.get(REQUEST_KEY) is True, listens=False)

    def saw_replies(self, replies: Mapping[str, Any], own: str) -> None:
        """The replies to this worker's hello: the nodes that did not say they are counted."""
        if self.enabled:
            for node, body in replies.items():
                if node != own and body:
                    self._saw(node, _flags(body)[0], listens=True)

    def _due(self, now: float) -> list[str]:
        return [
            name
            for name, since in self.uncounted.items()
            if now - since >= (VERIFY_AFTER if name in self.unverified else REVERIFY_AFTER)
        ]

    def verify(self, listening: Callable[[str], bool | None], now: float | None = None) -> None:
        """Ask whether the names that are due still listen (see the class); forget those that do not."""
        now = time.monotonic() if now is None else now
        for name in self._due(now):
            alive = listening(name)
            self.unverified.discard(name)
            if alive is False:
                del self.uncounted[name]
                logger.debug("mingle: %s no longer listens: not named any more", shown(name))
            else:  # it listens, or the broker would not say: kept
                self.uncounted[name] = now

    def reply_fields(self) -> dict[str, Any]:
        """What this worker adds to the ``mingle`` block of its replies while it is counted."""
        if not self.present:
            return {}
        fields: dict[str, Any] = {PRESENT_KEY: True}
        if self.uncounted:
            fields["uncounted"] = list(self.uncounted)
        if self.cut:
            fields["uncounted_more"] = True
        return fields

    def answer_fields(self, consumer: Any) -> dict[str, Any]:
        """:meth:`reply_fields` for a reply of this worker's ``hello`` handler. The names due are
        checked after the reply is sent (the newcomer checks the ones it gets itself), in the
        worker's event loop on the consumer's connection; without an event loop (green pools,
        whose pidbox runs in a thread of its own) they are not checked."""
        fields = self.reply_fields()
        hub = getattr(consumer, "hub", None)
        if (
            fields
            and hub is not None
            and not self._verifying
            and getattr(consumer, "connection", None) is not None
            and self._due(time.monotonic())
        ):
            self._verifying = True
            hub.call_soon(self._verify_on, consumer)
        return fields

    def _verify_on(self, consumer: Any) -> None:
        self._verifying = False
        try:
            with pidbox_checks(consumer.connection, consumer.app.control.mailbox) as listening:
                self.verify(listening)
        except Exception as exc:  # never in the way of the worker
            logger.debug("mingle: checking the uncounted nodes failed: %r", exc)

    # -- the consumer ------------------------------------------------------------------

    def join(self, connection: Any) -> bool:
        """Consume the presence queue on a channel of its own; never raises (logged at INFO).

        The queue is declared, when a passive declare says it is missing, on a
        connection of its own (:func:`declare_apart`); the consumer connection
        only consumes it, on a channel of its own, without declaring: a refusal
        there closes that channel, never the consumer connection.
        """
        if self.queue is None or self.present:
            return self.present
        if connection.transport.driver_type != "amqp":
            return False
        channel = None
        try:
            if not queue_exists(connection, self.queue):
                declare_apart(connection, presence_queue(self.queue))
            channel = connection.channel()
            consumer = Consumer(  # type: ignore[no-untyped-call]
                channel, [presence_queue(self.queue, no_declare=True)], no_ack=True, on_message=_ignore
            )
            consumer.consume()  # type: ignore[no-untyped-call]
        except Exception as exc:
            logger.info(
                "mingle: cannot join the presence queue %s (%r): newcomers will not count this worker, "
                "the worker runs on",
                shown(self.queue),
                exc,
            )
            if channel is not None:
                ignore_errors(connection, channel.close)  # type: ignore[no-untyped-call]
            return False
        self._channel, self._consumer = channel, consumer
        logger.debug("mingle: counted in the presence queue %s", shown(self.queue))
        return True

    def leave(self, connection: Any) -> None:
        """Stop consuming (the broker deletes the queue with its last consumer); never raises."""
        consumer, channel = self._consumer, self._channel
        self._consumer = self._channel = None
        if consumer is not None:
            ignore_errors(connection, consumer.cancel)  # type: ignore[no-untyped-call]
        if channel is not None:
            ignore_errors(connection, channel.close)  # type: ignore[no-untyped-call]
            logger.debug("mingle: left the presence queue %s", shown(self.queue))


def _ignore(message: Any) -> None:
    """Nothing is sent to the presence queue; a message that is anyway is dropped (no ack needed)."""


def find_state(steps: Iterable[Any]) -> PresenceState | None:
    """The :class:`PresenceState` of the Mingle step among a consumer blueprint's steps."""
    for step in steps:
        state = getattr(step, "presence", None)
        if isinstance(state, PresenceState):
            return state
    return None


class PresenceStep(bootsteps.StartStopStep):  # type: ignore[misc]
    """Consumer step: this worker is counted in the presence queue while its consumer runs.

    It starts after remote control (so a counted worker already listens for
    hellos), hence after this worker's own mingle (a newcomer never counts
    itself); it stops with the consumer, and starts again after a connection
    restart, once the new mingle is done. Included when the Mingle step has
    presence (``mingle_presence`` on AMQP) and remote control is on.
    """

    label = "Mingle presence"
    requires = ("celery.worker.consumer.control:Control",)

    def __init__(self, c: Any, **kwargs: Any) -> None:
        self.state: PresenceState | None = None
        super().__init__(c, **kwargs)

    def include_if(self, c: Any) -> bool:
        steps = c.blueprint.steps
        self.state = find_state(steps.values())
        control = steps.get(CONTROL_STEP)
        return self.state is not None and self.state.enabled and control in (c.steps or ())

    def create(self, c: Any) -> None:
        return None

    def start(self, c: Any) -> None:
        if self.state is not None:
            self.state.join(c.connection)

    def stop(self, c: Any) -> None:
        if self.state is not None:
            self.state.leave(c.connection)

    shutdown = terminate = stop
