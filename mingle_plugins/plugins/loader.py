"""Plugin discovery: the ``celery.mingle`` entry points, loaded one by one.

pluggy's ``load_setuptools_entrypoints`` stops at the first plugin that fails
to import; this loop applies the allow and deny lists *before* importing,
sorts the entry points, and turns each failure into one log line naming the
entry point, its distribution and version (traceback at DEBUG), then goes on.
In strict mode the first failure is raised as :class:`PluginLoadError`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from importlib.metadata import EntryPoint, entry_points
from typing import Any, Literal

import pluggy

from .. import hookspecs
from ..errors import PluginLoadError
from ..markers import BUILTIN_NAME, ENTRY_POINT_GROUP, PROJECT_NAME
from ..settings import MingleSettings
from . import builtin

__all__ = [
    "SLOW_IMPORT_SECONDS",
    "MinglePluginManager",
    "PluginRecord",
    "get_plugin_manager",
    "missing_plugins",
]

logger = logging.getLogger("mingle_plugins")

#: The default of ``mingle_slow_import`` (declared there): a plugin whose import takes longer
#: gets one WARNING line, as every worker start (and every ``celery mingle`` command) waits for it.
SLOW_IMPORT_SECONDS: float = MingleSettings.slow_import

Status = Literal["builtin", "loaded", "blocked", "failed"]


@dataclass(frozen=True)
class PluginRecord:
    """What happened to one plugin (for logs and ``celery mingle plugins``)."""

    name: str
    value: str
    distribution: str | None
    version: str | None
    status: Status
    reason: str = ""
    hooks: tuple[str, ...] = ()
    #: Seconds its import (and registration) took; ``None`` when it was not imported.
    import_seconds: float | None = None

    def describe(self) -> str:
        dist = f"{self.distribution} {self.version}" if self.distribution else "no distribution"
        return f"plugin {self.name!r} ({self.value}, from {dist})"


class MinglePluginManager(pluggy.PluginManager):
    """A pluggy manager with the mingle hook specs and a record of every plugin."""

    def __init__(self) -> None:
        super().__init__(PROJECT_NAME)
        self.add_hookspecs(hookspecs)
        self.records: list[PluginRecord] = []

    def hook_names(self, plugin: object) -> tuple[str, ...]:
        """Names of the hooks a registered plugin implements, sorted."""
        return tuple(sorted(caller.name for caller in self.get_hookcallers(plugin) or ()))

    def loaded_names(self) -> list[str]:
        """Names of the plugins loaded from entry points, in load order."""
        return [r.name for r in self.records if r.status == "loaded"]

    def external_plugins(self) -> list[object]:
        """The registered plugins other than the built-in one."""
        builtin_plugin = self.get_plugin(BUILTIN_NAME)
        return [p for p in self.get_plugins() if p is not builtin_plugin]


def _dist(ep: EntryPoint) -> tuple[str | None, str | None]:
    dist = ep.dist
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def _selected(names: Iterable[str], ep: EntryPoint, distribution: str | None) -> bool:
    wanted = {_canonical(n) for n in names}
    return _canonical(ep.name) in wanted or (distribution is not None and _canonical(distribution) in wanted)


def discover(group: str = ENTRY_POINT_GROUP) -> list[EntryPoint]:
    """The entry points of ``group``, without duplicates, sorted by name and value."""
    seen: dict[tuple[str, str], EntryPoint] = {}
    for ep in entry_points(group=group):
        seen.setdefault((ep.name, ep.value), ep)
    return sorted(seen.values(), key=lambda ep: (ep.name, ep.value))


def _register(pm: MinglePluginManager, ep: EntryPoint) -> tuple[str, ...]:
    """Import and register one entry point; undo the registration if it is invalid."""
    plugin: Any = ep.load()
    pm.register(plugin, name=ep.name)
    try:
        # A misspelt hook name (e.g. ``mingle_on_replies``) is only caught here.
        pm.check_pending()
    except pluggy.PluginValidationError:
        pm.unregister(plugin)
        raise
    return pm.hook_names(plugin)


def load_plugins(
    pm: MinglePluginManager,
    settings: MingleSettings,
    eps: Iterable[EntryPoint] | None = None,
) -> None:
    """Load the selected entry points into ``pm``, recording each outcome."""
    for ep in discover() if eps is None else sorted(eps, key=lambda ep: (ep.name, ep.value)):
        distribution, version = _dist(ep)
        base = PluginRecord(ep.name, ep.value, distribution, version, "blocked")
        blocked = ""
        if settings.plugins is not None and not _selected(settings.plugins, ep, distribution):
            blocked = "not in mingle_plugins / CELERY_MINGLE_PLUGINS"
        elif _selected(settings.disabled_plugins, ep, distribution):
            blocked = "in mingle_disabled_plugins"
        if blocked:
            pm.records.append(replace(base, reason=blocked))
            logger.debug("mingle: %s is blocked: %s", base.describe(), blocked)
            continue
        started = time.perf_counter()
        try:
            hooks = _register(pm, ep)
        except Exception as exc:
            rec = replace(
                base,
                status="failed",
                reason=f"{type(exc).__name__}: {exc}",
                import_seconds=time.perf_counter() - started,
            )
            pm.records.append(rec)
            _warn_if_slow(rec, settings.slow_import)
            logger.debug("mingle: traceback of %s", rec.describe(), exc_info=True)
            if settings.strict:
                logger.error(
                    "mingle: %s failed to load; mingle_strict is set, the worker stops: %s",
                    rec.describe(),
                    rec.reason,
                )
                raise PluginLoadError(f"{rec.describe()} failed to load: {rec.reason}") from exc
            logger.error("mingle: %s failed to load and is skipped: %s", rec.describe(), rec.reason)
            continue
        rec = replace(base, status="loaded", hooks=hooks, import_seconds=time.perf_counter() - started)
        pm.records.append(rec)
        _warn_if_slow(rec, settings.slow_import)
        logger.debug(
            "mingle: loaded %s in %.3fs, hooks: %s", rec.describe(), rec.import_seconds, ", ".join(hooks)
        )


def missing_plugins(pm: MinglePluginManager, settings: MingleSettings) -> list[str]:
    """The names of the allow-list (``mingle_plugins`` / ``CELERY_MINGLE_PLUGINS``) that match no
    installed plugin (entry point or distribution name), in the allow-list's order."""
    if settings.plugins is None:
        return []
    have = {_canonical(r.name) for r in pm.records} | {
        _canonical(r.distribution) for r in pm.records if r.distribution
    }
    return [name for name in settings.plugins if _canonical(name) not in have]


def _warn_if_slow(rec: PluginRecord, threshold: float) -> None:
    if rec.import_seconds is not None and rec.import_seconds > threshold:
        logger.warning(
            "mingle: %s took %.1fs to import (over %.1fs): every worker start waits for it",
            rec.describe(),
            rec.import_seconds,
            threshold,
        )


def get_plugin_manager(
    settings: MingleSettings | None = None,
    *,
    load_entrypoints: bool = True,
    entry_points: Iterable[EntryPoint] | None = None,
) -> MinglePluginManager:
    """Build a plugin manager: the built-in implementations, then the selected plugins.

    Nothing is loaded before this is called; importing the package loads no plugin.

    :param settings: the resolved settings (allow/deny lists, strict mode);
        defaults when ``None``.
    :param load_entrypoints: ``False`` registers the built-in implementations only.
    :param entry_points: the entry points to consider instead of the installed
        ``celery.mingle`` ones (for tests and embedding).
    """
    settings = settings or MingleSettings()
    pm = MinglePluginManager()
    pm.register(builtin, name=BUILTIN_NAME)
    pm.records.append(
        PluginRecord(BUILTIN_NAME, builtin.__name__, None, None, "builtin", hooks=pm.hook_names(builtin))
    )
    if load_entrypoints:
        load_plugins(pm, settings, entry_points)
    return pm
