"""`twin bench gpu-train` (`make gpu-check`): a few hundred training steps of `base` on a GPU.

Writes a virtual mouse, trains `--preset` for `--steps` steps on `--device` with `--precision`
(auto: bf16 autocast on CUDA, fp32 master weights) and the out-of-core loader, evaluates every tier,
and reports steps/s and training frames/s (steps timed without validation), peak GPU memory, the
evaluation time and the oracle accuracy → benchmarks/results/gpu_train.json. Runs on a CPU too
(`--device cpu`, for checking the script), where the absolute numbers mean nothing.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from twinserve.training.distributed import resolve_device
from twinserve.training.presets import preset as find_preset
from twinserve.training.train import train
from twinserve.training.virtual_mouse import synthesize

from .harness import machine, write_results


def run_bench(out: str | Path, preset: str = "base", steps: int = 300, device: str = "cuda",
              precision: str = "auto", neurons: int = 1000, recordings: int = 2, train_minutes: float = 6.0,
              workdir: str | Path | None = None, progress: bool = True) -> dict:
    import torch

    resolved = resolve_device(device)
    with tempfile.TemporaryDirectory() as scratch:
        workdir = Path(workdir or scratch)
        data = synthesize(workdir / "data", recordings=recordings, neurons=neurons, train_minutes=train_minutes,
                          seed=0, progress=progress)
        if resolved.type == "cuda":
            torch.cuda.init()  # the allocator's statistics exist only once CUDA is initialised
            torch.cuda.reset_peak_memory_stats(resolved)
        started = time.time()
        metrics = train(data, workdir / "run", preset=preset, progress=progress, device=str(resolved),
                        precision=precision, steps=steps, minutes=1e6, eval_every=steps)
        total = time.time() - started
        state = json.loads((workdir / "run" / "checkpoint" / "state.json").read_text())
        config = json.loads((workdir / "run" / "config.json").read_text())
    settings = find_preset(preset).train
    frames = state["step"] * settings.clips * settings.frames * recordings
    gpu = {}
    if resolved.type == "cuda":
        properties = torch.cuda.get_device_properties(resolved)
        gpu = {"name": properties.name, "memory_bytes": properties.total_memory,
               "peak_allocated_bytes": torch.cuda.max_memory_allocated(resolved),
               "peak_reserved_bytes": torch.cuda.max_memory_reserved(resolved)}
    oracle = {name: tiers["oracle"] for name, tiers in metrics.items() if "oracle" in tiers}
    results = {
        "config": {"preset": preset, "steps": steps, "device": str(resolved), "precision": config["precision"],
                   "neurons": neurons, "recordings": recordings, "train_minutes": train_minutes,
                   "clips": settings.clips, "frames": settings.frames},
        "machine": {**machine(), "gpu": gpu},
        "steps_per_s": state["step"] / state["step_seconds"],
        "training_frames_per_s": frames / state["step_seconds"],
        "step_seconds": state["step_seconds"], "total_seconds": total,
        "oracle": {name: {k: summary.get(k) for k in ("single_trial_correlation", "fraction_of_ceiling")}
                   for name, summary in oracle.items()},
    }
    write_results(results, out)
    return results
