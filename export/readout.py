"""The Gaussian readout as the exported graphs compute it: row gathers and one batched matrix product.

ONNX Runtime's GridSample recomputes every sampling position once per channel and then needs a
(frames, C, N) product to be written and summed; for 8,000 neurons that was ~75% of a streamed
frame. Here the feature map is laid out channels-last, the 4 bilinear corners of every neuron are
gathered as rows of C values, and the channel sum is a matrix product per neuron, done in chunks of
neurons so the gathered rows stay small. Same function as `GaussianReadout` in eval mode
(bilinear, border padding, align_corners=False), checked by the export parity tests.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from twinserve.training.model import GaussianReadout, Twin, map_grid


class GatherReadout(nn.Module):
    """features (B, C, T, H', W'), shift (B, T, 2) → (B, T, N), as `GaussianReadout.eval()`."""

    def __init__(self, readout: GaussianReadout, chunk: int = 1024):
        super().__init__()
        self.register_buffer("position", readout.position.detach().clone())  # (N, 2) x, y on the screen
        self.register_buffer("weight", readout.weight.detach().t()[..., None].clone())  # (N, C, 1)
        self.register_buffer("bias", readout.bias.detach().clone())
        self.register_buffer("offset", readout.offset.clone(), persistent=False)
        self.margin = readout.margin
        self.chunk = chunk

    def forward(self, features: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = features.shape
        if height < 2 or width < 2:
            raise ValueError(f"feature map {height}×{width} too small for bilinear gathers")
        maps = batch * frames
        rows = features.permute(0, 2, 3, 4, 1).reshape(maps * height * width, channels)
        grid = map_grid(self.position[None] + shift.reshape(maps, 1, 2), self.margin, height, width,
                        self.offset)  # (M, N, 2)
        # grid_sample's unnormalisation (align_corners=False), then its border padding.
        x = (((grid[..., 0] + 1) * width - 1) / 2).clamp(0, width - 1)
        y = (((grid[..., 1] + 1) * height - 1) / 2).clamp(0, height - 1)
        left, top = x.floor().clamp(max=width - 2), y.floor().clamp(max=height - 2)
        fx, fy = x - left, y - top
        first = (top * width + left).long() + torch.arange(maps)[:, None] * (height * width)  # (M, N)
        corners = torch.stack([first, first + 1, first + width, first + width + 1], -1)  # (M, N, 4)
        weights = torch.stack([(1 - fy) * (1 - fx), (1 - fy) * fx, fy * (1 - fx), fy * fx], -1)
        neurons, out = self.bias.shape[0], []
        for start in range(0, neurons, self.chunk):
            part = slice(start, start + self.chunk)
            index = corners[:, part].permute(1, 0, 2).reshape(-1, maps * 4)  # (n, 4M)
            dots = (rows[index] @ self.weight[part]).reshape(-1, maps, 4)  # (n, 4M, C) @ (n, C, 1)
            out.append((dots * weights[:, part].permute(1, 0, 2)).sum(-1))  # (n, M)
        return (torch.cat(out).t() + self.bias).reshape(batch, frames, neurons)


def deployable(twin: Twin) -> Twin:
    """A copy of the twin (eval mode) whose heads read out with `GatherReadout`."""
    twin = copy.deepcopy(twin).eval()
    for head in twin.heads.values():
        head.readout = GatherReadout(head.readout)
    return twin
