"""Routing figures: agreement with the labels, precision/recall for `center`, edge share, confusion
matrix, per-language agreement, a threshold table, and the one-knob threshold choice."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

TABLE_THRESHOLDS = tuple(round(0.1 * i, 1) for i in range(1, 10))
GRID = tuple(round(0.01 * i, 2) for i in range(1, 100))  # thresholds the choice looks at


@dataclass(frozen=True)
class Report:
    """Figures for one set of prompts at one threshold (`center` = the positive class)."""

    threshold: float
    num_prompts: int
    agreement: float
    edge_share: float  # share of prompts routed to the edge
    precision_center: float
    recall_center: float
    confusion: dict[str, dict[str, int]]  # label -> routed tier -> count
    per_lang: dict[str, tuple[float, int]] = field(default_factory=dict)  # lang -> (agreement, n)
    table: list[tuple[float, float, float]] = field(default_factory=list)  # (threshold, agr., edge)


def report(
    probs: np.ndarray, is_center: np.ndarray, langs: Sequence[str], threshold: float
) -> Report:
    """Figures at `threshold`, with the threshold table over `TABLE_THRESHOLDS`."""
    probs = np.asarray(probs, dtype=np.float64)
    truth = np.asarray(is_center, dtype=bool)
    routed = probs >= threshold
    n = int(truth.size)
    tp = int(np.sum(routed & truth))
    fp = int(np.sum(routed & ~truth))
    fn = int(np.sum(~routed & truth))
    tn = int(np.sum(~routed & ~truth))
    per_lang: dict[str, tuple[float, int]] = {}
    lang_arr = np.asarray(list(langs), dtype=object)
    for lang in sorted(set(langs)):
        sel = lang_arr == lang
        per_lang[lang] = (float(np.mean(routed[sel] == truth[sel])), int(sel.sum()))
    return Report(
        threshold=threshold,
        num_prompts=n,
        agreement=(tp + tn) / n if n else 0.0,
        edge_share=(fn + tn) / n if n else 0.0,
        precision_center=tp / (tp + fp) if tp + fp else 0.0,
        recall_center=tp / (tp + fn) if tp + fn else 0.0,
        confusion={"center": {"center": tp, "edge": fn}, "edge": {"center": fp, "edge": tn}},
        per_lang=per_lang,
        table=[(t, *agreement_and_edge_share(probs, truth, t)) for t in TABLE_THRESHOLDS],
    )


def agreement_and_edge_share(probs: np.ndarray, truth: np.ndarray, threshold: float) -> tuple[float, float]:
    routed = probs >= threshold
    if routed.size == 0:
        return 0.0, 0.0
    return float(np.mean(routed == truth)), float(np.mean(~routed))


def choose_threshold(
    probs: np.ndarray,
    is_center: np.ndarray,
    target_agreement: float | None = None,
    target_edge_share: float | None = None,
) -> tuple[float, str]:
    """The one knob: a threshold from these (held-out) prompts, and how it was chosen.

    - `target_edge_share`: the lowest threshold whose edge share reaches the target (the most
      quality at that cost);
    - `target_agreement`: the highest threshold whose agreement reaches the target (the lowest cost
      at that quality), or the best agreement when none reaches it;
    - neither: the best agreement, ties broken towards 0.5 (the calibrated even odds).
    """
    truth = np.asarray(is_center, dtype=bool)
    points = [(t, *agreement_and_edge_share(probs, truth, t)) for t in GRID]
    if target_edge_share is not None:
        for t, _, edge in points:
            if edge >= target_edge_share:
                return t, f"lowest threshold with edge share >= {target_edge_share:.2f}"
        return GRID[-1], f"no threshold reaches edge share {target_edge_share:.2f}: the highest"
    if target_agreement is not None:
        meeting = [p for p in points if p[1] >= target_agreement]
        if meeting:
            return max(meeting)[0], f"highest threshold with agreement >= {target_agreement:.2f}"
    best = max(a for _, a, _ in points)
    t = min((p for p in points if p[1] == best), key=lambda p: abs(p[0] - 0.5))[0]
    why = "best agreement (ties towards 0.5)"
    if target_agreement is not None:
        why = f"no threshold reaches agreement {target_agreement:.2f}: {why}"
    return t, why


def format_report(r: Report, title: str) -> str:
    """The human-readable block `isthmus router eval` prints."""
    c = r.confusion
    lines = [
        f"{title}: {r.num_prompts} prompts, threshold {r.threshold:.2f}",
        f"  agreement        {r.agreement:6.1%}",
        f"  edge share       {r.edge_share:6.1%}",
        f"  center precision {r.precision_center:6.1%}   recall {r.recall_center:6.1%}",
        "  confusion (rows: label, columns: routed to)",
        "                   edge  center",
        f"    label edge    {c['edge']['edge']:5d}  {c['edge']['center']:6d}",
        f"    label center  {c['center']['edge']:5d}  {c['center']['center']:6d}",
        "  per language (agreement, prompts)",
    ]
    lines += [f"    {lang or '?':8s} {agr:6.1%}  {n:5d}" for lang, (agr, n) in r.per_lang.items()]
    lines.append("  threshold table (threshold -> agreement, edge share)")
    lines += [f"    {t:4.2f} -> {a:6.1%}  {e:6.1%}" for t, a, e in r.table]
    return "\n".join(lines)
