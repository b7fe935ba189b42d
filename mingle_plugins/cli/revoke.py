"""``celery -A proj mingle revoke ID...``: record where plugins keep revokes, then broadcast."""

from __future__ import annotations

import click
from celery.bin.base import CeleryOption

from ..client.revoking import revoke as revoke_ids
from ..plugins.diagnostics import quiet_logs
from ..settings import load_settings
from ._output import echo_json, obj_app
from .errors import EX_UNAVAILABLE, MingleCommand, check_task_ids, reach_broker, usage

__all__ = ["EX_UNAVAILABLE", "revoke"]

#: Seconds to wait for the broker's connection before saying it cannot be reached.
CONNECT_TIMEOUT = 2.0


def _check_signal(name: str | None) -> None:
    if name is None:
        return
    from celery.platforms import signals

    try:
        signals.signum(name)
    except (TypeError, ValueError, AttributeError):
        raise usage(f"invalid --signal {name!r}: not a signal name or number (e.g. KILL, TERM, 9)") from None


@click.command(cls=MingleCommand)
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
    Exit status 69 when the broker cannot be reached (nothing is revoked), or when a plugin
    that keeps revokes did not take them and none did: the broadcast was still sent (workers
    up now have the revoke). 64 for an ill-formed task id (the workers' own check) or signal.
    """
    app = obj_app(ctx)
    with quiet_logs():
        settings, _ = load_settings(app.conf, warn=False)
    check_task_ids(task_ids, settings.max_id_length)
    _check_signal(signal)
    reach_broker(app, CONNECT_TIMEOUT)  # before a plugin records ids that no worker is told of
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
