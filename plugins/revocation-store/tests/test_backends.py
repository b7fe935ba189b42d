"""The three stores on the real services (Redis, PostgreSQL) and a SQLite file: once per id,
earliest revoke time, expiry, the cap, and a store down."""

from __future__ import annotations

import math
import socket
import time
import tracemalloc
from collections import Counter
from collections.abc import Iterator

import pytest

from mingle_store.backends import Limits, RevocationStore, open_store, safe_url

from .conftest import make_old_layout, write_raw


def test_record_and_load_oldest_first(store: RevocationStore) -> None:
    now = time.time()
    store.record({"b": now - 5, "a": now - 10}, maxlen=100, expires=3600)
    store.record({"c": now}, maxlen=100, expires=3600)
    assert [i for i, _ in store.load(100, 3600).rows] == ["a", "b", "c"]


def test_two_recorders_keep_one_row_with_the_earliest_time(store_conf: dict[str, str]) -> None:
    first = open_store(store_conf["url"], store_conf["name"])
    second = open_store(store_conf["url"], store_conf["name"])
    now = time.time()
    ids = [f"id-{i}" for i in range(20)]
    second.record(dict.fromkeys(ids, now - 1), 100, 3600)
    first.record(dict.fromkeys(ids, now - 30), 100, 3600)
    second.record(dict.fromkeys(ids, now), 100, 3600)  # later: does not move the time
    rows = first.load(100, 3600).rows
    assert len(rows) == len(ids) and {i for i, _ in rows} == set(ids)
    assert all(at == pytest.approx(now - 30) for _, at in rows)


def test_ids_expire_on_time(store: RevocationStore) -> None:
    now = time.time()
    store.record({"old": now - 100, "fresh": now - 1}, maxlen=100, expires=None)
    assert {i for i, _ in store.load(100, None).rows} == {"old", "fresh"}
    assert [i for i, _ in store.load(100, 50).rows] == ["fresh"]  # a reader with a shorter expiry
    store.record({"new": now}, maxlen=100, expires=50)  # a recorder with it: purged from the store
    assert {i for i, _ in store.load(100, None).rows} <= {"fresh", "new", "old"}
    assert [i for i, _ in store.load(100, 50).rows] == ["fresh", "new"]


def test_the_store_is_bounded_by_the_cap(store: RevocationStore) -> None:
    now = time.time()
    store.record({f"id-{i:02}": now - 100 + i for i in range(30)}, maxlen=10, expires=3600)
    rows = store.load(None, 3600).rows
    assert [i for i, _ in rows] == [f"id-{i:02}" for i in range(20, 30)]  # the 10 newest
    assert [i for i, _ in store.load(3, 3600).rows] == ["id-27", "id-28", "id-29"]


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (a store that hangs)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(16)
        yield sock.getsockname()[1]


@pytest.mark.parametrize("scheme", ["redis", "postgresql"])
def test_a_store_down_or_silent_fails_fast(scheme: str, silent_port: int) -> None:
    for port in (silent_port, 1):  # silent, refused
        store = open_store(f"{scheme}://u:secret@127.0.0.1:{port}/0", "t", timeout=0.5)
        with pytest.raises(Exception):  # noqa: B017 -- each client raises its own; a hang never ends
            store.load(10, 10)
        assert "secret" not in store.url


def test_bad_urls_and_names() -> None:
    with pytest.raises(ValueError, match="scheme"):
        open_store("mysql://x/y")
    with pytest.raises(ValueError, match="identifier"):
        open_store("redis://x/0", "drop table; --")
    assert safe_url("redis://:pw@h:1/0") == "redis://:***@h:1/0"


# -- layout v2: each entry checked alone, signed entries, bounds among valid entries, migration ------

BAD = [
    (b"\xff\xfe", 0.0, "id not UTF-8"),
    (b"", 0.0, "empty id"),
    (b"x" * 2000, 0.0, "id too long"),
    (b"in-ten-years", 10 * 365 * 86400.0, "bad revoke time"),
    (b"\xc3\xa9" * 1025, 0.0, "id too long"),  # 1025 characters in 2050 bytes
]


def test_each_bad_entry_is_skipped_alone_and_counted(store_conf: dict[str, str]) -> None:
    store = open_store(store_conf["url"], store_conf["name"], timeout=5.0)
    now = time.time()
    good = {f"good-{i}": now - 10 + i for i in range(10)}
    store.record(good, 100, 3600)
    for member, offset, _ in BAD:
        write_raw(store_conf, member, now + offset)
    write_raw(store_conf, "é".encode() * 1024, now)  # 1024 characters: valid
    load = store.load(100, 3600)
    assert [i for i, _ in load.rows] == [*good, "é" * 1024]
    assert load.invalid == Counter({"id too long": 2, "id not UTF-8": 1, "empty id": 1, "bad revoke time": 1})
    assert store.trim(100, 3600) == (5, 0)  # the bad ones deleted, no valid one
    assert store.count() == 11 and store.load(100, 3600).invalid_count == 0


def test_a_huge_entry_costs_no_more_memory_than_its_size(store_conf: dict[str, str]) -> None:
    store = open_store(store_conf["url"], store_conf["name"], timeout=30.0)
    size = 10_000_000
    store.record({"good": time.time()}, 100, 3600)
    if store_conf["url"].startswith("postgres"):
        import psycopg

        with pytest.raises(psycopg.errors.ProgramLimitExceeded):  # the primary key cannot index it
            write_raw(store_conf, b"y" * size, time.time())
        return
    write_raw(store_conf, b"y" * size, time.time())
    tracemalloc.start()
    try:
        load = store.load(100, 3600)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [i for i, _ in load.rows] == ["good"] and load.invalid == Counter({"id too long": 1})
    assert peak < 1.5 * size, f"peak {peak} bytes for a {size}-byte entry"


def test_entries_are_signed_and_checked_with_the_keys(store_conf: dict[str, str]) -> None:
    url, name = store_conf["url"], store_conf["name"]
    old_key = open_store(url, name, limits=Limits(keys=("old",)))
    old_key.record({"a": time.time() - 5}, 100, 3600)
    rotated = open_store(url, name, limits=Limits(keys=("new", "old")))  # signs with new, accepts old
    rotated.record({"b": time.time()}, 100, 3600)
    assert [i for i, _ in rotated.load(100, 3600).rows] == ["a", "b"]
    assert open_store(url, name, limits=Limits(keys=("new",))).load(100, 3600).invalid == {"bad MAC": 1}
    write_raw(store_conf, b"unsigned", time.time())
    write_raw(store_conf, b"forged", time.time(), mac="0" * 64)
    load = rotated.load(100, 3600)
    assert [i for i, _ in load.rows] == ["a", "b"] and load.invalid == {"unsigned": 1, "bad MAC": 1}
    # A signed writer replaces an entry it cannot verify, though that one is older.
    write_raw(store_conf, b"c", time.time() - 100)
    rotated.record({"c": time.time()}, 100, 3600)
    assert "c" in {i for i, _ in rotated.load(100, 3600).rows}
    # Without keys, entries are read as they are (no MAC checked).
    assert {i for i, _ in open_store(url, name).load(100, 3600).rows} == {"a", "b", "c", "unsigned", "forged"}


def test_with_keys_a_flood_evicts_no_signed_entry(store_conf: dict[str, str]) -> None:
    url, name = store_conf["url"], store_conf["name"]
    signed = open_store(url, name, timeout=10.0, limits=Limits(keys=("k",)))
    now = time.time()
    signed.record({f"good-{i:02}": now - 100 + i for i in range(10)}, 10, 3600)
    for i in range(30):  # newer than every good id
        write_raw(store_conf, f"flood-{i}".encode(), now + 1)
    signed.record({"good-10": now - 50}, 10, 3600)  # over the cap: the oldest *valid* one goes
    assert [i for i, _ in signed.load(10, 3600).rows] == [f"good-{i:02}" for i in range(1, 11)]
    assert signed.count() == 10  # the flood deleted by the trim
    unsigned = open_store(url, name, timeout=10.0)  # without keys a flood is entries like any other
    for i in range(30):
        write_raw(store_conf, f"flood-{i}".encode(), now + 1)
    unsigned.record({"x": now + 1}, 10, 3600)
    assert {i for i, _ in unsigned.load(10, 3600).rows} <= {f"flood-{i}" for i in range(30)} | {"x"}


def test_the_0_1_layout_is_migrated_on_first_use(store_conf: dict[str, str]) -> None:
    make_old_layout(store_conf)
    now = time.time()
    old = store_conf["name"]
    for i in range(5):
        write_raw(store_conf, f"old-{i}".encode(), now - 10 + i, table=old)
    write_raw(store_conf, b"x" * 2000, now, table=old)  # too long: not migrated
    store = open_store(store_conf["url"], old, limits=Limits(keys=("k",)))
    load = store.load(100, 3600)
    assert load.migrated == 5 and [i for i, _ in load.rows] == [f"old-{i}" for i in range(5)]
    assert load.invalid_count == 0  # migrated entries are signed with the first key
    again = open_store(store_conf["url"], old, limits=Limits(keys=("k",)))
    assert again.load(100, 3600).migrated == 0  # the old layout was renamed <name>:v1 / <name>_v1
    assert store.where in (f"{old}:v2", f"table {old}_v2")


def test_a_revoke_time_that_is_not_a_finite_number_is_a_bad_entry(store_conf: dict[str, str]) -> None:
    store = open_store(store_conf["url"], store_conf["name"], timeout=5.0)
    store.record({"good": time.time()}, 100, 3600)
    bad = [math.inf, -1.0] + ([math.nan, -math.inf] if store_conf["url"].startswith("postgres") else [])
    for i, score in enumerate(bad):  # Redis refuses NaN itself, SQLite stores it as NULL (refused)
        write_raw(store_conf, f"bad-{i}".encode(), score)
    load = store.load(100, None)
    assert [i for i, _ in load.rows] == ["good"] and load.invalid == {"bad revoke time": len(bad)}


def test_a_table_dropped_under_a_running_store_is_made_again(store_conf: dict[str, str]) -> None:
    store = open_store(store_conf["url"], store_conf["name"], timeout=5.0)
    store.record({"a": time.time()}, 100, 3600)
    open_store(store_conf["url"], store_conf["name"]).forget()  # an operator drops it
    if not store_conf["url"].startswith("redis"):
        with pytest.raises(Exception):  # noqa: B017 -- each database raises its own
            store.record({"b": time.time()}, 100, 3600)  # the table is gone: this write fails
    store.record({"c": time.time()}, 100, 3600)  # the next one makes the table again
    assert "c" in {i for i, _ in store.load(100, 3600).rows}
