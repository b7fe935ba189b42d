"""Unit tests of mingle_pgmq: settings, tuning and the claim (the real-worker tests are in
tests/integration/test_transport_pgmq.py)."""

from __future__ import annotations

from typing import Any

import pytest
from celery import Celery

import mingle_pgmq as plugin
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


def latency(app: Celery) -> float:
    return resolved(app).plugin(plugin.PgmqSettings).latency(app.conf)


def test_neighbour_latency_includes_one_long_poll() -> None:
    assert latency(app_with()) == 1.0 + 2.0
    no_poll = app_with(broker_transport_options={"wait_time_seconds": 0, "polling_interval": 0.2})
    assert latency(no_poll) == pytest.approx(0.2)
    short = app_with(broker_transport_options={"wait_time_seconds": 1, "polling_interval": 0.5})
    assert latency(short) == pytest.approx(1.5)
    forced = app_with(mingle_plugin_settings={"pgmq": {"neighbour_latency": 4}})
    assert resolved(forced).plugin(plugin.PgmqSettings).window(forced.conf) == pytest.approx(4.5)


def test_bad_values_fall_back(caplog: pytest.LogCaptureFixture) -> None:
    app = app_with(
        broker_transport_options={"wait_time_seconds": -3}, mingle_plugin_settings={"pgmq": {"margin": 0}}
    )
    s = resolved(app).plugin(plugin.PgmqSettings)
    assert s.margin == 0.5 and s.latency(app.conf) == 3.0
    assert "wait_time_seconds']=-3 is not accepted" in caplog.text
    assert "mingle_plugin_settings['pgmq']: margin=0 is not accepted" in caplog.text


def test_claim_depends_on_the_core() -> None:
    assert plugin.mingle_transport_compatible(driver_type="redis") is None
    assert plugin.mingle_transport_compatible(driver_type="pgmq") is plugin.core_supports_reply_queue()


def test_tune_sets_window_and_a_short_reply_queue() -> None:
    options = HelloOptions(timeout=1.0)
    app = app_with(broker_transport_options={"wait_time_seconds": 0, "polling_interval": 0.5})
    plugin.mingle_tune_hello(app=app, driver_type="pgmq", options=options, settings=resolved(app))
    assert (options.timeout, options.quiet_window, options.polling_interval) == (1.0, 1.0, 0.05)
    if plugin.core_supports_reply_queue():
        name = options.reply_queue  # type: ignore[attr-defined,unused-ignore]
        assert name.startswith("mingle_") and len(name) <= 47
    other = HelloOptions()
    plugin.mingle_tune_hello(app=app, driver_type="redis", options=other, settings=resolved(app))
    assert other == HelloOptions()
