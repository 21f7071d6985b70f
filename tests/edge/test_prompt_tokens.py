"""Prompt tokenization on the edge: refused by bytes before tokenizing, large inputs off the event
loop, bad ids and refused conversations as typed client errors. Also measures the loop's worst
stall under a flood of huge prompts (printed; asserted only structurally)."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from isthmus.edge.orchestrator import Orchestrator
from isthmus.edge.prompt_tokens import PromptTokenizer
from isthmus.models.tiny_tokenizer import write_tiny_tokenizer
from isthmus.protocol import (
    ChatMessage,
    Continuation,
    Error,
    ErrorCode,
    GenerateRequest,
    SamplingOptions,
    pack_ids,
)
from isthmus.tokenizer import Tokenizer

from .test_orchestrator import FakeEngine, FakePool, FakeRouter, RefusingKeys

pytestmark = pytest.mark.timeout(60)

CJK = "漢字かな交じり文"  # 8 chars, 24 bytes


class RecordingTokenizer:
    """A real tokenizer that notes which thread ran each encode / template render, and how big."""

    def __init__(self, tok: Tokenizer, gate: threading.Event | None = None) -> None:
        self._tok = tok
        self.gate = gate  # when set, large encodes wait for it (proves the loop runs meanwhile)
        self.calls: list[tuple[str, int, bool]] = []  # (what, chars, on the loop's thread)
        self.loop_thread = threading.get_ident()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tok, name)

    def _note(self, what: str, size: int) -> None:
        self.calls.append((what, size, threading.get_ident() == self.loop_thread))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self._note("encode", len(text))
        if self.gate is not None and len(text) > 10_000 and not self.gate.wait(timeout=20):
            raise AssertionError("the event loop never ran while a prompt was being tokenized")
        return self._tok.encode(text, add_special_tokens=add_special_tokens)

    def apply_chat_template(self, messages: Any, **kw: Any) -> str:
        self._note("template", sum(len(m["content"]) for m in messages))
        return self._tok.apply_chat_template(messages, **kw)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    path: Path = tmp_path_factory.mktemp("prompt_tokens_tok")
    write_tiny_tokenizer(path)
    return Tokenizer.from_dir(path)


def make(tok: Any, limit: int = 4096) -> tuple[Orchestrator, FakeEngine]:
    engine = FakeEngine()
    orch = Orchestrator(engine, FakePool(), FakeRouter(), tokenizer=tok, max_prompt_tokens=limit)
    return orch, engine


def req(**kw: Any) -> GenerateRequest:
    return GenerateRequest(id="r", sampling=SamplingOptions(max_tokens=2), tier="edge", **kw)


async def answer(orch: Orchestrator, request: GenerateRequest) -> list[Any]:
    return [m async for m in orch.handle(request)]


async def test_a_prompt_too_long_by_its_bytes_is_refused_without_tokenizing(tiny: Tokenizer) -> None:
    tok = RecordingTokenizer(tiny)
    orch, engine = make(tok, limit=4096)
    msgs = await answer(orch, req(prompt=CJK * 125_000))  # 1M characters
    assert isinstance(msgs[-1], Error) and msgs[-1].code == ErrorCode.PROMPT_TOO_LONG
    assert msgs[-1].message.startswith("prompt: ") and "4096" in msgs[-1].message
    assert tok.calls == [] and engine.requests == []
    msgs = await answer(orch, req(messages=[ChatMessage("user", CJK * 125_000)]))
    assert msgs[-1].code == ErrorCode.PROMPT_TOO_LONG and msgs[-1].message.startswith("messages: ")
    assert [c[0] for c in tok.calls] == ["template"]  # rendered (off the loop), never encoded
    assert not tok.calls[0][2]


async def test_a_wrong_key_is_refused_before_the_size_check(tiny: Tokenizer) -> None:
    # so a wrong key with a huge prompt is UNAUTHENTICATED, which the per-source throttle counts
    orch = Orchestrator(
        FakeEngine(), FakePool(), FakeRouter(), auth=RefusingKeys(), tokenizer=tiny, max_prompt_tokens=64
    )
    msgs = await answer(orch, req(prompt=CJK * 125_000))
    assert [m.code for m in msgs] == [ErrorCode.UNAUTHENTICATED]


async def test_a_continuation_past_what_is_left_is_refused_by_its_size(tiny: Tokenizer) -> None:
    tok = RecordingTokenizer(tiny)
    orch, _ = make(tok, limit=4096)
    msgs = await answer(orch, req(prompt="hi", continuation=Continuation(text=CJK * 125_000)))
    assert msgs[-1].code == ErrorCode.PROMPT_TOO_LONG
    assert msgs[-1].message.startswith("continuation.text: ") and "left under" in msgs[-1].message
    assert [c[1] for c in tok.calls] == [2]  # only the prompt was encoded


async def test_large_prompts_are_tokenized_off_the_loop_small_ones_on_it(tiny: Tokenizer) -> None:
    gate = threading.Event()
    tok = RecordingTokenizer(tiny, gate)
    orch, engine = make(tok, limit=200_000)

    async def open_gate_from_the_loop() -> None:
        await asyncio.sleep(0.05)  # runs only if the loop is free while the encode waits
        gate.set()

    opener = asyncio.create_task(open_gate_from_the_loop())
    msgs = await answer(orch, req(prompt="word " * 4000))
    await opener
    assert msgs[-1].finish_reason == "length"
    msgs = await answer(orch, req(prompt="hello"))
    assert msgs[-1].finish_reason == "length"
    assert [(c[0], c[2]) for c in tok.calls] == [("encode", False), ("encode", True)]
    assert engine.requests[0].prompt_ids == tiny.encode("word " * 4000)


async def test_prompt_ids_outside_the_vocabulary_are_invalid_not_internal(
    tiny: Tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    orch, engine = make(tiny)
    caplog.set_level(logging.DEBUG)
    for ids in ([1, 2, tiny.vocab_size + 5], [2**31 - 1, 1]):
        msgs = await answer(orch, req(prompt_ids=pack_ids(ids)))
        assert len(msgs) == 1 and msgs[0].code == ErrorCode.INVALID_MESSAGE
        assert msgs[0].message.startswith("prompt_ids: token id ") and "vocabulary" in msgs[0].message
    cont = Continuation(text="", token_ids=pack_ids([10**6]), tokenizer_fingerprint=tiny.fingerprint)
    msgs = await answer(orch, req(prompt="hi", continuation=cont))
    assert msgs[0].code == ErrorCode.INVALID_MESSAGE and msgs[0].message.startswith("continuation.token_ids")
    assert engine.requests == []
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


async def test_a_conversation_the_template_refuses_is_invalid_messages(tmp_path: Path) -> None:
    write_tiny_tokenizer(tmp_path)
    strict = Tokenizer.from_dir(tmp_path)
    strict.chat_template = "{{ raise_exception('roles must alternate') }}"
    orch, _ = make(strict)
    msgs = await answer(orch, req(messages=[ChatMessage("user", "a"), ChatMessage("user", "b")]))
    assert msgs[-1].code == ErrorCode.INVALID_MESSAGE
    assert msgs[-1].message.startswith("messages: ") and "roles must alternate" in msgs[-1].message


async def test_too_many_pending_jobs_are_refused_as_overloaded(tiny: Tokenizer) -> None:
    prompts = PromptTokenizer(tiny, max_pending=0)
    with pytest.raises(Exception) as err:
        await prompts.tokenize(req(prompt="x" * 5000), limit=None)
    assert getattr(err.value, "code", None) == ErrorCode.OVERLOADED
    prompts.close()


async def _worst_stall(flood: list[GenerateRequest], orch: Orchestrator) -> tuple[float, list[Any]]:
    """Run `flood` at once; the longest the loop went without running a 1 ms ticker (seconds)."""
    worst, is_done = 0.0, False

    async def ticker() -> None:
        nonlocal worst
        while not is_done:
            t = time.perf_counter()
            await asyncio.sleep(0.001)
            worst = max(worst, time.perf_counter() - t - 0.001)

    tick = asyncio.create_task(ticker())
    await asyncio.sleep(0.01)
    answers = await asyncio.gather(*(answer(orch, r) for r in flood))
    is_done = True
    await tick
    return worst, answers


async def test_event_loop_stall_under_a_flood_of_huge_prompts(
    tiny: Tokenizer, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 8 x 1M characters of CJK (past any limit by bytes) and 8 prompts just under the limit's
    # byte bound (tokenized for real), on an edge whose limit is 4096 tokens
    limit = 4096
    huge = [req(prompt=CJK * 125_000) for _ in range(8)]
    assert tiny.max_bytes_per_token is not None
    near = [req(prompt=CJK * (limit * tiny.max_bytes_per_token // 24)) for _ in range(8)]
    orch, _ = make(tiny, limit=limit)
    worst, answers = await _worst_stall(huge + near, orch)
    codes = [a[-1].code for a in answers]
    assert codes == [ErrorCode.PROMPT_TOO_LONG] * 16  # the near ones are past 4096 tokens too
    assert orch.prompts.num_offloaded == 8  # every tokenizing happened in a worker thread
    # one 1M-character prompt the old way: no byte check, tokenized on the loop
    inline, _ = make(tiny, limit=limit)
    inline.prompts = PromptTokenizer(tiny, inline_max_bytes=1 << 40)
    monkeypatch.setattr(inline.prompts, "_check_text", lambda *a: None)
    old_worst, old = await _worst_stall(huge[:1], inline)
    assert old[0][-1].code == ErrorCode.PROMPT_TOO_LONG and inline.prompts.num_offloaded == 0
    print(
        f"\nevent loop worst stall: flood of 8 x 1M chars + 8 x {len(near[0].prompt or '')} chars"
        f" = {worst * 1000:.1f} ms; one 1M-char prompt tokenized inline (old path)"
        f" = {old_worst * 1000:.1f} ms"
    )
