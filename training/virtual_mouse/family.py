"""A family of virtual mice: every generative choice of the simulator as a distribution, drawn per member.

A `Variant` holds the ranges the simulator draws one mouse's neurons, behaviour, eyes, imaging noise and
movies from. `Variant()` is the original virtual mouse (the demo's); `draw_variant(k)` is member k of the
family: receptive-field families mixed in random proportions (Gabor simple and complex, centre–surround,
multi-subunit, weakly tuned, untuned), RF sizes and positions (up to beyond the screen edge), retinotopy
from tight to none, mono- to biphasic and short to long temporal kernels, output exponents with and
without divisive normalisation, behavioural gain from negligible to dominant, eye-movement statistics,
noise ceilings from 0.2 to 0.6, neuron counts and training minutes, movie statistics.

Members 0–99 are for developing the trainer; `HELD_OUT_SEEDS` (≥ 100) are only ever used to score it
(`twin bench fidelity`). Ranges are (low, high) pairs; a log-uniform draw is said where it is one.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace

import numpy as np

RF_FAMILIES = ("gabor_simple", "gabor_complex", "center_surround", "multi_subunit", "weakly_tuned", "untuned")
HELD_OUT_SEEDS = tuple(range(100, 112))
DEFAULT = "default"
FAMILY_PREFIX = "family-"


@dataclass(frozen=True)
class Variant:
    """The distributions one virtual mouse is drawn from. Defaults: the original virtual mouse."""

    name: str = DEFAULT
    # receptive fields: family mix (weights over RF_FAMILIES), sizes, positions
    rf_mix: tuple[float, ...] = (0.5, 0.5, 0.0, 0.0, 0.0, 0.0)
    spatial_period_px: tuple[float, float] = (8.0, 24.0)   # log-uniform
    sigma_per_period: tuple[float, float] = (0.15, 0.3)    # Gabor envelope σ / carrier period
    sigma_px: tuple[float, float] = (2.5, 5.0)              # σ is clipped to this range
    rf_overhang_px: float | None = None  # centres up to this far beyond the screen edge; None: ≥ σ + 2 inside
    direction_selective: float = 0.3     # fraction of Gabor neurons with space–time inseparable filters
    retinotopy_scatter: float | None = 1.5  # cortical scatter in RF px; None: no retinotopy at all
    # time
    latency_frames: tuple[float, float] = (2.0, 5.0)
    kernel_freq: tuple[float, float] = (0.07, 0.12)  # cycles/frame: 0 monophasic, ≥ 0.1 clearly biphasic
    # static nonlinearity
    exponent: tuple[float, float] = (2.0, 2.0)       # power of the rectified (or energy) drive
    normalized: float = 1.0                          # fraction of neurons with divisive normalisation
    semi_saturation: tuple[float, float] = (0.1, 0.25)
    evoked_rate_hz: float = 2.0                      # median evoked rate at the mean drive
    max_rate_hz: float = 80.0                        # median soft ceiling
    # behaviour and eyes
    running_gain: tuple[float, float] = (0.15, 0.1)  # (mean, std) of the log gain per z-scored unit
    pupil_gain: tuple[float, float] = (0.05, 0.08)
    eye_gain: tuple[float, float] = (0.25, 0.4)      # retinal px per eye-camera px
    saccade_rate: tuple[float, float] = (0.3, 0.8)   # per second
    fixation_std: tuple[float, float] = (6.0, 3.0)   # eye-camera px [x, y] between fixation targets
    # noise: target single-trial correlation with the expected response (≈ the ceiling)
    reliability: tuple[float, float] = (0.25, 0.65)
    # movies
    spectral_exponent: tuple[float, float] = (0.9, 1.3)
    rms_contrast: tuple[float, float] = (0.12, 0.4)
    pan_speed: float = 0.5                           # std of the mean pan velocity, px/frame
    objects: float = 3.0                             # mean hard-edged objects per scene
    # size of the member's recordings (what `twin data synth --variant` uses unless told otherwise)
    neurons: int = 300
    train_minutes: float = 6.0
    extras: dict = field(default_factory=dict)       # free-form notes written with the truth

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    @classmethod
    def from_dict(cls, values: dict) -> Variant:
        known = {f.name for f in fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known})


def _mix(rng: np.random.Generator) -> tuple[float, ...]:
    """RF family weights: 2–5 families present, Dirichlet weights among them."""
    present = rng.choice(len(RF_FAMILIES), size=int(rng.integers(2, 6)), replace=False)
    weights = np.zeros(len(RF_FAMILIES))
    weights[present] = rng.dirichlet(np.ones(len(present)))
    return tuple(float(round(w, 4)) for w in weights)


def _span(rng, low: float, high: float, width: tuple[float, float]) -> tuple[float, float]:
    """A sub-range of [low, high] of a random width (a fraction `width` of the whole)."""
    size = (high - low) * rng.uniform(*width)
    start = rng.uniform(low, high - size)
    return float(round(start, 4)), float(round(start + size, 4))


def draw_variant(seed: int) -> Variant:
    """Member `seed` of the family of virtual mice (deterministic)."""
    rng = np.random.default_rng([seed, 7_770])
    ceiling = rng.uniform(0.2, 0.6)
    gain = float(np.exp(rng.uniform(np.log(0.01), np.log(0.6))))  # negligible … dominant behaviour
    biphasic = rng.uniform(0.0, 0.14)
    lowest_period = float(rng.uniform(5.0, 12.0))
    normalized = float(rng.choice([0.0, 0.5, 1.0]))
    return Variant(
        name=f"{FAMILY_PREFIX}{seed}",
        rf_mix=_mix(rng),
        spatial_period_px=(lowest_period, float(lowest_period * rng.uniform(1.5, 4.0))),
        sigma_per_period=_span(rng, 0.12, 0.45, (0.3, 0.7)),
        sigma_px=(float(rng.uniform(1.5, 3.0)), float(rng.uniform(4.0, 9.0))),
        rf_overhang_px=float(rng.uniform(-4.0, 6.0)),
        direction_selective=float(rng.uniform(0.0, 0.5)),
        retinotopy_scatter=None if rng.random() < 0.25 else float(np.exp(rng.uniform(np.log(0.5), np.log(8.0)))),
        latency_frames=_span(rng, 1.5, 8.0, (0.2, 0.6)),
        kernel_freq=(float(round(biphasic, 4)), float(round(biphasic + rng.uniform(0.0, 0.04), 4))),
        exponent=_span(rng, 1.0, 3.0, (0.0, 0.5)),
        normalized=normalized,
        semi_saturation=_span(rng, 0.05, 0.5, (0.2, 0.5)),
        evoked_rate_hz=float(np.exp(rng.uniform(np.log(0.5), np.log(8.0)))),
        max_rate_hz=float(rng.uniform(30.0, 120.0)),
        running_gain=(float(round(gain, 4)), float(round(gain * rng.uniform(0.3, 1.0), 4))),
        pupil_gain=(float(round(gain * rng.uniform(-0.5, 0.8), 4)), float(round(gain * rng.uniform(0.2, 0.8), 4))),
        eye_gain=_span(rng, 0.05, 0.8, (0.1, 0.3)),
        saccade_rate=_span(rng, 0.1, 2.0, (0.1, 0.4)),
        fixation_std=(float(rng.uniform(2.0, 12.0)), float(rng.uniform(1.0, 6.0))),
        reliability=(float(round(max(0.1, ceiling - 0.15), 4)), float(round(min(0.8, ceiling + 0.15), 4))),
        spectral_exponent=_span(rng, 0.6, 1.8, (0.1, 0.4)),
        rms_contrast=_span(rng, 0.06, 0.6, (0.2, 0.5)),
        pan_speed=float(rng.uniform(0.1, 1.5)),
        objects=float(rng.uniform(0.0, 8.0)),
        neurons=int(np.exp(rng.uniform(np.log(300), np.log(8000)))),
        train_minutes=float(round(np.exp(rng.uniform(np.log(5.0), np.log(60.0))), 1)),
    )


def variant(name: str) -> Variant:
    """`"default"` or `"family-<seed>"` → its Variant; a clear error otherwise."""
    if name == DEFAULT:
        return Variant()
    if name.startswith(FAMILY_PREFIX) and name[len(FAMILY_PREFIX):].isdigit():
        return draw_variant(int(name[len(FAMILY_PREFIX):]))
    raise ValueError(f"unknown variant {name!r}: use {DEFAULT!r} or '{FAMILY_PREFIX}<seed>' (e.g. family-3)")


OWN_TRAIN_MINUTES = "own"  # in place of a number of training minutes: the member's own


def scaled(member: Variant, neurons: int | None = None, train_minutes: float | None = None) -> Variant:
    """The member with another recording size (the generative choices unchanged)."""
    return replace(member, neurons=member.neurons if neurons is None else neurons,
                   train_minutes=member.train_minutes if train_minutes is None else train_minutes)
