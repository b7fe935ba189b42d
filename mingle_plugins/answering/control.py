"""Remote-control commands this worker answers: ``mingle_status``, the checked ``hello``, and
``revoke`` seen by the ``mingle_on_revoke`` plugins.

They are installed on *this worker's* pidbox node (a copy of Celery's handler
table, per consumer), never in Celery's global ``Panel`` registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from celery.utils.log import get_logger

from ..hello.checks import ReplyLimits, valid_ids
from ..wire.compat import CONTROL_STEP
from .hello import make_hello

if TYPE_CHECKING:
    from .step import AnsweringStep

__all__ = ["STATUS_COMMAND", "install_handlers", "make_revoke", "status_reply"]

logger = get_logger(__name__)

#: ``app.control.broadcast(STATUS_COMMAND, reply=True)`` asks workers about their last mingle.
STATUS_COMMAND = "mingle_status"


def plugin_status(step: AnsweringStep, consumer: Any) -> dict[str, Any]:
    """What each plugin says of its own state (``mingle_plugin_status``), by plugin name."""
    out: dict[str, Any] = {}
    for result in step.runner.each("mingle_plugin_status", consumer=consumer, settings=step.settings):
        if result.value is None:
            continue
        if not isinstance(result.value, Mapping):
            problem = f"returned {type(result.value).__name__}, not a mapping"
            step.runner.record_fault(result.plugin, "mingle_plugin_status", "wrong return", problem)
            continue
        out[result.plugin] = {str(k): v for k, v in result.value.items()}
    return out


def status_reply(step: AnsweringStep, consumer: Any = None) -> dict[str, Any]:
    """What a worker says about its Mingle step: settings, plugins, last mingle."""
    plugins_say = plugin_status(step, consumer)  # first: a fault it records is in "faults"
    return {
        "enabled": bool(step.enabled),
        "transport": step.driver_type,
        "plugins": [
            {
                "name": r.name,
                "distribution": r.distribution,
                "version": r.version,
                "status": r.status,
                "reason": r.reason,
                "hooks": list(r.hooks),
                "import_seconds": r.import_seconds,
            }
            for r in step.pm.records
        ],
        "last": step.last_summary.as_dict() if step.last_summary else None,
        "faults": step.runner.fault_list(),
        "requests_refused": step.requests_refused.as_dict(),
        "same_name": step.same_name.as_dict(),
        "plugin_status": plugins_say,
    }


def make_revoke(step: AnsweringStep, stock_revoke: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the stock ``revoke`` handler: invalid ids are refused with an error reply (the valid
    ones of the same command are revoked), then the ``mingle_on_revoke`` plugins see the ids."""

    def revoke(state: Any, task_id: Any, terminate: bool = False, signal: Any = None, **kwargs: Any) -> Any:
        given = list(task_id) if isinstance(task_id, (list, tuple, set)) else [task_id]
        limits = ReplyLimits(max_ids=2**31, max_id_length=step.settings.max_id_length, max_clock=0)
        valid, problems = valid_ids(given, limits)
        if not valid:
            logger.warning("mingle: refused a revoke of %d invalid task ids: %s", len(problems), problems[0])
            return {"error": f"refused {len(problems)} invalid task ids ({problems[0]}); nothing revoked"}
        ids = tuple(dict.fromkeys(valid))
        answer = stock_revoke(
            state, list(ids) if len(given) > 1 else ids[0], terminate=terminate, signal=signal, **kwargs
        )
        consumer = getattr(state, "consumer", None)
        if consumer is not None:
            step.on_revoke(consumer, ids, bool(terminate))
        if problems:
            logger.warning("mingle: refused %d invalid task ids of a revoke: %s", len(problems), problems[0])
            return {
                "error": f"refused {len(problems)} invalid task ids ({problems[0]}); "
                f"revoked the other {len(ids)}: {', '.join(ids)[:200]}"
            }
        return answer

    return revoke


def install_handlers(parent: Any, step: AnsweringStep) -> bool:
    """Give the consumer's pidbox node its own handler table with our commands.

    :return: ``False`` when the worker has no remote control (nothing to install).
    """
    control = getattr(parent, "blueprint", None) and parent.blueprint.steps.get(CONTROL_STEP)
    node = getattr(getattr(control, "box", None), "node", None)
    if node is None:
        return False
    handlers: dict[str, Callable[..., Any]] = dict(node.handlers)

    def mingle_status(state: Any, **kwargs: Any) -> dict[str, Any]:
        return status_reply(step, getattr(state, "consumer", None))

    handlers[STATUS_COMMAND] = mingle_status
    stock_hello = handlers.get("hello")
    if stock_hello is not None:
        handlers["hello"] = make_hello(step, stock_hello)
    stock_revoke = handlers.get("revoke")
    if stock_revoke is not None:
        handlers["revoke"] = make_revoke(step, stock_revoke)
    node.handlers = handlers
    return True
