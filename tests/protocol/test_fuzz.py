"""Property tests: whatever arrives, only ProtocolError ever escapes."""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Callable
from typing import Any

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from isthmus.protocol import (
    MESSAGE_TYPES,
    ErrorCode,
    FrameDecoder,
    ProtocolError,
    decode,
    encode,
    encode_frame,
    limits,
    pack_ids,
    unpack_ids,
)

from .samples import SAMPLES

MESSAGES = [m for m, _ in SAMPLES]
ENCODED = [encode(m) for m in MESSAGES]
# ISTHMUS_FUZZ_EXAMPLES raises the count for a deeper run than the default quick one.
FUZZ = settings(
    max_examples=int(os.environ.get("ISTHMUS_FUZZ_EXAMPLES", "250")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ALLOWED_CODES = {ErrorCode.INVALID_MESSAGE, ErrorCode.UNSUPPORTED_VERSION, ErrorCode.PROMPT_TOO_LONG}


def decode_or_protocol_error(data: bytes) -> None:
    """Decode; a ProtocolError with a decode-time code is fine, anything else fails the test."""
    try:
        msg = decode(data)
    except ProtocolError as exc:
        assert exc.code in ALLOWED_CODES, exc
        assert exc.message
        return
    assert isinstance(msg, MESSAGE_TYPES)
    # whatever decoded must survive our own round trip unchanged
    assert decode(encode(msg)) == msg


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes(data: bytes) -> None:
    decode_or_protocol_error(data)


# Random msgpack values shaped like our messages: known tags and field names, random values.
FIELD_NAMES = sorted({k for _, wire in SAMPLES for k in wire} | {"role", "content", "tier", "score"})
TAGS = [*sorted({wire["type"] for _, wire in SAMPLES}), "nope"]
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.sampled_from(["auto", "edge", "center", "user", "stop", "", "system"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(FIELD_NAMES), st.text(max_size=5)), inner, max_size=5),
    ),
    max_leaves=20,
)


@FUZZ
@given(st.sampled_from(TAGS), st.dictionaries(st.sampled_from(FIELD_NAMES), values, max_size=10))
def test_random_message_shaped_maps(tag: str, fields: dict[str, Any]) -> None:
    decode_or_protocol_error(msgpack.packb({"type": tag, **fields}, use_bin_type=True))


@FUZZ
@given(st.sampled_from(range(len(SAMPLES))), st.sampled_from(FIELD_NAMES), values)
def test_one_field_of_a_valid_message_replaced(index: int, key: str, value: Any) -> None:
    wire = dict(SAMPLES[index][1])
    wire[key] = value
    decode_or_protocol_error(msgpack.packb(wire, use_bin_type=True))


def _flip(data: bytes, pos: int, bit: int) -> bytes:
    if not data:
        return data
    pos %= len(data)
    return data[:pos] + bytes([data[pos] ^ (1 << bit)]) + data[pos + 1 :]


mutations: st.SearchStrategy[Callable[[bytes], bytes]] = st.one_of(
    st.builds(
        lambda pos, bit: lambda d: _flip(d, pos, bit),
        st.integers(min_value=0, max_value=10_000),
        st.integers(min_value=0, max_value=7),
    ),
    st.builds(lambda n: lambda d: d[: n % (len(d) + 1)], st.integers(min_value=0, max_value=10_000)),
    st.builds(
        lambda pos, junk: lambda d: d[: pos % (len(d) + 1)] + junk + d[pos % (len(d) + 1) :],
        st.integers(min_value=0, max_value=10_000),
        st.binary(min_size=1, max_size=8),
    ),
    st.builds(
        lambda pos, n: lambda d: d[: pos % (len(d) + 1)] + d[pos % (len(d) + 1) + n :],
        st.integers(min_value=0, max_value=10_000),
        st.integers(min_value=1, max_value=8),
    ),
)


@FUZZ
@given(st.sampled_from(ENCODED), st.lists(mutations, min_size=1, max_size=4))
def test_mutated_valid_encodings(data: bytes, muts: list[Callable[[bytes], bytes]]) -> None:
    for mutate in muts:
        data = mutate(data)
    decode_or_protocol_error(data)


@FUZZ
@given(
    st.lists(st.sampled_from(range(len(MESSAGES))), min_size=1, max_size=8),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=12),
)
def test_random_frame_splits(picks: list[int], cuts: list[int]) -> None:
    msgs = [MESSAGES[i] for i in picks]
    stream = b"".join(encode_frame(m) for m in msgs)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    dec = FrameDecoder()
    out = []
    for a, b in itertools.pairwise(points):
        out += dec.feed(stream[a:b])
    assert out == msgs
    assert dec.at_boundary
    dec.eof()


@FUZZ
@given(
    st.integers(min_value=1, max_value=4096),
    st.integers(min_value=0, max_value=2**32 - 1),
    st.binary(max_size=256),
    st.integers(min_value=1, max_value=4),
)
def test_oversize_length_headers(max_size: int, length: int, tail: bytes, first: int) -> None:
    dec = FrameDecoder(max_frame_size=max_size)
    header = struct.pack(">I", length)
    if length > max_size or length == 0:
        try:
            dec.feed_raw(header[:first])
            dec.feed_raw(header[first:] + tail)
        except ProtocolError as exc:
            assert exc.code == ErrorCode.INVALID_FRAME
        else:
            raise AssertionError("oversize or empty frame accepted")
        assert dec.buffered <= limits.FRAME_HEADER_SIZE
    else:
        body = tail[:length]  # what follows would be the next frame's header
        bodies = dec.feed_raw(header[:first]) + dec.feed_raw(header[first:] + body)
        assert bodies == ([body] if len(body) == length else [])
        assert dec.buffered <= limits.FRAME_HEADER_SIZE + max_size


@FUZZ
@given(st.binary(max_size=2048), st.lists(st.integers(min_value=1, max_value=300), max_size=20))
def test_random_stream_into_frame_decoder(stream: bytes, sizes: list[int]) -> None:
    dec = FrameDecoder(max_frame_size=512)
    pos = 0
    try:
        for size in [*sizes, len(stream)]:
            for msg in dec.feed(stream[pos : pos + size]):
                assert isinstance(msg, MESSAGE_TYPES)
            assert dec.buffered <= limits.FRAME_HEADER_SIZE + 512
            pos += size
        dec.eof()
    except ProtocolError as exc:
        assert exc.code in ALLOWED_CODES | {ErrorCode.INVALID_FRAME}


@FUZZ
@given(st.lists(st.integers(min_value=0, max_value=2**31 - 1), max_size=300))
def test_ids_round_trip(ids: list[int]) -> None:
    data = pack_ids(ids)
    assert len(data) == 4 * len(ids)
    assert unpack_ids(data) == ids


@FUZZ
@given(st.binary(max_size=64))
def test_unpack_random_bytes(data: bytes) -> None:
    try:
        ids = unpack_ids(data)
    except ProtocolError as exc:
        assert exc.code == ErrorCode.INVALID_MESSAGE
    else:
        assert pack_ids(ids) == data
