"""Running a recurrent cell over the frames of a clip, the same way in training and in an exported graph.

A cell maps (states, inputs of one frame) → (output of that frame, next states). In eager PyTorch
the frames run in a Python loop (autograd through it is plain); under `torch.export` (the ONNX
exporter) the same cell runs inside `torch._higher_order_ops.scan`, which the exporter writes as one
ONNX `Scan` node, so the clip graph takes any number of frames instead of the one it was traced with.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch._higher_order_ops.scan import scan

Cell = Callable[[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]], tuple[torch.Tensor, tuple[torch.Tensor, ...]]]


def over_time(cell: Cell, states: tuple[torch.Tensor, ...],
              inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """Apply `cell` frame by frame: inputs (T, B, ...) each, states (B, ...) each
    → (outputs (T, B, ...), final states)."""
    if torch.compiler.is_exporting():
        def body(carry, frame):
            output, carry = cell(carry, frame)
            return carry, output.clone()  # scan refuses an output that aliases the carry

        final, outputs = scan(body, states, inputs)
        return outputs, final
    outputs = []
    for t in range(inputs[0].shape[0]):
        output, states = cell(states, tuple(x[t] for x in inputs))
        outputs.append(output)
    return torch.stack(outputs), states
