"""``celery mingle-store``: revoke through the store, list what it holds, run the demo.

- ``celery -A proj mingle-store revoke ID...``: record in the store, then broadcast the revoke;
  exits 1 when the store was not reached (the broadcast is sent anyway);
- ``celery -A proj mingle-store list``: the ids in force in the store, with their age;
- ``celery mingle-store demo``: a full restart on ``filesystem://``, with and without the store.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import click
from celery.bin.base import CeleryCommand, CeleryOption

from . import api

__all__ = ["mingle_store"]


def _app(ctx: click.Context) -> Any:
    return ctx.obj.app


@click.group(name="mingle-store")
def mingle_store() -> None:
    """The shared revocation store of celery-mingle-store."""


@mingle_store.command(cls=CeleryCommand)
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, cls=CeleryOption, help="Also terminate the running tasks.")
@click.option("--signal", default=None, cls=CeleryOption, help="Signal for --terminate (e.g. KILL).")
@click.option("--json", "as_json", is_flag=True, cls=CeleryOption, help="Print JSON for scripts.")
@click.pass_context
def revoke(
    ctx: click.Context, task_ids: tuple[str, ...], terminate: bool, signal: str | None, as_json: bool
) -> None:
    """Record TASK_IDS in the store, then revoke them on the workers up now."""
    result = api.revoke(_app(ctx), task_ids, terminate=terminate, signal=signal)
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ids": list(result.ids),
                    "store": result.store,
                    "recorded": result.recorded,
                    "problem": result.problem,
                }
            )
        )
    elif result.recorded:
        click.echo(f"recorded {len(result.ids)} ids in {result.store}; revoke broadcast")
    else:
        click.echo(f"NOT recorded in the store ({result.problem}); revoke broadcast", err=True)
    if not result.recorded:
        sys.exit(1)


@mingle_store.command(name="list", cls=CeleryCommand)
@click.option("--json", "as_json", is_flag=True, cls=CeleryOption, help="Print JSON for scripts.")
@click.pass_context
def list_ids(ctx: click.Context, as_json: bool) -> None:
    """The ids in force in the store, oldest first, with their age."""
    try:
        store, rows = api.stored(_app(ctx))
    except Exception as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    now = time.time()
    if as_json:
        click.echo(json.dumps({"store": store.url, "ids": [{"id": i, "age": now - at} for i, at in rows]}))
        return
    click.echo(f"{store.url}: {len(rows)} ids in force")
    for task_id, at in rows:
        click.echo(f"  {task_id}  revoked {now - at:.0f}s ago")


@mingle_store.command(cls=CeleryCommand)
@click.option(
    "--revoke",
    "count",
    type=click.IntRange(1, 1000),
    default=5,
    cls=CeleryOption,
    help="How many task ids to revoke.",
)
def demo(count: int) -> None:
    """A full restart on filesystem://: the ids lost without the store, kept with it (SQLite)."""
    from .demo import run_demo

    sys.exit(run_demo(revoke=count))
