"""Initial readout positions from the data: where in the visual field each neuron looks.

V1 neurons respond to oriented contrast in their receptive field, so each neuron's response is
correlated with lagged oriented energy (a small quadrature Gabor bank) pooled on a coarse grid;
the peak of its best orientation channel is a noisy estimate of its receptive-field centre. Visual
cortex is retinotopic, so an affine map from the neurons' cortical coordinates to those peaks,
fitted robustly on the neurons with the clearest maps, gives every neuron a denoised starting
position. If the coordinates do not explain the peaks, the peaks themselves are used, and the start
is unconfirmed: the trainer then refits those readouts on its core once it has learned features
(`TrainConfig.refit_unconfirmed_at`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .data import Trial
from .gabor import gabor_bank

CELL = 4                # pixels per side of a cell of the coarse grid: 9×16 cells on 36×64 frames
LAGS = range(1, 9)
PERIODS = (10, 18)      # pixels
PIXEL_SCALE = 64.0      # divides the mean-free pixels (the correlations below do not depend on it)
ORIENTATIONS = 4
BANK_SIZE = 15          # pixels per side of the Gabor filters
MAX_TRIALS = 60         # enough for a position estimate; bounds the cost on large recordings
MIN_FIT_R2 = 0.5
MIN_FIT_NEURONS = 8  # fewer neurons than this fit no retinotopy
EDGE_FIT_ROUNDS = 8  # rounds of `retinotopic_fit` on a grid: the neurons inside the edges settle by then
NEURON_BLOCK = 1024     # neurons correlated at a time


def grid_for(frame_shape: tuple[int, int]) -> tuple[int, int]:
    """The coarse grid (rows, columns) of cells of CELL×CELL pixels on frames of (H, W)."""
    return max(1, frame_shape[0] // CELL), max(1, frame_shape[1] // CELL)


def oriented_energy(video: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Lag-summed oriented energy on a coarse grid: video (T, H, W) → (T, K, G), K energy channels."""
    bank = gabor_bank(BANK_SIZE, PERIODS, ORIENTATIONS)[:, None]  # (K2, 1, k, k), quadrature pairs
    frames = torch.from_numpy((video - video.mean()) / PIXEL_SCALE)[:, None]
    with torch.no_grad():
        responses = F.conv2d(frames, bank, padding=bank.shape[-1] // 2)
    energy = responses[:, 0::2] ** 2 + responses[:, 1::2] ** 2
    pooled = F.adaptive_avg_pool2d(energy, grid).flatten(2).numpy()
    lagged = np.zeros_like(pooled)
    for lag in LAGS:
        lagged[lag:] += pooled[:-lag]
    return lagged


def _standardize(x: np.ndarray) -> np.ndarray:
    x = x - x.mean(0)
    return x / (np.linalg.norm(x, axis=0) + 1e-9)


def receptive_field_peaks(trials: list[Trial], grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Per neuron the grid cell of the strongest energy correlation → (peaks (N, 2) in grid_sample
    coordinates, strength (N,) the correlation there)."""
    trials = trials[:: max(1, len(trials) // MAX_TRIALS)]
    energy = np.concatenate([oriented_energy(t.video, grid) for t in trials])  # (T, K, G)
    frames, channels, cells = energy.shape
    energy = _standardize(energy.reshape(frames, -1))
    responses = np.concatenate([t.responses for t in trials])  # (T, N) float32
    peaks, strength = [], []
    for block in range(0, responses.shape[1], NEURON_BLOCK):  # bounded memory at thousands of neurons
        chunk = _standardize(np.nan_to_num(responses[:, block:block + NEURON_BLOCK].astype(np.float64)))
        maps = (chunk.T @ energy).reshape(-1, channels, cells)
        best = maps[np.arange(len(maps)), maps.max(2).argmax(1)]  # (n, G): the neuron's best channel
        peaks.append(best.argmax(1))
        strength.append(best.max(1))
    return grid_centres(grid)[np.concatenate(peaks)], np.concatenate(strength)


def grid_centres(grid: tuple[int, int]) -> np.ndarray:
    """Centres of the grid cells in grid_sample coordinates (x, y) ∈ [-1, 1] → (G, 2)."""
    rows, cols = grid
    y, x = np.meshgrid((np.arange(rows) + 0.5) / rows * 2 - 1, (np.arange(cols) + 0.5) / cols * 2 - 1, indexing="ij")
    return np.stack([x.ravel(), y.ravel()], 1)


def grid_cells(positions: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """The cell (index into `grid_centres`) holding each position (N, 2), grid_sample coordinates
    (x, y), clipped to the grid → (N,)."""
    rows, cols = grid
    col = np.clip(((positions[:, 0] + 1) / 2 * cols).astype(int), 0, cols - 1)
    row = np.clip(((positions[:, 1] + 1) / 2 * rows).astype(int), 0, rows - 1)
    return row * cols + col


def pixel_positions(positions: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """Positions (N, 2) in grid_sample coordinates (x, y), align_corners=False, as pixel coordinates
    (x, y) on a frame of (H, W), pixel centres at integers → (N, 2)."""
    height, width = frame_shape
    return (positions + 1) / 2 * np.array([width, height]) - 0.5


def retinotopic_fit(coordinates: np.ndarray, peaks: np.ndarray, strength: np.ndarray,
                    grid: tuple[int, int] | None = None, rounds: int = 4) -> tuple[np.ndarray, float]:
    """Affine map cortical coordinates (N, ≥2) → peaks (N, 2), fitted on the stronger half and
    refitted without outliers → (fitted positions (N, 2), R² on the inliers).

    grid: the (rows, columns) of cells the peaks are centres of (`receptive_field_peaks`). A neuron
    that looks at the outermost cell or beyond it peaks there, so such peaks are censored, and a map
    fitted to them is squeezed inward (on development member family-27, whose receptive fields reach
    4 px past the edges, the true centres went as 1.14 × x - 3.9 px and 1.39 × y - 8.0 px of such a
    map's). With the grid, the map is fitted only on the neurons it places at least one cell inside
    the outermost cells (chosen by their coordinates, which biases nothing), refitted as that choice
    changes (`EDGE_FIT_ROUNDS`), and compared with the peaks clipped as the peaks are."""
    design = np.column_stack([coordinates[:, :2], np.ones(len(coordinates))])
    inliers = strength >= np.median(strength)
    fit_on = inliers.copy()
    if grid is not None:
        cell = 2 / np.array(grid[::-1], dtype=float)  # (x, y) cell size
        outermost = 1 - cell / 2  # the outermost cells' centres
    for _ in range(rounds):
        affine, *_ = np.linalg.lstsq(design[fit_on], peaks[fit_on], rcond=None)
        fitted = design @ affine
        predicted = fitted if grid is None else np.clip(fitted, -outermost, outermost)
        residual = np.linalg.norm(predicted - peaks, axis=1)
        inliers &= residual <= 2.5 * np.median(residual[inliers])
        fit_on = inliers
        if grid is not None:
            inside = inliers & (np.abs(fitted) <= outermost - cell).all(1)
            fit_on = inside if inside.sum() >= MIN_FIT_NEURONS else inliers
    spread = ((peaks[inliers] - peaks[inliers].mean(0)) ** 2).sum()
    r2 = 1 - ((peaks[inliers] - predicted[inliers]) ** 2).sum() / max(spread, 1e-12)
    return fitted, float(r2)


class ReadoutStart(NamedTuple):
    """Starting readout positions (N, 2) in grid_sample coordinates, and the R² of the retinotopic fit
    to the energy-map peaks (None: too few neurons to fit)."""

    positions: np.ndarray
    retinotopy_r2: float | None

    @property
    def confirmed(self) -> bool:
        """Whether the neurons' coordinates explain the peaks, so the positions are the fit's. Where they
        do not, the positions are the raw peaks, which miss neurons that oriented energy does not drive
        (centre–surround, untuned, contrast-normalised ones)."""
        return self.retinotopy_r2 is not None and self.retinotopy_r2 >= MIN_FIT_R2


def readout_start(trials: list[Trial], coordinates: np.ndarray, grid: tuple[int, int] | None = None) -> ReadoutStart:
    """Starting readout positions from training trials and the neurons' cortical coordinates (N, ≥2);
    grid: default `grid_for` the trials' frame shape."""
    grid = grid or grid_for(trials[0].video.shape[1:])
    peaks, strength = receptive_field_peaks(trials, grid)
    r2 = None
    if len(peaks) >= MIN_FIT_NEURONS:
        fitted, r2 = retinotopic_fit(coordinates, peaks, strength, grid, EDGE_FIT_ROUNDS)
        if r2 >= MIN_FIT_R2:
            peaks = fitted
    return ReadoutStart(np.clip(peaks, -1, 1).astype(np.float32), r2)
