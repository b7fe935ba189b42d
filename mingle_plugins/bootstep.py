"""The Mingle bootstep: stock Mingle's API, every step routed through the hooks."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from celery import bootsteps
from celery.utils.log import get_logger
from celery.worker.consumer.events import Events
from celery.worker.consumer.mingle import Mingle as StockMingle

from . import protocol
from .control import install_handlers
from .diagnostics import decide_transport, load_transport
from .errors import RejectReply
from .loader import get_plugin_manager
from .model import HelloOptions, MingleSummary
from .runner import HookRunner, PluginHung
from .settings import load_settings, parse_seconds
from .wire import InvalidReply, reply_limits, revoked_for_hello, sends_ids_only, validate_reply

__all__ = ["Mingle"]

logger = get_logger(__name__)
debug, info, warning, error = logger.debug, logger.info, logger.warning, logger.error

#: ``sync_with_node(c, **reply)`` must not receive these from a reply.
_RESERVED_KWARGS = frozenset({"self", "c", "clock", "revoked"})


class Mingle(bootsteps.StartStopStep):  # type: ignore[misc]
    """Bootstep syncing state with neighbor workers, through the mingle hooks.

    At startup, or upon consumer restart, this will:

    - Sync logical clocks.
    - Sync revoked tasks.

    Same attributes and methods as ``celery.worker.consumer.mingle.Mingle``;
    a subclass may override any of them.
    """

    label = "Mingle"
    requires = (Events,)
    compatible_transports = set(StockMingle.compatible_transports)

    def __init__(self, c: Any, without_mingle: bool = False, **kwargs: Any) -> None:
        # Strict mode raises SettingsError / PluginLoadError here: the worker stops.
        self.settings, self.setting_problems = load_settings(c.app.conf)
        self.pm = get_plugin_manager(self.settings)
        self.runner = HookRunner(self.pm, self.settings.plugin_timeout)
        self.driver_type = ""
        self.last_summary: MingleSummary | None = None
        self._summary: MingleSummary | None = None
        self._node: str | None = None
        self._nonce: str | None = None
        #: Validated revoked ids waiting for the bulk merge (``mingle_merge = "bulk"``).
        self._pending: list[Any] | None = None
        self.enabled = not without_mingle and self.compatible_transport(c.app)
        if without_mingle:
            debug("mingle: disabled by --without-mingle")
        super().__init__(c, without_mingle=without_mingle, **kwargs)

    def include(self, parent: Any) -> bool:
        included: bool = super().include(parent)
        # Also when mingle is off: ``mingle_status`` says why.
        install_handlers(parent, self)
        return included

    # -- transport ---------------------------------------------------------

    def compatible_transport(self, app: Any) -> bool:
        """Whether this worker mingles on the broker's transport (decided in :mod:`.diagnostics`)."""
        transport = load_transport(app, fanout=False)
        if transport.driver_type is None:
            error("mingle: cannot load the broker transport, mingle is off: %s", transport.problem())
            return False
        self.driver_type = transport.driver_type
        decision = decide_transport(
            app,
            self.pm,
            self.driver_type,
            timeout=self.runner.timeout,
            stock=self.compatible_transports,
            skip=self.runner.hung,
        )
        for failed in decision.failures:  # never stop the worker: the next plugin answers
            if failed.hung:
                self.runner.hung.add(self.pm.get_plugin(failed.plugin))
            error("mingle: plugin %r %s in hook mingle_transport_compatible", failed.plugin, failed.problem())
        if decision.refused:
            info("mingle: off: plugin %r refused the %r transport", decision.decided_by, self.driver_type)
        elif not decision.compatible:
            info("mingle: off: no plugin claims the %r transport", self.driver_type)
        return decision.compatible

    # -- the mingle --------------------------------------------------------

    def start(self, c: Any) -> None:
        self.sync(c)

    def sync(self, c: Any) -> None:
        state = c.controller.state
        summary = self._summary = MingleSummary(
            hostname=c.hostname,
            transport=self.driver_type,
            plugins=self.pm.loaded_names(),
            revoked_before=len(state.revoked),
            clock_before=c.app.clock.value,
        )
        before = set(state.revoked)
        started = time.monotonic()
        try:
            info("mingle: searching for neighbors")
            try:
                replies = self.send_hello(c)
            except c.connection_errors:
                raise  # as stock: the consumer reconnects and mingles again
            except Exception as exc:
                error("mingle: hello failed, going on without mingling: %r", exc)
                summary.skipped = f"hello failed: {exc!r}"
                replies = {}
            if replies:
                summary.neighbours = [node for node, value in replies.items() if value]
                info("mingle: sync with %s nodes", len(summary.neighbours))
                cpu = time.process_time()
                self._pending = [] if self.settings.merge == "bulk" else None
                for nodename, reply in replies.items():
                    if reply:
                        self.on_node_reply(c, nodename, reply)
                self._merge_pending(c)
                summary.merge_cpu = time.process_time() - cpu
                info("mingle: sync complete")
            else:
                info("mingle: all alone")
        finally:
            self._summary = None
            self._pending = None
            self._nonce = None
        summary.elapsed = time.monotonic() - started
        summary.revoked_after = len(state.revoked)
        summary.ids_merged = sum(1 for task_id in state.revoked if task_id not in before)
        summary.clock_after = c.app.clock.value
        self.last_summary = summary
        info(
            "mingle: summary: %d neighbours, %d merged, %d ids merged, %d rejected, %.3fs",
            len(summary.neighbours),
            len(summary.merged_from),
            summary.ids_merged,
            len(summary.rejected),
            summary.elapsed,
        )
        self._send_event(c, summary)
        try:
            self.runner.call("mingle_sync_complete", consumer=c, summary=summary)
        except Exception as exc:
            error("mingle: mingle_sync_complete failed: %r", exc)

    def _send_event(self, c: Any, summary: MingleSummary) -> None:
        dispatcher = getattr(c, "event_dispatcher", None)
        if dispatcher is None or not dispatcher.enabled:
            return
        fields = summary.as_dict()
        fields.pop("hostname")  # the event carries the sender's hostname itself
        try:
            dispatcher.send("worker-mingle", **fields)
        except Exception as exc:  # an event must not stop the worker
            warning("mingle: could not send the worker-mingle event: %r", exc)

    def hello_options(self, c: Any) -> HelloOptions:
        """The settings, tuned by ``mingle_tune_hello`` and ``mingle_expected_replies``."""
        s = self.settings
        options = HelloOptions(timeout=s.hello_timeout, quiet_window=s.quiet_window, max_clock=s.max_clock)
        try:
            self.runner.call("mingle_tune_hello", app=c.app, driver_type=self.driver_type, options=options)
        except Exception as exc:
            error("mingle: mingle_tune_hello failed, using the settings: %r", exc)
        checked = HelloOptions(
            timeout=s.hello_timeout,
            quiet_window=s.quiet_window,
            max_clock=s.max_clock,
            count_receivers=s.expect_replies,
            digest=s.digest,
            nonce=secrets.token_hex(16) if s.hmac_keys else None,
            signing_key=s.hmac_keys[0] if s.hmac_keys else None,
        )
        for name in ("timeout", "quiet_window", "polling_interval"):
            value = getattr(options, name)
            try:
                setattr(checked, name, None if value is None else parse_seconds(value))
            except (TypeError, ValueError):
                error("mingle: mingle_tune_hello set %s=%r, not a number > 0; ignored", name, value)
        reply_queue = options.reply_queue
        if reply_queue is None or (type(reply_queue) is str and 0 < len(reply_queue) <= 255):
            checked.reply_queue = reply_queue
        else:
            error("mingle: mingle_tune_hello set reply_queue=%r, not a queue name; ignored", reply_queue)
        if s.expect_replies:
            try:
                count = self.runner.call("mingle_expected_replies", consumer=c, driver_type=self.driver_type)
            except Exception as exc:
                error("mingle: mingle_expected_replies failed: %r", exc)
                count = None
            if count is not None and (type(count) is not int or count < 0):
                error("mingle: mingle_expected_replies returned %r, not an integer >= 0; ignored", count)
                count = None
            checked.expected_replies = count
        debug("mingle: hello options %r", checked)
        return checked

    def send_hello(self, c: Any) -> dict[str, Any]:
        options = self.hello_options(c)
        if options.expected_replies == 0:
            debug("mingle: the broker says no other node listens; no hello sent")
            return {}
        self._nonce = options.nonce
        revoked = revoked_for_hello(c.controller.state)
        try:
            replies = self.runner.call(
                "mingle_send_hello", consumer=c, revoked=revoked, timeout=options.timeout, options=options
            )
        except PluginHung:
            return {}
        if replies is None:
            return {}
        if not isinstance(replies, Mapping):
            error("mingle: mingle_send_hello returned a %s, not a mapping; ignored", type(replies).__name__)
            return {}
        replies = dict(replies)
        replies.pop(c.hostname, None)  # delete my own response
        return replies

    def _reject(self, nodename: str, reason: str) -> None:
        warning("mingle: rejected the reply of %s: %s", nodename, reason)
        if self._summary is not None:
            self._summary.rejected[nodename] = reason

    def on_node_reply(self, c: Any, nodename: str, reply: Any) -> None:
        debug("mingle: processing reply from %s", nodename)
        try:
            if not isinstance(reply, Mapping):
                raise InvalidReply(f"reply is a {type(reply).__name__}, not a mapping")
            reply = dict(reply)
            self.check_trust(nodename, reply)
            self.runner.call("mingle_on_reply", fail_closed=True, consumer=c, nodename=nodename, reply=reply)
            valid = validate_reply(reply, reply_limits(self.settings, c.controller.state.revoked))
        except (InvalidReply, RejectReply) as exc:
            self._reject(nodename, str(exc))
            return
        except MemoryError:
            raise
        except Exception as exc:  # a check that broke on this reply: it is not merged
            logger.debug("mingle: traceback of the check of %s", nodename, exc_info=True)
            self._reject(nodename, f"could not be checked: {exc!r:.200}")
            return
        extra = {k: v for k, v in reply.items() if isinstance(k, str) and k not in _RESERVED_KWARGS}
        self._node = nodename
        try:
            self.sync_with_node(c, clock=valid.clock, revoked=valid.revoked, **extra)
        except MemoryError:
            raise
        except Exception as exc:
            logger.exception("mingle: sync with %s failed: %r", nodename, exc)
            return
        finally:
            self._node = None
        if self._summary is not None:
            self._summary.merged_from.append(nodename)
            self._summary.ids_received += len(valid.revoked or ())

    def check_trust(self, nodename: str, reply: Mapping[str, Any]) -> None:
        """Apply ``mingle_trusted_nodes`` and ``mingle_hmac_keys``; raise RejectReply."""
        s = self.settings
        if not s.trusts(nodename):
            raise RejectReply("node name not in mingle_trusted_nodes")
        if s.hmac_keys:
            problem = protocol.verify(s.hmac_keys, self._nonce or "", nodename, reply)
            if problem and not (s.accept_unsigned and "mingle" not in reply):
                raise RejectReply(problem)

    def sync_with_node(self, c: Any, clock: int | None = None, revoked: Any = None, **kwargs: Any) -> None:
        self.on_clock_event(c, clock)
        self.on_revoked_received(c, revoked)

    def on_clock_event(self, c: Any, clock: int | None) -> None:
        before = c.app.clock.value
        self.runner.call("mingle_adjust_clock", consumer=c, clock=clock, nodename=self._node)
        if c.app.clock.value < before:  # a Lamport clock never goes back
            error("mingle: a mingle_adjust_clock plugin moved the clock back; restored")
            c.app.clock.adjust(before)

    def on_revoked_received(self, c: Any, revoked: Any) -> None:
        if not revoked:
            return
        if self._pending is not None:
            self._pending.append(revoked)  # merged once, after the last reply
            return
        self._merge(c, revoked, self._node)

    def _merge_pending(self, c: Any) -> None:
        """The bulk merge: every reply's ids at once, only those not known yet."""
        pending, self._pending = self._pending, None
        if not pending:
            return
        revoked_set = c.controller.state.revoked
        if sends_ids_only(c.controller.state):
            union = dict.fromkeys(task_id for ids in pending for task_id in ids)
            new: Any = [task_id for task_id in union if task_id not in revoked_set]
        else:  # 5.3-5.6 merge keeps the sender's stamps; ids from lists get ours
            now = time.monotonic()
            stamps: dict[str, float] = {}
            for ids in pending:
                stamps.update(ids if isinstance(ids, dict) else dict.fromkeys(ids, now))
            new = {task_id: stamp for task_id, stamp in stamps.items() if task_id not in revoked_set}
        debug("mingle: bulk merge of %d new ids from %d replies", len(new), len(pending))
        if new:
            self._merge(c, new, None)

    def _merge(self, c: Any, revoked: Any, nodename: str | None) -> None:
        revoked_set = c.controller.state.revoked
        guard = len(self.pm.hook.mingle_merge_revoked.get_hookimpls()) > 1
        saved = dict(revoked_set._data) if guard else {}
        self.runner.call("mingle_merge_revoked", consumer=c, revoked=revoked, nodename=nodename)
        if guard:
            self._restore_lost(revoked_set, saved)

    def _restore_lost(self, revoked_set: Any, saved: dict[Any, Any]) -> None:
        """Put back ids a merge plugin removed (eviction by ``maxlen`` aside)."""
        if revoked_set.maxlen and len(revoked_set) >= revoked_set.maxlen:
            return  # full: the oldest ids were evicted, as stock does
        lost = [task_id for task_id in saved if task_id not in revoked_set]
        if lost:
            error("mingle: a mingle_merge_revoked plugin removed %d revoked ids; restored", len(lost))
            for task_id in lost:
                revoked_set.add(task_id, now=saved[task_id][0])
