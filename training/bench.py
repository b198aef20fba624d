"""`twin bench train`: training and whole-trial inference throughput of the presets, side by side
in one run on this machine, as output frames per second → benchmarks/results/train.json."""

from __future__ import annotations

import platform
import time
from pathlib import Path

import torch

from .checkpoint import write_json
from .model import Twin
from .presets import PRESETS
from .train import TRAIN_PRESETS, poisson_loss

NEURONS = {"a": 300, "b": 345}  # the virtual mouse's default recordings


def _batch(frames: int, clips: int, neurons: int):
    """Random raw inputs and targets: video (B, T, 36, 64), behavior, pupil_center (B, T, 2), responses (B, T, N)."""
    return (torch.rand(clips, frames, 36, 64) * 255, torch.randn(clips, frames, 2), torch.randn(clips, frames, 2),
            torch.rand(clips, frames, neurons))


def _seconds_per_call(function, repeats: int) -> float:
    function()  # warm-up
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    return (time.perf_counter() - started) / repeats


def bench_preset(preset: str, repeats: int) -> dict:
    """Optimizer steps (all recordings, as the trainer does) and eval-mode whole 300-frame trials."""
    torch.manual_seed(0)
    model = Twin(PRESETS[preset], NEURONS)
    config = TRAIN_PRESETS[preset]
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = {name: _batch(config.frames, config.clips, n) for name, n in NEURONS.items()}

    def step():
        loss = sum(poisson_loss(model.rates(name, v, b, p), r[:, model.receptive_field - 1:])
                   for name, (v, b, p, r) in batches.items())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    trial = _batch(300, 1, NEURONS["a"])[:3]

    @torch.inference_mode()
    def infer():
        model.eval()
        model("a", *trial)
        model.train()

    step_seconds = _seconds_per_call(step, repeats)
    infer_seconds = _seconds_per_call(infer, repeats)
    outputs_per_step = len(NEURONS) * config.clips * (config.frames - model.receptive_field + 1)
    return {"parameters": sum(p.numel() for p in model.parameters()), "receptive_field": model.receptive_field,
            "clips": config.clips, "frames": config.frames, "step_seconds": step_seconds,
            "train_output_frames_per_s": outputs_per_step / step_seconds,
            "inference_output_frames_per_s": (300 - model.receptive_field + 1) / infer_seconds}


def run_bench(out: str | Path = "benchmarks/results/train.json", presets=("tiny", "small", "base"),
              repeats: int = 3) -> dict:
    results = {"machine": {"torch_threads": torch.get_num_threads(), "processor": platform.machine(),
                           "torch": torch.__version__},
               "presets": {preset: bench_preset(preset, repeats) for preset in presets}}
    presets = results["presets"]
    if "small" in presets and "base" in presets:
        results["small_over_base_train_throughput"] = (presets["small"]["train_output_frames_per_s"]
                                                       / presets["base"]["train_output_frames_per_s"])
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(out), results)
    return results
