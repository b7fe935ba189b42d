"""Which plugin claims the broker transport, and why: one answer for the step and the CLI.

The worker's Mingle step (``Mingle.compatible_transport``), ``celery mingle
plugins``, ``celery mingle check`` and the demo all decide here:

- :func:`load_transport`: the broker's transport, or the error that stops it from
  loading with the ``pip install`` line that fixes it (:data:`INSTALL_HINTS`);
- :func:`decide_transport`: the plugins' ``mingle_transport_compatible`` answers,
  each plugin asked on its own, in call order; the first ``True`` or ``False``
  wins, as the ``firstresult`` hook call would; a plugin that raises or hangs
  is named and passed over; when none answers, the stock set decides;
- :func:`plugin_claims`: one plugin's answers for many driver types (``celery
  mingle plugins``).
"""

from __future__ import annotations

import logging
from collections import ChainMap
from collections.abc import Collection, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from kombu.utils.url import maybe_sanitize_url

from .errors import SettingsError
from .loader import MinglePluginManager, get_plugin_manager
from .runner import Overdue, call_with_deadline
from .settings import MingleSettings, load_settings

__all__ = [
    "INSTALL_HINTS",
    "KNOWN_DRIVER_TYPES",
    "PLUGIN_DISTRIBUTIONS",
    "Answer",
    "TransportDecision",
    "TransportInfo",
    "ask_plugin",
    "decide_transport",
    "load_transport",
    "plugin_claims",
    "plugin_manager",
    "quiet_logs",
    "resolve_settings",
]

HOOK = "mingle_transport_compatible"

#: The ``driver_type`` of every kombu transport that has one (kombu 5.7).
KNOWN_DRIVER_TYPES: tuple[str, ...] = tuple(
    "amqp redis gcpubsub filesystem memory mongodb pgmq qpid sqs sql zookeeper etcd consul kafka pyro".split()
)

_AMQP = "pip install amqp (a dependency of kombu: reinstall celery)"

#: What installs the client library of a transport, by broker URL scheme.
INSTALL_HINTS: dict[str, str] = {
    **dict.fromkeys(("redis", "rediss", "sentinel"), 'pip install "celery[redis]"'),
    **dict.fromkeys(("amqp", "amqps", "pyamqp"), _AMQP),
    **dict.fromkeys(("sqlalchemy", "sqla"), 'pip install "celery[sqlalchemy]"'),
    **dict.fromkeys(("kafka", "confluentkafka"), 'pip install "kombu[confluentkafka]"'),
    **{name: f'pip install "celery[{name}]"' for name in ("librabbitmq", "gcpubsub", "mongodb")},
    **{name: f'pip install "celery[{name}]"' for name in ("zookeeper", "consul", "pyro")},
    "sqs": 'pip install "celery[sqs]" celery-mingle-sqs',
    "pgmq": "pip install celery-mingle-pgmq",
}

#: The distribution whose plugin claims a transport the stock Mingle leaves out, by driver type.
PLUGIN_DISTRIBUTIONS: dict[str, str] = {
    "filesystem": "celery-mingle-filesystem",
    "pgmq": "celery-mingle-pgmq",
    "sqs": "celery-mingle-sqs",
}


@contextmanager
def quiet_logs() -> Iterator[list[logging.LogRecord]]:
    """Collect the ``mingle_plugins`` log records instead of printing them.

    For the commands: what the records say is in their output.
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


def plugin_manager(app: Any) -> tuple[MinglePluginManager, MingleSettings, list[SettingsError]]:
    """The plugins a worker of ``app`` would load (never strict, logs collected, not printed)."""
    with quiet_logs():
        settings, problems = resolve_settings(app.conf)
        pm = get_plugin_manager(replace(settings, strict=False))
    return pm, settings, problems


# -- the transport -----------------------------------------------------------


@dataclass(frozen=True)
class TransportInfo:
    """The app's broker transport, or why it cannot load."""

    #: The broker URL scheme (``redis``, ``sqs``, ...), or the transport class path.
    scheme: str
    #: kombu's ``driver_type``; ``None`` when the transport cannot load.
    driver_type: str | None = None
    fanout: bool = False
    #: The broker URL, password masked.
    broker: str = ""
    #: ``"ImportError: Missing redis library (pip install redis)"``, or ``""``.
    error: str = ""
    #: The ``pip install`` line that fixes ``error``, when the scheme is known.
    fix: str = ""

    def problem(self) -> str:
        """One line for a log or the CLI: the error, then the fix."""
        if not self.error:
            return ""
        return f"{self.error}; {self.fix}" if self.fix else self.error


def _scheme(app: Any, conn: Any) -> str:
    cls = getattr(conn, "transport_cls", None) or app.conf.broker_transport
    if isinstance(cls, str) and cls:
        return cls
    url = str(app.conf.broker_url or "")
    return url.split("://", 1)[0] if "://" in url else str(cls or "amqp")


def load_transport(app: Any, *, fanout: bool = True) -> TransportInfo:
    """Load the app's broker transport (no connection is made); never raises.

    :param fanout: also ask whether it has fanout exchanges (remote control).
    """
    try:
        conn = app.connection_for_read()
    except Exception as exc:
        broker = maybe_sanitize_url(str(app.conf.broker_url or ""))
        return TransportInfo(scheme="?", broker=broker, error=_error(exc))
    scheme = _scheme(app, conn)
    try:
        broker = conn.as_uri()
        driver_type = str(conn.transport.driver_type)
        has_fanout = bool(conn.supports_exchange_type("fanout")) if fanout else False
    except Exception as exc:
        broker = maybe_sanitize_url(str(app.conf.broker_url or ""))
        return TransportInfo(scheme, broker=broker, error=_error(exc), fix=install_hint(scheme))
    finally:
        conn.release()
    return TransportInfo(scheme, driver_type, has_fanout, broker)


def install_hint(scheme: str) -> str:
    """The ``pip install`` line for a transport's client library, or ``""``."""
    return INSTALL_HINTS.get(scheme.lower(), "")


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# -- the plugins' answers ------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """What one plugin's ``mingle_transport_compatible`` said about one driver type."""

    plugin: str
    #: ``True`` claims, ``False`` refuses, ``None`` abstains (or failed).
    answer: bool | None
    #: ``"RuntimeError: boom"`` or ``"TimeoutError: did not return within 5.0s"``; ``""`` if it answered.
    error: str = ""
    #: It did not return in time (the worker never calls it again).
    hung: bool = False

    def problem(self) -> str:
        """As the worker's log says it: ``raised ...`` or ``did not return ...``."""
        if self.hung:
            return f"{self.error.removeprefix('TimeoutError: ')} and is no longer called"
        return f"raised {self.error}"


@dataclass(frozen=True)
class TransportDecision:
    """Whether workers mingle on ``driver_type``, and which plugin (if any) decided."""

    driver_type: str
    compatible: bool
    #: The plugin whose answer decided; ``None`` when the stock set decided.
    decided_by: str | None
    #: Every plugin asked, in call order, up to the one that decided.
    answers: tuple[Answer, ...]
    stock: frozenset[str]

    @property
    def refused(self) -> bool:
        """A plugin refused the transport (``False``)."""
        return self.decided_by is not None and not self.compatible

    @property
    def failures(self) -> list[Answer]:
        return [a for a in self.answers if a.error]

    def reason(self) -> str:
        """``plugin 'x' claims it``, ``plugin 'x' refuses it`` or ``no plugin answers; ...``."""
        if self.decided_by is not None:
            return f"plugin {self.decided_by!r} {'claims' if self.compatible else 'refuses'} it"
        return f"no plugin answers; the stock set ({', '.join(sorted(self.stock))})"


def _wrappers(pm: MinglePluginManager) -> set[object]:
    impls = getattr(pm.hook, HOOK).get_hookimpls()
    return {i.plugin for i in impls if getattr(i, "wrapper", False) or i.hookwrapper}


def ask_plugin(pm: MinglePluginManager, plugin: object, app: Any, driver_type: str, timeout: float) -> Answer:
    """Call one plugin's ``mingle_transport_compatible`` alone (with the hook's wrappers)."""
    keep = _wrappers(pm) | {plugin}
    caller = pm.subset_hook_caller(HOOK, remove_plugins=[p for p in pm.get_plugins() if p not in keep])
    name = pm.get_name(plugin) or repr(plugin)
    try:
        got = call_with_deadline(caller, timeout, app=app, driver_type=driver_type)
    except Overdue as exc:
        return Answer(name, None, f"TimeoutError: {exc}", hung=True)
    except Exception as exc:
        return Answer(name, None, _error(exc))
    return Answer(name, None if got is None else bool(got))


def decide_transport(
    app: Any,
    pm: MinglePluginManager,
    driver_type: str,
    *,
    timeout: float,
    stock: Collection[str],
    skip: Collection[object] = (),
) -> TransportDecision:
    """Ask the plugins, in call order, whether workers mingle on ``driver_type``.

    :param stock: the driver types used when no plugin answers (the step's
        ``compatible_transports``).
    :param skip: plugins not to ask (the worker's hung ones).
    """
    answers: list[Answer] = []
    wrappers = _wrappers(pm)
    stock = frozenset(stock)
    for impl in reversed(getattr(pm.hook, HOOK).get_hookimpls()):  # pluggy's call order
        if impl.plugin in skip or impl.plugin in wrappers:
            continue
        answer = ask_plugin(pm, impl.plugin, app, driver_type, timeout)
        answers.append(answer)
        if answer.answer is not None:
            return TransportDecision(driver_type, answer.answer, answer.plugin, tuple(answers), stock)
    return TransportDecision(driver_type, driver_type in stock, None, tuple(answers), stock)


def plugin_claims(
    pm: MinglePluginManager, plugin: object, app: Any, drivers: Sequence[str], timeout: float
) -> tuple[list[str], list[str], list[str]]:
    """``(claimed, refused, errors)`` among ``drivers`` for one plugin.

    A plugin that hangs once is not asked again, as in the worker.
    """
    claimed: list[str] = []
    refused: list[str] = []
    errors: list[str] = []
    if HOOK not in pm.hook_names(plugin):
        return claimed, refused, errors
    for driver in drivers:
        got = ask_plugin(pm, plugin, app, driver, timeout)
        if got.error:
            errors.append(f"{driver}: {got.error}")
            if got.hung:
                break
        elif got.answer is True:
            claimed.append(driver)
        elif got.answer is False:
            refused.append(driver)
    return claimed, refused, errors
