"""Read a request's prompt length from the first bytes of its frame body (sans-IO, best effort).

A `GenerateRequest` body is a msgpack map; the SDK (msgspec) writes `type`, `id`, `version`, then
`prompt`, so the prompt's string header sits within the first few hundred bytes. Knowing the
prompt's UTF-8 length there, the edge can refuse a prompt whose size alone proves it too long
before receiving the megabytes that follow (`stream_frames.StreamFrames`). Only scalars are
skipped on the way: when a container or anything unexpected comes before `prompt`, or there is
no `prompt`, the answer is `GIVE_UP` and the full request is checked once received, as always.
"""

from __future__ import annotations

import struct

PEEK_MAX = 1024  # bytes of the body looked at, at most
NEED_MORE = -2  # the prefix ends before the answer
GIVE_UP = -1  # cannot tell from a prefix (or no plain prompt): check the whole request later

_FIXED = {0xC0: 0, 0xC2: 0, 0xC3: 0, 0xCA: 4, 0xCB: 8, 0xCC: 1, 0xCD: 2, 0xCE: 4, 0xCF: 8}
_FIXED |= {0xD0: 1, 0xD1: 2, 0xD2: 4, 0xD3: 8}
_STR = {0xD9: 1, 0xDA: 2, 0xDB: 4}  # str8/16/32: bytes of the length field
_BIN = {0xC4: 1, 0xC5: 2, 0xC6: 4}
_UINT = {1: ">B", 2: ">H", 4: ">I"}


class _Need(Exception):
    pass


class _GiveUp(Exception):
    pass


def peek_prompt_bytes(body: bytes | bytearray) -> int:
    """The UTF-8 length of the body's `prompt` string, or `NEED_MORE`, or `GIVE_UP`."""
    try:
        num_fields, pos = _map_header(body, 0)
        for _ in range(num_fields):
            key, pos = _string(body, pos)
            if key == b"prompt":
                return _str_len(body, pos)[0]
            pos = _skip_scalar(body, pos)
    except _Need:
        return NEED_MORE if len(body) < PEEK_MAX else GIVE_UP
    except _GiveUp:
        return GIVE_UP
    return GIVE_UP


def _byte(body: bytes | bytearray, pos: int) -> int:
    if pos >= len(body):
        raise _Need
    return body[pos]


def _uint(body: bytes | bytearray, pos: int, size: int) -> int:
    if pos + size > len(body):
        raise _Need
    return int(struct.unpack_from(_UINT[size], body, pos)[0])


def _map_header(body: bytes | bytearray, pos: int) -> tuple[int, int]:
    b = _byte(body, pos)
    if 0x80 <= b <= 0x8F:
        return b & 0x0F, pos + 1
    if b in (0xDE, 0xDF):
        size = 2 if b == 0xDE else 4
        return _uint(body, pos + 1, size), pos + 1 + size
    raise _GiveUp


def _str_len(body: bytes | bytearray, pos: int) -> tuple[int, int]:
    """(length, position of the string's bytes) of the string at `pos`."""
    b = _byte(body, pos)
    if 0xA0 <= b <= 0xBF:
        return b & 0x1F, pos + 1
    if b in _STR:
        size = _STR[b]
        return _uint(body, pos + 1, size), pos + 1 + size
    raise _GiveUp


def _string(body: bytes | bytearray, pos: int) -> tuple[bytes, int]:
    length, start = _str_len(body, pos)
    if start + length > len(body):
        raise _Need
    return bytes(body[start : start + length]), start + length


def _skip_scalar(body: bytes | bytearray, pos: int) -> int:
    b = _byte(body, pos)
    if b <= 0x7F or b >= 0xE0:  # positive and negative fixint
        return pos + 1
    if b in _FIXED:
        return pos + 1 + _FIXED[b]
    if 0xA0 <= b <= 0xBF or b in _STR:
        return _string(body, pos)[1]
    if b in _BIN:
        size = _BIN[b]
        return pos + 1 + size + _uint(body, pos + 1, size)
    raise _GiveUp  # a map, an array or an extension: not worth walking
