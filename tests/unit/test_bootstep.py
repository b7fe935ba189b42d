"""The step's reply path with the real worker state, and plugins registered directly."""

from __future__ import annotations

import dataclasses
import inspect
import logging
import time
from typing import Any

import pytest
from celery.worker.consumer.mingle import Mingle as StockMingle

from mingle_plugins import MingleSettings, MingleSummary, RejectReply, Reply, hookimpl
from mingle_plugins.bootstep import Mingle

IDS = [f"id-{i}" for i in range(5)]


def test_keeps_the_stock_api() -> None:
    assert Mingle.label == StockMingle.label == "Mingle"
    assert Mingle.compatible_transports == StockMingle.compatible_transports
    assert [getattr(r, "__name__", r) for r in Mingle.requires] == ["Events"]
    for name in (
        "__init__",
        "compatible_transport",
        "start",
        "sync",
        "send_hello",
        "on_node_reply",
        "sync_with_node",
        "on_clock_event",
        "on_revoked_received",
    ):
        ours, stock = inspect.signature(getattr(Mingle, name)), inspect.signature(getattr(StockMingle, name))
        assert list(ours.parameters) == list(stock.parameters), name


def test_memory_transport_is_not_claimed(step: Mingle, caplog) -> None:
    assert step.driver_type == "memory" and step.enabled is False


def test_valid_list_reply_is_merged(step: Mingle, consumer: Any, state: Any) -> None:
    state.revoked.add("mine")
    step.on_node_reply(consumer, "n1@x", {"revoked": IDS, "clock": 40})
    assert set(state.revoked) == {"mine", *IDS}
    assert consumer.app.clock.value > 40


def test_valid_stamp_dict_reply_is_merged(step: Mingle, consumer: Any, state: Any) -> None:
    stamps = {i: [time.monotonic(), i] for i in IDS}  # as a 5.3-5.6 neighbour sends it
    step.on_node_reply(consumer, "n1@x", {"revoked": stamps, "clock": 3})
    assert set(state.revoked) == set(IDS)


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ([1, 2], "not a mapping"),
        ({"revoked": "abc", "clock": 1}, "not a list or dict"),
        ({"revoked": IDS, "clock": -1}, "not an integer"),
        ({"revoked": IDS, "clock": 10**40}, "mingle_max_clock"),
        ({"revoked": IDS, "clock": 1.5}, "not an integer"),
        ({"revoked": IDS, "clock": True}, "not an integer"),
        ({"error": "KeyError('x')"}, "error"),
        ({"revoked": IDS, "clock": 10**400}, "mingle_max_clock"),
    ],
)
def test_invalid_reply_is_rejected_whole(
    step: Mingle, consumer: Any, state: Any, reply: Any, reason: str, caplog
) -> None:
    state.revoked.add("mine")
    clock = consumer.app.clock.value
    with caplog.at_level(logging.WARNING), step.mingle_round(consumer) as rnd:
        rnd.reply("evil@x", reply)
    assert set(state.revoked) == {"mine"}
    assert consumer.app.clock.value == clock
    assert reason in rnd.summary.rejected["evil@x"]
    assert rnd.summary.nodes["evil@x"].status == "rejected"
    lines = [r.getMessage() for r in caplog.records if "evil@x" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("mingle: rejected the reply of evil@x")


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ({"revoked": [None, 3, "ok"], "clock": 1}, "not a string"),
        ({"revoked": ["ok", ""], "clock": 1}, "outside 1.."),
        ({"revoked": ["ok", "x" * 5000], "clock": 1}, "outside 1.."),
        ({"revoked": {"ok": [1.0, "ok"], "a": "later"}, "clock": 1}, "stamp"),
        ({"revoked": {"ok": [1.0, "ok"], "a": [10**400, "a"]}, "clock": 1}, "stamp"),
    ],
)
def test_an_invalid_id_is_dropped_alone(
    step: Mingle, consumer: Any, state: Any, reply: Any, reason: str, caplog
) -> None:
    state.revoked.add("mine")
    with caplog.at_level(logging.WARNING), step.mingle_round(consumer) as rnd:
        rnd.reply("n@x", reply)
    assert set(state.revoked) == {"mine", "ok"}
    assert rnd.summary.nodes["n@x"].status == "accepted" and rnd.summary.ids_invalid >= 1
    (line,) = [r.getMessage() for r in caplog.records if "invalid revoked ids" in r.getMessage()]
    assert reason in line and "the valid ids of those replies are kept" in line


def test_too_many_ids_is_rejected(step: Mingle, consumer: Any, state: Any) -> None:
    with step.mingle_round(consumer) as rnd:
        rnd.reply("big@x", {"revoked": [f"i{n}" for n in range(state.revoked.maxlen + 1)]})
    assert len(state.revoked) == 0 and "more than" in rnd.summary.rejected["big@x"]


class Transformer:
    @hookimpl
    def mingle_on_reply(self, reply: Reply) -> Reply | None:
        if reply.nodename.startswith("bad"):
            raise RejectReply("node not trusted")
        return dataclasses.replace(reply, ids=tuple(i for i in reply.ids if not i.startswith("drop")))


def test_on_reply_may_transform_and_reject(step: Mingle, consumer: Any, state: Any) -> None:
    step.pm.register(Transformer())
    with step.mingle_round(consumer) as rnd:
        rnd.reply("good@x", {"revoked": ["keep", "drop-1"], "clock": 1})
        rnd.reply("bad@x", {"revoked": ["nope"], "clock": 1})
    assert set(state.revoked) == {"keep"}
    assert rnd.summary.rejected == {"bad@x": "node not trusted"}


class BadTransformer:
    @hookimpl
    def mingle_on_reply(self, reply: Reply) -> Any:
        if reply.nodename.startswith("other"):
            return dataclasses.replace(reply, nodename="someone@else")
        return {"revoked": ["x"]}


def test_on_reply_result_is_checked_again(step: Mingle, consumer: Any, state: Any) -> None:
    step.pm.register(BadTransformer())
    with step.mingle_round(consumer) as rnd:
        rnd.reply("n@x", {"revoked": IDS})
        rnd.reply("other@x", {"revoked": IDS})
    assert len(state.revoked) == 0
    assert "not a Reply" in rnd.summary.rejected["n@x"]
    assert "changed the node name" in rnd.summary.rejected["other@x"]


class Raiser:
    @hookimpl
    def mingle_on_reply(self) -> None:
        raise RuntimeError("bug in plugin")

    @hookimpl
    def mingle_merge_revoked(self) -> Any:
        raise RuntimeError("merge bug")


def test_raising_on_reply_fails_closed_and_names_the_plugin(
    step: Mingle, consumer: Any, state: Any, caplog
) -> None:
    step.pm.register(Raiser(), name="raiser")
    with caplog.at_level(logging.ERROR), step.mingle_round(consumer) as rnd:
        rnd.reply("n@x", {"revoked": IDS})
    assert len(state.revoked) == 0
    assert "plugin 'raiser' raised RuntimeError('bug in plugin')" in rnd.summary.rejected["n@x"]
    assert any(
        "plugin 'raiser'" in r.getMessage() and "mingle_on_reply" in r.getMessage() for r in caplog.records
    )


def test_raising_policy_is_skipped_and_drops_nothing(step: Mingle, consumer: Any, state: Any) -> None:
    step.pm.register(Raiser(), name="raiser")
    step.on_revoked_received(consumer, IDS)
    assert set(state.revoked) == set(IDS)


class Wiper:
    @hookimpl
    def mingle_merge_revoked(self, consumer: Any) -> Any:
        consumer.controller.state.revoked.clear()
        return None

    @hookimpl
    def mingle_adjust_clock(self, consumer: Any) -> bool:
        consumer.app.clock.value = 0
        return True


def test_a_plugin_cannot_wipe_ids_or_move_the_clock_back(step: Mingle, consumer: Any, state: Any) -> None:
    state.revoked.add("mine")
    consumer.app.clock.adjust(100)
    step.pm.register(Wiper())
    step.sync_with_node(consumer, clock=5, revoked=IDS)
    assert "mine" in state.revoked and set(IDS) <= set(state.revoked)
    assert consumer.app.clock.value >= 100


class Sleeper:
    calls = 0

    @hookimpl
    def mingle_adjust_clock(self) -> None:
        Sleeper.calls += 1
        time.sleep(30)


def test_a_hanging_plugin_is_abandoned(step: Mingle, consumer: Any, caplog) -> None:
    step.runner.timeout = 0.3
    step.pm.register(Sleeper(), name="sleeper")
    before = consumer.app.clock.value
    started = time.monotonic()
    with caplog.at_level(logging.ERROR):
        step.on_clock_event(consumer, 50)
        step.on_clock_event(consumer, 60)  # not called again
    assert time.monotonic() - started < 2
    assert Sleeper.calls == 1
    assert consumer.app.clock.value > max(before, 60)
    assert any("plugin 'sleeper' did not return within 0.3s" in r.getMessage() for r in caplog.records)


class Neighbours:
    def __init__(self, replies: Any) -> None:
        self.replies = replies
        self.summaries: list[MingleSummary] = []

    @hookimpl
    def mingle_send_hello(self, consumer: Any, revoked: Any, timeout: float, settings: MingleSettings) -> Any:
        assert isinstance(settings, MingleSettings)
        assert timeout == 1.0
        return self.replies

    @hookimpl
    def mingle_sync_complete(self, summary: MingleSummary) -> None:
        self.summaries.append(summary)


def test_sync_summary(step: Mingle, consumer: Any, state: Any, caplog) -> None:
    state.revoked.add("id-0")
    plugin = Neighbours(
        {
            "me@unit": None,
            "a@x": {"revoked": IDS[:3], "clock": 7},
            "b@x": {"revoked": IDS, "clock": 9},
            "c@x": {"revoked": "not ids"},
            "d@x": None,
        }
    )
    step.pm.register(plugin)
    with caplog.at_level(logging.INFO):
        step.sync(consumer)
    (summary,) = plugin.summaries
    assert summary is step.last_summary
    assert summary.neighbours == ["a@x", "b@x", "c@x"]
    assert summary.accepted == ["a@x", "b@x"]
    assert summary.merged_from == ["a@x", "b@x"]
    assert list(summary.rejected) == ["c@x"]
    assert (summary.ids_received, summary.ids_merged, summary.ids_dropped) == (8, 4, 0)
    assert (summary.nodes["a@x"].ids_merged, summary.nodes["b@x"].ids_merged) == (2, 2)
    assert (summary.revoked_before, summary.revoked_after) == (1, 5)
    assert summary.clock_after > 9
    messages = [r.getMessage() for r in caplog.records if r.getMessage().startswith("mingle:")]
    assert messages[0] == "mingle: searching for neighbors"
    assert "mingle: sync with 3 nodes" in messages
    assert messages[-1].startswith(
        "mingle: summary: 3 neighbours, 2 accepted, 4 ids merged, 0 dropped by policy, 1 rejected"
    )


def test_send_hello_of_wrong_type_is_ignored(step: Mingle, consumer: Any, caplog) -> None:
    step.pm.register(Neighbours(["a", "b"]))
    assert step.send_hello(consumer) == {}
    assert any("not a mapping" in r.getMessage() for r in caplog.records)


def test_subclass_overrides_still_work(consumer: Any, state: Any, monkeypatch) -> None:
    monkeypatch.setenv("CELERY_MINGLE_PLUGINS", "")
    seen: list[Any] = []

    class Mine(Mingle):
        compatible_transports = {"memory"}

        def on_revoked_received(self, c: Any, revoked: Any) -> None:
            seen.append(revoked)

    step = Mine(consumer)
    assert step.enabled is True
    step.on_node_reply(consumer, "n@x", {"revoked": IDS})
    assert seen == [IDS] and len(state.revoked) == 0


class Tuner:
    def __init__(self, count: Any) -> None:
        self.count = count
        self.seen: list[Any] = []

    @hookimpl
    def mingle_tune_hello(self, driver_type: str, options: Any) -> None:
        options.timeout = 3.0
        options.quiet_window = "soon"  # not a number: ignored, the setting stays

    @hookimpl
    def mingle_expected_replies(self, consumer: Any, driver_type: str) -> Any:
        return self.count

    @hookimpl
    def mingle_send_hello(self, options: Any) -> Any:
        self.seen.append(options)
        return {"n@x": {"clock": 1}}


def test_tune_hello_and_expected_replies(consumer: Any, monkeypatch, caplog) -> None:
    monkeypatch.setenv("CELERY_MINGLE_PLUGINS", "")
    consumer.app.conf.mingle_expect_replies = True
    consumer.app.conf.mingle_quiet_window = 0.05
    step = Mingle(consumer)
    tuner = Tuner(2)
    step.pm.register(tuner)
    assert step.send_hello(consumer) == {"n@x": {"clock": 1}}
    (options,) = tuner.seen
    assert (options.timeout, options.quiet_window, options.expected_replies) == (3.0, 0.05, 2)
    assert any("quiet_window='soon'" in r.getMessage() for r in caplog.records)

    tuner.count = 0  # the broker says nobody listens: no hello at all
    assert step.send_hello(consumer) == {}
    assert len(tuner.seen) == 1

    tuner.count = "3"  # wrong type: logged, count unknown
    step.send_hello(consumer)
    assert tuner.seen[-1].expected_replies is None
    assert any("returned '3'" in r.getMessage() for r in caplog.records)
