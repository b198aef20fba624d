"""A new recording's readout fitted in closed form on a trained core's features (transfer).

A trained core already computes what the neurons respond to, so each neuron's response is close to
a linear function of the core's features at its receptive field. Per cell of a coarse grid, one
ridge regression of every neuron's scaled response on the features pooled over that cell; each
neuron starts at the cell that explains most of its variance, with that cell's channel weights and
bias. Gradient descent then refines a readout that already predicts, instead of first searching
for positions from the energy-map estimate that a core without training needs (`positions.py`).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .data import Trial
from .model import Twin
from .positions import grid_centres, grid_for

RIDGE = 1e-2  # ridge penalty relative to the mean feature variance of a cell


def _cell_features(model: Twin, recording: str, trial: Trial, grid: tuple[int, int]) -> torch.Tensor:
    """The core's features of one trial averaged over each grid cell → (T - offset, G, C), float64."""
    device = next(model.parameters()).device
    inputs = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None].to(device)
              for a in (trial.video, trial.behavior, trial.pupil_center)]
    core_input, _, _ = model.core_input(recording, *inputs)
    features = model.core(core_input)[0].transpose(0, 1)  # (T', C, H', W')
    pooled = F.adaptive_avg_pool2d(features, grid)  # (T', C, rows, cols)
    return pooled.flatten(2).transpose(1, 2).double().cpu()


@torch.no_grad()
def fit_readout(model: Twin, recording: str, trials: list[Trial]) -> np.ndarray:
    """Set the readout of `recording`'s head (positions, weights, bias) by ridge regression of its
    responses (in units of the head's response scale, so the head's normalisation must be set) on
    the core's features of `trials` → per neuron the variance explained at its cell (N,)."""
    head = model.heads[recording]
    grid = grid_for(model.frame_shape)
    was_training = model.training
    model.eval()  # the core's normalisation statistics stay as they are
    frames, sum_x, sum_y, xx, xy = 0, 0.0, 0.0, 0.0, 0.0
    scale = head.response_scale.double().cpu()
    for trial in trials:
        x = _cell_features(model, recording, trial, grid)  # (T', G, C)
        y = torch.from_numpy(np.nan_to_num(trial.responses[model.offset:])).double() / scale  # (T', N)
        frames += len(x)
        sum_x, sum_y = sum_x + x.sum(0), sum_y + y.sum(0)
        xx = xx + torch.einsum("tgc,tgd->gcd", x, x)
        xy = xy + torch.einsum("tgc,tn->gcn", x, y)
    model.train(was_training)
    mean_x, mean_y = sum_x / frames, sum_y / frames  # (G, C), (N,)
    xx = xx - frames * mean_x[:, :, None] * mean_x[:, None, :]  # centred (G, C, C)
    xy = xy - frames * mean_x[:, :, None] * mean_y[None, None, :]  # centred (G, C, N)
    channels = xx.shape[-1]
    penalty = RIDGE * torch.diagonal(xx, dim1=1, dim2=2).mean(1).clamp_min(1e-12)  # (G,)
    weights = torch.linalg.solve(xx + penalty[:, None, None] * torch.eye(channels, dtype=xx.dtype), xy)  # (G, C, N)
    explained = (weights * xy).sum(1)  # (G, N)
    best = explained.argmax(0)  # (N,)
    neurons = torch.arange(len(best))
    weight = weights[best, :, neurons]  # (N, C)
    # elu(drive) + 1 is the rate: a linear fit of the rate is a fit of the drive plus one.
    bias = mean_y - 1 - (mean_x[best] * weight).sum(1)
    readout = head.readout
    readout.position.copy_(torch.from_numpy(grid_centres(grid)[best.numpy()]).to(readout.position))
    readout.weight.copy_(weight.T.to(readout.weight))
    readout.bias.copy_(bias.to(readout.bias))
    return explained[best, neurons].numpy() / frames
