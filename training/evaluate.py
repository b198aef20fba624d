"""Evaluation on whole trials (never random crops): predictions and metrics per tier.

A trial's prediction is (T, N) like its responses; its first `offset` frames (R - 1 for a receptive
field of R frames, before it is full; none for unbounded memory) are NaN, which the 50-frame burn-in
of the metrics excludes anyway.

Trials whose responses are withheld (`data.withheld`: files missing, or placeholders of zeros or NaN,
as a public release ships its test tiers) are not scored; a tier of only such trials is left out of
the results, and each recording and tier with withheld trials is said once, as a warning in the log.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import metrics
from .data import Recording, Trial
from .model import Twin
from .running import RunningCorrelation

SKIPPED_TIERS = ("none",)
LENGTH_BUCKET = 64  # frames: trials run padded to a multiple of this (see `predict`)
BATCH_FRAMES = 1024  # padded frames per forward pass of `predict` (3 trials of 300 frames)

log = logging.getLogger(__name__)
STREAMED_TIERS = ("train",)  # no repeats, and it grows with the recording: read a few trials at a time
STREAMED_TRIALS = 3  # trials read at once from a streamed tier (one batch of `predict` at 300 frames)


def _padded(array: np.ndarray, frames: int) -> np.ndarray:
    """A trial's array (T, ...) with its last frame repeated up to `frames` frames."""
    return np.pad(array, [(0, frames - len(array))] + [(0, 0)] * (array.ndim - 1), "edge")


@torch.inference_mode()
def predict(model: Twin, recording: str, trials: list[Trial]) -> list[np.ndarray]:
    """Predicted responses per trial, (T, N) each, NaN in the first `model.offset` frames.

    Each trial runs padded (its last frame repeated) to a multiple of `LENGTH_BUCKET` frames: the twins
    are causal, so the padding changes none of the trial's predictions, and a few input shapes keep
    the CPU kernels' allocations from piling up (200 trials of 100 different lengths grew the
    process to 5.6 GB; padded, it stayed at 0.34 GB). Trials of one padded length run together, up
    to `BATCH_FRAMES` frames per forward pass (a recurrent twin steps through time once per batch)."""
    model.eval()
    device, predictions = next(model.parameters()).device, [None] * len(trials)
    by_length: dict[int, list[int]] = {}
    for i, trial in enumerate(trials):
        by_length.setdefault(-(-trial.frames // LENGTH_BUCKET) * LENGTH_BUCKET, []).append(i)
    for length, members in by_length.items():
        per_batch = max(1, BATCH_FRAMES // length)
        for start in range(0, len(members), per_batch):
            batch = members[start:start + per_batch]
            inputs = [torch.from_numpy(np.stack([_padded(getattr(trials[i], name), length) for i in batch])).to(device)
                      for name in ("video", "behavior", "pupil_center")]
            outputs = model(recording, *inputs).float().cpu().numpy()
            for i, out in zip(batch, outputs):
                prediction = np.full((trials[i].frames, out.shape[1]), np.nan, dtype=np.float32)
                prediction[model.offset:] = out[: trials[i].frames - model.offset]
                predictions[i] = prediction
    return predictions


def load_expected(recording: Recording, trials: list[Trial]) -> list[np.ndarray] | None:
    """The virtual mouse's true expected responses for these trials (T, N), or None for real data."""
    folder = recording.path / "truth" / "expected"
    paths = [folder / f"{t.index}.npy" for t in trials]
    if not all(p.is_file() for p in paths):
        return None
    return [np.load(p).T[: t.frames].astype(np.float32) for p, t in zip(paths, trials)]


def score(responses: list[np.ndarray], predictions: list[np.ndarray], groups) -> tuple[dict, dict]:
    """Per-neuron metrics and their summary; repeat-based ones only where clips repeat. The correlations
    come twice: ours (NaN where undefined, left out of the mean) and `*_official` (the SENSORIUM scorer's)."""
    per_neuron = {
        "single_trial_correlation": metrics.single_trial_correlation(responses, predictions),
        "single_trial_correlation_official": metrics.single_trial_correlation_official(responses, predictions),
    }
    if any(len(g) > 1 for g in groups):
        per_neuron["correlation_to_average"] = metrics.correlation_to_average(responses, predictions, groups)
        per_neuron["correlation_to_average_official"] = metrics.correlation_to_average_official(
            responses, predictions, groups)
        per_neuron["fev_e"] = metrics.fev_e(responses, predictions, groups)
        per_neuron["cc_norm"] = metrics.cc_norm(responses, predictions, groups)
    return per_neuron, metrics.summarize(per_neuron, responses, groups)


def evaluate_tier(model: Twin, recording: Recording, trials: list[Trial]) -> tuple[dict, dict]:
    """Metrics of one tier → (summary, per-neuron arrays)."""
    trials = [t for t in trials if t.responses is not None and t.frames > metrics.BURN_IN]
    if not trials:
        return {}, {}
    responses = [t.responses for t in trials]
    groups = recording.repeat_groups(trials)
    per_neuron, summary = score(responses, predict(model, recording.name, trials), groups)
    expected = load_expected(recording, trials)
    if expected is not None:
        _add_ceiling(per_neuron, summary, metrics.single_trial_correlation(responses, expected))
    summary.update(trials=len(trials), clips=len(groups), neurons=recording.neurons)
    return summary, per_neuron


def _add_ceiling(per_neuron: dict, summary: dict, ceiling: np.ndarray) -> None:
    """The ceiling per neuron (N,) (the true expected response's single-trial correlation), its mean,
    and the fraction of it the twin reaches."""
    per_neuron["ceiling_single_trial_correlation"] = ceiling
    summary["ceiling_single_trial_correlation"] = float(np.nanmean(ceiling))
    summary["fraction_of_ceiling"] = summary["single_trial_correlation"] / summary["ceiling_single_trial_correlation"]


def evaluate_streamed(model: Twin, recording: Recording, indices: list[int]) -> tuple[dict, dict, int]:
    """Single-trial correlation (ours, official, and the ceiling) of a tier read `STREAMED_TRIALS` at a time →
    (summary, per-neuron arrays, trials withheld): memory does not grow with the tier's length."""
    correlation, ceiling, count, withheld = RunningCorrelation(), RunningCorrelation(), 0, 0
    for start in range(0, len(indices), STREAMED_TRIALS):
        trials = [recording.trial(index) for index in indices[start:start + STREAMED_TRIALS]]
        withheld += sum(trial.responses is None for trial in trials)
        trials = [t for t in trials if t.responses is not None and t.frames > metrics.BURN_IN]
        expected = load_expected(recording, trials)
        for i, predicted in enumerate(predict(model, recording.name, trials)):
            correlation.add(trials[i].responses, predicted)
            if expected is not None:
                ceiling.add(trials[i].responses, expected[i])
        count += len(trials)
    if not count:
        return {}, {}, withheld
    per_neuron = {"single_trial_correlation": correlation.result(),
                  "single_trial_correlation_official": correlation.official()}
    summary = metrics.summarize(per_neuron)
    if ceiling.sums:
        _add_ceiling(per_neuron, summary, ceiling.result())
    summary.update(trials=count, clips=count, neurons=recording.neurons)
    return summary, per_neuron, withheld


def _withheld_note(recording: str, tier: str, count: int, total: int) -> str | None:
    """What to say about a recording's tier if `count` of its `total` trials' responses are withheld."""
    why = "(files missing, or all zero or NaN)"
    if count == total:
        return f"{recording}, tier {tier}: responses withheld in all {count} trials {why}; tier not scored"
    if count:
        return (f"{recording}, tier {tier}: responses withheld in {count} of {total} trials {why}; "
                f"scoring the other {total - count}")
    return None


def evaluate(model: Twin, recordings: list[Recording], out: Path | None = None, progress: bool = True) -> dict:
    """Metrics per recording and tier; with `out`, per-neuron arrays go to `out/metrics_per_neuron.npz`."""
    results, arrays, notes = {}, {}, []
    jobs = [(r, tier) for r in recordings for tier in sorted(set(r.tiers)) if tier not in SKIPPED_TIERS]
    for recording, tier in tqdm(jobs, desc="evaluate", disable=not progress):
        if recording.name not in model.heads:
            raise KeyError(f"the twin has no readout for recording {recording.name!r}; "
                           f"it knows {sorted(model.heads)}")
        if recording.frame_shape != model.frame_shape:
            raise ValueError(f"{recording.name} has frames of {recording.frame_shape} pixels; "
                             f"the twin takes {model.frame_shape}")
        if tier in STREAMED_TIERS:
            indices = recording.trials_in(tier)
            summary, per_neuron, withheld = evaluate_streamed(model, recording, indices)
            notes.append(_withheld_note(recording.name, tier, withheld, len(indices)))
        else:
            trials = recording.load(tier)
            notes.append(_withheld_note(recording.name, tier, sum(t.responses is None for t in trials), len(trials)))
            summary, per_neuron = evaluate_tier(model, recording, trials)
        if summary:
            results.setdefault(recording.name, {})[tier] = summary
            arrays.update({f"{recording.name}/{tier}/{k}": v for k, v in per_neuron.items()})
    for note in filter(None, notes):  # after the progress bar: one line per recording and tier
        log.warning(note)
    if out is not None:
        np.savez_compressed(Path(out) / "metrics_per_neuron.npz", **arrays)
    return results
