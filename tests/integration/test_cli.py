"""``celery mingle plugins | check | status`` as an operator runs them, and the ``worker-mingle`` event.

The CLI runs as ``python -m celery -A proj mingle ...`` in a subprocess, with the
app's folder as cwd and on ``PYTHONPATH``; ``status`` and the event are checked
against real workers on Redis. Plugins are made visible to the CLI through a
``*.dist-info`` folder on ``PYTHONPATH`` (a real entry point, no pip).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from mingle_plugins import MingleSummary
from tests.support.workers import Worker, write_app

FAKE_DIST = "fake-mingle-cli"

CLAIMER = """\
from mingle_plugins import hookimpl


@hookimpl
def mingle_transport_compatible(driver_type):
    if driver_type == "filesystem":
        return True
    if driver_type == "memory":
        return False
    return None


@hookimpl
def mingle_sync_complete(summary):
    pass
"""

NO_FANOUT_TRANSPORT = """\
from kombu.transport import memory


class Transport(memory.Transport):
    driver_type = "nofanout"
    implements = memory.Transport.implements.extend(exchange_type=frozenset(["direct", "topic"]))
"""

BROKEN = 'raise ImportError("this plugin is broken on purpose")\n'

#: A ``sitecustomize`` that makes the modules named in ``MINGLE_TEST_BLOCK`` impossible to
#: import, as if their distribution were not installed (the rest of the venv is untouched).
BLOCK_IMPORTS = """\
import os
import sys
from importlib.abc import MetaPathFinder

BLOCKED = set(filter(None, os.environ.get("MINGLE_TEST_BLOCK", "").split(",")))


class NotInstalled(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
"""


#: Only the fake plugins below, whatever else is installed (the env var wins over the app's lists).
ONLY_FAKE = {"CELERY_MINGLE_PLUGINS": "claimer,broken"}
#: No plugin at all: stock behaviour.
NO_PLUGINS = {"CELERY_MINGLE_PLUGINS": ""}


def add_fake_plugins(directory: Path) -> None:
    """Install two entry points in ``directory``: ``claimer`` (works) and ``broken`` (fails to import)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "fakemingle_claimer.py").write_text(CLAIMER)
    (directory / "fakemingle_broken.py").write_text(BROKEN)
    dist = directory / "fake_mingle_cli-1.2.dist-info"
    dist.mkdir(exist_ok=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {FAKE_DIST}\nVersion: 1.2\n")
    (dist / "entry_points.txt").write_text(
        "[celery.mingle]\nclaimer = fakemingle_claimer\nbroken = fakemingle_broken\n"
    )


def cli(
    directory: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """``python -m celery <args>`` in ``directory``."""
    full_env = dict(os.environ)
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), full_env.get("PYTHONPATH")]))
    full_env.pop("CELERY_MINGLE_PLUGINS", None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "celery", *args],
        cwd=directory,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_json(directory: Path, *args: str, **kwargs: Any) -> tuple[int, Any]:
    result = cli(directory, *args, "--json", **kwargs)
    assert result.stdout.strip(), f"no output (exit {result.returncode}):\n{result.stderr}"
    return result.returncode, json.loads(result.stdout)


# -- celery --help / plugins -----------------------------------------------------


def test_mingle_appears_in_celery_help(tmp_path: Path) -> None:
    result = cli(tmp_path, "--help")
    assert result.returncode == 0
    assert any(line.split()[:1] == ["mingle"] for line in result.stdout.splitlines()), result.stdout
    sub = cli(tmp_path, "mingle", "--help")
    assert sub.returncode == 0
    for command in ("plugins", "check", "status", "demo"):
        assert command in sub.stdout


def test_plugins_without_app_lists_every_entry_point(tmp_path: Path) -> None:
    add_fake_plugins(tmp_path)
    code, data = cli_json(tmp_path, "mingle", "plugins")
    assert code == 0
    by_name = {p["name"]: p for p in data["plugins"]}
    assert data["app"] == "default"
    assert by_name["builtin"]["status"] == "builtin"
    assert set(by_name["builtin"]["transports"]) >= {"amqp", "redis"}
    claimer = by_name["claimer"]
    assert claimer["status"] == "loaded"
    assert (claimer["distribution"], claimer["version"]) == (FAKE_DIST, "1.2")
    assert claimer["entry_point"] == "fakemingle_claimer"
    assert claimer["hooks"] == ["mingle_sync_complete", "mingle_transport_compatible"]
    assert claimer["transports"] == ["filesystem"]
    assert claimer["refuses"] == ["memory"]
    broken = by_name["broken"]
    assert broken["status"] == "failed"
    assert "ImportError: this plugin is broken on purpose" in broken["reason"]
    assert broken["hooks"] == [] and broken["transports"] == []

    table = cli(tmp_path, "mingle", "plugins")
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:3] == ["PLUGIN", "STATUS", "DISTRIBUTION"]
    claimer_line = next(line for line in lines if line.startswith("claimer "))
    assert "loaded" in claimer_line and f"{FAKE_DIST} 1.2" in claimer_line and "filesystem" in claimer_line
    assert any(line.startswith("broken ") and " failed " in line for line in lines)
    assert (
        "broken: entry point fakemingle_broken; failed: ImportError: this plugin is broken on purpose"
        in table.stdout
    )
    assert "claimer: entry point fakemingle_claimer; refuses memory" in table.stdout


def test_plugins_with_app_applies_its_allow_and_deny_lists(tmp_path: Path) -> None:
    add_fake_plugins(tmp_path)
    write_app(tmp_path, "memory://", {"mingle_disabled_plugins": ["broken"]})
    code, data = cli_json(tmp_path, "-A", "proj", "mingle", "plugins")
    assert code == 0
    assert data["app"] == "proj"
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["broken"]["status"] == "blocked"
    assert by_name["broken"]["reason"] == "in mingle_disabled_plugins"
    assert by_name["claimer"]["status"] == "loaded"

    write_app(tmp_path, "memory://", {"mingle_plugins": ["broken"]}, name="allow")
    code, data = cli_json(tmp_path, "-A", "allow", "mingle", "plugins")
    by_name = {p["name"]: p for p in data["plugins"]}
    assert by_name["claimer"]["status"] == "blocked"
    assert by_name["broken"]["status"] == "failed"

    # The environment variable wins over the app's list, as in the worker.
    code, data = cli_json(tmp_path, "-A", "allow", "mingle", "plugins", env=NO_PLUGINS)
    statuses = {p["name"]: p["status"] for p in data["plugins"]}
    assert statuses["builtin"] == "builtin"
    assert statuses["broken"] == statuses["claimer"] == "blocked"
    assert set(statuses.values()) == {"builtin", "blocked"}
    assert data["env_plugins"] == ""


# -- check ---------------------------------------------------------------------


def test_check_good_redis_config(tmp_path: Path, redis_url: str) -> None:
    write_app(tmp_path, redis_url, {"mingle_hello_timeout": 0.5})
    code, report = cli_json(tmp_path, "-A", "proj", "mingle", "check", env=NO_PLUGINS)
    assert code == 0, report
    assert report["transport"] == "redis"
    assert report["transport_compatible"] is True
    assert report["claimed_by"] is None and report["decided_by"].startswith(
        "no plugin answers; the stock set"
    )
    assert report["consumer_ok"] is True
    assert report["settings"]["mingle_hello_timeout"] == 0.5
    assert report["would_mingle"] is True and report["why_not"] == [] and report["broken"] == []

    text = cli(tmp_path, "-A", "proj", "mingle", "check", env=NO_PLUGINS)
    assert text.returncode == 0
    assert "transport:       redis (fanout)" in text.stdout
    assert "mingle_hello_timeout = 0.5" in text.stdout
    assert "would mingle:    yes" in text.stdout
    assert "no problem found" in text.stdout


def test_check_bad_setting_fails(tmp_path: Path, redis_url: str) -> None:
    write_app(tmp_path, redis_url, {"mingle_hello_timeout": -1, "mingle_strict": True})
    code, report = cli_json(tmp_path, "-A", "proj", "mingle", "check", env=NO_PLUGINS)
    assert code == 1
    assert report["broken"] == [
        "setting: mingle_hello_timeout=-1 is not accepted: expected a number of seconds > 0"
    ]
    assert report["settings"]["mingle_strict"] is True
    assert any("mingle_strict is on" in reason for reason in report["why_not"])
    text = cli(tmp_path, "-A", "proj", "mingle", "check", env=NO_PLUGINS)
    assert text.returncode == 1
    assert "1 problem(s):" in text.stdout and "mingle_hello_timeout=-1" in text.stdout


def test_check_stock_consumer_fails_and_says_so(tmp_path: Path, redis_url: str) -> None:
    write_app(tmp_path, redis_url, {"worker_consumer": "celery.worker.consumer:Consumer"})
    code, report = cli_json(tmp_path, "-A", "proj", "mingle", "check", env=NO_PLUGINS)
    assert code == 1
    assert report["consumer_ok"] is False
    assert report["would_mingle"] is False
    assert any('worker_consumer = "mingle_plugins.consumer:Consumer"' in b for b in report["broken"])
    text = cli(tmp_path, "-A", "proj", "mingle", "check", env=NO_PLUGINS)
    assert text.returncode == 1
    assert "worker_consumer: BROKEN" in text.stdout


def test_check_failing_plugin_and_claimed_transport(tmp_path: Path) -> None:
    add_fake_plugins(tmp_path)
    write_app(tmp_path, "filesystem://")
    code, report = cli_json(tmp_path, "-A", "proj", "mingle", "check", env=ONLY_FAKE)
    assert code == 70  # EX_SOFTWARE: a plugin failed
    assert report["transport"] == "filesystem"
    assert report["claimed_by"] == "claimer" and report["transport_compatible"] is True
    assert report["broken"] == [
        "plugin 'broken' (fakemingle_broken) failed to load: ImportError: this plugin is broken on purpose"
    ]
    # Without the broken one, nothing is wrong.
    write_app(tmp_path, "filesystem://", {"mingle_disabled_plugins": ["broken"]}, name="fixed")
    code, report = cli_json(tmp_path, "-A", "fixed", "mingle", "check", env=ONLY_FAKE)
    assert code == 69, report  # no folders for filesystem://: the live workers cannot be asked
    assert report["broken"] == [] and "data_in" in report["live"]["error"]
    code, report = cli_json(tmp_path, "-A", "fixed", "mingle", "check", "--no-live", env=ONLY_FAKE)
    assert code == 0, report["broken"]
    assert report["would_mingle"] is True


def test_check_refused_and_fanout_less_transports(tmp_path: Path) -> None:
    add_fake_plugins(tmp_path)
    write_app(tmp_path, "memory://", {"mingle_disabled_plugins": ["broken"]})
    code, report = cli_json(tmp_path, "-A", "proj", "mingle", "check", env=ONLY_FAKE)
    assert code == 0  # not broken: mingle is off on purpose
    assert report["claimed_by"] == "claimer" and report["transport_compatible"] is False
    assert report["would_mingle"] is False
    assert report["why_not"] == ["the 'memory' transport is not claimed: plugin 'claimer' refuses it"]

    # A transport without fanout (like sqs or sql): no remote control, nobody answers a hello.
    (tmp_path / "nofanout.py").write_text(NO_FANOUT_TRANSPORT)
    write_app(tmp_path, "memory://", {"broker_transport": "nofanout:Transport"}, name="nofan")
    code, report = cli_json(tmp_path, "-A", "nofan", "mingle", "check", env=ONLY_FAKE)
    assert report["transport"] == "nofanout" and report["fanout"] is False
    assert report["would_mingle"] is False
    assert (
        "the 'nofanout' transport has no fanout: no remote control, nobody answers a hello"
        in report["why_not"]
    )


@pytest.mark.parametrize(
    ("broker", "client", "fix"),
    [
        ("redis://127.0.0.1:6379", "redis", 'pip install "celery[redis]"'),  # never connected: no client
        ("pgmq://postgres@127.0.0.1:5432/test", "pgmq", "pip install celery-mingle-pgmq"),
    ],
    ids=["redis", "pgmq"],
)
def test_check_names_a_missing_transport_client_and_its_fix(
    tmp_path: Path, broker: str, client: str, fix: str
) -> None:
    """Without the client library, the real import error and the install line, not "no transport"."""
    (tmp_path / "sitecustomize.py").write_text(BLOCK_IMPORTS)  # the app's folder is first on PYTHONPATH
    write_app(tmp_path, broker)
    env = {**NO_PLUGINS, "MINGLE_TEST_BLOCK": client}
    code, report = cli_json(tmp_path, "-A", "proj", "mingle", "check", env=env)
    assert code == 1
    scheme = broker.split(":")[0]
    assert (report["scheme"], report["transport"], report["transport_fix"]) == (scheme, None, fix)
    assert report["transport_error"].startswith(f"ModuleNotFoundError: No module named '{client}'")
    assert report["transport_compatible"] is False
    assert report["broken"] == [f"the broker transport cannot be loaded: {report['transport_error']}; {fix}"]

    text = cli(tmp_path, "-A", "proj", "mingle", "check", env=env)
    assert text.returncode == 1
    assert f"transport:       {scheme}: CANNOT LOAD: ModuleNotFoundError: No module named '{client}'" in (
        text.stdout
    )
    assert f"                 fix: {fix}\n" in text.stdout
    assert "compatible:      no: the transport cannot be loaded" in text.stdout


# -- status (real workers on Redis) -----------------------------------------------


def _stock_app(cluster: Any, name: str = "stockproj") -> None:
    conf = {k: v for k, v in cluster.config.items() if k != "worker_consumer"}
    conf["worker_consumer"] = "celery.worker.consumer:Consumer"
    write_app(cluster.directory, conf["broker_url"], conf, name=name)


@pytest.mark.redis
def test_status_reports_live_workers_and_stock_ones(make_cluster, redis_url: str) -> None:
    cluster = make_cluster(redis_url)
    suffix = uuid.uuid4().hex[:6]
    first, second, stock = (f"{n}-{suffix}@mingletest" for n in ("first", "second", "stock"))
    cluster.start(first)
    ids = [str(uuid.uuid4()) for _ in range(3)]
    cluster.client.control.revoke(ids)
    assert set(ids) <= cluster.revoked(first)
    cluster.start(second).wait_for(r"mingle: summary: ")
    _stock_app(cluster)
    cluster.start(stock, app="stockproj")

    code, data = cli_json(cluster.directory, "-A", "proj", "mingle", "status", "--timeout", "1")
    assert code == 0, data
    assert sorted(data["workers"]) == sorted([first, second])
    assert list(data["stock"]) == [stock]
    assert data["stock"][stock].startswith("no mingle_status")
    reply = data["workers"][second]
    assert reply["enabled"] is True and reply["transport"] == "redis"
    last = reply["last"]
    assert last["hostname"] == second
    assert last["neighbours"] == [first] and last["merged_from"] == [first]
    assert last["ids_merged"] == 3 and last["rejected"] == {}
    assert 0 < last["elapsed"] < 5
    assert data["workers"][first]["last"]["neighbours"] == []
    assert reply["plugins"][0]["name"] == "builtin"

    text = cli(cluster.directory, "-A", "proj", "mingle", "status")
    assert text.returncode == 0, text.stderr
    rows = {
        parts[0]: parts
        for parts in (line.split() for line in text.stdout.splitlines())
        if parts and parts[0].endswith("@mingletest")
    }
    assert rows[second][1:6] == ["on", "redis", "1", "3", "0"]
    assert rows[stock][1] == "stock"
    assert f"{second}: neighbours {first}" in text.stdout
    assert "2 of 3 worker(s) answered mingle_status." in text.stdout

    # Asking one node only.
    code, data = cli_json(cluster.directory, "-A", "proj", "mingle", "status", "-d", second)
    assert code == 0 and list(data["workers"]) == [second] and data["stock"] == {}


@pytest.mark.redis
def test_status_exits_69_without_a_mingle_worker(make_cluster, redis_url: str) -> None:
    cluster = make_cluster(redis_url)
    nobody = cli(cluster.directory, "-A", "proj", "mingle", "status", "--timeout", "0.5")
    assert nobody.returncode == 69
    assert "no worker answered mingle_status within 0.5s" in nobody.stderr
    assert nobody.stdout == ""

    _stock_app(cluster)
    stock = f"stock-{uuid.uuid4().hex[:6]}@mingletest"
    cluster.start(stock, app="stockproj")
    only_stock = cli(cluster.directory, "-A", "proj", "mingle", "status", "--timeout", "1")
    assert only_stock.returncode == 69
    assert stock in only_stock.stdout and "stock" in only_stock.stdout
    assert "0 of 1 worker(s) answered mingle_status." in only_stock.stdout


# -- the worker-mingle event ------------------------------------------------------


@pytest.mark.redis
def test_worker_started_with_events_sends_the_worker_mingle_event(make_cluster, redis_url: str) -> None:
    cluster = make_cluster(redis_url)
    suffix = uuid.uuid4().hex[:6]
    old, new = f"old-{suffix}@mingletest", f"new-{suffix}@mingletest"
    cluster.start(old)
    ids = [str(uuid.uuid4()) for _ in range(2)]
    cluster.client.control.revoke(ids)
    assert set(ids) <= cluster.revoked(old)

    app = cluster.client
    probe = f"probe-{suffix}"
    ready = threading.Event()
    got: list[dict[str, Any]] = []

    with app.connection_for_read() as conn:
        receiver = app.events.Receiver(conn, handlers={"*": lambda event: on_event(event)})

        def on_event(event: dict[str, Any]) -> None:
            if event.get("type") == "client-probe" and event.get("probe") == probe:
                ready.set()
            elif event.get("type") == "worker-mingle" and event.get("hostname") == new:
                got.append(event)
                receiver.should_stop = True

        thread = threading.Thread(
            target=lambda: receiver.capture(limit=None, timeout=None, wakeup=False), daemon=True
        )
        thread.start()
        with app.events.default_dispatcher() as dispatcher:  # wait until the receiver listens
            deadline = time.monotonic() + 15
            while not ready.is_set() and time.monotonic() < deadline:
                dispatcher.send("client-probe", probe=probe)
                ready.wait(0.2)
        assert ready.is_set(), "the event receiver never saw its own probe"

        worker = cluster.start(new, args=["-E"])
        worker.wait_for(r"mingle: summary: ")
        deadline = time.monotonic() + 15
        while not got and time.monotonic() < deadline:
            time.sleep(0.05)
        receiver.should_stop = True
        thread.join(10)
    assert got, f"no worker-mingle event from {new}; log:\n{worker.log()[-2000:]}"
    event = got[0]
    expected = set(MingleSummary(hostname="x", transport="x").as_dict()) - {"hostname"}
    assert expected <= set(event)
    assert event["hostname"] == new  # the sender, set by the event dispatcher
    assert event["transport"] == "redis"
    assert event["neighbours"] == [old] and event["merged_from"] == [old]
    assert event["ids_merged"] == 2 and event["rejected"] == {}
    assert event["clock_after"] > event["clock_before"]
    assert event["skipped"] is None and event["elapsed"] > 0

    # Without -E there is no event dispatcher: the worker sends none, and says nothing about it.
    assert "could not send the worker-mingle event" not in worker.log()


@pytest.mark.redis
def test_status_and_check_agree_with_a_worker_under_strict_mode(make_cluster, redis_url: str) -> None:
    """A strict worker with a bad setting refuses to start; check says so beforehand."""
    cluster = make_cluster(redis_url, {"mingle_strict": True, "mingle_max_clock": "lots"})
    code, report = cli_json(cluster.directory, "-A", "proj", "mingle", "check")
    assert code == 1 and any("mingle_max_clock" in b for b in report["broken"])
    worker = Worker(cluster.directory, f"strict-{uuid.uuid4().hex[:6]}@mingletest")
    cluster.workers.append(worker)
    try:
        worker.proc.wait(60)
    except subprocess.TimeoutExpired:
        pytest.fail("a strict worker with a bad setting kept running:\n" + worker.log()[-2000:])
    assert worker.proc.returncode != 0
    assert "mingle_max_clock='lots' is not accepted" in worker.log() + worker.output()
