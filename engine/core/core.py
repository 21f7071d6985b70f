"""The engine core shared by the offline `LLM` and the `AsyncEngine`: scheduler + runner + output
processor, and the three-line step. Not thread-safe by itself; `step(lock=...)` releases the lock
while the runner computes so other threads can add or abort requests meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import deque
from pathlib import Path
from typing import Any, Protocol

from isthmus.engine.core.kv_blocks import KVPayload, usable_payload
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.outputs import EngineLoad, EngineOutput
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.plan import RunOutput, SchedulePlan
from isthmus.engine.core.scheduler import Scheduler
from isthmus.engine.core.sequence import Sequence, SeqUpdate
from isthmus.engine.core.state import RequestState
from isthmus.engine.core.step_handle import StepHandle

TOKENS_PER_S_WINDOW = 5.0  # seconds


class Runner(Protocol):
    """What the engine needs of a model runner (ModelRunner, a tensor-parallel one, a fake)."""

    num_kv_blocks: int
    block_size: int
    max_model_len: int

    def run(self, plan: SchedulePlan) -> RunOutput: ...


def _config_eos_ids(model_dir: str) -> set[int]:
    """EOS ids named by config.json / generation_config.json (an int or a list)."""
    ids: set[int] = set()
    for name in ("config.json", "generation_config.json"):
        path = Path(model_dir) / name
        if not path.is_file():
            continue
        with contextlib.suppress(OSError, ValueError):
            value = json.loads(path.read_text()).get("eos_token_id")
            if isinstance(value, int):
                ids.add(value)
            elif isinstance(value, list):
                ids.update(v for v in value if isinstance(v, int))
    return ids


def _cache_salt(options: EngineOptions, runner: Any) -> str:
    """What besides the token ids changes the KV: the model, its dtype and quantization, the TP layout."""
    world = getattr(getattr(runner, "group", None), "world_size", 1)
    return f"{options.model}|{options.dtype}|{options.quantization}|tp={world}"


def _warm_detokenizer(tokenizer: Any) -> None:
    """Build the tokenizer's byte table now (~0.2 s for a 100k vocabulary), not in the first answer."""
    from isthmus.tokenizer import Tokenizer
    from isthmus.tokenizer.byte_level import byte_table

    if isinstance(tokenizer, Tokenizer):
        byte_table(tokenizer)


class EngineCore:
    def __init__(self, options: EngineOptions, runner: Runner | None = None, tokenizer: Any = None) -> None:
        self.options = options
        if runner is None:
            from isthmus.engine.runner.model_runner import ModelRunner

            runner = ModelRunner(options)
        if tokenizer is None and (Path(options.model) / "tokenizer.json").is_file():
            from isthmus.tokenizer import Tokenizer

            tokenizer = Tokenizer.from_dir(options.model)
        _warm_detokenizer(tokenizer)
        self.runner = runner
        self.tokenizer = tokenizer
        eos = _config_eos_ids(options.model)
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            eos.add(tokenizer.eos_token_id)
        max_len = runner.max_model_len
        if options.max_model_len is not None:
            max_len = min(max_len, options.max_model_len)
        self.scheduler = Scheduler(
            num_kv_blocks=runner.num_kv_blocks,
            block_size=runner.block_size,
            max_model_len=max_len,
            max_num_seqs=options.max_num_seqs,
            max_num_batched_tokens=options.max_num_batched_tokens,
            max_waiting=options.max_waiting,
            eos_token_ids=eos,
            vocab_size=getattr(runner, "vocab_size", None),
            seed=options.seed,
            enable_prefix_caching=options.enable_prefix_caching,
            cache_salt=_cache_salt(options, runner),
        )
        from isthmus.engine.core.output_processor import OutputProcessor

        self.processor = OutputProcessor(tokenizer, self.scheduler)
        self.last_num_scheduled = 0  # tokens in the latest step's plan
        self._generated: deque[tuple[float, int]] = deque()  # (time, tokens generated that step)
        # Updates of an overlapped step (see `step`), turned into outputs during the next one.
        self._deferred: list[SeqUpdate] = []
        self._ready: list[EngineOutput] = []  # outputs drained early (export_state), sent next
        # Plan each step while the previous one runs on the device (see `step`); off, the engine
        # still overlaps output processing (benchmarks compare the two).
        self.plan_ahead = True
        # A step launched at the end of the previous `step` (planned ahead), still on the device.
        self._inflight: tuple[SchedulePlan, StepHandle] | None = None

    def add(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        priority: int = 0,
        deadline: float | None = None,
        want_prompt_logprobs: bool = False,
        resume: RequestState | None = None,
        kv: KVPayload | None = None,
        now: float | None = None,
    ) -> Sequence:
        """Queue a request, or continue one begun elsewhere: with ``resume`` (a migrated request's
        `export_state`, or `RequestState.handed_over` for an answer another engine began) its
        prompt, params, generated ids and streamed text come from the state, not the arguments.
        """
        now = time.monotonic() if now is None else now
        output_ids = None
        if resume is not None:
            prompt_ids, params, output_ids = resume.prompt_ids, resume.params, resume.output_ids
        if kv is not None:  # a migration's KV cache (all positions but the last): dropped if it does not fit
            kv = usable_payload(getattr(self.runner, "kv_spec", None), kv,
                                len(prompt_ids) + len(output_ids or ()) - 1, request_id)
        seq = self.scheduler.add(
            request_id,
            prompt_ids,
            params,
            priority=priority,
            deadline=deadline,
            now=now,
            want_prompt_logprobs=want_prompt_logprobs,
            output_ids=output_ids,
            kv=kv,
        )
        self.processor.add(seq, resume)
        return seq

    def abort(self, request_id: str) -> bool:
        self.processor.remove(request_id)
        return self.scheduler.abort(request_id)

    @property
    def has_unfinished(self) -> bool:
        return self.scheduler.has_unfinished or bool(self._deferred or self._ready or self._inflight)

    def step(self, lock: Any = None) -> list[EngineOutput]:
        """One iteration: schedule, run, postprocess. ``lock`` is held except while running.

        Host work off the critical path: when the runner's `launch` returns with the device still
        busy (a decode step replayed from a CUDA graph), the previous such step's output processing
        (detokenization, stop strings) and the planning of the next step (`Scheduler.schedule_ahead`)
        run meanwhile; once this step's tokens are in, only `postprocess` and filling them into
        the next plan come before the next launch, at the end of this call. This step's outputs
        are deferred to the next step, so they come one step later. A stop string found then
        finishes the request before its next token is accepted (that token, already computed,
        is dropped).
        """
        guard = lock if lock is not None else contextlib.nullcontext()
        if self._inflight is not None:
            (plan, handle), self._inflight = self._inflight, None
        else:
            with guard:
                plan = self.scheduler.schedule(time.monotonic())
                self.last_num_scheduled = plan.num_tokens
            handle = self._launch(plan)
        overlapped = handle.overlapped
        early: list[EngineOutput] = []
        ahead: SchedulePlan | None = None
        if overlapped:
            with guard:  # drained first: a stop string found there keeps its request out of `ahead`
                early = self._drain()
                if self.plan_ahead:
                    ahead = self.scheduler.schedule_ahead(plan, time.monotonic())
        out = handle.result()
        with guard:
            now = time.monotonic()
            if not overlapped:  # before postprocess: a stop string found there drops this step's token
                early = self._drain()
            updates = self.scheduler.postprocess(plan, out, now)
            if ahead is not None:
                self.scheduler.fill_ahead(ahead, now)
                self.last_num_scheduled = ahead.num_tokens
            if overlapped:
                self._deferred = updates
                outputs = early
            else:
                outputs = early + self.processor.process(updates)
            num_new = sum(len(u.new_token_ids) for u in updates)
            if num_new:
                self._generated.append((now, num_new))
        if ahead is not None and not ahead.is_empty:
            self._inflight = (ahead, self._launch(ahead))
        return outputs

    def _launch(self, plan: SchedulePlan) -> StepHandle:
        """Start the plan on the runner (`launch` when it has one, else `run` when waited for)."""
        if plan.is_empty:
            return StepHandle(RunOutput, overlapped=False)
        launch = getattr(self.runner, "launch", None)
        if launch is not None:
            handle: StepHandle = launch(plan)
            return handle
        return StepHandle(lambda: self.runner.run(plan), overlapped=False)

    def _drain(self) -> list[EngineOutput]:
        """Outputs drained early plus those of the deferred updates (call under the lock)."""
        ready, self._ready = self._ready, []
        deferred, self._deferred = self._deferred, []
        return ready + (self.processor.process(deferred) if deferred else [])

    def export_state(self, request_id: str) -> RequestState:
        self._ready = self._drain()  # the text must include every token of output_ids
        seq = self.scheduler.get(request_id)
        if seq is None:
            raise KeyError(f"no running or waiting request {request_id!r}")
        text, num_answer_prompt_ids = self.processor.streamed(request_id)
        return RequestState(
            request_id=request_id,
            prompt_ids=list(seq.prompt_ids),
            output_ids=seq.output_ids,
            params=seq.params,
            text=text,
            priority=seq.priority,
            num_answer_prompt_ids=num_answer_prompt_ids,
        )

    def export_kv(self, request_id: str, num_tokens: int) -> KVPayload | None:
        """The KV of positions ``[0, num_tokens)`` of a waiting or running request; None when the
        runner cannot export KV or the request does not hold it now (preempted, still prefilling).

        Safe while a step runs: that step writes only positions at or past ``num_computed``.
        """
        seq = self.scheduler.get(request_id)
        spec, export = getattr(self.runner, "kv_spec", None), getattr(self.runner, "export_kv", None)
        if seq is None or spec is None or export is None or not 0 < num_tokens <= seq.num_computed:
            return None
        table = self.scheduler.block_manager.block_table(seq.seq_id)
        return KVPayload(spec, num_tokens, export(table, num_tokens))

    def load(self, now: float | None = None) -> EngineLoad:
        now = time.monotonic() if now is None else now
        while self._generated and self._generated[0][0] < now - TOKENS_PER_S_WINDOW:
            self._generated.popleft()
        bm = self.scheduler.block_manager
        return EngineLoad(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            num_free_kv_blocks=bm.num_free_blocks,
            num_total_kv_blocks=bm.num_total_blocks,
            tokens_per_s=sum(n for _, n in self._generated) / TOKENS_PER_S_WINDOW,
            num_prefix_queried_tokens=bm.stats.num_queried_tokens,
            num_prefix_hit_tokens=bm.stats.num_hit_tokens,
            num_cached_kv_blocks=bm.num_cached_blocks,
            num_prefix_evictions=bm.stats.num_evictions,
        )
