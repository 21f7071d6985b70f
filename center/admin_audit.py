"""What the center's audit log says about an admin call: action, actor, source, outcome, details.

`AdminGuard` (auth.py) writes one line per admin call (``Drain``, ``Export``, ``FetchWeights`` and
any admin method added later) once the call has ended, and one ``auth.refused`` line per refused
call instead. The functions here are sans-IO: a method name, a decoded request, a reply or an
auth context in, plain values out.

Only allowlisted request fields reach a line (`DETAIL_FIELDS`: drain grace, the migrate flag, a
request id, a weight file name and offset), so neither a prompt nor a token can, whatever a
future request type carries; the writer (`isthmus.engine.audit`) also redacts names that look
like secrets. The actor is the verified client certificate's common name, ``admin-token`` for a
caller that sent the right token, or ``anonymous``; never the token itself.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from isthmus.protocol import Error, Migrated, rpc

DETAIL_FIELDS = ("grace_s", "migrate", "id", "name", "offset")  # request fields safe to log
TOKEN_ACTOR = "admin-token"  # the actor of a call the admin token authenticated
ANONYMOUS = "anonymous"
REFUSED_ACTION = "auth.refused"  # the edge's name for a refused authentication too


def method_name(method: str) -> str:
    """``/isthmus.v1.Center/Drain`` -> ``Drain``."""
    return method.rsplit("/", 1)[-1]


def action_for(method: str, request: Any) -> str:
    """The audit action of an admin call: ``drain``, ``migrate`` (a drain with migrate),
    ``migrate.export``, ``weights.fetch``; ``admin.<method>`` for one added later."""
    name = method_name(method)
    if name == rpc.DRAIN_METHOD:
        return "migrate" if getattr(request, "migrate", False) is True else "drain"
    if name == rpc.EXPORT_METHOD:
        return "migrate.export"
    if name == "FetchWeights":
        return "weights.fetch"
    return f"admin.{name.lower()}"


def request_details(method: str, request: Any) -> dict[str, object]:
    """The method and the allowlisted fields of the decoded request (a malformed one: its error)."""
    details: dict[str, object] = {"method": method_name(method)}
    for field in DETAIL_FIELDS:
        value = getattr(request, field, None)
        if isinstance(value, bool | int | float | str):
            details[field] = value
    if isinstance(request, str | Exception):  # a request that did not decode: say so, not its bytes
        details["malformed"] = True
    return details


def reply_outcome(reply: Any) -> tuple[str, dict[str, object]]:
    """``ok`` or ``failed`` for a unary reply, with what it says (counts and codes, never content)."""
    if isinstance(reply, Error):
        code = getattr(reply, "code", "")
        return "failed", {"error_code": getattr(code, "name", str(code)),
                          "error": str(getattr(reply, "message", ""))[:200]}
    details: dict[str, object] = {}
    num = getattr(reply, "num_in_flight", None)
    if isinstance(num, int):
        details["num_in_flight"] = num
    if isinstance(reply, Migrated):
        details["exported"] = True
    return "ok", details


def peer_address(peer: str | None) -> str:
    """gRPC's ``ipv4:127.0.0.1:5000`` / ``ipv6:[::1]:5000`` -> ``127.0.0.1:5000`` / ``[::1]:5000``."""
    if not peer:
        return ""
    for prefix in ("ipv4:", "ipv6:"):
        if peer.startswith(prefix):
            return peer[len(prefix):]
    return peer


def actor_of(is_token: bool, auth_context: Mapping[str, Sequence[bytes]]) -> str:
    """Who made the call: the verified certificate's CN, ``admin-token``, or ``anonymous``."""
    if is_token:
        return TOKEN_ACTOR
    if b"ssl" in auth_context.get("transport_security_type", ()):
        names = auth_context.get("x509_common_name") or ()
        if names:
            return names[0].decode("utf-8", "replace")
    return ANONYMOUS
