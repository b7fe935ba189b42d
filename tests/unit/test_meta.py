"""Every hook and every setting is documented (the generated pages are current), every hook is
exercised by a test, and its exact signature is on the reference page."""

from __future__ import annotations

import dataclasses
import importlib.util
import re
from pathlib import Path
from types import ModuleType

import pytest

from mingle_plugins import hookspecs
from mingle_plugins.settings import MingleSettings

ROOT = Path(__file__).resolve().parents[2]


def _gen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_hook_reference_is_current() -> None:
    page = (ROOT / "docs" / "hooks.md").read_text()
    assert page == _gen().render_hooks(), "docs/hooks.md is stale: run python docs/gen_reference.py"
    assert ":param" not in page and ":class:" not in page and ".. version" not in page


def test_settings_tables_are_current() -> None:
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == _gen().render_configuration(page), (
        "docs/configuration.md is stale: run python docs/gen_reference.py"
    )


def test_every_setting_has_a_doc_and_a_parser() -> None:
    classes = [MingleSettings] + [cls for _, _, cls in _gen().shipped_settings()]
    assert len(classes) >= 3
    for cls in classes:
        for f in dataclasses.fields(cls):
            if f.name == "plugin_values":
                continue
            assert f.metadata.get("doc") and f.metadata.get("parser"), f"{cls.__name__}.{f.name}"
            name = f"mingle_{f.name}" if cls is MingleSettings else f.name
            assert f"`{name}`" in (ROOT / "docs" / "configuration.md").read_text()


@pytest.mark.parametrize("name", hookspecs.__all__)
def test_hook_is_documented_and_tested(name: str) -> None:
    fn = getattr(hookspecs, name)
    doc = fn.__doc__ or ""
    assert "Returns:" in doc and "Arguments:" in doc and "versionadded" in doc and "firstresult" in doc
    assert _gen().signature(fn) in (ROOT / "docs" / "hooks.md").read_text()
    sources = [p for p in (ROOT / "tests").rglob("*.py") if p.name != "test_meta.py"]
    sources += list((ROOT / "transports").rglob("*.py")) + list((ROOT / "plugins").rglob("*.py"))
    implemented = [p for p in sources if re.search(rf"def {name}\(", p.read_text())]
    assert implemented, f"no test or shipped plugin implements the hook {name}"
