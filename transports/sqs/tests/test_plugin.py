"""Unit tests of mingle_sqs: settings, the claim, the transport's channel and the count.

The channel and count tests run against moto's server (a local SQS + SNS,
started here on a free loopback port); the real-worker tests are in
tests/integration/test_transport_sqs.py.
"""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from kombu import Connection, Consumer, Exchange, Producer, Queue

import mingle_sqs as plugin
from mingle_plugins import HelloOptions, MingleSettings
from mingle_plugins.testkit import resolved_settings
from tests.support import services

PLUGIN_TRANSPORT = "mingle_sqs.transport:Transport"
OFFLINE_URL = "sqs://testing:testing@127.0.0.1:9"  # never contacted


def app_with(**conf: Any) -> Celery:
    app = Celery("t", set_as_current=False)
    app.conf.update(conf)
    return app


def resolved(app: Celery) -> MingleSettings:
    return resolved_settings(plugin, app.conf)


def own(app: Celery) -> plugin.SqsSettings:
    return resolved(app).plugin(plugin.SqsSettings)


# -- settings and claim (no server) ---------------------------------------------------


def test_settings_default_to_the_polling_interval() -> None:
    app = app_with()
    s = own(app)
    assert (s.latency(app.conf), s.margin, s.reply_wait_time_seconds, s.stale_messages) == (1.0, 0.5, 1, 10)
    fast = app_with(broker_transport_options={"polling_interval": 0.2})
    assert own(fast).window(fast.conf) == pytest.approx(0.7)
    forced = app_with(mingle_plugin_settings={"sqs": {"neighbour_latency": 3, "reply_wait_time_seconds": 50}})
    assert own(forced).window(forced.conf) == 3.5
    assert own(forced).reply_wait_time_seconds == 20  # SQS's maximum


def test_bad_settings_fall_back(caplog: pytest.LogCaptureFixture) -> None:
    app = app_with(mingle_plugin_settings={"sqs": {"margin": -1, "stale_messages": "many"}})
    s = own(app)
    assert (s.margin, s.stale_messages) == (0.5, 10)
    assert "margin=-1" in caplog.text and "stale_messages='many'" in caplog.text


def test_refuses_without_fanout_and_says_the_setting(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(plugin, "_said", set())  # said already in this process by another test
    app = app_with(broker_url=OFFLINE_URL)
    with caplog.at_level(logging.WARNING, "mingle_sqs"):
        assert plugin.mingle_transport_compatible(app=app, driver_type="sqs") is False
        assert plugin.mingle_transport_compatible(app=app, driver_type="sqs") is False
    lines = [r.getMessage() for r in caplog.records if r.name == "mingle_sqs"]
    assert len(lines) == 1  # once, however often it is asked
    assert plugin.FANOUT_SETTING in lines[0] and plugin.TRANSPORT_SETTING in lines[0]


def test_refuses_the_stock_transport_even_with_fanout() -> None:
    app = app_with(broker_url=OFFLINE_URL, broker_transport_options={"supports_fanout": True})
    why = plugin.refusal(app)
    assert why is not None and plugin.TRANSPORT_SETTING in why and "does not advertise fanout" in why
    assert plugin.mingle_transport_compatible(app=app, driver_type="sqs") is False


def test_claims_with_fanout_and_the_plugin_transport() -> None:
    app = app_with(
        broker_url=OFFLINE_URL,
        broker_transport=PLUGIN_TRANSPORT,
        broker_transport_options={"supports_fanout": True},
    )
    assert plugin.refusal(app) is None
    assert plugin.mingle_transport_compatible(app=app, driver_type="sqs") is True
    assert plugin.mingle_transport_compatible(app=app, driver_type="redis") is None


def test_tune_sets_the_window_and_a_valid_reply_queue() -> None:
    options = HelloOptions(timeout=1.0)
    app = app_with(broker_transport_options={"polling_interval": 2})
    plugin.mingle_tune_hello(app=app, driver_type="sqs", options=options, settings=resolved(app))
    assert (options.timeout, options.quiet_window, options.polling_interval) == (2.5, 2.5, 0.01)
    name = options.reply_queue
    assert name is not None and name.startswith("mingle-reply-") and len(name) == 29
    assert name.replace("-", "").isalnum()  # SQS: letters, digits, "-" and "_"
    other = HelloOptions()
    plugin.mingle_tune_hello(app=app, driver_type="redis", options=other, settings=resolved(app))
    assert other == HelloOptions()


def test_reply_queue_names() -> None:
    from mingle_sqs.transport import is_reply_queue

    assert is_reply_queue("mingle-reply-0123456789abcdef")
    assert is_reply_queue("3f1c.reply.celery.pidbox")  # kombu's Mailbox reply queue
    assert not is_reply_queue("w1@host.celery.pidbox")
    assert not is_reply_queue("celery")


def test_predefined_queues_must_list_this_nodes_queues() -> None:
    predefined = {"celery": {"url": "http://127.0.0.1:9/123456789012/celery"}}
    app = app_with(
        broker_url=OFFLINE_URL,
        broker_transport=PLUGIN_TRANSPORT,
        broker_transport_options={"supports_fanout": True, "predefined_queues": predefined},
    )
    with app.connection_for_read() as conn:
        chan = conn.default_channel  # predefined: no request is made
        assert plugin.node_queue_names(chan, app.control.mailbox, "w1.a@pod-7") == (
            "w1-a_pod-7-celery-pidbox",
            "w1-a_pod-7-celery-mingle",
        )
        with pytest.raises(
            plugin.MissingPredefinedQueues,
            match=re.escape(
                "'w1-a_pod-7-celery-pidbox', 'w1.a@pod-7.celery.pidbox', 'w1-a_pod-7-celery-mingle'"
            ),
        ):
            plugin._check_names(chan, app.control.mailbox, "w1.a@pod-7")
        url = "http://127.0.0.1:9/123456789012/"
        predefined["w1-a_pod-7-celery-pidbox"] = {"url": url + "w1-a_pod-7-celery-pidbox"}
        predefined["w1.a@pod-7.celery.pidbox"] = {"url": url + "w1-a_pod-7-celery-pidbox"}
        predefined["w1-a_pod-7-celery-mingle"] = {"url": url + "w1-a_pod-7-celery-mingle"}
        assert plugin._check_names(chan, app.control.mailbox, "w1.a@pod-7") == "w1-a_pod-7-celery-mingle"


def test_send_hello_without_the_predefined_queues_sends_nothing(caplog: pytest.LogCaptureFixture) -> None:
    app = app_with(
        broker_url=OFFLINE_URL,
        broker_transport=PLUGIN_TRANSPORT,
        broker_transport_options={
            "supports_fanout": True,
            "predefined_queues": {"celery": {"url": "http://127.0.0.1:9/123456789012/celery"}},
        },
    )
    with app.connection_for_read() as conn:
        consumer = SimpleNamespace(connection=conn, app=app, hostname="w1@host")
        options = HelloOptions(reply_queue="mingle-reply-0123456789abcdef")
        assert (
            plugin.mingle_send_hello(
                consumer=consumer, revoked=[], options=options, settings=MingleSettings()
            )
            == {}
        )
    assert "lacks 'w1_host-celery-pidbox', 'w1@host.celery.pidbox', 'w1_host-celery-mingle'" in caplog.text
    assert "no hello sent" in caplog.text


# -- against moto's server ------------------------------------------------------------


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    services.require_package("moto")
    from tests.support.moto_server import MotoServer

    server = MotoServer(Path(tmp_path_factory.mktemp("moto")) / "moto.log")
    yield server
    server.stop()


def connect(moto: Any, transport: str = PLUGIN_TRANSPORT, wait_time_seconds: int = 1) -> Connection:
    return Connection(
        moto.broker_url(),
        transport=transport,
        transport_options={
            "supports_fanout": True,
            "region": "us-east-1",
            "wait_time_seconds": wait_time_seconds,
        },
    )


def queue_names(moto: Any) -> set[str]:
    urls = moto.client("sqs").list_queues().get("QueueUrls", [])
    return {url.rsplit("/", 1)[-1] for url in urls}


def test_reply_to_a_missing_queue_creates_nothing(moto: Any) -> None:
    with connect(moto) as conn:
        chan = conn.default_channel
        for name in (f"mingle-reply-{uuid.uuid4().hex[:16]}", f"{uuid.uuid4().hex}.reply.t.pidbox"):
            chan._put(name, {"body": "{}", "properties": {}})
            assert chan.canonical_queue_name(name) not in queue_names(moto)


def test_an_unbound_reply_queue_is_deleted(moto: Any) -> None:
    """kombu deletes an SQS queue only through its bindings; the plugin's channel deletes it."""
    for transport, kept in (("kombu.transport.SQS:Transport", True), (PLUGIN_TRANSPORT, False)):
        name = f"mingle-reply-{uuid.uuid4().hex[:16]}"
        with connect(moto, transport) as conn:
            chan = conn.default_channel
            chan.queue_declare(name)
            assert name in queue_names(moto)
            chan.after_reply_message_received(name)  # what the hello collector calls at its end
            assert (name in queue_names(moto)) is kept, transport


def test_a_pidbox_reply_reaches_its_queue_in_another_process(moto: Any) -> None:
    """Routing a reply by kombu's Mailbox naming, with no binding in this process, and receiving it
    without an event loop (``celery inspect`` in a shell)."""
    oid = uuid.uuid4().hex
    exchange = Exchange("reply.t.pidbox", "direct", durable=False)
    queue = Queue(f"{oid}.reply.t.pidbox", exchange, routing_key=oid, durable=False, auto_delete=True)
    with connect(moto) as asker, connect(moto) as worker:
        queue(asker.default_channel).declare()
        assert worker.default_channel._lookup("reply.t.pidbox", oid) == [queue.name]
        assert worker.default_channel._lookup("t.direct", oid) == []
        Producer(worker.default_channel).publish({"w@h": {"ok": "pong"}}, exchange=exchange, routing_key=oid)
        got: list[Any] = []
        with Consumer(asker.default_channel, [queue], callbacks=[lambda b, m: got.append(b)], no_ack=True):
            asker.drain_events(timeout=5)
        assert got == [{"w@h": {"ok": "pong"}}]
        sqs = moto.client("sqs")
        url = sqs.get_queue_url(QueueName=asker.default_channel.canonical_queue_name(queue.name))["QueueUrl"]
        attrs = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=["All"])["Attributes"]
        assert (
            int(attrs["ApproximateNumberOfMessages"]) + int(attrs["ApproximateNumberOfMessagesNotVisible"])
            == 0
        )
        asker.default_channel.after_reply_message_received(queue.name)
        assert asker.default_channel.canonical_queue_name(queue.name) not in queue_names(moto)


def test_count_listeners_leaves_out_self_dead_and_gone(moto: Any) -> None:
    app = app_with(control_exchange=f"count{uuid.uuid4().hex[:8]}")
    mailbox = app.control.mailbox
    sqs, sns = moto.client("sqs"), moto.client("sns")
    with connect(moto) as conn:
        chan = conn.default_channel
        topic = chan.fanout._get_or_create_topic(mailbox.exchange.name)
        urls = {}
        for node in ("a@h", "b@h", "me@h", "dead@h", "gone@h"):
            name = chan.canonical_queue_name(mailbox.get_queue(node).name)
            urls[node] = sqs.create_queue(QueueName=name)["QueueUrl"]
            arn = sqs.get_queue_attributes(QueueUrl=urls[node], AttributeNames=["QueueArn"])["Attributes"]
            sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn["QueueArn"])
        for _ in range(3):
            sqs.send_message(QueueUrl=urls["dead@h"], MessageBody="unread broadcast")
        sqs.delete_queue(QueueUrl=urls["gone@h"])
        assert plugin.count_listeners(chan, mailbox, "me@h", stale_messages=3) == 2
        assert plugin.count_listeners(chan, mailbox, "me@h", stale_messages=4) == 3


def test_send_hello_deletes_its_reply_queue_when_the_hello_fails(
    moto: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mingle_plugins.hello.collect

    app = app_with(broker_transport_options={"supports_fanout": True})
    seen: dict[str, Any] = {}

    def failing_hello(consumer: Any, revoked: Any, options: HelloOptions, verdicts: Any = None) -> Any:
        chan = consumer.connection.default_channel
        seen["wait"] = chan.wait_time_seconds
        Queue(options.reply_queue)(chan).declare()
        seen["declared"] = chan.canonical_queue_name(options.reply_queue) in queue_names(moto)
        raise RuntimeError("SNS publish failed")

    monkeypatch.setattr(mingle_plugins.hello.collect, "hello_exchange", failing_hello)
    with connect(moto, wait_time_seconds=3) as conn:
        consumer = SimpleNamespace(connection=conn, app=app, hostname="me@h")
        options = HelloOptions(reply_queue=f"mingle-reply-{uuid.uuid4().hex[:16]}")
        with pytest.raises(RuntimeError, match="SNS publish failed"):
            plugin.mingle_send_hello(
                consumer=consumer, revoked=[], options=options, settings=MingleSettings()
            )
        assert seen == {"wait": 1, "declared": True}
        assert options.reply_queue not in queue_names(moto)
        assert conn.default_channel.wait_time_seconds == 3  # the transport's own value again
