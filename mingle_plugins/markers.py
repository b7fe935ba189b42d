"""The pluggy markers and the names shared by hosts and plugins."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import pluggy

F = TypeVar("F", bound=Callable[..., Any])

__all__ = [
    "BUILTIN_NAME",
    "ENTRY_POINT_GROUP",
    "PROJECT_NAME",
    "fail_closed",
    "hookimpl",
    "hookspec",
    "is_fail_closed",
]

#: The pluggy project name: hook implementations are marked for it.
PROJECT_NAME = "celery_mingle"

#: The entry-point group that plugins are published in.
ENTRY_POINT_GROUP = "celery.mingle"

#: The name the built-in (stock behaviour) implementations are registered under.
BUILTIN_NAME = "builtin"

#: Marks a hook specification (used by :mod:`mingle_plugins.hookspecs` only).
hookspec = pluggy.HookspecMarker(PROJECT_NAME)

#: Marks a hook implementation in a plugin: ``@hookimpl def mingle_...``.
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

_FAIL_CLOSED = "mingle_fail_closed"


def fail_closed(function: F) -> F:
    """Mark a hook implementation fail-closed: when it raises, hangs or returns a wrong value,
    the reply it was deciding on is not merged (a policy's node keeps none of its ids), instead
    of the implementation being passed over. Put it under ``@hookimpl``::

        @hookimpl
        @fail_closed
        def mingle_merge_revoked(reply, ids): ...

    .. versionadded:: 0.2
    """
    setattr(function, _FAIL_CLOSED, True)
    return function


def is_fail_closed(function: Callable[..., Any]) -> bool:
    """Whether :func:`fail_closed` marks ``function``."""
    return getattr(function, _FAIL_CLOSED, False) is True
