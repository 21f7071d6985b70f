"""Wire messages: msgspec structs encoded as msgpack maps.

Top-level messages carry a snake-case tag in the ``"type"`` field (``{"type": "cancel", "id":
...}``); nested structs (`SamplingOptions`, `ChatMessage`, ...) are plain maps. Field types and
`Meta` constraints are checked by msgspec while decoding; rules that span fields (exactly one
prompt form, packed id lengths, total prompt size, version) are checked in `validate.py`.
Constructing a struct in Python does NOT validate it: `isthmus.protocol.validate(msg)` does.

Token ids travel as packed little-endian int32 bytes (`pack_ids` / `unpack_ids` in codec.py).
Unknown fields are ignored on decode so a peer may add optional fields within one major version.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, field

from . import limits as L
from .errors import ErrorCode
from .version import PROTOCOL_VERSION

# --- constrained field types ---------------------------------------------------------------------
RequestId = Annotated[str, Meta(min_length=1, max_length=L.MAX_ID_LEN)]
Count = Annotated[int, Meta(ge=0, le=L.MAX_COUNT)]
FiniteFloat = Annotated[float, Meta(ge=-L.MAX_FLOAT, le=L.MAX_FLOAT)]  # refuses NaN and +-inf
NonNegFloat = Annotated[float, Meta(ge=0.0, le=L.MAX_FLOAT)]
Milliseconds = NonNegFloat
Reason = Annotated[str, Meta(max_length=L.MAX_REASON_LEN)]
ModelName = Annotated[str, Meta(max_length=L.MAX_MODEL_NAME_LEN)]
Fingerprint = Annotated[str, Meta(max_length=L.MAX_FINGERPRINT_LEN)]
StopString = Annotated[str, Meta(min_length=1, max_length=L.MAX_STOP_STRING_LEN)]

Role = Literal["system", "user", "assistant"]
RequestTier = Literal["auto", "edge", "center"]
Tier = Literal["edge", "center"]
FinishReason = Literal["stop", "length", "cancelled"]


# --- nested structs ------------------------------------------------------------------------------
class SamplingOptions(msgspec.Struct, kw_only=True):
    """How to sample. temperature 0 = greedy; top_k 0 = disabled; seed None = random."""

    max_tokens: Annotated[int, Meta(ge=1, le=L.MAX_TOKENS)] = 256
    temperature: Annotated[float, Meta(ge=L.MIN_TEMPERATURE, le=L.MAX_TEMPERATURE)] = 1.0
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] = 1.0
    top_k: Annotated[int, Meta(ge=0, le=L.MAX_TOP_K)] = 0
    min_p: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.0
    repetition_penalty: Annotated[float, Meta(gt=L.MIN_REPETITION_PENALTY, le=L.MAX_REPETITION_PENALTY)] = 1.0
    presence_penalty: Annotated[float, Meta(ge=L.MIN_PENALTY, le=L.MAX_PENALTY)] = 0.0
    frequency_penalty: Annotated[float, Meta(ge=L.MIN_PENALTY, le=L.MAX_PENALTY)] = 0.0
    seed: Annotated[int, Meta(ge=0, le=L.MAX_SEED)] | None = None
    stop: Annotated[list[StopString], Meta(max_length=L.MAX_STOP_STRINGS)] = []
    # packed little-endian int32
    stop_token_ids: Annotated[bytes, Meta(max_length=L.MAX_STOP_TOKEN_IDS * L.TOKEN_ID_SIZE)] = b""
    logprobs: Annotated[int, Meta(ge=0, le=L.MAX_LOGPROBS)] | None = None
    ignore_eos: bool = False


class ChatMessage(msgspec.Struct):
    """One chat turn. Content size is checked per request (PROMPT_TOO_LONG), not here."""

    role: Role
    content: str


KVName = Annotated[str, Meta(max_length=L.MAX_KV_NAME_LEN)]
MAX_KV_SOURCE_LEN = 300  # chars: "host:port" of the replica holding a KV ticket
MAX_KV_TICKET_LEN = 128  # chars: a KV ticket
MAX_KV_REMOTE_BYTES = 1 << 40  # bytes: KV held behind one ticket (1 TiB; the holder's budget is lower)


class KVRemote(msgspec.Struct, kw_only=True):
    """Where a migration's KV waits when it is too large for the message: the exporting replica
    (``address``, its gRPC ``host:port``) holds ``num_bytes`` of it under ``ticket`` for a short
    while; the target fetches them over ``FetchKV`` (admin-authenticated) and else recomputes."""

    address: Annotated[str, Meta(min_length=1, max_length=MAX_KV_SOURCE_LEN)]
    ticket: Annotated[str, Meta(min_length=1, max_length=MAX_KV_TICKET_LEN)]
    num_bytes: Annotated[int, Meta(ge=1, le=MAX_KV_REMOTE_BYTES)]


class KVBlocks(msgspec.Struct, kw_only=True):
    """A migrating request's KV cache: positions ``[0, num_tokens)``, every layer, K and V.

    ``data`` holds ``num_layers * 2 * num_tokens * num_kv_heads * head_dim`` elements of ``dtype``
    in ``layout`` order (``"layer,kv,token,head,dim"``: token-major, so the receiver's block size
    need not match ``block_size``, the sender's, which is informative). The receiver uses it only
    when ``model_fingerprint``, ``dtype``, the shape fields and ``tp_size`` all match its own
    cache; otherwise it recomputes the cache from the continuation's token ids.
    """

    model_fingerprint: Fingerprint
    dtype: KVName  # "float32", "float16", "bfloat16"
    layout: KVName
    num_layers: Annotated[int, Meta(ge=1, le=L.MAX_KV_LAYERS)]
    num_kv_heads: Annotated[int, Meta(ge=1, le=L.MAX_KV_HEADS)]
    head_dim: Annotated[int, Meta(ge=1, le=L.MAX_KV_HEAD_DIM)]
    tp_size: Annotated[int, Meta(ge=1, le=L.MAX_KV_TP_SIZE)] = 1
    block_size: Annotated[int, Meta(ge=1, le=L.MAX_KV_BLOCK_SIZE)]
    num_tokens: Annotated[int, Meta(ge=1, le=L.MAX_PROMPT_TOKENS + L.MAX_TOKENS)]
    data: Annotated[bytes, Meta(max_length=L.MAX_KV_PAYLOAD_BYTES)]
    # set (and ``data`` empty) when the KV did not fit the message: fetch it from there. An older
    # receiver ignores the field, finds ``data`` short and recomputes: the answer still goes on
    remote: KVRemote | None = None


class Continuation(msgspec.Struct, kw_only=True):
    """A hand-over: the answer so far, to be continued by another tier.

    `token_ids` (packed) is empty unless both sides report the same `tokenizer_fingerprint`.
    """

    text: Annotated[str, Meta(max_length=L.MAX_CONTINUATION_CHARS)] = ""
    token_ids: Annotated[bytes, Meta(max_length=L.MAX_CONTINUATION_TOKENS * L.TOKEN_ID_SIZE)] = b""
    tokenizer_fingerprint: Fingerprint = ""
    reason: Reason = ""
    # True: `token_ids` are this request's own answer so far on a replica of the same model (a live
    # migration): sampling goes on from there (seeded position, penalties, `max_tokens` counts them)
    is_migration: bool = False
    # A migration's KV cache, so the target need not recompute it (None: recompute from the ids)
    kv: KVBlocks | None = None


class Route(msgspec.Struct):
    """Which tier answered and why; `score` is the router's difficulty score."""

    tier: Tier
    reason: Reason = ""
    score: FiniteFloat = 0.0
    is_degraded: bool = False
    variant: Annotated[str, Meta(max_length=32)] = ""  # A/B split: "stable" or "candidate"; "": none


class Usage(msgspec.Struct):
    """Token counts of one request."""

    prompt_tokens: Count = 0
    completion_tokens: Count = 0


class Timings(msgspec.Struct):
    """Request timings, milliseconds since the request arrived."""

    queue_ms: Milliseconds = 0.0
    first_token_ms: Milliseconds = 0.0
    total_ms: Milliseconds = 0.0


# --- top-level messages --------------------------------------------------------------------------
class GenerateRequest(msgspec.Struct, kw_only=True, tag_field="type", tag="generate_request"):
    """Ask for a completion. Exactly one of `prompt`, `messages`, `prompt_ids` (packed) is set."""

    id: RequestId
    version: int = PROTOCOL_VERSION
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    prompt_ids: bytes | None = None
    sampling: SamplingOptions = field(default_factory=SamplingOptions)
    tier: RequestTier = "auto"
    priority: Annotated[int, Meta(ge=L.MIN_PRIORITY, le=L.MAX_PRIORITY)] = 0  # higher first
    timeout_ms: Annotated[int, Meta(ge=L.MIN_TIMEOUT_MS, le=L.MAX_TIMEOUT_MS)] | None = None
    api_key: Annotated[str, Meta(max_length=L.MAX_API_KEY_LEN)] | None = None
    continuation: Continuation | None = None
    user: Annotated[str, Meta(max_length=L.MAX_API_KEY_LEN)] | None = None  # end user, for A/B stickiness


class TokenChunk(msgspec.Struct, kw_only=True, tag_field="type", tag="token_chunk"):
    """New tokens of an answer. `logprobs` has one entry per new token when asked for.

    `route` is set on an answer's first chunk (the route it starts on) and again on the first
    chunk after the route changes mid-answer (a hand-over); None on every other chunk.
    """

    id: RequestId
    token_ids: Annotated[bytes, Meta(max_length=L.MAX_CHUNK_TOKENS * L.TOKEN_ID_SIZE)] = b""
    text: Annotated[str, Meta(max_length=L.MAX_CHUNK_TEXT_CHARS)] = ""
    logprobs: Annotated[list[FiniteFloat], Meta(max_length=L.MAX_CHUNK_TOKENS)] | None = None
    tier: Tier
    route: Route | None = None


class Done(msgspec.Struct, kw_only=True, tag_field="type", tag="done"):
    """The last message of a successful answer."""

    id: RequestId
    finish_reason: FinishReason
    usage: Usage = field(default_factory=Usage)
    route: Route
    timings: Timings = field(default_factory=Timings)
    model: ModelName = ""


class Error(msgspec.Struct, kw_only=True, tag_field="type", tag="error"):
    """The last message of a failed answer. `id` is empty when the request could not be read."""

    id: Annotated[str, Meta(max_length=L.MAX_ID_LEN)]
    code: ErrorCode
    message: Annotated[str, Meta(max_length=L.MAX_ERROR_MESSAGE_LEN)] = ""
    retryable: bool = False


class Cancel(msgspec.Struct, kw_only=True, tag_field="type", tag="cancel"):
    """Stop generating request `id` (resetting the stream does the same)."""

    id: RequestId


class StatusRequest(msgspec.Struct, kw_only=True, tag_field="type", tag="status_request"):
    """Ask a server for its `Status`."""

    version: int = PROTOCOL_VERSION


class Status(msgspec.Struct, kw_only=True, tag_field="type", tag="status"):
    """A server's live state, used for health, balancing and draining."""

    version: int = PROTOCOL_VERSION
    tier: Tier
    model: ModelName = ""
    tokenizer_fingerprint: Fingerprint = ""
    num_running: Count = 0
    num_waiting: Count = 0
    num_free_kv_blocks: Count = 0
    num_total_kv_blocks: Count = 0
    tokens_per_s: NonNegFloat = 0.0
    is_ready: bool = False
    is_draining: bool = False
    prefix_cache_hit_rate: NonNegFloat = 0.0  # prompt tokens reused from the KV cache / prompt tokens
    num_cached_kv_blocks: Count = 0  # KV blocks held in the prefix cache now
    num_prefix_evictions: Count = 0  # cached KV blocks reclaimed since start
    weights_digest: Fingerprint = ""  # sha256 of the model's sha256sums.txt ("" = no manifest)


class DrainRequest(msgspec.Struct, kw_only=True, tag_field="type", tag="drain_request"):
    """Stop admitting; finish or hand over in-flight work within `grace_s` seconds."""

    grace_s: Annotated[float, Meta(ge=0.0, le=L.MAX_DRAIN_GRACE_S)] = 30.0
    migrate: bool = False  # end each in-flight request with `Migrated` (its state) instead of waiting


class DrainReply(msgspec.Struct, kw_only=True, tag_field="type", tag="drain_reply"):
    """Answer to `DrainRequest`: how many requests were in flight when draining began."""

    num_in_flight: Count = 0


class ExportRequest(msgspec.Struct, kw_only=True, tag_field="type", tag="export_request"):
    """Admin: stop serving in-flight request `id` here and return its state (a `Migrated`)."""

    id: RequestId


class Migrated(msgspec.Struct, kw_only=True, tag_field="type", tag="migrated"):
    """A request's resumable state: the reply to `ExportRequest`, and the last message of its stream.

    Continue it elsewhere with a `GenerateRequest` whose `prompt_ids`, `sampling` and
    `continuation` (``is_migration=True``) are these; the rest is the original request's.
    `sampling.seed` is the seed the exporting replica drew when the request gave none.
    """

    id: RequestId
    prompt_ids: bytes  # packed: everything before the answer (a hand-over's text included)
    sampling: SamplingOptions
    continuation: Continuation


Message = (
    GenerateRequest | TokenChunk | Done | Error | Cancel | StatusRequest | Status | DrainRequest | DrainReply
    | ExportRequest | Migrated
)
"""Any top-level message."""

MESSAGE_TYPES: tuple[type[Message], ...] = (
    GenerateRequest,
    TokenChunk,
    Done,
    Error,
    Cancel,
    StatusRequest,
    Status,
    DrainRequest,
    DrainReply,
    ExportRequest,
    Migrated,
)
