"""A worker's own digests (mingle_plugins.answering.own_set) follow its real revoked set.

Model-based: a real ``LimitedSet`` (with ``maxlen`` and ``expires``) goes through random
revokes, merges, restamps, expiries, evictions, discards and bulk writes, the ways Celery and
this package change it; after each step the digests kept per change equal the digests made
from scratch of what the set holds, and a small change is applied, not made again from every id.
"""

from __future__ import annotations

import pickle
import time
from typing import Any

from celery.utils.collections import LimitedSet
from hypothesis import given, settings
from hypothesis import strategies as st

from mingle_plugins.answering.own_set import own_digests
from mingle_plugins.wire import compat, protocol
from mingle_plugins.wire.buckets import BucketTree, bucketed_digest

IDS = [f"id-{n}" for n in range(60)] + ["é", "\udcff", "", "a\nb"]
some_ids = st.lists(st.sampled_from(IDS), max_size=8)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("revoke"), some_ids),  # the revoke handler: revoked.update(set)
        st.tuples(st.just("add"), st.sampled_from(IDS)),  # add (a restamp when held)
        st.tuples(st.just("discard"), st.sampled_from(IDS)),
        st.tuples(st.just("merge"), some_ids),  # this package's merge with ages (dict update, heap)
        st.tuples(st.just("expire"), st.floats(0, 2000)),  # purge at a later clock
        st.tuples(st.just("bulk"), some_ids),  # update from a stamp dict (5.3-5.6 merge)
        st.tuples(st.just("integer"), st.integers(0, 3)),  # a non-string id
        st.tuples(st.just("clear"), st.none()),
        st.tuples(st.just("pop"), st.none()),
        st.tuples(st.just("ask"), st.none()),  # a digest request between changes
    ),
    max_size=40,
)


def _expected(revoked: LimitedSet) -> tuple[str, int]:
    strings = [key for key in compat.revoked_stamps_view(revoked) if isinstance(key, str)]
    return bucketed_digest(strings), len(strings)


def _apply(revoked: LimitedSet, step: str, arg: Any, clock: list[float]) -> None:
    if step == "revoke":
        revoked.update(set(arg))
    elif step == "add":
        revoked.add(arg)
    elif step == "discard":
        revoked.discard(arg)
    elif step == "merge":
        compat.merge_aged(revoked, list(dict.fromkeys(arg)), dict.fromkeys(arg, 5.0), unique=True)
    elif step == "expire":
        clock[0] += arg
        revoked.purge(now=clock[0])
    elif step == "bulk":
        revoked.update({task_id: time.monotonic() - 1.0 for task_id in arg})
    elif step == "integer":
        revoked.add(arg)
    elif step == "clear":
        revoked.clear()
    elif step == "pop":
        revoked.pop()


@settings(max_examples=300, deadline=None)
@given(steps=steps, maxlen=st.sampled_from([0, 5, 20]))
def test_the_digests_kept_per_change_are_the_digests_of_the_set(
    steps: list[tuple[str, Any]], maxlen: int
) -> None:
    revoked = LimitedSet(maxlen=maxlen, expires=600)
    revoked.update(IDS[:10])
    clock = [time.monotonic()]
    tree = own_digests(revoked).tree  # observed from here on
    cleared = False
    for step, arg in steps:
        _apply(revoked, step, arg, clock)
        cleared = cleared or step == "clear"
        if step == "ask":  # several changes may come between two requests
            own = own_digests(revoked)
            # every change but a clear is applied id by id: the tree is not made again
            assert cleared or own.tree is tree
            tree, cleared = own.tree, False
            assert own.bucketed() == _expected(revoked)
            strings = [k for k in compat.revoked_stamps_view(revoked) if isinstance(k, str)]
            assert own.sorted(compat.revoked_stamps_view(revoked)) == (protocol.digest(strings), len(strings))
            assert own.tree.bucket_digests(64) == BucketTree.of(strings).bucket_digests(64)
    own = own_digests(revoked)
    assert own.bucketed() == _expected(revoked)


def test_a_small_change_is_applied_to_the_tree_not_made_again() -> None:
    revoked = LimitedSet(maxlen=50_000, expires=3600)
    revoked.update([f"id-{n}" for n in range(5000)])
    first = own_digests(revoked)
    tree, digest = first.tree, first.bucketed()
    generation = tree.generation
    assert own_digests(revoked).tree is tree and tree.generation == generation  # no change: nothing done
    revoked.update({"new-1", "new-2"})
    revoked.discard("id-7")
    again = own_digests(revoked)
    assert again.tree is tree and tree.generation == generation + 3  # three ids applied
    assert again.bucketed() != digest and again.bucketed() == _expected(revoked)
    revoked.add("new-1")  # a restamp: the set is the same
    assert own_digests(revoked).tree.generation == generation + 3


def test_a_change_that_went_past_the_notes_makes_the_tree_again() -> None:
    revoked = LimitedSet(maxlen=0, expires=0)
    revoked.update(["a", "b", "c"])
    own_digests(revoked)
    dict.__setitem__(compat.revoked_stamps_view(revoked), "sneaked", (0.0, 0, "sneaked"))  # type: ignore[index]
    assert own_digests(revoked).bucketed() == _expected(revoked)
    revoked._data = {"x": (0.0, 0, "x")}  # a LimitedSet that replaced its dict
    assert own_digests(revoked).bucketed() == (bucketed_digest(["x"]), 1)


def test_the_observed_set_pickles_and_answers_as_a_plain_set() -> None:
    revoked = LimitedSet(maxlen=100, expires=60)
    revoked.update(["a", "b"])
    own_digests(revoked)
    assert type(compat.revoked_stamps_view(revoked)) is compat.ObservedStamps
    copy = pickle.loads(pickle.dumps(revoked))
    assert type(copy._data) is dict and set(copy._data) == {"a", "b"}
    assert pickle.loads(pickle.dumps(compat.revoked_stamps_view(revoked))).keys() == {"a", "b"}
    assert "a" in revoked and len(revoked) == 2 and list(revoked) == ["a", "b"]
