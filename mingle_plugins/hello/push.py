"""After a withheld broadcast: each neighbour is sent the ids it lacks, and only those.

A fast-profile newcomer that holds many ids (a state db, a store, a reconnect) broadcasts its
hello without them (``mingle.withheld``, :mod:`mingle_plugins.wire.protocol`), so that no
neighbour decodes, checks and merges tens of thousands of ids it holds already before it
answers. The digest round then shows what each neighbour holds:

- a neighbour whose digest is this worker's own lacks nothing;
- a neighbour that claims no ids lacks them all;
- a neighbour whose list was fetched (whole, or reconciled: the buckets that differ) lacks the
  ids of this worker that are not in it (for a reconciled list: in the buckets it sent);
- a reply that carries its whole list (a stock neighbour) says the same.

Those are *known*: each gets a ``hello`` of the ids it lacks (:func:`~mingle_plugins.wire.
protocol.push_request`; none when it lacks none), nodes lacking the same ids in one message.
Every other node that may have received the hello, *unknown* (a rejected reply, a list that
did not come, a node that did not answer, or a broker that cannot say how many received it:
RabbitMQ, the other transports), gets what stock would have given it: one broadcast of all the
ids this worker holds, with the known nodes in ``skip``. No node merges less than it would have
from a stock hello; the nodes known to hold the ids merge none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from ..model import Reply
from ..wire import protocol, reconcile

__all__ = ["PushPlan", "plan_push"]


@dataclass
class PushPlan:
    """What to send after a withheld broadcast.

    Attributes:
        directed: ``(nodes, ids)``: the ids these known nodes lack (never empty).
        known: every node whose set is known (sent what it lacks, or lacking nothing).
        unknown: why a broadcast of every held id is needed (``""``: it is not).
    """

    directed: list[tuple[list[str], list[str]]] = field(default_factory=list)
    known: list[str] = field(default_factory=list)
    unknown: str = ""


def _lacking(held: Sequence[str], reply: Reply) -> list[str] | None:
    """The ids of ``held`` that the sender of ``reply`` (a list, whole or reconciled) lacks."""
    theirs: Sequence[str] = reply.carried or reply.ids
    if "partial" in reply.extension:  # its whole set, as the newcomer rebuilt it to verify it
        parsed = reconcile.parse_partial(reply.extension["partial"])
        whole = None if isinstance(parsed, str) else reconcile.rebuild(held, *parsed, theirs)
        if whole is None:
            return None
        theirs = whole
    have = set(theirs)
    return [task_id for task_id in held if task_id not in have]


def plan_push(
    held: Sequence[str],
    kept: Mapping[str, Reply],
    answered: Sequence[str],
    fetched: Mapping[str, str],
    own_digest: Callable[[int], str],
    reached: int | None,
    own: str,
) -> PushPlan:
    """The plan for ``held`` (the ids this worker holds and withheld).

    :param kept: the round's verdicts, by node name.
    :param answered: every name whose reply to the broadcast was kept.
    :param fetched: ``{digest: node}``, the verified list of each digest fetched.
    :param reached: how many subscribers the broker says received the broadcast, or ``None``.
    """
    plan = PushPlan()
    sources = set(fetched.values())  # their verdict is now the list they sent
    by_ids: dict[tuple[str, ...], list[str]] = {}
    unknown: list[str] = []
    for node in answered:
        if node == own:
            continue
        reply = kept.get(node)
        if reply is None:
            unknown.append(node)
            continue
        claim = reply.extension
        lacking: list[str] | None
        if node in sources:
            lacking = _lacking(held, reply)
        elif claim.get("digest") is None:
            # A stock reply carries its whole list; a reply of ours without a digest, nothing known.
            lacking = None if claim else _lacking(held, reply)
        elif claim.get("digest") == own_digest(protocol.claim_version(claim)):
            lacking = []
        elif claim.get("count") == 0:
            lacking = list(held)
        elif str(claim["digest"]) in fetched and fetched[str(claim["digest"])] in kept:
            lacking = _lacking(held, kept[fetched[str(claim["digest"])]])
        else:
            lacking = None
        if lacking is None:
            unknown.append(node)
            continue
        plan.known.append(node)
        if lacking:
            by_ids.setdefault(tuple(lacking), []).append(node)
    plan.directed = [(nodes, list(ids)) for ids, nodes in by_ids.items()]
    if unknown:
        plan.unknown = f"{len(unknown)} nodes answered whose set is not known"
    elif reached is None:
        plan.unknown = "the broker does not say how many nodes received the hello"
    elif (silent := reached - (own in answered) - len(plan.known)) > 0:
        plan.unknown = f"{silent} nodes received the hello and were not heard"
    return plan
