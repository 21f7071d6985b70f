"""Iteration-level scheduler (pure Python, no torch, ``now`` passed in).

Each :meth:`Scheduler.schedule` builds one step's :class:`SchedulePlan`:

1. Requests whose deadline has passed (waiting or running) finish with reason ``"deadline"``;
   the next :meth:`postprocess` reports them.
2. Running sequences in seniority order (higher priority, then earlier arrival), decodes first,
   then unfinished prefills, each taking ``min(pending, budget)`` tokens of the per-step budget
   ``max_num_batched_tokens``. When the KV pool is short, the youngest running sequence not yet
   scheduled this step is preempted (its blocks freed, back to the waiting queue; it later
   recomputes prompt + generated tokens as one prefill). Never failed.
3. Waiting sequences (highest priority, then oldest first) are admitted while there is budget,
   a free running slot (``max_num_seqs``) and enough free blocks for their whole prefill; the
   queue is strict: a head that does not fit blocks those behind it (no starvation).
   An admitted sequence first adopts the KV blocks of its longest cached prefix (prefix caching,
   see `BlockManager`) and starts its prefill after them, exactly like a later prefill chunk, so
   the budget counts only the tokens to compute. A request that wants prompt logprobs computes
   its whole prompt (the cache holds no logits). Blocks are registered in the cache as they fill.
"""

from __future__ import annotations

import bisect
import dataclasses
import random
import time

from isthmus.engine.core import ahead
from isthmus.engine.core.ahead import AHEAD_TOKEN
from isthmus.engine.core.block_manager import BlockManager
from isthmus.engine.core.kv_blocks import KVImport, KVPayload
from isthmus.engine.core.params import SamplingParams
from isthmus.engine.core.plan import RunOutput, SampledToken, ScheduledSeq, SchedulePlan
from isthmus.engine.core.requests import (  # the errors are imported from here too
    InvalidRequest,
    PromptTooLong,
    QueueFull,
    SchedulerError,
    checked_ids,
)
from isthmus.engine.core.sequence import (
    FINISH_DEADLINE,
    FINISH_LENGTH,
    FINISH_STOP,
    SeqStatus,
    Sequence,
    SeqUpdate,
)

__all__ = ["AHEAD_TOKEN", "InvalidRequest", "PromptTooLong", "QueueFull", "Scheduler", "SchedulerError"]


class Scheduler:
    """Owns the waiting queue, the running batch and the KV block manager."""

    def __init__(
        self,
        *,
        num_kv_blocks: int,
        block_size: int,
        max_model_len: int,
        max_num_seqs: int = 64,
        max_num_batched_tokens: int = 512,
        max_waiting: int = 1024,
        eos_token_ids: set[int] | frozenset[int] = frozenset(),
        vocab_size: int | None = None,
        seed: int = 0,
        enable_prefix_caching: bool = True,
        cache_salt: str = "",
        max_num_resume_tokens: int = 4096,
    ) -> None:
        if max_num_seqs < 1 or max_num_batched_tokens < 1 or max_waiting < 0:
            raise ValueError("max_num_seqs and max_num_batched_tokens must be >= 1, max_waiting >= 0")
        self.block_manager = BlockManager(
            num_kv_blocks, block_size, enable_prefix_caching=enable_prefix_caching, salt=cache_salt
        )
        # One sequence alone must always fit, else preemption could loop forever.
        self.max_model_len = min(max_model_len, num_kv_blocks * block_size)
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_waiting = max_waiting
        self.eos_token_ids = frozenset(eos_token_ids)
        self.vocab_size = vocab_size
        self._rng = random.Random(seed)  # seeds for requests that give none
        self.waiting: list[Sequence] = []  # sorted by Sequence.sort_key
        self.running: list[Sequence] = []  # sorted by Sequence.sort_key
        self._by_seq_id: dict[int, Sequence] = {}
        self._by_request_id: dict[str, Sequence] = {}
        self._next_seq_id = 0
        self._pending: list[SeqUpdate] = []  # out-of-step finishes (deadlines) for postprocess
        self.num_preemptions = 0
        # Planning ahead (`schedule_ahead`): sequences whose in-flight token counts as generated,
        # those it will finish by length (not planned), and the rows waiting for `fill_ahead`.
        self._ahead: frozenset[int] | set[int] = frozenset()
        self._ahead_done: frozenset[int] | set[int] = frozenset()
        self._unfilled: list[ScheduledSeq] = []
        self.max_num_resume_tokens = max_num_resume_tokens  # per step, on top: see _resume_allowance
        self.kv_imports: dict[int, KVPayload] = {}  # seq_id -> the KV it brought, until admitted
        self.num_kv_imports = 0  # sequences admitted with imported KV (no prefill)

    # ---- requests in and out -------------------------------------------------------------

    def add(
        self,
        request_id: str,
        prompt_ids: list[int],
        params: SamplingParams,
        *,
        priority: int = 0,
        deadline: float | None = None,
        now: float = 0.0,
        want_prompt_logprobs: bool = False,
        output_ids: list[int] | None = None,
        kv: KVPayload | None = None,  # KV of all_ids[:-1] (a KV migration): admitted without a prefill
    ) -> Sequence:
        """Queue a request. ``output_ids`` resumes one that generated those tokens elsewhere.

        Raises :class:`QueueFull`, :class:`PromptTooLong` or :class:`InvalidRequest`.
        """
        if request_id in self._by_request_id:
            raise InvalidRequest(f"request {request_id!r} is already in the engine")
        outputs = list(output_ids or [])
        all_ids = checked_ids(prompt_ids, outputs, params, kv, self.vocab_size, self.max_model_len)
        if len(self.waiting) >= self.max_waiting:
            raise QueueFull(f"{len(self.waiting)} requests waiting (max_waiting)")
        if params.seed is None:
            # Drawn now so the request can be exported and resumed bit-identically elsewhere.
            params = dataclasses.replace(params, seed=self._rng.getrandbits(63))
        seq = Sequence(
            seq_id=self._next_seq_id,
            request_id=request_id,
            prompt_ids=list(prompt_ids),
            params=params,
            priority=priority,
            arrival=now,
            deadline=deadline,
            want_prompt_logprobs=want_prompt_logprobs and not outputs,
            all_ids=all_ids,
        )
        self._next_seq_id += 1
        self._by_seq_id[seq.seq_id] = seq
        self._by_request_id[request_id] = seq
        if kv is not None:
            self.kv_imports[seq.seq_id] = kv
        bisect.insort(self.waiting, seq, key=Sequence.sort_key)
        return seq

    def get(self, request_id: str) -> Sequence | None:
        return self._by_request_id.get(request_id)

    def get_seq(self, seq_id: int) -> Sequence | None:
        return self._by_seq_id.get(seq_id)

    def abort(self, request_id: str, reason: str = "cancelled") -> bool:
        """Finish a request now and free its blocks. False when it is unknown or already done."""
        seq = self._by_request_id.get(request_id)
        if seq is None:
            return False
        self._finish(seq, reason)
        return True

    def finish(self, seq_id: int, reason: str) -> bool:
        """Finish a sequence now (e.g. a stop string matched upstream); frees its blocks."""
        seq = self._by_seq_id.get(seq_id)
        if seq is None:
            return False
        self._finish(seq, reason)
        return True

    @property
    def num_running(self) -> int:
        return len(self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def has_unfinished(self) -> bool:
        return bool(self.running or self.waiting or self._pending)

    # ---- one step ------------------------------------------------------------------------

    def schedule(self, now: float | None = None) -> SchedulePlan:
        """Build the next step's plan (may be empty when nothing can run)."""
        now = time.monotonic() if now is None else now
        self._unfilled = []  # a plan made ahead and never filled (its step failed) is abandoned
        self._expire(now)
        plan = SchedulePlan()
        budget = self._schedule_running(plan, now)
        self._admit(plan, budget, now)
        return plan

    def _schedule_running(self, plan: SchedulePlan, now: float) -> int:
        """Running sequences, decodes first then prefill chunks; returns the budget left.

        Runs once per step over every running sequence, so `Sequence`'s properties are inlined.
        """
        bm = self.block_manager
        budget = self.max_num_batched_tokens
        scheduled: set[int] = set()
        decodes: list[Sequence] = []
        prefills: list[Sequence] = []
        for s in self.running:
            (decodes if len(s.all_ids) - s.num_computed == 1 and s.num_computed else prefills).append(s)
        running, ahead, ahead_done = SeqStatus.RUNNING, self._ahead, self._ahead_done
        for seq in decodes + prefills:
            if budget == 0:
                break
            if seq.status is not running or seq.seq_id in ahead_done:  # preempted earlier this step
                continue
            computed = seq.num_computed + (seq.seq_id in ahead)  # its in-flight token counts
            chunk = min(len(seq.all_ids) - seq.num_computed, budget)
            while not bm.can_grow(seq.seq_id, computed + chunk):
                fit = bm.tokens_that_fit(seq.seq_id, computed)
                if fit >= 1 and not seq.is_decoding:
                    chunk = min(chunk, fit)  # a smaller prefill chunk fits: no need to evict
                    continue
                victim = max((s for s in self.running if s.seq_id not in scheduled), key=Sequence.sort_key)
                self._preempt(victim, plan)
                if victim is seq:
                    break
            if seq.status is not running:
                continue
            self._emit(seq, chunk, plan, now)
            scheduled.add(seq.seq_id)
            budget -= chunk
        return budget

    def _admit(self, plan: SchedulePlan, budget: int, now: float) -> None:
        """Admit waiting sequences (in order, strictly) while budget, slots and blocks allow."""
        bm = self.block_manager
        preempted_now = set(plan.preempted_seq_ids)
        budget += self._resume_allowance()
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = self.waiting[0]
            if seq.seq_id in preempted_now:
                break  # it just lost its blocks for lack of room; admitting it again would thrash
            wants_logits = seq.want_prompt_logprobs and not seq.is_prompt_logprob_reported
            kv = self.kv_imports.get(seq.seq_id)  # its KV comes with the plan: no prefix to match
            cached = [] if wants_logits or kv is not None else bm.match_prefix(seq.all_ids)
            if not bm.can_allocate(bm.admission_cost(cached, len(seq.all_ids))):
                break
            self.waiting.pop(0)
            seq.num_computed = seq.num_cached_tokens = bm.adopt(seq.seq_id, cached, len(seq.all_ids))
            if kv is not None:  # every position but the last is written from the payload
                seq.num_computed = kv.num_tokens
            chunk = min(seq.num_pending, budget)
            seq.status = SeqStatus.RUNNING
            bisect.insort(self.running, seq, key=Sequence.sort_key)
            self._emit(seq, chunk, plan, now)
            if kv is not None:
                del self.kv_imports[seq.seq_id]
                self.num_kv_imports += 1
                plan.kv_imports.append(KVImport(seq.seq_id, bm.block_table(seq.seq_id)[:], kv))
            budget -= chunk

    def postprocess(self, plan: SchedulePlan, out: RunOutput, now: float | None = None) -> list[SeqUpdate]:
        """Apply the step's results: advance KV positions, append tokens, finish what is done."""
        now = time.monotonic() if now is None else now
        updates, self._pending = self._pending, []
        by_id, commit, running = self._by_seq_id, self.block_manager.commit, SeqStatus.RUNNING
        prompt_logprobs, sampled = out.prompt_logprobs, out.sampled
        for s in plan.seqs:
            seq = by_id.get(s.seq_id)
            if seq is None or seq.status is not running:
                continue  # aborted or finished while the step ran
            seq.num_computed = s.start_pos + len(s.token_ids)
            commit(seq.seq_id, seq.all_ids, seq.num_computed)
            pl = prompt_logprobs.get(s.seq_id) if prompt_logprobs else None
            if pl is not None:
                seq.prompt_logprob_sum += pl[0]
                seq.prompt_logprob_count += pl[1]
            if not s.do_sample:
                continue
            tok = sampled.get(s.seq_id)
            if tok is None:
                raise RuntimeError(f"runner returned no token for sequence {s.seq_id}")
            updates.append(self._accept(seq, tok, now))
        return updates

    def _accept(self, seq: Sequence, tok: SampledToken, now: float) -> SeqUpdate:
        """Append a sampled token to the sequence; finish it when that stops it."""
        seq.all_ids.append(tok.token_id)
        if seq.first_token_at is None:
            seq.first_token_at = now
        upd = SeqUpdate(seq, [tok.token_id], [tok.logprob], [tok.entropy])
        if tok.top_logprobs is not None:
            upd.top_logprobs.append(tok.top_logprobs)
        if seq.want_prompt_logprobs and not seq.is_prompt_logprob_reported:
            seq.is_prompt_logprob_reported = True
            if seq.prompt_logprob_count:
                upd.prompt_logprob_mean = seq.prompt_logprob_sum / seq.prompt_logprob_count
        reason = self._stop_reason(seq, tok.token_id)
        if reason is not None:
            self._finish(seq, reason)
            upd.finish_reason = reason
        return upd

    def schedule_ahead(self, inflight: SchedulePlan, now: float | None = None) -> SchedulePlan | None:
        """Plan the step after ``inflight`` while it runs, before its tokens are sampled (`ahead`)."""
        return ahead.schedule_ahead(self, inflight, now)

    def fill_ahead(self, plan: SchedulePlan, now: float | None = None) -> None:
        """Complete `schedule_ahead`'s plan after the in-flight step's `postprocess` (`ahead`)."""
        ahead.fill_ahead(self, plan, now)

    # ---- internals -----------------------------------------------------------------------

    def _emit(self, seq: Sequence, chunk: int, plan: SchedulePlan, now: float) -> None:
        ahead = seq.seq_id in self._ahead  # planned ahead: its input is the token still in flight
        start = seq.num_computed + ahead
        end = start + chunk
        table = self.block_manager.grow(seq.seq_id, end)
        if seq.first_scheduled is None:
            seq.first_scheduled = now
        all_ids = seq.all_ids
        num_all, prompt_len = len(all_ids) + ahead, len(seq.prompt_ids)
        want_logprobs = seq.want_prompt_logprobs and not seq.is_prompt_logprob_reported and start < prompt_len
        row = ScheduledSeq(  # positional: this runs once per row per step
            seq.seq_id,  # seq_id
            [AHEAD_TOKEN] if ahead else all_ids[start:end],  # token_ids
            start,  # start_pos
            table[:],  # block_table
            end == num_all,  # do_sample
            seq.params,  # params
            prompt_len,  # prompt_len
            all_ids,  # history_ids
            num_all - prompt_len,  # num_generated
            want_logprobs,  # want_prompt_logprobs
        )
        plan.seqs.append(row)
        if ahead:
            self._unfilled.append(row)

    def _stop_reason(self, seq: Sequence, token_id: int) -> str | None:
        p = seq.params
        if token_id in p.stop_token_ids or (not p.ignore_eos and token_id in self.eos_token_ids):
            return FINISH_STOP
        num_all = len(seq.all_ids)
        if num_all - len(seq.prompt_ids) >= p.max_tokens or num_all >= self.max_model_len:
            return FINISH_LENGTH
        return None

    def _preempt(self, seq: Sequence, plan: SchedulePlan) -> None:
        self.running.remove(seq)
        self.block_manager.free(seq.seq_id)
        seq.num_computed = 0
        seq.status = SeqStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        bisect.insort(self.waiting, seq, key=Sequence.sort_key)
        plan.preempted_seq_ids.append(seq.seq_id)

    def _finish(self, seq: Sequence, reason: str) -> None:
        if seq.status is SeqStatus.RUNNING:
            self.running.remove(seq)
        elif seq.status is SeqStatus.WAITING:
            self.waiting.remove(seq)
        self.block_manager.free(seq.seq_id)
        seq.status = SeqStatus.FINISHED
        seq.finish_reason = reason
        self._by_seq_id.pop(seq.seq_id, None)
        self._by_request_id.pop(seq.request_id, None)
        self.kv_imports.pop(seq.seq_id, None)

    def _resume_allowance(self) -> int:
        """Tokens admitted this step on top of the budget: what waiting sequences that already
        streamed tokens elsewhere (resumed here from another replica) must recompute, up to
        ``max_num_resume_tokens``. Their clients see no token until that prefill ends, and one
        large step costs less than many chunks of ``max_num_batched_tokens`` (each with the
        running decodes in it)."""
        if not self.max_num_resume_tokens:
            return 0
        imports = self.kv_imports  # those bring their KV: no prefill to make room for
        pending = sum(
            len(s.all_ids)
            for s in self.waiting
            if s.num_generated and not s.num_preemptions and s.seq_id not in imports
        )
        return min(pending, self.max_num_resume_tokens)

    def _expire(self, now: float) -> None:
        expired = [s for s in (*self.waiting, *self.running) if s.deadline is not None and now >= s.deadline]
        for seq in expired:
            self._finish(seq, FINISH_DEADLINE)
            self._pending.append(SeqUpdate(seq, finish_reason=FINISH_DEADLINE))
