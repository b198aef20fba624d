"""The SENSORIUM 2023 GRU baseline core: a 2D CNN applied to every frame on its own, then a
convolutional GRU over time (paper 000, sec. 5 and appendix A.4; Sinz et al. 2018).

Shapes: B batch, C_in input channels (video + behaviour maps), T frames, H×W pixels of a frame,
H'×W' = (H / first_stride, W / first_stride) the feature maps, C = `hidden` GRU channels.
The core is causal and answers every input frame (receptive field None: its memory is the hidden
map, unbounded); a clip starts from a zero hidden map, as a stream does. A streamed frame's state
is that hidden map, (C, H', W').

The baseline's CNN is rotation-equivariant (4 layers, 8 channels × 8 rotations, 9×9 then 7×7);
here it is a plain Conv2d + BatchNorm + ELU stack. Its GRU has 64 channels and 9×9 input and
recurrent kernels (`gru-base`); here it runs at half the frame's resolution (`first_stride` 2).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .gabor import gabor_init_
from .recurrence import over_time


def _conv_flops(conv: nn.Conv2d, positions: int) -> int:
    """FLOPs (2 × multiply-adds) of a 2D convolution producing `positions` output pixels."""
    return 2 * positions * conv.out_channels * conv.weight[0].numel()


class FrameLayer(nn.Module):
    """Conv2d (k×k, 'same' padding), BatchNorm, ELU: (N, C_in, H, W) → (N, C_out, H / stride, W / stride)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=kernel // 2, bias=False)
        self.norm = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.norm(self.conv(x)))


class ConvGRUCell(nn.Module):
    """A convolutional GRU in the form of `torch.nn.GRU` (and cuDNN): one k×k convolution of the input
    and one of the hidden map give the reset and update gates and the candidate's two parts.

        r, u = σ(W_r ∗ x + U_r ∗ h),  n = tanh(W_n ∗ x + r ⊙ (U_n ∗ h)),  h' = h + u ⊙ (n - h)

    drive = W ∗ x (B, 3C, H', W'), computed for all frames at once by `drive`; h (B, C, H', W').
    """

    def __init__(self, in_channels: int, hidden: int, kernel: int):
        super().__init__()
        self.input = nn.Conv2d(in_channels, 3 * hidden, kernel, padding=kernel // 2)
        self.recurrent = nn.Conv2d(hidden, 3 * hidden, kernel, padding=kernel // 2)

    def drive(self, x: torch.Tensor) -> torch.Tensor:
        """Frames (N, C_in, H', W') → their input convolutions (N, 3C, H', W')."""
        return self.input(x)

    def forward(self, drive: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """One frame's drive (B, 3C, H', W') and hidden map (B, C, H', W') → next hidden map."""
        x_reset, x_update, x_new = drive.chunk(3, 1)
        h_reset, h_update, h_new = self.recurrent(hidden).chunk(3, 1)
        reset, update = torch.sigmoid(x_reset + h_reset), torch.sigmoid(x_update + h_update)
        new = torch.tanh(x_new + reset * h_new)
        return hidden + update * (new - hidden)

    def flops(self, positions: int) -> int:
        return _conv_flops(self.input, positions) + _conv_flops(self.recurrent, positions)


class GRUCore(nn.Module):
    """Per-frame CNN → ConvGRU: (B, C_in, T, H, W) → (B, C, T, H', W'), causal, zero initial state.

    channels, kernels: the CNN's layers (output channels and k×k kernel of each; the first layer
    strides by `first_stride`); hidden: the GRU's channels C; gru_kernel: its input and recurrent k×k.
    """

    receptive_field = None  # unbounded memory: the hidden map carries every past frame

    def __init__(self, in_channels: int, frame_shape: tuple[int, int], channels, kernels, hidden: int,
                 gru_kernel: int = 9, first_stride: int = 2):
        super().__init__()
        if len(channels) != len(kernels) or not channels:
            raise ValueError(f"need one kernel per CNN layer, got channels {channels} and kernels {kernels}")
        if any(k % 2 == 0 for k in (*kernels, gru_kernel)):
            raise ValueError(f"kernels must be odd ('same' padding), got {kernels} and gru_kernel {gru_kernel}")
        sizes = [in_channels, *channels]
        self.cnn = nn.Sequential(*[FrameLayer(sizes[i], sizes[i + 1], kernels[i], first_stride if i == 0 else 1)
                                   for i in range(len(channels))])
        gabor_init_(self.cnn[0].conv.weight)  # the video's first filters start as Gabors (`gabor`)
        self.gru = ConvGRUCell(sizes[-1], hidden, gru_kernel)
        self.out_channels = hidden
        self.cell_stride = first_stride  # padded by k // 2: cell j sits on pixel S·j (`cores.cell_offset`)

    def map_size(self, frame_shape: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of a frame → (H', W') of the feature maps (the first layer's conv arithmetic)."""
        conv = self.cnn[0].conv
        return tuple((size + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
                     for size in frame_shape)

    def drive(self, frames: torch.Tensor) -> torch.Tensor:
        """Frames (N, C_in, H, W) → the GRU's input drive (N, 3C, H', W')."""
        return self.gru.drive(self.cnn(frames))

    def cell(self, states: tuple[torch.Tensor], inputs: tuple[torch.Tensor]):
        """One frame's recurrence: states (hidden (B, C, H', W'),), inputs (drive (B, 3C, H', W'),)
        → (features = the next hidden map, (next hidden map,))."""
        hidden = self.gru(inputs[0], states[0])
        return hidden, (hidden,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        drive = self.drive(x.transpose(1, 2).reshape(batch * frames, channels, height, width))
        drive = drive.reshape(batch, frames, *drive.shape[1:]).transpose(0, 1)  # (T, B, 3C, H', W')
        hidden = drive.new_zeros(batch, self.out_channels, *drive.shape[-2:])
        outputs, _ = over_time(self.cell, (hidden,), (drive,))
        return outputs.permute(1, 2, 0, 3, 4)

    def state_shapes(self, frame_shape: tuple[int, int]) -> list[tuple[int, ...]]:
        """The GRU's hidden map (C, H', W'), batch left out."""
        return [(self.out_channels, *self.map_size(frame_shape))]

    def stepper(self) -> GRUStep:
        """The core for one frame with the hidden map as explicit state (a copy in eval mode)."""
        return GRUStep(self)

    def step_flops(self, frame_shape: tuple[int, int]) -> float:
        """FLOPs of one frame: the CNN, the GRU's input and recurrent convolutions (gates' pointwise work left out)."""
        positions = self.map_size(frame_shape)[0] * self.map_size(frame_shape)[1]
        return float(sum(_conv_flops(layer.conv, positions) for layer in self.cnn) + self.gru.flops(positions))

    def flops(self, frame_shape: tuple[int, int], frames: int) -> float:
        """FLOPs of a clip: every frame costs one step."""
        return frames * self.step_flops(frame_shape)


class GRUStep(nn.Module):
    """One frame x (B, C_in, H, W), hidden map (B, C, H', W') → features (B, C, H', W'), next hidden map
    (the same map: the readout reads the GRU's hidden state)."""

    def __init__(self, core: GRUCore):
        super().__init__()
        self.core = copy.deepcopy(core).eval()

    def forward(self, x: torch.Tensor, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = self.core.gru(self.core.drive(x), hidden)
        return hidden, hidden
