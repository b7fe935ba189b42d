"""Which plugin claims the broker transport, and why: one answer for the step and the CLI.

The worker's ``Mingle.compatible_transport``, ``celery mingle plugins / check``
and the demo all decide here: :func:`load_transport` (the transport, or its
real error and the ``pip install`` line that fixes it), :func:`decide_transport`
(each plugin asked alone, in call order: the first ``True`` or ``False`` wins,
as in the ``firstresult`` call; a plugin that raises or hangs is named and
passed over; when none answers, the stock set decides) and :func:`plugin_claims`.
"""

from __future__ import annotations

import importlib
import logging
from collections import ChainMap
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import pluggy
from kombu.utils.url import maybe_sanitize_url

from ..errors import SettingsError
from ..settings import MingleSettings, load_settings
from .config import MingleConfig, configure
from .runner import HookRunner, Overdue, call_with_deadline

__all__ = [
    "KNOWN_DRIVER_TYPES",
    "PLUGIN_DISTRIBUTIONS",
    "TRANSPORT_CLIENTS",
    "Answer",
    "TransportDecision",
    "TransportInfo",
    "ask_plugin",
    "configure_app",
    "decide_transport",
    "load_transport",
    "plugin_claims",
    "plugin_warnings",
    "quiet_logs",
]

HOOK = "mingle_transport_compatible"

#: The ``driver_type`` of every kombu transport that has one (kombu 5.7).
KNOWN_DRIVER_TYPES: tuple[str, ...] = tuple(
    "amqp redis gcpubsub filesystem memory mongodb pgmq qpid sqs sql zookeeper etcd consul kafka pyro".split()
)

_AMQP = "pip install amqp (a dependency of kombu: reinstall celery)"

#: By broker URL scheme: the module of the transport's client library, and what installs it.
TRANSPORT_CLIENTS: dict[str, tuple[str, str]] = {
    **dict.fromkeys(("redis", "rediss", "sentinel"), ("redis", 'pip install "celery[redis]"')),
    **dict.fromkeys(("amqp", "amqps", "pyamqp"), ("amqp", _AMQP)),
    **dict.fromkeys(("sqlalchemy", "sqla"), ("sqlalchemy", 'pip install "celery[sqlalchemy]"')),
    **dict.fromkeys(("kafka", "confluentkafka"), ("confluent_kafka", 'pip install "kombu[confluentkafka]"')),
    "sqs": ("boto3", 'pip install "celery[sqs]" celery-mingle-sqs'),
    "pgmq": ("pgmq", "pip install celery-mingle-pgmq"),
    "librabbitmq": ("librabbitmq", 'pip install "celery[librabbitmq]"'),
    "gcpubsub": ("google.cloud.pubsub_v1", 'pip install "celery[gcpubsub]"'),
    "mongodb": ("pymongo", 'pip install "celery[mongodb]"'),
    "zookeeper": ("kazoo", 'pip install "celery[zookeeper]"'),
    "consul": ("consul", 'pip install "celery[consul]"'),
    "pyro": ("Pyro4", 'pip install "celery[pyro]"'),
}

#: The distribution whose plugin claims a transport the stock Mingle leaves out, by driver type.
PLUGIN_DISTRIBUTIONS: dict[str, str] = {d: f"celery-mingle-{d}" for d in ("filesystem", "pgmq", "sqs")}


@contextmanager
def quiet_logs() -> Iterator[list[logging.LogRecord]]:
    """Collect the log records (ours and the plugins') instead of printing them while a command
    asks the plugins: the command prints what matters in its own words, and may show the
    plugins' warnings (a plugin saying why it refuses a transport) from the list."""
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers = [Collect(logging.DEBUG)]
    try:
        yield records
    finally:
        root.handlers = saved


def plugin_warnings(records: list[logging.LogRecord]) -> list[str]:
    """What the plugins themselves said at WARNING or above (not the core's lines)."""
    return [
        r.getMessage()
        for r in records
        if r.levelno >= logging.WARNING and not r.name.startswith(("mingle_plugins", "celery", "kombu"))
    ]


def configure_app(app: Any) -> tuple[MingleConfig, list[SettingsError]]:
    """What a worker of ``app`` would load: settings (plugins' too), plugins, runner; every problem.

    Never strict (``config.settings.strict`` keeps the configured value); logs are not printed.
    """
    with quiet_logs():
        strict, strict_problems = load_settings({"mingle_strict": app.conf.get("mingle_strict")}, environ={})
        config = configure(ChainMap({"mingle_strict": False}, app.conf))
    settings = replace(config.settings, strict=strict.strict)
    return replace(config, settings=settings), strict_problems + list(config.problems)


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
    #: ``"ModuleNotFoundError: No module named 'redis' (kombu: ...)"``, or ``""``.
    error: str = ""
    #: The ``pip install`` line that fixes ``error`` (a missing library of a known scheme).
    fix: str = ""

    def problem(self) -> str:
        """One line for a log or the CLI: the error, then the fix."""
        if not self.error:
            return ""
        return f"{self.error}; {self.fix}" if self.fix else self.error


def _scheme(app: Any) -> str:
    """``redis`` for ``redis://...`` (the first of a failover list), or ``broker_transport``."""
    cls = app.conf.broker_transport
    if isinstance(cls, str) and cls:
        return cls
    url = app.conf.broker_url or ""
    url = str(url[0] if isinstance(url, (list, tuple)) and url else url).split(";")[0]
    return url.split("://", 1)[0].split("+")[0] if "://" in url else "amqp"


def _cause(scheme: str, exc: BaseException) -> tuple[str, bool]:
    """``(error, a library is missing)``: the client's own import error when it is missing.

    kombu hides it: without the redis client, kombu 5.7 raises ``AttributeError:
    'NoneType' object has no attribute 'Redis'``.
    """
    said, module = _error(exc), _client(scheme)[0]
    if module:
        try:
            importlib.import_module(module)
        except ImportError as missing:
            real = _error(missing)
            return (real if real == said else f"{real} (kombu: {said})"), True
        except Exception:  # a client that fails otherwise: kombu's error says it
            pass
    return said, isinstance(exc, ImportError)


def load_transport(app: Any, *, fanout: bool = True) -> TransportInfo:
    """Load the app's broker transport (no connection is made); never raises.

    :param fanout: also ask whether it has fanout exchanges (remote control).
    """
    scheme = _scheme(app)
    conn = None
    try:
        conn = app.connection_for_read()
        broker = conn.as_uri()
        driver_type = str(conn.transport.driver_type)
        has_fanout = bool(conn.supports_exchange_type("fanout")) if fanout else False
    except Exception as exc:
        broker = maybe_sanitize_url(str(app.conf.broker_url or ""))
        error, missing = _cause(scheme, exc)
        return TransportInfo(scheme, broker=broker, error=error, fix=_client(scheme)[1] if missing else "")
    finally:
        if conn is not None:
            conn.release()
    return TransportInfo(scheme, driver_type, has_fanout, broker)


def _client(scheme: str) -> tuple[str, str]:
    """``(client module, pip install line)`` of a URL scheme, or ``("", "")``."""
    return TRANSPORT_CLIENTS.get(scheme.lower(), ("", ""))


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
    #: As the worker's log says it: ``raised RuntimeError('boom')``, ``did not return ...``.
    problem: str = ""
    #: It did not return in time (the worker never calls it again).
    hung: bool = False


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


def ask_plugin(runner: HookRunner, impl: pluggy.HookImpl, **kwargs: Any) -> Answer:
    """Call one implementation of ``mingle_transport_compatible`` alone, within the plugin timeout.

    A plugin that does not return in time is not asked again while that call still runs.
    """
    name = runner.plugin_name(impl.plugin)
    args = {arg: kwargs[arg] for arg in (*impl.argnames, *impl.kwargnames) if arg in kwargs}
    try:
        got = call_with_deadline(impl.function, runner.timeout, **args)
    except Overdue as overdue:
        runner.mark_hung(impl.plugin, HOOK, overdue.thread)
        late = f"did not return within {runner.timeout:.1f}s"
        return Answer(name, None, f"TimeoutError: {late}", f"{late} and is no longer called", hung=True)
    except Exception as exc:
        return Answer(name, None, _error(exc), f"raised {exc!r:.300}")
    return Answer(name, None if got is None else bool(got))


def decide_transport(
    app: Any, runner: HookRunner, driver_type: str, *, settings: MingleSettings, stock: Collection[str]
) -> TransportDecision:
    """Ask the plugins, in pluggy's call order, whether workers mingle on ``driver_type``.

    :param stock: the driver types used when no plugin answers (the step's
        ``compatible_transports``).
    """
    answers: list[Answer] = []
    stock = frozenset(stock)
    for impl in runner.implementations(HOOK):
        if runner.is_hung(impl.plugin, HOOK):
            continue
        answer = ask_plugin(runner, impl, app=app, driver_type=driver_type, settings=settings)
        answers.append(answer)
        if answer.answer is not None:
            return TransportDecision(driver_type, answer.answer, answer.plugin, tuple(answers), stock)
    return TransportDecision(driver_type, driver_type in stock, None, tuple(answers), stock)


def plugin_claims(
    runner: HookRunner, plugin: object, app: Any, drivers: Sequence[str], settings: MingleSettings
) -> tuple[list[str], list[str], list[str]]:
    """``(claimed, refused, errors)`` among ``drivers`` for one plugin.

    A plugin that hangs once is not asked again, as in the worker.
    """
    claimed: list[str] = []
    refused: list[str] = []
    errors: list[str] = []
    for impl in [i for i in runner.implementations(HOOK) if i.plugin is plugin]:
        for driver in drivers:
            got = ask_plugin(runner, impl, app=app, driver_type=driver, settings=settings)
            if got.error:
                errors.append(f"{driver}: {got.error}")
                if got.hung:
                    break
            elif got.answer is True:
                claimed.append(driver)
            elif got.answer is False:
                refused.append(driver)
    return claimed, refused, errors
