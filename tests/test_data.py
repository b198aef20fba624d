"""The Sensorium-layout reader: arrays, tiers, NaN padding, statistics, repeats, clear errors."""

import shutil

import numpy as np
import pytest

from twinserve.training.data import LayoutError, Recording, common_frame_shape, open_recordings
from twinserve.training.train import train


def test_reader_matches_files(small_mouse):
    recording = Recording(small_mouse[0])
    assert recording.neurons == len(np.load(small_mouse[0] / "meta/neurons/unit_ids.npy"))
    tiers = np.load(small_mouse[0] / "meta/trials/tiers.npy")
    assert recording.trials_in("oracle") == [i for i, t in enumerate(tiers) if t == "oracle"]
    assert set(recording.trials_in("live_test")) == {i for i, t in enumerate(tiers) if t.startswith("live_test")}
    for index in range(len(tiers)):
        trial = recording.trial(index)
        video = np.load(small_mouse[0] / f"data/videos/{index}.npy")
        responses = np.load(small_mouse[0] / f"data/responses/{index}.npy")
        valid = int((~np.isnan(video).any((0, 1))).sum())
        assert trial.frames == valid
        np.testing.assert_array_equal(trial.video, np.moveaxis(video, -1, 0)[:valid])
        np.testing.assert_array_equal(trial.responses, responses.T[:valid])
        assert not np.isnan(trial.video).any() and not np.isnan(trial.behavior).any()
    assert any(recording.trial(i).frames < 300 for i in range(len(tiers))), "the fixture should hold padded trials"


def test_statistics_in_both_layouts(small_mouse, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_mouse[0], copy)
    repeated = Recording(small_mouse[0]).statistics
    for key in ("responses", "behavior", "pupil_center"):
        for stat in ("mean", "std"):
            path = copy / f"meta/statistics/{key}/all/{stat}.npy"
            np.save(path, np.load(path)[..., 0])  # per channel instead of repeated along time
    per_channel = Recording(copy).statistics
    for key in repeated:
        for stat in ("mean", "std"):
            np.testing.assert_allclose(per_channel[key][stat], repeated[key][stat])
    assert repeated["responses"]["std"].shape == (Recording(copy).neurons,)
    assert np.ndim(repeated["videos"]["mean"]) == 0


def test_repeats_found_by_comparing_videos(small_mouse):
    recording = Recording(small_mouse[0])
    trials = recording.load("oracle")
    groups = recording.repeat_groups(trials)
    assert sorted(len(g) for g in groups) == [4, 4]
    for group in groups:
        first = trials[group[0]]
        for position in group[1:]:
            length = min(first.frames, trials[position].frames)
            np.testing.assert_array_equal(trials[position].video[:length], first.video[:length])


@pytest.mark.parametrize("breakage, message", [
    (lambda r: (r / "meta/trials/tiers.npy").unlink(), "tiers.npy: file missing"),
    (lambda r: shutil.rmtree(r / "data/behavior"), "data/behavior: folder missing"),
    (lambda r: (r / "data/videos/3.npy").unlink(), "data/videos: .* trial files, expected"),
    (lambda r: np.save(r / "meta/neurons/cell_motor_coordinates.npy", np.zeros((5, 3))), "5 rows"),
    (lambda r: (r / "meta/trials/tiers.npy").write_bytes(b"garbage"), "not a readable .npy"),
])
def test_broken_folders_name_the_file(small_mouse, tmp_path, breakage, message):
    copy = tmp_path / "broken"
    shutil.copytree(small_mouse[0], copy, ignore=shutil.ignore_patterns("truth"))
    breakage(copy)
    with pytest.raises(LayoutError, match=message):
        Recording(copy)


@pytest.mark.parametrize("key, array, message", [
    ("responses", np.zeros((7, 300), np.float32), r"responses/0.npy: expected shape \(\d+, 300\)"),
    ("behavior", np.zeros((3, 300), np.float32), r"behavior/0.npy: expected shape \(2, 300\)"),
    ("videos", np.zeros((36, 64), np.float32), r"videos/0.npy: expected 3 dimensions"),
])
def test_broken_trial_names_the_file(small_mouse, tmp_path, key, array, message):
    copy = tmp_path / "broken"
    shutil.copytree(small_mouse[0], copy, ignore=shutil.ignore_patterns("truth"))
    np.save(copy / f"data/{key}/0.npy", array)
    with pytest.raises(LayoutError, match=message):
        Recording(copy).trial(0)


def test_broken_statistics_and_missing_recording(small_mouse, tmp_path):
    copy = tmp_path / "broken"
    shutil.copytree(small_mouse[0], copy, ignore=shutil.ignore_patterns("truth"))
    np.save(copy / "meta/statistics/responses/all/std.npy", np.zeros(3))
    with pytest.raises(LayoutError, match=r"responses/all/std.npy: expected \(\d+,\)"):
        Recording(copy).statistics
    with pytest.raises(LayoutError, match="recording folder missing"):
        Recording(tmp_path / "nowhere")
    with pytest.raises(LayoutError, match="unique"):
        open_recordings([small_mouse[0], small_mouse[0]])


def test_the_frame_shape_comes_from_the_data_and_must_agree(small_mouse, tmp_path):
    recording = Recording(small_mouse[0])
    assert recording.frame_shape == recording.trial(0).video.shape[1:] == (36, 64)
    copy = tmp_path / "cropped"
    shutil.copytree(small_mouse[0], copy, ignore=shutil.ignore_patterns("truth"))
    for path in (copy / "data/videos").glob("*.npy"):
        np.save(path, np.load(path)[:24, :40])
    cropped = Recording(copy)
    assert cropped.frame_shape == (24, 40) and cropped.trial(0).video.shape[1:] == (24, 40)
    assert common_frame_shape([cropped]) == (24, 40)
    with pytest.raises(LayoutError, match="different shapes"):
        common_frame_shape([recording, cropped])
    with pytest.raises(LayoutError, match="different shapes"):
        train([small_mouse[0], copy], tmp_path / "run", preset="tiny", progress=False)
    np.save(copy / "data/videos/1.npy", np.zeros((36, 64, 300), np.float32))
    with pytest.raises(LayoutError, match=r"videos/1.npy: frames of \(36, 64\) pixels, expected \(24, 40\)"):
        cropped.trial(1)
