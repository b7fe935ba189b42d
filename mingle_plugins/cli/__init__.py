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

import sys
from collections.abc import Sequence

import click

from ..client.status import print_status, query_status
from . import check, demo, plugins, revoke, status
from .check import EX_BROKEN, EX_OK, check_app
from .errors import EX_SOFTWARE, EX_UNAVAILABLE, EX_USAGE, MingleGroup
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


@click.group(name="mingle", cls=MingleGroup)
def mingle() -> None:
    """celery-mingle-plugins: the pluggable Mingle step (plugins, check, status, revoke, demo)."""


# The modules keep their names (``cli.check`` is the module, not the command).
for _command in (plugins.plugins, check.check, status.status, revoke.revoke, demo.demo):
    mingle.add_command(_command)


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - convenience
    """``python -m mingle_plugins.cli`` runs ``celery mingle``."""
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", "mingle", *(sys.argv[1:] if argv is None else argv)]
    celery_main()
