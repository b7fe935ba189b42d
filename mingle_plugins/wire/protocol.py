"""The ``mingle`` extension of the hello: digests and signed replies.

A newcomer running this package may add a ``mingle`` argument to the stock
``hello`` control command; stock workers ignore it (their ``hello`` takes
``**kwargs``) and answer as always. Workers running this package answer it:

- ``{"v": 1, "want": "digest"}``: the reply carries no ids but
  ``mingle = {"v": 1, "digest": D, "count": N}``, where ``D`` is the SHA-256 of
  the node's sorted revoked ids. The newcomer then asks one node per digest
  it does not have for the full list (``want: "full"``, with ``destination``).
- ``"dv": 3`` with ``want: "digest"`` (this release): the newcomer can read the bucketed digest
  (:func:`bucketed_digest`), and a neighbour that can make it answers with it and ``"dv": 3``;
  a neighbour of an earlier release ignores the field and answers with the sorted digest above,
  without ``dv`` (digest version 2), which the newcomer still reads. The bucketed digest is
  order-free like the sorted one (:mod:`mingle_plugins.wire.buckets`), and a neighbour keeps
  it up to date from the ids that changed (:mod:`mingle_plugins.answering.own_set`): a revoke
  or an expiry hashes its leaf again, not the whole set.
- ``"nonce": S, "sent_at": T, "request_signature": R``: with ``mingle_hmac_keys``
  set, the request is signed (HMAC-SHA256 of the nonce, the sender, the digest
  of the ids it carries and its send time T, ``time.time()``); a receiver
  refuses a request older than ``mingle_signature_max_age`` or whose nonce it
  has seen (a replay). The reply gets
  ``mingle.signature``, an HMAC-SHA256 (first key) of the nonce, the node
  name, the clock, the digest of the ids carried and the advertised digest
  and count. The receiver checks it against each configured key.

- ``"packed": true`` (with ``want: "full"``): the ids travel as one
  newline-joined string, ``mingle.ids``, and ``revoked`` is empty (the
  list form when an id holds a newline). One JSON string instead of 50,000:
  measured with their ages, 21 ms of encoding and decoding instead of 27.
- ``"have": {"buckets": B, "digests": D}`` (with ``want: "full"``): the bucket
  digests of the ids the newcomer holds; the reply then carries only the ids of the
  buckets that differ and ``mingle.partial = {"buckets": B, "sent": [...]}``
  (:mod:`mingle_plugins.wire.reconcile`: the method, and how the newcomer checks it).
- ``"withheld": N`` (the broadcast of a fast-profile newcomer that holds 1,000 ids or more,
  with ``mingle_reconcile``): the request carries none of its ``N`` ids (``revoked`` empty), so
  that no neighbour decodes, checks and merges them before it answers. Once the digest round
  has shown what each neighbour holds, the newcomer sends each one the ids it lacks
  (:func:`push_request`), and its whole set to every node whose set it does not know.
- ``"push": true, "skip": [node, ...]`` (no reply asked, no ``want``): a request that only
  carries ids (signed as any request, with a nonce of its own). A worker of this package merges
  them as it merges a hello's, unless its name is in ``skip`` (the nodes that were sent what
  they lack already); stock Celery and earlier releases merge them as a hello's ids (they
  ignore ``skip``: an id they hold is only restamped) and answer nobody, as no reply is asked.
- ``"ages": [A, ...]``: the age of each id the request carries, in seconds
  since it was revoked (the same on every host, unlike ``time.monotonic()``
  stamps); a neighbour running this package merges the ids with those ages,
  and answers with the ages of its own ids (``mingle.ages``, in the order of
  its ``revoked``). So an id revoked at T expires at T + expiry everywhere,
  whatever the number of mingles.

- ``"age_runs": true`` (this release): the reply gives its ages as runs instead,
  ``mingle.age_runs = [A1, N1, A2, N2, ...]`` (``N1`` ids of age ``A1``, then ``N2`` of age
  ``A2``, in the order of its ids; :func:`age_runs`), and no ``mingle.ages``. Ids revoked in
  the same second share a run, and a worker's ids are held in the order they were revoked:
  50,000 ids revoked over a few minutes are a few hundred integers instead of 50,000, on
  the neighbour that encodes them and on the newcomer that keeps them until its round ends
  (:class:`RunAges`). A neighbour of an earlier release ignores the field and sends
  ``ages``, which this release still reads; a newcomer of an earlier release never asks.

- ``"presence_v2": true`` (on AMQP with ``mingle_presence``): the sender will
  consume the presence queue after its mingle, so others need not name it. A
  worker that consumes that queue adds ``"present_v2": true`` to its reply's
  ``mingle``, and ``"uncounted": [node, ...]`` (``"uncounted_more": true``
  when its list was cut): the nodes it saw that are not counted (stock
  workers, workers without presence). These are not signed: like any reply
  on Redis, where the count is the number of node names, they can end a
  collection early but never add an id (:mod:`mingle_plugins.hello.presence`).
  (0.1 sent ``presence`` / ``present`` for its own, non-durable queue: the keys
  changed with the queue, so that each version counts only its own kind.)

- ``"instance": S``: a random token of the sending process. A worker that gets a
  hello under its own node name with another token (two workers started with
  one ``-n``) answers ``{"mingle": {"v": 2, "same_name": its token}}`` rather
  than nothing (stock answers a hello from its own name with ``None``), and
  both say so (:class:`mingle_plugins.answering.step.SameName`). Not signed: a
  forged one makes a warning, nothing else.

A stock newcomer never sends ``mingle``, so it always gets a stock reply.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import secrets
import time
from bisect import bisect_right
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from itertools import accumulate, chain, count, groupby, repeat
from typing import TYPE_CHECKING, Any, cast, overload

from . import reconcile
from .buckets import EMPTY_BUCKETED_DIGEST, BucketTree, bucketed_digest

if TYPE_CHECKING:
    from ..model import HelloOptions

__all__ = [
    "BUCKETED",
    "RunAges",
    "age_runs",
    "parse_age_runs",
    "EMPTY_BUCKETED_DIGEST",
    "EMPTY_DIGEST",
    "INSTANCE",
    "VERSION",
    "same_name_of",
    "bucketed_digest",
    "claim_version",
    "digest_by_version",
    "ages_digest",
    "digest",
    "extend_reply",
    "full_list_request",
    "hello_request",
    "pack_ids",
    "push_request",
    "reply_ids",
    "sign",
    "sign_request",
    "unpack_ids",
    "verify",
    "verify_request",
]

#: The version of the extension this package speaks (2: ages, signed send times).
VERSION = 2
#: This process's token in its hello requests (``mingle.instance``): two workers under one node
#: name tell each other apart by it.
INSTANCE = secrets.token_hex(8)


def digest(ids: Iterable[str]) -> str:
    """SHA-256 of the sorted ids, each followed by a newline: equal sets, equal digests."""
    ordered = sorted(ids)
    if not ordered:
        return hashlib.sha256(b"").hexdigest()
    joined = "\n".join(ordered) + "\n"  # one hash update, not two per id: 15 ms, not 29, for 50,000
    return hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest()


EMPTY_DIGEST = digest(())


#: The digest version of :func:`bucketed_digest` (``mingle.dv``); 2, the sorted digest, when absent.
BUCKETED = 3


def claim_version(extension: Mapping[str, Any]) -> int:
    """The digest version of a reply's ``mingle`` block: 3 when it says so, else 2."""
    return BUCKETED if extension.get("dv") == BUCKETED else 2


def digest_by_version(ids: Iterable[str], version: int) -> str:
    """The digest of ``ids`` in ``version`` (:func:`claim_version`)."""
    return bucketed_digest(ids) if version == BUCKETED else digest(ids)


def pack_ids(ids: Sequence[str]) -> str | None:
    """The ids as one newline-joined string (one JSON string to encode and decode instead of
    50,000), or ``None`` when an id holds a newline and the list must travel."""
    joined = "\n".join(ids)
    if joined.count("\n") != max(0, len(ids) - 1) or not all(ids):  # "" would not come back
        return None
    return joined


def unpack_ids(packed: str) -> list[str]:
    """The ids of :func:`pack_ids`."""
    return packed.split("\n") if packed else []


def reply_ids(revoked: Any) -> list[str]:
    """The ids of a reply's ``revoked`` (a list, or a 5.3-5.6 stamp dict)."""
    if not revoked:
        return []
    if set(map(type, revoked)) == {str}:  # the usual case, in one C-level pass
        return list(revoked)
    return [task_id for task_id in revoked if isinstance(task_id, str)]


def ages_digest(ages: Any) -> str | None:
    """SHA-256 of the ages a message carries (signed with the ids), ``None`` without ages."""
    if ages is None:
        return None
    return hashlib.sha256(json.dumps(ages, separators=(",", ":")).encode()).hexdigest()


class RunAges(Sequence[float]):
    """The ages of a reply's ids from its runs (``mingle.age_runs``), read by position like a
    list of them, without one: ``[30, 2, 5, 1]`` is ``[30, 30, 5]``."""

    __slots__ = ("_ages", "_ends")

    def __init__(self, runs: Sequence[int]) -> None:
        self._ages = runs[0::2]
        self._ends = list(accumulate(runs[1::2]))

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    @overload
    def __getitem__(self, index: int) -> float: ...
    @overload
    def __getitem__(self, index: slice) -> list[float]: ...
    def __getitem__(self, index: int | slice) -> float | list[float]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError("age index out of range")
        return self._ages[bisect_right(self._ends, index)]

    def __iter__(self) -> Iterator[float]:
        starts = [0, *self._ends]
        return chain.from_iterable(
            repeat(age, end - start) for age, start, end in zip(self._ages, starts, self._ends, strict=False)
        )


def age_runs(ages: Iterable[float]) -> list[float]:
    """``[age, count, ...]`` of ``ages``: each run of equal consecutive ages as two integers."""
    out: list[float] = []
    for age, group in groupby(ages):
        # The length of the run without a list of it: the last of (item, n) pairs (C-level).
        last = deque(zip(group, count(1)), maxlen=1)
        out += (age, last[0][1])
    return out


def parse_age_runs(raw: Any, length: int) -> RunAges | str:
    """The :class:`RunAges` of ``mingle.age_runs`` for ``length`` ids, or the problem."""
    if not isinstance(raw, list) or len(raw) % 2 or len(raw) > 2 * length:
        return "age_runs is not a list of (age, count) pairs"
    ages, counts = raw[0::2], raw[1::2]
    if set(map(type, ages)) - {int, float} or not all(0 <= age < 10**12 for age in ages):
        return "age_runs holds an age that is not a number of seconds >= 0"  # NaN fails too
    if set(map(type, counts)) - {int}:
        return "age_runs holds a count that is not an integer"
    if counts and min(counts) < 1:
        return "age_runs holds a run of fewer than one id"
    if sum(counts) != length:
        return f"age_runs covers {sum(counts)} ids, the reply carries {length}"
    return RunAges(raw)


def _message(nonce: str, node: str, clock: Any, carried: str, ext: Mapping[str, Any]) -> bytes:
    fields = [VERSION, nonce, node, clock, carried, ext.get("digest"), ext.get("count")]
    fields.append(ages_digest(ext.get("ages")))
    if "age_runs" in ext:  # the ages as runs (signed as they travel)
        fields.append(["age_runs", ages_digest(ext["age_runs"])])
    if "partial" in ext:  # which buckets a reconciled list holds (mingle_plugins.wire.reconcile)
        fields.append(["partial", ext["partial"]])
    return json.dumps(fields, separators=(",", ":")).encode()


def sign(key: str, nonce: str, node: str, clock: Any, ids: Iterable[str], ext: Mapping[str, Any]) -> str:
    """The signature of a reply (its clock, the ids it carries, extension fields ``ext``)."""
    message = _message(nonce, node, clock, digest(ids), ext)
    return hmac.new(key.encode(), message, "sha256").hexdigest()


def verify(
    keys: Sequence[str], nonce: str, node: str, clock: Any, ids: Iterable[str], ext: Mapping[str, Any]
) -> str | None:
    """Check a reply's signature; return ``None`` if valid, else the reason."""
    signature = ext.get("signature")
    if not isinstance(signature, str):
        return "unsigned reply (mingle_hmac_keys is set)"
    ids = list(ids)
    for key in keys:
        if hmac.compare_digest(sign(key, nonce, node, clock, ids, ext), signature):
            return None
    return "bad signature: no configured key matches (or the reply was altered or replayed)"


def _request_message(nonce: str, node: str, revoked: Any, sent_at: float, ages: Any) -> bytes:
    fields = [VERSION, "request", nonce, node, digest(reply_ids(revoked)), repr(float(sent_at))]
    fields.append(ages_digest(ages))
    return json.dumps(fields).encode()


def sign_request(key: str, nonce: str, node: str, revoked: Any, sent_at: float, ages: Any = None) -> str:
    """The signature of a hello request: its nonce, sender, the ids it carries (and their ages)
    and when it was sent."""
    message = _request_message(nonce, node, revoked, sent_at, ages)
    return hmac.new(key.encode(), message, "sha256").hexdigest()


def verify_request(keys: Sequence[str], node: str, revoked: Any, ext: Any) -> str | None:
    """Check a hello request's signature; return ``None`` if valid, else the reason.

    The request's age and nonce are checked apart (:class:`~mingle_plugins.hello.checks.ReplayGuard`):
    they are only worth checking once the signature shows they are the sender's.
    """
    if not isinstance(ext, Mapping) or not isinstance(ext.get("request_signature"), str):
        return "unsigned request"
    nonce, stamp = ext.get("nonce"), ext.get("sent_at")
    if not isinstance(nonce, str) or not 8 <= len(nonce) <= 128:
        return "request without a valid nonce"
    if not isinstance(stamp, (int, float)) or isinstance(stamp, bool) or not math.isfinite(stamp):
        return "request without a valid send time"
    sent_at = float(stamp)
    for key in keys:
        expected = sign_request(key, nonce, node, revoked, sent_at, ext.get("ages"))
        if hmac.compare_digest(expected, ext["request_signature"]):
            return None
    return "bad request signature"


def same_name_of(body: Any) -> str | None:
    """The token of another process under this worker's node name, when ``body`` (a reply under
    that name) is one (``{"mingle": {"same_name": token}}``); else ``None``."""
    ext = body.get("mingle") if isinstance(body, Mapping) else None
    token = ext.get("same_name") if isinstance(ext, Mapping) else None
    return token if isinstance(token, str) and token and token != INSTANCE else None


def hello_request(
    hostname: str, revoked: Any, revoked_set: Any, options: HelloOptions, withheld: int | None = None
) -> dict[str, Any]:
    """The arguments of this package's ``hello`` broadcast: the stock ones and the ``mingle`` block.

    Neighbours running this package merge our ids with their ages and answer with theirs;
    stock neighbours ignore the block (their ``hello`` takes ``**kwargs``). ``withheld``: the
    number of ids held and not sent (``revoked`` is then empty; :func:`push_request` sends
    them after the digest round).
    """
    ext = _request_ext(hostname, revoked, revoked_set, options.nonce, options.signing_key)
    if withheld is not None:
        ext["withheld"] = withheld
    ext["age_runs"] = True  # the neighbours' ages as runs, where they can
    if options.digest:
        ext["want"] = "digest"
        ext["dv"] = BUCKETED  # the bucketed digest, where the neighbour can make it
    if options.presence_queue:
        ext["presence_v2"] = True  # this worker will be counted: its neighbours need not name it
    ext["instance"] = INSTANCE
    return {"from_node": hostname, "revoked": revoked, "mingle": ext}


def _request_ext(
    hostname: str, revoked: Any, revoked_set: Any, nonce: str | None, signing_key: str | None
) -> dict[str, Any]:
    """The ``mingle`` block of a request carrying ``revoked``: the ids' ages, and the signature."""
    from . import compat  # compat imports Celery's worker state: not needed by the wire helpers

    ages = compat.revoked_ages(revoked_set, reply_ids(revoked))
    ext: dict[str, Any] = {"v": VERSION, "ages": ages}
    if nonce:
        ext["nonce"] = nonce
        if signing_key:
            ext["sent_at"] = sent_at = time.time()
            ext["request_signature"] = sign_request(signing_key, nonce, hostname, revoked, sent_at, ages)
    return ext


def push_request(
    hostname: str, revoked: Any, revoked_set: Any, options: HelloOptions, skip: Iterable[str] = ()
) -> dict[str, Any]:
    """A ``hello`` that only carries ids (``revoked``, with their ages): no reply is asked.

    Sent after a withheld broadcast (:func:`hello_request`): to the nodes that lack some of
    this worker's ids, and, with ``skip`` (the nodes sent what they lack already), to all.
    Signed with a nonce of its own when the broadcast was signed.
    """
    nonce = secrets.token_hex(16) if options.nonce else None
    ext = _request_ext(hostname, revoked, revoked_set, nonce, options.signing_key)
    ext["push"] = True
    ext["skip"] = sorted(skip)
    ext["instance"] = INSTANCE
    return {"from_node": hostname, "revoked": revoked, "mingle": ext}


def full_list_request(
    hostname: str, broadcast: Mapping[str, Any], have: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The request of the digest round: no ids of ours (the broadcast carried them), the
    same nonce, and the ids' ages and packed form asked for; with ``have`` (the bucket
    digests of :func:`mingle_plugins.wire.reconcile.offer`), only the ids we lack."""
    ext = {**broadcast["mingle"], "ages": [], "want": "full", "packed": True}
    ext.pop("have", None)
    ext.pop("withheld", None)
    if have is not None:
        ext["have"] = dict(have)
    return {"from_node": hostname, "revoked": None, "mingle": ext}


def extend_reply(
    reply: Mapping[str, Any],
    request: Mapping[str, Any],
    node: str,
    keys: Sequence[str],
    ages: Callable[[list[str]], Iterable[float]] | None = None,
    runs: Callable[[list[str]], list[float]] | None = None,
    digest_of: Callable[[], tuple[str, int]] | None = None,
    bucketed_of: Callable[[], tuple[str, int]] | None = None,
    buckets_of: Callable[[], BucketTree] | None = None,
) -> dict[str, Any]:
    """Answer a newcomer's ``mingle`` request.

    ``want: "digest"``: a digest instead of the ids (``digest_of()``, this node's sorted
    digest, else hashed here; ``bucketed_of()``, its bucketed digest, when the request asks
    ``dv: 3``: :mod:`mingle_plugins.answering.own_set` keeps both). Otherwise the ids, with their ages
    (``ages(ids)``, an iterable) when the request carries ages (its sender keeps them), as
    runs when it asks ``age_runs`` (``runs(ids)`` when given, else made of ``ages``); packed
    into ``mingle.ids`` when the request says ``packed``; with the request's ``have`` and
    ``buckets_of()`` (this node's :class:`~mingle_plugins.wire.buckets.BucketTree`), only
    the ids of the buckets that differ (``mingle.partial``). Signed when ``keys``.
    """
    out = dict(reply)
    ext: dict[str, Any] = {"v": VERSION}
    revoked = reply.get("revoked")
    if request.get("want") == "digest":
        carried: list[str] = []
        if bucketed_of is not None and request.get("dv") == BUCKETED:
            ext["digest"], ext["count"] = bucketed_of()
            ext["dv"] = BUCKETED
        else:
            ext["digest"], ext["count"] = digest_of() if digest_of else _digest_and_count(revoked)
        out["revoked"] = _empty_like(revoked)
    else:
        # The reply's own list when it holds strings only (a copy of 50,000 ids less at the peak).
        usual = type(revoked) is list and set(map(type, revoked)) <= {str}
        carried = cast("list[str]", revoked) if usual else reply_ids(revoked)
        partial = None
        if buckets_of is not None and ages is not None and "ages" in request and "have" in request:
            answered = reconcile.answer(request["have"], buckets_of)
            if answered is not None:
                carried, partial = answered
        if ages is not None and "ages" in request:
            if request.get("age_runs") is True:  # no list of every age, here or there
                ext["age_runs"] = runs(carried) if runs is not None else age_runs(ages(carried))
            else:
                ext["ages"] = list(ages(carried))
            # Packed only with the ages: they replace the stamps a 5.3-5.6 dict carries.
            packed = pack_ids(carried) if request.get("packed") is True and carried else None
            if packed is not None:
                ext["ids"] = packed
                out["revoked"] = _empty_like(revoked)
            elif partial is not None:
                out["revoked"] = (
                    {i: revoked[i] for i in carried} if isinstance(revoked, Mapping) else list(carried)
                )
        if partial is not None:
            ext["partial"] = partial
    nonce = request.get("nonce")
    if keys and isinstance(nonce, str):
        ext["signature"] = sign(keys[0], nonce, node, out.get("clock"), carried, ext)
    out["mingle"] = ext
    return out


def _empty_like(revoked: Any) -> list[Any] | dict[Any, Any]:
    """``[]`` or ``{}``, as this Celery sends its revoked ids (a 5.3-5.6 stamp dict, maybe the
    set's own observed dict, is a ``dict`` here)."""
    return {} if isinstance(revoked, Mapping) else []


def _digest_and_count(revoked: Any) -> tuple[str, int]:
    ids = reply_ids(revoked)
    return digest(ids), len(ids)
