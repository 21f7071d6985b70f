"""What the edge's routing sees of a prompt under a model: prompt perplexity and answer entropies.

The edge reconsiders a request after prefill from the mean NLL of its chat-templated prompt, and
hands an answer to the center when the mean entropy of a window of its first tokens crosses the
confidence threshold. This module measures both signals the way the edge computes them (the
engine's own `prompt_logprob_mean` and per-token entropies, greedy), without a network, so the
routing knobs in `isthmus.cli.defaults` can be chosen from figures and tested:

    .venv/bin/python -m isthmus.cli.signals            # the demo's prompts, edge default, nf4
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Signals:
    """One prompt's routing signals under one model."""

    prompt: str
    prompt_nll: float  # nats/token: minus the engine's prompt_logprob_mean
    entropies: tuple[float, ...]  # nats, one per generated token
    text: str

    def window_mean(self, window: int, max_checked: int) -> float:
        """The highest mean entropy over `window` consecutive tokens among the first `max_checked`:
        what decides whether the confidence monitor fires."""
        ents = self.entropies[:max_checked]
        if len(ents) < window:
            return 0.0
        return max(sum(ents[i : i + window]) / window for i in range(len(ents) - window + 1))


def measure(
    model: Path,
    prompts: list[str],
    *,
    quantization: str | None = "nf4",
    max_tokens: int = 16,
    presence_penalty: float = 0.0,
    frequency_penalty: float = 0.0,
) -> list[Signals]:
    """Greedy answers to each prompt (as one user chat message) and their signals."""
    from isthmus.engine.core.llm import LLM
    from isthmus.engine.core.params import SamplingParams

    llm = LLM(str(model), quantization=quantization)
    params = SamplingParams(
        max_tokens=max_tokens,
        temperature=0.0,
        presence_penalty=presence_penalty,
        frequency_penalty=frequency_penalty,
    )
    out: list[Signals] = []
    for i, prompt in enumerate(prompts):
        ids = llm.encode([{"role": "user", "content": prompt}])
        llm.core.add(f"signals-{i}", ids, params, want_prompt_logprobs=True)
        nll: float | None = None
        ents: list[float] = []
        text = ""
        while llm.core.has_unfinished:
            for o in llm.core.step():
                if o.prompt_logprob_mean is not None:
                    nll = -o.prompt_logprob_mean
                ents.extend(o.entropies)
                text += o.text_delta
        if nll is None:
            raise RuntimeError("the engine reported no prompt log-probability")
        out.append(Signals(prompt, nll, tuple(ents), text))
    return out


def main(argv: list[str] | None = None) -> int:
    from isthmus.cli.defaults import CONFIDENCE
    from isthmus.cli.demo import FREQUENCY_PENALTY, PRESENCE_PENALTY, PROMPTS

    from . import default_model_path

    p = argparse.ArgumentParser(description="routing signals of the demo's prompts under a model")
    p.add_argument("--model", type=Path, default=default_model_path("edge"))
    p.add_argument("--quantization", default="nf4", help="nf4 (as the demo's edge), int8 or none")
    p.add_argument("--max-tokens", type=int, default=CONFIDENCE[2])
    a = p.parse_args(argv)
    window, _, max_checked = CONFIDENCE
    quant = None if a.quantization == "none" else a.quantization
    prompts = [d.text for d in PROMPTS]
    found = measure(
        a.model, prompts, quantization=quant, max_tokens=a.max_tokens, presence_penalty=PRESENCE_PENALTY,
        frequency_penalty=FREQUENCY_PENALTY,
    )
    for s in found:
        entropy = s.window_mean(window, max_checked)
        print(f"{s.prompt_nll:6.2f} nll  {entropy:5.2f} entropy  {s.prompt[:50]!r}")
        print(f"        {s.text!r}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
