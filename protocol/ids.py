"""Packed token ids: little-endian int32, 4 bytes per id."""

from __future__ import annotations

import sys
from array import array
from collections.abc import Iterable

from .errors import ErrorCode, ProtocolError
from .limits import MAX_TOKEN_ID, TOKEN_ID_SIZE

_INT32 = "i"
if array(_INT32).itemsize != TOKEN_ID_SIZE:  # pragma: no cover - no such platform in use
    _INT32 = "l" if array("l").itemsize == TOKEN_ID_SIZE else "q"
    if array(_INT32).itemsize != TOKEN_ID_SIZE:
        raise ImportError("isthmus.protocol needs a 4-byte array typecode for token ids")
_SWAP = sys.byteorder != "little"  # the wire is little-endian


def pack_ids(ids: Iterable[int]) -> bytes:
    """Pack token ids into little-endian int32 bytes.

    Raises `ProtocolError(INVALID_MESSAGE)` for a negative id, one above 2**31-1, or a non-int.
    """
    try:
        arr = array(_INT32, ids)
    except (OverflowError, TypeError, ValueError) as exc:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"token_ids: ids must be ints in [0, {MAX_TOKEN_ID}] ({exc})"
        ) from exc
    if arr and min(arr) < 0:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"token_ids: negative token id {min(arr)}")
    if _SWAP:  # pragma: no cover - big-endian hosts only
        arr.byteswap()
    return arr.tobytes()


def _to_array(data: bytes | bytearray | memoryview, field: str) -> array[int]:
    if len(data) % TOKEN_ID_SIZE:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE,
            f"{field}: {len(data)} bytes is not a multiple of {TOKEN_ID_SIZE} (packed int32 ids)",
        )
    arr = array(_INT32)
    arr.frombytes(data)
    if _SWAP:  # pragma: no cover - big-endian hosts only
        arr.byteswap()
    if arr and min(arr) < 0:
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{field}: negative token id {min(arr)}")
    return arr


def check_ids(data: bytes | bytearray | memoryview, field: str = "token_ids") -> int:
    """Check packed ids (length, non-negative) and return how many there are."""
    return len(_to_array(data, field))


def unpack_ids(data: bytes | bytearray | memoryview, field: str = "token_ids") -> list[int]:
    """Unpack little-endian int32 bytes into token ids.

    Raises `ProtocolError(INVALID_MESSAGE)` (naming `field`) when the length is not a multiple of
    4 or an id is negative.
    """
    return _to_array(data, field).tolist()


def num_ids(data: bytes | bytearray | memoryview) -> int:
    """How many ids a packed buffer holds (no validation)."""
    return len(data) // TOKEN_ID_SIZE
