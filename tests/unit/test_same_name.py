"""Two live workers under one node name: each says so once, and mingle_status shows it (for real:
tests/integration/test_same_name_restart.py, on Redis and RabbitMQ)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from celery.worker.control import Panel

from mingle_plugins.answering.control import status_reply
from mingle_plugins.answering.hello import make_hello
from mingle_plugins.client.status import same_name_lines
from mingle_plugins.model import HelloOptions
from mingle_plugins.wire import protocol


def test_a_hello_from_another_process_under_this_name(
    step: Any, consumer: Any, caplog: pytest.LogCaptureFixture
) -> None:
    hello = make_hello(step, Panel.data["hello"])
    pidbox = SimpleNamespace(hostname=consumer.hostname, consumer=consumer, app=consumer.app)
    own = {"v": 2, "instance": protocol.INSTANCE}
    assert hello(pidbox, "me@unit", revoked=None, mingle=own) is None  # this process: as stock
    assert hello(pidbox, "me@unit", revoked=None) is None  # a stock twin: as stock
    with caplog.at_level("WARNING", "mingle_plugins"):
        for _ in range(2):
            reply = hello(pidbox, "me@unit", revoked=None, mingle={"v": 2, "instance": "other"})
            assert reply == {"mingle": {"v": 2, "same_name": protocol.INSTANCE}}
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        "mingle: another live worker runs under this worker's node name me@unit (it sent a hello): "
        "that worker does not answer this one's hello, nor this one its (a hello from its own name), "
        "and a revoke or any remote-control command addressed to me@unit reaches both"
    ]
    status = status_reply(step, consumer)
    assert status["same_name"] == {"count": 2, "last": "sent a hello"}
    assert "faults" in status and "requests_refused" in status and "plugin_status" in status
    (line,) = same_name_lines({"me@unit": status})
    assert line.startswith("me@unit: another live worker runs under this node name (it sent a hello)")
    assert same_name_lines({"ok@unit": status_reply_without(step, consumer)}) == []


def status_reply_without(step: Any, consumer: Any) -> dict[str, Any]:
    step.same_name.count = 0
    return status_reply(step, consumer)


def test_the_newcomer_hears_the_twin_reply(
    step: Any, consumer: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    twin = {"mingle": {"v": 2, "same_name": "other"}}
    step.runner.first = lambda *a, **k: {"me@unit": twin, "n@unit": {"clock": 1, "revoked": []}}
    rnd = step.new_round(consumer)
    with caplog.at_level("WARNING", "mingle_plugins"):
        replies = step._hello(consumer, rnd)
    assert replies == {"n@unit": {"clock": 1, "revoked": []}}  # the twin is no neighbour
    assert "another live worker runs under this worker's node name me@unit (it answered" in caplog.text
    assert step.same_name.count == 1
    assert protocol.same_name_of(twin) == "other"
    assert protocol.same_name_of({"mingle": {"same_name": protocol.INSTANCE}}) is None  # this process
    assert protocol.same_name_of(None) is None and protocol.same_name_of({"clock": 1}) is None


def test_every_request_carries_the_instance(state: Any) -> None:
    request = protocol.hello_request("me@unit", [], state.revoked, HelloOptions())
    assert request["mingle"]["instance"] == protocol.INSTANCE and len(protocol.INSTANCE) == 16
