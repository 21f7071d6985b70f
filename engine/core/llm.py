"""Offline API: generate for a list of prompts in one continuously batched run."""

from __future__ import annotations

from collections import deque
from typing import Any

from isthmus.engine.core.core import EngineCore, Runner
from isthmus.engine.core.options import EngineOptions
from isthmus.engine.core.outputs import RequestOutput, TokenUsage
from isthmus.engine.core.params import SamplingParams

Prompt = str | list[int] | list[dict[str, Any]]


def _is_single_prompt(prompts: Any) -> bool:
    if isinstance(prompts, str):
        return True
    return isinstance(prompts, list) and bool(prompts) and isinstance(prompts[0], int | dict)


class LLM:
    """``LLM(path, dtype="auto", quantization=None, device="cpu", **engine options)``.

    ``runner`` / ``tokenizer`` may be given prebuilt (tests, tensor-parallel runners).
    """

    def __init__(
        self,
        model: str,
        dtype: str = "auto",
        quantization: str | None = None,
        device: str = "cpu",
        *,
        runner: Runner | None = None,
        tokenizer: Any = None,
        **options: Any,
    ) -> None:
        self.options = EngineOptions(
            model=str(model), dtype=dtype, quantization=quantization, device=device, **options
        )
        self.core = EngineCore(self.options, runner=runner, tokenizer=tokenizer)
        self._next_id = 0

    @property
    def tokenizer(self) -> Any:
        return self.core.tokenizer

    def encode(self, prompt: Prompt) -> list[int]:
        """A str is encoded with BOS; chat messages go through the chat template; ids pass as is."""
        if isinstance(prompt, str):
            return self._need_tokenizer().encode(prompt, add_special_tokens=True)
        if isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
            return self._need_tokenizer().encode_chat(prompt)
        if isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            return [t for t in prompt if isinstance(t, int)]
        raise TypeError("a prompt is a str, a list of chat messages (dicts) or a list of token ids")

    def _need_tokenizer(self) -> Any:
        if self.core.tokenizer is None:
            raise ValueError("this model has no tokenizer: pass token ids")
        return self.core.tokenizer

    def generate(
        self, prompts: Prompt | list[Prompt], params: SamplingParams | list[SamplingParams] | None = None
    ) -> list[RequestOutput]:
        """Run every prompt to completion; results come back in the prompts' order."""
        items: list[Prompt] = [prompts] if _is_single_prompt(prompts) else list(prompts)  # type: ignore[list-item, arg-type]
        if params is None:
            params = SamplingParams()
        plist = params if isinstance(params, list) else [params] * len(items)
        if len(plist) != len(items):
            raise ValueError(f"{len(plist)} sampling params for {len(items)} prompts")
        pending: deque[tuple[str, list[int], SamplingParams]] = deque()
        results: dict[str, RequestOutput] = {}
        order: list[str] = []
        for prompt, p in zip(items, plist, strict=True):
            rid = f"llm-{self._next_id}"
            self._next_id += 1
            ids = self.encode(prompt)
            pending.append((rid, ids, p))
            order.append(rid)
            results[rid] = RequestOutput(rid, ids, [], "", None, TokenUsage(len(ids), 0))
        sched = self.core.scheduler
        while pending or self.core.has_unfinished:
            # Feed the queue as it drains, so any number of prompts fits under max_waiting.
            while pending and sched.num_waiting < sched.max_waiting:
                rid, ids, p = pending.popleft()
                self.core.add(rid, ids, p)
            for out in self.core.step():
                res = results[out.request_id]
                res.token_ids.extend(out.new_token_ids)
                res.text += out.text_delta
                res.logprobs.extend(out.logprobs)
                res.entropies.extend(out.entropies)
                res.usage.completion_tokens = out.num_completion_tokens
                if out.finish_reason is not None:
                    res.finish_reason = out.finish_reason
        return [results[rid] for rid in order]
