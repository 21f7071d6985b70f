"""What the center's request handling needs of its engine and tokenizer, as `typing.Protocol`s.

`CenterService` is written against these seams: `isthmus.engine.core.async_engine.AsyncEngine` (TP or
not) is the `CenterEngine` in production, `isthmus.tokenizer.Tokenizer` the `CenterTokenizer`;
tests pass small fakes. The edge has its own seams (`isthmus.edge.seams`): the tiers never import
each other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from isthmus.center.request import PromptTokenizer

if TYPE_CHECKING:  # the engine's types only: importing them here would load the engine
    from isthmus.engine.core.async_engine import EngineRequest
    from isthmus.engine.core.outputs import EngineLoad, EngineOutput
    from isthmus.engine.core.state import RequestState


class CenterEngine(Protocol):
    """A started engine: streams requests, aborts them, reports load and exports state."""

    def generate(self, req: EngineRequest) -> AsyncIterator[EngineOutput]: ...

    async def abort(self, request_id: str) -> bool: ...

    def load(self) -> EngineLoad: ...

    def export_state(self, request_id: str) -> RequestState:
        """The request's state for live migration; `KeyError` when it is not running here."""
        ...


class CenterTokenizer(PromptTokenizer, Protocol):
    """The service's tokenizer: what request preparation needs (`center/request.py`), whose
    `fingerprint` also goes into `Status` and exported states."""


__all__ = ["CenterEngine", "CenterTokenizer"]
