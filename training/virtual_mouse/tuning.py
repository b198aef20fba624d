"""True orientation and direction tuning of the virtual neurons.

Each neuron is shown full-contrast drifting gratings (``stimuli.drifting_grating``, unrounded) at its own
spatial period and at the temporal frequency (from ``TUNING_TF_HZ``) its kernel passes best, with
behaviour at its mean (gain 1) and the eye at rest (no shift). The response is the mean expected rate
(Hz) over frames 30..119 of a 120-frame presentation, a whole number of temporal cycles. Because a
grating's projection on a filter is ``Re(ẑ e^{−iωt})`` with ``ẑ = Σ_x g(x) e^{i k·x}``, the projections
(and the contrast pool's energy) are computed exactly without rendering movies.

Vector-sum indices over the 16 directions θ: ``OSI = |Σ r e^{2iθ}| / Σ r``, ``DSI = |Σ r e^{iθ}| / Σ r``.
"""
import numpy as np

from .neurons import drive_from_projections, rate_at_rest, subset
from .receptive_fields import contrast_pools, spatial_filters, temporal_kernels
from .stimuli import AMPLITUDE, FPS, GREY, HEIGHT, WIDTH

TUNING_DIRECTIONS_DEG = np.arange(16) * 22.5
TUNING_TF_HZ = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
PRESENTATION_FRAMES, SETTLE_FRAMES = 120, 30


def best_temporal_frequency(pop):
    """Per-neuron temporal frequency ``(N,)`` Hz from ``TUNING_TF_HZ`` maximising |k_a|'s gain."""
    kernel = temporal_kernels(pop)[:, 0]  # (N, K)
    lags = np.arange(kernel.shape[1])
    phasors = np.exp(-2j * np.pi * TUNING_TF_HZ[:, None] * lags / FPS)  # (F, K)
    return TUNING_TF_HZ[np.abs(kernel @ phasors.T).argmax(axis=1)]


def grating_rates(pop, directions_deg, tf_hz, block=256):
    """Mean expected rates ``(N, D)`` Hz for gratings at ``directions_deg (N, D)`` and ``tf_hz (N,)``.

    With contrast c = A cos(k·x − ωt), projections are ``A Re(ẑ(k) e^{−iωt})`` and the pooled squared
    contrast is ``A²/2 (1 + Re(ẑ_pool(2k) e^{−2iωt}))``, where ẑ(k) = Σ_x filter(x) e^{i k·x}.
    Each neuron's rates depend on it alone: ``block`` neurons at a time, to bound the memory.
    """
    if len(pop) > block:
        return np.concatenate([grating_rates(subset(pop, slice(start, start + block)),
                                             directions_deg[start:start + block], tf_hz[start:start + block], block)
                               for start in range(0, len(pop), block)])
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    filters = np.concatenate([spatial_filters(pop), contrast_pools(pop)[None]]).astype(np.float64)
    spectra = np.empty((3,) + directions_deg.shape, complex)  # even, odd at k; pool at 2k
    for d in range(directions_deg.shape[1]):
        theta = np.deg2rad(directions_deg[:, d])[:, None]
        along = cols.ravel() * np.cos(theta) - rows.ravel() * np.sin(theta)  # (N, H*W)
        phase = 2 * np.pi / pop.spatial_period[:, None] * along
        spectra[:2, :, d] = (filters[:2] * np.exp(1j * phase)).sum(-1)
        spectra[2, :, d] = (filters[2] * np.exp(2j * phase)).sum(-1)
    amplitude = AMPLITUDE / GREY
    clock = np.exp(-2j * np.pi * tf_hz[:, None] * np.arange(PRESENTATION_FRAMES) / FPS)  # (N, T)
    even, odd = (amplitude * np.real(z[:, :, None] * clock[:, None]).transpose(1, 2, 0) for z in spectra[:2])
    energy = amplitude**2 / 2 * (1 + np.real(spectra[2][:, :, None] * clock[:, None] ** 2)).transpose(1, 2, 0)
    drive = drive_from_projections(pop, *(a.astype(np.float32) for a in (even, odd, energy)))  # (D, T, N)
    return rate_at_rest(pop, drive)[:, SETTLE_FRAMES:].mean(axis=1).T


def vector_indices(curve, directions_deg):
    """``(osi, dsi)``, each ``(N,)``, of tuning curves ``(N, D)`` sampled at ``directions_deg (D,)``."""
    theta = np.deg2rad(directions_deg)
    total = curve.sum(axis=1)
    osi = np.abs(curve @ np.exp(2j * theta)) / total
    dsi = np.abs(curve @ np.exp(1j * theta)) / total
    return osi, dsi


def true_tuning(pop):
    """Truth dictionary of per-neuron tuning arrays (see ``truth/README.md`` written by ``writer``).

    ``preferred_direction_deg`` is whichever of the two directions along the RF's orientation axis,
    ``orientation_deg`` or ``orientation_deg + 180``, drives the neuron more (evaluated exactly).
    """
    tf = best_temporal_frequency(pop)
    directions = np.broadcast_to(TUNING_DIRECTIONS_DEG, (len(pop), len(TUNING_DIRECTIONS_DEG)))
    curve = grating_rates(pop, directions, tf)
    axis = np.stack([pop.orientation_deg, pop.orientation_deg + 180.0], axis=1)
    forward, backward = grating_rates(pop, axis, tf).T
    osi, dsi = vector_indices(curve, TUNING_DIRECTIONS_DEG)
    return {"tuning_curve": curve.astype(np.float32),
            "tuning_directions_deg": TUNING_DIRECTIONS_DEG.astype(np.float32),
            "tuning_tf_hz": tf.astype(np.float32), "osi": osi.astype(np.float32),
            "dsi": dsi.astype(np.float32),
            "preferred_direction_deg": np.where(backward > forward, axis[:, 1], axis[:, 0]).astype(np.float32)}
