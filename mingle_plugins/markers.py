"""The pluggy markers and the names shared by hosts and plugins."""

from __future__ import annotations

import pluggy

__all__ = ["ENTRY_POINT_GROUP", "PROJECT_NAME", "hookimpl", "hookspec"]

#: The pluggy project name: hook implementations are marked for it.
PROJECT_NAME = "celery_mingle"

#: The entry-point group that plugins are published in.
ENTRY_POINT_GROUP = "celery.mingle"

#: Marks a hook specification (used by :mod:`mingle_plugins.hookspecs` only).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

#: Marks a hook implementation in a plugin: ``@hookimpl def mingle_...``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)
