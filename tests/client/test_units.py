"""Sans-IO parts: error mapping, the response reader, addresses, backoff, ticket serialization."""

from __future__ import annotations

import datetime
import random
from pathlib import Path

import pytest
from aioquic.tls import CipherSuite, SessionTicket
from isthmus.client import (
    Address,
    Backoff,
    ConnectionLost,
    Draining,
    FileTicketStore,
    InvalidRequest,
    IsthmusError,
    MemoryTicketStore,
    ServerError,
    Unavailable,
    error_for_code,
    from_error_message,
    from_protocol_error,
    parse_address,
    parse_addresses,
)
from isthmus.client.response import ResponseReader
from isthmus.protocol import Done, ErrorCode, ProtocolError, Route, TokenChunk, encode_frame, pack_ids
from isthmus.protocol import Error as ErrorMsg


def test_every_code_has_a_class_with_that_code() -> None:
    for code in ErrorCode:
        cls = error_for_code(code)
        assert issubclass(cls, IsthmusError)
        err = from_error_message(ErrorMsg(id="r", code=code, message="m", retryable=True))
        assert isinstance(err, cls) and err.code == code and err.retryable and err.request_id == "r"
    assert error_for_code(999) is ServerError
    assert error_for_code(ErrorCode.DRAINING) is Draining
    assert Draining("x").retryable and not ServerError("x").retryable
    assert issubclass(ConnectionLost, Unavailable) and ConnectionLost("x").retryable


def test_protocol_error_keeps_the_field() -> None:
    err = from_protocol_error(ProtocolError(ErrorCode.INVALID_MESSAGE, "sampling.top_p: too big"))
    assert isinstance(err, InvalidRequest) and err.field == "sampling.top_p"


def _chunk(rid: str = "r") -> TokenChunk:
    return TokenChunk(id=rid, token_ids=pack_ids([1]), text="a", tier="edge")


def test_reader_handles_any_split() -> None:
    data = encode_frame(_chunk()) + encode_frame(Done(id="r", finish_reason="stop", route=Route(tier="edge")))
    for cut in range(1, len(data)):
        reader = ResponseReader("r")
        events = reader.feed(data[:cut]) + reader.feed(data[cut:], end_stream=True)
        assert [type(e) for e in events] == [TokenChunk, Done]
        assert reader.is_finished


def test_reader_stream_end_without_done_is_connection_lost() -> None:
    reader = ResponseReader("r")
    reader.feed(encode_frame(_chunk()))
    with pytest.raises(ConnectionLost):
        reader.feed(b"", end_stream=True)


def test_reader_refuses_garbage_and_foreign_ids() -> None:
    with pytest.raises(ServerError):
        ResponseReader("r").feed(b"\x00\x00\x00\x03abc")
    with pytest.raises(ServerError):
        ResponseReader("r").feed(encode_frame(_chunk("other")))
    with pytest.raises(ServerError):
        ResponseReader("r").feed(encode_frame(ErrorMsg(id="other", code=ErrorCode.INTERNAL)))


def test_reader_ignores_data_after_the_terminal_message() -> None:
    reader = ResponseReader("r")
    events = reader.feed(encode_frame(ErrorMsg(id="", code=ErrorCode.OVERLOADED)) + encode_frame(_chunk()))
    assert [type(e) for e in events] == [ErrorMsg]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("edge:4433", Address("edge", 4433)),
        ("127.0.0.1:9", Address("127.0.0.1", 9)),
        ("[::1]:5000", Address("::1", 5000)),
        ("::1", Address("::1", 4433)),
        ("edge", Address("edge", 4433)),
        (("h", 7), Address("h", 7)),
    ],
)
def test_parse_address(text: str, expected: Address) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["edge:x", "edge:0", "edge:70000", ":80", "[::1", "[::1]x"])
def test_bad_address(text: str) -> None:
    with pytest.raises(ValueError, match="address"):
        parse_address(text)


def test_parse_addresses_keeps_order() -> None:
    assert [a.port for a in parse_addresses(["a:1", "b:2", ("c", 3)])] == [1, 2, 3]
    with pytest.raises(ValueError):
        parse_addresses([])


def test_backoff_grows_and_is_capped() -> None:
    backoff = Backoff(base=0.1, cap=1.0, rng=random.Random(1))
    for attempt, ceiling in [(1, 0.1), (2, 0.2), (3, 0.4), (5, 1.0), (100, 1.0)]:
        delays = [backoff.delay(attempt) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # jitter spans the range
    with pytest.raises(ValueError):
        backoff.delay(0)


def _ticket(valid: bool = True) -> SessionTicket:
    now = datetime.datetime.now(datetime.UTC)
    end = now + datetime.timedelta(hours=1 if valid else -1)
    return SessionTicket(
        age_add=7,
        cipher_suite=CipherSuite.AES_128_GCM_SHA256,
        not_valid_after=end,
        not_valid_before=now - datetime.timedelta(hours=2),
        resumption_secret=b"secret",
        server_name="localhost",
        ticket=b"label",
        max_early_data_size=0xFFFFFFFF,
        other_extensions=[(57, b"\x01\x02")],
    )


def test_tickets_are_taken_once_and_expired_ones_skipped(tmp_path: Path) -> None:
    store = MemoryTicketStore()
    store.put("k", _ticket())
    store.put("k", _ticket(valid=False))
    taken = store.take("k")
    assert taken is not None and taken.is_valid
    assert store.take("k") is None and store.take("other") is None


def test_file_store_round_trips_tickets(tmp_path: Path) -> None:
    path = tmp_path / "t.json"
    FileTicketStore(path).put("k", _ticket())
    loaded = FileTicketStore(path).take("k")
    assert loaded is not None
    original = _ticket()
    assert (loaded.ticket, loaded.resumption_secret, loaded.cipher_suite) == (
        b"label",
        b"secret",
        original.cipher_suite,
    )
    assert loaded.other_extensions == [(57, b"\x01\x02")] and loaded.max_early_data_size == 0xFFFFFFFF
    assert FileTicketStore(path).take("k") is None  # taking rewrote the file
