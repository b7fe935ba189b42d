"""Every setting checked once: unknown ``mingle_*`` keys, unknown plugin blocks, plugins named in
the allow-list but not installed; one WARNING line with a did-you-mean, and ``check`` says them."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from celery import Celery

from mingle_plugins import SettingsError, load_settings
from mingle_plugins.cli import check as check_cmd
from mingle_plugins.errors import UnknownSetting, closest
from mingle_plugins.plugins.config import configure
from mingle_plugins.settings import unknown_settings

from .test_settings import PLUGIN_WITH_SETTINGS


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_closest_suggests_only_a_near_name() -> None:
    assert closest("profil", ["profile", "merge"]) == "profile"
    assert closest("zzz", ["profile", "merge"]) is None
    assert unknown_settings({"mingle_zzz": 1})[0].suggestion is None  # "mingle_" alone is no match


def test_an_unknown_core_key_is_one_warning_with_a_did_you_mean(caplog: pytest.LogCaptureFixture) -> None:
    conf = {"mingle_profil": "fast", "mingle_hello_timeout": 2, "mingle_qqqqqqqq": 1, "broker_url": "x"}
    with caplog.at_level(logging.WARNING, logger="mingle_plugins"):
        settings, problems = load_settings(conf, environ={})
    assert settings.profile == "stock" and settings.hello_timeout == 2.0  # the good part is kept
    assert [type(p) for p in problems] == [UnknownSetting, UnknownSetting]
    assert warnings_of(caplog) == [
        "mingle: 2 unknown setting(s) ignored: "
        "mingle_profil: no such setting (did you mean mingle_profile?); "
        "mingle_qqqqqqqq: no such setting"
    ]


def test_unknown_settings_of_a_mapping_without_keys() -> None:
    class GetOnly:
        def get(self, key: str, default: Any = None) -> Any:
            return default

        def __iter__(self) -> Any:
            raise TypeError("not iterable")

    assert unknown_settings(GetOnly()) == []  # type: ignore[arg-type]


def test_strict_mode_stops_on_an_unknown_key_and_says_it_first(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mingle_plugins"), pytest.raises(SettingsError) as info:
        load_settings({"mingle_strict": True, "mingle_merg": "bulk"}, environ={})
    assert str(info.value) == "mingle_merg: no such setting (did you mean mingle_merge?)"
    assert len(warnings_of(caplog)) == 1


def test_configure_says_core_and_plugin_unknowns_in_one_line(fake_dist, caplog) -> None:
    fake_dist("mingle-audit-u", "1.0", {"audit": "audit_u"}, {"audit_u": PLUGIN_WITH_SETTINGS})
    conf = {
        "mingle_profil": "fast",
        "mingle_plugin_settings": {"audti": {"every": 2}, "audit": {"evry": 3}},
    }
    with caplog.at_level(logging.WARNING, logger="mingle_plugins"):
        config = configure(conf, environ={"CELERY_MINGLE_PLUGINS": "audit"})
    unknown = [p for p in config.problems if isinstance(p, UnknownSetting)]
    assert [p.setting for p in unknown] == [
        "mingle_profil",
        "mingle_plugin_settings['audit']['evry']",
        "mingle_plugin_settings['audti']",
    ]
    assert [line for line in warnings_of(caplog) if "unknown setting" in line] == [
        "mingle: 3 unknown setting(s) ignored: "
        "mingle_profil: no such setting (did you mean mingle_profile?); "
        "mingle_plugin_settings['audit']['evry']: no such setting of this plugin (did you mean 'every'?); "
        "mingle_plugin_settings['audti']: no installed plugin of this name declares settings "
        "(did you mean 'audit'?)"
    ]


def test_a_block_of_an_installed_plugin_that_is_not_loaded_is_left_alone(fake_dist, caplog) -> None:
    fake_dist("mingle-audit-v", "1.0", {"audit": "audit_v"}, {"audit_v": PLUGIN_WITH_SETTINGS})
    conf = {"mingle_disabled_plugins": ["audit"], "mingle_plugin_settings": {"audit": {"every": 2}}}
    with caplog.at_level(logging.WARNING, logger="mingle_plugins"):
        config = configure(conf, environ={})
    assert not [p for p in config.problems if isinstance(p, UnknownSetting)]
    assert not [line for line in warnings_of(caplog) if "unknown setting" in line]


def test_a_plugin_named_in_the_allow_list_but_not_installed(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mingle_plugins"):
        config = configure({}, environ={"CELERY_MINGLE_PLUGINS": "filesystem,no-such-plugin"})
    assert config.missing == ("no-such-plugin",)
    assert (
        "mingle: plugin(s) named in mingle_plugins / CELERY_MINGLE_PLUGINS but not installed: "
        "'no-such-plugin'" in warnings_of(caplog)
    )


# -- celery mingle check: the classes of problems and their exit codes -------------------


def report_of(monkeypatch: pytest.MonkeyPatch, plugins: str, **conf: Any) -> dict[str, Any]:
    monkeypatch.setenv("CELERY_MINGLE_PLUGINS", plugins)
    app = Celery("unit", broker=conf.pop("broker", "memory://"), set_as_current=False)
    app.conf.update(worker_consumer="mingle_plugins.consumer:Consumer", **conf)
    report = check_cmd.check_app(app)
    report["live"] = {"asked": False, "error": "--no-live"}
    return report


def test_check_an_unknown_key_is_a_configuration_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    report = report_of(monkeypatch, "", mingle_profil="fast")
    assert report["broken"] == ["setting: mingle_profil: no such setting (did you mean mingle_profile?)"]
    assert check_cmd.exit_code(report) == check_cmd.EX_BROKEN == 1


def test_check_a_missing_allowed_plugin_is_a_configuration_problem(monkeypatch: pytest.MonkeyPatch) -> None:
    report = report_of(monkeypatch, "nosuch")
    assert report["broken"] == [
        "plugin 'nosuch' is named in mingle_plugins / CELERY_MINGLE_PLUGINS but not installed"
    ]
    assert check_cmd.exit_code(report) == 1


def test_check_a_transport_whose_plugin_is_not_there(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    report = report_of(
        monkeypatch,
        "",  # celery-mingle-filesystem is installed here, but not allowed: as if it were not
        broker="filesystem://",
        broker_transport_options={"data_folder_in": str(tmp_path), "data_folder_out": str(tmp_path)},
    )
    assert len(report["broken"]) == 1
    assert report["broken"][0].startswith(
        "the 'filesystem' transport needs the plugin celery-mingle-filesystem, not loaded: no plugin answers"
    )
    assert check_cmd.exit_code(report) == 1


def test_check_exit_codes_by_class() -> None:
    base: dict[str, Any] = {"broken": [], "plugin_failures": [], "live": {"asked": True, "error": None}}
    assert check_cmd.exit_code(base) == check_cmd.EX_OK == 0
    down = {**base, "live": {"asked": False, "error": "cannot reach the broker"}}
    assert check_cmd.exit_code(down) == 69
    assert check_cmd.exit_code({**base, "live": {"asked": False, "error": "--no-live"}}) == 0
    assert check_cmd.exit_code({**down, "broken": ["setting: x"]}) == 1
    failed = {**down, "broken": ["setting: x", "plugin 'p' failed"], "plugin_failures": ["plugin 'p' failed"]}
    assert check_cmd.exit_code(failed) == 70


def test_the_worker_says_the_unknown_names_once_at_start(consumer, monkeypatch, caplog) -> None:
    from mingle_plugins.bootstep import Mingle

    monkeypatch.setenv("CELERY_MINGLE_PLUGINS", "")
    consumer.app.conf.update(mingle_profil="fast", mingle_plugin_settings={"stroe": {"url": "x"}})
    with caplog.at_level(logging.DEBUG, logger="mingle_plugins"):
        step = Mingle(consumer)
    said = [line for line in warnings_of(caplog) if "unknown setting" in line]
    assert said == [
        "mingle: 2 unknown setting(s) ignored: "
        "mingle_profil: no such setting (did you mean mingle_profile?); "
        "mingle_plugin_settings['stroe']: no installed plugin of this name declares settings "
        "(did you mean 'store'?)"  # installed (celery-mingle-store), though not loaded here
    ]
    assert step.settings.profile == "stock"


def test_a_namespaced_configuration_is_checked_too() -> None:
    from celery import Celery

    class DjangoSettings:
        CELERY_BROKER_URL = "memory://"
        CELERY_MINGLE_PLUGINS = ["filesystem"]
        CELERY_MINGLE_PROFIL = "fast"

    app = Celery("django", set_as_current=False)
    app.config_from_object(DjangoSettings, namespace="CELERY")
    assert [str(p) for p in unknown_settings(app.conf)] == [
        "CELERY_MINGLE_PROFIL: no such setting (did you mean CELERY_MINGLE_PROFILE?)"
    ]
