"""Batched curve fitting: one bounded least-squares fit per neuron, all neurons at once.

`fit` minimises, for every row n of `data` (N, M), the residual sum of squares
RSS_n(p) = Σ_m (model(p_n)_m − data_nm)² over parameters p_n (K,) within box bounds, with a
Levenberg–Marquardt iteration vectorised across rows (numpy: one batched K×K solve per step):
- Marquardt's scaling, a damping factor per row (smaller after a step that lowers its RSS, larger
  after one that does not, which is then undone);
- bounds by projection: a step lands clipped into the box, and a parameter at a bound whose gradient
  points out of the box is held there for that step (an active set), so the others keep moving;
- a row stops when an accepted step lowers its RSS by less than `ftol` (relative), when its damping
  grows past `MAX_DAMPING` (no step lowers it any more), or after `iterations` steps; the iteration
  goes on with the rows still moving only;
- from several starting points: the fit with the lowest RSS is kept per row.
Rows are fitted in chunks of at most `CHUNK_VALUES` residuals (bounded memory for large M).

A model is a callable `model(params (n, K), jacobian: bool)` → predictions (n, M), and with
`jacobian` also their derivatives (n, K, M) in the parameters.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Model = Callable[..., "np.ndarray | tuple[np.ndarray, np.ndarray]"]

MAX_DAMPING = 1e12
DAMPING_DOWN, DAMPING_UP = 0.3, 10.0  # damping factors after a step that lowers the RSS, one that does not
CHUNK_VALUES = 100_000  # residuals per chunk of rows (the Jacobian is K times that): fast in cache, bounded memory


def fit(model: Model, data: np.ndarray, starts: np.ndarray, lower, upper, iterations: int = 1000,
        ftol: float = 1e-10) -> tuple[np.ndarray, np.ndarray]:
    """Fit every row of `data` (N, M) from each of `starts` (S, N, K), within `lower`/`upper` (K,) →
    (params (N, K), RSS (N,)) of the best start per row; NaN for rows with non-finite data."""
    data = np.asarray(data, np.float64)
    starts = np.asarray(starts, np.float64)
    lower, upper = np.asarray(lower, np.float64), np.asarray(upper, np.float64)
    if data.ndim != 2 or starts.ndim != 3 or starts.shape[1:] != (len(data), len(lower)):
        raise ValueError(f"data (N, M) and starts (S, N, K) expected, with K = {len(lower)} bounds: got data "
                         f"{data.shape}, starts {starts.shape}")
    if np.any(lower > upper):
        raise ValueError(f"lower bounds {lower} above upper bounds {upper}")
    params = np.full(starts.shape[1:], np.nan)
    rss = np.full(len(data), np.inf)
    finite = np.flatnonzero(np.isfinite(data).all(1))
    chunk = max(1, CHUNK_VALUES // max(data.shape[1], 1))
    for begin in range(0, len(finite), chunk):
        rows = finite[begin:begin + chunk]
        for start in starts[:, rows]:
            p, r = _levenberg_marquardt(model, data[rows], start, lower, upper, iterations, ftol)
            better = r < rss[rows]
            params[rows[better]], rss[rows[better]] = p[better], r[better]
    rss[np.isinf(rss)] = np.nan
    return params, rss


def _levenberg_marquardt(model: Model, data: np.ndarray, start: np.ndarray, lower: np.ndarray, upper: np.ndarray,
                         iterations: int, ftol: float) -> tuple[np.ndarray, np.ndarray]:
    """One start (n, K) for rows `data` (n, M) → (params (n, K), RSS (n,))."""
    params = np.clip(start, lower, upper)
    rss = ((model(params, jacobian=False) - data) ** 2).sum(1)
    damping = np.full(len(data), 1e-3)
    moving = np.flatnonzero(np.isfinite(rss))
    eye = np.eye(params.shape[1], dtype=bool)
    for _ in range(iterations):
        if len(moving) == 0:
            break
        p, y = params[moving], data[moving]
        prediction, jacobian = model(p, jacobian=True)
        residual = prediction - y  # (n, M)
        gradient = np.matmul(jacobian, residual[..., None])[..., 0]  # (n, K): half the gradient of the RSS
        curvature = np.matmul(jacobian, jacobian.transpose(0, 2, 1))  # (n, K, K): JᵀJ
        held = ((p <= lower) & (gradient > 0)) | ((p >= upper) & (gradient < 0))  # pushing out of the box
        free = ~held
        scale = np.diagonal(curvature, axis1=1, axis2=2)
        scale = np.maximum(scale, 1e-12 * scale.max(1, keepdims=True)) + 1e-30  # > 0: the system is regular
        system = curvature * (free[:, :, None] & free[:, None, :])
        system += eye * np.where(free, damping[moving, None] * scale, 1.0)[:, :, None]
        step = -np.linalg.solve(system, (gradient * free)[..., None])[..., 0]
        candidate = np.clip(p + step, lower, upper)
        candidate_rss = ((model(candidate, jacobian=False) - y) ** 2).sum(1)
        better = candidate_rss < rss[moving]  # False for NaN
        gain = rss[moving] - candidate_rss
        params[moving[better]], rss[moving[better]] = candidate[better], candidate_rss[better]
        damping[moving] = np.where(better, np.maximum(damping[moving] * DAMPING_DOWN, 1e-12),
                                   damping[moving] * DAMPING_UP)
        done = (better & (gain <= ftol * rss[moving])) | (damping[moving] > MAX_DAMPING) | (rss[moving] == 0)
        moving = moving[~done]
    return params, rss
