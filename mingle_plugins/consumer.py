"""A worker consumer whose blueprint runs our Mingle step in place of the stock one.

Enable it with one line in ``celeryconfig``::

    worker_consumer = "mingle_plugins.consumer:Consumer"

Why not just add a step: the blueprint's dependency graph is keyed by class,
and ``Tasks.requires`` and ``Gossip.requires`` name the stock ``Mingle`` class,
so a replacement added with ``app.steps`` loses or breaks depending on the
hash seed. This blueprint resolves every dependency on the stock step to ours
while it builds its own graph; no Celery class is changed. It adds one step,
:class:`mingle_plugins.hello.presence.PresenceStep` (after remote control; it does
something only with ``mingle_presence`` on AMQP). Its remote-control step
(this consumer's object only) tries again for a few seconds when its own pidbox
queue is still held by a connection that is going away (405 RESOURCE_LOCKED:
:mod:`mingle_plugins.answering.pidbox`).
"""

from __future__ import annotations

from functools import partial
from typing import Any

from celery.utils.graph import DependencyGraph
from celery.worker.consumer.consumer import Consumer as StockConsumer
from celery.worker.consumer.control import Control as StockControl
from celery.worker.consumer.mingle import Mingle as StockMingle

from .answering.pidbox import start_retrying_locked
from .bootstep import Mingle

__all__ = ["Blueprint", "Consumer"]

_STOCK_STEP = "celery.worker.consumer.mingle:Mingle"
_OUR_STEP = "mingle_plugins.bootstep:Mingle"
_PRESENCE_STEP = "mingle_plugins.hello.presence:PresenceStep"


class Blueprint(StockConsumer.Blueprint):  # type: ignore[misc]
    """The stock consumer blueprint with :class:`mingle_plugins.bootstep.Mingle`.

    Subclass it (and set ``mingle_step``) to use a Mingle subclass of your own.
    """

    default_steps = [_OUR_STEP if s == _STOCK_STEP else s for s in StockConsumer.Blueprint.default_steps]
    # After remote control: a worker counted in the presence queue answers hellos (AMQP only).
    default_steps.append(_PRESENCE_STEP)

    #: The step that stands in for the stock Mingle step.
    mingle_step: type[Mingle] = Mingle

    def claim_steps(self) -> dict[str, Any]:
        steps: dict[str, Any] = super().claim_steps()
        steps.pop(StockMingle.name, None)  # also when a user listed it in app.steps
        step = self.mingle_step
        steps.pop(Mingle.name, None)
        steps[step.name] = step
        return steps

    def apply(self, parent: Any, **kwargs: Any) -> Any:
        result = super().apply(parent, **kwargs)
        for step in self.order:
            box = getattr(step, "box", None)
            if isinstance(step, StockControl) and not step.is_green and box is not None:
                # The step's own attribute (Control sets ``self.start = self.box.start``).
                step.start = start_retrying_locked(box.start, box, partial(_pidbox_name, box))
        return result

    def _finalize_steps(self, steps: dict[str, Any]) -> list[Any]:
        # As bootsteps.Blueprint._finalize_steps, with one difference: a
        # dependency on the stock Mingle class is resolved to ours, and the
        # stock step, pulled in through Tasks/Gossip.requires, is dropped.
        last = self._find_last()
        self._firstpass(steps)
        steps.pop(StockMingle.name, None)
        ours = self.mingle_step

        def requires(step: Any) -> list[Any]:
            return [ours if dep is StockMingle else dep for dep in step.requires]

        graph = self.graph = DependencyGraph(
            ((step, requires(step)) for step in steps.values()),
            formatter=self.GraphFormatter(root=last),
        )
        if last:
            for obj in graph:
                if obj != last:
                    graph.add_edge(last, obj)
        try:
            order: list[Any] = graph.topsort()
        except KeyError as exc:
            raise KeyError(f"unknown bootstep: {exc}") from exc
        return order


def _pidbox_name(box: Any) -> str:
    node = box.node
    try:
        return str(node.mailbox.get_queue(node.hostname).name)
    except Exception:  # only for a log line
        return f"of {node.hostname}"


class Consumer(StockConsumer):  # type: ignore[misc]
    """The stock worker consumer, with the pluggable Mingle step."""

    Blueprint = Blueprint
