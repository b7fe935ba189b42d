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

__all__ = ["AnsweringStep"]


class AnsweringStep(Protocol):
    """The step's state that the ``hello``, ``revoke`` and ``mingle_status`` handlers read."""

    enabled: bool
    driver_type: str
    settings: MingleSettings
    presence: PresenceState
    pm: MinglePluginManager
    runner: HookRunner
    last_summary: MingleSummary | None

    def new_round(self, c: Any) -> MingleRound: ...

    def on_revoke(self, c: Any, ids: tuple[str, ...], terminate: bool) -> None: ...
