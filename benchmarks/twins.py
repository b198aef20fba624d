"""Twins the benchmarks measure: a preset with random weights (speed does not depend on them), and
the twin exported with its manifest. Random raw inputs come from `export.onnx_export.random_inputs`."""

from __future__ import annotations

from pathlib import Path

import torch

from twinserve.contract import DEFAULT_FRAME_SHAPE
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


def export_random_twin(preset: str, neurons: int, folder: str | Path) -> tuple[Twin, Manifest]:
    """A random twin of `preset` with `neurons` neurons in one recording (`RECORDING`), exported to
    `folder` → (the twin in eval mode, its typed manifest)."""
    twin = random_twin(preset, {RECORDING: neurons}).eval()
    return twin, export_twin(twin, preset, {RECORDING: {"neurons": neurons, "unit_ids": list(range(neurons))}}, folder)
