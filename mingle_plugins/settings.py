"""The ``mingle_*`` settings, read from the Celery configuration.

Every setting is optional. A value of the wrong type or range is logged in
one line naming the setting and what it accepts, and the default is used; in
strict mode (``mingle_strict = True``) :class:`~mingle_plugins.SettingsError`
is raised instead, which stops the worker.
"""

from __future__ import annotations

import fnmatch
import logging
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import SettingsError

__all__ = [
    "ENV_HMAC_KEYS",
    "ENV_PLUGINS",
    "FAST_PROFILE",
    "MingleSettings",
    "load_settings",
    "parse_seconds",
    "plugin_seconds",
]

logger = logging.getLogger("mingle_plugins")

#: Environment variable choosing plugins by name, comma-separated; empty
#: means none. It wins over ``mingle_plugins`` (like ``LLM_LOAD_PLUGINS``).
ENV_PLUGINS = "CELERY_MINGLE_PLUGINS"

#: Environment variable with the HMAC keys, comma-separated (first one signs).
#: It wins over ``mingle_hmac_keys``, so keys can stay out of config files.
ENV_HMAC_KEYS = "CELERY_MINGLE_HMAC_KEYS"

#: What ``mingle_profile = "fast"`` sets, unless the setting is given itself.
FAST_PROFILE: dict[str, Any] = {
    "expect_replies": True,
    "quiet_window": 0.05,
    "merge": "bulk",
    "digest": True,
}


@dataclass(frozen=True)
class MingleSettings:
    """The resolved settings; see ``docs/configuration.md`` for each one."""

    plugins: tuple[str, ...] | None = None
    disabled_plugins: tuple[str, ...] = ()
    strict: bool = False
    profile: str = "stock"
    hello_timeout: float = 1.0
    quiet_window: float | None = None
    expect_replies: bool = False
    merge: str = "stock"
    digest: bool = False
    plugin_timeout: float = 5.0
    max_clock: int = 2**53
    max_id_length: int = 1024
    trusted_nodes: tuple[str, ...] | None = None
    hmac_keys: tuple[str, ...] = field(default=(), repr=False)
    accept_unsigned: bool = False
    plugin_settings: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def trusts(self, nodename: str) -> bool:
        """Whether ``mingle_trusted_nodes`` lets this node name in (any name when unset)."""
        patterns = self.trusted_nodes
        return patterns is None or any(fnmatch.fnmatchcase(nodename, p) for p in patterns)

    def for_plugin(self, name: str) -> Mapping[str, Any]:
        """Return the ``mingle_plugin_settings`` entry of one plugin (``{}`` if none)."""
        return self.plugin_settings.get(name, {})

    def as_dict(self) -> dict[str, Any]:
        """Return the settings under their configuration names."""
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "hmac_keys":
                value = f"<{len(value)} keys>"  # never shown
            elif isinstance(value, tuple):
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


def parse_seconds(value: Any, *, zero: bool = False) -> float:
    """A duration: a finite number > 0 (or 0 with ``zero``); raise ``ValueError`` or ``TypeError``.

    .. versionadded:: 0.1
    """
    if isinstance(value, bool):
        raise TypeError(value)
    number = float(value)
    if not math.isfinite(number) or number < 0 or (number == 0 and not zero):
        raise ValueError(value)
    return number


def _optional_seconds(value: Any) -> float | None:
    return None if value is None else parse_seconds(value)


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TypeError
    return value


def _choice(*choices: str) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError
        return str(value)

    return parse


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
    "profile": (_choice("stock", "fast"), "'stock' or 'fast'"),
    "hello_timeout": (parse_seconds, "a number of seconds > 0"),
    "quiet_window": (_optional_seconds, "None or a number of seconds > 0"),
    "expect_replies": (_bool, "True or False"),
    "merge": (_choice("stock", "bulk"), "'stock' or 'bulk'"),
    "digest": (_bool, "True or False"),
    "plugin_timeout": (parse_seconds, "a number of seconds > 0"),
    "max_clock": (_positive_int, "an integer > 0"),
    "max_id_length": (_positive_int, "an integer > 0"),
    "trusted_nodes": (_optional_names, "None or a list of node name patterns (fnmatch)"),
    "hmac_keys": (_names, "a list of secret strings (the first one signs)"),
    "accept_unsigned": (_bool, "True or False"),
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
            problems.append(SettingsError(key, "<hidden>" if name == "hmac_keys" else raw, accepted))
    if ENV_PLUGINS in environ:
        values["plugins"] = _names(environ[ENV_PLUGINS])
    if environ.get(ENV_HMAC_KEYS):
        values["hmac_keys"] = _names(environ[ENV_HMAC_KEYS])
    if values.get("profile") == "fast":
        values = {**FAST_PROFILE, **values}
    settings = MingleSettings(**values)
    for problem in problems:
        used = getattr(settings, problem.setting[len("mingle_") :])
        logger.error(
            "mingle: %s; using the default %r", problem, "<hidden>" if problem.value == "<hidden>" else used
        )
    if problems and settings.strict:
        raise problems[0]
    return settings, problems


def plugin_seconds(plugin: str, name: str, value: Any, default: float, *, zero: bool = False) -> float:
    """A plugin's setting in seconds: ``value`` if it is a finite number > 0 (or 0 with
    ``zero``), else ``default`` with one log line naming the plugin and the setting.
    ``None`` (not set) gives ``default`` silently.

    .. versionadded:: 0.1
    """
    if value is None:
        return default
    try:
        return parse_seconds(value, zero=zero)
    except (TypeError, ValueError):
        pass
    accepted = "a number of seconds >= 0" if zero else "a number of seconds > 0"
    logger.error(
        "mingle: %s: %s=%r is not accepted: expected %s; using %r", plugin, name, value, accepted, default
    )
    return default
