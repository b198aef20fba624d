"""An fnn-style core (paper 003, Methods; cajal/fnn): behaviour modulation by a small LSTM, a causal
3D-conv feed-forward stage, and a Conv-LSTM recurrent core.

Shapes: B batch, C_in input channels (the video, then `BEHAVIOR_CHANNELS` spatially constant
behaviour maps, as `Twin.core_input` lays them out), T frames, H×W pixels of a frame, H'×W' =
(H / first_stride, W / first_stride) the feature maps, C = `hidden` Conv-LSTM channels, M = the
modulation LSTM's width.

- Modulation: per frame the behaviour vector (pupil size, running speed) → tanh(linear) → an LSTM
  of width M; its hidden vector, tiled over space, is the modulation input of the recurrent core.
- Feed-forward: 3D convolutions kt×k×k + BatchNorm + GELU, shifted in time so that an output sees
  only its frame and the kt - 1 before it (zero frames before the clip); a small kt keeps the streamed
  state (the last kt - 1 inputs of every layer) small. A plain stack, not the paper's DenseNet blocks.
- Recurrent: a Conv-LSTM whose input is tanh(1×1 conv of the feed-forward features + linear map of
  the modulation), gates from a k×k convolution of [input, hidden]; the hidden map is the feature map.

The core is causal and answers every frame (receptive field None); a clip starts from zero states,
as a stream does. The paper's perspective module (ray tracing from pupil position) is left out: the
core's input holds no pupil position (`Twin.core_input` passes video and behaviour only), and every
recording's head already moves the core's input frames (or, in older twins, its readouts) by the pupil
position (`Head.retina`).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from twinserve.contract import BEHAVIOR_CHANNELS

from .recurrence import over_time

INPUT_GATE_BIAS, FORGET_GATE_BIAS = -1.0, 1.0  # fnn's initial gate biases: remember, admit little at first


def lstm_update(gates: torch.Tensor, cell: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """LSTM pointwise update: gates (B, 4C, ...) in the order input, forget, candidate, output and
    cell (B, C, ...) → (hidden, cell), each (B, C, ...)."""
    i, f, g, o = gates.chunk(4, 1)
    cell = torch.sigmoid(f) * cell + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(cell), cell


def _init_gate_bias(bias: torch.Tensor) -> None:
    with torch.no_grad():
        bias.zero_()
        i, f, _, _ = bias.chunk(4)
        i.fill_(INPUT_GATE_BIAS)
        f.fill_(FORGET_GATE_BIAS)


class CausalConvLayer(nn.Module):
    """Conv3d kt×k×k (valid in time, 'same' in space, stride s in space), BatchNorm, GELU.

    forward: a window (N, C_in, kt, H, W) → (N, C_out, 1, H / s, W / s);
    clip: (B, C_in, T, H, W) → (B, C_out, T, H / s, W / s), kt - 1 zero frames before the clip.
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_kernel: int, temporal_kernel: int, stride: int):
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, (temporal_kernel, spatial_kernel, spatial_kernel),
                              stride=(1, stride, stride), padding=(0, spatial_kernel // 2, spatial_kernel // 2),
                              bias=False)
        self.norm = nn.BatchNorm3d(out_channels)
        self.taps = temporal_kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.norm(self.conv(x)))

    def clip(self, x: torch.Tensor) -> torch.Tensor:
        return self(F.pad(x, (0, 0, 0, 0, self.taps - 1, 0)))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        (_, kh, kw), (_, sh, sw), (_, ph, pw) = self.conv.kernel_size, self.conv.stride, self.conv.padding
        return (height + 2 * ph - kh) // sh + 1, (width + 2 * pw - kw) // sw + 1


class Modulation(nn.Module):
    """behaviour (B, 2), hidden and cell (B, M) → next hidden (the modulation vector) and cell, (B, M) each."""

    def __init__(self, width: int):
        super().__init__()
        self.input = nn.Linear(BEHAVIOR_CHANNELS, width)
        self.gates = nn.Linear(2 * width, 4 * width)
        _init_gate_bias(self.gates.bias)

    def forward(self, behavior: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor):
        x = torch.tanh(self.input(behavior))
        return lstm_update(self.gates(torch.cat([x, hidden], 1)), cell)

    def flops(self) -> int:
        return 2 * (self.input.weight.numel() + self.gates.weight.numel())


class ConvLSTMCell(nn.Module):
    """Conv-LSTM: drive (B, I, H', W') (the 1×1 conv of the feed-forward features, see `drive`),
    modulation (B, M), hidden and cell (B, C, H', W') → next hidden and cell."""

    def __init__(self, features: int, modulation: int, inputs: int, hidden: int, kernel: int):
        super().__init__()
        self.input = nn.Conv2d(features, inputs, 1)
        self.modulation = nn.Linear(modulation, inputs, bias=False)
        self.gates = nn.Conv2d(inputs + hidden, 4 * hidden, kernel, padding=kernel // 2)
        _init_gate_bias(self.gates.bias)

    def drive(self, features: torch.Tensor) -> torch.Tensor:
        """Feed-forward features (N, C_ff, H', W') → (N, I, H', W')."""
        return self.input(features)

    def forward(self, drive: torch.Tensor, modulation: torch.Tensor, hidden: torch.Tensor, cell: torch.Tensor):
        x = torch.tanh(drive + self.modulation(modulation)[:, :, None, None])
        return lstm_update(self.gates(torch.cat([x, hidden], 1)), cell)

    def flops(self, positions: int) -> int:
        return 2 * (positions * (self.input.weight.numel() + self.gates.weight.numel()) + self.modulation.weight.numel())


class FnnCore(nn.Module):
    """Modulation LSTM + causal 3D convs → Conv-LSTM: (B, C_in, T, H, W) → (B, C, T, H', W').

    channels, spatial_kernels, temporal_kernels: the feed-forward layers (the first strides by
    `first_stride`; temporal kernels ≥ 2); modulation: M; hidden: C; lstm_kernel: the gates' k×k;
    lstm_inputs: I, the recurrent cell's input channels (default C).
    """

    receptive_field = None  # unbounded memory: the LSTMs carry every past frame

    def __init__(self, in_channels: int, frame_shape: tuple[int, int], channels, spatial_kernels, temporal_kernels,
                 hidden: int, modulation: int = 8, lstm_kernel: int = 3, lstm_inputs: int | None = None,
                 first_stride: int = 2):
        super().__init__()
        if not len(channels) == len(spatial_kernels) == len(temporal_kernels) or not channels:
            raise ValueError(f"need one spatial and one temporal kernel per layer, got channels {channels}, "
                             f"spatial_kernels {spatial_kernels}, temporal_kernels {temporal_kernels}")
        if min(temporal_kernels) < 2:
            raise ValueError(f"temporal kernels must be at least 2 (a 3D stage), got {temporal_kernels}")
        if any(k % 2 == 0 for k in (*spatial_kernels, lstm_kernel)):
            raise ValueError(f"spatial kernels must be odd ('same' padding), got {spatial_kernels}, {lstm_kernel}")
        self.visual = in_channels - BEHAVIOR_CHANNELS
        if self.visual < 1:
            raise ValueError(f"need the video and {BEHAVIOR_CHANNELS} behaviour channels, got {in_channels} channels")
        sizes = [self.visual, *channels]
        self.feedforward = nn.ModuleList(
            CausalConvLayer(sizes[i], sizes[i + 1], spatial_kernels[i], temporal_kernels[i],
                            first_stride if i == 0 else 1) for i in range(len(channels)))
        self.modulation = Modulation(modulation)
        self.recurrent = ConvLSTMCell(sizes[-1], modulation, lstm_inputs or hidden, hidden, lstm_kernel)
        self.out_channels, self.modulation_width = hidden, modulation
        self.cell_stride = first_stride  # padded by k // 2: cell j sits on pixel S·j (`cores.cell_offset`)

    def split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Core input (B, C_in, ...) → (video channels (B, C_in - 2, ...), behaviour (B, 2, ...) as the
        mean of each constant behaviour map over space)."""
        return x[:, :self.visual], x[:, self.visual:].mean((-2, -1))

    def cell(self, states: tuple[torch.Tensor, ...], inputs: tuple[torch.Tensor, ...]):
        """One frame's recurrence: states (modulation hidden, cell (B, M); hidden, cell (B, C, H', W')),
        inputs (drive (B, I, H', W'), behaviour (B, 2)) → (features (B, C, H', W'), next states)."""
        mod_hidden, mod_cell, hidden, cell = states
        drive, behavior = inputs
        mod_hidden, mod_cell = self.modulation(behavior, mod_hidden, mod_cell)
        hidden, cell = self.recurrent(drive, mod_hidden, hidden, cell)
        return hidden, (mod_hidden, mod_cell, hidden, cell)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        video, behavior = self.split(x)
        for layer in self.feedforward:
            video = layer.clip(video)
        batch, channels, frames, height, width = video.shape
        drive = self.recurrent.drive(video.transpose(1, 2).reshape(batch * frames, channels, height, width))
        drive = drive.reshape(batch, frames, *drive.shape[1:]).transpose(0, 1)  # (T, B, I, H', W')
        states = [behavior.new_zeros(batch, *shape) for shape in self.recurrent_shapes((height, width))]
        outputs, _ = over_time(self.cell, tuple(states), (drive, behavior.permute(2, 0, 1)))
        return outputs.permute(1, 2, 0, 3, 4)

    def _sizes(self, frame_shape: tuple[int, int]) -> list[tuple[int, int]]:
        """(H, W) at the input of every feed-forward layer, then (H', W') of the feature maps."""
        sizes = [tuple(frame_shape)]
        for layer in self.feedforward:
            sizes.append(layer.output_size(*sizes[-1]))
        return sizes

    def recurrent_shapes(self, map_size: tuple[int, int]) -> list[tuple[int, ...]]:
        """The modulation LSTM's hidden and cell (M,), the Conv-LSTM's hidden and cell (C, H', W')."""
        width, hidden = self.modulation_width, self.out_channels
        return [(width,), (width,), (hidden, *map_size), (hidden, *map_size)]

    def state_shapes(self, frame_shape: tuple[int, int]) -> list[tuple[int, ...]]:
        """Per feed-forward layer its last kt - 1 inputs (C_l, kt_l - 1, H_l, W_l); then the modulation
        LSTM's hidden and cell (M,) and the Conv-LSTM's hidden and cell (C, H', W'); batch left out."""
        sizes = self._sizes(frame_shape)
        buffers = [(layer.conv.in_channels, layer.taps - 1, *size) for layer, size in zip(self.feedforward, sizes)]
        return buffers + self.recurrent_shapes(sizes[-1])

    def stepper(self) -> FnnStep:
        """The core for one frame with its memory as explicit state (a copy in eval mode)."""
        return FnnStep(self)

    def step_flops(self, frame_shape: tuple[int, int]) -> float:
        """FLOPs of one frame: the feed-forward convolutions, the Conv-LSTM and the modulation LSTM
        (pointwise gate work left out)."""
        sizes = self._sizes(frame_shape)
        total = sum(2 * out[0] * out[1] * layer.conv.out_channels * layer.conv.weight[0].numel()
                    for layer, out in zip(self.feedforward, sizes[1:]))
        return float(total + self.recurrent.flops(sizes[-1][0] * sizes[-1][1]) + self.modulation.flops())

    def flops(self, frame_shape: tuple[int, int], frames: int) -> float:
        """FLOPs of a clip: every frame costs one step."""
        return frames * self.step_flops(frame_shape)


class FnnStep(nn.Module):
    """One frame x (B, C_in, H, W) and the states of `FnnCore.state_shapes` (with batch) → features
    (B, C, H', W'), next states (same shapes)."""

    def __init__(self, core: FnnCore):
        super().__init__()
        self.core = copy.deepcopy(core).eval()

    def forward(self, x: torch.Tensor, *states: torch.Tensor):
        layers = self.core.feedforward
        buffers, recurrent = states[:len(layers)], states[len(layers):]
        video, behavior = self.core.split(x)
        next_buffers = []
        for layer, buffer in zip(layers, buffers):
            window = torch.cat([buffer, video[:, :, None]], 2)  # (B, C_l, kt, H_l, W_l)
            next_buffers.append(window[:, :, 1:])
            video = layer(window)[:, :, 0]
        features, next_recurrent = self.core.cell(tuple(recurrent), (self.core.recurrent.drive(video), behavior))
        return (features, *next_buffers, *next_recurrent)
