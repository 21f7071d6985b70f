"""The tokenizer thread pool both tiers share, and the size-alone refusal (no tokenizer needed)."""

from __future__ import annotations

import threading

import pytest
from isthmus.protocol import ErrorCode, ProtocolError
from isthmus.tokenizer.offload import TokenizerThreads, size_beyond, utf8_len


def one_token_per_byte(num_bytes: int) -> int:
    return num_bytes


def test_size_beyond_tries_characters_then_bytes() -> None:
    assert size_beyond(["abcd", "ef"], one_token_per_byte, 5, cheap_max_bytes=0) == "6 characters"
    assert size_beyond(["abc"], one_token_per_byte, 5, cheap_max_bytes=0) is None
    # 3 characters of 3 bytes: only the byte count proves it
    assert size_beyond(["ééé"], one_token_per_byte, 5, cheap_max_bytes=0) == "6 bytes"
    assert size_beyond(["ééé"], one_token_per_byte, 5, cheap_max_bytes=12) is None  # too short to encode
    assert utf8_len(["é", "\ud800"]) == 5  # a lone surrogate counts its 3 bytes


async def test_small_inputs_run_inline_large_ones_in_a_thread() -> None:
    threads = TokenizerThreads(inline_max_bytes=8, max_workers=1, max_pending=4, thread_name="t-test")
    try:
        assert threads.is_small(["ab", "cd"]) and not threads.is_small(["x" * 9])
        assert not threads.is_small(["éééé", "é"])  # 5 characters but 10 bytes
        here = threading.get_ident()
        assert await threads.run(True, "prompt", threading.get_ident) == here
        assert await threads.run(False, "prompt", threading.get_ident) != here
        assert threads.num_offloaded == 1 and threads.num_pending == 0
    finally:
        threads.close()


async def test_too_many_pending_jobs_are_overloaded_and_retryable() -> None:
    threads = TokenizerThreads(inline_max_bytes=8, max_workers=1, max_pending=0, thread_name="t-test")
    try:
        with pytest.raises(ProtocolError) as info:
            await threads.run(False, "messages", len, "text")
        assert info.value.code == ErrorCode.OVERLOADED and info.value.retryable
        assert info.value.message.startswith("messages: ")
        assert await threads.run(True, "messages", len, "text") == 4  # inline work is never refused
    finally:
        threads.close()
