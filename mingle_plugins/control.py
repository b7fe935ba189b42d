"""Remote-control commands this worker answers: ``mingle_status`` (and the hello).

They are installed on *this worker's* pidbox node (a copy of Celery's handler
table, per consumer), never in Celery's global ``Panel`` registry.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from celery.utils.log import get_logger
from celery.worker import state as worker_state

from . import protocol
from .wire import InvalidReply, reply_limits, validate_reply

if TYPE_CHECKING:
    from .bootstep import Mingle

__all__ = ["CONTROL_STEP", "STATUS_COMMAND", "install_handlers", "status_reply"]

logger = get_logger(__name__)

#: The name of Celery's remote-control consumer step.
CONTROL_STEP = "celery.worker.consumer.control.Control"

#: ``app.control.broadcast(STATUS_COMMAND, reply=True)`` asks workers about their last mingle.
STATUS_COMMAND = "mingle_status"


def status_reply(step: Mingle) -> dict[str, Any]:
    """What a worker says about its Mingle step: settings, plugins, last mingle."""
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
    }


def install_handlers(parent: Any, step: Mingle) -> bool:
    """Give the consumer's pidbox node its own handler table with our commands.

    :return: ``False`` when the worker has no remote control (nothing to install).
    """
    control = getattr(parent, "blueprint", None) and parent.blueprint.steps.get(CONTROL_STEP)
    node = getattr(getattr(control, "box", None), "node", None)
    if node is None:
        return False
    handlers: dict[str, Callable[..., Any]] = dict(node.handlers)

    def mingle_status(state: Any, **kwargs: Any) -> dict[str, Any]:
        return status_reply(step)

    handlers[STATUS_COMMAND] = mingle_status
    stock_hello = handlers.get("hello")
    if stock_hello is not None:
        handlers["hello"] = make_hello(step, stock_hello)
    node.handlers = handlers
    return True


def make_hello(step: Mingle, stock_hello: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap the stock ``hello`` handler: a stock request gets the stock reply.

    The ids a request carries are merged (by the stock handler) only when they
    pass the checks a reply's ids pass, and, with trust settings, only when the
    sender is trusted and (with ``mingle_hmac_keys``) its request is signed.
    """

    def hello(state: Any, from_node: str, revoked: Any = None, mingle: Any = None, **kwargs: Any) -> Any:
        settings = step.settings
        if revoked and from_node != state.hostname:
            refused = ""
            if not settings.trusts(str(from_node)):
                refused = "not in mingle_trusted_nodes"
            elif settings.hmac_keys and not settings.accept_unsigned:
                refused = protocol.verify_request(settings.hmac_keys, from_node, revoked, mingle) or ""
            if not refused:  # the same checks as a reply's: all of it or nothing
                try:
                    limits = reply_limits(settings, worker_state.revoked)
                    revoked = validate_reply({"revoked": revoked}, limits).revoked
                except InvalidReply as exc:
                    refused = str(exc)
            if refused:
                logger.warning("mingle: not merging the ids sent by %s: %s", from_node, refused)
                revoked = None
        reply = stock_hello(state, from_node, revoked=revoked, **kwargs)
        if reply is None or not isinstance(mingle, Mapping):
            return reply
        return protocol.extend_reply(reply, mingle, state.hostname, settings.hmac_keys)

    return hello
