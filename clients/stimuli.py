"""Seeded, parameterised stimuli at the default frame shape and the frame rate of the contract
(`contract.DEFAULT_FRAME_SHAPE` = (HEIGHT, WIDTH), `contract.FPS`).

Every generator returns frames `(T, HEIGHT, WIDTH)` float32 display values in `contract.PIXEL_RANGE`
around `contract.GREY`.
Row 0 is the top of the screen. Angles follow the virtual mouse: a direction θ (degrees) is motion
toward `(cos θ, −sin θ)` in (column, row) coordinates — 0° rightward, 90° upward — and a grating
drifting in direction θ has bars perpendicular to it. `*_set` functions build whole libraries:
{name: frames} plus {name: parameters}, ready for `clients.library.save_library` and `twin score`.
"""

from __future__ import annotations

import numpy as np

from twinserve.contract import DEFAULT_FRAME_SHAPE, FPS, GREY, PIXEL_RANGE

HEIGHT, WIDTH = DEFAULT_FRAME_SHAPE
AMPLITUDE = PIXEL_RANGE[1] - GREY  # the largest deviation from grey that stays in range
CENTRE = ((WIDTH - 1) / 2, (HEIGHT - 1) / 2)  # (column, row) of the screen's centre


def _grid() -> tuple[np.ndarray, np.ndarray]:
    return np.arange(HEIGHT, dtype=np.float64)[:, None], np.arange(WIDTH, dtype=np.float64)[None, :]


def _display(frames: np.ndarray) -> np.ndarray:
    return np.clip(frames, *PIXEL_RANGE).astype(np.float32)


def _unit(direction_deg: float) -> tuple[float, float]:
    """(column, row) components of a direction."""
    theta = np.deg2rad(direction_deg)
    return float(np.cos(theta)), float(-np.sin(theta))


def drifting_grating(direction_deg: float, period_px: float = 16.0, tf_hz: float = 2.0, frames: int = 60,
                     contrast: float = 1.0, phase: float = 0.0) -> np.ndarray:
    """Full-field sinusoidal grating drifting toward `direction_deg` at `tf_hz`."""
    rows, cols = _grid()
    dx, dy = _unit(direction_deg)
    spatial = 2 * np.pi / period_px * (cols * dx + rows * dy)
    temporal = 2 * np.pi * tf_hz * np.arange(frames) / FPS
    return _display(GREY + contrast * AMPLITUDE * np.cos(spatial[None] - temporal[:, None, None] + phase))


def drifting_gabor(direction_deg: float, center: tuple[float, float] = CENTRE, sigma_px: float = 6.0,
                   period_px: float = 12.0, tf_hz: float = 2.0, frames: int = 60, contrast: float = 1.0) -> np.ndarray:
    """A drifting grating under a Gaussian window centred at `center` = (column, row)."""
    rows, cols = _grid()
    window = np.exp(-((cols - center[0]) ** 2 + (rows - center[1]) ** 2) / (2 * sigma_px**2))
    grating = drifting_grating(direction_deg, period_px, tf_hz, frames, contrast) - GREY
    return _display(GREY + grating * window[None])


def directional_pink_noise(direction_deg: float, frames: int = 60, seed: int = 0, speed_px_per_s: float = 30.0,
                           orientation_width_deg: float = 20.0, contrast: float = 1.0) -> np.ndarray:
    """MICrONS-style "Monet" noise: 1/f noise filtered to bars perpendicular to `direction_deg`,
    moving coherently in that direction at `speed_px_per_s` (periodic, shifted in Fourier space)."""
    rng = np.random.default_rng(seed)
    fy = np.fft.fftfreq(HEIGHT)[:, None]
    fx = np.fft.fftfreq(WIDTH)[None, :]
    radius = np.hypot(fx, fy)
    radius[0, 0] = np.inf
    dx, dy = _unit(direction_deg)
    # Keep wave vectors along the motion axis (either sign): bars perpendicular to the motion.
    cosine = (fx * dx + fy * dy) / radius
    angle = np.arccos(np.clip(np.abs(cosine), 0, 1))
    spectrum = np.exp(-0.5 * (angle / np.deg2rad(orientation_width_deg)) ** 2) / radius
    coefficients = spectrum * np.fft.fft2(rng.standard_normal((HEIGHT, WIDTH)))
    shift = speed_px_per_s / FPS * np.arange(frames)[:, None, None]
    moving = np.fft.ifft2(coefficients[None] * np.exp(-2j * np.pi * (fx * dx + fy * dy) * shift)).real
    moving /= moving.std() * 2.5  # ~99% of pixels within ±1 before clipping
    return _display(GREY + contrast * AMPLITUDE * np.clip(moving, -1, 1))


def flashing_dots(grid: tuple[int, int] = (6, 10), sigma_px: float = 3.0, dot_frames: int = 9, gap_frames: int = 0,
                  seed: int = 0, repeats: int = 1) -> tuple[np.ndarray, list[dict]]:
    """Gaussian dots flashed one at a time, on (bright) and off (dark), at every point of a
    `grid` = (rows, columns) spanning the screen from edge to edge (the outermost dots are centred on
    the edge pixels, half on screen: they drive neurons whose RF centre lies at or beyond the edge), in
    a seeded random order → (frames, [{start, frames, x, y, polarity}])."""
    rng = np.random.default_rng(seed)
    ys, xs = np.meshgrid(np.linspace(0, HEIGHT - 1, grid[0]), np.linspace(0, WIDTH - 1, grid[1]), indexing="ij")
    conditions = [(float(x), float(y), p) for x, y in zip(xs.ravel(), ys.ravel()) for p in (1, -1)] * repeats
    order = rng.permutation(len(conditions))
    rows, cols = _grid()
    step = dot_frames + gap_frames
    movie = np.full((len(conditions) * step, HEIGHT, WIDTH), GREY)
    dots = []
    for slot, index in enumerate(order):
        x, y, polarity = conditions[index]
        start = slot * step
        movie[start:start + dot_frames] += polarity * AMPLITUDE * np.exp(-((cols - x) ** 2 + (rows - y) ** 2)
                                                                         / (2 * sigma_px**2))
        dots.append({"start": start, "frames": dot_frames, "x": x, "y": y, "polarity": polarity})
    return _display(movie), dots


def random_dot_kinematogram(coherence: float = 1.0, motion: str = "translation", direction_deg: float = 0.0,
                            speed_px_per_s: float = 30.0, dots: int = 60, dot_radius_px: float = 1.5,
                            frames: int = 60, seed: int = 0, polarity: int = 1) -> np.ndarray:
    """Dots on grey; a `coherence` fraction moves together, the rest in random directions.

    motion: "translation" (toward `direction_deg`), "rotation" (counter-clockwise about the centre
    for positive speed) or "radial" (expansion from the centre for positive speed).
    """
    if motion not in ("translation", "rotation", "radial"):
        raise ValueError(f"motion must be translation, rotation or radial, not {motion!r}")
    rng = np.random.default_rng(seed)
    position = rng.uniform([0, 0], [WIDTH, HEIGHT], (dots, 2))  # (column, row)
    coherent = rng.random(dots) < coherence
    random_angle = rng.uniform(0, 2 * np.pi, dots)
    step = speed_px_per_s / FPS
    centre = np.array(CENTRE)
    rows, cols = _grid()
    movie = np.full((frames, HEIGHT, WIDTH), GREY)
    for t in range(frames):
        for x, y in position:
            movie[t][(cols - x) ** 2 + (rows - y) ** 2 <= dot_radius_px**2] = GREY + polarity * AMPLITUDE
        offset = position - centre
        if motion == "translation":
            velocity = np.tile(np.array(_unit(direction_deg)) * step, (dots, 1))
        elif motion == "rotation":  # counter-clockwise on screen: rows grow downward
            velocity = step * np.stack([offset[:, 1], -offset[:, 0]], 1) / np.maximum(
                np.linalg.norm(offset, axis=1, keepdims=True), 1e-6)
        else:
            velocity = step * offset / np.maximum(np.linalg.norm(offset, axis=1, keepdims=True), 1e-6)
        noise = step * np.stack([np.cos(random_angle), -np.sin(random_angle)], 1)
        position = position + np.where(coherent[:, None], velocity, noise)
        position %= [WIDTH, HEIGHT]  # wrap around the screen
    return _display(movie)


def directions(count: int = 16) -> np.ndarray:
    return np.arange(count) * 360.0 / count


def grating_set(count: int = 16, period_px: float = 16.0, tf_hz: float = 2.0, frames: int = 60,
                lead_in: int = 0) -> tuple[dict, dict]:
    """One drifting grating per direction (preceded by `lead_in` grey frames)."""
    stimuli, parameters = {}, {}
    for direction in directions(count):
        name = f"grating_{direction:05.1f}"
        movie = drifting_grating(direction, period_px, tf_hz, frames)
        stimuli[name] = np.concatenate([np.full((lead_in, HEIGHT, WIDTH), GREY, np.float32), movie])
        parameters[name] = {"kind": "drifting_grating", "direction_deg": float(direction), "period_px": period_px,
                            "tf_hz": tf_hz, "frames": frames, "lead_in": lead_in}
    return stimuli, parameters


def pink_noise_set(count: int = 16, frames: int = 60, seed: int = 0) -> tuple[dict, dict]:
    """One directional pink-noise movie per direction (16 directions, as in MICrONS)."""
    stimuli, parameters = {}, {}
    for i, direction in enumerate(directions(count)):
        name = f"monet_{direction:05.1f}"
        stimuli[name] = directional_pink_noise(direction, frames, seed=seed + i)
        parameters[name] = {"kind": "directional_pink_noise", "direction_deg": float(direction), "frames": frames,
                            "seed": seed + i}
    return stimuli, parameters


def gabor_set(count: int = 16, center: tuple[float, float] = CENTRE, sigma_px: float = 6.0,
              period_px: float = 12.0, tf_hz: float = 2.0, frames: int = 60) -> tuple[dict, dict]:
    """One drifting Gabor patch per direction at one position."""
    stimuli, parameters = {}, {}
    for direction in directions(count):
        name = f"gabor_{direction:05.1f}"
        stimuli[name] = drifting_gabor(direction, center, sigma_px, period_px, tf_hz, frames)
        parameters[name] = {"kind": "drifting_gabor", "direction_deg": float(direction), "center": list(center),
                            "sigma_px": sigma_px, "period_px": period_px, "tf_hz": tf_hz, "frames": frames}
    return stimuli, parameters


def dot_set(movies: int = 2, grid: tuple[int, int] = (6, 10), sigma_px: float = 3.0, dot_frames: int = 9,
            seed: int = 0) -> tuple[dict, dict]:
    """Flashing-dot movies, each showing every grid point on and off once in its own seeded order."""
    stimuli, parameters = {}, {}
    for i in range(movies):
        name = f"dots_{seed + i:03d}"
        stimuli[name], dots = flashing_dots(grid, sigma_px, dot_frames, seed=seed + i)
        parameters[name] = {"kind": "flashing_dots", "grid": list(grid), "sigma_px": sigma_px, "seed": seed + i,
                            "dots": dots}
    return stimuli, parameters


def kinematogram_set(count: int = 8, coherences=(0.25, 1.0), frames: int = 60, seed: int = 0) -> tuple[dict, dict]:
    """Random-dot kinematograms: translation in `count` directions at each coherence, plus
    rotation and expansion/contraction at full coherence."""
    stimuli, parameters = {}, {}
    for coherence in coherences:
        for direction in directions(count):
            name = f"rdk_c{coherence:.2f}_{direction:05.1f}"
            stimuli[name] = random_dot_kinematogram(coherence, "translation", direction, frames=frames, seed=seed)
            parameters[name] = {"kind": "random_dot_kinematogram", "motion": "translation", "coherence": coherence,
                                "direction_deg": float(direction), "frames": frames, "seed": seed}
    for motion in ("rotation", "radial"):
        for sign, label in ((1, "+"), (-1, "-")):
            name = f"rdk_{motion}{label}"
            stimuli[name] = random_dot_kinematogram(1.0, motion, speed_px_per_s=30.0 * sign, frames=frames, seed=seed)
            parameters[name] = {"kind": "random_dot_kinematogram", "motion": motion, "coherence": 1.0,
                                "speed_px_per_s": 30.0 * sign, "frames": frames, "seed": seed}
    return stimuli, parameters


SETS = {"gratings": grating_set, "gabors": gabor_set, "monet": pink_noise_set, "dots": dot_set,
        "kinematograms": kinematogram_set}
