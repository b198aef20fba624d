"""The exported graphs as PyTorch modules with plain tensor inputs, one recording each."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from twinserve.training.model import FactorizedCore, FactorizedLayer, Twin
from twinserve.training.transformer import TransformerCore

from .readout import deployable


class ClipGraph(torch.nn.Module):
    """video (B, T, H, W) raw pixels, behavior (B, T, 2), pupil_center (B, T, 2) raw
    → responses (B, T - R + 1, N) in raw units; output frame j predicts input frame j + R - 1."""

    def __init__(self, twin: Twin, recording: str):
        super().__init__()
        self.twin, self.recording = deployable(twin), recording

    def forward(self, video: torch.Tensor, behavior: torch.Tensor, pupil_center: torch.Tensor) -> torch.Tensor:
        return self.twin(self.recording, video, behavior, pupil_center)


class StepLayer(torch.nn.Module):
    """One factorized layer for streaming: the spatial conv on the new frame (a 2D conv, which ONNX
    Runtime runs in its blocked-channel layout), then the temporal conv over [buffer, new frame] as
    one matrix product with the layer's BatchNorm folded in.

    x (B, C_in, H, W), state (B, C, kt - 1, H', W') → (B, C, H', W'), next state (same shape as state)
    """

    def __init__(self, layer: FactorizedLayer):
        super().__init__()
        conv = layer.spatial
        self.spatial = torch.nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size[1:],
                                       stride=conv.stride[1:], padding=conv.padding[1:], bias=False)
        self.spatial.weight.data.copy_(conv.weight[:, :, 0])
        self.taps = layer.temporal.kernel_size[0]
        scale = layer.norm.weight / torch.sqrt(layer.norm.running_var + layer.norm.eps)
        weight = layer.temporal.weight[..., 0, 0] * scale[:, None, None]  # (C_out, C_in, kt)
        self.register_buffer("weight", weight.flatten(1).detach().clone())
        self.register_buffer("bias", (layer.norm.bias - layer.norm.running_mean * scale).detach().clone())

    def forward(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        window = torch.cat([state, self.spatial(x)[:, :, None]], dim=2)  # (B, C, kt, H', W')
        batch, channels, taps, rows, cols = window.shape
        mixed = self.weight @ window.reshape(batch, channels * taps, rows * cols)
        return F.elu(mixed + self.bias[:, None]).reshape(batch, -1, rows, cols), window[:, :, 1:]


class ConvolutionStep(torch.nn.Module):
    """The convolutional core for one frame: x (B, C_in, H, W), per layer its state
    (B, C_l, kt_l - 1, H', W') → features (B, C, H', W'), next states."""

    def __init__(self, core: FactorizedCore):
        super().__init__()
        self.layers = torch.nn.ModuleList(StepLayer(layer) for layer in core.layers)

    def state_shapes(self, height: int, width: int) -> list[tuple[int, ...]]:
        with torch.no_grad():
            x, shapes = torch.zeros(1, 3, height, width), []
            for layer in self.layers:
                x = layer.spatial(x)
                shapes.append((x.shape[1], layer.taps - 1, *x.shape[-2:]))
            return shapes

    def forward(self, x: torch.Tensor, *states: torch.Tensor):
        next_states = []
        for layer, state in zip(self.layers, states):
            x, state = layer(x, state)
            next_states.append(state)
        return (x, *next_states)


class TransformerStep(torch.nn.Module):
    """The transformer core for one frame: its state is every block's key and value cache of the
    last W - 1 frames, (B, P, heads, W - 1, d) each; one new frame costs one frame of attention."""

    def __init__(self, core: TransformerCore):
        super().__init__()
        self.core = core

    def state_shapes(self, height: int, width: int) -> list[tuple[int, ...]]:
        return [self.core.cache_shape()] * (2 * len(self.core.blocks))

    def forward(self, x: torch.Tensor, *states: torch.Tensor):
        return self.core.step(x, *states)


class StepGraph(torch.nn.Module):
    """One frame in, one frame of responses out; the core's memory is explicit state: the last
    kt - 1 spatial outputs of every temporal convolution, or the last W - 1 keys and values of
    every temporal attention.

    frame (B, H, W), behavior (B, 2), pupil_center (B, 2), state_l (B, ...) per state tensor
    → responses (B, N), state_l_next (same shapes as state_l).

    A stream starts from zero states; its first R - 1 outputs are warm-up (the clip graph has no
    output for those frames); from frame R - 1 on, the outputs equal the clip graph's.
    """

    def __init__(self, twin: Twin, recording: str):
        super().__init__()
        self.twin, self.recording = deployable(twin), recording
        core = self.twin.core
        self.core = TransformerStep(core) if isinstance(core, TransformerCore) else ConvolutionStep(core)

    def state_shapes(self, height: int = 36, width: int = 64) -> list[tuple[int, ...]]:
        """Shape of every state tensor, batch dimension left out."""
        return self.core.state_shapes(height, width)

    def forward(self, frame: torch.Tensor, behavior: torch.Tensor, pupil_center: torch.Tensor, *states: torch.Tensor):
        head = self.twin.heads[self.recording]
        x, behavior, pupil_center = self.twin.core_input(self.recording, frame[:, None], behavior[:, None],
                                                         pupil_center[:, None])
        x, *next_states = self.core(x[:, :, 0], *states)
        responses = head(x[:, :, None], behavior, pupil_center)[:, 0] * head.response_scale
        return (responses, *next_states)
