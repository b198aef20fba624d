"""The exported graphs as PyTorch modules with plain tensor inputs, one recording each."""

from __future__ import annotations

import torch

from training.model import Twin


class ClipGraph(torch.nn.Module):
    """video (B, T, H, W) raw pixels, behavior (B, T, 2), pupil_center (B, T, 2) raw
    → responses (B, T - R + 1, N) in raw units; output frame j predicts input frame j + R - 1."""

    def __init__(self, twin: Twin, recording: str):
        super().__init__()
        self.twin, self.recording = twin, recording

    def forward(self, video: torch.Tensor, behavior: torch.Tensor, pupil_center: torch.Tensor) -> torch.Tensor:
        return self.twin(self.recording, video, behavior, pupil_center)
