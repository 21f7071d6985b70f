"""The ``grpc://HOST:PORT`` source of ``isthmus weights sync``: a center's ``FetchWeights`` RPC.

The center serves its checkpoint folder read-only to admin callers (center/weights_service.py).
This side authenticates like any admin call: the admin token as ``authorization: Bearer`` metadata
(``--admin-token-file``), or a client certificate (``--tls-dir DIR``: ``DIR/ca.crt`` and
``DIR/<client>.crt``/``.key`` as written by ``python -m isthmus.edge.tls --mutual-tls-dir``). Each
file is asked for from the offset the local partial copy reached, so an interrupted sync resumes.
Transport failures become `SyncError`/`ConnectionError` so the sync keeps what arrived.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from isthmus.center.auth import admin_metadata, read_admin_token
from isthmus.center.weights_service import FETCH_WEIGHTS, encode_request
from isthmus.engine.model.checkpoint import MANIFEST_FILE
from isthmus.engine.model.weights_sync import MAX_MANIFEST_SIZE, SyncError

MESSAGE_BYTES = 8 * 1024 * 1024  # bytes: more than one streamed chunk
CONNECT_TIMEOUT_S = 30.0  # seconds for the manifest call (the file streams have no deadline)


@dataclass(frozen=True, slots=True)
class GrpcAuth:
    """How to authenticate: a token file, a mutual-TLS folder, or both."""

    token_file: str | None = None
    tls_dir: str | None = None
    tls_client: str = "edge"
    server_name: str | None = None


_TRANSIENT = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED)


class _OutOfRange(Exception):
    """The asked offset is past the end of the file."""


def _identity(data: bytes) -> bytes:
    return data


class GrpcSource:
    """A center's checkpoint, read through ``FetchWeights``."""

    def __init__(self, url: str, auth: GrpcAuth) -> None:
        target = url.removeprefix("grpc://").rstrip("/")
        if not target or "/" in target or "@" in target:
            raise SyncError(f"{url}: expected grpc://HOST:PORT")
        self.description = f"grpc://{target}"
        self.metadata = admin_metadata(read_admin_token(auth.token_file)) if auth.token_file else ()
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MESSAGE_BYTES),
            ("grpc.enable_retries", 0),
        ]
        if auth.tls_dir is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            folder = Path(auth.tls_dir)
            try:
                creds = grpc.ssl_channel_credentials(
                    root_certificates=(folder / "ca.crt").read_bytes(),
                    private_key=(folder / f"{auth.tls_client}.key").read_bytes(),
                    certificate_chain=(folder / f"{auth.tls_client}.crt").read_bytes(),
                )
            except OSError as exc:
                raise SyncError(f"--tls-dir: {exc.filename}: {exc.strerror}") from None
            if auth.server_name:
                options.append(("grpc.ssl_target_name_override", auth.server_name))
            self.channel = grpc.secure_channel(target, creds, options=options)
        self._fetch = self.channel.unary_stream(
            FETCH_WEIGHTS, request_serializer=_identity, response_deserializer=_identity
        )

    def close(self) -> None:
        self.channel.close()

    def read_manifest(self) -> bytes:
        out = bytearray()
        request = encode_request(MANIFEST_FILE, 0)
        call = self._fetch(request, metadata=self.metadata, timeout=CONNECT_TIMEOUT_S)
        for block in self._guard(MANIFEST_FILE, call):
            out += block
            if len(out) > MAX_MANIFEST_SIZE:
                call.cancel()
                break
        return bytes(out)

    def fetch(self, name: str, offset: int) -> tuple[int, Iterator[bytes]]:
        """The bytes of `name` from `offset`; from 0 when the partial copy is longer than the file
        (OUT_OF_RANGE: it cannot be a prefix of it)."""
        call = self._fetch(encode_request(name, offset), metadata=self.metadata)
        chunks = self._guard(name, call)
        try:
            first = next(chunks)  # the first message, or the refusal, before the caller writes
        except StopIteration:
            return offset, iter(())
        except _OutOfRange:
            if not offset:
                raise SyncError(f"{name}: {self.description} refused offset 0") from None
            return self.fetch(name, 0)
        return offset, itertools.chain([first], chunks)

    def _guard(self, name: str, call: Any) -> Iterator[bytes]:
        """The call's chunks; a refusal is a `SyncError`, a dropped connection a `ConnectionError`
        (the sync keeps the bytes that arrived and says how to resume)."""
        try:
            yield from call
        except grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            if code == grpc.StatusCode.OUT_OF_RANGE:
                raise _OutOfRange(details) from None
            if code in _TRANSIENT:
                raise ConnectionError(f"{self.description}: {code.name}: {details}") from None
            raise SyncError(f"{name}: {self.description} refused: {code.name}: {details}") from None
