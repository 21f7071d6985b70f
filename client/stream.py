"""`ResponseStream`: the async iterator `Client.generate` returns."""

from __future__ import annotations

from collections.abc import AsyncIterator

from isthmus.protocol import Done

from .results import Chunk, Completion, CompletionBuilder


class ResponseStream:
    """The chunks of one answer: `async for chunk in stream`. After the last chunk, `completion`
    holds the whole answer (route, usage, timings). Leaving early (`break`, `aclose()`, task
    cancellation) cancels the request on the edge."""

    def __init__(self, inner: AsyncIterator[Chunk | Done], request_id: str) -> None:
        self._inner = inner
        self.request_id = request_id
        self._builder = CompletionBuilder(request_id)
        self.completion: Completion | None = None

    def __aiter__(self) -> ResponseStream:
        return self

    async def __anext__(self) -> Chunk:
        item = await self._inner.__anext__()
        if isinstance(item, Done):
            self.completion = self._builder.finish(item)
            await self.aclose()
            raise StopAsyncIteration
        self._builder.add(item)
        return item

    async def aclose(self) -> None:
        """Stop reading; cancels the request on the edge if it is still running."""
        aclose = getattr(self._inner, "aclose", None)
        if aclose is not None:
            await aclose()

    async def __aenter__(self) -> ResponseStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
