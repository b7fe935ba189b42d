"""Mingle on kombu 5.7's ``pgmq://`` transport (PostgreSQL Message Queue).

kombu's pgmq transport has fanout (PGMQ topic routing), so the stock ``hello``
reaches every worker's pidbox queue and the worker's Control step answers it.
Its replies, however, are lost: kombu routes a reply to the stock
``reply.<exchange>.pidbox`` direct exchange through a binding table kept in
each process's memory, so the neighbour that answers finds no queue to put it
in (and the stock reply queue, ``<uuid>.reply.<exchange>.pidbox``, is longer
than the 47 characters a PGMQ queue name may have). This plugin therefore:

- claims the ``pgmq`` transport (``mingle_transport_compatible``), only when
  the installed core can ask for replies into a named queue
  (``HelloOptions.reply_queue``); otherwise it refuses it and says why;
- tunes the hello (``mingle_tune_hello``): a short reply queue reached through
  the default exchange, a collection open one neighbour polling round plus a
  margin, and fast polling of the reply queue;
- counts the other nodes' pidbox bindings in ``pgmq.topic_bindings``
  (``mingle_expected_replies``, used with ``mingle_expect_replies = True``),
  leaving out queues whose oldest message is older than ``stale_after``.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

from mingle_plugins import (
    HelloOptions,
    MingleSettings,
    SettingsRegistry,
    WorkerConsumer,
    hookimpl,
    optional_seconds,
    seconds,
    setting,
    transport_option_seconds,
)

__all__ = [
    "DRIVER_TYPE",
    "PgmqSettings",
    "count_live_neighbours",
    "core_supports_reply_queue",
    "mingle_add_settings",
    "mingle_expected_replies",
    "mingle_transport_compatible",
    "mingle_tune_hello",
]

__version__ = "0.1.0"

logger = logging.getLogger("mingle_pgmq")

#: The ``driver_type`` of ``kombu.transport.pgmq.Transport``.
DRIVER_TYPE = "pgmq"

#: The key of this plugin in ``mingle_plugin_settings``.
PLUGIN_NAME = "pgmq"

#: kombu's defaults: ``virtual.Transport.polling_interval`` and the pgmq
#: channel's ``wait_time_seconds``.
KOMBU_POLLING_INTERVAL = 1.0
KOMBU_WAIT_TIME_SECONDS = 10.0

#: ``celery.worker.loops.synloop`` drains the connection with this timeout,
#: which bounds one long poll of a worker's task queue.
SYNLOOP_DRAIN_TIMEOUT = 2.0


def core_supports_reply_queue() -> bool:
    """True when the installed ``celery-mingle-plugins`` has ``HelloOptions.reply_queue``."""
    return any(f.name == "reply_queue" for f in fields(HelloOptions))


@dataclass(frozen=True)
class PgmqSettings:
    """``mingle_plugin_settings["pgmq"]``, every key optional (declared with ``mingle_add_settings``)."""

    neighbour_latency: float | None = setting(
        None,
        "The longest a neighbour takes to read its pidbox queue. `None`: its `polling_interval` plus "
        "one long poll of its task queue (`min(wait_time_seconds, 2.0)` when that is >= 1 s), read "
        "from this app's `broker_transport_options`.",
        optional_seconds,
    )
    margin: float = setting(
        0.5, "Seconds added for the neighbour to answer and this node to read the answer.", seconds
    )
    reply_polling_interval: float = setting(
        0.05, "How often this node polls its reply queue while it collects the replies.", seconds
    )
    stale_after: float | None = setting(
        None,
        "A pidbox queue whose oldest message is older than this is taken as a node that will not "
        "answer. `None`: `max(10.0, 3 * neighbour_latency)`.",
        optional_seconds,
    )

    def latency(self, conf: Mapping[str, Any]) -> float:
        """How late a neighbour reads its pidbox queue: the setting, else from the transport options."""
        if self.neighbour_latency is not None:
            return self.neighbour_latency
        interval = transport_option_seconds(conf, "polling_interval", KOMBU_POLLING_INTERVAL)
        wait = transport_option_seconds(conf, "wait_time_seconds", KOMBU_WAIT_TIME_SECONDS, zero=True)
        return interval + (min(wait, SYNLOOP_DRAIN_TIMEOUT) if wait >= 1 else 0.0)

    def window(self, conf: Mapping[str, Any]) -> float:
        """How long the collection stays open after the hello."""
        return self.latency(conf) + self.margin

    def stale(self, conf: Mapping[str, Any]) -> float:
        """When a bound queue's oldest message makes its node count as gone."""
        return self.stale_after if self.stale_after is not None else max(10.0, 3 * self.latency(conf))


@hookimpl
def mingle_add_settings(registry: SettingsRegistry) -> None:
    """Declare ``mingle_plugin_settings["pgmq"]``."""
    registry.add(PLUGIN_NAME, PgmqSettings)


@hookimpl
def mingle_transport_compatible(driver_type: str) -> bool | None:
    """Claim ``pgmq://`` when the core can take replies into a named queue."""
    if driver_type != DRIVER_TYPE:
        return None
    if not core_supports_reply_queue():
        logger.error(
            "mingle: pgmq: this celery-mingle-plugins has no HelloOptions.reply_queue, and replies to "
            "the stock pidbox reply queue are lost on pgmq; mingle is off"
        )
        return False
    return True


@hookimpl
def mingle_tune_hello(app: Any, driver_type: str, options: HelloOptions, settings: MingleSettings) -> None:
    """A short reply queue by the default exchange; open one neighbour round plus margin; poll fast."""
    if driver_type != DRIVER_TYPE:
        return
    own = settings.plugin(PgmqSettings)
    options.allow_late_replies(own.window(app.conf), own.reply_polling_interval)
    if core_supports_reply_queue():
        # 23 characters: PGMQ queue names are at most 47.
        options.reply_queue = f"mingle_{uuid.uuid4().hex[:16]}"  # type: ignore[attr-defined,unused-ignore]
    logger.debug(
        "mingle: pgmq: neighbours read their pidbox within %.3fs; collecting for up to %.3fs",
        own.latency(app.conf),
        options.timeout,
    )


def _fanout_pattern(channel: Any, exchange: str) -> str:
    # kombu's own encoding of a fanout exchange into a PGMQ topic routing key.
    return str(channel._fanout_topic_key(exchange))


def count_live_neighbours(channel: Any, mailbox: Any, hostname: str, stale_after: float) -> int:
    """Count the pidbox queues bound to the pidbox fanout exchange, other than ``hostname``'s.

    kombu never unbinds a pidbox queue (not even at a clean shutdown), so a
    queue whose oldest message is older than ``stale_after`` is taken as a
    node that will not answer, and is not counted.
    """
    client = channel.pgmq
    pattern = _fanout_pattern(channel, mailbox.exchange.name)
    own = channel._queue_name(mailbox.get_queue(hostname).name)
    queues = {b.queue_name for b in client.list_topic_bindings() if b.pattern == pattern} - {own}
    live = 0
    for queue in sorted(queues):
        try:
            age = client.metrics(queue).oldest_msg_age_sec
        except ValueError:  # the queue was dropped: nobody reads it
            continue
        if age is None or age <= stale_after:
            live += 1
    return live


@hookimpl
def mingle_expected_replies(
    consumer: WorkerConsumer, driver_type: str, settings: MingleSettings
) -> int | None:
    """The number of live pidbox bindings of other nodes in ``pgmq.topic_bindings``."""
    if driver_type != DRIVER_TYPE:
        return None
    stale_after = settings.plugin(PgmqSettings).stale(consumer.app.conf)
    channel = consumer.connection.default_channel
    try:
        count = count_live_neighbours(channel, consumer.app.control.mailbox, consumer.hostname, stale_after)
    except Exception as exc:  # a database error: the count is unknown, the timeout applies
        logger.warning("mingle: pgmq: cannot count the pidbox bindings: %r", exc)
        return None
    logger.debug("mingle: pgmq: %d neighbours bound", count)
    return count
