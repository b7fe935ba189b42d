"""Stores on the real services, each test on a key or table of its own (removed after it)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from mingle_store.backends import RevocationStore, open_store
from tests.support import services
from tests.support.brokers import PrivateRedis, free_port
from tests.support.workers import Cluster, write_app


@pytest.fixture
def claims() -> Iterator[contextlib.ExitStack]:
    """The Redis databases a test claimed (``services.redis_db``: random, empty, flushed at the
    end); released after its clusters stopped, since ``make_cluster`` needs this fixture too."""
    with contextlib.ExitStack() as stack:
        yield stack


def store_url(backend: str, tmp_path: Path, claims: contextlib.ExitStack) -> str:
    if backend == "redis":
        return claims.enter_context(services.redis_db())
    if backend == "postgres":
        return services.require("postgres")
    return f"sqlite:///{tmp_path / 'store.db'}"


@pytest.fixture(params=["redis", "postgres", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store_conf(backend: str, tmp_path: Path, claims: contextlib.ExitStack) -> Iterator[dict[str, Any]]:
    """``mingle_plugin_settings["store"]`` on a key or table of this test's own."""
    conf = {"url": store_url(backend, tmp_path, claims), "name": f"mingle_store_test_{uuid.uuid4().hex[:10]}"}
    yield conf
    try:
        open_store(conf["url"], conf["name"]).forget()
    except Exception:  # the test may have made the service unreachable for this key: nothing to remove
        pass


@pytest.fixture
def store(store_conf: dict[str, Any]) -> RevocationStore:
    return open_store(store_conf["url"], store_conf["name"], timeout=5.0)


@pytest.fixture
def make_cluster(tmp_path: Path, claims: contextlib.ExitStack) -> Iterator[Callable[..., Cluster]]:
    """``make_cluster(broker, conf)`` -> :class:`Cluster` of real workers, closed after the test.
    ``broker=None``: a Redis database of this test's own (one for all its clusters)."""
    clusters: list[Cluster] = []
    own: list[str] = []

    def make(broker: str | None, conf: dict[str, Any] | None = None) -> Cluster:
        if broker is None:
            own[:] = own or [claims.enter_context(services.redis_db())]
            broker = own[0]
        directory = tmp_path / f"cluster{len(clusters)}"
        cluster = Cluster(directory, write_app(directory, broker, conf))
        clusters.append(cluster)
        return cluster

    yield make
    for cluster in clusters:
        cluster.close()


# -- stores a test may stop and start again (never the shared services) ----------------------------


class PrivatePostgres:
    """One PostgreSQL server of this test (``initdb`` + ``pg_ctl``, as the ``postgres`` user when
    run as root), on a free port; :meth:`stop` crashes it (``-m immediate``), :meth:`start` brings
    it back with its data."""

    def __init__(self) -> None:
        self.initdb = shutil.which("initdb")
        self.pg_ctl = shutil.which("pg_ctl")
        if self.initdb is None or self.pg_ctl is None:
            services.missing("initdb / pg_ctl are not installed (needed for a private PostgreSQL)")
        self.directory = Path(tempfile.mkdtemp(prefix="mingle-store-pg-"))
        self.data = self.directory / "data"
        self.port = free_port()
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        self.user = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.user:
            shutil.chown(self.directory, "postgres")
        self._run([self.initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync"])

    def _run(self, cmd: list[str]) -> None:
        done = subprocess.run([*self.user, *cmd], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"{cmd[0]} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = self.directory / "server.log"
        self._run([str(self.pg_ctl), "-D", str(self.data), "-o", options, "-l", str(log), "-w", "start"])

    def stop(self) -> None:
        self._run([str(self.pg_ctl), "-D", str(self.data), "-m", "immediate", "-w", "stop"])

    def close(self) -> None:
        try:
            self.stop()
        except RuntimeError:
            pass  # not running
        shutil.rmtree(self.directory, ignore_errors=True)


class StoppableStore:
    """A store on a server of this test: ``url``, :meth:`stop` (a crash), :meth:`start`."""

    def __init__(self, backend: str, directory: Path) -> None:
        self.backend = backend
        self.server: PrivateRedis | PrivatePostgres
        if backend == "redis":
            self.server = PrivateRedis(directory / "store-redis")
        else:
            self.server = PrivatePostgres()
        self.server.start()
        self.url = self.server.url

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()

    def close(self) -> None:
        self.server.close()


@pytest.fixture
def stoppable_store(backend: str, tmp_path: Path) -> Iterator[StoppableStore]:
    store = StoppableStore(backend, tmp_path)
    yield store
    store.close()


@pytest.fixture
def isolated_store_url(backend: str, tmp_path: Path, claims: contextlib.ExitStack) -> Iterator[str]:
    """A URL of this test's own: a random free Redis database (flushed after), or a PostgreSQL
    schema (dropped after)."""
    if backend == "redis":
        yield claims.enter_context(services.redis_db())
        return
    base = services.require("postgres")
    import psycopg

    schema = f"mingle_store_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    yield f"{base}?options=-csearch_path%3D{schema}"
    with psycopg.connect(base, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


def write_raw(
    conf: dict[str, Any], member: bytes, score: float, mac: str | None = None, table: str = ""
) -> None:
    """Write one entry straight into the store's layout v2 (or into ``table``: the 0.1 layout), as
    anyone with access to the key or the table can."""
    url, name = conf["url"], conf["name"]
    if url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(url)
        client.zadd(table or f"{name}:v2", {member: score})
        if mac is not None:
            client.hset(f"{name}:v2:mac", member, mac)
        return
    if table:  # the 0.1 table
        columns, values = "(id, revoked_at, expires_at)", (member.decode(), score, score + 10800)
    else:
        columns, values = "(id, revoked_at, mac)", (member, score, mac)  # type: ignore[assignment]
    sql = f"INSERT INTO {table or name + '_v2'} {columns} VALUES ({{p}}, {{p}}, {{p}})"
    if url.startswith("sqlite"):
        import sqlite3

        with closing(sqlite3.connect(url.split("://", 1)[1][1:])) as conn:
            conn.execute(sql.format(p="?"), values)
            conn.commit()
        return
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute(sql.format(p="%s"), values)


def make_old_layout(conf: dict[str, Any]) -> None:
    """The key or table of celery-mingle-store 0.1, empty."""
    url, name = conf["url"], conf["name"]
    if url.startswith("redis"):
        return  # a sorted set is made by its first ZADD
    sql = (
        f"CREATE TABLE {name} (id TEXT PRIMARY KEY, revoked_at DOUBLE PRECISION NOT NULL, "
        "expires_at DOUBLE PRECISION NOT NULL)"
    )
    if url.startswith("sqlite"):
        import sqlite3

        with closing(sqlite3.connect(url.split("://", 1)[1][1:])) as conn:
            conn.execute(sql)
            conn.commit()
        return
    import psycopg

    with psycopg.connect(url) as conn:
        conn.execute(sql)
