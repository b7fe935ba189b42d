"""The answering side: this worker's ``hello`` handler, for a neighbour that mingles.

A neighbour's hello request carries its revoked ids, which stock Celery's
handler merges with no check. Here they take the path every reply takes
(:class:`~mingle_plugins.hello.rounds.MingleRound`: checks, trust, ``mingle_on_reply``,
the merge policies, the installed Celery's merge), as a :class:`Reply` whose
``source`` is ``"request"``; the stock handler then answers with ``revoked=None``.
A push (``mingle.push``: the ids a withheld broadcast did not carry,
:mod:`mingle_plugins.hello.push`) is merged the same way and answered by nobody.
A request of this package's extension (``mingle``) gets a digest (kept up to date per
change of the revoked set: :mod:`mingle_plugins.answering.own_set`), the ids' ages
and a signature (:mod:`mingle_plugins.wire.protocol`); a stock request gets the
stock reply.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from celery.utils.log import get_logger
from celery.worker import control as stock_control

from ..hello.checks import InvalidReply, check_nodename, shown
from ..model import Reply
from ..wire import compat, protocol
from ..wire.bulk import gc_paused
from .own_set import own_digests

if TYPE_CHECKING:
    from .step import AnsweringStep

__all__ = ["make_hello"]

logger = get_logger(__name__)


def take_request_ids(step: AnsweringStep, consumer: Any, from_node: Any, revoked: Any, ext: Any) -> None:
    """Put the ids of one hello request through the reply path; log what came of them."""
    rnd = step.new_round(consumer)
    body = {"revoked": revoked, "mingle": ext if isinstance(ext, Mapping) else None}
    reply = rnd.judge(from_node, body, source="request")
    if reply is None:  # logged by finish: "rejected the hello request of NODE (ids not merged)"
        reasons = dict(rnd.summary.rejected)
        rnd.finish()
        for node, reason in reasons.items():
            step.requests_refused.add(node, reason)
        return
    reply = _aged_since_sent(reply)
    outcome = rnd.merge(reply)
    rnd.accept(reply)
    rnd.finish()
    logger.info(
        "mingle: hello from %s: %d ids received, %d merged, %d dropped by policy%s",
        shown(from_node),
        outcome.ids_received,
        outcome.ids_merged,
        outcome.ids_received - outcome.ids_kept,
        f", {outcome.ids_invalid} invalid ids dropped" if outcome.ids_invalid else "",
    )


def _aged_since_sent(reply: Reply) -> Reply:
    """A signed request's ages count from its signed send time: a request that arrives (or is
    replayed) later cannot make its ids younger than they are."""
    sent_at = reply.extension.get("sent_at") if "request_signature" in reply.extension else None
    late = time.time() - sent_at if isinstance(sent_at, (int, float)) else 0.0
    if reply.ages is None or late <= 1:
        return reply
    return replace(reply, ages={task_id: age + late for task_id, age in reply.ages.items()})


def make_hello(step: AnsweringStep, stock_hello: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the stock ``hello`` handler: the request's ids go through the reply path."""

    def hello(state: Any, from_node: str, revoked: Any = None, mingle: Any = None, **kwargs: Any) -> Any:
        with gc_paused():  # lists of 50,000 ids both ways: see mingle_plugins.wire.bulk
            return answer(state, from_node, revoked, mingle, **kwargs)

    def answer(state: Any, from_node: str, revoked: Any, mingle: Any, **kwargs: Any) -> Any:
        try:
            check_nodename(from_node)
        except InvalidReply as exc:  # stock would log the name raw ("sync with <name>")
            logger.warning("mingle: refused a hello request from %s: %s", shown(from_node), exc)
            return None
        if from_node == state.hostname:
            twin = mingle.get("instance") if isinstance(mingle, Mapping) else None
            if isinstance(twin, str) and twin and twin != protocol.INSTANCE:
                # Another process under this name: say so to it, and here (stock answers None).
                step.same_name.heard(state.hostname, twin, "sent a hello")
                return {"mingle": {"v": protocol.VERSION, "same_name": protocol.INSTANCE}}
        elif isinstance(mingle, Mapping) and mingle.get("push") is True:
            # Ids only, after a withheld broadcast (mingle_plugins.hello.push): no reply asked.
            skip = mingle.get("skip")
            if isinstance(skip, list) and state.hostname in skip:
                logger.debug("mingle: ids of %s skipped: sent what this worker lacked", shown(from_node))
            elif revoked:
                take_request_ids(step, state.consumer, from_node, revoked, mingle)
            return None
        else:
            step.presence.saw_request(from_node, mingle)
            if revoked:
                take_request_ids(step, state.consumer, from_node, revoked, mingle)
        if (
            stock_hello is stock_control.hello
            and isinstance(mingle, Mapping)
            and mingle.get("want") == "digest"
        ):
            reply = compat.hello_reply_without_ids(state, from_node)
        else:
            reply = stock_hello(state, from_node, revoked=None, **kwargs)
        if reply is None or not isinstance(mingle, Mapping):
            return reply
        revoked_set = state.consumer.controller.state.revoked
        extended = protocol.extend_reply(
            reply,
            mingle,
            state.hostname,
            step.settings.hmac_keys,
            ages=lambda ids: compat.iter_revoked_ages(revoked_set, ids),
            runs=lambda ids: compat.revoked_age_runs(revoked_set, ids),
            digest_of=lambda: own_digests(revoked_set).sorted(compat.revoked_stamps_view(revoked_set)),
            buckets_of=lambda: own_digests(revoked_set).tree,
            bucketed_of=lambda: own_digests(revoked_set).bucketed(),
        )
        # Outside the signature: a count that ends a collection early, as any reply can on Redis.
        extended["mingle"].update(step.presence.answer_fields(state.consumer))
        return extended

    return hello
