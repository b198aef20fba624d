"""The factorized core: a causal stack of spatial 1×k×k and temporal kt×1×1 convolutions (valid in
time), and its streaming step.

Shapes: B batch, C channels, T input frames, H×W pixels of a frame, H'×W' of the feature maps
(H / S, W / S, S the product of the layers' spatial strides; the last layer's maps reach `margin`
cells beyond each edge: H' + 2·margin × W' + 2·margin); R = 1 + Σ (kt_l - 1) frames of
receptive field. A clip of T frames gives T - R + 1 output frames. A streamed frame needs, per
layer, the last kt_l - 1 outputs of its spatial convolution as state. With `fine`, the maps read out
are the first layer's cells, H / S_1 × W / S_1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .gabor import gabor_init_


class DilatedBranches(nn.Module):
    """Spatial 1×k×k convs side by side, one per dilation, each giving an equal share of the output
    channels: (B, C_in, T, H, W) → (B, C_out, T, H', W') (concatenated in the order of `dilations`).
    Near and far reach for the cost of one k×k conv; each neuron's readout weighs the two."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int, margin: int, dilations):
        super().__init__()
        if out_channels % len(dilations):
            raise ValueError(f"{out_channels} channels do not split evenly over the dilations {dilations}")
        self.branches = nn.ModuleList(_spatial_conv(in_channels, out_channels // len(dilations), kernel, stride,
                                                    margin, dilation) for dilation in dilations)
        self.in_channels, self.out_channels = in_channels, out_channels
        first = self.branches[0]
        self.kernel_size, self.stride, self.padding, self.dilation = (first.kernel_size, first.stride, first.padding,
                                                                      first.dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([branch(x) for branch in self.branches], dim=1)


class PooledMaps(nn.Module):
    """The maps beside Gaussian-blurred copies of themselves, one per σ (in feature cells): a neuron's
    point readout can then read energy pooled over a neighbourhood, as a complex cell with a large RF
    pools subunits. Each blur is divided by the blur of a map of ones, so a constant map stays constant
    up to the edges.

    (B, C, T, H', W') or (B, C, H', W') → the same with C·(1 + len(sigmas)) channels, the maps first.
    """

    def __init__(self, sigmas):
        super().__init__()
        self.sigmas = tuple(float(sigma) for sigma in sigmas)
        if not self.sigmas or min(self.sigmas) <= 0:
            raise ValueError(f"give one or more blur widths σ > 0 in feature cells, got {sigmas}")
        for i, sigma in enumerate(self.sigmas):
            radius = max(1, math.ceil(2.5 * sigma))
            taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float32) / sigma) ** 2)
            self.register_buffer(f"taps{i}", taps / taps.sum(), persistent=False)  # derived from sigmas

    def _taps(self) -> list[torch.Tensor]:
        """Per σ the 1D Gaussian (2r + 1,), summing to 1."""
        return [getattr(self, f"taps{i}") for i in range(len(self.sigmas))]

    def _blur(self, x: torch.Tensor, taps: torch.Tensor) -> torch.Tensor:
        """Depthwise separable blur of the last two axes of x (B, C, [T,] H, W), zero-padded."""
        channels, radius, conv = x.shape[1], taps.numel() // 2, F.conv3d if x.dim() == 5 else F.conv2d
        lead = (1,) * (x.dim() - 4)  # a 1-frame kernel axis for clips
        rows = taps.reshape(1, 1, *lead, -1, 1).expand(channels, 1, *lead, -1, 1)
        cols = taps.reshape(1, 1, *lead, 1, -1).expand(channels, 1, *lead, 1, -1)
        x = conv(x, rows, padding=(*(0,) * len(lead), radius, 0), groups=channels)
        return conv(x, cols, padding=(*(0,) * len(lead), 0, radius), groups=channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ones = x.new_ones((1, 1, *(1,) * (x.dim() - 4), *x.shape[-2:]))  # one frame: the edges do not change in time
        pooled = [self._blur(x, taps) / self._blur(ones, taps) for taps in self._taps()]
        return torch.cat([x, *pooled], dim=1)

    def flops(self, channels: int, size: tuple[int, int]) -> int:
        """FLOPs of the blurs (two passes) and their normalisation of one frame's C maps of size (H', W')."""
        cells = channels * size[0] * size[1]
        return sum((2 * 2 * taps.numel() + 1) * cells for taps in self._taps())


class FineMaps(nn.Module):
    """The last maps upsampled onto the first layer's finer grid and put beside that layer's maps, so
    that a readout can reach detail finer than the last maps' cells (small receptive fields, fine
    carriers). Cell j of a map S times coarser than the frame sits on pixel S·j; the last maps are
    interpolated linearly onto the first layer's cells (`factor` = S_last / S_first of them per last
    cell) and held at their last cell beyond it. The first layer's maps are cut to the last maps'
    output frames (both end on the newest frame: the layers are causal and valid in time).

    coarse (B, C, [T,] h, w), fine (B, C_1, [T_1 ≥ T,] H, W) → (B, C + C_1, [T,] H, W)
    """

    def __init__(self, factor: int):
        super().__init__()
        self.factor = factor

    def forward(self, coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
        if coarse.dim() == 5:
            fine = fine[:, :, fine.shape[2] - coarse.shape[2]:]
            batch, channels, frames = coarse.shape[:3]
            flat = coarse.transpose(1, 2).reshape(batch * frames, channels, *coarse.shape[-2:])
            up = self._upsample(flat, fine.shape[-2:])
            up = up.reshape(batch, frames, channels, *up.shape[-2:]).transpose(1, 2)
        else:
            up = self._upsample(coarse, fine.shape[-2:])
        return torch.cat([up, fine], dim=1)

    def _upsample(self, x: torch.Tensor, size) -> torch.Tensor:
        """(N, C, h, w) → (N, C, H, W): cell i onto cell factor·i, linear between, the last cell held."""
        (h, w), (height, width) = x.shape[-2:], size
        x = F.interpolate(x, size=(self.factor * (h - 1) + 1, self.factor * (w - 1) + 1), mode="bilinear",
                          align_corners=True)
        x = F.pad(x, (0, max(0, width - x.shape[-1]), 0, max(0, height - x.shape[-2])), mode="replicate")
        return x[..., :height, :width]

    def flops(self, channels: int, size: tuple[int, int]) -> int:
        """FLOPs of the interpolation of C maps onto (H, W) cells (two lerps per cell)."""
        return 6 * channels * size[0] * size[1]


def finish_maps(x: torch.Tensor, first: torch.Tensor, core: FactorizedCore | FactorizedStep) -> torch.Tensor:
    """The last layer's maps x (B, C, [T,] H', W') and the first layer's (B, C_1, [T_1,] H_1, W_1) →
    what the readout reads: x pooled, then beside the first maps (as `core`'s `pooled` and `fine`
    say), for the clip and the streamed step alike."""
    if core.pooled is not None:
        x = core.pooled(x)
    return core.fine(x, first) if core.fine is not None else x


def _spatial_conv(in_channels: int, out_channels: int, kernel: int, stride: int, margin: int,
                  dilation: int) -> nn.Conv3d:
    """1×k×k conv padded to keep cell j on pixel stride·j and to add `margin` cells beyond each edge."""
    padding = dilation * (kernel // 2) + margin * stride
    return nn.Conv3d(in_channels, out_channels, (1, kernel, kernel), stride=(1, stride, stride),
                     padding=(0, padding, padding), dilation=(1, dilation, dilation), bias=False)


class FactorizedLayer(nn.Module):
    """Spatial 1×k×k conv, temporal kt×1×1 conv (valid in time), BatchNorm, ELU; the spatial conv
    zero-padded to give `margin` more output cells beyond each edge, dilated by `dilation` (or, for a
    tuple of dilations, `DilatedBranches`).

    (B, C_in, T, H, W) → (B, C_out, T - kt + 1, H / stride + 2·margin, W / stride + 2·margin)
    """

    def __init__(self, in_channels: int, out_channels: int, spatial_kernel: int, temporal_kernel: int, stride: int,
                 margin: int = 0, dilation: int | tuple[int, ...] = 1):
        super().__init__()
        if margin < 0:
            raise ValueError(f"a margin counts feature cells beyond the screen: 0 or more, got {margin}")
        if isinstance(dilation, int):
            self.spatial = _spatial_conv(in_channels, out_channels, spatial_kernel, stride, margin, dilation)
        else:
            self.spatial = DilatedBranches(in_channels, out_channels, spatial_kernel, stride, margin, dilation)
        self.temporal = nn.Conv3d(out_channels, out_channels, (temporal_kernel, 1, 1), bias=False)
        self.norm = nn.BatchNorm3d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.elu(self.norm(self.temporal(self.spatial(x))))

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of the input → (H', W') of the output (the spatial conv's arithmetic)."""
        (_, kh, kw), (_, sh, sw), (_, ph, pw) = self.spatial.kernel_size, self.spatial.stride, self.spatial.padding
        (_, dh, dw) = self.spatial.dilation
        return (height + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (width + 2 * pw - dw * (kw - 1) - 1) // sw + 1


class FactorizedCore(nn.Module):
    """Stack of `FactorizedLayer`s: (B, C_in, T, H, W) → (B, C, T - R + 1, H', W').

    strides: each layer's spatial stride (default: `first_stride` for the first layer, 1 after it, as
    runs written before `strides` had). dilations: each layer's spatial dilation (default 1): a 3×3
    kernel dilated by 2 reaches as far as a 5×5 one with the weights of a 3×3; a tuple, e.g. (1, 2),
    splits the layer's channels over branches of those dilations (`DilatedBranches`). margin: feature
    cells the last layer computes beyond each edge of the screen (its spatial conv padded by that much
    more), where the readouts of receptive fields centred off screen can sit (`model.GaussianReadout`).
    pooled: blur widths σ (feature cells) of Gaussian-pooled copies of the last maps put beside them
    (`PooledMaps`; C = C_last·(1 + len(pooled))); None or () for the maps alone.
    fine: those maps (pooled or not) upsampled onto the first layer's grid and put beside its maps
    (`FineMaps`; C = C_pooled + C_1, cells of S_1 pixels); not with a margin.
    frame_shape is not needed to build it (convolutions take frames of any size); the core protocol's
    methods take it where the arithmetic depends on it.
    """

    def __init__(self, in_channels: int, frame_shape: tuple[int, int], channels, spatial_kernels, temporal_kernels,
                 first_stride: int = 1, strides=None, margin: int = 0, dilations=None, pooled=None,
                 fine: bool = False):
        super().__init__()
        if strides is None:  # runs written before `strides`: only the first layer strode
            strides = (first_stride,) + (1,) * (len(channels) - 1)
        elif first_stride != 1 or len(strides) != len(channels):
            raise ValueError(f"give one spatial stride per layer ({len(channels)}) in `strides`, without `first_stride`")
        dilations = (1,) * len(channels) if dilations is None else tuple(
            d if isinstance(d, int) else tuple(d) for d in dilations)  # a run's config.json gives lists
        if len(dilations) != len(channels) or min(min(d) if isinstance(d, tuple) else d for d in dilations) < 1:
            raise ValueError(f"give one spatial dilation (1 or more) per layer ({len(channels)}), got {dilations}")
        sizes = [in_channels, *channels]
        self.layers = nn.Sequential(*[
            FactorizedLayer(sizes[i], sizes[i + 1], spatial_kernels[i], temporal_kernels[i], strides[i],
                            margin if i == len(channels) - 1 else 0, dilations[i])
            for i in range(len(channels))])
        if fine and (margin or math.prod(strides) % strides[0]):
            raise ValueError(f"fine maps need no margin and strides whose product the first divides, got "
                             f"margin {margin}, strides {tuple(strides)}")
        self.margin = margin
        self.fine = FineMaps(math.prod(strides) // strides[0]) if fine else None
        # padded by k // 2: cell j sits on pixel S·j (`cores.cell_offset`), S of the maps read out
        self.cell_stride = strides[0] if fine else math.prod(strides)
        gabor_init_(self.layers[0].spatial.weight)  # the video's first filters start as Gabors (`gabor`)
        self.receptive_field = 1 + sum(k - 1 for k in temporal_kernels)
        self.pooled = PooledMaps(pooled) if pooled else None
        self.out_channels = (sizes[-1] * (1 + (len(self.pooled.sigmas) if self.pooled else 0))
                             + (sizes[1] if fine else 0))
        # How this process lays out the input on CPU, not a setting of the twin: oneDNN's first conv (few
        # input channels) takes about 40% less time on channels-last input (`twin bench train --contiguous-input`).
        self.channels_last = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last and x.device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last_3d)
        first = self.layers[0](x)
        return finish_maps(self.layers[1:](first), first, self)

    def smoothness(self) -> torch.Tensor:
        """Roughness of the first layer's spatial kernels: Σ (Laplacian ∗ w)² / Σ w² (neuralpredictors'
        LaplaceL2norm), small for smooth kernels; the trainer weighs it by `core_smoothness`."""
        weight = self.layers[0].spatial.weight[:, :, 0]  # (C_out, C_in, k, k)
        kernel = weight.new_tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]])[None, None]
        laplace = F.conv2d(weight.reshape(-1, 1, *weight.shape[-2:]), kernel, padding=1)
        return laplace.pow(2).sum() / weight.pow(2).sum().clamp(min=1e-12)

    def _layer_costs(self, frame_shape: tuple[int, int]) -> list[tuple[int, int, int, tuple[int, int]]]:
        """Per layer: FLOPs (2 × multiply-adds) of its spatial conv per input frame and of its
        temporal conv per output frame, its kt, and its output (H', W')."""
        costs, size = [], tuple(frame_shape)
        for layer in self.layers:
            size = layer.output_size(*size)
            c_in, c_out, k = layer.spatial.in_channels, layer.spatial.out_channels, layer.spatial.kernel_size[-1]
            kt = layer.temporal.kernel_size[0]
            positions = size[0] * size[1]
            costs.append((2 * positions * c_out * c_in * k * k, 2 * positions * c_out * c_out * kt, kt, size))
        return costs

    def state_shapes(self, frame_shape: tuple[int, int]) -> list[tuple[int, ...]]:
        """Per layer its last kt - 1 spatial outputs: (C_l, kt_l - 1, H', W'), batch left out."""
        return [(layer.spatial.out_channels, kt - 1, *size)
                for layer, (_, _, kt, size) in zip(self.layers, self._layer_costs(frame_shape))]

    def flops(self, frame_shape: tuple[int, int], frames: int) -> float:
        """FLOPs of a clip of `frames` input frames (valid in time: each layer sees fewer frames)."""
        total = 0.0
        costs = self._layer_costs(frame_shape)
        for spatial, temporal, kt, _ in costs:
            total += spatial * frames
            frames -= kt - 1
            total += temporal * frames
        return total + frames * self._finishing_flops(costs)

    def _finishing_flops(self, costs) -> int:
        """FLOPs of `finish_maps` on one output frame, from the layers' `_layer_costs` (0 without any of it)."""
        channels, size = self.layers[-1].temporal.out_channels, costs[-1][3]
        total = 0 if self.pooled is None else self.pooled.flops(channels, size)
        if self.fine is not None:
            total += self.fine.flops(self.out_channels - self.layers[0].temporal.out_channels, costs[0][3])
        return total

    def step_flops(self, frame_shape: tuple[int, int]) -> float:
        """FLOPs of one streamed frame: every layer's spatial conv on one frame and one temporal output."""
        costs = self._layer_costs(frame_shape)
        return sum(spatial + temporal for spatial, temporal, _, _ in costs) + self._finishing_flops(costs)

    def stepper(self) -> FactorizedStep:
        """The core for one frame with its memory as explicit state (BatchNorm folded; eval mode)."""
        return FactorizedStep(self).eval()


class StepLayer(nn.Module):
    """One factorized layer for streaming: the spatial conv on the new frame (a 2D conv, which ONNX
    Runtime runs in its blocked-channel layout), then the temporal conv over [buffer, new frame] as
    one matrix product with the layer's BatchNorm folded in (its running statistics, as in eval mode).

    x (B, C_in, H, W), state (B, C, kt - 1, H', W') → (B, C, H', W'), next state (same shape as state)
    """

    def __init__(self, layer: FactorizedLayer):
        super().__init__()
        convs = layer.spatial.branches if isinstance(layer.spatial, DilatedBranches) else [layer.spatial]
        self.spatial = nn.ModuleList(_frame_conv(conv) for conv in convs)
        scale = layer.norm.weight / torch.sqrt(layer.norm.running_var + layer.norm.eps)
        weight = layer.temporal.weight[..., 0, 0] * scale[:, None, None]  # (C_out, C_in, kt)
        self.register_buffer("weight", weight.flatten(1).detach().clone())
        self.register_buffer("bias", (layer.norm.bias - layer.norm.running_mean * scale).detach().clone())

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        spatial = torch.cat([conv(x) for conv in self.spatial], dim=1)  # (B, C, H', W')
        window = torch.cat([state, spatial[:, :, None]], dim=2)  # (B, C, kt, H', W')
        batch, channels, taps, rows, cols = window.shape
        mixed = self.weight @ window.reshape(batch, channels * taps, rows * cols)
        return F.elu(mixed + self.bias[:, None]).reshape(batch, -1, rows, cols), window[:, :, 1:]


def _frame_conv(conv: nn.Conv3d) -> nn.Conv2d:
    """The 1×k×k conv `conv` as the k×k conv of one frame, same weights."""
    frame = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size[1:], stride=conv.stride[1:],
                      padding=conv.padding[1:], dilation=conv.dilation[1:], bias=False)
    frame.weight.data.copy_(conv.weight[:, :, 0])
    return frame


class FactorizedStep(nn.Module):
    """The factorized core for one frame: x (B, C_in, H, W), per layer its state
    (B, C_l, kt_l - 1, H', W') → features (B, C, H', W'), next states (same shapes)."""

    def __init__(self, core: FactorizedCore):
        super().__init__()
        self.layers = nn.ModuleList(StepLayer(layer) for layer in core.layers)
        self.pooled, self.fine = core.pooled, core.fine

    def forward(self, x: torch.Tensor, *states: torch.Tensor):
        next_states, first = [], None
        for layer, state in zip(self.layers, states):
            x, state = layer(x, state)
            first = x if first is None else first
            next_states.append(state)
        return (finish_maps(x, first, self), *next_states)
