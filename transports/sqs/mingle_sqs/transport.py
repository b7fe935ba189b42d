"""kombu's SQS transport with the remote control that ``supports_fanout`` makes possible.

Use it with ``broker_transport = "mingleSQS.transport:Transport"`` (the broker URL
stays ``sqs://``; ``driver_type`` is still ``sqs``) and
``broker_transport_options = {"supports_fanout": True}``, in the workers and in
every client that sends control commands (``revoke``, ``celery inspect``).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from botocore.exceptions import ClientError
from kombu.transport import SQS

__all__ = [
    "REPLY_QUEUE_PREFIX",
    "Channel",
    "Transport",
    "delete_queue",
    "is_reply_queue",
    "queue_url",
]

logger = logging.getLogger("mingle_sqs")

#: kombu's classes, typed loosely: kombu 5.7's SQS module is only partly annotated.
_KombuChannel: Any = SQS.Channel
_KombuTransport: Any = SQS.Transport

#: The name of every reply queue this plugin asks a hello's replies into.
REPLY_QUEUE_PREFIX = "mingle-reply-"

#: kombu's pidbox reply queue: ``<oid>.reply.<namespace>.pidbox``, bound with routing key ``<oid>``.
_KOMBU_REPLY_EXCHANGE = re.compile(r"^reply\..+\.pidbox$")

#: What SQS answers about a queue that does not exist (or was deleted).
_NO_QUEUE_CODES = frozenset({"AWS.SimpleQueueService.NonExistentQueue", "QueueDoesNotExist"})


def _missing_queue(exc: ClientError) -> bool:
    code = str(exc.response.get("Error", {}).get("Code", ""))
    return code in _NO_QUEUE_CODES or "NonExistentQueue" in code


def is_reply_queue(name: str) -> bool:
    """A queue that only ever receives replies: this plugin's, or kombu's pidbox reply queue."""
    if name.startswith(REPLY_QUEUE_PREFIX):
        return True
    _, sep, exchange = name.partition(".")
    return bool(sep) and _KOMBU_REPLY_EXCHANGE.match(exchange) is not None


def queue_url(channel: Any, name: str) -> str | None:
    """The URL of queue ``name`` (kombu's name) if it exists, without creating it.

    ``GetQueueUrl`` rather than kombu's ``ListQueues``: a queue created a moment
    ago may be missing from the latter's answer on AWS (eventual consistency).
    """
    sqs_name = channel.canonical_queue_name(name)
    cached = channel._queue_cache.get(sqs_name)
    if cached is not None:
        return str(cached)
    try:
        url = channel.sqs().get_queue_url(QueueName=sqs_name)["QueueUrl"]
    except ClientError as exc:
        if _missing_queue(exc):
            return None
        raise
    channel._queue_cache[sqs_name] = url
    return str(url)


def delete_queue(channel: Any, name: str) -> bool:
    """Delete the SQS queue of kombu's queue ``name`` if it exists; True if it did.

    kombu's ``queue_delete`` on SQS deletes a queue only through its exchange
    bindings, so a queue reached by the default exchange (a reply queue) is
    never deleted by it. Nothing is deleted with ``predefined_queues`` (kombu
    never deletes those either).
    """
    if channel.predefined_queues:
        return False
    sqs_name = channel.canonical_queue_name(name)
    url = queue_url(channel, name)
    channel._queue_cache.pop(sqs_name, None)
    if url is None:
        return False
    try:
        channel.sqs().delete_queue(QueueUrl=url)
    except ClientError as exc:
        if _missing_queue(exc):
            return False
        raise
    logger.debug("mingle: sqs: deleted the queue %s", sqs_name)
    return True


class Channel(_KombuChannel):  # type: ignore[misc]
    """kombu's SQS channel; replies reach their queue across processes and never create it.

    - ``_lookup``: kombu routes a reply to the ``reply.<exchange>.pidbox`` direct
      exchange through bindings kept in the asking process's memory, so a worker
      finds no queue and drops it (``celery inspect`` and ``ping`` get nothing).
      Here a reply with no binding goes to the queue kombu's ``Mailbox`` names
      ``<routing key>.<exchange>``.
    - ``_put``: a reply (this plugin's or kombu's) is sent only to a queue that
      exists. kombu creates any missing queue on put, so a reply that comes after
      its asker deleted the reply queue would create it again, forever.
    - ``queue_delete``: deletes a reply queue that has no binding (see
      :func:`delete_queue`).
    - ``_delete``: forgets a deleted queue's URL under the name kombu caches it by.
    - ``_delete_message``: outside a worker there is no event loop for kombu's
      asynchronous delete of a no-ack message; it is deleted synchronously.
    """

    def _lookup(self, exchange: str, routing_key: str, default: Any = None) -> list[str]:
        queues = list(super()._lookup(exchange, routing_key, default))
        if not queues and routing_key and _KOMBU_REPLY_EXCHANGE.match(exchange or ""):
            return [f"{routing_key}.{exchange}"]
        return queues

    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:
        if self.predefined_queues or not is_reply_queue(queue):
            super()._put(queue, message, **kwargs)
            return
        if queue_url(self, queue) is None:
            logger.debug("mingle: sqs: reply to %s dropped: the queue is gone", queue)
            return
        try:
            super()._put(queue, message, **kwargs)
        except ClientError as exc:  # deleted since it was cached
            if not _missing_queue(exc):
                raise
            self._queue_cache.pop(self.canonical_queue_name(queue), None)
            logger.debug("mingle: sqs: reply to %s dropped: the queue is gone", queue)

    def _delete(self, queue: str, *args: Any, **kwargs: Any) -> None:
        super()._delete(queue, *args, **kwargs)
        # kombu forgets the URL under the queue's kombu name, but caches it under the SQS
        # name: declared again (kombu's pidbox reply queue, at the next ``inspect`` of this
        # process), the deleted queue's URL would be used: NonExistentQueue.
        self._queue_cache.pop(self.canonical_queue_name(queue), None)

    def _delete_message(self, queue_name: str, message: Any) -> None:
        # A message of a no-ack queue is deleted on receipt through the event loop's HTTP
        # client. This plugin's reply queue is deleted whole after the collection: no need.
        if queue_name.startswith(REPLY_QUEUE_PREFIX) and not self.predefined_queues:
            return
        if self.hub is None:
            # Outside a worker (``celery inspect``, ``app.control.ping``) there is no event
            # loop, and kombu's asynchronous client fails with AttributeError: delete now.
            self.sqs(queue=self.canonical_queue_name(queue_name)).delete_message(
                QueueUrl=self._new_queue(queue_name), ReceiptHandle=message["ReceiptHandle"]
            )
            return
        super()._delete_message(queue_name, message)

    def queue_delete(self, queue: str, if_unused: bool = False, if_empty: bool = False, **kwargs: Any) -> Any:
        if if_empty and self._size(queue):
            return None
        bound = bool(self.state.queue_index.get(queue))
        result = super().queue_delete(queue, if_unused=if_unused, **kwargs)
        if not bound and is_reply_queue(queue):
            delete_queue(self, queue)
        return result


class Transport(_KombuTransport):  # type: ignore[misc]
    """kombu 5.7's SQS transport, with ``fanout`` in ``implements``.

    kombu 5.7 broadcasts a fanout exchange through an SNS topic when
    ``supports_fanout`` is on, but its ``implements`` still says ``direct`` only,
    so Celery never starts the worker's remote-control step (it asks
    ``supports_exchange_type("fanout")``) and nothing answers a broadcast.
    """

    Channel = Channel
    implements = _KombuTransport.implements.extend(exchange_type=frozenset(["direct", "fanout"]))
