"""Stimulus libraries: what `twin score` reads and the stimulus generators write.

A library is one of
- a folder of `.npy` videos `(T, H, W)` raw pixel values, or `.npz` files holding `video (T, H, W)`
  and optionally `behavior (T, 2)` and `pupil_center (T, 2)` (raw values);
- a folder of video files (`VIDEO_SUFFIXES`), read with imageio, converted to grey and resized;
- an HDF5 file: one dataset `(T, H, W)` per stimulus, or one group per stimulus holding `video`
  and optionally `behavior` and `pupil_center`.
Stimuli are named by file stem or HDF5 key and listed in sorted order. Every video is checked
against the library's `frame_shape` (H, W) (default `contract.DEFAULT_FRAME_SHAPE`; `twin score`
uses the served model's). Missing behaviour is filled in by the scorer (default: the recording's
mean, from the served model's config).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from twinserve.contract import BEHAVIOR_CHANNELS, DEFAULT_FRAME_SHAPE, PIXEL_RANGE, PUPIL_CHANNELS

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".gif", ".m4v")
ARRAY_SUFFIXES = (".npy", ".npz")


class StimulusError(ValueError):
    """A stimulus that cannot be read or has the wrong shape; the message names it."""


@dataclass
class Stimulus:
    name: str
    video: np.ndarray  # (T, H, W) raw pixels
    behavior: np.ndarray | None = None  # (T, 2)
    pupil_center: np.ndarray | None = None  # (T, 2)


def _time_last(shape: tuple, frame_shape: tuple[int, int]) -> bool:
    """Whether a 3-D shape is SENSORIUM's (H, W, T) rather than (T, H, W)."""
    return len(shape) == 3 and shape[:2] == tuple(frame_shape) and shape[2] != frame_shape[1]


def _wrong_shape(name: str, shape: tuple, frame_shape: tuple[int, int]) -> StimulusError:
    return StimulusError(f"{name}: expected frames (T, {frame_shape[0]}, {frame_shape[1]}), got {shape}")


def _checked_video(name: str, video: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """A video (T, H, W) (or (H, W, T), moved) of finite pixels at `frame_shape`, else `StimulusError`."""
    if _time_last(video.shape, frame_shape):
        video = np.moveaxis(video, -1, 0)
    if video.ndim != 3 or video.shape[1:] != tuple(frame_shape):
        raise _wrong_shape(name, video.shape, frame_shape)
    if not np.isfinite(video).all():
        raise StimulusError(f"{name}: video contains NaN or Inf")
    return video


def read_video_file(path: Path, frame_shape: tuple[int, int] = DEFAULT_FRAME_SHAPE) -> np.ndarray:
    """A video file → grey frames (T, H, W) uint8 resized to `frame_shape` (H, W)."""
    import imageio.v3 as iio
    from PIL import Image

    height, width = frame_shape
    frames = [np.asarray(Image.fromarray(np.asarray(f)).convert("L").resize((width, height), Image.BILINEAR))
              for f in iio.imiter(path)]
    if not frames:
        raise StimulusError(f"{path}: no frames")
    return np.stack(frames)


def read_video(path: str | Path, frame_shape: tuple[int, int] = DEFAULT_FRAME_SHAPE) -> np.ndarray:
    """One video: `.npy` frames (T, H, W) (or SENSORIUM's (H, W, T)) or a video file → (T, H, W)
    at `frame_shape` (H, W)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video")
    if path.suffix == ".npy":
        return _checked_video(path.name, np.load(path, allow_pickle=False), frame_shape)
    return read_video_file(path, frame_shape)


class Library:
    """The stimuli of one library: `names`, `load(name)`, `frames(name)`; videos at `frame_shape` (H, W)."""

    def __init__(self, path: str | Path, frame_shape: tuple[int, int] = DEFAULT_FRAME_SHAPE):
        self.path, self.frame_shape = Path(path), tuple(frame_shape)
        if self.path.is_dir():
            self._files = {p.stem: p for p in sorted(self.path.iterdir())
                           if p.suffix.lower() in ARRAY_SUFFIXES + VIDEO_SUFFIXES}
            self.names = sorted(self._files)
        elif self.path.suffix.lower() in (".h5", ".hdf5") and self.path.is_file():
            import h5py

            with h5py.File(self.path, "r") as file:
                self.names = sorted(file.keys())
        else:
            raise FileNotFoundError(f"{self.path}: not a library (a folder of .npy/.npz/video files, or an .h5 file)")
        if not self.names:
            raise StimulusError(f"{self.path}: no stimuli")

    def load(self, name: str) -> Stimulus:
        try:
            stimulus = self._read(name)
        except StimulusError:
            raise
        except Exception as error:  # noqa: BLE001 — any reader failure is this stimulus's problem
            raise StimulusError(f"{name}: unreadable ({type(error).__name__}: {error})") from None
        stimulus.video = _checked_video(name, stimulus.video, self.frame_shape)
        for key, channels in (("behavior", BEHAVIOR_CHANNELS), ("pupil_center", PUPIL_CHANNELS)):
            value = getattr(stimulus, key)
            expected = (len(stimulus.video), channels)
            if value is not None and (value.shape != expected or not np.isfinite(value).all()):
                raise StimulusError(f"{name}: {key} must be finite {expected}, got {value.shape}")
        return stimulus

    def frames(self, name: str) -> int:
        """Number of frames of a stimulus, without decoding it where the format allows."""
        try:
            if self.path.is_dir() and self._files[name].suffix == ".npy":
                shape = np.load(self._files[name], mmap_mode="r", allow_pickle=False).shape
            elif not self.path.is_dir():
                import h5py

                with h5py.File(self.path, "r") as file:
                    item = file[name]
                    shape = (item if isinstance(item, h5py.Dataset) else item["video"]).shape
            else:
                return len(self.load(name).video)
        except StimulusError:
            raise
        except Exception as error:  # noqa: BLE001
            raise StimulusError(f"{name}: unreadable ({type(error).__name__}: {error})") from None
        if len(shape) != 3:
            raise _wrong_shape(name, shape, self.frame_shape)
        return shape[2] if _time_last(shape, self.frame_shape) else shape[0]

    def _read(self, name: str) -> Stimulus:
        if self.path.is_dir():
            path = self._files[name]
            if path.suffix == ".npy":
                return Stimulus(name, np.load(path, allow_pickle=False))
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as data:
                    return Stimulus(name, data["video"], *(data[k] if k in data else None
                                                           for k in ("behavior", "pupil_center")))
            return Stimulus(name, read_video_file(path, self.frame_shape))
        import h5py

        with h5py.File(self.path, "r") as file:
            item = file[name]
            if isinstance(item, h5py.Dataset):
                return Stimulus(name, item[()])
            return Stimulus(name, item["video"][()], *(item[k][()] if k in item else None
                                                       for k in ("behavior", "pupil_center")))


def save_library(folder: str | Path, stimuli: dict[str, np.ndarray], parameters: dict | None = None) -> Path:
    """Write videos {name: (T, H, W)} as `<name>.npy` (uint8 where the values are whole pixels)
    plus `parameters.json` (what each stimulus shows) → the folder, ready for `twin score`."""
    import json

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, video in stimuli.items():
        whole = np.array_equal(video, np.clip(np.rint(video), *PIXEL_RANGE))
        np.save(folder / f"{name}.npy", video.astype(np.uint8) if whole else video.astype(np.float32))
    if parameters is not None:
        (folder / "parameters.json").write_text(json.dumps(parameters, indent=1))
    return folder
