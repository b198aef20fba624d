"""`twin bench experiments`: `twin experiment tuning` and `rf` on a served twin of thousands of neurons.

A random twin of `preset` with `neurons` neurons, its readout spread out (`VariedTwin`: a random
twin's neurons all start alike, and so would their curves, maps and fits), is exported and served. Each
experiment runs as the `twin` command (its wall time, start-up included); then its two heavy phases are
timed again in this process: scoring its stimulus library into a fresh store (what the command did
through `ServedTwin.responses_to`), and the batched fits of all the curves or maps it saved. The rest
(start-up, stimuli, analysis, figures) is the remainder. On a sample of those curves or maps the
per-neuron scipy fits the experiments ran before (`scipy_fits`) are timed beside the batched fits of the
same sample, and their residual sums of squares compared → benchmarks/results/experiments.json.
Target: each experiment in under 5 minutes at 8,000 neurons.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from twinserve.clients.experiments.rf import fit_gaussians, gaussian_2d
from twinserve.clients.experiments.tuning import fit_von_mises, two_peak_von_mises
from twinserve.clients.score import score
from twinserve.export.onnx_export import export_twin
from twinserve.serving.repository import write_repository
from twinserve.serving.server import Ports, TritonServer

from .harness import machine, write_results
from .scipy_fits import gaussians_one_by_one, von_mises_one_by_one
from .served import ServedTwin
from .twins import RECORDING, random_twin

TARGET_S = 300.0


class VariedTwin(ServedTwin):
    """`ServedTwin` whose neurons differ: readout positions spread over the screen (uniform in grid
    coordinates ±0.9) and random channel weights (normal, std 1 / √channels), seeded."""

    def __enter__(self) -> VariedTwin:
        self.twin = random_twin(self.preset, {RECORDING: self.neurons}).eval()
        readout, generator = self.twin.heads[RECORDING].readout, torch.Generator().manual_seed(0)
        with torch.no_grad():
            readout.position.uniform_(-0.9, 0.9, generator=generator)
            readout.weight.normal_(0.0, len(readout.weight) ** -0.5, generator=generator)
        self.manifest = export_twin(self.twin, self.preset, {RECORDING: {"neurons": self.neurons,
                                                                         "unit_ids": list(range(self.neurons))}},
                                    self.artifacts)
        write_repository(self.artifacts, self.repository)
        self.server = TritonServer(self.repository, Ports.free())
        return self


def _seconds(run) -> tuple[float, object]:
    started = time.perf_counter()
    result = run()
    return time.perf_counter() - started, result


def _tuning_rss(curves: np.ndarray, angles: np.ndarray, params: np.ndarray) -> np.ndarray:
    theta = np.deg2rad(angles)
    return ((two_peak_von_mises(theta, *params.T[:, :, None]) - curves) ** 2).sum(1)


def _rf_rss(maps: np.ndarray, params: np.ndarray) -> np.ndarray:
    rows, cols = np.mgrid[0:maps.shape[1], 0:maps.shape[2]]
    predictions = gaussian_2d((cols.ravel(), rows.ravel()), *params.T[:, :, None])
    return ((predictions - maps.reshape(len(maps), -1)) ** 2).sum(1)


def _old_vs_new(data: np.ndarray, batched, one_by_one, rss) -> dict:
    """The batched and the per-neuron scipy fits on the same curves or maps → seconds per neuron of
    each, and how the batched fit's RSS compares with scipy's."""
    new_s, (new, _) = _seconds(lambda: batched(data))
    old_s, old = _seconds(lambda: one_by_one(data))
    ratio = rss(data, new) / rss(data, np.nan_to_num(old))
    ratio = ratio[np.isfinite(old).all(1)]  # where scipy's fit did not fail
    return {"neurons": len(data), "scipy_s_per_neuron": old_s / len(data),
            "batched_s_per_neuron": new_s / len(data), "speedup": old_s / new_s,
            "scipy_failures": int((~np.isfinite(old).all(1)).sum()),
            "rss_ratio_batched_over_scipy": {"median": float(np.median(ratio)), "max": float(ratio.max()),
                                             "worse_by_over_0.1%": int((ratio > 1.001).sum()),
                                             "better_by_over_0.1%": int((ratio < 0.999).sum())}}


def _experiment(kind: str, served: ServedTwin, folder: Path, sample: int, seed: int) -> dict:
    out = folder / kind
    command = [sys.executable, "-m", "twinserve.cli", "experiment", kind, "--url", served.url,
               "--model", served.model("clip"), "--out", str(out), "--quiet"]
    total_s, _ = _seconds(lambda: subprocess.run(command, check=True, stdout=subprocess.DEVNULL))
    scoring_s, _ = _seconds(lambda: score(served.url, served.model("clip"), out / "library",
                                          folder / f"{kind}_again.zarr", progress=False, on_error="stop"))
    saved = np.load(out / f"{kind}.npz")
    if kind == "tuning":
        angles = saved["directions_deg"]
        data, rss = saved["tuning_curve"], lambda curves, params: _tuning_rss(curves, angles, params)
        batched = lambda curves: fit_von_mises(curves, angles)  # noqa: E731
        one_by_one = lambda curves: von_mises_one_by_one(curves, angles)  # noqa: E731
    else:
        data, rss, batched, one_by_one = saved["rf_map"], _rf_rss, fit_gaussians, gaussians_one_by_one
    fitting_s, _ = _seconds(lambda: batched(data))
    picked = np.random.default_rng(seed).choice(len(data), min(sample, len(data)), replace=False)
    old_vs_new = _old_vs_new(data[picked], batched, one_by_one, rss)
    return {"total_s": total_s, "scoring_s": scoring_s, "fitting_s": fitting_s,
            "rest_s": total_s - scoring_s - fitting_s, "under_target": total_s < TARGET_S,
            "batched_fits_s_per_neuron": fitting_s / len(data),
            "scipy_fits_of_all_neurons_s": old_vs_new["scipy_s_per_neuron"] * len(data),  # from the sample
            "fits_old_vs_new": old_vs_new}


def run_bench(out: str | Path, neurons: int = 8000, preset: str = "small", sample: int = 200, seed: int = 0,
              progress: bool = True) -> dict:
    results = {"config": {"neurons": neurons, "preset": preset, "sample": sample, "target_s": TARGET_S},
               "machine": {**machine(), "load_average_at_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as scratch, VariedTwin(preset, neurons, scratch) as served:
        for kind in ("tuning", "rf"):
            results[kind] = _experiment(kind, served, Path(scratch), sample, seed)
            if progress:
                print(f"{kind}: {results[kind]['total_s']:.0f} s", file=sys.stderr)
    results["machine"]["load_average_at_end"] = os.getloadavg()  # (1, 5, 15 min): the cores are shared
    write_results(results, out)
    return results


def lines(results: dict) -> list[str]:
    """One summary line per experiment."""
    rows = []
    for kind in ("tuning", "rf"):
        r = results[kind]
        fits = r["fits_old_vs_new"]
        rows.append(f"{kind:<7}{r['total_s']:6.0f} s at {results['config']['neurons']} neurons (scoring "
                    f"{r['scoring_s']:.0f} s, fits {r['fitting_s']:.1f} s, scipy's ~"
                    f"{r['scipy_fits_of_all_neurons_s']:.0f} s; "
                    f"rest {r['rest_s']:.0f} s); fits per neuron: scipy {1e3 * fits['scipy_s_per_neuron']:.1f} ms, "
                    f"batched {1e3 * r['batched_fits_s_per_neuron']:.2f} ms ({1e3 * fits['batched_s_per_neuron']:.2f} "
                    f"ms on the {fits['neurons']} of the sample alone); RSS batched/scipy max "
                    f"{fits['rss_ratio_batched_over_scipy']['max']:.4f}")
    return rows
