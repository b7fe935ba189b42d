"""Calling hooks so that a broken or hanging plugin cannot stop the worker.

A plugin implementation that raises is named in one log line and the call is
made again without it; one that does not return within ``mingle_plugin_timeout``
is named, left behind in its thread, and not called again by this worker.
With only the built-in implementations registered, hooks are called directly.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable
from types import FrameType, TracebackType
from typing import Any

import pluggy

from .errors import RejectReply
from .loader import BUILTIN_NAME, MinglePluginManager

__all__ = ["HookRunner", "Overdue", "PluginHung", "call_with_deadline"]

logger = logging.getLogger("mingle_plugins")


class PluginHung(Exception):
    """A hook implementation did not return in time."""


def _frames_of_traceback(tb: TracebackType | None) -> list[FrameType]:
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames


def _frames_of_stack(frame: FrameType | None) -> list[FrameType]:
    frames = []
    while frame is not None:
        frames.append(frame)
        frame = frame.f_back
    return frames


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

    thread = threading.Thread(target=target, name=f"mingle-{getattr(fn, 'name', 'call')}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise Overdue(thread, timeout)
    if "error" in box:
        raise box["error"]
    return box.get("result")


class HookRunner:
    """Calls the mingle hooks of one plugin manager, skipping faulty plugins."""

    def __init__(self, pm: MinglePluginManager, timeout: float) -> None:
        self.pm = pm
        self.timeout = timeout
        #: Plugins that hung: never called again by this worker.
        self.hung: set[object] = set()

    def plugin_name(self, plugin: object) -> str:
        return self.pm.get_name(plugin) or repr(plugin)

    def _culprit(self, caller: pluggy.HookCaller, frames: list[FrameType]) -> object | None:
        codes = {impl.function.__code__: impl.plugin for impl in caller.get_hookimpls()}
        for frame in frames:
            plugin = codes.get(frame.f_code)
            if plugin is not None:
                return plugin
        return None

    def _caller(self, name: str, skip: set[object]) -> pluggy.HookCaller:
        caller: pluggy.HookCaller = getattr(self.pm.hook, name)
        if skip:
            return self.pm.subset_hook_caller(name, remove_plugins=skip)
        return caller

    def _call_with_deadline(self, caller: pluggy.HookCaller, kwargs: dict[str, Any]) -> Any:
        try:
            return call_with_deadline(caller, self.timeout, **kwargs)
        except Overdue as overdue:
            frame = sys._current_frames().get(overdue.thread.ident or -1)
            raise PluginHung(self._culprit(caller, _frames_of_stack(frame))) from None

    def call(self, name: str, *, fail_closed: bool = False, **kwargs: Any) -> Any:
        """Call hook ``name``; on a plugin fault, log it and call again without it.

        :param fail_closed: raise :class:`RejectReply` naming the faulty plugin
            instead of calling again without it (for ``mingle_on_reply``).
        """
        builtin_plugin = self.pm.get_plugin(BUILTIN_NAME)
        skip: set[object] = set(self.hung)
        if fail_closed:
            hung_here = [
                impl.plugin for impl in self._caller(name, set()).get_hookimpls() if impl.plugin in skip
            ]
            if hung_here:  # a check that hung once cannot vouch for later calls: keep failing closed
                raise RejectReply(
                    f"plugin {self.plugin_name(hung_here[0])!r} hung earlier and is no longer called"
                )
        while True:
            caller = self._caller(name, skip)
            guarded = any(impl.plugin is not builtin_plugin for impl in caller.get_hookimpls())
            try:
                if not guarded:
                    return caller(**kwargs)
                return self._call_with_deadline(caller, kwargs)
            except (RejectReply, MemoryError, KeyboardInterrupt, SystemExit):
                raise
            except PluginHung as hung:
                culprit = hung.args[0]
                if culprit is None:  # nobody to blame: give up on this call
                    logger.error("mingle: hook %s did not return within %.1fs; skipped", name, self.timeout)
                    raise
                self.hung.add(culprit)
                problem = f"did not return within {self.timeout:.1f}s and is no longer called"
            except Exception as exc:
                culprit = self._culprit(caller, _frames_of_traceback(exc.__traceback__))
                if culprit is None or culprit is builtin_plugin:
                    raise
                problem = f"raised {exc!r}"
                logger.debug("mingle: traceback of %s", name, exc_info=True)
            logger.error("mingle: plugin %r %s in hook %s", self.plugin_name(culprit), problem, name)
            if fail_closed:
                raise RejectReply(f"plugin {self.plugin_name(culprit)!r} {problem}")
            skip.add(culprit)
