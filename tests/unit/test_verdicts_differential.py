"""Differential, model-based test of the verdicts: the default path, the fast path and a model agree.

hypothesis generates clusters (honest nodes with id sets, hostile bodies: forged shadows under
honest names, bad ids inside honest replies, messages naming many nodes, untrusted names; a
policy dropping one node; signing on or off) and runs them through the real round
(:class:`mingle_plugins.hello.rounds.MingleRound`: judge, judge_full, share_list, merge, finish)
three times: as the default profile walks whole replies, as the fast profile walks digests and
verified full lists, and as the fast profile does for a newcomer that holds ids already (the
full-list request offers its bucket digests, the list carries the buckets that differ only:
mingle_plugins.wire.reconcile). The same clusters on the real broker path (kombu, Redis, in-process
neighbours): tests/integration/test_verdicts_on_redis.py.
"""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mingle_plugins import hookimpl
from mingle_plugins.bootstep import Mingle
from mingle_plugins.wire import protocol
from mingle_plugins.wire.buckets import BucketTree

KEY = "k" * 32
NONCE = "n" * 32
HONEST = [f"honest{i}@x" for i in range(4)]


class DropNode:
    """A merge policy that keeps none of one node's ids."""

    def __init__(self, node: str) -> None:
        self.node = node

    @hookimpl
    def mingle_merge_revoked(self, reply: Any, ids: tuple[str, ...]) -> Any:
        return () if reply.nodename == self.node else None


def _body(
    node: str, ids: list[str], want: str | None, signing: bool, have: dict[str, Any] | None = None
) -> dict[str, Any]:
    request: dict[str, Any] = {"v": protocol.VERSION, "nonce": NONCE, "ages": []}
    if want == "digest":
        request["want"] = "digest"
    elif want == "full":
        request.update(want="full", packed=True)
        if have is not None:
            request["have"] = have
    reply = {"revoked": list(ids), "clock": 3}
    return protocol.extend_reply(
        reply,
        request,
        node,
        (KEY,) if signing else (),
        ages=lambda carried: [5] * len(carried),
        buckets_of=lambda: BucketTree.of(ids),
    )


def _have(held: set[str]) -> dict[str, Any]:
    """The newcomer's offer of bucket digests (64 buckets: the sets here are small)."""
    digests = BucketTree.of(held).bucket_digests(64)
    return {"buckets": 64, "digests": base64.b64encode(digests).decode()}


clusters = st.fixed_dictionaries(
    {
        "sets": st.lists(
            st.sets(st.sampled_from([f"id-{n}" for n in range(30)]), max_size=12), min_size=1, max_size=4
        ),
        "share": st.booleans(),  # the first two honest nodes hold the same ids (one digest)
        "signing": st.booleans(),
        "trust": st.booleans(),
        "policy": st.none() | st.integers(0, 3),
        "shadow_first": st.booleans(),
        "bad_ids": st.lists(st.sampled_from(["", "x" * 5000]), max_size=2),
        "flood": st.booleans(),
        "held": st.sets(st.sampled_from([f"id-{n}" for n in range(30)]), max_size=20),
        # the other nodes of a digest send their own verified list too (the newcomer asked the
        # next node of the digest while the first one's list was still coming), before or after
        # the list that was taken is shared with them; the walk still gets their digest bodies
        "member_lists": st.sampled_from([None, "before", "after"]),
    }
)


def _step(consumer: Any, monkeypatch: pytest.MonkeyPatch, cluster: dict[str, Any], fast: bool) -> Mingle:
    monkeypatch.setenv("CELERY_MINGLE_PLUGINS", "")
    conf = consumer.app.conf
    conf.mingle_hmac_keys = [KEY] if cluster["signing"] else []
    conf.mingle_trusted_nodes = [*HONEST, "me@unit"] if cluster["trust"] else None
    conf.mingle_merge = "bulk" if fast else "stock"
    step = Mingle(consumer)
    if cluster["policy"] is not None:
        step.pm.register(DropNode(HONEST[cluster["policy"]]), name="drop-node")
    return step


def _run(
    consumer: Any,
    monkeypatch: pytest.MonkeyPatch,
    cluster: dict[str, Any],
    fast: bool,
    reconciled: bool = False,
) -> set[str]:
    state = consumer.controller.state
    state.revoked.clear()
    state.revoked.add("held-1")
    for task_id in cluster["held"]:
        state.revoked.add(task_id)
    have = _have({"held-1", *cluster["held"]}) if reconciled else None
    step = _step(consumer, monkeypatch, cluster, fast)
    signing = cluster["signing"]
    sets = [sorted(s) for s in cluster["sets"]]
    if cluster["share"] and len(sets) > 1:
        sets[1] = sets[0]
    honest = dict(zip(HONEST, sets, strict=False))
    bad = list(cluster["bad_ids"])
    rnd = step.new_round(consumer)
    rnd.nonce = NONCE
    forged = {"revoked": ["evil-shadow"], "clock": 3, "mingle": {"v": 2, "digest": "0" * 64, "count": 1}}
    arrivals: list[tuple[str, Any]] = []
    for node, ids in honest.items():
        carried = ids + bad if node == HONEST[0] else ids
        real = _body(node, carried, "digest" if fast else None, signing)
        shadow = (node, forged) if signing else None  # without keys a shadow is believed: not generated
        if shadow and cluster["shadow_first"]:
            arrivals.append(shadow)
        arrivals.append((node, real))
        if shadow and not cluster["shadow_first"]:
            arrivals.append(shadow)
    if cluster["trust"] or signing:
        arrivals.append(("evil@y", {"revoked": ["evil-own"], "clock": 3}))
    if cluster["flood"]:
        arrivals.append(("<message naming 3 nodes>", _malformed()))
    replies: dict[str, Any] = {}
    for node, body in arrivals:  # as the collector does: judged on arrival, kept bodies only
        if rnd.judge(node, body) is not None:
            replies.setdefault(node, body)
    if fast:
        groups: dict[str, list[str]] = {}
        for node in replies:
            claim = rnd.kept[node].extension
            if claim.get("count"):
                groups.setdefault(claim["digest"], []).append(node)
        for nodes in groups.values():
            source = nodes[0]
            members = [n for n in nodes if n != source]

            def member_lists(members: list[str] = members) -> None:
                for node in members:
                    own = _body(
                        node, honest[node] + bad if node == HONEST[0] else honest[node], "full", signing, have
                    )
                    assert rnd.judge_full(node, own) is not None

            if cluster["member_lists"] == "before":
                member_lists()
            if signing:  # a forger answers the full-list request first, with an empty list
                assert rnd.judge_full(source, {"revoked": [], "clock": 3}) is None
                # ... or with a reconciled one that says every bucket is equal
                claims_equal = {"revoked": [], "clock": 3, "mingle": {"partial": {"buckets": 64, "sent": []}}}
                assert rnd.judge_full(source, claims_equal) is None
            carried = honest[source] + bad if source == HONEST[0] else honest[source]
            full = _body(source, carried, "full", signing, have)
            # 30 ids in 64 buckets: fewer than half differ, so a reconciled list is always partial
            assert ("partial" in full["mingle"]) == reconciled
            assert rnd.judge_full(source, full) is not None
            replies[source] = full
            rnd.share_list(source, nodes)
            if cluster["member_lists"] == "after":
                member_lists()
    rnd.walk(replies)
    rnd.finish()
    return set(state.revoked)


def _malformed() -> Any:
    from mingle_plugins.hello.checks import Malformed

    return Malformed("a reply message names 3 nodes; a worker's names itself only")


def _model(cluster: dict[str, Any]) -> set[str]:
    sets = [set(s) for s in cluster["sets"]]
    if cluster["share"] and len(sets) > 1:
        sets[1] = sets[0]
    merged = {"held-1", *cluster["held"]}
    for number, ids in enumerate(sets):
        if cluster["policy"] != number:
            merged |= ids
    return merged


@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(cluster=clusters)
def test_default_fast_and_model_agree(consumer: Any, monkeypatch: pytest.MonkeyPatch, cluster: Any) -> None:
    expected = _model(cluster)
    default = _run(consumer, monkeypatch, cluster, fast=False)
    fast = _run(consumer, monkeypatch, cluster, fast=True)
    reconciled = _run(consumer, monkeypatch, cluster, fast=True, reconciled=True)
    assert default == expected, (cluster, default ^ expected)
    assert fast == expected, (cluster, fast ^ expected)
    assert reconciled == expected, (cluster, reconciled ^ expected)
    assert not {i for i in fast | default | reconciled if i.startswith("evil")}


@pytest.mark.parametrize("reconciled", [False, True])
@pytest.mark.parametrize("member_lists", ["before", "after"])
def test_a_node_whose_own_list_came_too_is_merged_when_the_source_is_dropped(
    consumer: Any, monkeypatch: pytest.MonkeyPatch, member_lists: str, reconciled: bool
) -> None:
    """Two honest nodes of one digest; the list taken is the first's, which a policy drops; the
    second's own verified list came too (its verdict), and the walk hands on its digest body:
    its ids are merged all the same (they were dropped as a duplicate of its own verdict)."""
    cluster = {
        "sets": [{"id-4", "id-5"}, set()],
        "share": True,
        "signing": False,
        "trust": False,
        "policy": 0,
        "shadow_first": False,
        "bad_ids": [],
        "flood": False,
        "held": set(),
        "member_lists": member_lists,
    }
    assert _run(consumer, monkeypatch, cluster, fast=True, reconciled=reconciled) == _model(cluster)
