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
sits in its best cell keeps what gradient descent found, finer than a cell. Noisy neurons' readouts
can be lost where no cell fit stands out; for those, the retinotopy of the well-placed readouts
(their positions against their cortical coordinates) says where they belong (`lost_neurons`).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from .cores import core_margin
from .data import Trial
from .model import Twin, screen_share
from .positions import MIN_FIT_NEURONS, MIN_FIT_R2, grid_cells, grid_centres, grid_for, retinotopic_fit

RIDGE = 1e-2  # ridge penalty relative to the mean feature variance of a cell
MIN_GAIN = 0.02  # a refit moves a neuron whose best cell explains this much more of its variance than its own
# A weak neuron further from the retinotopic map than this many times the strong half's median
# distance, and than OFF_MAP_FLOOR (grid_sample units: 3.2 px across a 64-px screen), is lost.
OFF_MAP, OFF_MAP_FLOOR = 4.0, 0.1


def _cell_features(model: Twin, recording: str, trial: Trial,
                   grid: tuple[int, int]) -> tuple[torch.Tensor, np.ndarray]:
    """The core's features of one trial over the screen averaged over each grid cell → (T - offset, G, C),
    float64 (a core's margin beyond the screen, `cores.core_margin`, left out), and how far beyond
    the screen its maps reach, the inverse of `model.screen_share` (x, y) (2,)."""
    features = model.trial_features(recording, trial)[0][0].transpose(0, 1)  # (T', C, H' + 2·margin, W' + 2·margin)
    margin = core_margin(model.core)
    reach = 1 / screen_share(margin, *features.shape[-2:])
    if margin:
        features = features[..., margin:-margin, margin:-margin]  # (T', C, H', W')
    pooled = F.adaptive_avg_pool2d(features, grid)  # (T', C, rows, cols)
    return pooled.flatten(2).transpose(1, 2).double().cpu(), reach


class CellFits(NamedTuple):
    """Per grid cell G the ridge fit of every neuron N on the cell's C pooled features."""

    weights: torch.Tensor  # (G, C, N)
    bias: torch.Tensor  # (G, N)
    r2: torch.Tensor  # (G, N): the fraction of each neuron's response variance the cell explains
    reach: np.ndarray  # (2,): how far beyond ±1 (x, y) the core's maps reach, where a readout may sit


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
        x, reach = _cell_features(model, recording, trial, grid)  # (T', G, C), (2,)
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
    return CellFits(weights, bias, (weights * xy).sum(1) / yy, reach)


def _place(model: Twin, recording: str, fits: CellFits, cells: torch.Tensor, neurons: torch.Tensor,
           positions: np.ndarray | None = None) -> None:
    """Move `neurons` (K,) of `recording`'s readout to the centres of `cells` (K,), or to `positions`
    (K, 2) where given, with those cells' ridge weights and bias. A cell's centre is where on the
    screen the core's cells pooled into it lie: its grid centre less the readout's `offset`."""
    readout = model.heads[recording].readout
    if positions is None:
        positions = grid_centres(grid_for(model.frame_shape))[cells.numpy()] - readout.offset.cpu().numpy()
    readout.position[neurons] = torch.from_numpy(positions).to(readout.position)
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


def lost_neurons(position: np.ndarray, coordinates: np.ndarray, strength: np.ndarray,
                 reach=(1.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Readouts that the retinotopy of the well-placed ones says are lost: an affine map from the
    neurons' cortical coordinates (N, ≥2) to their positions (N, 2), fitted on the stronger half by
    `strength` (N,) (`positions.retinotopic_fit`). A neuron of the weaker half further from the map
    than `OFF_MAP` times the stronger half's median distance, and than `OFF_MAP_FLOOR`, is lost
    → (the map's positions (N, 2) clipped to ±`reach` (x, y): the screen, or as far beyond it as a
    core's maps reach (`CellFits.reach`); the lost neurons' mask (N,)). None is lost where the map
    explains the positions poorly (R² < `MIN_FIT_R2`: a mouse without retinotopy) or where there are
    too few neurons to fit one."""
    reach = np.asarray(reach)
    if len(position) < MIN_FIT_NEURONS:
        return np.clip(position, -reach, reach).astype(np.float32), np.zeros(len(position), bool)
    fitted, r2 = retinotopic_fit(coordinates, position, strength)
    distance = np.linalg.norm(position - fitted, axis=1)
    strong = strength >= np.median(strength)
    far = distance > max(OFF_MAP * np.median(distance[strong]), OFF_MAP_FLOOR)
    lost = far & ~strong & (r2 >= MIN_FIT_R2)
    return np.clip(fitted, -reach, reach).astype(np.float32), lost


@torch.no_grad()
def refit_readout(model: Twin, recording: str, trials: list[Trial], min_gain: float = MIN_GAIN,
                  coordinates: np.ndarray | None = None) -> np.ndarray:
    """Move the neurons of `recording`'s readout that sit in the wrong place: a neuron whose best
    cell explains at least `min_gain` more of its response variance than the cell it now reads from
    goes to the best cell with that cell's fit, as in `fit_readout`. Then, given the neurons'
    cortical coordinates (N, ≥2), a neuron that the retinotopy of the others finds lost
    (`lost_neurons`, strength: the variance its cell explains) goes where that map puts it, with its
    cell's fit. The others keep their trained position and weights → the moved neurons' mask (N,)."""
    fits = _cell_fits(model, recording, trials)
    r2 = fits.r2  # (G, N)
    readout, grid = model.heads[recording].readout, grid_for(model.frame_shape)
    offset = readout.offset.cpu().numpy()  # a position's pooled cell is the one holding it plus the offset (`_place`)
    now = torch.from_numpy(grid_cells(readout.position.detach().cpu().numpy() + offset, grid))  # (N,)
    neurons = torch.arange(r2.shape[1])
    best = r2.argmax(0)
    moved = r2[best, neurons] - r2[now, neurons] >= min_gain
    _place(model, recording, fits, best[moved], neurons[moved])
    if coordinates is not None:
        now = torch.where(moved, best, now)
        fitted, lost = lost_neurons(readout.position.detach().cpu().numpy(), coordinates, r2[now, neurons].numpy(),
                                    fits.reach)
        cells = torch.from_numpy(grid_cells(fitted[lost] + offset, grid))
        _place(model, recording, fits, cells, neurons[torch.from_numpy(lost)], fitted[lost])
        moved |= torch.from_numpy(lost)
    return moved.numpy()
