"""In-silico experiments: the analysis on known answers, and whole runs against the served twin."""

import json

import numpy as np

from twinserve.clients.experiments.rf import fit_centre, run_rf, spatial_selectivity
from twinserve.clients.experiments.tuning import (orientation_error, preferred_direction, run_tuning, two_peak_von_mises,
                                        vector_indices)
from twinserve.clients.stimuli import directions
from twinserve.serving.repository import model_names


def test_vector_indices_of_known_curves():
    angles = directions(16)
    flat = np.ones((1, 16))
    orientation_only = 1 + np.cos(2 * np.deg2rad(angles))[None]  # two equal peaks: OSI 0.5, DSI 0
    osi, dsi = vector_indices(np.concatenate([flat, orientation_only]), angles)
    np.testing.assert_allclose(osi, [0, 0.5], atol=1e-9)
    np.testing.assert_allclose(dsi, [0, 0], atol=1e-9)


def test_von_mises_fit_finds_the_preferred_direction():
    rng = np.random.default_rng(0)
    angles = directions(16)
    for true in (10.0, 100.0, 200.0, 330.0):
        curve = two_peak_von_mises(np.deg2rad(angles), 1.0, 2.0, 0.8, 3.0, np.deg2rad(true))
        found = preferred_direction(curve + rng.normal(0, 0.02, 16), angles)
        assert abs((found - true + 180) % 360 - 180) < 3
    assert orientation_error(np.array([179.0, 10.0]), np.array([1.0, 100.0])).tolist() == [2.0, 90.0]


def test_rf_centre_and_selectivity_of_known_maps():
    rows, cols = np.mgrid[0:36, 0:64]
    blob = np.exp(-((cols - 40.3) ** 2 + (rows - 12.7) ** 2) / (2 * 3.0**2))
    x, y, sigma, r2 = fit_centre(blob + 0.01 * np.random.default_rng(0).normal(size=blob.shape))
    assert abs(x - 40.3) < 0.1 and abs(y - 12.7) < 0.1 and abs(sigma - 3.0) < 0.2 and r2 > 0.95
    wide = np.exp(-((cols - 32) ** 2 + (rows - 18) ** 2) / (2 * 10.0**2))
    assert spatial_selectivity(blob) > spatial_selectivity(wide)


def test_tuning_and_rf_experiments_run_through_the_server(served, default_mouse, tmp_path):
    server, _, manifest = served
    model = model_names(default_mouse[0].name)["clip"]
    neurons = manifest["recordings"][default_mouse[0].name]["neurons"]
    tuning = run_tuning(server.url, model, tmp_path / "tuning", count=8, periods=(12.0, 24.0), frames=30,
                        truth=default_mouse[0], progress=False)
    saved = np.load(tmp_path / "tuning" / "tuning.npz")
    assert saved["tuning_curve"].shape == (neurons, 8) and tuning["queries"] == 16
    assert 0 <= tuning["validation"]["median_orientation_error_deg"] <= 90
    assert (tmp_path / "tuning" / "tuning_vs_truth.png").is_file() and (tmp_path / "tuning" / "tuning_curves.png").is_file()
    rf = run_rf(server.url, model, tmp_path / "rf", grid=(3, 4), repeats=1, truth=default_mouse[0], progress=False)
    saved = np.load(tmp_path / "rf" / "rf.npz")
    assert saved["sta"].shape == (neurons, 36, 64) and rf["dots"] == 24
    assert json.loads((tmp_path / "rf" / "rf.json").read_text()) == rf
    assert (tmp_path / "rf" / "rf_gallery.png").is_file()


def test_optimize_searches_within_its_budget(served, default_mouse, tmp_path):
    from twinserve.clients.experiments.optimize import decode, run_optimize

    assert decode(np.zeros(6))["period_px"] == 4.0 and decode(np.ones(6))["sigma_px"] == 30.0
    server, _, _ = served
    model = model_names(default_mouse[0].name)["clip"]
    summary = run_optimize(server.url, model, [3], tmp_path, budget=50, population=8, frames=12, settle=2,
                           contrast=0.5, progress=False)
    log = json.loads((tmp_path / "optimize_log.json").read_text())
    assert summary["queries"] == 48 and len(log) == 6
    best_so_far = [entry["best_so_far"] for entry in log]
    assert best_so_far == sorted(best_so_far) and summary["best"]["response"] == best_so_far[-1]
    assert summary["best_reference"]["response"] > 0
    stimulus = np.load(tmp_path / "best_stimulus.npy")
    assert np.abs(stimulus - 128).max() <= 0.5 * 127 + 1  # the contrast budget holds
    assert (tmp_path / "optimize.png").is_file()


def test_mei_raises_the_response_within_the_norm_budget(tiny_run, default_mouse, tmp_path):
    from twinserve.clients.experiments.mei import run_mei

    summary = run_mei(tiny_run[0], default_mouse[0].name, [0, 5], tmp_path, steps=25, rms=20.0, progress=False)
    assert all(m > g for m, g in zip(summary["response"], summary["response_to_grey"]))
    meis = np.load(tmp_path / "mei.npy")
    assert meis.shape[0] == 2 and meis.min() >= 0 and meis.max() <= 255
    assert all(rms <= 20.0 + 1e-3 for rms in np.sqrt(((meis - 128) ** 2).reshape(2, -1).mean(1)))
