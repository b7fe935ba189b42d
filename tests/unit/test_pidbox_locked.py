"""A pidbox queue held by a connection that is going away (405): tried again, bounded
(for real: tests/integration/test_same_name_restart.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from celery.worker.consumer.control import Control

from mingle_plugins.answering.pidbox import LOCKED_RETRY_SECONDS, is_locked, start_retrying_locked
from mingle_plugins.consumer import Consumer


class Locked(Exception):
    reply_code = 405


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def box_starting(outcomes: list[BaseException | None]) -> Any:
    box = SimpleNamespace(node=SimpleNamespace(channel=None), closed=0, starts=0)

    class Channel:
        def close(self) -> None:
            box.closed += 1

    def start(c: Any) -> str:
        box.starts += 1
        box.node.channel = Channel()
        outcome = outcomes.pop(0) if outcomes else None
        if outcome is not None:
            raise outcome
        return "started"

    box.start = start
    return box


def test_a_held_pidbox_queue_is_tried_again(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    box = box_starting([Locked(), Locked(), None])
    start = start_retrying_locked(box.start, box, lambda: "w@x.celery.pidbox", sleep=clock.sleep, clock=clock)
    c = SimpleNamespace(hostname="w@x", connection=None, connection_errors=(), channel_errors=())
    with caplog.at_level("INFO", "mingle_plugins"):
        assert start(c) == "started"
    assert box.starts == 3 and box.closed == 2  # each failed channel closed
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "405 RESOURCE_LOCKED" in warnings[0].getMessage()
    assert "w@x.celery.pidbox is this worker's again after 2 tries" in caplog.text


def test_a_pidbox_queue_held_longer_stops_the_worker_as_stock(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    box = box_starting([Locked()] * 1000)
    start = start_retrying_locked(box.start, box, lambda: "w@x.celery.pidbox", sleep=clock.sleep, clock=clock)
    c = SimpleNamespace(hostname="w@x", connection=None, connection_errors=(), channel_errors=())
    with caplog.at_level("INFO", "mingle_plugins"), pytest.raises(Locked):
        start(c)
    assert LOCKED_RETRY_SECONDS <= clock.now < LOCKED_RETRY_SECONDS + 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "another live worker runs under the node name w@x" in errors[0]


def test_other_errors_go_through_at_once() -> None:
    box = box_starting([ValueError("other")])
    start = start_retrying_locked(box.start, box, lambda: "q", sleep=pytest.fail)
    with pytest.raises(ValueError):
        start(SimpleNamespace(hostname="w@x"))
    assert not is_locked(ValueError()) and is_locked(Locked())


def test_our_consumer_wraps_its_own_control_step_only() -> None:
    from celery import Celery

    app = Celery("locked", broker="memory://", set_as_current=False)
    app.conf.worker_consumer = "mingle_plugins.consumer:Consumer"
    pool = mock.Mock(is_green=False)
    consumer = Consumer(
        mock.Mock(),
        init_callback=mock.Mock(),
        pool=pool,
        app=app,
        timer=mock.Mock(),
        controller=mock.Mock(),
        hub=None,
        hostname="w@x",
    )
    (control,) = [s for s in consumer.blueprint.order if isinstance(s, Control)]
    assert control.start is not control.box.start and control.start.__name__ == "retrying"
    assert Control.start is not control.start  # the class is left alone
    assert "start" not in vars(Control)
