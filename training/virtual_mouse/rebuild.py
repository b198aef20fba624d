"""The virtual mouse of a written recording, rebuilt from its ``truth/`` folder, answering any movie.

``population_from_truth`` reads the per-neuron truth and ``recording.json`` back into the
``neurons.Population`` that generated the recording; ``expected_responses`` gives that population's
exact expected responses (no spikes, no noise) to new movies at mean behaviour with the eye at rest,
i.e. what a perfect twin would predict. An in-silico experiment run on it measures the experiment's
own error against the truth (its floor), apart from any twin's.
"""
import json
from dataclasses import fields
from pathlib import Path

import numpy as np

from . import imaging
from .neurons import RECORDING_WIDE, Population, expected_rates

RENAMED = {"baseline": "baseline_rate"}  # Population field → truth file, where they differ


def population_from_truth(recording: str | Path) -> Population:
    """The ``Population`` of a virtual-mouse recording folder (``truth/neurons/*.npy`` and
    ``truth/recording.json``); ``FileNotFoundError`` for a recording without truth."""
    truth = Path(recording) / "truth"
    if not (truth / "recording.json").is_file():
        raise FileNotFoundError(f"{truth}: no ground truth (only virtual-mouse recordings have it)")
    wide = json.loads((truth / "recording.json").read_text())
    values = {"eye_gain": float(wide["eye_gain"]), "eye_center": np.asarray(wide["eye_center"], float),
              "behavior_mean": np.asarray(wide["behavior_mean"], float),
              "behavior_std": np.asarray(wide["behavior_std"], float)}
    for field in fields(Population):
        if field.name not in RECORDING_WIDE:
            values[field.name] = np.load(truth / "neurons" / f"{RENAMED.get(field.name, field.name)}.npy")
    values["is_complex"] = values["is_complex"].astype(bool)
    return Population(**values)


def expected_responses(pop: Population, movies: np.ndarray) -> np.ndarray:
    """Exact expected responses ``(B, T, N)`` (the recording's units, as in ``truth/expected``) to
    movies ``(B, T, H, W)`` (screen values 0..255) at mean behaviour, the pupil at its rest position.
    The calcium starts at the steady state of the nominal mean rate, as in a recording: give the
    movies a lead-in if their first frames matter."""
    movies = np.asarray(movies, np.float32)
    batch, frames = movies.shape[:2]
    behavior = np.broadcast_to(pop.behavior_mean.astype(np.float32), (batch, frames, 2))
    pupil = np.broadcast_to(pop.eye_center.astype(np.float32), (batch, frames, 2))
    rates = expected_rates(pop, movies, behavior, pupil)
    return imaging.expected_response(rates, pop.calcium_tau, pop.baseline + pop.amplitude, pop.noise_std)
