"""Calling hooks one implementation at a time, so that a faulty plugin is skipped alone.

pluggy runs every implementation of a hook in one loop, where an exception
ends the whole call; calling the hook again without the culprit would run
the others twice. Here each implementation is called on its own, in pluggy's
order (last registered first, ``tryfirst``/``trylast`` honoured): one that
raises is named in one log line and skipped for that call; one that does not
return within ``mingle_plugin_timeout`` is named, left behind in its thread,
and never called again by this worker. The built-in implementations are
called directly, without a thread. Hook wrappers are not supported (a
wrapper's implementation is skipped with one log line).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pluggy

from .errors import RejectReply
from .loader import BUILTIN_NAME, MinglePluginManager

__all__ = ["HookRunner", "ImplResult", "Overdue", "PluginHung", "call_with_deadline"]

logger = logging.getLogger("mingle_plugins")


class PluginHung(Exception):
    """A hook implementation did not return in time."""


class Overdue(TimeoutError):
    """A call did not return in time; ``thread`` is still running it."""

    def __init__(self, thread: threading.Thread, timeout: float) -> None:
        super().__init__(f"did not return within {timeout:.1f}s")
        self.thread = thread


def call_with_deadline(fn: Callable[..., Any], timeout: float, /, **kwargs: Any) -> Any:
    """``fn(**kwargs)`` in a daemon thread; :class:`Overdue` if it has not returned in ``timeout``.

    The thread is left running: Python cannot stop it.
    """
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = fn(**kwargs)
        except BaseException as exc:  # handed to the calling thread
            box["error"] = exc

    thread = threading.Thread(target=target, name=f"mingle-{getattr(fn, '__name__', 'call')}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise Overdue(thread, timeout)
    if "error" in box:
        raise box["error"]
    return box.get("result")


@dataclass(frozen=True)
class ImplResult:
    """What one implementation returned, and whose it is."""

    plugin: str
    value: Any


class HookRunner:
    """Calls the mingle hooks of one plugin manager, each implementation on its own."""

    def __init__(self, pm: MinglePluginManager, timeout: float) -> None:
        self.pm = pm
        self.timeout = timeout
        #: Plugins that hung: never called again by this worker.
        self.hung: set[object] = set()
        self._warned_wrappers: set[int] = set()

    def plugin_name(self, plugin: object) -> str:
        return self.pm.get_name(plugin) or repr(plugin)

    def implementations(self, name: str) -> list[pluggy.HookImpl]:
        """The implementations of hook ``name`` in the order pluggy would call them."""
        caller: pluggy.HookCaller = getattr(self.pm.hook, name)
        impls = []
        for impl in reversed(caller.get_hookimpls()):
            if impl.hookwrapper or impl.wrapper:
                if id(impl) not in self._warned_wrappers:
                    self._warned_wrappers.add(id(impl))
                    logger.error(
                        "mingle: plugin %r: hook wrappers are not supported; its %s is not called",
                        self.plugin_name(impl.plugin),
                        name,
                    )
                continue
            impls.append(impl)
        return impls

    def _call_one(self, impl: pluggy.HookImpl, kwargs: dict[str, Any]) -> Any:
        args = {arg: kwargs[arg] for arg in (*impl.argnames, *impl.kwargnames) if arg in kwargs}
        if impl.plugin is self.pm.get_plugin(BUILTIN_NAME):
            return impl.function(**args)
        try:
            return call_with_deadline(impl.function, self.timeout, **args)
        except Overdue:
            raise PluginHung(impl.plugin) from None

    def each(self, name: str, *, fail_closed: bool = False, **kwargs: Any) -> Iterator[ImplResult]:
        """Call every implementation of ``name`` once, yielding what each returned.

        A faulty implementation is logged and skipped. With ``fail_closed``
        (checks such as ``mingle_on_reply``), a fault raises :class:`RejectReply`
        naming the plugin instead, and a plugin that hung before keeps failing
        closed. The caller may stop early (``firstresult``).
        """
        for impl in self.implementations(name):
            plugin_name = self.plugin_name(impl.plugin)
            if impl.plugin in self.hung:
                if fail_closed:  # a check that hung once cannot vouch for later calls
                    raise RejectReply(f"plugin {plugin_name!r} hung earlier and is no longer called")
                continue
            try:
                value = self._call_one(impl, kwargs)
            except (RejectReply, MemoryError, KeyboardInterrupt, SystemExit):
                raise
            except PluginHung:
                self.hung.add(impl.plugin)
                problem = f"did not return within {self.timeout:.1f}s and is no longer called"
            except Exception as exc:
                if impl.plugin is self.pm.get_plugin(BUILTIN_NAME):
                    raise
                problem = f"raised {exc!r:.300}"
                logger.debug("mingle: traceback of %s in %s", plugin_name, name, exc_info=True)
            else:
                yield ImplResult(plugin_name, value)
                continue
            logger.error("mingle: plugin %r %s in hook %s", plugin_name, problem, name)
            if fail_closed:
                raise RejectReply(f"plugin {plugin_name!r} {problem}")

    def first(self, name: str, **kwargs: Any) -> Any:
        """A ``firstresult`` hook: the first non-``None`` answer, or ``None``."""
        for result in self.each(name, **kwargs):
            if result.value is not None:
                return result.value
        return None
