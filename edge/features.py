"""Cheap features of a prompt that predict whether the small edge model will answer it well (sans-IO).

Everything here is a handful of regular expressions over the prompt text plus counts the edge
already has (prompt tokens, requested output length, conversation turns). These English-flavoured
signals are only a few of the trained router's inputs (`isthmus.edge.routing.model`): it also hashes
the text's character and word n-grams, which `PromptFeatures.text` carries to it. Each feature is
normalised into [0, 1] so the router's weighted sum stays interpretable: a weight is "how much of
the score this signal can contribute at most".
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Only the head and the tail of a long prompt are scanned (an instruction starts or ends a prompt;
# the middle of a long one is mostly the material it is about): a dozen regexes over a 1 MiB prompt
# would cost more than the decision is worth. The length features use the whole prompt's size.
MAX_HEAD_CHARS = 3072  # chars
MAX_TAIL_CHARS = 1024  # chars
MAX_SCANNED_CHARS = MAX_HEAD_CHARS + MAX_TAIL_CHARS  # chars

# Saturation points: at or above these the normalised feature is 1.0.
LENGTH_SATURATION_TOKENS = 2048  # prompt tokens
OUTPUT_SATURATION_TOKENS = 2048  # requested new tokens
DEPTH_SATURATION_TURNS = 8  # user/assistant turns
CODE_SATURATION_HITS = 3  # code signals
MATH_SATURATION_HITS = 3  # math signals
STEPS_SATURATION = 4  # explicit steps / sequencing markers
CONSTRAINTS_SATURATION = 4  # explicit constraints

# The patterns run on the lower-cased text without re.IGNORECASE, and each is one alternation
# behind a cheap anchor (a line start, a word boundary, a literal): Python's `re` tries every
# alternative at every position otherwise, which cost ~1 ms per KiB of prompt.
_CODE_LINES = re.compile(
    r"^[ \t]*(?:def|class|import|from\s+\S+\s+import|#include|fn|func|public\s+static|package)\b"
    r"|[;{}][ \t]*$",
    re.MULTILINE,
)
_CODE_TOKENS = re.compile(r"```|=>|::|\bconsole\.log\b|\bprintf?\(")
_CODE_WORDS = re.compile(
    r"\b(?:python|javascript|typescript|rust|golang|java|c\+\+|sql|regex|bash|kotlin|haskell|"
    r"function|compile[sd]?|compiler|debug|bug|stack\s*trace|exception|refactor|algorithm|"
    r"implement(?:ation)?|api|recursion|recursive|big-?o|complexity|unit\s+tests?)\b"
)
_MATH_WORDS = re.compile(
    r"\b(?:prove|proof|theorem|lemma|integral|derivative|differentiate|integrate|equation|"
    r"inequality|polynomial|matrix|eigen\w*|probability|expected\s+value|modulo|prime|factori[sz]e|"
    r"combinatori\w*|solve\s+for|compute|calculate|how\s+many)\b"
)
_MATH_SYMBOLS = re.compile(
    r"\\(?:frac|int|sum|prod|sqrt|lim|partial|cdot|binom|mathbb)\b|\$[^$\n]{1,200}\$"
    r"|\d+\s*[-+*/^=<>]\s*\d+|[∫∑∏√≤≥≠∞]"
)
_STEP_LINES = re.compile(r"^[ \t]*(?:\d+[.)]|[-*•])[ \t]+\S", re.MULTILINE)
_STEP_WORDS = re.compile(
    r"\b(?:step[\s-]by[\s-]step|first(?:ly)?|second(?:ly)?|third(?:ly)?|then|next|finally|"
    r"afterwards|after\s+that|subsequently|lastly|explain\s+(?:why|how)|reason(?:ing)?)\b"
)
_CONSTRAINTS = re.compile(
    r"\b(?:must|must\s+not|should\s+not|do\s+not|don't|never|exactly|at\s+(?:least|most)|"
    r"no\s+more\s+than|no\s+fewer\s+than|without|only|unless|except|ensure|make\s+sure|"
    r"required?|format(?:ted)?\s+as|in\s+json|as\s+json|in\s+\d+\s+(?:words|sentences|lines|bullets?)|"
    r"under\s+\d+\s+(?:words|characters))\b"
)


@dataclass(frozen=True, slots=True)
class PromptFeatures:
    """Features of one prompt. Raw counts first, then each normalised into [0, 1]."""

    num_prompt_tokens: int
    max_tokens: int  # requested new tokens
    num_turns: int  # chat turns (1 for a plain prompt)
    num_code_hits: int
    num_math_hits: int
    num_step_markers: int
    num_constraints: int
    # the scanned head and tail of the prompt: the trained router hashes its n-grams
    # (`isthmus.edge.routing`); `num_chars` is the whole prompt's length
    text: str = field(default="", repr=False, compare=False)
    num_chars: int = 0

    @property
    def length(self) -> float:
        return _ratio(self.num_prompt_tokens, LENGTH_SATURATION_TOKENS)

    @property
    def output_length(self) -> float:
        return _ratio(self.max_tokens, OUTPUT_SATURATION_TOKENS)

    @property
    def depth(self) -> float:
        # a single turn is no depth at all
        return _ratio(max(0, self.num_turns - 1), DEPTH_SATURATION_TURNS - 1)

    @property
    def code(self) -> float:
        return _ratio(self.num_code_hits, CODE_SATURATION_HITS)

    @property
    def math(self) -> float:
        return _ratio(self.num_math_hits, MATH_SATURATION_HITS)

    @property
    def steps(self) -> float:
        return _ratio(self.num_step_markers, STEPS_SATURATION)

    @property
    def constraints(self) -> float:
        return _ratio(self.num_constraints, CONSTRAINTS_SATURATION)

    def normalised(self) -> dict[str, float]:
        """Every normalised feature by name (the names of `FeatureWeights`' fields)."""
        return {
            "length": self.length,
            "code": self.code,
            "math": self.math,
            "steps": self.steps,
            "constraints": self.constraints,
            "output_length": self.output_length,
            "depth": self.depth,
        }


def extract_features(
    prompt_text: str, num_prompt_tokens: int, max_tokens: int, num_turns: int
) -> PromptFeatures:
    """Features of a prompt: its text (a chat's user-visible text joined), token counts and turns.

    Negative counts are clamped to 0 (`num_turns` to 1): bad input must never crash a decision.
    """
    text = scanned_text(prompt_text) if isinstance(prompt_text, str) else ""
    low = text.lower()
    num_code = len(_CODE_LINES.findall(text)) + len(_CODE_TOKENS.findall(text))
    # a fenced block or a line of syntax is decisive on its own; loose words count one each
    num_code = num_code * CODE_SATURATION_HITS + len(_CODE_WORDS.findall(low))
    return PromptFeatures(
        num_prompt_tokens=max(0, int(num_prompt_tokens)),
        max_tokens=max(0, int(max_tokens)),
        num_turns=max(1, int(num_turns)),
        num_code_hits=num_code,
        num_math_hits=len(_MATH_WORDS.findall(low)) + len(_MATH_SYMBOLS.findall(low)),
        num_step_markers=len(_STEP_LINES.findall(text)) + len(_STEP_WORDS.findall(low)),
        num_constraints=len(_CONSTRAINTS.findall(low)),
        text=text,
        num_chars=len(prompt_text) if isinstance(prompt_text, str) else 0,
    )


def scanned_text(text: str) -> str:
    """The part of a prompt the features read: all of it, or its head and tail when long."""
    if len(text) <= MAX_SCANNED_CHARS:
        return text
    return text[:MAX_HEAD_CHARS] + "\n" + text[len(text) - MAX_TAIL_CHARS :]


def _ratio(value: int, saturation: int) -> float:
    if saturation <= 0:
        return 1.0 if value > 0 else 0.0
    return min(1.0, max(0.0, value / saturation))
