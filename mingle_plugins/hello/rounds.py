"""One mingle round: the path every reply takes, from its body to the revoked set.

A :class:`MingleRound` holds the state of one mingle (the summary, the nonce,
the verdict on each neighbour, the ids waiting for the bulk merge); the
answering side makes one per hello request. A reply walks one way:

1. :meth:`MingleRound.judge`, as the body arrives: checked into a :class:`Reply`
   (:mod:`mingle_plugins.hello.checks`: a broken body is rejected whole, an invalid
   id is dropped alone), trust and signature applied, then ``mingle_on_reply``
   (fail closed). The first body under a name that passes is that neighbour's
   verdict; every other body under the name is dropped and counted. Only kept
   verdicts count towards ending a collection (:mod:`mingle_plugins.hello.collect`)
   and only they can be asked for a full list (:meth:`judge_full`, which
   checks the list against the digest the verdict carries);
2. :meth:`MingleRound.adjust_clock`: ``mingle_adjust_clock``, never backwards;
3. :meth:`MingleRound.merge`: every ``mingle_merge_revoked`` policy keeps or
   drops the node's ids (per node, even where nodes share one full list), the
   share rule bounds what one node may evict of the ids held before the
   mingle, then the kept ids are merged as the installed Celery merges, at once
   (``mingle_merge = "stock"``) or in one union after the last reply (``"bulk"``);
4. :meth:`MingleRound.finish`: the bulk merge, the totals of the summary, and
   one log line for each kind of thing that was dropped.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any

from ..errors import FailedClosed, RejectReply
from ..markers import BUILTIN_NAME
from ..model import MingleSummary, NodeOutcome, Reply, ReplySource, WorkerConsumer
from ..plugins.runner import HookRunner
from ..settings import MingleSettings
from ..wire import compat, protocol, reconcile
from .checks import (
    InvalidReply,
    ReplayGuard,
    check_body,
    check_reply,
    check_trust,
    reply_limits,
    share_wire_lists,
    shown,
)

__all__ = ["MingleRound"]

logger = logging.getLogger("mingle_plugins")

#: Rejections logged one by one at WARNING in one round; the rest are counted in one line.
LOGGED_REJECTIONS = 10


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
    #: The ids held when the round started (what the share rule protects).
    held: frozenset[str] = frozenset()
    #: The verdict on each neighbour: its first reply that passed every check.
    kept: dict[str, Reply] = field(default_factory=dict)
    #: The body each verdict was made from (the collector hands the same object on).
    _bodies: dict[str, Any] = field(default_factory=dict)
    #: The digest body of a node whose verified full list became its verdict since: still its
    #: verdict's body (the walk may hand on either, whichever list the digest round kept).
    _superseded: dict[str, Any] = field(default_factory=dict)
    #: Rejected bodies by name (names with a verdict are counted apart, as dropped duplicates).
    _rejections: dict[str, str] = field(default_factory=dict)
    _sources: dict[str, str] = field(default_factory=dict)
    #: Kept ids waiting for the bulk merge, with their age (senders running this package)...
    pending_aged: dict[str, float] = field(default_factory=dict)
    #: ... or the sender's stamp (5.3-5.6), or ``None`` (stamped now, as stock 5.7).
    pending: dict[str, float | None] = field(default_factory=dict)
    #: ``{digest: node}``: the node whose full list of that digest was merged already.
    _merged_digests: dict[str, str] = field(default_factory=dict)
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
        held = frozenset(compat.revoked_stamps_view(state.revoked))
        return cls(consumer, settings, runner, summary, guard=guard, held=held)

    @property
    def revoked_set(self) -> Any:
        return self.consumer.controller.state.revoked

    # -- 1. the verdict --------------------------------------------------------

    def _reject(self, name: str, reason: str, source: str) -> None:
        """Record a body that is not kept; :meth:`finish` logs the names that have no verdict."""
        logger.debug("mingle: a %s under the name %s is not kept: %s", source, shown(name), reason)
        self._rejections.setdefault(name, reason)
        self._sources[name] = source
        if name not in self.kept:
            self.summary.rejected.setdefault(name, reason)
            self.summary.nodes.setdefault(name, NodeOutcome(status="rejected", reason=reason))

    def reject(self, name: str, reason: str) -> None:
        """Record ids given outside a reply as rejected (``on_revoked_received``)."""
        self._reject(name, reason, "reply")

    def _check(self, nodename: object, body: Any, source: ReplySource) -> Reply:
        """Checks, trust, signature, ``mingle_on_reply``; raise on a verdict against it."""
        limits = reply_limits(self.settings, self.revoked_set)
        reply = check_body(nodename, body, limits, source)
        check_trust(self.settings, reply, self.nonce, self.guard)
        for result in self.runner.each(
            "mingle_on_reply", fail_closed=True, consumer=self.consumer, reply=reply, settings=self.settings
        ):
            if result.value is not None:
                try:
                    reply = check_reply(result.value, limits, reply)
                except InvalidReply as exc:
                    self.runner.record_fault(result.plugin, "mingle_on_reply", "wrong return", str(exc))
                    raise
        return reply

    def _verdict(self, nodename: object, body: Any, source: ReplySource) -> Reply | None:
        name = shown(nodename, 255) if not isinstance(nodename, str) else nodename
        cpu = time.process_time()
        try:
            return self._check(nodename, body, source)
        except (InvalidReply, RejectReply) as exc:
            self._reject(name, str(exc), source)
        except MemoryError:
            raise
        except Exception as exc:  # a check that broke on this body: nothing of it is used
            logger.debug("mingle: traceback of the check of %s", shown(nodename), exc_info=True)
            self._reject(name, f"could not be checked: {exc!r:.200}", source)
        finally:
            self.cpu += time.process_time() - cpu
        return None

    def judge(self, nodename: object, body: Any, source: ReplySource = "reply") -> Reply | None:
        """The verdict on one body: its checked :class:`Reply`, or ``None`` when it is not kept.

        The first body under a name that passes every check is that neighbour's
        verdict (the same body judged again gets it again); any other body under
        a name that has a verdict is dropped and counted, so that a forged reply
        under a neighbour's name, before or after the real one, never displaces it.
        """
        name = nodename if isinstance(nodename, str) else shown(nodename, 255)
        if name in self.kept:
            if body is self._bodies[name] or body is self._superseded.get(name):
                return self.kept[name]
            self.summary.duplicates[name] = self.summary.duplicates.get(name, 0) + 1
            logger.debug("mingle: another reply under the name %s, which has answered: dropped", shown(name))
            return None
        reply = self._verdict(nodename, body, source)
        if reply is None:
            return None
        if name in self._rejections:  # a body under this name was rejected before this one passed
            self.summary.duplicates[name] = self.summary.duplicates.get(name, 0) + 1
            del self._rejections[name]
            self.summary.rejected.pop(name, None)
            self.summary.nodes.pop(name, None)
        self.kept[name] = reply
        self._bodies[name] = body
        share_wire_lists(body, reply)
        return reply

    def judge_full(self, nodename: str, body: Any) -> Reply | None:
        """The verdict on a full list asked of a kept neighbour: checked and verified like any
        reply, and it must be the list its digest promised (same digest, same count).

        On success it becomes the neighbour's verdict; otherwise the neighbour keeps
        its digest-only verdict (no ids) and the reason is logged.
        """
        promised = self.kept.get(nodename)
        if promised is None:
            return None
        reply = self._verdict(nodename, body, "reply")
        problem = "" if reply is not None else self._rejections.pop(nodename, "not kept")
        if reply is not None:
            claim = promised.extension
            carried: Sequence[str] = reply.carried or reply.ids
            if "partial" in reply.extension:  # only the buckets that differ from ours
                whole = self._rebuilt(reply)
                if isinstance(whole, str):
                    problem = whole
                else:
                    carried = whole
            if not problem and (
                protocol.digest_by_version(carried, protocol.claim_version(claim)) != claim.get("digest")
                or len(carried) != claim.get("count")
            ):
                problem = f"a list of {len(carried)} ids that is not the list of its digest"
        if problem:  # the verdict on the node stands; this body is dropped and counted
            logger.debug("mingle: dropped a full list under the name %s: %s", shown(nodename), problem)
            self.summary.duplicates[nodename] = self.summary.duplicates.get(nodename, 0) + 1
            return None
        assert reply is not None
        self.kept[nodename] = reply
        self._superseded.setdefault(nodename, self._bodies[nodename])
        self._bodies[nodename] = body
        return reply

    def _rebuilt(self, reply: Reply) -> list[str] | str:
        """The whole set of a reconciled list (:mod:`~mingle_plugins.wire.reconcile`): the ids
        held when the round started for the buckets not sent, plus the ids sent; or the problem."""
        parsed = reconcile.parse_partial(reply.extension.get("partial"))
        if isinstance(parsed, str):
            return parsed
        count, sent = parsed
        whole = reconcile.rebuild(self.held, count, sent, reply.carried or reply.ids)
        if whole is None:
            return "a reconciled list with ids outside the buckets it says it sent"
        return whole

    def share_list(self, source: str, members: list[str]) -> None:
        """Give ``members`` (kept neighbours that sent the same digest as ``source``) the ids of
        ``source``'s verified full list: equal digests are equal sets."""
        full = self.kept[source]
        for node in members:
            if node != source and node in self.kept:
                self.kept[node] = dataclasses.replace(
                    self.kept[node],
                    ids=full.ids,
                    ages=full.ages,
                    stamps=full.stamps,
                    invalid_ids=full.invalid_ids,
                    invalid_reason=full.invalid_reason,
                    carried=full.carried,
                )

    # -- the walk --------------------------------------------------------------

    def walk(self, replies: Mapping[str, Any], source: ReplySource = "reply") -> None:
        """Every reply of ``replies``, in order: verdict, clock, merge."""
        for nodename, body in replies.items():
            self.reply(nodename, body, source)

    def reply(self, nodename: object, body: Any, source: ReplySource = "reply") -> None:
        """One reply body through the walk (as stock ``on_node_reply`` takes one)."""
        if body:
            reply = self.judge(nodename, body, source)
            if reply is not None:
                self.sync(reply)

    def sync(self, reply: Reply) -> None:
        """Sync with one kept reply: its clock, then its ids."""
        self.adjust_clock(reply.clock, reply)
        self.merge(reply)
        self.accept(reply)

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

    def _has_policies(self) -> bool:
        builtin = self.runner.pm.get_plugin(BUILTIN_NAME)
        return any(impl.plugin is not builtin for impl in self.runner.implementations("mingle_merge_revoked"))

    def _policies(self, reply: Reply) -> tuple[list[str], dict[str, int]]:
        """The ids every policy kept, in the reply's order, and what each policy dropped.

        A policy that fails, or returns something that is not ids, is passed over;
        one marked fail-closed then keeps none of the node's ids.
        """
        ids = reply.ids
        all_ids = set(ids)
        keep = set(all_ids)
        dropped_by: dict[str, int] = {}
        try:
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
                    problem = f"returned {type(result.value).__name__}, not ids"
                    self.runner.record_fault(result.plugin, "mingle_merge_revoked", "wrong return", problem)
                    if result.fail_closed:
                        dropped_by[result.plugin] = len(all_ids)
                        return [], dropped_by
                    continue
                dropped = len(all_ids - kept)
                if dropped:
                    dropped_by[result.plugin] = dropped
                keep &= kept
        except FailedClosed as exc:  # a fail-closed policy failed: it keeps none of them
            dropped_by[exc.plugin] = len(all_ids)
            return [], dropped_by
        return [task_id for task_id in ids if task_id in keep], dropped_by

    def merge(self, reply: Reply, ids: tuple[str, ...] | None = None) -> NodeOutcome:
        """Apply the merge policies to ``ids`` (the reply's own by default) and merge what they keep."""
        cpu = time.process_time()
        reply_ids = reply.ids if ids is None else ids
        if ids is not None and ids != reply.ids:
            reply = dataclasses.replace(reply, ids=ids)
        outcome = self.summary.nodes.setdefault(reply.nodename, NodeOutcome())
        outcome.ids_received += len(reply_ids)
        outcome.ids_invalid += reply.invalid_ids
        revoked_set = self.revoked_set
        policies = self._has_policies()
        digest = reply.extension.get("digest") if reply.source == "reply" else None
        if not policies and isinstance(digest, str) and digest in self._merged_digests and ids is None:
            # The same verified list as a node merged already, and no policy to tell them apart.
            outcome.ids_kept += len(reply_ids)
            self.cpu += time.process_time() - cpu
            return outcome
        kept: Sequence[str]
        if policies and reply_ids:
            saved = compat.revoked_stamps(revoked_set)
            kept, dropped_by = self._policies(reply)
            self._restore_lost(saved)
        else:  # no policy: every id is kept (the common case: no pass over the ids, no copy)
            kept, dropped_by = reply_ids, {}
        if isinstance(digest, str) and reply_ids:
            self._merged_digests.setdefault(digest, reply.nodename)
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
                    compat.merge_aged(revoked_set, [i for i in kept if i in held], ages, unique=True)
            elif stamps is not None:
                pending.update(zip(new, map(stamps.get, new), strict=True))
            else:
                pending.update(dict.fromkeys(new))
        elif ages is not None:
            compat.merge_aged(revoked_set, kept, ages, unique=True)
        else:
            compat.merge_ids(self.consumer.controller.state, kept, reply.stamps)
        self.cpu += time.process_time() - cpu
        return outcome

    def _within_share(
        self, reply: Reply, new: list[str], kept: Sequence[str], outcome: NodeOutcome
    ) -> tuple[list[str], Sequence[str]]:
        """Cut a node's new ids to the free room plus ``mingle_max_share`` of the ids held
        when the round started.

        So no single neighbour (or hello request) can evict more than that share of
        the ids the worker had (3 ids of a statedb survive a node's 50,000): its
        newest ids are kept (the end of the list, as senders send oldest first),
        the rest counted.
        """
        maxlen = self.revoked_set.maxlen
        if not maxlen or not new:
            return new, kept
        free = max(0, maxlen - len(self.revoked_set) - len(self.pending) - len(self.pending_aged))
        allowed = free + int(self.settings.max_share * len(self.held))
        if len(new) <= allowed:
            return new, kept
        over = len(new) - allowed
        cut = set(new[:over])
        outcome.ids_over_share += over
        self.summary.ids_over_share += over
        logger.debug(
            "mingle: %s sent %d new ids, more than the free room (%d) plus mingle_max_share (%g) of "
            "the %d ids held: %d of its oldest are not merged",
            shown(reply.nodename),
            len(new),
            free,
            self.settings.max_share,
            len(self.held),
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

    def finish(self, since_start: bool = False) -> MingleSummary:
        """The bulk merge (once, only new ids), the summary's totals and the round's log lines.

        ``since_start``: ``ids_merged`` is every id held now that was not held when the round
        started (what stock methods of a subclass merged too), not the sum of the nodes' counts.
        """
        cpu = time.process_time()
        state = self.consumer.controller.state
        if self.pending or self.pending_aged:
            logger.debug("mingle: bulk merge of %d new ids", len(self.pending) + len(self.pending_aged))
            compat.merge_aged(state.revoked, list(self.pending_aged), self.pending_aged, unique=True)
            stamps = {i: s for i, s in self.pending.items() if s is not None}
            compat.merge_ids(state, list(self.pending), stamps or None)
            self.pending, self.pending_aged = {}, {}
        state.revoked.purge()  # ids whose revoke time is past the expiry go now
        summary = self.summary
        held_now = compat.revoked_stamps_view(state.revoked)
        rejected = [(n, r) for n, r in self._rejections.items() if n not in self.kept]
        for number, (name, reason) in enumerate(rejected):
            if number < LOGGED_REJECTIONS:
                what = "hello request (ids not merged)" if self._sources.get(name) == "request" else "reply"
                logger.warning("mingle: rejected the %s of %s: %s", what, shown(name), reason)
        if len(rejected) > LOGGED_REJECTIONS:
            logger.warning(
                "mingle: %d more replies rejected (DEBUG shows each)", len(rejected) - LOGGED_REJECTIONS
            )
        for name, outcome in summary.nodes.items():
            if outcome.status != "accepted":
                continue
            summary.ids_received += outcome.ids_received
            summary.ids_dropped += outcome.ids_received - outcome.ids_kept
            summary.ids_invalid += outcome.ids_invalid
            for plugin, count in outcome.dropped_by.items():
                summary.dropped_by[plugin] = summary.dropped_by.get(plugin, 0) + count
            if outcome.ids_merged and name not in summary.merged_from:
                summary.merged_from.append(name)
        if summary.duplicates:
            logger.warning(
                "mingle: dropped %d other replies under the names of %d neighbours that answered "
                "(forged or repeated; each neighbour's first reply that passes the checks is kept): %s",
                sum(summary.duplicates.values()),
                len(summary.duplicates),
                ", ".join(shown(n) for n in list(summary.duplicates)[:5]),
            )
        if summary.ids_invalid:
            invalid = {n: o for n, o in summary.nodes.items() if o.ids_invalid and o.status == "accepted"}
            first = next((self.kept[n].invalid_reason for n in invalid if n in self.kept), "")
            logger.warning(
                "mingle: dropped %d invalid revoked ids from %d nodes (the valid ids of those replies "
                "are kept): %s%s",
                summary.ids_invalid,
                len(invalid),
                ", ".join(f"{shown(n)}: {o.ids_invalid}" for n, o in list(invalid.items())[:5]),
                f"; first: {first}" if first else "",
            )
        # Counted, not intersected: no set of 50,000 ids at the end of a restart's mingle.
        held_kept = sum(map(held_now.__contains__, self.held))
        summary.held_kept = held_kept
        if summary.ids_over_share:
            over = {n: o.ids_over_share for n, o in summary.nodes.items() if o.ids_over_share}
            logger.warning(
                "mingle: %d new ids not merged: more than mingle_max_share (%g) of the %d ids held (beyond "
                "the free room), from one node (%s); %d of the %d ids held before are still held",
                summary.ids_over_share,
                self.settings.max_share,
                len(self.held),
                ", ".join(f"{shown(n)}: {count}" for n, count in over.items())[:300],
                held_kept,
                len(self.held),
            )
        summary.revoked_after = len(state.revoked)
        if since_start:  # |now - held| = |now| - |now & held|, without either set
            summary.ids_merged = len(held_now) - held_kept
        else:
            summary.ids_merged = sum(o.ids_merged for o in summary.nodes.values() if o.status == "accepted")
        summary.clock_after = self.consumer.app.clock.value
        summary.plugin_faults = self.runner.fault_list()
        self.cpu += time.process_time() - cpu
        summary.merge_cpu = self.cpu
        summary.elapsed = time.monotonic() - self.started
        return summary
