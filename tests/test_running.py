"""Metrics accumulated trial by trial equal the in-memory ones."""

import numpy as np

from twinserve.training import metrics
from twinserve.training.checkpoint import load_run
from twinserve.training.data import Recording
from twinserve.training.evaluate import evaluate_streamed, evaluate_tier
from twinserve.training.running import RunningCorrelation


def test_running_correlation_equals_the_stacked_one():
    rng = np.random.default_rng(0)
    responses, predictions = [], []
    for frames in (120, 90, 300):
        signal = rng.gamma(2.0, 3.0, (frames, 6)) + 50.0  # a large offset tests the shifted sums
        responses.append(signal + rng.normal(0, 2.0, signal.shape))
        predictions.append(0.5 * signal + rng.normal(0, 1.0, signal.shape))
    responses[1][70:] = np.nan                     # NaN padding
    predictions[2][100:110, 2] = np.nan            # a gap in one neuron's prediction
    for trial in predictions:
        trial[:, 4] = 7.0                          # a constant prediction: NaN in both
    running = RunningCorrelation()
    for r, p in zip(responses, predictions):
        running.add(r, p)
    expected = metrics.single_trial_correlation(responses, predictions)
    np.testing.assert_allclose(running.result(), expected, rtol=1e-9, atol=1e-12)
    assert np.isnan(running.result()[4]) and np.isfinite(running.result()).sum() == 5
    official = metrics.single_trial_correlation_official(responses, predictions)
    np.testing.assert_allclose(running.official(), official, rtol=1e-9, atol=1e-12)
    assert running.official()[4] == 0 and running.official()[2] == 0  # constant, and a NaN inside the trial


def test_the_streamed_train_tier_equals_the_loaded_one(tiny_run, default_mouse):
    out, _ = tiny_run
    model, _ = load_run(out)
    recording = Recording(default_mouse[0])
    indices = recording.trials_in("train")[:8]
    streamed, streamed_neurons, withheld = evaluate_streamed(model, recording, indices)
    assert withheld == 0
    loaded, loaded_neurons = evaluate_tier(model, recording, [recording.trial(i) for i in indices])
    for key in ("single_trial_correlation", "ceiling_single_trial_correlation", "fraction_of_ceiling", "trials"):
        np.testing.assert_allclose(streamed[key], loaded[key], rtol=1e-7, err_msg=key)
    for key in ("single_trial_correlation", "single_trial_correlation_official"):
        np.testing.assert_allclose(streamed_neurons[key], loaded_neurons[key], rtol=1e-7, atol=1e-9, err_msg=key)


def test_predict_pads_and_batches_trials_without_changing_their_predictions(tiny_run, default_mouse):
    import torch

    from twinserve.training.evaluate import BATCH_FRAMES, LENGTH_BUCKET, predict

    model, _ = load_run(tiny_run[0])
    recording = Recording(default_mouse[0])
    trials = [recording.trial(i) for i in recording.trials_in("oracle")[:6]]
    assert any(t.frames % LENGTH_BUCKET for t in trials)
    padded = [-(-t.frames // LENGTH_BUCKET) * LENGTH_BUCKET for t in trials]
    assert any(padded.count(n) > 1 and 2 * n <= BATCH_FRAMES for n in padded)  # some trials run as one batch
    for trial, predicted in zip(trials, predict(model, recording.name, trials)):
        with torch.no_grad():
            direct = model(recording.name, *[torch.from_numpy(a)[None] for a in
                                             (trial.video, trial.behavior, trial.pupil_center)])[0].numpy()
        assert predicted.shape == (trial.frames, recording.neurons)
        assert np.isnan(predicted[: model.offset]).all()
        np.testing.assert_allclose(predicted[model.offset:], direct, rtol=1e-5, atol=1e-6)
