"""Async API: a step loop on its own thread, streams of `EngineOutput` on the event loop.

The step thread runs ``schedule -> run -> postprocess`` back to back while there is work and
hands each step's outputs to the event loop with ``loop.call_soon_threadsafe``. The scheduler is
guarded by one lock that the step thread releases while the model runs, so ``generate``,
``abort``, ``load`` and ``export_state`` called on the event loop wait at most one
postprocess, never a forward pass. A slow consumer does not make a queue grow: undelivered
outputs of one request are merged into one pending item (``EngineOutput.merge``).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from isthmus.engine.core.core import EngineCore, Runner
from isthmus.engine.core.kv_blocks import KVPayload, KVSpec
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.outputs import EngineLoad, EngineOutput
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.sequence import FINISH_CANCELLED
from isthmus.engine.core.state import RequestState

log = logging.getLogger(__name__)
IDLE_POLL_S = 0.002  # seconds to wait when work exists but nothing could be scheduled


class EngineNotRunning(RuntimeError):
    """``generate`` before ``start()`` / after ``stop()``, or the step loop died."""


@dataclass(slots=True)
class EngineRequest:
    """One request for `AsyncEngine.generate`.

    ``resume``: continue a request begun elsewhere, the one way to do so: a migrated request's
    `RequestState` (``export_state`` on another engine) or an answer another engine began
    (`RequestState.handed_over`). Its prompt, params, ids and streamed text then come from the
    state (``prompt_ids`` and ``params`` here are not used).
    """

    request_id: str
    prompt_ids: list[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    priority: int = 0  # higher first
    deadline: float | None = None  # time.monotonic() seconds; past it the request ends "deadline"
    want_prompt_logprobs: bool = False
    # With ``resume``, a KV migration's cache (positions [0, n - 1) of its n ids): used when it
    # matches this engine's cache (`kv_blocks.check_payload`), else the request recomputes it
    kv: KVPayload | None = None
    resume: RequestState | None = None


class _Stream:
    __slots__ = ("error", "event", "has_final", "is_done", "pending")

    def __init__(self) -> None:
        self.pending: EngineOutput | None = None
        self.event = asyncio.Event()
        self.has_final = False  # a finishing item was put: ignore anything after it
        self.is_done = False  # the consumer received the finishing item
        self.error: BaseException | None = None

    def put(self, out: EngineOutput) -> None:
        if self.has_final:
            return
        self.has_final = out.finish_reason is not None
        if self.pending is None:
            self.pending = out
        else:
            self.pending.merge(out)
        self.event.set()


class AsyncEngine:
    """``AsyncEngine(options, runner=None, tokenizer=None)``; ``await start()`` loads the model."""

    def __init__(
        self, options: EngineOptions, *, runner: Runner | None = None, tokenizer: Any = None
    ) -> None:
        self.options = options
        self._runner = runner
        self._tokenizer = tokenizer
        self._core: EngineCore | None = None
        self._cv = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._streams: dict[str, _Stream] = {}
        self._is_stopping = False
        self._error: BaseException | None = None

    # ---- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load the model (off the event loop) and start the step thread."""
        if self._thread is not None:
            return
        self._loop = asyncio.get_running_loop()
        if self._core is None:
            self._core = await asyncio.to_thread(EngineCore, self.options, self._runner, self._tokenizer)
        self._is_stopping = False
        self._thread = threading.Thread(target=self._run, name="isthmus-engine-step", daemon=True)
        self._thread.start()

    async def stop(self) -> None:
        """Stop the step thread; every open stream ends with ``"cancelled"``."""
        thread = self._thread
        if thread is None:
            return
        with self._cv:
            self._is_stopping = True
            self._cv.notify_all()
        await asyncio.to_thread(thread.join)
        self._thread = None
        core = self._core
        with self._cv:
            for rid in list(self._streams):
                if core is not None:
                    core.abort(rid)
                self._end_stream(rid, FINISH_CANCELLED)

    @property
    def is_running(self) -> bool:
        return self._thread is not None and self._error is None

    # ---- properties ----------------------------------------------------------------------

    @property
    def core(self) -> EngineCore:
        if self._core is None:
            raise EngineNotRunning("engine not started")
        return self._core

    @property
    def tokenizer(self) -> Any:
        return self.core.tokenizer

    @property
    def model_name(self) -> str:
        return Path(self.options.model).name

    @property
    def tokenizer_fingerprint(self) -> str:
        tok = self.core.tokenizer
        return str(getattr(tok, "fingerprint", "")) if tok is not None else ""

    @property
    def max_model_len(self) -> int:
        return self.core.scheduler.max_model_len

    # ---- requests ------------------------------------------------------------------------

    async def generate(self, req: EngineRequest) -> AsyncIterator[EngineOutput]:
        """Stream a request's outputs. Refusals (QueueFull, PromptTooLong, InvalidRequest) raise
        on the first ``__anext__``. Closing the iterator or cancelling its task aborts the request.
        """
        if not self.is_running:
            raise EngineNotRunning("engine not running") from self._error
        core = self.core
        stream = _Stream()
        with self._cv:
            if req.request_id in self._streams:
                from isthmus.engine.core.scheduler import InvalidRequest

                raise InvalidRequest(f"request {req.request_id!r} is already streaming")
            core.add(
                req.request_id,
                req.prompt_ids,
                req.params,
                priority=req.priority,
                deadline=req.deadline,
                want_prompt_logprobs=req.want_prompt_logprobs,
                resume=req.resume,
                kv=req.kv,
                now=time.monotonic(),
            )
            self._streams[req.request_id] = stream
            self._cv.notify()
        try:
            while True:
                await stream.event.wait()
                stream.event.clear()
                if stream.error is not None:
                    raise EngineNotRunning("engine step loop failed") from stream.error
                out, stream.pending = stream.pending, None
                if out is None:
                    continue
                if out.finish_reason is not None:
                    stream.is_done = True
                yield out
                if stream.is_done:
                    return
        finally:
            with self._cv:
                if not stream.is_done:
                    core.abort(req.request_id)  # the consumer went away: free its KV now
                if self._streams.get(req.request_id) is stream:
                    del self._streams[req.request_id]

    async def abort(self, request_id: str) -> bool:
        """Finish a request now (blocks freed before this returns); its stream ends "cancelled"."""
        with self._cv:
            found = self.core.abort(request_id)
            self._end_stream(request_id, FINISH_CANCELLED)
        return found

    def load(self) -> EngineLoad:
        with self._cv:
            return self.core.load()

    def export_state(self, request_id: str) -> RequestState:
        """Snapshot of a waiting or running request (raises KeyError when unknown)."""
        with self._cv:
            return self.core.export_state(request_id)

    @property
    def kv_spec(self) -> KVSpec | None:
        """This engine's KV cache layout, or None when its runner cannot export or import KV."""
        return getattr(self.core.runner, "kv_spec", None)

    def export_kv(self, request_id: str, num_tokens: int) -> KVPayload | None:
        """KV of positions ``[0, num_tokens)`` of a request (see `EngineCore.export_kv`)."""
        with self._cv:
            return self.core.export_kv(request_id, num_tokens)

    # ---- step thread ---------------------------------------------------------------------

    def _end_stream(self, request_id: str, reason: str) -> None:
        """Deliver a final item (called with the lock held, on the event loop thread)."""
        stream = self._streams.get(request_id)
        if stream is None or stream.has_final:
            return
        seq_out = EngineOutput(request_id=request_id, finish_reason=reason)
        if stream.pending is not None:
            seq_out.num_prompt_tokens = stream.pending.num_prompt_tokens
            seq_out.num_completion_tokens = stream.pending.num_completion_tokens
        stream.put(seq_out)

    def _deliver(self, outputs: list[EngineOutput]) -> None:
        for out in outputs:
            stream = self._streams.get(out.request_id)
            if stream is not None:
                stream.put(out)

    def _fail_all(self, error: BaseException) -> None:
        for stream in self._streams.values():
            stream.error = error
            stream.event.set()

    def _post(self, fn: Any, arg: Any) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(fn, arg)
        except RuntimeError:  # loop closed between the check and the call
            pass

    def _run(self) -> None:
        core = self.core
        try:
            while True:
                with self._cv:
                    while not core.has_unfinished and not self._is_stopping:
                        self._cv.wait()
                    if self._is_stopping:
                        return
                outputs = core.step(lock=self._cv)
                if outputs:
                    self._post(self._deliver, outputs)
                elif core.last_num_scheduled == 0 and core.has_unfinished:
                    time.sleep(IDLE_POLL_S)  # e.g. only deadline bookkeeping left: do not spin
        except BaseException as e:  # the runner failed: every stream learns of it
            log.exception("engine step loop failed")
            self._error = e
            self._post(self._fail_all, e)
