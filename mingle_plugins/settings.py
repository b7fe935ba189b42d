"""The ``mingle_*`` settings, read from the Celery configuration.

Every setting is optional. A value of the wrong type or range is logged in
one line naming the setting and what it accepts, and the default is used; in
strict mode (``mingle_strict = True``) :class:`~mingle_plugins.SettingsError`
is raised instead, which stops the worker.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import SettingsError

__all__ = ["ENV_PLUGINS", "MingleSettings", "load_settings"]

logger = logging.getLogger("mingle_plugins")

#: Environment variable choosing plugins by name, comma-separated; empty
#: means none. It wins over ``mingle_plugins`` (like ``LLM_LOAD_PLUGINS``).
ENV_PLUGINS = "CELERY_MINGLE_PLUGINS"


@dataclass(frozen=True)
class MingleSettings:
    """The resolved settings; see ``docs/configuration.md`` for each one."""

    plugins: tuple[str, ...] | None = None
    disabled_plugins: tuple[str, ...] = ()
    strict: bool = False
    hello_timeout: float = 1.0
    quiet_window: float | None = None
    expect_replies: bool = False
    plugin_timeout: float = 5.0
    max_clock: int = 2**53
    max_id_length: int = 1024
    plugin_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def for_plugin(self, name: str) -> Mapping[str, Any]:
        """Return the ``mingle_plugin_settings`` entry of one plugin (``{}`` if none)."""
        return self.plugin_settings.get(name, {})

    def as_dict(self) -> dict[str, Any]:
        """Return the settings under their configuration names."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = {k: dict(v) for k, v in value.items()}
            out[f"mingle_{f.name}"] = value
        return out


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(n.strip() for n in value.split(",") if n.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(n, str) for n in value):
        return tuple(n.strip() for n in value)
    raise TypeError


def _optional_names(value: Any) -> tuple[str, ...] | None:
    return None if value is None else _names(value)


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise TypeError


def _seconds(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError
    number = float(value)
    if not math.isfinite(number) or number <= 0:
        raise ValueError
    return number


def _optional_seconds(value: Any) -> float | None:
    return None if value is None else _seconds(value)


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TypeError
    return value


def _plugin_settings(value: Any) -> Mapping[str, Mapping[str, Any]]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Mapping) for k, v in value.items()
    ):
        raise TypeError
    return {k: dict(v) for k, v in value.items()}


# name -> (parser, what is accepted)
_PARSERS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "plugins": (_optional_names, "None or a list of plugin names"),
    "disabled_plugins": (_names, "a list of plugin names"),
    "strict": (_bool, "True or False"),
    "hello_timeout": (_seconds, "a number of seconds > 0"),
    "quiet_window": (_optional_seconds, "None or a number of seconds > 0"),
    "expect_replies": (_bool, "True or False"),
    "plugin_timeout": (_seconds, "a number of seconds > 0"),
    "max_clock": (_positive_int, "an integer > 0"),
    "max_id_length": (_positive_int, "an integer > 0"),
    "plugin_settings": (_plugin_settings, "a dict of {plugin name: dict of settings}"),
}


def load_settings(
    conf: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> tuple[MingleSettings, list[SettingsError]]:
    """Resolve the settings from a Celery configuration and the environment.

    :return: the settings and the problems found (each already logged).
    :raises SettingsError: on the first problem, when ``mingle_strict`` is true.
    """
    environ = os.environ if environ is None else environ
    defaults = MingleSettings()
    values: dict[str, Any] = {}
    problems: list[SettingsError] = []
    for name, (parse, accepted) in _PARSERS.items():
        key = f"mingle_{name}"
        raw = conf.get(key)
        if raw is None:  # not set (None is also the default where it is accepted)
            continue
        try:
            values[name] = parse(raw)
        except (TypeError, ValueError):
            problems.append(SettingsError(key, raw, accepted))
    if ENV_PLUGINS in environ:
        values["plugins"] = _names(environ[ENV_PLUGINS])
    settings = MingleSettings(**{**{f.name: getattr(defaults, f.name) for f in fields(defaults)}, **values})
    for problem in problems:
        logger.error("mingle: %s; using the default %r", problem, getattr(defaults, problem.setting[7:]))
    if problems and settings.strict:
        raise problems[0]
    return settings, problems
