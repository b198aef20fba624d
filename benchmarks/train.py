"""`twin bench train`: training and whole-trial inference throughput of the presets, side by side
in one run on this machine, as output frames per second → benchmarks/results/train.json.

Every preset's optimizer step (all recordings, as the trainer does: its `TrainConfig`'s clips and
frames) and eval-mode whole trial are measured interleaved with the others'. A factorized preset
named in `contiguous` is measured a second time, as `<preset>-contiguous`, with its core's input
left in the default layout instead of channels-last (`FactorizedCore.channels_last`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from twinserve.contract import FPS
from twinserve.export.onnx_export import random_inputs
from twinserve.training.presets import PRESETS
from twinserve.training.loss import poisson_loss

from .harness import RESULTS, Workload, machine, measure, write_results
from .twins import random_twin

NEURONS = {"a": 300, "b": 345}  # the virtual mouse's default recordings
TRIAL_FRAMES = round(10 * FPS)  # a SENSORIUM trial: 10 s


def _batch(frame_shape, frames: int, clips: int, neurons: int, seed: int) -> list[torch.Tensor]:
    """Random raw inputs and targets: video, behavior, pupil_center and responses (B, T, N)."""
    arrays = random_inputs(clips, frames, frame_shape, seed)
    responses = np.random.default_rng(seed).random((clips, frames, neurons), dtype=np.float32)
    return [torch.from_numpy(a) for a in (*arrays, responses)]


def _workloads(preset: str, channels_last: bool = True) -> tuple[dict, dict[str, Workload]]:
    """One preset's facts and its two workloads: an optimizer step and an eval-mode whole trial."""
    twin = random_twin(preset, NEURONS)
    if not channels_last:
        twin.core.channels_last = False
    config = PRESETS[preset].train
    optimizer = torch.optim.AdamW(twin.parameters(), lr=1e-4)
    batches = {name: _batch(twin.frame_shape, config.frames, config.clips, n, seed)
               for seed, (name, n) in enumerate(NEURONS.items())}
    trial = _batch(twin.frame_shape, TRIAL_FRAMES, 1, NEURONS["a"], seed=len(NEURONS))[:3]

    def step():
        loss = sum(poisson_loss(twin.rates(name, v, b, p), r[:, twin.offset:])
                   for name, (v, b, p, r) in batches.items())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    @torch.inference_mode()
    def infer():
        twin.eval()
        twin("a", *trial)
        twin.train()

    facts = {"parameters": sum(p.numel() for p in twin.parameters()), "receptive_field": twin.receptive_field,
             "clips": config.clips, "frames": config.frames}
    return facts, {"step": Workload(step, len(NEURONS) * config.clips * (config.frames - twin.offset)),
                   "infer": Workload(infer, TRIAL_FRAMES - twin.offset)}


def run_bench(out: str | Path = f"{RESULTS}/train.json", presets=("tiny", "small", "base"), repeats: int = 3,
              seconds: float = 1.0, contiguous=()) -> dict:
    """Measure every preset's step and trial, `repeats` interleaved rounds of ≥ `seconds` each → results."""
    wrong = [p for p in contiguous if p not in PRESETS or PRESETS[p].core != "factorized"]
    if wrong:
        raise ValueError(f"--contiguous-input takes factorized presets, not {wrong}")
    facts, workloads = {}, {}
    presets = list(dict.fromkeys([*presets, *contiguous]))  # the speed-up compares both layouts
    variants = [(preset, preset, True) for preset in presets] + [(f"{p}-contiguous", p, False) for p in contiguous]
    for label, preset, channels_last in variants:
        facts[label], paths = _workloads(preset, channels_last)
        workloads.update({f"{label}/{name}": workload for name, workload in paths.items()})
    rates = measure(workloads, seconds, repeats)
    results = {"machine": machine(), "repeats": repeats, "presets": {}}
    for preset, _, _ in variants:
        step, infer = rates[f"{preset}/step"], rates[f"{preset}/infer"]
        results["presets"][preset] = {
            **facts[preset], "step_seconds": workloads[f"{preset}/step"].units / step.median,
            "train_output_frames_per_s": step.median, "train_spread": step.spread,
            "inference_output_frames_per_s": infer.median, "inference_spread": infer.spread}
    measured = results["presets"]
    if "small" in measured and "base" in measured:
        results["small_over_base_train_throughput"] = (measured["small"]["train_output_frames_per_s"]
                                                       / measured["base"]["train_output_frames_per_s"])
    for preset in contiguous:
        results[f"{preset}_channels_last_speedup"] = {
            kind: measured[preset][key] / measured[f"{preset}-contiguous"][key]
            for kind, key in [("train", "train_output_frames_per_s"), ("inference", "inference_output_frames_per_s")]}
    write_results(results, out)
    return results
