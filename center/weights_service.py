"""``FetchWeights``: a center serves its checkpoint folder, read-only, to ``isthmus weights sync``.

One unary-stream admin RPC on the center's service, ``/isthmus.v1.Center/FetchWeights``. Being a
method of that service other than `Generate` / `Status`, `AdminGuard` (center/auth.py) guards it
without being told: the caller needs the admin token (metadata ``authorization: Bearer ...``) or a
verified client certificate. The request is a msgpack map ``{"name": str, "offset": int}``; the
reply is a stream of raw byte chunks of that file from ``offset`` on (so an interrupted copy resumes
where it stopped). Only ``sha256sums.txt`` and the files it lists are served: nothing else of the
machine can be read through it, whatever the name asks for. The caller verifies every byte against
the manifest (engine/model/weights_sync.py); this side only reads.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import msgspec
from isthmus.engine.model.checkpoint import MANIFEST_FILE, ChecksumError, parse_manifest
from isthmus.engine.model.weights_sync import MAX_MANIFEST_SIZE, SyncError, safe_name
from isthmus.protocol import rpc

log = logging.getLogger(__name__)

FETCH_WEIGHTS_METHOD = "FetchWeights"
FETCH_WEIGHTS = f"/{rpc.SERVICE_NAME}/{FETCH_WEIGHTS_METHOD}"
CHUNK_BYTES = 256 * 1024  # bytes per streamed message (well under the gRPC message limit)
MAX_NAME_LEN = 4096  # chars


class FetchRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Which file, from which byte."""

    name: str
    offset: int = 0


def encode_request(name: str, offset: int) -> bytes:
    return msgspec.msgpack.encode(FetchRequest(name=name, offset=offset))


def _decode_request(data: bytes) -> FetchRequest | str:
    """The request, or why it is malformed (never raises: the handler answers INVALID_ARGUMENT)."""
    try:
        req = msgspec.msgpack.decode(data, type=FetchRequest)
    except msgspec.DecodeError as exc:
        return f"malformed request: {exc}"
    if len(req.name) > MAX_NAME_LEN or req.offset < 0:
        return "name too long or offset < 0"
    return req


def _identity(data: bytes) -> bytes:
    return data


class WeightsServer:
    """Serves the files of one checkpoint folder's manifest (re-read per call: a sync may replace it)."""

    def __init__(self, folder: str | Path | None) -> None:
        self.folder = Path(folder) if folder else None

    def handler(self) -> grpc.GenericRpcHandler:
        """A generic handler for `FETCH_WEIGHTS`, to add beside the center's own methods."""
        return grpc.method_handlers_generic_handler(
            rpc.SERVICE_NAME,
            {
                FETCH_WEIGHTS_METHOD: grpc.unary_stream_rpc_method_handler(
                    self.fetch, request_deserializer=_decode_request, response_serializer=_identity
                )
            },
        )

    def resolve(self, name: str) -> Path:
        """The path of `name` if the manifest lists it (or it is the manifest), else LookupError."""
        if self.folder is None:
            raise LookupError("this center has no checkpoint folder to serve")
        manifest = self.folder / MANIFEST_FILE
        if name == MANIFEST_FILE:
            return manifest
        try:
            listed = parse_manifest(manifest.read_bytes()[:MAX_MANIFEST_SIZE].decode("utf-8"))
            name = safe_name(name)
        except (OSError, UnicodeDecodeError, ChecksumError, SyncError) as exc:
            raise LookupError(f"{name[:80]!r}: not served ({exc})") from None
        if name not in listed:
            raise LookupError(f"{name[:80]!r}: not listed in {MANIFEST_FILE}")
        return self.folder / name

    async def fetch(self, req: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        if isinstance(req, str):
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, req)
        try:
            path = self.resolve(req.name)
            f = path.open("rb")
        except LookupError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        except OSError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"{req.name[:80]!r}: {exc.strerror}")
        with f:
            size = await asyncio.to_thread(lambda: f.seek(0, 2))
            if req.offset > size:
                await context.abort(grpc.StatusCode.OUT_OF_RANGE, f"offset {req.offset} > size {size}")
            f.seek(req.offset)
            while block := await asyncio.to_thread(f.read, CHUNK_BYTES):
                yield block
        log.info("weights: served %s from byte %d", req.name[:80], req.offset)
