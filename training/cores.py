"""The core interface every twin's shared core implements, and the registry of cores by name.

A core turns the per-frame input maps of a clip into feature maps, causally; the twin adds one
readout head per recording. Export, FLOP counting and the benchmarks use only this interface, so
adding a core means one module and one `register_core` call (or an entry in `CORES`).

Shapes: B batch, C_in input channels (video + behaviour maps), T input frames, H×W pixels of a
frame (`frame_shape`), C = `out_channels`, H'×W' the feature maps' size;
offset = `twinserve.contract.output_offset(receptive_field)` (R - 1, or 0 for unbounded memory).
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn

from .factorized import FactorizedCore
from .fnn import FnnCore
from .gru import GRUCore
from .transformer import TransformerCore


class Core(Protocol):
    """What a core provides. Its constructor takes (in_channels, frame_shape, **settings)."""

    receptive_field: int | None
    """Input frames an output depends on; None for unbounded memory (e.g. a recurrent core)."""

    out_channels: int
    """C, the feature channels the readout reads."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C_in, T, H, W) → features (B, C, T - offset, H', W'); output frame j depends only on
        input frames ≤ j + offset."""

    def state_shapes(self, frame_shape: tuple[int, int]) -> list[tuple[int, ...]]:
        """The shape of every state tensor one stream holds (batch left out), for frames of (H, W)."""

    def stepper(self) -> nn.Module:
        """An inference module (eval behaviour) whose forward(x (B, C_in, H, W), *states (B, ...))
        returns (features (B, C, H', W'), *next_states): one frame with the core's memory as explicit
        state. From zero states, streamed frame t equals clip output t - offset once t ≥ offset."""

    def flops(self, frame_shape: tuple[int, int], frames: int) -> float:
        """FLOPs (2 × multiply-adds) of the core on a clip of `frames` input frames of (H, W)."""

    def step_flops(self, frame_shape: tuple[int, int]) -> float:
        """FLOPs of the core on one streamed frame of (H, W)."""

    # Optional: `smoothness() -> torch.Tensor`, a scalar penalty of rough input filters that the
    # trainer adds weighted by `TrainConfig.core_smoothness` (see `core_smoothness`).
    # Optional: `margin: int`, feature cells the maps reach beyond each screen edge (see `core_margin`).
    # Optional: `cell_stride: int`, the product S of the spatial strides of its 'same'-padded (k // 2)
    # convolutions, whose cell j sits on input pixel S·j (see `cell_offset`).


def core_smoothness(core: Core) -> torch.Tensor | float:
    """The core's smoothness penalty, or 0 for a core that has none."""
    penalty = getattr(core, "smoothness", None)
    return penalty() if callable(penalty) else 0.0


def core_margin(core: Core) -> int:
    """Cells the core's feature maps reach beyond each edge of the screen (0 for a core without a
    margin): maps of H' + 2·margin by W' + 2·margin cells, where readouts of receptive fields centred
    off screen can sit."""
    return int(getattr(core, "margin", 0))


def cell_offset(core: Core, frame_shape: tuple[int, int]) -> tuple[float, float]:
    """Where a screen position's cell lies on the core's maps, relative to grid_sample's convention,
    (x, y) in screen units (2 / W per column, 2 / H per row). grid_sample (align_corners=False) takes
    cell j of a map S times coarser than the frame to be centred on pixel S·j + (S - 1) / 2; convolutions
    padded by k // 2 centre it on pixel S·j, (S - 1) / 2 pixels left of and above that: (S - 1) / W,
    (S - 1) / H. 0 for a core without `cell_stride` (e.g. patches of S pixels, centred as grid_sample takes)."""
    stride = int(getattr(core, "cell_stride", 1))
    height, width = frame_shape
    return (stride - 1) / width, (stride - 1) / height


CORES: dict[str, type] = {"factorized": FactorizedCore, "transformer": TransformerCore, "gru": GRUCore,
                          "fnn": FnnCore}


def register_core(name: str, cls: type) -> None:
    """Make a core class buildable by name (e.g. from a preset or a run's config)."""
    if name in CORES:
        raise ValueError(f"a core named {name!r} is already registered ({CORES[name].__name__})")
    CORES[name] = cls


def build_core(name: str, in_channels: int, frame_shape: tuple[int, int], **settings) -> Core:
    """A new core of the registered class `name` → `cls(in_channels, frame_shape, **settings)`."""
    if name not in CORES:
        raise ValueError(f"unknown core {name!r}; known cores: {sorted(CORES)}")
    return CORES[name](in_channels, tuple(frame_shape), **settings)
