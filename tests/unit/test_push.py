"""After a withheld broadcast (mingle_plugins.hello.push): every node gets what it lacks.

A model: each neighbour holds a set and answered one way (its digest is the newcomer's, it
claims no ids, its list was fetched whole or reconciled, it shares the digest of a fetched
node, it is stock and sent its whole list, its list never came) or received the hello and was
not heard. The plan is delivered as the broker would (the directed pushes to their nodes, the
broadcast to every node not in ``skip``); then every node must have been sent every held id it
lacks, and a known node nothing it holds.
"""

from __future__ import annotations

import base64
import time
from typing import Any

import pytest
from celery.utils.collections import LimitedSet
from celery.worker.control import Panel
from hypothesis import given, settings
from hypothesis import strategies as st

from mingle_plugins.answering.hello import make_hello
from mingle_plugins.bootstep import Mingle
from mingle_plugins.hello.push import plan_push
from mingle_plugins.model import HelloOptions, Reply
from mingle_plugins.wire import protocol, reconcile
from mingle_plugins.wire.buckets import BucketTree

POOL = [f"{i:04x}-id" for i in range(120)]
KINDS = ("same", "empty", "full", "partial", "member", "stock", "unfetched", "silent")
DV = {"dv": protocol.BUCKETED}


def _digest(ids: set[str]) -> str:
    return protocol.digest_by_version(ids, protocol.BUCKETED)


@settings(max_examples=300, deadline=None)
@given(
    held=st.sets(st.sampled_from(POOL), min_size=1, max_size=80),
    nodes=st.lists(
        st.tuples(st.sampled_from(KINDS), st.sets(st.sampled_from(POOL), max_size=80)), min_size=1, max_size=6
    ),
    count_known=st.booleans(),
)
def test_every_node_is_sent_what_it_lacks(
    held: set[str], nodes: list[tuple[str, set[str]]], count_known: bool
) -> None:
    held_list = sorted(held)
    kept: dict[str, Reply] = {}
    fetched: dict[str, str] = {}
    sets: dict[str, set[str]] = {}
    for i, (kind, theirs) in enumerate(nodes):
        name = f"n{i}@x"
        if kind == "same":
            theirs = set(held)
        elif kind == "empty":
            theirs = set()
        sets[name] = theirs
        claim = {"digest": _digest(theirs), "count": len(theirs), **DV}
        if kind == "silent":
            continue
        if kind in ("same", "empty", "unfetched"):
            kept[name] = Reply(name, extension=claim)
        elif kind == "full":
            kept[name] = Reply(name, ids=tuple(theirs), extension={"v": 2})
            fetched[claim["digest"]] = name
        elif kind == "partial":
            have = {
                "buckets": 64,
                "digests": base64.b64encode(BucketTree.of(held).bucket_digests(64)).decode(),
            }
            answered = reconcile.answer(have, lambda t=theirs: BucketTree.of(t))  # type: ignore[misc]
            if answered is None:  # more than half the buckets differ: a full list instead
                kept[name] = Reply(name, ids=tuple(theirs), extension={"v": 2})
            else:
                kept[name] = Reply(name, ids=tuple(answered[0]), extension={"v": 2, "partial": answered[1]})
            fetched[claim["digest"]] = name
        elif kind == "member":  # shares a fetched digest: its verdict holds the source's ids
            source = f"src{i}@x"
            sets[source] = theirs
            kept[source] = Reply(source, ids=tuple(theirs), extension={"v": 2})
            fetched[claim["digest"]] = source
            kept[name] = Reply(name, ids=tuple(theirs), extension=claim)
        elif kind == "stock":
            kept[name] = Reply(name, ids=tuple(theirs))
    answered_names = list(kept)
    reached = len(sets) if count_known else None
    plan = plan_push(
        held_list, kept, answered_names, fetched, lambda v: protocol.digest_by_version(held, v), reached,
        "me@x",
    )  # fmt: skip
    received: dict[str, set[str]] = {name: set() for name in sets}
    for targets, ids in plan.directed:
        assert ids, "a directed push is never empty"
        for target in targets:
            received[target] |= set(ids)
    for name in sets:
        if plan.unknown and name not in plan.known:
            received[name] |= held
    for name, theirs in sets.items():
        assert held - theirs <= received[name], (name, plan)  # nothing lacking is left unsent
        if name in plan.known:
            assert not received[name] & theirs, (name, plan)  # and a known node nothing it holds
    if not count_known:
        assert plan.unknown  # no count: nodes that were not heard may exist
    # A list that did not come (of a set that is not empty, not the newcomer's, and not that of
    # a list fetched from another node), or a node that was not heard: a broadcast of every id.
    if count_known and any(
        kind == "silent"
        or (kind == "unfetched" and theirs and theirs != held and _digest(theirs) not in fetched)
        for kind, theirs in nodes
    ):
        assert plan.unknown


def test_a_reply_of_this_package_without_digest_is_not_known() -> None:
    """A body with a ``mingle`` block and no digest (not a list): nothing known of its set."""
    kept = {"a@x": Reply("a@x", ids=("x",), extension={"v": 2})}
    plan = plan_push(["x", "y"], kept, ["a@x"], {}, lambda v: "", 1, "me@x")
    assert plan.known == [] and plan.unknown == "1 nodes answered whose set is not known"


def test_a_push_is_merged_unless_skipped_and_answered_by_nobody(
    consumer: Any, state: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answering side: a push's ids take the request path (signature, ages, merge); a worker
    named in ``skip`` merges none of them; no reply is built for either."""
    monkeypatch.setenv("CELERY_MINGLE_PLUGINS", "")
    consumer.app.conf.update(mingle_hmac_keys=["k" * 32])
    step = Mingle(consumer)
    hello = make_hello(step, Panel.data["hello"])
    pidbox = type("S", (), {"hostname": consumer.hostname, "consumer": consumer, "app": consumer.app})()
    sender = type("R", (), {"revoked": LimitedSet(maxlen=100, expires=1000)})()
    sender.revoked.add("pushed", now=time.monotonic() - 30)
    options = HelloOptions(timeout=1.0, nonce="n" * 32, signing_key="k" * 32)
    push = protocol.push_request("new@x", ["pushed"], sender.revoked, options, skip=["other@x"])
    ext = push["mingle"]
    assert ext["push"] is True and ext["skip"] == ["other@x"] and ext["nonce"] != options.nonce
    assert protocol.verify_request(["k" * 32], "new@x", ["pushed"], ext) is None  # signed
    assert hello(pidbox, "new@x", revoked=push["revoked"], mingle=ext) is None
    assert "pushed" in state.revoked
    assert time.monotonic() - state.revoked._data["pushed"][0] == pytest.approx(30, abs=2)
    sender.revoked.add("other")
    skipped = protocol.push_request("new@x", ["other"], sender.revoked, options, skip=[consumer.hostname])
    assert hello(pidbox, "new@x", revoked=skipped["revoked"], mingle=skipped["mingle"]) is None
    assert "other" not in state.revoked
    forged = {**ext, "nonce": "f" * 32}  # the signature no longer matches: refused, not merged
    assert hello(pidbox, "new@x", revoked=["forged"], mingle=forged) is None
    assert "forged" not in state.revoked


def test_a_withheld_broadcast_carries_no_id() -> None:
    options = HelloOptions(timeout=1.0, digest=True, reconcile=True)
    request = protocol.hello_request("new@x", [], LimitedSet(), options, withheld=3000)
    assert request["revoked"] == [] and request["mingle"]["ages"] == []
    assert request["mingle"]["withheld"] == 3000 and request["mingle"]["want"] == "digest"
    assert "withheld" not in protocol.full_list_request("new@x", request)["mingle"]
