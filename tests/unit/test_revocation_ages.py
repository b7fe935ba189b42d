"""Ages travel: an id revoked at T expires at T + expiry on every worker of this package."""

from __future__ import annotations

import time
from typing import Any

import pytest
from celery.worker.control import Panel

from mingle_plugins.answering.hello import make_hello
from mingle_plugins.bootstep import Mingle
from mingle_plugins.wire import protocol


def _step(consumer: Any, monkeypatch: pytest.MonkeyPatch, **conf: Any) -> Mingle:
    monkeypatch.setenv("CELERY_MINGLE_PLUGINS", "")
    consumer.app.conf.update(conf)
    return Mingle(consumer)


def _age(state: Any, task_id: str) -> float:
    return time.monotonic() - state.revoked._data[task_id][0]


@pytest.mark.parametrize("merge", ["stock", "bulk"])
def test_ids_are_merged_with_their_age_and_never_renewed(
    consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch, merge: str
) -> None:
    step = _step(consumer, monkeypatch, mingle_merge=merge)
    monkeypatch.setattr(state.revoked, "expires", 1000)
    state.revoked.add("held-young")  # revoked here just now
    state.revoked.add("held-old", now=time.monotonic() - 500)
    body = {
        "revoked": ["new", "held-young", "held-old", "expired"],
        "mingle": {"v": 2, "ages": [100, 300, 10, 2000]},
    }
    with step.mingle_round(consumer) as rnd:
        rnd.reply("n@x", body)
    assert _age(state, "new") == pytest.approx(100, abs=2)
    assert _age(state, "held-young") == pytest.approx(300, abs=2)  # an older revoke time wins
    assert _age(state, "held-old") == pytest.approx(500, abs=2)  # a younger one never renews it
    assert "expired" not in state.revoked  # revoked longer ago than the expiry


def test_a_stock_reply_is_merged_as_stock(consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    step = _step(consumer, monkeypatch)
    state.revoked.add("held", now=time.monotonic() - 500)
    step.on_node_reply(consumer, "stock@x", {"revoked": ["held", "new"]})
    assert _age(state, "held") < 5 and _age(state, "new") < 5  # 5.7: merge_revoked stamps them now


def test_ages_that_do_not_match_reject_the_reply(
    consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = _step(consumer, monkeypatch)
    with step.mingle_round(consumer) as rnd:
        rnd.reply("a@x", {"revoked": ["x", "y"], "mingle": {"ages": [1]}})
        rnd.reply("b@x", {"revoked": ["z"], "mingle": {"ages": [-5]}})
    assert len(state.revoked) == 0
    assert "one for one" in rnd.summary.rejected["a@x"]
    # A bad age drops its id alone: the reply itself is sound.
    assert "b@x" not in rnd.summary.rejected and rnd.summary.nodes["b@x"].ids_invalid == 1


def test_the_answering_side_takes_and_gives_ages(
    consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = _step(consumer, monkeypatch)
    state.revoked.add("mine", now=time.monotonic() - 42)
    hello = make_hello(step, Panel.data["hello"])
    pidbox = type("S", (), {"hostname": consumer.hostname, "consumer": consumer, "app": consumer.app})()
    reply = hello(pidbox, "new@x", revoked=["theirs"], mingle={"v": 2, "ages": [7.5]})
    assert _age(state, "theirs") == pytest.approx(7.5, abs=2)
    ages = dict(zip(reply["revoked"], reply["mingle"]["ages"], strict=True))
    assert ages["mine"] == pytest.approx(42, abs=2) and ages["theirs"] == pytest.approx(7.5, abs=2)
    stock = hello(pidbox, "stock@x", revoked=None)  # a stock request gets the stock reply
    assert "mingle" not in stock


def test_ages_are_signed(consumer: Any) -> None:
    reply = protocol.extend_reply(
        {"revoked": ["a"], "clock": 1}, {"nonce": "n" * 16, "ages": []}, "n@x", ("k",), ages=lambda ids: [5.0]
    )
    ext = reply["mingle"]
    assert protocol.verify(("k",), "n" * 16, "n@x", 1, ["a"], ext) is None
    assert protocol.verify(("k",), "n" * 16, "n@x", 1, ["a"], {**ext, "ages": [0.0]}) is not None


def test_settings_size_the_revoked_set(
    consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    monkeypatch.setattr(state.revoked, "maxlen", state.revoked.maxlen)
    monkeypatch.setattr(state.revoked, "expires", state.revoked.expires)
    for i in range(30):
        state.revoked.add(f"id-{i}", now=time.monotonic() - 100 + i)
    with caplog.at_level("INFO"):
        _step(consumer, monkeypatch, mingle_revokes_max=20, mingle_revoke_expires=95)
    assert (state.revoked.maxlen, state.revoked.expires) == (20, 95)
    assert set(state.revoked) == {f"id-{i}" for i in range(10, 30)}  # the oldest went first
    assert "mingle: the revoked set keeps 20 ids for 95s (20 held)" in caplog.text


def test_a_packed_full_list_is_merged_with_its_ages(
    consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = _step(consumer, monkeypatch, mingle_merge="bulk")
    monkeypatch.setattr(state.revoked, "expires", 1000)
    body = {"revoked": [], "mingle": {"v": 2, "ids": "p1\np2\np3", "ages": [5, 50, 5000]}}
    with step.mingle_round(consumer) as rnd:
        rnd.reply("n@x", body)
    assert _age(state, "p1") == pytest.approx(5, abs=2) and _age(state, "p2") == pytest.approx(50, abs=2)
    assert "p3" not in state.revoked  # older than the expiry
    with step.mingle_round(consumer) as rnd:
        rnd.reply("both@x", {"revoked": ["x"], "mingle": {"ids": "y", "ages": [1]}})
        rnd.reply("nostr@x", {"revoked": [], "mingle": {"ids": ["y"], "ages": [1]}})
        rnd.reply("empty@x", {"revoked": [], "mingle": {"ids": "a\n\nb", "ages": [1, 1, 1]}})
    assert {"x", "y"}.isdisjoint(state.revoked)
    assert "both in revoked and in mingle.ids" in rnd.summary.rejected["both@x"]
    assert "not a string" in rnd.summary.rejected["nostr@x"]
    # The empty id between two newlines is dropped alone; the two valid ids are merged.
    assert {"a", "b"} <= set(state.revoked) and rnd.summary.nodes["empty@x"].ids_invalid == 1


@pytest.mark.parametrize("held", [0, 3])
def test_the_bulk_add_leaves_the_set_as_one_add_per_id_would(state: Any, held: int) -> None:
    """compat._add_many (one dict update and one heapify) against LimitedSet.add per id."""
    from celery.utils.collections import LimitedSet

    from mingle_plugins.wire import compat

    now = time.monotonic()
    ids = [f"id-{i}" for i in range(40)]
    ages = {task_id: float(i % 7) * 10 for i, task_id in enumerate(ids)}
    one_by_one, bulk = LimitedSet(maxlen=30, expires=1000), LimitedSet(maxlen=30, expires=1000)
    for target in (one_by_one, bulk):
        for i in range(held):
            target.add(f"held-{i}", now=now - 100 - i)
    for task_id in ids:
        one_by_one.add(task_id, now=now - ages[task_id])
    compat.merge_aged(bulk, ids, ages)
    assert set(bulk) == set(one_by_one) and len(bulk) == 30  # the oldest went first, in both
    assert {i: round(bulk._data[i][0] - now) for i in bulk} == {
        i: round(one_by_one._data[i][0] - now) for i in one_by_one
    }
    assert list(bulk) == list(one_by_one)  # the same order: oldest first
    while bulk:  # the heap pops in revoke-time order
        assert bulk.pop() == one_by_one.pop()


def test_ages_of_ids_and_a_digest_hello_without_the_id_list(
    consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from mingle_plugins.wire import compat

    state.revoked.add("old", now=time.monotonic() - 30)
    state.revoked.add("ahead", now=time.monotonic() + 50)  # a 5.3-5.6 sender's stamp ahead of our clock
    assert compat.revoked_ages(state.revoked, ["old", "ahead", "gone"]) == [30, 0, 0]
    assert compat.revoked_ages(state.revoked, ["old"]) == [30]
    step = _step(consumer, monkeypatch)
    hello = make_hello(step, Panel.data["hello"])
    pidbox = type("S", (), {"hostname": consumer.hostname, "consumer": consumer, "app": consumer.app})()
    with caplog.at_level("INFO", logger="celery.worker.control"):
        reply = hello(pidbox, "new@x", revoked=None, mingle={"v": 2, "want": "digest"})
    assert reply["revoked"] == [] and reply["mingle"]["count"] == 2
    assert reply["mingle"]["digest"] == protocol.digest(["old", "ahead"])
    assert "sync with new@x" in caplog.text  # stock's log line
    assert hello(pidbox, consumer.hostname, mingle={"v": 2, "want": "digest"}) is None  # itself
