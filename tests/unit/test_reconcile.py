"""Set reconciliation (mingle_plugins.wire.reconcile): what is sent, and how the newcomer checks it."""

from __future__ import annotations

import base64

from hypothesis import given, settings
from hypothesis import strategies as st

from mingle_plugins.wire import protocol, reconcile
from mingle_plugins.wire.buckets import BucketTree

ids = st.sets(st.text(min_size=1, max_size=12), max_size=300)


def _have(held: set[str], count: int) -> dict[str, object]:
    return {"buckets": count, "digests": base64.b64encode(BucketTree.of(held).bucket_digests(count)).decode()}


@settings(max_examples=200, deadline=None)
@given(held=ids, theirs=ids, count=st.sampled_from([64, 128, 1024]))
def test_the_rebuilt_set_is_the_neighbours_set(held: set[str], theirs: set[str], count: int) -> None:
    answered = reconcile.answer(_have(held, count), lambda: BucketTree.of(theirs))
    mine, other = BucketTree.of(held).bucket_digests(count), BucketTree.of(theirs).bucket_digests(count)
    size = reconcile.DIGEST_BYTES
    differ = sum(mine[i * size : (i + 1) * size] != other[i * size : (i + 1) * size] for i in range(count))

    # a bucket differs exactly when its ids differ (no 4-byte collision among so few buckets)
    def bucket(ids: set[str], i: int) -> set[str]:
        return {t for t in ids if reconcile.bucket_of(t, count) == i}

    assert differ == sum(bucket(held, i) != bucket(theirs, i) for i in range(count))
    if answered is None:  # more than half the buckets differ: the full list goes instead
        assert 2 * differ > count
        return
    assert len(answered[1]["sent"]) == differ
    sent_ids, partial = answered
    parsed = reconcile.parse_partial(partial)
    assert not isinstance(parsed, str)
    assert set(sent_ids) <= theirs  # nothing but the neighbour's own ids
    assert theirs - held <= set(sent_ids)  # every id the newcomer lacks
    rebuilt = reconcile.rebuild(held, *parsed, sent_ids)
    assert rebuilt is not None
    assert protocol.digest(rebuilt) == protocol.digest(theirs)


@settings(max_examples=100, deadline=None)
@given(held=ids, theirs=ids)
def test_a_lie_about_equal_buckets_fails_the_digest_check(held: set[str], theirs: set[str]) -> None:
    """A neighbour that says every bucket is equal when its set is not ours is caught."""
    rebuilt = reconcile.rebuild(held, 64, [], [])
    assert rebuilt is not None
    assert (protocol.digest(rebuilt) == protocol.digest(theirs)) == (set(held) == set(theirs))


def test_ids_outside_the_buckets_sent_are_refused() -> None:
    theirs = {f"id-{n}" for n in range(200)}
    held = theirs - {"id-1", "id-2", "id-3"}
    answered = reconcile.answer(_have(held, 64), lambda: BucketTree.of(theirs))
    assert answered is not None
    sent_ids, partial = answered
    assert {"id-1", "id-2", "id-3"} <= set(sent_ids) and len(partial["sent"]) <= 3
    outside = next(f"x{n}" for n in range(1000) if reconcile.bucket_of(f"x{n}", 64) not in partial["sent"])
    assert reconcile.rebuild(held, 64, partial["sent"], sent_ids) is not None
    assert reconcile.rebuild(held, 64, partial["sent"], [*sent_ids, outside]) is None


def test_offer_only_when_it_saves() -> None:
    few = {f"id-{n}" for n in range(reconcile.MIN_HELD - 1)}
    many = {f"id-{n}" for n in range(5000)}
    assert reconcile.offer(few, 1000) is None  # a full list of a few ids costs little
    assert reconcile.offer(many, 20_000) is None  # we hold under half of what they claim
    have = reconcile.offer(many, 5000)
    assert have is not None
    assert have["buckets"] == reconcile.bucket_count(5000)
    assert base64.b64decode(str(have["digests"])) == BucketTree.of(many).bucket_digests(have["buckets"])


def test_malformed_blocks_are_read_as_none_or_a_problem() -> None:
    mine = BucketTree.of({"a"})
    for have in (None, [], {"buckets": 63, "digests": ""}, {"buckets": 64, "digests": "!!"},
                 {"buckets": 64, "digests": base64.b64encode(b"x" * 10).decode()},
                 {"buckets": 2**20, "digests": ""}, {"buckets": True, "digests": ""}):  # fmt: skip
        assert reconcile.answer(have, lambda: mine) is None, have
    for partial in (None, {"buckets": 64}, {"buckets": 64, "sent": [64]}, {"buckets": 64, "sent": [1, 1]},
                    {"buckets": 65, "sent": []}, {"buckets": 64, "sent": ["1"]}):  # fmt: skip
        assert isinstance(reconcile.parse_partial(partial), str), partial


def test_a_reconciled_reply_is_signed_with_its_buckets() -> None:
    """The ``partial`` block is in the signed message: which buckets were sent cannot be altered."""
    theirs = [f"id-{n}" for n in range(100)]
    held = set(theirs[:90])
    request = {"v": protocol.VERSION, "nonce": "n" * 32, "ages": [], "want": "full", "packed": True}
    request["have"] = _have(held, 64)
    reply = protocol.extend_reply(
        {"revoked": theirs, "clock": 1},
        request,
        "nb@x",
        ("k" * 32,),
        ages=lambda carried: [1] * len(carried),
        buckets_of=lambda: BucketTree.of(theirs),
    )
    ext = reply["mingle"]
    assert "partial" in ext
    carried = protocol.unpack_ids(ext["ids"])
    assert set(theirs) - held <= set(carried) and len(carried) < len(theirs)
    assert protocol.verify(("k" * 32,), "n" * 32, "nb@x", 1, carried, ext) is None
    altered = {**ext, "partial": {**ext["partial"], "sent": []}}
    assert protocol.verify(("k" * 32,), "n" * 32, "nb@x", 1, carried, altered) is not None


def test_an_older_request_gets_the_full_list() -> None:
    """A request without ``have`` (this package's previous release) gets every id."""
    theirs = [f"id-{n}" for n in range(100)]
    request = {"v": protocol.VERSION, "nonce": "n" * 32, "ages": [], "want": "full", "packed": True}
    reply = protocol.extend_reply(
        {"revoked": theirs, "clock": 1},
        request,
        "nb@x",
        (),
        ages=lambda carried: [1] * len(carried),
        buckets_of=lambda: BucketTree.of(theirs),
    )
    assert "partial" not in reply["mingle"]
    assert protocol.unpack_ids(reply["mingle"]["ids"]) == theirs
