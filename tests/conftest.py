from __future__ import annotations

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
    url = services.SERVICES[service][2]
    return url.replace("/0", "/3") if service == "redis" else url


@pytest.fixture(params=BROKERS)
def broker(request: pytest.FixtureRequest) -> str:
    """The URL of each real broker in turn (Redis, RabbitMQ)."""
    services.require(request.param)
    return broker_url(request.param)


@pytest.fixture
def redis_url() -> str:
    services.require("redis")
    return broker_url("redis")


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[object]:
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
