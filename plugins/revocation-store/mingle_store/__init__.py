"""celery-mingle-store: a shared revocation store for Mingle, on Redis, PostgreSQL or SQLite.

Through the mingle hooks only:

- ``mingle_on_revoke``: every revoke this worker receives is recorded in the
  store (ids and revoke time), in a background thread, once per id however
  many workers record it;
- ``mingle_extra_replies``: at every mingle the store answers like a
  neighbour, as the node ``store@<host of the URL>`` (setting ``source``): its
  reply takes the same checks, trust settings, ``mingle_on_reply`` and merge
  policies; a store down or slow is one log line and
  ``summary.sources_unreached``. The reply carries each id's age (seconds
  since its revoke time, the core's ``mingle.ages``), so the core merges the
  ids stamped with their revoke time and they expire on time.

Configure with ``mingle_plugin_settings = {"store": {"url": "redis://..."}}``.
``mingle_record_revoke``: ``celery -A proj mingle revoke ID...`` (and
``mingle_plugins.revoke(app, ids)``) record the ids in the store before they are
broadcast, so that a revoke sent while no worker is up reaches the first one that starts.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from celery.worker import state as worker_state

from mingle_plugins import (
    MingleSettings,
    Parser,
    SettingsRegistry,
    WorkerConsumer,
    hookimpl,
    seconds,
    setting,
)
from mingle_plugins.plugins.runner import Overdue, call_with_deadline

from .backends import SCHEMES, RevocationStore, open_store, safe_url

__all__ = ["PLUGIN_NAME", "StoreSettings", "source_name", "store_for"]

__version__ = "0.1.0"

logger = logging.getLogger("mingle_store")

#: The name of the plugin's block in ``mingle_plugin_settings``.
PLUGIN_NAME = "store"


def _url(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or "://" not in value:
        raise TypeError(value)
    if value.split("://", 1)[0].lower() not in SCHEMES:
        raise ValueError(value)
    return value


def _identifier(value: Any) -> str:
    if not isinstance(value, str) or not value.replace("_", "a").isalnum() or value[0].isdigit():
        raise ValueError(value)
    if len(value) > 63:
        raise ValueError(value)
    return value


def _source(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or value.count("@") != 1 or not all(value.split("@")):
        raise ValueError(value)
    if not value.isprintable() or any(ch.isspace() for ch in value) or len(value) > 255:
        raise ValueError(value)
    return value


url_parser = Parser(_url, "None, or a redis://, rediss://, postgresql:// or sqlite:/// URL", "str")
identifier = Parser(_identifier, "a name of letters, digits and _ (at most 63)", "str")
source_parser = Parser(_source, "None, or a node name of the form name@host", "str")


@dataclass(frozen=True)
class StoreSettings:
    """``mingle_plugin_settings["store"]``."""

    url: str | None = setting(
        None,
        "The store: `redis://host:port/db`, `postgresql://user@host/db`, or `sqlite:////abs/path.db` "
        "(demo and single-host trials). `None`: the plugin does nothing.",
        url_parser,
    )
    timeout: float = setting(
        1.0,
        "Seconds a mingle waits for the store (and to connect, and per command): past it the store "
        "is not reached, and the mingle goes on with the neighbours.",
        seconds,
    )
    name: str = setting(
        "celery_mingle_revoked", "The Redis key (a sorted set), or the table name.", identifier
    )
    source: str | None = setting(
        None,
        "The node name the store's reply carries (for `mingle_trusted_nodes` and the summary). "
        "`None`: `store@<host of the URL>`.",
        source_parser,
    )


def source_name(s: StoreSettings) -> str:
    """The node name of the store's reply: ``source``, or ``store@<host of the URL>``."""
    if s.source:
        return s.source
    host = urlsplit(s.url or "").hostname if s.url and not s.url.startswith("sqlite") else None
    return f"store@{host or 'localhost'}"


_STORES: dict[tuple[str, str, float], RevocationStore] = {}
_LOCK = threading.Lock()


def store_for(s: StoreSettings) -> RevocationStore | None:
    """The store of these settings (one per process and URL), or ``None`` (logged) if unusable."""
    if not s.url:
        return None
    key = (s.url, s.name, s.timeout)
    with _LOCK:
        if key not in _STORES:
            try:
                _STORES[key] = open_store(s.url, s.name, s.timeout)
            except (ImportError, ValueError) as exc:
                logger.error("mingle: revocation store %s cannot be used: %s", safe_url(s.url), exc)
                return None
        return _STORES[key]


# -- recording: a background thread, so that a revoke never waits for the store ---------------------


class Recorder:
    """Records revokes in one store, in order, from a daemon thread."""

    def __init__(self, store: RevocationStore) -> None:
        self.store = store
        self.queue: queue.Queue[tuple[dict[str, float], int | None, float | None]] = queue.Queue()
        self.failing = False
        self.thread = threading.Thread(target=self._run, name="mingle-store-recorder", daemon=True)
        self.thread.start()

    def submit(self, ids: Mapping[str, float], maxlen: int | None, expires: float | None) -> None:
        self.queue.put((dict(ids), maxlen, expires))

    def _run(self) -> None:
        while True:
            ids, maxlen, expires = self.queue.get()
            try:
                self.store.record(ids, maxlen, expires)
            except Exception as exc:
                if not self.failing:
                    logger.warning(
                        "mingle: revocation store %s not reached, %d revoked ids not recorded: %r",
                        self.store.url,
                        len(ids),
                        exc,
                    )
                self.failing = True
            else:
                if self.failing:
                    logger.info("mingle: revocation store %s reached again", self.store.url)
                self.failing = False
                logger.debug("mingle: recorded %d revoked ids in %s", len(ids), self.store.url)
            finally:
                self.queue.task_done()

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` for what was submitted to be recorded (or fail)."""
        deadline = time.monotonic() + timeout
        while self.queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)
        return not self.queue.unfinished_tasks


_RECORDERS: dict[int, Recorder] = {}


def recorder_for(store: RevocationStore, timeout: float) -> Recorder:
    with _LOCK:
        recorder = _RECORDERS.get(id(store))
        if recorder is None:
            recorder = _RECORDERS[id(store)] = Recorder(store)
            atexit.register(recorder.flush, timeout)  # a worker stopping right after a revoke
        return recorder


def client_bounds(settings: MingleSettings) -> tuple[int | None, float | None]:
    """The cap and expiry a worker of these settings gives its revoked set, seen from a process
    that is no worker: ``mingle_revokes_max`` / ``mingle_revoke_expires``, else Celery's
    ``CELERY_WORKER_REVOKES_MAX`` / ``CELERY_WORKER_REVOKE_EXPIRES`` (as this process sees them)."""
    maxlen = settings.revokes_max or worker_state.revoked.maxlen or None
    expires = settings.revoke_expires or worker_state.revoked.expires or None
    return maxlen, expires


def _bounds(consumer: WorkerConsumer) -> tuple[int | None, float | None]:
    revoked = consumer.controller.state.revoked
    maxlen = getattr(revoked, "maxlen", None) or None
    expires = getattr(revoked, "expires", None) or None
    return maxlen, expires


# -- the hooks -------------------------------------------------------------------------------------


@hookimpl
def mingle_add_settings(registry: SettingsRegistry) -> None:
    registry.add(PLUGIN_NAME, StoreSettings)


@hookimpl
def mingle_on_revoke(consumer: WorkerConsumer, ids: tuple[str, ...], settings: MingleSettings) -> None:
    s = settings.plugin(StoreSettings)
    store = store_for(s)
    if store is None:
        return
    now = time.time()
    maxlen, expires = _bounds(consumer)
    recorder_for(store, s.timeout).submit(dict.fromkeys(ids, now), maxlen, expires)


@hookimpl
def mingle_record_revoke(ids: tuple[str, ...], settings: MingleSettings) -> str | None:
    """Record revokes sent by ``celery mingle revoke`` / ``mingle_plugins.revoke`` (no worker)."""
    s = settings.plugin(StoreSettings)
    store = store_for(s)
    if store is None or not ids:
        return None
    maxlen, expires = client_bounds(settings)
    try:
        call_with_deadline(
            store.record, s.timeout, ids=dict.fromkeys(ids, time.time()), maxlen=maxlen, expires=expires
        )
    except Exception as exc:  # the broadcast still goes; the sender is told
        logger.warning(
            "mingle: revocation store %s not reached; %d ids not recorded: %r", store.url, len(ids), exc
        )
        return None
    return source_name(s)


@hookimpl
def mingle_extra_replies(consumer: WorkerConsumer, settings: MingleSettings) -> Mapping[str, Any] | None:
    s = settings.plugin(StoreSettings)
    store = store_for(s)
    if store is None:
        return None
    name = source_name(s)
    maxlen, expires = _bounds(consumer)
    try:
        rows: list[tuple[str, float]] = call_with_deadline(
            store.load, s.timeout, maxlen=maxlen, expires=expires
        )
    except Overdue:
        problem = f"no answer within {s.timeout:g}s"
    except Exception as exc:
        problem = repr(exc)
    else:
        logger.info("mingle: revocation store %s (%s): %d ids in force", store.url, name, len(rows))
        now = time.time()
        ages = [round(max(0.0, now - revoked_at), 3) for _, revoked_at in rows]
        body = {"revoked": [task_id for task_id, _ in rows], "clock": None, "mingle": {"v": 2, "ages": ages}}
        return {name: body}
    logger.warning(
        "mingle: revocation store %s not reached (%s); mingling with the neighbours only", store.url, problem
    )
    return {name: None}
