"""This worker's own revoked set as its digests see it, kept up to date per revoke and expiry.

A neighbour answers every newcomer's digest request with the digest of its whole revoked set.
Here the set's dict is observed (:class:`~mingle_plugins.wire.compat.ObservedStamps`, put in
place the first time a digest is asked for: a worker that is never asked pays nothing): each
revoke, merge, expiry or eviction notes its id, and the next digest request puts only those ids
in their leaves (:class:`~mingle_plugins.wire.buckets.BucketTree`) and hashes those leaves
again. A request with no change since the last one costs a look at an empty list. The count of
the tree is checked against the set's own length at every request, so that a change that went
past the notes (a ``LimitedSet`` of another release) is found, and the tree made again.

The sorted digest (version 2, for newcomers of 0.1) has no such form: it is made again when the
tree says the set changed, and kept until the next change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from celery.utils.log import get_logger

from ..wire import compat, protocol
from ..wire.buckets import BucketTree

__all__ = ["OwnDigests", "own_digests"]

logger = get_logger(__name__)


@dataclass
class OwnDigests:
    """The digests of one revoked set: its :class:`BucketTree`, and the sorted digest of a generation."""

    tree: BucketTree
    _sorted: tuple[int, str, int] | None = None  # (generation, digest, count)

    def bucketed(self) -> tuple[str, int]:
        """``(bucketed digest, count of string ids)``."""
        return self.tree.digest(), self.tree.strings

    def sorted(self, data: Any) -> tuple[str, int]:
        """``(sorted digest, count)`` of ``data``'s string keys (made again only after a change)."""
        made = self._sorted
        if made is None or made[0] != self.tree.generation:
            strings = [task_id for task_id in data if isinstance(task_id, str)]
            made = self._sorted = (self.tree.generation, protocol.digest(strings), len(strings))
        return made[1], made[2]


def own_digests(revoked_set: Any) -> OwnDigests:
    """The :class:`OwnDigests` of ``revoked_set`` (a ``LimitedSet``), brought up to date with the
    ids that changed since the last call; made from every id the first time (or when the notes
    could not say what changed)."""
    data = compat.observed_stamps(revoked_set)
    own: OwnDigests | None = data.index
    changed = data.drain()
    if own is None or changed is None:
        own = data.index = OwnDigests(BucketTree.of(data))
        return own
    tree = own.tree
    for key in changed:
        tree.sync(key, key in data)
    if tree.total != len(data):  # a change the notes did not see: never a stale digest
        logger.debug("mingle: the digest of this worker's revoked ids was made again (a change went unnoted)")
        own.tree = BucketTree.of(data)
        own._sorted = None
    return own
