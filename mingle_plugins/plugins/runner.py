"""Calling hooks one implementation at a time, so that a faulty plugin is skipped alone.

pluggy runs every implementation of a hook in one loop, where an exception
ends the whole call; calling the hook again without the culprit would run
the others twice. Here each implementation is called on its own, in pluggy's
order (last registered first, ``tryfirst``/``trylast`` honoured). A fault
(it raised, it did not return within ``mingle_plugin_timeout``, or the caller
found its return value wrong) is recorded as a :class:`Fault` of that plugin
*in that hook*, logged once at ERROR (again at DEBUG), and costs only that
implementation: an implementation that hung is not called again in that hook
while its call is still running, and is called again once it returned.

A fault *fails open* (the implementation is passed over) unless the hook is a
check (``mingle_on_reply``) or the implementation is marked
:func:`~mingle_plugins.fail_closed`: then the caller is told
(:class:`~mingle_plugins.RejectReply`, or ``ImplResult.failed``) and the
reply it was looking at is not merged. The built-in implementations are
called directly, without a thread. Hook wrappers are not supported (a
wrapper's implementation is skipped with one log line).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import pluggy

from ..errors import FailedClosed, RejectReply
from ..markers import BUILTIN_NAME, is_fail_closed
from .loader import MinglePluginManager

__all__ = ["Fault", "HookRunner", "ImplResult", "Overdue", "PluginHung", "call_with_deadline"]

logger = logging.getLogger("mingle_plugins")

FaultKind = Literal["raised", "hung", "wrong return"]


@dataclass
class Fault:
    """The faults of one plugin in one hook, since the worker started."""

    plugin: str
    hook: str
    kind: FaultKind
    count: int
    last: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "plugin": self.plugin,
            "hook": self.hook,
            "kind": self.kind,
            "count": self.count,
            "last": self.last,
        }


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
    #: The implementation is marked fail-closed: a wrong return value must not pass.
    fail_closed: bool = False


class HookRunner:
    """Calls the mingle hooks of one plugin manager, each implementation on its own."""

    def __init__(self, pm: MinglePluginManager, timeout: float) -> None:
        self.pm = pm
        self.timeout = timeout
        #: ``(plugin, hook) -> the thread still running its overdue call``.
        self._stuck: dict[tuple[int, str], threading.Thread] = {}
        #: ``(plugin name, hook, kind) -> Fault``: every runtime fault since the start.
        self.faults: dict[tuple[str, str, str], Fault] = {}
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

    # -- faults ----------------------------------------------------------------

    def is_hung(self, plugin: object, hook: str) -> bool:
        """Whether an earlier call of ``plugin``'s ``hook`` is still running (overdue)."""
        thread = self._stuck.get((id(plugin), hook))
        if thread is None:
            return False
        if thread.is_alive():
            return True
        del self._stuck[(id(plugin), hook)]  # it returned at last: called again from now on
        return False

    def mark_hung(self, plugin: object, hook: str, thread: threading.Thread) -> None:
        self._stuck[(id(plugin), hook)] = thread

    def record_fault(self, plugin: str, hook: str, kind: FaultKind, message: str) -> Fault:
        """Count one fault; the first of its kind is logged at ERROR, later ones at DEBUG."""
        key = (plugin, hook, kind)
        fault = self.faults.get(key)
        if fault is None:
            fault = self.faults[key] = Fault(plugin, hook, kind, 0, message)
            logger.error("mingle: plugin %r %s in hook %s", plugin, message, hook)
        else:
            logger.debug("mingle: plugin %r %s in hook %s (fault %d)", plugin, message, hook, fault.count + 1)
        fault.count += 1
        fault.last = message
        return fault

    def fault_list(self) -> list[dict[str, Any]]:
        """Every runtime fault, as ``mingle status`` and ``mingle check`` show them."""
        return [fault.as_dict() for fault in self.faults.values()]

    # -- calls -----------------------------------------------------------------

    def _call_one(self, impl: pluggy.HookImpl, hook: str, kwargs: dict[str, Any]) -> Any:
        args = {arg: kwargs[arg] for arg in (*impl.argnames, *impl.kwargnames) if arg in kwargs}
        if impl.plugin is self.pm.get_plugin(BUILTIN_NAME):
            return impl.function(**args)
        try:
            return call_with_deadline(impl.function, self.timeout, **args)
        except Overdue as late:
            self.mark_hung(impl.plugin, hook, late.thread)
            raise PluginHung(impl.plugin) from None

    def each(self, name: str, *, fail_closed: bool = False, **kwargs: Any) -> Iterator[ImplResult]:
        """Call every implementation of ``name`` once, yielding what each returned.

        A faulty implementation is recorded (:meth:`record_fault`) and skipped.
        When the hook is a check (``fail_closed``) or the implementation is
        marked :func:`~mingle_plugins.fail_closed`, a fault raises
        :class:`~mingle_plugins.errors.FailedClosed` (a :class:`RejectReply`) naming the
        plugin instead, also while an earlier call of it is still running. The caller may
        stop early (``firstresult``).
        """
        for impl in self.implementations(name):
            plugin_name = self.plugin_name(impl.plugin)
            closed = fail_closed or is_fail_closed(impl.function)
            if self.is_hung(impl.plugin, name):
                self.record_fault(plugin_name, name, "hung", "is still running an earlier call; not called")
                if closed:  # it cannot vouch for this call
                    raise FailedClosed(
                        plugin_name, f"plugin {plugin_name!r} is still running an earlier call of {name}"
                    )
                continue
            try:
                value = self._call_one(impl, name, kwargs)
            except (RejectReply, MemoryError, KeyboardInterrupt, SystemExit):
                raise
            except PluginHung:
                kind: FaultKind = "hung"
                problem = f"did not return within {self.timeout:.1f}s"
            except Exception as exc:
                if impl.plugin is self.pm.get_plugin(BUILTIN_NAME):
                    raise
                kind, problem = "raised", f"raised {exc!r:.300}"
                logger.debug("mingle: traceback of %s in %s", plugin_name, name, exc_info=True)
            else:
                yield ImplResult(plugin_name, value, closed)
                continue
            self.record_fault(plugin_name, name, kind, problem)
            if closed:
                raise FailedClosed(plugin_name, f"plugin {plugin_name!r} {problem}")

    def first(self, name: str, **kwargs: Any) -> Any:
        """A ``firstresult`` hook: the first non-``None`` answer, or ``None``."""
        for result in self.each(name, **kwargs):
            if result.value is not None:
                return result.value
        return None
