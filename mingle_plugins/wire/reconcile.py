"""Set reconciliation of the digest round: a newcomer that holds most ids fetches only the rest.

The method is bucketed digest comparison, the one-level form of a Merkle (hash) tree
comparison (R. C. Merkle, "A Digital Signature Based on a Conventional Encryption Function",
CRYPTO '87; used for the same purpose by Amazon's Dynamo, DeCandia et al., SOSP 2007, §4.7,
and by Cassandra's anti-entropy repair). Both sides put each id in one of ``B`` buckets
(CRC-32 of the id, modulo ``B``) and hash each bucket (its leaves of
:mod:`mingle_plugins.wire.buckets`, the partition the bucketed digest is made of too):

- the newcomer's full-list request carries ``mingle.have = {"buckets": B, "digests": D}``,
  ``D`` the base64 of its ``B`` bucket digests (4 bytes each:
  :meth:`~mingle_plugins.wire.buckets.BucketTree.bucket_digests`);
- a neighbour of this version answers with the ids of the buckets whose digest differs from
  the newcomer's only, and ``mingle.partial = {"buckets": B, "sent": [i, ...]}`` (the bucket
  numbers it sent, signed with the reply); when more than half the buckets differ it sends
  its full list, as an older neighbour (which ignores ``have``) always does;
- the newcomer rebuilds the neighbour's whole set (its own ids of the buckets not sent, plus
  the ids sent) and checks it against the digest and count the neighbour advertised
  (:func:`mingle_plugins.wire.protocol.digest`, SHA-256 of the whole sorted set), exactly
  as it checks a full list. A short bucket digest that collides, a lie about which buckets
  are equal, or ids that changed meanwhile make that check fail: the list is dropped and
  the next node asked for its *full* list. A collision never merges a wrong id.

What it does not do: ids this worker holds already keep the ages (so the expiry) they have;
a full list would have brought the neighbour's ages for them too (docs/performance.md).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from typing import Any

from .buckets import BUCKET_DIGEST_BYTES, LEAVES, BucketTree, leaf_of

__all__ = [
    "DIGEST_BYTES",
    "MIN_HELD",
    "answer",
    "bucket_of",
    "bucket_count",
    "offer",
    "parse_partial",
    "rebuild",
]

#: Bytes of each bucket digest: a collision costs a fallback to the full list, never an id.
DIGEST_BYTES = BUCKET_DIGEST_BYTES
#: Below this many held ids a full list is small: no reconciliation is offered.
MIN_HELD = 1000
#: Ids per bucket aimed at; the bucket count is a power of two between these bounds.
IDS_PER_BUCKET = 24
MIN_BUCKETS, MAX_BUCKETS = 64, LEAVES


def bucket_count(held: int) -> int:
    """The number of buckets for a set of ``held`` ids (a power of two, 64 to 4096)."""
    b = MIN_BUCKETS
    while b < MAX_BUCKETS and b * IDS_PER_BUCKET < held:
        b *= 2
    return b


def bucket_of(task_id: str, count: int) -> int:
    """The bucket of ``task_id`` among ``count`` (a power of two up to :data:`LEAVES`): its
    CRC-32, modulo ``count``, so the union of the leaves ``j`` with ``j % count`` equal to it."""
    return leaf_of(task_id) & (count - 1)


def offer(held: Collection[str], claimed: int, tree: BucketTree | None = None) -> dict[str, Any] | None:
    """The ``have`` block of a full-list request; ``None`` when a full list is as cheap: fewer
    than :data:`MIN_HELD` ids held, or fewer than half of the largest count a neighbour claimed.
    ``tree``: the :class:`BucketTree` of ``held``, when the caller made it already."""
    if len(held) < MIN_HELD or 2 * len(held) < claimed:
        return None
    count = bucket_count(max(len(held), claimed))
    digests = (tree or BucketTree.of(held)).bucket_digests(count)
    return {"buckets": count, "digests": base64.b64encode(digests).decode()}


def _parse_have(have: Any) -> tuple[int, bytes] | None:
    if not isinstance(have, Mapping):
        return None
    count, encoded = have.get("buckets"), have.get("digests")
    if type(count) is not int or not MIN_BUCKETS <= count <= MAX_BUCKETS or count & (count - 1):
        return None
    if not isinstance(encoded, str) or len(encoded) > 4 * (count * DIGEST_BYTES + 2) // 3 + 4:
        return None
    try:
        digests = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(digests) != count * DIGEST_BYTES:
        return None
    return count, digests


def answer(have: Any, tree_of: Callable[[], BucketTree]) -> tuple[list[str], dict[str, Any]] | None:
    """The answering side: the ids of the buckets that differ from the newcomer's, and the
    ``partial`` block; ``None`` (send the full list) for a ``have`` this version does not read
    or when more than half the buckets differ.

    ``tree_of()`` returns this worker's :class:`BucketTree` (kept per change: only when the
    ``have`` is read).
    """
    parsed = _parse_have(have)
    if parsed is None:
        return None
    count, theirs = parsed
    tree = tree_of()
    mine, size = tree.bucket_digests(count), DIGEST_BYTES
    sent = [i for i in range(count) if mine[i * size : (i + 1) * size] != theirs[i * size : (i + 1) * size]]
    if 2 * len(sent) > count:
        return None
    ids = [task_id for i in sent for task_id in tree.bucket_ids(i, count)]
    return ids, {"buckets": count, "sent": sent}


def parse_partial(partial: Any) -> tuple[int, list[int]] | str:
    """The ``partial`` block of a reply: ``(bucket count, bucket numbers sent)``, or the problem."""
    if not isinstance(partial, Mapping):
        return "partial is not a mapping"
    count, sent = partial.get("buckets"), partial.get("sent")
    if type(count) is not int or not MIN_BUCKETS <= count <= MAX_BUCKETS or count & (count - 1):
        return f"partial names {count!r} buckets"
    if not isinstance(sent, list) or len(sent) > count:
        return "partial.sent is not a list of bucket numbers"
    if not all(type(i) is int and 0 <= i < count for i in sent) or len(set(sent)) != len(sent):
        return "partial.sent holds a bad or repeated bucket number"
    return count, sent


def rebuild(held: Iterable[str], count: int, sent: Sequence[int], ids: Sequence[str]) -> list[str] | None:
    """The neighbour's whole set: the held ids of the buckets it did not send, plus ``ids``;
    ``None`` when an id sent is not in a bucket it says it sent."""
    sent_set = set(sent)
    mask = count - 1
    if any((leaf_of(task_id) & mask) not in sent_set for task_id in ids):
        return None
    kept = [task_id for task_id in held if (leaf_of(task_id) & mask) not in sent_set]
    return kept + list(ids)
