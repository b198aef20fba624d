"""Stimulus generators: shapes, ranges, seeds, and motion in the stated direction."""

import numpy as np
import pytest

from twinserve.clients.library import Library, StimulusError, read_video, save_library
from twinserve.clients.stimuli import (directional_pink_noise, drifting_gabor, drifting_grating, flashing_dots,
                                       grating_set, random_dot_kinematogram)
from twinserve.contract import DEFAULT_FRAME_SHAPE, GREY


def test_every_generator_gives_display_frames_and_is_seeded():
    movies = [drifting_grating(30), drifting_gabor(30), directional_pink_noise(30, seed=3), flashing_dots()[0],
              random_dot_kinematogram(0.5, "rotation", seed=3)]
    for movie in movies:
        assert movie.dtype == np.float32 and movie.shape[1:] == DEFAULT_FRAME_SHAPE
        assert movie.min() >= 0 and movie.max() <= 255 and movie.std() > 5
    np.testing.assert_array_equal(directional_pink_noise(30, seed=3), movies[2])
    assert not np.array_equal(directional_pink_noise(30, seed=4), movies[2])
    np.testing.assert_array_equal(random_dot_kinematogram(0.5, "rotation", seed=3), movies[4])


@pytest.mark.parametrize("direction, step", [(0, (0, 1)), (90, (-1, 0)), (180, (0, -1)), (270, (1, 0))])
def test_motion_goes_the_stated_way(direction, step):
    # 30 px/s = 1 px per frame; 0° rightward, 90° upward (toward row 0).
    rows, cols = step
    noise = directional_pink_noise(direction, frames=4, speed_px_per_s=30.0)
    np.testing.assert_allclose(noise[3], np.roll(noise[0], (3 * rows, 3 * cols), axis=(0, 1)), atol=1e-3)
    grating = drifting_grating(direction, period_px=16, tf_hz=30 / 16, frames=2)
    inner = (slice(1, -1), slice(1, -1))
    np.testing.assert_allclose(grating[1][inner], np.roll(grating[0], (rows, cols), axis=(0, 1))[inner], atol=1e-3)
    if direction == 0:
        dots = random_dot_kinematogram(1.0, "translation", direction, speed_px_per_s=30.0, frames=2)
        np.testing.assert_array_equal(dots[1][:, 4:60], dots[0][:, 3:59])


def test_pink_noise_bars_lie_across_the_motion():
    movie = directional_pink_noise(0, frames=1, seed=1)[0] - GREY  # rightward: vertical bars
    assert np.abs(np.diff(movie, axis=1)).mean() > 2 * np.abs(np.diff(movie, axis=0)).mean()


def test_flashing_dots_are_where_the_parameters_say():
    movie, dots = flashing_dots(grid=(3, 4), dot_frames=5)
    assert len(dots) == 3 * 4 * 2 and movie.shape[0] == 24 * 5
    for dot in dots:
        frame = movie[dot["start"]] - GREY
        row, col = np.unravel_index(np.argmax(dot["polarity"] * frame), frame.shape)
        assert abs(row - dot["y"]) <= 0.5 and abs(col - dot["x"]) <= 0.5


def test_a_generated_set_saves_as_a_library(tmp_path):
    stimuli, parameters = grating_set(count=4, frames=20, lead_in=5)
    library = Library(save_library(tmp_path / "gratings", stimuli, parameters))
    assert library.names == sorted(stimuli)
    loaded = library.load(library.names[1])
    assert loaded.video.shape == (25, *DEFAULT_FRAME_SHAPE) and library.frames(library.names[1]) == 25
    np.testing.assert_allclose(loaded.video, stimuli[library.names[1]], atol=0.5)


def test_a_library_reads_frames_of_its_own_shape(tmp_path):
    import imageio.v3 as iio

    shape = (20, 30)
    (tmp_path / "lib").mkdir()
    np.save(tmp_path / "lib" / "small.npy", np.zeros((7, *shape), np.uint8))
    np.save(tmp_path / "lib" / "time_last.npy", np.zeros((*shape, 6), np.uint8))  # SENSORIUM's (H, W, T)
    np.save(tmp_path / "lib" / "default.npy", np.zeros((5, *DEFAULT_FRAME_SHAPE), np.uint8))
    iio.imwrite(tmp_path / "lib" / "clip.mp4", np.zeros((4, 64, 96, 3), np.uint8), fps=30, codec="libx264")
    library = Library(tmp_path / "lib", frame_shape=shape)
    assert library.load("small").video.shape == (7, *shape) and library.frames("time_last") == 6
    assert library.load("time_last").video.shape == (6, *shape) and library.load("clip").video.shape == (4, *shape)
    with pytest.raises(StimulusError, match=r"default: expected frames \(T, 20, 30\)"):
        library.load("default")
    assert read_video(tmp_path / "lib" / "default.npy").shape == (5, *DEFAULT_FRAME_SHAPE)
    with pytest.raises(StimulusError, match="expected frames"):
        read_video(tmp_path / "lib" / "default.npy", frame_shape=shape)


def test_libraries_of_video_files_and_hdf5(tmp_path):
    import h5py
    import imageio.v3 as iio

    movie = drifting_grating(0, frames=20).astype(np.uint8)
    (tmp_path / "videos").mkdir()
    iio.imwrite(tmp_path / "videos" / "grating.mp4", np.repeat(movie[..., None], 3, -1), fps=30, codec="libx264",
                macro_block_size=4)
    (tmp_path / "videos" / "broken.mp4").write_bytes(b"\x00" * 100)
    library = Library(tmp_path / "videos")
    assert library.names == ["broken", "grating"]
    video = library.load("grating").video
    assert video.shape == (20, *DEFAULT_FRAME_SHAPE) and np.abs(video.astype(float) - movie).mean() < 10  # lossy
    with pytest.raises(StimulusError, match="broken: unreadable"):
        library.load("broken")
    with h5py.File(tmp_path / "set.h5", "w") as file:
        file["plain"] = movie
        group = file.create_group("with_behavior")
        group["video"], group["behavior"] = movie, np.ones((20, 2))
        file["wrong"] = movie[:, :10]
    library = Library(tmp_path / "set.h5")
    assert library.names == ["plain", "with_behavior", "wrong"] and library.frames("plain") == 20
    assert library.load("with_behavior").behavior.shape == (20, 2) and library.load("plain").behavior is None
    with pytest.raises(StimulusError, match="wrong: expected frames"):
        library.load("wrong")


def test_stimuli_command_writes_every_standard_set(tmp_path):
    from twinserve.cli import main as twin

    for kind in ("gratings", "gabors", "monet", "dots", "kinematograms"):
        assert twin(["stimuli", kind, "--out", str(tmp_path / kind)]) == 0
        library = Library(tmp_path / kind)
        assert library.load(library.names[0]).video.shape[1:] == DEFAULT_FRAME_SHAPE
        assert (tmp_path / kind / "parameters.json").is_file()
