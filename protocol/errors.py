"""Error codes and the one exception type of the protocol."""

from __future__ import annotations

from enum import IntEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .messages import Error


class ErrorCode(IntEnum):
    """Wire error codes, carried by the `Error` message. Values are part of the protocol."""

    INVALID_FRAME = 1
    INVALID_MESSAGE = 2
    UNSUPPORTED_VERSION = 3
    UNAUTHENTICATED = 4
    RATE_LIMITED = 5
    OVERLOADED = 6
    DEADLINE_EXCEEDED = 7
    CANCELLED = 8
    UNAVAILABLE = 9
    PROMPT_TOO_LONG = 10
    SLOW_READER = 11
    INTERNAL = 12
    NOT_FOUND = 13
    DRAINING = 14


# Codes for which trying again (later, or on another replica) may succeed. A convenience for
# callers that raise ProtocolError; the wire's `retryable` flag is what receivers act on.
RETRYABLE_CODES = frozenset(
    {
        ErrorCode.RATE_LIMITED,
        ErrorCode.OVERLOADED,
        ErrorCode.UNAVAILABLE,
        ErrorCode.DRAINING,
    }
)


class ProtocolError(Exception):
    """A typed protocol failure: malformed input, refused request, or a peer's `Error`.

    `code` is an `ErrorCode`, `message` a human-readable reason (for validation failures it starts
    with the offending field, e.g. ``"sampling.top_p: ..."``), `retryable` whether the same request
    may succeed if tried again.
    """

    def __init__(self, code: ErrorCode, message: str, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)
        self.message = message
        self.retryable = retryable

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"

    def __repr__(self) -> str:
        return f"ProtocolError({self.code.name}, {self.message!r}, retryable={self.retryable})"

    def __reduce__(self) -> tuple[type[ProtocolError], tuple[ErrorCode, str, bool]]:
        # keep pickling (multiprocessing, torch.distributed objects) working with our signature
        return (type(self), (self.code, self.message, self.retryable))


def error_message(id: str, exc: BaseException) -> Error:
    """Build the wire `Error` for request `id` from an exception.

    A `ProtocolError` keeps its code, message and retryable flag. Any other exception becomes
    `INTERNAL` with only its type name, so internals (paths, tensors) do not leak to clients.
    The id and message are truncated to their limits so the result always encodes and decodes.
    """
    from .limits import MAX_ERROR_MESSAGE_LEN, MAX_ID_LEN
    from .messages import Error

    if isinstance(exc, ProtocolError):
        code, message, retryable = exc.code, exc.message, exc.retryable
    else:
        code, message, retryable = ErrorCode.INTERNAL, f"internal error ({type(exc).__name__})", False
    return Error(
        id=id[:MAX_ID_LEN],
        code=code,
        message=message[:MAX_ERROR_MESSAGE_LEN],
        retryable=retryable,
    )


def error_from_message(msg: Error) -> ProtocolError:
    """Turn a received `Error` message back into a `ProtocolError` (for raising in an SDK)."""
    return ProtocolError(msg.code, msg.message, msg.retryable)
