"""The one partition of revoked ids that every digest of this release is made of, both ways.

Each id falls in one of :data:`LEAVES` leaves (the CRC-32 of its UTF-8, modulo 4096); a
leaf's hash is the SHA-256 of its ids, sorted, each followed by a newline. Two wire formats
are read off the leaves, on the side that makes them and on the side that checks them:

- the **bucketed digest** (digest version 3, :func:`bucketed_digest`): the SHA-256 of a seed
  and, leaf by leaf in order, the number and hash of each leaf that holds ids. Equal sets give
  equal digests whatever their order or the worker (a hash tree of two levels over a partition
  fixed by the ids alone, as collision-resistant as SHA-256: unlike a sum or an XOR of per-id
  hashes, no other set can be crafted to the same digest);
- the **bucket digests of set reconciliation** (:mod:`mingle_plugins.wire.reconcile`): with
  ``B`` buckets (a power of two up to 4096), bucket ``i`` is the union of the leaves ``j`` with
  ``j % B == i`` (the CRC-32 modulo ``B``), and its digest the first 4 bytes of the SHA-256 of
  the number and hash of each of those leaves that holds ids.

A :class:`BucketTree` keeps a set's leaves and hashes: an id added or gone changes its leaf
only, which is hashed again (about a dozen ids at 50,000) when a digest is next asked for; the
top digest is made again from the cached leaf hashes. A worker keeps one for its own revoked
set, fed with the ids that changed (:mod:`mingle_plugins.answering.own_set`).
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Iterable
from typing import Any

__all__ = [
    "BUCKET_DIGEST_BYTES",
    "EMPTY_BUCKETED_DIGEST",
    "LEAVES",
    "BucketTree",
    "bucketed_digest",
    "leaf_of",
]

#: Leaves of the partition; a power of two, and the most reconciliation buckets there can be.
LEAVES = 4096
_MASK = LEAVES - 1
#: Bytes of each reconciliation bucket digest: a collision costs a full list, never an id.
BUCKET_DIGEST_BYTES = 4
_SEED = b"mingle-bucketed-digest-v3:crc32/4096\n"


def _encoded(task_id: str) -> bytes:
    return task_id.encode("utf-8", "surrogatepass")


def leaf_of(task_id: str) -> int:
    """The leaf of ``task_id``: its CRC-32, modulo :data:`LEAVES`."""
    return zlib.crc32(task_id.encode("utf-8", "surrogatepass")) & _MASK


def _leaf_entry(j: int, members: list[str]) -> bytes:
    """Leaf ``j``'s part of a digest: its number (2 bytes) and the SHA-256 of its ids, sorted,
    each followed by a newline; ``b""`` for an empty leaf (it is left out)."""
    if not members:
        return b""
    return j.to_bytes(2, "big") + hashlib.sha256(_encoded("\n".join(sorted(members)) + "\n")).digest()


class BucketTree:
    """The leaves of a set of string ids, their hashes, and the digests made of them.

    ``sync(task_id, present)`` tells it that ``task_id`` is (or is no longer) in the set; only
    an effective change dirties its leaf. ``digest()``, ``bucket_digests(B)`` hash the dirty
    leaves again, once, and cache what they make until the next change.
    """

    __slots__ = ("_by_count", "_dirty", "_entries", "_leaves", "_others", "_top", "generation", "strings")

    def __init__(self) -> None:
        self._leaves: list[list[str]] = [[] for _ in range(LEAVES)]
        self._entries: list[bytes] = [b""] * LEAVES
        self._dirty: set[int] = set()  # the leaves whose entry is to be made again
        self._others: set[Any] = set()  # keys that are not strings: counted, not hashed
        self._top: str | None = None
        self._by_count: dict[int, bytes] = {}
        #: how many string ids the set holds
        self.strings = 0
        #: incremented on every effective change (a cache keyed by it knows when to remake)
        self.generation = 0

    @classmethod
    def of(cls, ids: Iterable[Any]) -> BucketTree:
        """The tree of ``ids`` (each once: a set, a dict's keys, a reply's list), in one pass."""
        tree = cls()
        leaves, crc, others = tree._leaves, zlib.crc32, tree._others
        for task_id in ids:
            if isinstance(task_id, str):  # leaf_of, inlined: one call less per id
                leaves[crc(task_id.encode("utf-8", "surrogatepass")) & _MASK].append(task_id)
            else:
                others.add(task_id)
        tree.strings = sum(map(len, leaves))
        tree._dirty = {j for j, leaf in enumerate(leaves) if leaf}
        return tree

    @property
    def total(self) -> int:
        """How many keys the set holds, strings or not (to check against the set's own length)."""
        return self.strings + len(self._others)

    def sync(self, key: Any, present: bool) -> None:
        """``key`` is now in the set (``present``) or not; a no-op when the tree says so already."""
        if not isinstance(key, str):
            if present != (key in self._others):
                (self._others.add if present else self._others.discard)(key)
            return
        j = leaf_of(key)
        leaf = self._leaves[j]
        if present == (key in leaf):
            return
        if present:
            leaf.append(key)
            self.strings += 1
        else:
            leaf.remove(key)
            self.strings -= 1
        self._dirty.add(j)
        self._top = None
        self._by_count.clear()
        self.generation += 1

    def _leaf_entries(self) -> list[bytes]:
        entries, leaves = self._entries, self._leaves
        for j in self._dirty:
            entries[j] = _leaf_entry(j, leaves[j])
        self._dirty.clear()
        return entries

    def digest(self) -> str:
        """The bucketed digest (digest version 3) of the set."""
        if self._top is None:
            self._top = hashlib.sha256(_SEED + b"".join(self._leaf_entries())).hexdigest()
        return self._top

    def bucket_digests(self, count: int) -> bytes:
        """The ``count`` reconciliation bucket digests (:data:`BUCKET_DIGEST_BYTES` each), in order."""
        made = self._by_count.get(count)
        if made is None:
            entries, sha, size = self._leaf_entries(), hashlib.sha256, BUCKET_DIGEST_BYTES
            made = self._by_count[count] = b"".join(
                sha(b"".join(entries[i::count])).digest()[:size] for i in range(count)
            )
        return made

    def bucket_ids(self, i: int, count: int) -> list[str]:
        """The ids of reconciliation bucket ``i`` of ``count``."""
        return [task_id for j in range(i, LEAVES, count) for task_id in self._leaves[j]]


def bucketed_digest(ids: Iterable[Any]) -> str:
    """The bucketed digest (digest version 3) of the string ids in ``ids`` (each once)."""
    return BucketTree.of(ids).digest()


EMPTY_BUCKETED_DIGEST = bucketed_digest(())
