"""Unit tests of the ``celery mingle`` helpers and of :mod:`mingle_plugins.plugins.diagnostics`.

No broker, no worker.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Any

import pytest
from celery import Celery
from kombu.pidbox import Mailbox
from kombu.transport.memory import Transport as MemoryTransport

from mingle_plugins import cli, get_plugin_manager, hookimpl
from mingle_plugins.bootstep import Mingle
from mingle_plugins.cli import _output
from mingle_plugins.cli import check as check_cmd
from mingle_plugins.client import status as live_status
from mingle_plugins.consumer import Blueprint, Consumer
from mingle_plugins.plugins import diagnostics
from mingle_plugins.plugins.runner import HookRunner
from mingle_plugins.settings import MingleSettings

SETTINGS = MingleSettings()


def test_table_aligns_columns() -> None:
    out = _output.table(("A", "LONGER"), [("xxxx", "y"), ("z", "")])
    assert out.splitlines() == ["A     LONGER", "xxxx  y", "z"]


def test_configure_app_lists_every_problem_even_in_strict_mode() -> None:
    app = Celery("unit", broker="memory://", set_as_current=False)
    app.conf.update(mingle_strict=True, mingle_hello_timeout=0, mingle_max_clock="big")
    config, problems = diagnostics.configure_app(app)  # strict: the worker would stop; this lists them
    assert config.settings.strict is True
    assert config.settings.hello_timeout == 1.0  # the default, as the worker would use it
    assert sorted(p.setting for p in problems) == ["mingle_hello_timeout", "mingle_max_clock"]


def test_configure_app_reports_a_bad_strict_value() -> None:
    app = Celery("unit", broker="memory://", set_as_current=False)
    app.conf.mingle_strict = "maybe"
    config, problems = diagnostics.configure_app(app)
    assert config.settings.strict is False
    assert [p.setting for p in problems] == ["mingle_strict"]


def runner_with(*plugins: tuple[str, object], timeout: float = 2.0) -> HookRunner:
    """A hook runner over the built-in implementations and ``plugins`` (registered in order)."""
    pm = get_plugin_manager(load_entrypoints=False)
    for name, plugin in plugins:
        pm.register(plugin, name=name)
    return HookRunner(pm, timeout)


class MyMingle(Mingle):
    pass


class MyBlueprint(Blueprint):
    mingle_step = MyMingle


class MyConsumer(Consumer):
    Blueprint = MyBlueprint


@pytest.mark.parametrize(
    ("value", "ok", "says"),
    [
        ("mingle_plugins.consumer:Consumer", True, "mingle_plugins.bootstep.Mingle"),
        (MyConsumer, True, "MyMingle"),
        ("celery.worker.consumer:Consumer", False, "runs Celery's stock Mingle step"),
        ("no_such_module:Consumer", False, "cannot be imported: ModuleNotFoundError"),
    ],
)
def test_consumer_ok(value: Any, ok: bool, says: str) -> None:
    got, message = check_cmd.consumer_ok(value)
    assert got is ok
    assert says in message


class FakeControl:
    """Stands in for ``app.control``: canned replies to ``broadcast`` and ``ping``."""

    def __init__(self, status: list[dict[str, Any]], ping: list[dict[str, Any]]) -> None:
        self.status, self.ping_replies = status, ping
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.mailbox = Mailbox("celery", type="fanout")  # made exclusive on kombu < 5.6

    def broadcast(self, command: str, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls.append((command, kwargs))
        return self.status

    def ping(self, **kwargs: Any) -> list[dict[str, Any]]:
        self.calls.append(("ping", kwargs))
        return self.ping_replies


class FakeApp:
    def __init__(self, control: FakeControl) -> None:
        self.control = control


def test_query_status_sorts_workers_into_ours_and_stock() -> None:
    ours = {"enabled": True, "transport": "redis", "plugins": [], "last": None}
    control = FakeControl(
        status=[{"a@x": ours}, {"b@x": {"error": "KeyError('mingle_status')"}}],
        ping=[{"a@x": {"ok": "pong"}}, {"b@x": {"ok": "pong"}}, {"c@x": {"ok": "pong"}}],
    )
    result = live_status.query_status(FakeApp(control), timeout=0.3, destination=["a@x", "b@x", "c@x"])
    assert result["workers"] == {"a@x": ours}
    assert result["stock"] == {
        "b@x": "no mingle_status (KeyError('mingle_status'))",
        "c@x": "no mingle_status (did not answer it)",
    }
    assert control.calls[0] == (
        "mingle_status",
        {"reply": True, "timeout": 0.3, "destination": ["a@x", "b@x", "c@x"]},
    )
    assert control.calls[1] == ("ping", {"timeout": 0.3, "destination": ["a@x", "b@x", "c@x"]})


def test_status_rows_describe_each_state() -> None:
    last = {
        "neighbours": ["b@x"],
        "ids_merged": 3,
        "rejected": {"c@x": "bad"},
        "elapsed": 0.0123,
        "clock_before": 1,
        "clock_after": 9,
        "skipped": None,
    }
    rows = live_status.status_rows(
        {
            "on@x": {
                "enabled": True,
                "transport": "redis",
                "last": last,
                "plugins": [{"name": "fs", "status": "loaded"}, {"name": "bad", "status": "failed"}],
            },
            "off@x": {"enabled": False, "transport": "sqs", "last": None, "plugins": []},
            "new@x": {"enabled": True, "transport": "redis", "last": None, "plugins": []},
            "skip@x": {
                "enabled": True,
                "transport": "redis",
                "last": {**last, "skipped": "hello failed"},
                "plugins": [],
            },
        }
    )
    by_node = {row[0]: row for row in rows}
    assert by_node["on@x"] == ("on@x", "on", "redis", "1", "3", "1", "0.012s", "1->9", "fs")
    assert by_node["off@x"][1:3] == ("off", "sqs")
    assert by_node["new@x"][1] == "pending"
    assert by_node["skip@x"][1] == "skipped"


def test_describe_plugins_of_the_default_app_has_the_builtin_row() -> None:
    rows, _settings, problems = cli.describe_plugins(Celery("unit", broker="memory://"))
    builtin = rows[0]
    assert builtin.name == "builtin" and builtin.status == "builtin"
    assert builtin.transports == sorted(Mingle.compatible_transports)
    assert problems == []


class Raises:
    @hookimpl
    def mingle_transport_compatible(self, driver_type: str) -> bool | None:
        if driver_type == "amqp":
            raise RuntimeError("boom")
        return True if driver_type == "redis" else None


class Hangs:
    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    @hookimpl
    def mingle_transport_compatible(self, driver_type: str) -> bool | None:
        self.calls += 1
        self.release.wait(10)
        return None


def test_claims_reports_a_raising_plugin_per_transport() -> None:
    plugin = Raises()
    runner = runner_with(("raises", plugin))
    drivers = ["redis", "amqp", "sqs"]
    claimed, refused, errors = diagnostics.plugin_claims(runner, plugin, Celery("unit"), drivers, SETTINGS)
    assert (claimed, refused) == (["redis"], [])
    assert errors == ["amqp: RuntimeError: boom"]


def test_claims_gives_up_on_a_hanging_plugin_after_one_timeout() -> None:
    plugin = Hangs()
    runner = runner_with(("hangs", plugin), timeout=0.2)
    try:
        claimed, refused, errors = diagnostics.plugin_claims(
            runner, plugin, Celery("unit"), ["redis", "amqp", "sqs"], SETTINGS
        )
    finally:
        plugin.release.set()
    assert (claimed, refused) == ([], [])
    assert errors == ["redis: TimeoutError: did not return within 0.2s"]
    assert plugin.calls == 1
    assert runner.is_hung(plugin, diagnostics.HOOK)  # as in the worker: not called while it runs


# -- the one decision: the step and the CLI ask mingle_plugins.plugins.diagnostics --------


class Refuses:
    @hookimpl
    def mingle_transport_compatible(self, driver_type: str) -> bool | None:
        return False if driver_type == "memory" else None


class Boom:
    @hookimpl
    def mingle_transport_compatible(self, driver_type: str) -> bool | None:
        raise RuntimeError("boom")


class Claims:
    @hookimpl
    def mingle_transport_compatible(self, driver_type: str) -> bool | None:
        return True


def test_decision_passes_over_a_raising_plugin_and_names_the_one_that_decides() -> None:
    runner = runner_with(("claims", Claims()), ("raises", Raises()))  # registered last: asked first
    app = Celery("unit")
    decision = diagnostics.decide_transport(app, runner, "amqp", settings=SETTINGS, stock={"amqp"})
    assert (decision.compatible, decision.decided_by) == (True, "claims")
    assert decision.reason() == "plugin 'claims' claims it"
    assert [(a.plugin, a.error) for a in decision.failures] == [("raises", "RuntimeError: boom")]
    nobody = diagnostics.decide_transport(app, runner_with(), "sqs", settings=SETTINGS, stock={"amqp"})
    assert (nobody.compatible, nobody.decided_by, nobody.refused) == (False, None, False)
    assert nobody.reason() == "no plugin answers; the stock set (amqp)"


def test_the_step_uses_the_same_decision_and_logs_it(step: Mingle, consumer: Any, caplog) -> None:
    step.pm.register(Refuses(), name="refuses")
    step.pm.register(Boom(), name="raises")
    with caplog.at_level(logging.INFO, logger="mingle_plugins.bootstep"):
        assert step.compatible_transport(consumer.app) is False
    messages = [r.getMessage() for r in caplog.records]
    assert (
        "mingle: plugin 'raises' raised RuntimeError('boom') in hook mingle_transport_compatible" in messages
    )
    assert "mingle: off: plugin 'refuses' refused the 'memory' transport" in messages
    check = diagnostics.decide_transport(
        consumer.app, step.runner, "memory", settings=step.settings, stock=set()
    )
    assert (check.compatible, check.decided_by) == (False, "refuses")


def test_the_step_never_asks_a_hung_plugin_again(step: Mingle, consumer: Any, caplog) -> None:
    plugin = Hangs()
    step.pm.register(plugin, name="hangs")
    step.runner.timeout = 0.2
    try:
        with caplog.at_level(logging.ERROR, logger="mingle_plugins"):
            assert step.compatible_transport(consumer.app) is False  # memory: not in the stock set
            assert step.compatible_transport(consumer.app) is False
    finally:
        plugin.release.set()
    assert step.runner.is_hung(plugin, "mingle_transport_compatible") and plugin.calls == 1
    assert [r.getMessage() for r in caplog.records] == [
        "mingle: plugin 'hangs' did not return within 0.2s and is no longer called "
        "in hook mingle_transport_compatible"
    ]


def test_a_transport_without_its_client_names_the_real_error_and_the_fix(
    step: Mingle, monkeypatch: pytest.MonkeyPatch, caplog
) -> None:
    pgmq_transport = pytest.importorskip("kombu.transport.pgmq")
    monkeypatch.setattr(pgmq_transport, "PGMQueue", None)  # as kombu sets it without the client
    monkeypatch.setitem(sys.modules, "pgmq", None)  # and the client cannot be imported
    app = Celery("unit", broker="pgmq://nobody@127.0.0.1:1/none", set_as_current=False)
    info = diagnostics.load_transport(app)
    assert (info.scheme, info.driver_type) == ("pgmq", None)
    assert info.error.startswith("ModuleNotFoundError: import of pgmq halted")
    assert "(kombu: ImportError: PGMQ transport requires the pgmq library" in info.error
    assert info.fix == "pip install celery-mingle-pgmq"
    with caplog.at_level(logging.ERROR, logger="mingle_plugins"):
        assert step.compatible_transport(app) is False
    [line] = [r.getMessage() for r in caplog.records]
    assert line == f"mingle: cannot load the broker transport, mingle is off: {info.error}; {info.fix}"


class BadTransport(MemoryTransport):
    def __init__(self, client: Any, **kwargs: Any) -> None:
        raise ValueError("bad broker option")


def test_a_transport_that_fails_otherwise_gets_no_install_line() -> None:
    pytest.importorskip("redis")  # the client is there: installing it again fixes nothing
    app = Celery("unit", broker="redis://127.0.0.1:1/0", set_as_current=False)
    app.conf.broker_transport = BadTransport
    info = diagnostics.load_transport(app)
    assert (info.scheme, info.driver_type) == ("redis", None)
    assert (info.error, info.fix) == ("ValueError: bad broker option", "")
    assert info.problem() == "ValueError: bad broker option"


def test_status_details_say_what_did_not_fit_and_what_policies_dropped(capsys: Any) -> None:
    last = {
        "neighbours": ["evil@x"],
        "ids_merged": 5000,
        "rejected": {},
        "elapsed": 0.5,
        "clock_before": 1,
        "clock_after": 2,
        "skipped": None,
        "ids_dropped": 3,
        "dropped_by": {"audit": 3},
        "ids_over_share": 45000,
        "duplicates": {"real@x": 1},
        "sources_unreached": ["store@db"],
    }
    reply = {"enabled": True, "transport": "redis", "last": last, "plugins": []}
    live_status.print_status({"workers": {"w@x": reply}, "stock": {}})
    out = capsys.readouterr().out
    assert "w@x: 45000 new ids not merged: over mingle_max_share" in out
    assert "w@x: 3 ids dropped by policy {'audit': 3}" in out
    assert "w@x: 1 extra replies under the name real@x" in out
    assert "w@x: not reached: store@db" in out
