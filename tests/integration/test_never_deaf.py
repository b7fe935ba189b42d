"""Never deaf: a newcomer waits for the neighbours the broker says received its hello.

The neighbours are made slow to answer by stopping them (SIGSTOP) before the newcomer's
hello and letting them go on (SIGCONT) only once the newcomer has logged that it is waiting
for them past its hello timeout: the order of events is fixed by the log, not by a timer, and
nothing is timed. Stock Mingle (and this package with ``mingle_answer_wait = 0``) starts
with nothing in that case ("all alone"); with the default every neighbour is heard.
"""

from __future__ import annotations

import contextlib
import os
import signal
import uuid

import pytest

from mingle_plugins.testkit import Cluster, Worker

PROFILES = {"default": {}, "fast": {"mingle_profile": "fast"}}
WAITING = r"mingle: 0 of the (\d+) nodes that received the hello answered within 1s: waiting up to 10s"


def frozen_neighbours_then_newcomer(cluster: Cluster, neighbours: list[Worker], name: str) -> Worker:
    """Stop the neighbours, start the newcomer, let them go on once it waits for them."""
    for worker in neighbours:
        os.killpg(worker.proc.pid, signal.SIGSTOP)
    try:
        newcomer = cluster.start(name, wait=False)
        match = newcomer.wait_for(WAITING, timeout=60)
        assert int(match.group(1)) == len(neighbours)  # the PUBLISH count: every neighbour
    finally:
        for worker in neighbours:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker.proc.pid, signal.SIGCONT)
    newcomer.wait_ready(60)
    return newcomer


@pytest.mark.redis
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_a_newcomer_hears_every_neighbour_that_is_slow_to_answer(
    make_cluster, redis_url: str, profile: str
) -> None:
    cluster = make_cluster(redis_url, PROFILES[profile])
    neighbours = [cluster.start(f"slow{i}@{profile}") for i in range(3)]
    ids = {str(uuid.uuid4()) for _ in range(20)}
    cluster.revoke(sorted(ids))
    newcomer = frozen_neighbours_then_newcomer(cluster, neighbours, f"new@{profile}")
    log = newcomer.log()
    assert "mingle: all alone" not in log
    assert f"mingle: sync with {len(neighbours)} nodes" in log
    summary = cluster.summary(newcomer.nodename)
    assert summary is not None
    assert sorted(summary.accepted) == sorted(w.nodename for w in neighbours)
    assert ids <= cluster.revoked(newcomer.nodename)


@pytest.mark.redis
def test_without_answer_wait_a_newcomer_gives_up_at_the_timeout(make_cluster, redis_url: str) -> None:
    """The setting is what makes the difference: the same frozen neighbour, ``0``, all alone."""
    cluster = make_cluster(redis_url, {"mingle_answer_wait": 0})
    neighbour = cluster.start("slow@off")
    os.killpg(neighbour.proc.pid, signal.SIGSTOP)
    try:
        newcomer = cluster.start("new@off", wait=False)
        newcomer.wait_for(r"mingle: all alone", timeout=60)
    finally:
        os.killpg(neighbour.proc.pid, signal.SIGCONT)
    assert "waiting up to" not in newcomer.log()
