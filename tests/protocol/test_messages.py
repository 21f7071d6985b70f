"""Every message round-trips, and stock msgpack reads exactly the documented map."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from isthmus.protocol import (
    MESSAGE_TYPES,
    Done,
    Error,
    GenerateRequest,
    Message,
    ProtocolError,
    Route,
    Status,
    decode,
    encode,
    validate,
)

from .samples import SAMPLES

IDS = [f"{type(m).__name__}-{i}" for i, (m, _) in enumerate(SAMPLES)]


def test_samples_cover_every_message_type() -> None:
    assert {type(m) for m, _ in SAMPLES} == set(MESSAGE_TYPES)


@pytest.mark.parametrize(("msg", "wire"), SAMPLES, ids=IDS)
def test_round_trip(msg: Message, wire: dict[str, Any]) -> None:
    data = encode(msg)
    assert isinstance(data, bytes)
    back = decode(data)
    assert type(back) is type(msg)
    assert back == msg
    assert decode(data, expected=type(msg)) == msg
    validate(msg)


@pytest.mark.parametrize(("msg", "wire"), SAMPLES, ids=IDS)
def test_stock_msgpack_reads_the_documented_map(msg: Message, wire: dict[str, Any]) -> None:
    assert msgpack.unpackb(encode(msg), raw=False) == wire


@pytest.mark.parametrize(("msg", "wire"), SAMPLES, ids=IDS)
def test_stock_msgpack_writes_what_we_read(msg: Message, wire: dict[str, Any]) -> None:
    # A non-Python peer builds the map itself; key order must not matter.
    reordered = dict(reversed(list(wire.items())))
    assert decode(msgpack.packb(reordered, use_bin_type=True)) == msg


def test_decode_accepts_bytearray_and_memoryview() -> None:
    msg = GenerateRequest(id="a", prompt="x")
    data = encode(msg)
    assert decode(bytearray(data)) == msg
    assert decode(memoryview(data)) == msg


def test_expected_type_refuses_other_valid_messages() -> None:
    data = encode(Error(id="a", code=2, message="m"))
    with pytest.raises(ProtocolError) as info:
        decode(data, expected=GenerateRequest)
    assert info.value.code == 2
    assert "expected GenerateRequest, got Error" in info.value.message
    assert isinstance(decode(data, expected=(Done, Error)), Error)
    with pytest.raises(ProtocolError, match="expected Done, Status"):
        decode(data, expected=(Done, Status))


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    wire = msgpack.packb({"type": "cancel", "id": "a", "added_in_1_1": [1, 2, {"x": None}]})
    assert decode(wire) == decode(encode(decode(wire)))


def test_encode_refuses_non_messages() -> None:
    with pytest.raises(TypeError):
        encode(Route("edge"))
    with pytest.raises(TypeError):
        encode({"type": "cancel", "id": "a"})


def test_encode_of_unencodable_field_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        encode(GenerateRequest(id="a", prompt="x", priority=2**70))


def test_validate_catches_constructed_out_of_range_values() -> None:
    bad = GenerateRequest(id="a", prompt="x")
    bad.sampling.top_p = 0.0
    with pytest.raises(ProtocolError) as info:
        validate(bad)
    assert info.value.message.startswith("sampling.top_p: ")
