"""Ages as runs (``mingle.age_runs``): what travels, how it is read, what is refused."""

from __future__ import annotations

import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mingle_plugins.hello.checks import InvalidReply, ReplyLimits, check_body
from mingle_plugins.wire.protocol import RunAges, age_runs, extend_reply, parse_age_runs
from mingle_plugins.wire.protocol import verify as verify_fields

LIMITS = ReplyLimits(max_ids=50_000, max_id_length=255, max_clock=2**53)


@settings(max_examples=300, deadline=None)
@given(ages=st.lists(st.sampled_from([0, 1, 7, 300, 86_400]) | st.integers(0, 10**11), max_size=60))
def test_runs_read_back_as_the_ages_they_were_made_of(ages: list[int]) -> None:
    runs = age_runs(ages)
    assert len(runs) <= 2 * len(ages) and all(runs[i] != runs[i + 2] for i in range(0, len(runs) - 2, 2))
    read = parse_age_runs(runs, len(ages))
    assert isinstance(read, RunAges)
    assert list(read) == ages and len(read) == len(ages)
    assert [read[i] for i in range(len(ages))] == ages
    assert [read[-i] for i in range(1, len(ages) + 1)] == [ages[-i] for i in range(1, len(ages) + 1)]
    assert read[1:4] == ages[1:4]
    with pytest.raises(IndexError):
        read[len(ages)]


@pytest.mark.parametrize(
    ("runs", "length", "problem"),
    [
        ("30,2", 2, "not a list"),
        ([30], 1, "not a list"),
        ([30, 2, 5], 3, "not a list"),
        ([30, 1, 5, 1, 2, 1], 2, "not a list"),  # more runs than ids
        ([30, True], 1, "count that is not an integer"),
        ([30, 1.0], 1, "count that is not an integer"),
        (["30", 1], 1, "seconds >= 0"),
        ([True, 1], 1, "seconds >= 0"),
        ([float("nan"), 1], 1, "seconds >= 0"),
        ([5, 1, float("nan"), 1], 2, "seconds >= 0"),
        ([5, 1, float("inf"), 1], 2, "seconds >= 0"),
        ([-1, 1], 1, "seconds >= 0"),
        ([10**12, 1], 1, "seconds >= 0"),
        ([30, 0, 5, 2], 2, "fewer than one id"),
        ([30, 2], 3, "covers 2 ids, the reply carries 3"),
    ],
)
def test_bad_runs_are_refused_with_the_reason(runs: Any, length: int, problem: str) -> None:
    got = parse_age_runs(runs, length)
    assert isinstance(got, str) and problem in got
    body = {"revoked": [f"id-{i}" for i in range(length)], "mingle": {"v": 2, "age_runs": runs}}
    with pytest.raises(InvalidReply, match="age_runs"):
        check_body("n@x", body, LIMITS)


def test_a_reply_asked_for_runs_sends_runs_signed_and_is_read_with_its_ages() -> None:
    ids = [f"id-{i}" for i in range(6)]
    ask = {"v": 2, "want": "full", "ages": [], "packed": True, "age_runs": True, "nonce": "n" * 16}
    ages = [500, 500, 500, 20, 20, 3]
    reply = extend_reply({"revoked": ids, "clock": 3}, ask, "n@x", ("k",), ages=lambda got: iter(ages))
    ext = reply["mingle"]
    assert ext["age_runs"] == [500, 3, 20, 2, 3, 1] and "ages" not in ext
    assert verify_fields(("k",), "n" * 16, "n@x", 3, ids, ext) is None
    tampered = {**ext, "age_runs": [0, 3, 20, 2, 3, 1]}  # younger ids: the signature says no
    assert verify_fields(("k",), "n" * 16, "n@x", 3, ids, tampered) is not None
    checked = check_body("n@x", {**reply, "revoked": ids, "mingle": {**ext, "ids": None}}, LIMITS)
    assert checked.ages is not None and dict(checked.ages) == dict(zip(ids, ages, strict=True))
    # without the ask (a newcomer of an earlier release), the list of ages, as before
    old = extend_reply(
        {"revoked": ids, "clock": 3}, {**ask, "age_runs": None}, "n@x", (), ages=lambda g: iter(ages)
    )
    assert old["mingle"]["ages"] == ages and "age_runs" not in old["mingle"]


@settings(max_examples=200, deadline=None)
@given(
    offsets=st.lists(st.floats(-50, 5000, allow_nan=False), min_size=0, max_size=80),
    order=st.sampled_from(["oldest first", "as added", "reversed"]),
    missing=st.integers(0, 2),
)
def test_the_answering_side_runs_are_the_runs_of_its_ages(
    offsets: list[float], order: str, missing: int
) -> None:
    """``compat.revoked_age_runs`` (bisection over stamps, oldest first) gives what one pass over
    the ids does, in any order, with ids no longer held, and stamps ahead of this clock."""
    from celery.utils.collections import LimitedSet

    from mingle_plugins.wire import compat

    revoked = LimitedSet(maxlen=1000, expires=10**6)
    now = time.monotonic()
    for i, offset in enumerate(offsets):
        revoked.add(f"id-{i}", now=now - offset)
    ids = list(revoked) if order == "oldest first" else [f"id-{i}" for i in range(len(offsets))]
    if order == "reversed":
        ids.reverse()
    ids += [f"gone-{i}" for i in range(missing)]
    runs = compat.revoked_age_runs(revoked, ids)
    expected = age_runs(compat.revoked_ages(revoked, ids))
    # The two read the clock one after the other: an age may differ by the second that passed.
    read, want = parse_age_runs(runs, len(ids)), parse_age_runs(expected, len(ids))
    assert isinstance(read, RunAges) and isinstance(want, RunAges)
    assert all(abs(a - b) <= 1 for a, b in zip(read, want, strict=True)), (runs, expected)
    assert runs == age_runs(list(read))  # runs as short as they can be
