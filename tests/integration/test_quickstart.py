"""docs/quickstart.md, run as a newcomer would: its commands, in order, as written.

The blocks that the quickstart marks ``<!-- quickstart: TAG -->`` become bash scripts: the
``install`` blocks once (the same for both brokers), then per broker the ``all`` and ``BROKER``
blocks, in the folder and virtualenv that the install made. ``console`` blocks give their ``$``
lines; a ``python`` block whose first line is ``# FILE`` is written to that file at that point.
They run in a temporary folder that holds a copy of the core as ``celery-mingle-plugins``
(the checkout the quickstart asks for).

The only change is isolation from other runs on the same broker: the environment sets
``CELERY_BROKER_URL``, which Celery reads before the app's ``broker``, to a Redis database of its
own (under a lock) or a new RabbitMQ vhost. Nothing in the copied text is rewritten.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import services
from tests.support.compat import core_source
from tests.support.venvs import ROOT

QUICKSTART = ROOT / "docs" / "quickstart.md"
BLOCK = re.compile(r"^<!-- quickstart: (\w+) -->\n```(\w+)\n(.*?)^```", re.M | re.S)
IDS = ("3f2b6a52-6f0e-4c8c-9d3b-2f1a1e5c9b01", "7d1c0b9e-8a3f-4e7e-b6b2-5c4d3e2f1a00")

pytestmark = pytest.mark.slow


def script(tags: tuple[str, ...], prefix: tuple[str, ...] = ()) -> str:
    """The quickstart's blocks marked with one of ``tags``, in order, as one bash script."""
    lines = ["set -euo pipefail", *prefix]
    for which, lang, text in BLOCK.findall(QUICKSTART.read_text()):
        if which not in tags:
            continue
        if lang == "console":
            lines += [line[2:] for line in text.splitlines() if line.startswith("$ ")]
        elif lang == "python":
            name = re.match(r"# (\S+)\n", text)
            assert name, f"a python block of the quickstart does not start with `# FILE`:\n{text}"
            lines.append(f"cat > {name[1]} <<'QUICKSTART_EOF'\n{text}QUICKSTART_EOF")
        else:
            raise AssertionError(f"unexpected block {lang!r} in the quickstart")
    return "\n".join(lines) + "\n"


def clean_env() -> dict[str, str]:
    drop = ("PYTHONPATH", "VIRTUAL_ENV", "CELERY_MINGLE_PLUGINS", "CELERY_BROKER_URL", services.REQUIRE_ENV)
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The folder where section 1 ("Install") ran: a copy of the core as the checkout, the
    quickstart's folder and virtualenv. Shared by the brokers: its commands are the same."""
    top = tmp_path_factory.mktemp("quickstart")
    # Not what pip builds in the shared copy (another session may be building there now).
    ignore = shutil.ignore_patterns("build", "*.egg-info", ".complete")
    shutil.copytree(core_source(), top / "celery-mingle-plugins", ignore=ignore)
    install = script(("install",))
    result = subprocess.run(
        ["bash", "-c", install], cwd=top, env=clean_env(), capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"exit {result.returncode}\n{install}\n{result.stdout}\n{result.stderr}"
    return top


@contextlib.contextmanager
def isolated_broker(broker: str) -> Iterator[str]:
    """A broker URL of this run's own: a locked Redis database, or a new RabbitMQ vhost."""
    if broker == "redis":
        with services.redis_db() as url:  # a random free database, claimed, flushed at the end
            yield url
        return
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        services.missing(
            "rabbitmqctl is not installed: the quickstart test makes its own RabbitMQ vhost with it"
        )
    vhost = f"mingle-quickstart-{uuid.uuid4().hex[:8]}"
    subprocess.run([ctl, "add_vhost", vhost], check=True, capture_output=True, timeout=60)
    try:
        subprocess.run(
            [ctl, "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=60,
        )
        yield f"amqp://guest:guest@127.0.0.1:5672/{vhost}"
    finally:
        subprocess.run([ctl, "delete_vhost", vhost], capture_output=True, timeout=60)


def kill_leftovers(folder: Path) -> None:
    """Kill the workers whose pid files are still there (a failed run)."""
    for pidfile in folder.glob("*.pid"):
        with contextlib.suppress(ValueError, ProcessLookupError, OSError):
            os.kill(int(pidfile.read_text().strip()), signal.SIGKILL)


@pytest.mark.parametrize(
    "broker",
    [pytest.param("redis", marks=pytest.mark.redis), pytest.param("rabbitmq", marks=pytest.mark.rabbitmq)],
)
def test_quickstart_as_written(broker: str, installed: Path) -> None:
    folder = installed / "mingle-quickstart"
    for leftover in folder.glob("*.log"):  # the other broker's run
        leftover.unlink()
    # Sections 2 and 3 in the folder and the virtualenv of section 1, as the quickstart says.
    install = script(("install",))
    prefix = ("cd mingle-quickstart", ". venv/bin/activate")
    assert all(step in install for step in prefix)
    walkthrough = script(("all", broker), prefix)
    env = clean_env()
    with isolated_broker(broker) as url:
        env["CELERY_BROKER_URL"] = url
        try:
            result = subprocess.run(
                ["bash", "-c", walkthrough],
                cwd=installed,
                env=env,
                capture_output=True,
                text=True,
                timeout=240,
            )
        finally:
            kill_leftovers(folder)
    out = result.stdout
    print(out)
    assert result.returncode == 0, f"exit {result.returncode}\n{walkthrough}\n{out}\n{result.stderr}"
    assert (folder / "venv" / "bin" / "celery").exists() and (folder / "proj.py").exists()
    scheme = "redis" if broker == "redis" else "amqp"
    assert scheme in (folder / "proj.py").read_text()
    # The revoke reached both workers; the newcomer learnt both ids by mingling.
    assert out.count("flagged as revoked") == 2, out
    assert re.search(
        r"mingle: summary: 2 neighbours, 2 accepted, 2 ids merged, 0 dropped by policy, 0 rejected", out
    ), out
    revoked = out[out.index("->  newcomer@") :].split("\n\n")[0]
    assert all(f"* {task_id}" in revoked for task_id in IDS), revoked
    assert re.search(rf"^newcomer@\S+\s+on\s+{scheme}\s+2\s+2\s+0\s", out, re.M), out
    assert "3 of 3 worker(s) answered mingle_status." in out
    # `celery multi stopwait` stopped them all.
    assert list(folder.glob("*.pid")) == []
