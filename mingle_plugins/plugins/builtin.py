"""The built-in hook implementations: exactly what stock Celery Mingle does.

``mingle_transport_compatible`` has none: when every plugin abstains, the
step's ``compatible_transports`` (the stock set of the installed Celery)
answers, so that a subclass may change it. ``mingle_merge_revoked`` has
none: with no policy every id is kept, and the host merges as the installed
Celery does (:func:`mingle_plugins.wire.compat.merge_ids`).

Registered first under the name ``builtin``, so they run last: any plugin's
answer comes before them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..hello.collect import hello_exchange
from ..markers import hookimpl
from ..model import HelloOptions, Verdicts, WorkerConsumer

__all__ = ["mingle_adjust_clock", "mingle_send_hello"]


@hookimpl(trylast=True)
def mingle_send_hello(
    consumer: WorkerConsumer, revoked: Any, options: HelloOptions, verdicts: Verdicts
) -> Mapping[str, Any] | None:
    """The stock pidbox ``hello`` broadcast, collected as ``options`` say, each reply judged as
    it arrives.

    With the default settings this is exactly the stock hello; see
    :func:`mingle_plugins.hello.collect.hello_exchange` for what the options change.
    """
    return hello_exchange(consumer, revoked, options, verdicts)


@hookimpl(trylast=True)
def mingle_adjust_clock(consumer: WorkerConsumer, clock: int | None) -> bool | None:
    """``app.clock.adjust(clock)``, or ``forward()`` without a clock, as stock."""
    if clock:
        consumer.app.clock.adjust(clock)
    else:
        consumer.app.clock.forward()
    return True
