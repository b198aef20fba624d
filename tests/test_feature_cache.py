"""A frozen core's features computed once (`feature_cache`): the heads see what running the core gives."""

import numpy as np
import pytest
import torch

from twinserve.training.data import Recording
from twinserve.training.feature_cache import CachedStepLoss, FeatureCache
from twinserve.training.model import SHIFT_INPUT
from twinserve.training.presets import PRESETS
from twinserve.training.train import StepLoss, _window_indexes, build_model, validation_score, validation_trials

TOLERANCE = 1e-5  # float32: the same core on the same frames, cut before or after it runs


@pytest.fixture(scope="module")
def frozen(small_mouse):
    """An untrained `tiny` twin (random core, frozen) of one recording, its cache and its inputs."""
    torch.manual_seed(0)
    recording = Recording(small_mouse[0])
    settings = PRESETS["tiny"].train
    indexes, _ = _window_indexes([recording], settings.frames, "disk", progress=False)
    model = build_model({**PRESETS["tiny"].model_config(), SHIFT_INPUT: False}, [recording], indexes)
    model.freeze_core()
    validation = {recording.name: validation_trials(recording, 4)}
    cache = FeatureCache.build(model, indexes, validation, progress=False)
    return model, recording, settings, cache, validation


def _raw_window(trial, start, frames):
    """One window of a trial's raw arrays → video (1, T, H, W), behavior, pupil_center (1, T, 2), responses (1, T, N)."""
    window = slice(start, start + frames)
    return [torch.from_numpy(np.ascontiguousarray(a[window], dtype=np.float32))[None]
            for a in (trial.video, trial.behavior, trial.pupil_center, trial.responses)]


def test_cached_windows_are_the_windows_the_core_would_see(frozen):
    """Each drawn window's features, behaviour and responses equal those of the same raw window run
    through the core alone; so do the step's loss and the validation score."""
    model, recording, settings, cache, validation = frozen
    batch = next(cache.windows(settings.clips, settings.frames, [0]))
    features, behavior, pupil, responses = batch[recording.name]
    assert features.shape[:3] == (settings.clips, model.core.out_channels, settings.frames - model.offset)
    trials = [recording.trial(i) for i in cache_trial_indexes(recording, cache)]
    raw_windows = []
    for clip in range(settings.clips):
        # Find the drawn window by its responses (the recorded traces are unique), then run it raw.
        found = [(trial, s) for trial in trials for s in range(trial.frames - settings.frames + 1)
                 if torch.equal(torch.from_numpy(trial.responses[s + model.offset:s + settings.frames]), responses[clip])]
        assert len(found) == 1
        video, raw_behavior, raw_pupil, raw_responses = _raw_window(*found[0], settings.frames)
        with torch.no_grad():
            core_input, normalised_behavior, normalised_pupil = model.core_input(recording.name, video, raw_behavior, raw_pupil)
            torch.testing.assert_close(model.core(core_input)[0], features[clip], atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(normalised_behavior[0, model.offset:], behavior[clip], atol=TOLERANCE, rtol=0)
        torch.testing.assert_close(normalised_pupil[0, model.offset:], pupil[clip], atol=TOLERANCE, rtol=0)
        raw_windows.append((video, raw_behavior, raw_pupil, raw_responses))
    raw_batch = {recording.name: [torch.cat(arrays) for arrays in zip(*raw_windows)]}
    config = PRESETS["tiny"].train
    model.eval()  # no readout jitter: both losses see the same positions
    with torch.no_grad():
        cached_loss = CachedStepLoss(model, config.readout_l1)(batch)
        raw_loss = StepLoss(model, config, torch.device("cpu"))(raw_batch)
    model.train()
    assert abs(cached_loss.item() - raw_loss.item()) < TOLERANCE
    assert abs(cache.validation_score() - validation_score(model, validation)) < TOLERANCE


def cache_trial_indexes(recording, cache):
    """The training trials the cache holds (every indexed one, in order)."""
    indexes, _ = _window_indexes([recording], PRESETS["tiny"].train.frames, "disk", progress=False)
    assert len(cache.train[recording.name]) == len(indexes[recording.name].trials)
    return [int(i) for i in indexes[recording.name].trials]


def test_the_cache_keeps_to_its_budget_to_frozen_cores_and_to_still_inputs(frozen, small_mouse):
    model, recording, settings, _, validation = frozen
    indexes, _ = _window_indexes([recording], settings.frames, "disk", progress=False)
    assert FeatureCache.build(model, indexes, validation, cache_gb=1e-6, progress=False) is None
    trainable = build_model(PRESETS["tiny"].model_config(), [recording], indexes)
    with pytest.raises(ValueError, match="frozen core"):
        FeatureCache.build(trainable, indexes, validation, progress=False)
    moving_input = build_model(PRESETS["tiny"].model_config(), [recording], indexes)  # shift_input: today's default
    moving_input.freeze_core()
    with pytest.raises(ValueError, match="shift their readouts"):
        FeatureCache.build(moving_input, indexes, validation, progress=False)
