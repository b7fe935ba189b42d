"""Collecting the replies to a hello over kombu: one reply queue, one consumer, one deadline.

Request: the stock pidbox ``hello`` control command, ``{"from_node": ...,
"revoked": ...}`` (plus the ``mingle`` extension of :mod:`mingle_plugins.protocol`).
Replies: ``{nodename: body}``, handed over as received; the step checks them
(:mod:`mingle_plugins.checks`).
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Mapping
from typing import Any

from kombu.entity import Queue
from kombu.messaging import Consumer, Producer
from kombu.utils.uuid import uuid

from . import compat, protocol
from .checks import Duplicates, Malformed, body_problem, decode_error_reason, shown
from .model import HelloOptions
from .presence import PresenceCount, SideChannel

__all__ = ["HelloCollector", "hello_exchange", "read_reply_message"]

logger = logging.getLogger("mingle_plugins")

#: The longest a single ``drain_events`` call blocks while collecting replies.
_SLICE = 0.25

#: How many hello timeouts a newcomer waits for the full list it asked one node for. That node
#: answered the digest round moments before: it is alive, and late only when it is busy (many
#: newcomers at once, a loaded host). Asking the next node then would make one more node busy
#: sending a full list, and the first one's would still come, to be thrown away.
FULL_LIST_PATIENCE = 5


def _publish_to_queue(
    mailbox: Any,
    chan: Any,
    arguments: dict[str, Any],
    destination: list[str] | None,
    ticket: str,
    queue: Queue,
    timeout: float,
) -> None:
    """``Mailbox._publish`` of ``hello`` with replies asked into ``queue`` by the default exchange."""
    queue(chan).declare()  # type: ignore[no-untyped-call]
    message = {
        "method": "hello",
        "arguments": arguments,
        "destination": destination,
        "pattern": None,
        "matcher": None,
        "ticket": ticket,
        "reply_to": {"exchange": "", "routing_key": queue.name},
    }
    producer: Any = Producer(chan, auto_declare=False)  # type: ignore[no-untyped-call]
    producer.publish(
        message,
        exchange=mailbox.exchange.name,
        declare=[mailbox.exchange],
        headers={"clock": mailbox.clock.forward(), "expires": time.time() + timeout},
        serializer=mailbox.serializer,
        retry=True,
    )


class HelloCollector:
    """One reply queue and one consumer for every hello of a mingle.

    The broadcast and the follow-up requests of the digest round share them:
    cancelling a consumer and deleting its reply queue between the two leaves
    kombu's Redis transport with a ``BRPOP`` in flight that delays the next
    reply by its 1 s timeout. A reply that comes in late for an earlier
    request of the same mingle is still added to that request's replies.
    """

    def __init__(self, app: Any, connection: Any, options: HelloOptions) -> None:
        self.app = app
        self.connection = connection
        self.options = options
        self.mailbox = app.control.mailbox(connection)
        self.chan = connection.default_channel
        if options.reply_queue is None:
            self.reply_queue = self.mailbox.reply_queue
        else:
            self.reply_queue = Queue(options.reply_queue, durable=False, auto_delete=True)  # type: ignore[no-untyped-call]
        #: ticket -> the replies of that request, by node name
        self._requests: dict[str, dict[str, Any]] = {}
        self._malformed = 0
        self._consumer: Any = None
        self._published = False
        self._saved_interval: Any = None
        #: passive declares (the presence count, named nodes' pidbox queues), on AMQP only
        self._side: SideChannel | None = None

    def __enter__(self) -> HelloCollector:
        transport = self.connection.transport
        self._saved_interval = getattr(transport, "polling_interval", None)
        if self.options.polling_interval is not None and self._saved_interval is not None:
            transport.polling_interval = self.options.polling_interval
        return self

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._side is not None:
                self._side.close()
            if self._consumer is not None:
                self._consumer.cancel()
            if self._published:
                # The publish declared the reply queue (kombu's ``_publish`` does, on a reply
                # ticket), also when no reply was awaited: delete it and its binding, or the
                # binding stays in the broker (on Redis, a member of ``_kombu.binding.reply.*``).
                self.chan.after_reply_message_received(self.reply_queue.name)
        finally:
            if self.options.polling_interval is not None and self._saved_interval is not None:
                self.connection.transport.polling_interval = self._saved_interval

    def _on_message(self, message: Any) -> None:
        """Every reply message, undecoded: read by :func:`read_reply_message`."""
        header = message.headers.get
        clock = header("clock")
        # kombu moves the clock on every reply header; do it only within bounds.
        if type(clock) is int and 0 <= clock <= self.options.max_clock:
            self.mailbox.clock.adjust(clock)
        expires = header("expires")
        if isinstance(expires, (int, float)) and time.time() > expires:
            return
        replies = self._requests.get(header("ticket"))
        if replies is None:
            return
        bodies = read_reply_message(message)
        if isinstance(bodies, Malformed):
            self._add_malformed(replies, bodies)
            return
        for node, reply in bodies.items():
            _add(replies, node, reply)

    def _add_malformed(self, replies: dict[str, Any], malformed: Malformed) -> None:
        self._malformed += 1
        replies[f"<malformed reply {self._malformed}>"] = malformed

    def _on_decode_error(self, message: Any, exc: Exception) -> None:
        # kombu calls this instead of ``_on_message`` for a message it marked as broken.
        replies = self._requests.get(message.headers.get("ticket"))
        if replies is not None:
            self._add_malformed(replies, Malformed(decode_error_reason(exc)))

    def _publish(
        self, arguments: dict[str, Any], destination: list[str] | None, ticket: str, timeout: float
    ) -> None:
        self._published = True
        if self.options.reply_queue is None:
            # The call Celery's broadcast makes, without its collector; our own producer
            # on ``chan``: the mailbox's pooled one would use another connection.
            compat.publish_hello(
                self.mailbox,
                self.chan,
                arguments,
                destination,
                ticket,
                timeout,
                Producer(self.chan, auto_declare=False),  # type: ignore[no-untyped-call]
            )
        else:
            _publish_to_queue(
                self.mailbox,
                self.chan,
                arguments,
                destination,
                ticket,
                self.reply_queue,
                timeout,
            )

    def _side_channel(self) -> SideChannel:
        if self._side is None:
            self._side = SideChannel(self.connection)
        return self._side

    def _listening(self, node: str) -> bool | None:
        """Whether ``node``'s pidbox queue has a consumer (``None``: the broker does not say)."""
        count = self._side_channel().consumers(self.mailbox.get_queue(node).name)
        return None if count is None else count > 0

    def _presence_count(self, own: str | None) -> PresenceCount | None:
        """The rule of :mod:`mingle_plugins.presence`, when the presence queue has consumers."""
        queue = self.options.presence_queue
        if queue is None or self.connection.transport.driver_type != "amqp":
            return None
        counted = self._side_channel().consumers(queue)
        if counted is None:
            logger.info("mingle: cannot count the neighbours in %s: the quiet window ends the hello", queue)
            return None
        logger.debug("mingle: %d neighbours counted in the presence queue %s", counted, queue)
        return PresenceCount(counted, self._listening, own) if counted else None

    def ask(
        self,
        arguments: Mapping[str, Any],
        destination: list[str] | None = None,
        timeout: float | None = None,
        again: bool = True,
    ) -> dict[str, Any]:
        """Send ``hello`` (to ``destination``, or to all) and collect its replies by node name.

        Stock Celery (kombu ``Mailbox._broadcast``) waits ``timeout`` after every
        reply. Here the collection ends as soon as the expected number of nodes
        replied (``destination``, ``options.expected_replies``, or on Redis the
        number of subscribers the hello reached when ``options.count_receivers``);
        on AMQP with ``options.presence_queue``, by the rule of
        :class:`~mingle_plugins.presence.PresenceCount`; without a count,
        ``options.quiet_window`` waits that long after each reply, with
        ``timeout`` as the bound of the whole collection. A body
        that cannot hold replies is kept as a :class:`Malformed` under ``"<malformed
        reply N>"``, so that it is rejected with its reason and counted; every
        reply under a node name that answered already is kept (:class:`Duplicates`).
        A broadcast that the count says was received and that nobody answered within
        ``timeout`` is sent once more (``again``), with twice the time.
        """
        options = self.options
        timeout = options.timeout if timeout is None else timeout
        ticket = uuid()
        replies: dict[str, Any] = {}
        self._requests[ticket] = replies
        own = arguments.get("from_node")
        expected = options.expected_replies
        rule = None
        if not destination and expected is None and options.count_receivers:
            rule = self._presence_count(own)  # before the hello: a neighbour counted later still answers
        with compat.count_fanout_receivers(self.connection, self.chan) as receivers:
            self._publish(dict(arguments), destination, ticket, timeout)
        if destination:
            expected = len(destination)
        elif expected is None and options.count_receivers and receivers:
            expected = sum(receivers)
            logger.debug("mingle: the hello reached %d subscribers", expected)
        if expected == 0:
            return replies
        if self._consumer is None:
            self._consumer = Consumer(  # type: ignore[no-untyped-call]
                self.chan, [self.reply_queue], accept=self.mailbox.accept, no_ack=True
            )
            self._consumer.on_message = self._on_message
            self._consumer.on_decode_error = self._on_decode_error
            self._consumer.consume()
        started = last_reply = time.monotonic()
        seen = 0
        phase = "wait"
        while True:
            if len(replies) > seen:
                seen, last_reply = len(replies), time.monotonic()
            # Time runs from the last *reply*: other frames (AMQP heartbeats) must not keep
            # the collection open, as they do in kombu's collector. With a known count only
            # the timeout ends the wait: a busy neighbour may answer later than the window.
            window = bool(replies) and options.quiet_window is not None
            if expected is not None:
                if len(replies.keys() - {own}) >= expected:
                    break
                window = False
            elif rule is not None:
                phase = rule.phase(replies)  # its checks may let replies in: counted above next time
                if phase == "done":
                    break
                window = window and phase == "window"
            if window:
                until = min(last_reply + options.quiet_window, started + timeout)  # type: ignore[operator]
            else:
                until = last_reply + timeout
            wait = until - time.monotonic()
            if wait <= 0:
                break
            try:
                # In slices: py-amqp's drain_events restarts its timeout on every heartbeat
                # frame, and nobody sends ours while we block (the server then drops us).
                self.connection.heartbeat_check()
                self.connection.drain_events(timeout=min(wait, _SLICE))
            except TimeoutError:  # socket.timeout: the loop checks the time
                continue
        logger.debug(
            "mingle: collected %d replies to %s", len(replies), shown(destination or "the broadcast")
        )
        if rule is not None:
            _log_presence(rule, phase, replies)
        heard = expected if expected is not None else (rule.counted if rule is not None else 0)
        heard -= own in replies  # this worker's own pidbox (a consumer restart) heard it too
        if again and not destination and heard and not replies.keys() - {own}:
            # The broker says nodes got the hello, and none answered in time: busy, as when many
            # workers start at once (each takes the hellos one after the other). Once more, with
            # twice the time, rather than start with nothing; a late reply to the first counts too.
            logger.info(
                "mingle: %d nodes received the hello, none answered within %gs: asking once more",
                heard,
                timeout,
            )
            late = replies
            replies = self.ask(arguments, None, timeout * 2, again=False)
            for node, body in late.items():
                replies.setdefault(node, body)
        return replies


def _log_presence(rule: PresenceCount, phase: str, replies: Mapping[str, Any]) -> None:
    if phase == "done":
        how = "the count, without the quiet window"
    elif phase == "window":
        how = f"the quiet window ({rule.unsure})"
    else:
        how = "the timeout"
    logger.debug(
        "mingle: presence: %d of %d counted neighbours and %d of %d named ones replied; ended by %s",
        len(rule.present),
        rule.counted,
        len(set(rule.awaited) & replies.keys()),
        len(rule.awaited),
        how,
    )


def read_reply_message(message: Any) -> dict[str, Any] | Malformed:
    """Decode one reply message (as kombu would, with the mailbox's accepted content types):
    ``{node name: reply body}``, or :class:`Malformed` with the real reason."""
    try:
        body = message.decode()
    except Exception as exc:
        return Malformed(decode_error_reason(exc))
    problem = body_problem(body)
    if problem is not None:
        return Malformed(problem)
    return {str(node): reply for node, reply in body.items()}


def _add(replies: dict[str, Any], node: str, reply: Any) -> None:
    """Keep every reply under a node name: the step picks the one that passes the checks."""
    if node not in replies:
        replies[node] = reply
    elif isinstance(replies[node], Duplicates):
        replies[node].append(reply)
    else:
        replies[node] = Duplicates([replies[node], reply])


def hello_exchange(consumer: Any, revoked: Any, options: HelloOptions) -> dict[str, Any]:
    """The whole hello: one broadcast, then, with ``options.digest``, the full
    lists from one node per digest this node does not have yet.
    """
    app, connection = consumer.app, consumer.connection
    arguments: dict[str, Any] = {"from_node": consumer.hostname, "revoked": revoked}
    # Neighbours running this package merge our ids with their ages and answer with theirs;
    # stock neighbours ignore the extension (their ``hello`` takes ``**kwargs``).
    ages = compat.revoked_ages(consumer.controller.state.revoked, protocol.reply_ids(revoked))
    ext: dict[str, Any] = {"v": protocol.VERSION, "ages": ages}
    if options.nonce:
        ext["nonce"] = options.nonce
        if options.signing_key:
            ext["sent_at"] = sent_at = time.time()
            ext["request_signature"] = protocol.sign_request(
                options.signing_key, options.nonce, consumer.hostname, revoked, sent_at, ages
            )
    if options.digest:
        ext["want"] = "digest"
    if options.presence_queue:
        ext["presence"] = True  # this worker will be counted: its neighbours need not name it
    arguments["mingle"] = ext
    with HelloCollector(app, connection, options) as collector:
        replies = collector.ask(arguments)
        if options.digest:
            _fetch_full_lists(consumer.hostname, collector, replies, revoked, ext)
    return replies


def _fetch_full_lists(
    hostname: str, collector: HelloCollector, replies: dict[str, Any], revoked: Any, ext: dict[str, Any]
) -> None:
    """The digest round: one full list per digest this node does not have, into ``replies``."""
    own = protocol.digest(protocol.reply_ids(revoked))
    groups: dict[str, list[str]] = {}
    for node, reply in replies.items():
        theirs = reply.get("mingle") if isinstance(reply, Mapping) else None
        if isinstance(theirs, Mapping) and theirs.get("digest") not in (None, own) and theirs.get("count"):
            groups.setdefault(str(theirs["digest"]), []).append(node)
    for digest, nodes in groups.items():
        # In a random order: when many newcomers start at once, the full lists are served by
        # all the nodes that share a digest, not all by the one that answers first.
        random.shuffle(nodes)
        for node in nodes:  # the first node of a digest that answers in full
            # No ids of ours this time (the broadcast carried them), but ask for their ages.
            ask = {
                "from_node": hostname,
                "revoked": None,
                "mingle": {**ext, "ages": [], "want": "full", "packed": True},
            }
            full = collector.ask(
                ask, destination=[node], timeout=collector.options.timeout * FULL_LIST_PATIENCE
            )
            if isinstance(full.get(node), Mapping):
                replies[node] = full[node]
                logger.debug(
                    "mingle: full list of digest %.12s from %s (%d nodes share it)",
                    digest,
                    shown(node),
                    len(nodes),
                )
                break
        else:
            logger.warning("mingle: no node of digest %.12s sent its full list", digest)
