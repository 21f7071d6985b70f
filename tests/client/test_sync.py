"""The blocking wrapper, against a fake edge served from its own thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator

import pytest
from isthmus.client import InvalidRequest, Overloaded, sync
from isthmus.protocol import Error as ErrorMsg
from isthmus.protocol import ErrorCode

from .certs import Certs
from .fake_edge import FakeEdge


@pytest.fixture
def thread_edge(certs: Certs) -> Iterator[FakeEdge]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    edge = asyncio.run_coroutine_threadsafe(FakeEdge(certs.cert, certs.key).start(), loop).result(10)
    yield edge
    loop.call_soon_threadsafe(edge.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def test_sync_generate_and_complete(thread_edge: FakeEdge, certs: Certs) -> None:
    with sync.connect(thread_edge.address, ca=certs.ca) as client:
        texts = [chunk.text for chunk in client.generate("hi")]
        answer = client.complete("hi", max_tokens=4)
    assert "".join(texts) == "Hello world"
    assert answer.text == "Hello world" and answer.route.tier == "edge"
    assert thread_edge.requests[1].sampling.max_tokens == 4


def test_sync_break_cancels_on_the_edge(thread_edge: FakeEdge, certs: Certs) -> None:
    with sync.connect(thread_edge.address, ca=certs.ca) as client:
        for _chunk in client.generate("slow:100"):
            break
        deadline = time.monotonic() + 5.0
        while not thread_edge.aborted_ids:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert thread_edge.cancelled_ids == [thread_edge.requests[0].id]


def test_sync_errors_are_typed(thread_edge: FakeEdge, certs: Certs) -> None:
    thread_edge.fail_next.append(ErrorMsg(id="", code=ErrorCode.OVERLOADED, message="busy", retryable=False))
    with sync.connect(thread_edge.address, ca=certs.ca) as client:
        with pytest.raises(InvalidRequest):
            client.generate("hi", top_k=-1)
        with pytest.raises(Overloaded):
            client.complete("hi")
