"""One mingle round: the path every reply takes, from its body to the revoked set.

A :class:`MingleRound` holds the state of one mingle (the summary, the nonce,
the ids waiting for the bulk merge); the answering side makes one per hello
request. Every reply, and the ids of every hello request, take the same path:

1. :meth:`MingleRound.receive`: checked whole into a :class:`Reply`
   (:mod:`mingle_plugins.checks`), trust settings applied, then
   ``mingle_on_reply`` (which may transform or reject it; fail closed);
2. :meth:`MingleRound.adjust_clock`: ``mingle_adjust_clock``, never backwards;
3. :meth:`MingleRound.merge`: every ``mingle_merge_revoked`` policy keeps or
   drops the reply's ids (counted per node and per plugin), then the kept ids
   are merged as the installed Celery merges, at once (``mingle_merge =
   "stock"``) or in one union after the last reply (``"bulk"``);
4. :meth:`MingleRound.finish`: the bulk merge and the totals of the summary.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, Literal

from . import compat
from .checks import (
    Duplicates,
    InvalidReply,
    ReplayGuard,
    check_body,
    check_reply,
    check_trust,
    reply_limits,
    shown,
)
from .errors import RejectReply
from .loader import BUILTIN_NAME
from .model import MingleSummary, NodeOutcome, Reply, WorkerConsumer
from .runner import HookRunner
from .settings import MingleSettings

__all__ = ["MingleRound"]

logger = logging.getLogger("mingle_plugins")


@dataclass
class MingleRound:
    """The state of one mingle (or of one hello request on the answering side)."""

    consumer: WorkerConsumer
    settings: MingleSettings
    runner: HookRunner
    summary: MingleSummary
    #: The nonce this mingle's signed replies must cover.
    nonce: str | None = None
    #: The worker's record of signed requests seen (the answering side).
    guard: ReplayGuard | None = None
    #: The reply being synced (``sync_with_node``), for the stock-API methods.
    current: Reply | None = None
    #: Kept ids waiting for the bulk merge, with their age (senders running this package)...
    pending_aged: dict[str, float] = field(default_factory=dict)
    #: ... or the sender's stamp (5.3-5.6), or ``None`` (stamped now, as stock 5.7).
    pending: dict[str, float | None] = field(default_factory=dict)
    started: float = field(default_factory=time.monotonic)
    cpu: float = 0.0

    @classmethod
    def start(
        cls,
        consumer: WorkerConsumer,
        settings: MingleSettings,
        runner: HookRunner,
        transport: str,
        guard: ReplayGuard | None = None,
    ) -> MingleRound:
        state = consumer.controller.state
        summary = MingleSummary(
            hostname=consumer.hostname,
            transport=transport,
            plugins=runner.pm.loaded_names(),
            revoked_before=len(state.revoked),
            clock_before=consumer.app.clock.value,
        )
        return cls(consumer, settings, runner, summary, guard=guard)

    @property
    def revoked_set(self) -> Any:
        return self.consumer.controller.state.revoked

    # -- 1. receive ------------------------------------------------------------

    def reject(self, nodename: object, reason: str, source: str = "reply") -> None:
        name = shown(nodename, 255)
        what = "hello request (ids not merged)" if source == "request" else "reply"
        logger.warning("mingle: rejected the %s of %s: %s", what, shown(nodename), reason)
        self.summary.rejected[name] = reason
        self.summary.nodes[name] = NodeOutcome(status="rejected", reason=reason)

    def receive(
        self, nodename: object, body: Any, source: Literal["reply", "request"] = "reply"
    ) -> Reply | None:
        """Check one body whole, apply trust and ``mingle_on_reply``; ``None`` if rejected."""
        cpu = time.process_time()
        try:
            limits = reply_limits(self.settings, self.revoked_set)
            reply = check_body(nodename, body, limits, source)
            check_trust(self.settings, reply, self.nonce, self.guard)
            for result in self.runner.each(
                "mingle_on_reply",
                fail_closed=True,
                consumer=self.consumer,
                reply=reply,
                settings=self.settings,
            ):
                if result.value is not None:
                    reply = check_reply(result.value, limits, reply)
        except (InvalidReply, RejectReply) as exc:
            self.reject(nodename, str(exc), source)
            return None
        except MemoryError:
            raise
        except Exception as exc:  # a check that broke on this body: nothing of it is used
            logger.debug("mingle: traceback of the check of %s", shown(nodename), exc_info=True)
            self.reject(nodename, f"could not be checked: {exc!r:.200}", source)
            return None
        finally:
            self.cpu += time.process_time() - cpu
        return reply

    def choose(self, nodename: str, value: Any) -> Any:
        """One body for a node name that answered more than once: the first that passes the
        checks and the trust settings (so an unsigned or badly signed reply never displaces a
        signed one); every extra reply is logged and counted."""
        if not isinstance(value, Duplicates):
            return value
        limits = reply_limits(self.settings, self.revoked_set)
        chosen: Any = None
        problems: list[str] = []
        for body in value:
            try:
                check_trust(self.settings, check_body(nodename, body, limits), self.nonce)
            except (InvalidReply, RejectReply) as exc:
                problems.append(str(exc))
                continue
            if chosen is None:
                chosen = body
            else:
                problems.append("another reply that passes the checks")
        self.summary.duplicates[shown(nodename, 255)] = len(value) - 1
        logger.warning(
            "mingle: %d replies under the name %s: %s; dropped: %s",
            len(value),
            shown(nodename),
            "kept the first that passes the checks" if chosen is not None else "none passes the checks",
            "; ".join(problems)[:300],
        )
        return chosen if chosen is not None else value[0]

    # -- 2. clock --------------------------------------------------------------

    def adjust_clock(self, clock: int | None, reply: Reply | None) -> None:
        app_clock = self.consumer.app.clock
        before = app_clock.value
        self.runner.first(
            "mingle_adjust_clock", consumer=self.consumer, clock=clock, reply=reply, settings=self.settings
        )
        if app_clock.value < before:  # a Lamport clock never goes back
            logger.error("mingle: a mingle_adjust_clock plugin moved the clock back; restored")
            app_clock.adjust(before)

    # -- 3. merge --------------------------------------------------------------

    def _policies(self, reply: Reply) -> tuple[list[str], dict[str, int]]:
        """The ids every policy kept, in the reply's order, and what each policy dropped."""
        ids = reply.ids
        all_ids = set(ids)
        keep = set(all_ids)
        dropped_by: dict[str, int] = {}
        for result in self.runner.each(
            "mingle_merge_revoked", consumer=self.consumer, reply=reply, ids=ids, settings=self.settings
        ):
            if result.value is None:
                continue
            try:
                kept = set(result.value) if not isinstance(result.value, (str, bytes)) else None
            except TypeError:
                kept = None
            if kept is None:
                logger.error(
                    "mingle: plugin %r returned %s from mingle_merge_revoked, not ids; ignored",
                    result.plugin,
                    type(result.value).__name__,
                )
                continue
            dropped = len(all_ids - kept)
            if dropped:
                dropped_by[result.plugin] = dropped
            keep &= kept
        return [task_id for task_id in ids if task_id in keep], dropped_by

    def merge(self, reply: Reply, ids: tuple[str, ...] | None = None) -> NodeOutcome:
        """Apply the merge policies to ``ids`` (the reply's own by default) and merge what they keep."""
        cpu = time.process_time()
        reply_ids = reply.ids if ids is None else ids
        if ids is not None and ids != reply.ids:
            reply = dataclasses.replace(reply, ids=ids)
        outcome = self.summary.nodes.setdefault(reply.nodename, NodeOutcome())
        outcome.ids_received += len(reply_ids)
        revoked_set = self.revoked_set
        policies = any(
            impl.plugin is not self.runner.pm.get_plugin(BUILTIN_NAME)
            for impl in self.runner.implementations("mingle_merge_revoked")
        )
        if policies and reply_ids:
            saved = compat.revoked_stamps(revoked_set)
            kept, dropped_by = self._policies(reply)
            self._restore_lost(saved)
        else:  # no policy: every id is kept (the common case, without a pass over the ids)
            kept, dropped_by = list(reply_ids), {}
        held, pending, aged = compat.revoked_stamps_view(revoked_set), self.pending, self.pending_aged
        new = [i for i in kept if i not in held and i not in pending and i not in aged]
        new, kept = self._within_share(reply, new, kept, outcome)
        outcome.ids_kept += len(kept)
        outcome.ids_merged += len(new)
        for plugin, count in dropped_by.items():
            outcome.dropped_by[plugin] = outcome.dropped_by.get(plugin, 0) + count
            logger.info("mingle: plugin %r dropped %d ids of %s", plugin, count, shown(reply.nodename))
        stamps, ages = reply.stamps, reply.ages
        if self.settings.merge == "bulk":
            if ages is not None:
                aged.update(zip(new, map(ages.get, new, repeat(0)), strict=True))
                if len(new) < len(kept):  # an id known already keeps the older revoke time of the two
                    compat.merge_aged(revoked_set, [i for i in kept if i in held], ages)
            elif stamps is not None:
                pending.update(zip(new, map(stamps.get, new), strict=True))
            else:
                pending.update(dict.fromkeys(new))
        elif ages is not None:
            compat.merge_aged(revoked_set, kept, ages)
        else:
            compat.merge_ids(self.consumer.controller.state, kept, reply.stamps)
        self.cpu += time.process_time() - cpu
        return outcome

    def _within_share(
        self, reply: Reply, new: list[str], kept: list[str], outcome: NodeOutcome
    ) -> tuple[list[str], list[str]]:
        """Cut a node's new ids to the free room plus ``mingle_max_share`` of the set's size.

        So no single neighbour (or hello request) can flush the ids the worker has: its newest
        ids are kept (the end of the list, as senders send oldest first), the rest counted.
        """
        maxlen = self.revoked_set.maxlen
        if not maxlen or not new:
            return new, kept
        free = max(0, maxlen - len(self.revoked_set) - len(self.pending) - len(self.pending_aged))
        allowed = free + int(self.settings.max_share * maxlen)
        if len(new) <= allowed:
            return new, kept
        over = len(new) - allowed
        cut = set(new[:over])
        outcome.ids_over_share += over
        self.summary.ids_over_share += over
        logger.debug(
            "mingle: %s sent %d new ids, more than the free room (%d) plus mingle_max_share (%g) of "
            "the revoked set (%d): %d of its oldest are not merged",
            shown(reply.nodename),
            len(new),
            free,
            self.settings.max_share,
            maxlen,
            over,
        )
        return new[over:], [i for i in kept if i not in cut]

    def _restore_lost(self, saved: dict[str, Any]) -> None:
        """Put back ids a plugin removed from the revoked set (a policy must only decide)."""
        revoked_set = self.revoked_set
        lost = [task_id for task_id in saved if task_id not in revoked_set]
        if lost:
            logger.error("mingle: a mingle_merge_revoked plugin removed %d revoked ids; restored", len(lost))
            for task_id in lost:
                revoked_set.add(task_id, now=saved[task_id][0])

    def accept(self, reply: Reply) -> None:
        """Record a reply as accepted (its clock and ids went through)."""
        outcome = self.summary.nodes.setdefault(reply.nodename, NodeOutcome())
        outcome.status = "accepted"
        if reply.nodename not in self.summary.accepted:
            self.summary.accepted.append(reply.nodename)

    # -- 4. finish -------------------------------------------------------------

    def finish(self, before: set[str] | None = None) -> MingleSummary:
        """The bulk merge (once, only new ids) and the summary's totals."""
        cpu = time.process_time()
        state = self.consumer.controller.state
        if self.pending or self.pending_aged:
            logger.debug("mingle: bulk merge of %d new ids", len(self.pending) + len(self.pending_aged))
            compat.merge_aged(state.revoked, list(self.pending_aged), self.pending_aged)
            stamps = {i: s for i, s in self.pending.items() if s is not None}
            compat.merge_ids(state, list(self.pending), stamps or None)
            self.pending, self.pending_aged = {}, {}
        state.revoked.purge()  # ids whose revoke time is past the expiry go now
        summary = self.summary
        if summary.ids_over_share:
            over = {n: o.ids_over_share for n, o in summary.nodes.items() if o.ids_over_share}
            logger.warning(
                "mingle: %d new ids not merged: more than mingle_max_share (%g) of the full revoked set "
                "from one node (%s); the ids this worker had are kept",
                summary.ids_over_share,
                self.settings.max_share,
                ", ".join(f"{shown(n)}: {count}" for n, count in over.items())[:300],
            )
        for name, outcome in summary.nodes.items():
            if outcome.status != "accepted":
                continue
            summary.ids_received += outcome.ids_received
            summary.ids_dropped += outcome.ids_received - outcome.ids_kept
            for plugin, count in outcome.dropped_by.items():
                summary.dropped_by[plugin] = summary.dropped_by.get(plugin, 0) + count
            if outcome.ids_merged and name not in summary.merged_from:
                summary.merged_from.append(name)
        summary.revoked_after = len(state.revoked)
        if before is not None:
            summary.ids_merged = len(compat.revoked_stamps_view(state.revoked).keys() - before)
        else:
            summary.ids_merged = sum(o.ids_merged for o in summary.nodes.values() if o.status == "accepted")
        summary.clock_after = self.consumer.app.clock.value
        self.cpu += time.process_time() - cpu
        summary.merge_cpu = self.cpu
        summary.elapsed = time.monotonic() - self.started
        return summary
