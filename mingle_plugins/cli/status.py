"""``celery -A proj mingle status``: the command; the query is :mod:`mingle_plugins.client.status`."""

from __future__ import annotations

import click
from celery.bin.base import CeleryCommand, CeleryOption

from ..answering.control import STATUS_COMMAND
from ..client.status import print_status, query_status
from ._output import echo_json, obj_app

__all__ = ["EX_UNAVAILABLE", "status"]

#: ``celery mingle status``: no worker answered (as ``celery status``).
EX_UNAVAILABLE = 69


@click.command(cls=CeleryCommand)
@click.option(
    "-t",
    "--timeout",
    type=float,
    default=1.0,
    cls=CeleryOption,
    help="Seconds to wait for replies (idle timeout, as celery inspect).",
)
@click.option("-d", "--destination", multiple=True, cls=CeleryOption, help="Ask only this node (repeatable).")
@click.option("--json", "as_json", is_flag=True, cls=CeleryOption, help="Print JSON for scripts.")
@click.pass_context
def status(ctx: click.Context, timeout: float, destination: tuple[str, ...], as_json: bool) -> None:
    """Ask the live workers what their last mingle did (mingle_status control command).

    Workers without this package's step are listed from a ping as stock.
    Exit status 69 when no worker answers mingle_status.
    """
    app = obj_app(ctx)
    try:
        result = query_status(app, timeout=timeout, destination=destination or None)
    except Exception as exc:
        click.echo(f"Error: cannot reach the broker: {type(exc).__name__}: {exc}", err=True)
        ctx.exit(EX_UNAVAILABLE)
    if as_json:
        echo_json(result)
    elif result["workers"] or result["stock"]:
        print_status(result)
    if not result["workers"]:
        click.echo(f"Error: no worker answered {STATUS_COMMAND} within {timeout}s", err=True)
        ctx.exit(EX_UNAVAILABLE)
