"""celery-mingle-plugins: a pluggable Mingle bootstep for Celery workers.

Importing this package loads no plugin and changes nothing in Celery; the
worker uses it once ``worker_consumer = "mingle_plugins.consumer:Consumer"``
is set. Plugins implement the hooks of :mod:`mingle_plugins.hookspecs` with
``@mingle_plugins.hookimpl`` and publish them in the ``celery.mingle``
entry-point group.
"""

from __future__ import annotations

from .errors import MingleError, PluginLoadError, RejectReply, SettingsError
from .loader import MinglePluginManager, PluginRecord, get_plugin_manager
from .markers import ENTRY_POINT_GROUP, hookimpl, hookspec
from .model import HelloOptions, MingleSummary
from .settings import MingleSettings, load_settings, plugin_seconds

__all__ = [
    "ENTRY_POINT_GROUP",
    "HelloOptions",
    "MingleError",
    "MinglePluginManager",
    "MingleSettings",
    "MingleSummary",
    "PluginLoadError",
    "PluginRecord",
    "RejectReply",
    "SettingsError",
    "get_plugin_manager",
    "hookimpl",
    "hookspec",
    "load_settings",
    "plugin_seconds",
]

__version__ = "0.1.0"
