"""Client input over real QUIC that the tokenizer refuses: token ids outside the vocabulary and a
prompt too long by its size alone are typed errors naming the field (they were INTERNAL with a
traceback per request), and nothing is logged as an error."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from isthmus.edge.config import EdgeConfig
from isthmus.edge.node import EdgeNode
from isthmus.protocol import ErrorCode, GenerateRequest, SamplingOptions, pack_ids

from . import test_node
from .quic_helpers import final, raw_client

pytestmark = pytest.mark.timeout(60)
model = test_node.model  # the fixture: a tiny checkpoint


async def test_bad_prompt_ids_and_a_huge_prompt_are_typed_errors(
    tmp_path: Path, model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    node = EdgeNode(EdgeConfig.load(test_node.write_config(tmp_path, model)))
    await node.start()
    caplog.set_level(logging.WARNING)
    sampling = SamplingOptions(max_tokens=2)
    try:
        async with raw_client(node.quic_port) as client:
            for i, ids in enumerate(([5, 10**6], [2**31 - 1])):
                req = GenerateRequest(id=f"ids{i}", prompt_ids=pack_ids(ids), sampling=sampling)
                last = final(await client.request(req))
                assert last.code == ErrorCode.INVALID_MESSAGE  # type: ignore[union-attr]
                assert last.message.startswith("prompt_ids: token id ")  # type: ignore[union-attr]
            huge = GenerateRequest(id="huge", prompt="漢字かな交じり文" * 10_000, sampling=sampling)
            last = final(await client.request(huge))
            assert last.code == ErrorCode.PROMPT_TOO_LONG  # type: ignore[union-attr]
            assert last.message.startswith("prompt: ")  # type: ignore[union-attr]
    finally:
        await node.stop(grace_s=0.0)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
