"""Simulate virtual-mouse recordings and write them in the SENSORIUM 2023 on-disk layout.

    <out>/virtual-mouse-<i>/data/videos/<trial>.npy        float32 (36, 64, T)
                           data/responses/<trial>.npy     float32 (N, T)
                           data/behavior/<trial>.npy      float32 (2, T)  [pupil size, running speed]
                           data/pupil_center/<trial>.npy  float32 (2, T)  [x, y]
                           meta/trials/tiers.npy          str (n_trials,)
                           meta/neurons/unit_ids.npy, cell_motor_coordinates.npy
                           meta/statistics/<key>/all/{mean,std,min,max,median}.npy  (train tier, repeated along T)
                           truth/...                      ground truth (see ``truth.py``)

Time is the last axis on disk; short trials are NaN-padded at the end. Internally everything is
time-first and transposed once, here.
"""
import pathlib
import shutil
from dataclasses import dataclass, replace

import numpy as np
from tqdm import tqdm

from . import behavior, imaging, neurons, plan, truth
from .family import Variant
from .stimuli import HEIGHT, WIDTH

CHUNK_TRIALS = 8
SKIP_FRAMES = 50  # first frames of each trial left out when calibrating the noise (as the metrics do)
STATISTICS = {"mean": np.mean, "std": np.std, "min": np.min, "max": np.max, "median": np.median}


@dataclass
class Recording:
    """One simulated recording, time-first: arrays are ``(n_trials, T, ...)``, full length (unpadded)."""
    name: str
    population: neurons.Population
    animal: behavior.Animal
    clips: list          # clip table entries, each with "frames" (T, H, W) and "params" added
    trials: list         # trial plan entries
    behavior: np.ndarray       # (n, T, 2) [pupil size, running speed]
    pupil_center: np.ndarray   # (n, T, 2) [x, y]
    responses: np.ndarray      # (n, T, N) observed
    expected: np.ndarray       # (n, T, N) expected observed response
    unit_ids: np.ndarray       # (N,)
    coordinates: np.ndarray    # (N, 3) µm


def motor_coordinates(rng, rf_center, scatter=1.5, extra=None):
    """Cortical positions ``(N, 3)`` µm: a rotated ~25 µm/px retinotopic map of ``rf_center`` plus a
    scatter of ``scatter`` RF pixels; with ``scatter`` None no retinotopy (the map of a shuffled
    ``rf_center``, drawn with the Generator ``extra``)."""
    angle, scale = rng.uniform(0, 2 * np.pi), rng.uniform(22.0, 28.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    if scatter is None:
        shuffle = extra if extra is not None else np.random.default_rng(0)
        rf_center = rf_center[shuffle.permutation(len(rf_center))]
    centred = rf_center - np.array([WIDTH, HEIGHT]) / 2
    xy = (scale * centred @ rotation.T + rng.uniform(300, 900, 2)
          + rng.normal(0, (scatter or 1.5) * scale, rf_center.shape))
    depth = rng.uniform(100.0, 400.0, len(rf_center))
    return np.column_stack([xy, depth]).astype(np.float32)


def simulate_recording(name, seed, index, n_neurons, clips, trials, trial_frames, bar, variant=Variant()):
    """Draw one mouse from ``variant``, show it the planned trials and record responses; returns a ``Recording``."""
    rng, extra = np.random.default_rng([seed, 100, index]), np.random.default_rng([seed, 103, index])
    animal = behavior.sample_animal(rng, variant)
    pop = neurons.sample_population(rng, n_neurons, animal.eye_center, variant, extra)
    trial_behavior = [behavior.sample_trial(rng, animal, trial_frames) for _ in trials]
    beh = np.stack([b for b, _ in trial_behavior])
    pupil = np.stack([p for _, p in trial_behavior])
    train = np.array([t["tier"] == "train" for t in trials])
    valid = np.arange(trial_frames) < np.array([t["valid_frames"] for t in trials])[:, None]  # (n, T)
    train_behavior = beh[train][valid[train]]
    pop = replace(pop, behavior_mean=train_behavior.mean(0), behavior_std=train_behavior.std(0))

    frames = {c["clip_id"]: c["frames"] for c in clips}
    drive = np.empty((len(trials), trial_frames, n_neurons), np.float32)
    for start in range(0, len(trials), CHUNK_TRIALS):
        batch = slice(start, start + CHUNK_TRIALS)
        video = np.stack([frames[t["clip_id"]] for t in trials[batch]])
        drive[batch] = neurons.raw_drive(pop, video, pupil[batch])
        bar.update(len(video))
    pop = replace(pop, drive_norm=drive[train][valid[train]].mean(0))
    rates = neurons.rates_from_drive(pop, drive, beh)
    mean_rate = pop.baseline + pop.amplitude  # nominal; sets the pre-trial calcium
    noise_free = imaging.expected_response(rates, pop.calcium_tau, mean_rate, 0.0)
    # fluorescence noise per neuron so that single-trial correlations on the oracle tier ≈ reliability
    oracle = np.array([t["tier"] == "oracle" for t in trials])
    reference = oracle if oracle.any() else np.array([t["kind"] == "natural" for t in trials])
    calibration = reference[:, None] & valid & (np.arange(trial_frames) >= SKIP_FRAMES)
    noise_std = imaging.noise_std_for_reliability(
        noise_free[calibration], rates[calibration].mean(0), pop.calcium_tau, pop.reliability, trial_frames,
        SKIP_FRAMES)
    pop = replace(pop, noise_std=noise_std)
    noise = np.random.default_rng([seed, 101, index])
    return Recording(
        name=name, population=pop, animal=animal, clips=clips, trials=trials, behavior=beh,
        pupil_center=pupil, responses=imaging.sample_response(noise, rates, pop.calcium_tau, mean_rate, noise_std),
        expected=noise_free + imaging.noise_mean(noise_std),
        unit_ids=np.sort(rng.choice(np.arange(1, 10 * n_neurons + 1), n_neurons, replace=False)).astype(np.int64),
        coordinates=motor_coordinates(rng, pop.rf_center, variant.retinotopy_scatter, extra))


def time_last(x, valid_frames):
    """Time-first ``(T, ...)`` → float32 time-last ``(..., T)``, NaN from ``valid_frames`` on."""
    out = np.moveaxis(np.asarray(x, dtype=np.float32), 0, -1).copy()
    out[..., valid_frames:] = np.nan
    return out


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


def write_data(root, rec, bar):
    """``data/<key>/<trial>.npy`` for the four keys and ``truth/expected/<trial>.npy``."""
    frames = {c["clip_id"]: c["frames"] for c in rec.clips}
    for i, trial in enumerate(rec.trials):
        arrays = {"data/videos": frames[trial["clip_id"]], "data/responses": rec.responses[i],
                  "data/behavior": rec.behavior[i], "data/pupil_center": rec.pupil_center[i],
                  "truth/expected": rec.expected[i]}
        for folder, array in arrays.items():
            save(root / folder / f"{trial['trial']}.npy", time_last(array, trial["valid_frames"]))
        bar.update(1)


def write_meta(root, rec, trial_frames):
    """``meta/trials``, ``meta/neurons`` and train-tier ``meta/statistics`` (repeated along time)."""
    save(root / "meta/trials/tiers.npy", np.array([t["tier"] for t in rec.trials], dtype="<U16"))
    save(root / "meta/neurons/unit_ids.npy", rec.unit_ids)
    save(root / "meta/neurons/cell_motor_coordinates.npy", rec.coordinates)
    train = [i for i, t in enumerate(rec.trials) if t["tier"] == "train"]
    frames = {c["clip_id"]: c["frames"] for c in rec.clips}
    per_key = {"videos": [frames[rec.trials[i]["clip_id"]] for i in train],
               "responses": rec.responses[train], "behavior": rec.behavior[train],
               "pupil_center": rec.pupil_center[train]}
    for key, arrays in per_key.items():
        values = np.concatenate([a[:rec.trials[i]["valid_frames"]] for i, a in zip(train, arrays)])
        for stat, function in STATISTICS.items():
            summary = function(values.astype(np.float64), axis=0).astype(np.float32)
            save(root / f"meta/statistics/{key}/all/{stat}.npy",
                 np.repeat(summary[..., None], trial_frames, axis=-1))


def synthesize(out, recordings=2, neurons=300, train_minutes=6.0, seed=0, trial_frames=300, repeats=10,
               oracle_clips=6, test_clips=2, progress=True, variant=Variant()):
    """Write ``recordings`` virtual-mouse folders under ``out`` and return their paths.

    ``variant`` (``family.Variant``): the distributions every generative choice is drawn from; the
    default is the original virtual mouse, ``family.draw_variant(k)`` member k of the family.
    Recording i has ``round(neurons * (1 + 0.15 i))`` neurons, its own behaviour and its own training
    clips; ``int(train_minutes * 60 * 30 / trial_frames)`` training trials; ``oracle_clips`` natural
    clips × ``repeats`` (oracle), ``test_clips`` × ``repeats`` for each test tier, 2 ``none`` trials.
    """
    out = pathlib.Path(out)
    train_trials = int(train_minutes * 60 * 30 / trial_frames)
    n_trials = train_trials + (oracle_clips + 4 * test_clips) * repeats + 2
    existing = [p for p in (out / f"virtual-mouse-{i}" for i in range(recordings)) if p.exists()]
    if existing:
        raise FileExistsError(f"{existing[0]}: already exists; choose another --out or remove it")
    paths = []
    with tqdm(total=2 * recordings * n_trials, desc="virtual mouse", unit="trial-step",  # simulate + write
              disable=not progress) as bar:
        for index in range(recordings):
            name = f"virtual-mouse-{index}"
            clips = plan.clip_table(seed, index, train_trials, oracle_clips, test_clips)
            for clip in clips:
                clip["frames"], clip["params"] = plan.render_clip(clip, trial_frames, variant)
            trials = plan.trial_plan(np.random.default_rng([seed, 102, index]), clips, repeats, trial_frames)
            n_neurons = int(round(neurons * (1 + 0.15 * index)))
            bar.set_description(f"{name}: simulating")
            rec = simulate_recording(name, seed, index, n_neurons, clips, trials, trial_frames, bar, variant)
            root, partial = out / name, out / f".{name}.partial"
            shutil.rmtree(partial, ignore_errors=True)
            bar.set_description(f"{name}: writing")
            write_data(partial, rec, bar)
            write_meta(partial, rec, trial_frames)
            truth.write_truth(partial / "truth", rec, variant)
            partial.rename(root)  # a crash never leaves a half-written recording under its real name
            paths.append(root)
    return paths
