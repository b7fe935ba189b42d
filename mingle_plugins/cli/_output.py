"""Output helpers shared by the ``celery mingle`` commands."""

from __future__ import annotations

import json
from typing import Any

import click

from ..client.status import table

__all__ = ["app_label", "echo_json", "obj_app", "seconds", "table"]


def echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=repr))


def obj_app(ctx: click.Context) -> Any:
    """The app of ``celery -A`` (the default app without ``-A``)."""
    app = getattr(ctx.obj, "app", None)
    if app is None:
        from celery import current_app

        return current_app._get_current_object()
    return app


def app_label(app: Any) -> str:
    return str(getattr(app, "main", None) or "default")


def seconds(value: float | None) -> str:
    """``0.012s``, or ``-`` for ``None``."""
    return "-" if value is None else f"{value:.3f}s"
