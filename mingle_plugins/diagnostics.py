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
    "KNOWN_DRIVER_TYPES",
    "PLUGIN_DISTRIBUTIONS",
    "TRANSPORT_CLIENTS",
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
def quiet_logs() -> Iterator[None]:
    """Keep the ``mingle_plugins`` log records from the console (the commands print what they say)."""
    log = logging.getLogger("mingle_plugins")
    handler, saved = logging.NullHandler(), log.propagate
    log.addHandler(handler)
    log.propagate = False
    try:
        yield
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
