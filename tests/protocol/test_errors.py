"""Error codes, error messages, version checks, rpc paths, import hygiene."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
from isthmus.protocol import (
    ALPN_PROTOCOL,
    PROTOCOL_VERSION,
    Error,
    ErrorCode,
    ProtocolError,
    check_version,
    decode,
    encode,
    error_from_message,
    error_message,
    limits,
    rpc,
)


def test_error_code_values_are_the_contract() -> None:
    assert {c.name: c.value for c in ErrorCode} == {
        "INVALID_FRAME": 1,
        "INVALID_MESSAGE": 2,
        "UNSUPPORTED_VERSION": 3,
        "UNAUTHENTICATED": 4,
        "RATE_LIMITED": 5,
        "OVERLOADED": 6,
        "DEADLINE_EXCEEDED": 7,
        "CANCELLED": 8,
        "UNAVAILABLE": 9,
        "PROMPT_TOO_LONG": 10,
        "SLOW_READER": 11,
        "INTERNAL": 12,
        "NOT_FOUND": 13,
        "DRAINING": 14,
    }


def test_protocol_error_fields_and_pickling() -> None:
    exc = ProtocolError(ErrorCode.OVERLOADED, "busy", retryable=True)
    assert (exc.code, exc.message, exc.retryable) == (ErrorCode.OVERLOADED, "busy", True)
    assert str(exc) == "OVERLOADED: busy"
    back = pickle.loads(pickle.dumps(exc))
    assert (back.code, back.message, back.retryable) == (exc.code, exc.message, exc.retryable)
    assert ProtocolError(6, "x").code is ErrorCode.OVERLOADED
    assert ProtocolError(ErrorCode.INTERNAL, "x").retryable is False


def test_error_message_from_protocol_error_round_trips() -> None:
    err = error_message("req-1", ProtocolError(ErrorCode.DRAINING, "draining", retryable=True))
    assert err == Error(id="req-1", code=ErrorCode.DRAINING, message="draining", retryable=True)
    assert decode(encode(err)) == err
    again = error_from_message(err)
    assert (again.code, again.message, again.retryable) == (ErrorCode.DRAINING, "draining", True)


def test_error_message_hides_internal_exception_details() -> None:
    err = error_message("req-1", RuntimeError("/secret/path/weights.safetensors missing"))
    assert err.code == ErrorCode.INTERNAL
    assert "secret" not in err.message and "RuntimeError" in err.message
    assert err.retryable is False


def test_error_message_always_encodes_within_limits() -> None:
    err = error_message("i" * 1000, ProtocolError(ErrorCode.INVALID_MESSAGE, "m" * 100_000))
    assert len(err.id) == limits.MAX_ID_LEN
    assert len(err.message) == limits.MAX_ERROR_MESSAGE_LEN
    assert decode(encode(err)) == err
    assert decode(encode(error_message("", ValueError()))).id == ""


def test_check_version() -> None:
    check_version(PROTOCOL_VERSION)
    for bad in (0, 2, -1, True, "1", None, 1.0):
        with pytest.raises(ProtocolError) as info:
            check_version(bad)
        assert info.value.code == ErrorCode.UNSUPPORTED_VERSION
        assert info.value.message.startswith("version: ")
    assert ALPN_PROTOCOL == f"isthmus/{PROTOCOL_VERSION}"


def test_rpc_paths() -> None:
    assert rpc.SERVICE_NAME == "isthmus.v1.Center"
    assert rpc.GENERATE == "/isthmus.v1.Center/Generate"
    assert rpc.STATUS == "/isthmus.v1.Center/Status"
    assert rpc.DRAIN == "/isthmus.v1.Center/Drain"


def test_import_pulls_in_nothing_heavy() -> None:
    code = (
        "import sys, isthmus.protocol\n"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('asyncio', 'torch', 'grpc', 'numpy')]\n"
        "ours = [m for m in sys.modules\n"
        "        if m.startswith('isthmus.') and not m.startswith('isthmus.protocol')]\n"
        "assert not bad and not ours, (bad, ours)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
