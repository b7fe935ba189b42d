"""The settings: the core's, and the registry where plugins declare theirs.

Each setting is a field of a frozen dataclass made with
:func:`~mingle_plugins.parsers.setting` (default, one-line doc, parser). The core's
own are :class:`MingleSettings` (``mingle_<name>`` in the Celery
configuration); a plugin declares its dataclass through the
``mingle_add_settings`` hook and reads it from ``mingle_plugin_settings =
{"<plugin>": {...}}``. A bad value is logged in one line naming the setting
and what it accepts, and the default is used; with ``mingle_strict = True``
:class:`~mingle_plugins.SettingsError` is raised instead (the worker stops).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from .errors import SettingsError, UnknownSetting, closest
from .parsers import (
    Parser,
    boolean,
    choice,
    fraction,
    names,
    optional_names,
    optional_positive_int,
    optional_seconds,
    parse_fields,
    parse_seconds,
    plugin_blocks,
    positive_int,
    report_problems,
    seconds,
    setting,
    warn_unknown,
)

__all__ = [
    "ENV_HMAC_KEYS",
    "ENV_PLUGINS",
    "FAST_PROFILE",
    "MingleSettings",
    "SettingsRegistry",
    "load_settings",
    "parse_seconds",
    "unknown_settings",
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
    "presence": True,
}

T = TypeVar("T")


# -- the core settings ---------------------------------------------------------


@dataclass(frozen=True)
class MingleSettings:
    """The resolved settings; ``docs/configuration.md`` is generated from these fields."""

    plugins: tuple[str, ...] | None = setting(
        None,
        "Allow-list: only these plugins are imported (entry-point or distribution names; "
        "`-`/`_`/case ignored). `None`: all installed; `[]`: none.",
        optional_names,
    )
    disabled_plugins: tuple[str, ...] = setting(
        (), "Deny-list, applied before import; wins over the allow-list.", names
    )
    strict: bool = setting(
        False,
        "A plugin that fails to load, or a bad setting, stops the worker instead of being logged.",
        boolean,
    )
    profile: str = setting(
        "stock",
        "`'fast'` sets the defaults of `mingle_expect_replies`, `mingle_quiet_window`, `mingle_merge`, "
        "`mingle_digest` and `mingle_presence` to `True`, `0.05`, `'bulk'`, `True`, `True`; a setting "
        "given explicitly still wins.",
        choice("stock", "fast"),
    )
    hello_timeout: float = setting(
        1.0,
        "The wait for the first reply (and, without a quiet window, after each reply), as stock's 1.0.",
        seconds,
    )
    quiet_window: float | None = setting(
        None,
        "After a reply, wait this long for the next one; the collection ends `mingle_hello_timeout` "
        "after the hello at the latest. Not used when the number of replies is known. "
        "`None`: stock's idle timeout.",
        optional_seconds,
    )
    answer_wait: float = setting(
        10.0,
        "On Redis, the hello's PUBLISH says how many nodes received it: while fewer of them "
        "answered, the collection waits past `mingle_hello_timeout` for the others, up to this many "
        "seconds after the hello (never longer). `0`: give up at the timeout, as stock.",
        Parser(lambda value: parse_seconds(value, zero=True), "a number of seconds >= 0", "seconds"),
    )
    expect_replies: bool = setting(
        False,
        "Ask `mingle_expected_replies` plugins (and on Redis count the subscribers the hello reached) "
        "and stop collecting when that many replied.",
        boolean,
    )
    merge: str = setting(
        "stock",
        "`'bulk'`: merge once, after the last reply, only the ids not known yet; "
        "`'stock'`: per reply, as the installed Celery.",
        choice("stock", "bulk"),
    )
    digest: bool = setting(
        False,
        "Ask neighbours running this package for a digest of their ids first, then the full list "
        "from one node per digest this worker does not have.",
        boolean,
    )
    reconcile: bool = setting(
        True,
        "With `mingle_digest`: a worker that holds 1,000 ids or more (a state db, a store, a "
        "reconnect) asks only for the ids of the buckets whose digest differs from its own (set "
        "reconciliation, docs/performance.md), and checks what it rebuilds against the neighbour's "
        "digest; its hello carries none of its ids, and each neighbour is sent the ids it lacks "
        "after the digest round (every id to nodes whose set it cannot know, as a stock hello "
        "would); `False`: the full list, and the ids in the hello.",
        boolean,
    )
    presence: bool = setting(
        False,
        "On RabbitMQ (AMQP): after its mingle, the worker consumes the presence queue "
        "`<control_exchange>.mingle.presence.v2` (durable, auto-delete, classic, `x-expires` 60 s: "
        "see docs/operations.md, RabbitMQ 4.x), so that newcomers can count it; with "
        "`mingle_expect_replies`, a newcomer reads that count and ends its hello once the counted "
        "neighbours (and the uncounted ones they name) replied, without the quiet window.",
        boolean,
    )
    plugin_timeout: float = setting(
        5.0,
        "A plugin hook that has not returned by then is abandoned, logged, and not called again.",
        seconds,
    )
    slow_import: float = setting(
        1.0,
        "A plugin whose import takes longer than this many seconds gets one WARNING line naming it "
        "and the time (`celery mingle plugins` shows every plugin's import time).",
        seconds,
    )
    max_clock: int = setting(
        2**53,
        "A reply with a larger `clock` is rejected whole; headers above it do not move the clock.",
        positive_int,
    )
    max_id_length: int = setting(
        1024,
        "A longer (or empty) task id is dropped alone, and counted; the rest of the reply is kept.",
        positive_int,
    )
    trusted_nodes: tuple[str, ...] | None = setting(
        None,
        "`fnmatch` patterns: replies (and hello requests' ids) from node names matching none are rejected. "
        "`None`: any node.",
        optional_names,
    )
    hmac_keys: tuple[str, ...] = setting(
        (),
        "Shared secrets: the first signs this worker's replies and requests; a reply or request must be "
        "signed with one of them. Also from `CELERY_MINGLE_HMAC_KEYS`.",
        names,
        secret=True,
    )
    revokes_max: int | None = setting(
        None,
        "How many revoked ids the worker keeps (its `--statedb` ids included); the oldest go first. "
        "`None`: the environment variable `CELERY_WORKER_REVOKES_MAX`, else 50,000.",
        optional_positive_int,
    )
    revoke_expires: float | None = setting(
        None,
        "Seconds a revoked id lives, counted from when it was revoked (its age travels between "
        "workers of this package). `None`: `CELERY_WORKER_REVOKE_EXPIRES`, else 10,800.",
        optional_seconds,
    )
    signature_max_age: float = setting(
        60.0,
        "With keys set: a signed hello request sent longer ago than this (or this far in the future: "
        "clock skew) is refused, and so is one whose nonce was seen within it (a replay).",
        seconds,
    )
    max_share: float = setting(
        0.1,
        "The share of a full revoked set that one node's ids may evict in one mingle (or one hello "
        "request); ids beyond are not merged, and counted. Free room is always used first.",
        fraction,
    )
    accept_unsigned: bool = setting(
        False, "With keys set: accept unsigned replies and requests (stock workers') too.", boolean
    )
    plugin_settings: Mapping[str, Mapping[str, Any]] = setting(
        {},
        "`{plugin name: {setting: value}}`: each plugin's own settings, as it declares them "
        "(see the tables below).",
        plugin_blocks,
    )
    #: Each loaded plugin's parsed settings, by the class it declared (filled by the loader).
    plugin_values: Mapping[type, Any] = field(default_factory=dict, repr=False, compare=False)

    def trusts(self, nodename: str) -> bool:
        """Whether ``mingle_trusted_nodes`` lets this node name in (any name when unset)."""
        patterns = self.trusted_nodes
        return patterns is None or any(fnmatch.fnmatchcase(nodename, p) for p in patterns)

    def plugin(self, cls: type[T]) -> T:
        """A plugin's own settings, as the dataclass ``cls`` it declared with ``mingle_add_settings``.

        The defaults when the plugin's settings were not resolved (e.g. in a unit test).

        .. versionadded:: 0.2
        """
        value = self.plugin_values.get(cls)
        return value if isinstance(value, cls) else cls()

    def for_plugin(self, name: str) -> Mapping[str, Any]:
        """The raw ``mingle_plugin_settings`` entry of one plugin (``{}`` if none)."""
        return self.plugin_settings.get(name, {})

    def as_dict(self) -> dict[str, Any]:
        """Return the settings under their configuration names (secrets hidden)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            if "parser" not in f.metadata:
                continue
            value = getattr(self, f.name)
            if f.metadata.get("secret"):
                value = f"<{len(value)} keys>"
            elif isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = {k: dict(v) for k, v in value.items()}
            out[f"mingle_{f.name}"] = value
        return out


def unknown_settings(conf: Mapping[str, Any]) -> list[SettingsError]:
    """The ``mingle_*`` keys of ``conf`` that are no setting of :class:`MingleSettings`; also the
    upper-case keys of a namespaced configuration (Django's ``CELERY_MINGLE_*`` with
    ``config_from_object(..., namespace="CELERY")``), named as they are written.

    .. versionadded:: 0.2
    """
    known = [f"mingle_{f.name}" for f in fields(MingleSettings) if "parser" in f.metadata]
    bare = {k.removeprefix("mingle_"): k for k in known}  # the common prefix would match anything
    try:
        keys = sorted(k for k in conf if isinstance(k, str))
    except TypeError:  # a mapping that cannot be iterated (a bare ``get``): nothing to check
        return []
    found: list[SettingsError] = []
    for key in keys:
        namespaced = re.fullmatch(r"([A-Z][A-Z0-9]*_)(MINGLE_[A-Z0-9_]+)", key)
        if key.startswith("mingle_"):
            prefix, name = "", key
        elif namespaced:
            prefix, name = namespaced[1], namespaced[2].lower()
        else:
            continue
        if name in known:
            continue
        match = closest(name.removeprefix("mingle_"), bare)
        suggestion = None if match is None else prefix + (bare[match].upper() if prefix else bare[match])
        found.append(UnknownSetting(key, conf.get(key), suggestion))
    return found


def load_settings(
    conf: Mapping[str, Any], environ: Mapping[str, str] | None = None, *, warn: bool = True
) -> tuple[MingleSettings, list[SettingsError]]:
    """Resolve the core settings from a Celery configuration and the environment.

    :param warn: log the unknown ``mingle_*`` keys (one WARNING line); :func:`configure` says
        them with the plugins' unknown ones instead.
    :return: the settings and the problems found (bad values already logged; unknown keys are
        :class:`~mingle_plugins.errors.UnknownSetting`).
    :raises SettingsError: on the first problem, when ``mingle_strict`` is true.
    """
    environ = os.environ if environ is None else environ
    raw = {f"mingle_{f.name}": conf.get(f"mingle_{f.name}") for f in fields(MingleSettings)}
    settings, problems = parse_fields(MingleSettings, raw, "mingle_")
    problems += unknown_settings(conf)
    overrides: dict[str, Any] = {}
    if ENV_PLUGINS in environ:
        overrides["plugins"] = names.parse(environ[ENV_PLUGINS])
    if environ.get(ENV_HMAC_KEYS):
        overrides["hmac_keys"] = names.parse(environ[ENV_HMAC_KEYS])
    if settings.profile == "fast":
        # Given explicitly, ``None`` included (``mingle_quiet_window = None``: stock's idle timeout).
        given = {name for name in FAST_PROFILE if f"mingle_{name}" in conf}
        overrides.update({k: v for k, v in FAST_PROFILE.items() if k not in given})
    if overrides:
        settings = dataclasses.replace(settings, **overrides)
    report_problems("settings", settings, "mingle_", problems)
    if warn or (problems and settings.strict):
        warn_unknown(problems)
    if problems and settings.strict:
        raise problems[0]
    return settings, problems


# -- plugins' settings -----------------------------------------------------------


class SettingsRegistry:
    """Where plugins declare their settings (``mingle_add_settings``); the host parses them all.

    .. versionadded:: 0.2
    """

    def __init__(self) -> None:
        #: ``{plugin name: settings dataclass}`` in declaration order.
        self.declared: dict[str, type] = {}

    def add(self, plugin: str, cls: type) -> None:
        """Declare that ``mingle_plugin_settings[plugin]`` is parsed into the dataclass ``cls``.

        Every field of ``cls`` is made with :func:`setting` and has a default.
        """
        if not dataclasses.is_dataclass(cls) or not all("parser" in f.metadata for f in fields(cls)):
            raise TypeError(f"{cls!r} is not a dataclass whose fields are made with mingle_plugins.setting()")
        if plugin in self.declared and self.declared[plugin] is not cls:
            raise ValueError(f"settings of plugin {plugin!r} already declared by {self.declared[plugin]!r}")
        self.declared[plugin] = cls

    def resolve(
        self, settings: MingleSettings, *, installed: Mapping[str, str] | None = None, warn: bool = True
    ) -> tuple[MingleSettings, list[SettingsError]]:
        """Parse every declared plugin's block once; log each problem; strict mode raises.

        A block of ``mingle_plugin_settings`` that no plugin declared is an
        :class:`~mingle_plugins.errors.UnknownSetting`, unless ``installed`` (``{plugin name:
        why it is not loaded}``, e.g. blocked by the deny-list) names it: then it is left alone.

        :param warn: log the unknown names (one WARNING line); :func:`configure` says them with
            the core's unknown keys instead.
        """
        values: dict[type, Any] = {}
        problems: list[SettingsError] = []
        for plugin, cls in self.declared.items():
            value: Any
            value, found = parse_fields(cls, settings.plugin_settings.get(plugin, {}))
            report_problems(f"mingle_plugin_settings[{plugin!r}]", value, "", found)
            values[cls] = value
            problems += [_named_in_full(plugin, p) for p in found]
        installed = installed or {}
        for plugin in sorted(set(settings.plugin_settings) - set(self.declared)):
            if plugin in installed:
                logger.debug("mingle: mingle_plugin_settings[%r] not read: %s", plugin, installed[plugin])
                continue
            suggestion = closest(plugin, [*self.declared, *installed])
            problems.append(
                UnknownSetting(
                    f"mingle_plugin_settings[{plugin!r}]",
                    settings.plugin_settings[plugin],
                    repr(suggestion) if suggestion else None,
                    "no installed plugin of this name declares settings",
                )
            )
        if warn or (problems and settings.strict):
            warn_unknown(problems)
        if problems and settings.strict:
            raise problems[0]
        return dataclasses.replace(settings, plugin_values=values), problems


def _named_in_full(plugin: str, p: SettingsError) -> SettingsError:
    """A problem of a plugin's block, named as it is configured (``mingle_plugin_settings[...]``)."""
    full = f"mingle_plugin_settings[{plugin!r}][{p.setting!r}]"
    if isinstance(p, UnknownSetting):
        return UnknownSetting(full, p.value, repr(p.suggestion) if p.suggestion else None, p.why)
    return SettingsError(full, p.value, p.accepted)
