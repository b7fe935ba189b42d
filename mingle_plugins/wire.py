"""The hello wire protocol: what is sent, how replies are collected and checked.

Request: the stock pidbox ``hello`` control command, ``{"from_node": ...,
"revoked": ...}``. Reply: ``{nodename: {"revoked": X, "clock": int}}`` where X
is a list of ids (Celery 5.7) or a ``{id: [stamp, ...]}`` dict (5.3 to 5.6).
A reply is checked whole before anything of it is merged.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from celery.worker import state as worker_state
from kombu.messaging import Consumer
from kombu.utils.uuid import uuid

from .model import HelloOptions

__all__ = [
    "InvalidReply",
    "ReplyLimits",
    "ValidReply",
    "collect_hello",
    "revoked_for_hello",
    "sends_ids_only",
    "validate_reply",
]


def sends_ids_only(state: Any = worker_state) -> bool:
    """True on Celery 5.7+, whose hello carries ids only (``state.merge_revoked``)."""
    return hasattr(state, "merge_revoked")


def revoked_for_hello(state: Any) -> Any:
    """This node's revoked ids in the installed Celery's hello format."""
    if sends_ids_only(state):
        return list(state.revoked)  # oldest first, as stock 5.7
    return state.revoked._data  # the stamp dict, as stock 5.3 to 5.6


class InvalidReply(ValueError):
    """A neighbour's reply failed a check; the message says which."""


@dataclass(frozen=True)
class ReplyLimits:
    """Bounds a reply must stay within."""

    max_ids: int
    max_id_length: int
    max_clock: int


@dataclass(frozen=True)
class ValidReply:
    """A reply that passed every check.

    ``revoked`` is ``None``, a list of ids, or a ``{id: stamp}`` dict of floats.
    """

    clock: int | None
    revoked: list[str] | dict[str, float] | None

    @property
    def ids(self) -> list[str]:
        return list(self.revoked or ())


def _check_id(task_id: Any, limits: ReplyLimits) -> None:
    if type(task_id) is not str:
        raise InvalidReply(f"revoked id {task_id!r:.60} is a {type(task_id).__name__}, not a string")
    if not task_id or len(task_id) > limits.max_id_length:
        raise InvalidReply(f"revoked id of length {len(task_id)} is outside 1..{limits.max_id_length}")


def _stamp(value: Any) -> float:
    # LimitedSet keeps (stamp, ...) tuples; JSON turns them into lists.
    stamp = value[0] if isinstance(value, (list, tuple)) and value else value
    if (
        isinstance(stamp, bool)
        or not isinstance(stamp, (int, float))
        or not math.isfinite(stamp)
        or stamp < 0
    ):
        raise InvalidReply(f"revoked stamp {value!r:.60} is not a finite number >= 0")
    return float(stamp)


def validate_reply(reply: Any, limits: ReplyLimits) -> ValidReply:
    """Check a whole reply; raise :class:`InvalidReply` at the first problem."""
    if not isinstance(reply, Mapping):
        raise InvalidReply(f"reply is a {type(reply).__name__}, not a mapping")
    if "error" in reply:
        raise InvalidReply(f"node answered with an error: {reply['error']!r:.200}")
    clock = reply.get("clock")
    if clock is not None:
        if type(clock) is not int or clock < 0:
            raise InvalidReply(f"clock {clock!r:.60} is not an integer >= 0")
        if clock > limits.max_clock:
            raise InvalidReply(f"clock {clock:.3e} is above mingle_max_clock ({limits.max_clock})")
    revoked = reply.get("revoked")
    if revoked is None or (isinstance(revoked, (list, tuple, dict)) and not revoked):
        return ValidReply(clock, None)
    if isinstance(revoked, (list, tuple, dict)) and len(revoked) > limits.max_ids:
        raise InvalidReply(f"{len(revoked)} revoked ids is more than the {limits.max_ids} a worker keeps")
    if isinstance(revoked, (list, tuple)):
        for task_id in revoked:
            _check_id(task_id, limits)
        return ValidReply(clock, list(revoked))
    if isinstance(revoked, dict):
        stamps: dict[str, float] = {}
        for task_id, value in revoked.items():
            _check_id(task_id, limits)
            stamps[task_id] = _stamp(value)
        return ValidReply(clock, stamps)
    raise InvalidReply(f"revoked is a {type(revoked).__name__}, not a list or dict of ids")


def collect_hello(
    app: Any, connection: Any, arguments: Mapping[str, Any], options: HelloOptions
) -> dict[str, Any]:
    """Broadcast ``hello`` on the pidbox and collect the replies by node name.

    Stock Celery (kombu ``Mailbox._broadcast``) waits ``timeout`` after every
    reply. Here ``options.expected_replies`` ends the wait as soon as that many
    arrived, and ``options.quiet_window`` waits that long after each reply with
    ``timeout`` as the bound of the whole collection. A body that is not a
    mapping is kept under ``"<malformed reply N>"`` so that it is rejected and
    counted like any invalid reply.
    """
    mailbox = app.control.mailbox(connection)
    chan = connection.default_channel
    ticket = uuid()
    replies: dict[str, Any] = {}
    malformed = 0

    def on_message(body: Any, message: Any) -> None:
        nonlocal malformed
        header = message.headers.get
        clock = header("clock")
        # kombu moves the clock on every reply header; do it only within bounds.
        if type(clock) is int and 0 <= clock <= options.max_clock:
            mailbox.clock.adjust(clock)
        expires = header("expires")
        if expires and time.time() > expires:
            return
        if header("ticket", ticket) != ticket:
            return
        if isinstance(body, Mapping) and body:
            for node, reply in body.items():
                replies.setdefault(str(node), reply)  # a duplicate node name keeps its first reply
        else:
            malformed += 1
            replies[f"<malformed reply {malformed}>"] = body

    def on_decode_error(message: Any, exc: Exception) -> None:
        nonlocal malformed
        malformed += 1
        replies[f"<malformed reply {malformed}>"] = f"undecodable: {exc!r:.200}"

    # kombu's private publish: the same call Celery's broadcast makes, without its collector.
    mailbox._publish("hello", dict(arguments), reply_ticket=ticket, channel=chan, timeout=options.timeout)
    transport = connection.transport
    saved_interval = getattr(transport, "polling_interval", None)
    if options.polling_interval is not None and saved_interval is not None:
        transport.polling_interval = options.polling_interval
    consumer: Any = Consumer(chan, [mailbox.reply_queue], accept=mailbox.accept, no_ack=True)  # type: ignore[no-untyped-call]
    consumer.register_callback(on_message)
    consumer.on_decode_error = on_decode_error
    deadline = time.monotonic() + options.timeout
    try:
        with consumer:
            own = arguments.get("from_node")
            while options.expected_replies is None or len(replies.keys() - {own}) < options.expected_replies:
                wait = options.timeout
                if replies and options.quiet_window is not None:
                    wait = min(options.quiet_window, deadline - time.monotonic())
                    if wait <= 0:
                        break
                try:
                    connection.drain_events(timeout=wait)
                except TimeoutError:  # socket.timeout
                    break
    finally:
        if options.polling_interval is not None and saved_interval is not None:
            transport.polling_interval = saved_interval
        chan.after_reply_message_received(mailbox.reply_queue.name)
    return replies
