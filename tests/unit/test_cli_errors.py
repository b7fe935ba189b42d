"""``celery mingle`` errors as Celery's own: one ``Error:`` line, no traceback, a sysexits code.

Each command x (broker down, bad option, bad id), through click's CliRunner. The broker that is
down is a real address where nothing listens (127.0.0.1, port 1: refused at once); ``plugins``
and ``demo`` never contact the app's broker and have no ids (docs/operations.md, "Exit codes").
"""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import click
import pytest
from celery import Celery
from click.testing import CliRunner, Result

from mingle_plugins import cli
from mingle_plugins.cli import errors

DOWN = "redis://127.0.0.1:1/0"


@pytest.fixture
def app(monkeypatch: pytest.MonkeyPatch) -> Iterator[Celery]:
    monkeypatch.setenv("CELERY_MINGLE_PLUGINS", "")
    app = Celery("unit", broker=DOWN, set_as_current=False)
    app.conf.worker_consumer = "mingle_plugins.consumer:Consumer"
    yield app
    app.close()


def run(app: Celery, *args: str) -> Result:
    return CliRunner().invoke(cli.mingle, list(args), obj=SimpleNamespace(app=app))


def assert_error(result: Result, code: int, says: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    errors_said = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors_said) == 1, result.output
    assert says in errors_said[0], errors_said[0]


def test_the_codes() -> None:
    assert (cli.EX_OK, cli.EX_BROKEN, cli.EX_USAGE, cli.EX_UNAVAILABLE, cli.EX_SOFTWARE) == (0, 1, 64, 69, 70)


# -- the broker is down ----------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [("status",), ("status", "-d", "w1@host"), ("check",), ("revoke", "some-task-id")],
    ids=["status", "status-destination", "check", "revoke"],
)
def test_broker_down_is_one_line_and_69(app: Celery, args: tuple[str, ...]) -> None:
    result = run(app, *args)
    assert_error(result, 69, "cannot reach the broker redis://127.0.0.1:1/0: OperationalError: ")


def test_check_without_live_does_not_ask_the_broker(app: Celery) -> None:
    result = run(app, "check", "--no-live")
    assert result.exit_code == 0, result.output
    assert "no problem found" in result.output


def test_plugins_does_not_need_the_broker(app: Celery) -> None:
    result = run(app, "plugins")
    assert result.exit_code == 0, result.output
    assert "PLUGIN" in result.output


def test_revoke_with_the_broker_down_records_nothing(app: Celery, monkeypatch: pytest.MonkeyPatch) -> None:
    called: list[Any] = []
    monkeypatch.setattr(cli.revoke, "revoke_ids", lambda *a, **kw: called.append(a))
    assert run(app, "revoke", "abc").exit_code == 69
    assert called == []  # no plugin was asked to record ids that no worker is told of


# -- bad options -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("status", "-t", "0"), "'0' is not a number of seconds > 0"),
        (("status", "-t", "-1"), "'-1' is not a number of seconds > 0"),
        (("status", "--timeout", "nan"), "'nan' is not a number of seconds > 0"),
        (("status", "-t", "soon"), "'soon' is not a number of seconds"),
        (("check", "-t", "0"), "'0' is not a number of seconds > 0"),
        (("check", "-t", "-1"), "'-1' is not a number of seconds > 0"),
        (("check", "-t", "inf"), "'inf' is not a number of seconds > 0"),
        (("revoke", "abc", "--signal", "NOPE"), "invalid --signal 'NOPE'"),
        (("revoke",), "Missing argument 'TASK_IDS...'"),
        (("plugins", "--bogus"), "No such option"),
        (("demo", "--workers", "0"), "0 is not in the range 1<=x<=10"),
        (("demo", "--revoke", "-1"), "-1 is not in the range 1<=x<=1000"),
        (("nosuch",), "No such command 'nosuch'"),
    ],
)
def test_bad_usage_is_64(app: Celery, args: tuple[str, ...], says: str) -> None:
    assert_error(run(app, *args), 64, says)


def test_good_signal_and_timeout_pass_the_checks(app: Celery) -> None:
    # They get past usage: the broker (down) is what stops them.
    assert run(app, "revoke", "abc", "--terminate", "--signal", "KILL").exit_code == 69
    assert run(app, "status", "-t", "0.2").exit_code == 69


# -- bad ids ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("revoke", ""), "invalid task id: task id of length 0 is outside 1..1024"),
        (("revoke", "ok-id", "x" * 1025), "task id of length 1025 is outside 1..1024"),
        (("status", "-d", "nohost"), "invalid --destination 'nohost': node name is not of the form"),
        (("status", "-d", "a b@host"), "node name has unprintable or blank characters"),
    ],
    ids=["revoke-empty", "revoke-too-long", "status-no-host", "status-blank"],
)
def test_bad_ids_are_64(app: Celery, args: tuple[str, ...], says: str) -> None:
    assert_error(run(app, *args), 64, says)


def test_revoke_ids_follow_mingle_max_id_length(app: Celery) -> None:
    app.conf.mingle_max_id_length = 8
    assert_error(run(app, "revoke", "123456789"), 64, "task id of length 9 is outside 1..8")
    assert run(app, "revoke", "12345678").exit_code == 69  # well-formed: on to the (down) broker


def test_usage_helper_and_one_line() -> None:
    exc = errors.usage("bad")
    assert isinstance(exc, click.UsageError) and exc.exit_code == 64
    assert errors.one_line(OSError("two\nlines")) == "OSError: two lines"
    assert errors.one_line(KeyError()) == "KeyError"
