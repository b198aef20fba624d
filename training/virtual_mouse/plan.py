"""The trial plan of one recording: which clip each trial shows, in which tier, for how long.

Tiers follow SENSORIUM 2023: ``train`` (unique natural clips), ``oracle`` and ``live/final_test_main``
(natural clips × repeats), ``live_test_bonus`` (drifting gratings × repeats), ``final_test_bonus``
(flashing dots × repeats) and ``none`` (2 natural trials). Trials are shuffled so tiers interleave;
about 15% of each tier's trials are cut short (valid length 200..trial_frames−1,
NaN-padded on disk).

Clips are generated from ``numpy.random.default_rng(clip["key"])``: natural oracle/test/none clips,
gratings and dots are shared by all recordings of one seed; training clips are unique per recording.
"""
import numpy as np

from .family import Variant
from .stimuli import dot_movie, grating_movie, natural_movie

TIERS = ("train", "oracle", "live_test_main", "final_test_main", "live_test_bonus", "final_test_bonus", "none")
GENERATORS = {"natural": natural_movie, "grating": grating_movie, "dots": dot_movie}
SHORT_FRACTION, MIN_VALID_FRAMES = 0.15, 200


def clip_table(seed, recording, train_trials, oracle_clips, test_clips):
    """Clips of one recording: list of ``{clip_id, kind, tier, key}``; ``key`` seeds the generator."""
    shared = [("oracle", oracle_clips), ("live_test_main", test_clips), ("final_test_main", test_clips),
              ("none", 2)]
    clips = [("natural", "train", [seed, 1, recording, j]) for j in range(train_trials)]
    offset = 0
    for tier, count in shared:
        clips += [("natural", tier, [seed, 0, offset + j]) for j in range(count)]
        offset += count
    clips += [("grating", "live_test_bonus", [seed, 2, j]) for j in range(test_clips)]
    clips += [("dots", "final_test_bonus", [seed, 3, j]) for j in range(test_clips)]
    return [{"clip_id": i, "kind": kind, "tier": tier, "key": key} for i, (kind, tier, key) in enumerate(clips)]


def render_clip(clip, trial_frames, variant=Variant()):
    """Frames ``(trial_frames, H, W)`` float32 and generator parameters of one clip; natural movies
    with ``variant``'s movie statistics."""
    rng = np.random.default_rng(clip["key"])
    if clip["kind"] != "natural":
        return GENERATORS[clip["kind"]](rng, trial_frames)
    return natural_movie(rng, trial_frames, spectral_exponent=variant.spectral_exponent,
                         rms_contrast=variant.rms_contrast, pan_speed=variant.pan_speed, objects=variant.objects)


def trial_plan(rng, clips, repeats, trial_frames):
    """Shuffled trials: list of ``{trial, tier, kind, clip_id, valid_frames}``.

    ``train`` and ``none`` clips are shown once, all others ``repeats`` times.
    """
    trials = [{"tier": c["tier"], "kind": c["kind"], "clip_id": c["clip_id"], "valid_frames": trial_frames}
              for c in clips for _ in range(1 if c["tier"] in ("train", "none") else repeats)]
    shortest = min(MIN_VALID_FRAMES, 2 * trial_frames // 3)
    for tier in TIERS:
        members = [t for t in trials if t["tier"] == tier]
        for i in rng.choice(len(members), int(round(SHORT_FRACTION * len(members))), replace=False):
            members[i]["valid_frames"] = int(rng.integers(shortest, trial_frames))
    trials = [trials[i] for i in rng.permutation(len(trials))]
    return [{"trial": i, **t} for i, t in enumerate(trials)]
