"""Mingle on Amazon SQS, with kombu 5.7's SNS fanout (``supports_fanout``).

kombu 5.7's SQS transport broadcasts a fanout exchange through an SNS topic
subscribed by one SQS queue per node, when ``broker_transport_options`` has
``"supports_fanout": True``. Its ``implements`` still says ``direct`` only, so
Celery never starts a worker's remote-control step, and a reply to a broadcast
is routed through bindings that live in the asking process's memory. This
plugin, with its transport class (:mod:`mingle_sqs.transport`):

- claims ``sqs`` only when fanout is on and the transport advertises it
  (``mingle_transport_compatible``); otherwise it refuses with one log line
  giving the setting to add;
- tunes the hello (``mingle_tune_hello``): a reply queue of its own, reached
  through the default exchange (``HelloOptions.reply_queue``), and a collection
  open one neighbour polling round plus a margin;
- sends the hello through the core's pidbox broadcast (``mingle_send_hello``)
  with a short long poll of the reply queue, and deletes the reply queue
  afterwards, whatever happened;
- counts the other nodes' subscriptions to the pidbox SNS topic
  (``mingle_expected_replies``, with ``mingle_expect_replies = True``).
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from mingle_plugins import (
    HelloOptions,
    MingleSettings,
    Parser,
    SettingsRegistry,
    Verdicts,
    WorkerConsumer,
    hello_exchange,
    hookimpl,
    optional_seconds,
    positive_int,
    seconds,
    setting,
    transport_option_seconds,
)

__all__ = [
    "DRIVER_TYPE",
    "FANOUT_SETTING",
    "TRANSPORT_SETTING",
    "MissingPredefinedQueues",
    "SqsSettings",
    "count_listeners",
    "mingle_add_settings",
    "mingle_expected_replies",
    "mingle_send_hello",
    "mingle_transport_compatible",
    "mingle_tune_hello",
    "node_queue_names",
    "refusal",
]

__version__ = "0.1.0"

logger = logging.getLogger("mingle_sqs")

#: The ``driver_type`` of ``kombu.transport.SQS.Transport`` (and of this plugin's subclass).
DRIVER_TYPE = "sqs"

#: The key of this plugin in ``mingle_plugin_settings``.
PLUGIN_NAME = "sqs"

#: What to add to the configuration, as the refusal says it.
FANOUT_SETTING = 'broker_transport_options = {..., "supports_fanout": True}'
TRANSPORT_SETTING = 'broker_transport = "mingle_sqs.transport:Transport"'

#: ``kombu.transport.SQS.Transport.polling_interval``.
KOMBU_POLLING_INTERVAL = 1.0

#: SQS accepts a ``WaitTimeSeconds`` of 0 to 20.
SQS_MAX_WAIT_TIME_SECONDS = 20


def _wait_seconds(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value:
        raise ValueError(value)
    return min(round(value), SQS_MAX_WAIT_TIME_SECONDS)


#: SQS's ``WaitTimeSeconds``: whole seconds, 0 to 20 (more is cut to 20).
wait_seconds = Parser(_wait_seconds, "a number of seconds >= 0 (0 to 20 for SQS)", "int")


@dataclass(frozen=True)
class SqsSettings:
    """``mingle_plugin_settings["sqs"]``, every key optional (declared with ``mingle_add_settings``)."""

    neighbour_latency: float | None = setting(
        None,
        "Seconds a neighbour takes to read its pidbox queue. `None`: this app's "
        "`broker_transport_options['polling_interval']`, else kombu's 1.0 s.",
        optional_seconds,
    )
    margin: float = setting(
        0.5, "Seconds added for the neighbour to answer and this node to read the answer.", seconds
    )
    reply_wait_time_seconds: int = setting(
        1, "`WaitTimeSeconds` of each read of the reply queue while collecting (0 to 20).", wait_seconds
    )
    reply_polling_interval: float = setting(
        0.01, "Seconds between two reads of the reply queue that found nothing, while collecting.", seconds
    )
    stale_messages: int = setting(
        10, "A neighbour's pidbox queue holding this many unread messages is not counted.", positive_int
    )

    def latency(self, conf: Mapping[str, Any]) -> float:
        """How late a neighbour reads its pidbox queue: the setting, else the polling interval."""
        if self.neighbour_latency is not None:
            return self.neighbour_latency
        return transport_option_seconds(conf, "polling_interval", KOMBU_POLLING_INTERVAL, zero=True)

    def window(self, conf: Mapping[str, Any]) -> float:
        """How long the collection stays open after the hello."""
        return self.latency(conf) + self.margin


@hookimpl
def mingle_add_settings(registry: SettingsRegistry) -> None:
    """Declare ``mingle_plugin_settings["sqs"]``."""
    registry.add(PLUGIN_NAME, SqsSettings)


# -- claim -----------------------------------------------------------------------

_said: set[str] = set()


def refusal(app: Any) -> str | None:
    """Why this app's workers cannot mingle on SQS, with the setting to add; ``None`` if they can."""
    options = app.conf.get("broker_transport_options") or {}
    if not options.get("supports_fanout"):
        return (
            "kombu's SQS transport broadcasts nothing without fanout, so no worker answers a hello "
            f"(nor revoke): add {FANOUT_SETTING} and {TRANSPORT_SETTING}"
        )
    try:
        with app.connection_for_read() as conn:
            fanout = conn.supports_exchange_type("fanout")
            transport = f"{type(conn.transport).__module__}:{type(conn.transport).__name__}"
    except Exception as exc:  # the transport cannot be loaded: the worker says so itself
        return f"the SQS transport cannot be loaded ({exc!r})"
    if not fanout:
        return (
            f"the transport {transport} does not advertise fanout, so Celery starts no remote control "
            f"in the workers: add {TRANSPORT_SETTING}"
        )
    return None


def _on_sqs(app: Any) -> bool:
    """Whether the app's broker is SQS (``celery mingle plugins`` asks about every transport)."""
    url = str(app.conf.get("broker_url") or "")
    transport = str(app.conf.get("broker_transport") or "")
    return url.startswith("sqs") or transport in ("sqs", TRANSPORT_SETTING.split('"')[1])


@hookimpl
def mingle_transport_compatible(app: Any, driver_type: str) -> bool | None:
    """Claim ``sqs`` when fanout is on and advertised; refuse it, in one log line, otherwise."""
    if driver_type != DRIVER_TYPE:
        return None
    why = refusal(app)
    if why is None:
        return True
    if why not in _said and _on_sqs(app):  # said once, and only to an app whose broker is SQS
        _said.add(why)
        logger.warning("mingle: sqs: mingle is off: %s", why)
    return False


# -- hello -----------------------------------------------------------------------


class MissingPredefinedQueues(RuntimeError):
    """``predefined_queues`` is set and lacks queues that this node's mingle needs."""


def node_queue_names(channel: Any, mailbox: Any, hostname: str) -> tuple[str, str]:
    """``(pidbox queue, reply queue)`` of node ``hostname`` as SQS names (after kombu's translation).

    SQS allows letters, digits, ``-`` and ``_`` (80 at most): kombu turns ``.``
    into ``-`` and other punctuation (``@``) into ``_``.
    """
    pidbox = mailbox.get_queue(hostname).name
    reply = f"{pidbox.removesuffix('.pidbox')}.mingle"
    return channel.canonical_queue_name(pidbox), channel.canonical_queue_name(reply)


def _check_names(channel: Any, mailbox: Any, hostname: str) -> str | None:
    """With ``predefined_queues``: the reply queue name to use; raise if a queue is missing.

    kombu looks a predefined queue up under its SQS name, but subscribes a fanout
    queue to its SNS topic under its kombu name (``w1@host.celery.pidbox``): without
    that key too, kombu logs "Not subscribing queue" at DEBUG and no broadcast
    (``revoke``, ``hello``) ever reaches the node.
    """
    raw_pidbox = mailbox.get_queue(hostname).name
    pidbox, reply = node_queue_names(channel, mailbox, hostname)
    reply_name = channel.entity_name(f"{raw_pidbox.removesuffix('.pidbox')}.mingle")
    too_long = [name for name in (pidbox, reply) if len(name) > 80]
    if too_long:
        logger.error("mingle: sqs: queue names longer than SQS's 80 characters: %s", ", ".join(too_long))
    if not channel.predefined_queues:
        return None
    missing = [name for name in (pidbox, raw_pidbox, reply) if name not in channel.predefined_queues]
    if missing:
        raise MissingPredefinedQueues(
            "broker_transport_options['predefined_queues'] lacks "
            + ", ".join(repr(name) for name in missing)
            + f" (this node's pidbox queue, under its SQS and its kombu name, and its mingle reply queue;"
            f" {raw_pidbox!r} has the URL of {pidbox!r}): add them"
        )
    return str(reply_name)


@contextmanager
def _reply_polling(channel: Any, wait_time_seconds: int) -> Iterator[None]:
    """Read queues with ``WaitTimeSeconds = wait_time_seconds`` on ``channel`` meanwhile.

    The collection reads the reply queue with kombu's blocking ``ReceiveMessage``,
    which waits the transport's ``wait_time_seconds`` (kombu's default 10 s) when
    no reply comes: that long past the end of the collection.
    """
    saved = channel.__dict__.get("wait_time_seconds")
    channel.wait_time_seconds = wait_time_seconds
    try:
        yield
    finally:
        if saved is None:
            del channel.wait_time_seconds
        else:
            channel.wait_time_seconds = saved


@hookimpl
def mingle_tune_hello(app: Any, driver_type: str, options: HelloOptions, settings: MingleSettings) -> None:
    """A reply queue of our own by the default exchange; open one neighbour round plus margin."""
    if driver_type != DRIVER_TYPE:
        return
    own = settings.plugin(SqsSettings)
    options.allow_late_replies(own.window(app.conf), own.reply_polling_interval)
    # 29 characters of letters, digits and "-": a valid SQS name, kept by kombu's translation.
    options.reply_queue = f"mingle-reply-{uuid.uuid4().hex[:16]}"
    logger.debug(
        "mingle: sqs: neighbours read their pidbox within %.3fs; collecting for up to %.3fs",
        own.latency(app.conf),
        options.timeout,
    )


@hookimpl
def mingle_send_hello(
    consumer: WorkerConsumer,
    revoked: Any,
    options: HelloOptions,
    settings: MingleSettings,
    verdicts: Verdicts | None = None,
) -> Mapping[str, Any] | None:
    """The core's pidbox hello, with a short long poll; the reply queue is deleted afterwards."""
    connection = consumer.connection
    if connection.transport.driver_type != DRIVER_TYPE or options.reply_queue is None:
        return None
    # Imported here, on SQS only: ``.transport`` imports boto3 (~0.2 s), which no other
    # transport's mingle should wait for.
    from .transport import delete_queue

    own = settings.plugin(SqsSettings)
    channel = connection.default_channel
    try:
        predefined = _check_names(channel, consumer.app.control.mailbox, consumer.hostname)
    except MissingPredefinedQueues as exc:
        # Nothing can reach this node's pidbox (nor its reply queue): no hello, no neighbour.
        logger.error("mingle: sqs: %s; no hello sent", exc)
        return {}
    if predefined is not None:
        options.reply_queue = predefined  # reused at every mingle of this node: never deleted
    try:
        with _reply_polling(channel, own.reply_wait_time_seconds):
            return hello_exchange(consumer, revoked, options, verdicts)
    finally:
        if predefined is None:
            try:
                if delete_queue(channel, options.reply_queue):
                    logger.debug("mingle: sqs: the reply queue %s was left; deleted", options.reply_queue)
            except Exception as exc:  # never stop the worker for a clean-up
                logger.warning(
                    "mingle: sqs: could not delete the reply queue %s: %r", options.reply_queue, exc
                )


# -- count -----------------------------------------------------------------------


def count_listeners(channel: Any, mailbox: Any, hostname: str, stale_messages: int) -> int:
    """Count the SQS queues subscribed to the pidbox SNS topic, other than ``hostname``'s.

    A subscription whose queue is gone, or whose queue holds ``stale_messages``
    unread messages or more, is not counted: kombu deletes neither a pidbox
    queue nor its subscription when a worker stops, and a live worker reads its
    pidbox queue within a polling interval.
    """
    from botocore.exceptions import ClientError

    exchange = mailbox.exchange.name
    own, _ = node_queue_names(channel, mailbox, hostname)
    topic = channel.fanout._get_or_create_topic(exchange)
    client = channel.fanout.get_client(exchange)
    queues: set[str] = set()
    for page in client.get_paginator("list_subscriptions_by_topic").paginate(TopicArn=topic):
        for sub in page.get("Subscriptions") or ():
            if str(sub.get("Protocol", "")).lower() == "sqs":
                queues.add(str(sub["Endpoint"]).rsplit(":", 1)[-1])
    queues.discard(own)
    sqs = channel.sqs()
    live = 0
    for name in sorted(queues):
        try:
            url = sqs.get_queue_url(QueueName=name)["QueueUrl"]
            attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["ApproximateNumberOfMessages"])
        except ClientError as exc:
            logger.debug("mingle: sqs: subscribed queue %s not counted: %s", name, exc)
            continue
        unread = int(attrs.get("Attributes", {}).get("ApproximateNumberOfMessages", 0))
        if unread >= stale_messages:
            logger.debug("mingle: sqs: %s holds %d unread messages: not counted", name, unread)
            continue
        live += 1
    return live


@hookimpl
def mingle_expected_replies(
    consumer: WorkerConsumer, driver_type: str, settings: MingleSettings
) -> int | None:
    """The number of other live queues subscribed to the pidbox SNS topic."""
    if driver_type != DRIVER_TYPE:
        return None
    stale_messages = settings.plugin(SqsSettings).stale_messages
    channel = consumer.connection.default_channel
    try:
        count = count_listeners(channel, consumer.app.control.mailbox, consumer.hostname, stale_messages)
    except Exception as exc:  # an AWS error: the count is unknown, the window applies
        logger.warning("mingle: sqs: cannot count the pidbox topic's subscriptions: %r", exc)
        return None
    logger.debug("mingle: sqs: %d neighbours subscribed", count)
    return count
