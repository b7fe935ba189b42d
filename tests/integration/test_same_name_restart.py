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
import shutil
import signal

import pytest

from tests.conftest import broker_url
from tests.integration.test_cli import cli
from tests.support.workers import Cluster

RABBITMQ = pytest.mark.rabbitmq

FAST = {"mingle_profile": "fast"}
WAITING = "is held by another connection (405 RESOURCE_LOCKED)"
TWIN = "mingle: another live worker runs under this worker's node name %s (it %s)"


def twin_of(cluster: Cluster, make_cluster) -> Cluster:
    """A cluster in another folder with the same app (so a worker under the same name logs to a
    file of its own), stopped with the others."""
    directory = cluster.directory.parent / f"{cluster.directory.name}-twin"
    twin: Cluster = make_cluster(cluster.config["broker_url"], directory=directory)
    shutil.copy(cluster.directory / "proj.py", directory / "proj.py")  # the same control exchange
    twin.config = dict(cluster.config)
    return twin


def celery_has_exclusive_pidbox() -> bool:
    from celery import Celery

    return bool(Celery("probe", set_as_current=False).conf.control_queue_exclusive)


@RABBITMQ
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


@RABBITMQ
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


@RABBITMQ
def test_a_live_worker_under_the_same_name_is_named(make_cluster) -> None:
    """Two live workers under one name on RabbitMQ (two pods with one hostname): the second cannot
    consume its pidbox queue; after the bounded wait it says why, and Celery stops it as stock."""
    if not celery_has_exclusive_pidbox():
        pytest.skip("this Celery declares its pidbox queue shared (Celery < 5.5): no 405")
    cluster = make_cluster(broker_url("rabbitmq"))
    first = cluster.start("twin@dup")
    second = twin_of(cluster, make_cluster).start("twin@dup", wait=False)
    # Its mingle runs before its remote control: it hears the twin, and the twin hears it.
    second.wait_for(re.escape(TWIN % ("twin@dup", "answered this hello")), timeout=60)
    first.wait_for(re.escape(TWIN % ("twin@dup", "sent a hello")))
    second.wait_for("another live worker runs under the node name twin@dup", timeout=60)
    assert (second.log() + second.output()).count(WAITING) == 1


def test_two_live_workers_under_one_name_on_redis(make_cluster, redis_url: str) -> None:
    """On Redis both run (the pidbox is a fanout subscription): each says so once, and
    ``celery mingle status`` and ``celery mingle check`` show it."""
    cluster = make_cluster(redis_url, FAST)
    first = cluster.start("twin@redis")
    second = twin_of(cluster, make_cluster).start("twin@redis", wait=False)
    second.wait_ready()
    second.wait_for(re.escape(TWIN % ("twin@redis", "answered this hello")))
    first.wait_for(re.escape(TWIN % ("twin@redis", "sent a hello")))
    for worker in (first, second):
        assert worker.log().count("another live worker runs under") == 1
    status = cli(cluster.directory, "-A", "proj", "mingle", "status", "--timeout", "1")
    assert "twin@redis: another live worker runs under this node name (it " in status.stdout, status
    assert "addressed to twin@redis reaches both" in status.stdout
    check = cli(cluster.directory, "-A", "proj", "mingle", "check", "--timeout", "1")
    assert "note: duplicate node name: twin@redis: another live worker" in check.stdout, check
