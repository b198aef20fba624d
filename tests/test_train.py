"""End to end: a tiny twin trains, improves, resumes, and runs on another simulator's data."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from twinserve.cli import main as twin
from twinserve.training.checkpoint import load_run
from twinserve.training.data import Recording
from twinserve.training.positions import (EDGE_FIT_ROUNDS, ReadoutStart, grid_cells, grid_centres, pixel_positions,
                                          readout_start, retinotopic_fit)
from twinserve.training.presets import TrainConfig
from twinserve.training.train import readout_l1, refit_plan, should_stop, train
from twinserve.training.transfer import CoreSource

from other_simulator import write_other_recording

TIERS = {"oracle", "live_test_main", "final_test_main", "live_test_bonus", "final_test_bonus", "train"}
METRICS = {"single_trial_correlation", "correlation_to_average", "fev_e", "cc_norm", "ceiling_single_trial_correlation"}


def test_tiny_train_improves_validation_and_writes_the_run(tiny_run, default_mouse):
    out, results = tiny_run
    for name in ("config.json", "model.safetensors", "metrics.json", "training_curve.png", "metrics_per_neuron.npz"):
        assert (out / name).is_file(), name
    state = json.loads((out / "checkpoint/state.json").read_text())
    untrained = state["history"][0]
    assert untrained["step"] == 0
    assert state["best_score"] > untrained["validation"] + 0.05, state["history"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == results
    for recording in default_mouse:
        assert set(metrics[recording.name]) == TIERS
        oracle = metrics[recording.name]["oracle"]
        assert METRICS <= set(oracle)
        assert 0.35 < oracle["ceiling_single_trial_correlation"] < 0.55
        assert oracle["single_trial_correlation"] > 0.05


def test_run_reloads_without_pickle_and_predicts_the_same(tiny_run, default_mouse):
    out, _ = tiny_run
    model, config = load_run(out)
    assert config["receptive_field"] == model.receptive_field
    recording = Recording(default_mouse[0])
    trial = recording.trial(recording.trials_in("oracle")[0])
    tensors = [torch.from_numpy(a)[None] for a in (trial.video, trial.behavior, trial.pupil_center)]
    again, _ = load_run(out)
    with torch.no_grad():
        torch.testing.assert_close(model(recording.name, *tensors), again(recording.name, *tensors))
    assert config["recordings"][recording.name]["unit_ids"] == recording.unit_ids.tolist()


def test_the_run_records_core_and_frame_shape_and_older_runs_still_load(tiny_run, tmp_path):
    out, _ = tiny_run
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["core"] == "factorized" and config["frame_shape"] == [36, 64]
    del config["frame_shape"], config["model"]["core"]  # as written before the core registry
    (tmp_path / "config.json").write_text(json.dumps(config))
    shutil.copy(out / "model.safetensors", tmp_path)
    old, old_config = load_run(tmp_path)
    model, _ = load_run(out)
    assert old.frame_shape == model.frame_shape and old_config["model"]["core"] == "factorized"
    assert config["model"]["centred_shift"] and all(head.centred_shift for head in old.heads.values())
    inputs = [torch.rand(1, 12, *model.frame_shape) * 255, torch.randn(1, 12, 2), torch.randn(1, 12, 2)]
    name = next(iter(config["recordings"]))
    with torch.no_grad():
        torch.testing.assert_close(old(name, *inputs), model(name, *inputs), rtol=0, atol=0)
    del config["model"]["shift_input"]  # as written before the heads moved the core's input: they move their readouts
    (tmp_path / "config.json").write_text(json.dumps(config))
    readout_shifted, shifted_config = load_run(tmp_path)
    assert shifted_config["model"]["shift_input"] is False
    assert not any(head.shift_input for head in readout_shifted.heads.values())
    del config["model"]["centred_shift"]  # as written before centred shifts: the shifter's output is the shift
    (tmp_path / "config.json").write_text(json.dumps(config))
    older, older_config = load_run(tmp_path)
    assert older_config["model"]["centred_shift"] is False
    assert not any(head.centred_shift for head in older.heads.values())
    assert not {"centred_shift", "shift_input"} & set(CoreSource.read(tmp_path).model)  # a core moved from it gets today's heads


def test_training_resumes_from_its_checkpoint(small_mouse, tmp_path):
    train(small_mouse, tmp_path, preset="tiny", progress=False, steps=40, eval_every=20)
    first = json.loads((tmp_path / "checkpoint/state.json").read_text())
    train(small_mouse, tmp_path, preset="tiny", progress=False, steps=60, eval_every=20)
    second = json.loads((tmp_path / "checkpoint/state.json").read_text())
    assert first["step"] == 40 and second["step"] == 60
    assert second["history"][: len(first["history"])] == first["history"]
    with pytest.raises(ValueError, match="different twin"):
        train(small_mouse, tmp_path, preset="tiny", progress=False, steps=80, eval_every=20, lr=1e-3)


def test_the_readouts_are_refitted_once_at_the_chosen_fraction_of_the_budget(small_mouse, tmp_path, monkeypatch):
    import twinserve.training.train as trainer

    refits, refit = [], trainer.refit_readouts
    monkeypatch.setattr(trainer, "refit_readouts", lambda *args: refits.append(args) or refit(*args))
    train(small_mouse, tmp_path, preset="tiny", progress=False, steps=40, eval_every=20, refit_readout_at=0.5,
          minutes=60)
    state = json.loads((tmp_path / "checkpoint/state.json").read_text())
    assert state["readout_refitted_at"] == 20 and len(refits) == 1
    neurons = {Path(folder).name: Recording(folder).neurons for folder in small_mouse}
    assert set(state["readout_refit_moved"]) == set(neurons)
    assert all(0 <= state["readout_refit_moved"][name] <= count for name, count in neurons.items())
    train(small_mouse, tmp_path, preset="tiny", progress=False, steps=60, eval_every=20, refit_readout_at=0.5,
          minutes=60)
    assert len(refits) == 1  # a resumed run past the refit does not refit again
    with pytest.raises(ValueError, match="fraction of the budget"):
        train(small_mouse, tmp_path / "other", preset="tiny", progress=False, steps=10, refit_readout_at=1.5)


def test_initial_readout_positions_find_the_receptive_fields(default_mouse):
    recording = Recording(default_mouse[0])
    trials = recording.load("train")
    start = readout_start(trials, recording.coordinates)
    pixels = pixel_positions(start.positions, recording.frame_shape)
    truth = np.load(default_mouse[0] / "truth/neurons/rf_center.npy")
    error = np.linalg.norm(pixels - truth, axis=1)
    assert np.median(error) < 3, np.median(error)  # random positions would be ~20 pixels off
    assert start.confirmed and start.retinotopy_r2 > 0.5
    shuffled = readout_start(trials, np.random.default_rng(0).permutation(recording.coordinates))
    assert not shuffled.confirmed  # coordinates that do not explain the peaks: the raw peaks are the start


def test_the_retinotopic_fit_is_not_squeezed_by_receptive_fields_at_and_beyond_the_edge():
    # 600 neurons whose true centres run 1.2 cells past every edge of a 9 × 16 grid; each peaks at the
    # cell holding its centre plus scatter, clipped to the grid as a correlation map's peak is.
    rng = np.random.default_rng(0)
    grid = (9, 16)
    coordinates = rng.uniform(-1, 1, (600, 2))
    reach = 1 + 1.2 * 2 / np.array([16, 9])  # (x, y) in screen coordinates
    truth = coordinates * reach * np.array([1.0, -1.0])  # a flipped y axis, as cortical maps have
    peaks = grid_centres(grid)[grid_cells(truth + rng.normal(0, 0.1, truth.shape), grid)]
    strength = rng.uniform(0.1, 1.0, 600)
    on_screen = (np.abs(truth) <= 1).all(1)
    for fit_grid, squeezed in ((None, True), (grid, False)):
        fitted, r2 = retinotopic_fit(coordinates, peaks, strength, fit_grid, EDGE_FIT_ROUNDS)
        slopes = [np.polyfit(fitted[:, axis], truth[:, axis], 1)[0] for axis in (0, 1)]
        assert (max(abs(s) for s in slopes) > 1.1) == squeezed, slopes  # the true centres spread wider than the map
        assert r2 > 0.8
    error = np.linalg.norm(fitted - truth, axis=1)
    assert np.median(error[on_screen]) < 0.08 and np.median(error[~on_screen]) < 0.12


def test_the_readouts_refitted_are_those_whose_start_no_retinotopy_confirmed():
    def start(r2):
        return ReadoutStart(np.zeros((3, 2), np.float32), r2)

    starts = {"tight": start(0.9), "scattered": start(0.1), "few neurons": start(None)}
    names = [*starts, "transferred"]
    assert refit_plan(TrainConfig(), names, starts) == (0.3, ["scattered", "few neurons"])
    assert refit_plan(TrainConfig(refit_readout_at=0.5), names, starts) == (0.5, names)  # asked for: all
    assert refit_plan(TrainConfig(), names, {"tight": start(0.9)}) == (None, [])
    assert refit_plan(TrainConfig(refit_unconfirmed_at=None), names, starts) == (None, [])


def test_cli_on_data_from_another_simulator(tmp_path, capsys):
    folders = [write_other_recording(tmp_path / f"other-{i}", neurons=23 + 5 * i, seed=i) for i in range(2)]
    args = ["--data", *map(str, folders), "--quiet"]
    assert twin(["train", *args, "--out", str(tmp_path / "run"), "--preset", "tiny", "--steps", "20"]) == 0
    metrics = json.loads((tmp_path / "run/metrics.json").read_text())
    assert set(metrics["other-0"]) == {"train", "oracle"}  # final_test responses are withheld
    assert {"single_trial_correlation", "cc_norm", "fev_e"} <= set(metrics["other-0"]["oracle"])
    assert "ceiling_single_trial_correlation" not in metrics["other-0"]["oracle"]
    assert twin(["evaluate", "--run", str(tmp_path / "run"), *args, "--out", str(tmp_path / "m.json")]) == 0
    assert json.loads((tmp_path / "m.json").read_text()) == metrics
    assert "other-1" in capsys.readouterr().out


def test_cli_errors_are_clear(tmp_path, capsys):
    assert twin(["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "r")]) == 2
    assert "recording folder missing" in capsys.readouterr().err
    assert twin(["evaluate", "--run", str(tmp_path), "--data", str(tmp_path)]) == 2
    assert "config.json: missing" in capsys.readouterr().err
    (tmp_path / "virtual-mouse-0").mkdir()
    assert twin(["data", "synth", "--out", str(tmp_path), "--recordings", "1", "--quiet"]) == 2
    assert "virtual-mouse-0: already exists" in capsys.readouterr().err
    assert not list((tmp_path / "virtual-mouse-0").iterdir())
    assert twin(["demo", "--out", str(tmp_path / "demo"), "--steps", "0"]) == 2
    assert "at least 1 step" in capsys.readouterr().err
    assert not (tmp_path / "demo").exists()


def test_early_stopping_waits_for_half_the_budget():
    """A plateau early in the run does not stop it; the same plateau late does; the budget always does."""
    config = TrainConfig(patience=6, min_progress=0.5)
    assert not should_stop(config, 0.2, bad_validations=10)
    assert should_stop(config, 0.6, bad_validations=6)
    assert not should_stop(config, 0.6, bad_validations=5)
    assert should_stop(config, 1.0, bad_validations=0)


def test_readout_l1_is_the_mean_l1_norm_of_the_channel_weights():
    from twinserve.training.model import Head

    head = Head(channels=4, neurons=3)
    with torch.no_grad():
        head.readout.weight.copy_(torch.tensor([[1.0, -2.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 3.0], [0.0, 1.0, 0.0]]))
    assert readout_l1(head).item() == pytest.approx((1.5 + 3.0 + 3.0) / 3)


def test_core_smoothness_penalises_rough_input_filters():
    from twinserve.training.cores import build_core, core_smoothness

    core = build_core("factorized", 3, (36, 64), channels=(4, 4), spatial_kernels=(9, 3), temporal_kernels=(3, 3))
    rough = core_smoothness(core).item()
    y, x = torch.meshgrid(torch.arange(9.0) - 4, torch.arange(9.0) - 4, indexing="ij")
    with torch.no_grad():
        core.layers[0].spatial.weight[:] = torch.exp(-(x**2 + y**2) / 8)  # every kernel a smooth blob
    assert core_smoothness(core).item() < 0.1 * rough
    transformer = build_core("transformer", 3, (36, 64), dim=16, depth=1, heads=2, window=4, patch=4, channels=8)
    assert core_smoothness(transformer) == 0.0
