"""The per-neuron scipy fits that `twin experiment tuning` and `rf` ran before their fits were batched
(`clients.experiments.fits`): the reference that the batched fits are tested and timed against.
Same model, start, bounds and `maxfev` as the experiments used, one `curve_fit` per neuron."""

from __future__ import annotations

import warnings

import numpy as np
from scipy.optimize import curve_fit

from twinserve.clients.experiments.rf import gaussian_2d, gaussian_bounds
from twinserve.clients.experiments.tuning import two_peak_von_mises

VON_MISES_BOUNDS = ([-np.inf, 0, 0, 0.05, -4 * np.pi], [np.inf, np.inf, np.inf, 50, 4 * np.pi])


def _curve_fit(function, x, y, start, bounds, maxfev: int) -> np.ndarray:
    """`curve_fit` → params, NaN where it fails."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return curve_fit(function, x, y, p0=start, bounds=bounds, maxfev=maxfev)[0]
    except (RuntimeError, ValueError):
        return np.full(len(start), np.nan)


def von_mises_one_by_one(curves: np.ndarray, directions_deg: np.ndarray) -> np.ndarray:
    """Two-peak von Mises fits of curves (N, D), one `curve_fit` each → params (N, 5), NaN where one failed."""
    theta = np.deg2rad(directions_deg)
    params = []
    for curve in curves:
        peak = int(np.argmax(curve))
        opposite = int(np.argmin(np.abs(((directions_deg - directions_deg[peak] - 180) + 180) % 360 - 180)))
        low = float(curve.min())
        start = [low, curve[peak] - low, max(curve[opposite] - low, 0.0), 2.0, theta[peak]]
        params.append(_curve_fit(two_peak_von_mises, theta, curve, start, VON_MISES_BOUNDS, 5000))
    return np.array(params)


def gaussians_one_by_one(rf_maps: np.ndarray) -> np.ndarray:
    """2D Gaussian fits of maps (N, H, W), one `curve_fit` each → params (N, 5), NaN where one failed."""
    rows, cols = np.mgrid[0:rf_maps.shape[1], 0:rf_maps.shape[2]]
    params = []
    for rf_map in rf_maps:
        y0, x0 = np.unravel_index(np.argmax(rf_map), rf_map.shape)
        start = [rf_map.max() - rf_map.min(), x0, y0, 4.0, rf_map.min()]
        params.append(_curve_fit(gaussian_2d, (cols.ravel(), rows.ravel()), rf_map.ravel(), start,
                                 gaussian_bounds(rf_map.shape), 4000))
    return np.array(params)
