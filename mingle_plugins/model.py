"""The values hooks receive: hello options, one neighbour's reply, the mingle summary."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from celery import Celery

__all__ = [
    "HelloOptions",
    "MingleSummary",
    "NodeOutcome",
    "Reply",
    "ReplySource",
    "Verdicts",
    "WorkerConsumer",
]

#: Where a :class:`Reply` comes from: an answer to this worker's hello (``"reply"``), the ids of
#: a neighbour's hello request (``"request"``), a source of ``mingle_extra_replies`` (``"extra"``).
ReplySource = Literal["reply", "request", "extra"]


class WorkerConsumer(Protocol):
    """What the hooks use of Celery's worker ``Consumer`` (``celery.worker.consumer.Consumer``).

    .. versionadded:: 0.2
    """

    #: The Celery application (``app.clock`` is the Lamport clock, ``app.conf`` the configuration).
    app: Celery
    #: This worker's node name, ``name@host``.
    hostname: str
    #: The broker connection the consumer uses (``connection.transport.driver_type``).
    connection: Any
    #: The worker; ``controller.state.revoked`` is its revoked set (a ``LimitedSet``).
    controller: Any


@dataclass
class HelloOptions:
    """How the hello is collected; ``mingle_tune_hello`` implementations may change it.

    Attributes:
        timeout: seconds to wait for the first reply and, when ``quiet_window``
            is ``None``, after every reply (stock Mingle: ``1.0``, an idle timeout).
        quiet_window: when set, seconds to wait after each reply for the next one;
            the whole collection then ends ``timeout`` seconds after the hello
            was sent at the latest. ``None`` keeps the stock idle timeout.
        expected_replies: when known, how many neighbours will answer; the
            collection ends as soon as that many replied. ``0`` skips the hello.
        polling_interval: for polling transports, the interval the collecting
            connection polls at (``None``: the transport's own).
        max_clock: reply headers with a larger clock do not move this node's
            clock (``mingle_max_clock``).
        count_receivers: on Redis, take the number of subscribers the hello was
            published to as ``expected_replies`` when no plugin gave one
            (``mingle_expect_replies``).
        digest: ask neighbours running this package for a digest first, and
            the full list from one node per digest (``mingle_digest``).
        reconcile: with ``digest``, when this worker holds 1,000 ids or more,
            ask only for the ids of the buckets whose digest differs from its
            own (:mod:`mingle_plugins.wire.reconcile`; ``mingle_reconcile``).
        nonce: a fresh random string per mingle that signed replies must
            cover (set when ``mingle_hmac_keys`` is).
        signing_key: the key that signs the request (the first of
            ``mingle_hmac_keys``), or ``None``; never shown in ``repr``.
        reply_queue: when set, neighbours are asked to reply straight into a
            queue of this name through the default exchange
            (``reply_to={"exchange": "", "routing_key": reply_queue}``); it is
            declared before the hello and deleted after the collection. For
            transports whose direct-exchange bindings live in each process's
            memory (kombu's ``pgmq``), where replies sent to the stock reply
            exchange are dropped. ``None``: the stock reply exchange and queue.
        answer_wait: when the broker says how many nodes received the broadcast (the
            Redis PUBLISH count) and fewer answered, wait for them up to this many
            seconds after the hello, past ``timeout`` (``mingle_answer_wait``).
            ``None``: end at ``timeout`` as stock (``mingle_answer_wait = 0``).
        presence_queue: on AMQP with ``mingle_presence``, the presence queue this
            worker joins after its mingle (:mod:`mingle_plugins.hello.presence`); the
            hello request says so (``mingle.presence_v2``). With ``count_receivers``
            and no ``expected_replies``, the broadcast first reads how many
            neighbours consume that queue, and ends once they (and the uncounted
            neighbours they name) replied. ``None``: no presence.

    .. versionchanged:: 0.2
       ``presence_queue``, ``reconcile``, ``answer_wait``.
    """

    timeout: float = 1.0
    quiet_window: float | None = None
    expected_replies: int | None = None
    polling_interval: float | None = None
    max_clock: int = 2**53
    count_receivers: bool = False
    digest: bool = False
    reconcile: bool = False
    nonce: str | None = None
    signing_key: str | None = field(default=None, repr=False)
    reply_queue: str | None = None
    presence_queue: str | None = None
    answer_wait: float | None = None

    def allow_late_replies(self, window: float, reply_polling_interval: float | None = None) -> None:
        """For polling transports, whose neighbours answer up to ``window`` s after the hello.

        Keeps the collection open that long (``timeout`` and ``quiet_window`` at
        least ``window``, so that the collection ends ``window`` after the hello
        unless the expected replies came first), and polls the reply queue at
        ``reply_polling_interval`` at most.

        .. versionadded:: 0.1
        """
        self.timeout = max(self.timeout, window)
        self.quiet_window = max(self.quiet_window or 0.0, window)
        if reply_polling_interval is not None and (
            self.polling_interval is None or self.polling_interval > reply_polling_interval
        ):
            self.polling_interval = reply_polling_interval


@dataclass(frozen=True)
class Reply:
    """One neighbour's reply (or hello request), checked, as every hook sees it.

    Made once, when the reply arrives, by the checks of
    :mod:`mingle_plugins.hello.checks`; the same value goes to ``mingle_on_reply``,
    ``mingle_adjust_clock`` and ``mingle_merge_revoked``. A ``mingle_on_reply``
    implementation that transforms a reply returns a new one
    (``dataclasses.replace(reply, ids=...)``), which is checked again.

    Attributes:
        nodename: the node that sent it (checked: bounded, printable, ``name@host``).
        clock: the sender's Lamport clock, or ``None`` if it sent none.
        ids: the revoked task ids it carries, in the sender's order (oldest first).
        stamps: the sender's ``{id: stamp}`` when its Celery (5.3 to 5.6) sends
            stamps, else ``None``. Stamps are the sender's ``time.monotonic()``
            and mean nothing on another host; the merge of a 5.3-5.6 worker
            keeps them, as stock does.
        ages: ``{id: seconds since it was revoked}`` when the sender runs this
            package (0.2+), else ``None`` (a stock sender: merged as stock merges).
        source: ``"reply"`` for an answer to this worker's hello, ``"request"``
            for the ids of a neighbour's hello request (the answering side),
            ``"extra"`` for a body of ``mingle_extra_replies`` (a store: its plugin
            vouches for it, so reply signatures do not apply; trust patterns do).
        extension: the ``mingle`` block of a sender running this package
            (digest, count, signature), else empty.
        extra: any other keys of the reply (stock passes them to
            ``sync_with_node`` as keyword arguments).
        invalid_ids: ids of the body dropped one by one (not a string,
            empty, longer than ``mingle_max_id_length``, a bad stamp or age);
            the others are in ``ids``.
        invalid_reason: why the first of those was dropped, else ``""``.
        carried: the string ids as the sender sent them (what its signature
            covers); ``ids`` when nothing was dropped.

    .. versionadded:: 0.2
    .. versionchanged:: 0.2
       ``invalid_ids``, ``invalid_reason``, ``carried``: a bad id is dropped alone;
       ``source == "extra"``.
    """

    nodename: str
    clock: int | None = None
    ids: tuple[str, ...] = ()
    stamps: Mapping[str, float] | None = field(default=None, repr=False)
    ages: Mapping[str, float] | None = field(default=None, repr=False)
    source: ReplySource = "reply"
    extension: Mapping[str, Any] = field(default_factory=dict, repr=False)
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)
    invalid_ids: int = 0
    invalid_reason: str = ""
    carried: tuple[str, ...] = field(default=(), repr=False, compare=False)


class Verdicts(Protocol):
    """The verdicts of one mingle, as ``mingle_send_hello`` gets them (``verdicts``).

    A transport plugin that collects replies itself calls :meth:`judge` on each
    body as it arrives and counts only the bodies it keeps: a forged, unsigned
    or malformed body then never ends a collection early. The same body is
    judged only once (the host judges the returned replies again for free).

    .. versionadded:: 0.2
    """

    #: ``{node name: Reply}``: each neighbour's first reply that passed every check.
    kept: Mapping[str, Reply]

    def judge(self, nodename: object, body: Any) -> Reply | None:
        """The checked :class:`Reply` when ``body`` is kept, else ``None`` (counted, logged once)."""

    def judge_full(self, nodename: str, body: Any) -> Reply | None:
        """A full list asked of a kept neighbour: kept only if it is the list of its digest."""

    def share_list(self, source: str, members: list[str]) -> None:
        """Give kept neighbours of the same digest as ``source`` the ids of its verified list."""


@dataclass
class NodeOutcome:
    """What became of one node's reply in one mingle.

    Attributes:
        status: ``"accepted"`` (checked, clock and policies applied) or
            ``"rejected"`` (nothing of it used).
        reason: why it was rejected, else ``""``.
        ids_received: ids the reply carried.
        ids_kept: ids the merge policies kept (all of them with no policy).
        ids_merged: kept ids that were new to this worker and were added by this reply.
        ids_over_share: new ids not merged because they would have evicted more
            than ``mingle_max_share`` of the worker's full revoked set.
        ids_invalid: ids of the reply dropped one by one as invalid (not counted in ``ids_received``).
        dropped_by: ``{plugin name: ids it dropped}``.

    .. versionadded:: 0.2
    .. versionchanged:: 0.2
       ``ids_invalid``.
    """

    status: Literal["accepted", "rejected"] = "accepted"
    reason: str = ""
    ids_received: int = 0
    ids_kept: int = 0
    ids_merged: int = 0
    ids_over_share: int = 0
    ids_invalid: int = 0
    dropped_by: dict[str, int] = field(default_factory=dict)


@dataclass
class MingleSummary:
    """What one mingle did; passed to ``mingle_sync_complete``.

    Attributes:
        hostname: this worker's node name.
        transport: the broker transport's ``driver_type``.
        neighbours: node names that answered, in arrival order.
        accepted: node names whose reply was accepted (checked and synced).
        merged_from: node names from whose reply at least one id was merged.
        rejected: ``{node name: reason}`` for each reply rejected whole.
        nodes: ``{node name: NodeOutcome}``, every reply's fate.
        ids_received: revoked ids received, summed over the accepted replies.
        ids_dropped: ids the merge policies dropped, summed over the replies.
        dropped_by: ``{plugin name: ids dropped}``, summed over the replies.
        ids_merged: ids that were not in the revoked set before and are now.
        ids_over_share: ids not merged because one node's ids would have evicted
            more than ``mingle_max_share`` of the full revoked set.
        duplicates: ``{node name: extra replies}`` for names that answered more than once.
        revoked_before: size of the revoked set before the mingle.
        revoked_after: size of the revoked set after the mingle.
        clock_before: the Lamport clock before the mingle.
        clock_after: the Lamport clock after the mingle.
        elapsed: seconds from the hello to the end of the merge.
        merge_cpu: CPU seconds of this process spent checking and merging the
            replies (after they were received and decoded).
        plugins: names of the plugins loaded in this worker.
        skipped: why the hello was not sent, or ``None``.
        sources_unreached: names of the sources of ``mingle_extra_replies``
            (e.g. a revocation store) that could not be reached this time.
        ids_invalid: ids dropped one by one as invalid from accepted replies.
        held_kept: how many of the ids held before the mingle are still held
            after it (they go only by expiry, or by the ``mingle_max_share``
            a node may evict).
        plugin_faults: every runtime fault of a plugin since the worker
            started: ``{"plugin", "hook", "kind" ("raised", "hung",
            "wrong return"), "count", "last"}``.

    .. versionchanged:: 0.2
       ``accepted``, ``nodes``, ``ids_dropped``, ``dropped_by``, ``ids_over_share``, ``duplicates``,
       ``sources_unreached``;
       ``merged_from`` lists only the nodes that brought a new id.
    .. versionchanged:: 0.2
       ``ids_invalid``, ``held_kept``, ``plugin_faults``; ``duplicates`` counts the
       replies dropped under a name that has a kept reply.
    """

    hostname: str
    transport: str
    neighbours: list[str] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    merged_from: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, NodeOutcome] = field(default_factory=dict)
    ids_received: int = 0
    ids_dropped: int = 0
    dropped_by: dict[str, int] = field(default_factory=dict)
    ids_merged: int = 0
    ids_over_share: int = 0
    duplicates: dict[str, int] = field(default_factory=dict)
    revoked_before: int = 0
    revoked_after: int = 0
    clock_before: int = 0
    clock_after: int = 0
    elapsed: float = 0.0
    merge_cpu: float = 0.0
    plugins: list[str] = field(default_factory=list)
    skipped: str | None = None
    sources_unreached: list[str] = field(default_factory=list)
    ids_invalid: int = 0
    held_kept: int = 0
    plugin_faults: list[dict[str, Any]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable copy (for events and ``mingle status``)."""
        return asdict(self)
