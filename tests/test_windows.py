"""Out-of-core training data: trials indexed through memory maps, windows read when sampled."""

import numpy as np
import pytest

from twinserve.training.data import Recording
from twinserve.training.windows import TrialIndex, WindowStream, batches, index_trials


def test_scan_and_window_read_what_trial_reads(small_mouse):
    recording = Recording(small_mouse[0])
    for index in recording.trials_in("train")[:3] + recording.trials_in("oracle")[:2]:
        trial = recording.trial(index)
        assert recording.scan(index) == trial.frames
        start = trial.frames - 30
        window = recording.window(index, start, 30)
        expected = (trial.video, trial.behavior, trial.pupil_center, trial.responses)
        for got, want in zip(window, expected):
            np.testing.assert_array_equal(got, want[start:])
            assert got.dtype == np.float32 and got.flags.c_contiguous


def test_withheld_responses_are_not_indexed(small_mouse, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(small_mouse[0], copy)
    recording = Recording(copy)
    missing, zeros, kept = recording.trials_in("train")[:3]
    (copy / f"data/responses/{missing}.npy").unlink()
    np.save(copy / f"data/responses/{zeros}.npy", np.zeros((recording.neurons, recording.trial(kept).frames), np.float32))
    assert recording.scan(missing) == 0 and recording.scan(zeros) == 0
    index = index_trials(recording, "train", frames=24, progress=False)
    assert missing not in index.trials and zeros not in index.trials and kept in index.trials


def test_disk_and_memory_streams_draw_the_same_windows(small_mouse):
    recordings = [Recording(path) for path in small_mouse]
    indexes = {r.name: index_trials(r, "train", frames=24, progress=False) for r in recordings}
    memory = {r.name: {t.index: t for t in r.load("train")} for r in recordings}
    disk = next(iter(WindowStream(indexes, clips=3, frames=24, seed=[5, 0, 0])))
    loaded = next(iter(WindowStream(indexes, clips=3, frames=24, seed=[5, 0, 0], memory=memory)))
    for r in recordings:
        video, behavior, pupil, responses = disk[r.name]
        assert video.shape == (3, 24, 36, 64) and responses.shape == (3, 24, r.neurons)
        for a, b in zip(disk[r.name], loaded[r.name]):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_background_workers_and_seeds_draw_different_windows(small_mouse):
    recording = Recording(small_mouse[0])
    indexes = {recording.name: index_trials(recording, "train", frames=24, progress=False)}
    stream = WindowStream(indexes, clips=2, frames=24, seed=[0, 0, 0])
    first, second = (next(batches(stream, workers=w))[recording.name][0] for w in (0, 1))
    np.testing.assert_array_equal(first.numpy(), second.numpy())  # worker 0 has the main process's seed
    two = batches(stream, workers=2)
    a, b = next(two)[recording.name][0], next(two)[recording.name][0]  # one batch from each worker
    assert not np.array_equal(a.numpy(), b.numpy())
    other = next(iter(WindowStream(indexes, clips=2, frames=24, seed=[0, 0, 1])))[recording.name][0]
    assert not np.array_equal(first.numpy(), other.numpy())


def test_a_recording_without_long_enough_trials_is_refused(small_mouse):
    recording = Recording(small_mouse[0])
    with pytest.raises(ValueError, match="no train trial has 100000 valid frames"):
        index_trials(recording, "train", frames=100_000, progress=False)
    assert isinstance(index_trials(recording, "train", frames=24, progress=False), TrialIndex)
