"""The plugin's hooks in one process (a SQLite store, and a store that is down): the store answers
like a neighbour on the reply path, revokes are recorded, ages kept, settings checked."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.worker import state as worker_state
from celery.worker.control import Panel

import mingle_store
from mingle_plugins import Reply, hookimpl
from mingle_plugins.answering.control import make_revoke
from mingle_plugins.bootstep import Mingle
from mingle_store import StoreSettings, source_name
from mingle_store.backends import open_store


@pytest.fixture
def consumer() -> Iterator[Any]:
    worker_state.revoked.clear()
    app = Celery("unit", broker="memory://", set_as_current=False)
    yield SimpleNamespace(
        app=app,
        hostname="me@unit",
        controller=SimpleNamespace(state=worker_state),
        connection=None,
        connection_errors=(ConnectionError,),
        event_dispatcher=None,
    )
    app.close()
    worker_state.revoked.clear()


class Alone:
    @hookimpl
    def mingle_send_hello(self) -> Any:
        return {}


def step_with(consumer: Any, monkeypatch: pytest.MonkeyPatch, **conf: Any) -> Mingle:
    monkeypatch.setenv("CELERY_MINGLE_PLUGINS", "store")
    consumer.app.conf.update(conf)
    step = Mingle(consumer)
    step.pm.register(Alone())
    return step


def test_the_store_answers_at_mingle_with_the_true_age(
    consumer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    now = time.time()
    age = min(600.0, time.monotonic() / 2)  # a stamp cannot be older than the host's uptime
    open_store(url).record({"old": now - age, "new": now - 1}, 100, 10800)
    step = step_with(consumer, monkeypatch, mingle_plugin_settings={"store": {"url": url}})
    assert "store" in step.pm.loaded_names()
    step.sync(consumer)
    summary = step.last_summary
    assert summary is not None
    assert summary.accepted == ["store@localhost"] and summary.sources_unreached == []
    assert set(worker_state.revoked) == {"old", "new"}
    stamps = {i: entry[0] for i, entry in worker_state.revoked._data.items()}
    assert time.monotonic() - stamps["old"] == pytest.approx(age, abs=30)  # stamped at its revoke time
    assert list(worker_state.revoked) == ["old", "new"]


def test_the_store_reply_takes_the_trust_settings_and_policies(
    consumer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    open_store(url).record({"x": time.time()}, 100, 10800)
    conf = {"store": {"url": url, "source": "store@prod-db"}}
    step = step_with(consumer, monkeypatch, mingle_plugin_settings=conf, mingle_trusted_nodes=["w*@*"])
    step.sync(consumer)
    assert step.last_summary is not None and "store@prod-db" in step.last_summary.rejected
    assert len(worker_state.revoked) == 0

    class NoStore:
        @hookimpl
        def mingle_merge_revoked(self, reply: Reply, ids: tuple[str, ...]) -> Any:
            return () if reply.nodename == "store@prod-db" else ids

    step = step_with(consumer, monkeypatch, mingle_trusted_nodes=["w*@*", "store@*"])
    step.pm.register(NoStore(), name="no-store")
    step.sync(consumer)
    assert step.last_summary is not None and step.last_summary.dropped_by == {"no-store": 1}
    assert len(worker_state.revoked) == 0


def test_a_store_down_is_one_line_and_the_summary_says_so(
    consumer: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    conf = {"store": {"url": "redis://127.0.0.1:1/0", "timeout": 0.5}}
    step = step_with(consumer, monkeypatch, mingle_plugin_settings=conf)
    with caplog.at_level(logging.INFO):
        step.sync(consumer)
    assert step.last_summary is not None and step.last_summary.sources_unreached == ["store@127.0.0.1"]
    lines = [r.getMessage() for r in caplog.records if "not reached" in r.getMessage()]
    assert len(lines) == 1 and "mingling with the neighbours only" in lines[0]


def test_revokes_received_are_recorded(
    consumer: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    step = step_with(consumer, monkeypatch, mingle_plugin_settings={"store": {"url": url}})
    revoke = make_revoke(step, Panel.data["revoke"])
    revoke(SimpleNamespace(consumer=consumer, app=consumer.app, hostname="me@unit"), ["r1", "r2"])
    store = mingle_store.store_for(step.settings.plugin(StoreSettings))
    assert store is not None
    assert mingle_store.recorder_for(store, 5.0).flush(10.0)
    assert {i for i, _ in open_store(url).load(100, 10800).rows} == {"r1", "r2"}


def test_settings_are_checked(caplog: pytest.LogCaptureFixture) -> None:
    from mingle_store.api import settings_of

    with caplog.at_level(logging.ERROR):
        s = settings_of(
            {"mingle_plugin_settings": {"store": {"url": "mysql://x", "name": "a b", "source": "x"}}}
        )
    assert s == StoreSettings()
    assert sum("mingle_plugin_settings['store']" in r.getMessage() for r in caplog.records) == 3
    assert source_name(StoreSettings(url="postgresql://u:p@db.example:5432/x")) == "store@db.example"
    assert source_name(StoreSettings(url="sqlite:////tmp/x.db")) == "store@localhost"
    assert mingle_store.store_for(StoreSettings()) is None
