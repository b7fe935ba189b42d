"""``celery mingle-store``: list what the store holds, run the demo.

Revoking through the store is ``celery -A proj mingle revoke ID...`` (the core's command,
which this plugin's ``mingle_record_revoke`` answers).

- ``celery -A proj mingle-store list``: the ids in force in the store, with their age;
- ``celery -A proj mingle-store status``: reachable or not, entries, valid and invalid, layout;
- ``celery -A proj mingle-store trim``: delete the expired, invalid and surplus entries now;
- ``celery mingle-store demo``: a full restart on ``filesystem://``, with and without the store.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import Any

import click
from celery.bin.base import CeleryCommand, CeleryOption

from . import api
from .backends import LAYOUT

__all__ = ["EX_UNAVAILABLE", "mingle_store"]

#: The store not reached (as ``celery status`` when no worker answers).
EX_UNAVAILABLE = 69


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
        store, load = api.stored(_app(ctx))
    except Exception as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(EX_UNAVAILABLE)
    now = time.time()
    rows = load.rows
    if as_json:
        click.echo(
            json.dumps(
                {
                    "store": store.url,
                    "ids": [{"id": i, "age": now - at} for i, at in rows],
                    "invalid": dict(load.invalid),
                }
            )
        )
        return
    click.echo(f"{store.url} ({store.where}): {len(rows)} ids in force")
    if load.invalid:
        click.echo(f"  skipped {load.invalid_count} invalid entries: {_reasons(load.invalid)}")
    for task_id, at in rows:
        click.echo(f"  {task_id}  revoked {now - at:.0f}s ago")


def _reasons(invalid: Mapping[str, int]) -> str:
    return ", ".join(f"{n} {reason}" for reason, n in sorted(invalid.items()))


@mingle_store.command(cls=CeleryCommand)
@click.option("--json", "as_json", is_flag=True, cls=CeleryOption, help="Print JSON for scripts.")
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Whether the store is reachable, what it holds (valid, invalid), its layout version.

    Exit status 69 when the store is not reached (or the app has none).
    """
    app = _app(ctx)
    store = api.store_of(app.conf)
    if store is None:
        click.echo("error: no usable store: set mingle_plugin_settings['store']['url']", err=True)
        sys.exit(EX_UNAVAILABLE)
    maxlen, expires = api.bounds(app.conf)
    out: dict[str, Any] = {"store": store.url, "where": store.where, "layout": LAYOUT, "reachable": False}
    try:
        load = store.load(maxlen, expires)
        out.update(reachable=True, entries=store.count(), in_force=len(load.rows), invalid=dict(load.invalid))
        out["migrated"] = load.migrated
    except Exception as exc:
        out["last_error"] = repr(exc)[:300]
    if as_json:
        click.echo(json.dumps(out))
    elif out["reachable"]:
        click.echo(
            f"{store.url} ({store.where}, layout v{LAYOUT}): reachable; {out['entries']} entries, "
            f"{out['in_force']} valid ids in force (maxlen {maxlen}, expires {expires}s), "
            f"{sum(out['invalid'].values())} invalid"
            + (f": {_reasons(out['invalid'])}" if out["invalid"] else "")
        )
    else:
        click.echo(f"error: {store.url} ({store.where}) not reached: {out['last_error']}", err=True)
    if not out["reachable"]:
        sys.exit(EX_UNAVAILABLE)


@mingle_store.command(cls=CeleryCommand)
@click.pass_context
def trim(ctx: click.Context) -> None:
    """Delete the store's expired and invalid entries (unsigned ones too, with mingle_hmac_keys)
    and the valid ones beyond the newest maxlen, as the workers do. Exit status 69 when not reached."""
    app = _app(ctx)
    store = api.store_of(app.conf)
    if store is None:
        click.echo("error: no usable store: set mingle_plugin_settings['store']['url']", err=True)
        sys.exit(EX_UNAVAILABLE)
    maxlen, expires = api.bounds(app.conf)
    try:
        invalid, evicted = store.trim(maxlen, expires)
    except Exception as exc:
        click.echo(f"error: {store.url} ({store.where}) not reached: {exc!r:.300}", err=True)
        sys.exit(EX_UNAVAILABLE)
    click.echo(
        f"{store.url} ({store.where}): deleted {invalid} invalid entries and {evicted} beyond "
        f"maxlen {maxlen}; {store.count()} entries left"
    )


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
