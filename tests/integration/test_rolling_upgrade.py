"""A rolling upgrade on RabbitMQ: workers of 0.1 (main at a14d253, whose presence queue
``<exchange>.mingle.presence`` is non-durable) run beside workers of this version (presence queue
``<exchange>.mingle.presence.v2``, durable, classic) and keep mingling both ways, fast profile.

Redeclaring a queue with other flags is ``406 PRECONDITION_FAILED`` and closes the channel, so
the two versions use two queues and two sets of keys: each counts its own kind and sees the
other as workers without presence, named by the counted ones (mingle_plugins/hello/presence.py).

The old version is installed from git (``git archive a14d253`` of this repository) in a venv
outside the checkout, under ``${XDG_CACHE_HOME:-~/.cache}/celery-mingle-plugins/venvs``, reused
between runs. Skipped, with the reason, when the commit is not in this repository.
"""

from __future__ import annotations

import fcntl
import io
import os
import subprocess
import sys
import tarfile
import uuid
from pathlib import Path

import pytest

from tests.support import rabbit
from tests.support.venvs import ROOT
from tests.support.workers import Cluster

pytestmark = pytest.mark.rabbitmq

OLD_COMMIT = "a14d253"
FAST = {"mingle_profile": "fast"}


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "celery-mingle-plugins" / "venvs"


def old_python(commit: str = OLD_COMMIT) -> Path:
    """The interpreter of a venv with celery-mingle-plugins at ``commit`` (built once)."""
    found = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-t", commit], capture_output=True, text=True)
    if found.returncode != 0 or found.stdout.strip() != "commit":
        pytest.skip(
            f"commit {commit} (the old version) is not in the repository at {ROOT}: no rolling upgrade test"
        )
    venv = cache_dir() / f"mingle-{commit}-py{sys.version_info[0]}{sys.version_info[1]}"
    python = venv / "bin" / "python"
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (venv / ".complete").exists():
            return python
        src = venv.parent / f"src-{commit}"
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", "--format=tar", commit], capture_output=True, check=True
        )
        with tarfile.open(fileobj=io.BytesIO(archive.stdout)) as tar:
            tar.extractall(src, filter="data")
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", str(src)],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            raise RuntimeError(
                f"pip install of {commit} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
        (venv / ".complete").write_text(commit)
    return python


def revoke_on(cluster: Cluster, node: str) -> set[str]:
    ids = {str(uuid.uuid4()) for _ in range(2)}
    cluster.revoke(sorted(ids), destination=[node])
    return ids


def presence_queues(vhost: str) -> dict[str, tuple[str, str]]:
    """``{name: (durable, consumers)}`` of the presence queues of the vhost."""
    out = rabbit.ctl("list_queues", "-q", "-p", vhost, "name", "durable", "consumers")
    rows = (line.split("\t") for line in out.splitlines())
    return {r[0]: (r[1], r[2]) for r in rows if len(r) == 3 and ".mingle.presence" in r[0]}


def test_old_and_new_workers_mingle_both_ways(tmp_path: Path) -> None:
    old = old_python()
    with rabbit.vhost("mingle-upgrade") as url:
        vhost = url.rsplit("/", 1)[1]
        cluster = Cluster.create(tmp_path / "fleet", url, FAST)
        try:
            ids: dict[str, set[str]] = {}
            for node in ("old1@up", "old2@up"):
                cluster.start(node, python=old)
                ids[node] = revoke_on(cluster, node)
            # A new worker joins a fleet of old ones: it hears both, and is counted in its own queue.
            cluster.start("new1@up", loglevel="DEBUG")
            ids["new1@up"] = revoke_on(cluster, "new1@up")
            assert ids["old1@up"] | ids["old2@up"] <= cluster.revoked("new1@up")
            cluster.start("new2@up", loglevel="DEBUG")
            ids["new2@up"] = revoke_on(cluster, "new2@up")
            assert set().union(*ids.values()) <= cluster.revoked("new2@up")
            # An old worker joins the mixed fleet (a rollback, or a node not upgraded yet).
            cluster.start("old3@up", python=old, loglevel="DEBUG")
            assert set().union(*ids.values()) <= cluster.revoked("old3@up")
            ids["old3@up"] = revoke_on(cluster, "old3@up")
            # And a new one after it: everything from everyone, both ways.
            cluster.start("new3@up", loglevel="DEBUG")
            assert set().union(*ids.values()) <= cluster.revoked("new3@up")
            exchange = cluster.config["control_exchange"]
            queues = presence_queues(vhost)
            assert queues == {
                f"{exchange}.mingle.presence": ("false", "3"),
                f"{exchange}.mingle.presence.v2": ("true", "3"),
            }, queues
            for worker in cluster.workers:
                log = worker.log() + worker.output()
                for trouble in ("PRECONDITION_FAILED", "Unrecoverable error", "cannot join the presence"):
                    assert trouble not in log, f"{worker.nodename}: {trouble}\n{worker.tail()}"
            # The new ones counted only their own kind, and awaited the old ones by name.
            new3 = cluster.worker("new3@up").log()
            assert f"mingle: 2 neighbours counted in the presence queue {exchange}.mingle.presence.v2" in new3
            assert "mingle: summary: 5 neighbours, 5 accepted" in new3
            assert "mingle: summary: 4 neighbours, 4 accepted" in cluster.worker("old3@up").log()
        finally:
            cluster.close()
        assert presence_queues(vhost) == {}  # both went with their last consumer
