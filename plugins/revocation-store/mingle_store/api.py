"""Revoking through the store: beside ``app.control.revoke``, for revokes that must outlive the workers.

:func:`revoke` records the ids in the app's store (``mingle_plugin_settings["store"]``), then
broadcasts the revoke as ``app.control.revoke`` does: it is ``mingle_plugins.revoke`` (what
``celery mingle revoke`` runs), telling what the store did. Workers up now get the broadcast; workers
started later (even after every worker stopped) get the ids from the store at their mingle.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from mingle_plugins import revoke as mingle_revoke
from mingle_plugins.parsers import parse_fields, report_problems
from mingle_plugins.settings import load_settings

from . import PLUGIN_NAME, StoreSettings, client_bounds, source_name, store_for
from .backends import RevocationStore

__all__ = ["RevokeResult", "bounds", "revoke", "settings_of", "stored"]

logger = logging.getLogger("mingle_store")


@dataclass(frozen=True)
class RevokeResult:
    """What :func:`revoke` did."""

    ids: tuple[str, ...]
    #: The store's URL (no password), or ``None`` when the app has no store.
    store: str | None
    #: Whether the ids were recorded in the store.
    recorded: bool
    #: Why they were not, else ``""``.
    problem: str = ""


def settings_of(conf: Mapping[str, Any]) -> StoreSettings:
    """The plugin's settings in a Celery configuration (bad values logged, defaults used)."""
    blocks = conf.get("mingle_plugin_settings") or {}
    raw = blocks.get(PLUGIN_NAME, {}) if isinstance(blocks, Mapping) else {}
    value, problems = parse_fields(StoreSettings, raw if isinstance(raw, Mapping) else {})
    report_problems(f"mingle_plugin_settings[{PLUGIN_NAME!r}]", value, "", problems)
    return value


def bounds(conf: Mapping[str, Any]) -> tuple[int | None, float | None]:
    """The cap and expiry a worker of this app gives its revoked set (:func:`client_bounds`)."""
    return client_bounds(load_settings(conf)[0])


def revoke(
    app: Any,
    task_ids: str | Iterable[str],
    *,
    terminate: bool = False,
    signal: str | None = None,
    **kwargs: Any,
) -> RevokeResult:
    """``mingle_plugins.revoke``: record ``task_ids`` (in the store, through this plugin's
    ``mingle_record_revoke``), then ``app.control.revoke`` them; with what the store did.

    The broadcast is sent also when the store is not reached (the result says so).
    """
    s = settings_of(app.conf)
    store = store_for(s)
    outcome = mingle_revoke(app, task_ids, terminate=terminate, signal=signal, **kwargs)
    recorded = source_name(s) in outcome.recorded_in
    problem = ""
    if store is None:
        problem = "no store configured (mingle_plugin_settings['store']['url'])" if not s.url else "unusable"
    elif not recorded:
        problem = "the store was not reached (see the log)"
    return RevokeResult(outcome.ids, store.url if store is not None else None, recorded, problem)


def stored(app: Any) -> tuple[RevocationStore, list[tuple[str, float]]]:
    """The app's store and the ids in force in it, ``(id, revoke time)``, oldest first.

    :raises LookupError: when the app has no usable store. Errors of the store propagate.
    """
    s = settings_of(app.conf)
    store = store_for(s)
    if store is None:
        raise LookupError("no usable store: set mingle_plugin_settings['store']['url']")
    maxlen, expires = bounds(app.conf)
    return store, store.load(maxlen, expires)
