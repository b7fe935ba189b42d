"""Exit codes and errors of the ``celery mingle`` commands, as Celery's own CLI says them.

One line on stderr (``Error: <what happened>``), no traceback, and a code of
:mod:`sysexits` (docs/operations.md, "Exit codes"): 64 for bad usage (an option
out of range, an ill-formed task id or node name), 69 when the broker cannot be
reached, 70 when a plugin failed, 1 for a problem in the configuration
(``celery mingle check``).
"""

from __future__ import annotations

import math
from typing import Any

import click
from celery.bin.base import CeleryCommand
from kombu.utils.url import maybe_sanitize_url

__all__ = [
    "EX_SOFTWARE",
    "EX_UNAVAILABLE",
    "EX_USAGE",
    "TIMEOUT",
    "BrokerUnreachable",
    "MingleCommand",
    "MingleGroup",
    "check_destinations",
    "check_task_ids",
    "reach_broker",
]

#: Bad usage: an unknown option, a value out of range, an ill-formed id (``sysexits.EX_USAGE``).
EX_USAGE = 64
#: The broker (or a store) cannot be reached, or no worker answered (``EX_UNAVAILABLE``, as Celery).
EX_UNAVAILABLE = 69
#: A plugin failed: it did not load, a hook raised or hung, a live worker reports a fault
#: (``EX_SOFTWARE``).
EX_SOFTWARE = 70


class _Usage:
    """Usage errors exit with :data:`EX_USAGE` instead of click's 2."""

    def make_context(self, info_name: str | None, args: list[str], parent: Any = None, **extra: Any) -> Any:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)  # type: ignore[misc]
        except click.UsageError as exc:
            setattr(exc, "exit_code", EX_USAGE)  # noqa: B010 (a ClassVar of click's)
            raise


class MingleCommand(_Usage, CeleryCommand):  # type: ignore[misc]
    """A ``celery mingle`` command: Celery's command class, usage errors exit 64."""


class MingleGroup(_Usage, click.Group):
    """The ``celery mingle`` group: an unknown command exits 64 too."""

    def resolve_command(self, ctx: click.Context, args: list[str]) -> Any:
        try:
            return super().resolve_command(ctx, args)
        except click.UsageError as exc:
            setattr(exc, "exit_code", EX_USAGE)  # noqa: B010 (a ClassVar of click's)
            raise


class BrokerUnreachable(click.ClickException):
    """The broker cannot be reached: one line, exit 69."""

    exit_code = EX_UNAVAILABLE


def usage(message: str, ctx: click.Context | None = None) -> click.UsageError:
    """A usage error (exit 64) raised from a command's body."""
    exc = click.UsageError(message, ctx)
    setattr(exc, "exit_code", EX_USAGE)  # noqa: B010 (a ClassVar of click's)
    return exc


class _Timeout(click.ParamType):  # type: ignore[type-arg]
    """Seconds: a finite number > 0 (``-t 0``, ``-t -1``, ``-t nan`` are refused)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not (math.isfinite(seconds) and seconds > 0):
            self.fail(f"{value!r} is not a number of seconds > 0", param, ctx)
        return seconds


#: The type of every ``-t/--timeout`` option.
TIMEOUT = _Timeout()


def one_line(exc: BaseException) -> str:
    """``Type: message`` on one line (a multi-line message is joined)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def reach_broker(app: Any, timeout: float) -> None:
    """Connect once to the app's broker (no kombu retry loop) or raise :class:`BrokerUnreachable`
    naming the broker (password masked) and the reason."""
    try:
        with app.connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, interval_step=0, timeout=timeout)
    except Exception as exc:
        url = maybe_sanitize_url(app.conf.broker_url or "amqp://")
        raise BrokerUnreachable(f"cannot reach the broker {url}: {one_line(exc)}") from exc


def check_task_ids(ids: tuple[str, ...], max_id_length: int) -> None:
    """Refuse (exit 64) task ids the workers would refuse: the core's own check
    (:func:`~mingle_plugins.hello.checks.valid_ids`, ``mingle_max_id_length``)."""
    from ..hello.checks import ReplyLimits, valid_ids  # not at import: see mingle_plugins.cli

    _, problems = valid_ids(ids, ReplyLimits(max_ids=2**31, max_id_length=max_id_length, max_clock=0))
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise usage(f"invalid task id: {problems[0].replace('revoked id', 'task id')}{more}; nothing revoked")


def check_destinations(names: tuple[str, ...]) -> None:
    """Refuse (exit 64) a ``--destination`` that is not a node name (``name@host``)."""
    from ..hello.checks import InvalidReply, check_nodename

    for name in names:
        try:
            check_nodename(name)
        except InvalidReply as exc:
            raise usage(f"invalid --destination {name!r}: {exc}") from None
