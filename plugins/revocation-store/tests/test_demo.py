"""`celery mingle-store demo`, as documented: a full restart loses the ids with stock, not with the store."""

from __future__ import annotations

import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_the_demo_command_shows_the_difference() -> None:
    pytest.importorskip("mingle_filesystem", reason="the demo needs celery-mingle-filesystem")
    done = subprocess.run(
        [sys.executable, "-m", "celery", "mingle-store", "demo", "--revoke", "3"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "[stock] inspect revoked: w3@store-demo has 0 of the 3 ids" in out
    assert "[store] inspect revoked: w3@store-demo has 3 of the 3 ids" in out
    assert "2 of the 2 revoked while no worker was up" in out
    assert "OK: after a full restart, stock kept 0 of 3 revoked ids; with the store 3 of 3" in out
