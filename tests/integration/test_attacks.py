"""The holes of the second security round, each with real workers and a hostile node.

Every test here failed on the main of before this round (0.1): a flood evicted the
statedb ids, a forged first reply shadowed the signed one, a replayed signed request
was merged, a node name forged log lines, and bad bodies were "a str".
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path
from typing import Any

from mingle_plugins.wire import protocol
from tests.integration.test_bad_plugins import new_ids, write_statedb
from tests.integration.test_faults import revoked_list
from tests.support.brokers import FakeNeighbour

KEY = "attack-test-key"
ROOM = 200  # CELERY_WORKER_REVOKES_MAX of the targets: a full set is cheap to build


def _fake(fakes: list[FakeNeighbour], tmp_path: Path, config: dict[str, Any], replies: list[Any]) -> None:
    fake = FakeNeighbour(tmp_path, config["broker_url"], config["control_exchange"], replies)
    fakes.append(fake)
    fake.wait_listening()


def _full_newcomer(cluster: Any, tmp_path: Path, name: str) -> tuple[Any, list[str]]:
    mine = new_ids(ROOM)
    write_statedb(tmp_path / f"{name}.db", mine)
    worker = cluster.start(
        f"{name}@atk",
        args=[f"--statedb={tmp_path / f'{name}.db'}"],
        env={"CELERY_WORKER_REVOKES_MAX": str(ROOM)},
    )
    return worker, mine


def test_one_reply_cannot_flush_the_revoked_set(make_cluster, broker: str, fakes, tmp_path: Path) -> None:
    cluster = make_cluster(broker)
    flood = new_ids(ROOM)
    _fake(fakes, tmp_path, cluster.config, [{"body": {"evil@atk": {"revoked": flood, "clock": 1}}}])
    worker, mine = _full_newcomer(cluster, tmp_path, "target")
    summary = worker.wait_for(r"mingle: summary: .*")
    kept = set(revoked_list(cluster.config, worker.nodename)) & set(mine)
    assert len(kept) >= ROOM * 0.9, f"only {len(kept)} of the worker's own ids survived"
    assert ", 180 ids over mingle_max_share" in summary.group(0)
    assert "mingle: 180 new ids not merged: more than mingle_max_share (0.1)" in worker.log()


def test_one_hello_request_cannot_flush_a_running_worker(
    make_cluster, redis_url: str, tmp_path: Path
) -> None:
    cluster = make_cluster(redis_url)
    worker, mine = _full_newcomer(cluster, tmp_path, "running")
    cluster.client.control.broadcast(
        "hello", arguments={"from_node": "evil@atk", "revoked": new_ids(ROOM)}, reply=True, timeout=2
    )
    worker.wait_for(r"mingle: hello from evil@atk: 200 ids received, 20 merged")
    kept = set(revoked_list(cluster.config, worker.nodename)) & set(mine)
    assert len(kept) >= ROOM * 0.9


def test_a_forged_first_reply_does_not_shadow_the_signed_one(
    make_cluster, broker: str, fakes, tmp_path: Path
) -> None:
    cluster = make_cluster(broker, {"mingle_hmac_keys": [KEY]})
    cluster.start("real@atk")
    real = set(new_ids(3))
    cluster.client.control.revoke(sorted(real), destination=["real@atk"])
    forged = new_ids(2)
    # The fake answers at once, under the real neighbour's name, without the key.
    _fake(fakes, tmp_path, cluster.config, [{"body": {"real@atk": {"revoked": forged, "clock": 1}}}])
    newcomer = cluster.start("new@atk")
    newcomer.wait_for("mingle: summary: ")
    learnt = set(revoked_list(cluster.config, newcomer.nodename))
    assert real <= learnt and not set(forged) & learnt
    assert re.search(
        r"mingle: dropped 1 other replies under the names of 1 neighbours that answered .*: real@atk$",
        newcomer.log(),
        re.M,
    )
    assert "rejected the reply of real@atk" not in newcomer.log()  # the real node is not blamed


def test_without_signing_an_extra_reply_under_one_name_is_logged(
    make_cluster, redis_url: str, fakes, tmp_path: Path
) -> None:
    cluster = make_cluster(redis_url)
    cluster.start("real@atk")
    _fake(fakes, tmp_path, cluster.config, [{"body": {"real@atk": {"revoked": new_ids(1), "clock": 1}}}])
    newcomer = cluster.start("new@atk")
    newcomer.wait_for("mingle: summary: ")
    assert "mingle: dropped 1 other replies under the names of 1 neighbours that answered" in newcomer.log()


def test_a_signed_request_cannot_be_replayed(make_cluster, redis_url: str) -> None:
    cluster = make_cluster(redis_url, {"mingle_hmac_keys": [KEY], "mingle_signature_max_age": 2})
    first, second = cluster.start("a@atk"), cluster.start("b@atk")
    ids = new_ids(2)
    nonce, sent_at = uuid.uuid4().hex, time.time()
    ext = {
        "v": 1,
        "nonce": nonce,
        "sent_at": sent_at,
        "request_signature": protocol.sign_request(KEY, nonce, "new@atk", ids, sent_at),
    }
    request = {"from_node": "new@atk", "revoked": ids, "mingle": ext}
    cluster.client.control.broadcast("hello", arguments=request, reply=True, timeout=2, destination=["a@atk"])
    assert set(ids) <= set(revoked_list(cluster.config, "a@atk"))  # the genuine request
    cluster.client.control.broadcast("hello", arguments=request, reply=True, timeout=2, destination=["a@atk"])
    first.wait_for(r"mingle: rejected the hello request \(ids not merged\) of new@atk: replayed request")
    time.sleep(2.5)  # captured, and sent later to a worker that never saw it
    cluster.client.control.broadcast("hello", arguments=request, reply=True, timeout=2, destination=["b@atk"])
    second.wait_for(r"outside mingle_signature_max_age \(2s\)")
    assert not set(ids) & set(revoked_list(cluster.config, "b@atk"))


FORGED_NAME = "evil@atk\n[2026-11-25 10:00:00,000: INFO/MainProcess] mingle: sync complete\x1b[2K"


def test_node_names_cannot_forge_log_lines(make_cluster, redis_url: str, fakes, tmp_path: Path) -> None:
    cluster = make_cluster(redis_url)
    long_name = "x" * 5000 + "\u202e@atk"
    _fake(
        fakes,
        tmp_path,
        cluster.config,
        [
            {"body": {FORGED_NAME: {"revoked": ["forged-1"], "clock": 1}}},
            {"body": {long_name: {"revoked": ["forged-2"], "clock": 1}}},
        ],
    )
    newcomer = cluster.start("new@atk")
    newcomer.wait_for("mingle: summary: ")
    cluster.client.control.broadcast(
        "hello", arguments={"from_node": FORGED_NAME, "revoked": ["forged-3"]}, reply=True, timeout=2
    )
    newcomer.wait_for(r"mingle: refused a hello request from evil@atk\\x0a")
    log = newcomer.log()
    assert not re.search(r"^\[2026-11-25 10:00:00,000", log, re.M), "a forged line reached the log"
    assert "\x1b" not in log and "\u202e" not in log and "x" * 200 not in log
    assert f"node name of length {len(long_name)} is outside 3..255" in log
    assert not {"forged-1", "forged-2", "forged-3"} & set(revoked_list(cluster.config, newcomer.nodename))


def test_every_bad_body_is_rejected_with_its_real_reason(
    make_cluster, broker: str, fakes, tmp_path: Path
) -> None:
    cluster = make_cluster(broker)
    pickle_body = b"\x80\x04\x95\x0b\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x01a\x94K\x01s."
    _fake(
        fakes,
        tmp_path,
        cluster.config,
        [
            {"raw": '{"a@atk": {"revoked": [', "content_type": "application/json"},
            {"raw": pickle_body.decode("latin-1"), "content_type": "application/x-python-serialize"},
            {"raw": "[" * 100_000 + "]" * 100_000, "content_type": "application/json"},
            {"body": {}},
            {"body": None},
        ],
    )
    newcomer = cluster.start("new@atk")
    newcomer.wait_for("mingle: summary: ")
    lines = [m for _, m in newcomer.mingle_lines()]
    reasons = [m.split(": ", 2)[2] for m in lines if m.startswith("mingle: rejected the reply of <malformed")]
    assert any(r.startswith("invalid JSON") for r in reasons), reasons
    assert any(r.startswith("content type refused") for r in reasons), reasons
    assert "nesting too deep to decode" in reasons and "empty body ({})" in reasons
    assert "empty body (null)" in reasons
    # Five messages, no node: each a rejection, none a neighbour.
    assert "mingle: no reply kept: 5 rejected" in lines, lines
    assert any(re.match(r"mingle: summary: 0 neighbours, 0 accepted, .* 5 rejected", m) for m in lines), lines
