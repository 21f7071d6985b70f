"""L2-regularised logistic regression on sparse rows, fitted with our own L-BFGS (numpy only).

Training-time code: the edge never imports it. Rows are (indices, values) pairs as `featurise`
returns them; they are packed once into CSR arrays, so a gradient is two passes over the non-zeros
(`reduceat` for X @ w, `bincount` for X.T @ g). The loss is the mean log-loss plus
`l2 / 2 * ||w||^2` (the bias is not penalised), which is smooth and strictly convex: L-BFGS with a
backtracking line search converges in a few hundred cheap iterations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Csr:
    """A sparse matrix of `num_rows` rows and `num_cols` columns in CSR form."""

    indptr: np.ndarray  # [num_rows + 1] int64
    indices: np.ndarray  # [nnz] int64
    data: np.ndarray  # [nnz] float64
    num_cols: int

    @property
    def num_rows(self) -> int:
        return int(self.indptr.size - 1)

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[np.ndarray, np.ndarray]], num_cols: int) -> Csr:
        lengths = np.array([r[0].size for r in rows], dtype=np.int64)
        if rows and int(lengths.min()) == 0:
            raise ValueError("every row needs at least one non-zero (the structural features)")
        indptr = np.concatenate(([0], np.cumsum(lengths))).astype(np.int64)
        indices = np.concatenate([r[0] for r in rows]).astype(np.int64) if rows else np.zeros(0, np.int64)
        data = np.concatenate([r[1] for r in rows]).astype(np.float64) if rows else np.zeros(0)
        return cls(indptr, indices, data, num_cols)

    def take(self, rows: np.ndarray) -> Csr:
        """The sub-matrix of the given row numbers."""
        starts, ends = self.indptr[rows], self.indptr[rows + 1]
        parts = [np.arange(s, e) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
        picked = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        indptr = np.concatenate(([0], np.cumsum(ends - starts))).astype(np.int64)
        return Csr(indptr, self.indices[picked], self.data[picked], self.num_cols)

    def column_means(self, start: int, stop: int) -> np.ndarray:
        """[stop - start] mean of columns start..stop-1 over the rows."""
        sums = np.bincount(self.indices, weights=self.data, minlength=self.num_cols)[start:stop]
        return sums / max(1, self.num_rows)

    def matvec(self, w: np.ndarray) -> np.ndarray:
        return np.add.reduceat(self.data * w[self.indices], self.indptr[:-1])

    def rmatvec(self, g: np.ndarray) -> np.ndarray:
        per_nz = np.repeat(g, np.diff(self.indptr))
        return np.bincount(self.indices, weights=self.data * per_nz, minlength=self.num_cols)


@dataclass(frozen=True)
class Fitted:
    weights: np.ndarray  # [num_cols] float64
    bias: float
    num_iterations: int
    loss: float

    def margins(self, x: Csr) -> np.ndarray:
        return x.matvec(self.weights) + self.bias


def fit_logistic(
    x: Csr, y: np.ndarray, l2: float, max_iter: int = 400, tol: float = 1e-6, history: int = 10
) -> Fitted:
    """Minimise mean log-loss + l2/2 ||w||^2 over (w, b); `y` holds 0/1 labels (1 = center).

    Classes are weighted to count equally, so a lopsided operator file does not bias the model.
    """
    if x.num_rows == 0 or x.num_rows != y.size:
        raise ValueError("need one label per row and at least one row")
    sign = np.where(y > 0, 1.0, -1.0)
    num_pos = max(1.0, float((y > 0).sum()))
    num_neg = max(1.0, float((y <= 0).sum()))
    sample_w = np.where(y > 0, 0.5 / num_pos, 0.5 / num_neg)

    def loss_grad(theta: np.ndarray) -> tuple[float, np.ndarray]:
        w, b = theta[:-1], theta[-1]
        z = sign * (x.matvec(w) + b)
        loss = float(_dot(sample_w, np.logaddexp(0.0, -z))) + 0.5 * l2 * float(_dot(w, w))
        g_margin = -sign * sample_w * _sigmoid(-z)
        grad = np.empty_like(theta)
        grad[:-1] = x.rmatvec(g_margin) + l2 * w
        grad[-1] = g_margin.sum()
        return loss, grad

    theta, loss, num_iter = _lbfgs(loss_grad, np.zeros(x.num_cols + 1), max_iter, tol, history)
    return Fitted(theta[:-1], float(theta[-1]), num_iter, loss)


def _lbfgs(
    f: Callable[[np.ndarray], tuple[float, np.ndarray]],
    theta: np.ndarray,
    max_iter: int,
    tol: float,
    history: int,
) -> tuple[np.ndarray, float, int]:
    """Limited-memory BFGS (two-loop recursion) with an Armijo backtracking line search."""
    loss, grad = f(theta)
    s_list: list[np.ndarray] = []
    y_list: list[np.ndarray] = []
    num_iter = 0
    while num_iter < max_iter:
        num_iter += 1
        if float(np.max(np.abs(grad))) < tol:
            break
        direction = -_two_loop(grad, s_list, y_list)
        slope = float(_dot(grad, direction))
        if slope >= 0:  # not a descent direction: restart from steepest descent
            s_list.clear()
            y_list.clear()
            direction, slope = -grad, -float(_dot(grad, grad))
        step = 1.0 if s_list else 1.0 / max(1.0, float(math.sqrt(_dot(grad, grad))))
        while True:
            new_theta = theta + step * direction
            new_loss, new_grad = f(new_theta)
            if new_loss <= loss + 1e-4 * step * slope or step < 1e-12:
                break
            step *= 0.5
        s, yv = new_theta - theta, new_grad - grad
        if float(_dot(s, yv)) > 1e-12:
            s_list.append(s)
            y_list.append(yv)
            if len(s_list) > history:
                s_list.pop(0)
                y_list.pop(0)
        improved = loss - new_loss
        theta, loss, grad = new_theta, new_loss, new_grad
        if 0 <= improved < 1e-10 * max(1.0, abs(loss)):
            break
    return theta, loss, num_iter


def _two_loop(grad: np.ndarray, s_list: list[np.ndarray], y_list: list[np.ndarray]) -> np.ndarray:
    q = grad.copy()
    alphas: list[float] = []
    rhos = [1.0 / float(_dot(y, s)) for s, y in zip(s_list, y_list, strict=True)]
    for s, y, rho in zip(reversed(s_list), reversed(y_list), reversed(rhos), strict=True):
        a = rho * float(_dot(s, q))
        alphas.append(a)
        q -= a * y
    if s_list:
        q *= float(_dot(s_list[-1], y_list[-1])) / float(_dot(y_list[-1], y_list[-1]))
    for s, y, rho, a in zip(s_list, y_list, rhos, reversed(alphas), strict=True):
        b = rho * float(_dot(y, q))
        q += (a - b) * s
    return q


def fit_platt(margins: np.ndarray, y: np.ndarray, max_iter: int = 100) -> tuple[float, float]:
    """(a, b) so that sigmoid(a * margin + b) is calibrated on these (out-of-fold) margins.

    Newton's method on the two parameters, with Platt's smoothed targets so that perfectly
    separated margins do not send `a` to infinity.
    """
    num_pos, num_neg = float((y > 0).sum()), float((y <= 0).sum())
    target = np.where(y > 0, (num_pos + 1) / (num_pos + 2), 1 / (num_neg + 2))
    a, b = 1.0, 0.0
    for _ in range(max_iter):
        p = _sigmoid(a * margins + b)
        r = p * (1 - p) + 1e-12
        g = np.array([_dot(p - target, margins), np.sum(p - target)])
        h = np.array(
            [[_dot(r, margins * margins), _dot(r, margins)], [_dot(r, margins), r.sum()]]
        ) + 1e-9 * np.eye(2)
        delta = np.linalg.solve(h, g)
        a, b = a - float(delta[0]), b - float(delta[1])
        if float(np.max(np.abs(delta))) < 1e-9:
            break
    if not (math.isfinite(a) and math.isfinite(b)) or a <= 0:
        return 1.0, 0.0  # calibration failed (e.g. one class only): raw log-odds
    return a, b


def kfold_indices(labels: np.ndarray, num_folds: int, seed: int = 0) -> list[np.ndarray]:
    """Row numbers of each fold, stratified by label: each class is shuffled (seeded) and dealt out."""
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)])
    return [np.sort(order[i::num_folds]) for i in range(num_folds)]


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """A dot product without BLAS: multithreaded BLAS on a busy shared host was 50x slower here."""
    return float(np.multiply(a, b).sum())


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))
