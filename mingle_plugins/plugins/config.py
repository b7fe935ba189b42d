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
from ..settings import MingleSettings, SettingsRegistry, load_settings
from .loader import MinglePluginManager, get_plugin_manager
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


def configure(
    conf: Mapping[str, Any], environ: Mapping[str, str] | None = None, *, load_entrypoints: bool = True
) -> MingleConfig:
    """Resolve everything once. Strict mode raises the first problem (the worker stops)."""
    environ = os.environ if environ is None else environ
    settings, problems = load_settings(conf, environ)
    pm = get_plugin_manager(settings, load_entrypoints=load_entrypoints)
    runner = HookRunner(pm, settings.plugin_timeout)
    registry = SettingsRegistry()
    declare_settings(runner, registry)
    settings, plugin_problems = registry.resolve(settings)
    return MingleConfig(settings, pm, runner, registry, tuple(problems + plugin_problems))


def declare_settings(runner: HookRunner, registry: SettingsRegistry) -> None:
    """Call every ``mingle_add_settings``; a plugin whose declaration fails is named, once."""
    for _ in runner.each("mingle_add_settings", registry=registry):
        pass
