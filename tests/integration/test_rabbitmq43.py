"""RabbitMQ 4.3's rule enforced in front of this machine's RabbitMQ 3.10: a proxy
(tests/support/amqp_proxy.py) answers a declare of a transient non-exclusive queue with
``connection.close(541)``, as 4.3 does. Workers of every profile and the CLI run behind it
without one refusal; 0.1 (a14d253) does not (the bug of issue 21); and a refusal of our own
presence queue (541 from the proxy, 403 from a permission) costs presence only, in one line,
never the consumer connection."""

from __future__ import annotations

import os
import re
import subprocess
import uuid
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_cli import cli
from tests.integration.test_rolling_upgrade import old_python
from tests.support import rabbit
from tests.support.amqp_proxy import Declare, Rabbit43Proxy
from tests.support.compat import KINDS, kind_python
from tests.support.workers import Cluster, Worker, write_app

pytestmark = pytest.mark.rabbitmq

KEY = "rabbitmq43-key-0123456789abcdef"
PROFILES: dict[str, dict[str, Any]] = {
    "default": {},
    "fast": {"mingle_profile": "fast"},
    "signing": {"mingle_profile": "fast", "mingle_hmac_keys": [KEY]},
}
CANNOT_JOIN = "mingle: cannot join the presence queue"


def connections(worker: Worker) -> int:
    """How many times the worker's consumer connected (1: its connection was never lost)."""
    return len(re.findall(r"\] Connected to amqp://", worker.log()))


@pytest.mark.parametrize("profile", list(PROFILES))
def test_workers_and_cli_behind_the_rule(tmp_path: Path, profile: str) -> None:
    with rabbit.vhost("mingle-43") as direct, Rabbit43Proxy() as proxy:
        cluster = Cluster.create(tmp_path / "c", proxy.url(direct.rsplit("/", 1)[1]), PROFILES[profile])
        try:
            cluster.start("a@r43")
            ids = cluster.revoke([str(uuid.uuid4())])
            new = cluster.start("b@r43")
            new.wait_for("mingle: summary: 1 neighbours, 1 accepted, 1 ids merged")
            assert set(ids) <= cluster.revoked("b@r43")
            for args in (
                ["status", "--timeout", "1"],
                ["check", "--timeout", "1"],
                ["revoke", str(uuid.uuid4())],
            ):
                result = cli(cluster.directory, "-A", "proj", "mingle", *args)
                assert result.returncode in (0, 1) and "541" not in result.stderr, (args, result.stderr)
            for worker in cluster.workers:
                assert CANNOT_JOIN not in worker.log() and "Unrecoverable" not in worker.log()
                assert connections(worker) == 1, worker.tail()
        finally:
            cluster.close()
    assert proxy.declares, "nothing went through the proxy"
    assert proxy.refused == [], proxy.refused


def test_the_old_version_is_refused_behind_the_rule(tmp_path: Path) -> None:
    """Would the rule have caught issue 21? 0.1's fast workers declare the presence queue
    non-durable: refused, the connection closed."""
    old = old_python()
    with rabbit.vhost("mingle-43-old") as direct, Rabbit43Proxy() as proxy:
        cluster = Cluster.create(tmp_path / "c", proxy.url(direct.rsplit("/", 1)[1]), PROFILES["fast"])
        try:
            worker = cluster.start("old@r43", python=old, wait=False)
            worker.wait_for(CANNOT_JOIN + r".*541", timeout=60)
        finally:
            cluster.close()
    assert any(d.queue.endswith(".mingle.presence") for d in proxy.refused), proxy.refused


def refuse_presence(declare: Declare) -> bool:
    return declare.queue.endswith(".mingle.presence.v2") and not declare.passive


def test_a_refused_presence_queue_costs_presence_only(tmp_path: Path) -> None:
    with rabbit.vhost("mingle-43-refused") as direct, Rabbit43Proxy(refuse=refuse_presence) as proxy:
        cluster = Cluster.create(tmp_path / "c", proxy.url(direct.rsplit("/", 1)[1]), PROFILES["fast"])
        try:
            first = cluster.start("a@refused")
            ids = cluster.revoke([str(uuid.uuid4())])
            new = cluster.start("b@refused", loglevel="DEBUG")
            new.wait_for("mingle: summary: 1 neighbours, 1 accepted, 1 ids merged")
            assert set(ids) <= cluster.revoked("b@refused")
            for worker in (first, new):
                # The proxy answers with connection.close(541); a worker may see the socket closed
                # before it reads that frame: any reason, one line, and the worker runs on.
                worker.wait_for(CANNOT_JOIN + r" \S+ \(.+\): newcomers will not count this worker")
                log = worker.log()
                assert log.count(CANNOT_JOIN) == 1 and "Unrecoverable" not in log
                assert connections(worker) == 1, worker.tail()  # the consumer connection stayed
            # Nobody counted: the newcomer found no presence queue and used the quiet window.
            assert "mingle: 0 neighbours counted in the presence queue" in new.log()
        finally:
            cluster.close()
    assert len(proxy.refused) == 2


def test_a_presence_queue_denied_by_permissions(tmp_path: Path) -> None:
    """A permission that does not let guest configure the presence queue (403, a channel error on
    the connection of its own): one line, presence off, the worker and its mingle go on."""
    with rabbit.vhost("mingle-403") as url:
        vhost = url.rsplit("/", 1)[1]
        rabbit.ctl("set_permissions", "-p", vhost, "guest", r"^(?!.*\.mingle\.presence).*$", ".*", ".*")
        cluster = Cluster.create(tmp_path / "c", url, PROFILES["fast"])
        try:
            first = cluster.start("a@denied")
            new = cluster.start("b@denied")
            new.wait_for("mingle: summary: 1 neighbours, 1 accepted")
            for worker in (first, new):
                worker.wait_for(CANNOT_JOIN + r" \S+ \(.*ACCESS_REFUSED")
                log = worker.log()
                assert log.count(CANNOT_JOIN) == 1 and "Unrecoverable" not in log
                assert connections(worker) == 1, worker.tail()
        finally:
            cluster.close()


def run_celery(python: Path, directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "CELERY_MINGLE_PLUGINS"}
    env["PYTHONPATH"] = str(directory)
    return subprocess.run(
        [str(python), "-m", "celery", "-A", "proj", *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_cli_on_kombu_53_behind_the_rule(tmp_path: Path) -> None:
    """kombu up to 5.5 declares its mailbox reply queue transient and shared: 4.3 refuses it. Our
    commands make theirs exclusive (``compat.exclusive_replies``); Celery's own
    ``celery inspect ping`` on the same kombu is refused, for comparison."""
    (kind,) = [k for k in KINDS if k.label == "ours54"]
    old_kombu = kind_python(kind)
    with rabbit.vhost("mingle-43-kombu53") as direct, Rabbit43Proxy() as proxy:
        vhost = direct.rsplit("/", 1)[1]
        cluster = Cluster.create(tmp_path / "workers", direct, PROFILES["fast"])  # Celery 5.7, direct
        try:
            cluster.start("a@k53")
            cluster.start("b@k53")
            client_dir = tmp_path / "client"
            write_app(client_dir, proxy.url(vhost), {"control_exchange": cluster.config["control_exchange"]})
            status = run_celery(old_kombu, client_dir, "mingle", "status", "--timeout", "1")
            assert "a@k53" in status.stdout and "b@k53" in status.stdout, (status.stdout, status.stderr)
            revoke = run_celery(old_kombu, client_dir, "mingle", "revoke", str(uuid.uuid4()))
            assert revoke.returncode == 0, revoke.stderr
            assert proxy.refused == [], proxy.refused
            assert any(".reply." in d.queue and d.exclusive for d in proxy.declares), proxy.declares
            stock = run_celery(old_kombu, client_dir, "inspect", "ping", "--timeout", "1")
            assert any(".reply." in d.queue for d in proxy.refused), (proxy.refused, stock.stderr)
        finally:
            cluster.close()
