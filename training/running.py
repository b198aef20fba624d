"""Per-neuron correlation accumulated trial by trial: metrics of tiers too large to hold in memory.

Equal to `metrics.single_trial_correlation` over the same trials (Pearson over all frames after the
burn-in, samples with NaN in either array left out), and `official` to
`metrics.single_trial_correlation_official` (frames NaN for every neuron dropped, any other NaN
scores its neuron 0, ε = 1e-8 on the standard deviations), from float64 sums of values shifted by
the first trial's means, so memory does not grow with the number of trials.
"""

from __future__ import annotations

import numpy as np

from .metrics import BURN_IN, OFFICIAL_EPS


class RunningCorrelation:
    """Add (T, N) pairs of trials with `add`; `result` gives the correlation per neuron (N,)."""

    def __init__(self, burn_in: int = BURN_IN):
        self.burn_in = burn_in
        self.shift = None
        self.sums: dict[str, np.ndarray] = {}
        self.official_sums: dict[str, np.ndarray] = {}

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """One trial: x, y (T, N), e.g. responses and predictions."""
        if np.shape(x) != np.shape(y):
            raise ValueError(f"responses {np.shape(x)} vs predictions {np.shape(y)}")
        x = np.asarray(x, dtype=np.float64)[self.burn_in:]
        y = np.asarray(y, dtype=np.float64)[self.burn_in:]
        valid = np.isfinite(x) & np.isfinite(y)
        if self.shift is None:
            with np.errstate(invalid="ignore"):
                self.shift = [np.nan_to_num(np.where(valid, a, 0).sum(0) / valid.sum(0)) for a in (x, y)]
        _accumulate(self.sums, valid, np.where(valid, x - self.shift[0], 0), np.where(valid, y - self.shift[1], 0))
        frames = ~(np.isnan(x).all(1) | np.isnan(y).all(1))  # padding and warm-up: dropped by the official scorer
        _accumulate(self.official_sums, frames, x[frames] - self.shift[0], y[frames] - self.shift[1])

    def result(self) -> np.ndarray:
        """Correlation per neuron (N,); NaN with no variance or fewer than two samples."""
        if not self.sums:
            raise ValueError("no trials added")
        s = self.sums
        n = np.maximum(s["n"], 1)
        covariance = s["xy"] - s["x"] * s["y"] / n
        variance_x = np.maximum(s["xx"] - s["x"] ** 2 / n, 0)
        variance_y = np.maximum(s["yy"] - s["y"] ** 2 / n, 0)
        denominator = np.sqrt(variance_x * variance_y)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = covariance / denominator
        return np.where((s["n"] > 1) & (denominator > 0), r, np.nan)

    def official(self) -> np.ndarray:
        """The official scorer's correlation per neuron (N,): population covariance over
        (σx + ε)(σy + ε), NaN → 0."""
        if not self.official_sums:
            raise ValueError("no trials added")
        s = self.official_sums
        n = max(float(s["n"]), 1.0)
        mean_x, mean_y = s["x"] / n, s["y"] / n
        covariance = s["xy"] / n - mean_x * mean_y
        std_x = np.sqrt(np.maximum(s["xx"] / n - mean_x**2, 0))
        std_y = np.sqrt(np.maximum(s["yy"] / n - mean_y**2, 0))
        with np.errstate(invalid="ignore"):
            return np.nan_to_num(covariance / ((std_x + OFFICIAL_EPS) * (std_y + OFFICIAL_EPS)), nan=0.0)


def _accumulate(sums: dict, count: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    """Add a trial's count, Σx, Σy, Σx², Σy², Σxy (over its rows) to `sums`."""
    terms = {"n": count, "x": x, "y": y, "xx": x * x, "yy": y * y, "xy": x * y}
    for name, term in terms.items():
        sums[name] = sums.get(name, 0) + term.sum(0)
