"""Mixed clusters for the wire-compatibility tests: stock Celery workers and ours, each in its own venv.

Stock workers run the stock consumer (no ``worker_consumer``); ours run
``mingle_plugins.consumer:Consumer``. Both kinds share one app directory, one
broker and one ``control_exchange``: two app modules, ``stock.py`` and ``ours.py``.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tests.support.venvs import ROOT, VENV_DIR, file_lock, lock_name, venv_python
from tests.support.workers import APP_TEMPLATE, Cluster, Worker, write_app

OUR_CONSUMER = "mingle_plugins.consumer:Consumer"


@dataclass(frozen=True)
class Kind:
    """One kind of worker: a Celery version, stock or with this package (and which settings)."""

    label: str
    requirements: tuple[str, ...]
    app: str = "stock"  # the app module: stock.py, ours.py, or ours_fast.py
    venv: str = ""  # the venv's label, when shared with another kind

    @property
    def ours(self) -> bool:
        return self.app != "stock"

    @property
    def venv_label(self) -> str:
        return self.venv or self.label


# kombu is pinned to the line each old Celery shipped with (a fresh install would take kombu 5.7);
# this also runs the core on the oldest kombu it supports.
CELERY54 = ("celery[redis]==5.4.0", "kombu==5.3.7")
CELERY57 = ("celery[redis]==5.7.0",)
KINDS: tuple[Kind, ...] = (
    Kind("stock53", ("celery[redis]==5.3.6", "kombu==5.3.7")),
    Kind("stock55", ("celery[redis]==5.5.3",)),
    Kind("stock56", ("celery[redis]==5.6.3",)),
    Kind("stock57", CELERY57),
    Kind("ours54", CELERY54, app="ours"),
    Kind("ours57", CELERY57, app="ours"),
    Kind("ours54fast", CELERY54, app="ours_fast", venv="ours54"),
    Kind("ours57fast", CELERY57, app="ours_fast", venv="ours57"),
)

#: Settings of the ``ours_fast`` app (the defaults are the ``ours`` app's).
#: The hello timeout is long, so that a fast mingle (ended by counted replies or the 50 ms quiet
#: window) is told from one that waited for the idle timeout without a tight timing bound.
FAST_CONF: dict[str, Any] = {"mingle_profile": "fast", "mingle_hello_timeout": 3.0}


def core_source() -> Path:
    """A copy of the core package alone (``mingle_plugins/`` and ``pyproject.toml``).

    ``venv_python`` keys a venv on the mtimes of every ``*.py`` under a local
    path, but skips paths under ``.venvs``; with the repository root, any edit
    of any test would rebuild the venvs. The copy lives in a directory named by
    a hash of the package's contents, so the venv key changes with the package only.
    """
    files = sorted(
        p for p in (ROOT / "mingle_plugins").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    files.append(ROOT / "pyproject.toml")
    digest = hashlib.sha256()
    for path in files:
        digest.update(f"{path.relative_to(ROOT)}\0".encode())
        digest.update(path.read_bytes())
    dest = VENV_DIR / "_src" / f"core-{digest.hexdigest()[:12]}"
    if (dest / ".complete").exists():
        return dest
    # Two checkouts of one commit make the same copy: one at a time (the lock venv_python
    # takes while pip builds in it).
    with file_lock(lock_name("source", dest.resolve())):
        if (dest / ".complete").exists():
            return dest
        shutil.rmtree(dest, ignore_errors=True)
        for path in files:
            out = dest / path.relative_to(ROOT)
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out)
        readme = ROOT / "README.md"
        (dest / "README.md").write_text(readme.read_text() if readme.exists() else "celery-mingle-plugins\n")
        (dest / ".complete").write_text(str(ROOT))
    return dest


def kind_python(kind: Kind) -> Path:
    """The venv interpreter of one kind, built on first use."""
    editable = [core_source()] if kind.ours else []
    return venv_python(list(kind.requirements), editable=editable, label=kind.venv_label)


def build_all(kinds: Sequence[Kind] = KINDS, parallel: int = 3) -> dict[str, Path]:
    """Every kind's interpreter, built ``parallel`` at a time.

    Under a file lock: ``venv_python`` rebuilds a venv in place (``venv --clear``),
    so two test sessions building the same one at once would break each other.
    """
    VENV_DIR.mkdir(parents=True, exist_ok=True)
    with open(VENV_DIR / ".compat.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        core_source()  # once, before the threads
        unique = list({k.venv_label: k for k in kinds}.values())
        with ThreadPoolExecutor(parallel) as pool:
            built = dict(zip([k.venv_label for k in unique], pool.map(kind_python, unique), strict=True))
    return {k.label: built[k.venv_label] for k in kinds}


def write_mixed_apps(directory: Path, broker: str, conf: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """``stock.py`` (stock consumer), ``ours.py`` and ``ours_fast.py`` (our consumer, ``FAST_CONF``).

    All on one broker and one control exchange.

    :return: the stock app's config (no ``worker_consumer``), for clients.
    """
    config = write_app(directory, broker, conf, name="ours")
    assert config["worker_consumer"] == OUR_CONSUMER
    stock = {k: v for k, v in config.items() if k != "worker_consumer"}
    (directory / "stock.py").write_text(APP_TEMPLATE.format(name="stock", conf=stock))
    fast = {**config, **FAST_CONF}
    (directory / "ours_fast.py").write_text(APP_TEMPLATE.format(name="ours_fast", conf=fast))
    return stock


class MixedCluster(Cluster):
    """A :class:`Cluster` whose workers each run in the venv of their kind."""

    def __init__(
        self, directory: Path, broker: str, pythons: Mapping[str, Path], conf: Mapping[str, Any] | None = None
    ) -> None:
        super().__init__(directory, write_mixed_apps(directory, broker, conf))
        self.pythons = dict(pythons)

    def start_kind(
        self, kind: Kind, nodename: str, *, wait: bool = True, timeout: float = 60.0, **kwargs: Any
    ) -> Worker:
        worker = self.start(nodename, python=self.pythons[kind.label], app=kind.app, wait=False, **kwargs)
        if wait:
            worker.wait_ready(timeout)
        return worker

    def bump_clocks(self, messages: int) -> None:
        """Move the clock of every running worker forward by about ``messages``.

        A worker forwards ``app.clock`` by one for every pidbox message it
        receives (addressed to it or not), so a few no-reply broadcasts do it.
        """
        for _ in range(messages):
            self.client.control.broadcast("ping", reply=False)

    def _ask(self, command: str, nodenames: Sequence[str], timeout: float) -> dict[str, Any]:
        inspect = self.client.control.inspect(
            destination=list(nodenames), limit=len(nodenames), timeout=timeout
        )
        reply: dict[str, Any] = getattr(inspect, command)() or {}
        missing = set(nodenames) - set(reply)
        assert not missing, f"no inspect {command} reply from {sorted(missing)}: {reply!r}"
        return reply

    def revoked_of(self, nodenames: Sequence[str], timeout: float = 10.0) -> dict[str, set[str]]:
        """``inspect revoked`` of several nodes in one broadcast; every one must answer."""
        reply = self._ask("revoked", nodenames, timeout)
        return {node: set(reply[node] or ()) for node in nodenames}

    def clocks_of(self, nodenames: Sequence[str], timeout: float = 10.0) -> dict[str, int]:
        """``inspect clock`` of several nodes in one broadcast; every one must answer."""
        reply = self._ask("clock", nodenames, timeout)
        return {node: int(reply[node]["clock"]) for node in nodenames}
