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
