"""Collecting the replies to a hello over kombu: one reply queue, one consumer, one deadline.

Request: the stock pidbox ``hello`` control command, ``{"from_node": ...,
"revoked": ...}`` (plus the ``mingle`` extension of :mod:`mingle_plugins.wire.protocol`).
Replies: ``{nodename: body}``, handed over as received; the step checks them
(:mod:`mingle_plugins.hello.checks`).
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

from ..model import HelloOptions, Verdicts
from ..wire import compat, protocol, reconcile
from ..wire.buckets import BucketTree
from .checks import Malformed, body_problem, decode_error_reason, malformed_label, shown
from .presence import PresenceCount, SideChannel
from .push import plan_push

__all__ = ["HelloCollector", "hello_exchange", "read_reply_message"]

logger = logging.getLogger("mingle_plugins")

#: The longest a single ``drain_events`` call blocks while collecting replies.
_SLICE = 0.25

#: The full lists of a digest round are awaited one hello timeout after the last progress (a
#: list that arrived verified, a request sent), and at most this many hello timeouts in all,
#: however many digests were claimed: a claim that is never honoured costs one timeout in all.
FULL_LIST_PATIENCE = 5

#: When a count of subscribers ends a collection: how long the replies already on their way
#: are taken first, so that more names than subscribers (a node answering under several
#: names) is seen and the count not trusted.
READY_GRACE = 0.005


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

    def __init__(
        self, app: Any, connection: Any, options: HelloOptions, verdicts: Verdicts | None = None
    ) -> None:
        self.app = app
        #: The round's verdicts, asked as each body arrives; ``None``: every first body is kept.
        self.verdicts = verdicts
        self.connection = connection
        self.options = options
        # Exclusive, also on kombu < 5.6 (RabbitMQ 4.3 refuses a transient shared queue).
        self.mailbox = compat.exclusive_replies(app.control.mailbox(connection))
        self.chan = connection.default_channel
        if options.reply_queue is None:
            self.reply_queue = self.mailbox.reply_queue
        else:
            self.reply_queue = Queue(options.reply_queue, exclusive=True, auto_delete=True)  # type: ignore[no-untyped-call]
        #: ticket -> the kept replies of that request, by node name
        self._requests: dict[str, dict[str, Any]] = {}
        #: ticket -> how many reply messages came for it (kept, rejected or malformed): answers
        self._answers: dict[str, int] = {}
        #: tickets of full-list requests, whose replies are checked against their digest
        self._full_lists: set[str] = set()
        #: nodes whose full list arrived and was not the one promised
        self.failed_lists: set[str] = set()
        #: the verified full lists of the digest round, by node name
        self.lists: dict[str, Any] = {}
        self._malformed = 0
        #: this worker's node name (a reply under it comes from another process)
        self.own: str | None = None
        self._consumer: Any = None
        self._published = False
        self._saved_interval: Any = None
        #: passive declares (the presence count, named nodes' pidbox queues), on AMQP only
        self._side: SideChannel | None = None
        #: how many subscribers the broker says received the last broadcast (``None``: it does not say)
        self.reached: int | None = None

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
        ticket = header("ticket")
        replies = self._requests.get(ticket)
        if replies is None:
            return
        self._answers[ticket] = self._answers.get(ticket, 0) + 1
        bodies = read_reply_message(message)
        if isinstance(bodies, Malformed):
            self._add_malformed(replies, bodies)
            return
        if len(bodies) > 1:  # a worker's reply names itself only (kombu ``_publish_reply``)
            self._add_malformed(
                replies,
                Malformed(f"a reply message names {len(bodies)} nodes; a worker's names itself only"),
            )
            return
        for node, body in bodies.items():
            if node == self.own and protocol.same_name_of(body) is not None:
                replies.setdefault(node, body)  # another worker under this name: not a neighbour
                continue
            self._add(replies, node, body, ticket in self._full_lists)

    def _add(self, replies: dict[str, Any], node: str, body: Any, full_list: bool) -> None:
        """Keep ``body`` when its verdict keeps it (the first one under its name, without verdicts)."""
        verdicts = self.verdicts
        if verdicts is None:
            replies.setdefault(node, body)
        elif full_list:
            if verdicts.judge_full(node, body) is not None:
                replies[node] = body
            else:
                self.failed_lists.add(node)
        elif verdicts.judge(node, body) is not None:
            replies.setdefault(node, body)

    def _add_malformed(self, replies: dict[str, Any], malformed: Malformed) -> None:
        self._malformed += 1
        name = malformed_label(self._malformed)
        if self.verdicts is None:
            replies[name] = malformed
        else:  # rejected with its reason, counted; it counts towards nothing
            self.verdicts.judge(name, malformed)

    def _on_decode_error(self, message: Any, exc: Exception) -> None:
        # kombu calls this instead of ``_on_message`` for a message it marked as broken.
        ticket = message.headers.get("ticket")
        replies = self._requests.get(ticket)
        if replies is not None:
            self._answers[ticket] = self._answers.get(ticket, 0) + 1
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

    def push(self, arguments: Mapping[str, Any], destination: list[str] | None, timeout: float) -> None:
        """Send ``hello`` with ``arguments`` to ``destination`` (or to all), no reply asked."""
        compat.publish_hello(
            self.mailbox,
            self.chan,
            arguments,
            destination,
            None,
            timeout,
            Producer(self.chan, auto_declare=False),  # type: ignore[no-untyped-call]
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
        """The rule of :mod:`mingle_plugins.hello.presence`, when the presence queue has consumers."""
        queue = self.options.presence_queue
        if queue is None or self.connection.transport.driver_type != "amqp":
            return None
        counted = self._side_channel().consumers(queue)
        if counted is None:
            logger.info("mingle: cannot count the neighbours in %s: the quiet window ends the hello", queue)
            return None
        logger.debug("mingle: %d neighbours counted in the presence queue %s", counted, queue)
        return PresenceCount(counted, self._listening, own) if counted else None

    def _consume(self) -> None:
        if self._consumer is None:
            self._consumer = Consumer(  # type: ignore[no-untyped-call]
                self.chan, [self.reply_queue], accept=self.mailbox.accept, no_ack=True
            )
            self._consumer.on_message = self._on_message
            self._consumer.on_decode_error = self._on_decode_error
            self._consumer.consume()

    def _drain(self, wait: float) -> None:
        try:
            # In slices: py-amqp's drain_events restarts its timeout on every heartbeat
            # frame, and nobody sends ours while we block (the server then drops us).
            self.connection.heartbeat_check()
            self.connection.drain_events(timeout=min(wait, _SLICE))
        except TimeoutError:  # socket.timeout: the caller checks the time
            pass

    def _drain_ready(self, grace: float = READY_GRACE) -> None:
        """Take the reply messages that are already here (``grace`` seconds at most)."""
        until = time.monotonic() + grace
        while (left := until - time.monotonic()) > 0:
            self._drain(left)

    def fetch_full_lists(
        self,
        arguments: Mapping[str, Any],
        groups: Mapping[str, list[str]],
        again: Mapping[str, Any] | None = None,
    ) -> dict[str, str]:
        """The digest round: for each digest of ``groups`` (``{digest: kept nodes that sent it}``),
        the full list of one of its nodes, checked against the digest by the verdicts.

        One node per digest is asked at once, every digest in one request. A list
        under an asked node's name that is not the promised one (a forger may answer
        first, under that name) makes the next node of the digest asked too, and
        the asked node's own list is still awaited. The lists are awaited one hello
        timeout after the last progress, at most ``FULL_LIST_PATIENCE`` timeouts in
        all. Returns ``{digest: node}`` for the digests whose list arrived; the
        bodies are in :attr:`lists`. ``again``: the request of every node asked after a
        failed list (a full list where ``arguments`` asked for a reconciled one).
        """
        timeout = self.options.timeout
        waiting = {digest: list(nodes) for digest, nodes in groups.items()}
        asked: dict[str, str] = {}  # digest -> the node asked last
        got: dict[str, str] = {}
        retried: set[str] = set()
        started = last_progress = time.monotonic()
        while True:
            to_ask = []
            for digest, nodes in waiting.items():
                if digest not in asked and nodes:
                    asked[digest] = nodes.pop(0)
                    to_ask.append(asked[digest])
            if to_ask:
                ticket = uuid()
                self._requests[ticket] = self.lists
                self._full_lists.add(ticket)
                request = again if again is not None and self.failed_lists else arguments
                self._publish(dict(request), to_ask, ticket, timeout * FULL_LIST_PATIENCE)
                self._consume()
                last_progress = time.monotonic()
            for digest in list(waiting):
                arrived = next((n for n in groups[digest] if n in self.lists), None)
                if arrived is not None:  # also a late list of a node asked before
                    got[digest] = arrived
                    del waiting[digest]
                    asked.pop(digest, None)
                    last_progress = time.monotonic()
                elif asked.get(digest) in self.failed_lists and waiting[digest]:
                    del asked[digest]  # the next node of the digest is asked too
                elif again is not None and asked.get(digest) in self.failed_lists - retried:
                    # A reconciled list that did not check out, and no other node: its full list.
                    retried.add(asked[digest])
                    waiting[digest].append(asked.pop(digest))
            if not waiting:
                return got
            if not any(d not in asked and waiting[d] for d in waiting):
                until = min(last_progress + timeout, started + timeout * FULL_LIST_PATIENCE)
                wait = until - time.monotonic()
                if wait <= 0:
                    logger.warning(
                        "mingle: %d full lists did not come in %.1fs (from %s): their ids are not merged",
                        len(waiting),
                        time.monotonic() - started,
                        ", ".join(shown(n) for n in asked.values())[:200],
                    )
                    return got
                self._drain(wait)

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
        :class:`~mingle_plugins.hello.presence.PresenceCount`; without a count,
        ``options.quiet_window`` waits that long after each reply, with
        ``timeout`` as the bound of the whole collection. Each body is judged
        as it arrives (``verdicts``): only kept bodies are returned, and only they
        count; a body that cannot hold replies, or a message naming more than one
        node, is rejected with its reason and counted. A broadcast that the count
        says was received and that nobody answered within ``timeout`` is sent
        once more (``again``), with twice the time.
        """
        options = self.options
        timeout = options.timeout if timeout is None else timeout
        ticket = uuid()
        replies: dict[str, Any] = {}
        self._requests[ticket] = replies
        own = arguments.get("from_node")
        self.own = own if isinstance(own, str) else None
        expected = options.expected_replies
        rule = None
        if not destination and expected is None and options.count_receivers:
            rule = self._presence_count(own)  # before the hello: a neighbour counted later still answers
        with compat.count_fanout_receivers(self.connection, self.chan) as receivers:
            self._publish(dict(arguments), destination, ticket, timeout)
        reached = sum(receivers) if receivers and not destination else None
        if not destination:
            self.reached = reached
        if destination:
            expected = len(destination)
        elif expected is None and options.count_receivers and receivers:
            expected = sum(receivers)
            logger.debug("mingle: the hello reached %d subscribers", expected)
        if expected == 0:
            return replies
        # Never deaf: the nodes the broker says received the broadcast are waited for past the
        # timeout while they have not all answered, up to answer_wait after the hello, never longer.
        answer_wait = options.answer_wait if reached else None
        waiting_logged = False
        self._consume()
        started = last_reply = time.monotonic()
        seen = 0
        phase = "wait"
        counted = expected is not None and not destination and options.expected_replies is None
        overrun: float | None = None  # the count proved wrong: the collection ends at this time
        while True:
            if len(replies) > seen:
                seen, last_reply = len(replies), time.monotonic()
            # Time runs from the last *reply*: other frames (AMQP heartbeats) must not keep
            # the collection open, as they do in kombu's collector. With a known count only
            # the timeout ends the wait: a busy neighbour may answer later than the window.
            window = bool(replies) and options.quiet_window is not None
            if overrun is not None:
                window = False
            elif expected is not None:
                # A reply under this worker's own name (another worker under it) was counted too.
                if len(replies.keys() - {own}) >= expected - (own in replies):
                    if counted:
                        counted = False
                        self._drain_ready()  # the replies already here: more than the count?
                        heard_names = len(replies.keys() - {own})
                        if heard_names > expected:
                            # One subscriber answers under several names (or a name was forged):
                            # the count cannot end the collection; one hello timeout, in all.
                            logger.warning(
                                "mingle: %d names answered a hello that reached %d subscribers: "
                                "waiting %gs for every reply rather than ending at the count",
                                heard_names,
                                expected,
                                timeout,
                            )
                            overrun = time.monotonic() + timeout
                            continue
                    break
                window = False
            elif rule is not None:
                phase = rule.phase(replies)  # its checks may let replies in: counted above next time
                if phase == "done":
                    break
                window = window and phase == "window"
            if overrun is not None:
                until = overrun
            elif window:
                until = min(last_reply + options.quiet_window, started + timeout)  # type: ignore[operator]
            else:
                until = last_reply + timeout
            if answer_wait is not None and overrun is None and reached is not None:
                answers = max(len(replies), self._answers.get(ticket, 0))
                if answers < reached and until < started + answer_wait:
                    if not waiting_logged and time.monotonic() >= until:
                        waiting_logged = True
                        logger.info(
                            "mingle: %d of the %d nodes that received the hello answered within %gs: "
                            "waiting up to %gs after the hello for the others (mingle_answer_wait)",
                            answers,
                            reached,
                            timeout,
                            answer_wait,
                        )
                    until = started + answer_wait
            wait = until - time.monotonic()
            if wait <= 0:
                break
            self._drain(wait)
        logger.debug(
            "mingle: collected %d replies to %s", len(replies), shown(destination or "the broadcast")
        )
        if rule is not None:
            _log_presence(rule, phase, replies)
        heard = expected if expected is not None else (rule.counted if rule is not None else 0)
        heard -= own in replies  # this worker's own pidbox (a consumer restart) heard it too
        if waiting_logged:
            answers = max(len(replies), self._answers.get(ticket, 0))
            logger.info(
                "mingle: %d of the %d nodes that received the hello answered, %.1fs after it",
                answers,
                reached,
                time.monotonic() - started,
            )
        if again and answer_wait is None and not destination and heard and not replies.keys() - {own}:
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


def hello_exchange(
    consumer: Any, revoked: Any, options: HelloOptions, verdicts: Verdicts | None = None
) -> dict[str, Any]:
    """The whole hello: one broadcast, then, with ``options.digest``, the full
    lists from one kept node per digest this node does not have yet.

    With ``options.reconcile`` and 1,000 held ids or more, the broadcast withholds them and
    each neighbour is sent the ids it lacks afterwards (:mod:`mingle_plugins.hello.push`).

    :param verdicts: the round's verdicts (the ``verdicts`` argument of
        ``mingle_send_hello``): each body is judged as it arrives, only kept
        bodies count and are returned. ``None``: every first body under a name.
    """
    app, connection, hostname = consumer.app, consumer.connection, consumer.hostname
    state = consumer.controller.state
    held = protocol.reply_ids(revoked)
    withhold = bool(
        options.digest and options.reconcile and verdicts is not None and len(held) >= reconcile.MIN_HELD
    )
    if withhold:
        arguments = protocol.hello_request(
            hostname, compat.no_revoked_for_hello(state), state.revoked, options, withheld=len(held)
        )
    else:
        arguments = protocol.hello_request(hostname, revoked, state.revoked, options)
    own_digest = _OwnDigests(held)
    with HelloCollector(app, connection, options, verdicts) as collector:
        replies = collector.ask(arguments)
        fetched: dict[str, str] = {}
        if options.digest and verdicts is not None:
            fetched = _fetch_full_lists(
                hostname, collector, replies, held, own_digest, arguments, verdicts, options.reconcile
            )
        if withhold:
            assert verdicts is not None
            _push_held(consumer, collector, replies, held, own_digest, fetched, verdicts, options)
    return replies


class _OwnDigests:
    """This worker's digest of ``ids`` by digest version, each made once, when a claim of it
    comes; the leaves of version 3 serve the reconciliation's bucket digests too."""

    def __init__(self, ids: list[str]) -> None:
        self.ids = ids
        self._made: dict[int, str] = {}
        self._tree: BucketTree | None = None

    def tree(self) -> BucketTree:
        if self._tree is None:
            self._tree = BucketTree.of(self.ids)
        return self._tree

    def __call__(self, version: int) -> str:
        if version not in self._made:
            made = self.tree().digest() if version == protocol.BUCKETED else protocol.digest(self.ids)
            self._made[version] = made
        return self._made[version]


def _push_held(
    consumer: Any,
    collector: HelloCollector,
    replies: Mapping[str, Any],
    held: list[str],
    own_digest: _OwnDigests,
    fetched: Mapping[str, str],
    verdicts: Verdicts,
    options: HelloOptions,
) -> None:
    """After a withheld broadcast: the ids each known neighbour lacks, to it; every held id to
    the nodes whose set is not known (:mod:`mingle_plugins.hello.push`)."""
    hostname = consumer.hostname
    state = consumer.controller.state
    plan = plan_push(  # a rejected reply is a node not known: the broadcast count says so
        held,
        verdicts.kept,
        list(replies),
        fetched,
        own_digest,
        collector.reached,
        hostname,
    )
    wait = options.answer_wait or options.timeout * FULL_LIST_PATIENCE
    for nodes, ids in plan.directed:
        subset = compat.revoked_subset_for_hello(state, ids)
        collector.push(protocol.push_request(hostname, subset, state.revoked, options), nodes, wait)
        shown_nodes = ", ".join(map(shown, nodes))[:200]
        logger.debug("mingle: sent %d ids to %s, which lack them", len(ids), shown_nodes)
    if plan.unknown:
        every = compat.revoked_for_hello(state)
        collector.push(protocol.push_request(hostname, every, state.revoked, options, plan.known), None, wait)
    lacking = sum(len(ids) * len(nodes) for nodes, ids in plan.directed)
    logger.info(
        "mingle: the hello withheld the %d ids held: %d ids sent to the %d of %d known neighbours "
        "that lack them%s",
        len(held),
        lacking,
        sum(len(nodes) for nodes, _ in plan.directed),
        len(plan.known),
        f"; all {len(held)} sent to the others ({plan.unknown})" if plan.unknown else "",
    )


def _fetch_full_lists(
    hostname: str,
    collector: HelloCollector,
    replies: dict[str, Any],
    own_ids: list[str],
    own_digest: _OwnDigests,
    arguments: Mapping[str, Any],
    verdicts: Verdicts,
    reconciled: bool = False,
) -> dict[str, str]:
    """The digest round: one verified full list per digest this node does not have, into
    ``replies``; with ``reconciled``, only the ids it lacks where it holds most of them.
    Returns ``{digest: node}``, the node whose list was taken for each digest."""
    held: list[str] | None = own_ids if reconciled and len(own_ids) >= reconcile.MIN_HELD else None
    grouped: set[str] = set()
    fetched: dict[str, str] = {}  # digest -> the node whose full list was taken
    for _ in range(2):  # once more for digests whose reply came in while the lists were fetched
        groups: dict[str, list[str]] = {}
        for node in list(replies):
            kept = verdicts.kept.get(node)
            claim = kept.extension if kept is not None else {}
            if (
                node in grouped
                or claim.get("digest") is None
                or not claim.get("count")
                or claim.get("digest") == own_digest(protocol.claim_version(claim))
            ):
                continue
            grouped.add(node)
            digest = str(claim["digest"])
            if digest in fetched:  # a late node of a digest already fetched shares that list
                verdicts.share_list(fetched[digest], [node])
            else:
                groups.setdefault(digest, []).append(node)
        if not groups:
            return fetched
        for nodes in groups.values():
            # In a random order: when many newcomers start at once, the full lists are served by
            # all the nodes that share a digest, not all by the one that answers first.
            random.shuffle(nodes)
        # Holding most of the ids already (a state db, a store, a reconnect): ask only for the
        # buckets that differ (mingle_plugins.wire.reconcile); a list asked again is a full one.
        counts = [verdicts.kept[n].extension.get("count") for ns in groups.values() for n in ns]
        claimed = max((c for c in counts if type(c) is int), default=0)  # a claim is not checked
        have = reconcile.offer(held, claimed, own_digest.tree()) if held is not None else None
        got = collector.fetch_full_lists(
            protocol.full_list_request(hostname, arguments, have),
            groups,
            again=protocol.full_list_request(hostname, arguments) if have is not None else None,
        )
        for digest, source in got.items():
            fetched[digest] = source
            replies[source] = collector.lists[source]
            verdicts.share_list(source, groups[digest])
            logger.debug(
                "mingle: full list of digest %.12s from %s (%d nodes share it)",
                digest,
                shown(source),
                len(groups[digest]),
            )
    return fetched
