"""celery-mingle-plugins: a pluggable Mingle bootstep for Celery workers.

Importing this package loads no plugin and changes nothing in Celery; the
worker uses it once ``worker_consumer = "mingle_plugins.consumer:Consumer"``
is set. Plugins implement the hooks of :mod:`mingle_plugins.hookspecs` with
``@mingle_plugins.hookimpl`` and publish them in the ``celery.mingle``
entry-point group.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

#: Where each public name lives. Imported on first use (PEP 562): ``import mingle_plugins``
#: (done by every ``celery`` command, through the ``celery mingle`` entry point) costs nothing
#: until a name is used; a worker imports what its consumer needs.
_LAZY: dict[str, str] = {
    **dict.fromkeys(["RevokeOutcome", "revoke"], ".client.revoking"),
    **dict.fromkeys(["MingleError", "PluginLoadError", "RejectReply", "SettingsError"], ".errors"),
    **dict.fromkeys(["ENTRY_POINT_GROUP", "fail_closed", "hookimpl", "hookspec"], ".markers"),
    **dict.fromkeys(
        [
            "HelloOptions",
            "MingleSummary",
            "NodeOutcome",
            "Reply",
            "ReplySource",
            "Verdicts",
            "WorkerConsumer",
        ],
        ".model",
    ),
    **dict.fromkeys(
        [
            "Parser",
            "boolean",
            "choice",
            "names",
            "optional_seconds",
            "positive_int",
            "seconds",
            "setting",
            "text",
            "transport_option_seconds",
        ],
        ".parsers",
    ),
    **dict.fromkeys(["MinglePluginManager", "PluginRecord", "get_plugin_manager"], ".plugins.loader"),
    **dict.fromkeys(["MingleSettings", "SettingsRegistry", "load_settings"], ".settings"),
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


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
