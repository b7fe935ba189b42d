"""Unit tests of mingle_filesystem: settings, tuning, and counting bindings in a real control folder."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu import Connection

import mingle_filesystem as plugin
from mingle_plugins import HelloOptions, MingleSettings, SettingsRegistry, load_settings


def app_with(**conf: Any) -> Celery:
    app = Celery("t", set_as_current=False)
    app.conf.update(conf)
    return app


def resolved(app: Celery) -> MingleSettings:
    """The settings as a worker resolves them: the plugin's declaration, parsed by the core."""
    registry = SettingsRegistry()
    plugin.mingle_add_settings(registry=registry)
    settings, _ = load_settings(app.conf, environ={})
    return registry.resolve(settings)[0]


def own(app: Celery) -> plugin.FilesystemSettings:
    return resolved(app).plugin(plugin.FilesystemSettings)


def test_claims_only_the_filesystem_transport() -> None:
    assert plugin.mingle_transport_compatible(driver_type="filesystem") is True
    assert plugin.mingle_transport_compatible(driver_type="redis") is None


def test_settings_follow_the_transport_polling_interval() -> None:
    app = app_with(broker_transport_options={"polling_interval": 0.2})
    s = own(app)
    assert s.interval(app.conf) == 0.2
    assert s.window(app.conf) == pytest.approx(0.7)
    assert s.stale(app.conf) == 5.0
    assert own(app_with()).interval(app_with().conf) == 1.0
    forced = app_with(mingle_plugin_settings={"filesystem": {"neighbour_polling_interval": 3}})
    assert own(forced).stale(forced.conf) == 15.0


def test_bad_plugin_settings_fall_back_to_defaults(caplog: pytest.LogCaptureFixture) -> None:
    app = app_with(mingle_plugin_settings={"filesystem": {"margin": -1, "reply_polling_interval": "x"}})
    s = own(app)
    assert (s.margin, s.reply_polling_interval) == (0.5, 0.05)
    assert (
        "mingle: mingle_plugin_settings['filesystem']: margin=-1 is not accepted: "
        "expected a number of seconds > 0; using the default 0.5"
    ) in caplog.text


def test_tune_keeps_the_collection_open_one_neighbour_round() -> None:
    options = HelloOptions(timeout=1.0)
    app = app_with(broker_transport_options={"polling_interval": 2.0})
    plugin.mingle_tune_hello(app=app, driver_type="filesystem", options=options, settings=resolved(app))
    assert (options.timeout, options.quiet_window, options.polling_interval) == (2.5, 2.5, 0.05)
    untouched = HelloOptions(timeout=1.0)
    plugin.mingle_tune_hello(app=app, driver_type="redis", options=untouched, settings=resolved(app))
    assert untouched == HelloOptions(timeout=1.0)


def test_a_longer_user_timeout_is_kept() -> None:
    options = HelloOptions(timeout=5.0, quiet_window=3.0)
    app = app_with()
    plugin.mingle_tune_hello(app=app, driver_type="filesystem", options=options, settings=resolved(app))
    assert (options.timeout, options.quiet_window) == (5.0, 3.0)


def test_count_skips_own_and_stale_bindings(tmp_path: Path) -> None:
    folder, control = tmp_path / "q", tmp_path / "control"
    folder.mkdir()
    options = {"data_folder_in": str(folder), "data_folder_out": str(folder), "control_folder": str(control)}
    app = app_with(broker_url="filesystem://", broker_transport_options=options, control_exchange="ut")
    with Connection("filesystem://", transport_options=options) as conn:
        channel = conn.default_channel
        mailbox = app.control.mailbox
        for node in ("me@h", "a@h", "b@h", "dead@h"):
            channel._queue_bind(mailbox.exchange.name, "", "", mailbox.get_queue(node).name)
        assert plugin.count_live_neighbours(channel, mailbox, "me@h", stale_after=5.0) == 3
        old = folder / f"1_x.{mailbox.get_queue('dead@h').name}.msg"
        old.write_text("{}")
        os.utime(old, (time.time() - 60, time.time() - 60))
        (folder / f"2_y.{mailbox.get_queue('a@h').name}.msg").write_text("{}")  # fresh: a@h is alive
        assert plugin.count_live_neighbours(channel, mailbox, "me@h", stale_after=5.0) == 2
