"""A reply's ids: each valid id once, at its first place, in one tuple (no copy beside it)."""

from __future__ import annotations

import uuid
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mingle_plugins.hello.checks import ReplyLimits, check_body

LIMITS = ReplyLimits(max_id_length=40, max_ids=1000, max_clock=10**6)

ids = st.one_of(
    st.sampled_from(["a", "b", "c", "d"]),  # repeats
    st.text(min_size=0, max_size=45),  # empty and too long ones too
    st.integers(),
    st.none(),
)


def _valid(task_id: Any) -> bool:
    return type(task_id) is str and 1 <= len(task_id) <= LIMITS.max_id_length


@settings(max_examples=500, deadline=None)
@given(revoked=st.lists(ids, max_size=30), as_tuple=st.booleans())
def test_the_ids_are_the_valid_ones_each_once_in_order(revoked: list[Any], as_tuple: bool) -> None:
    sent = tuple(revoked) if as_tuple else list(revoked)
    reply = check_body("n@x", {"revoked": sent, "clock": 1}, LIMITS)
    assert reply.ids == tuple(dict.fromkeys(i for i in revoked if _valid(i)))
    assert isinstance(reply.ids, tuple)
    assert reply.invalid_ids == sum(not _valid(i) for i in revoked)
    assert (reply.carried or reply.ids) == tuple(i for i in revoked if type(i) is str)
    assert list(sent) == revoked  # the body is not changed by the check


def test_a_list_of_distinct_valid_ids_becomes_one_tuple() -> None:
    revoked = [str(uuid.uuid4()) for _ in range(2000)]
    limits = ReplyLimits(max_ids=50_000, max_id_length=255, max_clock=10**6)
    reply = check_body("n@x", {"revoked": revoked, "clock": 1}, limits)
    assert reply.ids == tuple(revoked)
    assert reply.carried is reply.ids  # the ids as sent and the verdict's are the same tuple
    assert all(a is b for a, b in zip(reply.ids, revoked, strict=True))  # the body's strings, not copies


def test_a_repeated_id_counts_once_and_the_ids_as_sent_keep_it() -> None:
    reply = check_body("n@x", {"revoked": ["a", "b", "a", "c", "b"], "clock": 1}, LIMITS)
    assert reply.ids == ("a", "b", "c")
    assert reply.carried == ("a", "b", "a", "c", "b")  # what a signature covers
    assert reply.invalid_ids == 0
