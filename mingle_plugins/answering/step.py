"""What the answering side needs of the worker's Mingle step (the bootstep implements it)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..hello.presence import PresenceState
    from ..hello.rounds import MingleRound
    from ..model import MingleSummary
    from ..plugins.loader import MinglePluginManager
    from ..plugins.runner import HookRunner
    from ..settings import MingleSettings

__all__ = ["AnsweringStep", "RefusedRequests", "SameName"]

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


class SameName:
    """Other live workers heard under this worker's own node name (two workers started with one
    ``-n``, e.g. two pods with one hostname), each told once in a WARNING line."""

    #: What it means, for the WARNING line and ``celery mingle status`` / ``check`` (``%s``: the name).
    MEANING = (
        "that worker does not answer this one's hello, nor this one its (a hello from its own name), "
        "and a revoke or any remote-control command addressed to %s reaches both"
    )

    def __init__(self) -> None:
        self.count = 0
        self.last = ""
        self._told: set[str] = set()

    def heard(self, name: str, token: str, how: str) -> None:
        """``how``: what was heard (``"answered its hello"``, ``"sent a hello"``)."""
        self.count += 1
        self.last = how
        if token in self._told or len(self._told) > 100:
            return
        self._told.add(token)
        logging.getLogger("mingle_plugins").warning(
            "mingle: another live worker runs under this worker's node name %s (it %s): " + self.MEANING,
            name,
            how,
            name,
        )

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "last": self.last}


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
    same_name: SameName

    def new_round(self, c: Any) -> MingleRound: ...

    def on_revoke(self, c: Any, ids: tuple[str, ...], terminate: bool) -> None: ...
