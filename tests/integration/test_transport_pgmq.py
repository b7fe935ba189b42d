"""The ``celery-mingle-pgmq`` plugin with real workers on kombu 5.7's ``pgmq://`` transport.

Needs PostgreSQL on 127.0.0.1:5432 (trust auth, user ``postgres``). Each run
creates a scratch database ``mingle_pgmq_test_<random>``, installs the SQL-only
PGMQ schema there (``python -m mingle_pgmq.schema``) and drops it at the end.
The workers run in a virtualenv with the core and the plugin pip-installed.

kombu's ``celery inspect`` cannot get replies on pgmq (see the plugin's
README), so this file asks the workers through :data:`ASK`, which sends a
pidbox command with replies asked into a short queue by the default exchange:
the same route the plugin's hello uses.

``MINGLE_TEST_CORE=/path`` installs another checkout of the core in the venv.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.venvs import ROOT, venv_python

PLUGIN = ROOT / "transports" / "pgmq"
CORE = Path(os.environ.get("MINGLE_TEST_CORE", ROOT))
CELERY = "celery==5.7.0"
ADMIN_DSN = "postgresql://postgres@127.0.0.1:5432/postgres"

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

ASK = r"""
import json, sys, time, uuid
from kombu import Consumer, Producer, Queue
from proj import app

method, destination = sys.argv[1], sys.argv[2]
with app.connection_for_write() as conn:
    chan = conn.default_channel
    mailbox = app.control.mailbox(conn)
    queue = Queue("mingletest_" + uuid.uuid4().hex[:12], durable=False, auto_delete=True)
    queue(chan).declare()
    ticket = uuid.uuid4().hex
    Producer(chan).publish(
        {"method": method, "arguments": {}, "destination": [destination], "pattern": None,
         "matcher": None, "ticket": ticket, "reply_to": {"exchange": "", "routing_key": queue.name}},
        exchange=mailbox.exchange.name, declare=[mailbox.exchange],
        headers={"clock": 0, "expires": time.time() + 15}, serializer="json",
    )
    got = {}
    conn.transport.polling_interval = 0.05
    with Consumer(chan, [queue], callbacks=[lambda body, msg: got.update(body)], no_ack=True,
                  accept=["json"]):
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            try:
                conn.drain_events(timeout=1)
            except TimeoutError:
                pass
    chan.queue_delete(queue.name)
print(json.dumps(got))
"""

REVOKE = "import sys\nfrom proj import app\napp.control.revoke(sys.argv[1:])\n"


def run(python: Path, *args: str, cwd: Path | None = None, timeout: float = 60) -> str:
    # Never the repository as cwd: ``python -c`` would import its mingle_plugins, not the venv's.
    cwd = cwd or Path(python).parent
    result = subprocess.run(
        [str(python), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "PYTHONPATH": str(cwd)},
    )
    assert result.returncode == 0, f"{args[:2]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.fixture(scope="module")
def pgmq_python() -> Path:
    return venv_python([CELERY], editable=[CORE, PLUGIN], label="pgmq-plugin")


@pytest.fixture(scope="module")
def core_python() -> Path:
    return venv_python([CELERY], editable=[ROOT], label="core-only")


@pytest.fixture(scope="module")
def database(pgmq_python: Path) -> Iterator[str]:
    """A scratch database with the PGMQ SQL installed; dropped at the end."""
    name = f"mingle_pgmq_test_{uuid.uuid4().hex[:10]}"
    admin = (
        "import sys, psycopg\n"
        "with psycopg.connect(sys.argv[1], autocommit=True) as c:\n"
        "    c.execute(sys.argv[2])\n"
    )
    run(pgmq_python, "-c", admin, ADMIN_DSN, f'CREATE DATABASE "{name}"')
    try:
        dsn = f"postgresql://postgres@127.0.0.1:5432/{name}"
        run(pgmq_python, "-m", "mingle_pgmq.schema", dsn)
        yield name
    finally:
        run(pgmq_python, "-c", admin, ADMIN_DSN, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pgmq_conf(database: str, kombu_defaults: bool = False, **extra: Any) -> dict[str, Any]:
    # The SQL-only install has no extension to create. Unless ``kombu_defaults``: no long
    # poll of the task queue and a 0.5 s polling interval (see the plugin's README).
    options: dict[str, Any] = {"init_extension": False}
    if not kombu_defaults:
        options.update(wait_time_seconds=0, polling_interval=0.5)
    return {
        "broker_url": f"pgmq://postgres@127.0.0.1:5432/{database}",
        "broker_transport_options": options,
        **extra,
    }


def ask(cluster: Any, method: str, nodename: str) -> Any:
    out = run(Path(cluster.python), "-c", ASK, method, nodename, cwd=cluster.directory)
    reply = json.loads(out.strip().splitlines()[-1])
    assert nodename in reply, f"no {method} reply from {nodename}: {out}"
    return reply[nodename]


def start(cluster: Any, nodename: str, **kwargs: Any) -> Any:
    """``Cluster.start`` without its in-process ping (this process has no pgmq client, and
    ``celery inspect``/``ping`` get no reply on pgmq): wait for ``ready.`` and a reply through :data:`ASK`."""
    worker = cluster.start(nodename, wait=False, **kwargs)
    worker.wait_ready()
    assert ask(cluster, "ping", nodename) == {"ok": "pong"}
    return worker


def core_has_reply_queue(python: Path) -> bool:
    out = run(python, "-c", "import mingle_pgmq; print(mingle_pgmq.core_supports_reply_queue())")
    return out.strip() == "True"


@pytest.mark.parametrize(
    ("kombu_defaults", "expect"),
    [(False, False), (False, True), (True, False)],
    ids=["poll-0.5s", "poll-0.5s-expect", "kombu-defaults"],
)
def test_newcomer_learns_revoked_ids_and_clock(
    make_cluster: Any, pgmq_python: Path, database: str, kombu_defaults: bool, expect: bool
) -> None:
    conf = pgmq_conf(database, kombu_defaults, mingle_expect_replies=expect)
    cluster = make_cluster("pgmq://", conf, python=pgmq_python)
    assert core_has_reply_queue(pgmq_python), "the core lacks HelloOptions.reply_queue"
    names = [f"pg{i}@mt" for i in range(3)]
    for name in names:
        start(cluster, name)
    ids = [str(uuid.uuid4()) for _ in range(5)]
    run(pgmq_python, "-c", REVOKE, *ids, cwd=cluster.directory)
    for name in names:
        assert set(ids) <= set(ask(cluster, "revoked", name))
    clocks = [int(ask(cluster, "clock", name)["clock"]) for name in names]

    newcomer = start(cluster, "new@mt", loglevel="DEBUG")
    newcomer.wait_for(r"mingle: summary: ")
    log = newcomer.log()
    assert "mingle: sync with 3 nodes" in log
    assert re.search(
        r"mingle: summary: 3 neighbours, 3 accepted, 5 ids merged, 0 dropped by policy, 0 rejected", log
    )
    if expect:
        assert "mingle: pgmq: 3 neighbours bound" in log
    assert set(ids) <= set(ask(cluster, "revoked", "new@mt"))
    assert int(ask(cluster, "clock", "new@mt")["clock"]) > max(clocks)
    seconds = newcomer.mingle_seconds()
    # Neighbours read their pidbox within polling_interval (+ one 2 s long poll with kombu's
    # defaults: 1 s polling, wait_time_seconds=10); the plugin adds a 0.5 s margin.
    latency = 1.0 + 2.0 if kombu_defaults else 0.5
    print(f"\npgmq neighbour latency {latency}s, expect_replies={expect}: mingle took {seconds:.3f}s")
    assert seconds < latency + 0.5 + 0.5
    cluster.close()  # every worker at once: they take seconds to stop


def test_worker_without_the_plugin_starts_and_says_why(
    make_cluster: Any, pgmq_python: Path, database: str, tmp_path: Path
) -> None:
    """Core installed, plugin not: the worker runs, mingle is off, and the log says why."""
    python = venv_python([CELERY, "kombu[pgmq]"], editable=[CORE], label="pgmq-core-only")
    cluster = make_cluster("pgmq://", pgmq_conf(database), python=python)
    worker = start(cluster, "bare@mt")
    assert "mingle: off: no plugin claims the 'pgmq' transport" in worker.log()
    assert "mingle: searching for neighbors" not in worker.log()


def test_worker_without_the_client_library_cannot_start(
    make_cluster: Any, core_python: Path, database: str
) -> None:
    """No ``pgmq`` client: kombu's transport raises ImportError before any bootstep exists.

    Stock Celery behaves the same; no Mingle step (ours or stock) is ever created,
    so there is nothing to log a ``mingle:`` line. The worker exits non-zero with
    kombu's message naming the missing library.
    """
    cluster = make_cluster("pgmq://", pgmq_conf(database), python=core_python)
    worker = cluster.start("nolib@mt", wait=False)
    assert worker.proc.wait(60) != 0
    output = worker.output() + worker.log()
    assert "PGMQ transport requires the pgmq library" in output
    assert "mingle:" not in output
