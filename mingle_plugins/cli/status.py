"""``celery -A proj mingle status``: the command; the query is :mod:`mingle_plugins.client.status`."""

from __future__ import annotations

import click
from celery.bin.base import CeleryOption

from ..answering.control import STATUS_COMMAND
from ..client.status import print_status, query_status
from ._output import echo_json, obj_app
from .errors import EX_UNAVAILABLE, TIMEOUT, MingleCommand, check_destinations, one_line, reach_broker

__all__ = ["EX_UNAVAILABLE", "status"]


@click.command(cls=MingleCommand)
@click.option(
    "-t",
    "--timeout",
    type=TIMEOUT,
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
    Exit status 69 when the broker cannot be reached or no worker answers mingle_status,
    64 for bad usage (a timeout not > 0, a destination that is not name@host).
    """
    check_destinations(destination)
    app = obj_app(ctx)
    reach_broker(app, timeout)
    try:
        result = query_status(app, timeout=timeout, destination=destination or None)
    except Exception as exc:
        click.echo(f"Error: cannot ask the workers: {one_line(exc)}", err=True)
        ctx.exit(EX_UNAVAILABLE)
    if as_json:
        echo_json(result)
    elif result["workers"] or result["stock"]:
        print_status(result)
    if not result["workers"]:
        click.echo(f"Error: no worker answered {STATUS_COMMAND} within {timeout}s", err=True)
        ctx.exit(EX_UNAVAILABLE)
