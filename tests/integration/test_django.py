"""A small real Django project (tests/fixtures/django_site) whose workers mingle with a plugin.

Its settings are Django settings in the ``CELERY_`` namespace (``CELERY_WORKER_CONSUMER``,
``CELERY_MINGLE_PLUGINS``, ``CELERY_MINGLE_EXPECT_REPLIES``) on the filesystem transport, so no
server is needed; workers are started with ``celery -A mysite worker``. The Django blocks of
docs/quickstart.md are this project's files, word for word.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.support import services
from tests.support.venvs import ROOT
from tests.support.workers import Worker

SITE = ROOT / "tests" / "fixtures" / "django_site"
QUICKSTART = ROOT / "docs" / "quickstart.md"
BLOCK = re.compile(r"^<!-- quickstart: django -->\n```python\n# (\S+).*?\n(.*?)^```", re.M | re.S)


@pytest.fixture
def site(tmp_path: Path) -> Path:
    if importlib.util.find_spec("django") is None:
        services.missing("django is not installed (pip install -r requirements-test.txt)")
    if importlib.util.find_spec("mingle_filesystem") is None:
        services.missing(
            "the filesystem transport plugin is not installed (pip install -r requirements-test.txt)"
        )
    copy = tmp_path / "django_site"
    shutil.copytree(SITE, copy)
    (copy / "broker").mkdir()
    (copy / "broker-control").mkdir()
    return copy


def celery(site: Path, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "mysite", *args],
        cwd=site,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(site)},
    )
    assert result.returncode == 0, (
        f"celery {args} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    )
    return result.stdout


def test_the_quickstart_django_blocks_are_this_project() -> None:
    found = BLOCK.findall(QUICKSTART.read_text())
    assert [name for name, _ in found] == ["mysite/celery.py", "mysite/settings.py"]
    for name, text in found:
        assert text in (SITE / name).read_text(), f"docs/quickstart.md's {name} is not the test project's"


def test_django_workers_mingle_with_the_plugin(site: Path) -> None:
    celery(site, "mingle", "check")  # reads the same settings; exits 1 when one is broken
    workers: list[Worker] = []
    try:
        for node in ("dj1@django", "dj2@django"):
            workers.append(Worker(site, node, app="mysite"))
        for worker in workers:
            worker.wait_ready()
        ids = [str(uuid.uuid4()) for _ in range(3)]
        out = celery(site, "control", "revoke", *ids)
        assert out.count("flagged as revoked") == 2, out
        newcomer = Worker(site, "newcomer@django", app="mysite")
        workers.append(newcomer)
        newcomer.wait_ready()
        # Two neighbours counted through the plugin, both merged: every id learnt.
        newcomer.wait_for(
            r"mingle: summary: 2 neighbours, 2 accepted, 3 ids merged, 0 dropped by policy, 0 rejected"
        )
        status = json.loads(celery(site, "mingle", "status", "--json", "-d", "newcomer@django"))
        last = status["workers"]["newcomer@django"]["last"]
        assert last["transport"] == "filesystem"
        # CELERY_MINGLE_PLUGINS = ["filesystem"] was read: the pgmq plugin, installed too, is not loaded.
        assert last["plugins"] == ["filesystem"]
        assert sorted(last["accepted"]) == ["dj1@django", "dj2@django"]
        revoked = json.loads(celery(site, "inspect", "revoked", "--json", "-d", "newcomer@django"))
        assert set(revoked["newcomer@django"]) == set(ids)
    finally:
        for worker in workers:
            worker.stop()
