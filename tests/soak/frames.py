"""Generated hostile frames, and the in-process check of the edge's frame decoding path.

`FrameFuzzer(seed).frame()` returns the bytes of one stream as a hostile client might write them:
random bytes behind a plausible header, valid requests with bytes flipped, cut or spliced,
structure-aware msgpack maps with wrong types, out-of-range values and unknown keys, deep
nesting, and headers at the limits (0, just over the limit, 2**32-1). `check_stream` feeds one
such stream to the decoder the edge's `StreamSession` uses, in random splits, and validates what
decodes (as the orchestrator does): the only exception allowed is `ProtocolError`, never one
carrying INTERNAL.
"""

from __future__ import annotations

import random
import struct
from collections import Counter
from typing import Any

import msgpack
from isthmus.protocol import (
    Cancel,
    ErrorCode,
    FrameDecoder,
    GenerateRequest,
    ProtocolError,
    SamplingOptions,
    encode_frame,
    validate,
)
from isthmus.protocol.limits import MAX_FRAME_SIZE

TAGS = ["generate_request", "cancel", "token_chunk", "done", "error", "status_request", "drain_request", "x"]
FIELDS = [
    "id", "version", "prompt", "messages", "prompt_ids", "sampling", "tier", "priority", "timeout_ms",
    "api_key", "continuation", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
    "stop_token_ids", "logprobs", "role", "content", "text", "token_ids", "code", "type",
]  # fmt: skip


class FrameFuzzer:
    """Deterministic (per seed) generator of hostile stream contents. Requests built to be valid
    carry `api_key`, so that over the wire they get past authentication to the deeper checks."""

    def __init__(self, seed: int, api_key: str | None = None) -> None:
        self.rng = random.Random(seed)
        self.api_key = api_key
        self._strategies = [
            self._random_body,
            self._mutated_request,
            self._random_map,
            self._odd_header,
            self._two_frames,
            self._deep,
        ]

    def frame(self) -> bytes:
        return self.rng.choice(self._strategies)()

    # --- strategies ------------------------------------------------------------------------------
    def _value(self, depth: int = 0) -> Any:
        r = self.rng
        kind = r.randrange(12 if depth < 3 else 8)
        if kind == 0:
            return None
        if kind == 1:
            return r.choice([True, False])
        if kind == 2:
            return r.choice([0, -1, 1, 2**31, -(2**63), 2**64 - 1, r.randrange(-1000, 1000)])
        if kind == 3:
            return r.choice([0.0, -0.0, 1e308, -1e308, float("nan"), float("inf"), r.random() * 4 - 2])
        if kind == 4:
            return "".join(chr(r.randrange(0x20, 0x3000)) for _ in range(r.randrange(0, 24)))
        if kind == 5:
            return r.randbytes(r.randrange(0, 40))
        if kind == 6:
            return r.choice(TAGS)
        if kind == 7:
            return r.choice(["user", "system", "assistant", "edge", "center", "auto", ""])
        if kind in (8, 9):
            return [self._value(depth + 1) for _ in range(r.randrange(0, 5))]
        return {r.choice(FIELDS): self._value(depth + 1) for _ in range(r.randrange(0, 5))}

    def _random_body(self) -> bytes:
        body = self.rng.randbytes(self.rng.randrange(1, 64))
        return struct.pack(">I", len(body)) + body

    def _valid_request(self) -> GenerateRequest:
        r = self.rng
        sampling = SamplingOptions(max_tokens=1, temperature=r.choice([0.0, 0.7]), ignore_eos=True)
        if r.random() < 0.5:
            prompt = "hi " * r.randrange(1, 8)
            return GenerateRequest(
                id=f"f{r.randrange(10**6)}", prompt=prompt, sampling=sampling, api_key=self.api_key
            )
        n = r.randrange(1, 6)
        ids = struct.pack(f"<{n}i", *(r.randrange(-5, 5000) for _ in range(n)))
        return GenerateRequest(id="f", prompt_ids=ids, sampling=sampling, tier="edge", api_key=self.api_key)

    def _mutated_request(self) -> bytes:
        r = self.rng
        data = bytearray(encode_frame(self._valid_request()))
        for _ in range(r.randrange(1, 6)):
            op = r.randrange(4)
            pos = r.randrange(len(data))
            if op == 0:
                data[pos] ^= 1 << r.randrange(8)
            elif op == 1:
                data[pos] = r.randrange(256)
            elif op == 2:
                del data[pos : pos + r.randrange(1, 8)]
            else:
                data[pos:pos] = r.randbytes(r.randrange(1, 8))
            if not data:
                data = bytearray(b"\x00")
        if r.random() < 0.5 and len(data) > 4:  # keep the header honest so the body is decoded
            struct.pack_into(">I", data, 0, len(data) - 4)
        return bytes(data)

    def _random_map(self) -> bytes:
        r = self.rng
        doc: dict[str, Any] = {"type": r.choice(TAGS)}
        for _ in range(r.randrange(0, 8)):
            doc[r.choice(FIELDS)] = self._value()
        if r.random() < 0.3:
            doc["sampling"] = {r.choice(FIELDS): self._value() for _ in range(r.randrange(1, 6))}
        body = msgpack.packb(doc, use_bin_type=r.random() < 0.8)
        return struct.pack(">I", len(body)) + body

    def _odd_header(self) -> bytes:
        r = self.rng
        length = r.choice([0, 1, MAX_FRAME_SIZE, MAX_FRAME_SIZE + 1, 2**32 - 1, r.randrange(2**32)])
        return struct.pack(">I", length) + r.randbytes(r.randrange(0, 32))

    def _two_frames(self) -> bytes:
        r = self.rng
        first = encode_frame(self._valid_request())
        second = r.choice([encode_frame(Cancel(id="f")), self._random_map(), self._random_body(), first])
        return first + second

    def _deep(self) -> bytes:
        depth = self.rng.randrange(50, 2000)
        body = b"\x91" * depth + b"\xc0"  # nested one-element arrays around nil
        if self.rng.random() < 0.5:
            body = msgpack.packb({"type": "generate_request", "id": "d", "prompt": None})[:-1] + body
        return struct.pack(">I", len(body)) + body


def check_stream(data: bytes, rng: random.Random, counts: Counter[str]) -> None:
    """Feed one stream's bytes, split at random points, as the edge's `StreamSession` does.

    Counts the outcome (``valid``, ``incomplete``, ``error:<CODE>``). Anything but a
    `ProtocolError`, or a `ProtocolError` carrying INTERNAL, propagates: that is a crash.
    """
    decoder = FrameDecoder(MAX_FRAME_SIZE)
    num_cuts = min(len(data) - 1, rng.randrange(0, 4))
    cuts = sorted(rng.sample(range(1, len(data)), num_cuts)) if num_cuts > 0 else []
    try:
        pos = 0
        for end in [*cuts, len(data)]:
            for msg in decoder.feed(data[pos:end]):
                if isinstance(msg, GenerateRequest):
                    validate(msg)
            pos = end
        decoder.eof()
    except ProtocolError as exc:
        if exc.code == ErrorCode.INTERNAL:
            raise AssertionError(f"INTERNAL from the decoder: {exc}") from exc
        counts[f"error:{ErrorCode(exc.code).name}"] += 1
        return
    counts["valid"] += 1


def fuzz_in_process(num_frames: int, seed: int = 0) -> Counter[str]:
    """Run `num_frames` generated streams through `check_stream`; crashes are counted, not raised,
    with the first few kept as ``crash:<type>`` keys."""
    fuzzer, rng, counts = FrameFuzzer(seed), random.Random(seed + 1), Counter[str]()
    for _ in range(num_frames):
        data = fuzzer.frame()
        try:
            check_stream(data, rng, counts)
        except Exception as exc:  # the finding itself: any exception here is a decoder crash
            counts["crash"] += 1
            counts[f"crash:{type(exc).__name__}: {str(exc)[:120]}"] += 1
    return counts
