"""The escalation router: answer at the edge or send to the center (sans-IO, no clocks, no I/O).

The score is the calibrated probability that a prompt needs the center, from a logistic model
trained on the project's labelled routing corpus (`isthmus.edge.routing`, docs/routing.md): hashed
character and word n-grams of the prompt (any script), the structural features of `features.py`,
the requested `max_tokens` and the number of turns. The weights ship as package data
(`edge/routing_data/router.npz`) and are loaded once per process; `[router] model = "path"` points
at an operator's own file (`isthmus router train`), and `model = "heuristic"` selects the old
rule-based weighted sum (`heuristic_score`), kept as the baseline the trained model must beat.

One `threshold` trades quality for cost: a prompt whose score reaches it goes to the center. Left
unset it is the model's default, chosen on the corpus' held-out test split (`isthmus router eval`
prints the trade-off table). Load shifts the threshold: a busy center raises it
(`center_load_weight` times its load in [0, 1]), a filling edge queue lowers it (`edge_load_weight`
times queue depth / `max_edge_queue`). An edge queue at its limit escalates everything it can
(`edge_overloaded`).

After the edge's own prefill, `reconsider` adds the prompt's perplexity under the edge model: a
mean prompt log-prob of -`perplexity_low_nats` adds nothing, -`perplexity_high_nats` or lower adds
the full `weights.perplexity`.
"""

from __future__ import annotations

import functools
import logging
import math
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING, Literal, Protocol

from isthmus.protocol import Route

from .features import PromptFeatures

if TYPE_CHECKING:
    from .routing.model import RouterModel

log = logging.getLogger(__name__)

Tier = Literal["edge", "center"]
Wish = Literal["auto", "edge", "center"]

# Reasons (short snake-case strings carried into Done.route, logs and metrics).
WISH_EDGE = "wish_edge"
WISH_CENTER = "wish_center"
SCORE_BELOW_THRESHOLD = "score_below_threshold"
SCORE_ABOVE_THRESHOLD = "score_above_threshold"
PROMPT_PERPLEXITY = "prompt_perplexity"
EDGE_OVERLOADED = "edge_overloaded"
CENTER_UNAVAILABLE = "center_unavailable"
CONFIDENCE_COLLAPSE = "confidence_collapse"

REASONS = (
    WISH_EDGE,
    WISH_CENTER,
    SCORE_BELOW_THRESHOLD,
    SCORE_ABOVE_THRESHOLD,
    PROMPT_PERPLEXITY,
    EDGE_OVERLOADED,
    CENTER_UNAVAILABLE,
    CONFIDENCE_COLLAPSE,
)


HEURISTIC = "heuristic"  # `RouterConfig.model` value selecting the rule-based baseline
HEURISTIC_THRESHOLD = 0.35  # the baseline's default threshold
NUM_TOP_FEATURES = 6  # features named in an explanation


@dataclass(frozen=True, slots=True)
class FeatureWeights:
    """The heuristic baseline's weights (each: the most that normalised feature can add; they sum
    to 1.0), and `perplexity`, which `reconsider` adds on top of any model's score."""

    length: float = 0.15
    code: float = 0.15
    math: float = 0.20
    steps: float = 0.20
    constraints: float = 0.10
    output_length: float = 0.10
    depth: float = 0.10
    # used by `reconsider` only: alone it crosses any default threshold up to 0.6 (the trained
    # model's is chosen on the held-out split, around 0.5)
    perplexity: float = 0.60

    def __post_init__(self) -> None:
        for f in fields(self):
            name, value = f.name, getattr(self, f.name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")


@dataclass(frozen=True, slots=True)
class RouterConfig:
    """Router settings; `threshold` is the one knob that trades quality for cost."""

    model: str = ""  # weights file; "": the bundled model; "heuristic": the rule-based baseline
    threshold: float | None = None  # score at or above which a prompt is escalated; None: the model's
    weights: FeatureWeights = field(default_factory=FeatureWeights)
    max_edge_queue: int = 64  # edge requests waiting at which the edge counts as overloaded
    edge_load_weight: float = 0.15  # threshold drop when the edge queue is full
    center_load_weight: float = 0.25  # threshold rise when the best center replica is fully loaded
    perplexity_low_nats: float = 2.5  # mean prompt NLL (nats/token) below which it adds nothing
    perplexity_high_nats: float = 6.0  # mean prompt NLL at which it adds the full weight

    def __post_init__(self) -> None:
        if not isinstance(self.model, str):
            raise ValueError(f"model: expected a path, \"\" or \"heuristic\", got {self.model!r}")
        for name in ("threshold", "edge_load_weight", "center_load_weight", "perplexity_low_nats"):
            value = getattr(self, name)
            if value is None and name == "threshold":
                continue
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        high, low = self.perplexity_high_nats, self.perplexity_low_nats
        if not (math.isfinite(high) and high > low):
            raise ValueError("perplexity_high_nats: must be greater than perplexity_low_nats")
        if not isinstance(self.max_edge_queue, int) or self.max_edge_queue < 1:
            raise ValueError(f"max_edge_queue: expected an integer >= 1, got {self.max_edge_queue!r}")


class EdgeLoad(Protocol):
    """What the router reads of the edge engine's load (`isthmus.engine` `EngineLoad`)."""

    @property
    def num_waiting(self) -> int: ...

    @property
    def num_running(self) -> int: ...


@dataclass(frozen=True, slots=True)
class LoadView:
    """Load on both tiers at decision time.

    `center_load` is the least-loaded healthy replica's load in [0, 1] (0 idle, 1 saturated);
    `CenterPool.load_view()` fills the center fields, the caller the edge ones.
    """

    edge_num_waiting: int = 0
    edge_num_running: int = 0
    is_center_healthy: bool = False
    center_load: float = 0.0

    @classmethod
    def from_parts(cls, edge: EdgeLoad | None, center: LoadView | None) -> LoadView:
        """Combine the edge engine's load (`EngineLoad`) with `CenterPool.load_view()`."""
        return cls(
            edge_num_waiting=int(edge.num_waiting) if edge is not None else 0,
            edge_num_running=int(edge.num_running) if edge is not None else 0,
            is_center_healthy=center.is_center_healthy if center is not None else False,
            center_load=center.center_load if center is not None else 0.0,
        )


@dataclass(frozen=True, slots=True)
class Decision:
    """Where a request runs and why. `threshold` is the load-adjusted threshold it was compared to."""

    tier: Tier
    reason: str
    score: float
    is_degraded: bool = False  # the request wanted the center but none was reachable
    threshold: float = 0.0
    # (feature, contribution to the log-odds) largest first; filled when an explanation is asked for
    top_features: tuple[tuple[str, float], ...] = field(default=(), compare=False)

    def route(self) -> Route:
        """The wire `Route` for `Done.route` / `TokenChunk.route`."""
        return Route(tier=self.tier, reason=self.reason, score=self.score, is_degraded=self.is_degraded)


class Router:
    """Decides per request; holds only its config and model, so one instance serves every request.

    Construction loads the model (`RouterModelError`, a ValueError naming the file and the problem,
    when it cannot): the node builds a new `Router` and swaps it in only when that succeeds.
    """

    def __init__(self, config: RouterConfig | None = None, model: RouterModel | None = None) -> None:
        self.config = config or RouterConfig()
        self.model = model if model is not None else load_model(self.config.model)

    @property
    def base_threshold(self) -> float:
        """The configured threshold, or the model's default when none is configured."""
        if self.config.threshold is not None:
            return self.config.threshold
        return self.model.threshold if self.model is not None else HEURISTIC_THRESHOLD

    def score(self, features: PromptFeatures) -> float:
        """The probability in [0, 1] that the prompt needs the center (perplexity not included)."""
        if self.model is None:
            return heuristic_score(features, self.config.weights)
        return _clamp(self.model.probability(features))

    def explain(self, features: PromptFeatures, k: int = NUM_TOP_FEATURES) -> tuple[tuple[str, float], ...]:
        """The `k` features that moved the score most, (name, contribution) with + towards center."""
        if self.model is None:
            w, f = self.config.weights, features.normalised()
            parts = [(name, getattr(w, name) * value) for name, value in f.items()]
            return tuple(sorted(parts, key=lambda p: -abs(p[1]))[:k])
        return tuple((name, round(c, 4)) for name, c in self.model.explain(features, k))

    def effective_threshold(self, load: LoadView) -> float:
        """`threshold` moved up by center load and down by edge queue depth."""
        cfg = self.config
        edge_fill = _clamp(max(0, load.edge_num_waiting) / cfg.max_edge_queue)
        center_load = _clamp(load.center_load) if math.isfinite(load.center_load) else 1.0
        shift = cfg.center_load_weight * center_load - cfg.edge_load_weight * edge_fill
        return max(0.0, self.base_threshold + shift)

    def decide(
        self, features: PromptFeatures, wish: str, load: LoadView, *, explain: bool = False
    ) -> Decision:
        """Before running: the tier for a request with these features, tier wish and load.

        With `explain` (or debug logging on) the decision carries its top features, and the debug
        log line names them.
        """
        decision = self._decide(features, wish, load)
        if explain or log.isEnabledFor(logging.DEBUG):
            decision = replace(decision, top_features=self.explain(features))
            log.debug(
                "route %s (%s): score %.3f, threshold %.3f, top features %s",
                decision.tier,
                decision.reason,
                decision.score,
                decision.threshold,
                ", ".join(f"{name} {c:+.3f}" for name, c in decision.top_features),
            )
        return decision

    def _decide(self, features: PromptFeatures, wish: str, load: LoadView) -> Decision:
        score = self.score(features)
        threshold = self.effective_threshold(load)
        healthy = load.is_center_healthy
        if wish == "edge":
            return Decision("edge", WISH_EDGE, score, threshold=threshold)
        if wish == "center":
            if healthy:
                return Decision("center", WISH_CENTER, score, threshold=threshold)
            return Decision("edge", CENTER_UNAVAILABLE, score, is_degraded=True, threshold=threshold)
        if load.edge_num_waiting >= self.config.max_edge_queue and healthy:
            return Decision("center", EDGE_OVERLOADED, score, threshold=threshold)
        if score >= threshold:
            if healthy:
                return Decision("center", SCORE_ABOVE_THRESHOLD, score, threshold=threshold)
            return Decision("edge", CENTER_UNAVAILABLE, score, is_degraded=True, threshold=threshold)
        return Decision("edge", SCORE_BELOW_THRESHOLD, score, threshold=threshold)

    def perplexity_term(self, prompt_logprob_mean: float) -> float:
        """What a mean prompt log-prob (nats/token, <= 0) adds to the score."""
        cfg = self.config
        nll = -prompt_logprob_mean
        fraction = (nll - cfg.perplexity_low_nats) / (cfg.perplexity_high_nats - cfg.perplexity_low_nats)
        return cfg.weights.perplexity * _clamp(fraction)

    def reconsider(
        self, decision: Decision, prompt_logprob_mean: float | None, load: LoadView | None = None
    ) -> Decision | None:
        """After the edge's prefill: a new center `Decision`, or None to keep answering here.

        Only a request kept at the edge by its score is reconsidered (not one the app pinned to
        the edge, nor one already degraded). Without `load` the decision's own threshold is used
        and the center is assumed still reachable; the caller degrades if it is not.
        """
        if decision.tier != "edge" or decision.reason != SCORE_BELOW_THRESHOLD:
            return None
        if prompt_logprob_mean is None or not math.isfinite(prompt_logprob_mean):
            return None
        threshold = decision.threshold
        if load is not None:
            if not load.is_center_healthy:
                return None
            threshold = self.effective_threshold(load)
        score = _clamp(decision.score + self.perplexity_term(prompt_logprob_mean))
        if score < threshold:
            return None
        return replace(decision, tier="center", reason=PROMPT_PERPLEXITY, score=score, threshold=threshold)

    def handover(self, decision: Decision) -> Decision:
        """The decision after a confidence collapse mid-answer (the caller checked the center)."""
        return replace(decision, tier="center", reason=CONFIDENCE_COLLAPSE, is_degraded=False)


def heuristic_score(features: PromptFeatures, w: FeatureWeights) -> float:
    """The rule-based baseline: the weighted sum of the normalised features, clamped to [0, 1]."""
    f = features.normalised()
    total = (
        w.length * f["length"]
        + w.code * f["code"]
        + w.math * f["math"]
        + w.steps * f["steps"]
        + w.constraints * f["constraints"]
        + w.output_length * f["output_length"]
        + w.depth * f["depth"]
    )
    return _clamp(total)


def load_model(model: str) -> RouterModel | None:
    """The model a `RouterConfig.model` names: None for the heuristic; raises `RouterModelError`."""
    if model == HEURISTIC:
        return None
    if not model:
        return _bundled_model()
    from .routing.model import RouterModel

    return RouterModel.load(model)


@functools.cache
def _bundled_model() -> RouterModel:
    """The shipped weights, read once per process."""
    from .routing.model import DEFAULT_MODEL_PATH, RouterModel

    return RouterModel.load(DEFAULT_MODEL_PATH)


# idle tiers and a healthy center: what `route_prompt` decides against
IDLE = LoadView(is_center_healthy=True)
_DEFAULT_CONFIG = RouterConfig()


def route_prompt(
    text: str,
    *,
    max_tokens: int = 512,
    num_turns: int = 1,
    config: RouterConfig | None = None,
    explain: bool = False,
) -> Decision:
    """The router's decision for one prompt with idle tiers and a healthy center (no engine needed).

    The token count is estimated from the text. Any string is accepted; only a `config` whose model
    file cannot be loaded raises (`RouterModelError`).
    """
    from .routing.model import prompt_features

    router = _router_for(config or _DEFAULT_CONFIG)
    features = prompt_features(text if isinstance(text, str) else "", max_tokens, num_turns)
    return router.decide(features, "auto", IDLE, explain=explain)


@functools.lru_cache(maxsize=8)
def _router_for(config: RouterConfig) -> Router:
    return Router(config)


def _clamp(value: float) -> float:
    if math.isnan(value):
        return 0.0
    return min(1.0, max(0.0, value))
