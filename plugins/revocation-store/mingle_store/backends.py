"""The stores: Redis (a sorted set scored by revoke time), PostgreSQL (a table with an index on
expiry), SQLite (a file, for the demo and single-host trials). Chosen by the URL's scheme.

Every store keeps, for each revoked task id, the earliest time (wall clock, ``time.time()``) any
worker or the API recorded it, however many record it. It drops ids older than ``expires`` seconds
and keeps the newest ``maxlen`` ids: the worker's own bounds (its revoked set's ``expires`` and
``maxlen``). Each call opens its own short-lived connection, with ``timeout`` to connect and for
each command, so that a store down or slow fails fast.
"""

from __future__ import annotations

import math
import re
import sqlite3
import time
from collections.abc import Mapping
from contextlib import closing
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "SCHEMES",
    "PostgresStore",
    "RedisStore",
    "RevocationStore",
    "SqliteStore",
    "open_store",
    "safe_url",
]

#: URL schemes and the store each one opens.
SCHEMES = ("redis", "rediss", "postgresql", "postgres", "sqlite")

_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


def safe_url(url: str) -> str:
    """The URL without its password, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RevocationStore(Protocol):
    """What the plugin and the API use of a store."""

    #: The store's URL without a password.
    url: str

    def record(self, ids: Mapping[str, float], maxlen: int | None, expires: float | None) -> None:
        """Record ``{id: revoke time}``, keeping each id's earliest time; then trim to the bounds."""

    def load(self, maxlen: int | None, expires: float | None) -> list[tuple[str, float]]:
        """The ids in force, ``(id, revoke time)``, oldest first: the newest ``maxlen`` at most."""

    def forget(self) -> None:
        """Remove everything this store holds (its key or its table); for tests and the demo."""


def _cutoff(expires: float | None, now: float) -> float:
    return -math.inf if expires is None else now - expires


class RedisStore:
    """One sorted set: member the task id, score its revoke time."""

    def __init__(self, url: str, name: str, timeout: float) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = safe_url(url)
        self.key = name
        self.client = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),
        )

    def record(self, ids: Mapping[str, float], maxlen: int | None, expires: float | None) -> None:
        if not ids:
            return
        now = time.time()
        pipe = self.client.pipeline(transaction=True)
        pipe.zadd(self.key, dict(ids), lt=True)  # a new id, or an earlier time: once per id
        if expires is not None:
            pipe.zremrangebyscore(self.key, "-inf", f"({_cutoff(expires, now)}")
            pipe.expire(self.key, math.ceil(expires) + 1)
        if maxlen:
            pipe.zremrangebyrank(self.key, 0, -(maxlen + 1))  # the oldest beyond the cap
        pipe.execute()

    def load(self, maxlen: int | None, expires: float | None) -> list[tuple[str, float]]:
        cutoff = _cutoff(expires, time.time())
        start = -maxlen if maxlen else 0
        rows: Any = self.client.zrange(self.key, start, -1, withscores=True)
        out = []
        for member, score in rows:
            if score > cutoff:
                out.append((member.decode() if isinstance(member, bytes) else str(member), float(score)))
        return out

    def forget(self) -> None:
        self.client.delete(self.key)


class _SqlStore:
    """The table of the PostgreSQL and SQLite stores: ``(id primary key, revoked_at, expires_at)``."""

    url: str
    table: str
    placeholder = "%s"
    least = "LEAST"

    def connect(self) -> Any:
        raise NotImplementedError

    def create(self, cur: Any) -> None:
        t = self.table
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {t} (id TEXT PRIMARY KEY, "
            "revoked_at DOUBLE PRECISION NOT NULL, expires_at DOUBLE PRECISION NOT NULL)"
        )
        cur.execute(f"CREATE INDEX IF NOT EXISTS {t}_expires_at ON {t} (expires_at)")
        cur.execute(f"CREATE INDEX IF NOT EXISTS {t}_revoked_at ON {t} (revoked_at)")

    def record(self, ids: Mapping[str, float], maxlen: int | None, expires: float | None) -> None:
        if not ids:
            return
        t, p, least = self.table, self.placeholder, self.least
        rows = [(i, at, at + expires if expires is not None else math.inf) for i, at in sorted(ids.items())]
        with closing(self.connect()) as conn:
            cur = conn.cursor()
            self.create(cur)
            cur.executemany(
                f"INSERT INTO {t} (id, revoked_at, expires_at) VALUES ({p}, {p}, {p}) "
                f"ON CONFLICT (id) DO UPDATE SET revoked_at = {least}({t}.revoked_at, excluded.revoked_at), "
                f"expires_at = {least}({t}.expires_at, excluded.expires_at)",
                rows,
            )
            cur.execute(f"DELETE FROM {t} WHERE expires_at <= {p}", (time.time(),))
            if maxlen:
                cur.execute(
                    f"DELETE FROM {t} WHERE id IN "
                    f"(SELECT id FROM {t} ORDER BY revoked_at DESC, id OFFSET {p})"
                    if p == "%s"
                    else f"DELETE FROM {t} WHERE id IN "
                    f"(SELECT id FROM {t} ORDER BY revoked_at DESC, id LIMIT -1 OFFSET {p})",
                    (maxlen,),
                )
            conn.commit()

    def load(self, maxlen: int | None, expires: float | None) -> list[tuple[str, float]]:
        t, p = self.table, self.placeholder
        now = time.time()
        limit = f" LIMIT {int(maxlen)}" if maxlen else ""
        with closing(self.connect()) as conn:
            cur = conn.cursor()
            self.create(cur)
            conn.commit()
            cur.execute(
                f"SELECT id, revoked_at FROM {t} WHERE expires_at > {p} AND revoked_at > {p} "
                f"ORDER BY revoked_at DESC, id{limit}",
                (now, _cutoff(expires, now)),
            )
            rows = [(str(i), float(at)) for i, at in cur.fetchall()]
        rows.reverse()
        return rows

    def forget(self) -> None:
        with closing(self.connect()) as conn:
            conn.cursor().execute(f"DROP TABLE IF EXISTS {self.table}")
            conn.commit()


class PostgresStore(_SqlStore):
    """A PostgreSQL table (psycopg 3), created on first use."""

    def __init__(self, url: str, name: str, timeout: float) -> None:
        import psycopg

        self._psycopg = psycopg
        self.url = safe_url(url)
        self._dsn = url
        self.table = name
        self.timeout = timeout

    def connect(self) -> Any:
        conn = self._psycopg.connect(
            self._dsn,
            connect_timeout=max(1, math.ceil(self.timeout)),
            options=f"-c statement_timeout={max(1, int(self.timeout * 1000))}",
        )
        return conn

    def create(self, cur: Any) -> None:
        # Two workers starting at once would race in CREATE TABLE IF NOT EXISTS.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
        super().create(cur)


class SqliteStore(_SqlStore):
    """A SQLite file: for the demo and trials on one host (no server)."""

    placeholder = "?"
    least = "MIN"

    def __init__(self, url: str, name: str, timeout: float) -> None:
        self.url = url
        self.path = url.split("://", 1)[1][1:] or ":memory:"  # sqlite:///relative, sqlite:////absolute
        self.table = name
        self.timeout = timeout

    def connect(self) -> Any:
        return sqlite3.connect(self.path, timeout=self.timeout)


def open_store(url: str, name: str = "celery_mingle_revoked", timeout: float = 1.0) -> RevocationStore:
    """The store for ``url``: ``redis://``/``rediss://``, ``postgresql://``, ``sqlite:///path``.

    :raises ValueError: for another scheme or a bad ``name``.
    :raises ImportError: when the client library of the scheme is not installed.
    """
    if not _NAME.match(name):
        raise ValueError(f"store name {name!r} is not a plain identifier (letters, digits, _)")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss"):
        return RedisStore(url, name, timeout)
    if scheme in ("postgresql", "postgres"):
        return PostgresStore(url, name, timeout)
    if scheme == "sqlite":
        return SqliteStore(url, name, timeout)
    raise ValueError(f"store URL {safe_url(url)!r}: the scheme is not one of {', '.join(SCHEMES)}")
