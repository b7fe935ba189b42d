"""``celery mingle plugins``: every discovered plugin, its status, import time and claims."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import click
from celery.bin.base import CeleryOption

from ..bootstep import Mingle
from ..errors import SettingsError
from ..markers import BUILTIN_NAME
from ..plugins.config import MingleConfig
from ..plugins.diagnostics import KNOWN_DRIVER_TYPES, configure_app, load_transport, plugin_claims, quiet_logs
from ..plugins.loader import PluginRecord
from ..settings import ENV_PLUGINS, MingleSettings
from ._output import app_label, echo_json, obj_app, seconds, table
from .errors import MingleCommand

__all__ = ["PluginRow", "describe_plugins", "plugin_rows", "plugins", "slow_imports"]


@dataclass
class PluginRow:
    """One line of ``celery mingle plugins``."""

    name: str
    entry_point: str
    distribution: str | None
    version: str | None
    status: str
    reason: str = ""
    hooks: list[str] = field(default_factory=list)
    transports: list[str] = field(default_factory=list)
    refuses: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    #: Seconds the import took; ``None`` when it was not imported (builtin, blocked).
    import_seconds: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _drivers(app: Any) -> list[str]:
    """The known driver types, plus the app's own."""
    drivers = list(KNOWN_DRIVER_TYPES)
    current = load_transport(app, fanout=False).driver_type
    if current is not None and current not in drivers:
        drivers.append(current)
    return drivers


def _row(rec: PluginRecord) -> PluginRow:
    return PluginRow(
        name=rec.name,
        entry_point=rec.value,
        distribution=rec.distribution,
        version=rec.version,
        status=rec.status,
        reason=rec.reason,
        hooks=list(rec.hooks),
        import_seconds=rec.import_seconds,
    )


def plugin_rows(app: Any, config: MingleConfig) -> list[PluginRow]:
    """One row per plugin the app's configuration sees, with the transports each one claims."""
    drivers = _drivers(app)
    rows: list[PluginRow] = []
    for rec in config.pm.records:
        row = _row(rec)
        if rec.status == BUILTIN_NAME:
            from .. import __version__

            row.distribution, row.version = "celery-mingle-plugins", __version__
            row.transports = sorted(Mingle.compatible_transports)
            row.reason = "stock transports, when no plugin answers"
        elif rec.status == "loaded":
            plugin = config.pm.get_plugin(rec.name)
            row.transports, row.refuses, row.errors = plugin_claims(
                config.runner, plugin, app, drivers, config.settings
            )
        rows.append(row)
    return rows


def describe_plugins(app: Any) -> tuple[list[PluginRow], MingleSettings, list[SettingsError]]:
    """Every plugin the app's settings see, with the transports each one claims."""
    config, problems = configure_app(app)
    return plugin_rows(app, config), config.settings, problems


def slow_imports(rows: Sequence[PluginRow], threshold: float) -> list[str]:
    """A line for each plugin whose import took longer than ``mingle_slow_import``."""
    return [
        f"plugin {r.name!r} took {r.import_seconds:.1f}s to import (over {threshold:.1f}s): "
        "every worker start waits for it"
        for r in rows
        if r.import_seconds is not None and r.import_seconds > threshold
    ]


def _short_hooks(hooks: Sequence[str]) -> str:
    return ", ".join(h.removeprefix("mingle_") for h in hooks) or "-"


def _notes(rows: Sequence[PluginRow], threshold: float) -> list[str]:
    notes: list[str] = []
    for r in rows:
        if r.status == BUILTIN_NAME:
            continue
        line = f"{r.name}: entry point {r.entry_point}"
        if r.reason:
            line += f"; {r.status}: {r.reason}"
        if r.refuses:
            line += f"; refuses {', '.join(r.refuses)}"
        if r.errors:
            line += f"; mingle_transport_compatible failed for {'; '.join(r.errors)}"
        notes.append(line)
    return notes + slow_imports(rows, threshold)


@click.command(cls=MingleCommand)
@click.option("--json", "as_json", is_flag=True, cls=CeleryOption, help="Print JSON for scripts.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List every discovered plugin: status, import time, hooks and the transports it claims.

    Without -A the default settings apply; with -A proj, that app's
    mingle_plugins / mingle_disabled_plugins lists (and CELERY_MINGLE_PLUGINS).
    """
    app = obj_app(ctx)
    with quiet_logs():  # what the plugins log while asked is in the table
        rows, settings, problems = describe_plugins(app)
    if as_json:
        echo_json(
            {
                "app": app_label(app),
                "plugins": [r.as_dict() for r in rows],
                "settings_problems": [str(p) for p in problems],
                "env_plugins": os.environ.get(ENV_PLUGINS),
                "slow_import_seconds": settings.slow_import,
            }
        )
        return
    lines = [
        (
            r.name,
            r.status,
            f"{r.distribution} {r.version}" if r.distribution else "-",
            seconds(r.import_seconds),
            _short_hooks(r.hooks) if r.status in ("loaded", BUILTIN_NAME) else "-",
            ", ".join(r.transports) or "-",
        )
        for r in rows
    ]
    click.echo(table(("PLUGIN", "STATUS", "DISTRIBUTION", "IMPORT", "HOOKS (mingle_*)", "CLAIMS"), lines))
    notes = _notes(rows, settings.slow_import)
    if notes:
        click.echo("")
        click.echo("\n".join(notes))
    if os.environ.get(ENV_PLUGINS) is not None:
        click.echo(f"\n{ENV_PLUGINS}={os.environ[ENV_PLUGINS]!r} chooses the plugins.")
    for p in problems:
        click.echo(f"setting problem: {p}", err=True)
