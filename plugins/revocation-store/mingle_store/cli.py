"""``celery mingle-store``: list what the store holds, run the demo.

Revoking through the store is ``celery -A proj mingle revoke ID...`` (the core's command,
which this plugin's ``mingle_record_revoke`` answers).

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
