"""The plugin contract: one typed reply on every path, explicit policies, one call per implementation."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterable
from types import SimpleNamespace
from typing import Any

import pytest
from celery.worker.control import Panel

import mingle_plugins
from mingle_plugins import MingleSettings, MingleSummary, Reply, SettingsRegistry, hookimpl, hookspecs
from mingle_plugins.answering.control import make_revoke, status_reply
from mingle_plugins.answering.hello import make_hello
from mingle_plugins.bootstep import Mingle
from mingle_plugins.plugins.config import MingleConfig, declare_settings

PROD = [f"prod-id-{i}" for i in range(3)]
DEV = [f"dev-id-{i}" for i in range(4)]


class ProdOnly:
    """The 19-line policy of the issue: merge only what nodes named prod-* send."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, int]] = []

    @hookimpl
    def mingle_merge_revoked(self, reply: Reply, ids: tuple[str, ...]) -> Iterable[str]:
        self.seen.append((reply.nodename, reply.source, len(ids)))
        return ids if reply.nodename.startswith("prod-") else ()


class Neighbours:
    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies
        self.summaries: list[MingleSummary] = []

    @hookimpl
    def mingle_send_hello(self) -> Any:
        return self.replies

    @hookimpl
    def mingle_sync_complete(self, summary: MingleSummary) -> None:
        self.summaries.append(summary)


def _step(consumer: Any, monkeypatch: pytest.MonkeyPatch, **conf: Any) -> Mingle:
    monkeypatch.setenv("CELERY_MINGLE_PLUGINS", "")
    consumer.app.conf.update(conf)
    return Mingle(consumer)


@pytest.mark.parametrize("merge", ["stock", "bulk"])
def test_policy_sees_the_node_on_the_asking_side(
    consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch, merge: str
) -> None:
    step = _step(consumer, monkeypatch, mingle_merge=merge)
    policy, hello = ProdOnly(), Neighbours({"prod-1@x": {"revoked": PROD}, "dev-1@x": {"revoked": DEV}})
    step.pm.register(hello)
    step.pm.register(policy, name="prod-only")
    state.revoked.add("mine")

    step.sync(consumer)

    assert set(state.revoked) == {"mine", *PROD}
    assert sorted(policy.seen) == [("dev-1@x", "reply", 4), ("prod-1@x", "reply", 3)]
    (summary,) = hello.summaries
    assert summary.accepted == ["prod-1@x", "dev-1@x"] and summary.merged_from == ["prod-1@x"]
    assert (summary.ids_received, summary.ids_merged, summary.ids_dropped) == (7, 3, 4)
    assert summary.dropped_by == {"prod-only": 4}
    dev = summary.nodes["dev-1@x"]
    assert (dev.ids_received, dev.ids_kept, dev.ids_merged, dev.dropped_by) == (4, 0, 0, {"prod-only": 4})


def test_policy_sees_the_node_on_the_answering_side(
    consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    step = _step(consumer, monkeypatch)
    policy = ProdOnly()
    step.pm.register(policy, name="prod-only")
    hello = make_hello(step, Panel.data["hello"])
    pidbox_state = type("S", (), {"hostname": consumer.hostname, "consumer": consumer, "app": consumer.app})()

    with caplog.at_level(logging.INFO):
        hello(pidbox_state, "dev-2@x", revoked=DEV)
        reply = hello(pidbox_state, "prod-2@x", revoked=PROD)

    assert set(state.revoked) == set(PROD)
    assert policy.seen == [("dev-2@x", "request", 4), ("prod-2@x", "request", 3)]
    assert set(reply["revoked"]) == set(PROD)  # the stock answer, after the merge
    assert any(
        "hello from dev-2@x: 4 ids received, 0 merged, 4 dropped" in r.getMessage() for r in caplog.records
    )


def test_policies_combine_and_cannot_remove_known_ids(
    consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    class KeepSome:
        @hookimpl
        def mingle_merge_revoked(self, consumer: Any, ids: tuple[str, ...]) -> list[str]:
            consumer.controller.state.revoked.discard("mine")  # out of contract: put back
            return [*ids[:2], "not-in-the-reply"]

    step = _step(consumer, monkeypatch)
    step.pm.register(KeepSome(), name="keep-some")
    step.pm.register(ProdOnly(), name="prod-only")
    state.revoked.add("mine")
    with step.mingle_round(consumer) as rnd:
        rnd.reply("prod-3@x", {"revoked": PROD})
    assert set(state.revoked) == {"mine", *PROD[:2]}
    assert rnd.summary.nodes["prod-3@x"].dropped_by == {"keep-some": 1}


# -- one call per implementation, for every hook ---------------------------------------

EXPECTED_CALLS = {  # the scenario below: one sync with two good replies, a revoke received, one sent
    "mingle_add_settings": 1,
    "mingle_transport_compatible": 1,
    "mingle_tune_hello": 1,
    "mingle_expected_replies": 1,
    "mingle_send_hello": 1,
    "mingle_extra_replies": 1,
    "mingle_on_reply": 2,
    "mingle_adjust_clock": 2,
    "mingle_merge_revoked": 2,
    "mingle_sync_complete": 1,
    "mingle_on_revoke": 1,
    "mingle_record_revoke": 1,
    "mingle_plugin_status": 1,
}


class CountEverything:
    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()


def _counting_plugin() -> CountEverything:
    plugin = CountEverything()
    for name in hookspecs.__all__:
        setattr(plugin, name, hookimpl(tryfirst=True)(_counter(plugin, name)))
    return plugin


def _counter(plugin: CountEverything, name: str) -> Any:
    def hook() -> None:
        plugin.calls[name] += 1

    hook.__name__ = name
    return hook


def _raising_plugin(hook: str) -> Any:
    def boom() -> None:
        raise RuntimeError(f"boom in {hook}")

    boom.__name__ = hook
    plugin = type("Raiser", (), {})()
    setattr(plugin, hook, hookimpl(boom))
    return plugin


def test_every_hook_is_in_the_scenario() -> None:
    assert set(EXPECTED_CALLS) == set(hookspecs.__all__)


@pytest.mark.parametrize("hook", hookspecs.__all__)
def test_a_raising_implementation_is_skipped_alone(
    hook: str, consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    step = _step(consumer, monkeypatch, mingle_expect_replies=True)
    step.pm.register(Neighbours({"a@x": {"revoked": ["1"], "clock": 3}, "b@x": {"revoked": ["2"]}}))
    counter = _counting_plugin()
    step.pm.register(counter, name="counter")
    step.pm.register(_raising_plugin(hook), name="raiser")

    with caplog.at_level(logging.ERROR):
        declare_settings(step.runner, SettingsRegistry())
        step.compatible_transport(consumer.app)
        step.sync(consumer)
        revoke = make_revoke(step, Panel.data["revoke"])
        revoke(SimpleNamespace(consumer=consumer, app=consumer.app, hostname=consumer.hostname), "3")
        config = MingleConfig(step.settings, step.pm, step.runner, SettingsRegistry(), ())
        outcome = mingle_plugins.revoke(consumer.app, ["4", "4", "5"], config=config)  # from a client
        status = status_reply(step, consumer)  # a mingle_status command
    assert outcome.ids == ("4", "5")
    assert status["plugin_status"] == {}  # the counter returns None, the raiser is skipped

    expected = dict(EXPECTED_CALLS)
    if hook == "mingle_on_reply":  # a broken check fails closed: the rejected replies go no further
        expected.update(mingle_adjust_clock=0, mingle_merge_revoked=0)
    assert +counter.calls == +Counter(expected)  # each implementation once per call, never twice
    blamed = [r.getMessage() for r in caplog.records if "plugin 'raiser' raised" in r.getMessage()]
    if (
        hook == "mingle_transport_compatible"
    ):  # decided by mingle_plugins.plugins.diagnostics, one line a call
        assert len(blamed) == EXPECTED_CALLS[hook] and all(hook in line for line in blamed)
    else:  # logged once (ERROR), counted at every call
        assert len(blamed) == 1 and hook in blamed[0]
        (fault,) = [f for f in step.runner.faults.values() if f.hook == hook]
        assert (fault.kind, fault.count) == ("raised", EXPECTED_CALLS[hook])
    if hook == "mingle_on_reply":  # a broken check fails closed: the replies are not merged
        assert set(step.last_summary.rejected) == {"a@x", "b@x"}  # type: ignore[union-attr]
        assert set(state.revoked) == {"3"}
    else:
        assert set(state.revoked) == {"1", "2", "3"}  # the revoke stands, whatever a plugin did


def test_a_tune_hello_runs_once(consumer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    class Doubler:
        @hookimpl
        def mingle_tune_hello(self, options: Any) -> None:
            options.timeout *= 2

    step = _step(consumer, monkeypatch)
    step.pm.register(Doubler())
    step.pm.register(_raising_plugin("mingle_tune_hello"), name="raiser")
    assert step.hello_options(consumer).timeout == 2.0


def test_settings_reach_every_hook(consumer: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[MingleSettings] = []

    class Looker:
        @hookimpl
        def mingle_sync_complete(self, settings: MingleSettings) -> None:
            seen.append(settings)

    step = _step(consumer, monkeypatch)
    step.pm.register(Looker())
    step.pm.register(Neighbours({}))
    step.sync(consumer)
    assert seen == [step.settings]
