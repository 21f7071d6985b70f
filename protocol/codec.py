"""msgpack codec: `encode(msg) -> bytes`, `decode(data) -> Message`.

`decode` is the trust boundary: whatever bytes arrive, it returns a fully validated message or
raises `ProtocolError` (INVALID_MESSAGE, UNSUPPORTED_VERSION or PROMPT_TOO_LONG), never any other
exception.
"""

from __future__ import annotations

import re

import msgspec

from .errors import ErrorCode, ProtocolError
from .ids import check_ids, num_ids, pack_ids, unpack_ids
from .limits import MAX_FRAME_SIZE
from .messages import MESSAGE_TYPES, Message
from .validate import check_message
from .version import check_version

__all__ = [
    "check_ids",
    "decode",
    "encode",
    "num_ids",
    "pack_ids",
    "unpack_ids",
    "validate",
]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Message)


class _VersionPeek(msgspec.Struct):
    """Reads only `version` (any type) from a message that failed typed decoding."""

    version: object = None


_peek_decoder = msgspec.msgpack.Decoder(_VersionPeek)

_AT_PATH = re.compile(r"^(?P<text>.*) - at `\$(?P<path>[^`]*)`$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(?P<field>[^`]+)`$")


def encode(msg: Message) -> bytes:
    """Encode a message to msgpack bytes (a map with its `"type"` tag).

    Does not validate: use `validate(msg)` to check a message built in Python. Raises `TypeError`
    for something that is not a message and `ProtocolError(INVALID_MESSAGE)` when a field holds a
    value msgpack cannot carry.
    """
    if not isinstance(msg, MESSAGE_TYPES):
        raise TypeError(f"not a protocol message: {type(msg).__name__}")
    try:
        return _encoder.encode(msg)
    except _ENCODE_ERRORS as exc:
        path = _unencodable_path(msg) or type(msg).__name__
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"{path}: cannot encode ({exc})") from exc


_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, msgspec.EncodeError)


def _unencodable_path(value: object, path: str = "") -> str | None:
    """The dotted path of the innermost field that msgpack cannot carry (e.g. `sampling.max_tokens`).

    Runs only after an encode failed: each field is encoded alone to find the culprit.
    """
    if isinstance(value, msgspec.Struct):
        items: list[tuple[str, object]] = [
            (f"{path}.{name}" if path else name, getattr(value, name)) for name in value.__struct_fields__
        ]
    elif isinstance(value, (list, tuple)):
        items = [(f"{path}[{i}]", v) for i, v in enumerate(value)]
    else:
        return path or None
    for where, item in items:
        try:
            _encoder.encode(item)
        except _ENCODE_ERRORS:
            return _unencodable_path(item, where)
    return path or None


def decode(
    data: bytes | bytearray | memoryview,
    expected: type[Message] | tuple[type[Message], ...] | None = None,
) -> Message:
    """Decode and validate one message body.

    `expected` restricts the accepted message types: a valid message of another type raises
    `ProtocolError(INVALID_MESSAGE)`. Any malformed input raises `ProtocolError`, and nothing else.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"message: expected bytes, got {type(data).__name__}")
    if len(data) > MAX_FRAME_SIZE:
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"message: {len(data)} bytes exceeds the limit of {MAX_FRAME_SIZE}"
        )
    try:
        msg = _decoder.decode(data)
    except msgspec.ValidationError as exc:
        _raise_version_error(data)
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, _describe(str(exc))) from None
    except Exception as exc:  # malformed msgpack, runaway nesting, ...: all one answer
        raise ProtocolError(
            ErrorCode.INVALID_MESSAGE, f"message: malformed msgpack ({type(exc).__name__}: {exc})"
        ) from None
    try:
        check_message(msg)
    except ProtocolError:
        raise
    except Exception as exc:  # defensive: a validation bug must still surface as a typed error
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"message: {type(exc).__name__}: {exc}") from None
    if expected is not None and not isinstance(msg, expected):
        names = ", ".join(t.__name__ for t in expected) if isinstance(expected, tuple) else expected.__name__
        raise ProtocolError(ErrorCode.INVALID_MESSAGE, f"type: expected {names}, got {type(msg).__name__}")
    return msg


def validate(msg: Message) -> None:
    """Check a message built in Python against every wire rule, by a full encode/decode round trip.

    Raises `ProtocolError` exactly as the receiving peer's `decode` would.
    """
    decode(encode(msg), expected=type(msg))


def _raise_version_error(data: bytes | bytearray | memoryview) -> None:
    """A message from another major version may fail typed decoding; report the version instead."""
    try:
        version = _peek_decoder.decode(data).version
    except Exception:
        return
    if version is not None:
        check_version(version)


def _describe(text: str) -> str:
    """Rewrite msgspec's "Expected ... - at `$.a.b`" as "a.b: Expected ..."."""
    path = ""
    m = _AT_PATH.match(text)
    if m:
        text, path = m.group("text"), m.group("path").lstrip(".")
    missing = _MISSING.match(text)
    if missing:
        field = missing.group("field")
        return f"{path + '.' if path else ''}{field}: missing required field"
    return f"{path or 'message'}: {text}"
