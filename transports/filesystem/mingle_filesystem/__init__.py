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
    "FilesystemSettings",
    "count_live_neighbours",
    "mingle_add_settings",
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
    """``mingle_plugin_settings["filesystem"]``, every key optional (see ``mingle_add_settings``)."""

    neighbour_polling_interval: float | None = setting(
        None,
        "How often the neighbours poll their pidbox queue. `None`: this app's "
        "`broker_transport_options['polling_interval']`, else kombu's 1.0 s.",
        optional_seconds,
    )
    margin: float = setting(
        0.5,
        "Seconds added to that interval for a neighbour to write its reply and this node to read it.",
        seconds,
    )
    reply_polling_interval: float = setting(
        0.05, "How often this node polls its reply queue while it collects the replies.", seconds
    )
    stale_after: float | None = setting(
        None,
        "A node whose pidbox queue holds a message older than this is not counted by "
        "`mingle_expected_replies`. `None`: `max(5.0, 5 * neighbour_polling_interval)`.",
        optional_seconds,
    )

    def interval(self, conf: Mapping[str, Any]) -> float:
        """The neighbours' polling interval: the setting, else the app's transport option."""
        if self.neighbour_polling_interval is not None:
            return self.neighbour_polling_interval
        return transport_option_seconds(conf, "polling_interval", KOMBU_POLLING_INTERVAL)

    def window(self, conf: Mapping[str, Any]) -> float:
        """How long the collection stays open after the hello."""
        return self.interval(conf) + self.margin

    def stale(self, conf: Mapping[str, Any]) -> float:
        """When a bound queue's oldest message makes its node count as gone."""
        return self.stale_after if self.stale_after is not None else max(5.0, 5 * self.interval(conf))


@hookimpl
def mingle_add_settings(registry: SettingsRegistry) -> None:
    """Declare ``mingle_plugin_settings["filesystem"]``."""
    registry.add(PLUGIN_NAME, FilesystemSettings)


@hookimpl
def mingle_transport_compatible(driver_type: str) -> bool | None:
    """Claim ``filesystem://``; abstain for every other transport."""
    return True if driver_type == DRIVER_TYPE else None


@hookimpl
def mingle_tune_hello(app: Any, driver_type: str, options: HelloOptions, settings: MingleSettings) -> None:
    """Keep the collection open one neighbour polling interval plus margin; poll replies fast."""
    if driver_type != DRIVER_TYPE:
        return
    own = settings.plugin(FilesystemSettings)
    window = own.window(app.conf)
    # Every neighbour polls once within ``window`` of the hello: no reply comes later than that.
    options.allow_late_replies(window, own.reply_polling_interval)
    logger.debug(
        "mingle: filesystem: neighbours poll every %.3fs; collecting for up to %.3fs, polling every %.3fs",
        own.interval(app.conf),
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
def mingle_expected_replies(
    consumer: WorkerConsumer, driver_type: str, settings: MingleSettings
) -> int | None:
    """The number of live pidbox bindings of other nodes in the control folder."""
    if driver_type != DRIVER_TYPE:
        return None
    stale_after = settings.plugin(FilesystemSettings).stale(consumer.app.conf)
    channel = consumer.connection.default_channel
    try:
        count = count_live_neighbours(channel, consumer.app.control.mailbox, consumer.hostname, stale_after)
    except (OSError, ChannelError) as exc:
        logger.warning("mingle: filesystem: cannot read the control folder, count unknown: %r", exc)
        return None
    logger.debug("mingle: filesystem: %d neighbours bound in %s", count, channel.control_folder)
    return count
