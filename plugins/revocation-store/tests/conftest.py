"""Stores on the real services, each test on a key or table of its own (removed after it)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from mingle_store.backends import RevocationStore, open_store
from tests.support import services
from tests.support.workers import Cluster, write_app

#: Redis database of the store tests (the broker of the integration tests is db 3).
STORE_REDIS_DB = 5


def store_url(backend: str, tmp_path: Path) -> str:
    if backend == "redis":
        services.require("redis")
        return f"redis://127.0.0.1:6379/{STORE_REDIS_DB}"
    if backend == "postgres":
        return services.require("postgres")
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["redis", "postgres", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_conf(backend: str, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """``mingle_plugin_settings["store"]`` on a key or table of this test's own."""
    conf = {"url": store_url(backend, tmp_path), "name": f"mingle_store_test_{uuid.uuid4().hex[:10]}"}
    yield conf
    try:
        open_store(conf["url"], conf["name"]).forget()
    except Exception:  # the test may have made the service unreachable for this key: nothing to remove
        pass


@pytest.fixture
def store(store_conf: dict[str, Any]) -> RevocationStore:
    return open_store(store_conf["url"], store_conf["name"], timeout=5.0)


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(broker, conf)`` -> :class:`Cluster` of real workers, closed after the test."""
    clusters: list[Cluster] = []

    def make(broker: str, conf: dict[str, Any] | None = None) -> Cluster:
        directory = tmp_path / f"cluster{len(clusters)}"
        cluster = Cluster(directory, write_app(directory, broker, conf))
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()
