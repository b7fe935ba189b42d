"""Turning signing on in a running fleet, and rotating its key, as docs/operations.md says:
one worker restarted at a time, a newcomer started after each step; no reply or request is
refused and no revoked id is lost at any step (Redis and RabbitMQ)."""

from __future__ import annotations

import uuid
from typing import Any

OLD, NEW = "rotation-old-key-0123456789abcdef", "rotation-new-key-fedcba9876543210"

#: The procedure of docs/operations.md ("Signing: turn it on, rotate keys"), step by step: the
#: settings every worker runs with after the step (restarted one at a time to get there).
TURN_ON = [
    {"mingle_hmac_keys": [OLD], "mingle_accept_unsigned": True},  # 1. keys, unsigned still accepted
    {"mingle_hmac_keys": [OLD], "mingle_accept_unsigned": False},  # 2. unsigned refused
]
ROTATE = [
    {"mingle_hmac_keys": [OLD, NEW]},  # 1. the new key accepted everywhere (the old one signs)
    {"mingle_hmac_keys": [NEW, OLD]},  # 2. the new key signs (the old one still accepted)
    {"mingle_hmac_keys": [NEW]},  # 3. the old key dropped
]


def _refusals(log: str) -> list[str]:
    return [
        line
        for line in log.splitlines()
        if "rejected the reply of" in line or "rejected the hello request" in line or "unsigned" in line
    ]


def _roll(cluster: Any, names: list[str], steps: list[dict[str, Any]], ids: set[str], tag: str) -> None:
    for number, conf in enumerate(steps, 1):
        for name in names:
            cluster.worker(name).stop()
            worker = cluster.start(name, conf=conf)
            worker.wait_for("mingle: summary: ")
            assert ids <= cluster.revoked(name), f"{tag} step {number}: {name} lost ids"
        newcomer = f"new-{tag}{number}@rot"
        cluster.start(newcomer, conf=conf).wait_for("mingle: summary: ")
        assert ids <= cluster.revoked(newcomer), f"{tag} step {number}: the newcomer lost ids"
        cluster.worker(newcomer).stop()
        for worker in cluster.workers:
            refused = _refusals(worker.log())
            assert not refused, f"{tag} step {number}, {worker.nodename}: {refused}"


def test_turn_signing_on_then_rotate_the_key_without_a_refusal(make_cluster, broker: str) -> None:
    cluster = make_cluster(broker)
    names = ["a@rot", "b@rot"]
    for name in names:
        cluster.start(name)
    ids = {str(uuid.uuid4()) for _ in range(5)}
    cluster.client.control.revoke(sorted(ids))
    for name in names:
        assert ids <= cluster.revoked(name)
    _roll(cluster, names, TURN_ON, ids, "on")
    _roll(cluster, names, ROTATE, ids, "rot")


def test_switching_the_signing_key_in_one_step_is_refused(make_cluster, redis_url: str) -> None:
    """Why three steps: a worker that signs with the new key while a neighbour knows only the
    old one has its replies refused there (so the check above can fail)."""
    cluster = make_cluster(redis_url, {"mingle_hmac_keys": [OLD]})
    cluster.start("a@rot1", conf={"mingle_hmac_keys": [NEW, OLD]})  # switched first
    cluster.start("b@rot1").wait_for("mingle: summary: ")  # still the old key only
    refused = _refusals(cluster.worker("b@rot1").log())
    assert refused and "a@rot1" in refused[0], cluster.worker("b@rot1").log()[-3000:]


def test_rollout_into_a_stock_fleet_and_rollback(make_cluster, broker: str) -> None:
    """Introduce the package one worker at a time into a fleet of stock workers, then take it
    out the same way: every restarted worker and every newcomer learns every id, nothing is
    rejected (the default profile talks to stock both ways)."""
    cluster = make_cluster(broker)
    names = ["a@roll", "b@roll"]
    for name in names:
        cluster.start(name, stock=True)
    ids = {str(uuid.uuid4()) for _ in range(5)}
    cluster.client.control.revoke(sorted(ids))
    for tag, stock in (("in", False), ("out", True)):
        for name in names:
            cluster.worker(name).stop()
            cluster.start(name, stock=stock)
            assert ids <= cluster.revoked(name), f"roll {tag}: {name} lost ids"
            newcomer = f"new-{tag}-{name.split('@')[0]}@roll"
            cluster.start(newcomer, stock=stock)
            assert ids <= cluster.revoked(newcomer), f"roll {tag}: {newcomer} lost ids"
            cluster.worker(newcomer).stop()
    for worker in cluster.workers:
        assert not _refusals(worker.log()), (worker.nodename, _refusals(worker.log()))


def test_clock_skew_beyond_the_window_is_a_counted_refusal(make_cluster, redis_url: str) -> None:
    """A signed request from a node whose clock is 90 s ahead: its ids are refused, and the
    refusal, with its cause, is in ``mingle_status`` (count and reason) and ``celery mingle status``."""
    import subprocess
    import sys
    import time

    from mingle_plugins.wire import protocol

    cluster = make_cluster(redis_url, {"mingle_hmac_keys": [OLD]})
    cluster.start("a@skew")
    ids = [str(uuid.uuid4())]
    nonce, sent_at = uuid.uuid4().hex, time.time() + 90
    ext = {
        "v": protocol.VERSION,
        "nonce": nonce,
        "sent_at": sent_at,
        "request_signature": protocol.sign_request(OLD, nonce, "ahead@skew", ids, sent_at),
    }
    request = {"from_node": "ahead@skew", "revoked": ids, "mingle": ext}
    cluster.client.control.broadcast(
        "hello", arguments=request, reply=True, timeout=2, destination=["a@skew"]
    )
    cluster.worker("a@skew").wait_for(r"rejected the hello request .*ahead@skew.*in the future")
    assert not set(ids) & cluster.revoked("a@skew")
    reply = cluster.client.control.broadcast("mingle_status", reply=True, timeout=5, destination=["a@skew"])
    refused = reply[0]["a@skew"]["requests_refused"]
    assert refused["count"] == 1 and "in the future" in refused["last_reason_by_node"]["ahead@skew"]
    shown = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "proj", "mingle", "status", "-d", "a@skew"],
        cwd=cluster.directory,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "a@skew: refused the ids of 1 hello requests: ahead@skew: " in shown.stdout, shown.stdout
