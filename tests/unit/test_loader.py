from __future__ import annotations

import logging

import pytest

import mingle_plugins
from mingle_plugins import PluginLoadError, get_plugin_manager, load_settings
from mingle_plugins.settings import MingleSettings

GOOD = """
from mingle_plugins import hookimpl

@hookimpl
def mingle_transport_compatible(app, driver_type):
    return True if driver_type == "filesystem" else None
"""


def records(pm):
    return {r.name: r for r in pm.records}


def test_import_loads_nothing(fake_dist) -> None:
    fake_dist("mp-good", "1.0", {"good": "mp_good"}, {"mp_good": GOOD})
    pm = get_plugin_manager(load_entrypoints=False)
    assert [r.name for r in pm.records] == ["builtin"]
    assert "mp_good" not in __import__("sys").modules
    assert mingle_plugins.hookimpl is mingle_plugins.markers.hookimpl


def test_loads_sorted_and_records_distribution(fake_dist) -> None:
    fake_dist("mp-zeta", "2.1", {"zeta": "mp_zeta"}, {"mp_zeta": GOOD})
    fake_dist("mp-alpha", "1.0", {"alpha": "mp_alpha"}, {"mp_alpha": GOOD})
    pm = get_plugin_manager(MingleSettings())
    loaded = [r for r in pm.records if r.name in ("alpha", "zeta")]
    assert [r.name for r in loaded] == ["alpha", "zeta"]
    assert (loaded[1].distribution, loaded[1].version, loaded[1].status) == ("mp-zeta", "2.1", "loaded")
    assert loaded[0].hooks == ("mingle_transport_compatible",)
    assert pm.hook.mingle_transport_compatible(app=None, driver_type="filesystem") is True


def test_broken_plugins_are_skipped_with_one_line(fake_dist, caplog) -> None:
    fake_dist("mp-broken", "0.3", {"broken": "mp_broken"}, {"mp_broken": "raise ImportError('no such lib')"})
    fake_dist(
        "mp-typo",
        "0.1",
        {"typo": "mp_typo"},
        {"mp_typo": GOOD.replace("mingle_transport_compatible", "mingle_transport_compatibel")},
    )
    fake_dist(
        "mp-badargs",
        "0.1",
        {"badargs": "mp_badargs"},
        {"mp_badargs": GOOD.replace("driver_type)", "driver_type, bogus)")},
    )
    fake_dist("mp-good", "1.0", {"good": "mp_good"}, {"mp_good": GOOD})
    with caplog.at_level(logging.ERROR, logger="mingle_plugins"):
        pm = get_plugin_manager(MingleSettings())
    recs = records(pm)
    assert recs["good"].status == "loaded"
    for name, dist, cause in [
        ("broken", "mp-broken 0.3", "no such lib"),
        ("typo", "mp-typo 0.1", "mingle_transport_compatibel"),
        ("badargs", "mp-badargs 0.1", "bogus"),
    ]:
        assert recs[name].status == "failed"
        assert cause in recs[name].reason
        lines = [r.getMessage() for r in caplog.records if f"plugin {name!r}" in r.getMessage()]
        assert len(lines) == 1 and dist in lines[0] and "skipped" in lines[0]
    assert [pm.get_plugin(name) for name in ("broken", "typo", "badargs")] == [None, None, None]
    assert pm.get_plugin("good") is not None


def test_strict_reraises_naming_the_plugin(fake_dist) -> None:
    fake_dist("mp-broken", "0.3", {"broken": "mp_broken"}, {"mp_broken": "raise ImportError('no such lib')"})
    with pytest.raises(PluginLoadError, match=r"'broken'.*mp-broken 0\.3.*no such lib") as info:
        get_plugin_manager(MingleSettings(strict=True))
    assert isinstance(info.value.__cause__, ImportError)


def test_allow_and_deny_lists_apply_before_import(fake_dist) -> None:
    fake_dist("mp-broken", "0.3", {"broken": "mp_broken"}, {"mp_broken": "raise ImportError('boom')"})
    fake_dist("mp-good", "1.0", {"good": "mp_good"}, {"mp_good": GOOD})
    pm = get_plugin_manager(MingleSettings(plugins=("mp-good",)))  # by distribution name
    assert records(pm)["broken"].status == "blocked" and records(pm)["good"].status == "loaded"
    pm = get_plugin_manager(MingleSettings(disabled_plugins=("broken",)))  # by entry point name
    assert records(pm)["broken"].reason == "in mingle_disabled_plugins"
    pm = get_plugin_manager(MingleSettings(plugins=()))  # empty: none at all
    assert pm.loaded_names() == []


def test_environment_variable_chooses_plugins(fake_dist) -> None:
    fake_dist("mp-good", "1.0", {"good": "mp_good"}, {"mp_good": GOOD})
    settings, _ = load_settings({"mingle_plugins": ["good"]}, environ={"CELERY_MINGLE_PLUGINS": ""})
    assert get_plugin_manager(settings).loaded_names() == []
    settings, _ = load_settings({}, environ={"CELERY_MINGLE_PLUGINS": "good"})
    assert get_plugin_manager(settings).loaded_names() == ["good"]
