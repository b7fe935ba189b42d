"""Declaring a setting: a dataclass field with its default, a one-line doc and a parser.

The core's settings (:class:`~mingle_plugins.MingleSettings`) and every
plugin's (``mingle_add_settings``) are declared with :func:`setting` and
parsed by :func:`parse_fields`, so that a bad value gets the same handling
everywhere and ``docs/configuration.md`` is generated from the declarations.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from .errors import SettingsError, UnknownSetting, closest

__all__ = [
    "Parser",
    "boolean",
    "choice",
    "fraction",
    "names",
    "optional_names",
    "optional_positive_int",
    "optional_seconds",
    "parse_fields",
    "parse_seconds",
    "plugin_blocks",
    "positive_int",
    "report_problems",
    "seconds",
    "setting",
    "text",
    "transport_option_seconds",
    "warn_unknown",
]

logger = logging.getLogger("mingle_plugins")

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


def _fraction(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError(value)
    number = float(value)
    if not 0 < number <= 1:
        raise ValueError(value)
    return number


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
#: A number in (0, 1].
fraction = Parser(_fraction, "a number > 0 and <= 1", "fraction")
#: An integer > 0, or ``None``.
optional_positive_int = _optional(positive_int)
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


#: ``{plugin name: {setting: value}}`` (``mingle_plugin_settings``).
plugin_blocks = Parser(_plugin_blocks, "a dict of {plugin name: dict of settings}", "dict")


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
            why = "no such setting of this plugin" if known else "this plugin has no settings"
            problems.append(UnknownSetting(str(key), raw[key], closest(str(key), known), why))
    return cls(**values), problems


def report_problems(owner: str, obj: Any, prefix: str, problems: list[SettingsError]) -> None:
    """One log line per bad value: the default used. Unknown names (:class:`UnknownSetting`) are
    not logged here: :func:`warn_unknown` says them all in one line."""
    for problem in problems:
        if isinstance(problem, UnknownSetting):
            continue
        name = problem.setting[len(prefix) :]
        where = problem if prefix else f"{owner}: {problem}"
        if name not in {f.name for f in fields(obj)}:
            logger.error("mingle: %s; ignored", where)
            continue
        used = "<hidden>" if problem.value == "<hidden>" else getattr(obj, name)
        logger.error("mingle: %s; using the default %r", where, used)


def warn_unknown(problems: list[SettingsError]) -> None:
    """One WARNING line naming every unknown setting name of ``problems``, each with its
    did-you-mean (nothing when there is none)."""
    unknown = [str(p) for p in problems if isinstance(p, UnknownSetting)]
    if unknown:
        logger.warning("mingle: %d unknown setting(s) ignored: %s", len(unknown), "; ".join(unknown))


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
