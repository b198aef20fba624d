"""Mixed precision for training: bf16 autocast with fp32 master weights, for GPUs.

"auto" means bf16 on a CUDA device with bf16 arithmetic and fp32 on CPUs. On this project's CPUs
(AVX512-BF16) bf16 autocast did not pay: the full `small` training step was not faster with both
cores busy, and a twin learned worse in the same 3 minutes (a family member with fine gratings:
0.16 of the ceiling against 0.50 in fp32). `--precision bf16` still forces it. Losses and metrics
stay fp32.
"""

from __future__ import annotations

import contextlib

import torch

PRECISIONS = ("auto", "bf16", "fp32")


def bf16_is_fast(device: str = "cpu") -> bool:
    """Whether bf16 autocast pays on `device`: a CUDA device with bf16 arithmetic (Ampere or newer)."""
    return device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def resolve(precision: str, device: str = "cpu") -> str:
    """"auto" → "bf16" where it pays (`bf16_is_fast`), else "fp32"; "bf16" and "fp32" as given."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return precision


def autocast(precision: str, device: str = "cpu"):
    """Context for the forward pass: bf16 autocast for a resolved "bf16", nothing for "fp32"."""
    if resolve(precision, device) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.split(":")[0], dtype=torch.bfloat16)
