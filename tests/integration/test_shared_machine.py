"""The tests share this machine's Redis with other programs: each claims a random empty database
of its own (``tests.support.services.redis_db``) and flushes only that one at its end."""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from pathlib import Path

import pytest

from tests.support import services
from tests.support.venvs import ROOT, VENV_DIR, cache_dir

pytestmark = pytest.mark.redis


def _db(url: str) -> int:
    return int(url.rsplit("/", 1)[1])


def test_two_claims_never_share_a_database_and_each_flushes_only_its_own() -> None:
    import redis

    with services.redis_db() as first, services.redis_db() as second:
        assert first != second and 1 <= _db(first) <= 15 and 1 <= _db(second) <= 15
        one, two = redis.Redis(db=_db(first)), redis.Redis(db=_db(second))
        one.set("mine", "1")
        with services.redis_db() as third:  # a database with data (the claim, "mine") is not free
            assert third not in (first, second)
        assert one.get("mine") == b"1" and two.get(services.CLAIM_KEY) is not None
    assert one.dbsize() == 0 and two.dbsize() == 0  # flushed at the end
    one.close()
    two.close()


def test_a_database_someone_else_uses_is_never_taken_nor_flushed() -> None:
    import redis

    with services.redis_db() as url:  # pretend another program uses this one from now on
        db = _db(url)
        other = redis.Redis(db=db)
        other.set(services.CLAIM_KEY, "someone else")  # the claim is no longer ours
        other.set("their-data", "x")
    assert other.get("their-data") == b"x"  # not flushed: the claim was not ours any more
    other.flushdb()
    other.close()


def test_no_free_database_is_a_clear_skip() -> None:
    """A clear skip, or with MINGLE_TESTS_REQUIRE_SERVICES (CI) a clear failure."""
    expected = pytest.fail.Exception if services.services_required() else pytest.skip.Exception
    with services.redis_db() as url:
        db = _db(url)
        started = time.monotonic()
        with pytest.raises(expected, match=rf"no Redis database in {db}\.\.{db} .* came free"):
            with services.redis_db(range(db, db + 1), wait=1.0):
                pass  # pragma: no cover
        assert time.monotonic() - started >= 1.0  # it waited before giving up


def test_a_claim_waits_for_a_database_to_come_free() -> None:
    """The only database asked for is taken: the claimer waits, and gets it once it is released."""
    stack = contextlib.ExitStack()
    db = _db(stack.enter_context(services.redis_db()))
    timer = threading.Timer(1.0, stack.close)  # another run ends, and releases its database
    started = time.monotonic()
    timer.start()
    try:
        with services.redis_db(range(db, db + 1), wait=60) as again:
            assert _db(again) == db
            assert time.monotonic() - started >= 1.0  # taken until then
    finally:
        timer.join()
        stack.close()


def test_virtualenvs_live_outside_the_checkout() -> None:
    assert not VENV_DIR.resolve().is_relative_to(ROOT.resolve())
    if "MINGLE_VENV_DIR" not in os.environ:
        assert VENV_DIR == cache_dir() / "venvs" and cache_dir().name == "celery-mingle-plugins"
    assert not (ROOT / ".venvs").exists() or not any((ROOT / ".venvs").iterdir()), (
        "old venvs in the checkout: rm -rf .venvs"
    )


def test_the_tests_name_no_fixed_redis_database() -> None:
    fixed = re.compile(r"redis://[^\"'\s]*:6379/\d")
    found = []
    for folder in ("tests", "plugins/revocation-store/tests", "transports"):
        for path in (ROOT / folder).rglob("*.py"):
            if "build" in path.parts:
                continue
            for number, line in enumerate(path.read_text().splitlines(), 1):
                if fixed.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == [], "\n".join(found)


def test_the_cache_folder_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "celery-mingle-plugins"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir() == Path.home() / ".cache" / "celery-mingle-plugins"
