"""The recorder alone, on a fake store that fails on demand (unit tests: the real stores are in
test_backends and test_integrity): what the store did not take is kept, written again with
back-off, saved to the journal, and counted at shutdown."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import pytest

import mingle_store
from mingle_plugins import MingleSettings, SettingsRegistry
from mingle_store import Recorder, StoreError, StoreSettings
from mingle_store.backends import LoadResult


class FlakyStore:
    url = "fake://store"
    where = "fake"

    def __init__(self) -> None:
        self.down = threading.Event()
        self.held: dict[str, float] = {}
        self.calls: list[float] = []

    def record(self, ids: Mapping[str, float], maxlen: int | None, expires: float | None) -> None:
        self.calls.append(time.monotonic())
        if self.down.is_set():
            raise ConnectionError("store down")
        for task_id, at in ids.items():
            self.held[task_id] = min(at, self.held.get(task_id, at))

    def load(self, maxlen: int | None, expires: float | None) -> LoadResult:
        return LoadResult(sorted(self.held.items(), key=lambda kv: kv[1]))

    def trim(self, maxlen: int | None, expires: float | None) -> tuple[int, int]:
        return 0, 0

    def count(self) -> int:
        return len(self.held)

    def forget(self) -> None:
        self.held.clear()


def wait(predicate: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_write_the_store_did_not_take_is_kept_and_written_again_with_back_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FlakyStore()
    store.down.set()
    recorder = Recorder(store, retry_max=1.0)
    with caplog.at_level(logging.DEBUG, "mingle_store"):
        recorder.submit({"a": 1.0, "b": 2.0}, None, None)
        wait(lambda: len(store.calls) >= 4)
        assert recorder.state()["pending"] == 2 and recorder.state()["failures"] >= 3
        assert "store down" in recorder.state()["last_error"]
        gaps = [b - a for a, b in zip(store.calls, store.calls[1:], strict=False)]
        # 0.5 s, then twice as long, capped by retry_max (each shortened by up to 20 %: jitter)
        assert 0.38 <= gaps[0] <= 0.7 and 0.78 <= gaps[1] <= 1.2 and 0.78 <= gaps[2] <= 1.2
        store.down.clear()
        wait(lambda: recorder.state()["pending"] == 0)
    assert store.held == {"a": 1.0, "b": 2.0}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # the first failure only (then every 20th)
    assert "not reached (1 attempt): 2 revokes kept in memory, written again with back-off" in warnings[0]
    assert any(
        "reached again after" in r.getMessage() and "wrote 2 kept revokes" in r.getMessage()
        for r in caplog.records
    )


def test_the_journal_keeps_pending_revokes_across_a_restart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    journal = tmp_path / "w.state.mingle-store.json"
    store = FlakyStore()
    store.down.set()
    first = Recorder(store, retry_max=0.2)
    first.use_journal(journal)
    first.submit({"x": 10.0, "y": 11.0}, None, None)
    assert set(json.loads(journal.read_text())["ids"]) == {"x", "y"}
    with caplog.at_level(logging.INFO, "mingle_store"):
        assert first.close(0.5) == 2
    assert "2 revokes not written (kept in" in caplog.text and str(journal) in caplog.text

    store.down.clear()
    second = Recorder(store)  # the next start of the worker
    second.use_journal(journal)
    wait(lambda: store.held == {"x": 10.0, "y": 11.0})
    wait(lambda: not journal.exists())


def test_without_a_journal_shutdown_says_the_revokes_are_lost(caplog: pytest.LogCaptureFixture) -> None:
    store = FlakyStore()
    store.down.set()
    recorder = Recorder(store)
    recorder.submit({"z": 1.0}, None, None)
    with caplog.at_level(logging.WARNING, "mingle_store"):
        assert recorder.close(0.5) == 1
    assert "1 revokes not written (lost from this worker: it has no --statedb to keep them)" in caplog.text


def test_pending_revokes_are_bounded_like_the_worker_set() -> None:
    store = FlakyStore()
    store.down.set()
    recorder = Recorder(store, retry_max=5)
    now = time.time()
    recorder.submit({f"id-{i}": now - 100 + i for i in range(10)}, 4, None)
    assert sorted(recorder.pending) == ["id-6", "id-7", "id-8", "id-9"]  # the newest maxlen
    recorder.submit({"old": now - 7200}, 4, 3600)
    assert "old" not in recorder.pending  # past the expiry: no worker would keep it


def test_the_client_hook_raises_naming_the_store_when_it_does_not_take_the_ids() -> None:
    registry = SettingsRegistry()
    registry.add("store", StoreSettings)
    conf = {"url": "redis://127.0.0.1:1/0", "timeout": 0.3, "source": "store@down"}
    settings = registry.resolve(MingleSettings(plugin_settings={"store": conf}))[0]
    with pytest.raises(
        StoreError, match=r"revocation store store@down \(redis://127\.0\.0\.1:1/0\) did not take"
    ):
        mingle_store.mingle_record_revoke(ids=("a",), settings=settings)
    none = registry.resolve(MingleSettings())[0]
    assert mingle_store.mingle_record_revoke(ids=("a",), settings=none) is None  # no store: abstains
