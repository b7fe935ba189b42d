"""The hook specifications: the contract between the Mingle step and plugins.

Every hook is called with keyword arguments; an implementation may accept any
subset of them. Built-in implementations (:mod:`mingle_plugins.builtin`) give
stock Celery behaviour and are registered first, so that they run last.
A plugin whose implementation raises is skipped for that call, with one log
line naming it; the call is then answered without it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .markers import hookspec

if TYPE_CHECKING:
    from celery import Celery

    from .model import HelloOptions, MingleSummary

__all__ = [  # in the order a mingle calls them
    "mingle_transport_compatible",
    "mingle_tune_hello",
    "mingle_expected_replies",
    "mingle_send_hello",
    "mingle_on_reply",
    "mingle_adjust_clock",
    "mingle_merge_revoked",
    "mingle_sync_complete",
]


@hookspec(firstresult=True)
def mingle_transport_compatible(app: Celery, driver_type: str) -> bool | None:
    """Say whether workers can mingle on this transport.

    Called once, when the consumer's Mingle step is created (before any
    connection is used for a hello), and by ``celery mingle check``.

    :param app: the Celery application.
    :param driver_type: the broker transport's ``driver_type``, e.g.
        ``"redis"``, ``"amqp"``, ``"filesystem"``.
    :return: ``True`` to claim the transport, ``False`` to refuse it,
        ``None`` to abstain. ``firstresult``: the first ``True`` or ``False``
        wins, so return ``None`` for transports you know nothing about.
        When every plugin abstains, the step's ``compatible_transports`` answers:
        the stock set of the installed Celery.

    .. versionadded:: 0.1
    """


@hookspec
def mingle_tune_hello(app: Celery, driver_type: str, options: HelloOptions) -> None:
    """Adjust how the hello is collected on a transport.

    Called at every mingle, before ``mingle_expected_replies``, with
    ``options`` already filled from the settings (``mingle_hello_timeout``,
    ``mingle_quiet_window``). Every implementation is called; each may change
    ``options`` in place (a transport plugin typically raises ``timeout``
    above its polling interval, so that late replies are not lost). Values
    are validated after the hook: a negative or non-numeric one is logged
    and replaced by the setting.

    :param app: the Celery application.
    :param driver_type: the broker transport's ``driver_type``.
    :param options: the :class:`~mingle_plugins.HelloOptions` to adjust.
    :return: ignored. Not ``firstresult``: every implementation is called.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def mingle_expected_replies(consumer: Any, driver_type: str) -> int | None:
    """Count the neighbours that will answer the hello, when the broker can tell.

    Called at every mingle, right before the hello is sent, only when
    ``mingle_expect_replies`` is on. Knowing the count lets the collection end
    as soon as every neighbour answered instead of waiting for the idle
    timeout; ``0`` skips the hello (the worker is alone).

    :param consumer: the worker's ``Consumer`` (``consumer.connection`` is the
        broker connection, ``consumer.hostname`` this node's name).
    :param driver_type: the broker transport's ``driver_type``.
    :return: the number of *other* nodes that will answer, or ``None`` when
        unknown. ``firstresult``: the first non-``None`` count is used.
        An overestimate only costs the timeout; an underestimate loses replies.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def mingle_send_hello(
    consumer: Any, revoked: Any, timeout: float, options: HelloOptions
) -> Mapping[str, Any] | None:
    """Send the hello to the neighbours and collect their replies.

    Called at every mingle, after ``mingle_tune_hello``. The built-in
    implementation broadcasts the stock ``hello`` control command through the
    pidbox, the way the installed Celery does; a transport plugin with its own
    channel (a database table, say) implements this hook.

    :param consumer: the worker's ``Consumer``.
    :param revoked: what this node sends as its revoked ids, in the installed
        Celery's format (a list of ids on 5.7, the stamp dict before).
    :param timeout: ``options.timeout``, given separately for convenience.
    :param options: the tuned :class:`~mingle_plugins.HelloOptions`.
    :return: ``{node name: reply}`` as received, this node's own reply may be
        left in (it is removed). ``firstresult``: return ``None`` to let the
        next implementation (ultimately the pidbox broadcast) send it.

    .. versionadded:: 0.1
    """


@hookspec
def mingle_on_reply(consumer: Any, nodename: str, reply: dict[str, Any]) -> None:
    """Inspect, transform or reject one neighbour's reply before it is merged.

    Called once per reply that is a mapping, in arrival order, before the
    built-in validation. Every implementation is called, in plugin order.

    :param consumer: the worker's ``Consumer``.
    :param nodename: the node that sent the reply.
    :param reply: a copy of the reply, owned by this mingle: change it in
        place to transform it (the next implementations see the change).
    :return: ignored. Raise :class:`~mingle_plugins.RejectReply` to reject the
        whole reply; any other exception also rejects it (fail closed) and is
        logged with the plugin's name. After the hook the built-in validation
        still checks the (transformed) reply, whole or nothing. Not
        ``firstresult``: every implementation is called.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def mingle_adjust_clock(consumer: Any, clock: int | None, nodename: str | None) -> bool | None:
    """Move this node's Lamport clock on a neighbour's clock.

    Called once per accepted reply, before its revoked ids are merged.

    :param consumer: the worker's ``Consumer`` (``consumer.app.clock``).
    :param clock: the neighbour's validated clock, or ``None`` if it sent none.
    :param nodename: the neighbour, or ``None`` when called through a
        subclass's ``on_clock_event`` outside a reply.
    :return: ``True`` when handled. ``firstresult``: return ``None`` to leave
        it to the next one; the built-in does what stock does,
        ``app.clock.adjust(clock)`` or ``app.clock.forward()`` without a clock.

    .. versionadded:: 0.1
    """


@hookspec(firstresult=True)
def mingle_merge_revoked(consumer: Any, revoked: Any, nodename: str | None) -> bool | None:
    """Merge a neighbour's validated revoked ids into this worker's revoked set.

    Called once per accepted reply that carries revoked ids.

    :param consumer: the worker's ``Consumer``
        (``consumer.controller.state.revoked`` is the set).
    :param revoked: a list of ids (Celery 5.7 senders) or a ``{id: stamp}``
        dict (5.3 to 5.6 senders), already validated.
    :param nodename: the neighbour, or ``None`` outside a reply.
    :return: ``True`` when merged. ``firstresult``: return ``None`` to leave it
        to the next one. The built-in does exactly what the installed Celery
        does: ``state.merge_revoked(ids)`` on 5.7 (local stamps), and
        ``state.revoked.update(revoked)`` before (sender's stamps). A policy
        must only ever add ids: the step checks that no id was lost.

    .. versionadded:: 0.1
    """


@hookspec
def mingle_sync_complete(consumer: Any, summary: MingleSummary) -> None:
    """Observe the outcome of a mingle (for logs, metrics, alerts).

    Called once at the end of every mingle, also when the worker was alone,
    the hello was skipped or every reply was rejected.

    :param consumer: the worker's ``Consumer``.
    :param summary: the :class:`~mingle_plugins.MingleSummary`.
    :return: ignored. Not ``firstresult``: every implementation is called.

    .. versionadded:: 0.1
    """
