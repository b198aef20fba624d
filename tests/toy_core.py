"""A toy core defined only in the tests, to show that a new core needs no change to export, serving or
clients: one module (this one) and one registry entry (`register`).

It has unbounded memory, like a recurrent core: every output frame sees the running mean of all the
frames before it, so its receptive field is None and its clip graph answers every input frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from twinserve.training.cores import register_core
from twinserve.training.presets import PRESETS, Preset, TrainConfig, register_preset

NAME, PRESET = "running-mean", "toy-running-mean"


class RunningMeanCore(nn.Module):
    """Per frame a strided 3×3 convolution with ELU, beside the running mean of those maps over all
    frames so far: (B, C_in, T, H, W) → (B, 2·C, T, H/2, W/2)."""

    receptive_field = None  # unbounded memory

    def __init__(self, in_channels: int, frame_shape: tuple[int, int], channels: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, channels, 3, stride=2, padding=1)
        self.out_channels = 2 * channels

    def maps(self, x: torch.Tensor) -> torch.Tensor:
        """Frames (N, C_in, H, W) → maps (N, C, H/2, W/2)."""
        return F.elu(self.conv(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        maps = self.maps(x.transpose(1, 2).reshape(batch * frames, channels, height, width))
        maps = maps.reshape(batch, frames, *maps.shape[1:])  # (B, T, C, H', W')
        count = torch.arange(1, frames + 1, dtype=x.dtype, device=x.device).reshape(1, frames, 1, 1, 1)
        return torch.cat([maps, maps.cumsum(1) / count], 2).transpose(1, 2)

    def map_shape(self, frame_shape: tuple[int, int]) -> tuple[int, int, int]:
        return (self.conv.out_channels, *((size + 1) // 2 for size in frame_shape))

    def state_shapes(self, frame_shape: tuple[int, int]) -> list[tuple[int, ...]]:
        """The running sum of the maps (C, H/2, W/2) and the frame count (1,)."""
        return [self.map_shape(frame_shape), (1,)]

    def stepper(self) -> nn.Module:
        return RunningMeanStep(self)

    def flops(self, frame_shape: tuple[int, int], frames: int) -> float:
        return frames * self.step_flops(frame_shape)

    def step_flops(self, frame_shape: tuple[int, int]) -> float:
        channels, rows, cols = self.map_shape(frame_shape)
        return 2.0 * rows * cols * channels * self.conv.in_channels * 9


class RunningMeanStep(nn.Module):
    """One frame x (B, C_in, H, W), running sum (B, C, H', W'), count (B, 1) → features, next sum, next count."""

    def __init__(self, core: RunningMeanCore):
        super().__init__()
        self.core = core

    def forward(self, x: torch.Tensor, total: torch.Tensor, count: torch.Tensor):
        maps = self.core.maps(x)
        total, count = total + maps, count + 1
        return torch.cat([maps, total / count[:, :, None, None]], 1), total, count


def register() -> str:
    """Register the core and a preset for it (once per process) → the preset's name."""
    if PRESET not in PRESETS:
        register_core(NAME, RunningMeanCore)
        register_preset(PRESET, Preset(NAME, {"channels": 4}, TrainConfig(clips=2, frames=16, lr=1e-2, minutes=2.0,
                                                                           steps=40, eval_every=20, val_trials=4)))
    return PRESET
