"""Typed exceptions of the SDK, one class per protocol `ErrorCode`.

Every failure a caller can see is an `IsthmusError` with `.code` (an `ErrorCode`) and
`.retryable`. `error_for_code` maps a wire code to its class; `from_error_message` and
`from_protocol_error` turn a received `Error` or a local `ProtocolError` into the typed form.
"""

from __future__ import annotations

from isthmus.protocol import Error, ErrorCode, ProtocolError


class IsthmusError(Exception):
    """Base of every SDK error. `code` is the protocol `ErrorCode`; `retryable` whether trying the
    same request again (later, or on another edge) may succeed. `request_id` is set when known."""

    default_code: ErrorCode = ErrorCode.INTERNAL
    default_retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        code: ErrorCode | None = None,
        retryable: bool | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = ErrorCode(code) if code is not None else self.default_code
        self.retryable = self.default_retryable if retryable is None else retryable
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.code.name}: {self.message}"


class InvalidRequest(IsthmusError, ValueError):
    """The request is malformed (a bad sampling value, a bad frame). `field` names the culprit
    when it is known (e.g. ``"top_p"`` or ``"sampling.top_p"``)."""

    default_code = ErrorCode.INVALID_MESSAGE

    def __init__(self, message: str, *, field: str | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.field = field


class UnsupportedVersion(IsthmusError):
    """The edge speaks another major protocol version."""

    default_code = ErrorCode.UNSUPPORTED_VERSION


class Unauthenticated(IsthmusError):
    """The API key is missing or wrong."""

    default_code = ErrorCode.UNAUTHENTICATED


class RateLimited(IsthmusError):
    """Too many requests for this API key right now."""

    default_code = ErrorCode.RATE_LIMITED
    default_retryable = True


class Overloaded(IsthmusError):
    """The edge cannot admit more work right now."""

    default_code = ErrorCode.OVERLOADED
    default_retryable = True


class DeadlineExceeded(IsthmusError, TimeoutError):
    """The request's timeout passed (on the edge, or locally in the SDK)."""

    default_code = ErrorCode.DEADLINE_EXCEEDED


class Cancelled(IsthmusError):
    """The request was cancelled."""

    default_code = ErrorCode.CANCELLED


class Unavailable(IsthmusError):
    """No edge (or no tier able to answer) could be reached."""

    default_code = ErrorCode.UNAVAILABLE
    default_retryable = True


class ConnectionLost(Unavailable):
    """The QUIC connection died (or the stream ended) before the answer was complete."""


class PromptTooLong(IsthmusError):
    """The prompt does not fit the model's context."""

    default_code = ErrorCode.PROMPT_TOO_LONG


class SlowReader(IsthmusError):
    """The edge dropped the request because this client did not read fast enough."""

    default_code = ErrorCode.SLOW_READER


class ServerError(IsthmusError):
    """An internal error on the serving side."""

    default_code = ErrorCode.INTERNAL


class NotFound(IsthmusError):
    """The thing asked for does not exist."""

    default_code = ErrorCode.NOT_FOUND


class Draining(IsthmusError):
    """The edge is shutting down and admits no new work; another edge may."""

    default_code = ErrorCode.DRAINING
    default_retryable = True


_CLASS_BY_CODE: dict[ErrorCode, type[IsthmusError]] = {
    ErrorCode.INVALID_FRAME: InvalidRequest,
    ErrorCode.INVALID_MESSAGE: InvalidRequest,
    ErrorCode.UNSUPPORTED_VERSION: UnsupportedVersion,
    ErrorCode.UNAUTHENTICATED: Unauthenticated,
    ErrorCode.RATE_LIMITED: RateLimited,
    ErrorCode.OVERLOADED: Overloaded,
    ErrorCode.DEADLINE_EXCEEDED: DeadlineExceeded,
    ErrorCode.CANCELLED: Cancelled,
    ErrorCode.UNAVAILABLE: Unavailable,
    ErrorCode.PROMPT_TOO_LONG: PromptTooLong,
    ErrorCode.SLOW_READER: SlowReader,
    ErrorCode.INTERNAL: ServerError,
    ErrorCode.NOT_FOUND: NotFound,
    ErrorCode.DRAINING: Draining,
}


def error_for_code(code: int) -> type[IsthmusError]:
    """The exception class for a wire error code (`ServerError` for a code we do not know)."""
    try:
        return _CLASS_BY_CODE[ErrorCode(code)]
    except ValueError:
        return ServerError


def _make(code: int, message: str, retryable: bool, request_id: str | None) -> IsthmusError:
    cls = error_for_code(code)
    try:
        known = ErrorCode(code)
    except ValueError:
        known = ErrorCode.INTERNAL
        message = f"unknown error code {code}: {message}"
    return cls(message, code=known, retryable=retryable, request_id=request_id)


def from_error_message(msg: Error) -> IsthmusError:
    """The typed exception for an `Error` the edge sent; the wire's `retryable` flag wins."""
    return _make(int(msg.code), msg.message, msg.retryable, msg.id or None)


def from_protocol_error(exc: ProtocolError, request_id: str | None = None) -> IsthmusError:
    """The typed exception for a `ProtocolError` raised by local validation or decoding."""
    err = _make(int(exc.code), exc.message, exc.retryable, request_id)
    if isinstance(err, InvalidRequest):
        # protocol messages start with the offending field: "sampling.top_p: must be ..."
        head = exc.message.split(":", 1)[0]
        err.field = head if head and " " not in head else None
    return err
