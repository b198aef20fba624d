"""The virtual mouse itself in the place of a served twin: the in-silico experiments' own error.

An experiment estimates a neuron's property from its responses to a few stimuli, so it has an error
of its own even on exact responses: a tuning curve sampled at a few spatial periods, an RF map made of
dots on the screen only (a centre off screen cannot be found), a multi-subunit RF whose dots map the
subunits' spread rather than the main envelope's centre. `SimulatedTwin` answers an experiment as
`clients.experiments.common.ServedTwin` does, with the recording's exact expected responses
(`training.virtual_mouse.rebuild`); the experiment run on it, validated against the truth, gives the
floor a perfect twin would reach.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from twinserve.contract import FPS, GREY
from twinserve.training.virtual_mouse.neurons import Population
from twinserve.training.virtual_mouse.rebuild import expected_responses, population_from_truth

LEAD_IN_S = 2.0  # grey before every stimulus: calcium (τ ≤ 0.35 s) and temporal kernels settle


@dataclass(frozen=True)
class SimulatedTwin:
    """A virtual-mouse recording's population answering movies at mean behaviour, the eye at rest."""

    population: Population
    lead_in: int = round(LEAD_IN_S * FPS)

    @classmethod
    def of(cls, recording: str | Path) -> SimulatedTwin:
        return cls(population_from_truth(recording))

    def responses_to(self, stimuli: dict[str, np.ndarray], parameters: dict, out: Path,
                     progress: bool = True) -> tuple[list[str], np.ndarray]:
        """`ServedTwin.responses_to`: movies {name: (T, H, W)} → (names, responses (S, T_max, N), NaN
        past each movie's end); `out` is created for the experiment's files, `parameters` not needed."""
        Path(out).mkdir(parents=True, exist_ok=True)
        names = sorted(stimuli)
        answers = [self._answer(stimuli[name]) for name in tqdm(names, desc="simulated mouse", disable=not progress)]
        responses = np.full((len(names), max(len(a) for a in answers), len(self.population)), np.nan, np.float32)
        for i, answer in enumerate(answers):
            responses[i, :len(answer)] = answer
        return names, responses

    def _answer(self, movie: np.ndarray) -> np.ndarray:
        grey = np.full((self.lead_in, *movie.shape[1:]), GREY, np.float32)
        return expected_responses(self.population, np.concatenate([grey, movie])[None])[0, self.lead_in:]
