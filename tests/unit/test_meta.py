"""Every hook is documented (the reference page is current) and exercised by a test."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

from mingle_plugins import hookspecs

ROOT = Path(__file__).resolve().parents[2]


def _gen_hooks():
    spec = importlib.util.spec_from_file_location("gen_hooks", ROOT / "docs" / "gen_hooks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hook_reference_is_current() -> None:
    page = (ROOT / "docs" / "hooks.md").read_text()
    assert page == _gen_hooks().render(), "docs/hooks.md is stale: run python docs/gen_hooks.py"


@pytest.mark.parametrize("name", hookspecs.__all__)
def test_hook_is_documented_and_tested(name: str) -> None:
    fn = getattr(hookspecs, name)
    assert fn.__doc__ and ":return:" in fn.__doc__ and "versionadded" in fn.__doc__
    assert "firstresult" in fn.__doc__
    assert _gen_hooks().signature(fn) in (ROOT / "docs" / "hooks.md").read_text()
    sources = [p for p in (ROOT / "tests").rglob("*.py") if p.name != "test_meta.py"]
    sources += list((ROOT / "transports").rglob("*.py")) if (ROOT / "transports").exists() else []
    implemented = [p for p in sources if re.search(rf"def {name}\(", p.read_text())]
    assert implemented, f"no test implements the hook {name}"
