"""OpenAI-compatible HTTP API on the edge: `/v1/chat/completions`, `/v1/completions`, `/v1/models`.

`openai_setup(node)` returns an `edge/http.py` setup hook that mounts the routes; they answer
through `node.orchestrator.handle`, the same request path as QUIC. The API key comes from
`Authorization: Bearer ...`. The route is reported in `x-isthmus-tier`, `x-isthmus-route-reason`
and `x-isthmus-route-score` headers (for streams: the route known when the first message came)
and, final, in an `isthmus_route` extension field of the completion object / last stream chunk.

The key is checked before the body is read (a wrong key costs the edge no body buffering) and
wrong keys are throttled per source address, as on QUIC (429 with `Retry-After`). Every error on
`/v1/...` is an OpenAI-style JSON object, 413 for a body over `http.MAX_BODY_SIZE` and 404/405
included; client input never yields a 5xx.

Streams wait for the orchestrator's first message before sending headers, so a request refused
up front (auth, validation, overload) gets a real HTTP status. A client that disconnects mid-stream
makes the next write fail; leaving the `aclosing` block then closes the orchestrator's generator,
which aborts the request on whichever tier runs it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncGenerator, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from isthmus.protocol import Done, Error, ErrorCode, GenerateRequest, ProtocolError, Route, TokenChunk

from .http import bearer_key, check_key, retry_after
from .openai_schema import (
    OpenAIError,
    error_from_protocol,
    include_usage,
    invalid,
    is_streaming,
    parse_chat,
    parse_completion,
)

if TYPE_CHECKING:  # the node imports this module
    from .node import EdgeNode
    from .orchestrator import Orchestrator

log = logging.getLogger(__name__)

def route_json(route: Route) -> dict[str, Any]:
    return {
        "tier": route.tier, "reason": route.reason, "score": route.score, "is_degraded": route.is_degraded,
    }

def route_headers(route: Route) -> dict[str, str]:
    headers = {
        "x-isthmus-tier": route.tier,
        "x-isthmus-route-reason": route.reason,
        "x-isthmus-route-score": f"{route.score:.4f}",
    }
    if route.variant:  # the A/B split's variant (ab_pools.py)
        headers["x-isthmus-variant"] = route.variant
    return headers


def initial_route(first: TokenChunk | Done) -> Route:
    """The route as known when the first message arrived (an answer's first chunk carries it)."""
    if isinstance(first, Done):
        return first.route
    if first.route is not None:
        return first.route
    return Route(tier=first.tier, reason="", score=0.0)  # a sender that leaves it out


def _finish_reason(reason: str) -> str:
    return "length" if reason == "length" else "stop"


def _usage(done: Done) -> dict[str, int]:
    p, c = done.usage.prompt_tokens, done.usage.completion_tokens
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _error_response(err: OpenAIError) -> web.Response:
    return web.json_response(err.body(), status=err.status, headers=err.headers)


# Parsing a body this big holds the loop for milliseconds (about 20 ms for 3 MB); such bodies are
# parsed one per loop iteration, so a flood of them cannot add up to one long stall.
LARGE_BODY_SIZE = 256 * 1024  # bytes


async def _read_json(request: web.Request, lane: asyncio.Semaphore) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise OpenAIError(413, f"request body: {exc.text}", code="request_too_large") from None
    if len(raw) < LARGE_BODY_SIZE:
        return _parse_json(raw)
    async with lane:
        await asyncio.sleep(0)  # let the loop turn before this parse, holding the lane
        return _parse_json(raw)


def _parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise invalid(None, f"request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise invalid(None, "request body: JSON nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise invalid(None, f"request body: {exc}") from None


def _authenticate(orch: Orchestrator, request: web.Request) -> None:
    """Check the API key before anything else is read; raise `OpenAIError` (401, or 429 throttled)."""
    try:
        check_key(orch.auth, request)
    except ProtocolError as exc:
        err = error_from_protocol(exc.code, exc.message)
        if exc.code == ErrorCode.RATE_LIMITED:
            err.headers.update(retry_after(orch.auth, request))
        raise err from None


@web.middleware
async def json_errors(request: web.Request, handler: Callable[[web.Request], Any]) -> web.StreamResponse:
    """On `/v1/...`: aiohttp's own errors (404, 405, 413, ...) and any bug as OpenAI-style JSON."""
    if not request.path.startswith("/v1/"):
        return await handler(request)
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        err = OpenAIError(exc.status, exc.reason, type=kind, code=exc.reason.lower().replace(" ", "_"))
        if "Allow" in exc.headers:
            err.headers["Allow"] = exc.headers["Allow"]
        return _error_response(err)
    except Exception:
        log.exception("openai %s %s failed", request.method, request.path)
        return _error_response(OpenAIError(500, "internal error", type="server_error", code="internal"))


class OpenAIApi:
    """The handlers; `orchestrator` is looked up per request (the node builds it at start)."""

    def __init__(
        self, get_orchestrator: Callable[[], Orchestrator | None], model_name: Callable[[], str]
    ) -> None:
        self._get_orchestrator = get_orchestrator
        self._model_name = model_name
        self._large_body_lane = asyncio.Semaphore(1)

    def mount(self, app: web.Application) -> None:
        app.middlewares.append(json_errors)
        app.router.add_post("/v1/chat/completions", self.chat)
        app.router.add_post("/v1/completions", self.completions)
        app.router.add_get("/v1/models", self.models)

    def _orchestrator(self) -> Orchestrator:
        orch = self._get_orchestrator()
        if orch is None:
            raise OpenAIError(503, "edge node is not started", type="service_unavailable", code="unavailable")
        return orch

    async def models(self, request: web.Request) -> web.Response:
        try:
            _authenticate(self._orchestrator(), request)
        except OpenAIError as err:
            return _error_response(err)
        name = self._model_name()
        data = [{"id": name, "object": "model", "created": 0, "owned_by": "isthmus"}]
        return web.json_response({"object": "list", "data": data})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, is_chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._serve(request, is_chat=False)

    async def _serve(self, request: web.Request, *, is_chat: bool) -> web.StreamResponse:
        try:
            orch = self._orchestrator()
            _authenticate(orch, request)
            body = await _read_json(request, self._large_body_lane)
            parse = parse_chat if is_chat else parse_completion
            req = parse(body, bearer_key(request), getattr(orch, "refuse_oversized", None))
            stream = is_streaming(body)
            with_usage = include_usage(body) if stream else False
        except OpenAIError as err:
            return _error_response(err)
        shape = _Shape(req, is_chat, self._model_name())
        async with contextlib.aclosing(orch.handle(req)) as answers:
            first = await anext(answers, None)
            if first is None:
                return _error_response(OpenAIError(500, "no answer", type="server_error", code="internal"))
            if isinstance(first, Error):
                return _error_response(error_from_protocol(first.code, first.message, is_chat=is_chat))
            headers = route_headers(initial_route(first))
            if not stream:
                return await self._whole(first, answers, shape, headers, is_chat)
            return await self._stream(request, first, answers, shape, headers, with_usage)

    async def _whole(
        self, first: TokenChunk | Done, answers: AsyncGenerator[Any, None], shape: _Shape,
        headers: dict[str, str], is_chat: bool,
    ) -> web.Response:
        texts: list[str] = []
        msg: Any = first
        while not isinstance(msg, Done):
            if isinstance(msg, Error):
                return _error_response(error_from_protocol(msg.code, msg.message, is_chat=is_chat))
            texts.append(msg.text)
            msg = await anext(answers)
        headers = route_headers(msg.route)  # the whole answer is known: report its final route
        return web.json_response(shape.whole("".join(texts), msg), headers=headers)

    async def _stream(
        self, request: web.Request, first: TokenChunk | Done, answers: AsyncGenerator[Any, None],
        shape: _Shape, headers: dict[str, str], with_usage: bool,
    ) -> web.StreamResponse:
        resp = web.StreamResponse(
            headers={**headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        )
        await resp.prepare(request)

        async def send(obj: Any) -> None:
            data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
            await resp.write(f"data: {data}\n\n".encode())

        try:
            if shape.is_chat:
                await send(shape.chunk({"role": "assistant", "content": ""}, None, with_usage))
            msg: Any = first
            while True:
                if isinstance(msg, TokenChunk):
                    if msg.text:
                        await send(shape.chunk(msg.text, None, with_usage))
                elif isinstance(msg, Done):
                    await send(shape.last_chunk(msg, with_usage))
                    if with_usage:
                        await send(shape.usage_chunk(msg))
                    break
                elif isinstance(msg, Error):
                    await send(error_from_protocol(msg.code, msg.message, is_chat=shape.is_chat).body())
                    break
                msg = await anext(answers)
            await send("[DONE]")
            await resp.write_eof()
        except (ConnectionResetError, ConnectionError) as exc:
            # the client went away: leaving the caller's `aclosing` aborts the request
            log.debug("openai stream %s: client gone (%s)", shape.req.id, exc)
        except Exception:  # a bug, after the headers went out: end the stream with an error event
            log.exception("openai stream %s failed", shape.req.id)
            with contextlib.suppress(Exception):
                await send(OpenAIError(500, "internal error", type="server_error", code="internal").body())
        return resp


class _Shape:
    """Builds the OpenAI response objects of one request."""

    def __init__(self, req: GenerateRequest, is_chat: bool, model: str) -> None:
        self.req = req
        self.is_chat = is_chat
        self.model = model
        self.created = int(time.time())

    def _base(self, obj: str, model: str | None = None) -> dict[str, Any]:
        return {"id": self.req.id, "object": obj, "created": self.created, "model": model or self.model}

    def whole(self, text: str, done: Done) -> dict[str, Any]:
        reason = _finish_reason(done.finish_reason)
        if self.is_chat:
            out = self._base("chat.completion", done.model)
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            out = self._base("text_completion", done.model)
            choice = {"index": 0, "text": text, "logprobs": None}
        choice["finish_reason"] = reason
        out.update(choices=[choice], usage=_usage(done), isthmus_route=route_json(done.route))
        return out

    def chunk(self, content: Any, finish: str | None, with_usage: bool) -> dict[str, Any]:
        if self.is_chat:
            out = self._base("chat.completion.chunk")
            delta = content if isinstance(content, dict) else ({"content": content} if content else {})
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            out = self._base("text_completion")
            choice = {"index": 0, "text": content or "", "logprobs": None, "finish_reason": finish}
        out["choices"] = [choice]
        if with_usage:
            out["usage"] = None
        return out

    def last_chunk(self, done: Done, with_usage: bool) -> dict[str, Any]:
        out = self.chunk(None, _finish_reason(done.finish_reason), with_usage)
        if done.model:
            out["model"] = done.model
        out["isthmus_route"] = route_json(done.route)
        return out

    def usage_chunk(self, done: Done) -> dict[str, Any]:
        out = self._base("chat.completion.chunk" if self.is_chat else "text_completion", done.model)
        out.update(choices=[], usage=_usage(done))
        return out


def openai_setup(node: EdgeNode) -> Callable[[web.Application], None]:
    """An `edge/http.py` setup hook mounting the OpenAI routes on `node` (an `EdgeNode`)."""

    def model_name() -> str:
        orch = node.orchestrator
        name = getattr(orch, "model_name", "") if orch is not None else ""
        return str(name or getattr(node.config, "model_name", "") or "isthmus")

    api = OpenAIApi(lambda: node.orchestrator, model_name)
    return api.mount
