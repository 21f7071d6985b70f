"""A blocking wrapper of the SDK for scripts: the event loop runs in a background thread.

    from isthmus.client import sync

    with sync.connect("edge.example:4433", api_key="...") as client:
        for chunk in client.generate("Hello", max_tokens=32):
            print(chunk.text, end="", flush=True)
        print(client.complete("Hi").route)

Leaving a `for` loop early (or closing the iterator) cancels the request on the edge.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Sequence
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar

from .address import Address, parse_addresses
from .client import Client, ResponseStream
from .connection import ConnectionInfo
from .request import Prompt
from .results import Chunk, Completion

T = TypeVar("T")


class _LoopThread:
    """An asyncio event loop running forever in a daemon thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="isthmus-client", daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # KeyboardInterrupt while waiting: cancel the coroutine too
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


class SyncClient:
    """Blocking twin of `Client`; build it with `sync.connect()`."""

    def __init__(self, client: Client, runner: _LoopThread) -> None:
        self._client = client
        self._runner = runner
        self._is_closed = False

    def generate(self, prompt: Prompt, **kwargs: Any) -> Iterator[Chunk]:
        """Stream an answer, chunk by chunk (arguments as `Client.generate`, validated now)."""
        stream = self._client.generate(prompt, **kwargs)
        return self._iterate(stream)

    def _iterate(self, stream: ResponseStream) -> Iterator[Chunk]:
        try:
            while True:
                try:
                    yield self._runner.run(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            if not self._is_closed:
                self._runner.run(stream.aclose())

    def complete(self, prompt: Prompt, **kwargs: Any) -> Completion:
        """The whole answer (arguments as `Client.generate`)."""
        return self._runner.run(self._client.complete(prompt, **kwargs))

    def rebind(self) -> int:
        """Move the connection to a new local UDP port; returns it."""
        return self._runner.run(self._client.rebind())

    @property
    def connection_info(self) -> ConnectionInfo | None:
        """How the live connection was set up."""
        return self._client.connection_info

    def close(self) -> None:
        """Close the connection and stop the background loop."""
        if self._is_closed:
            return
        try:
            self._runner.run(self._client.close())
        finally:
            self._is_closed = True
            self._runner.stop()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def connect(
    address: str | Address | tuple[str, int] | Sequence[str | Address | tuple[str, int]],
    **options: Any,
) -> SyncClient:
    """Connect to the first healthy edge; options as `isthmus.client.connect`. Use with `with`."""
    addresses = parse_addresses(address)
    runner = _LoopThread()
    try:

        async def start() -> Client:
            client = Client(addresses, **options)
            await client.connect()
            return client

        client = runner.run(start())
    except BaseException:
        runner.stop()
        raise
    return SyncClient(client, runner)
