"""Stimulus libraries: what `twin score` reads and the stimulus generators write.

A library is one of
- a folder of `.npy` videos `(T, H, W)` raw pixel values, or `.npz` files holding `video (T, H, W)`
  and optionally `behavior (T, 2)` and `pupil_center (T, 2)` (raw values);
- a folder of video files (`VIDEO_SUFFIXES`), read with imageio, converted to grey and resized;
- an HDF5 file: one dataset `(T, H, W)` per stimulus, or one group per stimulus holding `video`
  and optionally `behavior` and `pupil_center`.
Stimuli are named by file stem or HDF5 key and listed in sorted order. Missing behaviour is filled in
by the scorer (default: the recording's mean, from the served model's config).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

HEIGHT, WIDTH = 36, 64
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


def _checked_video(name: str, video: np.ndarray) -> np.ndarray:
    if video.ndim == 3 and video.shape[:2] == (HEIGHT, WIDTH) and video.shape[2] != WIDTH:
        video = np.moveaxis(video, -1, 0)  # SENSORIUM's (H, W, T)
    if video.ndim != 3 or video.shape[1:] != (HEIGHT, WIDTH):
        raise StimulusError(f"{name}: expected frames (T, {HEIGHT}, {WIDTH}), got {video.shape}")
    if not np.isfinite(video).all():
        raise StimulusError(f"{name}: video contains NaN or Inf")
    return video


def read_video_file(path: Path) -> np.ndarray:
    """A video file → grey frames (T, H, W) uint8 at the twin's resolution."""
    import imageio.v3 as iio
    from PIL import Image

    frames = [np.asarray(Image.fromarray(np.asarray(f)).convert("L").resize((WIDTH, HEIGHT), Image.BILINEAR))
              for f in iio.imiter(path)]
    if not frames:
        raise StimulusError(f"{path}: no frames")
    return np.stack(frames)


def read_video(path: str | Path) -> np.ndarray:
    """One video: `.npy` frames (T, H, W) (or SENSORIUM's (H, W, T)) or a video file → (T, H, W)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such video")
    if path.suffix == ".npy":
        return _checked_video(path.name, np.load(path, allow_pickle=False))
    return read_video_file(path)


class Library:
    """The stimuli of one library: `names`, `load(name)`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
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
        stimulus.video = _checked_video(name, stimulus.video)
        for key in ("behavior", "pupil_center"):
            value = getattr(stimulus, key)
            if value is not None and (value.shape != (len(stimulus.video), 2) or not np.isfinite(value).all()):
                raise StimulusError(f"{name}: {key} must be finite ({len(stimulus.video)}, 2), got {value.shape}")
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
            raise StimulusError(f"{name}: expected frames (T, {HEIGHT}, {WIDTH}), got {shape}")
        return shape[2] if shape[:2] == (HEIGHT, WIDTH) and shape[2] != WIDTH else shape[0]

    def _read(self, name: str) -> Stimulus:
        if self.path.is_dir():
            path = self._files[name]
            if path.suffix == ".npy":
                return Stimulus(name, np.load(path, allow_pickle=False))
            if path.suffix == ".npz":
                with np.load(path, allow_pickle=False) as data:
                    return Stimulus(name, data["video"], *(data[k] if k in data else None
                                                           for k in ("behavior", "pupil_center")))
            return Stimulus(name, read_video_file(path))
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
        whole = np.array_equal(video, np.clip(np.rint(video), 0, 255))
        np.save(folder / f"{name}.npy", video.astype(np.uint8) if whole else video.astype(np.float32))
    if parameters is not None:
        (folder / "parameters.json").write_text(json.dumps(parameters, indent=1))
    return folder
