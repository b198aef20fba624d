"""Initial readout positions from the data: where in the visual field each neuron looks.

Each neuron's response is correlated with the local motion energy of the movie on a coarse grid;
the peak of that map is a noisy estimate of its receptive-field centre. Visual cortex is
retinotopic, so an affine map from the neurons' cortical coordinates to those peaks, fitted on the
neurons with the clearest maps, gives every neuron a denoised starting position. If the coordinates
do not explain the peaks, the peaks themselves are used.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .data import Trial

GRID = (9, 16)
LAGS = range(1, 9)
MIN_FIT_R2 = 0.5


def _motion_energy(video: np.ndarray, grid=GRID) -> np.ndarray:
    """|frame difference| pooled to a coarse grid and summed over response lags: (T, H, W) → (T, G)."""
    diff = np.abs(np.diff(video, axis=0, prepend=video[:1]))
    pooled = F.adaptive_avg_pool2d(torch.from_numpy(diff)[:, None], grid).flatten(1).numpy()
    lagged = np.zeros_like(pooled)
    for lag in LAGS:
        lagged[lag:] += pooled[:-lag]
    return lagged


def correlation_maps(trials: list[Trial], grid=GRID) -> np.ndarray:
    """Per neuron the correlation of its response with lagged motion energy per grid cell → (N, G)."""
    energy = np.concatenate([_motion_energy(t.video, grid) for t in trials])
    responses = np.concatenate([t.responses for t in trials]).astype(np.float64)
    responses = np.nan_to_num(responses - np.nanmean(responses, 0))
    energy = energy - energy.mean(0)
    energy /= np.linalg.norm(energy, axis=0) + 1e-9
    responses /= np.linalg.norm(responses, axis=0) + 1e-9
    return responses.T @ energy


def _grid_centres(grid=GRID) -> np.ndarray:
    """Centres of the grid cells in grid_sample coordinates (x, y) ∈ [-1, 1] → (G, 2)."""
    rows, cols = grid
    y, x = np.meshgrid((np.arange(rows) + 0.5) / rows * 2 - 1, (np.arange(cols) + 0.5) / cols * 2 - 1, indexing="ij")
    return np.stack([x.ravel(), y.ravel()], 1)


def readout_positions(trials: list[Trial], coordinates: np.ndarray, grid=GRID) -> np.ndarray:
    """Starting readout positions (N, 2) in grid_sample coordinates from training trials and the
    neurons' cortical coordinates (N, ≥2)."""
    maps = correlation_maps(trials, grid)
    weights = np.clip(maps - 0.5 * maps.max(1, keepdims=True), 0, None)
    peaks = weights @ _grid_centres(grid) / np.maximum(weights.sum(1, keepdims=True), 1e-12)
    strength = maps.max(1)
    clear = strength >= np.median(strength)
    design = np.column_stack([coordinates[:, :2], np.ones(len(coordinates))])
    if clear.sum() < 4:
        return np.clip(peaks, -1, 1).astype(np.float32)
    affine, *_ = np.linalg.lstsq(design[clear], peaks[clear], rcond=None)
    fitted = design @ affine
    residual = ((peaks[clear] - fitted[clear]) ** 2).sum()
    total = ((peaks[clear] - peaks[clear].mean(0)) ** 2).sum()
    chosen = fitted if 1 - residual / max(total, 1e-12) >= MIN_FIT_R2 else peaks
    return np.clip(chosen, -1, 1).astype(np.float32)
