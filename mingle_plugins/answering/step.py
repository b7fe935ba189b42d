"""What the answering side needs of the worker's Mingle step (the bootstep implements it)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..hello.presence import PresenceState
    from ..hello.rounds import MingleRound
    from ..model import MingleSummary
    from ..plugins.loader import MinglePluginManager
    from ..plugins.runner import HookRunner
    from ..settings import MingleSettings

__all__ = ["AnsweringStep", "RefusedRequests"]

#: How many node names :class:`RefusedRequests` keeps a reason for (the count goes on).
REFUSED_NODES_KEPT = 50


class RefusedRequests:
    """The hello requests whose ids this worker refused since it started (clock skew, a bad
    signature, an untrusted name...): a count, and the last reason per node name."""

    def __init__(self) -> None:
        self.count = 0
        self.by_node: dict[str, str] = {}

    def add(self, node: str, reason: str) -> None:
        self.count += 1
        self.by_node.pop(node, None)
        self.by_node[node] = reason
        while len(self.by_node) > REFUSED_NODES_KEPT:
            del self.by_node[next(iter(self.by_node))]

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "last_reason_by_node": dict(self.by_node)}


class AnsweringStep(Protocol):
    """The step's state that the ``hello``, ``revoke`` and ``mingle_status`` handlers read."""

    enabled: bool
    driver_type: str
    settings: MingleSettings
    presence: PresenceState
    pm: MinglePluginManager
    runner: HookRunner
    last_summary: MingleSummary | None
    requests_refused: RefusedRequests

    def new_round(self, c: Any) -> MingleRound: ...

    def on_revoke(self, c: Any, ids: tuple[str, ...], terminate: bool) -> None: ...
