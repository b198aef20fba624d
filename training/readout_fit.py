"""A new recording's readout fitted in closed form on a trained core's features (transfer).

A trained core already computes what the neurons respond to, so each neuron's response is close to
a linear function of the core's features at its receptive field. Per cell of a coarse grid, one
ridge regression of every neuron's scaled response on the features pooled over that cell; each
neuron starts at the cell that explains most of its variance, with that cell's channel weights and
bias. Gradient descent then refines a readout that already predicts, instead of first searching
for positions from the energy-map estimate that a core without training needs (`positions.py`).

Mid-training (`twin train --refit-readout-at`, and by default where the start positions were unconfirmed:
`TrainConfig.refit_unconfirmed_at`) the same fits on the core trained so far move only the
neurons that read from the wrong place (`refit_readout`): a neuron whose trained position already
sits in its best cell keeps what gradient descent found, finer than a cell.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .data import Trial
from .model import Twin
from .positions import grid_cells, grid_centres, grid_for

RIDGE = 1e-2  # ridge penalty relative to the mean feature variance of a cell
MIN_GAIN = 0.02  # a refit moves a neuron whose best cell explains this much more of its variance than its own


def _cell_features(model: Twin, recording: str, trial: Trial, grid: tuple[int, int]) -> torch.Tensor:
    """The core's features of one trial averaged over each grid cell → (T - offset, G, C), float64."""
    features = model.trial_features(recording, trial)[0][0].transpose(0, 1)  # (T', C, H', W')
    pooled = F.adaptive_avg_pool2d(features, grid)  # (T', C, rows, cols)
    return pooled.flatten(2).transpose(1, 2).double().cpu()


class CellFits(NamedTuple):
    """Per grid cell G the ridge fit of every neuron N on the cell's C pooled features."""

    weights: torch.Tensor  # (G, C, N)
    bias: torch.Tensor  # (G, N)
    r2: torch.Tensor  # (G, N): the fraction of each neuron's response variance the cell explains


@torch.no_grad()
def _cell_fits(model: Twin, recording: str, trials: list[Trial]) -> CellFits:
    """Per grid cell a ridge regression of `recording`'s responses (in units of its head's response
    scale) on the core's features of `trials` pooled over the cell."""
    head = model.heads[recording]
    grid = grid_for(model.frame_shape)
    was_training = model.training
    model.eval()  # the core's normalisation statistics stay as they are
    frames, sum_x, sum_y, sum_yy, xx, xy = 0, 0.0, 0.0, 0.0, 0.0, 0.0
    scale = head.response_scale.double().cpu()
    for trial in trials:
        x = _cell_features(model, recording, trial, grid)  # (T', G, C)
        y = torch.from_numpy(np.nan_to_num(trial.responses[model.offset:])).double() / scale  # (T', N)
        frames += len(x)
        sum_x, sum_y, sum_yy = sum_x + x.sum(0), sum_y + y.sum(0), sum_yy + (y * y).sum(0)
        xx = xx + torch.einsum("tgc,tgd->gcd", x, x)
        xy = xy + torch.einsum("tgc,tn->gcn", x, y)
    model.train(was_training)
    mean_x, mean_y = sum_x / frames, sum_y / frames  # (G, C), (N,)
    xx = xx - frames * mean_x[:, :, None] * mean_x[:, None, :]  # centred (G, C, C)
    xy = xy - frames * mean_x[:, :, None] * mean_y[None, None, :]  # centred (G, C, N)
    yy = (sum_yy - frames * mean_y**2).clamp_min(1e-12)  # (N,)
    channels = xx.shape[-1]
    penalty = RIDGE * torch.diagonal(xx, dim1=1, dim2=2).mean(1).clamp_min(1e-12)  # (G,)
    weights = torch.linalg.solve(xx + penalty[:, None, None] * torch.eye(channels, dtype=xx.dtype), xy)  # (G, C, N)
    # elu(drive) + 1 is the rate: a linear fit of the rate is a fit of the drive plus one.
    bias = mean_y - 1 - torch.einsum("gc,gcn->gn", mean_x, weights)
    return CellFits(weights, bias, (weights * xy).sum(1) / yy)


def _place(model: Twin, recording: str, fits: CellFits, cells: torch.Tensor, neurons: torch.Tensor) -> None:
    """Move `neurons` (K,) of `recording`'s readout to the centres of `cells` (K,), with those cells'
    ridge weights and bias."""
    readout = model.heads[recording].readout
    centres = torch.from_numpy(grid_centres(grid_for(model.frame_shape)))
    readout.position[neurons] = centres[cells].to(readout.position)
    readout.weight[:, neurons] = fits.weights[cells, :, neurons].T.to(readout.weight)
    readout.bias[neurons] = fits.bias[cells, neurons].to(readout.bias)


@torch.no_grad()
def fit_readout(model: Twin, recording: str, trials: list[Trial]) -> np.ndarray:
    """Set the readout of `recording`'s head (positions, weights, bias): every neuron to the grid
    cell whose pooled features explain its responses best (`_cell_fits`; the head's normalisation
    must be set) → per neuron the fraction of its response variance explained there (N,)."""
    fits = _cell_fits(model, recording, trials)
    best = fits.r2.argmax(0)  # (N,)
    neurons = torch.arange(len(best))
    _place(model, recording, fits, best, neurons)
    return fits.r2[best, neurons].numpy()


@torch.no_grad()
def refit_readout(model: Twin, recording: str, trials: list[Trial], min_gain: float = MIN_GAIN) -> np.ndarray:
    """Move the neurons of `recording`'s readout that sit in the wrong place: a neuron whose best
    cell explains at least `min_gain` more of its response variance than the cell it now reads from
    goes to the best cell with that cell's fit, as in `fit_readout`; the others keep their trained
    position and weights → the moved neurons' mask (N,)."""
    fits = _cell_fits(model, recording, trials)
    r2 = fits.r2  # (G, N)
    position = model.heads[recording].readout.position.detach().cpu().numpy()  # (N, 2)
    now = torch.from_numpy(grid_cells(position, grid_for(model.frame_shape)))  # (N,)
    neurons = torch.arange(r2.shape[1])
    best = r2.argmax(0)
    moved = r2[best, neurons] - r2[now, neurons] >= min_gain
    _place(model, recording, fits, best[moved], neurons[moved])
    return moved.numpy()
