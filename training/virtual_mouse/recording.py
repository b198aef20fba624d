"""One virtual-mouse recording, simulated and written trial by trial: memory does not grow with its length.

Three quantities need the whole recording before a response can be drawn: the mean drive on the train
tier (``drive_norm``), the fluorescence noise that calibrates the ceiling (from the oracle tier), and
the random stream, which draws the spikes of every trial before the noise of any. So a recording is
written in passes over its trials, with a scratch array ``(n_trials, T, N)`` float32 on disk between them:

1. drive: render each clip, write its video, compute the drive (→ scratch) and sum the train tier's;
2. calibrate: the reference tier's expected responses (computed twice: mean, then variance) → noise std;
3. spikes: rates → Poisson spikes → noise-free imaging samples (→ the trial's first scratch rows);
   expected responses, behaviour and pupil centre → files;
4. noise: Gamma fluorescence noise on the samples → responses → files;
then the train tier's statistics, read back from the files a block of neurons (or pixels) at a time.
Reductions add rows in numpy's order (``streaming``): the files hold the same bytes as a simulation of
the whole recording in memory at once.
"""
import os
import pathlib
import shutil
from dataclasses import dataclass, replace

import numpy as np

from . import behavior, imaging, neurons, plan, truth
from .family import Variant
from .stimuli import HEIGHT, WIDTH
from .streaming import ColumnSum, column_variance, file_statistics

CHUNK_TRIALS = 8  # trials whose retinal images go through one matrix product (its bits depend on it)
SKIP_FRAMES = 50  # first frames of each trial left out when calibrating the noise (as the metrics do)
STATISTICS = {"mean": np.mean, "std": np.std, "min": np.min, "max": np.max, "median": np.median}
EXPECTED = ("all", "test", "none")  # which trials get truth/expected/<trial>.npy: all, all but train, none
SCRATCH = "scratch.f32"


@dataclass(frozen=True)
class Job:
    """One recording to write (picklable, for a worker process)."""
    out: pathlib.Path
    index: int
    seed: int
    n_neurons: int
    train_trials: int
    trial_frames: int
    repeats: int
    oracle_clips: int
    test_clips: int
    variant: Variant
    expected: str = "all"

    @property
    def name(self):
        return f"virtual-mouse-{self.index}"

    @property
    def n_trials(self):
        return self.train_trials + (self.oracle_clips + 4 * self.test_clips) * self.repeats + 2


@dataclass
class Recording:
    """One simulated recording without its responses; behaviour is time-first, ``(n_trials, T, 2)``."""
    name: str
    population: neurons.Population
    animal: behavior.Animal
    clips: list          # clip table entries; "params" added once rendered
    trials: list         # trial plan entries
    behavior: np.ndarray       # (n, T, 2) [pupil size, running speed]
    pupil_center: np.ndarray   # (n, T, 2) [x, y]
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


def draw_recording(job, clips, trials):
    """The mouse of ``job``: animal, neurons (not yet calibrated to drive and noise), behaviour, ids."""
    rng, extra = np.random.default_rng([job.seed, 100, job.index]), np.random.default_rng([job.seed, 103, job.index])
    animal = behavior.sample_animal(rng, job.variant)
    pop = neurons.sample_population(rng, job.n_neurons, animal.eye_center, job.variant, extra)
    trial_behavior = [behavior.sample_trial(rng, animal, job.trial_frames) for _ in trials]
    beh = np.stack([b for b, _ in trial_behavior])
    train = np.array([t["tier"] == "train" for t in trials])
    train_behavior = beh[train][valid_mask(trials, job.trial_frames)[train]]
    pop = replace(pop, behavior_mean=train_behavior.mean(0), behavior_std=train_behavior.std(0))
    unit_ids = np.sort(rng.choice(np.arange(1, 10 * job.n_neurons + 1), job.n_neurons, replace=False))
    return Recording(name=job.name, population=pop, animal=animal, clips=clips, trials=trials, behavior=beh,
                     pupil_center=np.stack([p for _, p in trial_behavior]), unit_ids=unit_ids.astype(np.int64),
                     coordinates=motor_coordinates(rng, pop.rf_center, job.variant.retinotopy_scatter, extra))


def valid_mask(trials, trial_frames):
    """``(n_trials, T)`` bool: frames before each trial's ``valid_frames``."""
    return np.arange(trial_frames) < np.array([t["valid_frames"] for t in trials])[:, None]


def time_last(x, valid_frames):
    """Time-first ``(T, ...)`` → float32 time-last ``(..., T)``, NaN from ``valid_frames`` on."""
    out = np.moveaxis(np.asarray(x, dtype=np.float32), 0, -1).copy()
    out[..., valid_frames:] = np.nan
    return out


def save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, array)


class Clips:
    """Frames ``(T, H, W)`` of each trial's clip, rendered when first shown; clips shown more than once
    are kept, the others forgotten. Rendering adds the clip's ``params``."""

    def __init__(self, clips, trials, trial_frames, variant):
        self.clips, self.trial_frames, self.variant, self.kept = clips, trial_frames, variant, {}
        shown = np.bincount([t["clip_id"] for t in trials], minlength=len(clips))
        self.repeated = {i for i, count in enumerate(shown) if count > 1}

    def frames(self, clip_id):
        if clip_id in self.kept:
            return self.kept[clip_id]
        clip = self.clips[clip_id]
        frames, clip["params"] = plan.render_clip(clip, self.trial_frames, self.variant)
        if clip_id in self.repeated:
            self.kept[clip_id] = frames
        return frames


class Scratch:
    """A float32 array ``(n_trials, T, N)`` in a file, a trial at a time: read and written through the
    file, never mapped, so that it does not count in the process's memory."""

    def __init__(self, path, shape):
        self.path, self.shape, self.trial_bytes = path, shape, 4 * shape[1] * shape[2]
        self.descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)

    def write(self, i, rows):
        """Rows ``(R, N)`` (R ≤ T) → the first R rows of trial ``i``."""
        data = np.ascontiguousarray(rows, np.float32)
        if os.pwrite(self.descriptor, data, i * self.trial_bytes) != data.nbytes:
            raise OSError(f"{self.path}: short write")

    def read(self, i, rows):
        """The first ``rows`` rows of trial ``i``, ``(rows, N)`` float32."""
        data = os.pread(self.descriptor, 4 * rows * self.shape[2], i * self.trial_bytes)
        return np.frombuffer(data, np.float32).reshape(rows, self.shape[2]).copy()

    def close(self):
        os.close(self.descriptor)
        self.path.unlink()


def drive_pass(root, rec, clips, scratch, bar):
    """Pass 1: videos → files, drive ``(T, N)`` per trial → ``scratch``; returns the population with
    ``drive_norm``, the mean drive over the train tier's valid frames."""
    pop, filters, norm = rec.population, neurons.retinal_filters(rec.population), ColumnSum()
    for start in range(0, len(rec.trials), CHUNK_TRIALS):
        batch = rec.trials[start:start + CHUNK_TRIALS]
        video = np.stack([clips.frames(t["clip_id"]) for t in batch])
        for trial, frames in zip(batch, video):
            save(root / f"data/videos/{trial['trial']}.npy", time_last(frames, trial["valid_frames"]))
        drive = neurons.raw_drive(pop, video, rec.pupil_center[start:start + len(batch)], filters).astype(np.float32)
        for j, trial_drive in enumerate(drive):
            scratch.write(start + j, trial_drive)
        for trial, trial_drive in zip(batch, drive):
            if trial["tier"] == "train":
                norm.add(trial_drive[:trial["valid_frames"]])
        bar.update(len(batch))
    return replace(pop, drive_norm=norm.mean())


def trial_rates(pop, rec, scratch, i):
    """Expected rates ``(1, T, N)`` Hz of trial ``i`` from its drive in ``scratch``."""
    return neurons.rates_from_drive(pop, scratch.read(i, scratch.shape[1])[None], rec.behavior[i:i + 1])


def calibrate(pop, rec, scratch, trial_frames):
    """Pass 2: the population with ``noise_std`` set so that single-trial correlations with the expected
    response on the oracle tier (else the natural trials), frames ≥ ``SKIP_FRAMES``, ≈ ``reliability``."""
    oracle = [i for i, t in enumerate(rec.trials) if t["tier"] == "oracle"]
    reference = oracle or [i for i, t in enumerate(rec.trials) if t["kind"] == "natural"]
    mean_rate = pop.baseline + pop.amplitude  # nominal; sets the pre-trial calcium

    def calibration_frames():
        """``(rates, noise-free expected responses)``, each ``(F_i, N)``, of each reference trial."""
        for i in reference:
            frames = slice(SKIP_FRAMES, rec.trials[i]["valid_frames"])
            rates = trial_rates(pop, rec, scratch, i)
            yield rates[0, frames], imaging.expected_response(rates, pop.calcium_tau, mean_rate, 0.0)[0, frames]

    rates, signal = ColumnSum(), ColumnSum()
    for rate, response in calibration_frames():
        rates.add(rate)
        signal.add(response)
    variance = column_variance((response for _, response in calibration_frames()), signal.mean())
    noise_std = imaging.noise_std_for_reliability(variance, rates.mean(), pop.calcium_tau, pop.reliability,
                                                  trial_frames, SKIP_FRAMES)
    return replace(pop, noise_std=noise_std)


def observe(root, pop, rec, scratch, seed, index, expected, bar):
    """Passes 3 and 4: spikes of every trial, then noise of every trial (one random stream, in that
    order) → ``data/responses``, ``data/behavior``, ``data/pupil_center`` and ``truth/expected``."""
    noise = np.random.default_rng([seed, 101, index])
    mean_rate, trial_frames = pop.baseline + pop.amplitude, scratch.shape[1]
    n_samples = imaging.sample_count(trial_frames)
    for i, trial in enumerate(rec.trials):
        rates = trial_rates(pop, rec, scratch, i)
        # the drive of trial i is no longer needed: its rows take the samples
        scratch.write(i, imaging.spike_samples(noise, rates, pop.calcium_tau, mean_rate)[0])
        arrays = {"data/behavior": rec.behavior[i], "data/pupil_center": rec.pupil_center[i]}
        if expected == "all" or (expected == "test" and trial["tier"] != "train"):
            arrays["truth/expected"] = (imaging.expected_response(rates, pop.calcium_tau, mean_rate, 0.0)[0]
                                        + imaging.noise_mean(pop.noise_std))
        for folder, array in arrays.items():
            save(root / folder / f"{trial['trial']}.npy", time_last(array, trial["valid_frames"]))
        bar.update(1)
    for i, trial in enumerate(rec.trials):
        responses = imaging.add_noise(noise, scratch.read(i, n_samples)[None], pop.noise_std, trial_frames)
        save(root / f"data/responses/{trial['trial']}.npy", time_last(responses[0], trial["valid_frames"]))
        bar.update(1)


def write_meta(root, rec, trial_frames):
    """``meta/trials``, ``meta/neurons`` and train-tier ``meta/statistics`` (repeated along time), the
    statistics of videos and responses read back from the written files."""
    save(root / "meta/trials/tiers.npy", np.array([t["tier"] for t in rec.trials], dtype="<U16"))
    save(root / "meta/neurons/unit_ids.npy", rec.unit_ids)
    save(root / "meta/neurons/cell_motor_coordinates.npy", rec.coordinates)
    train = [t for t in rec.trials if t["tier"] == "train"]
    lengths = [t["valid_frames"] for t in train]
    per_key = {key: file_statistics([root / f"data/{key}/{t['trial']}.npy" for t in train], lengths, STATISTICS)
               for key in ("videos", "responses")}
    for key, arrays in (("behavior", rec.behavior), ("pupil_center", rec.pupil_center)):
        values = np.concatenate([arrays[t["trial"]][:t["valid_frames"]] for t in train]).astype(np.float64)
        per_key[key] = {stat: function(values, axis=0).astype(np.float32) for stat, function in STATISTICS.items()}
    for key, summaries in per_key.items():
        for stat, summary in summaries.items():
            save(root / f"meta/statistics/{key}/all/{stat}.npy", np.repeat(summary[..., None], trial_frames, axis=-1))


def write_recording(job, bar):
    """Simulate the recording ``job`` and write it to ``<out>/virtual-mouse-<i>`` (via a ``.partial``
    folder, renamed when complete); ``bar.update`` is told of every trial of passes 1, 3 and 4."""
    if job.expected not in EXPECTED:
        raise ValueError(f"expected must be one of {EXPECTED}, not {job.expected!r}")
    root, partial = job.out / job.name, job.out / f".{job.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    clips = plan.clip_table(job.seed, job.index, job.train_trials, job.oracle_clips, job.test_clips)
    trials = plan.trial_plan(np.random.default_rng([job.seed, 102, job.index]), clips, job.repeats, job.trial_frames)
    rec = draw_recording(job, clips, trials)
    scratch = Scratch(partial / SCRATCH, (len(trials), job.trial_frames, job.n_neurons))
    pop = drive_pass(partial, rec, Clips(clips, trials, job.trial_frames, job.variant), scratch, bar)
    pop = calibrate(pop, rec, scratch, job.trial_frames)
    rec = replace(rec, population=pop)
    observe(partial, pop, rec, scratch, job.seed, job.index, job.expected, bar)
    scratch.close()
    write_meta(partial, rec, job.trial_frames)
    truth.write_truth(partial / "truth", rec, job.variant)
    partial.rename(root)  # a crash never leaves a half-written recording under its real name
    return root
