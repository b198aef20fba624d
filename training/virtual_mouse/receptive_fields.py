"""Receptive-field filters of the virtual neurons: spatial filters, contrast pools, temporal kernels.

Spatial filters by RF family (``family.RF_FAMILIES``): a Gabor quadrature pair (simple, complex, and
weakly tuned: under one carrier cycle under the envelope), a sum of ``SUBUNITS`` Gabor pairs offset and
rotated around the RF (multi-subunit), or a balanced difference of Gaussians as the even filter and
none as the odd one (centre–surround: rectified; untuned: its energy, blind to orientation and sign).

Spatial filters act on flattened retinal frames ``(H*W,)`` in contrast units; temporal kernels act on
time-first signals ``(B, T, N)`` causally (index = lag in frames, 0 = same frame). ``pop`` is a
``neurons.Population``. Angles follow the package convention (see ``stimuli``).
"""
import numpy as np

from .family import RF_FAMILIES
from .stimuli import HEIGHT, WIDTH

KERNEL_FRAMES = 12
POOL_SIGMA_SCALE = 1.5  # contrast pool width relative to the RF envelope
POOL_TAU_FRAMES = 3.0   # memory of the contrast pool
SURROUND_SCALE = 2.0    # surround σ / centre σ of a difference of Gaussians
# Preferred period / centre σ of a balanced DoG (the peak of its spectrum): π / sqrt(ln k² / 2(k² − 1)), ≈ 6.5.
DOG_PERIOD_PER_SIGMA = np.pi / np.sqrt(np.log(SURROUND_SCALE**2) / (2 * (SURROUND_SCALE**2 - 1)))


def _offsets(pop):
    """Pixel offsets ``dx, dy (N, H*W)`` of every pixel from each RF centre."""
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    return cols.ravel()[None] - pop.rf_center[:, :1], rows.ravel()[None] - pop.rf_center[:, 1:]


def _gabor_pairs(dx, dy, orientation_deg, period, sigma):
    """Zero-mean even (cos) and odd (sin) Gabors ``(2, N, H*W)`` at offsets ``dx, dy (N, H*W)``.

    Envelope ``exp(−|x − rf_center|² / 2 rf_sigma²)``; carrier phase ``2π (dx cos θ − dy sin θ) / period``
    with θ = ``orientation_deg``: the carrier's wave vector points along direction θ.
    """
    theta = np.deg2rad(orientation_deg)[:, None]
    envelope = np.exp(-(dx**2 + dy**2) / (2 * sigma[:, None] ** 2))
    angle = 2 * np.pi * (dx * np.cos(theta) - dy * np.sin(theta)) / period[:, None]
    filters = np.stack([envelope * np.cos(angle), envelope * np.sin(angle)])
    return filters - filters.sum(-1, keepdims=True) / np.maximum(envelope.sum(-1, keepdims=True), 1e-12) * envelope


def _difference_of_gaussians(dx, dy, sigma):
    """Balanced (zero-sum) ON-centre DoGs ``(N, H*W)``, surround ``SURROUND_SCALE`` × wider."""
    radius2 = dx**2 + dy**2
    centre, surround = (np.exp(-radius2 / (2 * (scale * sigma[:, None]) ** 2)) for scale in (1.0, SURROUND_SCALE))
    return centre / centre.sum(-1, keepdims=True).clip(1e-12) - surround / surround.sum(-1, keepdims=True).clip(1e-12)


def spatial_filters(pop):
    """Even and odd spatial filters ``(2, N, H*W)``, float32, zero-mean, unit RMS norm per pair (see module)."""
    dx, dy = _offsets(pop)
    filters = _gabor_pairs(dx, dy, pop.orientation_deg, pop.spatial_period, pop.rf_sigma)
    multi = np.flatnonzero(pop.rf_family == RF_FAMILIES.index("multi_subunit"))
    for sub in pop.subunits[multi].transpose(1, 0, 2):  # one subunit (M, 3) of every multi-subunit neuron
        filters[:, multi] += _gabor_pairs(dx[multi] - sub[:, :1], dy[multi] - sub[:, 1:2],
                                          pop.orientation_deg[multi] + sub[:, 2], pop.spatial_period[multi],
                                          pop.rf_sigma[multi])
    dog = np.flatnonzero(np.isin(pop.rf_family, [RF_FAMILIES.index("center_surround"), RF_FAMILIES.index("untuned")]))
    filters[0, dog] = _difference_of_gaussians(dx[dog], dy[dog], pop.rf_sigma[dog])
    filters[1, dog] = 0.0
    norm = np.sqrt((filters**2).sum(axis=(0, 2)) / 2)
    return (filters / np.maximum(norm, 1e-12)[:, None]).astype(np.float32)


def contrast_pools(pop):
    """Normalisation pools ``(N, H*W)``: Gaussians ``POOL_SIGMA_SCALE × rf_sigma`` wide, each summing to 1."""
    dx, dy = _offsets(pop)
    pools = np.exp(-(dx**2 + dy**2) / (2 * (POOL_SIGMA_SCALE * pop.rf_sigma[:, None]) ** 2))
    return (pools / pools.sum(1, keepdims=True)).astype(np.float32)


def pool_kernels(pop):
    """Causal exponential kernels ``(N, KERNEL_FRAMES)`` summing to 1 (memory of the contrast pool)."""
    kernel = np.exp(-np.arange(KERNEL_FRAMES) / POOL_TAU_FRAMES)
    return np.tile(kernel / kernel.sum(), (len(pop), 1)).astype(np.float32)


def temporal_kernels(pop):
    """Causal kernels ``(N, 2, KERNEL_FRAMES)`` [k_a, k_b], each pair scaled so that ``|k_a| = 1``.

    A gamma-shaped envelope peaking near ``latency`` times a cosine (k_a, biphasic) or sine (k_b)
    carrier of ``kernel_freq`` cycles/frame, tapered to zero at ``KERNEL_FRAMES``.
    """
    lag = np.arange(KERNEL_FRAMES)[None]
    peak = pop.latency[:, None]
    taper = np.cos(np.pi * lag / (2 * KERNEL_FRAMES)) ** 2
    envelope = (lag / peak) ** 4 * np.exp(4 * (1 - lag / peak)) * taper
    carrier = 2 * np.pi * pop.kernel_freq[:, None] * (lag - peak)
    kernels = np.stack([envelope * np.cos(carrier), envelope * np.sin(carrier)], axis=1)
    return (kernels / np.linalg.norm(kernels[:, :1], axis=2, keepdims=True)).astype(np.float32)


def mixing(pop):
    """Weights ``(N, 2, 4)`` of the signals [k_a*p_e, k_a*p_o, k_b*p_e, k_b*p_o] in the channels u0, u1.

    Simple cell: ``u0 = k_a*p_φ + w k_b*p_φ⊥`` with p_φ = cos φ p_e − sin φ p_o, p_φ⊥ its quadrature
    partner, u1 = 0. Complex cell: ``u0 = k_a*p_e + w k_b*p_o``, ``u1 = k_a*p_o − w k_b*p_e``.
    ``w = direction_weight``; w ≠ 0 makes the filter space–time inseparable (direction selective).
    """
    w, c, s = pop.direction_weight, np.cos(pop.phase), np.sin(pop.phase)
    zero, one = np.zeros_like(w), np.ones_like(w)
    simple = np.stack([np.stack([c, -s, w * s, w * c], -1), np.zeros((len(w), 4))], 1)
    complex_ = np.stack([np.stack([one, zero, zero, w], -1), np.stack([zero, one, -w, zero], -1)], 1)
    return np.where(pop.is_complex[:, None, None], complex_, simple).astype(np.float32)


def channel_kernels(pop):
    """Temporal kernels ``(2, 2, N, K)`` [channel u0/u1, projection even/odd] with ``mixing`` folded in."""
    weights = mixing(pop).reshape(len(pop), 2, 2, 2)  # [n, channel, kernel a/b, projection e/o]
    return np.einsum("ncap,nak->cpnk", weights, temporal_kernels(pop))


def filter_in_time(x, kernels, block=512):
    """Causal per-neuron convolution of ``x (B, T, N)`` with ``kernels (N, K)``; zeros before t = 0.
    ``block`` neurons at a time, so that the arrays stay in the cache."""
    out = np.empty_like(x)
    for start in range(0, x.shape[2], block):
        neurons = slice(start, start + block)
        part = np.ascontiguousarray(x[..., neurons])
        result, product = np.zeros_like(part), np.empty(part.shape, np.result_type(kernels, part))
        for lag in range(min(kernels.shape[1], x.shape[1])):
            kept = x.shape[1] - lag
            result[:, lag:] += np.multiply(kernels[neurons, lag], part[:, :kept], out=product[:, :kept])
        out[..., neurons] = result
    return out
