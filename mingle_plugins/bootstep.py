"""The Mingle bootstep: stock Mingle's API, every reply on the path of :mod:`mingle_plugins.hello.rounds`."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from celery import bootsteps
from celery.utils.log import get_logger
from celery.worker.consumer.events import Events
from celery.worker.consumer.mingle import Mingle as StockMingle

from .answering.control import install_handlers
from .answering.step import RefusedRequests, SameName
from .hello.checks import InvalidReply, ReplayGuard, check_body, is_malformed_label, reply_limits, shown
from .hello.presence import PresenceState, queue_name
from .hello.rounds import MingleRound
from .model import HelloOptions, MingleSummary
from .parsers import parse_seconds
from .plugins.config import configure
from .plugins.diagnostics import PLUGIN_DISTRIBUTIONS, decide_transport, load_transport
from .wire import compat, protocol
from .wire.bulk import gc_paused

__all__ = ["Mingle"]

logger = get_logger(__name__)
debug, info, warning, error = logger.debug, logger.info, logger.warning, logger.error

#: The stock methods a subclass may override to see each reply the stock way.
_STOCK_REPLY_METHODS = ("on_node_reply", "sync_with_node", "on_clock_event", "on_revoked_received")


class Mingle(bootsteps.StartStopStep):  # type: ignore[misc]
    """Bootstep syncing state with neighbor workers, through the mingle hooks.

    At startup, or upon consumer restart, this will:

    - Sync logical clocks.
    - Sync revoked tasks.

    Same attributes and methods as ``celery.worker.consumer.mingle.Mingle``.
    ``sync`` walks one :class:`~mingle_plugins.hello.rounds.MingleRound`; the stock
    methods are adapters over a round of their own when called from outside.
    A subclass that overrides ``on_node_reply``, ``sync_with_node``,
    ``on_clock_event`` or ``on_revoked_received`` gets each kept reply through
    them, as stock calls them (the summary then counts what those methods merged
    through the adapters only).
    """

    label = "Mingle"
    requires = (Events,)
    compatible_transports = set(StockMingle.compatible_transports)

    def __init__(self, c: Any, without_mingle: bool = False, **kwargs: Any) -> None:
        # Strict mode raises SettingsError / PluginLoadError here: the worker stops.
        config = configure(c.app.conf)
        self.settings = config.settings
        self.setting_problems = list(config.problems)
        self.pm = config.pm
        self.runner = config.runner
        #: Signed hello requests seen lately (refuses replays on the answering side).
        self.replay_guard = ReplayGuard(self.settings.signature_max_age)
        self.driver_type = ""
        self.last_summary: MingleSummary | None = None
        #: The hello requests whose ids this worker refused (shown by ``mingle_status``).
        self.requests_refused = RefusedRequests()
        #: Other live workers heard under this worker's node name (shown by ``mingle_status``).
        self.same_name = SameName()
        self._size_revoked_set(c)
        self.enabled = not without_mingle and self.compatible_transport(c.app)
        if without_mingle:
            debug("mingle: disabled by --without-mingle")
        #: The presence queue on AMQP (``mingle_presence``; joined by :class:`~.presence.PresenceStep`).
        take_part = self.enabled and self.settings.presence and self.driver_type == "amqp"
        self.presence = PresenceState(queue_name(c.app) if take_part else None)
        super().__init__(c, without_mingle=without_mingle, **kwargs)

    def _size_revoked_set(self, c: Any) -> None:
        """``mingle_revokes_max`` / ``mingle_revoke_expires`` (else the environment, as stock)."""
        s = self.settings
        if s.revokes_max is None and s.revoke_expires is None:
            return
        revoked = c.controller.state.revoked
        compat.size_revoked_set(revoked, s.revokes_max, s.revoke_expires)
        info(
            "mingle: the revoked set keeps %d ids for %gs (%d held)",
            revoked.maxlen,
            revoked.expires,
            len(revoked),
        )

    def include(self, parent: Any) -> bool:
        included: bool = super().include(parent)
        # Also when mingle is off: ``mingle_status`` says why, and hello requests are checked.
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
            app, self.runner, self.driver_type, settings=self.settings, stock=self.compatible_transports
        )
        for failed in decision.failures:  # never stop the worker: the next plugin answers
            error("mingle: plugin %r %s in hook mingle_transport_compatible", failed.plugin, failed.problem)
        if decision.refused:
            info("mingle: off: plugin %r refused the %r transport", decision.decided_by, self.driver_type)
        elif not decision.compatible and self.driver_type in PLUGIN_DISTRIBUTIONS:
            warning(
                "mingle: off: no plugin claims the %r transport: pip install %s (or allow it in "
                "mingle_plugins / CELERY_MINGLE_PLUGINS)",
                self.driver_type,
                PLUGIN_DISTRIBUTIONS[self.driver_type],
            )
        elif not decision.compatible:
            info("mingle: off: no plugin claims the %r transport", self.driver_type)
        return decision.compatible

    # -- the mingle --------------------------------------------------------

    def new_round(self, c: Any) -> MingleRound:
        """A round for one mingle (or one hello request), with this step's settings and plugins."""
        return MingleRound.start(c, self.settings, self.runner, self.driver_type, self.replay_guard)

    @contextmanager
    def mingle_round(self, c: Any) -> Iterator[MingleRound]:
        """A round of its own, finished at the end of the block (for tests and embedding:
        ``rnd.reply(node, body)`` walks one body)."""
        rnd = self.new_round(c)
        try:
            yield rnd
        finally:
            rnd.finish()

    def start(self, c: Any) -> None:
        self.sync(c)

    def sync(self, c: Any) -> None:
        with gc_paused():  # replies of 50,000 ids: see mingle_plugins.wire.bulk
            self._sync(c)

    def _overrides_stock_methods(self) -> bool:
        return any(getattr(type(self), name) is not getattr(Mingle, name) for name in _STOCK_REPLY_METHODS)

    def _sync(self, c: Any) -> None:
        rnd = self.new_round(c)
        summary = rnd.summary
        info("mingle: searching for neighbors")
        try:
            replies = self._hello(c, rnd)
        except c.connection_errors:
            raise  # as stock: the consumer reconnects and mingles again
        except Exception as exc:
            error("mingle: hello failed, going on without mingling: %r", exc)
            summary.skipped = f"hello failed: {exc!r:.200}"
            replies = {}
        self.presence.saw_replies(replies, c.hostname)
        extra: dict[str, Any] = {}
        try:
            extra = self.extra_replies(c, replies, summary.sources_unreached)
        except Exception as exc:  # a source must not stop the mingle
            error("mingle: mingle_extra_replies failed, going on without them: %r", exc)
        # Every node heard: the replies kept, then the names whose every reply was rejected
        # (a malformed message is a rejection, not a node).
        heard = [str(node) for node, value in (replies | extra).items() if value]
        heard += [n for n in summary.rejected if n not in heard and not is_malformed_label(n)]
        if heard:
            summary.neighbours = heard
            info("mingle: sync with %s nodes", len(summary.neighbours))
            if self._overrides_stock_methods():
                for nodename, body in (replies | extra).items():
                    if body:
                        self._stock_path(c, rnd, nodename, body)
            else:
                rnd.walk(replies)
                rnd.walk(extra, source="extra")
            info("mingle: sync complete")
        elif summary.rejected:
            info("mingle: no reply kept: %d rejected", len(summary.rejected))
        else:
            info("mingle: all alone")
        rnd.finish(since_start=True)
        self.last_summary = summary
        from_sources = {n: summary.nodes[n].ids_merged for n in extra if n in summary.nodes}
        info(
            "mingle: summary: %d neighbours, %d accepted, %d ids merged, %d dropped by policy, "
            "%d rejected, %.3fs%s%s%s%s",
            len(summary.neighbours),
            len(summary.accepted),
            summary.ids_merged,
            summary.ids_dropped,
            len(summary.rejected),
            summary.elapsed,
            f", {summary.ids_over_share} ids over mingle_max_share" if summary.ids_over_share else "",
            f", {summary.ids_invalid} invalid ids dropped" if summary.ids_invalid else "",
            f", {len(summary.plugin_faults)} plugin faults" if summary.plugin_faults else "",
            (
                f" (of the ids merged, {sum(from_sources.values())} from "
                + ", ".join(f"{shown(n)}: {k}" for n, k in from_sources.items())
                + ", the others from neighbours)"
            )
            if from_sources
            else "",
        )
        self._send_event(c, summary)
        for _ in self.runner.each(
            "mingle_sync_complete", consumer=c, summary=summary, settings=self.settings
        ):
            pass

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
        options = HelloOptions(
            timeout=s.hello_timeout,
            quiet_window=s.quiet_window,
            max_clock=s.max_clock,
            answer_wait=s.answer_wait or None,
        )
        for _ in self.runner.each(
            "mingle_tune_hello", app=c.app, driver_type=self.driver_type, options=options, settings=s
        ):
            pass
        checked = HelloOptions(
            timeout=s.hello_timeout,
            quiet_window=s.quiet_window,
            max_clock=s.max_clock,
            count_receivers=s.expect_replies,
            digest=s.digest,
            reconcile=s.reconcile,
            nonce=secrets.token_hex(16) if s.hmac_keys else None,
            signing_key=s.hmac_keys[0] if s.hmac_keys else None,
            presence_queue=self.presence.queue,
            answer_wait=s.answer_wait or None,
        )
        for name in ("timeout", "quiet_window", "polling_interval", "answer_wait"):
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
            count = self.runner.first(
                "mingle_expected_replies", consumer=c, driver_type=self.driver_type, settings=s
            )
            if count is not None and (type(count) is not int or count < 0):
                error("mingle: mingle_expected_replies returned %r, not an integer >= 0; ignored", count)
                count = None
            checked.expected_replies = count
        debug("mingle: hello options %r", checked)
        return checked

    def send_hello(self, c: Any) -> dict[str, Any]:
        """Stock API: the hello of a round of its own; the replies it kept, by node name."""
        rnd = self.new_round(c)
        try:
            return self._hello(c, rnd)
        finally:
            rnd.finish()

    def _hello(self, c: Any, rnd: MingleRound) -> dict[str, Any]:
        options = self.hello_options(c)
        if options.expected_replies == 0:
            debug("mingle: the broker says no other node listens; no hello sent")
            return {}
        rnd.nonce = options.nonce
        revoked = compat.revoked_for_hello(c.controller.state)
        replies = self.runner.first(  # a hung or raising implementation is skipped, and recorded
            "mingle_send_hello",
            consumer=c,
            revoked=revoked,
            timeout=options.timeout,
            options=options,
            settings=self.settings,
            verdicts=rnd,
        )
        if replies is None:
            return {}
        if not isinstance(replies, Mapping):
            error("mingle: mingle_send_hello returned a %s, not a mapping; ignored", type(replies).__name__)
            return {}
        replies = dict(replies)
        own = replies.pop(c.hostname, None)  # delete my own response
        if protocol.same_name_of(own) is not None:  # another worker's, under this worker's name
            self.same_name.heard(c.hostname, str(protocol.same_name_of(own)), "answered this hello")
        return replies

    def extra_replies(
        self, c: Any, replies: Mapping[str, Any], unreached: list[str] | None = None
    ) -> dict[str, Any]:
        """The bodies of ``mingle_extra_replies`` (e.g. a revocation store), by source name.

        A source whose body is ``None`` was not reached: its name goes to ``unreached``.
        """
        extra: dict[str, Any] = {}
        for result in self.runner.each("mingle_extra_replies", consumer=c, settings=self.settings):
            if result.value is None:
                continue
            if not isinstance(result.value, Mapping):
                error(
                    "mingle: plugin %r returned a %s from mingle_extra_replies, not a mapping; ignored",
                    result.plugin,
                    type(result.value).__name__,
                )
                continue
            for name, body in result.value.items():
                if name in replies or name in extra or name == c.hostname:
                    error(
                        "mingle: plugin %r answered as %s, already answered; ignored",
                        result.plugin,
                        shown(name),
                    )
                elif body is None:
                    if unreached is not None:
                        unreached.append(shown(name, 255))
                else:
                    extra[name] = body
        return extra

    def on_revoke(self, c: Any, ids: tuple[str, ...], terminate: bool) -> None:
        """Tell the ``mingle_on_revoke`` plugins about a ``revoke`` command (never raises)."""
        try:
            for _ in self.runner.each(
                "mingle_on_revoke", consumer=c, ids=ids, terminate=terminate, settings=self.settings
            ):
                pass
        except Exception as exc:  # the revoke itself already stands
            error("mingle: mingle_on_revoke failed: %r", exc)

    # -- the stock API: adapters over a round ---------------------------------

    def on_node_reply(self, c: Any, nodename: str, reply: Any) -> None:
        debug("mingle: processing reply from %s", shown(nodename))
        rnd = self.new_round(c)
        if self._overrides_stock_methods():
            self._stock_path(c, rnd, nodename, reply)
        else:
            rnd.walk({nodename: reply})
        rnd.finish()

    def _stock_path(self, c: Any, rnd: MingleRound, nodename: str, body: Any) -> None:
        """A kept reply through ``sync_with_node`` as stock calls it (for subclasses)."""
        checked = rnd.judge(nodename, body)
        if checked is None:
            return
        revoked: Any = dict(checked.stamps) if checked.stamps is not None else list(checked.ids)
        try:
            self.sync_with_node(c, clock=checked.clock, revoked=revoked, **checked.extra)
        except MemoryError:
            raise
        except Exception as exc:
            logger.exception("mingle: sync with %s failed: %r", checked.nodename, exc)
            return
        rnd.accept(checked)

    def sync_with_node(self, c: Any, clock: int | None = None, revoked: Any = None, **kwargs: Any) -> None:
        self.on_clock_event(c, clock)
        self.on_revoked_received(c, revoked)

    def on_clock_event(self, c: Any, clock: int | None) -> None:
        self.new_round(c).adjust_clock(clock, None)

    def on_revoked_received(self, c: Any, revoked: Any) -> None:
        """Ids given outside a reply: the same checks, each invalid id dropped, then merged."""
        rnd = self.new_round(c)
        name = f"unknown@{c.hostname}"
        try:
            given = check_body(name, {"revoked": revoked}, reply_limits(self.settings, rnd.revoked_set))
        except InvalidReply as exc:
            rnd.reject(name, str(exc))
        else:
            if given.ids:
                rnd.merge(given)
                rnd.accept(given)
        rnd.finish()
