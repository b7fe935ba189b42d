"""Revoking from a client: record the ids where plugins keep them, then broadcast the revoke.

``app.control.revoke`` reaches only the workers up now. :func:`revoke` first lets every
``mingle_record_revoke`` plugin record the ids (a revocation store, say), so that a worker
started later, even after every worker stopped, learns them at its mingle; then it broadcasts.
``celery mingle revoke ID...`` calls it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from ..plugins.config import MingleConfig, configure
from ..wire import compat

__all__ = ["RevokeOutcome", "revoke"]


@dataclass(frozen=True)
class RevokeOutcome:
    """What :func:`revoke` did."""

    #: The ids, without duplicates, in the given order.
    ids: tuple[str, ...]
    #: Where plugins recorded them (``mingle_record_revoke`` answers); empty when nowhere.
    recorded_in: tuple[str, ...]
    #: The plugins that tried to record them and failed (raised or hung), each with why:
    #: ``"plugin 'store' raised StoreError('...')"``. Empty with ``recorded_in``: no plugin keeps revokes.
    #:
    #: .. versionadded:: 0.2
    failed: tuple[str, ...] = ()


def revoke(
    app: Any,
    task_ids: str | Iterable[str],
    *,
    terminate: bool = False,
    signal: str | None = None,
    config: MingleConfig | None = None,
    **kwargs: Any,
) -> RevokeOutcome:
    """Record ``task_ids`` through the ``mingle_record_revoke`` plugins, then ``app.control.revoke``
    them (always, whatever the plugins did). Extra keyword arguments go to ``app.control.revoke``.
    A plugin that raises or hangs is named in ``failed``.

    :param config: the settings and plugins to use; by default the app's (``configure(app.conf)``).

    .. versionadded:: 0.2
    """
    ids = tuple(dict.fromkeys([task_ids] if isinstance(task_ids, str) else task_ids))
    config = config or configure(app.conf)
    hook = "mingle_record_revoke"
    before = {key: fault.count for key, fault in config.runner.faults.items() if key[1] == hook}
    recorded = tuple(
        str(result.value)
        for result in config.runner.each(
            "mingle_record_revoke", app=app, ids=ids, terminate=terminate, settings=config.settings
        )
        if result.value
    )
    failed = tuple(
        f"plugin {fault.plugin!r} {fault.last}"
        for key, fault in config.runner.faults.items()
        if key[1] == hook and fault.count > before.get(key, 0)
    )
    if ids:
        compat.exclusive_replies(app.control.mailbox)  # a reply=True revoke: kombu < 5.6 (RabbitMQ 4.3)
        app.control.revoke(list(ids), terminate=terminate, signal=signal, **kwargs)
    return RevokeOutcome(ids, recorded, failed)
