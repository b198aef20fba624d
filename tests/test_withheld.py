"""Withheld responses (files missing, or placeholders of zeros or NaN, as a public release ships its
test tiers): not data for training or metrics, said once per recording and tier, never a crash."""

import logging
import shutil

import numpy as np
import pytest

from twinserve.training.data import Recording, withheld
from twinserve.training.presets import PRESETS
from twinserve.training.evaluate import evaluate
from twinserve.training.train import build_model, validation_trials
from twinserve.training.windows import index_trials


@pytest.fixture
def release(small_mouse, tmp_path):
    """A copy of a recording as a release ships it: final_test_main all zero (NaN-padded like the
    data), live_test_main's files missing, one oracle trial of zeros, one train trial of NaN."""
    copy = tmp_path / small_mouse[0].name
    shutil.copytree(small_mouse[0], copy, ignore=shutil.ignore_patterns("truth"))
    recording = Recording(copy)
    for index in recording.trials_in("final_test_main"):
        path = copy / f"data/responses/{index}.npy"
        np.save(path, np.where(np.isnan(np.load(path)), np.nan, 0).astype(np.float32))
    for index in recording.trials_in("live_test_main"):
        (copy / f"data/responses/{index}.npy").unlink()
    zero_oracle, nan_train = recording.trials_in("oracle")[0], recording.trials_in("train")[0]
    np.save(copy / f"data/responses/{zero_oracle}.npy", np.zeros((recording.neurons, 300), np.float32))
    np.save(copy / f"data/responses/{nan_train}.npy", np.full((recording.neurons, 300), np.nan, np.float32))
    return Recording(copy), zero_oracle, nan_train


def test_the_rule_is_on_the_whole_trial_never_per_neuron():
    responses = np.zeros((5, 100), np.float32)
    assert withheld(None) and withheld(responses) and withheld(np.full_like(responses, np.nan))
    responses[:, 90:] = np.nan  # zeros with NaN padding: still a placeholder
    assert withheld(responses)
    responses[3, 10] = 0.2  # one neuron active once, four silent neurons: data
    assert not withheld(responses)
    assert not withheld(-np.ones((5, 100)))  # negative (ΔF/F-like) values are data


def test_withheld_trials_keep_their_inputs_and_lose_their_responses(release, small_mouse):
    recording, zero_oracle, nan_train = release
    original = Recording(small_mouse[0])
    placeholders = recording.trials_in("final_test_main") + recording.trials_in("live_test_main")
    for index in [zero_oracle, nan_train] + placeholders:
        trial = recording.trial(index)
        assert trial.responses is None and recording.scan(index) == 0
        np.testing.assert_array_equal(trial.video, original.trial(index).video)  # still predictable
    kept = recording.trials_in("oracle")[1]
    np.testing.assert_array_equal(recording.trial(kept).responses, original.trial(kept).responses)


def test_training_ignores_withheld_trials(release):
    recording, zero_oracle, nan_train = release
    validation = validation_trials(recording, count=100)
    assert zero_oracle not in [t.index for t in validation]
    assert len(validation) == len(recording.trials_in("oracle")) - 1
    assert nan_train not in index_trials(recording, "train", frames=24, progress=False).trials


def test_evaluate_skips_withheld_tiers_and_says_so_once(release, caplog):
    recording, _, _ = release
    model = build_model(PRESETS["tiny"].model_config(), [recording], {recording.name: index_trials(recording, "train", 24, progress=False)})
    with caplog.at_level(logging.WARNING, logger="twinserve.training.evaluate"):
        results = evaluate(model, [recording], progress=False)[recording.name]
    assert "final_test_main" not in results and "live_test_main" not in results
    assert results["oracle"]["trials"] == len(recording.trials_in("oracle")) - 1
    assert np.isfinite(results["oracle"]["single_trial_correlation"])
    assert np.isfinite(results["final_test_bonus"]["single_trial_correlation_official"])
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 4, said  # once per tier, not per trial
    assert sum("train: responses withheld in 1 of" in m for m in said) == 1  # the streamed tier too
    assert sum("final_test_main: responses withheld in all" in m for m in said) == 1
    assert sum("live_test_main: responses withheld in all" in m for m in said) == 1
    assert sum("oracle: responses withheld in 1 of" in m for m in said) == 1
