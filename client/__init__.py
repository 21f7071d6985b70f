"""isthmus.client: the QUIC client SDK.

    async with connect("edge.example:4433", api_key="...", ca="ca.pem") as client:
        async for chunk in client.generate("Hello", max_tokens=32):
            print(chunk.text, end="")
        answer = await client.complete([{"role": "user", "content": "Hi"}])
        print(answer.route.tier, answer.route.reason, answer.usage)

`isthmus.client.sync` has the same API for scripts without asyncio. Imports only
`isthmus.protocol`, aioquic and msgspec: never torch or grpc.
"""

from isthmus.protocol import ChatMessage, Route, Timings, Usage

from .address import Address, parse_address, parse_addresses
from .backoff import Backoff
from .client import Client, ResponseStream, connect
from .connection import ConnectionInfo
from .errors import (
    Cancelled,
    ConnectionLost,
    DeadlineExceeded,
    Draining,
    InvalidRequest,
    IsthmusError,
    NotFound,
    Overloaded,
    PromptTooLong,
    RateLimited,
    ServerError,
    SlowReader,
    Unauthenticated,
    Unavailable,
    UnsupportedVersion,
    error_for_code,
    from_error_message,
    from_protocol_error,
)
from .results import Chunk, Completion
from .tickets import FileTicketStore, MemoryTicketStore, TicketStore

__all__ = [
    "Address",
    "Backoff",
    "Cancelled",
    "ChatMessage",
    "Chunk",
    "Client",
    "Completion",
    "ConnectionInfo",
    "ConnectionLost",
    "DeadlineExceeded",
    "Draining",
    "FileTicketStore",
    "InvalidRequest",
    "IsthmusError",
    "MemoryTicketStore",
    "NotFound",
    "Overloaded",
    "PromptTooLong",
    "RateLimited",
    "ResponseStream",
    "Route",
    "ServerError",
    "SlowReader",
    "TicketStore",
    "Timings",
    "Unauthenticated",
    "Unavailable",
    "UnsupportedVersion",
    "Usage",
    "connect",
    "error_for_code",
    "from_error_message",
    "from_protocol_error",
    "parse_address",
    "parse_addresses",
]
