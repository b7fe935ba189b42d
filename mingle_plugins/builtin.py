"""The built-in hook implementations: exactly what stock Celery Mingle does.

``mingle_transport_compatible`` has none: when every plugin abstains, the
step's ``compatible_transports`` (the stock set of the installed Celery)
answers, so that a subclass may change it.

Registered first under the name ``builtin``, so they run last: any plugin's
answer comes before them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .markers import hookimpl
from .model import HelloOptions
from .wire import hello_exchange, sends_ids_only

__all__ = [
    "mingle_adjust_clock",
    "mingle_merge_revoked",
    "mingle_send_hello",
]


@hookimpl(trylast=True)
def mingle_send_hello(consumer: Any, revoked: Any, options: HelloOptions) -> Mapping[str, Any] | None:
    """The stock pidbox ``hello`` broadcast, collected as ``options`` say.

    With the default settings this is exactly the stock hello; see
    :func:`mingle_plugins.wire.hello_exchange` for what the options change.
    """
    return hello_exchange(consumer, revoked, options)


@hookimpl(trylast=True)
def mingle_adjust_clock(consumer: Any, clock: int | None) -> bool | None:
    """``app.clock.adjust(clock)``, or ``forward()`` without a clock, as stock."""
    if clock:
        consumer.app.clock.adjust(clock)
    else:
        consumer.app.clock.forward()
    return True


@hookimpl(trylast=True)
def mingle_merge_revoked(consumer: Any, revoked: Any) -> bool | None:
    """``state.merge_revoked`` on 5.7 (ids, local stamps), ``revoked.update`` before."""
    state = consumer.controller.state
    if sends_ids_only(state):
        state.merge_revoked(revoked)
    else:
        state.revoked.update(revoked)
    return True
