"""From a Celery configuration to what a worker mingles with: settings, plugins, hook runner.

The one place that resolves the core settings, loads the plugins they allow,
collects the plugins' settings declarations (``mingle_add_settings``) and
parses those once. The Mingle step, the answering side and ``celery mingle``
all start here.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import SettingsError
from ..parsers import warn_unknown
from ..settings import MingleSettings, SettingsRegistry, load_settings
from .loader import MinglePluginManager, get_plugin_manager, missing_plugins
from .runner import HookRunner

__all__ = ["MingleConfig", "configure"]

logger = logging.getLogger("mingle_plugins")


@dataclass(frozen=True)
class MingleConfig:
    """The resolved settings (plugins' included), the plugin manager and its hook runner."""

    settings: MingleSettings
    pm: MinglePluginManager
    runner: HookRunner
    registry: SettingsRegistry
    problems: tuple[SettingsError, ...]
    #: Names in ``mingle_plugins`` / ``CELERY_MINGLE_PLUGINS`` that no installed plugin has.
    missing: tuple[str, ...] = ()


def configure(
    conf: Mapping[str, Any], environ: Mapping[str, str] | None = None, *, load_entrypoints: bool = True
) -> MingleConfig:
    """Resolve everything once. Strict mode raises the first problem (the worker stops).

    Every unknown name (a ``mingle_*`` key, a plugin block or a key of one) is said in one
    WARNING line with its did-you-mean; a plugin named in the allow-list but not installed
    in one WARNING line too.
    """
    environ = os.environ if environ is None else environ
    settings, problems = load_settings(conf, environ, warn=False)
    pm = get_plugin_manager(settings, load_entrypoints=load_entrypoints)
    runner = HookRunner(pm, settings.plugin_timeout)
    registry = SettingsRegistry()
    declare_settings(runner, registry)
    not_loaded = {r.name: f"plugin {r.name!r} is {r.status}: {r.reason}" for r in pm.records if r.reason}
    settings, plugin_problems = registry.resolve(settings, installed=not_loaded, warn=False)
    warn_unknown(problems + plugin_problems)
    missing = tuple(missing_plugins(pm, settings)) if load_entrypoints else ()
    if missing:
        logger.warning(
            "mingle: plugin(s) named in mingle_plugins / CELERY_MINGLE_PLUGINS but not installed: %s",
            ", ".join(map(repr, missing)),
        )
    return MingleConfig(settings, pm, runner, registry, tuple(problems + plugin_problems), missing)


def declare_settings(runner: HookRunner, registry: SettingsRegistry) -> None:
    """Call every ``mingle_add_settings``; a plugin whose declaration fails is named, once."""
    for _ in runner.each("mingle_add_settings", registry=registry):
        pass
