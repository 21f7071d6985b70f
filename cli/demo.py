"""`isthmus demo`: bring a network up, answer a handful of prompts, print a table, shut down.

The default models are small LLaMAs trained on CPython's documentation (`models/`), so the prompts
are questions about Python whose answers such a model can write in documentation-style English.
The routing is driven by the trained edge model's own signals and the router:

- documentation questions (low prompt perplexity, a confident start) are answered at the edge;
- a code-writing task and a proof are escalated (the router's score, or the edge's perplexity on
  the prompt after prefill: they are far from anything the edge model was trained on);
- one prompt asks for the center outright (`tier="center"`);
- one question from outside the documentation (`HANDOVER_PROMPT`) looks harmless to the router
  and familiar enough to the edge model (prompt perplexity), but the edge starts its answer
  uncertainly: the mean entropy of its first tokens crosses the confidence threshold and the
  center continues the answer. `cli/signals.py` measures the margins this relies on
  (see `isthmus.cli.defaults`), and tests/cli/test_demo_margins.py keeps them.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import TextIO

from .chat import Answer, stream_answer
from .network import LocalNetwork


@dataclass(frozen=True)
class DemoPrompt:
    text: str
    tier: str = "auto"


HANDOVER_PROMPT = "What is the capital of France?"
PROMPTS = (
    DemoPrompt("What does the assert statement do?"),
    DemoPrompt("Write a Python function that implements binary search, then explain its complexity."),
    DemoPrompt("What does the import statement do?"),
    DemoPrompt("Prove that the sum of two even numbers is even, step by step."),
    DemoPrompt("What is a lambda expression?", tier="center"),
    DemoPrompt(HANDOVER_PROMPT),
)
MAX_TOKENS = 48  # tokens per answer: a sentence or three, quick on 2 cores
# Greedy small models loop on a phrase; presence and frequency penalties (generated tokens only,
# unlike the repetition penalty, which also pushes the answer away from the prompt's words) break
# the loops.
PRESENCE_PENALTY = 0.6
FREQUENCY_PENALTY = 0.5


async def run_prompts(net: LocalNetwork, out: TextIO) -> list[tuple[DemoPrompt, Answer]]:
    """Each demo prompt, greedy, streamed to `out`; the answers in order."""
    from isthmus.client import connect

    results: list[tuple[DemoPrompt, Answer]] = []
    async with connect(net.node.quic_address, ca=str(net.ca_path)) as client:
        for prompt in PROMPTS:
            wish = f"  (tier={prompt.tier})" if prompt.tier != "auto" else ""
            out.write(f"\n> {prompt.text}{wish}\n")
            answer = await stream_answer(
                client,
                [{"role": "user", "content": prompt.text}],  # the chat template the models learnt
                out,
                tier=prompt.tier,
                max_tokens=MAX_TOKENS,
                temperature=0.0,
                presence_penalty=PRESENCE_PENALTY,
                frequency_penalty=FREQUENCY_PENALTY,
            )
            route = answer.completion.route
            out.write(
                f"\n  [answered by {route.tier}: {route.reason}"
                f"{', handed over mid-answer' if answer.handed_over else ''}]\n"
            )
            results.append((prompt, answer))
    return results


def table(results: list[tuple[DemoPrompt, Answer]]) -> str:
    """The summary table: prompt, tier, route reason, first-token latency, tokens/s, hand-over."""
    head = ("prompt", "tier", "route reason", "first token ms", "tokens/s", "handed over")
    rows = [head]
    for prompt, a in results:
        c = a.completion
        text = prompt.text if len(prompt.text) <= 40 else prompt.text[:37] + "..."
        tier = "edge->center" if a.handed_over else c.route.tier
        rows.append(
            (
                text,
                tier,
                c.route.reason,
                f"{c.timings.first_token_ms:.0f}",
                f"{a.tokens_per_s:.1f}",
                "yes" if a.handed_over else "no",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


async def run_demo(net: LocalNetwork, out: TextIO = sys.stdout) -> int:
    """Up, prompts, table, down; 0 when the network answered every prompt."""
    out.write(
        "isthmus demo: the default models are tiny LLaMAs (edge ~1.3M, center ~5.5M parameters) trained\n"
        "on Python's documentation: they answer in documentation-style English, not always correctly.\n"
        "The demo shows the network (routing, escalation, mid-answer hand-over, streaming).\n"
        "Real models: isthmus demo --edge-model /models/deepseek-r1-distill-qwen-1.5b "
        "--center-model /models/deepseek-llm-7b-chat\n\n"
    )
    out.flush()
    try:
        await net.start()
        results = await run_prompts(net, out)
    finally:
        await net.stop()
    out.write("\n" + table(results) + "\n")
    num_handed = sum(a.handed_over for _, a in results)
    num_edge = sum(1 for _, a in results if not a.handed_over and a.completion.route.tier == "edge")
    num_center = sum(1 for _, a in results if not a.handed_over and a.completion.route.tier == "center")
    out.write(
        f"\n{len(results)} prompts: {num_edge} answered at the edge, {num_center} escalated to the "
        f"center, {num_handed} handed over mid-answer.\n"
    )
    out.flush()
    return 0
