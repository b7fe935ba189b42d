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

from mingle_plugins import MingleSettings, SettingsRegistry, load_settings
from mingle_plugins import revoke as mingle_revoke

from . import PLUGIN_NAME, StoreSettings, client_bounds, limits_of, source_name, store_for
from .backends import LoadResult, RevocationStore

__all__ = ["RevokeResult", "bounds", "revoke", "settings_of", "store_of", "stored"]

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


def _resolved(conf: Mapping[str, Any]) -> MingleSettings:
    registry = SettingsRegistry()
    registry.add(PLUGIN_NAME, StoreSettings)
    return registry.resolve(load_settings(conf)[0])[0]


def settings_of(conf: Mapping[str, Any]) -> StoreSettings:
    """The plugin's settings in a Celery configuration (bad values logged, defaults used)."""
    return _resolved(conf).plugin(StoreSettings)


def bounds(conf: Mapping[str, Any]) -> tuple[int | None, float | None]:
    """The cap and expiry a worker of this app gives its revoked set (:func:`client_bounds`)."""
    return client_bounds(load_settings(conf)[0])


def store_of(conf: Mapping[str, Any]) -> RevocationStore | None:
    """The app's store, checking (and signing) entries as its workers do; ``None`` without one."""
    settings = _resolved(conf)
    return store_for(settings.plugin(StoreSettings), limits_of(settings))


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
    store = store_of(app.conf)
    outcome = mingle_revoke(app, task_ids, terminate=terminate, signal=signal, **kwargs)
    recorded = source_name(s) in outcome.recorded_in
    problem = ""
    if store is None:
        problem = "no store configured (mingle_plugin_settings['store']['url'])" if not s.url else "unusable"
    elif not recorded:
        problem = "; ".join(outcome.failed) or "the store did not take the ids (see the log)"
    return RevokeResult(outcome.ids, store.url if store is not None else None, recorded, problem)


def stored(app: Any) -> tuple[RevocationStore, LoadResult]:
    """The app's store and what a worker would load from it: the valid ids in force,
    ``(id, revoke time)``, oldest first, and the invalid entries skipped.

    :raises LookupError: when the app has no usable store. Errors of the store propagate.
    """
    store = store_of(app.conf)
    if store is None:
        raise LookupError("no usable store: set mingle_plugin_settings['store']['url']")
    maxlen, expires = bounds(app.conf)
    return store, store.load(maxlen, expires)
