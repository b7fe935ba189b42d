"""The ``celery-mingle-sqs`` plugin with real workers on SQS + SNS fanout (kombu 5.7).

The broker is moto's server (``moto[server]``), started here on a free loopback
port and reached through the ``sqs://`` URL's host and port (kombu's
``endpoint_url``). The workers run with this interpreter, which must have the
plugin installed (``pip install -e 'transports/sqs[test]'``, as ``.ci/run`` does).
Timings are printed (``-s``); the plugin's README quotes them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import services

pytestmark = pytest.mark.slow

PLUGIN_TRANSPORT = "mingle_sqs.transport:Transport"


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    services.require_package("moto")
    try:
        import mingle_sqs  # noqa: F401
    except ImportError as exc:
        services.missing(f"celery-mingle-sqs is not installed ({exc}): pip install -e 'transports/sqs[test]'")
    from tests.support.moto_server import MotoServer

    server = MotoServer(Path(tmp_path_factory.mktemp("moto")) / "moto.log")
    yield server
    server.stop()


def sqs_conf(moto: Any, fanout: bool = True, **extra: Any) -> dict[str, Any]:
    """kombu's defaults (1 s polling interval, 10 s long polls), fanout through SNS on."""
    conf: dict[str, Any] = {
        "broker_url": moto.broker_url(),
        "broker_transport_options": {"region": "us-east-1", "supports_fanout": fanout},
        **extra,
    }
    if fanout:
        conf["broker_transport"] = PLUGIN_TRANSPORT
    return conf


def snapshot(moto: Any) -> tuple[set[str], set[tuple[str, str]]]:
    """Every SQS queue name, and every SNS subscription as (topic name, queue name)."""
    urls = moto.client("sqs").list_queues().get("QueueUrls", [])
    sns = moto.client("sns")
    subs = {
        (s["TopicArn"].rsplit(":", 1)[-1], s["Endpoint"].rsplit(":", 1)[-1])
        for s in sns.list_subscriptions().get("Subscriptions", [])
    }
    return {url.rsplit("/", 1)[-1] for url in urls}, subs


@pytest.mark.parametrize("expect", [False, True], ids=["window", "expect-replies"])
def test_newcomer_learns_revoked_ids_and_clock_and_leaves_nothing(
    make_cluster: Any, moto: Any, expect: bool
) -> None:
    cluster = make_cluster(moto.broker_url(), sqs_conf(moto, mingle_expect_replies=expect))
    exchange = cluster.config["control_exchange"]
    names = [f"sqs{i}@mt" for i in range(3)]
    for name in names:
        cluster.start(name)  # waits for "ready." and a ping reply: ping works with this transport
    ids = [str(uuid.uuid4()) for _ in range(5)]
    cluster.client.control.revoke(ids)
    for name in names:
        assert set(ids) <= cluster.revoked(name), f"{name} did not get the revoke"
    clocks = [cluster.clock(name) for name in names]
    queues_before, subs_before = snapshot(moto)

    newcomer = cluster.start("new.pod-7f@mt", loglevel="DEBUG")
    newcomer.wait_for(r"mingle: summary: ")
    log = newcomer.log()
    assert "mingle: sync with 3 nodes" in log
    assert re.search(
        r"mingle: summary: 3 neighbours, 3 accepted, 5 ids merged, 0 dropped by policy, 0 rejected", log
    )
    if expect:
        assert "mingle: sqs: 3 neighbours subscribed" in log
    assert set(ids) <= cluster.revoked("new.pod-7f@mt")
    assert cluster.clock("new.pod-7f@mt") > max(clocks)

    # What the newcomer left: only its pidbox queue and that queue's subscription, which
    # Celery's remote control creates ("." -> "-", "@" -> "_"); no reply queue of the mingle.
    queues_after, subs_after = snapshot(moto)
    pidbox = f"new-pod-7f_mt-{exchange}-pidbox"
    assert queues_before <= queues_after
    assert queues_after - queues_before == {pidbox}
    assert subs_after - subs_before == {(f"{exchange}-pidbox", pidbox)}
    assert not [q for q in queues_after if q.startswith("mingle-reply-") or ".reply." in q or "-reply-" in q]
    # The summary's time: from "searching for neighbors" (the count included) to the end of the merge.
    took = re.findall(r"mingle: summary: .*, ([\d.]+)s$", log, re.M)[-1]
    print(f"\nsqs (moto), expect_replies={expect}: mingle took {took}s")
    cluster.close()
    # kombu deletes neither a pidbox queue nor its subscription when its worker stops
    # (the plugin's README says so): they are Celery's remote control's, not the mingle's.
    queues_stopped, subs_stopped = snapshot(moto)
    assert pidbox in queues_stopped and (f"{exchange}-pidbox", pidbox) in subs_stopped


def test_without_fanout_the_plugin_refuses_in_one_line(make_cluster: Any, moto: Any) -> None:
    """Stock SQS transport, no ``supports_fanout``: the worker runs, mingle is off, and the log and
    ``celery mingle check`` give the settings to add."""
    cluster = make_cluster(moto.broker_url(), sqs_conf(moto, fanout=False))
    worker = cluster.start("nofan@mt", wait=False)
    worker.wait_ready()
    lines = [msg for _, msg in worker.mingle_lines() if msg.startswith("mingle: sqs:")]
    assert len(lines) == 1, lines
    assert (
        '"supports_fanout": True' in lines[0]
        and 'broker_transport = "mingle_sqs.transport:Transport"' in lines[0]
    )
    assert "mingle: off: plugin 'sqs' refused the 'sqs' transport" in worker.log()
    assert "mingle: searching for neighbors" not in worker.log()

    check = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "proj", "mingle", "check"],
        cwd=cluster.directory,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(cluster.directory)},
    )
    output = check.stdout + check.stderr
    assert "plugin 'sqs' refuses it" in output, output
    assert '"supports_fanout": True' in output, output
    cluster.close()


def test_predefined_queues(make_cluster: Any, moto: Any) -> None:
    """With ``predefined_queues`` (no queue created by kombu), listing what the plugin's README
    says: the task queue, each node's pidbox queue under both names, and its mingle queue."""
    sqs = moto.client("sqs")
    exchange = f"pre{uuid.uuid4().hex[:8]}"
    predefined: dict[str, dict[str, str]] = {}
    for node, safe in (("pre1@mt", "pre1_mt"), ("pre2@mt", "pre2_mt")):
        url = sqs.create_queue(QueueName=f"{safe}-{exchange}-pidbox")["QueueUrl"]
        predefined[f"{safe}-{exchange}-pidbox"] = predefined[f"{node}.{exchange}.pidbox"] = {"url": url}
        name = f"{safe}-{exchange}-mingle"
        predefined[name] = {"url": sqs.create_queue(QueueName=name)["QueueUrl"]}
    predefined["celery"] = {"url": sqs.create_queue(QueueName="celery")["QueueUrl"]}
    conf = sqs_conf(moto, mingle_expect_replies=True, control_exchange=exchange)
    conf["broker_transport_options"]["predefined_queues"] = predefined
    cluster = make_cluster(moto.broker_url(), conf)
    queues_before, _ = snapshot(moto)

    first = cluster.start("pre1@mt", wait=False)  # no ping: its reply queue cannot be predefined
    first.wait_ready()
    first.wait_for(r"Create subscription .*pre1_mt")
    cluster.client.control.revoke(["pre-id"])
    first.wait_for(r"Tasks flagged as revoked: pre-id")

    second = cluster.start("pre2@mt", wait=False, loglevel="DEBUG")
    second.wait_for(r"mingle: summary: ")
    log = second.log()
    assert "mingle: sqs: 1 neighbours subscribed" in log
    assert re.search(
        r"mingle: summary: 1 neighbours, 1 accepted, 1 ids merged, 0 dropped by policy, 0 rejected", log
    )
    assert snapshot(moto)[0] == queues_before  # nothing created, nothing deleted
    cluster.close()
