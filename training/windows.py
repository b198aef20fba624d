"""Training batches of random windows, read from disk when sampled: recordings larger than RAM.

`index_trials` scans a tier once, one trial at a time through memory maps, and keeps only each
trial's valid length. `WindowStream` then draws every step's windows (all recordings) and copies
them out of memory-mapped `.npy` files, which are closed again at once: memory does not grow with
the number or length of recordings, and the OS page cache is the only cache. A torch `DataLoader`
runs the stream in background worker processes, so the step does not wait on the disk.

`loader="memory"` reads the same windows from trials loaded into RAM beforehand, in the training
process (today's small recordings; the benchmark's reference).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from twinserve.contract import FPS

from .data import Recording, Trial

LOADERS = ("disk", "memory")


@dataclass
class TrialIndex:
    """The trials of one recording to draw windows from: trial indices and valid lengths (K,) each."""

    recording: Recording
    trials: np.ndarray
    lengths: np.ndarray


def index_trials(recording: Recording, tier: str, frames: int, progress: bool = True) -> TrialIndex:
    """Trials of `tier` with responses and at least `frames` valid frames (`Recording.scan`)."""
    candidates = recording.trials_in(tier)
    lengths = np.array([recording.scan(i) for i in tqdm(candidates, desc=f"index {recording.name}",
                                                        disable=not progress, leave=False)], dtype=np.int64)
    keep = lengths >= frames
    if not keep.any():
        raise ValueError(f"{recording.name}: no {tier} trial has {frames} valid frames with responses")
    return TrialIndex(recording, np.array(candidates, dtype=np.int64)[keep], lengths[keep])


def first_minutes(index: TrialIndex, minutes: float) -> TrialIndex:
    """The fewest first trials of `index` that hold at least `minutes` of valid frames (at the
    contract's frame rate): a training set cut to a given amount of data."""
    wanted, total = minutes * 60 * FPS, np.cumsum(index.lengths)
    if minutes <= 0 or total[-1] < wanted:
        raise ValueError(f"{index.recording.name}: asked for {minutes:g} minutes of training data; its usable "
                         f"training trials hold {total[-1] / (60 * FPS):.1f} minutes")
    keep = int(np.searchsorted(total, wanted)) + 1
    return TrialIndex(index.recording, index.trials[:keep], index.lengths[:keep])


def spaced(items: list, count: int) -> list:
    """At most `count` items, evenly spaced over the list."""
    return items[:: max(1, len(items) // count)][:count]


class WindowStream(IterableDataset):
    """An endless stream of batches: per step and recording `clips` windows of `frames` frames,
    uniform over all valid start frames → {recording: (video (B, T, H, W), behavior (B, T, 2),
    pupil_center (B, T, 2), responses (B, T, N))}, float32 tensors.

    seed: the stream's seed; each DataLoader worker draws its own windows from (seed, worker).
    memory: trials already in RAM per recording, read instead of the files where given.
    """

    def __init__(self, indexes: dict[str, TrialIndex], clips: int, frames: int, seed: int | list[int],
                 memory: dict[str, dict[int, Trial]] | None = None):
        self.indexes, self.clips, self.frames, self.seed = indexes, clips, frames, seed
        self.memory = memory or {}

    def _read(self, name: str, trial: int, start: int) -> tuple[np.ndarray, ...]:
        if name in self.memory:
            loaded, window = self.memory[name][trial], slice(start, start + self.frames)
            return tuple(a[window] for a in (loaded.video, loaded.behavior, loaded.pupil_center, loaded.responses))
        return self.indexes[name].recording.window(trial, start, self.frames)

    def batch(self, rng: np.random.Generator) -> dict[str, list[torch.Tensor]]:
        """One step's windows for every recording."""
        result = {}
        for name, index in self.indexes.items():
            starts = index.lengths - self.frames + 1
            picks = rng.choice(len(index.trials), size=self.clips, p=starts / starts.sum())
            windows = [self._read(name, int(index.trials[i]), int(rng.integers(0, starts[i]))) for i in picks]
            result[name] = [torch.from_numpy(np.stack(arrays)) for arrays in zip(*windows)]
        return result

    def __iter__(self):
        worker = get_worker_info()
        rng = np.random.default_rng(list(np.atleast_1d(self.seed)) + [worker.id if worker else 0])
        while True:
            yield self.batch(rng)


def batches(stream: WindowStream, workers: int, pin_memory: bool = False):
    """Iterate the stream: in `workers` background processes (prefetching two batches each), or in
    this process with workers=0."""
    if workers == 0:
        return iter(stream)
    loader = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=pin_memory,
                        prefetch_factor=2, persistent_workers=False)
    return iter(loader)
