"""The training half of `twin demo` (`twinserve/demo.py` runs the whole job).

virtual mouse → train the `small` twin → evaluate every tier → figures, all under one folder.
Each stage is skipped or resumed when its output is already there. Progress goes to stderr.
"""

from __future__ import annotations

import json
import sys
from functools import partial
from pathlib import Path

import numpy as np

from .checkpoint import load_run
from .data import Recording
from .evaluate import load_expected, predict
from .plots import plot_traces
from .presets import DEMO_MAX_MINUTES, DEMO_STEPS


def run_training_demo(out: str | Path, neurons: int = 300, train_minutes: float = 6.0, steps: int = DEMO_STEPS,
                      minutes: float = DEMO_MAX_MINUTES, seed: int = 0, stages: int = 3) -> dict:
    """Stages 1–3 of `stages` (the numbering in the printed progress); training stops at `steps`
    optimizer steps or after `minutes`, whichever comes first."""
    if steps < 1 or minutes <= 0:
        raise ValueError(f"the demo trains for at least 1 step and a positive number of minutes, got {steps} "
                         f"steps and {minutes} minutes")
    say = partial(print, file=sys.stderr, flush=True)
    from .train import train
    from .virtual_mouse import synthesize

    out = Path(out)
    data = out / "data"
    folders = sorted(p for p in data.glob("virtual-mouse-*") if (p / "meta/trials/tiers.npy").is_file())
    if not folders:
        say(f"[1/{stages}] writing the virtual mouse to {data}")
        folders = synthesize(data, recordings=2, neurons=neurons, train_minutes=train_minutes, seed=seed)
    run = out / "run"
    if (run / "metrics.json").is_file():
        say(f"[2/{stages}] using the trained twin in {run}")
        results = json.loads((run / "metrics.json").read_text())
    else:
        say(f"[2/{stages}] training the small twin into {run} for {steps} steps (at most {minutes:g} minutes)")
        results = train(folders, run, preset="small", steps=steps, minutes=minutes)
    say(f"[3/{stages}] figures")
    recording = Recording(folders[0])
    trial = recording.load("oracle")[0]
    model, _ = load_run(run)
    predicted = predict(model, recording.name, [trial])[0]
    expected = load_expected(recording, [trial])
    best = np.argsort(-np.load(run / "metrics_per_neuron.npz")[f"{recording.name}/oracle/single_trial_correlation"])
    plot_traces(trial.responses, predicted, expected[0] if expected else None, best[:4].tolist(),
                run / "traces.png", f"{recording.name}, oracle trial {trial.index}: best-predicted neurons")
    for name, tiers in results.items():
        oracle = tiers["oracle"]
        say(f"{name}: oracle single-trial correlation {oracle['single_trial_correlation']:.3f}"
              + (f" = {oracle['fraction_of_ceiling']:.2f} of the ceiling {oracle['ceiling_single_trial_correlation']:.3f}"
                 if "fraction_of_ceiling" in oracle else ""))
    say(f"figures: {run / 'training_curve.png'}, {run / 'traces.png'}")
    return results
