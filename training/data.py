"""Reader for the SENSORIUM 2023 on-disk layout, one folder per recording.

Layout (time on the last axis on disk)::

    <recording>/data/videos/<i>.npy         (H, W, T)  raw pixel values, the same H×W in every trial
    <recording>/data/responses/<i>.npy      (N, T)
    <recording>/data/behavior/<i>.npy       (2, T)     pupil size, running speed
    <recording>/data/pupil_center/<i>.npy   (2, T)     x, y
    <recording>/meta/trials/tiers.npy       (n,)       train, oracle, live_test_*, final_test_*, none
    <recording>/meta/neurons/unit_ids.npy   (N,)
    <recording>/meta/neurons/cell_motor_coordinates.npy  (N, 3)
    <recording>/meta/statistics/<key>/all/{mean,std,min,max,median}.npy

In memory everything is time first: a `Trial` holds video (T, H, W), behavior (T, 2),
pupil_center (T, 2) and responses (T, N), cut at the first NaN of the NaN padding.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from twinserve.contract import BEHAVIOR_CHANNELS, PUPIL_CHANNELS

ARRAYS = ("videos", "responses", "behavior", "pupil_center")
STATISTICS = ("mean", "std", "min", "max", "median")


class LayoutError(ValueError):
    """A recording folder does not follow the layout; the message names the file."""


@dataclass
class Trial:
    """One trial, time first and cut to its valid frames.

    video (T, H, W), behavior (T, 2), pupil_center (T, 2): raw values as on disk;
    responses (T, N) or None where the recording withholds them (test tiers of real data; `withheld`).
    """

    index: int
    tier: str
    video: np.ndarray
    behavior: np.ndarray
    pupil_center: np.ndarray
    responses: np.ndarray | None

    @property
    def frames(self) -> int:
        return len(self.video)


def _load(path: Path, ndim: int | None = None, mmap_mode: str | None = None) -> np.ndarray:
    if not path.is_file():
        raise LayoutError(f"{path}: file missing")
    try:
        array = np.load(path, mmap_mode=mmap_mode, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise LayoutError(f"{path}: not a readable .npy array ({error})") from None
    if ndim is not None and array.ndim != ndim:
        raise LayoutError(f"{path}: expected {ndim} dimensions, found shape {array.shape}")
    return array


def withheld(responses: np.ndarray | None) -> bool:
    """Whether a trial's responses (N, T) or (T, N) are withheld, as a public release does for its test
    tiers: the file is missing, or a placeholder in which no value is a finite non-zero (all zero, all
    NaN). The rule is on the whole trial, never per neuron: a silent neuron is data."""
    return responses is None or not np.nan_to_num(responses, nan=0.0, posinf=0.0, neginf=0.0).any()


def _valid_length(inputs: list[np.ndarray], responses: np.ndarray | None) -> int:
    """Frames before the padding: the first frame with a NaN input or with every response NaN."""
    bad = np.zeros(len(inputs[0]), dtype=bool)
    for array in inputs:
        bad |= np.isnan(array.reshape(len(array), -1)).any(1)
    if responses is not None:
        bad |= np.isnan(responses).all(1)
    return int(np.argmax(bad)) if bad.any() else len(bad)


class Recording:
    """One recording folder in the SENSORIUM 2023 layout.

    Metadata is read and checked at construction; trials are read on demand by `load`.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_dir():
            raise LayoutError(f"{self.path}: recording folder missing")
        self.name = self.path.name
        self.tiers = _load(self.path / "meta/trials/tiers.npy", ndim=1).astype(str)
        self.unit_ids = _load(self.path / "meta/neurons/unit_ids.npy", ndim=1)
        coordinates = self.path / "meta/neurons/cell_motor_coordinates.npy"
        self.coordinates = _load(coordinates, ndim=2).astype(np.float32)
        if len(self.coordinates) != len(self.unit_ids):
            raise LayoutError(f"{coordinates}: {len(self.coordinates)} rows, expected one per unit id "
                              f"({len(self.unit_ids)})")
        for key in ARRAYS:
            folder = self.path / "data" / key
            if not folder.is_dir():
                raise LayoutError(f"{folder}: folder missing")
            count = len(list(folder.glob("*.npy")))
            if key != "responses" and count != len(self.tiers):
                raise LayoutError(f"{folder}: {count} trial files, expected {len(self.tiers)} "
                                  f"(one per entry of meta/trials/tiers.npy)")

    @property
    def neurons(self) -> int:
        return len(self.unit_ids)

    @cached_property
    def frame_shape(self) -> tuple[int, int]:
        """(H, W) of the recording's frames, from the header of its first video file (memory-mapped)."""
        folder = self.path / "data" / "videos"
        path = min(folder.glob("*.npy"), default=None)
        if path is None:
            raise LayoutError(f"{folder}: no video files")
        try:
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        except (ValueError, OSError) as error:
            raise LayoutError(f"{path}: not a readable .npy array ({error})") from None
        if len(shape) != 3:
            raise LayoutError(f"{path}: expected 3 dimensions, found shape {shape}")
        return shape[0], shape[1]

    def trials_in(self, tier: str) -> list[int]:
        """Trial indices of a tier; ``live_test`` or ``final_test`` prefixes match all their tiers."""
        return [i for i, t in enumerate(self.tiers) if t == tier or t.startswith(tier + "_")]

    def _arrays(self, index: int, mmap_mode: str | None = None) -> tuple[np.ndarray, ...]:
        """Trial `index` as on disk, shapes checked: video (H, W, T), behavior (2, T), pupil (2, T),
        responses (N, T) or None where the file is missing; memory maps with mmap_mode "r"."""
        files = {key: self.path / "data" / key / f"{index}.npy" for key in ARRAYS}
        video = _load(files["videos"], ndim=3, mmap_mode=mmap_mode)
        behavior = _load(files["behavior"], ndim=2, mmap_mode=mmap_mode)
        pupil = _load(files["pupil_center"], ndim=2, mmap_mode=mmap_mode)
        responses = _load(files["responses"], ndim=2, mmap_mode=mmap_mode) if files["responses"].is_file() else None
        frames = video.shape[-1]
        if video.shape[:2] != self.frame_shape:
            raise LayoutError(f"{files['videos']}: frames of {video.shape[:2]} pixels, expected "
                              f"{self.frame_shape} as in the recording's other videos")
        expected = {"behavior": (behavior, BEHAVIOR_CHANNELS), "pupil_center": (pupil, PUPIL_CHANNELS),
                    "responses": (responses, self.neurons)}
        for key, (array, rows) in expected.items():
            if array is not None and array.shape != (rows, frames):
                raise LayoutError(f"{files[key]}: expected shape ({rows}, {frames}) to match "
                                  f"{files['videos'].name} of data/videos, found {array.shape}")
        return video, behavior, pupil, responses

    def trial(self, index: int) -> Trial:
        """Read trial `index`, check shapes, move time first and cut the NaN padding; responses None where
        `withheld` (the inputs are kept: a withheld trial can still be predicted)."""
        video, behavior, pupil, responses = self._arrays(index)
        inputs = [np.moveaxis(video, -1, 0), behavior.T, pupil.T]
        responses = None if withheld(responses) else responses.T
        length = _valid_length(inputs, responses)

        def cut(array):
            return np.ascontiguousarray(array[:length], dtype=np.float32)

        return Trial(index, str(self.tiers[index]), *map(cut, inputs),
                     cut(responses) if responses is not None else None)

    def load(self, tier: str) -> list[Trial]:
        """All trials of a tier (see `trials_in`), in index order."""
        return [self.trial(i) for i in self.trials_in(tier)]

    def scan(self, index: int) -> int:
        """Valid frames of trial `index` (as `trial` would cut it), or 0 where its responses are
        withheld (file missing, all zero or all NaN); reads through memory maps, one array at a time."""
        video, behavior, pupil, responses = self._arrays(index, mmap_mode="r")
        if withheld(responses):
            return 0
        return _valid_length([np.moveaxis(video, -1, 0), behavior.T, pupil.T], responses.T)

    def window(self, index: int, start: int, frames: int) -> tuple[np.ndarray, ...]:
        """Frames [start, start + frames) of trial `index`, copied out of memory maps (nothing stays
        resident), time first, float32: video (frames, H, W), behavior (frames, 2), pupil_center
        (frames, 2), responses (frames, N). The caller keeps the window inside `scan`'s valid frames."""
        video, behavior, pupil, responses = self._arrays(index, mmap_mode="r")
        window = slice(start, start + frames)
        arrays = (np.moveaxis(video[..., window], -1, 0), behavior[:, window].T, pupil[:, window].T,
                  responses[:, window].T)
        return tuple(np.ascontiguousarray(a, dtype=np.float32) for a in arrays)

    @cached_property
    def statistics(self) -> dict[str, dict[str, np.ndarray]]:
        """Per key and statistic: videos → scalar, responses → (N,), behavior and pupil_center → (2,).

        Accepts both the real release's arrays repeated along time and per-channel arrays.
        """
        per_channel_ndim = {"videos": None, "responses": 1, "behavior": 1, "pupil_center": 1}
        rows = {"responses": self.neurons, "behavior": BEHAVIOR_CHANNELS, "pupil_center": PUPIL_CHANNELS}
        result = {}
        for key, ndim in per_channel_ndim.items():
            result[key] = {}
            for stat in STATISTICS:
                path = self.path / "meta/statistics" / key / "all" / f"{stat}.npy"
                value = _load(path).astype(np.float64)
                if key == "videos":
                    value = np.float64(np.nanmean(value))
                else:
                    if value.ndim == ndim + 1:
                        value = value[..., 0]  # repeated along time: take one frame
                    if value.shape != (rows[key],):
                        raise LayoutError(f"{path}: expected ({rows[key]},) or ({rows[key]}, T), "
                                          f"found {value.shape}")
                if not np.all(np.isfinite(value)):
                    raise LayoutError(f"{path}: contains NaN or Inf")
                result[key][stat] = value
        return result

    def repeat_groups(self, trials: list[Trial]) -> list[list[int]]:
        """Group positions in `trials` whose videos are identical (repeats of one clip), first-seen order.

        No file names the repeats, so they are found by hashing each video's valid frames.
        """
        groups: dict[str, list[int]] = {}
        for position, trial in enumerate(trials):
            key = hashlib.sha1(np.round(trial.video[:150]).astype(np.int16).tobytes()).hexdigest()
            groups.setdefault(key, []).append(position)
        return list(groups.values())


def open_recordings(paths) -> list[Recording]:
    """Recordings for the given folders, in the given order; names must be unique."""
    recordings = [Recording(p) for p in paths]
    names = [r.name for r in recordings]
    if len(set(names)) != len(names):
        raise LayoutError(f"recording names must be unique, got {names}")
    if not recordings:
        raise LayoutError("no recording folders given")
    return recordings


def common_frame_shape(recordings: list[Recording]) -> tuple[int, int]:
    """The (H, W) all recordings share (one twin takes one frame shape); a clear error otherwise."""
    shapes = {r.name: r.frame_shape for r in recordings}
    if len(set(shapes.values())) != 1:
        raise LayoutError(f"the recordings have frames of different shapes {shapes}; "
                          f"train one twin per frame shape")
    return next(iter(shapes.values()))
