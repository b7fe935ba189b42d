"""Property-based: any reply, through the real reply path, is merged whole or not at all."""

from __future__ import annotations

import copy
import time
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mingle_plugins.bootstep import Mingle
from mingle_plugins.hello.checks import InvalidReply, _stamp
from mingle_plugins.wire.protocol import unpack_ids

MAX_CLOCK = 10**6

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=6)
    ),
    max_leaves=40,
)
ids = st.one_of(st.uuids().map(str), st.text(min_size=1, max_size=40), st.text(min_size=1020, max_size=1100))
mixed_ids = st.lists(st.one_of(ids, json_scalars), max_size=30)
stamps = st.dictionaries(
    ids, st.one_of(st.floats(), st.lists(json_scalars, max_size=3), json_scalars), max_size=10
)
#: The extension of a packed full list (``mingle.ids``), well formed or not.
packed_extensions = st.fixed_dictionaries(
    {},
    optional={
        "ids": st.one_of(st.lists(ids, max_size=30).map("\n".join), st.text(max_size=60), json_values),
        "ages": st.one_of(st.lists(st.integers(min_value=-2, max_value=10**13), max_size=30), json_values),
        "v": st.just(2),
    },
)
clocks = st.one_of(st.integers(min_value=-5, max_value=2 * MAX_CLOCK), json_scalars)
replies = st.one_of(
    json_values,
    st.integers(min_value=50, max_value=400).map(lambda depth: _nest(depth)),  # deep nesting
    st.fixed_dictionaries(
        {},
        optional={
            "revoked": st.one_of(mixed_ids, stamps, st.lists(ids, max_size=30), json_values),
            "clock": clocks,
            "error": st.text(max_size=10),
            "mingle": st.one_of(json_values, packed_extensions),
        },
    ),
)


def _nest(depth: int) -> Any:
    value: Any = "id"
    for _ in range(depth):
        value = {"revoked": [value]}
    return value


@pytest.fixture
def bounded_step(consumer: Any, monkeypatch: pytest.MonkeyPatch) -> Mingle:
    monkeypatch.setenv("CELERY_MINGLE_PLUGINS", "")
    consumer.app.conf.mingle_max_clock = MAX_CLOCK
    return Mingle(consumer)


@settings(max_examples=10_000, deadline=None, suppress_health_check=list(HealthCheck))
@given(reply=replies)
def test_any_reply_merges_every_valid_id_or_nothing(bounded_step: Mingle, consumer: Any, reply: Any) -> None:
    state = consumer.controller.state
    if len(state.revoked) > 5000:
        state.revoked.clear()
    state.revoked.add("kept-id")
    before_ids = set(state.revoked)
    before_clock = consumer.app.clock.value
    with bounded_step.mingle_round(consumer) as rnd:
        # A copy: after a kept verdict the reply path may compact the body in place (ages as an
        # array), and the model below reads the reply as it was sent.
        rnd.reply("node@x", copy.deepcopy(reply))  # must never raise

    after_ids = set(state.revoked)
    assert before_ids <= after_ids
    assert all(type(i) is str for i in after_ids)
    added = after_ids - before_ids
    after_clock = consumer.app.clock.value
    assert before_clock <= after_clock <= max(before_clock, MAX_CLOCK) + 1
    rejected = "node@x" in rnd.summary.rejected
    if rejected:  # nothing of a rejected reply is merged
        assert not added and after_clock == before_clock
    else:  # an accepted reply is merged whole
        revoked = reply.get("revoked") if isinstance(reply, dict) else None
        ext = reply.get("mingle") if isinstance(reply, dict) else None
        packed = ext.get("ids") if isinstance(ext, dict) else None
        if isinstance(packed, str):  # the ids of a packed full list, every one
            assert not revoked
            revoked = unpack_ids(packed)
        ages = ext.get("ages") if isinstance(ext, dict) else None
        max_length = bounded_step.settings.max_id_length

        def valid(task_id: Any, stamp: Any = 0, age: Any = 0) -> bool:  # what is dropped alone
            try:
                _stamp(stamp)
            except InvalidReply:
                return False
            good_age = not isinstance(age, bool) and isinstance(age, (int, float)) and 0 <= age < 1e12
            return type(task_id) is str and 0 < len(task_id) <= max_length and good_age

        if isinstance(revoked, dict):
            revoked = [i for i, stamp in revoked.items() if valid(i, stamp)]
            ages = None
        if isinstance(ages, list) and revoked:  # sent with ages: every id not older than the expiry
            expires = state.revoked.expires
            oldest: dict[str, Any] = {}  # an id sent twice has the older of its valid ages
            for i, age in zip(revoked, ages, strict=True):
                if valid(i, age=age) and (i not in oldest or age > oldest[i]):
                    oldest[i] = age
            revoked = [i for i, age in oldest.items() if not expires or age < expires]
        elif revoked:
            revoked = [i for i in revoked if valid(i)]
        # Every valid id of an accepted reply is merged; the invalid ones are dropped alone.
        assert set(revoked or ()) <= after_ids


def test_an_id_sent_twice_has_the_older_of_its_ages(bounded_step: Mingle, consumer: Any) -> None:
    """A repeat never makes an id younger: sent at ages 0 and 20,000 s (the expiry is 10,800 s),
    it is too old; sent at ages 5 and 100 s, it is merged, stamped 100 s ago."""
    state = consumer.controller.state
    state.revoked.clear()
    body = {"revoked": ["twice-old", "twice-young", "twice-old", "twice-young"], "clock": 1}
    body["mingle"] = {"v": 2, "ages": [0, 5, 20_000, 100]}
    with bounded_step.mingle_round(consumer) as rnd:
        rnd.reply("node@x", body)
    assert "twice-old" not in state.revoked
    assert "twice-young" in state.revoked
    stamp = state.revoked._data["twice-young"][0]
    assert 99 <= time.monotonic() - stamp <= 110
