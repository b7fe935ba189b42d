"""Real ``celery worker`` processes on real brokers, with this package's Mingle step."""

from __future__ import annotations

import re
import uuid

import pytest


@pytest.mark.parametrize("neighbours", [1, 3])
def test_newcomer_learns_revoked_ids_and_clock(make_cluster, broker: str, neighbours: int) -> None:
    cluster = make_cluster(broker)
    for i in range(neighbours):
        cluster.start(f"n{i}@mingletest")
    ids = [str(uuid.uuid4()) for _ in range(5)]
    cluster.client.control.revoke(ids)
    for i in range(neighbours):
        assert set(ids) <= cluster.revoked(f"n{i}@mingletest")
    clocks = [cluster.clock(f"n{i}@mingletest") for i in range(neighbours)]

    newcomer = cluster.start("new@mingletest")
    newcomer.wait_for(r"mingle: summary: ")
    assert set(ids) <= cluster.revoked("new@mingletest")
    assert cluster.clock("new@mingletest") > max(clocks)
    log = newcomer.log()
    assert f"mingle: sync with {neighbours} nodes" in log
    assert re.search(
        rf"mingle: summary: {neighbours} neighbours, {neighbours} accepted, 5 ids merged, "
        r"0 dropped by policy, 0 rejected",
        log,
    )


def test_step_runs_once_between_events_and_tasks(make_cluster, redis_url: str) -> None:
    cluster = make_cluster(redis_url)
    worker = cluster.start("order@mingletest", loglevel="DEBUG")
    order = worker.wait_for(r"Consumer: New boot order: \{(.*)\}")[1].split(", ")
    assert order.count("Mingle") == 1
    assert order.index("Events") < order.index("Mingle") < order.index("Tasks") < order.index("Control")
    assert order.index("Mingle") < order.index("Gossip")
    assert worker.log().count("mingle: searching for neighbors") == 1
    assert "mingle_plugins.bootstep.Mingle" in worker.log() or "Starting Mingle" in worker.log()


def test_without_mingle_turns_it_off(make_cluster, redis_url: str) -> None:
    cluster = make_cluster(redis_url)
    worker = cluster.start("off@mingletest", args=["--without-mingle"])
    assert "mingle:" not in worker.log()


def test_statedb_ids_survive_a_mingle(make_cluster, broker: str, tmp_path) -> None:
    # The neighbour must not learn db@'s ids from its hello and send them back, or this could
    # not fail: it trusts only itself, so it does not merge ids that db@ sends.
    cluster = make_cluster(broker, {"mingle_trusted_nodes": ["other@*"]})
    statedb = tmp_path / "state.db"
    first = cluster.start("db@mingletest", args=[f"--statedb={statedb}"])
    mine = [str(uuid.uuid4()) for _ in range(3)]
    cluster.client.control.revoke(mine, destination=["db@mingletest"])
    assert set(mine) <= cluster.revoked("db@mingletest")
    first.stop()

    cluster.start("other@mingletest")
    theirs = [str(uuid.uuid4()) for _ in range(3)]
    cluster.client.control.revoke(theirs, destination=["other@mingletest"])
    cluster.start("db@mingletest", args=[f"--statedb={statedb}"]).wait_for("mingle: summary")
    assert set(mine) | set(theirs) <= cluster.revoked("db@mingletest")
