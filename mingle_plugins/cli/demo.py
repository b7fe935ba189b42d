"""``celery mingle demo``: the command; the demo itself is :mod:`mingle_plugins.demo`."""

from __future__ import annotations

import click
from celery.bin.base import CeleryOption

from .errors import MingleCommand

__all__ = ["demo"]


@click.command(cls=MingleCommand)
@click.option(
    "--workers",
    type=click.IntRange(1, 10),
    default=3,
    cls=CeleryOption,
    help="Workers started before the newcomer.",
)
@click.option(
    "--revoke", type=click.IntRange(1, 1000), default=5, cls=CeleryOption, help="How many task ids to revoke."
)
@click.pass_context
def demo(ctx: click.Context, workers: int, revoke: int) -> None:
    """Start a small cluster on filesystem:// and show a newcomer learning the revoked ids.

    Needs no server: the workers are subprocesses of this Python, the broker is a
    temporary folder; both are removed at the end (Ctrl-C included).
    """
    from ..demo import run_demo  # the demo's engine, imported only when the demo runs

    ctx.exit(run_demo(workers=workers, revoke=revoke))
