"""Call one hook implementation of a plugin, with a built :class:`~mingle_plugins.Reply`, without
starting a worker: a plugin's unit tests.

::

    from mingle_plugins.testkit import hooktest
    import my_plugin

    def test_keeps_prod_ids():
        reply = hooktest.reply("prod-1@host", ["id-1", "id-2"])
        kept = hooktest.call(my_plugin, "mingle_merge_revoked", reply=reply)
        assert list(kept) == ["id-1", "id-2"]

:func:`call` registers ``plugin`` (a module, a class or an instance with ``@hookimpl``
functions) alone in a plugin manager with the mingle hook specs, as the worker does
(a misspelt hook name fails here too), resolves the settings it declares with
``mingle_add_settings`` from ``conf`` (strictly: a bad value raises), fills every
argument of the hook's spec that is not given with a default (:func:`reply`,
:func:`consumer`, the settings, ...), calls that plugin's implementation once and returns
what it returned. The pytest fixture ``mingle_hook``
(:mod:`mingle_plugins.testkit.pytest_plugin`) is this module.

.. versionadded:: 0.2
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import SimpleNamespace
from typing import Any

import pluggy

from ..hello.checks import check_nodename
from ..model import HelloOptions, MingleSummary, Reply, ReplySource
from ..plugins.loader import MinglePluginManager
from ..settings import MingleSettings, SettingsRegistry, load_settings

__all__ = ["DEFAULT_HOSTNAME", "DEFAULT_NODENAME", "call", "consumer", "reply", "settings_for"]

#: The node name of :func:`reply` when none is given.
DEFAULT_NODENAME = "neighbour@test"
#: The ``hostname`` of :func:`consumer` when none is given (the worker that mingles).
DEFAULT_HOSTNAME = "me@test"


def reply(
    nodename: str = DEFAULT_NODENAME,
    ids: Iterable[str] = (),
    *,
    clock: int | None = None,
    ages: Mapping[str, float] | None = None,
    stamps: Mapping[str, float] | None = None,
    source: ReplySource = "reply",
    **fields: Any,
) -> Reply:
    """A :class:`~mingle_plugins.Reply` as the host builds it from a checked reply: ``nodename``
    must be a node name (``name@host``), the ids are kept in order. ``fields``: any other field
    of ``Reply`` (``extension``, ``extra``, ``invalid_ids``, ...)."""
    ids = tuple(ids)
    fields.setdefault("carried", ids)
    return Reply(check_nodename(nodename), clock, ids, stamps, ages, source, **fields)


def consumer(
    app: Any = None,
    hostname: str = DEFAULT_HOSTNAME,
    revoked: Iterable[str] = (),
    driver_type: str = "memory",
) -> Any:
    """A stand-in for the worker's ``Consumer`` (:class:`~mingle_plugins.WorkerConsumer`): ``app``
    (a Celery app on ``memory://`` by default), ``hostname``, ``connection.transport.driver_type``
    and ``controller.state.revoked``, a ``LimitedSet`` holding ``revoked``."""
    from celery import Celery
    from celery.utils.collections import LimitedSet

    held = LimitedSet(maxlen=50_000)
    for task_id in revoked:
        held.add(task_id)
    return SimpleNamespace(
        app=app if app is not None else Celery("hooktest", broker="memory://", set_as_current=False),
        hostname=hostname,
        connection=SimpleNamespace(transport=SimpleNamespace(driver_type=driver_type)),
        controller=SimpleNamespace(state=SimpleNamespace(revoked=held)),
    )


def _manager(plugin: object) -> tuple[MinglePluginManager, str]:
    pm = MinglePluginManager()
    name = str(getattr(plugin, "__name__", None) or type(plugin).__name__)
    pm.register(plugin, name=name)
    pm.check_pending()  # a misspelt hook name fails here, as at worker start
    return pm, name


def settings_for(plugin: object, conf: Mapping[str, Any] | None = None) -> MingleSettings:
    """The settings a worker with ``conf`` (``mingle_*`` keys, ``mingle_plugin_settings``) would
    give ``plugin``'s hooks: its ``mingle_add_settings`` declarations resolved. A bad or unknown
    value raises :class:`~mingle_plugins.SettingsError` (a test wants to know)."""
    settings, problems = load_settings(dict(conf or {}), environ={}, warn=False)
    registry = SettingsRegistry()
    pm, _ = _manager(plugin)
    pm.hook.mingle_add_settings(registry=registry)
    settings, found = registry.resolve(settings, warn=False)
    problems += found
    if problems:
        raise problems[0]
    return settings


def call(plugin: object, hook: str, /, *, conf: Mapping[str, Any] | None = None, **arguments: Any) -> Any:
    """Call ``plugin``'s implementation of ``hook`` once and return what it returned.

    :param conf: the Celery configuration the settings come from (unless ``settings`` is given).
    :param arguments: the hook's arguments; each one not given gets a default: ``settings`` from
        :func:`settings_for`, ``consumer`` from :func:`consumer` (``app`` is its app), ``reply``
        from :func:`reply` (``ids``: the reply's ids, ``clock``: its clock), ``driver_type``
        ``"memory"``, ``terminate`` ``False``, ``options`` a :class:`~mingle_plugins.HelloOptions`,
        ``registry`` a new :class:`~mingle_plugins.SettingsRegistry`, ``summary`` an empty
        :class:`~mingle_plugins.MingleSummary`, ``revoked`` the consumer's revoked set,
        ``timeout`` 1.0.
    :raises LookupError: ``hook`` is no mingle hook, or ``plugin`` does not implement it.
    :raises TypeError: an argument the hook's spec does not have.
    """
    pm, name = _manager(plugin)
    caller = getattr(pm.hook, hook, None)
    spec = getattr(caller, "spec", None)
    if spec is None:
        raise LookupError(f"{hook!r} is not a mingle hook")
    impls = [i for i in caller.get_hookimpls() if i.plugin_name == name] if caller else []
    if not impls:
        raise LookupError(f"plugin {name!r} does not implement {hook}")
    unknown = set(arguments) - set(spec.argnames)
    if unknown:
        raise TypeError(f"{hook} has no argument(s) {', '.join(sorted(unknown))}: it takes {spec.argnames}")
    values = _defaults(plugin, spec.argnames, conf, arguments)
    impl: pluggy.HookImpl = impls[0]
    return impl.function(**{arg: values[arg] for arg in impl.argnames})


def _defaults(
    plugin: object, argnames: tuple[str, ...], conf: Mapping[str, Any] | None, given: Mapping[str, Any]
) -> dict[str, Any]:
    values = dict(given)
    if "settings" in argnames and "settings" not in values:
        values["settings"] = settings_for(plugin, conf)
    if "consumer" not in values and ({"consumer", "app", "revoked"} & set(argnames)):
        values["consumer"] = consumer()
    if "app" not in values and "consumer" in values:
        values["app"] = values["consumer"].app
    if "reply" in argnames and "reply" not in values:
        values["reply"] = reply()
    built = values.get("reply")
    defaults: dict[str, Any] = {
        "ids": built.ids if isinstance(built, Reply) else (),
        "clock": built.clock if isinstance(built, Reply) else None,
        "driver_type": "memory",
        "terminate": False,
        "options": HelloOptions(),
        "registry": SettingsRegistry(),
        "timeout": 1.0,
    }
    for arg in argnames:
        if arg in values:
            continue
        if arg == "revoked":
            values[arg] = values["consumer"].controller.state.revoked
        elif arg == "summary":
            hostname = getattr(values.get("consumer"), "hostname", DEFAULT_HOSTNAME)
            values[arg] = MingleSummary(hostname=hostname, transport="memory")
        elif arg in defaults:
            values[arg] = defaults[arg]
        else:
            raise TypeError(f"no default for the argument {arg!r}: give it to call()")
    return values
