"""Replies from elsewhere than the broker (``mingle_extra_replies``) and the ``revoke`` command seen
by plugins (``mingle_on_revoke``): the same path as a neighbour's reply, no special case."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from types import SimpleNamespace
from typing import Any

import pytest
from celery.worker.control import Panel

from mingle_plugins import Reply, hookimpl
from mingle_plugins.answering.control import make_revoke
from mingle_plugins.bootstep import Mingle


class Store:
    def __init__(self, answer: Mapping[str, Any] | None) -> None:
        self.answer = answer

    @hookimpl
    def mingle_extra_replies(self) -> Mapping[str, Any] | None:
        return self.answer


class Hello:
    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies

    @hookimpl
    def mingle_send_hello(self) -> Any:
        return self.replies


def _step(consumer: Any, monkeypatch: pytest.MonkeyPatch, **conf: Any) -> Mingle:
    monkeypatch.setenv("CELERY_MINGLE_PLUGINS", "")
    consumer.app.conf.update(conf)
    return Mingle(consumer)


def test_a_store_answers_like_a_neighbour_also_when_alone(
    consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    step = _step(consumer, monkeypatch)
    step.pm.register(Hello({}))
    step.pm.register(Store({"store@db": {"revoked": ["a", "b"], "clock": None}}))
    step.sync(consumer)
    assert set(state.revoked) == {"a", "b"}
    summary = step.last_summary
    assert summary is not None
    assert summary.accepted == ["store@db"] and summary.ids_merged == 2
    assert summary.sources_unreached == []


def test_a_store_reply_goes_through_trust_and_policies(
    consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class NoStore:
        @hookimpl
        def mingle_merge_revoked(self, reply: Reply, ids: tuple[str, ...]) -> Iterable[str]:
            return () if reply.nodename.startswith("store@") else ids

    step = _step(consumer, monkeypatch, mingle_trusted_nodes=["w*@*", "store@*"])
    step.pm.register(Hello({"w1@x": {"revoked": ["1"]}}))
    step.pm.register(Store({"store@db": {"revoked": ["s"]}, "evil@db": {"revoked": ["e"]}}))
    step.pm.register(NoStore(), name="no-store")
    step.sync(consumer)
    summary = step.last_summary
    assert summary is not None
    assert set(state.revoked) == {"1"}
    assert summary.dropped_by == {"no-store": 1}
    assert "evil@db" in summary.rejected  # not in mingle_trusted_nodes


def test_an_unreached_store_is_in_the_summary_and_the_mingle_goes_on(
    consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    step = _step(consumer, monkeypatch)
    step.pm.register(Hello({"w1@x": {"revoked": ["1"]}}))
    step.pm.register(Store({"store@db": None, "w1@x": {"revoked": ["forged"]}, "me@unit": {}}))
    step.sync(consumer)
    summary = step.last_summary
    assert summary is not None
    assert summary.sources_unreached == ["store@db"]
    assert set(state.revoked) == {"1"}  # a name already answered is not taken twice
    assert summary.as_dict()["sources_unreached"] == ["store@db"]
    assert sum("already answered" in r.getMessage() for r in caplog.records) == 2


class Broken(Mapping[str, Any]):
    def __getitem__(self, key: str) -> Any:
        raise RuntimeError("broken")

    def __iter__(self) -> Iterator[str]:
        raise RuntimeError("broken")

    def __len__(self) -> int:
        return 1


def test_a_bad_answer_is_ignored(consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    step = _step(consumer, monkeypatch)
    step.pm.register(Hello({"w1@x": {"revoked": ["1"]}}))
    step.pm.register(Store(Broken()), name="broken")
    step.sync(consumer)  # the mingle goes on with the neighbours
    assert set(state.revoked) == {"1"}
    state.revoked.clear()

    step = _step(consumer, monkeypatch)
    step.pm.register(Hello({}))
    step.pm.register(Store(["not", "a", "mapping"]))  # type: ignore[arg-type]
    step.pm.register(Store({"store@db": {"revoked": "not-a-list"}}), name="bad-body")
    step.sync(consumer)
    summary = step.last_summary
    assert summary is not None
    assert "store@db" in summary.rejected and len(state.revoked) == 0


def test_revoke_command_is_seen_by_plugins(
    consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[tuple[str, ...], bool]] = []

    class Recorder:
        @hookimpl
        def mingle_on_revoke(self, ids: tuple[str, ...], terminate: bool) -> None:
            seen.append((ids, terminate))

    step = _step(consumer, monkeypatch, mingle_max_id_length=8)
    step.pm.register(Recorder())
    revoke = make_revoke(step, Panel.data["revoke"])
    pidbox_state = SimpleNamespace(consumer=consumer, app=consumer.app, hostname=consumer.hostname)
    answer = revoke(pidbox_state, ["x1", "x2", "x1", "far-too-long-id"])
    revoke(pidbox_state, "y")
    assert answer == {
        "error": "refused 1 invalid task ids (revoked id of length 15 is outside 1..8); "
        "revoked the other 2: x1, x2"
    }
    assert revoke(pidbox_state, "") == {
        "error": "refused 1 invalid task ids (revoked id of length 0 is outside 1..8); nothing revoked"
    }
    assert seen == [(("x1", "x2"), False), (("y",), False)]
    assert {"x1", "x2", "y"} <= set(state.revoked)


def test_with_keys_a_store_needs_no_reply_signature_but_a_neighbour_does(
    consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An extra source is the plugin's own (source "extra"): signatures prove who answered on
    the broker, so an unsigned neighbour is rejected and the unsigned store body is merged."""
    seen: list[str] = []

    class Sources:
        @hookimpl
        def mingle_on_reply(self, reply: Reply) -> None:
            seen.append(f"{reply.nodename}:{reply.source}")

    step = _step(consumer, monkeypatch, mingle_hmac_keys=["k" * 32])
    step.pm.register(Hello({"w1@x": {"revoked": ["unsigned"]}}))
    step.pm.register(Store({"store@db": {"revoked": ["s"]}}))
    step.pm.register(Sources(), name="sources")
    step.sync(consumer)
    summary = step.last_summary
    assert summary is not None
    assert set(state.revoked) == {"s"}
    assert "unsigned reply" in summary.rejected["w1@x"]
    assert seen == ["store@db:extra"]


class Status:
    def __init__(self, value: Any) -> None:
        self.value = value

    @hookimpl
    def mingle_plugin_status(self, consumer: Any, settings: Any) -> Any:
        if isinstance(self.value, Exception):
            raise self.value
        return self.value


def test_plugin_status_in_the_status_reply_and_faults_counted(
    consumer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mingle_plugins.answering.control import status_reply
    from mingle_plugins.client.status import plugin_problems

    step = _step(consumer, monkeypatch)
    step.pm.register(Status({"reachable": False, "problem": "store down"}), name="store")
    step.pm.register(Status(["not", "a", "mapping"]), name="wrong")
    step.pm.register(Status(RuntimeError("boom")), name="raises")
    step.pm.register(Status(None), name="quiet")
    reply = status_reply(step, consumer)
    assert reply["plugin_status"] == {"store": {"reachable": False, "problem": "store down"}}
    kinds = {(f["plugin"], f["hook"], f["kind"]) for f in reply["faults"]}
    assert kinds == {
        ("wrong", "mingle_plugin_status", "wrong return"),
        ("raises", "mingle_plugin_status", "raised"),
    }
    assert plugin_problems({"w@x": reply}) == ["w@x: plugin 'store': store down"]
