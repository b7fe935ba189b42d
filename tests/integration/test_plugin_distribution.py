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
@pytest.mark.parametrize("profile", ["stock", "fast"])
def test_installed_policy_decides_by_node_name(
    make_cluster, redis_url: str, audit_python: Path, tmp_path: Path, profile: str
) -> None:
    """The example policy of docs/writing-a-plugin.md, on the asking side (per reply with the stock
    profile, bulk with the fast one) and on the answering side."""
    conf = {"mingle_profile": profile, "mingle_plugin_settings": {"audit": {"merge_from": ["prod-"]}}}
    cluster = make_cluster(redis_url, conf, python=audit_python)
    prod1 = cluster.start("prod-1@dist")
    staging_db = tmp_path / "staging.db"
    staging1 = cluster.start("staging-1@dist", args=[f"--statedb={staging_db}"])
    prod = {str(uuid.uuid4()) for _ in range(3)}
    staging = {str(uuid.uuid4()) for _ in range(3)}
    cluster.client.control.revoke(sorted(prod), destination=["prod-1@dist"])
    cluster.client.control.revoke(sorted(staging), destination=["staging-1@dist"])

    newcomer = cluster.start("prod-2@dist")
    newcomer.wait_for(r"mingle audit: prod-2@dist merged 3 ids from prod-1@dist, dropped 3")
    assert "mingle: summary: 2 neighbours, 2 accepted, 3 ids merged, 3 dropped by policy, 0 rejected" in (
        newcomer.log()
    )
    assert "mingle: plugin 'audit' dropped 3 ids of staging-1@dist" in newcomer.log()
    learnt = cluster.revoked("prod-2@dist")
    assert prod <= learnt and not staging & learnt

    # The answering side: staging-1 comes back with its ids in its hello request.
    staging1.stop()
    cluster.start("staging-1@dist", args=[f"--statedb={staging_db}"])
    prod1.wait_for(r"mingle: hello from staging-1@dist: 3 ids received, 0 merged, 3 dropped by policy")
    assert not staging & cluster.revoked("prod-1@dist")
    assert staging <= cluster.revoked("staging-1@dist")  # its own ids stay its own

    status = cluster.client.control.broadcast(
        "mingle_status", reply=True, timeout=2, destination=["prod-2@dist"]
    )
    (reply,) = status
    last = reply["prod-2@dist"]["last"]
    assert last["dropped_by"] == {"audit": 3} and last["merged_from"] == ["prod-1@dist"]
    assert last["nodes"]["staging-1@dist"]["dropped_by"] == {"audit": 3}
    plugins = {p["name"]: p for p in reply["prod-2@dist"]["plugins"]}
    assert plugins["audit"]["distribution"] == "mingle-audit"
    assert plugins["audit"]["version"] == "1.2.3"
    assert plugins["audit"]["status"] == "loaded"
    assert plugins["audit"]["hooks"] == [
        "mingle_add_settings",
        "mingle_merge_revoked",
        "mingle_sync_complete",
    ]


@pytest.mark.slow
def test_worker_without_the_plugin_allowed_ignores_it(
    make_cluster, redis_url: str, audit_python: Path
) -> None:
    cluster = make_cluster(redis_url, {"mingle_disabled_plugins": ["mingle-audit"]}, python=audit_python)
    cluster.start("staging-1@dist")
    ids = {str(uuid.uuid4()) for _ in range(2)}
    cluster.client.control.revoke(sorted(ids))
    cluster.start("prod-3@dist").wait_for(
        "mingle: summary: 1 neighbours, 1 accepted, 2 ids merged, 0 dropped by policy, 0 rejected"
    )
    assert ids <= cluster.revoked("prod-3@dist")
