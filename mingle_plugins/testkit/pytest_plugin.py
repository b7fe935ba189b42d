"""pytest fixtures that start real Celery workers: the test kit for plugin authors.

Load it from the ``conftest.py`` at the root of your tests::

    pytest_plugins = ["mingle_plugins.testkit.pytest_plugin"]

It is not registered as a ``pytest11`` entry point on purpose: such a plugin
would load in the pytest run of every project that has this package installed
(Celery 4 did that with ``celery.contrib.pytest``, and Celery 5 stopped).

Fixtures:

- ``mingle_cluster``: a factory, ``mingle_cluster(broker=None, conf=None, python=None)``
  -> :class:`mingle_plugins.testkit.Cluster`. Without ``broker``, the cluster runs on
  ``filesystem://`` in a temporary folder (needs celery-mingle-filesystem where the
  workers run); with one, on that broker. Every worker is stopped at the end of the test.
- ``mingle_worker_python``: the interpreter that runs the workers (this one);
  override it to run them in another virtualenv.
- ``mingle_hook``: :mod:`mingle_plugins.testkit.hooktest`, to call one hook of a plugin
  with a built ``Reply`` and no worker: ``mingle_hook.call(plugin, "mingle_merge_revoked",
  reply=mingle_hook.reply("prod-1@host", ["id-1"]))``.

See docs/testing-plugins.md.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from . import Cluster, hooktest

__all__ = ["MakeCluster", "mingle_cluster", "mingle_hook", "mingle_worker_python"]

#: ``mingle_cluster(broker=None, conf=None, python=None, **kwargs) -> Cluster``
MakeCluster = Callable[..., Cluster]


@pytest.fixture
def mingle_worker_python() -> str | Path:
    """The Python that runs the workers; override it to use another virtualenv."""
    return sys.executable


@pytest.fixture
def mingle_cluster(tmp_path: Path, mingle_worker_python: str | Path) -> Iterator[MakeCluster]:
    """A factory of :class:`~mingle_plugins.testkit.Cluster`; their workers stop after the test."""
    clusters: list[Cluster] = []

    def make(
        broker: str | None = None,
        conf: Mapping[str, Any] | None = None,
        python: str | Path | None = None,
        **kwargs: Any,
    ) -> Cluster:
        directory = tmp_path / f"mingle-cluster{len(clusters)}"
        kwargs["python"] = python or mingle_worker_python
        if broker is None:
            cluster = Cluster.filesystem(directory, conf, **kwargs)
        else:
            cluster = Cluster.create(directory, broker, conf, **kwargs)
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


@pytest.fixture
def mingle_hook() -> Any:
    """:mod:`mingle_plugins.testkit.hooktest`: ``call(plugin, hook, **arguments)``, ``reply(...)``,
    ``consumer(...)``, ``settings_for(plugin, conf)``; no worker is started.

    .. versionadded:: 0.2
    """
    return hooktest
