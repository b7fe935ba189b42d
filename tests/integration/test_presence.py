"""The presence queue on RabbitMQ: a fast newcomer counts its fast neighbours, keeps its stock ones,
and the queue goes with the last worker (see mingle_plugins/presence.py)."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid

import pytest

from tests.conftest import broker_url
from tests.support import services

FAST = {"mingle_profile": "fast"}

pytestmark = pytest.mark.rabbitmq


def _ctl(*args: str) -> str:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        services.missing("rabbitmqctl is not on PATH (needed to list the broker's queues)")
    out = subprocess.run([ctl, *args], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        services.missing(f"rabbitmqctl {args[0]} failed: {out.stderr.strip()[:200]}")
    return out.stdout


def presence_consumers(exchange: str) -> int | None:
    """Consumers of the cluster's presence queue (``None``: no such queue)."""
    for line in _ctl("list_queues", "-q", "name", "consumers").splitlines():
        name, _, consumers = line.partition("\t")
        if name == f"{exchange}.mingle.presence.v2":
            return int(consumers)
    return None


def wait_consumers(exchange: str, expected: int | None, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (found := presence_consumers(exchange)) != expected:
        assert time.monotonic() < deadline, f"presence queue: {found} consumers, expected {expected}"
        time.sleep(0.2)


def revoke_on(cluster, node: str, n: int = 3) -> set[str]:
    ids = {str(uuid.uuid4()) for _ in range(n)}
    cluster.client.control.revoke(sorted(ids), destination=[node])
    assert ids <= cluster.revoked(node)
    return ids


def test_fast_newcomer_counts_its_fast_neighbours(make_cluster) -> None:
    cluster = make_cluster(broker_url("rabbitmq"), FAST)
    exchange = cluster.config["control_exchange"]
    first = cluster.start("n1@presence", loglevel="DEBUG")
    # Alone: no presence queue yet (404), so the quiet window; counted once its mingle is done.
    assert "mingle: 0 neighbours counted in the presence queue" in first.log()
    assert "mingle: counted in the presence queue" in first.log()
    cluster.start("n2@presence")
    ids = revoke_on(cluster, "n1@presence") | revoke_on(cluster, "n2@presence")
    wait_consumers(exchange, 2)
    newcomer = cluster.start("new@presence", loglevel="DEBUG")
    newcomer.wait_for(
        "mingle: summary: 2 neighbours, 2 accepted, 6 ids merged, 0 dropped by policy, 0 rejected"
    )
    log = newcomer.log()
    assert f"mingle: 2 neighbours counted in the presence queue {exchange}.mingle.presence.v2" in log
    assert (
        "mingle: presence: 2 of 2 counted neighbours and 0 of 0 named ones replied; "
        "ended by the count, without the quiet window"
    ) in log
    assert ids <= cluster.revoked("new@presence")
    wait_consumers(exchange, 3)


@pytest.mark.parametrize("stock_first", [True, False], ids=["stock-first", "stock-last"])
def test_mixed_fleet_keeps_the_stock_neighbour(make_cluster, stock_first: bool) -> None:
    cluster = make_cluster(broker_url("rabbitmq"), FAST)
    # The fast neighbour learns the stock one's name from its reply (stock first) or its hello
    # (stock last), and names it to the newcomer, which awaits it: its pidbox queue has a consumer.
    order = [("stock@mixed", True), ("fast@mixed", False)]
    for node, stock in order if stock_first else reversed(order):
        cluster.start(node, stock=stock)
    stock_ids, fast_ids = revoke_on(cluster, "stock@mixed"), revoke_on(cluster, "fast@mixed")
    newcomer = cluster.start("new@mixed", loglevel="DEBUG")
    newcomer.wait_for(
        "mingle: summary: 2 neighbours, 2 accepted, 6 ids merged, 0 dropped by policy, 0 rejected"
    )
    assert stock_ids | fast_ids <= cluster.revoked("new@mixed")
    log = newcomer.log()
    assert "mingle: 1 neighbours counted in the presence queue" in log
    # Awaited by name: asked whether its pidbox listens, unless its reply came first.
    assert "mingle: stock@mixed is not counted; its pidbox does not listen" not in log
    assert (
        "mingle: presence: 1 of 1 counted neighbours and 1 of 1 named ones replied; "
        "ended by the count, without the quiet window"
    ) in log


def test_a_stopped_stock_neighbour_is_not_awaited_and_then_forgotten(make_cluster) -> None:
    cluster = make_cluster(broker_url("rabbitmq"), FAST)
    fast = cluster.start("fast@gone", loglevel="DEBUG")
    cluster.start("stock@gone", stock=True)  # its hello tells fast@gone about it
    cluster.stop_node("stock@gone")
    newcomer = cluster.start("new@gone", loglevel="DEBUG")
    newcomer.wait_for("mingle: summary: 1 neighbours, 1 accepted")
    # Named and found not listening (by the newcomer, or already by fast@gone): not awaited.
    assert "ended by the count, without the quiet window" in newcomer.log()
    # fast@gone checks the names of hello requests once they are 5 s old, when it answers a hello.
    probe = {"from_node": "probe@gone", "revoked": [], "mingle": {"v": 2, "presence": True}}
    deadline = time.monotonic() + 30
    while "mingle: stock@gone no longer listens: not named any more" not in fast.log():
        assert time.monotonic() < deadline, fast.log()[-3000:]
        cluster.client.control.broadcast("hello", arguments=probe, reply=True, timeout=1)
    second = cluster.start("new2@gone", loglevel="DEBUG")
    second.wait_for("mingle: summary: 2 neighbours, 2 accepted")
    assert "stock@gone" not in second.log()
    assert "ended by the count, without the quiet window" in second.log()


def test_presence_queue_goes_with_the_last_worker(make_cluster) -> None:
    cluster = make_cluster(broker_url("rabbitmq"), FAST)
    exchange = cluster.config["control_exchange"]
    cluster.start("a@last")
    cluster.start("b@last")
    wait_consumers(exchange, 2)
    cluster.stop_node("a@last")
    wait_consumers(exchange, 1)
    cluster.close()
    wait_consumers(exchange, None)


def test_presence_is_joined_again_after_a_connection_restart(make_cluster) -> None:
    cluster = make_cluster(broker_url("rabbitmq"), FAST)
    exchange = cluster.config["control_exchange"]
    worker = cluster.start("w@restart", loglevel="DEBUG")
    wait_consumers(exchange, 1)
    # Close the connection of the presence consumer from the broker's side: the worker's consumer
    # connection; the consumer restarts its steps, mingles again and is counted again.
    channels = {
        line.split("\t")[1]
        for line in _ctl("list_consumers", "-q", "queue_name", "channel_pid").splitlines()
        if line.startswith(f"{exchange}.mingle.presence.v2\t")
    }
    assert len(channels) == 1
    connections = {
        line.split("\t")[1]
        for line in _ctl("list_channels", "-q", "pid", "connection").splitlines()
        if line.split("\t")[0] in channels
    }
    assert len(connections) == 1
    _ctl("close_connection", connections.pop(), "test: connection restart")
    worker.wait_for(
        r"(?s)left the presence queue.*counted in the presence queue.*counted in the presence queue"
    )
    assert worker.log().count("mingle: searching for neighbors") == 2
    wait_consumers(exchange, 1)
