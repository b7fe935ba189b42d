"""The three stores on the real services (Redis, PostgreSQL) and a SQLite file: once per id,
earliest revoke time, expiry, the cap, and a store down."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from mingle_store.backends import RevocationStore, open_store, safe_url


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
