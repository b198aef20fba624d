"""Fidelity per true property: a twin that misses one group of neurons shows it in that group's bins."""

import json

import numpy as np

from twinserve.training.fidelity import MIN_CEILING, edge_distance, fidelity_table, write_fidelity

N = 200


def fake_run(tmp_path, truth: bool = True):
    """A run folder with metrics_per_neuron.npz and one recording folder; large-rf_sigma neurons are missed.

    The twin reaches 80 % of the ceiling, except on the quarter of neurons with the largest rf_sigma (10 %).
    """
    rng = np.random.default_rng(0)
    recording = tmp_path / "mouse_a"
    sigma = rng.uniform(1, 8, N).astype(np.float32)
    ceiling = rng.uniform(0.2, 0.6, N)
    ceiling[:5] = 0.01  # unreliable neurons: left out of the fractions
    missed = sigma > np.quantile(sigma, 0.75)
    correlation = ceiling * np.where(missed, 0.1, 0.8)
    if truth:
        folder = recording / "truth" / "neurons"
        folder.mkdir(parents=True)
        center = np.stack([rng.uniform(-5, 68, N), rng.uniform(-5, 40, N)], 1).astype(np.float32)
        arrays = {"rf_sigma": sigma, "rf_center": center, "is_complex": rng.random(N) < 0.5,
                  "rf_family": rng.choice(["gabor", "dog", "blob"], N), "eye_gain": np.full(N, 0.3, np.float32),
                  "tuning_curve": rng.random((N, 16)), "latency": rng.integers(2, 5, N).astype(np.float32)}
        for key, array in arrays.items():
            np.save(folder / f"{key}.npy", array)
    else:
        recording.mkdir()
    out = tmp_path / "run"
    out.mkdir()
    np.savez_compressed(out / "metrics_per_neuron.npz", **{
        "mouse_a/oracle/single_trial_correlation": correlation,
        "mouse_a/oracle/ceiling_single_trial_correlation": ceiling,
        "mouse_a/train/single_trial_correlation": correlation})
    return out, recording


def test_the_bin_of_the_missed_neurons_has_the_lower_fraction_of_ceiling(tmp_path):
    out, recording = fake_run(tmp_path)
    table = write_fidelity(out, [recording])
    assert json.loads((out / "fidelity.json").read_text()) == table
    assert (out / "fidelity.png").stat().st_size > 1000
    entry = table["mouse_a"]
    assert entry["neurons"] == N and entry["with_ceiling"] == N - 5
    properties = entry["properties"]
    # (N,) arrays by any name, the derived ones; not (N, 16) arrays nor constant ones.
    assert set(properties) == {"rf_sigma", "is_complex", "rf_family", "latency", "rf_edge_distance", "ceiling"}

    sigma = properties["rf_sigma"]
    assert sigma["kind"] == "quantile" and len(sigma["bins"]) == 4
    fractions = [b["median_fraction_of_ceiling"] for b in sigma["bins"]]
    assert np.allclose(fractions[:3], 0.8) and np.isclose(fractions[3], 0.1)
    assert sum(b["count"] for b in sigma["bins"]) == N
    assert [b["center"] for b in sigma["bins"]] == sorted(b["center"] for b in sigma["bins"])

    assert [b["value"] for b in properties["is_complex"]["bins"]] == [False, True]
    assert [b["value"] for b in properties["rf_family"]["bins"]] == ["blob", "dog", "gabor"]
    assert properties["latency"]["kind"] == "category"  # few distinct values: one bin each
    low_ceiling = properties["ceiling"]["bins"][0]
    assert low_ceiling["with_ceiling"] < low_ceiling["count"]


def test_edge_distance_is_negative_outside_the_screen():
    centers = np.array([[0, 0], [31.5, 17.5], [-3.5, 10], [63, 40.5]], np.float32)
    np.testing.assert_allclose(edge_distance(centers, (36, 64)), [0.5, 18, -3, -5])


def test_only_recordings_with_truth_and_metrics_enter_the_table(tmp_path):
    out, recording = fake_run(tmp_path, truth=False)
    assert write_fidelity(out, [recording]) is None
    assert not (out / "fidelity.json").exists() and not (out / "fidelity.png").exists()
    with np.load(out / "metrics_per_neuron.npz") as arrays:
        assert fidelity_table(dict(arrays), [recording], tier="oracle") == {}


def test_neurons_below_the_minimum_ceiling_have_no_fraction(tmp_path):
    out, recording = fake_run(tmp_path)
    ceiling = np.full(N, MIN_CEILING / 2)
    per_neuron = {"mouse_a/oracle/single_trial_correlation": ceiling,
                  "mouse_a/oracle/ceiling_single_trial_correlation": ceiling}
    entry = fidelity_table(per_neuron, [recording])["mouse_a"]
    assert entry["with_ceiling"] == 0
    assert all(b["median_fraction_of_ceiling"] is None for b in entry["properties"]["rf_sigma"]["bins"])


def test_a_trained_twin_on_the_virtual_mouse_writes_its_fidelity(tiny_run, default_mouse):
    out, _ = tiny_run
    table = json.loads((out / "fidelity.json").read_text())
    assert set(table) == {r.name for r in default_mouse}
    assert (out / "fidelity.png").is_file()
    for entry in table.values():
        assert {"rf_sigma", "reliability", "osi", "is_complex", "rf_edge_distance", "ceiling"} <= set(entry["properties"])
