"""gRPC method paths of the center service.

The center is served through generic gRPC handlers whose request and response bodies are the
msgpack messages of this package (no protobuf). This module only names the paths; it does not
import grpc, so the client SDK can depend on the protocol without pulling grpc in.
"""

from __future__ import annotations

from .limits import MAX_FRAME_SIZE

# bytes: the largest gRPC message either side sends or accepts, one msgpack body plus gRPC slack
MAX_MESSAGE_BYTES = MAX_FRAME_SIZE + 64 * 1024

SERVICE_NAME = "isthmus.v1.Center"

# unary request GenerateRequest -> server stream of TokenChunk ... ending in Done or Error
GENERATE_METHOD = "Generate"
# unary StatusRequest -> Status
STATUS_METHOD = "Status"
# unary DrainRequest -> DrainReply
DRAIN_METHOD = "Drain"
# unary ExportRequest -> Migrated (or Error NOT_FOUND): admin; the request's stream ends with Migrated
EXPORT_METHOD = "Export"
# unary KV ticket (msgpack {"ticket": str}) -> stream of raw KV byte chunks: admin, replica to replica
FETCH_KV_METHOD = "FetchKV"

GENERATE = f"/{SERVICE_NAME}/{GENERATE_METHOD}"
STATUS = f"/{SERVICE_NAME}/{STATUS_METHOD}"
DRAIN = f"/{SERVICE_NAME}/{DRAIN_METHOD}"
EXPORT = f"/{SERVICE_NAME}/{EXPORT_METHOD}"
FETCH_KV = f"/{SERVICE_NAME}/{FETCH_KV_METHOD}"

# The standard health service that runs beside ours.
HEALTH_SERVICE_NAME = "grpc.health.v1.Health"
