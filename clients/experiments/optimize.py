"""`twin experiment optimize`: closed-loop search for the stimulus that most excites a neuron or group.

Gradient-free, through the server: CMA-ES (the `cma` package) over a drifting Gabor patch with six
parameters — centre x and y, direction, spatial period, temporal frequency and envelope width — each
mapped from [0, 1] (log scale for period, frequency and width). The contrast is capped by a budget.
Every candidate is one clip (the grey lead-in of `common.ServedTwin`, then `frames` frames of the
patch) sent to the clip model; a generation's candidates are in flight together so the server
batches them. The objective is the mean predicted response of the chosen neurons over the patch
frames after `settle`.

For comparison the same objective is measured on the reference sets (full-field gratings in 16
directions × 4 periods, as in `tuning`; single flashed on/off dots on a 6×10 grid, as in `rf`),
outside the query budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from twinserve.contract import GREY, PIXEL_RANGE

from ..plotting import pyplot
from ..stimuli import AMPLITUDE, HEIGHT, WIDTH, directions, drifting_gabor, drifting_grating
from .common import ServedTwin

BOUNDS = {"x": (0.0, WIDTH - 1.0), "y": (0.0, HEIGHT - 1.0), "direction_deg": (0.0, 360.0),
          "period_px": (4.0, 40.0), "tf_hz": (0.5, 8.0), "sigma_px": (2.0, 30.0)}
LOG_SCALE = ("period_px", "tf_hz", "sigma_px")


def decode(z: np.ndarray) -> dict[str, float]:
    """A point of [0, 1]^6 → Gabor parameters."""
    params = {}
    for value, (name, (low, high)) in zip(np.clip(z, 0, 1), BOUNDS.items()):
        params[name] = float(low * (high / low) ** value if name in LOG_SCALE else low + (high - low) * value)
    return params


def gabor_movie(params: dict, frames: int, contrast: float) -> np.ndarray:
    """The drifting Gabor patch of decoded parameters → (frames, H, W)."""
    return drifting_gabor(params["direction_deg"], (params["x"], params["y"]), params["sigma_px"],
                          params["period_px"], params["tf_hz"], frames, contrast)


def reference_movies(frames: int, contrast: float) -> dict[str, np.ndarray]:
    """The tuning set's gratings and the rf set's dots (each held for the movie), (frames, H, W) each."""
    movies = {}
    for period in (8.0, 12.0, 16.0, 24.0):
        for direction in directions(16):
            movies[f"grating p{period:g} {direction:g}°"] = drifting_grating(direction, period, 2.0, frames, contrast)
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    for y in np.linspace(4, HEIGHT - 5, 6):
        for x in np.linspace(4, WIDTH - 5, 10):
            blob = np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * 3.0**2))
            for polarity in (1, -1):
                frame = (GREY + polarity * contrast * AMPLITUDE * blob).astype(np.float32)
                movies[f"dot ({x:.0f}, {y:.0f}) {'on' if polarity > 0 else 'off'}"] = np.repeat(frame[None], frames, 0)
    return movies


def run_optimize(url: str, model: str, neurons: list[int], out: str | Path, budget: int = 2000,
                 population: int = 16, frames: int = 30, settle: int = 10, contrast: float = 1.0, seed: int = 0,
                 progress: bool = True) -> dict:
    """CMA-ES within `budget` queries → summary; writes the log, the best stimulus (as sent: lead-in,
    then the patch) and figures under `out`."""
    import cma
    from tqdm import tqdm

    if not 0 < contrast <= 1:
        raise ValueError(f"contrast must be in (0, 1], got {contrast}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    twin = ServedTwin.connect(url, model)
    count = twin.parameters.neurons
    if not neurons or min(neurons) < 0 or max(neurons) >= count:
        raise ValueError(f"neurons must be indices in [0, {count}), got {neurons}")

    def objective(movies: list[np.ndarray]) -> np.ndarray:
        answers = twin.clip_responses(movies)  # (frames, N) each, frame j = movie frame j
        return np.array([a[settle:, neurons].mean() for a in answers])

    strategy = cma.CMAEvolutionStrategy([0.5] * len(BOUNDS), 0.3, {
        "bounds": [0, 1], "popsize": population, "seed": seed + 1, "verbose": -9})
    log, best, queries = [], {"response": -np.inf}, 0
    bar = tqdm(total=budget, unit="query", disable=not progress, desc="optimizing")
    while queries + population <= budget:
        candidates = strategy.ask()
        decoded = [decode(np.asarray(z)) for z in candidates]
        scores = objective([gabor_movie(p, frames, contrast) for p in decoded])
        strategy.tell(candidates, (-scores).tolist())
        queries += population
        top = int(np.argmax(scores))
        if scores[top] > best["response"]:
            best = {"response": float(scores[top]), "params": decoded[top], "query": queries}
        log.append({"generation": len(log) + 1, "queries": queries, "best_in_generation": float(scores[top]),
                    "best_so_far": best["response"], "params": decoded[top]})
        bar.update(population)
        bar.set_postfix(best=f"{best['response']:.3f}", refresh=False)
    bar.close()
    references = reference_movies(frames, contrast)
    reference_scores = dict(zip(references, objective(list(references.values())).tolist()))
    best_reference = max(reference_scores, key=reference_scores.get)
    summary = {"model": model, "neurons": neurons, "queries": queries, "budget": budget, "contrast": contrast,
               "seed": seed, "best": best, "best_reference": {"stimulus": best_reference,
                                                              "response": reference_scores[best_reference]},
               "ratio_to_best_reference": best["response"] / reference_scores[best_reference]}
    best_movie = gabor_movie(best["params"], frames, contrast)
    np.save(out / "best_stimulus.npy", twin.clip(best_movie))
    (out / "optimize_log.json").write_text(json.dumps(log, indent=1))
    (out / "optimize.json").write_text(json.dumps(summary, indent=2))
    plot_optimization(log, summary, best_movie, out / "optimize.png")
    return summary


def plot_optimization(log: list[dict], summary: dict, stimulus: np.ndarray, path: Path) -> None:
    """Best response per generation vs queries, the best reference, and frames of the found stimulus."""
    plt = pyplot()

    figure = plt.figure(figsize=(12, 5), constrained_layout=True)
    grid = figure.add_gridspec(2, 4)
    curve = figure.add_subplot(grid[:, :2])
    queries = [entry["queries"] for entry in log]
    curve.plot(queries, [entry["best_in_generation"] for entry in log], ".", color="0.6", label="best of generation")
    curve.plot(queries, [entry["best_so_far"] for entry in log], color="C3", label="best so far")
    curve.axhline(summary["best_reference"]["response"], color="C0", ls="--",
                  label=f"best reference: {summary['best_reference']['stimulus']}")
    curve.set(xlabel="queries", ylabel="mean predicted response", title=f"neurons {summary['neurons']}")
    curve.legend(fontsize=8)
    for k, t in enumerate(np.linspace(0, len(stimulus) - 1, 4).astype(int)):
        axis = figure.add_subplot(grid[k // 2, 2 + k % 2])
        axis.imshow(stimulus[t], cmap="gray", vmin=PIXEL_RANGE[0], vmax=PIXEL_RANGE[1])
        axis.set_title(f"frame {t}", fontsize=8)
        axis.axis("off")
    figure.savefig(path, dpi=110)
    plt.close(figure)
