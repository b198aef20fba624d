"""`twin experiment rf`: receptive fields from flashing Gaussian dots.

On and off dots are flashed one at a time on a grid spanning the screen from edge to edge (after the
grey lead-in of `common.ServedTwin`, so output frame j is movie frame j): a grid kept inside the edges
cannot show where a map peaks at the edge, and puts such centres inward (on exact responses of
neurons within one RF σ of the edge or beyond it: 7.1 px off with a grid 4 px inside, 1.6 px edge to
edge, `tests/test_experiments.py`). Dots last 12 frames, so that slow responses still peak within
one. A neuron's response to a dot is its mean predicted response in a window of the dot's length,
`lag` frames after onset, minus its mean over dots; the lag (responses trail the dots) is the one, up
to `max_lag`, whose RF maps a 2D Gaussian fits best (mean R² over up to 256 neurons). The dots follow
each other without a gap, so a window at the wrong lag reads the next or the previous dot's response,
as strong but drawn at this dot's place: maps scattered over the grid, which no Gaussian fits. (How
sharply a map peaks is no guide: on a sparse grid a few scattered dots peak more sharply than a true
RF, which put a trained twin's centres 27 px off in `tests/test_experiments.py`.) From those:
- the spike-triggered average STA (H, W) = Σ_dots r · (dot image − grey) / Σ |r|: on subfields
  positive, off subfields negative;
- the RF map = Σ_dots max(r, 0) · |dot image|: where any dot excites the neuron;
- the spatial selectivity index SSI = −log det of the covariance of the |STA|-weighted pixel
  positions (high for a compact RF);
- the RF centre (x = column, y = row) and width from a 2D Gaussian fit to the RF map (all neurons'
  maps at once, `fits.fit`); a neuron has a clear RF when that fit explains at least half of the
  map's variance.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from twinserve.contract import GREY

from ..plotting import pyplot
from ..stimuli import HEIGHT, WIDTH, flashing_dots
from .common import ServedTwin, load_truth, median_where
from .fits import fit

CLEAR_RF_R2 = 0.5
LAG_PROBE_NEURONS = 256  # the lag is chosen on this many neurons' maps, evenly spread over the recording
START_SIGMAS = (4.0, 1.5, 10.0)  # px: the fit starts once from each width


def gaussian_2d(coords, amplitude, x0, y0, sigma, offset):
    x, y = coords
    return amplitude * np.exp(-((x - x0) ** 2 + (y - y0) ** 2) / (2 * sigma**2)) + offset


def gaussian_model(shape: tuple[int, int]):
    """`fits.fit` model of `gaussian_2d` on a map of `shape` (H, W): params (n, 5) = amplitude, x0, y0,
    sigma, offset → maps (n, H·W) and their derivatives (n, 5, H·W)."""
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]]
    x, y = cols.ravel().astype(np.float64), rows.ravel().astype(np.float64)

    def model(params: np.ndarray, jacobian: bool):
        amplitude, x0, y0, sigma, offset = (params[:, [k]] for k in range(5))
        dx, dy, variance = x - x0, y - y0, sigma**2
        squared = dx**2 + dy**2
        bump = np.exp(-squared / (2 * variance))
        prediction = amplitude * bump + offset
        if not jacobian:
            return prediction
        scaled = amplitude * bump / variance
        return prediction, np.stack([bump, scaled * dx, scaled * dy, scaled * squared / sigma, np.ones_like(bump)],
                                    axis=1)

    return model


def gaussian_bounds(shape: tuple[int, int]) -> tuple[tuple, tuple]:
    """(lower, upper) bounds of (amplitude, x0, y0, sigma, offset) on a map of `shape` (H, W)."""
    height, width = shape
    return (0, -10, -10, 0.5, -np.inf), (np.inf, width + 10, height + 10, 40, np.inf)


def fit_gaussians(rf_maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2D Gaussian fits to maps (N, H, W), all at once (`fits.fit`, starting at each map's peak with
    each of `START_SIGMAS`) → (params (N, 5): amplitude, x0, y0, sigma, offset; RSS (N,)), NaN where
    a map is not finite."""
    maps = np.asarray(rf_maps, np.float64)
    flat = maps.reshape(len(maps), -1)
    y0, x0 = np.unravel_index(flat.argmax(1), maps.shape[1:])
    low = flat.min(1)
    starts = np.stack([np.stack([flat.max(1) - low, x0, y0, np.full_like(low, sigma), low], axis=1)
                       for sigma in START_SIGMAS])
    return fit(gaussian_model(maps.shape[1:]), flat, starts, *gaussian_bounds(maps.shape[1:]))


def fit_centres(rf_maps: np.ndarray) -> np.ndarray:
    """2D Gaussian fits to maps (N, H, W) → (N, 4): x, y, sigma, R² (1 − residual variance / map
    variance); NaNs where a map is not finite."""
    maps = np.asarray(rf_maps, np.float64)
    params, _ = fit_gaussians(maps)
    flat = maps.reshape(len(maps), -1)
    residual = flat - gaussian_model(maps.shape[1:])(params, jacobian=False)
    r2 = 1 - residual.var(1) / np.maximum(flat.var(1), 1e-12)
    return np.column_stack([params[:, 1:4], r2])


def fit_centre(rf_map: np.ndarray) -> tuple[float, float, float, float]:
    """2D Gaussian fit to one map (H, W) → (x, y, sigma, R²): `fit_centres`."""
    return tuple(float(v) for v in fit_centres(np.asarray(rf_map)[None])[0])


def spatial_selectivity(sta: np.ndarray) -> float:
    """−log det of the covariance of pixel positions weighted by |STA| (H, W)."""
    weight = np.abs(sta).ravel()
    if weight.sum() <= 0:
        return float("nan")
    rows, cols = np.mgrid[0:sta.shape[0], 0:sta.shape[1]]
    positions = np.stack([cols.ravel(), rows.ravel()])
    covariance = np.cov(positions, aweights=weight)
    return float(-np.log(max(np.linalg.det(covariance), 1e-12)))


def dot_responses(responses: np.ndarray, dots: list[dict], lag: int) -> np.ndarray:
    """Per dot the mean response (N,) over its window `lag` frames after onset, minus the mean over dots."""
    per_dot = np.stack([np.nanmean(responses[d["start"] + lag:d["start"] + lag + d["frames"]], 0) for d in dots])
    return per_dot - per_dot.mean(0)


def weighted_images(weights: np.ndarray, images: np.ndarray) -> np.ndarray:
    """Σ_dots weight · image (N, H, W) from weights (dots, N), images (dots, H, W): one matrix product."""
    return (weights.T @ images.reshape(len(images), -1)).reshape(-1, *images.shape[1:])


def rf_maps(per_dot: np.ndarray, images: np.ndarray) -> np.ndarray:
    """RF maps (N, H, W) = Σ_dots max(r, 0) · |dot image| from responses (dots, N), images (dots, H, W)."""
    return weighted_images(np.maximum(per_dot, 0), np.abs(images))


def fit_quality(maps: np.ndarray) -> float:
    """Mean R² of 2D Gaussian fits to RF maps (N, H, W): how much they look like one receptive field."""
    return float(np.nanmean(fit_centres(maps)[:, 3]))


def run_rf(url: str, model: str, out: str | Path, grid=(10, 17), sigma_px: float = 2.0, dot_frames: int = 12,
           repeats: int = 2, max_lag: int = 15, truth: str | Path | None = None, progress: bool = True,
           twin=None) -> dict:
    """Run the experiment → summary; writes rf.npz, rf.json and figures under `out`. `twin`: what
    answers in place of the served model at `url` (an object with `ServedTwin.responses_to`, e.g. the
    simulated mouse, for the experiment's own error)."""
    out = Path(out)
    twin = ServedTwin.connect(url, model) if twin is None else twin
    stimuli, parameters, all_dots = {}, {}, {}
    tail = np.full((max_lag, HEIGHT, WIDTH), GREY, np.float32)  # so the last dot's late window exists
    for seed in range(repeats):
        movie, dots = flashing_dots(grid, sigma_px, dot_frames, seed=seed)
        name = f"dots_seed{seed}"
        stimuli[name], all_dots[name] = np.concatenate([movie, tail]), dots
        parameters[name] = {"kind": "flashing_dots", "grid": list(grid), "sigma_px": sigma_px, "dots": dots}
    names, responses = twin.responses_to(stimuli, parameters, out, progress)  # (S, T, N), frame j = movie frame j
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    images = np.stack([d["polarity"] * np.exp(-((cols - d["x"]) ** 2 + (rows - d["y"]) ** 2) / (2 * sigma_px**2))
                       for name in names for d in all_dots[name]])  # (dots, H, W), signed

    def per_dot(lag, neurons=slice(None)):  # (dots, N) or (dots, len(neurons))
        return np.concatenate([dot_responses(responses[i][:, neurons], all_dots[name], lag)
                               for i, name in enumerate(names)])

    # Responses lag the dots (calcium, temporal filtering): take the lag whose maps look most like RFs.
    probe = np.unique(np.linspace(0, responses.shape[-1] - 1, LAG_PROBE_NEURONS).astype(int))
    lag = max(range(max_lag + 1), key=lambda k: fit_quality(rf_maps(per_dot(k, probe), images)))
    r = per_dot(lag)  # (dots, N)
    sta = weighted_images(r, images) / np.maximum(np.abs(r).sum(0), 1e-12)[:, None, None]
    rf_map = rf_maps(r, images)
    fits = fit_centres(rf_map)  # (N, 4): x, y, sigma, R²
    result = {"sta": sta.astype(np.float32), "rf_map": rf_map.astype(np.float32), "rf_center": fits[:, :2],
              "rf_sigma": fits[:, 2], "fit_r2": fits[:, 3], "ssi": np.array([spatial_selectivity(s) for s in sta]),
              "clear_rf": fits[:, 3] >= CLEAR_RF_R2}
    np.savez(out / "rf.npz", **result)
    summary = {"model": model, "neurons": len(sta), "dots": len(r), "queries": len(stimuli), "lag_frames": lag,
               "clear_rf_neurons": int(result["clear_rf"].sum()), "median_ssi": float(np.nanmedian(result["ssi"]))}
    if truth is not None:
        summary["validation"] = validate(result, load_truth(truth), out)
    (out / "rf.json").write_text(json.dumps(summary, indent=2))
    plot_gallery(result, out / "rf_gallery.png")
    return summary


def on_screen(centres: np.ndarray) -> np.ndarray:
    """Which RF centres (N, 2) (x = column, y = row; pixel centres at integers) lie on the screen → (N,)."""
    return np.all((centres >= -0.5) & (centres <= np.array([WIDTH, HEIGHT]) - 0.5), axis=1)


def validate(result: dict, truth: dict, out: Path) -> dict:
    """Distance between the twin's and the true RF centre for neurons with a clear RF, over all of them
    and split by whether the true centre lies on the screen (off it, the dots show only the RF's
    near flank); scatter plots."""
    clear = result["clear_rf"]
    distance = np.linalg.norm(result["rf_center"] - truth["rf_center"], axis=1)
    inside = on_screen(np.asarray(truth["rf_center"]))
    summary = {"clear_rf_neurons": int(clear.sum()), "clear_rf_r2": CLEAR_RF_R2,
               "median_center_distance_px": median_where(distance, clear),
               "on_screen_neurons": int((clear & inside).sum()),
               "median_center_distance_on_screen_px": median_where(distance, clear & inside),
               "median_center_distance_off_screen_px": median_where(distance, clear & ~inside)}
    plt = pyplot()

    figure, axes = plt.subplots(1, 2, figsize=(10, 4.2), constrained_layout=True)
    for axis, k, label, size in zip(axes, (0, 1), ("x (column)", "y (row)"), (WIDTH, HEIGHT)):
        for chosen, where in ((clear & inside, "true centre on screen"), (clear & ~inside, "off screen")):
            axis.scatter(truth["rf_center"][chosen, k], result["rf_center"][chosen, k], s=8, label=where)
        axis.legend(fontsize=8)
        axis.plot([0, size], [0, size], color="0.5", lw=0.8)
        axis.set(xlabel=f"true RF centre {label} (px)", ylabel=f"twin RF centre {label} (px)")
    figure.suptitle(f"{summary['clear_rf_neurons']} neurons with a clear RF: median distance "
                    f"{summary['median_center_distance_px'] or float('nan'):.2f} px "
                    f"({summary['median_center_distance_on_screen_px'] or float('nan'):.2f} px on screen)")
    figure.savefig(out / "rf_vs_truth.png", dpi=120)
    plt.close(figure)
    return summary


def plot_gallery(result: dict, path: Path, count: int = 24) -> None:
    """STAs of the neurons with the most selective clear RFs, fitted centres marked."""
    plt = pyplot()

    order = np.argsort(-np.where(result["clear_rf"], result["ssi"], -np.inf))[:count]
    figure, axes = plt.subplots(4, 6, figsize=(14, 5.5), constrained_layout=True)
    for axis, neuron in zip(axes.ravel(), order):
        limit = np.abs(result["sta"][neuron]).max() or 1
        axis.imshow(result["sta"][neuron], cmap="RdBu_r", vmin=-limit, vmax=limit)
        axis.plot(*result["rf_center"][neuron], "k+", ms=8)
        axis.set_title(f"{neuron}: SSI {result['ssi'][neuron]:.1f}", fontsize=8)
        axis.axis("off")
    figure.savefig(path, dpi=110)
    plt.close(figure)
