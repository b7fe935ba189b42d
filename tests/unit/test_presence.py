"""The presence count with fakes: rule, state, broker calls (RabbitMQ: integration/test_presence.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery.worker.control import Panel
from kombu.transport.pyamqp import Channel as AmqpChannel

from mingle_plugins.answering.hello import make_hello
from mingle_plugins.hello.presence import (
    MAX_NAMED,
    REVERIFY_AFTER,
    VERIFY_AFTER,
    PresenceCount,
    PresenceState,
    PresenceStep,
    SideChannel,
    count_consumers,
    queue_name,
)
from mingle_plugins.settings import load_settings
from mingle_plugins.wire.compat import CONTROL_STEP


def present(*uncounted: str, more: bool = False) -> dict[str, Any]:
    ext: dict[str, Any] = {"v": 2, "present_v2": True}
    if uncounted:
        ext["uncounted"] = list(uncounted)
    if more:
        ext["uncounted_more"] = True
    return {"clock": 1, "revoked": [], "mingle": ext}


STOCK: dict[str, Any] = {"clock": 1, "revoked": []}


class Listening:
    """``listening(node)`` from a dict; records who was asked."""

    def __init__(self, **alive: bool | None) -> None:
        self.alive = {k.replace("_", "@"): v for k, v in alive.items()}
        self.asked: list[str] = []

    def __call__(self, node: str) -> bool | None:
        self.asked.append(node)
        return self.alive.get(node, False)


# -- the rule ------------------------------------------------------------------------------


def test_all_counted_neighbours_replied_ends_without_the_window() -> None:
    rule = PresenceCount(2, Listening(), own="me@x")
    replies: dict[str, Any] = {"a@x": present()}
    assert rule.phase(replies) == "wait"
    replies["me@x"] = present()  # its own reply never counts
    assert rule.phase(replies) == "wait"
    replies["b@x"] = present()
    assert rule.phase(replies) == "done"


def test_a_named_listening_node_is_awaited_and_checked_once() -> None:
    listening = Listening(stock_x=True)
    rule = PresenceCount(1, listening)
    replies: dict[str, Any] = {"a@x": present("stock@x")}
    assert rule.phase(replies) == "wait"
    assert rule.phase(replies) == "wait"
    replies["stock@x"] = STOCK
    assert rule.phase(replies) == "done"
    assert listening.asked == ["stock@x"]
    assert rule.awaited == ["stock@x"]


def test_a_named_node_that_replied_already_is_not_checked() -> None:
    listening = Listening()
    rule = PresenceCount(1, listening)
    assert rule.phase({"stock@x": STOCK, "a@x": present("stock@x")}) == "done"
    assert listening.asked == [] and rule.awaited == ["stock@x"]


def test_a_named_node_that_does_not_listen_is_not_awaited() -> None:
    rule = PresenceCount(1, Listening(gone_x=False))
    assert rule.phase({"a@x": present("gone@x")}) == "done"


def test_names_of_counted_nodes_and_its_own_are_not_checked() -> None:
    listening = Listening()
    rule = PresenceCount(2, listening, own="me@x")
    assert rule.phase({"a@x": present("b@x", "me@x"), "b@x": present("a@x")}) == "done"
    assert listening.asked == []


@pytest.mark.parametrize(
    ("replies", "reason"),
    [
        ({"a@x": present(), "stock@x": STOCK}, "stock@x replied, neither counted nor named"),
        ({"a@x": present("odd@x")}, "odd@x could not be checked"),
        ({"a@x": present(more=True)}, "list of uncounted nodes was cut"),
    ],
    ids=["unknown-reply", "check-failed", "list-cut"],
)
def test_anything_unknown_falls_back_to_the_quiet_window(replies: dict[str, Any], reason: str) -> None:
    rule = PresenceCount(1, Listening(odd_x=None))
    assert rule.phase(replies) == "window"
    assert reason in rule.unsure


def test_too_many_names_or_a_cut_list_are_not_checked() -> None:
    listening = Listening()
    many = [f"s{i}@x" for i in range(MAX_NAMED)]
    rule = PresenceCount(2, listening)
    assert rule.phase({"a@x": present(*many[:20]), "b@x": present(*many[10:], "s99@x")}) == "window"
    assert "more than 32 uncounted nodes named" in rule.unsure and listening.asked == []
    rule = PresenceCount(1, listening)
    assert rule.phase({"a@x": present("s1@x", more=True)}) == "window" and listening.asked == []


def test_a_reply_that_comes_in_during_a_check_is_judged() -> None:
    replies: dict[str, Any] = {"a@x": present("stock@x")}

    def listening(node: str) -> bool:
        replies["stock@x"] = STOCK  # delivered while the passive declare waited
        return True

    assert PresenceCount(1, listening).phase(replies) == "done"


def test_a_counted_reply_without_the_flag_is_not_counted() -> None:
    rule = PresenceCount(1, Listening())
    body = {"clock": 1, "revoked": [], "mingle": {"v": 2, "present_v2": "yes", "uncounted": "a@x"}}
    assert rule.phase({"a@x": body}) == "wait"


# -- the state ------------------------------------------------------------------------------


def test_state_names_the_neighbours_that_are_not_counted() -> None:
    state = PresenceState("q")
    state.saw_request("stock@x", None)
    state.saw_request("default@x", {"v": 2})
    state.saw_request("fast@x", {"v": 2, "presence_v2": True})
    state.saw_request("not a name", None)
    state.saw_replies(
        {"old@x": STOCK, "counted@x": present(), "me@x": STOCK, "<malformed reply 1>": {}}, "me@x"
    )
    assert list(state.uncounted) == ["stock@x", "default@x", "old@x"]
    state.saw_request("stock@x", {"presence_v2": True})  # the name now belongs to a counted worker
    assert "stock@x" not in state.uncounted
    assert state.reply_fields() == {}  # not consuming the queue: says nothing


def test_state_forgets_a_named_node_that_stopped_listening() -> None:
    state = PresenceState("q")
    state.saw_request("gone@x", None)  # a stock worker that stopped soon after its hello
    state.saw_request("alive@x", None)
    state.saw_request("odd@x", None)
    state.saw_replies({"replied@x": STOCK}, "me@x")  # it replied: it listens
    listening = Listening(alive_x=True, odd_x=None)
    start = state.uncounted["gone@x"]
    state.verify(listening, now=start + VERIFY_AFTER - 1)
    assert listening.asked == []  # too early: it may still be in its own mingle
    state.verify(listening, now=start + VERIFY_AFTER + 1)
    assert sorted(listening.asked) == ["alive@x", "gone@x", "odd@x"]
    assert list(state.uncounted) == ["alive@x", "odd@x", "replied@x"] and not state.unverified
    listening.asked.clear()
    state.verify(listening, now=start + VERIFY_AFTER + 2)
    assert listening.asked == []  # known to listen: asked again only after REVERIFY_AFTER
    state.verify(listening, now=start + REVERIFY_AFTER + VERIFY_AFTER + 2)
    assert sorted(listening.asked) == ["alive@x", "odd@x", "replied@x"]
    assert list(state.uncounted) == ["alive@x", "odd@x"]


def test_answer_fields_check_the_names_due_after_the_reply(consumer: Any) -> None:
    state = PresenceState("q")
    state._consumer = object()  # as after join
    state.saw_request("gone@x", None)
    state.uncounted["gone@x"] -= VERIFY_AFTER + 1
    state.saw_request("new@x", None)
    exchange = consumer.app.conf.control_exchange
    consumer.connection = fake_connection({f"gone@x.{exchange}.pidbox": Refused(404)})
    soon: list[Any] = []
    consumer.hub = SimpleNamespace(call_soon=lambda fn, *args: soon.append((fn, args)))
    # The reply names both; the check runs after it, in the event loop, once however many hellos.
    assert state.answer_fields(consumer) == {"present_v2": True, "uncounted": ["gone@x", "new@x"]}
    assert state.answer_fields(consumer)["uncounted"] == ["gone@x", "new@x"]
    assert len(soon) == 1 and consumer.connection.channels == []
    fn, args = soon.pop()
    fn(*args)
    assert consumer.connection.channels[0].declared == [(f"gone@x.{exchange}.pidbox", True)]
    assert consumer.connection.channels[0].closed
    assert state.answer_fields(consumer)["uncounted"] == ["new@x"]
    consumer.hub = None  # no event loop (a green pool): nothing checked
    state.uncounted["new@x"] -= VERIFY_AFTER + 1
    assert state.answer_fields(consumer)["uncounted"] == ["new@x"] and not soon


def test_state_keeps_a_bounded_list_and_says_when_it_was_cut() -> None:
    state = PresenceState("q")
    for i in range(MAX_NAMED + 3):
        state.saw_request(f"n{i}@x", None)
    state._consumer = object()  # as after join
    fields = state.reply_fields()
    assert fields["present_v2"] is True and fields["uncounted_more"] is True
    assert fields["uncounted"] == [f"n{i}@x" for i in range(3, MAX_NAMED + 3)]


def test_state_without_presence_keeps_nothing() -> None:
    state = PresenceState(None)
    state.saw_request("stock@x", None)
    state.saw_replies({"old@x": STOCK}, "me@x")
    assert not state.enabled and not state.uncounted


# -- the broker calls, with a fake connection ------------------------------------------------


class FakeChannel:
    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.is_open = True
        self.closed = False
        self.declared: list[tuple[str, bool]] = []

    def queue_declare(self, queue: str, passive: bool = False) -> tuple[str, int, int]:
        self.declared.append((queue, passive))
        answer = self.answers[queue]
        if isinstance(answer, Exception):
            raise answer
        return queue, 0, answer

    def close(self) -> None:
        self.closed = True


class Refused(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"code {code}")
        self.reply_code = code


class FakeClone:
    """The connection of :func:`declare_apart`: records what it declared."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        self.parent, self.kwargs = parent, kwargs
        self.closed = False

    def __enter__(self) -> FakeClone:
        return self

    def __exit__(self, *exc: object) -> None:
        self.closed = True

    def ensure_connection(self, **kwargs: Any) -> None:
        if self.parent.refuse_apart is not None:
            raise self.parent.refuse_apart

    def channel(self) -> Any:
        chan = FakeChannel({})
        self.parent.apart.append(chan)
        return chan

    def default_channel(self) -> Any:  # pragma: no cover - kombu's API, unused here
        return self.channel()


def fake_connection(answers: dict[str, Any], driver_type: str = "amqp") -> Any:
    channels: list[FakeChannel] = []
    conn = SimpleNamespace(
        channels=channels,
        transport=SimpleNamespace(driver_type=driver_type),
        apart=[],
        clones=[],
        refuse_apart=None,
    )

    def channel() -> FakeChannel:
        channels.append(FakeChannel(answers))
        return channels[-1]

    def clone(**kwargs: Any) -> FakeClone:
        conn.clones.append(FakeClone(conn, **kwargs))
        return conn.clones[-1]

    conn.channel, conn.clone = channel, clone
    return conn


def test_passive_declares_on_a_side_channel() -> None:
    conn = fake_connection(
        {"q": 3, "missing": Refused(404), "exclusive": Refused(405), "denied": Refused(403)}
    )
    side = SideChannel(conn)
    assert side.consumers("q") == 3
    assert side.consumers("missing") == 0
    assert side.consumers("exclusive") == 1  # another connection's exclusive queue: its owner lives
    assert len(conn.channels) == 1 and conn.channels[0].declared[0] == ("q", True)
    assert side.consumers("denied") is None  # not said: the caller falls back to the window
    assert conn.channels[0].closed
    assert side.consumers("q") == 3 and len(conn.channels) == 2  # a new channel after a failure
    side.close()
    assert conn.channels[1].closed


def test_count_consumers_never_raises() -> None:
    def broken() -> Any:
        raise ConnectionResetError("gone")

    assert count_consumers(SimpleNamespace(channel=broken), "q") is None
    conn = fake_connection({"q": 2})
    assert count_consumers(conn, "q") == 2 and conn.channels[0].closed


class FakeConsumer:
    def __init__(self, channel: Any, queues: list[Any], **kwargs: Any) -> None:
        self.channel, self.queues, self.kwargs = channel, queues, kwargs
        self.cancelled = False

    def consume(self) -> None:
        if self.channel.answers.get("fail"):
            raise Refused(403)

    def cancel(self) -> None:
        self.cancelled = True


def record_declare(self: Any, *args: Any, **kwargs: Any) -> None:
    """``Queue.declare`` on a :class:`FakeChannel`: the queue is recorded."""
    self.channel.declared_queues = [*getattr(self.channel, "declared_queues", []), self]


def test_join_and_leave(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr("mingle_plugins.hello.presence.Consumer", FakeConsumer)
    monkeypatch.setattr("mingle_plugins.hello.presence.Queue.declare", record_declare, raising=False)
    state = PresenceState("ex.mingle.presence.v2")
    assert not state.join(fake_connection({}, driver_type="redis"))
    # Missing (404 on the passive declare): declared on a connection of its own, then consumed
    # on a channel of the consumer connection without a declare.
    conn = fake_connection({"ex.mingle.presence.v2": Refused(404)})
    assert state.join(conn) and state.present
    assert len(conn.clones) == 1 and conn.clones[0].closed
    (apart,) = conn.apart
    declared = apart.declared_queues[0]
    assert (declared.name, declared.durable, declared.auto_delete, declared.exclusive) == (
        "ex.mingle.presence.v2",
        True,
        True,
        False,
    )
    arguments = AmqpChannel.prepare_queue_arguments(None, declared.queue_arguments, expires=declared.expires)
    assert arguments == {"x-expires": 60000, "x-queue-type": "classic"}
    assert apart.closed
    consumer = state._consumer
    queue = consumer.queues[0]
    assert queue.name == "ex.mingle.presence.v2" and queue.no_declare is True
    assert consumer.kwargs["no_ack"] is True
    assert conn.channels[0].declared == [("ex.mingle.presence.v2", True)] and conn.channels[0].closed
    state.leave(conn)
    assert consumer.cancelled and conn.channels[1].closed and not state.present
    state.leave(conn)  # twice: nothing to do
    # It exists: no connection of its own.
    there = fake_connection({"ex.mingle.presence.v2": 2})
    assert state.join(there) and not there.clones
    state.leave(there)
    with caplog.at_level("INFO", "mingle_plugins"):
        failing = fake_connection({"ex.mingle.presence.v2": 0, "fail": True})
        assert not state.join(failing)
        refused = fake_connection({"ex.mingle.presence.v2": Refused(404)})
        refused.refuse_apart = Refused(541)  # the broker closes that connection: only that one
        assert not state.join(refused)
    assert "mingle: cannot join the presence queue ex.mingle.presence.v2" in caplog.text
    assert "code 541" in caplog.text and refused.clones[0].closed
    assert len(refused.channels) == 1  # the passive declare only: nothing else on the consumer's
    assert failing.channels[1].closed and not state.present


def test_the_step_is_included_with_presence_and_remote_control() -> None:
    mingle = SimpleNamespace(presence=PresenceState("q"))
    control = object()

    def parent(included: list[Any], state: PresenceState) -> Any:
        mingle.presence = state
        steps = {"mingle_plugins.bootstep.Mingle": mingle, CONTROL_STEP: control}
        return SimpleNamespace(blueprint=SimpleNamespace(steps=steps), steps=included)

    step = PresenceStep(parent([control], PresenceState("q")))
    assert step.include_if(parent([control], PresenceState("q")))
    assert not step.include_if(parent([], PresenceState("q")))  # no remote control: no hello answered
    assert not step.include_if(parent([control], PresenceState(None)))


# -- settings, options, the answering side -------------------------------------------------


def test_fast_profile_takes_part_unless_told_not_to() -> None:
    assert load_settings({"mingle_profile": "fast"}, environ={})[0].presence is True
    assert (
        load_settings({"mingle_profile": "fast", "mingle_presence": False}, environ={})[0].presence is False
    )
    assert load_settings({}, environ={})[0].presence is False


def test_queue_name_follows_the_control_exchange(consumer: Any) -> None:
    consumer.app.conf.control_exchange = "prod"
    assert queue_name(consumer.app) == "prod.mingle.presence.v2"


def test_hello_options_and_answers_carry_presence(step: Any, consumer: Any, state: Any) -> None:
    assert step.presence.queue is None  # memory:// is not AMQP
    assert step.hello_options(consumer).presence_queue is None
    step.presence = PresenceState("ex.mingle.presence")
    assert step.hello_options(consumer).presence_queue == "ex.mingle.presence"
    hello = make_hello(step, Panel.data["hello"])
    pidbox = SimpleNamespace(hostname=consumer.hostname, consumer=consumer, app=consumer.app)
    assert "present_v2" not in hello(pidbox, "stock@x", revoked=None, mingle={"v": 2})["mingle"]
    step.presence._consumer = object()  # as after join
    ext = hello(pidbox, "new@x", revoked=None, mingle={"v": 2, "presence_v2": True})["mingle"]
    assert ext["present_v2"] is True and ext["uncounted"] == ["stock@x"]
    assert "present" not in ext  # 0.1's key: an old newcomer does not count this worker
    # A worker of 0.1 (its own, old presence queue) is not counted in this one: named.
    hello(pidbox, "old@x", revoked=None, mingle={"v": 2, "presence": True})
    assert "old@x" in step.presence.uncounted
    assert "mingle" not in hello(pidbox, "stock2@x", revoked=None)  # a stock request: the stock reply
    assert list(step.presence.uncounted) == ["stock@x", "old@x", "stock2@x"]
