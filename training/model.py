"""The twin: a causal factorized 3D-conv core shared by all recordings, one head per recording.

Shapes: B batch, T input frames, H×W pixels (36×64), C feature channels, N neurons of a recording,
R = receptive field in frames; a clip of T frames gives T' = T - R + 1 output frames, output frame
j predicting the responses at input frame j + R - 1 (causal: it sees only frames ≤ that one).

All normalisation lives in the model: it takes raw pixels and raw behaviour and returns responses in
the recording's raw units, so an exported graph needs no client-side preprocessing.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .transformer import TransformerCore

BEHAVIOR_CHANNELS = 2  # pupil size, running speed


class FactorizedLayer(nn.Module):
    """Spatial 1×k×k conv, temporal kt×1×1 conv (valid in time), BatchNorm, ELU.

    (B, C_in, T, H, W) → (B, C_out, T - kt + 1, H / stride, W / stride)
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_kernel: int, temporal_kernel: int, stride: int):
        super().__init__()
        self.spatial = nn.Conv3d(in_channels, out_channels, (1, spatial_kernel, spatial_kernel),
                                 stride=(1, stride, stride), padding=(0, spatial_kernel // 2, spatial_kernel // 2),
                                 bias=False)
        self.temporal = nn.Conv3d(out_channels, out_channels, (temporal_kernel, 1, 1), bias=False)
        self.norm = nn.BatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.norm(self.temporal(self.spatial(x))))


class FactorizedCore(nn.Module):
    """Stack of `FactorizedLayer`s: (B, C_in, T, H, W) → (B, C, T - R + 1, H', W')."""

    def __init__(self, in_channels: int, channels, spatial_kernels, temporal_kernels, first_stride: int = 1):
        super().__init__()
        sizes = [in_channels, *channels]
        self.layers = nn.Sequential(*[
            FactorizedLayer(sizes[i], sizes[i + 1], spatial_kernels[i], temporal_kernels[i],
                            first_stride if i == 0 else 1)
            for i in range(len(channels))])
        self.receptive_field = 1 + sum(k - 1 for k in temporal_kernels)
        self.out_channels = sizes[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class GaussianReadout(nn.Module):
    """Per neuron a learned position on the feature map, read by bilinear sampling, then a weighted
    sum over channels plus a bias.

    Positions are in grid_sample coordinates: x (column) and y (row) in [-1, 1]. During training the
    read position is jittered by a learned Gaussian (neuralpredictors' Gaussian readout).
    features (B, C, T, H', W'), shift (B, T, 2) → (B, T, N)
    """

    def __init__(self, channels: int, neurons: int):
        super().__init__()
        self.position = nn.Parameter(torch.zeros(neurons, 2))
        self.log_sigma = nn.Parameter(torch.full((neurons, 2), float(np.log(0.1))))
        self.weight = nn.Parameter(torch.full((channels, neurons), 1.0 / channels))
        self.bias = nn.Parameter(torch.zeros(neurons))

    def forward(self, features: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = features.shape
        position = self.position
        if self.training:
            position = position + torch.randn_like(position) * self.log_sigma.exp()
        grid = (position[None] + shift.reshape(batch * frames, 1, 2)).clamp(-1, 1)  # (B·T, N, 2)
        flat = features.transpose(1, 2).reshape(batch * frames, channels, height, width)
        sampled = F.grid_sample(flat, grid[:, None], align_corners=False, padding_mode="border").squeeze(2)  # (B·T, C, N)
        # Multiply and sum rather than einsum: ONNX Runtime's Einsum is ~2.5× slower here.
        out = (sampled * self.weight).sum(1) + self.bias
        return out.reshape(batch, frames, -1)


class Head(nn.Module):
    """Everything specific to one recording: input normalisation, pupil-position shifter, Gaussian
    readout, behavioural gain modulator and the output scale of its neurons."""

    def __init__(self, channels: int, neurons: int):
        super().__init__()
        for name, size in [("video_mean", ()), ("video_std", ()), ("behavior_mean", (2,)), ("behavior_std", (2,)),
                           ("pupil_mean", (2,)), ("pupil_std", (2,)), ("response_scale", (neurons,))]:
            self.register_buffer(name, torch.ones(size) if "std" in name or "scale" in name else torch.zeros(size))
        self.shifter = nn.Sequential(nn.Linear(2, 5), nn.Tanh(), nn.Linear(5, 2), nn.Tanh())
        nn.init.zeros_(self.shifter[2].weight)
        nn.init.zeros_(self.shifter[2].bias)
        self.readout = GaussianReadout(channels, neurons)
        self.modulator = nn.Linear(BEHAVIOR_CHANNELS, neurons)
        nn.init.zeros_(self.modulator.weight)
        nn.init.zeros_(self.modulator.bias)

    def initialize(self, statistics: dict, positions: np.ndarray | None = None) -> None:
        """Set normalisation from the recording's statistics and the readout from the data.

        statistics: `Recording.statistics`; positions (N, 2) in [-1, 1] grid coordinates.
        Responses are scaled by their standard deviation (floored at 1% of the mean), and the
        readout bias starts at each neuron's mean scaled response.
        """
        def tensor(value):
            return torch.as_tensor(np.asarray(value, dtype=np.float32))

        std = statistics["responses"]["std"]
        scale = np.maximum(std, 0.01 * std.mean())
        self.video_mean.copy_(tensor(statistics["videos"]["mean"]))
        self.video_std.copy_(tensor(max(statistics["videos"]["std"], 1e-3)))
        for key, prefix in [("behavior", "behavior"), ("pupil_center", "pupil")]:
            getattr(self, f"{prefix}_mean").copy_(tensor(statistics[key]["mean"]))
            getattr(self, f"{prefix}_std").copy_(tensor(np.maximum(statistics[key]["std"], 1e-3)))
        self.response_scale.copy_(tensor(scale))
        mean_rate = np.clip(statistics["responses"]["mean"] / scale, 1e-3, None)
        with torch.no_grad():
            self.readout.bias.copy_(tensor(np.where(mean_rate >= 1, mean_rate - 1, np.log(mean_rate))))
            if positions is not None:
                self.readout.position.copy_(tensor(positions))

    def normalize(self, video, behavior, pupil_center):
        """Raw inputs → standardised: video (B, T, H, W), behavior (B, T, 2), pupil_center (B, T, 2)."""
        return ((video - self.video_mean) / self.video_std,
                (behavior - self.behavior_mean) / self.behavior_std,
                (pupil_center - self.pupil_mean) / self.pupil_std)

    def forward(self, features: torch.Tensor, behavior: torch.Tensor, pupil_center: torch.Tensor) -> torch.Tensor:
        """Core features (B, C, T', H', W') and normalised behaviour and pupil centre (B, T', 2) of the
        same output frames → positive rates in units of `response_scale`, (B, T', N)."""
        drive = self.readout(features, self.shifter(pupil_center))
        return (F.elu(drive) + 1) * torch.exp(self.modulator(behavior))


class Twin(nn.Module):
    """Shared causal core (convolutional, or a transformer where the config says `core="transformer"`)
    + one `Head` per recording.

    config: a `PRESETS` entry; neurons: recording name → neuron count.
    """

    def __init__(self, config: dict, neurons: dict[str, int]):
        super().__init__()
        self.config = dict(config)
        settings = {k: v for k, v in config.items() if k != "core"}
        if config.get("core", "convolution") == "transformer":
            self.core = TransformerCore(1 + BEHAVIOR_CHANNELS, **settings)
        else:
            self.core = FactorizedCore(1 + BEHAVIOR_CHANNELS, **settings)
        self.heads = nn.ModuleDict({name: Head(self.core.out_channels, n) for name, n in neurons.items()})

    @property
    def receptive_field(self) -> int:
        return self.core.receptive_field

    def rates(self, recording: str, video: torch.Tensor, behavior: torch.Tensor,
              pupil_center: torch.Tensor) -> torch.Tensor:
        """Raw video (B, T, H, W), behavior (B, T, 2), pupil_center (B, T, 2) → rates (B, T', N) in
        units of the recording's response scale (the scale the Poisson loss works in)."""
        if recording not in self.heads:
            raise KeyError(f"unknown recording {recording!r}; this twin knows {sorted(self.heads)}")
        if video.shape[1] < self.receptive_field:
            raise ValueError(f"need at least {self.receptive_field} frames, got {video.shape[1]}")
        core_input, behavior, pupil_center = self.core_input(recording, video, behavior, pupil_center)
        features = self.core(core_input)
        start = self.receptive_field - 1
        return self.heads[recording](features, behavior[:, start:], pupil_center[:, start:])

    def core_input(self, recording: str, video: torch.Tensor, behavior: torch.Tensor, pupil_center: torch.Tensor):
        """Raw inputs as in `rates` → (core input (B, 3, T, H, W): normalised video and behaviour maps,
        normalised behavior (B, T, 2), normalised pupil_center (B, T, 2))."""
        video, behavior, pupil_center = self.heads[recording].normalize(video, behavior, pupil_center)
        height, width = video.shape[-2:]
        behavior_maps = behavior.transpose(1, 2)[..., None, None].expand(-1, -1, -1, height, width)
        return torch.cat([video[:, None], behavior_maps], dim=1), behavior, pupil_center

    def forward(self, recording: str, video: torch.Tensor, behavior: torch.Tensor,
                pupil_center: torch.Tensor) -> torch.Tensor:
        """Raw inputs as in `rates` → predicted responses (B, T', N) in the recording's raw units."""
        return self.rates(recording, video, behavior, pupil_center) * self.heads[recording].response_scale
