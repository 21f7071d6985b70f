"""Cancellation reaches the edge (Cancel frame and stream reset); per-request deadlines."""

from __future__ import annotations

import asyncio
import gc

import pytest
from isthmus.client import DeadlineExceeded, connect

from .certs import Certs
from .fake_edge import FakeEdge


async def _until(predicate: object, timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not predicate():  # type: ignore[operator]
        assert loop.time() < end, "condition not reached"
        await asyncio.sleep(0.01)


async def test_breaking_out_cancels_on_the_edge(edge: FakeEdge, certs: Certs) -> None:
    async with connect(edge.address, ca=certs.ca) as client:
        async for _chunk in client.generate("slow:100"):
            break
        gc.collect()  # the dropped generator is closed by the loop's finalizer
        await _until(lambda: edge.aborted_ids)
        rid = edge.requests[0].id
        assert edge.aborted_ids == [rid]
        await _until(lambda: edge.reset_stream_ids and edge.cancelled_ids)
        assert edge.cancelled_ids == [rid]
        assert edge.completed_ids == []
        # the connection stays usable
        assert (await client.complete("hi")).text == "Hello world"


async def test_aclose_cancels(edge: FakeEdge, certs: Certs) -> None:
    async with connect(edge.address, ca=certs.ca) as client:
        stream = client.generate("slow:100")
        async with stream:
            await stream.__anext__()
        await _until(lambda: edge.aborted_ids)
        assert edge.aborted_ids == [stream.request_id]


async def test_task_cancellation_cancels(edge: FakeEdge, certs: Certs) -> None:
    async with connect(edge.address, ca=certs.ca) as client:
        task = asyncio.create_task(client.complete("hang"))
        await _until(lambda: edge.requests)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await _until(lambda: edge.aborted_ids)
        assert edge.aborted_ids == [edge.requests[0].id]


async def test_local_deadline(edge: FakeEdge, certs: Certs) -> None:
    async with connect(edge.address, ca=certs.ca) as client:
        with pytest.raises(DeadlineExceeded) as info:
            await client.complete("hang", timeout=0.2)
        assert isinstance(info.value, TimeoutError)
        assert edge.requests[0].timeout_ms == 200
        await _until(lambda: edge.aborted_ids)


async def test_default_timeout_from_connect(edge: FakeEdge, certs: Certs) -> None:
    async with connect(edge.address, ca=certs.ca, timeout=0.2) as client:
        with pytest.raises(DeadlineExceeded):
            await client.complete("hang")
