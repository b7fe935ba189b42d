"""``celery -A proj mingle revoke ID...``: record where plugins keep revokes, then broadcast."""

from __future__ import annotations

import click
from celery.bin.base import CeleryCommand, CeleryOption

from ..client.revoking import revoke as revoke_ids
from ..plugins.diagnostics import quiet_logs
from ._output import echo_json, obj_app

__all__ = ["EX_UNAVAILABLE", "revoke"]

#: The revoke was recorded in no place that outlives the workers, though a plugin tried
#: (as Celery's own commands when the broker is not reached).
EX_UNAVAILABLE = 69


@click.command(cls=CeleryCommand)
@click.argument("task_ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, cls=CeleryOption, help="Also terminate the running tasks.")
@click.option("--signal", default=None, cls=CeleryOption, help="Signal for --terminate (e.g. KILL).")
@click.option("--json", "as_json", is_flag=True, cls=CeleryOption, help="Print JSON for scripts.")
@click.pass_context
def revoke(
    ctx: click.Context, task_ids: tuple[str, ...], terminate: bool, signal: str | None, as_json: bool
) -> None:
    """Revoke tasks: record them where plugins keep revokes (mingle_record_revoke, e.g. the
    revocation store), then broadcast the revoke as `celery control revoke` does.

    A revoke recorded this way reaches workers started later, even when no worker is up now.
    Exit status 69 when a plugin that keeps revokes did not take them and none did: the
    broadcast was still sent (workers up now have the revoke).
    """
    app = obj_app(ctx)
    with quiet_logs():
        outcome = revoke_ids(app, task_ids, terminate=terminate, signal=signal)
    lost = bool(outcome.failed) and not outcome.recorded_in
    if as_json:
        echo_json(
            {
                "ids": list(outcome.ids),
                "recorded_in": list(outcome.recorded_in),
                "failed": list(outcome.failed),
            }
        )
    elif lost:
        click.echo(
            f"error: revoked {len(outcome.ids)} task(s) on the workers up now only; not recorded: "
            f"{'; '.join(outcome.failed)}",
            err=True,
        )
    else:
        where = ", ".join(outcome.recorded_in) or "nowhere (no plugin keeps revokes: workers up now only)"
        failed = f"; not recorded: {'; '.join(outcome.failed)}" if outcome.failed else ""
        click.echo(f"revoked {len(outcome.ids)} task(s); recorded in: {where}{failed}")
    if lost:
        ctx.exit(EX_UNAVAILABLE)
