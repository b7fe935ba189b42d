"""A real plugin distribution, pip-installed into a fresh virtualenv, used by real workers."""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from tests.support.venvs import ROOT, venv_python

PLUGIN = Path(__file__).resolve().parents[1] / "fixtures" / "mingle_audit"


@pytest.fixture(scope="module")
def audit_python() -> Path:
    return venv_python(["celery[redis]==5.7.0"], editable=[ROOT, PLUGIN], label="audit")


@pytest.mark.slow
def test_installed_plugin_is_found_and_used(make_cluster, redis_url: str, audit_python: Path) -> None:
    cluster = make_cluster(redis_url, python=audit_python)
    cluster.start("prod-1@dist")
    cluster.start("staging-1@dist")
    prod = {str(uuid.uuid4()) for _ in range(3)}
    staging = {str(uuid.uuid4()) for _ in range(3)}
    cluster.client.control.revoke(sorted(prod), destination=["prod-1@dist"])
    cluster.client.control.revoke(sorted(staging), destination=["staging-1@dist"])
    newcomer = cluster.start("prod-2@dist")
    newcomer.wait_for(r"mingle audit: prod-2@dist merged 3 ids from prod-1@dist")
    log = newcomer.log()
    assert (
        "mingle: rejected the reply of staging-1@dist: staging workers do not revoke production tasks" in log
    )
    learnt = cluster.revoked("prod-2@dist")
    assert prod <= learnt and not staging & learnt

    status = cluster.client.control.broadcast(
        "mingle_status", reply=True, timeout=2, destination=["prod-2@dist"]
    )
    (reply,) = status
    plugins = {p["name"]: p for p in reply["prod-2@dist"]["plugins"]}
    assert plugins["audit"]["distribution"] == "mingle-audit"
    assert plugins["audit"]["version"] == "1.2.3"
    assert plugins["audit"]["status"] == "loaded"
    assert plugins["audit"]["hooks"] == ["mingle_on_reply", "mingle_sync_complete"]


@pytest.mark.slow
def test_worker_without_the_plugin_allowed_ignores_it(
    make_cluster, redis_url: str, audit_python: Path
) -> None:
    cluster = make_cluster(redis_url, {"mingle_disabled_plugins": ["mingle-audit"]}, python=audit_python)
    cluster.start("staging-1@dist")
    ids = {str(uuid.uuid4()) for _ in range(2)}
    cluster.client.control.revoke(sorted(ids))
    cluster.start("prod-3@dist").wait_for("mingle: summary: 1 neighbours, 1 merged, 2 ids merged, 0 rejected")
    assert ids <= cluster.revoked("prod-3@dist")
