"""Exceptions raised or understood by mingle_plugins."""

from __future__ import annotations

__all__ = ["FailedClosed", "MingleError", "PluginLoadError", "RejectReply", "SettingsError"]


class MingleError(Exception):
    """Base class of the errors this package raises."""


class SettingsError(MingleError, ValueError):
    """A ``mingle_*`` setting has a value that is not accepted."""

    def __init__(self, setting: str, value: object, accepted: str) -> None:
        self.setting = setting
        self.value = value
        self.accepted = accepted
        super().__init__(f"{setting}={value!r} is not accepted: expected {accepted}")


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
