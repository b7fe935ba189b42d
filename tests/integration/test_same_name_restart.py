"""A worker killed and started again at once under the same ``-n`` (a Kubernetes pod restart), on
RabbitMQ with Celery 5.5+ (whose pidbox queue ``<node>.<exchange>.pidbox`` is exclusive).

The old connection's exclusive queues may outlive the process for a moment: the broker answers
``405 RESOURCE_LOCKED`` to the new worker, and stock Celery stops it ("Unrecoverable error").
Our consumer tries again for a few seconds (mingle_plugins/answering/pidbox.py). To meet the 405
every time rather than by luck, one test freezes the old worker (SIGSTOP: its connection stays
open, as a pod whose node stopped answering), starts the new one, and kills the old one once the
new one says it waits.
"""

from __future__ import annotations

import re
import signal

import pytest

from tests.conftest import broker_url

pytestmark = pytest.mark.rabbitmq

FAST = {"mingle_profile": "fast"}
WAITING = "is held by another connection (405 RESOURCE_LOCKED)"


def celery_has_exclusive_pidbox() -> bool:
    from celery import Celery

    return bool(Celery("probe", set_as_current=False).conf.control_queue_exclusive)


@pytest.mark.parametrize("conf", [{}, FAST], ids=["default", "fast"])
def test_kill_and_restart_at_once_under_the_same_name(make_cluster, conf: dict[str, str]) -> None:
    cluster = make_cluster(broker_url("rabbitmq"), conf)
    cluster.start("peer@restart")
    for round_ in range(3):
        worker = cluster.start("pod@restart", timeout=60)
        worker.wait_for("mingle: summary: 1 neighbours, 1 accepted")
        worker.stop(signal.SIGKILL)  # and at once again, under the same name
        cluster.workers.remove(worker)
        assert "Unrecoverable error" not in worker.log() + worker.output(), round_
    worker = cluster.start("pod@restart", timeout=60)
    worker.wait_for("mingle: summary: 1 neighbours, 1 accepted")
    assert "Unrecoverable error" not in worker.log() + worker.output()
    assert cluster.client.control.ping(destination=["pod@restart"], timeout=2)


@pytest.mark.parametrize("conf", [{}, FAST], ids=["default", "fast"])
def test_the_old_connection_still_holds_the_pidbox_queue(make_cluster, conf: dict[str, str]) -> None:
    if not celery_has_exclusive_pidbox():
        pytest.skip("this Celery declares its pidbox queue shared (Celery < 5.5): no 405")
    cluster = make_cluster(broker_url("rabbitmq"), conf)
    cluster.start("peer@locked")
    old = cluster.start("pod@locked")
    old.send_signal(signal.SIGSTOP)  # its connection stays open, and owns the pidbox queue
    try:
        new = cluster.start("pod@locked", wait=False)
        new.wait_for(re.escape(WAITING), timeout=60)
    finally:
        old.send_signal(signal.SIGKILL)  # the pod is gone: the broker drops its connection
    new.wait_ready(60)
    new.wait_for(r"mingle: the pidbox queue pod@locked\.\S+\.pidbox is this worker's again after \d+ tries")
    log = new.log() + new.output()
    assert log.count(WAITING) == 1  # one line, however many tries
    assert "Unrecoverable error" not in log
    assert cluster.client.control.ping(destination=["pod@locked"], timeout=2)
    assert "mingle: summary: 1 neighbours" in log  # pod@locked was frozen: only the peer answered


def test_a_live_worker_under_the_same_name_is_named(make_cluster) -> None:
    """Two live workers under one name on RabbitMQ (two pods with one hostname): the second cannot
    consume its pidbox queue; after the bounded wait it says why, and Celery stops it as stock."""
    if not celery_has_exclusive_pidbox():
        pytest.skip("this Celery declares its pidbox queue shared (Celery < 5.5): no 405")
    cluster = make_cluster(broker_url("rabbitmq"))
    cluster.start("twin@dup")
    second = cluster.start("twin@dup", wait=False)
    second.wait_for("another live worker runs under the node name twin@dup", timeout=60)
    assert (second.log() + second.output()).count(WAITING) == 1
