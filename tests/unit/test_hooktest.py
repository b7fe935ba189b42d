"""``mingle_plugins.testkit.hooktest``: one hook of a plugin, with a built Reply, no worker; and
the example of docs/testing-plugins.md ("One hook, no worker") run as it is written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mingle_plugins import MingleSettings, Reply, SettingsError, SettingsRegistry, hookimpl, seconds, setting
from mingle_plugins.testkit import hooktest

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "testing-plugins.md"
AUDIT = ROOT / "tests" / "fixtures" / "mingle_audit"


@dataclass(frozen=True)
class WaitSettings:
    wait: float = setting(2.0, "Seconds.", seconds)


class Plugin:
    """A plugin object with settings and a few hooks; it records what it was given."""

    def __init__(self) -> None:
        self.seen: dict[str, Any] = {}

    @hookimpl
    def mingle_add_settings(self, registry: SettingsRegistry) -> None:
        registry.add("waiter", WaitSettings)

    @hookimpl
    def mingle_merge_revoked(self, reply: Reply, ids: tuple[str, ...], settings: MingleSettings) -> Any:
        self.seen.update(reply=reply, ids=ids, wait=settings.plugin(WaitSettings).wait)
        return [i for i in ids if i.startswith("keep")]

    @hookimpl
    def mingle_adjust_clock(self, consumer: Any, clock: int | None) -> bool:
        self.seen.update(consumer=consumer, clock=clock)
        return True

    @hookimpl
    def mingle_record_revoke(self, app: Any, ids: tuple[str, ...], terminate: bool) -> str:
        return f"{app.main}:{len(ids)}:{terminate}"


def test_reply_is_built_as_the_host_builds_it() -> None:
    r = hooktest.reply("prod-1@host", ["a", "b"], clock=7, ages={"a": 1.0})
    assert (r.nodename, r.ids, r.clock, r.ages, r.source, r.carried) == (
        "prod-1@host",
        ("a", "b"),
        7,
        {"a": 1.0},
        "reply",
        ("a", "b"),
    )
    assert hooktest.reply().nodename == hooktest.DEFAULT_NODENAME
    with pytest.raises(Exception, match="name@host"):
        hooktest.reply("no-host")


def test_call_fills_the_arguments_and_returns_the_implementation_s_value() -> None:
    plugin = Plugin()
    kept = hooktest.call(plugin, "mingle_merge_revoked", reply=hooktest.reply("n@h", ["keep-1", "drop"]))
    assert kept == ["keep-1"]
    assert plugin.seen["ids"] == ("keep-1", "drop") and plugin.seen["wait"] == 2.0  # ids: the reply's


def test_call_resolves_the_plugin_s_settings_from_conf() -> None:
    plugin = Plugin()
    conf = {"mingle_plugin_settings": {"waiter": {"wait": "0.5"}}}
    hooktest.call(plugin, "mingle_merge_revoked", conf=conf)
    assert plugin.seen["wait"] == 0.5
    with pytest.raises(SettingsError, match=r"\['wait'\]=-1 is not accepted"):
        hooktest.call(
            plugin, "mingle_merge_revoked", conf={"mingle_plugin_settings": {"waiter": {"wait": -1}}}
        )
    with pytest.raises(SettingsError, match="did you mean 'wait'"):
        hooktest.settings_for(plugin, {"mingle_plugin_settings": {"waiter": {"wiat": 1}}})


def test_a_given_argument_wins_and_the_consumer_stand_in() -> None:
    plugin = Plugin()
    me = hooktest.consumer(hostname="w1@box", revoked=["x", "y"])
    assert hooktest.call(plugin, "mingle_adjust_clock", consumer=me, clock=41) is True
    assert plugin.seen["consumer"] is me and plugin.seen["clock"] == 41
    assert set(me.controller.state.revoked) == {"x", "y"}
    assert me.connection.transport.driver_type == "memory"
    assert hooktest.call(plugin, "mingle_record_revoke", ids=("a", "b")) == "hooktest:2:False"


def test_errors_say_what_is_wrong() -> None:
    plugin = Plugin()
    with pytest.raises(LookupError, match="'mingle_nothing' is not a mingle hook"):
        hooktest.call(plugin, "mingle_nothing")
    with pytest.raises(LookupError, match="does not implement mingle_sync_complete"):
        hooktest.call(plugin, "mingle_sync_complete")
    with pytest.raises(TypeError, match="has no argument"):
        hooktest.call(plugin, "mingle_merge_revoked", nodename="x@y")

    class Misspelt:
        @hookimpl
        def mingle_on_replies(self) -> None: ...

    with pytest.raises(Exception, match="mingle_on_replies"):
        hooktest.call(Misspelt(), "mingle_on_reply")


def test_only_the_plugin_s_own_implementation_is_called() -> None:
    # The built-in implementations (the host's defaults) are not registered: the value is the plugin's.
    plugin = Plugin()
    assert hooktest.call(plugin, "mingle_merge_revoked", reply=hooktest.reply("n@h", ["drop"])) == []


def test_the_fixture_is_the_module(pytestconfig: pytest.Config) -> None:
    from mingle_plugins.testkit import pytest_plugin

    assert pytest_plugin.mingle_hook.__wrapped__() is hooktest  # type: ignore[attr-defined]


def doc_block(name: str) -> str:
    for block in re.findall(r"^```python\n(.*?)^```$", DOC.read_text(), re.M | re.S):
        if block.splitlines()[0] == f"# {name}":
            return str(block)
    raise AssertionError(f"docs/testing-plugins.md has no {name} block")


def test_the_documented_hook_test_runs_as_written(tmp_path: Path) -> None:
    for name in ("conftest.py", "test_audit_hook.py"):
        (tmp_path / name).write_text(doc_block(name))
    env = {k: v for k, v in os.environ.items() if k != "CELERY_MINGLE_PLUGINS"}
    env["PYTHONPATH"] = os.pathsep.join([str(AUDIT), str(ROOT)])  # the example plugin, as if installed
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:xdist",
            "-rA",
            "test_audit_hook.py",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert re.search(r"^2 passed", out.strip().splitlines()[-1]), out


def test_the_testkit_extra_is_light() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["testkit"] == ["pytest>=7"]  # the core brings Celery, kombu, pluggy
    assert len(extras["test"]) > len(extras["testkit"])
    assert '"celery-mingle-plugins[testkit]"' in DOC.read_text()
