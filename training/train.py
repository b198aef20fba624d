"""The trainer: Poisson loss, AdamW, warm-up + cosine schedule, all recordings in every step, bf16
autocast on GPUs (`precision`), gradient clipping, resumable; early stopping on the oracle tier's
single-trial correlation, but not in the first half of the budget (`min_progress`): validation can
sit on a plateau for hundreds of steps before it rises.

Training batches are random windows of training trials; validation runs whole trials.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from . import checkpoint, metrics
from .cores import core_smoothness
from . import distributed
from .data import Recording, Trial, common_frame_shape, open_recordings
from .evaluate import evaluate, predict
from .feature_cache import DEFAULT_CACHE_GB, CachedStepLoss, FeatureCache
from .fidelity import write_fidelity
from .loss import poisson_loss, readout_l1
from .model import SHIFT_INPUT, Twin
from .plots import plot_training_curve
from .positions import MAX_TRIALS, ReadoutStart, readout_start
from .precision import autocast, resolve
from .presets import TrainConfig, preset as find_preset
from .readout_fit import fit_readout, refit_readout
from .transfer import CoreSource
from .windows import LOADERS, TrialIndex, WindowStream, batches, first_minutes, index_trials, spaced


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


class StepLoss(torch.nn.Module):
    """The loss of one optimizer step over every recording's windows (the module DDP wraps)."""

    def __init__(self, model: Twin, config: TrainConfig, device: torch.device):
        super().__init__()
        self.model, self.config, self.device = model, config, device

    def forward(self, batch: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        """batch: {recording: [video (B, T, H, W), behavior (B, T, 2), pupil_center (B, T, 2),
        responses (B, T, N)]} → the scalar loss."""
        model, config, loss = self.model, self.config, 0.0
        for name, arrays in batch.items():
            video, behavior, pupil, responses = (a.to(self.device, non_blocking=True) for a in arrays)
            with autocast(config.precision, str(self.device)):
                rates = model.rates(name, video, behavior, pupil).float()
            target = responses[:, model.offset:] / model.heads[name].response_scale
            loss = loss + poisson_loss(rates, target) + config.readout_l1 * readout_l1(model.heads[name])
        return loss + config.core_smoothness * core_smoothness(model.core)


def validation_trials(recording: Recording, count: int) -> list[Trial]:
    """At most `count` oracle trials with responses, evenly spaced, read from disk (only these)."""
    trials = [recording.trial(i) for i in spaced(recording.trials_in("oracle"), count)]
    return [t for t in trials if t.responses is not None and t.frames > metrics.BURN_IN]


def build_model(model_config: dict, recordings: list[Recording], indexes: dict[str, TrialIndex],
                source: CoreSource | None = None, starts: dict[str, ReadoutStart] | None = None) -> Twin:
    """A fresh twin ({"core": name, **settings}) for the recordings' frame shape, with normalisation
    and readout initialised from the training data (at most `MAX_TRIALS` trials read per recording).

    source: a trained core to start from. Its weights are loaded and each readout is fitted on its
    features (`readout_fit`); without it readout positions come from `starts` (recording name →
    `readout_starts`), computed here from the data's energy maps if not given.
    """
    model = Twin(model_config, {r.name: r.neurons for r in recordings}, frame_shape=common_frame_shape(recordings))
    if source is not None:
        source.load_into(model.core)
    elif starts is None:
        starts = readout_starts(recordings, indexes)
    for recording in recordings:
        head = model.heads[recording.name]
        if source is None:
            head.initialize(recording.statistics, starts[recording.name].positions)
        else:
            trials = readout_trials(recording, indexes[recording.name])
            head.initialize(recording.statistics)
            fit_readout(model, recording.name, trials)
    return model


def readout_trials(recording: Recording, index: TrialIndex) -> list[Trial]:
    """The training trials a readout is initialised or refitted from: at most `MAX_TRIALS`, evenly spaced."""
    return [recording.trial(int(i)) for i in spaced(list(index.trials), MAX_TRIALS)]


def readout_starts(recordings: list[Recording], indexes: dict[str, TrialIndex]) -> dict[str, ReadoutStart]:
    """Every recording's starting readout positions from its energy maps (`positions.readout_start`)."""
    return {r.name: readout_start(readout_trials(r, indexes[r.name]), r.coordinates) for r in recordings}


def refit_plan(config: TrainConfig, names: list[str],
               starts: dict[str, ReadoutStart]) -> tuple[float | None, list[str]]:
    """When (fraction of the budget, None: never) and which of the recordings `names` have their
    readouts refitted: all at `refit_readout_at` if it is set, else at `refit_unconfirmed_at` those
    whose start positions no retinotopic fit confirmed (none with a transferred core: `starts` is empty)."""
    if config.refit_readout_at is not None:
        return config.refit_readout_at, list(names)
    unconfirmed = [name for name, start in starts.items() if not start.confirmed]
    if not unconfirmed or config.refit_unconfirmed_at is None:
        return None, []
    return config.refit_unconfirmed_at, unconfirmed


@torch.no_grad()
def refit_readouts(model: Twin, recordings: list[Recording], indexes: dict[str, TrialIndex],
                   optimizer: torch.optim.Optimizer) -> dict[str, int]:
    """Move every head's neurons that read from the wrong place on the core as trained so far
    (`readout_fit.refit_readout`); the optimizer forgets the moved neurons' momentum → neurons moved
    per recording."""
    moved = {}
    for recording in recordings:
        trials = readout_trials(recording, indexes[recording.name])
        mask = torch.from_numpy(refit_readout(model, recording.name, trials, coordinates=recording.coordinates))
        readout = model.heads[recording.name].readout
        for parameter, rows in ((readout.position, mask), (readout.bias, mask), (readout.weight, (slice(None), mask))):
            if "exp_avg" in optimizer.state.get(parameter, {}):
                optimizer.state[parameter]["exp_avg"][rows] = 0
        moved[recording.name] = int(mask.sum())
    return moved


def _check_resumable(saved: dict, wanted: dict, out: Path) -> None:
    """A checkpoint resumes only the same twin and settings; the budget (minutes, steps) and where it
    runs (`runtime`: device, processes, loader) may change."""
    def comparable(config):
        config = json.loads(json.dumps(config))
        config.pop("runtime", None)
        config.setdefault("core_from", None)  # runs written before transfer existed
        config["train"].setdefault("data_minutes", None)
        config["train"].setdefault("refit_readout_at", None)
        config["train"].setdefault("refit_unconfirmed_at", None)  # runs written before it never refitted on their own
        for budget in ("minutes", "steps"):
            config["train"].pop(budget)
        return config

    if comparable(saved) != comparable(wanted):
        raise ValueError(f"{out} holds a checkpoint of a different twin, data or training settings; "
                         f"choose another --out or delete {out / 'checkpoint'}")


def _window_indexes(recordings: list[Recording], frames: int, loader: str, progress: bool,
                    data_minutes: float | None = None) -> tuple[dict[str, TrialIndex], dict | None]:
    """Per recording the training trials to draw windows from (the first `data_minutes` of them
    where given), and for loader "memory" the trials themselves ({recording: {trial index: Trial}})."""
    if loader not in LOADERS:
        raise ValueError(f"unknown loader {loader!r}; choose one of {LOADERS}")
    indexes = {r.name: index_trials(r, "train", frames, progress) for r in recordings}
    if data_minutes is not None:
        indexes = {name: first_minutes(index, data_minutes) for name, index in indexes.items()}
    if loader == "disk":
        return indexes, None
    return indexes, {r.name: {int(i): r.trial(int(i)) for i in indexes[r.name].trials} for r in recordings}


def train(data: list[str | Path], out: str | Path, preset: str = "small", progress: bool = True,
          device: str = "auto", loader: str = "disk", workers: int = 1, core_from: str | Path | None = None,
          freeze_core: bool = False, feature_cache_gb: float = DEFAULT_CACHE_GB, **overrides) -> dict:
    """Train a twin on the recordings `data` into run directory `out`; returns the metrics (rank 0;
    other ranks of a torchrun job return {}).

    device: "auto", "cpu", "cuda" or "cuda:<i>". loader: "disk" reads each step's windows from
    memory-mapped files in `workers` background processes; "memory" loads the training trials first.
    core_from: a run whose core (settings and weights) this twin starts from instead of the preset's;
    freeze_core: keep that core fixed and fit only the heads (`transfer`), on its features computed
    once (`feature_cache`, up to `feature_cache_gb` GB; one process only) where they fit.
    overrides: fields of `TrainConfig` (e.g. minutes=5). An existing checkpoint in `out` with the
    same settings is resumed.
    """
    if freeze_core and core_from is None:
        raise ValueError("--freeze-core needs --core-from RUN: the trained core to keep fixed")
    config = replace(find_preset(preset).train, **overrides)
    for name in ("refit_readout_at", "refit_unconfirmed_at"):
        fraction = getattr(config, name)
        if fraction is not None and not 0 <= fraction < 1:
            label = "--refit-readout-at" if name == "refit_readout_at" else name
            raise ValueError(f"{label} is a fraction of the budget in [0, 1), got {fraction}")
    source = CoreSource.read(core_from) if core_from is not None else None
    rank = distributed.start(device)
    progress = progress and rank.main
    out = Path(out)
    torch.manual_seed(config.seed)
    recordings = open_recordings(data)
    frame_shape = common_frame_shape(recordings)  # refuse different frame shapes before reading any trial
    if source is not None:
        source.check_frame_shape(frame_shape)
    indexes, memory = _window_indexes(recordings, config.frames, loader, progress, config.data_minutes)
    validation = {r.name: validation_trials(r, config.val_trials) for r in recordings} if rank.main else {}
    empty = [name for name, trials in validation.items() if not trials]
    if empty:
        raise ValueError(f"recordings {empty} have no oracle trials with responses to validate on")

    starts = readout_starts(recordings, indexes) if source is None else {}
    model_config = source.model if source else find_preset(preset).model_config()
    if freeze_core:  # what a frozen core sees must not depend on what trains: its heads move their readouts instead
        model_config = {**model_config, SHIFT_INPUT: False}
    model = build_model(model_config, recordings, indexes, source, starts)
    refit_at, refitted = refit_plan(config, [r.name for r in recordings], starts)
    if freeze_core:
        model.freeze_core()
    model = model.to(rank.device)
    cache = None
    if freeze_core and rank.world == 1:
        cache = FeatureCache.build(model, indexes, validation, feature_cache_gb, progress)
    run_config = {
        "preset": preset, "model": model.config, "frame_shape": list(model.frame_shape), "train": asdict(config),
        "receptive_field": model.receptive_field, "precision": resolve(config.precision, str(rank.device)),
        "recordings": {r.name: {"neurons": r.neurons, "unit_ids": r.unit_ids.tolist()} for r in recordings},
        "runtime": {"device": str(rank.device), "processes": rank.world, "loader": loader, "workers": workers,
                    "feature_cache": cache is not None},
        "core_from": source.record(freeze_core) if source else None,
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    state = {"step": 0, "elapsed": 0.0, "step_seconds": 0.0, "best_score": -np.inf, "best_step": 0, "history": [],
             "readout_start_r2": {name: start.retinotopy_r2 for name, start in starts.items()}}
    state_path = out / "checkpoint" / "state.json"
    if state_path.is_file():
        _check_resumable(checkpoint.read_config(out), run_config, out)
        model.load_state_dict(load_file(str(out / "checkpoint" / "last.safetensors"), device=str(rank.device)))
        checkpoint.load_optimizer(optimizer, out / "checkpoint" / "optimizer.safetensors")
        state = json.loads(state_path.read_text())
    distributed.barrier(rank)  # every rank has read the checkpoint before rank 0 writes a new one
    if rank.main:
        (out / "checkpoint").mkdir(parents=True, exist_ok=True)
        checkpoint.write_json(out / "config.json", run_config)

    stream_seed = [config.seed, state["step"], rank.index]
    if cache is not None:
        step_loss, windows = CachedStepLoss(model, config.readout_l1), cache.windows(config.clips, config.frames, stream_seed)
    else:
        step_loss = StepLoss(model, config, rank.device)
        if rank.world > 1:
            step_loss = DistributedDataParallel(step_loss, device_ids=[rank.device.index] if rank.device.type == "cuda" else None)
        stream = WindowStream(indexes, config.clips, config.frames, stream_seed, memory)
        windows = batches(stream, workers if loader == "disk" else 0, pin_memory=rank.device.type == "cuda")

    def validate() -> bool:
        """Rank 0: score the validation trials, keep the best weights, write a resumable checkpoint."""
        score = cache.validation_score() if cache is not None else validation_score(model, validation)
        state["history"].append({"step": state["step"], "minutes": (time.time() - started) / 60,
                                 "loss": float(np.mean(losses)) if losses else float("nan"),
                                 "lr": optimizer.param_groups[0]["lr"], "validation": score})
        improved = score > state["best_score"]
        if improved:
            state.update(best_score=score, best_step=state["step"])
            checkpoint.save_weights(model, out / "model.safetensors")
        state["elapsed"] = time.time() - started
        checkpoint.save_weights(model, out / "checkpoint" / "last.safetensors")
        checkpoint.save_optimizer(optimizer, out / "checkpoint" / "optimizer.safetensors")
        checkpoint.write_json(state_path, state)
        return improved

    def validate_everywhere(bad: int) -> int:
        """Validations without improvement after this one, agreed by all ranks."""
        bad = (0 if validate() else bad + 1) if rank.main else 0
        losses.clear()
        return distributed.from_main(bad, rank)

    model.train()
    bar = tqdm(total=100, desc=f"train {preset}", unit="%", disable=not progress, initial=0)
    started, losses, first_batch = time.time() - state["elapsed"], [], None
    bad_validations = sum(1 for h in state["history"] if h["step"] > state["best_step"])
    if not state["history"]:
        bad_validations = validate_everywhere(bad_validations)  # the untrained score, the first point of the curve
        # The budget counts from the first step. Counted from here, step 0's learning rate followed how long
        # this validation took, so a run bound by its steps gave different twins from run to run.
        started = time.time()
    while True:
        elapsed = time.time() - started
        fraction = distributed.largest(max(state["step"] / config.steps, elapsed / (60 * config.minutes)), rank)
        if should_stop(config, fraction, bad_validations):
            break
        if refit_at is not None and fraction >= refit_at and "readout_refitted_at" not in state:
            distributed.share_buffers(model, rank)  # every rank refits the same twin (its BatchNorm statistics)
            chosen = [r for r in recordings if r.name in refitted]
            state["readout_refit_moved"] = refit_readouts(model, chosen, indexes, optimizer)
            state["readout_refitted_at"] = state["step"]
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(config, fraction)
        step_started = time.perf_counter()
        batch = next(windows)
        first_batch = first_batch or _digest(batch)
        loss = step_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.clip_grad)
        optimizer.step()
        losses.append(loss.item())
        state["step"] += 1
        state["step_seconds"] = state.get("step_seconds", 0.0) + time.perf_counter() - step_started
        bar.update(int(100 * fraction) - bar.n)
        if state["step"] % config.eval_every == 0:
            bad_validations = validate_everywhere(bad_validations)
            if rank.main:
                bar.set_postfix(step=state["step"], loss=f"{state['history'][-1]['loss']:.3f}",
                                val=f"{state['history'][-1]['validation']:.3f}")
    bar.close()
    del windows, step_loss  # stops the background workers; lets `distributed.finish` collect a DDP wrapper
    if losses or not state["history"]:
        validate_everywhere(bad_validations)
    distributed.share_buffers(model, rank)
    record = {"processes": rank.world, "first_batch": distributed.gather(first_batch, rank),
              "weights": distributed.gather(_digest(model.state_dict()), rank)}
    results = _finish_run(model, recordings, out, state["history"], record, progress) if rank.main else {}
    distributed.finish(rank)
    return results


def _digest(tensors) -> str | None:
    """A short hash of a batch ({recording: [tensors]}) or a state dict, to compare ranks."""
    if tensors is None:
        return None
    items = tensors.items() if isinstance(tensors, dict) else enumerate(tensors)
    digest = hashlib.sha256()
    for key, value in sorted(items, key=lambda item: str(item[0])):
        for tensor in value if isinstance(value, list) else [value]:
            digest.update(str(key).encode() + tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def _finish_run(model: Twin, recordings: list[Recording], out: Path, history: list[dict], record: dict,
                progress: bool) -> dict:
    """Rank 0 after training: the curve, the ranks' record, metrics of the best weights, fidelity."""
    plot_training_curve(history, out / "training_curve.png")
    checkpoint.write_json(out / "processes.json", record)
    best, _ = checkpoint.load_run(out)
    results = evaluate(best.to(next(model.parameters()).device), recordings, out, progress=progress)
    checkpoint.write_json(out / "metrics.json", results)
    write_fidelity(out, recordings)
    return results
