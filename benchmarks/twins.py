"""Twins the benchmarks measure: a preset with random weights (speed does not depend on them),
random raw inputs at the twin's frame shape, and the twin exported with its manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from twinserve.contract import BEHAVIOR_CHANNELS, DEFAULT_FRAME_SHAPE, PIXEL_RANGE, PUPIL_CHANNELS
from twinserve.export.manifest import Manifest
from twinserve.export.onnx_export import export_twin
from twinserve.training.model import Twin
from twinserve.training.presets import PRESETS

RECORDING = "bench"  # the one recording of an exported benchmark twin


def random_twin(preset: str, neurons: dict[str, int], frame_shape: tuple[int, int] = DEFAULT_FRAME_SHAPE,
                seed: int = 0) -> Twin:
    """A `Twin` of `preset` with random weights: neurons maps each recording → its neuron count."""
    torch.manual_seed(seed)
    return Twin(PRESETS[preset].model_config(), neurons, tuple(frame_shape))


def random_inputs(frame_shape: tuple[int, int], batch: int, frames: int, seed: int = 0,
                  dtype=np.float32) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw random inputs: video (B, T, H, W) of whole pixel values, behavior (B, T, 2) and
    pupil_center (B, T, 2) around typical values."""
    rng = np.random.default_rng(seed)
    low, high = PIXEL_RANGE
    video = rng.integers(int(low), int(high) + 1, (batch, frames, *frame_shape)).astype(dtype)
    behavior = np.abs(rng.normal(5, 3, (batch, frames, BEHAVIOR_CHANNELS))).astype(np.float32)
    return video, behavior, rng.normal(0, 5, (batch, frames, PUPIL_CHANNELS)).astype(np.float32)


def export_random_twin(preset: str, neurons: int, folder: str | Path) -> tuple[Twin, Manifest]:
    """A random twin of `preset` with `neurons` neurons in one recording (`RECORDING`), exported to
    `folder` → (the twin in eval mode, its typed manifest)."""
    twin = random_twin(preset, {RECORDING: neurons}).eval()
    return twin, export_twin(twin, preset, {RECORDING: {"neurons": neurons, "unit_ids": list(range(neurons))}}, folder)
