"""Checking what neighbours send: a reply body or a hello request becomes one typed :class:`Reply`.

Everything is checked whole before anything of it is used: the node name,
the clock, every id (and stamp), the bounds of this worker; then the trust
settings (``mingle_trusted_nodes``, ``mingle_hmac_keys``). A failed check
raises :class:`InvalidReply` (or :class:`~mingle_plugins.RejectReply` for
trust) with the reason, which is logged and counted.
"""

from __future__ import annotations

import math
import operator
import time
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator, KeysView, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import RejectReply
from ..model import Reply, ReplySource
from ..wire import protocol

if TYPE_CHECKING:
    from ..settings import MingleSettings

__all__ = [
    "MAX_NODENAME_LENGTH",
    "InvalidReply",
    "Malformed",
    "ReplayGuard",
    "ReplyLimits",
    "check_body",
    "check_nodename",
    "check_reply",
    "check_trust",
    "is_malformed_label",
    "malformed_label",
    "valid_ids",
    "body_problem",
    "decode_error_reason",
    "reply_limits",
    "share_wire_lists",
    "shown",
]

#: The longest node name accepted (Celery's are ``name@host``; a host name is at most 253).
MAX_NODENAME_LENGTH = 255

#: Keys of a reply that are not passed on as ``Reply.extra``.
_KNOWN_KEYS = frozenset({"clock", "revoked", "mingle", "self", "c"})


class InvalidReply(ValueError):
    """A neighbour's reply failed a check; the message says which."""


MALFORMED_PREFIX = "<malformed reply "


def malformed_label(n: int) -> str:
    """The name a malformed reply message is counted under: no node's (a message, not a node)."""
    return f"{MALFORMED_PREFIX}{n}>"


def is_malformed_label(name: str) -> bool:
    return name.startswith(MALFORMED_PREFIX)


@dataclass(frozen=True)
class Malformed:
    """A reply message that could not be used at all (undecodable, empty, not a mapping)."""

    reason: str


def decode_error_reason(exc: BaseException) -> str:
    """Why kombu could not decode a reply: the real reason, in a few words."""
    cause = exc.args[0] if exc.args and isinstance(exc.args[0], BaseException) else exc.__cause__ or exc
    name = type(exc).__name__
    if name == "ContentDisallowed":
        return f"content type refused: {exc}"[:200]
    if isinstance(cause, RecursionError):
        return "nesting too deep to decode"
    if isinstance(cause, UnicodeDecodeError):
        return f"invalid UTF-8 at byte {cause.start}"
    if type(cause).__name__ == "JSONDecodeError":
        return f"invalid JSON: {cause}"[:200]
    return f"undecodable: {cause!r}"[:200]


def body_problem(body: Any) -> str | None:
    """Why a decoded reply message cannot hold replies, or ``None`` when it can."""
    if body is None:
        return "empty body (null)"
    if isinstance(body, Mapping):
        return None if body else "empty body ({})"
    return f"body is a {type(body).__name__}, not a mapping of node names"


@dataclass(frozen=True)
class ReplyLimits:
    """Bounds a reply must stay within."""

    max_ids: int
    max_id_length: int
    max_clock: int


def reply_limits(settings: MingleSettings, revoked_set: Any) -> ReplyLimits:
    """The bounds of this worker: its revoked set's ``maxlen`` and the ``mingle_max_*`` settings."""
    return ReplyLimits(
        max_ids=revoked_set.maxlen or 2**31,
        max_id_length=settings.max_id_length,
        max_clock=settings.max_clock,
    )


def shown(name: object, limit: int = 80) -> str:
    """A node name as it may appear in a log line: escaped (no newline, no escape
    sequence, no bidi override) and truncated."""
    text = name if isinstance(name, str) else repr(name)  # a list of names is shown as its repr
    escaped = text.encode("ascii", "backslashreplace").decode("ascii")
    escaped = "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in escaped)
    return escaped if len(escaped) <= limit else f"{escaped[:limit]}...({len(text)} chars)"


def check_nodename(name: object) -> str:
    """The node name if it is one (``name@host``, printable, bounded), else raise InvalidReply."""
    if not isinstance(name, str):
        raise InvalidReply(f"node name is a {type(name).__name__}, not a string")
    if not 3 <= len(name) <= MAX_NODENAME_LENGTH:
        raise InvalidReply(f"node name of length {len(name)} is outside 3..{MAX_NODENAME_LENGTH}")
    if not name.isprintable() or any(ch.isspace() for ch in name):
        raise InvalidReply("node name has unprintable or blank characters")
    if any(0x202A <= ord(ch) <= 0x202E or 0x2066 <= ord(ch) <= 0x2069 for ch in name):
        raise InvalidReply("node name has bidirectional control characters")
    local, at, host = name.partition("@")
    if not (local and at and host):
        raise InvalidReply("node name is not of the form name@host")
    return name


def _carried(revoked: list[Any] | tuple[Any, ...] | dict[Any, Any]) -> tuple[str, ...]:
    """The string ids of ``revoked`` as sent. From a list of strings, the tuple is made straight
    from it (no list beside it): for 50,000 ids it becomes the verdict's ids."""
    if not isinstance(revoked, dict) and (not revoked or set(map(type, revoked)) == {str}):
        return tuple(revoked)
    return tuple(protocol.reply_ids(revoked))


def _id_problem(task_id: Any, limits: ReplyLimits) -> str | None:
    """Why ``task_id`` is not a task id this worker keeps, or ``None``."""
    if type(task_id) is not str:
        return f"revoked id {task_id!r:.60} is a {type(task_id).__name__}, not a string"
    if not task_id or len(task_id) > limits.max_id_length:
        return f"revoked id of length {len(task_id)} is outside 1..{limits.max_id_length}"
    return None


def valid_ids(ids: Any, limits: ReplyLimits) -> tuple[list[Any], list[str]]:
    """The ids of ``ids`` this worker keeps, in order, and the reasons of those it drops.

    Three C-level passes over 50,000 ids when all are valid; a pass per id only
    when one is not.
    """
    ids = list(ids)
    if _all_valid(ids, limits):
        return ids, []
    kept: list[Any] = []
    problems: list[str] = []
    for task_id in ids:
        problem = _id_problem(task_id, limits)
        if problem is None:
            kept.append(task_id)
        else:
            problems.append(problem)
    return kept, problems


def _all_valid(ids: Sequence[Any], limits: ReplyLimits) -> bool:
    """Whether every id of ``ids`` is one this worker keeps (three C-level passes, no copy)."""
    return not ids or (
        set(map(type, ids)) == {str}
        and 1 <= min(map(len, ids))
        and max(map(len, ids)) <= limits.max_id_length
    )


def _each_once(ids: tuple[str, ...]) -> tuple[str, ...]:
    """``ids`` with a repeated id kept once, at its first place: ``ids`` itself when none repeats.

    A set of the ids tells (2 MiB for 50,000, freed at once) instead of a dict of them and a
    new tuple beside the reply's (2.6 MiB and 400 KB): this runs while the reply message is
    still being read, the moment of a newcomer's peak memory.
    """
    if len(set(ids)) == len(ids):
        return ids
    return tuple(dict.fromkeys(ids))


def _stamp(value: Any) -> float:
    # LimitedSet keeps (stamp, ...) tuples; JSON turns them into lists.
    stamp = value[0] if isinstance(value, (list, tuple)) and value else value
    number = math.nan
    if isinstance(stamp, (int, float)) and not isinstance(stamp, bool):
        try:
            number = float(stamp)
        except OverflowError:  # a JSON integer beyond the range of a float
            number = math.inf
    if not math.isfinite(number) or number < 0:
        raise InvalidReply(f"revoked stamp {value!r:.60} is not a finite number >= 0")
    return number


def _check_clock(clock: Any, limits: ReplyLimits) -> int | None:
    if clock is None:
        return None
    if type(clock) is not int or clock < 0:
        raise InvalidReply(f"clock {clock!r:.60} is not an integer >= 0")
    if clock > limits.max_clock:
        shown_clock = f"{clock:.3e}" if clock.bit_length() < 1000 else f"a {clock.bit_length()}-bit integer"
        raise InvalidReply(f"clock {shown_clock} is above mingle_max_clock ({limits.max_clock})")
    return clock


def _age_problem(age: Any) -> bool:
    return isinstance(age, bool) or not isinstance(age, (int, float)) or not 0 <= age < 1e12


def check_body(nodename: object, body: Any, limits: ReplyLimits, source: ReplySource = "reply") -> Reply:
    """Check one reply body (or the fields of a hello request); return its :class:`Reply`.

    A body whose structure is broken (not a mapping, an error, a bad clock,
    ``revoked`` of the wrong type, ages that do not line up with the ids, more
    ids than this worker keeps) raises :class:`InvalidReply`: nothing of it is
    used. Inside a sound body, each invalid id (not a string, empty, longer than
    ``mingle_max_id_length``, a bad stamp or age) is dropped alone and counted in
    ``Reply.invalid_ids``; the valid ones are kept. ``Reply.carried`` keeps the
    string ids as sent, which the signature covers.
    """
    if isinstance(body, Malformed):
        raise InvalidReply(body.reason)
    name = check_nodename(nodename)
    if not isinstance(body, Mapping):
        raise InvalidReply(f"reply is a {type(body).__name__}, not a mapping")
    if "error" in body:
        raise InvalidReply(f"node answered with an error: {body['error']!r:.200}")
    clock = _check_clock(body.get("clock"), limits)
    ext = body.get("mingle")
    extension: Mapping[str, Any] = dict(ext) if isinstance(ext, Mapping) else {}
    extra = {k: v for k, v in body.items() if isinstance(k, str) and k not in _KNOWN_KEYS}
    revoked = _unpacked(body.get("revoked"), extension.get("ids"), limits)
    if revoked is None:
        revoked = []
    if not isinstance(revoked, (list, tuple, dict)):
        raise InvalidReply(f"revoked is a {type(revoked).__name__}, not a list or dict of ids")
    if len(revoked) > limits.max_ids:
        raise InvalidReply(f"{len(revoked)} revoked ids is more than the {limits.max_ids} a worker keeps")
    raw_ages: Any = extension.get("ages")
    if raw_ages is not None and (not isinstance(raw_ages, list) or len(raw_ages) != len(revoked)):
        raise InvalidReply("ages do not match the revoked ids one for one")
    if raw_ages is None and "age_runs" in extension:  # the ages as runs (protocol.RunAges)
        raw_ages = protocol.parse_age_runs(extension["age_runs"], len(revoked))
        if isinstance(raw_ages, str):
            raise InvalidReply(raw_ages)
    carried = _carried(revoked)
    problems: list[str] = []
    stamps: dict[str, float] | None = None
    ages: Mapping[str, float] | None = None
    if isinstance(revoked, dict):
        stamps = {}
        for task_id, value in revoked.items():
            problem = _id_problem(task_id, limits)
            if problem is None:
                try:
                    stamps[task_id] = _stamp(value)
                except InvalidReply as exc:
                    problem = str(exc)
            if problem is not None:
                problems.append(problem)
        ids = tuple(stamps)
        if raw_ages is not None:
            ages = _aged(list(revoked), raw_ages, stamps.keys(), problems)
    else:
        kept: Sequence[Any]
        if len(carried) == len(revoked) and _all_valid(carried, limits):
            kept, problems = carried, []  # every id valid: the tuple of them, not another list
        else:
            kept, problems = valid_ids(revoked, limits)
        if raw_ages is not None:
            ages = _aged(revoked if isinstance(revoked, list) else list(revoked), raw_ages, kept, problems)
            if not isinstance(ages, AlignedAges):  # an id whose age is bad was dropped
                kept = [task_id for task_id in kept if task_id in ages]
        # a repeated id counts once
        ids = _each_once(kept) if kept is carried else tuple(dict.fromkeys(kept))
        if isinstance(ages, AlignedAges) and raw_ages is not None and len(ids) == len(revoked):
            ages = AlignedAges(ids, raw_ages)  # over the verdict's tuple (see share_wire_lists)
    return Reply(
        name,
        clock,
        ids,
        stamps,
        ages,
        source,
        extension,
        extra,
        invalid_ids=len(problems),
        invalid_reason=problems[0] if problems else "",
        carried=carried if carried is not ids and carried != ids else ids,
    )


class AlignedAges(Mapping[str, float]):
    """``{id: age}`` over the wire's two aligned lists, ids and ages, without a copy of them.

    A reply of 50,000 ids would otherwise get its own dict of 50,000 ages at arrival (a
    newcomer keeps every neighbour's verdict until its round ends: 8 neighbours, 8 dicts,
    ~20% more peak memory than stock). The lookup table is built on the first lookup by id,
    which the merge makes only for the ids it has not seen yet (usually one reply's). As a
    id sent twice, a repeated id has the older of its ages (a repeat never makes an id younger).
    """

    __slots__ = ("_ages", "_ids", "_index")

    def __init__(self, ids: Sequence[str], ages: Sequence[float]) -> None:
        self._ids = ids
        self._ages = ages
        self._index: dict[str, float] | None = None

    def aligned(self, ids: Sequence[str]) -> Sequence[float] | None:
        """The ages of ``ids`` when they are the wire's ids themselves, in order (else ``None``):
        what the merge reads instead of one lookup per id."""
        if len(ids) == len(self._ids) and all(map(operator.is_, ids, self._ids)):
            return self._ages
        return None

    def _table(self) -> dict[str, float]:
        if self._index is None:
            self._index = dict(zip(self._ids, self._ages, strict=True))
            if len(self._index) != len(self._ids):  # a repeated id: its oldest age
                self._index = _oldest(zip(self._ids, self._ages, strict=True))
        return self._index

    def __getitem__(self, task_id: str) -> float:
        return self._table()[task_id]

    def get(self, task_id: str, default: Any = None) -> Any:
        return self._table().get(task_id, default)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._table()

    def __iter__(self) -> Iterator[str]:
        return iter(self._table())

    def __len__(self) -> int:
        return len(self._table())


def share_wire_lists(body: Any, reply: Reply) -> None:
    """After a kept verdict: the body's list of ids replaced by the verdict's tuple of the same
    ids, so that the two copies of 50,000 ids a kept reply holds until its round ends are one
    (a newcomer keeps every neighbour's body and verdict: 32 neighbours, 32 lists of 400 KB).

    Only when the tuple is the list (every id valid, each once, no plugin changed them) and the
    body is the plain dict kombu decoded; the ids were checked and verified from the list already.
    """
    if type(body) is not dict or reply.carried is not reply.ids or not reply.ids:
        return
    listed = body.get("revoked")
    if type(listed) is list and len(listed) == len(reply.ids):
        body["revoked"] = reply.ids
    ages, block = reply.ages, body.get("mingle")
    if isinstance(ages, AlignedAges) and type(ages._ages) is list and type(block) is dict:
        # The ages as machine integers: a JSON list of ages makes an int object (28 bytes) per
        # age above 256 (seconds: most of them, in a worker up for hours), 1.8 MB per 50,000.
        wire = ages._ages
        compact = array("q", wire)
        ages._ages = compact
        for holder in (block, reply.extension):
            if isinstance(holder, dict) and holder.get("ages") is wire:
                holder["ages"] = compact


def _aged(
    revoked: list[Any], raw_ages: Sequence[Any], valid: Any, problems: list[str]
) -> Mapping[str, float]:
    """``{id: age}`` for the valid ids whose age is valid; a bad age drops its id (counted)."""
    if isinstance(raw_ages, protocol.RunAges) or (
        raw_ages and set(map(type, raw_ages)) == {int} and 0 <= min(raw_ages) and max(raw_ages) < 10**12
    ):  # runs were checked when they were read
        if not problems:  # every id valid, every age valid: the wire's lists as they are
            return AlignedAges(revoked, raw_ages)
        valid = valid if isinstance(valid, (set, frozenset, KeysView)) else set(valid)
        pairs = zip(revoked, raw_ages, strict=True)
        return _oldest((i, a) for i, a in pairs if type(i) is str and i in valid)
    valid = valid if isinstance(valid, (set, frozenset, KeysView)) else set(valid)
    ages: dict[str, float] = {}
    for task_id, age in zip(revoked, raw_ages, strict=True):
        if type(task_id) is not str or task_id not in valid:
            continue
        if _age_problem(age):
            problems.append(f"age {age!r:.60} is not a number of seconds >= 0")
        elif task_id not in ages or age > ages[task_id]:
            ages[task_id] = age  # an id sent twice: the older of its valid ages
    return ages


def _oldest(pairs: Iterable[tuple[str, float]]) -> dict[str, float]:
    """``{id: age}`` of the pairs; an id given twice gets the older of its ages."""
    out: dict[str, float] = {}
    for task_id, age in pairs:
        if task_id not in out or age > out[task_id]:
            out[task_id] = age
    return out


def _unpacked(revoked: Any, packed: Any, limits: ReplyLimits) -> Any:
    """``revoked``, or the ids packed into ``mingle.ids`` (:func:`~mingle_plugins.wire.protocol.pack_ids`)."""
    if packed is None:
        return revoked
    if revoked:
        raise InvalidReply("ids both in revoked and in mingle.ids")
    if not isinstance(packed, str):
        raise InvalidReply(f"mingle.ids is a {type(packed).__name__}, not a string")
    if len(packed) > limits.max_ids * (limits.max_id_length + 1):
        raise InvalidReply(f"mingle.ids of {len(packed)} characters cannot hold at most {limits.max_ids} ids")
    return protocol.unpack_ids(packed)


def _check_ids(ids: list[Any] | tuple[Any, ...], limits: ReplyLimits) -> None:
    problems = valid_ids(ids, limits)[1]
    if problems:
        raise InvalidReply(problems[0])


def _check_ages(ages: Any, revoked: Any) -> dict[str, float] | None:
    """``{id: age}`` from ``ages`` (aligned with ``revoked``), or ``None``; raise on a bad one."""
    if ages is None:
        return None
    if not isinstance(ages, list) or len(ages) != len(revoked):
        raise InvalidReply("ages do not match the revoked ids one for one")
    for age in ages:
        if _age_problem(age):
            raise InvalidReply(f"age {age!r:.60} is not a number of seconds >= 0")
    return dict(zip(revoked, ages, strict=True))


def check_reply(reply: Any, limits: ReplyLimits, original: Reply) -> Reply:
    """Check a reply a ``mingle_on_reply`` plugin returned: a :class:`Reply` of the same node and
    source, within the same bounds."""
    if not isinstance(reply, Reply):
        raise InvalidReply(f"a mingle_on_reply plugin returned a {type(reply).__name__}, not a Reply")
    if (reply.nodename, reply.source) != (original.nodename, original.source):
        raise InvalidReply("a mingle_on_reply plugin changed the node name or source of the reply")
    _check_clock(reply.clock, limits)
    if not isinstance(reply.ids, tuple) or len(reply.ids) > limits.max_ids:
        raise InvalidReply("a mingle_on_reply plugin returned ids that are not a tuple within bounds")
    _check_ids(reply.ids, limits)
    if reply.stamps is not None:
        for task_id in reply.ids:
            _stamp(reply.stamps.get(task_id, 0.0))
    if reply.ages is not None:
        _check_ages([reply.ages.get(i, 0.0) for i in reply.ids], reply.ids)
    return reply


class ReplayGuard:
    """Refuses a signed hello request sent too long ago, or whose nonce was seen already.

    Keeps the nonces of the last ``max_age`` seconds, at most ``max_entries``
    (the oldest are forgotten first when a flood fills it).
    """

    def __init__(self, max_age: float, max_entries: int = 10_000) -> None:
        self.max_age = max_age
        self.max_entries = max_entries
        self._seen: OrderedDict[str, float] = OrderedDict()

    def check(self, nonce: str, sent_at: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        age = now - sent_at
        if abs(age) > self.max_age:
            when = f"{age:.0f}s ago" if age >= 0 else f"{-age:.0f}s in the future (by this host's clock)"
            raise RejectReply(
                f"request sent {when}, outside mingle_signature_max_age ({self.max_age:g}s): "
                "replayed, or the two hosts' clocks are apart"
            )
        while self._seen and (
            len(self._seen) >= self.max_entries or next(iter(self._seen.values())) < now - self.max_age
        ):
            self._seen.popitem(last=False)
        if nonce in self._seen:
            raise RejectReply("replayed request: its nonce was seen already")
        self._seen[nonce] = now


def check_trust(
    settings: MingleSettings, reply: Reply, nonce: str | None, guard: ReplayGuard | None = None
) -> None:
    """Apply ``mingle_trusted_nodes`` and ``mingle_hmac_keys``; raise RejectReply.

    A reply must be signed over ``nonce`` (this mingle's); a request carries its
    own nonce and send time, which ``guard`` checks against replays.
    """
    if not settings.trusts(reply.nodename):
        raise RejectReply("node name not in mingle_trusted_nodes")
    if not settings.hmac_keys or reply.source == "extra":
        return  # an extra source is not on the broker: its plugin vouches for it (a store's MACs)
    signature = "request_signature" if reply.source == "request" else "signature"
    if settings.accept_unsigned and signature not in reply.extension:
        return  # unsigned (a stock worker's), accepted during a roll-out
    if reply.source == "request":
        problem = protocol.verify_request(
            settings.hmac_keys, reply.nodename, list(reply.carried or reply.ids), reply.extension
        )
    else:
        problem = protocol.verify(
            settings.hmac_keys,
            nonce or "",
            reply.nodename,
            reply.clock,
            reply.carried or reply.ids,
            reply.extension,
        )
    if problem:
        raise RejectReply(problem)
    if reply.source == "request" and guard is not None:
        guard.check(str(reply.extension["nonce"]), float(reply.extension["sent_at"]))
