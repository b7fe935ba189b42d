"""Mingle on kombu's ``filesystem://`` transport (a shared folder, no server).

The filesystem transport has fanout (the pidbox exchange's bindings are a
table in ``control_folder``), so the stock ``hello`` broadcast works; this
plugin only claims the transport and tunes how the replies are collected:

- Neighbours answer only when their own pidbox consumer polls the folder,
  every ``polling_interval`` seconds (kombu default 1.0). The collection is
  kept open for one neighbour polling interval plus a margin, measured from
  the hello (``quiet_window``/``timeout``), so a late reply is not lost.
- This node polls its own reply queue every ``reply_polling_interval``
  seconds (default 0.05) during the collection only, so a reply is picked up
  as soon as it is written.
- With ``mingle_expect_replies = True`` it counts the other nodes' pidbox
  bindings in the control folder (minus nodes that left unread messages behind
  for longer than ``stale_after``), so the collection ends as soon as every
  live neighbour answered.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kombu.exceptions import ChannelError

from mingle_plugins import HelloOptions, hookimpl, plugin_seconds

__all__ = [
    "DRIVER_TYPE",
    "FilesystemSettings",
    "count_live_neighbours",
    "mingle_expected_replies",
    "mingle_transport_compatible",
    "mingle_tune_hello",
]

__version__ = "0.1.0"

logger = logging.getLogger("mingle_filesystem")

#: The ``driver_type`` of ``kombu.transport.filesystem.Transport``.
DRIVER_TYPE = "filesystem"

#: The key of this plugin in ``mingle_plugin_settings``.
PLUGIN_NAME = "filesystem"

#: ``kombu.transport.virtual.Transport.polling_interval``.
KOMBU_POLLING_INTERVAL = 1.0


@dataclass(frozen=True)
class FilesystemSettings:
    """``mingle_plugin_settings["filesystem"]``, every key optional.

    Attributes:
        neighbour_polling_interval: how often the neighbours poll their pidbox
            queue; default: ``broker_transport_options["polling_interval"]``
            of this app, else kombu's 1.0 s.
        margin: seconds added to that interval for the neighbour to write its
            reply and for this node to read it (default 0.5).
        reply_polling_interval: how often this node polls its reply queue
            while it collects the replies (default 0.05).
        stale_after: a node whose pidbox queue holds a message older than this
            is not counted by ``mingle_expected_replies`` (it is dead, or
            busy and would not answer in time); default
            ``max(5.0, 5 * neighbour_polling_interval)``.
    """

    neighbour_polling_interval: float = KOMBU_POLLING_INTERVAL
    margin: float = 0.5
    reply_polling_interval: float = 0.05
    stale_after: float = 5.0

    @property
    def window(self) -> float:
        """How long the collection stays open after the hello."""
        return self.neighbour_polling_interval + self.margin

    @classmethod
    def from_app(cls, app: Any) -> FilesystemSettings:
        """Read the settings; a bad value is logged and replaced by its default."""
        conf = app.conf
        transport_options = conf.get("broker_transport_options") or {}
        own: Mapping[str, Any] = (conf.get("mingle_plugin_settings") or {}).get(PLUGIN_NAME) or {}
        interval = _positive(
            "broker_transport_options['polling_interval']",
            transport_options.get("polling_interval"),
            KOMBU_POLLING_INTERVAL,
        )
        interval = _positive("neighbour_polling_interval", own.get("neighbour_polling_interval"), interval)
        return cls(
            neighbour_polling_interval=interval,
            margin=_positive("margin", own.get("margin"), cls.margin),
            reply_polling_interval=_positive(
                "reply_polling_interval", own.get("reply_polling_interval"), cls.reply_polling_interval
            ),
            stale_after=_positive("stale_after", own.get("stale_after"), max(5.0, 5 * interval)),
        )


def _positive(name: str, value: Any, default: float) -> float:
    return plugin_seconds(PLUGIN_NAME, name, value, default)


@hookimpl
def mingle_transport_compatible(driver_type: str) -> bool | None:
    """Claim ``filesystem://``; abstain for every other transport."""
    return True if driver_type == DRIVER_TYPE else None


@hookimpl
def mingle_tune_hello(app: Any, driver_type: str, options: HelloOptions) -> None:
    """Keep the collection open one neighbour polling interval plus margin; poll replies fast."""
    if driver_type != DRIVER_TYPE:
        return
    settings = FilesystemSettings.from_app(app)
    window = settings.window
    # Every neighbour polls once within ``window`` of the hello: no reply comes later than that.
    options.allow_late_replies(window, settings.reply_polling_interval)
    logger.debug(
        "mingle: filesystem: neighbours poll every %.3fs; collecting for up to %.3fs, polling every %.3fs",
        settings.neighbour_polling_interval,
        options.timeout,
        options.polling_interval,
    )


def count_live_neighbours(channel: Any, mailbox: Any, hostname: str, stale_after: float) -> int:
    """Count the pidbox queues bound in the control folder, other than ``hostname``'s.

    kombu never removes a binding (not even at a clean shutdown), so a queue
    holding an unread message older than ``stale_after`` is taken as a node
    that will not answer, and is not counted.
    """
    own = mailbox.get_queue(hostname).name
    queues = {binding.queue for binding in channel.get_table(mailbox.exchange.name)} - {own, ""}
    if not queues:
        return 0
    stale: set[str] = set()
    cutoff = time.time() - stale_after
    folder = os.fspath(channel.data_folder_in)
    with os.scandir(folder) as entries:
        for entry in entries:
            # kombu names a message file "<ms>_<uuid>.<queue>.msg".
            queue = entry.name.partition(".")[2].removesuffix(".msg")
            if queue in queues and queue not in stale:
                try:
                    if entry.stat().st_mtime < cutoff:
                        stale.add(queue)
                except FileNotFoundError:  # consumed meanwhile: the node is alive
                    pass
    return len(queues - stale)


@hookimpl
def mingle_expected_replies(consumer: Any, driver_type: str) -> int | None:
    """The number of live pidbox bindings of other nodes in the control folder."""
    if driver_type != DRIVER_TYPE:
        return None
    settings = FilesystemSettings.from_app(consumer.app)
    channel = consumer.connection.default_channel
    try:
        count = count_live_neighbours(
            channel, consumer.app.control.mailbox, consumer.hostname, settings.stale_after
        )
    except (OSError, ChannelError) as exc:
        logger.warning("mingle: filesystem: cannot read the control folder, count unknown: %r", exc)
        return None
    logger.debug("mingle: filesystem: %d neighbours bound in %s", count, channel.control_folder)
    return count
