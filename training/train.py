"""The trainer: Poisson loss, AdamW, warm-up + cosine schedule, all recordings in every step, bf16
autocast on GPUs (`precision`), gradient clipping, resumable; early stopping on the oracle tier's
single-trial correlation, but not in the first half of the budget (`min_progress`): validation can
sit on a plateau for hundreds of steps before it rises.

Training batches are random windows of training trials; validation runs whole trials.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from tqdm import tqdm

from . import checkpoint, metrics
from .cores import core_smoothness
from .data import Recording, Trial, common_frame_shape, open_recordings
from .evaluate import evaluate, predict
from .fidelity import write_fidelity
from .model import Twin
from .plots import plot_training_curve
from .positions import readout_positions
from .precision import autocast, resolve
from .presets import TrainConfig, preset as find_preset


def poisson_loss(rates: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean Poisson negative log-likelihood (up to a constant), NaN targets ignored; (B, T, N) each."""
    valid = torch.isfinite(targets)
    targets = torch.where(valid, targets, torch.zeros_like(targets))
    loss = rates - targets * torch.log(rates + 1e-8)
    return (loss * valid).sum() / valid.sum().clamp(min=1)


class WindowSampler:
    """Random windows of `frames` frames from training trials, uniform over all valid start frames."""

    def __init__(self, trials: list[Trial], frames: int, rng: np.random.Generator):
        self.trials = [t for t in trials if t.frames >= frames and t.responses is not None]
        if not self.trials:
            raise ValueError(f"no training trial has {frames} frames with responses")
        self.frames, self.rng = frames, rng
        starts = np.array([t.frames - frames + 1 for t in self.trials])
        self.weights = starts / starts.sum()

    def sample(self, clips: int) -> list[torch.Tensor]:
        """→ video (B, T, H, W), behavior (B, T, 2), pupil_center (B, T, 2), responses (B, T, N)."""
        picks = self.rng.choice(len(self.trials), size=clips, p=self.weights)
        batch = [[], [], [], []]
        for i in picks:
            trial = self.trials[i]
            start = self.rng.integers(0, trial.frames - self.frames + 1)
            window = slice(start, start + self.frames)
            for j, array in enumerate((trial.video, trial.behavior, trial.pupil_center, trial.responses)):
                batch[j].append(array[window])
        return [torch.from_numpy(np.stack(arrays)) for arrays in batch]


def readout_l1(head) -> torch.Tensor:
    """Mean over a head's neurons of the L1 norm of its readout channel weights: favours neurons that
    read few feature channels (neuralpredictors' feature regulariser)."""
    return head.readout.weight.abs().sum(0).mean()


def learning_rate(config: TrainConfig, progress: float) -> float:
    """Linear warm-up, then cosine decay to `min_lr_ratio` of the peak; progress ∈ [0, 1]."""
    if progress < config.warmup:
        return config.lr * max(progress / config.warmup, 0.01)
    cosine = 0.5 * (1 + np.cos(np.pi * min(1.0, (progress - config.warmup) / (1 - config.warmup))))
    return config.lr * (config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine)


def should_stop(config: TrainConfig, progress: float, bad_validations: int) -> bool:
    """At the end of the budget (progress ∈ [0, 1]), or after `patience` validations without
    improvement once `min_progress` of the budget is spent."""
    return progress >= 1 or (bad_validations >= config.patience and progress >= config.min_progress)


def validation_score(model: Twin, validation: dict[str, list[Trial]]) -> float:
    """Mean over recordings and neurons of the single-trial correlation on whole validation trials."""
    scores = []
    for name, trials in validation.items():
        predictions = predict(model, name, trials)
        scores.append(np.nanmean(metrics.single_trial_correlation([t.responses for t in trials], predictions)))
    model.train()
    return float(np.mean(scores))


def _validation_subset(trials: list[Trial], count: int) -> list[Trial]:
    trials = [t for t in trials if t.responses is not None and t.frames > metrics.BURN_IN]
    return trials[:: max(1, len(trials) // count)][:count]


def build_model(preset: str, recordings: list[Recording], train_trials: dict[str, list[Trial]]) -> Twin:
    """A fresh twin for the recordings' frame shape, with normalisation and readout positions
    initialised from the training data."""
    model = Twin(find_preset(preset).model_config(), {r.name: r.neurons for r in recordings},
                 frame_shape=common_frame_shape(recordings))
    for recording in recordings:
        positions = readout_positions(train_trials[recording.name], recording.coordinates)
        model.heads[recording.name].initialize(recording.statistics, positions)
    return model


def _check_resumable(saved: dict, wanted: dict, out: Path) -> None:
    """A checkpoint resumes only the same twin and settings; the budget (minutes, steps) may change."""
    def comparable(config):
        config = json.loads(json.dumps(config))
        for budget in ("minutes", "steps"):
            config["train"].pop(budget)
        return config

    if comparable(saved) != comparable(wanted):
        raise ValueError(f"{out} holds a checkpoint of a different twin, data or training settings; "
                         f"choose another --out or delete {out / 'checkpoint'}")


def train(data: list[str | Path], out: str | Path, preset: str = "small", progress: bool = True,
          **overrides) -> dict:
    """Train a twin on the recordings `data` into run directory `out`; returns the metrics.

    overrides: fields of `TrainConfig` (e.g. minutes=5). An existing checkpoint in `out` with the
    same settings is resumed.
    """
    config = replace(find_preset(preset).train, **overrides)
    out = Path(out)
    (out / "checkpoint").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    recordings = open_recordings(data)
    common_frame_shape(recordings)  # refuse recordings of different frame shapes before reading any trial
    train_trials = {r.name: r.load("train") for r in recordings}
    validation = {r.name: _validation_subset(r.load("oracle"), config.val_trials) for r in recordings}
    empty = [name for name, trials in validation.items() if not trials]
    if empty:
        raise ValueError(f"recordings {empty} have no oracle trials with responses to validate on")

    model = build_model(preset, recordings, train_trials)
    run_config = {
        "preset": preset, "model": model.config, "frame_shape": list(model.frame_shape), "train": asdict(config),
        "receptive_field": model.receptive_field, "precision": resolve(config.precision),
        "recordings": {r.name: {"neurons": r.neurons, "unit_ids": r.unit_ids.tolist()} for r in recordings},
    }
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    state = {"step": 0, "elapsed": 0.0, "best_score": -np.inf, "best_step": 0, "history": []}
    state_path = out / "checkpoint" / "state.json"
    if state_path.is_file():
        _check_resumable(checkpoint.read_config(out), run_config, out)
        model.load_state_dict(load_file(str(out / "checkpoint" / "last.safetensors")))
        checkpoint.load_optimizer(optimizer, out / "checkpoint" / "optimizer.safetensors")
        state = json.loads(state_path.read_text())
    checkpoint.write_json(out / "config.json", run_config)

    samplers = {name: WindowSampler(trials, config.frames, np.random.default_rng(config.seed + state["step"]))
                for name, trials in train_trials.items()}

    def validate() -> bool:
        """Score the validation trials, keep the best weights, write a resumable checkpoint."""
        score = validation_score(model, validation)
        state["history"].append({"step": state["step"], "minutes": (time.time() - started) / 60,
                                 "loss": float(np.mean(losses)) if losses else float("nan"),
                                 "lr": optimizer.param_groups[0]["lr"], "validation": score})
        losses.clear()
        improved = score > state["best_score"]
        if improved:
            state.update(best_score=score, best_step=state["step"])
            checkpoint.save_weights(model, out / "model.safetensors")
        state["elapsed"] = time.time() - started
        checkpoint.save_weights(model, out / "checkpoint" / "last.safetensors")
        checkpoint.save_optimizer(optimizer, out / "checkpoint" / "optimizer.safetensors")
        checkpoint.write_json(state_path, state)
        return improved

    model.train()
    bar = tqdm(total=100, desc=f"train {preset}", unit="%", disable=not progress, initial=0)
    started, losses = time.time() - state["elapsed"], []
    bad_validations = sum(1 for h in state["history"] if h["step"] > state["best_step"])
    if not state["history"]:
        validate()  # the untrained score, the first point of the curve
    while True:
        elapsed = time.time() - started
        fraction = max(state["step"] / config.steps, elapsed / (60 * config.minutes))
        if should_stop(config, fraction, bad_validations):
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, fraction)
        loss = 0.0
        for name, sampler in samplers.items():
            video, behavior, pupil, responses = sampler.sample(config.clips)
            with autocast(config.precision):
                rates = model.rates(name, video, behavior, pupil).float()
            target = responses[:, model.offset:] / model.heads[name].response_scale
            loss = loss + poisson_loss(rates, target) + config.readout_l1 * readout_l1(model.heads[name])
        loss = loss + config.core_smoothness * core_smoothness(model.core)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        optimizer.step()
        losses.append(loss.item())
        state["step"] += 1
        bar.update(int(100 * fraction) - bar.n)
        if state["step"] % config.eval_every == 0:
            bad_validations = 0 if validate() else bad_validations + 1
            bar.set_postfix(step=state["step"], loss=f"{state['history'][-1]['loss']:.3f}",
                            val=f"{state['history'][-1]['validation']:.3f}")
    bar.close()
    if losses or not state["history"]:
        validate()
    plot_training_curve(state["history"], out / "training_curve.png")
    best, _ = checkpoint.load_run(out)
    results = evaluate(best, recordings, out, progress=progress)
    checkpoint.write_json(out / "metrics.json", results)
    write_fidelity(out, recordings)
    return results
