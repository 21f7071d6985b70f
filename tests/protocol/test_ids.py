"""Packed token ids: little-endian int32."""

from __future__ import annotations

import pytest
from isthmus.protocol import ErrorCode, ProtocolError, check_ids, num_ids, pack_ids, unpack_ids


def test_pack_is_little_endian_int32() -> None:
    assert pack_ids([1, 256, 2**31 - 1]) == b"\x01\x00\x00\x00\x00\x01\x00\x00\xff\xff\xff\x7f"
    assert pack_ids([]) == b""


def test_round_trip() -> None:
    ids = [0, 1, 2, 151643, 2**31 - 1, 7] * 100
    data = pack_ids(ids)
    assert len(data) == 4 * len(ids)
    assert unpack_ids(data) == ids
    assert check_ids(data) == num_ids(data) == len(ids)


def test_pack_accepts_any_iterable_of_ints() -> None:
    assert pack_ids(range(3)) == pack_ids([0, 1, 2])
    assert pack_ids(iter((5,))) == pack_ids([5])


@pytest.mark.parametrize("ids", [[-1], [0, -(2**31)], [2**31], [2**40], [1.5], ["1"], [None]])
def test_pack_refuses_out_of_range_or_non_int(ids: list[object]) -> None:
    with pytest.raises(ProtocolError) as info:
        pack_ids(ids)
    assert info.value.code == ErrorCode.INVALID_MESSAGE
    assert info.value.message.startswith("token_ids: ")


@pytest.mark.parametrize("data", [b"\x01", b"\x01\x00\x00", b"\x00" * 5])
def test_unpack_refuses_bad_length(data: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        unpack_ids(data)
    assert info.value.code == ErrorCode.INVALID_MESSAGE
    assert "multiple of 4" in info.value.message


def test_unpack_refuses_negative_ids_naming_the_field() -> None:
    with pytest.raises(ProtocolError) as info:
        unpack_ids(b"\x01\x00\x00\x00\xff\xff\xff\xff", field="prompt_ids")
    assert info.value.message == "prompt_ids: negative token id -1"


def test_unpack_accepts_memoryview_and_bytearray() -> None:
    data = pack_ids([3, 4])
    assert unpack_ids(memoryview(data)) == [3, 4]
    assert unpack_ids(bytearray(data)) == [3, 4]
