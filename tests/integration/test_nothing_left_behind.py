"""A mingle leaves no broker object behind: no reply queue, no binding, on Redis and RabbitMQ.

With a new host name per pod (Kubernetes), anything a mingle left per node would pile up.
The first worker of the cluster mingles alone (the fast profile counts no listener and
awaits no reply), the next ones with neighbours; then the broker is listed.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
import redis

from tests.support import services


def _redis_objects(url: str, exchange: str) -> set[str]:
    client = redis.Redis.from_url(url)
    found: set[str] = set()
    for key in client.scan_iter(match=f"*{exchange}*"):
        name = key.decode()
        found.add(name)
        if client.type(key) == b"set":
            found |= {f"{name} > {m.decode(errors='replace')}" for m in client.smembers(key)}
    return found


def _rabbitmq_queues(exchange: str) -> set[str]:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        services.missing("rabbitmqctl is not on PATH (needed to list the broker's queues)")
    out = subprocess.run([ctl, "list_queues", "-q", "name"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        services.missing(f"rabbitmqctl list_queues failed: {out.stderr.strip()[:200]}")
    return {line.strip() for line in out.stdout.splitlines() if exchange in line}


@pytest.mark.parametrize("profile", ["stock", "fast"])
def test_a_mingle_leaves_nothing_behind(make_cluster, broker: str, profile: str) -> None:
    cluster = make_cluster(broker, {"mingle_profile": profile})
    exchange = cluster.config["control_exchange"]

    def objects() -> set[str]:
        if broker.startswith("redis"):
            return _redis_objects(broker, exchange)
        return _rabbitmq_queues(exchange)

    first = cluster.start("alone@left")  # nobody to answer: alone
    first.wait_for("mingle: summary: 0 neighbours")
    newcomer = cluster.start("new@left")
    newcomer.wait_for("mingle: summary: 1 neighbours, 1 accepted")
    during = objects()
    reply_objects = {o for o in during if ".reply." in o or o.startswith(f"_kombu.binding.reply.{exchange}")}
    assert not reply_objects, f"a mingle left reply queues or bindings: {sorted(reply_objects)}"
    # What is there belongs to the Control step of each running worker (their pidbox queues).
    assert all("alone@left" in o or "new@left" in o or o.endswith(f"{exchange}.pidbox") for o in during), (
        during
    )
    cluster.close()
    assert not objects() - {o for o in during if "@left" not in o}, "objects left after the workers stopped"
