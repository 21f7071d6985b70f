"""A small raw QUIC test client and a self-signed certificate, for the edge's serving tests.

Raw on purpose: tests need to send malformed frames, reset streams and stop reading, which an SDK
rightly does not allow.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

from aioquic.asyncio.client import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.tls import SessionTicket
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from isthmus.protocol import ALPN_PROTOCOL, Done, Error, FrameDecoder, Message, encode_frame


def write_self_signed(folder: Path) -> tuple[str, str]:
    """Write cert.pem and key.pem for 127.0.0.1/localhost; return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return str(cert_path), str(key_path)


class RawClient(QuicConnectionProtocol):
    """Collects each stream's frames; can stop processing datagrams to play a stuck reader."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.decoders: dict[int, FrameDecoder] = {}
        self.messages: dict[int, list[Message]] = {}
        self.ended: dict[int, asyncio.Event] = {}
        self.resets: set[int] = set()
        self.is_reading = True
        self._held: list[tuple[bytes, object]] = []

    def datagram_received(self, data: bytes | str, addr: object) -> None:
        if not self.is_reading:
            self._held.append((data, addr))  # type: ignore[arg-type]
            return
        super().datagram_received(data, addr)  # type: ignore[arg-type]

    def stop_reading(self) -> None:
        self.is_reading = False

    def resume_reading(self) -> None:
        self.is_reading = True
        held, self._held = self._held, []
        for data, addr in held:
            super().datagram_received(data, addr)  # type: ignore[arg-type]

    def quic_event_received(self, event: events.QuicEvent) -> None:
        if isinstance(event, events.StreamDataReceived):
            sid = event.stream_id
            dec = self.decoders.setdefault(sid, FrameDecoder())
            self.messages.setdefault(sid, []).extend(dec.feed(event.data))
            if event.end_stream:
                self._ended(sid).set()
        elif isinstance(event, events.StreamReset):
            self.resets.add(event.stream_id)
            self._ended(event.stream_id).set()
        elif isinstance(event, events.ConnectionTerminated):
            for ev in self.ended.values():
                ev.set()

    def _ended(self, sid: int) -> asyncio.Event:
        return self.ended.setdefault(sid, asyncio.Event())

    def send(self, data: bytes, end_stream: bool = True, stream_id: int | None = None) -> int:
        """Write raw bytes on a new (or the given) stream; return its id."""
        sid = self._quic.get_next_available_stream_id() if stream_id is None else stream_id
        self._ended(sid)
        self._quic.send_stream_data(sid, data, end_stream=end_stream)
        self.transmit()
        return sid

    def send_message(self, msg: Message, end_stream: bool = True, stream_id: int | None = None) -> int:
        return self.send(encode_frame(msg), end_stream=end_stream, stream_id=stream_id)

    def reset(self, sid: int) -> None:
        self._quic.reset_stream(sid, 8)
        self._quic.stop_stream(sid, 8)
        self.transmit()

    async def wait_end(self, sid: int, timeout: float = 30.0) -> list[Message]:
        await asyncio.wait_for(self._ended(sid).wait(), timeout)
        return self.messages.get(sid, [])

    async def request(self, msg: Message, timeout: float = 30.0) -> list[Message]:
        return await self.wait_end(self.send_message(msg), timeout)

    async def first_message(self, sid: int, timeout: float = 30.0) -> Message:
        async def poll() -> Message:
            while not self.messages.get(sid):
                await asyncio.sleep(0.005)
            return self.messages[sid][0]

        return await asyncio.wait_for(poll(), timeout)


def client_config(tickets: list[SessionTicket] | None = None) -> QuicConfiguration:
    config = QuicConfiguration(is_client=True, alpn_protocols=[ALPN_PROTOCOL], verify_mode=ssl.CERT_NONE)
    if tickets:
        config.session_ticket = tickets[-1]
    return config


@contextlib.asynccontextmanager
async def raw_client(
    port: int, tickets: list[SessionTicket] | None = None, wait_connected: bool = True
) -> AsyncIterator[RawClient]:
    """Connect a `RawClient` to 127.0.0.1:port; new session tickets are appended to `tickets`."""
    handler = tickets.append if tickets is not None else None
    async with connect(
        "127.0.0.1",
        port,
        configuration=client_config(tickets),
        create_protocol=RawClient,
        session_ticket_handler=handler,
        wait_connected=wait_connected,
    ) as client:
        yield client  # type: ignore[misc]


def final(messages: list[Message]) -> Message:
    """The last message of a finished stream (asserts there is one and it ends the answer)."""
    assert messages, "stream ended without any message"
    assert isinstance(messages[-1], Done | Error), messages[-1]
    return messages[-1]
