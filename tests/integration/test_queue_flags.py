"""RabbitMQ 4.3 refuses a queue that is both transient and shared (``durable=false,
exclusive=false``: the deprecated feature ``transient_nonexcl_queues``, denied by default; the
declare fails with 541 and the broker closes the connection). RabbitMQ 3.10 accepts such a
queue, so this test records the flags of every queue declared in a vhost of its own while real
workers of every profile and every CLI command run, and fails on any such queue.

How the flags are recorded (tests/support/rabbit.py): the ``rabbitmq_event_exchange`` plugin is
enabled if it is not (``rabbitmq-plugins enable rabbitmq_event_exchange``), and a consumer of
``amq.rabbitmq.event`` (routing key ``queue.created``) keeps the events of the test's vhost,
each with ``durable``, ``auto_delete``, ``exclusive`` and ``arguments``: a reply queue that
lives a few milliseconds is seen too. ``rabbitmqctl list_queues -p VHOST name durable
auto_delete exclusive type arguments`` is sampled at the end of every phase as well (with the
queue type). The vhost has a random name and is deleted at the end.

The same run on a vhost created with ``rabbitmqctl add_vhost V --default-queue-type quorum``
(Celery with ``task_default_queue_type = "quorum"``): there a durable queue declared without
``x-queue-type`` becomes a quorum queue, which refuses auto-delete and exclusive; the presence
queue must stay classic.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_cli import cli
from tests.support import rabbit
from tests.support.workers import Cluster

pytestmark = pytest.mark.rabbitmq

KEY = "queue-flags-key-0123456789abcdef"
#: Every profile: the default (stock-like), fast (presence, digest, counted replies) and signing.
PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": {"mingle_profile": "fast"},
    "signing": {"mingle_profile": "fast", "mingle_hmac_keys": [KEY]},
}
#: A revocation store (sqlite): ``celery mingle revoke`` records there, ``mingle-store`` reads it.
STORE_PHASE = "store"

TROUBLE = re.compile(
    # "(541) INTERNAL_ERROR" as py-amqp words a refusal; not a bare 541, which ids and tickets hold
    r"Unrecoverable error|cannot join the presence queue|PRECONDITION_FAILED|\(541\)|INTERNAL_ERROR"
    r"|hello failed"
)


def run_phase(
    recorder: rabbit.QueueRecorder, directory: Path, url: str, phase: str, conf: dict[str, Any]
) -> None:
    recorder.phase = phase
    cluster = Cluster.create(directory / phase, url, conf)
    try:
        cluster.start(f"a@{phase}")
        ids = cluster.revoke([str(uuid.uuid4())])
        new = cluster.start(f"b@{phase}", loglevel="DEBUG")
        new.wait_for(r"mingle: summary: \d neighbours, \d accepted, 1 ids merged")  # the store: one more
        assert set(ids) <= cluster.revoked(f"b@{phase}")
        app = ["-A", "proj"]
        for args in (
            ["mingle", "status", "--timeout", "1"],
            ["mingle", "check", "--timeout", "1"],
            ["mingle", "revoke", str(uuid.uuid4())],
            ["mingle", "plugins"],
            ["inspect", "ping", "--timeout", "1"],  # the stock command, for comparison
        ):
            result = cli(cluster.directory, *app, *args)
            assert result.returncode in (0, 1), (args, result.stdout, result.stderr)
            assert not TROUBLE.search(result.stderr) and "Traceback" not in result.stderr, (
                args,
                result.stderr,
            )
        if phase == STORE_PHASE:
            result = cli(cluster.directory, *app, "mingle-store", "status")
            assert result.returncode == 0, (result.stdout, result.stderr)
        status = cli(cluster.directory, *app, "mingle", "status", "--timeout", "1")
        assert f"a@{phase}" in status.stdout and f"b@{phase}" in status.stdout, status.stdout
        recorder.next_phase(f"{phase} (after)")
        for worker in cluster.workers:
            trouble = TROUBLE.findall(worker.log() + worker.output())
            assert not trouble, f"{worker.nodename}: {trouble}\n{worker.tail()}"
    finally:
        cluster.close()
    recorder.next_phase(f"{phase} (stopped)")


def phases(tmp_path: Path) -> dict[str, dict[str, Any]]:
    store = {"store": {"url": f"sqlite:///{tmp_path / 'store.db'}", "name": f"flags_{uuid.uuid4().hex[:8]}"}}
    return {**PROFILES, STORE_PHASE: {"mingle_plugin_settings": store}}


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_no_transient_shared_queue(tmp_path: Path, queue_type: str) -> None:
    rabbit.event_exchange()
    quorum = queue_type == "quorum"
    with rabbit.vhost("mingle-flags", default_queue_type="quorum" if quorum else None) as url:
        name = url.rsplit("/", 1)[1]
        recorder = rabbit.QueueRecorder(name)
        try:
            for phase, conf in phases(tmp_path).items():
                if quorum:
                    conf = {**conf, "task_default_queue_type": "quorum"}
                run_phase(recorder, tmp_path, url, phase, conf)
        finally:
            recorder.close()
        seen = recorder.queues()
        left = rabbit.ctl("list_queues", "-q", "-p", name, "name")
    assert recorder.events, "no queue.created event came: the recorder saw nothing"
    names = {q.name for q in seen}
    # Everything of a mingle was declared: the pidbox and reply queues, and the presence queue.
    assert any(n.endswith(".mingle.presence.v2") for n in names), sorted(names)
    assert any(".reply." in n for n in names) and any(n.endswith(".pidbox") for n in names), sorted(names)
    bad = [str(q) for q in seen if q.transient_shared]
    assert not bad, "transient non-exclusive queues (refused by RabbitMQ 4.3):\n" + "\n".join(bad)
    presence = [q for q in seen if q.name.endswith(".mingle.presence.v2")]
    assert all(q.durable and q.auto_delete and not q.exclusive for q in presence), presence
    assert all("x-queue-type" in q.arguments and "classic" in q.arguments for q in presence), presence
    assert {q.type for q in presence if q.how == "list_queues"} == {"classic"}, presence
    if quorum:  # the task queue followed the vhost's default: the vhost really is a quorum one
        assert any(q.type == "quorum" for q in seen if q.how == "list_queues"), [str(q) for q in seen]
    # Nothing of ours is left once the workers stopped (the task queue "celery" is Celery's, durable).
    assert [n for n in left.split() if "mingle" in n] == [], left
