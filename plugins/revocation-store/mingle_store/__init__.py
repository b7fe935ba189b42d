"""celery-mingle-store: a shared revocation store for Mingle, on Redis, PostgreSQL or SQLite.

Through the mingle hooks only:

- ``mingle_on_revoke``: every revoke this worker receives is recorded in the
  store (ids and revoke time) by a background thread. A revoke the store did
  not take is kept (in memory, and beside the worker's ``--statedb`` when it
  has one) and written again with back-off until the store takes it; at
  shutdown the worker writes what it can and says how many it could not;
- ``mingle_extra_replies``: at every mingle the store answers like a
  neighbour, as the node ``store@<host of the URL>`` (setting ``source``): its
  reply takes the same checks, trust settings, ``mingle_on_reply`` and merge
  policies; a store down or slow is one log line and
  ``summary.sources_unreached``. Each entry is checked alone (an invalid one is
  skipped and counted, in one WARNING line per load); with ``mingle_hmac_keys``
  entries carry a MAC and unsigned ones are refused. The reply carries each
  id's age (the core's ``mingle.ages``), so the ids expire on time.

Configure with ``mingle_plugin_settings = {"store": {"url": "redis://..."}}``.
``mingle_record_revoke``: ``celery -A proj mingle revoke ID...`` (and
``mingle_plugins.revoke(app, ids)``) record the ids in the store before they are
broadcast, so that a revoke sent while no worker is up reaches the first one
that starts; when the store does not take them the hook raises
:class:`StoreError`, which names the store.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import random
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from celery.worker import state as worker_state

from mingle_plugins import (
    MingleSettings,
    MingleSummary,
    Parser,
    SettingsRegistry,
    WorkerConsumer,
    hookimpl,
    seconds,
    setting,
)

from .backends import SCHEMES, Limits, LoadResult, RevocationStore, open_store, safe_url

__all__ = [
    "PLUGIN_NAME",
    "Recorder",
    "StoreError",
    "StoreSettings",
    "limits_of",
    "recorder_for",
    "source_name",
    "store_for",
]

__version__ = "0.2.0"

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
    if len(value) > 48:
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
identifier = Parser(_identifier, "a name of letters, digits and _ (at most 48)", "str")
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
        "is not reached, and the mingle goes on with the neighbours. At most `mingle_plugin_timeout` "
        "less 0.5 s.",
        seconds,
    )
    name: str = setting(
        "celery_mingle_revoked",
        "The prefix of the Redis keys (`<name>:v2`, `<name>:v2:mac`) or of the table (`<name>_v2`).",
        identifier,
    )
    retry_max: float = setting(
        30.0,
        "A worker writes a revoke the store did not take again, after 0.5 s, then twice as long each "
        "time, up to this many seconds between attempts, until the store takes it.",
        seconds,
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


def limits_of(settings: MingleSettings) -> Limits:
    """How the store checks (and signs) entries: ``mingle_max_id_length``, ``mingle_hmac_keys``."""
    return Limits(settings.max_id_length, tuple(settings.hmac_keys))


class StoreError(Exception):
    """The store did not take a write (the message names the store and why)."""


_STORES: dict[tuple[str, str, float, Limits], RevocationStore] = {}
_LOCK = threading.Lock()


def store_for(s: StoreSettings, limits: Limits | None = None) -> RevocationStore | None:
    """The store of these settings (one per process, URL and limits), or ``None`` (logged) if unusable."""
    if not s.url:
        return None
    limits = limits or Limits()
    key = (s.url, s.name, s.timeout, limits)
    with _LOCK:
        if key not in _STORES:
            try:
                _STORES[key] = open_store(s.url, s.name, s.timeout, limits)
            except (ImportError, ValueError) as exc:
                logger.error("mingle: revocation store %s cannot be used: %s", safe_url(s.url), exc)
                return None
        return _STORES[key]


T = TypeVar("T")


class _Late(TimeoutError):
    pass


def with_deadline(fn: Callable[[], T], timeout: float) -> T:
    """``fn()`` in a daemon thread; :class:`TimeoutError` when it has not returned by ``timeout``."""
    out: list[Any] = []

    def target() -> None:
        try:
            out.append((True, fn()))
        except BaseException as exc:
            out.append((False, exc))

    thread = threading.Thread(target=target, name="mingle-store-call", daemon=True)
    thread.start()
    thread.join(timeout)
    if not out:
        raise _Late(f"no answer within {timeout:g}s")
    ok, value = out[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


# -- recording: a background thread that keeps what the store did not take -------------------------


def _durable_write(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` and wait until it is on disk (a journal must survive a crash)."""
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _sync_dir(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX: fsync the folder); no-op where unsupported."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


class Recorder:
    """Writes revokes to one store from a daemon thread; keeps what it did not take and retries.

    ``pending`` is ``{id: revoke time}``: the revokes this process was given and the store has not
    taken yet. With a ``journal`` (beside the worker's ``--statedb``) it is saved there at each
    change and read back at the next start, so a revoke survives a restart of the worker while
    the store is down.
    """

    def __init__(self, store: RevocationStore, retry_max: float = 30.0) -> None:
        self.store = store
        self.retry_max = retry_max
        self.pending: dict[str, float] = {}
        self.bounds: tuple[int | None, float | None] = (None, None)
        self.journal: Path | None = None
        self.failures = 0
        self.last_error = ""
        self.last_written: float | None = None
        self.attempts = 0
        self.trim_wanted = False
        self._next_try = 0.0
        self._busy = False
        self._cond = threading.Condition()
        self.thread = threading.Thread(target=self._run, name="mingle-store-recorder", daemon=True)
        self.thread.start()

    # -- what the hooks call --

    def submit(self, ids: Mapping[str, float], maxlen: int | None, expires: float | None) -> None:
        with self._cond:
            for task_id, at in ids.items():
                if task_id not in self.pending or at < self.pending[task_id]:
                    self.pending[task_id] = at
            self.bounds = (maxlen, expires)
            self._bound()
            self._save()
            if not self.failures:
                self._next_try = 0.0
            self._cond.notify_all()

    def want_trim(self, maxlen: int | None, expires: float | None) -> None:
        """Ask for the invalid entries to be deleted (after a load found some)."""
        with self._cond:
            self.bounds = (maxlen, expires)
            self.trim_wanted = True
            self._cond.notify_all()

    def use_journal(self, path: Path) -> None:
        """Keep the pending revokes in ``path``; the ones it holds (a previous run's) are written."""
        with self._cond:
            if self.journal == path:
                return
            self.journal = path
            try:
                data = json.loads(path.read_text())
                kept = {str(i): float(at) for i, at in data.get("ids", {}).items()}
            except FileNotFoundError:
                kept = {}
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                logger.error("mingle: revocation store %s: cannot read %s: %r", self.store.url, path, exc)
                kept = {}
            if kept:
                logger.info(
                    "mingle: revocation store %s: %d revokes kept by the last run, not written yet: "
                    "writing them",
                    self.store.url,
                    len(kept),
                )
            for task_id, at in kept.items():
                if task_id not in self.pending or at < self.pending[task_id]:
                    self.pending[task_id] = at
            self._save()
            self._cond.notify_all()

    def state(self) -> dict[str, Any]:
        """Pending writes, failures and the last error, for logs and the status line."""
        with self._cond:
            return {
                "store": self.store.url,
                "pending": len(self.pending),
                "failures": self.failures,
                "last_error": self.last_error,
                "last_written": self.last_written,
                "journal": str(self.journal) if self.journal else None,
            }

    def flush(self, timeout: float) -> bool:
        """Write now what is pending, waiting up to ``timeout``; whether nothing is left."""
        deadline = time.monotonic() + timeout
        with self._cond:
            attempts = self.attempts
            self._next_try = 0.0
            self._cond.notify_all()
            while (self.pending or self._busy) and time.monotonic() < deadline:
                if self.attempts > attempts and not self._busy and self.failures:
                    break  # tried once more since asked, and failed
                self._cond.wait(min(0.05, max(0.0, deadline - time.monotonic())))
            return not self.pending

    def close(self, timeout: float) -> int:
        """At exit: write what can be, and say how many could not be; returns that count."""
        if not self.pending:
            return 0
        self.flush(timeout)
        with self._cond:
            left = len(self.pending)
        if left:
            where = (
                f"kept in {self.journal}, written at the next start of this worker"
                if self.journal
                else "lost from this worker: it has no --statedb to keep them"
            )
            logger.warning(
                "mingle: revocation store %s not reached at shutdown: %d revokes not written (%s); "
                "last error: %s",
                self.store.url,
                left,
                where,
                self.last_error,
            )
        else:
            logger.info("mingle: revocation store %s: every revoke written before shutdown", self.store.url)
        return left

    # -- the thread --

    def _bound(self) -> None:
        maxlen, expires = self.bounds
        if expires is not None:
            cutoff = time.time() - expires
            for task_id in [i for i, at in self.pending.items() if at <= cutoff]:
                del self.pending[task_id]  # expired: no worker would keep it either
        if maxlen and len(self.pending) > maxlen:
            for task_id, _ in sorted(self.pending.items(), key=lambda kv: kv[1])[
                : len(self.pending) - maxlen
            ]:
                del self.pending[task_id]  # the oldest, as the worker's own set drops them

    def _save(self) -> None:
        if self.journal is None:
            return
        tmp = self.journal.with_name(self.journal.name + ".tmp")
        try:
            if self.pending:
                _durable_write(tmp, json.dumps({"store": self.store.url, "ids": self.pending}))
                os.replace(tmp, self.journal)
                _sync_dir(self.journal.parent)
            elif self.journal.exists():
                self.journal.unlink()
        except OSError as exc:
            logger.error(
                "mingle: revocation store %s: cannot write %s: %r", self.store.url, self.journal, exc
            )

    def _run(self) -> None:
        while True:
            with self._cond:
                while not (self.pending or self.trim_wanted) or time.monotonic() < self._next_try:
                    wait = (
                        None if not (self.pending or self.trim_wanted) else self._next_try - time.monotonic()
                    )
                    self._cond.wait(wait)
                batch = dict(list(self.pending.items())[:10000])
                maxlen, expires = self.bounds
                trim, self.trim_wanted = self.trim_wanted, False
                self._busy = True
            try:
                if batch:
                    self.store.record(batch, maxlen, expires)
                if trim:
                    invalid, _evicted = self.store.trim(maxlen, expires)
                    if invalid:  # each was counted in the WARNING line of the load that found it
                        logger.info(
                            "mingle: revocation store %s: deleted %d invalid entries", self.store.url, invalid
                        )
            except Exception as exc:
                if trim:  # not made: tried again with the next attempt
                    with self._cond:
                        self.trim_wanted = True
                self._failed(batch, exc, trim)
            else:
                self._written(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self.attempts += 1
                    self._cond.notify_all()

    def _failed(self, batch: Mapping[str, float], exc: Exception, trim: bool = False) -> None:
        with self._cond:
            self.failures += 1
            self.last_error = repr(exc)[:300]
            delay = min(self.retry_max, 0.5 * 2 ** min(self.failures - 1, 16)) * random.uniform(0.8, 1.0)
            self._next_try = time.monotonic() + delay
            count = len(self.pending)
            kept = f"in memory and in {self.journal}" if self.journal else "in memory"
        if count:
            what = f"{count} revokes kept {kept}, written again with back-off"
        else:  # only the trim was to be made
            what = "no revoke waiting; its trim (expired, invalid, surplus entries) tried again with back-off"
        if self.failures == 1 or self.failures % 20 == 0:
            logger.warning(
                "mingle: revocation store %s not reached (%s attempt%s): %s (next in %.1fs): %s",
                self.store.url,
                self.failures,
                "" if self.failures == 1 else "s",
                what,
                delay,
                self.last_error,
            )
        else:
            logger.debug("mingle: revocation store %s not reached again: %s", self.store.url, self.last_error)

    def _written(self, batch: Mapping[str, float]) -> None:
        with self._cond:
            for task_id, at in batch.items():
                if self.pending.get(task_id) == at:
                    del self.pending[task_id]
            failures, self.failures = self.failures, 0
            self.last_written = time.time()
            self.last_error = ""
            self._next_try = 0.0
            self._save()
        if failures:
            logger.info(
                "mingle: revocation store %s reached again after %d failed attempts: wrote %d kept revokes",
                self.store.url,
                failures,
                len(batch),
            )
        elif batch:
            logger.debug("mingle: recorded %d revoked ids in %s", len(batch), self.store.url)


_RECORDERS: dict[int, Recorder] = {}


def recorder_for(store: RevocationStore, timeout: float, retry_max: float = 30.0) -> Recorder:
    """The recorder of one store in this process (made, with its exit flush, on first use)."""
    with _LOCK:
        recorder = _RECORDERS.get(id(store))
        if recorder is None:
            recorder = _RECORDERS[id(store)] = Recorder(store, retry_max)
            atexit.register(recorder.close, max(timeout, 2.0))  # a worker stopping right after a revoke
        return recorder


def journal_path(statedb: Any) -> Path | None:
    """Where a worker with ``--statedb`` keeps the revokes the store has not taken yet."""
    if not statedb or not isinstance(statedb, (str, os.PathLike)):
        return None
    return Path(os.fspath(statedb) + ".mingle-store.json")


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


def _worker_recorder(consumer: WorkerConsumer, s: StoreSettings, settings: MingleSettings) -> Recorder | None:
    store = store_for(s, limits_of(settings))
    if store is None:
        return None
    recorder = recorder_for(store, s.timeout, s.retry_max)
    journal = journal_path(getattr(consumer.controller, "statedb", None))
    if journal is not None:
        recorder.use_journal(journal)
    return recorder


#: What the last load of each store (by ``id``) at a mingle saw, for ``mingle_plugin_status``.
_LAST_LOAD: dict[int, dict[str, Any]] = {}


def _reasons(load: LoadResult) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(load.invalid.items()))


# -- the hooks -------------------------------------------------------------------------------------


@hookimpl
def mingle_add_settings(registry: SettingsRegistry) -> None:
    registry.add(PLUGIN_NAME, StoreSettings)


@hookimpl
def mingle_on_revoke(consumer: WorkerConsumer, ids: tuple[str, ...], settings: MingleSettings) -> None:
    s = settings.plugin(StoreSettings)
    recorder = _worker_recorder(consumer, s, settings)
    if recorder is None:
        return
    maxlen, expires = _bounds(consumer)
    recorder.submit(dict.fromkeys(ids, time.time()), maxlen, expires)


@hookimpl
def mingle_record_revoke(ids: tuple[str, ...], settings: MingleSettings) -> str | None:
    """Record revokes sent by ``celery mingle revoke`` / ``mingle_plugins.revoke`` (no worker).

    :raises StoreError: when the store did not take them (the broadcast is sent anyway).
    """
    s = settings.plugin(StoreSettings)
    if not s.url:
        return None
    store = store_for(s, limits_of(settings))
    name = source_name(s)
    if store is None:
        raise StoreError(f"revocation store {name} ({safe_url(s.url)}) cannot be used (see the log)")
    if not ids:
        return None
    maxlen, expires = client_bounds(settings)
    stamp = dict.fromkeys(ids, time.time())
    try:
        with_deadline(
            lambda: store.record(stamp, maxlen, expires),
            min(s.timeout * 3, max(0.1, settings.plugin_timeout - 0.5)),
        )
    except Exception as exc:
        raise StoreError(
            f"revocation store {name} ({store.url}) did not take the ids: {exc!r:.200}"
        ) from None
    return name


@hookimpl
def mingle_extra_replies(consumer: WorkerConsumer, settings: MingleSettings) -> Mapping[str, Any] | None:
    s = settings.plugin(StoreSettings)
    recorder = _worker_recorder(consumer, s, settings)
    if recorder is None:
        return None
    store = recorder.store
    name = source_name(s)
    maxlen, expires = _bounds(consumer)
    # Within mingle_plugin_timeout, past which the core would abandon this hook (a plugin fault).
    wait = min(s.timeout, max(0.1, settings.plugin_timeout - 0.5))
    try:
        load: LoadResult = with_deadline(lambda: store.load(maxlen, expires), wait)
    except _Late as exc:  # slow, or holding a flood to wade through: trimmed in the background
        _LAST_LOAD[id(store)] = {"reachable": False, "last_load_error": str(exc)[:300]}
        recorder.want_trim(maxlen, expires)
        logger.warning(
            "mingle: revocation store %s not reached (%s); mingling with the neighbours only "
            "(its invalid and surplus entries are deleted in the background)",
            store.url,
            exc,
        )
        return {name: None}
    except Exception as exc:
        _LAST_LOAD[id(store)] = {"reachable": False, "last_load_error": repr(exc)[:300]}
        logger.warning(
            "mingle: revocation store %s not reached (%r); mingling with the neighbours only", store.url, exc
        )
        return {name: None}
    _LAST_LOAD[id(store)] = {
        "reachable": True,
        "ids_in_force": len(load.rows),
        "invalid_entries": load.invalid_count,
    }
    if load.migrated:
        logger.warning(
            "mingle: revocation store %s: migrated %d entries of the 0.1 layout to %s",
            store.url,
            load.migrated,
            store.where,
        )
    logger.info("mingle: revocation store %s (%s): %d ids in force", store.url, name, len(load.rows))
    if load.invalid:
        logger.warning(
            "mingle: revocation store %s: skipped %d invalid entries (%s); the %d valid ones are used",
            store.url,
            load.invalid_count,
            _reasons(load),
            len(load.rows),
        )
        recorder.want_trim(maxlen, expires)
    now = time.time()
    ages = [round(max(0.0, now - revoked_at), 3) for _, revoked_at in load.rows]
    body = {"revoked": [task_id for task_id, _ in load.rows], "clock": None, "mingle": {"v": 2, "ages": ages}}
    return {name: body}


@hookimpl
def mingle_plugin_status(consumer: WorkerConsumer, settings: MingleSettings) -> Mapping[str, Any] | None:
    """The store's state as this worker last saw it: reachable at the last mingle, entries in
    force, invalid entries, revokes waiting to be written, failed writes, the last error."""
    s = settings.plugin(StoreSettings)
    if not s.url:
        return None
    store = store_for(s, limits_of(settings))
    if store is None:
        return {"store": source_name(s), "problem": "the store cannot be used (see the worker's log)"}
    state: dict[str, Any] = {"store": store.url, **_LAST_LOAD.get(id(store), {})}
    recorder = _RECORDERS.get(id(store))
    if recorder is not None:
        written = recorder.state()
        state.update(
            pending_writes=written["pending"],
            failed_writes=written["failures"],
            last_error=written["last_error"],
        )
        if written["pending"] and written["failures"]:
            state["problem"] = (
                f"{written['pending']} revokes not written to the store yet "
                f"({written['failures']} failed writes; last: {written['last_error']})"
            )
    return state


@hookimpl
def mingle_sync_complete(consumer: WorkerConsumer, summary: MingleSummary, settings: MingleSettings) -> None:
    """One line: the ids the store brought apart from the neighbours', and the writes pending."""
    s = settings.plugin(StoreSettings)
    if not s.url:
        return
    name = source_name(s)
    outcome = summary.nodes.get(name)
    store = store_for(s, limits_of(settings))
    recorder = _RECORDERS.get(id(store)) if store is not None else None
    pending = recorder.state()["pending"] if recorder is not None else 0
    from_neighbours = sum(o.ids_merged for node, o in summary.nodes.items() if node != name)
    if name in summary.sources_unreached:
        state = "unreachable at this mingle"
    elif outcome is None:
        state = "no answer"
    elif outcome.status == "rejected":
        state = f"reply rejected ({outcome.reason})"
    else:
        state = f"{outcome.ids_received} ids, {outcome.ids_merged} merged"
    logger.info(
        "mingle: revocation store %s: %s; neighbours: %d ids merged; %d revokes waiting to be written",
        name,
        state,
        from_neighbours,
        pending,
    )
