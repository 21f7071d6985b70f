"""What the edge's request path needs of its collaborators, as `typing.Protocol`s.

The orchestrator, the local run, the relay and the node are written against these seams rather
than concrete classes, so tests can pass small fakes and the A/B split (`AbPools`) can stand in
for a `CenterPool`. The concrete implementations: `isthmus.engine.AsyncEngine` (`EdgeEngine`),
`CenterPool` and `AbPools` (`CenterPoolLike`), `Metrics` (`RequestMetrics`), `ApiKeyStore`
(`Authenticator`), `isthmus.tokenizer.Tokenizer` (`EdgeTokenizer`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Protocol

from isthmus.protocol import GenerateRequest

from .answers import CenterAnswer
from .router import LoadView

if TYPE_CHECKING:  # the engine's types only: importing them at run time would load the engine
    from isthmus.engine.core.async_engine import EngineRequest
    from isthmus.engine.core.outputs import EngineLoad, EngineOutput


class EdgeTokenizer(Protocol):
    """The tokenizer calls the request path makes (extras such as `apply_chat_template`,
    `vocab_size` and `min_num_tokens` are read by name where a tokenizer may lack them)."""

    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...

    def decode(self, ids: list[int], skip_special_tokens: bool = ...) -> str: ...

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...


class EdgeEngine(Protocol):
    """The edge's local engine: an `AsyncEngine` or anything with its request API."""

    @property
    def tokenizer(self) -> EdgeTokenizer: ...

    def generate(self, req: EngineRequest) -> AsyncIterator[EngineOutput]: ...

    async def abort(self, request_id: str) -> bool: ...

    def load(self) -> EngineLoad: ...


class ManagedEngine(EdgeEngine, Protocol):
    """An engine the edge node owns: it starts it, stops it and reads its gauges."""

    @property
    def is_running(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class CenterPoolLike(Protocol):
    """The center tier as the orchestrator uses it: a `CenterPool` or an `AbPools` split.

    Optional extras are read by name: `variant_for(req)` (an A/B split labels the route).
    """

    def has_healthy(self) -> bool: ...

    def load_view(self) -> LoadView: ...

    def tokenizer_fingerprint(self) -> str | None: ...

    def generate(self, req: GenerateRequest) -> AsyncIterator[CenterAnswer]: ...


class RequestMetrics(Protocol):
    """The per-request figures the orchestrator records (the edge `Metrics`)."""

    def observe_ttft(self, seconds: float) -> None: ...

    def observe_itl(self, seconds: float) -> None: ...

    def observe_queue(self, seconds: float) -> None: ...

    def record_tokens(self, num_prompt: int, num_completion: int) -> None: ...

    def record_route(self, tier: str, reason: str) -> None: ...

    def record_escalation(self, when: str) -> None: ...

    def record_error(self, code: str | int) -> None: ...


class Lease(Protocol):
    """One admitted request of one client; released when the request ends."""

    def release(self) -> None: ...


class Authenticator(Protocol):
    """API-key admission (`ApiKeyStore`): a lease, or `ProtocolError` (unknown key, over limit)."""

    def acquire(self, key: str | None) -> Lease: ...


__all__ = ["Authenticator", "CenterPoolLike", "EdgeEngine", "EdgeTokenizer", "Lease",
           "ManagedEngine", "RequestMetrics"]
