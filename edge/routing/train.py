"""Training the router: corpus -> cross-validated regularisation -> fit -> calibration -> threshold.

    isthmus router train [--data my.jsonl ...] [--base] [--out router.npz]

drives `train` here. Steps, each on the train split only except the last:

1. featurise every train prompt (`model.featurise`);
2. for each L2 strength in the grid, 5-fold cross-validation (stratified by label); keep the
   strength with the best mean fold agreement, and report its mean and spread;
3. fit Platt calibration on that strength's out-of-fold margins, so the shipped score is an
   honest probability rather than the training fit's over-confident one;
4. fit the final model on the whole train split;
5. pick the default threshold on the test split (`evaluate.choose_threshold`: best agreement, or a
   target agreement / edge share), and record the test figures in the file's `info`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .corpus import Example
from .evaluate import choose_threshold, report
from .fit import Csr, fit_logistic, fit_platt, kfold_indices
from .hashing import HashingConfig
from .model import DENSE_FEATURES, RouterModel, featurise, prompt_features

L2_GRID = (3e-6, 1e-5, 3e-5, 1e-4)  # chosen by 5-fold CV on the train split


@dataclass(frozen=True)
class TrainOptions:
    hashing: HashingConfig = field(default_factory=HashingConfig)
    l2_grid: tuple[float, ...] = L2_GRID
    num_folds: int = 5
    seed: int = 0
    target_agreement: float | None = None
    target_edge_share: float | None = None


@dataclass(frozen=True)
class CvResult:
    l2: float
    fold_agreements: list[float]
    oof_margins: np.ndarray

    @property
    def mean(self) -> float:
        return float(np.mean(self.fold_agreements))

    @property
    def std(self) -> float:
        return float(np.std(self.fold_agreements))


def design_matrix(examples: Sequence[Example], hashing: HashingConfig) -> Csr:
    """The CSR matrix of the examples' model inputs."""
    rows = [
        featurise(prompt_features(ex.prompt, ex.max_tokens, ex.num_turns), hashing) for ex in examples
    ]
    return Csr.from_rows(rows, 2 * hashing.num_buckets + len(DENSE_FEATURES))


def labels(examples: Sequence[Example]) -> np.ndarray:
    return np.array([1.0 if ex.is_center else 0.0 for ex in examples])


def cross_validate(x: Csr, y: np.ndarray, l2: float, num_folds: int, seed: int) -> CvResult:
    """Out-of-fold margins and per-fold agreement (margin > 0 against the label)."""
    folds = kfold_indices(y, num_folds, seed)
    oof = np.zeros(y.size)
    agreements: list[float] = []
    for held in folds:
        keep = np.setdiff1d(np.arange(y.size), held)
        fitted = fit_logistic(x.take(keep), y[keep], l2)
        margins = fitted.margins(x.take(held))
        oof[held] = margins
        agreements.append(float(np.mean((margins > 0) == (y[held] > 0))))
    return CvResult(l2, agreements, oof)


def train(
    train_set: Sequence[Example],
    test_set: Sequence[Example],
    options: TrainOptions | None = None,
    log: Callable[[str], None] = print,
) -> RouterModel:
    """A fitted, calibrated model with its default threshold; figures go to `log` and `info`."""
    opts = options or TrainOptions()
    if len({ex.label for ex in train_set}) < 2:
        raise ValueError("the train split needs prompts of both labels (edge and center)")
    if len(train_set) < 2 * opts.num_folds:
        raise ValueError(f"the train split needs at least {2 * opts.num_folds} prompts")
    x, y = design_matrix(train_set, opts.hashing), labels(train_set)
    log(f"train split: {len(train_set)} prompts ({int(y.sum())} center), {x.data.size} non-zeros")
    results = []
    for l2 in opts.l2_grid:
        cv = cross_validate(x, y, l2, opts.num_folds, opts.seed)
        log(f"  l2 {l2:g}: {opts.num_folds}-fold agreement {cv.mean:.1%} +- {cv.std:.1%}")
        results.append(cv)
    best = max(results, key=lambda r: (r.mean, -r.l2))
    platt_a, platt_b = fit_platt(best.oof_margins, y)
    fitted = fit_logistic(x, y, best.l2)
    log(f"chosen l2 {best.l2:g}; Platt a={platt_a:.3f} b={platt_b:.3f}; {fitted.num_iterations} iterations")
    info: dict[str, Any] = {
        "l2": best.l2,
        "num_train": len(train_set),
        "num_test": len(test_set),
        "cv": {
            "folds": opts.num_folds,
            "agreements": [round(a, 4) for a in best.fold_agreements],
            "mean": round(best.mean, 4),
            "std": round(best.std, 4),
        },
    }
    model = RouterModel(opts.hashing, fitted.weights.astype(np.float32), fitted.bias, platt_a, platt_b)
    threshold, why = 0.5, "no test prompts: calibrated even odds"
    if test_set:
        probs, truth = score_examples(model, test_set), labels(test_set) > 0
        threshold, why = choose_threshold(probs, truth, opts.target_agreement, opts.target_edge_share)
        r = report(probs, truth, [ex.lang for ex in test_set], threshold)
        info["test"] = {
            "agreement": round(r.agreement, 4),
            "edge_share": round(r.edge_share, 4),
            "precision_center": round(r.precision_center, 4),
            "recall_center": round(r.recall_center, 4),
            "per_lang": {k: [round(a, 4), n] for k, (a, n) in r.per_lang.items()},
        }
    info["threshold_rule"] = why
    log(f"default threshold {threshold:.2f} ({why})")
    offset = 2 * opts.hashing.num_buckets
    dense_mean = tuple(round(float(v), 6) for v in x.column_means(offset, offset + len(DENSE_FEATURES)))
    return RouterModel(
        opts.hashing, model.weights, model.bias, platt_a, platt_b, threshold, info, model.source, dense_mean
    )


def score_examples(model: RouterModel, examples: Sequence[Example]) -> np.ndarray:
    """Calibrated probabilities of each example."""
    return np.array(
        [model.probability(prompt_features(ex.prompt, ex.max_tokens, ex.num_turns)) for ex in examples]
    )
