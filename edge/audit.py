"""The audit log, as the edge imports it: the writer lives in `isthmus.engine.audit`.

It moved there so the center can write the same lines without importing the edge (edge and
center share only protocol, tokenizer and engine). Everything is re-exported unchanged.
"""

from isthmus.engine.audit import (
    MAX_DETAILS,
    MAX_STRING,
    OUTCOMES,
    REDACTED,
    AuditError,
    AuditLog,
    FileSink,
    Sink,
    StreamSink,
    audit_line,
)

__all__ = [
    "MAX_DETAILS", "MAX_STRING", "OUTCOMES", "REDACTED", "AuditError", "AuditLog", "FileSink", "Sink",
    "StreamSink", "audit_line",
]
