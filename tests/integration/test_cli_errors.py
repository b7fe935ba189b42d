"""Each ``celery mingle`` command in a real ``python -m celery`` subprocess, with its app's broker
down (a Redis URL where nothing listens), a bad option and a bad id: one ``Error:`` line on
stderr, no traceback, the code of docs/operations.md ("Exit codes")."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.workers import write_app

DOWN = "redis://127.0.0.1:1/0"
BROKER_DOWN = "Error: cannot reach the broker redis://127.0.0.1:1/0: OperationalError: "


def celery(directory: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(directory), env.get("PYTHONPATH")]))
    env["CELERY_MINGLE_PLUGINS"] = "filesystem"
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", "proj", "mingle", *args],
        cwd=directory,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    write_app(tmp_path, DOWN)
    return tmp_path


def error_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def test_status_errors(app_dir: Path) -> None:
    down = celery(app_dir, "status")
    assert down.returncode == 69 and down.stdout == ""
    assert down.stderr.startswith(BROKER_DOWN) and len(down.stderr.splitlines()) == 1, down.stderr
    bad = celery(app_dir, "status", "-t", "0")
    assert bad.returncode == 64
    assert error_lines(bad) == [
        "Error: Invalid value for '-t' / '--timeout': '0' is not a number of seconds > 0"
    ]
    bad_id = celery(app_dir, "status", "-d", "nohost")
    assert bad_id.returncode == 64
    assert error_lines(bad_id) == [
        "Error: invalid --destination 'nohost': node name is not of the form name@host"
    ]


def test_check_errors(app_dir: Path) -> None:
    down = celery(app_dir, "check")
    assert down.returncode == 69, down.stdout + down.stderr
    assert [line for line in error_lines(down)] == [
        line for line in down.stderr.splitlines() if line.startswith("Error: live workers not asked: ")
    ]
    assert BROKER_DOWN.removeprefix("Error: ") in down.stderr
    assert "no problem found" in down.stdout  # the offline part still stands
    assert celery(app_dir, "check", "--no-live").returncode == 0
    bad = celery(app_dir, "check", "-t", "-1")
    assert bad.returncode == 64 and len(error_lines(bad)) == 1


def test_revoke_errors(app_dir: Path) -> None:
    down = celery(app_dir, "revoke", "3f1c-task")
    assert down.returncode == 69 and down.stdout == ""
    assert down.stderr.startswith(BROKER_DOWN) and len(down.stderr.splitlines()) == 1, down.stderr
    bad = celery(app_dir, "revoke", "x", "--signal", "NOPE")
    assert bad.returncode == 64 and len(error_lines(bad)) == 1
    bad_id = celery(app_dir, "revoke", "good-id", "")
    assert bad_id.returncode == 64
    assert error_lines(bad_id) == [
        "Error: invalid task id: task id of length 0 is outside 1..1024; nothing revoked"
    ]


def test_plugins_errors(app_dir: Path) -> None:
    down = celery(app_dir, "plugins")  # never contacts the broker
    assert down.returncode == 0, down.stderr
    assert "filesystem" in down.stdout and error_lines(down) == []
    bad = celery(app_dir, "plugins", "--bogus")
    assert bad.returncode == 64 and len(error_lines(bad)) == 1


def test_demo_errors(app_dir: Path) -> None:
    bad = celery(app_dir, "demo", "--workers", "0")
    assert bad.returncode == 64 and len(error_lines(bad)) == 1
    bad = celery(app_dir, "demo", "--revoke", "x")
    assert bad.returncode == 64 and len(error_lines(bad)) == 1
    # Its own broker (a temporary filesystem:// folder): the app's, down, does not matter.
    ran = celery(app_dir, "demo", "--workers", "1", "--revoke", "1", timeout=180)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "OK: the newcomer learnt the 1 revoked ids and the clock" in ran.stdout
