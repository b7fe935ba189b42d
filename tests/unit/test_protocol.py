from __future__ import annotations

from typing import Any

import pytest

from mingle_plugins import RejectReply, load_settings
from mingle_plugins.hello.checks import ReplayGuard
from mingle_plugins.wire.protocol import (
    EMPTY_DIGEST,
    digest,
    extend_reply,
    reply_ids,
    sign_request,
    verify_request,
)
from mingle_plugins.wire.protocol import verify as verify_fields

IDS = ["b", "a", "c"]


def verify(keys: Any, nonce: str, node: str, reply: Any) -> str | None:
    ext = reply.get("mingle")
    ext = ext if isinstance(ext, dict) else {}
    return verify_fields(keys, nonce, node, reply.get("clock"), reply_ids(reply.get("revoked")), ext)


def test_digest_is_order_and_format_independent() -> None:
    assert digest(IDS) == digest(["a", "b", "c"]) == digest({"a": 1.0, "b": 2.0, "c": 3.0})
    assert digest(IDS) != digest(["a", "b"]) and digest([]) == EMPTY_DIGEST


def test_digest_reply_carries_no_ids() -> None:
    reply = extend_reply({"revoked": IDS, "clock": 5}, {"v": 1, "want": "digest"}, "n@x", ())
    assert reply["revoked"] == [] and reply["clock"] == 5
    assert reply["mingle"] == {"v": 2, "digest": digest(IDS), "count": 3}
    stamped = extend_reply({"revoked": {"a": [1.0, "a"]}, "clock": 5}, {"want": "digest"}, "n@x", ())
    assert stamped["revoked"] == {}  # as a 5.3-5.6 node sends it


def test_signed_reply_verifies_with_any_configured_key() -> None:
    reply = extend_reply({"revoked": IDS, "clock": 5}, {"v": 1, "nonce": "N1"}, "n@x", ("new", "old"))
    assert verify(("old", "new"), "N1", "n@x", reply) is None
    assert verify(("other",), "N1", "n@x", reply) is not None


def test_tampering_replay_and_relabelling_are_caught() -> None:
    reply = extend_reply({"revoked": IDS, "clock": 5}, {"v": 1, "nonce": "N1"}, "n@x", ("k",))
    assert verify(("k",), "N2", "n@x", reply)  # replayed for another hello
    assert verify(("k",), "N1", "other@x", reply)  # relabelled as another node
    assert verify(("k",), "N1", "n@x", {**reply, "revoked": [*IDS, "evil"]})
    assert verify(("k",), "N1", "n@x", {**reply, "clock": 10**9})
    assert (
        verify(("k",), "N1", "n@x", {"revoked": IDS, "clock": 5})
        == "unsigned reply (mingle_hmac_keys is set)"
    )


def test_request_signature_covers_ids_and_send_time() -> None:
    nonce = "N" * 16
    ext = {
        "v": 1,
        "nonce": nonce,
        "sent_at": 1000.5,
        "request_signature": sign_request("k", nonce, "new@x", IDS, 1000.5),
    }
    assert verify_request(("k",), "new@x", IDS, ext) is None
    assert verify_request(("k",), "new@x", [*IDS, "evil"], ext) == "bad request signature"
    assert verify_request(("k",), "new@x", IDS, {**ext, "sent_at": 2000.5}) == "bad request signature"
    assert (
        verify_request(("k",), "new@x", IDS, {**ext, "sent_at": "later"})
        == "request without a valid send time"
    )
    assert verify_request(("k",), "new@x", IDS, None) == "unsigned request"


def test_replay_guard_refuses_old_and_seen_requests() -> None:
    guard = ReplayGuard(max_age=60, max_entries=3)
    guard.check("a" * 16, 1000.0, now=1010.0)
    with pytest.raises(RejectReply, match="replayed request: its nonce was seen"):
        guard.check("a" * 16, 1000.0, now=1011.0)
    with pytest.raises(RejectReply, match="outside mingle_signature_max_age"):
        guard.check("b" * 16, 1000.0, now=1100.0)
    with pytest.raises(RejectReply, match="outside mingle_signature_max_age"):
        guard.check("c" * 16, 1200.0, now=1100.0)  # from the future: skew beyond the window
    for n in "defg":
        guard.check(n * 16, 1100.0, now=1100.0)
    assert len(guard._seen) == 3  # bounded


def test_fast_profile_and_secret_settings() -> None:
    settings, problems = load_settings({"mingle_profile": "fast", "mingle_digest": False}, environ={})
    assert problems == []
    assert (settings.expect_replies, settings.quiet_window, settings.merge, settings.digest) == (
        True,
        0.05,
        "bulk",
        False,
    )
    settings, _ = load_settings(
        {"mingle_hmac_keys": ["top-secret"]}, environ={"CELERY_MINGLE_HMAC_KEYS": "a,b"}
    )
    assert settings.hmac_keys == ("a", "b")
    assert "top-secret" not in repr(settings)
    assert settings.as_dict()["mingle_hmac_keys"] == "<2 keys>"


def test_a_full_list_travels_packed_with_its_ages_when_asked() -> None:
    from mingle_plugins.wire.protocol import pack_ids, unpack_ids

    ids = ["id-1", "id-2", "id-3"]
    ask = {"v": 2, "want": "full", "ages": [], "packed": True, "nonce": "n" * 16}
    reply = extend_reply({"revoked": ids, "clock": 3}, ask, "n@x", ("k",), ages=lambda got: [9] * len(got))
    assert reply["revoked"] == [] and unpack_ids(reply["mingle"]["ids"]) == ids
    assert reply["mingle"]["ages"] == [9, 9, 9]
    assert verify_fields(("k",), "n" * 16, "n@x", 3, ids, reply["mingle"]) is None  # signed over the ids
    # an id with a newline cannot be packed: the list travels
    odd = ["plain", "two\nlines"]
    assert pack_ids(odd) is None and unpack_ids("") == []
    listed = extend_reply({"revoked": odd, "clock": 3}, ask, "n@x", (), ages=lambda got: [1] * len(got))
    assert listed["revoked"] == odd and "ids" not in listed["mingle"]
    # without ages (they replace a 5.3-5.6 dict's stamps) nothing is packed
    stamped = extend_reply(
        {"revoked": {"a": [1.0, "a"]}, "clock": 3}, {"want": "full", "packed": True}, "n@x", ()
    )
    assert stamped["revoked"] == {"a": [1.0, "a"]} and "ids" not in stamped["mingle"]


def test_the_bucketed_digest_is_order_free_and_depends_on_every_id() -> None:
    import random
    import uuid

    from mingle_plugins.wire.protocol import EMPTY_BUCKETED_DIGEST, bucketed_digest

    ids = [str(uuid.uuid4()) for _ in range(2000)] + ["a", "", "ab\nc", "é-unicode", "\udcff-surrogate"]
    shuffled = random.sample(ids, len(ids))
    assert bucketed_digest(ids) == bucketed_digest(shuffled) != digest(ids)
    assert bucketed_digest(ids[1:]) != bucketed_digest(ids)
    assert bucketed_digest([*ids[1:], "another"]) != bucketed_digest(ids)  # as many ids, one other
    assert bucketed_digest(()) == EMPTY_BUCKETED_DIGEST
    assert bucketed_digest([*ids, 7]) == bucketed_digest(ids)  # a non-string key is not in it


def test_a_digest_request_gets_the_bucketed_digest_only_when_it_asks_for_it() -> None:
    from mingle_plugins.wire.protocol import bucketed_digest, claim_version, digest_by_version

    ids = ["x1", "x2", "y3"]
    both = {
        "digest_of": lambda: (digest(ids), 3),
        "bucketed_of": lambda: (bucketed_digest(ids), 3),
    }
    old = extend_reply({"revoked": ids, "clock": 1}, {"v": 2, "want": "digest"}, "n@x", (), **both)
    assert old["mingle"]["digest"] == digest(ids) and "dv" not in old["mingle"]  # an earlier newcomer
    assert claim_version(old["mingle"]) == 2
    new = extend_reply({"revoked": ids, "clock": 1}, {"v": 2, "want": "digest", "dv": 3}, "n@x", (), **both)
    assert new["mingle"]["digest"] == bucketed_digest(ids) and new["mingle"]["dv"] == 3
    assert digest_by_version(ids, claim_version(new["mingle"])) == new["mingle"]["digest"]
    # a neighbour of an earlier release has no bucketed_of: the sorted digest, without dv
    plain = extend_reply({"revoked": ids, "clock": 1}, {"v": 2, "want": "digest", "dv": 3}, "n@x", ())
    assert plain["mingle"]["digest"] == digest(ids) and claim_version(plain["mingle"]) == 2
