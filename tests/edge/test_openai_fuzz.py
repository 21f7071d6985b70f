"""JSON fuzz against the OpenAI-compatible API of a real EdgeNode on 127.0.0.1 (tiny checkpoint):
hypothesis writes bodies shaped like chat and completion requests, with every field's value drawn
from any JSON (and some raw bytes); the edge must answer each with a status below 500 and, for
errors, an OpenAI-style JSON error object. Bounded: a few hundred examples, answers of at most a
64-token context, so it runs in seconds."""

from __future__ import annotations

import asyncio
import hashlib
import http.client
import json
import math
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from isthmus.edge.config import EdgeConfig
from isthmus.edge.node import EdgeNode

from . import test_openai_api as base
from .quic_helpers import write_self_signed

pytestmark = pytest.mark.timeout(300)
model = base.model
NUM_EXAMPLES = 300
KEY = "sk-fuzz"

_scalars = (
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
)
ANY_JSON = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=12,
)
ROLES = st.sampled_from(["user", "system", "assistant", "developer", "tool", "function", ""]) | ANY_JSON
CONTENT = st.text(max_size=40) | st.lists(
    st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]) | ANY_JSON,
                           "text": st.text(max_size=20) | ANY_JSON}),
    max_size=3,
) | ANY_JSON
MESSAGE = st.fixed_dictionaries({"role": ROLES}, optional={"content": CONTENT, "name": ANY_JSON,
                                                          "tool_calls": ANY_JSON}) | ANY_JSON
_small_int = st.integers(min_value=-3, max_value=40)
# valid values (most examples get far enough to generate), then one field of any JSON at a time
VALID: dict[str, st.SearchStrategy[Any]] = {
    "model": st.text(max_size=10),
    "max_tokens": st.integers(min_value=1, max_value=8),
    "temperature": st.floats(min_value=0, max_value=2),
    "top_p": st.floats(min_value=0.01, max_value=1),
    "top_k": _small_int,
    "min_p": st.floats(min_value=0, max_value=1),
    "repetition_penalty": st.floats(min_value=0.5, max_value=2),
    "presence_penalty": st.floats(min_value=-2, max_value=2),
    "frequency_penalty": st.floats(min_value=-2, max_value=2),
    "seed": st.integers(min_value=0, max_value=2**63 - 1),
    "n": st.just(1),
    "stop": st.text(min_size=1, max_size=5) | st.lists(st.text(min_size=1, max_size=5), max_size=3),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans()}),
    "tier": st.sampled_from(["auto", "edge", "center"]),
    "ignore_eos": st.booleans(),
    "logprobs": st.just(False),
    "response_format": st.just({"type": "text"}),
    "user": st.text(max_size=5),
}
FUZZED = [*VALID, "max_completion_tokens", "tools", "logit_bias", "echo", "best_of", "suffix", "functions",
          "stream_options", "messages", "prompt", "x-unknown"]
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "developer"]), "content": st.text(max_size=40)}
)
ANY_MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", ""]) | ANY_JSON},
    optional={"content": st.text(max_size=40) | st.lists(st.fixed_dictionaries(
        {"type": st.sampled_from(["text", "image_url"]) | ANY_JSON, "text": st.text(max_size=20) | ANY_JSON}
    ), max_size=3) | ANY_JSON, "name": ANY_JSON, "tool_calls": ANY_JSON},
) | ANY_JSON
_OPTIONAL = {k: v for k, v in VALID.items() if k != "max_tokens"}  # always given: short answers
CHAT = st.fixed_dictionaries(
    {"messages": st.lists(MESSAGE, min_size=1, max_size=3) | st.lists(ANY_MESSAGE, max_size=3),
     "max_tokens": VALID["max_tokens"]},
    optional=_OPTIONAL,
)
COMPLETION = st.fixed_dictionaries(
    {"prompt": st.text(min_size=1, max_size=40) | st.lists(st.text(max_size=10), max_size=2) | ANY_JSON,
     "max_tokens": VALID["max_tokens"]},
    optional={k: v for k, v in _OPTIONAL.items() if k != "response_format"},
)


def _one_fuzzed(body: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[dict[str, Any]]:
    """`body`, and in half the examples one field set to any JSON value."""
    return st.tuples(body, st.sampled_from(FUZZED), ANY_JSON, st.booleans()).map(
        lambda t: {**t[0], t[1]: t[2]} if t[3] else t[0]
    )


PATHS = st.sampled_from(["/v1/chat/completions", "/v1/completions"])
BODY = (
    st.tuples(st.just("/v1/chat/completions"), _one_fuzzed(CHAT))
    | st.tuples(st.just("/v1/completions"), _one_fuzzed(COMPLETION))
    | st.tuples(PATHS, ANY_JSON)
    | st.tuples(PATHS, st.binary(max_size=64))
)


@pytest.fixture
async def open_node(tmp_path: Path, model: Path) -> AsyncIterator[EdgeNode]:
    cert, key = write_self_signed(tmp_path)
    path = tmp_path / "edge.toml"
    path.write_text(
        f"""
[model]
path = "{model}"
name = "tiny-edge"

[engine]
num_kv_blocks = 32
max_num_seqs = 4
max_model_len = 64

[listen]
host = "127.0.0.1"
port = 0
cert = "{cert}"
key = "{key}"

[http]
host = "127.0.0.1"
port = 0

[[auth.keys]]
sha256 = "{hashlib.sha256(KEY.encode()).hexdigest()}"
name = "fuzz"
"""
    )
    edge = EdgeNode(EdgeConfig.load(path))
    await edge.start()
    try:
        yield edge
    finally:
        await edge.stop(grace_s=0.0)


class Tally:
    def __init__(self) -> None:
        self.by_status: dict[int, int] = {}
        self.failures: list[str] = []


def _send(port: int, path: str, body: Any, tally: Tally) -> None:
    if isinstance(body, bytes):
        data = body
    else:
        data = json.dumps(body).encode()  # NaN and Infinity as Python writes them: json.loads reads them
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("POST", path, body=data, headers={
            "Authorization": f"Bearer {KEY}", "Content-Type": "application/json",
        })
        resp = conn.getresponse()
        raw = resp.read()
    finally:
        conn.close()
    tally.by_status[resp.status] = tally.by_status.get(resp.status, 0) + 1
    if resp.status >= 500:
        tally.failures.append(f"{resp.status} for {path} {data[:300]!r}: {raw[:300]!r}")
    elif resp.status >= 400:
        err = json.loads(raw).get("error")
        if not (isinstance(err, dict) and isinstance(err.get("message"), str) and "param" in err):
            tally.failures.append(f"{resp.status} without an OpenAI error for {data[:300]!r}: {raw[:300]!r}")


def _fuzz(port: int, tally: Tally) -> None:
    @settings(
        max_examples=NUM_EXAMPLES, deadline=None, database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(case=BODY)
    def run(case: tuple[str, Any]) -> None:
        _send(port, case[0], case[1], tally)

    run()


async def test_openai_json_fuzz_gives_no_5xx(open_node: EdgeNode) -> None:
    assert open_node.http_port is not None
    tally = Tally()
    start = time.perf_counter()
    await asyncio.to_thread(_fuzz, open_node.http_port, tally)
    took = time.perf_counter() - start
    num = sum(tally.by_status.values())
    statuses = dict(sorted(tally.by_status.items()))
    print(f"\nOpenAI JSON fuzz: {num} requests in {took:.1f} s, by status {statuses},"
          f" {len(tally.failures)} failures")
    assert tally.failures == []
    assert num >= NUM_EXAMPLES and not math.isnan(took)
    assert set(tally.by_status) & {200} and set(tally.by_status) & {400}  # both sides were reached
