"""The stores: Redis (a sorted set scored by revoke time), PostgreSQL (a table indexed on revoke
time), SQLite (a file, for the demo and single-host trials). Chosen by the URL's scheme.

Every store keeps, for each revoked task id, the earliest time (wall clock, ``time.time()``, to the
millisecond) any worker or the API recorded it. Layout version 2 (:data:`LAYOUT`):

- Redis: the sorted set ``<name>:v2`` (member the id's UTF-8 bytes, score its revoke time) and,
  when entries are signed, the hash ``<name>:v2:mac`` (id -> MAC);
- PostgreSQL, SQLite: the table ``<name>_v2`` ``(id BYTEA/BLOB primary key, revoked_at, mac)``.

The layout of 0.1 (the key or table ``<name>`` itself) is migrated on first use: its valid
entries are copied (signed, when keys are set) and it is renamed ``<name>:v1`` / ``<name>_v1``.

Reading never fails whole because of one entry: each entry is checked alone (:func:`check_entry`:
UTF-8, not empty, at most ``max_id_length`` characters, a finite revoke time not in the future,
and with keys a valid MAC); an invalid one is skipped and counted by reason. An entry too long is
never decoded, and on PostgreSQL and SQLite never even fetched (the database measures it).

The bounds are the worker's (its revoked set's ``expires`` and ``maxlen``): ids older than
``expires`` are deleted, and the newest ``maxlen`` *valid* ids are kept, the older ones evicted by
age as Celery's ``LimitedSet`` does. Invalid entries never count against ``maxlen``: a flood of
unsigned (with keys) or malformed entries cannot evict an id a worker recorded; :meth:`trim` deletes
them. Each call opens its own short-lived connection, with ``timeout`` to connect and per command.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import re
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "LAYOUT",
    "SCHEMES",
    "Limits",
    "LoadResult",
    "PostgresStore",
    "RedisStore",
    "RevocationStore",
    "SqliteStore",
    "check_entry",
    "entry_mac",
    "open_store",
    "safe_url",
]

#: URL schemes and the store each one opens.
SCHEMES = ("redis", "rediss", "postgresql", "postgres", "sqlite")

#: The version of the key layout / schema; the key or table name ends with it.
LAYOUT = 2

#: A store name: the key or table prefix (the table gets ``_v2``, its indexes more; PostgreSQL
#: identifiers are at most 63 bytes).
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,47}$")

#: Entries read (and deleted) per round trip.
CHUNK = 2000

#: Seconds a revoke time may lie in the future (the clocks of the writers): beyond, a bad time.
FUTURE_SKEW = 300.0


def safe_url(url: str) -> str:
    """The URL without its password, for log lines."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


# -- entries: checked one by one, signed with the fleet's keys --------------------------------------


@dataclass(frozen=True)
class Limits:
    """How entries are checked: the core's ``mingle_max_id_length`` and ``mingle_hmac_keys``."""

    max_id_length: int = 1024
    #: The first signs the entries written; an entry read must be signed with one of them.
    #: Empty: entries are neither signed nor checked for a MAC.
    keys: tuple[str, ...] = field(default=(), repr=False)


def entry_mac(key: str, task_id: bytes, revoked_at: float) -> str:
    """The MAC of one entry: HMAC-SHA256, with ``key``, of the layout, the id and its revoke time."""
    message = b"celery-mingle-store:v2\x00" + task_id + b"\x00" + f"{revoked_at:.3f}".encode()
    return hmac.new(key.encode(), message, hashlib.sha256).hexdigest()


def check_entry(
    raw: bytes | None, length: int, score: Any, mac: Any, limits: Limits, now: float
) -> tuple[str | None, str]:
    """``(task id, "")`` for a valid entry, else ``(None, reason)``.

    ``raw`` is the id's bytes (``None`` when the database did not send an id this long);
    ``length`` its size in bytes.
    """
    if length <= 0:
        return None, "empty id"
    if raw is None or length > 4 * limits.max_id_length:  # 4 bytes at most per character
        return None, "id too long"
    try:
        task_id = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None, "id not UTF-8"
    if len(task_id) > limits.max_id_length:
        return None, "id too long"
    if (
        isinstance(score, bool)
        or not isinstance(score, (int, float))
        or not math.isfinite(score)
        or score < 0
        or score > now + FUTURE_SKEW
    ):
        return None, "bad revoke time"
    if limits.keys:
        if isinstance(mac, bytes):
            mac = mac.decode("ascii", "replace")
        if not isinstance(mac, str) or not mac:
            return None, "unsigned"
        if not any(hmac.compare_digest(entry_mac(k, raw, float(score)), mac) for k in limits.keys):
            return None, "bad MAC"
    return task_id, ""


@dataclass
class LoadResult:
    """What :meth:`RevocationStore.load` read."""

    #: The valid ids in force, ``(id, revoke time)``, oldest first: the newest ``maxlen`` at most.
    rows: list[tuple[str, float]] = field(default_factory=list)
    #: Invalid entries skipped, by reason (``"id not UTF-8"``, ``"unsigned"``...).
    invalid: Counter[str] = field(default_factory=Counter)
    #: Entries of the old layout copied into this one by this call.
    migrated: int = 0

    @property
    def invalid_count(self) -> int:
        return sum(self.invalid.values())


class RevocationStore(Protocol):
    """What the plugin and the API use of a store."""

    #: The store's URL without a password.
    url: str
    #: Where the entries are: ``"<key>"`` or ``"table <name>"``.
    where: str

    def record(self, ids: Mapping[str, float], maxlen: int | None, expires: float | None) -> None:
        """Record ``{id: revoke time}``, keeping each id's earliest time; then trim to the bounds."""

    def load(self, maxlen: int | None, expires: float | None) -> LoadResult:
        """The valid ids in force, oldest first, and the invalid entries skipped."""

    def trim(self, maxlen: int | None, expires: float | None) -> tuple[int, int]:
        """Delete the expired and invalid entries and the valid ones beyond the newest ``maxlen``.

        :return: ``(invalid deleted, valid evicted)``.
        """

    def count(self) -> int:
        """How many entries the store holds, valid or not."""

    def forget(self) -> None:
        """Remove everything this store holds (every layout); for tests and the demo."""


def _cutoff(expires: float | None, now: float) -> float:
    return -math.inf if expires is None else now - expires


class _Scan:
    """Walks the entries newest first, checking each; shared by load and trim."""

    def __init__(self, limits: Limits, maxlen: int | None, cutoff: float) -> None:
        self.limits = limits
        self.maxlen = maxlen
        self.cutoff = cutoff
        self.now = time.time()
        self.rows: list[tuple[str, float]] = []
        self.invalid: Counter[str] = Counter()
        #: Keys (as the store deletes them) of the invalid entries and of the valid beyond maxlen.
        self.invalid_keys: list[Any] = []
        self.evicted_keys: list[Any] = []

    @property
    def full(self) -> bool:
        return bool(self.maxlen) and len(self.rows) >= (self.maxlen or 0)

    def see(self, key: Any, raw: bytes | None, length: int, score: Any, mac: Any) -> None:
        task_id, problem = check_entry(raw, length, score, mac, self.limits, self.now)
        if task_id is None:
            self.invalid[problem] += 1
            self.invalid_keys.append(key)
        elif float(score) <= self.cutoff:
            return  # expired: deleted by the expiry, not counted
        elif self.full:
            self.evicted_keys.append(key)
        else:
            self.rows.append((task_id, float(score)))


def _rows(ids: Mapping[str, float]) -> list[tuple[bytes, float]]:
    return [(task_id.encode("utf-8"), round(float(at), 3)) for task_id, at in sorted(ids.items())]


#: The checks Redis makes itself, so that a flood costs the worker a count, not a transfer:
#: ``problem(member, score, mac hash) -> reason or nil``. ARGV: max bytes, signed ("1"), latest time.
_CHEAP_CHECKS_LUA = """
local function problem(m, score, macs)
  local size = string.len(m)
  if size == 0 then return 'empty id' end
  if size > tonumber(ARGV[1]) then return 'id too long' end
  if score == nil or score ~= score or score < 0 or score > tonumber(ARGV[3]) then
    return 'bad revoke time'
  end
  if ARGV[2] == '1' and not redis.call('HGET', macs, m) then return 'unsigned' end
  return nil
end
"""

#: Entries ARGV[4]..ARGV[5] (newest first when ARGV[6] is "1"). Returns ``{the counts of the
#: entries failing the cheap checks (flat: reason, n, ...), 1 when an entry at or below the cutoff
#: ARGV[7] was reached, the number of entries read, {id, score, MAC, ...} of the others}``.
_READ_LUA = (
    _CHEAP_CHECKS_LUA
    + """
local rows
if ARGV[6] == '1' then
  rows = redis.call('ZREVRANGE', KEYS[1], ARGV[4], ARGV[5], 'WITHSCORES')
else
  rows = redis.call('ZRANGE', KEYS[1], ARGV[4], ARGV[5], 'WITHSCORES')
end
local cutoff = tonumber(ARGV[7])
local counts, out, reached = {}, {}, 0
for i = 1, #rows, 2 do
  local m, score = rows[i], tonumber(rows[i + 1])
  local why = problem(m, score, KEYS[2])
  if why then
    counts[why] = (counts[why] or 0) + 1
  elseif score <= cutoff then
    reached = 1
    break
  else
    out[#out + 1] = m
    out[#out + 1] = rows[i + 1]
    out[#out + 1] = redis.call('HGET', KEYS[2], m)
  end
end
local flat = {}
for why, n in pairs(counts) do
  flat[#flat + 1] = why
  flat[#flat + 1] = n
end
return {flat, reached, #rows / 2, out}
"""
)

#: Delete the entries failing the cheap checks among the ranks ARGV[4]..ARGV[5]; how many.
_DELETE_BAD_LUA = (
    _CHEAP_CHECKS_LUA
    + """
local rows = redis.call('ZRANGE', KEYS[1], ARGV[4], ARGV[5], 'WITHSCORES')
local removed = 0
for i = 1, #rows, 2 do
  if problem(rows[i], tonumber(rows[i + 1]), KEYS[2]) then
    redis.call('ZREM', KEYS[1], rows[i])
    redis.call('HDEL', KEYS[2], rows[i])
    removed = removed + 1
  end
end
return removed
"""
)


class RedisStore:
    """``<name>:v2``: member the id, score its revoke time; ``<name>:v2:mac``: the MACs."""

    def __init__(self, url: str, name: str, timeout: float, limits: Limits | None = None) -> None:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        self.url = safe_url(url)
        self.limits = limits or Limits()
        self.old = name
        self.key = f"{name}:v{LAYOUT}"
        self.macs = f"{self.key}:mac"
        self.where = self.key
        self._migrated = False
        self.client = redis.Redis.from_url(
            url,
            socket_connect_timeout=timeout,
            socket_timeout=timeout,
            retry_on_timeout=False,
            retry=Retry(NoBackoff(), 0),
        )
        self._read = self.client.register_script(_READ_LUA)
        self._delete_bad = self.client.register_script(_DELETE_BAD_LUA)

    # -- writing --

    def _write(self, rows: Sequence[tuple[bytes, float]], expires: float | None) -> None:
        if not rows:
            return
        keys = self.limits.keys
        if keys:  # the earliest *valid* time wins: read, then write those to change
            pipe = self.client.pipeline(transaction=False)
            members = [m for m, _ in rows]
            pipe.zmscore(self.key, members)  # type: ignore[arg-type]
            pipe.hmget(self.macs, members)
            scores, macs = pipe.execute()
            now = time.time()
            change = [
                (m, at)
                for (m, at), score, mac in zip(rows, scores, macs, strict=True)
                if score is None
                or at < score
                or check_entry(m, len(m), score, mac, self.limits, now)[0] is None
            ]
            if not change:
                return
            pipe = self.client.pipeline(transaction=True)
            pipe.zadd(self.key, dict(change))
            pipe.hset(self.macs, mapping={m: entry_mac(keys[0], m, at) for m, at in change})
        else:
            pipe = self.client.pipeline(transaction=True)
            pipe.zadd(self.key, dict(rows), lt=True)  # a new id, or an earlier time: once per id
        if expires is not None:
            for key in (self.key, self.macs):
                pipe.expire(key, math.ceil(expires) + 1)
        pipe.execute()

    def record(self, ids: Mapping[str, float], maxlen: int | None, expires: float | None) -> None:
        self._migrate(expires)
        if not ids:
            return
        self._write(_rows(ids), expires)
        if expires is not None:
            self._delete_expired(_cutoff(expires, time.time()))
        if maxlen and int(self.client.zcard(self.key)) > maxlen:
            self.trim(maxlen, expires)

    def _delete_expired(self, cutoff: float) -> None:
        while True:
            old: Any = self.client.zrangebyscore(self.key, "-inf", f"({cutoff}", start=0, num=CHUNK)
            if not old:
                return
            self._delete(old)
            if len(old) < CHUNK:
                return

    def _delete(self, members: Sequence[bytes]) -> None:
        for i in range(0, len(members), CHUNK):
            part = members[i : i + CHUNK]
            pipe = self.client.pipeline(transaction=True)
            pipe.zrem(self.key, *part)
            pipe.hdel(self.macs, *part)
            pipe.execute()

    # -- reading --

    def _cheap_args(self, signed: bool) -> list[Any]:
        return [4 * self.limits.max_id_length, "1" if signed else "0", repr(time.time() + FUTURE_SKEW)]

    def _chunk(
        self, key: str, start: int, cutoff: float, signed: bool, reverse: bool = True
    ) -> tuple[dict[str, int], bool, int, list[tuple[bytes, float, Any]]]:
        """Read entries ``start`` to ``start + CHUNK - 1`` (newest first); Redis counts those failing
        the cheap checks (size, time, a MAC present) by reason and sends only the others:
        ``(counts, cutoff reached, entries read, [(id, score, MAC)])``."""
        flat, reached, read, rows = self._read(
            keys=[key, self.macs if key == self.key else f"{key}:nomac"],
            args=[*self._cheap_args(signed), start, start + CHUNK - 1, "1" if reverse else "0", repr(cutoff)],
        )
        counts = {
            (flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i])): int(flat[i + 1])
            for i in range(0, len(flat), 2)
        }
        entries = [(rows[i], float(rows[i + 1]), rows[i + 2]) for i in range(0, len(rows), 3)]
        return counts, bool(reached), int(read), entries

    def _scan(self, scan: _Scan, stop_when_full: bool) -> int:
        """Check the entries newest first; the number Redis found invalid (not in ``invalid_keys``)."""
        start, in_redis = 0, 0
        while True:
            counts, reached, read, entries = self._chunk(self.key, start, scan.cutoff, bool(self.limits.keys))
            scan.invalid.update(counts)
            in_redis += sum(counts.values())
            for member, score, mac in entries:
                scan.see(member, member, len(member), score, mac)
                if stop_when_full and scan.full:
                    return in_redis
            if reached or read < CHUNK:
                return in_redis
            start += CHUNK

    def load(self, maxlen: int | None, expires: float | None) -> LoadResult:
        migrated = self._migrate(expires)
        scan = _Scan(self.limits, maxlen, _cutoff(expires, time.time()))
        self._scan(scan, stop_when_full=True)
        scan.rows.reverse()
        return LoadResult(scan.rows, scan.invalid, migrated)

    def trim(self, maxlen: int | None, expires: float | None) -> tuple[int, int]:
        if expires is not None:
            self._delete_expired(_cutoff(expires, time.time()))
        scan = _Scan(self.limits, maxlen, _cutoff(expires, time.time()))
        in_redis = self._scan(scan, stop_when_full=False)
        self._delete([*scan.invalid_keys, *scan.evicted_keys])
        if in_redis:  # those Redis found: deleted there
            start = 0
            while start < self.count():
                removed = int(
                    self._delete_bad(
                        keys=[self.key, self.macs],
                        args=[*self._cheap_args(bool(self.limits.keys)), start, start + CHUNK - 1],
                    )
                )
                start += CHUNK - removed
        return len(scan.invalid_keys) + in_redis, len(scan.evicted_keys)

    def count(self) -> int:
        return int(self.client.zcard(self.key))

    def forget(self) -> None:
        self.client.delete(self.key, self.macs, self.old, f"{self.old}:v1")

    # -- the layout of 0.1: the sorted set <name> --

    def _migrate(self, expires: float | None) -> int:
        if self._migrated:
            return 0
        copied = 0
        if self.client.type(self.old) in (b"zset", "zset"):
            scan = _Scan(Limits(self.limits.max_id_length), None, _cutoff(expires, time.time()))
            start = 0
            while True:
                _, _, read, entries = self._chunk(self.old, start, -math.inf, False, reverse=False)
                for member, score, _ in entries:
                    scan.see(member, member, len(member), score, None)
                if read < CHUNK:
                    break
                start += CHUNK
            valid = {task_id: at for task_id, at in scan.rows}
            self._write(_rows(valid), expires)
            copied = len(valid)
            try:
                self.client.rename(self.old, f"{self.old}:v1")
            except Exception:  # another worker migrated it at the same moment
                pass
        self._migrated = True
        return copied


F = TypeVar("F", bound=Callable[..., Any])


def _recreate_on_error(method: F) -> F:
    """After a failure (the table dropped, say), check the table and the old layout again next time."""

    @functools.wraps(method)
    def wrapper(self: _SqlStore, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except Exception:
            self._migrated = False
            raise

    return wrapper  # type: ignore[return-value]


class _SqlStore:
    """The table of the PostgreSQL and SQLite stores: ``<name>_v2 (id, revoked_at, mac)``."""

    url: str
    old: str
    table: str
    where: str
    limits: Limits
    placeholder = "%s"
    least = "LEAST"
    blob = "BYTEA"
    _migrated = False

    def connect(self) -> Any:
        raise NotImplementedError

    def lock(self, cur: Any) -> None:
        """Serialise the creation and migration of the table (PostgreSQL)."""

    def exists(self, cur: Any, table: str) -> bool:
        raise NotImplementedError

    def create(self, cur: Any) -> int:
        """Create the table if needed, and migrate the old one; the entries migrated."""
        if self._migrated:
            return 0
        t = self.table
        self.lock(cur)
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {t} (id {self.blob} PRIMARY KEY, "
            "revoked_at DOUBLE PRECISION NOT NULL, mac TEXT)"
        )
        cur.execute(f"CREATE INDEX IF NOT EXISTS {t}_at ON {t} (revoked_at)")
        migrated = 0
        if self.exists(cur, self.old):
            migrated = self._migrate(cur)
        self._migrated = True
        return migrated

    def _migrate(self, cur: Any) -> int:
        cur.execute(f"SELECT id, revoked_at FROM {self.old}")
        scan = _Scan(Limits(self.limits.max_id_length), None, -math.inf)
        for task_id, at in cur.fetchall():
            raw = str(task_id).encode("utf-8")
            scan.see(raw, raw, len(raw), at, None)
        self._upsert(cur, _rows(dict(scan.rows)))
        cur.execute(f"ALTER TABLE {self.old} RENAME TO {self.old}_v1")
        return len(scan.rows)

    def _upsert(self, cur: Any, rows: Sequence[tuple[bytes, float]]) -> None:
        t, p, least = self.table, self.placeholder, self.least
        keys = self.limits.keys
        if not rows:
            return
        if not keys:
            cur.executemany(
                f"INSERT INTO {t} (id, revoked_at) VALUES ({p}, {p}) ON CONFLICT (id) DO UPDATE SET "
                f"revoked_at = {least}({t}.revoked_at, excluded.revoked_at)",
                rows,
            )
            return
        # The earliest valid time wins: an existing row is replaced when later, or not validly signed.
        cur.execute(
            f"SELECT id, revoked_at, mac FROM {t} WHERE id IN ({', '.join([p] * len(rows))})",
            [m for m, _ in rows],
        )
        now = time.time()
        existing = {bytes(i): (at, mac) for i, at, mac in cur.fetchall()}
        change = []
        for m, at in rows:
            old = existing.get(m)
            if (
                old is None
                or at < old[0]
                or check_entry(m, len(m), old[0], old[1], self.limits, now)[0] is None
            ):
                change.append((m, at, entry_mac(keys[0], m, at)))
        cur.executemany(
            f"INSERT INTO {t} (id, revoked_at, mac) VALUES ({p}, {p}, {p}) ON CONFLICT (id) DO UPDATE SET "
            "revoked_at = excluded.revoked_at, mac = excluded.mac",
            change,
        )

    @_recreate_on_error
    def record(self, ids: Mapping[str, float], maxlen: int | None, expires: float | None) -> None:
        t, p = self.table, self.placeholder
        with closing(self.connect()) as conn:
            cur = conn.cursor()
            self.create(cur)
            rows = _rows(ids)
            for i in range(0, len(rows), CHUNK):
                self._upsert(cur, rows[i : i + CHUNK])
            if expires is not None:
                cur.execute(f"DELETE FROM {t} WHERE revoked_at <= {p}", (_cutoff(expires, time.time()),))
            cur.execute(f"SELECT count(*) FROM {t}")
            (count,) = cur.fetchone()
            conn.commit()
        if maxlen and int(count) > maxlen:
            self.trim(maxlen, expires)

    def _select(self) -> str:
        t, p = self.table, self.placeholder
        signed = " AND mac IS NOT NULL" if self.limits.keys else ""  # unsigned ones: counted apart
        return (
            f"SELECT id_or_null, n, revoked_at, mac FROM (SELECT CASE WHEN length(id) <= {p} THEN id END "
            f"AS id_or_null, length(id) AS n, revoked_at, mac, id FROM {t} "
            f"WHERE NOT (revoked_at <= {p} AND revoked_at > {p}){signed}) s "
            "ORDER BY revoked_at DESC, id"
        )

    def _unsigned(self, conn: Any, cutoff: float) -> int:
        """With keys: how many entries in force carry no MAC (counted by the database, not sent)."""
        if not self.limits.keys:
            return 0
        cur = conn.cursor()
        p = self.placeholder
        cur.execute(
            f"SELECT count(*) FROM {self.table} WHERE mac IS NULL "
            f"AND NOT (revoked_at <= {p} AND revoked_at > {p})",
            (cutoff, -math.inf),  # -inf itself is in force for the checks (a bad revoke time)
        )
        (count,) = cur.fetchone()
        return int(count)

    def _cursor(self, conn: Any) -> Any:
        return conn.cursor()

    def _scan(self, conn: Any, scan: _Scan, stop_when_full: bool) -> None:
        cur = self._cursor(conn)
        cur.execute(self._select(), (4 * self.limits.max_id_length, scan.cutoff, -math.inf))
        while True:
            chunk = cur.fetchmany(CHUNK)
            if not chunk:
                break
            for raw, length, at, mac in chunk:
                raw = None if raw is None else bytes(raw)
                scan.see(raw if raw is not None else ("long", length), raw, int(length), at, mac)
                if stop_when_full and scan.full:
                    cur.close()
                    return
        cur.close()

    @_recreate_on_error
    def load(self, maxlen: int | None, expires: float | None) -> LoadResult:
        scan = _Scan(self.limits, maxlen, _cutoff(expires, time.time()))
        with closing(self.connect()) as conn:
            migrated = self.create(conn.cursor())
            conn.commit()
            unsigned = self._unsigned(conn, scan.cutoff)
            if unsigned:
                scan.invalid["unsigned"] += unsigned
            self._scan(conn, scan, stop_when_full=True)
            conn.rollback()
        scan.rows.reverse()
        return LoadResult(scan.rows, scan.invalid, migrated)

    @_recreate_on_error
    def trim(self, maxlen: int | None, expires: float | None) -> tuple[int, int]:
        t, p = self.table, self.placeholder
        scan = _Scan(self.limits, maxlen, _cutoff(expires, time.time()))
        with closing(self.connect()) as conn:
            self.create(conn.cursor())
            conn.commit()
            unsigned = self._unsigned(conn, scan.cutoff)
            self._scan(conn, scan, stop_when_full=False)
            cur = conn.cursor()
            if expires is not None:
                cur.execute(f"DELETE FROM {t} WHERE revoked_at <= {p}", (scan.cutoff,))
            cur.execute(f"DELETE FROM {t} WHERE length(id) > {p}", (4 * self.limits.max_id_length,))
            if self.limits.keys:
                cur.execute(f"DELETE FROM {t} WHERE mac IS NULL")
            ids = [k for k in [*scan.invalid_keys, *scan.evicted_keys] if isinstance(k, bytes)]
            for i in range(0, len(ids), CHUNK):
                cur.executemany(f"DELETE FROM {t} WHERE id = {p}", [(k,) for k in ids[i : i + CHUNK]])
            conn.commit()
        return len(scan.invalid_keys) + unsigned, len(scan.evicted_keys)

    @_recreate_on_error
    def count(self) -> int:
        with closing(self.connect()) as conn:
            cur = conn.cursor()
            self.create(cur)
            cur.execute(f"SELECT count(*) FROM {self.table}")
            (count,) = cur.fetchone()
            conn.commit()
        return int(count)

    def forget(self) -> None:
        with closing(self.connect()) as conn:
            cur = conn.cursor()
            for table in (self.table, self.old, f"{self.old}_v1"):
                cur.execute(f"DROP TABLE IF EXISTS {table}")
            conn.commit()
        self._migrated = False


class PostgresStore(_SqlStore):
    """A PostgreSQL table (psycopg 3), created on first use."""

    def __init__(self, url: str, name: str, timeout: float, limits: Limits | None = None) -> None:
        import psycopg

        self._psycopg = psycopg
        self.url = safe_url(url)
        self._dsn = url
        self.old = name
        self.table = f"{name}_v{LAYOUT}"
        self.where = f"table {self.table}"
        self.timeout = timeout
        self.limits = limits or Limits()

    def connect(self) -> Any:
        from psycopg.conninfo import conninfo_to_dict

        given = conninfo_to_dict(self._dsn).get("options") or ""  # e.g. -csearch_path=...: kept
        return self._psycopg.connect(
            self._dsn,
            connect_timeout=max(1, math.ceil(self.timeout)),
            options=f"{given} -c statement_timeout={max(1, int(self.timeout * 1000))}".strip(),
        )

    def lock(self, cur: Any) -> None:
        # Two workers starting at once would race in CREATE TABLE IF NOT EXISTS and the migration.
        cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))

    def exists(self, cur: Any, table: str) -> bool:
        cur.execute("SELECT to_regclass(%s)", (table,))
        row = cur.fetchone()
        return row is not None and row[0] is not None

    def _select(self) -> str:
        return super()._select().replace("length(id)", "octet_length(id)")

    def _cursor(self, conn: Any) -> Any:
        return conn.cursor(name="mingle_store_scan")  # server-side: the rows come CHUNK at a time


class SqliteStore(_SqlStore):
    """A SQLite file: for the demo and trials on one host (no server)."""

    placeholder = "?"
    least = "MIN"
    blob = "BLOB"

    def __init__(self, url: str, name: str, timeout: float, limits: Limits | None = None) -> None:
        self.url = url
        self.path = url.split("://", 1)[1][1:] or ":memory:"  # sqlite:///relative, sqlite:////absolute
        self.old = name
        self.table = f"{name}_v{LAYOUT}"
        self.where = f"table {self.table}"
        self.timeout = timeout
        self.limits = limits or Limits()

    def connect(self) -> Any:
        return sqlite3.connect(self.path, timeout=self.timeout)

    def exists(self, cur: Any, table: str) -> bool:
        cur.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,))
        return cur.fetchone() is not None


def open_store(
    url: str, name: str = "celery_mingle_revoked", timeout: float = 1.0, limits: Limits | None = None
) -> RevocationStore:
    """The store for ``url``: ``redis://``/``rediss://``, ``postgresql://``, ``sqlite:///path``.

    :raises ValueError: for another scheme or a bad ``name``.
    :raises ImportError: when the client library of the scheme is not installed.
    """
    if not _NAME.match(name):
        raise ValueError(f"store name {name!r} is not a plain identifier (letters, digits, _; at most 48)")
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    if scheme in ("redis", "rediss"):
        return RedisStore(url, name, timeout, limits)
    if scheme in ("postgresql", "postgres"):
        return PostgresStore(url, name, timeout, limits)
    if scheme == "sqlite":
        return SqliteStore(url, name, timeout, limits)
    raise ValueError(f"store URL {safe_url(url)!r}: the scheme is not one of {', '.join(SCHEMES)}")
