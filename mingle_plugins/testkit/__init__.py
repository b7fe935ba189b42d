"""Real ``celery worker`` processes for tests: the launcher behind the pytest plugin.

A :class:`Cluster` is a folder with a Celery app module and the workers started
from it: each a ``celery worker -P solo`` subprocess in its own process group,
logging to ``<folder>/<node>.log``. Each cluster gets its own
``control_exchange``, so the workers of other clusters on the same broker never
answer its hello. :meth:`Cluster.filesystem` needs no server at all::

    cluster = Cluster.filesystem(tmp_path)
    cluster.start("one@test")
    cluster.start("two@test")
    cluster.revoke(["an-id"])
    summary = cluster.newcomer("new@test")      # a MingleSummary
    assert summary.ids_merged == 1
    cluster.close()

This module needs no pytest; :mod:`mingle_plugins.testkit.pytest_plugin` wraps it in
fixtures. It is used by this project's own tests, its demo and its benchmark.
"""

from __future__ import annotations

import json
import signal
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..answering.control import STATUS_COMMAND
from ..model import MingleSummary
from ..settings import MingleSettings, SettingsRegistry, load_settings
from .worker import (
    APP_TEMPLATE,
    ATOMIC_FILESYSTEM,
    CONF_ENV,
    MINGLE_LINE,
    STOCK_ENV,
    Worker,
    client_app,
    filesystem_conf,
    summary_from_dict,
    write_app,
)

__all__ = [
    "APP_TEMPLATE",
    "ATOMIC_FILESYSTEM",
    "CONF_ENV",
    "MINGLE_LINE",
    "STOCK_ENV",
    "Cluster",
    "Worker",
    "client_app",
    "filesystem_conf",
    "resolved_settings",
    "summary_from_dict",
    "write_app",
]


def resolved_settings(plugin: Any, conf: Mapping[str, Any]) -> MingleSettings:
    """The settings a worker with ``conf`` would hand ``plugin``'s hooks: its
    ``mingle_add_settings`` declaration, parsed by the core (for a plugin's unit tests)."""
    registry = SettingsRegistry()
    plugin.mingle_add_settings(registry=registry)
    settings, _ = load_settings(conf, environ={})
    return registry.resolve(settings)[0]


class Cluster:
    """Workers started from one app folder, and a client app; :meth:`close` stops them all.

    ``python`` runs the workers (another virtualenv's interpreter, for a plugin installed
    there); ``env`` is given to every worker (``None`` values remove a variable).
    """

    def __init__(
        self,
        directory: str | Path,
        config: Mapping[str, Any],
        python: str | Path = sys.executable,
        *,
        app: str = "proj",
        env: Mapping[str, str | None] | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.config = dict(config)
        self.python = python
        self.app = app
        self.env: dict[str, str | None] = dict(env or {})
        self.workers: list[Worker] = []
        self._client: Any = None

    @classmethod
    def create(
        cls, directory: str | Path, broker: str, conf: Mapping[str, Any] | None = None, **kwargs: Any
    ) -> Cluster:
        """Write the app module (:func:`write_app`) in ``directory`` (a ``str`` or a ``Path``) and
        return its cluster."""
        directory = Path(directory)
        name = kwargs.get("app", "proj")
        return cls(directory, write_app(directory, broker, conf, name=name), **kwargs)

    @classmethod
    def filesystem(
        cls,
        directory: str | Path,
        conf: Mapping[str, Any] | None = None,
        polling_interval: float = 0.1,
        **kwargs: Any,
    ) -> Cluster:
        """A cluster on ``filesystem://`` in ``directory`` (a ``str`` or a ``Path``): no server
        needed (see :func:`filesystem_conf`)."""
        directory = Path(directory)
        config = {**filesystem_conf(directory, polling_interval), **(conf or {})}
        (directory / "tmp").mkdir(parents=True, exist_ok=True)
        # kombu moves each message it reads to the temporary folder: keep those in the cluster's folder.
        kwargs["env"] = {"TMPDIR": str(directory / "tmp"), **(kwargs.get("env") or {})}
        return cls.create(directory, "filesystem://", config, **kwargs)

    @property
    def client(self) -> Any:
        """A Celery app of this process on the cluster's broker and control exchange."""
        if self._client is None:
            self._client = client_app(self.config)
        return self._client

    def start(
        self,
        nodename: str,
        *,
        wait: bool = True,
        timeout: float = 30.0,
        stock: bool = False,
        conf: Mapping[str, Any] | None = None,
        statedb: str | Path | None = None,
        **kwargs: Any,
    ) -> Worker:
        """Start a worker; with ``wait``, return once it is ready and answers pings.

        ``stock``: run stock Celery Mingle; ``conf``: settings of this worker only;
        ``statedb``: its ``--statedb`` file; other keywords go to :class:`Worker`.
        """
        kwargs.setdefault("python", self.python)
        kwargs.setdefault("app", self.app)
        env: dict[str, str | None] = {**self.env, **(kwargs.pop("env", None) or {})}
        if stock:
            env[STOCK_ENV] = "1"
        if conf:
            env[CONF_ENV] = json.dumps(dict(conf))
        if statedb is not None:
            kwargs["args"] = [*kwargs.get("args", ()), f"--statedb={statedb}"]
        worker = Worker(self.directory, nodename, env=env, **kwargs)
        self.workers.append(worker)
        if wait:
            worker.wait_ready(timeout)
            self.wait_listening(nodename)
        return worker

    def newcomer(self, nodename: str, timeout: float = 30.0, **kwargs: Any) -> MingleSummary:
        """Start a worker, wait until it is ready, and return the summary of its mingle."""
        self.start(nodename, timeout=timeout, **kwargs)
        summary = self.summary(nodename)
        if summary is None:
            raise AssertionError(f"{nodename} has no mingle summary:\n{self.worker(nodename).tail()}")
        return summary

    def worker(self, nodename: str) -> Worker:
        """The last worker started under that node name."""
        return next(w for w in reversed(self.workers) if w.nodename == nodename)

    def wait_listening(self, nodename: str, timeout: float = 15.0) -> None:
        """Wait until the node answers a ping: on Redis its pidbox subscription is asynchronous,
        and a broadcast (a revoke) sent right after ``ready.`` could be lost."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.client.control.ping(destination=[nodename], timeout=0.5):
                return
        raise AssertionError(f"{nodename} does not answer pings after {timeout}s")

    def revoke(
        self,
        ids: Iterable[str],
        *,
        destination: Sequence[str] | None = None,
        wait: bool = True,
        timeout: float = 60.0,
        batch: int = 1000,
    ) -> list[str]:
        """Revoke ``ids`` (``app.control.revoke``, ``batch`` ids a message) on every worker,
        or on the ``destination`` nodes only.

        With ``wait``, return once each of those still running lists all of them in ``inspect revoked``.
        """
        ids = list(ids)
        for i in range(0, len(ids), batch):
            self.client.control.revoke(ids[i : i + batch], destination=destination)
        deadline = time.monotonic() + timeout
        for worker in self.workers if wait else ():
            if destination is not None and worker.nodename not in destination:
                continue
            while worker.proc.poll() is None and not set(ids) <= self.revoked(worker.nodename):
                if time.monotonic() > deadline:
                    raise AssertionError(f"{worker.nodename} did not get the {len(ids)} revoked ids")
                time.sleep(0.1)
        return ids

    def revoked(self, nodename: str, timeout: float = 5.0) -> set[str]:
        """``inspect revoked`` of one node (empty when it does not answer)."""
        reply = self.client.control.inspect(destination=[nodename], timeout=timeout).revoked() or {}
        return set(reply.get(nodename) or ())

    def clock(self, nodename: str, timeout: float = 5.0) -> int:
        """``inspect clock`` of one node; note that every control message moves a worker's clock by one."""
        reply = self.client.control.inspect(destination=[nodename], timeout=timeout).clock() or {}
        return int(reply[nodename]["clock"])

    def status(self, nodename: str, timeout: float = 2.0, tries: int = 3) -> dict[str, Any] | None:
        """The node's ``mingle_status`` reply, or ``None``: a stock worker has no such command
        (and a node that does not answer is asked ``tries`` times)."""
        for _ in range(tries):
            replies = self.client.control.broadcast(
                STATUS_COMMAND, reply=True, timeout=timeout, destination=[nodename], limit=1
            )
            for reply in replies or ():
                answer = reply.get(nodename) if isinstance(reply, Mapping) else None
                if isinstance(answer, Mapping) and "last" in answer:
                    return dict(answer)
                if isinstance(answer, Mapping):  # {"error": "No such command ..."}: a stock worker
                    return None
        return None

    def summary(self, nodename: str, timeout: float = 2.0) -> MingleSummary | None:
        """The summary of the node's last mingle, from ``mingle_status`` (``None``: none)."""
        last = (self.status(nodename, timeout) or {}).get("last")
        return summary_from_dict(last) if isinstance(last, Mapping) else None

    def stop_node(self, nodename: str, sig: int = signal.SIGTERM) -> None:
        """Stop every worker of that node name, and forget them."""
        for worker in [w for w in self.workers if w.nodename == nodename]:
            worker.stop(sig)
            self.workers.remove(worker)

    def close(self, grace: float = 15.0) -> None:
        """SIGTERM every worker at once (they stop in parallel), SIGKILL those left after ``grace``."""
        for worker in self.workers:
            worker.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + grace
        for worker in self.workers:
            worker.stop(signal.SIGTERM, max(0.01, deadline - time.monotonic()))
        for worker in self.workers:  # children a worker may have left behind
            worker.send_signal(signal.SIGKILL, group_only_if_running=False)
        if self._client is not None:
            self._client.close()
            self._client = None
