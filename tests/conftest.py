from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import services
from tests.support.brokers import FakeNeighbour
from tests.support.workers import Cluster

BROKERS = ("redis", "rabbitmq")


def pytest_runtest_setup(item: pytest.Item) -> None:
    # A marker naming a service makes the test need it (skip, or fail under .ci/run).
    for name in services.SERVICES:
        if item.get_closest_marker(name) is not None:
            services.require(name)


def broker_url(service: str) -> str:
    """The URL of a broker that needs no database of its own (RabbitMQ: each cluster has its own
    control exchange). Redis: :func:`claimed_broker` or the ``redis_url`` / ``broker`` fixtures."""
    if service == "redis":
        raise ValueError("a Redis URL is claimed per test: use claimed_broker() or the redis_url fixture")
    return services.SERVICES[service][2]


def claimed_broker(request: pytest.FixtureRequest, service: str) -> str:
    """The URL of ``service`` for the lifetime of the fixture that asks (module-scoped ones): on
    Redis a random free database of its own, flushed after that fixture's own teardown."""
    services.require(service)
    if service != "redis":
        return broker_url(service)
    stack = contextlib.ExitStack()
    url = stack.enter_context(services.redis_db())
    request.addfinalizer(stack.close)  # added before the fixture yields: runs after its teardown
    return url


@pytest.fixture
def claims() -> Iterator[contextlib.ExitStack]:
    """What a test claimed (its Redis database); released after its clusters stopped, since
    ``make_cluster`` needs this fixture too."""
    with contextlib.ExitStack() as stack:
        yield stack


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest, claims: contextlib.ExitStack) -> str:
    """The URL of each real broker in turn (Redis: a database of this test's own; RabbitMQ)."""
    services.require(request.param)
    if request.param == "redis":
        return claims.enter_context(services.redis_db())
    return broker_url(request.param)


@pytest.fixture
def redis_url(claims: contextlib.ExitStack) -> str:
    """A Redis database of this test's own (random, empty, claimed; flushed at the end)."""
    return claims.enter_context(services.redis_db())


@pytest.fixture
def make_cluster(tmp_path: Path, claims: contextlib.ExitStack) -> Iterator[object]:
    """``make_cluster(broker, conf=None, python=sys.executable)`` -> :class:`Cluster`."""
    clusters: list[Cluster] = []

    def make(
        broker: str,
        conf: dict[str, object] | None = None,
        python: str | Path = sys.executable,
        directory: Path | None = None,
    ) -> Cluster:
        directory = directory or tmp_path / f"cluster{len(clusters)}"
        cluster = Cluster.create(directory, broker, conf, python=python)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


@pytest.fixture
def fakes() -> Iterator[list[FakeNeighbour]]:
    """Fake neighbours (:class:`FakeNeighbour`) a test starts; closed at its end."""
    started: list[FakeNeighbour] = []
    yield started
    for fake in started:
        fake.close()
