"""Neurons of the virtual mouse: a population with known receptive fields → expected spike rates.

Each neuron sees the retinal image (the screen in contrast units, shifted by eye position; see
``retina``) through a receptive field of one of the ``family.RF_FAMILIES`` (Gabor in the original
mouse; see ``receptive_fields``): even and odd spatial filters applied to all frames at once as one
``(2N, H*W)`` matrix give projections ``p_e, p_o (B, T, N)``; two causal temporal kernels turn them
into one (simple cell) or two (complex cell) linear channels ``u``, with a space–time inseparable mix
for direction-selective neurons. The response is

- simple cell: ``relu(u0)^p`` (rectified power), complex cell: ``(u0² + u1²)^(p/2)`` (quadrature
  energy), with the neuron's exponent p (2 in the original mouse),

divided by ``semi_saturation² + w·E(t)`` (w = 1 with divisive normalisation, else 0), where E is the
local mean squared contrast in a Gaussian pool around the RF over the last few frames (contrast
normalisation: responses saturate with contrast but keep their selectivity). This drive is scaled to
mean 1 over the training movies (``drive_norm``): ``x(t) = drive(t) / drive_norm``, and, with a soft
ceiling at ``max_rate`` for the strongest stimuli,

    λ(t) = exp(running_gain·z_run(t) + pupil_gain·z_pupil(t))
           · (baseline + max_rate · tanh(amplitude · x(t) / max_rate))   [Hz]

with behaviour z-scored by ``behavior_mean/std``. Arrays are time-first: video ``(B, T, H, W)``,
behaviour ``(B, T, 2)`` = [pupil size, running speed], pupil centre ``(B, T, 2)`` = [x, y], rates
``(B, T, N)``.
"""
from dataclasses import dataclass, fields, replace

import numpy as np

from .family import RF_FAMILIES, Variant
from .receptive_fields import (DOG_PERIOD_PER_SIGMA, channel_kernels, contrast_pools, filter_in_time, pool_kernels,
                               spatial_filters)
from .retina import contrast, eye_shift, shift_frames
from .stimuli import HEIGHT, WIDTH

SUBUNITS = 3  # Gabor subunits of a multi-subunit neuron


@dataclass
class Population:
    """Parameters of N neurons of one mouse (all per-neuron arrays have shape ``(N,)`` unless noted)."""
    rf_center: np.ndarray         # (N, 2) [x, y] px
    rf_sigma: np.ndarray          # px (the centre's σ for centre–surround and untuned neurons)
    spatial_period: np.ndarray    # px
    orientation_deg: np.ndarray   # carrier wave-vector direction mod 180, [0, 180)
    phase: np.ndarray             # simple-cell carrier phase, rad
    is_complex: np.ndarray        # bool
    direction_weight: np.ndarray  # signed weight of the quadrature temporal path, 0 = not DS
    latency: np.ndarray           # temporal-kernel peak, frames
    kernel_freq: np.ndarray       # temporal-kernel carrier frequency, cycles/frame
    semi_saturation: np.ndarray   # RMS contrast at which contrast normalisation halves the drive
    baseline: np.ndarray          # Hz
    amplitude: np.ndarray         # Hz, evoked rate at the mean drive of the training movies (x = 1)
    max_rate: np.ndarray          # Hz, soft ceiling of the evoked rate
    running_gain: np.ndarray      # per unit z-scored running speed (log gain)
    pupil_gain: np.ndarray        # per unit z-scored pupil size (log gain)
    calcium_tau: np.ndarray       # s
    reliability: np.ndarray       # target single-trial correlation of responses with their expectation
    noise_std: np.ndarray         # fluorescence noise std per imaging sample (set by calibration)
    eye_gain: float               # retinal px per eye-camera px (one eye for all neurons)
    eye_center: np.ndarray        # (2,) pupil centre [x, y] at which the retinal image is unshifted
    behavior_mean: np.ndarray     # (2,) [pupil, running] used to z-score behaviour
    behavior_std: np.ndarray      # (2,)
    drive_norm: np.ndarray        # mean drive on the training movies
    rf_family: np.ndarray         # index into family.RF_FAMILIES
    subunits: np.ndarray          # (N, SUBUNITS, 3) [dx px, dy px, dθ deg] of extra Gabor subunits (multi-subunit)
    exponent: np.ndarray          # power p of the static nonlinearity
    normalization: np.ndarray     # weight w of the contrast pool in the divisive normalisation (1 or 0)

    def __len__(self):
        return len(self.baseline)


RECORDING_WIDE = ("eye_gain", "eye_center", "behavior_mean", "behavior_std")  # the fields not per neuron


def subset(pop, index):
    """The neurons ``index`` (a slice or an index array) of ``pop``, as a ``Population``."""
    return replace(pop, **{f.name: getattr(pop, f.name)[index] for f in fields(pop) if f.name not in RECORDING_WIDE})


def sample_population(rng, n, eye_center, variant=Variant(), extra=None):
    """Draw ``n`` neurons of one mouse whose pupil rests at ``eye_center (2,)`` from ``variant``'s
    distributions; not yet calibrated. ``extra`` (a Generator) draws what the original mouse did not
    have (RF families, subunits, exponents, normalisation), so the original mouse stays as it was."""
    extra = np.random.default_rng([0, 103]) if extra is None else extra
    period = np.exp(rng.uniform(*np.log(variant.spatial_period_px), n))
    sigma = np.clip(period * rng.uniform(*variant.sigma_per_period, n), *variant.sigma_px)
    margin = sigma + 2.0 if variant.rf_overhang_px is None else np.full(n, -variant.rf_overhang_px)
    center = np.stack([rng.uniform(margin, WIDTH - 1 - margin), rng.uniform(margin, HEIGHT - 1 - margin)], 1)
    ds_draw = rng.random(n) < variant.direction_selective
    orientation, phase = rng.uniform(0.0, 180.0, n), rng.uniform(0.0, 2 * np.pi, n)
    complex_draw = rng.random(n) < 0.5
    direction = rng.choice([-1.0, 1.0], n) * rng.uniform(0.7, 1.0, n)

    family = _families(extra, n, variant, complex_draw)
    weak, dog = family == _index("weakly_tuned"), np.isin(family, [_index("center_surround"), _index("untuned")])
    period = np.where(weak, sigma / extra.uniform(0.08, 0.12, n), period)  # under one cycle: broad tuning
    period = np.where(dog, DOG_PERIOD_PER_SIGMA * sigma, period)  # the DoG's preferred period
    phase = np.where(dog, np.pi * (phase > np.pi), phase)  # ON (0) or OFF (π) centre
    subunits = np.zeros((n, SUBUNITS, 3))
    multi = family == _index("multi_subunit")
    subunits[multi] = extra.normal(0.0, 1.0, (int(multi.sum()), SUBUNITS, 3)) * [0.7, 0.7, 25.0]
    subunits[multi, :, :2] *= sigma[multi, None, None]
    is_complex = np.isin(family, [_index(f) for f in ("gabor_complex", "multi_subunit", "untuned")])
    return Population(
        rf_center=center, rf_sigma=sigma, spatial_period=period, orientation_deg=orientation, phase=phase,
        is_complex=is_complex | (weak & complex_draw), direction_weight=(ds_draw & ~dog) * direction,
        latency=rng.uniform(*variant.latency_frames, n), kernel_freq=rng.uniform(*variant.kernel_freq, n),
        semi_saturation=rng.uniform(*variant.semi_saturation, n),
        baseline=rng.lognormal(np.log(0.5), 0.5, n), amplitude=rng.lognormal(np.log(variant.evoked_rate_hz), 0.4, n),
        max_rate=rng.lognormal(np.log(variant.max_rate_hz), 0.25, n),
        running_gain=rng.normal(*variant.running_gain, n), pupil_gain=rng.normal(*variant.pupil_gain, n),
        calcium_tau=rng.uniform(0.2, 0.35, n), reliability=rng.uniform(*variant.reliability, n),
        noise_std=np.zeros(n), eye_gain=float(rng.uniform(*variant.eye_gain)),
        eye_center=np.asarray(eye_center, dtype=float), behavior_mean=np.zeros(2), behavior_std=np.ones(2),
        drive_norm=np.ones(n), rf_family=family, subunits=subunits,
        exponent=extra.uniform(*variant.exponent, n),
        normalization=(extra.random(n) < variant.normalized).astype(float))


def _index(family: str) -> int:
    return RF_FAMILIES.index(family)


def _families(extra, n, variant, complex_draw):
    """RF family ``(N,)`` of each neuron: the original mouse's simple/complex split, else drawn from the mix."""
    if tuple(variant.rf_mix) == Variant().rf_mix:
        return np.where(complex_draw, _index("gabor_complex"), _index("gabor_simple"))
    return extra.choice(len(RF_FAMILIES), n, p=np.asarray(variant.rf_mix) / np.sum(variant.rf_mix))


def drive_from_projections(pop, even, odd, energy):
    """Drive ``(B, T, N)`` (before ``drive_norm``) from the spatial projections ``even, odd (B, T, N)``
    and the pooled squared contrast ``energy (B, T, N)`` of each frame."""
    kernels = channel_kernels(pop)
    u0 = filter_in_time(even, kernels[0, 0]) + filter_in_time(odd, kernels[0, 1])
    u1 = filter_in_time(even, kernels[1, 0]) + filter_in_time(odd, kernels[1, 1])
    power = pop.exponent.astype(np.float32)
    response = np.where(pop.is_complex, (u0**2 + u1**2) ** (power / 2), np.maximum(u0, 0.0) ** power)
    pooled = filter_in_time(energy, pool_kernels(pop)) * pop.normalization.astype(np.float32)
    return response / (pop.semi_saturation**2 + pooled)


def retinal_filters(pop):
    """``(spatial (H*W, 2N), pools (H*W, N))``: the even and odd spatial filters and the contrast pools
    of ``pop``, transposed (views, as ``raw_drive`` multiplies by them)."""
    return spatial_filters(pop).reshape(2 * len(pop), -1).T, contrast_pools(pop).T


def raw_drive(pop, video, pupil_center, filters=None):
    """Drive ``(B, T, N)`` (before ``drive_norm``) for ``video (B, T, H, W)`` (0..255), ``pupil_center (B, T, 2)``;
    ``filters``: ``retinal_filters(pop)``, computed here if not given."""
    batch, n_frames = video.shape[:2]
    spatial, pools = retinal_filters(pop) if filters is None else filters
    shift = eye_shift(pupil_center, pop.eye_center, pop.eye_gain).reshape(-1, 2)
    retina = shift_frames(contrast(video).reshape(-1, HEIGHT, WIDTH), shift).reshape(batch * n_frames, -1)
    projections = retina @ spatial
    even, odd = projections.reshape(batch, n_frames, 2, len(pop)).transpose(2, 0, 1, 3)
    energy = (retina**2 @ pools).reshape(batch, n_frames, len(pop))
    # one trial at a time: the same numbers, in arrays that stay in the cache
    return np.concatenate([drive_from_projections(pop, even[b:b + 1], odd[b:b + 1], energy[b:b + 1])
                           for b in range(batch)])


def behavioral_gain(pop, behavior):
    """Multiplicative gain ``(B, T, N)`` from ``behavior (B, T, 2)`` = [pupil size, running speed]."""
    z = (behavior - pop.behavior_mean) / pop.behavior_std
    return np.exp(z[..., 1:] * pop.running_gain + z[..., :1] * pop.pupil_gain).astype(np.float32)


def rate_at_rest(pop, drive):
    """Rates ``(..., N)`` Hz at mean behaviour (gain 1) for drive ``(..., N)`` (before ``drive_norm``)."""
    return pop.baseline + pop.max_rate * np.tanh(pop.amplitude * drive / pop.drive_norm / pop.max_rate)


def rates_from_drive(pop, drive, behavior):
    """Expected spike rates ``(B, T, N)`` Hz from drive ``(B, T, N)`` and ``behavior (B, T, 2)``."""
    return (behavioral_gain(pop, behavior) * rate_at_rest(pop, drive)).astype(np.float32)


def expected_rates(pop, video, behavior, pupil_center):
    """Expected spike rates λ in Hz, ``(T, N)`` for one trial or ``(B, T, N)`` for a batch.

    ``video (T, H, W)`` or ``(B, T, H, W)`` in screen values 0..255, ``behavior (…, T, 2)`` =
    [pupil size, running speed], ``pupil_center (…, T, 2)`` = [x, y]; time-first, no NaNs.
    """
    single = np.ndim(video) == 3
    video, behavior, pupil_center = (np.asarray(a)[None] if single else np.asarray(a)
                                     for a in (video, behavior, pupil_center))
    rates = rates_from_drive(pop, raw_drive(pop, video, pupil_center), behavior)
    return rates[0] if single else rates
