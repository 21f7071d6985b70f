"""Huge prompts do not stall the center: refused by their size before tokenizing when they cannot
fit, else templated and tokenized in a worker thread while Status keeps being answered."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from isthmus.center.prepare import RequestPreparer
from isthmus.protocol import (
    ChatMessage,
    Done,
    Error,
    ErrorCode,
    GenerateRequest,
    SamplingOptions,
    Status,
    StatusRequest,
    limits,
    rpc,
)

from tests.center.conftest import Center

GREEDY = SamplingOptions(max_tokens=3, temperature=0.0, ignore_eos=True)
HUGE_CJK = ("漢字かな交じり文" * (limits.MAX_MESSAGE_CHARS // 8))[: limits.MAX_MESSAGE_CHARS]  # ~3 MB UTF-8


class SpyTokenizer:
    """The real tokenizer, recording which thread ran each call and when it started and ended."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[tuple[str, int, float, float]] = []  # (name, thread id, start, end)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in ("encode", "encode_chat", "apply_chat_template"):
            return attr

        def spied(*args: Any, **kwargs: Any) -> Any:
            start = time.monotonic()
            try:
                return attr(*args, **kwargs)
            finally:
                self.calls.append((name, threading.get_ident(), start, time.monotonic()))

        return spied


def _spy(center: Center) -> SpyTokenizer:
    spy = SpyTokenizer(center.service.tokenizer)
    center.service.tokenizer = spy
    center.service.preparer.tokenizer = spy
    return spy


async def _loop_stall_probe(stop: asyncio.Event, interval_s: float = 0.002) -> float:
    """The loop's worst lateness in seconds while ``stop`` is unset."""
    worst = 0.0
    while not stop.is_set():
        t = time.monotonic()
        await asyncio.sleep(interval_s)
        worst = max(worst, time.monotonic() - t - interval_s)
    return worst


async def _huge_chat_under_status_polling(center: Center) -> tuple[list[Any], list[float], float]:
    """Send the huge chat; poll Status until it is answered. (its messages, Status reply times, stall)"""
    stop = asyncio.Event()
    probe = asyncio.create_task(_loop_stall_probe(stop))
    status_at: list[float] = []

    async def poll() -> None:
        while not stop.is_set():
            assert isinstance(await center.unary(rpc.STATUS, StatusRequest()), Status)
            status_at.append(time.monotonic())
            await asyncio.sleep(0.005)

    poller = asyncio.create_task(poll())
    req = GenerateRequest(id="huge", messages=[ChatMessage(role="user", content=HUGE_CJK)], sampling=GREEDY)
    msgs = await center.generate(req, timeout=120)
    stop.set()
    await poller
    return msgs, status_at, await probe


async def test_status_is_answered_while_a_multi_mb_chat_is_tokenized_in_a_worker(center: Center) -> None:
    spy = _spy(center)
    msgs, status_at, stall_s = await _huge_chat_under_status_polling(center)
    assert isinstance(msgs[-1], Error) and msgs[-1].code == ErrorCode.PROMPT_TOO_LONG  # tiny model: 2k tokens
    assert spy.calls and all(tid != threading.get_ident() for _, tid, _, _ in spy.calls)  # never the loop
    assert center.service.preparer.num_offloaded == 1
    start, end = min(c[2] for c in spy.calls), max(c[3] for c in spy.calls)
    during = [t for t in status_at if start < t < end]
    assert during, "no Status was answered while the prompt was being tokenized"
    # the same prompt prepared on the loop, as before the fix, for comparison
    num_calls = len(spy.calls)
    center.service.preparer.inline_max_bytes = 1 << 30
    _, _, inline_stall_s = await _huge_chat_under_status_polling(center)
    inline = spy.calls[num_calls:]
    print(f"\n{len(HUGE_CJK.encode()) / 1e6:.1f} MB chat: templating+tokenizing took {end - start:.2f} s; "
          f"in a worker: {len(during)} Status answered meanwhile, worst loop stall {stall_s * 1000:.0f} ms; "
          f"on the loop (before): worst loop stall {inline_stall_s * 1000:.0f} ms "
          f"({sum(c[3] - c[2] for c in inline):.2f} s tokenizing)")


async def test_a_prompt_too_large_by_its_bytes_is_refused_before_tokenizing(center: Center) -> None:
    spy = _spy(center)
    req = GenerateRequest(id="huge", prompt=HUGE_CJK, sampling=GREEDY)
    msgs = await center.generate(req, timeout=60)
    assert isinstance(msgs[-1], Error) and msgs[-1].code == ErrorCode.PROMPT_TOO_LONG
    assert "max_model_len" in msgs[-1].message
    assert spy.calls == []  # refused by its size alone
    ok = await center.generate(GenerateRequest(id="ok", prompt="hello there", sampling=GREEDY))
    assert isinstance(ok[-1], Done) and spy.calls  # small prompts are still tokenized (on the loop)
    assert all(tid == threading.get_ident() for _, tid, _, _ in spy.calls)


async def test_too_many_large_prompts_at_once_are_overloaded(center: Center) -> None:
    preparer = RequestPreparer(center.service.tokenizer, None, inline_max_bytes=8, max_pending=0)
    try:
        req = GenerateRequest(id="big", prompt="a long enough prompt", sampling=GREEDY)
        try:
            await preparer.prepare(req)
        except Exception as exc:
            assert getattr(exc, "code", None) == ErrorCode.OVERLOADED and getattr(exc, "retryable", False)
        else:
            raise AssertionError("expected OVERLOADED")
        small = await RequestPreparer(center.service.tokenizer, None).prepare(
            GenerateRequest(id="s", prompt="hi", sampling=GREEDY))
        assert small.prompt_ids
    finally:
        preparer.close()
