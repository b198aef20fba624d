"""A second, independent writer of the SENSORIUM 2023 layout, unlike the virtual mouse in every
way the layout leaves open: float64 arrays, trials of different lengths, per-channel statistics,
non-contiguous unit ids, no retinotopy in the coordinates, withheld test responses, no truth."""

from pathlib import Path

import numpy as np

H, W = 36, 64


def write_other_recording(folder: Path, neurons: int = 23, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    tiers = ["train"] * 14 + ["oracle"] * 6 + ["final_test_main"] * 3 + ["none"]
    rng.shuffle(tiers)
    clip_of_oracle = {}
    filters = rng.standard_normal((neurons, H * W)) * (rng.random((neurons, H * W)) < 0.02)
    for key in ("videos", "responses", "behavior", "pupil_center"):
        (folder / "data" / key).mkdir(parents=True)
    sums = {k: [] for k in ("responses", "behavior", "pupil_center", "videos")}
    for i, tier in enumerate(tiers):
        frames = int(rng.integers(230, 330))
        if tier == "oracle":  # three clips, two repeats each
            clip = len(clip_of_oracle) % 3
            clip_of_oracle.setdefault(i, clip)
            video = np.random.default_rng(1000 + clip).uniform(0, 255, (frames, H, W))
        else:
            video = rng.uniform(0, 255, (frames, H, W))
        drive = np.maximum(video.reshape(frames, -1) @ filters.T / 255, 0)
        running = np.abs(rng.standard_normal(frames)).cumsum() % 20
        responses = rng.poisson(drive * (1 + 0.05 * running[:, None])).astype(np.float64)
        behavior = np.stack([rng.uniform(5, 9, frames), running])
        pupil = rng.normal([320.0, 240.0], 3.0, (frames, 2)).T
        pad = int(rng.integers(0, 20))
        arrays = {"videos": np.moveaxis(video, 0, -1), "responses": responses.T, "behavior": behavior,
                  "pupil_center": pupil}
        for key, array in arrays.items():
            padded = np.concatenate([array, np.full(array.shape[:-1] + (pad,), np.nan)], axis=-1)
            if key == "responses" and tier == "final_test_main":
                continue  # withheld, as for the competition mice
            np.save(folder / "data" / key / f"{i}.npy", padded)
            if tier == "train":
                sums[key].append(array.reshape(-1, array.shape[-1]))
    (folder / "meta/trials").mkdir(parents=True)
    np.save(folder / "meta/trials/tiers.npy", np.array(tiers))
    (folder / "meta/neurons").mkdir(parents=True)
    np.save(folder / "meta/neurons/unit_ids.npy", rng.choice(10_000, neurons, replace=False))
    np.save(folder / "meta/neurons/cell_motor_coordinates.npy", rng.uniform(0, 500, (neurons, 3)))
    for key, parts in sums.items():
        values = np.concatenate(parts, axis=1)
        out = folder / "meta/statistics" / key / "all"
        out.mkdir(parents=True)
        for stat, f in [("mean", np.mean), ("std", np.std), ("min", np.min), ("max", np.max), ("median", np.median)]:
            value = f(values) if key == "videos" else f(values, axis=1)
            np.save(out / f"{stat}.npy", np.asarray(value))
    return folder
