"""``celery -A proj mingle check``: what a worker of the app would do, without starting one."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import click
from celery.bin.base import CeleryOption
from celery.utils.imports import symbol_by_name

from ..bootstep import Mingle
from ..client.status import fault_lines, plugin_problems, query_status, same_name_lines
from ..consumer import Blueprint as MingleBlueprint
from ..markers import BUILTIN_NAME
from ..plugins.diagnostics import (
    PLUGIN_DISTRIBUTIONS,
    TransportInfo,
    configure_app,
    decide_transport,
    load_transport,
    plugin_warnings,
    quiet_logs,
)
from ..settings import ENV_PLUGINS
from ._output import app_label, echo_json, obj_app
from .errors import EX_SOFTWARE, EX_UNAVAILABLE, TIMEOUT, MingleCommand, one_line, reach_broker
from .plugins import plugin_rows, slow_imports

__all__ = ["EX_BROKEN", "EX_OK", "check", "check_app", "consumer_ok", "exit_code", "live_report"]

#: ``celery mingle check``: nothing wrong.
EX_OK = 0
#: ``celery mingle check``: something in the configuration is broken (a setting, an unknown
#: name, worker_consumer, a plugin or transport that is not installed).
EX_BROKEN = 1

_CONSUMER_HINT = 'set worker_consumer = "mingle_plugins.consumer:Consumer"'


def consumer_ok(value: Any) -> tuple[bool, str]:
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


def _transport_report(transport: TransportInfo) -> dict[str, Any]:
    return {
        "broker": transport.broker,
        "scheme": transport.scheme,
        "transport": transport.driver_type,
        "fanout": transport.fanout,
        "transport_error": transport.error or None,
        "transport_fix": transport.fix or None,
    }


def check_app(app: Any) -> dict[str, Any]:
    """What a worker of ``app`` would do about mingle; ``report["broken"]`` lists what is wrong."""
    broken: list[str] = []
    warnings: list[str] = []
    why_not: list[str] = []
    config, problems = configure_app(app)
    settings = config.settings
    rows = plugin_rows(app, config)
    broken += [f"setting: {p}" for p in problems]
    broken += [
        f"plugin {name!r} is named in mingle_plugins / {ENV_PLUGINS} but not installed"
        for name in config.missing
    ]
    plugin_failures: list[str] = []
    for r in rows:
        if r.status == "failed":
            plugin_failures.append(f"plugin {r.name!r} ({r.entry_point}) failed to load: {r.reason}")
        for err in r.errors:
            plugin_failures.append(f"plugin {r.name!r}: mingle_transport_compatible raised for {err}")
    broken += plugin_failures
    if settings.strict and broken:
        why_not.append("mingle_strict is on: the worker stops at start-up on these problems")
    warnings += slow_imports(rows, settings.slow_import)

    consumer_value = app.conf.worker_consumer
    is_ok, consumer_msg = consumer_ok(consumer_value)
    if not is_ok:
        broken.append(consumer_msg)
        why_not.append("this package's Mingle step is not in the worker (" + _CONSUMER_HINT + ")")

    transport = load_transport(app)
    driver_type = transport.driver_type
    claimed_by: str | None = None
    if driver_type is None:
        broken.append(f"the broker transport cannot be loaded: {transport.problem()}")
        why_not.append(f"the broker transport ({transport.scheme}) cannot be loaded")
        compatible, decided = False, "the transport cannot be loaded"
    else:
        decision = decide_transport(
            app, config.runner, driver_type, settings=settings, stock=Mingle.compatible_transports
        )
        compatible, decided, claimed_by = decision.compatible, decision.reason(), decision.decided_by
        if not compatible:
            hint = PLUGIN_DISTRIBUTIONS.get(driver_type)
            more = f" (pip install {hint})" if hint and claimed_by is None else ""
            why_not.append(f"the {driver_type!r} transport is not claimed: {decided}{more}")
            if more:  # the broker needs a transport plugin that is not there (or not allowed)
                broken.append(f"the {driver_type!r} transport needs the plugin {hint}, not loaded: {decided}")
        if not transport.fanout:
            why_not.append(
                f"the {driver_type!r} transport has no fanout: no remote control, nobody answers a hello"
            )
    if not app.conf.worker_enable_remote_control:
        why_not.append("worker_enable_remote_control is off: no neighbour answers a hello")
    if not why_not:
        warnings.append("a worker started with --without-mingle does not mingle")
    return {
        "app": app_label(app),
        **_transport_report(transport),
        "transport_compatible": compatible,
        "decided_by": decided,
        "claimed_by": claimed_by,
        "worker_consumer": str(consumer_value),
        "consumer_ok": is_ok,
        "consumer": consumer_msg,
        "settings": settings.as_dict(),
        "settings_problems": [str(p) for p in problems],
        "env_plugins": os.environ.get(ENV_PLUGINS),
        "plugins": [r.as_dict() for r in rows],
        "would_mingle": not why_not,
        "why_not": why_not,
        "broken": broken,
        "plugin_failures": plugin_failures,
        "warnings": warnings,
    }


def exit_code(report: Mapping[str, Any]) -> int:
    """The exit status of ``celery mingle check`` for a report (docs/operations.md, "Exit codes"):
    a plugin that failed wins over a configuration problem, which wins over a broker not reached."""
    if report.get("plugin_failures"):
        return EX_SOFTWARE
    if report["broken"]:
        return EX_BROKEN
    live = report.get("live") or {}
    if live.get("error") and live.get("error") != "--no-live":
        return EX_UNAVAILABLE
    return EX_OK


def live_report(app: Any, timeout: float) -> dict[str, Any]:
    """What the live workers report of their plugins' runtime faults (``mingle_status``).

    :return: ``{"asked": bool, "workers": [names], "faults": [lines], "error": str | None}``;
        a broker that cannot be reached is an ``error``, not a fault of the configuration.
    """
    try:
        reach_broker(app, timeout)  # one try, not kombu's retry loop
        result = query_status(app, timeout=timeout)
    except click.ClickException as exc:  # the broker is down or refuses: the offline check still stands
        return {"asked": False, "workers": [], "faults": [], "error": exc.message}
    except Exception as exc:
        return {"asked": False, "workers": [], "faults": [], "error": one_line(exc)}
    workers = result["workers"]
    return {
        "asked": True,
        "workers": sorted(workers),
        "faults": fault_lines(workers),
        "problems": plugin_problems(workers),
        "same_name": same_name_lines(workers),
        "error": None,
    }


@click.command(cls=MingleCommand)
@click.option("--json", "as_json", is_flag=True, cls=CeleryOption, help="Print JSON for scripts.")
@click.option(
    "--live/--no-live",
    default=True,
    cls=CeleryOption,
    help="Also ask the live workers (mingle_status) for their plugins' runtime faults.",
)
@click.option(
    "-t",
    "--timeout",
    type=TIMEOUT,
    default=1.0,
    cls=CeleryOption,
    help="Seconds to wait for the live workers' answers.",
)
@click.pass_context
def check(ctx: click.Context, as_json: bool, live: bool, timeout: float) -> None:
    """Check the app's mingle configuration without starting a worker, then ask the live
    workers (if the broker can be reached) for their plugins' runtime faults.

    Exit status (docs/operations.md, "Exit codes"): 0 nothing wrong; 1 a problem in the
    configuration (a bad or unknown mingle_* setting or plugin block, a plugin named or needed
    but not installed, a broker transport that cannot load, worker_consumer not running this
    package's step); 70 a plugin failed (did not load, raised, or a live worker reports a
    fault or problem); 69 the broker cannot be reached (--no-live does not ask it); 64 usage.
    """
    app = obj_app(ctx)
    with quiet_logs() as records:  # what the plugins log while asked is in the report
        report = check_app(app)
        report["live"] = live_report(app, timeout) if live else {"asked": False, "error": "--no-live"}
    report["warnings"] += [f"a plugin says: {line}" for line in plugin_warnings(records)]
    runtime = [f"runtime fault: {line}" for line in report["live"].get("faults", ())]
    runtime += [f"a plugin reports: {line}" for line in report["live"].get("problems", ())]
    report["broken"] += runtime
    report["plugin_failures"] += runtime
    report["warnings"] += [f"duplicate node name: {line}" for line in report["live"].get("same_name", ())]
    if live and not report["live"]["asked"]:
        report["warnings"].append(f"live workers not asked: {report['live']['error']}")
    report["exit_code"] = code = exit_code(report)
    if as_json:
        echo_json(report)
    else:
        print_check(report)
    if code == EX_UNAVAILABLE:
        click.echo(f"Error: live workers not asked: {report['live']['error']}", err=True)
    if code:
        ctx.exit(code)


def _transport_line(r: Mapping[str, Any]) -> str:
    if r["transport_error"]:
        line = f"{r['scheme']}: CANNOT LOAD: {r['transport_error']}"
        if r["transport_fix"]:
            line += f"\n                 fix: {r['transport_fix']}"
        return line
    return f"{r['transport']} ({'fanout' if r['fanout'] else 'no fanout'})"


def print_check(r: Mapping[str, Any]) -> None:
    """Print what :func:`check_app` returned, for a person."""
    ok, bad = "ok", "BROKEN"
    click.echo(f"app:             {r['app']}")
    click.echo(f"broker:          {r['broker']}")
    click.echo(f"transport:       {_transport_line(r)}")
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
    live = r.get("live") or {}
    if live.get("asked"):
        click.echo(f"live workers:    {len(live['workers'])} answered mingle_status")
    for w in r["warnings"]:
        click.echo(f"note: {w}")
    if r["broken"]:
        click.echo(f"{len(r['broken'])} problem(s):")
        for problem in r["broken"]:
            click.echo(f"  - {problem}")
    else:
        click.echo("no problem found")
