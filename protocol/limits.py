"""Protocol limits, with units.

Every bound the decoder enforces lives here so that both tiers, the client SDK and the tests agree
on one number. Limits are part of the wire contract: raising one is a protocol change.
"""

from __future__ import annotations

import sys

# --- framing -------------------------------------------------------------------------------------
MAX_FRAME_SIZE = 4 * 1024 * 1024  # bytes: one msgpack body, header excluded
FRAME_HEADER_SIZE = 4  # bytes: u32 big-endian body length

# --- identifiers and small strings ---------------------------------------------------------------
MAX_ID_LEN = 128  # chars: request id
MAX_API_KEY_LEN = 256  # chars
MAX_MODEL_NAME_LEN = 256  # chars
MAX_FINGERPRINT_LEN = 128  # chars: tokenizer fingerprint (sha256 hex is 64)
MAX_REASON_LEN = 256  # chars: route / continuation reason
MAX_ERROR_MESSAGE_LEN = 4096  # chars

# --- prompt --------------------------------------------------------------------------------------
MAX_PROMPT_CHARS = 1024 * 1024  # chars: `prompt`, and the sum of all chat message contents
MAX_PROMPT_TOKENS = 131072  # tokens: `prompt_ids`
MAX_MESSAGES = 256  # chat messages per request
MAX_MESSAGE_CHARS = MAX_PROMPT_CHARS  # chars: one chat message's content

# --- sampling ------------------------------------------------------------------------------------
MAX_TOKENS = 32768  # new tokens per request
MAX_STOP_STRINGS = 16  # stop strings per request
MAX_STOP_STRING_LEN = 256  # chars per stop string
MAX_STOP_TOKEN_IDS = 64  # stop token ids per request
MAX_LOGPROBS = 20  # top logprobs per token
MIN_TEMPERATURE = 0.0  # 0 = greedy
MAX_TEMPERATURE = 100.0
MAX_TOP_K = 2**31 - 1  # 0 = disabled
MIN_REPETITION_PENALTY = 0.0  # exclusive
MAX_REPETITION_PENALTY = 10.0
MIN_PENALTY = -2.0  # presence / frequency penalty
MAX_PENALTY = 2.0
MAX_SEED = 2**63 - 1

# --- token ids -----------------------------------------------------------------------------------
TOKEN_ID_SIZE = 4  # bytes: packed little-endian int32
MAX_TOKEN_ID = 2**31 - 1

# --- scheduling ----------------------------------------------------------------------------------
MIN_PRIORITY = -1000  # higher runs first
MAX_PRIORITY = 1000
MIN_TIMEOUT_MS = 1  # milliseconds
MAX_TIMEOUT_MS = 3_600_000  # milliseconds: one hour
MAX_DRAIN_GRACE_S = 86_400.0  # seconds: one day

# --- responses -----------------------------------------------------------------------------------
MAX_CHUNK_TOKENS = MAX_TOKENS  # tokens in one TokenChunk
MAX_CHUNK_TEXT_CHARS = MAX_PROMPT_CHARS  # chars in one TokenChunk
MAX_CONTINUATION_CHARS = MAX_PROMPT_CHARS  # chars already streamed before a hand-over
MAX_CONTINUATION_TOKENS = MAX_PROMPT_TOKENS  # tokens already streamed before a hand-over
MAX_COUNT = 2**63 - 1  # any non-negative counter (usage, queue lengths, KV blocks)

# --- KV blocks of a live migration (Continuation.kv) ---------------------------------------------
# The whole message (KV included) must still fit one frame: the edge relays it over gRPC, and every
# decoder caps a body at MAX_FRAME_SIZE. A sender that cannot fit the KV sends ids only (tokens).
MAX_KV_PAYLOAD_BYTES = MAX_FRAME_SIZE  # bytes: Continuation.kv.data
MAX_KV_LAYERS = 1024  # transformer layers
MAX_KV_HEADS = 1024  # key/value heads (of one tensor-parallel shard)
MAX_KV_HEAD_DIM = 4096  # elements per head
MAX_KV_TP_SIZE = 1024  # tensor-parallel ranks
MAX_KV_BLOCK_SIZE = 65536  # tokens per KV block
MAX_KV_NAME_LEN = 64  # chars: dtype name, layout name
MAX_FLOAT = sys.float_info.max  # finite floats only: NaN and +-inf are refused
