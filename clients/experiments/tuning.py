"""`twin experiment tuning`: orientation and direction tuning of every neuron, from drifting gratings.

Gratings drift in 16 directions at several spatial periods, each after the grey lead-in of
`common.ServedTwin` (so output frame j is grating frame j). A neuron's response to a grating is its
mean predicted response after `settle` frames; its tuning curve is the one at its best spatial period.
OSI = |Σ r e^{2iθ}| / Σ r and DSI = |Σ r e^{iθ}| / Σ r (vector sums), with r the tuning curve minus its
minimum (the twin predicts fluorescence-like responses with an offset that would dilute both indices);
the preferred direction comes from a two-peak von Mises fit (paper 003, "Parametric tuning"; all
neurons' curves at once, `fits.fit`), the preferred orientation is that mod 180°.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..plotting import pyplot
from ..stimuli import directions, grating_set
from .common import ServedTwin, load_truth, median_where
from .fits import fit
from .rf import on_screen

TRUE_OSI_THRESHOLD = 0.3


def vector_indices(curves: np.ndarray, directions_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(OSI, DSI), each (N,), of tuning curves (N, D) sampled at directions (D,) in degrees."""
    theta = np.deg2rad(directions_deg)
    total = curves.sum(1)
    return np.abs(curves @ np.exp(2j * theta)) / total, np.abs(curves @ np.exp(1j * theta)) / total


def two_peak_von_mises(theta, baseline, first, second, kappa, mu):
    """Responses at directions theta (radians): peaks at mu and mu + π with a shared width."""
    return (baseline + first * np.exp(kappa * (np.cos(theta - mu) - 1))
            + second * np.exp(kappa * (np.cos(theta - mu - np.pi) - 1)))


# Bounds of (baseline, first, second, kappa) of `two_peak_von_mises`; mu is free (a period of 2π).
VON_MISES_LOWER = (-np.inf, 0.0, 0.0, 0.05)
VON_MISES_UPPER = (np.inf, np.inf, np.inf, 50.0)
START_KAPPAS = (2.0, 0.5, 8.0)  # the fit starts once from each width


def von_mises_model(theta: np.ndarray):
    """`fits.fit` model of `two_peak_von_mises` at directions theta (D,) in radians, each peak scaled
    to span [0, 1] whatever its width: params (n, 5) = floor, rise, opposite rise, kappa, mu →
    responses (n, D) and their derivatives (n, 5, D). Unscaled, a broad curve is the narrow end of
    a long valley (kappa → 0 against first, second → ∞, baseline → −∞) that the fit crawls along;
    `from_scaled` maps the fitted params back."""

    def model(params: np.ndarray, jacobian: bool):
        floor, rise, opposite, kappa, mu = (params[:, [k]] for k in range(5))
        cos, sin = np.cos(theta - mu), np.sin(theta - mu)
        trough, span = np.exp(-2 * kappa), -np.expm1(-2 * kappa)  # a peak's lowest value, and 1 minus it
        raw_one, raw_two = np.exp(kappa * (cos - 1)), np.exp(kappa * (-cos - 1))
        one, two = (raw_one - trough) / span, (raw_two - trough) / span
        prediction = floor + rise * one + opposite * two
        if not jacobian:
            return prediction
        # d/dkappa of (raw − trough) / span, with d trough/dkappa = −2 trough = −d span/dkappa
        d_one = ((cos - 1) * raw_one + 2 * trough - 2 * trough * one) / span
        d_two = ((-cos - 1) * raw_two + 2 * trough - 2 * trough * two) / span
        return prediction, np.stack([np.ones_like(one), one, two, rise * d_one + opposite * d_two,
                                     kappa * sin * (rise * raw_one - opposite * raw_two) / span], axis=1)

    return model


def from_scaled(params: np.ndarray) -> np.ndarray:
    """`von_mises_model`'s params (N, 5) → `two_peak_von_mises`'s (baseline, first, second, kappa,
    mu), mu in [0, 2π)."""
    floor, rise, opposite, kappa, mu = params.T
    trough, span = np.exp(-2 * kappa), -np.expm1(-2 * kappa)
    first, second = rise / span, opposite / span
    return np.column_stack([floor - (first + second) * trough, first, second, kappa, mu % (2 * np.pi)])


def orientation_error(a_deg: np.ndarray, b_deg: np.ndarray) -> np.ndarray:
    """Absolute difference of orientations (mod 180°), in [0, 90]."""
    return np.abs((np.asarray(a_deg) - np.asarray(b_deg) + 90) % 180 - 90)


def _start(curves: np.ndarray, directions_deg: np.ndarray, peak: np.ndarray, kappa: float) -> np.ndarray:
    """`von_mises_model`'s params (N, 5) for curves (N, D) peaking at the directions `peak` (N,):
    floor at the minimum, rises to the peak and to the direction opposite, width `kappa`."""
    rows = np.arange(len(curves))
    opposite = np.abs(((directions_deg[None] - directions_deg[peak, None] - 180) + 180) % 360 - 180).argmin(1)
    low = curves.min(1)
    return np.stack([low, curves[rows, peak] - low, np.maximum(curves[rows, opposite] - low, 0.0),
                     np.full_like(low, kappa), np.deg2rad(directions_deg[peak])], axis=1)


def fit_von_mises(curves: np.ndarray, directions_deg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two-peak von Mises fits to tuning curves (N, D) at directions (D,) in degrees, all at once
    (`fits.fit`) → (params (N, 5): baseline, first, second, kappa, mu in radians; RSS (N,)), NaN
    where a curve is not finite. Starts: at the curve's peak with each of `START_KAPPAS`, and at its
    highest direction more than 45° off the peak's axis (a noisy, barely tuned curve has several
    local fits)."""
    curves = np.asarray(curves, np.float64)
    peak = curves.argmax(1)
    off_axis = orientation_error(directions_deg[None], directions_deg[peak, None]) > 45  # (N, D)
    runner_up = np.where(off_axis, curves, -np.inf).argmax(1)
    starts = np.stack([_start(curves, directions_deg, peak, kappa) for kappa in START_KAPPAS]
                      + [_start(curves, directions_deg, runner_up, START_KAPPAS[0])])
    params, rss = fit(von_mises_model(np.deg2rad(directions_deg)), curves, starts, (*VON_MISES_LOWER, -np.inf),
                      (*VON_MISES_UPPER, np.inf))
    return from_scaled(params), rss


def preferred_directions(curves: np.ndarray, directions_deg: np.ndarray) -> np.ndarray:
    """Preferred directions (N,) in degrees, [0, 360), of tuning curves (N, D): the larger peak of
    the two-peak fit; the peak of the curve where the fit fails."""
    params, _ = fit_von_mises(curves, directions_deg)
    _, first, second, _, mu = params.T
    found = np.rad2deg(np.where(first >= second, mu, mu + np.pi)) % 360
    return np.where(np.isfinite(found), found, directions_deg[np.asarray(curves).argmax(1)])


def preferred_direction(curve: np.ndarray, directions_deg: np.ndarray) -> float:
    """Preferred direction (degrees, [0, 360)) of one tuning curve (D,): `preferred_directions`."""
    return float(preferred_directions(np.asarray(curve)[None], directions_deg)[0])


def run_tuning(url: str, model: str, out: str | Path, count: int = 16, periods=(8.0, 12.0, 16.0, 24.0),
               tf_hz: float = 2.0, frames: int = 45, settle: int = 10, truth: str | Path | None = None,
               progress: bool = True, twin=None) -> dict:
    """Run the experiment → summary; writes tuning.npz, tuning.json and figures under `out`. `twin`: what
    answers in place of the served model at `url` (an object with `ServedTwin.responses_to`, e.g. the
    simulated mouse, for the experiment's own error)."""
    out = Path(out)
    twin = ServedTwin.connect(url, model) if twin is None else twin
    stimuli, parameters = {}, {}
    for period in periods:
        movies, params = grating_set(count, period, tf_hz, frames)
        for name, movie in movies.items():
            stimuli[f"p{period:04.1f}_{name}"] = movie
            parameters[f"p{period:04.1f}_{name}"] = params[name]
    names, responses = twin.responses_to(stimuli, parameters, out, progress)  # (S, frames, N)
    mean = np.nanmean(responses[:, settle:], axis=1)  # (S, N)
    angles = directions(count)
    row = {name: i for i, name in enumerate(names)}
    table = np.stack([[mean[row[f"p{p:04.1f}_grating_{d:05.1f}"]] for d in angles] for p in periods])  # (P, D, N)
    best = table.mean(1).argmax(0)  # (N,)
    curves = table[best, :, np.arange(table.shape[2])]  # (N, D)
    osi, dsi = vector_indices(curves - curves.min(1, keepdims=True) + 1e-9, angles)
    preferred = preferred_directions(curves, angles)
    result = {"tuning_curve": curves, "directions_deg": angles, "best_period_px": np.asarray(periods)[best],
              "osi": osi, "dsi": dsi, "preferred_direction_deg": preferred,
              "preferred_orientation_deg": preferred % 180}
    np.savez(out / "tuning.npz", **result)
    summary = {"model": model, "neurons": len(curves), "directions": count, "periods_px": list(periods),
               "tf_hz": tf_hz, "queries": len(stimuli), "median_osi": float(np.median(osi)),
               "median_dsi": float(np.median(dsi))}
    if truth is not None:
        summary["validation"] = validate(result, load_truth(truth), out)
    (out / "tuning.json").write_text(json.dumps(summary, indent=2))
    plot_tuning(result, out / "tuning_curves.png")
    return summary


def validate(result: dict, truth: dict, out: Path) -> dict:
    """Twin vs ground truth: orientation error for neurons with true OSI > 0.3, over all of them and,
    where the truth has RF centres, split by whether the centre lies on the screen (off it, a neuron
    sees the gratings only on its near flank); OSI and DSI correlations; scatter plots in
    `tuning_vs_truth.png`."""
    tuned = truth["osi"] > TRUE_OSI_THRESHOLD
    error = orientation_error(result["preferred_orientation_deg"], truth["orientation_deg"])
    has_centres = "rf_center" in truth
    inside = on_screen(np.asarray(truth["rf_center"])) if has_centres else np.ones(len(tuned), bool)
    summary = {"tuned_neurons": int(tuned.sum()), "true_osi_threshold": TRUE_OSI_THRESHOLD,
               "median_orientation_error_deg": median_where(error, tuned),
               "osi_correlation": float(np.corrcoef(result["osi"], truth["osi"])[0, 1]),
               "dsi_correlation": float(np.corrcoef(result["dsi"], truth["dsi"])[0, 1])}
    if has_centres:
        summary.update({"tuned_on_screen_neurons": int((tuned & inside).sum()),
                        "median_orientation_error_on_screen_deg": median_where(error, tuned & inside),
                        "median_orientation_error_off_screen_deg": median_where(error, tuned & ~inside)})
    plt = pyplot()

    figure, axes = plt.subplots(1, 3, figsize=(13, 4.2), constrained_layout=True)
    for chosen, where in ((tuned & inside, "true RF centre on screen"), (tuned & ~inside, "off screen")):
        axes[0].scatter(truth["orientation_deg"][chosen] % 180, result["preferred_orientation_deg"][chosen], s=8,
                        label=where)
    axes[0].legend(fontsize=8)
    axes[0].plot([0, 180], [0, 180], color="0.5", lw=0.8)
    error = summary["median_orientation_error_deg"]  # None without tuned neurons
    axes[0].set(xlabel="true orientation (°)", ylabel="twin's preferred orientation (°)",
                title=f"true OSI > {TRUE_OSI_THRESHOLD}: median error {np.nan if error is None else error:.1f}°")
    for axis, key in zip(axes[1:], ("osi", "dsi")):
        axis.scatter(truth[key], result[key], s=8)
        axis.set(xlabel=f"true {key.upper()}", ylabel=f"twin {key.upper()}",
                 title=f"r = {summary[f'{key}_correlation']:.2f}")
    figure.savefig(out / "tuning_vs_truth.png", dpi=120)
    plt.close(figure)
    return summary


def plot_tuning(result: dict, path: Path, count: int = 12) -> None:
    """Tuning curves of the most orientation-selective neurons, and the OSI/DSI scatter."""
    plt = pyplot()

    best = np.argsort(-result["osi"])[:count]
    figure = plt.figure(figsize=(14, 6), constrained_layout=True)
    grid = figure.add_gridspec(3, 6)
    for k, neuron in enumerate(best):
        axis = figure.add_subplot(grid[k // 4, k % 4])
        axis.plot(result["directions_deg"], result["tuning_curve"][neuron], "o-", ms=3)
        axis.axvline(result["preferred_direction_deg"][neuron], color="C3", lw=0.8)
        axis.set_title(f"neuron {neuron}: OSI {result['osi'][neuron]:.2f}", fontsize=8)
        axis.set_xticks([0, 90, 180, 270])
    scatter = figure.add_subplot(grid[:, 4:])
    scatter.scatter(result["osi"], result["dsi"], s=6)
    scatter.set(xlabel="OSI", ylabel="DSI", title="all neurons")
    figure.savefig(path, dpi=110)
    plt.close(figure)
