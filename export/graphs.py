"""The exported graphs as PyTorch modules with plain tensor inputs, one recording each.

Shapes: B batch (clips or streams), T frames, H×W = the twin's `frame_shape`, N neurons of the
recording; offset = `twin.offset` (R - 1 for a receptive field of R frames, 0 for unbounded memory).
Both graphs work through the core protocol only (`training.cores.Core`), so any registered core exports.
"""

from __future__ import annotations

import torch

from twinserve.training.model import Twin

from .readout import deployable


class ClipGraph(torch.nn.Module):
    """video (B, T, H, W) raw pixels, behavior (B, T, 2), pupil_center (B, T, 2) raw
    → responses (B, T - offset, N) in raw units; output frame j predicts input frame j + offset."""

    def __init__(self, twin: Twin, recording: str):
        super().__init__()
        self.twin, self.recording = deployable(twin), recording

    def forward(self, video: torch.Tensor, behavior: torch.Tensor, pupil_center: torch.Tensor) -> torch.Tensor:
        return self.twin(self.recording, video, behavior, pupil_center)


class StepGraph(torch.nn.Module):
    """One frame in, one frame of responses out; the core's memory is explicit state (the core's
    `stepper()` and `state_shapes`: e.g. the last kt - 1 spatial outputs of every temporal
    convolution, or the last W - 1 keys and values of every temporal attention).

    frame (B, H, W), behavior (B, 2), pupil_center (B, 2), state_l (B, ...) per state tensor
    → responses (B, N), state_l_next (same shapes as state_l).

    A stream starts from zero states; its first `offset` outputs are warm-up (the clip graph has no
    output for those frames); from frame `offset` on, the outputs equal the clip graph's.
    """

    def __init__(self, twin: Twin, recording: str):
        super().__init__()
        self.twin, self.recording = deployable(twin), recording
        self.core = self.twin.core.stepper()

    def state_shapes(self) -> list[tuple[int, ...]]:
        """Shape of every state tensor, batch dimension left out."""
        return self.twin.core.state_shapes(self.twin.frame_shape)

    def forward(self, frame: torch.Tensor, behavior: torch.Tensor, pupil_center: torch.Tensor, *states: torch.Tensor):
        head = self.twin.heads[self.recording]
        x, behavior, pupil_center = self.twin.core_input(self.recording, frame[:, None], behavior[:, None],
                                                         pupil_center[:, None])
        x, *next_states = self.core(x[:, :, 0], *states)
        responses = head(x[:, :, None], behavior, pupil_center)[:, 0] * head.response_scale
        return (responses, *next_states)
