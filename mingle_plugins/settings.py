"""Settings: declared once (core and plugins alike), parsed once, documented from the declaration.

Each setting is a field of a frozen dataclass made with :func:`setting`: its
default, a one-line doc and a :class:`Parser` (what is accepted). The core's
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
import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from .errors import SettingsError

__all__ = [
    "ENV_HMAC_KEYS",
    "ENV_PLUGINS",
    "FAST_PROFILE",
    "MingleSettings",
    "Parser",
    "SettingsRegistry",
    "boolean",
    "choice",
    "load_settings",
    "names",
    "optional_names",
    "optional_seconds",
    "parse_fields",
    "parse_seconds",
    "positive_int",
    "seconds",
    "setting",
    "text",
    "transport_option_seconds",
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

T = TypeVar("T")


# -- parsers -------------------------------------------------------------------


@dataclass(frozen=True)
class Parser:
    """Turns a configured value into a setting's value; ``accepted`` says what it takes.

    ``parse`` raises ``TypeError`` or ``ValueError`` for a value it does not accept.

    .. versionadded:: 0.2
    """

    parse: Callable[[Any], Any]
    accepted: str
    type_name: str


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


def _names(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(n.strip() for n in value.split(",") if n.strip())
    if isinstance(value, (list, tuple)) and all(isinstance(n, str) for n in value):
        return tuple(n.strip() for n in value)
    raise TypeError


def _bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value.lower() in ("1", "true", "yes", "on")
    raise TypeError


def _positive_int(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise TypeError
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise TypeError
    return value


def _optional(parser: Parser) -> Parser:
    return Parser(
        lambda v: None if v is None else parser.parse(v),
        f"None or {parser.accepted}",
        f"{parser.type_name} or None",
    )


#: A number of seconds > 0.
seconds = Parser(parse_seconds, "a number of seconds > 0", "seconds")
#: A number of seconds > 0, or ``None``.
optional_seconds = _optional(seconds)
#: ``True`` or ``False`` (also "yes"/"no", "on"/"off", "1"/"0", as from the environment).
boolean = Parser(_bool, "True or False", "bool")
#: An integer > 0.
positive_int = Parser(_positive_int, "an integer > 0", "int")
#: A non-empty string.
text = Parser(_text, "a non-empty string", "str")
#: A list of names (or one comma-separated string).
names = Parser(_names, "a list of names", "list of str")
#: A list of names, or ``None``.
optional_names = _optional(names)


def choice(*choices: str) -> Parser:
    """One of ``choices``."""

    def parse(value: Any) -> str:
        if value not in choices:
            raise ValueError(value)
        return str(value)

    return Parser(parse, " or ".join(repr(c) for c in choices), " | ".join(repr(c) for c in choices))


def _plugin_blocks(value: Any) -> Mapping[str, Mapping[str, Any]]:
    if not isinstance(value, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Mapping) for k, v in value.items()
    ):
        raise TypeError
    return {k: dict(v) for k, v in value.items()}


def setting(default: Any, doc: str, parse: Parser, *, secret: bool = False) -> Any:
    """Declare one setting: a dataclass field with its default, doc and parser.

    ``secret`` keeps the value out of logs and ``as_dict``.

    .. versionadded:: 0.2
    """
    metadata = {"doc": doc, "parser": parse, "secret": secret}
    if isinstance(default, (dict, list)):  # a fresh copy per instance
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata, repr=not secret)


# -- parsing -------------------------------------------------------------------


def parse_fields(
    cls: type[T], raw: Mapping[str, Any], prefix: str = "", *, base: Mapping[str, Any] | None = None
) -> tuple[T, list[SettingsError]]:
    """Build ``cls`` from ``raw`` (keys ``prefix + field name``); collect the problems.

    A missing key, or ``None`` where ``None`` is not accepted, takes the
    default. A key of ``raw`` that is no field is a problem too when ``prefix``
    is empty (a plugin's own block).

    .. versionadded:: 0.2
    """
    values: dict[str, Any] = dict(base or {})
    problems: list[SettingsError] = []
    known = set()
    for f in fields(cls):  # type: ignore[arg-type]
        key = prefix + f.name
        known.add(key)
        parser: Parser | None = f.metadata.get("parser")
        if parser is None or key not in raw:
            continue
        value = raw[key]
        if value is None and not parser.accepted.startswith("None"):
            continue  # not set (a Celery setting of ours is None when absent)
        try:
            values[f.name] = parser.parse(value)
        except (TypeError, ValueError):
            shown = "<hidden>" if f.metadata.get("secret") else value
            problems.append(SettingsError(key, shown, parser.accepted))
    if not prefix:
        for key in sorted(set(raw) - known, key=str):
            accepted = "one of " + ", ".join(sorted(known)) if known else "no settings"
            problems.append(SettingsError(str(key), raw[key], accepted))
    return cls(**values), problems


def _report(owner: str, obj: Any, prefix: str, problems: list[SettingsError]) -> None:
    """One log line per problem: the default used, or the unknown key ignored."""
    for problem in problems:
        name = problem.setting[len(prefix) :]
        where = problem if prefix else f"{owner}: {problem}"
        if name not in {f.name for f in fields(obj)}:
            logger.error("mingle: %s; ignored", where)
            continue
        used = "<hidden>" if problem.value == "<hidden>" else getattr(obj, name)
        logger.error("mingle: %s; using the default %r", where, used)


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
        "`'fast'` sets the defaults of `mingle_expect_replies`, `mingle_quiet_window`, `mingle_merge` "
        "and `mingle_digest` to `True`, `0.05`, `'bulk'`, `True`; a setting given explicitly still wins.",
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
    plugin_timeout: float = setting(
        5.0,
        "A plugin hook that has not returned by then is abandoned, logged, and not called again.",
        seconds,
    )
    max_clock: int = setting(
        2**53,
        "A reply with a larger `clock` is rejected whole; headers above it do not move the clock.",
        positive_int,
    )
    max_id_length: int = setting(
        1024, "A reply with a longer (or empty) task id is rejected whole.", positive_int
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
    accept_unsigned: bool = setting(
        False, "With keys set: accept unsigned replies and requests (stock workers') too.", boolean
    )
    plugin_settings: Mapping[str, Mapping[str, Any]] = setting(
        {},
        "`{plugin name: {setting: value}}`: each plugin's own settings, as it declares them "
        "(see the tables below).",
        Parser(_plugin_blocks, "a dict of {plugin name: dict of settings}", "dict"),
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


def load_settings(
    conf: Mapping[str, Any], environ: Mapping[str, str] | None = None
) -> tuple[MingleSettings, list[SettingsError]]:
    """Resolve the core settings from a Celery configuration and the environment.

    :return: the settings and the problems found (each already logged).
    :raises SettingsError: on the first problem, when ``mingle_strict`` is true.
    """
    environ = os.environ if environ is None else environ
    raw = {f"mingle_{f.name}": conf.get(f"mingle_{f.name}") for f in fields(MingleSettings)}
    settings, problems = parse_fields(MingleSettings, raw, "mingle_")
    overrides: dict[str, Any] = {}
    if ENV_PLUGINS in environ:
        overrides["plugins"] = _names(environ[ENV_PLUGINS])
    if environ.get(ENV_HMAC_KEYS):
        overrides["hmac_keys"] = _names(environ[ENV_HMAC_KEYS])
    if settings.profile == "fast":
        given = {name for name in FAST_PROFILE if conf.get(f"mingle_{name}") is not None}
        overrides.update({k: v for k, v in FAST_PROFILE.items() if k not in given})
    if overrides:
        settings = dataclasses.replace(settings, **overrides)
    _report("settings", settings, "mingle_", problems)
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

    def resolve(self, settings: MingleSettings) -> tuple[MingleSettings, list[SettingsError]]:
        """Parse every declared plugin's block once; log each problem; strict mode raises."""
        values: dict[type, Any] = {}
        problems: list[SettingsError] = []
        for plugin, cls in self.declared.items():
            value: Any
            value, found = parse_fields(cls, settings.plugin_settings.get(plugin, {}))
            _report(f"mingle_plugin_settings[{plugin!r}]", value, "", found)
            values[cls] = value
            problems += found
        if problems and settings.strict:
            raise problems[0]
        return dataclasses.replace(settings, plugin_values=values), problems


def transport_option_seconds(
    conf: Mapping[str, Any], name: str, default: float, *, zero: bool = False
) -> float:
    """``broker_transport_options[name]`` as seconds (kombu's own setting, which transport
    plugins read to size their waits); ``default`` when absent, or when not a number
    (then with one log line).

    .. versionadded:: 0.2
    """
    value = (conf.get("broker_transport_options") or {}).get(name)
    if value is None:
        return default
    try:
        return parse_seconds(value, zero=zero)
    except (TypeError, ValueError):
        accepted = "a number of seconds >= 0" if zero else "a number of seconds > 0"
        logger.error(
            "mingle: broker_transport_options[%r]=%r is not accepted: expected %s; using %r",
            name,
            value,
            accepted,
            default,
        )
        return default
