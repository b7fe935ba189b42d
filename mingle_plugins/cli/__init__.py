"""``celery mingle``: list the plugins, check a configuration, ask live workers, run the demo.

Installed as a ``celery.commands`` entry point (``mingle_plugins.cli:mingle``),
so that it appears in ``celery --help``; one module per command:

- ``celery mingle plugins`` (:mod:`.plugins`): every discovered plugin, its
  status, import time and the transports it claims (with ``-A proj``, under
  that app's allow/deny lists);
- ``celery -A proj mingle check`` (:mod:`.check`): what a worker of that app
  would do, without starting one; exits 1 when something is broken;
- ``celery -A proj mingle status`` (:mod:`.status`): what the live workers'
  last mingle did, through the ``mingle_status`` remote-control command;
  exits 69 when no worker answers it;
- ``celery -A proj mingle revoke ID...`` (:mod:`.revoke`): record the ids where
  ``mingle_record_revoke`` plugins keep revokes, then broadcast the revoke;
- ``celery mingle demo`` (:mod:`.demo`): a small cluster on the
  ``filesystem://`` transport.

Every command but ``demo`` takes ``--json`` for scripts. Errors are one ``Error:`` line and a
:mod:`sysexits` code (:mod:`.errors`: 64 usage, 69 broker not reached, 70 a plugin failed).
Which plugin claims a transport is decided in :mod:`mingle_plugins.plugins.diagnostics`, as in the worker.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import click

from .errors import EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE, MingleGroup

if TYPE_CHECKING:
    from ..client.status import print_status, query_status
    from .check import EX_BROKEN, EX_OK, check_app
    from .plugins import describe_plugins

__all__ = [
    "EX_BROKEN",
    "EX_OK",
    "EX_SOFTWARE",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "check_app",
    "describe_plugins",
    "main",
    "mingle",
    "print_status",
    "query_status",
]

#: Each command: the module that defines it (``cli.check`` is the module, ``check.check`` the command).
COMMANDS: dict[str, str] = {
    "plugins": "plugins",
    "check": "check",
    "status": "status",
    "revoke": "revoke",
    "demo": "demo",
}

# Every ``celery`` start (a worker's too) loads the ``celery.commands`` entry points, this
# module among them: it imports click only, and a command's module (and with it the rest of
# this package) when that command is run or listed.
_LAZY: dict[str, str] = {
    "print_status": "..client.status",
    "query_status": "..client.status",
    "EX_BROKEN": ".check",
    "EX_OK": ".check",
    "check_app": ".check",
    "describe_plugins": ".plugins",
}


class LazyGroup(MingleGroup):
    """The ``celery mingle`` group (an unknown command exits 64), whose commands are imported
    when run or listed, not when it is loaded."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in COMMANDS and cmd_name not in self.commands:
            module = importlib.import_module(f".{COMMANDS[cmd_name]}", __name__)
            command = getattr(module, cmd_name)
            assert isinstance(command, click.Command)
            self.add_command(command)
        return super().get_command(ctx, cmd_name)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


@click.group(name="mingle", cls=LazyGroup)
def mingle() -> None:
    """celery-mingle-plugins: the pluggable Mingle step (plugins, check, status, revoke, demo)."""


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - convenience
    """``python -m mingle_plugins.cli`` runs ``celery mingle``."""
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", "mingle", *(sys.argv[1:] if argv is None else argv)]
    celery_main()
