"""`twin bench cores`: twins of different cores trained for the same wall time on the same virtual
mouse, one after the other on this machine; their oracle single-trial correlations side by side
→ benchmarks/results/cores.json and a figure of the validation curves (cores.png)."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

from twinserve.training.plots import plot_validation_curves
from twinserve.training.presets import PRESETS
from twinserve.training.train import train
from twinserve.training.virtual_mouse import synthesize

from .harness import RESULTS, Stopwatch, machine, oracle_summary, write_results


def _trained(data: list, run: Path, preset: str, minutes: float, progress: bool) -> dict:
    """Train `preset` for `minutes` of wall time (no step budget) and evaluate it → its results entry."""
    with Stopwatch() as watch:
        metrics = train(data, run, preset=preset, progress=progress, minutes=minutes, steps=10**9)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    config = json.loads((run / "config.json").read_text())
    oracle = oracle_summary(metrics)
    return {"core": PRESETS[preset].core, "model": config["model"], "steps": state["step"],
            "best_step": state["best_step"], "training_minutes": state["elapsed"] / 60,
            "wall_minutes_with_setup_and_evaluation": watch.seconds / 60,
            "oracle_single_trial_correlation": float(np.mean([o["single_trial_correlation"] for o in oracle.values()])),
            "oracle": oracle, "validation_history": state["history"]}


def run_bench(out: str | Path = f"{RESULTS}/cores.json", presets=("small", "vit-small", "gru-small", "fnn-small"),
              minutes: float = 8.0, data: list[str | Path] | None = None, progress: bool = True) -> dict:
    """Train each preset for `minutes` of wall time and evaluate it on all tiers → results.

    data: recording folders; default: the virtual mouse of `make demo` (2 recordings, 300 neurons,
    6 training minutes, seed 0), written to a temporary folder.
    """
    out = Path(out)
    results = {"minutes_per_preset": minutes, "machine": machine(), "presets": {}}
    with tempfile.TemporaryDirectory() as scratch:
        if data is None:
            data = synthesize(Path(scratch) / "mouse", recordings=2, neurons=300, train_minutes=6.0, seed=0,
                              progress=progress)
        results["data"] = [Path(d).name for d in data]
        for preset in presets:
            results["presets"][preset] = _trained(data, Path(scratch) / preset, preset, minutes, progress)
    write_results(results, out)
    plot_validation_curves(results, out.with_suffix(".png"))
    return results
