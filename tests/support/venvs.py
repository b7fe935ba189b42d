"""Virtualenvs with a given Celery (stock, or with this package), built once.

They live outside the checkout, in ``${XDG_CACHE_HOME:-~/.cache}/celery-mingle-plugins/venvs``,
keyed by what is installed in them, so a second test run (of any checkout) reuses them.
``MINGLE_VENV_DIR`` moves them elsewhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def cache_dir() -> Path:
    """``${XDG_CACHE_HOME:-~/.cache}/celery-mingle-plugins``: what the tests keep between runs."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "celery-mingle-plugins"


VENV_DIR = Path(os.environ.get("MINGLE_VENV_DIR") or cache_dir() / "venvs")


def lock_name(kind: str, path: Path | str) -> str:
    return f".{kind}-{hashlib.sha256(str(path).encode()).hexdigest()[:12]}.lock"


#: One lock per checkout: pip and build write into the checkout they install or build.
CHECKOUT_LOCK = lock_name("checkout", ROOT)


@contextmanager
def file_lock(name: str) -> Iterator[None]:
    """An exclusive ``flock`` on ``VENV_DIR / name``, between every process of every checkout."""
    VENV_DIR.mkdir(parents=True, exist_ok=True)
    with open(VENV_DIR / name, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@contextmanager
def checkout_lock() -> Iterator[None]:
    """Held while pip or build writes into this checkout (``build/``, ``*.egg-info``: pip builds
    a local path in its tree), so that tests running in parallel (pytest-xdist) never do it at
    the same time."""
    with file_lock(CHECKOUT_LOCK):
        yield


def venv_python(requirements: Sequence[str], *, editable: Sequence[Path] = (), label: str = "env") -> Path:
    """A virtualenv with ``requirements`` (pip specifiers) and local ``editable`` paths installed.

    Local paths are installed non-editable from a copy, so the key includes their sources' mtimes.
    """
    key_src = "\n".join([*requirements, *(str(p) for p in editable), sys.version])
    for path in editable:
        # The core's key is its package and pyproject only: edits to tests must not rebuild venvs.
        sources = (
            [*path.glob("mingle_plugins/**/*.py"), path / "pyproject.toml"]
            if path == ROOT
            else [f for f in path.rglob("*") if f.suffix in (".py", ".toml") and "build" not in f.parts]
        )
        for f in sorted(sources):
            key_src += f"\n{f}:{f.stat().st_mtime_ns}"
    key = hashlib.sha256(key_src.encode()).hexdigest()[:12]
    env_dir = VENV_DIR / f"{label}-{key}"
    python = env_dir / "bin" / "python"
    marker = env_dir / ".complete"
    if marker.exists():
        return python
    # The venvs are shared by every checkout: two test sessions of two checkouts of the same
    # commit want the same venv (the core is installed from one copy, ``core_source()``), and
    # ``venv --clear`` under the other's build breaks both. So a lock per venv, then one per
    # local source outside this checkout (that copy, which pip builds in its tree too), then
    # this checkout's; always in this order.
    with contextlib.ExitStack() as locks:
        locks.enter_context(file_lock(f".{env_dir.name}.lock"))
        if marker.exists():
            return python
        for path in sorted({p.resolve() for p in editable if not p.resolve().is_relative_to(ROOT)}):
            locks.enter_context(file_lock(lock_name("source", path)))
        locks.enter_context(checkout_lock())
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(env_dir)], check=True)
        args = [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *requirements]
        args += [str(p) for p in editable]
        result = subprocess.run(args, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(
                f"pip install failed in {env_dir}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
            )
        marker.write_text(key_src)
    return python
