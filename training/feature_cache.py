"""A frozen core's features, computed once: a transferred twin's heads train without running the core.

With `--freeze-core` the core is a fixed function of each trial's inputs (eval mode; its weights and
the head's normalisation statistics do not train), so every training and validation trial goes
through it once. Training windows then slice the cached features, and a step costs only what
trains: the readout, shifter and modulator. For a core with a finite receptive field a window's
slice equals the features of that window run alone (the core is causal and its outputs start once
the receptive field is full); for a core with unbounded memory the slice carries the state from the
trial's first frame, as the served twin's state on a stream does, where a window run alone would
start cold.

Memory: C·H'·W' float32 per frame (`small`: 32·18·32 → 74 kB, so 16 minutes at 30 fps → 2.1 GB);
`cache_gb` bounds it, and a twin whose features do not fit trains through the core as without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from twinserve.contract import BEHAVIOR_CHANNELS

from . import metrics
from .data import Trial
from .loss import poisson_loss, readout_l1
from .model import Twin
from .windows import TrialIndex

DEFAULT_CACHE_GB = 6.0


@dataclass
class CachedTrial:
    """One trial's output frames T' = T - offset: the core's features (C, T', H', W'), normalised
    behaviour and pupil centre (T', 2) each, and the recorded responses (T, N) of all T frames."""

    features: torch.Tensor
    behavior: torch.Tensor
    pupil_center: torch.Tensor
    responses: torch.Tensor


def feature_bytes_per_frame(model: Twin) -> int:
    """Bytes of the core's float32 features for one output frame."""
    height, width = model.frame_shape
    device = next(model.parameters()).device
    with torch.no_grad():
        probe = model.core(torch.zeros(1, 1 + BEHAVIOR_CHANNELS, model.offset + 1, height, width, device=device))
    return 4 * probe[0, :, 0].numel()


@torch.no_grad()
def cache_trial(model: Twin, recording: str, trial: Trial) -> CachedTrial:
    """Run one whole trial through the core (eval mode) → its `CachedTrial`."""
    features, behavior, pupil_center = (x[0].cpu() for x in model.trial_features(recording, trial))
    return CachedTrial(features, behavior, pupil_center, torch.from_numpy(np.asarray(trial.responses, dtype=np.float32)))


class FeatureCache:
    """Per recording the cached training trials (those of its `TrialIndex`) and validation trials."""

    def __init__(self, model: Twin, train: dict[str, list[CachedTrial]], validation: dict[str, list[CachedTrial]]):
        self.model, self.train, self.validation = model, train, validation

    @classmethod
    def build(cls, model: Twin, indexes: dict[str, TrialIndex], validation: dict[str, list[Trial]],
              cache_gb: float = DEFAULT_CACHE_GB, progress: bool = True) -> "FeatureCache | None":
        """Cache a frozen core's features of every training trial in `indexes` and every validation
        trial → the cache, or None when they would take more than `cache_gb` GB."""
        if not model.core_frozen:
            raise ValueError("features can be cached only for a frozen core")
        if any(head.shift_input for head in model.heads.values()):
            raise ValueError("features can be cached only for heads that shift their readouts, not the core's input "
                             "(`shift_input`: the input would change as the shifter trains)")
        frames = sum(int(index.lengths.sum()) for index in indexes.values())
        frames += sum(trial.frames for trials in validation.values() for trial in trials)
        needed = feature_bytes_per_frame(model) * frames / 1e9
        if needed > cache_gb:
            if progress:
                print(f"the frozen core's features take {needed:.1f} GB, over the cache's {cache_gb:g} GB: "
                      "training runs the core every step", flush=True)
            return None
        model.core.eval()
        bar = tqdm(total=frames, desc="core features", unit="frame", disable=not progress, leave=False)

        def cached(name: str, trial: Trial) -> CachedTrial:
            bar.update(trial.frames)
            return cache_trial(model, name, trial)

        train = {name: [cached(name, index.recording.trial(int(i))) for i in index.trials]
                 for name, index in indexes.items()}
        held_out = {name: [cached(name, trial) for trial in trials] for name, trials in validation.items()}
        bar.close()
        return cls(model, train, held_out)

    def windows(self, clips: int, frames: int, seed: list[int]):
        """Endless batches like `WindowStream`'s: per recording `clips` windows of `frames` input
        frames, uniform over valid start frames → {recording: [features (B, C, T', H', W'),
        behavior (B, T', 2), pupil_center (B, T', 2), responses (B, T', N)]}, T' = frames - offset."""
        rng, offset = np.random.default_rng(seed), self.model.offset
        starts = {name: np.array([t.features.shape[1] + offset - frames + 1 for t in trials])
                  for name, trials in self.train.items()}

        def window(trial: CachedTrial, start: int) -> tuple[torch.Tensor, ...]:
            # A window from input frame `start` has its outputs at frames start + offset … start + frames - 1:
            # cached output frames start … start + frames - offset - 1.
            outputs = slice(start, start + frames - offset)
            return (trial.features[:, outputs], trial.behavior[outputs], trial.pupil_center[outputs],
                    trial.responses[start + offset:start + frames])

        while True:
            batch = {}
            for name, trials in self.train.items():
                counts = starts[name]
                picks = rng.choice(len(trials), size=clips, p=counts / counts.sum())
                windows = [window(trials[i], int(rng.integers(0, counts[i]))) for i in picks]
                batch[name] = [torch.stack(parts) for parts in zip(*windows)]
            yield batch

    @torch.no_grad()
    def validation_score(self) -> float:
        """`train.validation_score` on the cached validation trials: the mean over recordings and
        neurons of the single-trial correlation of whole trials (predictions NaN in the first offset frames)."""
        model, scores = self.model, []
        device = next(model.parameters()).device
        model.eval()
        for name, trials in self.validation.items():
            head, predictions = model.heads[name], []
            for trial in trials:
                inputs = (trial.features, trial.behavior, trial.pupil_center)
                rates = head(*(x[None].to(device) for x in inputs))[0]
                prediction = torch.full(trial.responses.shape, float("nan"))
                prediction[model.offset:] = (rates * head.response_scale).cpu()
                predictions.append(prediction.numpy())
            correlations = metrics.single_trial_correlation([t.responses.numpy() for t in trials], predictions)
            scores.append(np.nanmean(correlations))
        model.train()
        return float(np.mean(scores))


class CachedStepLoss(nn.Module):
    """`train.StepLoss` on cached features: the heads' Poisson loss and readout L1 (a frozen core
    has no trainable term)."""

    def __init__(self, model: Twin, readout_l1_weight: float):
        super().__init__()
        self.model, self.readout_l1_weight = model, readout_l1_weight

    def forward(self, batch: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        """batch: `FeatureCache.windows` → the scalar loss."""
        loss, device = 0.0, next(self.model.parameters()).device
        for name, arrays in batch.items():
            features, behavior, pupil_center, responses = (a.to(device, non_blocking=True) for a in arrays)
            head = self.model.heads[name]
            rates = head(features, behavior, pupil_center)
            loss = loss + poisson_loss(rates, responses / head.response_scale) + self.readout_l1_weight * readout_l1(head)
        return loss
