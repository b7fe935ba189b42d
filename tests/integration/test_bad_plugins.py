"""Bad plugins never stop a worker and never lose revoked ids (real workers, real Redis).

Every fake plugin lives in one distribution, ``tests/fixtures/plugins/mingle_test_faults``,
installed with this package into one virtualenv; each worker picks the plugin
of its case with ``CELERY_MINGLE_PLUGINS``. Every newcomer starts with ids
from ``--statedb`` and mingles with one neighbour that has ids of its own, a
fake one (``tests/fixtures/fake_neighbour.py``) that never sends the
newcomer's own ids back, so the statedb ids found afterwards were kept by the
newcomer itself.
"""

from __future__ import annotations

import json
import os
import re
import shelve
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
from celery.utils.collections import LimitedSet
from celery.worker.state import Persistent

from tests.conftest import claimed_broker
from tests.support.brokers import FakeNeighbour
from tests.support.venvs import ROOT, venv_python
from tests.support.workers import Cluster, Worker, write_app

pytestmark = [pytest.mark.redis, pytest.mark.slow]

FAKE_PLUGINS = ROOT / "tests" / "fixtures" / "plugins" / "mingle_test_faults"
PLUGIN_TIMEOUT = 2.0
NEIGHBOUR = "nb@badplugins"


def write_statedb(path: Path, ids: list[str]) -> None:
    """Write a ``--statedb`` file holding ``ids`` as revoked, as a stopped worker leaves it."""
    path.unlink(missing_ok=True)
    state = SimpleNamespace(revoked=LimitedSet(maxlen=50000, expires=10800))
    for task_id in ids:
        state.revoked.add(task_id)
    Persistent(state, str(path)).save()
    with shelve.open(str(path)) as db:  # check the file as a worker will read it
        assert "zrevoked" in db


def new_ids(n: int = 3) -> list[str]:
    return [str(uuid.uuid4()) for _ in range(n)]


@pytest.fixture(scope="session")
def faults_python() -> Path:
    """A virtualenv with this package and every fake faulty plugin."""
    return venv_python(["celery[redis]"], editable=[ROOT, FAKE_PLUGINS], label="faults")


@dataclass
class Neighbourhood:
    cluster: Cluster
    theirs: set[str]


@pytest.fixture(scope="module")
def hood(
    request: pytest.FixtureRequest, faults_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Neighbourhood]:
    """One neighbour answering with 3 revoked ids, shared by the cases of this module."""
    url = claimed_broker(request, "redis")
    directory = tmp_path_factory.mktemp("badplugins")
    conf = {"mingle_plugin_timeout": PLUGIN_TIMEOUT, "mingle_expect_replies": True}
    config = write_app(directory, url, conf)
    cluster = Cluster(directory, config, faults_python)
    theirs = new_ids()
    neighbour = FakeNeighbour(
        directory,
        config["broker_url"],
        config["control_exchange"],
        [{"body": {NEIGHBOUR: {"revoked": theirs, "clock": 5}}, "clock": 5}],
    )
    try:
        neighbour.wait_listening()
        yield Neighbourhood(cluster, set(theirs))
    finally:
        cluster.close()
        neighbour.close()


def start_newcomer(hood: Neighbourhood, plugin: str, tmp_path: Path) -> tuple[Worker, set[str]]:
    """Start a worker with ``plugin`` only and ids in its statedb; wait for its mingle summary."""
    mine = new_ids()
    statedb = tmp_path / "state.db"
    write_statedb(statedb, mine)
    worker = hood.cluster.start(
        f"{plugin}@badplugins", args=[f"--statedb={statedb}"], env={"CELERY_MINGLE_PLUGINS": plugin}
    )
    worker.wait_for(r"mingle: summary: ")
    return worker, set(mine)


def problem_lines(worker: Worker, pattern: str) -> list[str]:
    return [msg for _, msg in worker.mingle_lines() if re.search(pattern, msg)]


@dataclass(frozen=True)
class Case:
    plugin: str
    #: The one ``mingle:`` line that must name the problem.
    problem: str
    #: Whether the neighbour's reply still gets merged.
    merged: bool


CASES = [
    Case(
        "broken_import",
        r"^mingle: plugin 'broken_import' \(mingle_test_faults\.broken_import, "
        r"from mingle-test-faults 0\.0\.1\) failed to load and is skipped: "
        r"ImportError: No module named 'mingle_test_faults_missing_dependency'$",
        merged=True,
    ),
    Case(
        "misspelt",
        r"^mingle: plugin 'misspelt' \(.*from mingle-test-faults 0\.0\.1\) failed to load and is skipped: "
        r"PluginValidationError: .*mingle_on_replies",
        merged=True,
    ),
    Case(
        "merge_raises",
        r"^mingle: plugin 'merge_raises' raised RuntimeError\('merge plugin exploded'\) "
        r"in hook mingle_merge_revoked$",
        merged=True,
    ),
    Case(
        "on_reply_raises",
        r"^mingle: rejected the reply of nb@badplugins: plugin 'on_reply_raises' raised "
        r"RuntimeError\('on_reply plugin exploded'\)$",
        merged=False,
    ),
    Case(
        "hello_hangs",
        rf"^mingle: plugin 'hello_hangs' did not return within {PLUGIN_TIMEOUT:.1f}s "
        r"in hook mingle_send_hello$",
        merged=True,
    ),
    Case(
        "on_reply_hangs",
        rf"^mingle: rejected the reply of nb@badplugins: plugin 'on_reply_hangs' did not return within "
        rf"{PLUGIN_TIMEOUT:.1f}s",
        merged=False,
    ),
    Case(
        "hello_returns_list",
        r"^mingle: mingle_send_hello returned a list, not a mapping; ignored$",
        merged=False,
    ),
    Case(
        "expected_replies_str",
        r"^mingle: mingle_expected_replies returned '3', not an integer >= 0; ignored$",
        merged=True,
    ),
    Case(
        "merge_wipes",
        r"^mingle: a mingle_merge_revoked plugin removed 3 revoked ids; restored$",
        merged=True,
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.plugin for c in CASES])
def test_bad_plugin_keeps_worker_and_ids(hood: Neighbourhood, case: Case, tmp_path: Path) -> None:
    worker, mine = start_newcomer(hood, case.plugin, tmp_path)
    try:
        assert re.search(r"\bready\.", worker.log())
        assert len(problem_lines(worker, case.problem)) == 1, worker.log()[-4000:]
        revoked = hood.cluster.revoked(worker.nodename)
        assert mine <= revoked, "ids from --statedb were lost"
        summary = worker.wait_for(r"mingle: summary: (\d+) neighbours, (\d+) accepted, (\d+) ids merged")
        if case.merged:
            assert hood.theirs <= revoked
            assert summary.group(2, 3) == ("1", "3")
        else:
            assert not hood.theirs & revoked, "ids of a rejected or ignored reply were merged"
            assert summary.group(2, 3) == ("0", "0")
        # The worker still works after the fault: it takes a revoke and answers.
        later = new_ids(1)
        hood.cluster.client.control.revoke(later, destination=[worker.nodename])
        assert mine | set(later) <= hood.cluster.revoked(worker.nodename)
    finally:
        worker.stop()


def test_rejected_reply_is_counted(hood: Neighbourhood, tmp_path: Path) -> None:
    worker, mine = start_newcomer(hood, "on_reply_raises", tmp_path)
    try:
        assert worker.wait_for(
            r"mingle: summary: 1 neighbours, 0 accepted, 0 ids merged, 0 dropped by policy, 1 rejected, "
        )
        assert problem_lines(worker, r"^mingle: plugin 'on_reply_raises' raised .* in hook mingle_on_reply$")
        assert hood.cluster.revoked(worker.nodename) == mine
    finally:
        worker.stop()


def test_hung_hello_plugin_is_abandoned_after_the_plugin_timeout(hood: Neighbourhood, tmp_path: Path) -> None:
    worker, mine = start_newcomer(hood, "hello_hangs", tmp_path)
    try:
        lines = worker.mingle_lines()
        searching = next(ts for ts, msg in lines if msg.startswith("mingle: searching"))
        summary = next(ts for ts, msg in lines if msg.startswith("mingle: summary"))
        # Abandoned after mingle_plugin_timeout, then the stock hello (1 s idle timeout): far below 60 s.
        assert PLUGIN_TIMEOUT <= summary - searching < PLUGIN_TIMEOUT + 10
        assert mine | hood.theirs <= hood.cluster.revoked(worker.nodename)
    finally:
        worker.stop()


#: The import time of the ``slow_import`` fixture plugin (over the loader's 1.0 s threshold).
SLOW_IMPORT = 1.5
SLOW_WARNING = re.compile(
    r"^\[[^\]]+: WARNING/[\w-]+\] mingle: plugin 'slow_import' \(mingle_test_faults\.slow_import, "
    r"from mingle-test-faults 0\.0\.1\) took (\d+\.\d)s to import \(over 1\.0s\): "
    r"every worker start waits for it$",
    re.M,
)


def test_slow_plugin_import_is_measured_and_named(
    hood: Neighbourhood, faults_python: Path, tmp_path: Path
) -> None:
    """One WARNING line in the worker; the time in mingle_status and ``celery mingle plugins``."""
    worker, mine = start_newcomer(hood, "slow_import", tmp_path)
    try:
        warnings = SLOW_WARNING.findall(worker.log())
        assert len(warnings) == 1, worker.log()[-4000:]
        assert float(warnings[0]) >= SLOW_IMPORT
        assert mine | hood.theirs <= hood.cluster.revoked(worker.nodename)  # it mingled all the same
        replies = hood.cluster.client.control.broadcast(
            "mingle_status", reply=True, timeout=5, destination=[worker.nodename]
        )
        plugins = {p["name"]: p for p in replies[0][worker.nodename]["plugins"]}
        assert plugins["slow_import"]["import_seconds"] >= SLOW_IMPORT
        assert plugins["builtin"]["import_seconds"] is None
    finally:
        worker.stop()

    env = {**os.environ, "CELERY_MINGLE_PLUGINS": "slow_import"}
    listed = subprocess.run(
        [str(faults_python), "-m", "celery", "mingle", "plugins", "--json"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    slow = next(p for p in data["plugins"] if p["name"] == "slow_import")
    assert slow["status"] == "loaded" and slow["import_seconds"] >= SLOW_IMPORT
    assert data["slow_import_seconds"] == 1.0
    table = subprocess.run(
        [str(faults_python), "-m", "celery", "mingle", "plugins"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert re.search(r"^slow_import +loaded +mingle-test-faults 0\.0\.1 +\d+\.\d{3}s ", table.stdout, re.M)
    assert "plugin 'slow_import' took " in table.stdout and "to import (over 1.0s)" in table.stdout


@dataclass
class StrictRun:
    worker: Worker
    text: str


@pytest.fixture(scope="module")
def strict_run(
    request: pytest.FixtureRequest, faults_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[StrictRun]:
    """A worker with ``mingle_strict = True`` and a plugin that fails to import, run to its end."""
    url = claimed_broker(request, "redis")
    directory = tmp_path_factory.mktemp("strict")
    cluster = Cluster(directory, write_app(directory, url, {"mingle_strict": True}), faults_python)
    try:
        worker = cluster.start(
            "strict@badplugins", wait=False, env={"CELERY_MINGLE_PLUGINS": "broken_import"}
        )
        worker.proc.wait(60)
        yield StrictRun(worker, worker.log() + worker.output())
    finally:
        cluster.close()


def test_strict_mode_stops_the_worker_naming_the_plugin(strict_run: StrictRun) -> None:
    assert strict_run.worker.proc.returncode != 0
    assert "ready." not in strict_run.worker.log()
    assert "mingle: searching" not in strict_run.worker.log()
    assert re.search(
        r"PluginLoadError: plugin 'broken_import' \(mingle_test_faults\.broken_import, "
        r"from mingle-test-faults 0\.0\.1\) failed to load: ImportError: No module named "
        r"'mingle_test_faults_missing_dependency'$",
        strict_run.text,
        re.M,
    ), strict_run.text[-4000:]


def test_strict_mode_log_line_does_not_say_skipped(strict_run: StrictRun) -> None:
    lines = [msg for _, msg in strict_run.worker.mingle_lines() if "broken_import" in msg]
    assert len(lines) == 1, lines
    assert "skipped" not in lines[0]
    assert "mingle_strict" in lines[0]


def test_hung_reply_filter_fails_closed_for_every_reply(hood: Neighbourhood, tmp_path: Path) -> None:
    config = hood.cluster.config
    second = FakeNeighbour(
        tmp_path,
        config["broker_url"],
        config["control_exchange"],
        [{"body": {"nb2@badplugins": {"revoked": new_ids(), "clock": 5}}, "clock": 5}],
        name="second",
    )
    try:
        second.wait_listening()
        worker, mine = start_newcomer(hood, "on_reply_hangs", tmp_path)
        try:
            log = worker.log()
            assert re.search(
                r"mingle: summary: 2 neighbours, 0 accepted, 0 ids merged, 0 dropped by policy, 2 rejected, ",
                log,
            ), log
            assert hood.cluster.revoked(worker.nodename) == mine
        finally:
            worker.stop()
    finally:
        second.close()


def test_runtime_fault_shown_by_status_and_check(
    hood: Neighbourhood, faults_python: Path, tmp_path: Path
) -> None:
    """A policy that raises at run time: counted in the summary, listed by ``mingle_status``,
    printed by ``celery mingle status`` and a failure of ``celery mingle check`` (exit 1)."""
    worker, mine = start_newcomer(hood, "merge_raises", tmp_path)
    try:
        assert worker.wait_for(r"mingle: summary: .*, 1 plugin faults")
        assert mine | hood.theirs <= hood.cluster.revoked(worker.nodename)  # not fail-closed: merged
        replies = hood.cluster.client.control.broadcast(
            "mingle_status", reply=True, timeout=5, destination=[worker.nodename]
        )
        faults = replies[0][worker.nodename]["faults"]
        assert [(f["plugin"], f["hook"], f["kind"], f["count"]) for f in faults] == [
            ("merge_raises", "mingle_merge_revoked", "raised", 1)
        ]
        env = {**os.environ, "CELERY_MINGLE_PLUGINS": "merge_raises"}

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [str(faults_python), "-m", "celery", "-A", "proj", "mingle", *args],
                env=env,
                cwd=hood.cluster.directory,
                capture_output=True,
                text=True,
                timeout=60,
            )

        line = f"{worker.nodename}: plugin 'merge_raises' raised in mingle_merge_revoked (1 time(s))"
        status = run("status", "--destination", worker.nodename)
        assert status.returncode == 0, status.stderr
        assert line in status.stdout, status.stdout
        check = run("check")
        assert check.returncode == 70, check.stdout + check.stderr  # EX_SOFTWARE: a plugin failed
        assert f"runtime fault: {line}" in check.stdout, check.stdout
        offline = run("check", "--no-live")
        assert "runtime fault" not in offline.stdout, offline.stdout
    finally:
        worker.stop()
