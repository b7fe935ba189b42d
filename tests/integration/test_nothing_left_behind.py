"""What a mingle leaves in the broker, on Redis and RabbitMQ (queues and exchanges), against stock Celery.

With a new host name per pod (Kubernetes), anything a mingle left per node would pile up.
The first worker of the cluster mingles alone (the fast profile awaits no reply on Redis), the
next ones with neighbours; then the broker is listed, while they run and after they stopped.
The facts checked here are the ones docs/operations.md states ("What a mingle leaves in the
broker").
"""

from __future__ import annotations

import shutil
import signal
import subprocess

import pytest
import redis

from tests.support import services

#: "celery": stock Celery's consumer (stock Mingle); the others: this package's profiles.
VARIANTS = {"celery": {}, "stock": {"mingle_profile": "stock"}, "fast": {"mingle_profile": "fast"}}


def _redis_objects(url: str, exchange: str) -> set[str]:
    client = redis.Redis.from_url(url)
    found: set[str] = set()
    for key in client.scan_iter(match=f"*{exchange}*"):
        name = key.decode()
        found.add(name)
        if client.type(key) == b"set":
            found |= {f"{name} > {m.decode(errors='replace')}" for m in client.smembers(key)}
    return found


def _rabbitmqctl(what: str) -> list[str]:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        services.missing("rabbitmqctl is not on PATH (needed to list the broker's queues)")
    out = subprocess.run([ctl, what, "-q", "name"], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        services.missing(f"rabbitmqctl {what} failed: {out.stderr.strip()[:200]}")
    return [line.strip() for line in out.stdout.splitlines()]


def _rabbitmq_objects(exchange: str) -> set[str]:
    queues = {f"queue {name}" for name in _rabbitmqctl("list_queues") if exchange in name}
    return queues | {f"exchange {name}" for name in _rabbitmqctl("list_exchanges") if exchange in name}


def _objects(broker: str, exchange: str) -> set[str]:
    if broker.startswith("redis"):
        return _redis_objects(broker, exchange)
    return _rabbitmq_objects(exchange)


def _control_objects(broker: str, exchange: str, nodes: list[str]) -> set[str]:
    """What the Control step of running workers holds: their pidbox queues and its exchanges."""
    if broker.startswith("redis"):
        binding = f"_kombu.binding.{exchange}.pidbox"
        return {binding} | {f"{binding} > \x06\x16\x06\x16{node}.{exchange}.pidbox" for node in nodes}
    queues = {f"queue {node}.{exchange}.pidbox" for node in nodes}
    return queues | {f"exchange {exchange}.pidbox", f"exchange reply.{exchange}.pidbox"}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_a_mingle_leaves_nothing_behind(make_cluster, broker: str, variant: str) -> None:
    cluster = make_cluster(broker, VARIANTS[variant])
    exchange = cluster.config["control_exchange"]
    stock = variant == "celery"
    first = cluster.start("alone@left", stock=stock)  # nobody to answer: alone
    first.wait_for("mingle: (summary: 0 neighbours|all alone)")
    cluster.start("new@left", stock=stock).wait_for(
        "mingle: (summary: 1 neighbours, 1 accepted|sync complete)"
    )
    cluster.start("third@left", stock=stock).wait_for("mingle: (summary: 2 neighbours|sync complete)")
    during = _objects(broker, exchange)
    expected = _control_objects(broker, exchange, ["alone@left", "new@left", "third@left"])
    if variant == "fast" and not broker.startswith("redis"):
        expected.add(f"queue {exchange}.mingle.presence.v2")  # deleted with its last consumer
    assert during == expected, f"a mingle left reply queues or bindings: {sorted(during - expected)}"
    cluster.close()
    after = _objects(broker, exchange)
    if broker.startswith("redis"):
        assert not after, "objects left after the workers stopped"
    else:
        # The two pidbox exchanges stay (not auto-delete): one pair per control exchange, whoever
        # the workers are, stock Celery's as well; no queue stays.
        assert after == {f"exchange {exchange}.pidbox", f"exchange reply.{exchange}.pidbox"}


@pytest.mark.parametrize("variant", ["celery", "stock"])
def test_a_newcomer_killed_while_collecting(make_cluster, broker: str, variant: str) -> None:
    """Measured: on Redis a newcomer killed during its collection leaves its reply queue's
    binding (no TTL), stock Celery as this package; on RabbitMQ its reply queue goes with its
    connection (exclusive, auto-delete)."""
    cluster = make_cluster(broker, VARIANTS[variant])
    exchange = cluster.config["control_exchange"]
    stock = variant == "celery"
    neighbour = cluster.start("n1@kill", stock=stock, loglevel="DEBUG")
    victim = cluster.start("victim@kill", stock=stock, wait=False)
    # The neighbour got the hello and answers; the victim collects for 1 s after that reply.
    neighbour.wait_for(r"pidbox received method hello\(")
    victim.send_signal(signal.SIGKILL)
    victim.proc.wait(10)
    cluster.close()
    after = _objects(broker, exchange)
    if broker.startswith("redis"):
        binding = f"_kombu.binding.reply.{exchange}.pidbox"
        assert binding in after
        members = {o for o in after if o.startswith(f"{binding} > ")}
        assert len(members) == 1 and next(iter(members)).endswith(f".reply.{exchange}.pidbox"), after
        assert redis.Redis.from_url(broker).ttl(binding) == -1  # no expiry: it stays
        redis.Redis.from_url(broker).delete(binding)
    else:
        assert not {o for o in after if o.startswith("queue ")}, after
