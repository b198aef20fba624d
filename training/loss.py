"""The training loss: Poisson negative log-likelihood of the recorded responses given predicted rates,
and the readout's L1 penalty.

Real ΔF/F-like traces dip below zero, where a Poisson likelihood is undefined: the term
-target·log(rate) then rewards rates → 0 without bound but for the 1e-8 offset (a gradient of
|target| / 1e-8 at the bottom). Targets are therefore clamped at 0 for the Poisson term: a negative
value counts as "no activity", so the loss is finite and bounded below for every finite target,
and recordings without negative values train exactly as before.
"""

from __future__ import annotations

import torch

EPS = 1e-8


def poisson_loss(rates: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean Poisson negative log-likelihood (up to a constant) of rates (B, T, N) given targets (B, T, N).

    NaN targets are ignored (not counted in the mean); negative targets are clamped at 0. Per
    element the loss is rate - t·log(rate + 1e-8) with t = max(target, 0), at least t - t·log(t) - 1e-8.
    """
    valid = torch.isfinite(targets)
    targets = torch.where(valid, targets, torch.zeros_like(targets)).clamp(min=0)
    loss = rates - targets * torch.log(rates + EPS)
    return (loss * valid).sum() / valid.sum().clamp(min=1)


def readout_l1(head) -> torch.Tensor:
    """Mean over a head's neurons of the L1 norm of its readout channel weights: favours neurons that
    read few feature channels (neuralpredictors' feature regulariser)."""
    return head.readout.weight.abs().sum(0).mean()
