"""The worker's pidbox queue, held by a connection that is going away (405 RESOURCE_LOCKED).

Celery 5.5+ declares the pidbox queue ``<node>.<exchange>.pidbox`` exclusive
(RabbitMQ 4.3 refuses a transient shared one). A worker killed with SIGKILL
and started again at once under the same ``-n`` (a Kubernetes pod restart),
or one whose connection the broker closed (and that reconnects), may find
that queue still owned by the old connection for a moment: RabbitMQ answers
``405 RESOURCE_LOCKED``, and stock Celery stops the worker ("Unrecoverable
error"). :func:`start_retrying_locked` wraps the remote-control step's start:
on a 405 it logs one WARNING and tries again, every :data:`RETRY_EVERY`
seconds, for up to :data:`LOCKED_RETRY_SECONDS`; when the queue is still
held then (another live worker runs under this node name), it logs one ERROR
saying so and lets Celery's error through, as stock does. Only this worker's
Control step object is wrapped (by :class:`mingle_plugins.consumer.Blueprint`),
no Celery class.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from kombu.common import ignore_errors

__all__ = ["LOCKED_RETRY_SECONDS", "RETRY_EVERY", "is_locked", "start_retrying_locked"]

logger = logging.getLogger("mingle_plugins")

#: How long a worker tries again to consume its own pidbox queue held by another connection.
LOCKED_RETRY_SECONDS = 5.0
RETRY_EVERY = 0.25


def is_locked(exc: BaseException) -> bool:
    """Whether ``exc`` is the broker's ``405 RESOURCE_LOCKED`` (another connection's exclusive queue)."""
    return getattr(exc, "reply_code", None) == 405


def start_retrying_locked(
    start: Callable[[Any], Any],
    box: Any,
    queue_name: Callable[[], str],
    bound: float = LOCKED_RETRY_SECONDS,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Callable[[Any], Any]:
    """``start(c)`` of Celery's ``Pidbox`` (``box``), tried again on a 405 for up to ``bound`` seconds."""

    def retrying(c: Any) -> Any:
        deadline: float | None = None
        tries = 0
        while True:
            try:
                result = start(c)
            except Exception as exc:
                if not is_locked(exc):
                    raise
                now = clock()
                tries += 1
                channel = getattr(getattr(box, "node", None), "channel", None)
                if channel is not None:  # closed by the broker (405 is a channel error)
                    ignore_errors(c, channel.close)  # type: ignore[no-untyped-call]
                if deadline is None:
                    deadline = now + bound
                    logger.warning(
                        "mingle: the pidbox queue %s is held by another connection (405 RESOURCE_LOCKED): "
                        "a worker of this name that just stopped, whose connection the broker has not "
                        "dropped yet; trying again for up to %gs",
                        queue_name(),
                        bound,
                    )
                elif now >= deadline:
                    logger.error(
                        "mingle: the pidbox queue %s is still held by another connection after %gs "
                        "(%d tries): another live worker runs under the node name %s; Celery stops this "
                        "worker (its remote control cannot start), as stock Celery does",
                        queue_name(),
                        bound,
                        tries,
                        getattr(c, "hostname", "?"),
                    )
                    raise
                sleep(RETRY_EVERY)
                continue
            if tries:
                logger.info(
                    "mingle: the pidbox queue %s is this worker's again after %d tries",
                    queue_name(),
                    tries,
                )
            return result

    return retrying
