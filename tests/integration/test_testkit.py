"""The test kit (``mingle_plugins.testkit`` and its pytest plugin), loaded the way the docs say.

docs/testing-plugins.md tells plugin authors to load the fixtures with ``pytest_plugins``;
this module does the same. The workers run on ``filesystem://`` in ``tmp_path`` (no server),
with the filesystem transport plugin of this checkout (installed in the dev virtualenv).
"""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from mingle_plugins import MingleSummary

if TYPE_CHECKING:  # imported by pytest_plugins below, so that pytest rewrites its asserts
    from mingle_plugins.testkit.pytest_plugin import MakeCluster

pytest_plugins = ["mingle_plugins.testkit.pytest_plugin"]


def test_newcomer_summary_on_filesystem(mingle_cluster: MakeCluster) -> None:
    cluster = mingle_cluster()
    cluster.start("one@kit")
    cluster.start("two@kit")
    ids = cluster.revoke([str(uuid.uuid4()) for _ in range(3)])
    assert all(set(ids) <= cluster.revoked(n) for n in ("one@kit", "two@kit"))  # revoke() waited
    only_one = cluster.revoke([str(uuid.uuid4())], destination=["one@kit"])
    assert set(only_one) <= cluster.revoked("one@kit") and not set(only_one) & cluster.revoked("two@kit")

    summary = cluster.newcomer("new@kit", conf={"mingle_profile": "fast"})
    assert isinstance(summary, MingleSummary)
    assert summary.hostname == "new@kit" and summary.transport == "filesystem"
    assert sorted(summary.accepted) == ["one@kit", "two@kit"]
    assert "one@kit" in summary.merged_from  # the only one with an id the other lacks
    assert (summary.ids_merged, summary.revoked_after, summary.rejected) == (4, 4, {})
    assert summary.clock_after > summary.clock_before
    assert "filesystem" in summary.plugins
    assert {*ids, *only_one} <= cluster.revoked("new@kit")
    log = cluster.worker("new@kit").log()
    assert "mingle: summary: 2 neighbours, 2 accepted, 4 ids merged, 0 dropped by policy, 0 rejected" in log


def test_mixed_cluster_and_statedb(mingle_cluster: MakeCluster, tmp_path: Path) -> None:
    """A stock neighbour (``stock=True``) and a newcomer whose ``--statedb`` keeps its ids."""
    cluster = mingle_cluster()
    cluster.start("stock@kit", stock=True)
    assert cluster.status("stock@kit") is None  # stock Celery has no mingle_status
    assert cluster.summary("stock@kit") is None
    ids = cluster.revoke([str(uuid.uuid4()) for _ in range(2)])

    statedb = tmp_path / "ours.db"
    summary = cluster.newcomer("ours@kit", statedb=statedb)
    assert summary.merged_from == ["stock@kit"] and summary.ids_merged == 2
    cluster.stop_node("ours@kit")  # SIGTERM: the worker saves its revoked ids in the state db
    cluster.stop_node("stock@kit")
    again = cluster.newcomer("ours@kit", statedb=statedb)
    assert (again.revoked_before, again.neighbours) == (2, [])  # loaded from the state db, alone
    assert set(ids) <= cluster.revoked("ours@kit")


def test_nothing_loads_on_import() -> None:
    """``import mingle_plugins`` loads neither the kit nor pytest; the kit itself needs no pytest."""
    code = (
        "import sys, mingle_plugins; "
        "print(sorted(m for m in ('pytest', 'mingle_plugins.testkit') if m in sys.modules)); "
        "import mingle_plugins.testkit; print('pytest' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.splitlines() == ["[]", "False"]
