"""``celery mingle``: list the plugins, check a configuration, ask live workers, run the demo.

Installed as a ``celery.commands`` entry point, so that it appears in
``celery --help``:

- ``celery mingle plugins``: every discovered plugin, its status and the
  transports it claims (with ``-A proj``, under that app's allow/deny lists);
- ``celery -A proj mingle check``: what a worker of that app would do, without
  starting one; exits 1 when something is broken;
- ``celery -A proj mingle status``: what the live workers' last mingle did,
  through the ``mingle_status`` remote-control command; exits 69 when no worker
  answers it;
- ``celery mingle demo``: a small cluster on the ``filesystem://`` transport.

Every command takes ``--json`` for scripts.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections import ChainMap
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import click
from celery.bin.base import CeleryCommand, CeleryOption
from celery.utils.imports import symbol_by_name

from .bootstep import Mingle
from .consumer import Blueprint as MingleBlueprint
from .control import STATUS_COMMAND
from .errors import SettingsError
from .loader import BUILTIN_NAME, MinglePluginManager, PluginRecord, get_plugin_manager
from .runner import Overdue, call_with_deadline
from .settings import ENV_PLUGINS, MingleSettings, load_settings

__all__ = [
    "EX_BROKEN",
    "EX_UNAVAILABLE",
    "KNOWN_DRIVER_TYPES",
    "check_app",
    "describe_plugins",
    "mingle",
    "query_status",
]

#: The ``driver_type`` of every kombu transport that has one (kombu 5.7).
KNOWN_DRIVER_TYPES: tuple[str, ...] = (
    "amqp",
    "redis",
    "gcpubsub",
    "filesystem",
    "memory",
    "mongodb",
    "pgmq",
    "qpid",
    "sqs",
    "sql",
    "zookeeper",
    "etcd",
    "consul",
    "kafka",
    "pyro",
)

#: ``celery mingle check``: something in the configuration is broken.
EX_BROKEN = 1
#: ``celery mingle status``: no worker answered (as ``celery status``).
EX_UNAVAILABLE = 69

_CONSUMER_HINT = 'set worker_consumer = "mingle_plugins.consumer:Consumer"'


# -- helpers -----------------------------------------------------------------


@contextmanager
def _quiet_mingle_logs() -> Iterator[list[logging.LogRecord]]:
    """Collect the ``mingle_plugins`` log records instead of printing them.

    What they say (bad settings, plugins that failed) is in the command's output.
    """
    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    log = logging.getLogger("mingle_plugins")
    handler = _Collect(logging.DEBUG)
    saved = log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.propagate = saved


def resolve_settings(conf: Mapping[str, Any]) -> tuple[MingleSettings, list[SettingsError]]:
    """The ``mingle_*`` settings of ``conf`` and every problem, also in strict mode.

    Strict mode raises on the first problem in the worker; here every problem is
    listed and ``mingle_strict`` keeps its configured value.
    """
    strict, strict_problems = load_settings({"mingle_strict": conf.get("mingle_strict")}, environ={})
    settings, problems = load_settings(ChainMap({"mingle_strict": False}, conf))  # type: ignore[arg-type]
    return replace(settings, strict=strict.strict), strict_problems + problems


def _plugin_answer(
    pm: MinglePluginManager, plugin: object, app: Any, driver_type: str, timeout: float
) -> tuple[bool | None, str]:
    """What one plugin's ``mingle_transport_compatible`` says: ``(answer, error)``."""
    others = [p for p in pm.get_plugins() if p is not plugin]
    caller = pm.subset_hook_caller("mingle_transport_compatible", remove_plugins=others)
    try:
        answer = call_with_deadline(caller, timeout, app=app, driver_type=driver_type)
    except Overdue as exc:
        return None, f"TimeoutError: {exc}"
    except Exception as exc:
        return None, f"{type(exc).__name__}: {exc}"
    return (None if answer is None else bool(answer)), ""


def _claims(
    pm: MinglePluginManager, plugin: object, app: Any, drivers: Sequence[str], timeout: float
) -> tuple[list[str], list[str], list[str]]:
    """``(claimed, refused, errors)`` among ``drivers`` for one plugin."""
    claimed: list[str] = []
    refused: list[str] = []
    errors: list[str] = []
    if "mingle_transport_compatible" not in pm.hook_names(plugin):
        return claimed, refused, errors
    for driver in drivers:
        answer, problem = _plugin_answer(pm, plugin, app, driver, timeout)
        if problem:
            errors.append(f"{driver}: {problem}")
            if problem.startswith("TimeoutError"):
                break  # a hanging plugin is not asked again (as in the worker)
        elif answer is True:
            claimed.append(driver)
        elif answer is False:
            refused.append(driver)
    return claimed, refused, errors


def _drivers(app: Any) -> list[str]:
    drivers = list(KNOWN_DRIVER_TYPES)
    try:
        current = _driver_type(app)
    except Exception:
        return drivers
    if current not in drivers:
        drivers.append(current)
    return drivers


def _driver_type(app: Any) -> str:
    conn = app.connection_for_read()
    try:
        return str(conn.transport.driver_type)
    finally:
        conn.release()


def _echo_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=repr))


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def _obj_app(ctx: click.Context) -> Any:
    """The app of ``celery -A`` (the default app without ``-A``)."""
    app = getattr(ctx.obj, "app", None)
    if app is None:
        from celery import current_app

        return current_app._get_current_object()
    return app


def _app_label(app: Any) -> str:
    return str(getattr(app, "main", None) or "default")


# -- plugins -----------------------------------------------------------------


@dataclass
class PluginRow:
    """One line of ``celery mingle plugins``."""

    name: str
    entry_point: str
    distribution: str | None
    version: str | None
    status: str
    reason: str = ""
    hooks: list[str] = field(default_factory=list)
    transports: list[str] = field(default_factory=list)
    refuses: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def describe_plugins(app: Any) -> tuple[list[PluginRow], MingleSettings, list[SettingsError]]:
    """Every plugin the app's settings see, with the transports each one claims."""
    with _quiet_mingle_logs():
        settings, problems = resolve_settings(app.conf)
        pm = get_plugin_manager(replace(settings, strict=False))
    drivers = _drivers(app)
    rows: list[PluginRow] = []
    for rec in pm.records:
        row = _row(rec)
        if rec.status == BUILTIN_NAME:
            from . import __version__

            row.distribution, row.version = "celery-mingle-plugins", __version__
            row.transports = sorted(Mingle.compatible_transports)
            row.reason = "stock transports, when no plugin answers"
        elif rec.status == "loaded":
            plugin = pm.get_plugin(rec.name)
            row.transports, row.refuses, row.errors = _claims(
                pm, plugin, app, drivers, settings.plugin_timeout
            )
        rows.append(row)
    return rows, settings, problems


def _row(rec: PluginRecord) -> PluginRow:
    return PluginRow(
        name=rec.name,
        entry_point=rec.value,
        distribution=rec.distribution,
        version=rec.version,
        status=rec.status,
        reason=rec.reason,
        hooks=list(rec.hooks),
    )


def _short_hooks(hooks: Sequence[str]) -> str:
    return ", ".join(h.removeprefix("mingle_") for h in hooks) or "-"


@click.group(name="mingle")
def mingle() -> None:
    """celery-mingle-plugins: the pluggable Mingle step (plugins, check, status, demo)."""


@mingle.command(cls=CeleryCommand)
@click.option("--json", "as_json", is_flag=True, cls=CeleryOption, help="Print JSON for scripts.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List every discovered plugin: status, hooks and the transports it claims.

    Without -A the default settings apply; with -A proj, that app's
    mingle_plugins / mingle_disabled_plugins lists (and CELERY_MINGLE_PLUGINS).
    """
    app = _obj_app(ctx)
    rows, _settings, problems = describe_plugins(app)
    if as_json:
        _echo_json(
            {
                "app": _app_label(app),
                "plugins": [r.as_dict() for r in rows],
                "settings_problems": [str(p) for p in problems],
                "env_plugins": os.environ.get(ENV_PLUGINS),
            }
        )
        return
    table = [
        (
            r.name,
            r.status,
            f"{r.distribution} {r.version}" if r.distribution else "-",
            _short_hooks(r.hooks) if r.status in ("loaded", BUILTIN_NAME) else "-",
            ", ".join(r.transports) or "-",
        )
        for r in rows
    ]
    click.echo(_table(("PLUGIN", "STATUS", "DISTRIBUTION", "HOOKS (mingle_*)", "CLAIMS"), table))
    notes: list[str] = []
    for r in rows:
        if r.status == BUILTIN_NAME:
            continue
        line = f"{r.name}: entry point {r.entry_point}"
        if r.reason:
            line += f"; {r.status}: {r.reason}"
        if r.refuses:
            line += f"; refuses {', '.join(r.refuses)}"
        if r.errors:
            line += f"; mingle_transport_compatible failed for {'; '.join(r.errors)}"
        notes.append(line)
    if notes:
        click.echo("")
        click.echo("\n".join(notes))
    if os.environ.get(ENV_PLUGINS) is not None:
        click.echo(f"\n{ENV_PLUGINS}={os.environ[ENV_PLUGINS]!r} chooses the plugins.")
    for p in problems:
        click.echo(f"setting problem: {p}", err=True)


# -- check -------------------------------------------------------------------


def _consumer_ok(value: Any) -> tuple[bool, str]:
    """Whether ``worker_consumer`` runs our Mingle step, and why not."""
    try:
        cls = symbol_by_name(value) if isinstance(value, str) else value
    except Exception as exc:
        return False, f"worker_consumer {value!r} cannot be imported: {type(exc).__name__}: {exc}"
    blueprint = getattr(cls, "Blueprint", None)
    if isinstance(blueprint, type) and issubclass(blueprint, MingleBlueprint):
        step = getattr(blueprint, "mingle_step", Mingle)
        return True, f"worker_consumer {value!r} runs the step {getattr(step, 'name', step.__qualname__)}"
    return False, (
        f"worker_consumer is {value!r}, which runs Celery's stock Mingle step, not this package's: "
        + _CONSUMER_HINT
    )


def check_app(app: Any) -> dict[str, Any]:
    """What a worker of ``app`` would do about mingle; ``report["broken"]`` lists what is wrong."""
    broken: list[str] = []
    warnings: list[str] = []
    why_not: list[str] = []
    rows, settings, problems = describe_plugins(app)
    broken += [f"setting: {p}" for p in problems]
    for r in rows:
        if r.status == "failed":
            broken.append(f"plugin {r.name!r} ({r.entry_point}) failed to load: {r.reason}")
        for err in r.errors:
            broken.append(f"plugin {r.name!r}: mingle_transport_compatible raised for {err}")
    if settings.strict and broken:
        why_not.append("mingle_strict is on: the worker stops at start-up on these problems")

    consumer_value = app.conf.worker_consumer
    consumer_ok, consumer_msg = _consumer_ok(consumer_value)
    if not consumer_ok:
        broken.append(consumer_msg)
        why_not.append("this package's Mingle step is not in the worker (" + _CONSUMER_HINT + ")")

    driver_type: str | None = None
    fanout = False
    try:
        conn = app.connection_for_read()
        try:
            driver_type = str(conn.transport.driver_type)
            fanout = bool(conn.supports_exchange_type("fanout"))
            broker = conn.as_uri()
        finally:
            conn.release()
    except Exception as exc:
        broker = str(app.conf.broker_url)
        broken.append(f"the broker transport cannot be loaded: {type(exc).__name__}: {exc}")
        why_not.append("no broker transport")

    claimed_by: str | None = None
    answer: bool | None = None
    if driver_type is not None:
        with _quiet_mingle_logs():
            pm = get_plugin_manager(replace(settings, strict=False))
        for impl in reversed(pm.hook.mingle_transport_compatible.get_hookimpls()):  # call order
            got, problem = _plugin_answer(pm, impl.plugin, app, driver_type, settings.plugin_timeout)
            if not problem and got is not None:
                claimed_by, answer = impl.plugin_name, got
                break
        if answer is None:
            compatible = driver_type in Mingle.compatible_transports
            decided = f"no plugin answers; the stock set ({', '.join(sorted(Mingle.compatible_transports))})"
        else:
            compatible = answer
            decided = f"plugin {claimed_by!r} {'claims' if answer else 'refuses'} it"
        if not compatible:
            why_not.append(f"the {driver_type!r} transport is not claimed: {decided}")
        if not fanout:
            why_not.append(
                f"the {driver_type!r} transport has no fanout: no remote control, nobody answers a hello"
            )
    else:
        compatible, decided = False, "no transport"
    if not app.conf.worker_enable_remote_control:
        why_not.append("worker_enable_remote_control is off: no neighbour answers a hello")
    if not why_not:
        warnings.append("a worker started with --without-mingle does not mingle")
    return {
        "app": _app_label(app),
        "broker": broker,
        "transport": driver_type,
        "fanout": fanout,
        "transport_compatible": compatible,
        "decided_by": decided,
        "claimed_by": claimed_by,
        "worker_consumer": str(consumer_value),
        "consumer_ok": consumer_ok,
        "consumer": consumer_msg,
        "settings": settings.as_dict(),
        "settings_problems": [str(p) for p in problems],
        "env_plugins": os.environ.get(ENV_PLUGINS),
        "plugins": [r.as_dict() for r in rows],
        "would_mingle": not why_not,
        "why_not": why_not,
        "broken": broken,
        "warnings": warnings,
    }


@mingle.command(cls=CeleryCommand)
@click.option("--json", "as_json", is_flag=True, cls=CeleryOption, help="Print JSON for scripts.")
@click.pass_context
def check(ctx: click.Context, as_json: bool) -> None:
    """Check the app's mingle configuration without starting a worker.

    Exit status 1 when something is broken: a bad mingle_* setting, a plugin
    that fails, or worker_consumer not running this package's step.
    """
    report = check_app(_obj_app(ctx))
    if as_json:
        _echo_json(report)
    else:
        _print_check(report)
    if report["broken"]:
        ctx.exit(EX_BROKEN)


def _print_check(r: Mapping[str, Any]) -> None:
    ok, bad = "ok", "BROKEN"
    click.echo(f"app:             {r['app']}")
    click.echo(f"broker:          {r['broker']}")
    click.echo(f"transport:       {r['transport'] or '-'} ({'fanout' if r['fanout'] else 'no fanout'})")
    click.echo(f"compatible:      {'yes' if r['transport_compatible'] else 'no'}: {r['decided_by']}")
    click.echo(f"worker_consumer: {ok if r['consumer_ok'] else bad}: {r['consumer']}")
    plugins = [p for p in r["plugins"] if p["status"] != BUILTIN_NAME]
    click.echo("plugins:         " + (", ".join(f"{p['name']} ({p['status']})" for p in plugins) or "none"))
    if r["env_plugins"] is not None:
        click.echo(f"                 chosen by {ENV_PLUGINS}={r['env_plugins']!r}")
    click.echo("settings:")
    for key, value in r["settings"].items():
        click.echo(f"  {key} = {value!r}")
    if r["would_mingle"]:
        click.echo("would mingle:    yes")
    else:
        click.echo("would mingle:    no")
        for reason in r["why_not"]:
            click.echo(f"  - {reason}")
    for w in r["warnings"]:
        click.echo(f"note: {w}")
    if r["broken"]:
        click.echo(f"{len(r['broken'])} problem(s):")
        for problem in r["broken"]:
            click.echo(f"  - {problem}")
    else:
        click.echo("no problem found")


# -- status ------------------------------------------------------------------


def _merge_replies(replies: Sequence[Mapping[str, Any]] | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for reply in replies or ():
        if isinstance(reply, Mapping):
            out.update(reply)
    return out


def query_status(app: Any, timeout: float = 1.0, destination: Sequence[str] | None = None) -> dict[str, Any]:
    """Ask the live workers about their last mingle, then ``ping`` for the stock ones.

    :return: ``{"workers": {node: mingle_status reply}, "stock": {node: why}}``.
    """
    kwargs: dict[str, Any] = {"reply": True, "timeout": timeout}
    if destination:
        kwargs["destination"] = list(destination)
    answers = _merge_replies(app.control.broadcast(STATUS_COMMAND, **kwargs))
    workers: dict[str, Any] = {}
    stock: dict[str, str] = {}
    for node, reply in sorted(answers.items()):
        if isinstance(reply, Mapping) and "error" not in reply and "last" in reply:
            workers[node] = dict(reply)
        else:
            error = reply.get("error") if isinstance(reply, Mapping) else reply
            stock[node] = f"no mingle_status ({error})"
    pinged = _merge_replies(app.control.ping(timeout=timeout, destination=kwargs.get("destination")))
    for node in sorted(pinged):
        if node not in workers and node not in stock:
            stock[node] = "no mingle_status (did not answer it)"
    return {"workers": workers, "stock": stock}


def _status_rows(workers: Mapping[str, Any]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for node, reply in workers.items():
        last = reply.get("last") or {}
        loaded = [p["name"] for p in reply.get("plugins", []) if p.get("status") == "loaded"]
        if not reply.get("enabled"):
            state = "off"
        elif not last:
            state = "pending"
        else:
            state = "skipped" if last.get("skipped") else "on"
        rows.append(
            (
                node,
                state,
                str(reply.get("transport") or "-"),
                str(len(last.get("neighbours", []))) if last else "-",
                str(last.get("ids_merged", "-")) if last else "-",
                str(len(last.get("rejected", {}))) if last else "-",
                f"{last['elapsed']:.3f}s" if last else "-",
                f"{last.get('clock_before')}->{last.get('clock_after')}" if last else "-",
                ", ".join(loaded) or "-",
            )
        )
    return rows


def print_status(result: Mapping[str, Any]) -> None:
    """Print what :func:`query_status` returned, as a table and details."""
    workers = result["workers"]
    headers = (
        "WORKER",
        "MINGLE",
        "TRANSPORT",
        "NEIGHBOURS",
        "IDS MERGED",
        "REJECTED",
        "TIME",
        "CLOCK",
        "PLUGINS",
    )
    rows = _status_rows(workers)
    rows += [(node, "stock", "-", "-", "-", "-", "-", "-", why) for node, why in result["stock"].items()]
    if rows:
        click.echo(_table(headers, rows))
    details = []
    for node, reply in workers.items():
        last = reply.get("last") or {}
        if last.get("neighbours"):
            details.append(f"{node}: neighbours {', '.join(last['neighbours'])}")
        for other, reason in (last.get("rejected") or {}).items():
            details.append(f"{node}: rejected the reply of {other}: {reason}")
        if last.get("skipped"):
            details.append(f"{node}: hello skipped: {last['skipped']}")
        for p in reply.get("plugins", []):
            if p.get("status") in ("failed", "blocked"):
                details.append(f"{node}: plugin {p['name']} {p['status']}: {p.get('reason', '')}")
    if details:
        click.echo("")
        click.echo("\n".join(details))
    total = len(workers) + len(result["stock"])
    click.echo(f"\n{len(workers)} of {total} worker(s) answered {STATUS_COMMAND}.")


@mingle.command(cls=CeleryCommand)
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
    app = _obj_app(ctx)
    try:
        result = query_status(app, timeout=timeout, destination=destination or None)
    except Exception as exc:
        click.echo(f"Error: cannot reach the broker: {type(exc).__name__}: {exc}", err=True)
        ctx.exit(EX_UNAVAILABLE)
    if as_json:
        _echo_json(result)
    elif result["workers"] or result["stock"]:
        print_status(result)
    if not result["workers"]:
        click.echo(f"Error: no worker answered {STATUS_COMMAND} within {timeout}s", err=True)
        ctx.exit(EX_UNAVAILABLE)


# -- demo --------------------------------------------------------------------


@mingle.command(cls=CeleryCommand)
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
    from .demo import run_demo

    ctx.exit(run_demo(workers=workers, revoke=revoke))


def main(argv: Sequence[str] | None = None) -> None:  # pragma: no cover - convenience
    """``python -m mingle_plugins.cli`` runs ``celery mingle``."""
    from celery.bin.celery import main as celery_main

    sys.argv = ["celery", "mingle", *(sys.argv[1:] if argv is None else argv)]
    celery_main()
