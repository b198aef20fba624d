"""Stimuli of the virtual mouse: natural-like movies, drifting gratings and flashing Gaussian dots.

Every movie is a float32 array ``(T, H, W)`` = (frames, 36 rows, 64 columns) of 8-bit display values
(integers 0..255 stored as float32, grey = 128), shown at 30 frames per second. Row 0 is the top of the
screen, column 0 its left edge. The simulator works time-first; the writer moves time last on disk.

Angle convention, used everywhere in the package: a direction θ (degrees) is drift toward the unit
vector ``(cos θ, −sin θ)`` in (column, row) coordinates, i.e. 0° = rightward, 90° = upward on screen,
180° = leftward, 270° = downward. Orientation = direction mod 180°: the axis of motion, normal to a
grating's bars (a 0° grating has vertical bars, a 90° grating horizontal bars).

Each generator takes a ``numpy.random.Generator`` and returns ``(frames, params)`` where ``params`` is a
JSON-serialisable description of what was shown.
"""
import numpy as np
from scipy.signal import lfilter

HEIGHT, WIDTH, FPS = 36, 64, 30
GREY = 128.0
AMPLITUDE = 127.0  # largest excursion from grey: a full-contrast grating spans 1..255
CANVAS = (96, 160)  # rows, columns of the periodic scene a natural movie pans over


def to_display(frames):
    """Round and clip float frames ``(..., H, W)`` to 8-bit display values, as float32."""
    return np.clip(np.rint(frames), 0, 255).astype(np.float32)


def drifting_grating(direction_deg, period_px, tf_hz, n_frames, contrast=1.0, phase=0.0):
    """Unrounded sinusoidal grating ``(T, H, W)`` drifting toward ``direction_deg`` at ``tf_hz``.

    Luminance ``GREY + contrast * AMPLITUDE * cos(k·x − 2π tf t / FPS + phase)`` with wave vector
    ``k = 2π / period_px · (cos θ, −sin θ)`` over (column, row) pixel coordinates ``x``.
    """
    theta = np.deg2rad(direction_deg)
    rows, cols = np.arange(HEIGHT)[:, None], np.arange(WIDTH)[None, :]
    spatial = 2 * np.pi / period_px * (cols * np.cos(theta) - rows * np.sin(theta))
    temporal = 2 * np.pi * tf_hz * np.arange(n_frames) / FPS
    return GREY + contrast * AMPLITUDE * np.cos(spatial[None] - temporal[:, None, None] + phase)


def pink_noise(rng, shape, exponent=1.0):
    """Periodic Gaussian image ``shape`` with a 1/f**exponent amplitude spectrum, zero mean, unit std."""
    fy = np.fft.fftfreq(shape[0])[:, None]
    fx = np.fft.rfftfreq(shape[1])[None, :]
    freq = np.hypot(fy, fx)
    freq[0, 0] = np.inf
    coeffs = rng.standard_normal(freq.shape) + 1j * rng.standard_normal(freq.shape)
    image = np.fft.irfft2(coeffs / freq**exponent, s=shape)
    return (image - image.mean()) / image.std()


def add_objects(rng, canvas, count):
    """Paint ``count`` uniform ellipses with hard edges onto a periodic canvas ``(Hc, Wc)``, in place."""
    height, width = canvas.shape
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    for _ in range(count):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        dy = (rows - cy + height / 2) % height - height / 2
        dx = (cols - cx + width / 2) % width - width / 2
        a, b = rng.uniform(2.0, 12.0, size=2)
        angle = rng.uniform(0, np.pi)
        u = dx * np.cos(angle) + dy * np.sin(angle)
        v = -dx * np.sin(angle) + dy * np.cos(angle)
        canvas[(u / a) ** 2 + (v / b) ** 2 <= 1.0] = rng.normal(0.0, 1.5)


def sample_periodic(canvas, top, left):
    """Bilinear crops ``(T, H, W)`` of a periodic canvas ``(Hc, Wc)`` at sub-pixel offsets ``top, left (T,)``."""
    height, width = canvas.shape
    r = top[:, None] + np.arange(HEIGHT)
    c = left[:, None] + np.arange(WIDTH)
    r0, c0 = np.floor(r).astype(int), np.floor(c).astype(int)
    fr, fc = (r - r0)[:, :, None], (c - c0)[:, None, :]
    rows = canvas[r0 % height] * (1 - fr) + canvas[(r0 + 1) % height] * fr  # (T, H, Wc)
    shape = (len(top), HEIGHT, WIDTH)
    left_cols = np.broadcast_to((c0 % width)[:, None, :], shape)
    right_cols = np.broadcast_to(((c0 + 1) % width)[:, None, :], shape)
    return (np.take_along_axis(rows, left_cols, axis=2) * (1 - fc)
            + np.take_along_axis(rows, right_cols, axis=2) * fc)


def _ou(rng, n, tau, std, dims):
    """Stationary Ornstein–Uhlenbeck samples ``(n, dims)`` with time constant ``tau`` frames."""
    decay = np.exp(-1.0 / tau)
    kicks = rng.normal(0.0, std * np.sqrt(1 - decay**2), (n, dims))
    kicks[0] = rng.normal(0.0, std, dims)
    return lfilter([1.0], [1.0, -decay], kicks, axis=0)


def natural_movie(rng, n_frames, spectral_exponent=(0.9, 1.3), rms_contrast=(0.12, 0.4), pan_speed=0.5,
                  objects=3.0):
    """Natural-like movie: panning 1/f scenes with objects, scene cuts every 1–3 s.

    Per scene: the amplitude spectrum's exponent and the RMS contrast are drawn from the given ranges,
    the mean pan velocity from N(0, pan_speed) px/frame, the number of objects from Poisson(objects).

    Each scene is a fresh periodic 1/f canvas (plus a few hard-edged ellipses) seen through the screen
    while it pans with a slowly varying random velocity (px/frame); its RMS contrast drifts smoothly.
    Returns frames ``(n_frames, H, W)`` and ``{"scenes": [...]}`` with one entry per scene.
    """
    frames, scenes, start = [], [], 0
    while start < n_frames:
        length = min(int(rng.integers(30, 91)), n_frames - start)
        canvas = pink_noise(rng, CANVAS, exponent=rng.uniform(*spectral_exponent))
        add_objects(rng, canvas, int(rng.poisson(objects)))
        canvas = (canvas - canvas.mean()) / canvas.std()
        mean_velocity = rng.normal(0.0, pan_speed, 2)
        velocity = mean_velocity + _ou(rng, length, tau=20.0, std=0.3, dims=2)
        position = rng.uniform(0, CANVAS[::-1]) + np.cumsum(velocity, axis=0)  # [x, y]
        image = sample_periodic(canvas, position[:, 1], position[:, 0])
        contrast = rng.uniform(*rms_contrast) * np.exp(np.linspace(0, rng.uniform(-0.4, 0.4), length))
        mean = GREY + rng.normal(0.0, 8.0)
        frames.append(mean + GREY * contrast[:, None, None] * image)
        scenes.append({"start": start, "frames": length, "mean": round(mean, 2),
                       "rms_contrast": [round(contrast[0], 4), round(contrast[-1], 4)],
                       "mean_velocity_px_per_frame": [round(v, 4) for v in mean_velocity]})
        start += length
    return to_display(np.concatenate(frames)), {"scenes": scenes}


def grating_movie(rng, n_frames):
    """Blocks of ~1 s of full-contrast drifting gratings separated by short grey gaps.

    Directions come from 16 equally spaced ones (multiples of 22.5°), spatial periods from
    8/12/16/24 px, temporal frequencies from 1/2/4 Hz. Returns frames ``(n_frames, H, W)`` and
    ``{"blocks": [{start, frames, direction_deg, period_px, tf_hz, phase}, ...]}``.
    """
    frames = np.full((n_frames, HEIGHT, WIDTH), GREY)
    blocks, start = [], 0
    while True:
        start += int(rng.integers(3, 9))
        length = min(int(rng.integers(27, 34)), n_frames - start)
        if length <= 0:
            break
        block = {"start": start, "frames": length, "direction_deg": 22.5 * int(rng.integers(16)),
                 "period_px": float(rng.choice([8, 12, 16, 24])), "tf_hz": float(rng.choice([1, 2, 4])),
                 "phase": round(rng.uniform(0, 2 * np.pi), 4)}
        frames[start:start + length] = drifting_grating(
            block["direction_deg"], block["period_px"], block["tf_hz"], length, phase=block["phase"])
        blocks.append(block)
        start += length
    return to_display(frames), {"blocks": blocks}


def dot_movie(rng, n_frames, sigma_px=3.0, dot_frames=9):
    """Flashing Gaussian dots on grey, one at a time for ``dot_frames`` (300 ms) each.

    Positions on a 6×10 grid covering the screen, polarity +1 (on, bright) or −1 (off, dark), drawn
    without replacement. Returns frames ``(n_frames, H, W)`` and
    ``{"sigma_px", "dots": [{start, frames, x, y, polarity}, ...]}`` with x = column, y = row.
    """
    ys, xs = np.meshgrid(np.linspace(4, HEIGHT - 5, 6), np.linspace(4, WIDTH - 5, 10), indexing="ij")
    grid = np.stack([xs.ravel(), ys.ravel()], axis=1)
    conditions = [(x, y, p) for x, y in grid for p in (1, -1)]
    order = rng.permutation(len(conditions))
    rows, cols = np.arange(HEIGHT)[:, None], np.arange(WIDTH)[None, :]
    frames = np.full((n_frames, HEIGHT, WIDTH), GREY)
    dots = []
    for i, start in enumerate(range(0, n_frames, dot_frames)):
        x, y, polarity = conditions[order[i % len(conditions)]]
        blob = np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma_px**2))
        frames[start:start + dot_frames] += polarity * AMPLITUDE * blob
        dots.append({"start": start, "frames": min(dot_frames, n_frames - start),
                     "x": round(float(x), 3), "y": round(float(y), 3), "polarity": polarity})
    return to_display(frames), {"sigma_px": sigma_px, "dots": dots}
