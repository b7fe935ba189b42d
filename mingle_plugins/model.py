"""Plain data passed to and from hooks: hello options and the mingle summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["HelloOptions", "MingleSummary"]


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
    """

    timeout: float = 1.0
    quiet_window: float | None = None
    expected_replies: int | None = None
    polling_interval: float | None = None
    max_clock: int = 2**53
    count_receivers: bool = False
    digest: bool = False
    nonce: str | None = None
    signing_key: str | None = field(default=None, repr=False)
    reply_queue: str | None = None

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


@dataclass
class MingleSummary:
    """What one mingle did; passed to ``mingle_sync_complete``.

    Attributes:
        hostname: this worker's node name.
        transport: the broker transport's ``driver_type``.
        neighbours: node names that answered, in arrival order.
        merged_from: node names whose reply was merged.
        rejected: ``{node name: reason}`` for each reply rejected whole.
        ids_received: revoked ids received, summed over the merged replies.
        ids_merged: ids that were not in the revoked set before and are now.
        revoked_before: size of the revoked set before the mingle.
        revoked_after: size of the revoked set after the mingle.
        clock_before: the Lamport clock before the mingle.
        clock_after: the Lamport clock after the mingle.
        elapsed: seconds from the hello to the end of the merge.
        merge_cpu: CPU seconds of this process spent checking and merging the
            replies (after they were received and decoded).
        plugins: names of the plugins loaded in this worker.
        skipped: why the hello was not sent, or ``None``.
    """

    hostname: str
    transport: str
    neighbours: list[str] = field(default_factory=list)
    merged_from: list[str] = field(default_factory=list)
    rejected: dict[str, str] = field(default_factory=dict)
    ids_received: int = 0
    ids_merged: int = 0
    revoked_before: int = 0
    revoked_after: int = 0
    clock_before: int = 0
    clock_after: int = 0
    elapsed: float = 0.0
    merge_cpu: float = 0.0
    plugins: list[str] = field(default_factory=list)
    skipped: str | None = None

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable copy (for events and ``mingle status``)."""
        return asdict(self)
