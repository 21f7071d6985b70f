"""isthmus.protocol: the one wire protocol every tier speaks.

msgpack messages (msgspec structs tagged by ``"type"``), a validating codec that turns any bad
input into `ProtocolError`, u32-length stream framing, error codes, limits and the version.
Imports nothing else of isthmus, and no asyncio or torch.
"""

from . import limits, rpc
from .codec import decode, encode, validate
from .errors import RETRYABLE_CODES, ErrorCode, ProtocolError, error_from_message, error_message
from .framing import FrameDecoder, encode_frame
from .ids import check_ids, num_ids, pack_ids, unpack_ids
from .messages import (
    MESSAGE_TYPES,
    Cancel,
    ChatMessage,
    Continuation,
    Done,
    DrainReply,
    DrainRequest,
    Error,
    ExportRequest,
    GenerateRequest,
    Message,
    Migrated,
    Route,
    SamplingOptions,
    Status,
    StatusRequest,
    Timings,
    TokenChunk,
    Usage,
)
from .version import ALPN_PROTOCOL, PROTOCOL_VERSION, check_version

__all__ = [
    "ALPN_PROTOCOL",
    "MESSAGE_TYPES",
    "PROTOCOL_VERSION",
    "RETRYABLE_CODES",
    "Cancel",
    "ChatMessage",
    "Continuation",
    "Done",
    "DrainReply",
    "DrainRequest",
    "Error",
    "ErrorCode",
    "ExportRequest",
    "FrameDecoder",
    "GenerateRequest",
    "Message",
    "Migrated",
    "ProtocolError",
    "Route",
    "SamplingOptions",
    "Status",
    "StatusRequest",
    "Timings",
    "TokenChunk",
    "Usage",
    "check_ids",
    "check_version",
    "decode",
    "encode",
    "encode_frame",
    "error_from_message",
    "error_message",
    "limits",
    "num_ids",
    "pack_ids",
    "rpc",
    "unpack_ids",
    "validate",
]
