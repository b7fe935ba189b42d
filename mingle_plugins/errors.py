"""Exceptions raised or understood by mingle_plugins."""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["FailedClosed", "MingleError", "PluginLoadError", "RejectReply", "SettingsError", "UnknownSetting"]


class MingleError(Exception):
    """Base class of the errors this package raises."""


class SettingsError(MingleError, ValueError):
    """A ``mingle_*`` setting has a value that is not accepted."""

    def __init__(self, setting: str, value: object, accepted: str) -> None:
        self.setting = setting
        self.value = value
        self.accepted = accepted
        super().__init__(f"{setting}={value!r} is not accepted: expected {accepted}")


class UnknownSetting(SettingsError):
    """A ``mingle_*`` key, a ``mingle_plugin_settings`` block or a key of a block that nothing
    declares (a misspelling, or a plugin that is not installed); it is ignored.

    ``suggestion`` is the closest known name (:func:`difflib.get_close_matches`), or ``None``.

    .. versionadded:: 0.2
    """

    def __init__(self, setting: str, value: object, suggestion: str | None = None, why: str = "") -> None:
        self.suggestion = suggestion
        self.why = why or "no such setting"
        hint = f" (did you mean {suggestion}?)" if suggestion else ""
        MingleError.__init__(self, f"{setting}: {self.why}{hint}")
        self.setting, self.value, self.accepted = setting, value, "a known setting"


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to a misspelt ``name`` (``difflib``, ratio >= 0.6), or ``None``."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


class PluginLoadError(MingleError):
    """A plugin could not be loaded (raised only in strict mode)."""


class RejectReply(MingleError):
    """Raised by a ``mingle_on_reply`` implementation to reject a reply whole.

    The message is the reason; it is logged with the node name and counted in
    the mingle summary.
    """


class FailedClosed(RejectReply):
    """Raised by the hook runner when an implementation that must vouch for a call (a check
    hook, or one marked :func:`~mingle_plugins.fail_closed`) raised, hung or is still busy."""

    def __init__(self, plugin: str, message: str) -> None:
        self.plugin = plugin
        super().__init__(message)
