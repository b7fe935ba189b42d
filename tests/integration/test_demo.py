"""The demo, run the way the README runs it: ``celery mingle demo`` in a fresh virtualenv.

The virtualenv has only Celery, this package and the filesystem transport plugin
pip-installed; no server is used. Each test checks that the demo leaves no worker
process and no folder behind, also when it is interrupted (SIGINT, SIGTERM).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.support.compat import core_source
from tests.support.venvs import ROOT, venv_python

PLUGIN = ROOT / "transports" / "filesystem"
CELERY = "celery==5.7.0"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo_python() -> Path:
    if not (PLUGIN / "pyproject.toml").exists():
        pytest.fail(f"the filesystem transport plugin is missing: {PLUGIN}")
    return venv_python([CELERY], editable=[core_source(), PLUGIN], label="demo")


@pytest.fixture(scope="module")
def core_python() -> Path:
    return venv_python([CELERY], editable=[core_source()], label="demo-core")


def demo_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a demo run; its temporary folders go under ``tmp_path/tmp``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "CELERY_MINGLE_PLUGINS")}
    env["PYTHONUNBUFFERED"] = "1"
    (tmp_path / "tmp").mkdir(exist_ok=True)
    env["TMPDIR"] = str(tmp_path / "tmp")
    return env


def folder_of(output: str) -> Path:
    match = re.search(r"^folder: (\S+)$", output, re.M)
    assert match, f"the demo did not say its folder:\n{output}"
    return Path(match[1])


def processes_using(folder: Path) -> list[str]:
    """Command lines of the live processes that name ``folder`` (the demo's workers do: --logfile)."""
    found = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        if str(folder) in cmdline and "\nState:\tZ" not in status:
            found.append(f"{pid}: {cmdline}")
    return found


def assert_cleaned_up(folder: Path) -> None:
    deadline = time.monotonic() + 5
    while processes_using(folder) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert processes_using(folder) == []
    assert not folder.exists(), f"{folder} was left behind"
    assert list(folder.parent.iterdir()) == [], "files left in the temporary folder"


@pytest.mark.parametrize("how", ["celery mingle demo", "python -m mingle_plugins.demo"])
def test_demo_end_to_end(demo_python: Path, tmp_path: Path, how: str) -> None:
    if how == "celery mingle demo":
        cmd = [str(demo_python.parent / "celery"), "mingle", "demo"]
    else:
        cmd = [str(demo_python), "-m", "mingle_plugins.demo"]
    started = time.monotonic()
    result = subprocess.run(
        cmd, cwd=tmp_path, env=demo_env(tmp_path), capture_output=True, text=True, timeout=180
    )
    took = time.monotonic() - started
    out = result.stdout
    assert result.returncode == 0, f"exit {result.returncode}\n{out}\n{result.stderr}"
    print(f"\n{how}: {took:.1f}s\n{out}")
    assert "plugin 'filesystem' claims it" in out
    # The newcomer's own log lines, shown as they happen.
    assert "  | mingle: searching for neighbors" in out
    assert "  | mingle: sync with 3 nodes" in out
    assert re.search(
        r"  \| mingle: summary: 3 neighbours, 3 accepted, 5 ids merged, "
        r"0 dropped by policy, 0 rejected, [\d.]+s",
        out,
    )
    # What inspect says afterwards.
    assert "inspect revoked: newcomer@mingle-demo has 5 of the 5 revoked ids" in out
    clock, top = map(int, re.search(r"is at (\d+) \(neighbours were at most (\d+)\)", out).groups())
    assert clock > top
    assert re.search(r"^newcomer@mingle-demo\s+on\s+filesystem\s+3\s+5\s+0\s", out, re.M)
    assert "OK: the newcomer learnt the 5 revoked ids and the clock" in out
    assert folder_of(out).parent == tmp_path / "tmp"
    assert_cleaned_up(folder_of(out))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_demo_cleans_up_when_interrupted(demo_python: Path, tmp_path: Path, sig: signal.Signals) -> None:
    proc = subprocess.Popen(
        [str(demo_python), "-m", "mingle_plugins.demo"],
        cwd=tmp_path,
        env=demo_env(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:  # mid-run: the first workers are up, the revokes were sent
            lines.append(line)
            if line.startswith("revoked "):
                break
        output = "".join(lines)
        folder = folder_of(output)
        assert processes_using(folder), f"no worker was running when the signal was sent:\n{output}"
        proc.send_signal(sig)  # to the demo only, as a terminal's Ctrl-C does (the workers have own groups)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + sig, f"exit {proc.returncode}\n{output}{rest}\n{err}"
    assert "OK:" not in rest
    if sig == signal.SIGINT:
        assert "interrupted: stopping the workers" in err
    assert_cleaned_up(folder)


def test_demo_without_the_plugin_says_how_to_install_it(core_python: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(core_python.parent / "celery"), "mingle", "demo"],
        cwd=tmp_path,
        env=demo_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        "error: the demo needs the filesystem transport plugin: run `pip install ./transports/filesystem` "
        "in the celery-mingle-plugins checkout, then try again"
    ]
    assert list((tmp_path / "tmp").iterdir()) == []  # its folder was removed too


def test_demo_with_the_plugin_blocked_says_so(demo_python: Path, tmp_path: Path) -> None:
    env = demo_env(tmp_path)
    env["CELERY_MINGLE_PLUGINS"] = ""
    result = subprocess.run(
        [str(demo_python), "-m", "mingle_plugins.demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: the filesystem plugin is installed but blocked: not in mingle_plugins / CELERY_MINGLE_PLUGINS"
    )
    assert list((tmp_path / "tmp").iterdir()) == []
