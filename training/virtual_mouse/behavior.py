"""Behaviour of the virtual mouse: running speed, pupil size and pupil centre, sampled per trial.

Time-first arrays at 30 frames per second:
- ``behavior (T, 2)`` = [pupil size (eye-camera px), running speed (cm/s, ≥ 0)];
- ``pupil_center (T, 2)`` = [x, y] in eye-camera pixels.
(On disk both are stored time-last, ``(2, T)``.)

Running alternates between rest and running bouts; the pupil dilates with running (low-passed) on top
of slow fluctuations; the eye makes fixational drift plus occasional saccades between fixation points.
"""
from dataclasses import dataclass

import numpy as np
from scipy.signal import lfilter

from .family import Variant

FPS = 30


@dataclass(frozen=True)
class Animal:
    """Behavioural traits of one mouse (one recording)."""
    run_fraction: float      # fraction of time spent running
    run_bout_s: float        # mean running-bout duration, seconds
    run_speed: float         # typical running speed, cm/s
    pupil_rest: float        # pupil size at rest, eye-camera px
    pupil_dilation: float    # extra pupil size while running, eye-camera px
    eye_center: np.ndarray   # (2,) mean pupil centre [x, y], eye-camera px
    saccade_rate: float      # saccades per second
    fixation_std: tuple = (6.0, 3.0)  # eye-camera px [x, y]: spread of the fixation targets


def sample_animal(rng, variant=Variant()):
    """Draw the behavioural traits of one mouse (eye movements from ``variant``)."""
    return Animal(run_fraction=rng.uniform(0.3, 0.6), run_bout_s=rng.uniform(3.0, 8.0),
                  run_speed=rng.uniform(8.0, 20.0), pupil_rest=rng.uniform(15.0, 25.0),
                  pupil_dilation=rng.uniform(4.0, 10.0),
                  eye_center=np.array([rng.uniform(140, 180), rng.uniform(100, 130)]),
                  saccade_rate=rng.uniform(*variant.saccade_rate), fixation_std=tuple(variant.fixation_std))


def ornstein_uhlenbeck(rng, n, tau, std):
    """Stationary Ornstein–Uhlenbeck process ``(n,)`` with time constant ``tau`` frames."""
    decay = np.exp(-1.0 / tau)
    kicks = rng.normal(0.0, std * np.sqrt(1 - decay**2), n)
    kicks[0] = rng.normal(0.0, std)
    return lfilter([1.0], [1.0, -decay], kicks)


def low_pass(x, tau):
    """Causal exponential smoothing ``(n,)`` of ``x`` with time constant ``tau`` frames, started at x[0]."""
    decay = np.exp(-1.0 / tau)
    return lfilter([1 - decay], [1.0, -decay], x, zi=[decay * x[0]])[0]


def running_state(rng, animal, n):
    """Binary rest (0) / run (1) sequence ``(n,)`` from a two-state Markov chain."""
    p_stop = 1.0 / (animal.run_bout_s * FPS)
    p_start = p_stop * animal.run_fraction / (1 - animal.run_fraction)
    state = np.empty(n)
    state[0] = rng.random() < animal.run_fraction
    flips = rng.random(n)
    for t in range(1, n):
        p_flip = p_stop if state[t - 1] else p_start
        state[t] = 1 - state[t - 1] if flips[t] < p_flip else state[t - 1]
    return state


def pupil_center(rng, animal, n):
    """Pupil centre ``(n, 2)`` [x, y]: fixation points switched by saccades, plus fixational drift."""
    targets = np.zeros((n, 2))
    target = rng.normal(0.0, animal.fixation_std)
    saccades = rng.random(n) < animal.saccade_rate / FPS
    for t in range(n):
        if saccades[t]:
            target = rng.normal(0.0, animal.fixation_std)
        targets[t] = target
    targets[1:] = 0.5 * (targets[1:] + targets[:-1])  # saccades last about two frames
    drift = np.stack([ornstein_uhlenbeck(rng, n, tau=30.0, std=1.0) for _ in range(2)], axis=1)
    return animal.eye_center + targets + drift


def sample_trial(rng, animal, n):
    """One trial's ``behavior (n, 2)`` [pupil size, running speed] and ``pupil_center (n, 2)`` [x, y]."""
    state = low_pass(running_state(rng, animal, n), tau=0.4 * FPS)
    speed_noise = np.exp(ornstein_uhlenbeck(rng, n, tau=1.0 * FPS, std=0.25))
    running = animal.run_speed * state * speed_noise + np.abs(rng.normal(0.0, 0.2, n))
    arousal = low_pass(running / animal.run_speed, tau=1.5 * FPS)
    pupil = (animal.pupil_rest + animal.pupil_dilation * arousal
             + ornstein_uhlenbeck(rng, n, tau=3.0 * FPS, std=0.1 * animal.pupil_rest))
    behavior = np.stack([np.maximum(pupil, 1.0), running], axis=1)
    return behavior.astype(np.float32), pupil_center(rng, animal, n).astype(np.float32)
