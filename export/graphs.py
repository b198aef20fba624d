"""The exported graphs as PyTorch modules with plain tensor inputs, one recording each."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from training.model import Twin


class ClipGraph(torch.nn.Module):
    """video (B, T, H, W) raw pixels, behavior (B, T, 2), pupil_center (B, T, 2) raw
    → responses (B, T - R + 1, N) in raw units; output frame j predicts input frame j + R - 1."""

    def __init__(self, twin: Twin, recording: str):
        super().__init__()
        self.twin, self.recording = twin, recording

    def forward(self, video: torch.Tensor, behavior: torch.Tensor, pupil_center: torch.Tensor) -> torch.Tensor:
        return self.twin(self.recording, video, behavior, pupil_center)


class StepGraph(torch.nn.Module):
    """One frame in, one frame of responses out; the memory of every temporal convolution is an
    explicit state tensor: the layer's last kt - 1 spatial outputs.

    frame (B, H, W), behavior (B, 2), pupil_center (B, 2), state_l (B, C_l, kt_l - 1, H', W') per layer
    → responses (B, N), state_l_next (same shapes as state_l).

    A stream starts from zero states; its first R - 1 outputs are warm-up (the clip graph has no
    output for those frames); from frame R - 1 on, the outputs equal the clip graph's.
    The temporal convolution over the buffer is one matrix product, with BatchNorm folded into it.
    """

    def __init__(self, twin: Twin, recording: str):
        super().__init__()
        self.twin, self.recording = twin, recording
        for index, layer in enumerate(twin.core.layers):
            weight = layer.temporal.weight[..., 0, 0]  # (C_out, C_in, kt)
            scale = layer.norm.weight / torch.sqrt(layer.norm.running_var + layer.norm.eps)
            self.register_buffer(f"weight_{index}", (weight * scale[:, None, None]).flatten(1).detach().clone())
            self.register_buffer(f"bias_{index}", (layer.norm.bias - layer.norm.running_mean * scale).detach().clone())

    def state_shapes(self, height: int = 36, width: int = 64) -> list[tuple[int, ...]]:
        """Per layer (C, kt - 1, H', W') of the state tensor (batch dimension left out)."""
        with torch.no_grad():
            x = torch.zeros(1, 3, 1, height, width)
            shapes = []
            for layer in self.twin.core.layers:
                spatial = layer.spatial(x)
                shapes.append((spatial.shape[1], layer.temporal.kernel_size[0] - 1, *spatial.shape[-2:]))
                x = spatial
            return shapes

    def forward(self, frame: torch.Tensor, behavior: torch.Tensor, pupil_center: torch.Tensor, *states: torch.Tensor):
        head = self.twin.heads[self.recording]
        x, behavior, pupil_center = self.twin.core_input(self.recording, frame[:, None], behavior[:, None],
                                                         pupil_center[:, None])
        next_states = []
        for index, (layer, state) in enumerate(zip(self.twin.core.layers, states)):
            window = torch.cat([state, layer.spatial(x)], dim=2)  # (B, C, kt, H', W')
            batch, channels, taps, rows, cols = window.shape
            mixed = getattr(self, f"weight_{index}") @ window.reshape(batch, channels * taps, rows * cols)
            x = F.elu(mixed + getattr(self, f"bias_{index}")[:, None]).reshape(batch, -1, 1, rows, cols)
            next_states.append(window[:, :, 1:])
        responses = head(x, behavior, pupil_center)[:, 0] * head.response_scale
        return (responses, *next_states)
