from __future__ import annotations

import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.worker import state as worker_state

from mingle_plugins.bootstep import Mingle


@pytest.fixture
def fake_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    """Install a fake distribution (dist-info + module) on sys.path for this test."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def make(dist: str, version: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
        info = tmp_path / f"{dist.replace('-', '_')}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
        eps = "".join(f"{name} = {value}\n" for name, value in entry_points.items())
        (info / "entry_points.txt").write_text(f"[celery.mingle]\n{eps}")
        for name, source in modules.items():
            (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))

    return make


@pytest.fixture
def state() -> Iterator[Any]:
    """The real worker state module, emptied before and after the test."""
    worker_state.revoked.clear()
    yield worker_state
    worker_state.revoked.clear()


@pytest.fixture
def consumer(state: Any) -> Iterator[Any]:
    app = Celery("unit", broker="memory://", set_as_current=False)
    c = SimpleNamespace(
        app=app,
        hostname="me@unit",
        controller=SimpleNamespace(state=state),
        connection=None,
        connection_errors=(ConnectionError,),
        event_dispatcher=None,
    )
    yield c
    app.close()


@pytest.fixture
def step(consumer: Any, monkeypatch: pytest.MonkeyPatch) -> Mingle:
    """A Mingle step on a memory:// app with no entry-point plugins loaded."""
    monkeypatch.setenv("CELERY_MINGLE_PLUGINS", "")
    return Mingle(consumer)
