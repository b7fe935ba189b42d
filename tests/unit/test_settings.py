from __future__ import annotations

import logging

import pytest

from mingle_plugins import MingleSettings, SettingsError, load_settings


def test_defaults_are_stock() -> None:
    settings, problems = load_settings({}, environ={})
    assert problems == []
    assert settings == MingleSettings()
    assert settings.hello_timeout == 1.0 and settings.quiet_window is None and settings.plugins is None


def test_values_are_parsed() -> None:
    settings, problems = load_settings(
        {
            "mingle_plugins": "a, b",
            "mingle_disabled_plugins": ["c"],
            "mingle_strict": "yes",
            "mingle_hello_timeout": "2.5",
            "mingle_quiet_window": 0.05,
            "mingle_plugin_settings": {"a": {"x": 1}},
        },
        environ={},
    )
    assert problems == []
    assert settings.plugins == ("a", "b") and settings.disabled_plugins == ("c",)
    assert settings.strict is True and settings.hello_timeout == 2.5 and settings.quiet_window == 0.05
    assert settings.for_plugin("a") == {"x": 1} and settings.for_plugin("zzz") == {}
    assert settings.as_dict()["mingle_plugins"] == ["a", "b"]


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("mingle_hello_timeout", "soon"),
        ("mingle_hello_timeout", -1),
        ("mingle_hello_timeout", float("nan")),
        ("mingle_quiet_window", True),
        ("mingle_plugins", 3),
        ("mingle_strict", "maybe"),
        ("mingle_max_clock", 0),
        ("mingle_plugin_settings", {"a": 1}),
    ],
)
def test_bad_value_logs_one_line_and_uses_default(key: str, value: object, caplog) -> None:
    with caplog.at_level(logging.ERROR, logger="mingle_plugins"):
        settings, problems = load_settings({key: value}, environ={})
    assert [p.setting for p in problems] == [key]
    assert getattr(settings, key[len("mingle_") :]) == getattr(MingleSettings(), key[len("mingle_") :])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and key in lines[0] and "expected" in lines[0] and "default" in lines[0]


def test_strict_raises_on_bad_value() -> None:
    with pytest.raises(SettingsError, match="mingle_hello_timeout='soon' is not accepted"):
        load_settings({"mingle_strict": True, "mingle_hello_timeout": "soon"}, environ={})


PLUGIN_WITH_SETTINGS = """
from dataclasses import dataclass
from mingle_plugins import hookimpl, seconds, setting, boolean

@dataclass(frozen=True)
class AuditSettings:
    path: str = setting("/tmp/audit", "Where to write.", __import__("mingle_plugins").text)
    every: float = setting(2.0, "How often.", seconds)
    loud: bool = setting(False, "Say more.", boolean)

SEEN = []

@hookimpl
def mingle_add_settings(registry):
    registry.add("audit", AuditSettings)

@hookimpl
def mingle_sync_complete(settings):
    SEEN.append(settings.plugin(AuditSettings))
"""


def test_a_plugin_declares_its_settings_and_gets_them_parsed_once(fake_dist, caplog) -> None:
    from mingle_plugins.plugins.config import configure

    fake_dist("mingle-audit-x", "1.0", {"audit": "audit_x"}, {"audit_x": PLUGIN_WITH_SETTINGS})
    conf = {"mingle_plugin_settings": {"audit": {"every": "5", "loud": "perhaps", "colour": "red"}}}
    with caplog.at_level(logging.WARNING, logger="mingle_plugins"):
        config = configure(conf, environ={})
    import audit_x  # type: ignore[import-not-found]

    own = config.settings.plugin(audit_x.AuditSettings)
    assert (own.path, own.every, own.loud) == ("/tmp/audit", 5.0, False)
    assert [p.setting for p in config.problems] == [
        "mingle_plugin_settings['audit']['loud']",
        "mingle_plugin_settings['audit']['colour']",
    ]
    lines = [r.getMessage() for r in caplog.records]
    assert any(
        "mingle_plugin_settings['audit']: loud='perhaps' is not accepted" in x and "False" in x for x in lines
    )
    assert lines[-1] == (  # the unknown key: in the one WARNING line of unknown names
        "mingle: 1 unknown setting(s) ignored: mingle_plugin_settings['audit']['colour']: "
        "no such setting of this plugin (did you mean 'loud'?)"
    )
    assert len(lines) == 2


def test_strict_mode_stops_on_a_bad_plugin_setting(fake_dist) -> None:
    from mingle_plugins.plugins.config import configure

    fake_dist("mingle-audit-y", "1.0", {"audit": "audit_y"}, {"audit_y": PLUGIN_WITH_SETTINGS})
    conf = {"mingle_strict": True, "mingle_plugin_settings": {"audit": {"every": -1}}}
    with pytest.raises(
        SettingsError, match=r"mingle_plugin_settings\['audit'\]\['every'\]=-1 is not accepted"
    ):
        configure(conf, environ={})


def test_a_declaration_that_is_not_a_settings_dataclass_is_refused(caplog) -> None:
    from mingle_plugins import SettingsRegistry

    registry = SettingsRegistry()
    with pytest.raises(TypeError, match="not a dataclass"):
        registry.add("x", dict)


def test_the_fast_profile_yields_to_a_setting_given_explicitly_none_included() -> None:
    fast, _ = load_settings({"mingle_profile": "fast"}, environ={})
    assert fast.quiet_window == 0.05 and fast.digest is True and fast.merge == "bulk"
    given, problems = load_settings(
        {"mingle_profile": "fast", "mingle_quiet_window": None, "mingle_digest": False}, environ={}
    )
    assert problems == []
    assert given.quiet_window is None  # stock's idle timeout, as documented
    assert given.digest is False and given.merge == "bulk"  # the others still the profile's
