"""Turns the scheduler's per-step updates into stream items: text deltas and stop strings.

This is the layer that owns the tokenizer. Stop token ids, EOS and length limits are handled by
the scheduler; stop *strings* are matched here (over the detokenized text, held back until they
can no longer start a stop string) and the request is then finished via ``scheduler.finish``.
The emitted text excludes the stop string; the token ids include the token that completed it.
"""

from __future__ import annotations

from typing import Any

from isthmus.engine.core.outputs import EngineOutput
from isthmus.engine.core.scheduler import Scheduler
from isthmus.engine.core.sequence import FINISH_STOP, Sequence, SeqUpdate
from isthmus.engine.core.state import RequestState


class _Track:
    __slots__ = ("detok", "held", "is_first", "matcher", "num_answer_prompt_ids", "text")

    def __init__(self, detok: Any, matcher: Any, text: str, held: str, num_answer_prompt_ids: int) -> None:
        self.detok = detok
        self.matcher = matcher
        self.text = text
        self.held = held  # replayed text the client has not received yet: goes out first
        self.is_first = True
        self.num_answer_prompt_ids = num_answer_prompt_ids  # see `RequestState`


class OutputProcessor:
    """Per-request detokenizer + stop-string matcher; ``tokenizer=None`` emits no text."""

    def __init__(self, tokenizer: Any, scheduler: Scheduler) -> None:
        self.tokenizer = tokenizer
        self.scheduler = scheduler
        self._tracks: dict[str, _Track] = {}
        # A model vocab may be larger than its tokenizer's (padding rows): such ids have no text.
        self._tok_vocab: int | None = getattr(tokenizer, "vocab_size", None)

    def _known(self, ids: list[int]) -> list[int]:
        v = self._tok_vocab
        return ids if v is None else [t for t in ids if 0 <= t < v]

    def add(self, seq: Sequence, resume: RequestState | None = None) -> None:
        """Start tracking a request; ``resume``: the state it continues (see `RequestState`).

        The state's streamed ids (an answer another engine began: the end of the prompt after a
        hand-over, the output after a migration), of which the client already received its
        ``text``, are replayed through the detokenizer so its state is the one the other engine
        had: a character half-done there is completed here, and text it held back (a possible
        start of a stop string) is emitted first and matched across the join.
        """
        text = resume.text if resume is not None else ""
        num_answer = 0 if resume is None else max(0, min(resume.num_answer_prompt_ids, seq.prompt_len))
        detok = matcher = None
        held = ""
        if self.tokenizer is not None:
            from isthmus.tokenizer import IncrementalDetokenizer, StopStringMatcher

            ids = seq.all_ids
            split = seq.prompt_len - num_answer if resume is not None else len(ids)
            # Context: the prompt proper, then the streamed ids replayed as if generated here.
            detok = IncrementalDetokenizer(self.tokenizer, prefix_ids=self._known(ids[:split]))
            replayed = "".join(detok.push(t) for t in self._known(ids[split:]))
            if replayed.startswith(text):
                held = replayed[len(text) :]
            if seq.params.stop:
                matcher = StopStringMatcher(seq.params.stop)
        self._tracks[seq.request_id] = _Track(detok, matcher, text, held, num_answer)

    def remove(self, request_id: str) -> None:
        self._tracks.pop(request_id, None)

    def streamed(self, request_id: str) -> tuple[str, int]:
        """(text the client received, how many prompt ids are answer text): for `export_state`."""
        tr = self._tracks.get(request_id)
        return (tr.text, tr.num_answer_prompt_ids) if tr is not None else ("", 0)

    def process(self, updates: list[SeqUpdate]) -> list[EngineOutput]:
        outputs = []
        for upd in updates:
            seq = upd.seq
            tr = self._tracks.get(seq.request_id)
            if tr is None:
                continue  # aborted meanwhile
            finish = upd.finish_reason
            delta = ""
            if tr.held:
                delta, tr.held = tr.held, ""
            if tr.detok is not None:
                ids = upd.new_token_ids
                if finish == FINISH_STOP and ids:
                    ids = ids[:-1]  # the EOS / stop token itself is not text
                push = tr.detok.push  # a loop, not a join over a generator: mostly one id per step
                for t in self._known(ids):
                    delta += push(t)
                if finish is not None:
                    delta += tr.detok.flush()
            if tr.matcher is not None:
                delta, stopped = tr.matcher.push(delta)
                if stopped:
                    if finish is None:
                        self.scheduler.finish(seq.seq_id, FINISH_STOP)
                    finish = FINISH_STOP
                elif finish is not None:
                    delta += tr.matcher.flush()
            tr.text += delta
            out = EngineOutput(
                request_id=seq.request_id,
                new_token_ids=list(upd.new_token_ids),
                text_delta=delta,
                logprobs=list(upd.logprobs),
                entropies=list(upd.entropies),
                top_logprobs=list(upd.top_logprobs) if upd.top_logprobs else None,
                finish_reason=finish,
                num_prompt_tokens=seq.prompt_len,
                num_completion_tokens=seq.num_generated,
            )
            if tr.is_first:
                tr.is_first = False
                out.prompt_logprob_mean = upd.prompt_logprob_mean
                if seq.first_scheduled is not None:
                    out.queue_s = max(0.0, seq.first_scheduled - seq.arrival)
                if seq.first_token_at is not None:
                    out.first_token_s = max(0.0, seq.first_token_at - seq.arrival)
            if finish is not None:
                del self._tracks[seq.request_id]
            outputs.append(out)
        return outputs
