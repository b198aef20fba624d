"""A factorized spatial/temporal transformer core (ViV1T-like), causal in time with a window of W frames.

Each frame is cut into p×p patches (P = (H/p)·(W/p) tokens of width D, learned spatial positions).
Every block attends over space within a frame, then over time at each patch position, then applies
an MLP; pre-norm, residual. Temporal attention is causal and limited to the last W frames, and it is
*valid in time* like the convolutional core's temporal kernels: a block turns T frames into
T - W + 1, output frame j attending to input frames j … j + W - 1. So the core's receptive field is
R = 1 + depth·(W - 1), and a streamed frame needs only each block's last W - 1 keys and values.

Temporal positions are rotary and relative: a key at window slot s (0 = oldest, W - 1 = newest) is
rotated by the angle of offset s - (W - 1) and the query not at all, so a stream of any length sees
the same positions. All attention goes through `F.scaled_dot_product_attention` (FlashAttention on
GPU, the math kernel on CPU); the exporter writes it as one ONNX `Attention` node.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None,
              fused: bool = True) -> torch.Tensor:
    """Softmax attention, q (N, h, L, d), k and v (N, h, S, d), mask (L, S) True where allowed
    → (N, h, L, d); fused: one `scaled_dot_product_attention` call, else its matrix products
    written out (for runtimes without a fused attention operator)."""
    if fused:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v


def use_fused_attention(module: nn.Module, fused: bool) -> int:
    """Switch every attention layer inside `module` between the fused and the written-out form
    → how many layers were switched (0: the module has no attention)."""
    layers = [layer for layer in module.modules() if isinstance(layer, (SpatialAttention, TemporalAttention))]
    for layer in layers:
        layer.fused = fused
    return len(layers)


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(..., D) → (..., heads, D / heads)."""
    return x.unflatten(-1, (heads, -1))


class SpatialAttention(nn.Module):
    """Self-attention among the P patches of each frame: (N, P, D) → (N, P, D)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads, self.fused = heads, True
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = (split_heads(t, self.heads).transpose(1, 2) for t in self.qkv(x).chunk(3, -1))  # (N, h, P, d)
        return self.out(attention(q, k, v, fused=self.fused).transpose(1, 2).flatten(2))


def rotate(x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
    """Rotary position: x (..., L, d) turned by angles (L, d/2), pairs (i, i + d/2)."""
    cos, sin = angles.cos().repeat(1, 2), angles.sin().repeat(1, 2)
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


class TemporalAttention(nn.Module):
    """Causal self-attention over the last `window` frames at each patch position, rotary relative
    positions; valid in time: (B, T, P, D) → (B, T - W + 1, P, D)."""

    def __init__(self, dim: int, heads: int, window: int, base: float = 100.0):
        super().__init__()
        self.heads, self.window, self.fused = heads, window, True
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        head_dim = dim // heads
        self.register_buffer("frequencies", base ** (-torch.arange(0, head_dim, 2).float() / head_dim),
                             persistent=False)  # (d/2,)

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """Frame positions (L,) → rotary angles (L, d/2)."""
        return positions.float()[:, None] * self.frequencies

    def project(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(..., D) → q, k, v (..., heads, d)."""
        return tuple(split_heads(t, self.heads) for t in self.qkv(x).chunk(3, -1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, patches, dim = x.shape
        window = self.window
        q, k, v = (t.permute(0, 2, 3, 1, 4).flatten(0, 1) for t in self.project(x))  # (B·P, h, T, d)
        positions = torch.arange(frames, device=x.device)
        angles = self.angles(positions)
        q, k = rotate(q[:, :, window - 1:], angles[window - 1:]), rotate(k, angles)
        if x.is_cuda:
            out = self._unfolded(q, k, v)
        else:  # a banded mask over the whole clip: W× less key memory than unfolding the windows
            offset = positions[window - 1:, None] - positions
            out = attention(q, k, v, (offset >= 0) & (offset < window), self.fused)
        out = out.unflatten(0, (batch, patches)).permute(0, 3, 1, 2, 4).flatten(3)  # (B, T', P, D)
        return self.out(out)

    def _unfolded(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """The same attention with every query's window gathered, so no mask is needed and the
        flash kernel is eligible: q (N, h, T', d), k and v (N, h, T, d) → (N, h, T', d)."""
        n, heads, outputs, head_dim = q.shape

        def windows(t):  # (N, h, T, d) → (N·h·T', 1, W, d)
            return t.unfold(2, self.window, 1).transpose(-1, -2).reshape(-1, 1, self.window, head_dim)

        out = F.scaled_dot_product_attention(q.reshape(-1, 1, 1, head_dim), windows(k), windows(v))
        return out.reshape(n, heads, outputs, head_dim)

    def step(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        """One new frame x (B, P, D) with the last W - 1 frames' keys and values (B, P, h, W - 1, d),
        not rotated → (B, P, D), next keys, next values (same shapes as keys, values)."""
        batch, patches, dim = x.shape
        q, k, v = self.project(x)  # (B, P, h, d)
        keys, values = torch.cat([keys, k[..., None, :]], 3), torch.cat([values, v[..., None, :]], 3)
        # The query sits at offset 0, so only the keys turn: slot s by the offset s - (W - 1).
        slots = torch.arange(1 - self.window, 1, device=x.device)
        out = attention(q[..., None, :].flatten(0, 1), rotate(keys, self.angles(slots)).flatten(0, 1),
                        values.flatten(0, 1), fused=self.fused)  # (B·P, h, 1, d)
        return self.out(out.reshape(batch, patches, dim)), keys[..., 1:, :], values[..., 1:, :]


class Block(nn.Module):
    """Spatial attention, temporal attention, MLP; pre-norm residuals: (B, T, P, D) → (B, T - W + 1, P, D)."""

    def __init__(self, dim: int, heads: int, window: int, mlp_ratio: int):
        super().__init__()
        self.spatial_norm, self.temporal_norm, self.mlp_norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.spatial = SpatialAttention(dim, heads)
        self.temporal = TemporalAttention(dim, heads, window)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, frames, patches, dim = x.shape
        x = x.reshape(-1, patches, dim)
        x = (x + self.spatial(self.spatial_norm(x))).reshape(batch, frames, patches, dim)
        x = x[:, self.temporal.window - 1:] + self.temporal(self.temporal_norm(x))
        return x + self.mlp(self.mlp_norm(x))

    def step(self, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor):
        """x (B, P, D), keys and values (B, P, h, W - 1, d) → (B, P, D), next keys, next values."""
        x = x + self.spatial(self.spatial_norm(x))
        attended, keys, values = self.temporal.step(self.temporal_norm(x), keys, values)
        x = x + attended
        return x + self.mlp(self.mlp_norm(x)), keys, values


class TransformerCore(nn.Module):
    """(B, C_in, T, H, W) → (B, C, T - R + 1, s·H/p, s·W/p): patch embedding, `depth` blocks, then a
    linear map of every token to an s×s patch of C feature channels (pixel shuffle) for the readout.

    Behaviour enters as constant input channels, so the patch embedding adds a learned linear
    function of it to every token (a learned modulation). frame_shape (H, W) fixes the patch grid
    (H/p)×(W/p) and so the learned spatial positions: the core takes frames of that shape only.
    """

    def __init__(self, in_channels: int, frame_shape: tuple[int, int], dim: int, depth: int, heads: int, window: int,
                 patch: int, channels: int, upsample: int = 2, mlp_ratio: int = 4):
        super().__init__()
        if dim % heads or (dim // heads) % 2:
            raise ValueError(f"dim {dim} must split into {heads} heads of even width")
        self.grid = (frame_shape[0] // patch, frame_shape[1] // patch)
        self.embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.position = nn.Parameter(torch.randn(self.grid[0] * self.grid[1], dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, window, mlp_ratio) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.unpatch = nn.Linear(dim, channels * upsample**2)
        self.upsample, self.out_channels = upsample, channels
        self.receptive_field = 1 + depth * (window - 1)

    def patches(self, frame_shape: tuple[int, int]) -> int:
        """P, the tokens of a frame of `frame_shape` (H, W); refused unless it makes this core's patch grid."""
        patch = self.embed.stride[0]
        if (frame_shape[0] // patch, frame_shape[1] // patch) != self.grid:
            raise ValueError(f"frames of {tuple(frame_shape)} pixels do not make the {self.grid} patch grid")
        return self.grid[0] * self.grid[1]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Frames (N, C_in, H, W) → tokens (N, P, D)."""
        self.patches(x.shape[-2:])
        return self.embed(x).flatten(2).transpose(1, 2) + self.position

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (N, P, D) → feature maps (N, C, s·H/p, s·W/p)."""
        maps = self.unpatch(self.norm(x)).transpose(1, 2).unflatten(2, self.grid)
        return F.pixel_shuffle(maps, self.upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = x.shape
        x = self.tokens(x.transpose(1, 2).reshape(batch * frames, channels, height, width))
        x = x.reshape(batch, frames, *x.shape[1:])
        for block in self.blocks:
            x = block(x)
        maps = self.features(x.flatten(0, 1))
        return maps.reshape(batch, -1, *maps.shape[1:]).transpose(1, 2)

    def cache_shape(self) -> tuple[int, ...]:
        """Per block, the shape of its key cache and of its value cache (batch left out): (P, h, W - 1, d)."""
        temporal = self.blocks[0].temporal
        dim = self.position.shape[1]
        return (self.position.shape[0], temporal.heads, temporal.window - 1, dim // temporal.heads)

    def step(self, x: torch.Tensor, *caches: torch.Tensor):
        """One frame (B, C_in, H, W) and per block its key and value caches (B, P, h, W - 1, d), in
        the order keys_0, values_0, keys_1, … → feature maps (B, C, s·H/p, s·W/p), next caches."""
        x, next_caches = self.tokens(x), []
        for block, keys, values in zip(self.blocks, caches[::2], caches[1::2]):
            x, keys, values = block.step(x, keys, values)
            next_caches += [keys, values]
        return (self.features(x), *next_caches)

    def state_shapes(self, frame_shape: tuple[int, int]) -> list[tuple[int, ...]]:
        """Per block its key cache and its value cache, (P, h, W - 1, d) each, batch left out."""
        self.patches(frame_shape)
        return [self.cache_shape()] * (2 * len(self.blocks))

    def stepper(self) -> TransformerStep:
        """The core for one frame with its key/value caches as explicit state (shares this core's weights;
        no layer of this core behaves differently in training)."""
        return TransformerStep(self)

    def flops(self, frame_shape: tuple[int, int], frames: int, streamed: bool = False) -> float:
        """FLOPs (2 × multiply-adds) on a clip of `frames` input frames (each attention counted over
        its W-frame window), or with `streamed` of one frame from the key/value caches."""
        patches, dim = self.patches(frame_shape), self.position.shape[1]
        window, hidden = self.blocks[0].temporal.window, self.blocks[0].mlp[0].out_features
        total = frames * 2 * patches * dim * self.embed.weight[0].numel()
        for _ in self.blocks:
            outputs = 1 if streamed else frames - window + 1
            total += frames * 2 * patches * (4 * dim * dim + 2 * patches * dim)  # spatial: qkv, out, scores, sum
            total += frames * 2 * patches * 3 * dim * dim  # temporal q, k, v projections of every frame
            total += outputs * 2 * patches * (dim * dim + 2 * window * dim + 2 * dim * hidden)  # out, window, MLP
            frames = outputs
        return total + frames * 2 * patches * dim * self.unpatch.out_features

    def step_flops(self, frame_shape: tuple[int, int]) -> float:
        """FLOPs of one streamed frame."""
        return self.flops(frame_shape, 1, streamed=True)


class TransformerStep(nn.Module):
    """The transformer core for one frame: x (B, C_in, H, W) and per block its key and value caches
    of the last W - 1 frames, (B, P, heads, W - 1, d) each → features (B, C, s·H/p, s·W/p), next
    caches; one new frame costs one frame of attention."""

    def __init__(self, core: TransformerCore):
        super().__init__()
        self.core = core

    def forward(self, x: torch.Tensor, *states: torch.Tensor):
        return self.core.step(x, *states)
