"""celery-mingle-plugins: a pluggable Mingle bootstep for Celery workers.

Importing this package loads no plugin and changes nothing in Celery; the
worker uses it once ``worker_consumer = "mingle_plugins.consumer:Consumer"``
is set. Plugins implement the hooks of :mod:`mingle_plugins.hookspecs` with
``@mingle_plugins.hookimpl`` and publish them in the ``celery.mingle``
entry-point group.
"""

from __future__ import annotations

from typing import Any

from .client.revoking import RevokeOutcome, revoke
from .errors import MingleError, PluginLoadError, RejectReply, SettingsError
from .markers import ENTRY_POINT_GROUP, fail_closed, hookimpl, hookspec
from .model import HelloOptions, MingleSummary, NodeOutcome, Reply, ReplySource, Verdicts, WorkerConsumer
from .parsers import (
    Parser,
    boolean,
    choice,
    names,
    optional_seconds,
    positive_int,
    seconds,
    setting,
    text,
    transport_option_seconds,
)
from .plugins.loader import MinglePluginManager, PluginRecord, get_plugin_manager
from .settings import MingleSettings, SettingsRegistry, load_settings

__all__ = [
    "ENTRY_POINT_GROUP",
    "HelloOptions",
    "MingleError",
    "MinglePluginManager",
    "MingleSettings",
    "MingleSummary",
    "NodeOutcome",
    "Parser",
    "PluginLoadError",
    "PluginRecord",
    "RejectReply",
    "Reply",
    "ReplySource",
    "RevokeOutcome",
    "SettingsError",
    "SettingsRegistry",
    "Verdicts",
    "WorkerConsumer",
    "boolean",
    "choice",
    "fail_closed",
    "get_plugin_manager",
    "hello_exchange",
    "hookimpl",
    "hookspec",
    "load_settings",
    "names",
    "optional_seconds",
    "positive_int",
    "revoke",
    "seconds",
    "setting",
    "text",
    "transport_option_seconds",
]

__version__ = "0.2.0"


def hello_exchange(
    consumer: WorkerConsumer, revoked: Any, options: HelloOptions, verdicts: Verdicts | None = None
) -> dict[str, Any]:
    """The core's pidbox hello (broadcast, digest round), each reply judged by ``verdicts``:
    for a transport plugin's ``mingle_send_hello`` that only tunes the connection or options.

    .. versionadded:: 0.2
    """
    from .hello.collect import hello_exchange as exchange  # kombu's messaging: only when a hello is sent

    return exchange(consumer, revoked, options, verdicts)
