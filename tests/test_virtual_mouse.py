"""The virtual mouse (training/virtual_mouse): on-disk layout, calibration, determinism, ground truth.

The layout and calibration checks read the files back with plain numpy only, as a reader written for
the real SENSORIUM 2023 release would.
"""
import json
from collections import Counter, defaultdict

import numpy as np
import pytest

from twinserve.training.virtual_mouse import synthesize

KEYS = ("videos", "responses", "behavior", "pupil_center")
TIER_COUNTS = {"train": 36, "oracle": 60, "live_test_main": 20, "final_test_main": 20,
               "live_test_bonus": 20, "final_test_bonus": 20, "none": 2}
SKIP = 50


@pytest.fixture(scope="module")
def recordings(default_mouse):
    return default_mouse


def load(path):
    return np.load(path, allow_pickle=False)


def valid_length(array):
    """Number of leading time steps (last axis) without any NaN."""
    finite = ~np.isnan(array.reshape(-1, array.shape[-1])).any(0)
    return int(np.argmin(finite)) if not finite.all() else array.shape[-1]


def stimuli(rec):
    return json.loads((rec / "truth/stimuli.json").read_text())["trials"]


def correlation(a, b):
    """Per-row Pearson correlation of ``a, b (N, F)``."""
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def oracle_frames(rec, folder, leave_one_out=False):
    """``(N, F)``: the oracle tier's valid frames from ``SKIP`` on, trials concatenated in file order.

    With ``leave_one_out``, each trial's frames are replaced by the mean over the other repeats of its
    clip (repeats found through truth/stimuli.json).
    """
    trials = [t for t in stimuli(rec) if t["tier"] == "oracle"]
    arrays = {t["trial"]: load(rec / f"{folder}/{t['trial']}.npy") for t in trials}
    parts = []
    for trial in trials:
        array = arrays[trial["trial"]]
        keep = ~np.isnan(array).any(0)
        keep[:SKIP] = False
        if leave_one_out:
            others = [arrays[t["trial"]] for t in trials if t["clip_id"] == trial["clip_id"] and t is not trial]
            array = np.nanmean(others, axis=0)
        parts.append(array[:, keep])
    return np.concatenate(parts, axis=1)


def test_layout_reads_back_with_plain_numpy(recordings):
    assert [p.name for p in recordings] == ["virtual-mouse-0", "virtual-mouse-1"]
    neuron_counts = []
    for rec in recordings:
        tiers = load(rec / "meta/trials/tiers.npy")
        assert tiers.dtype.kind == "U" and tiers.ndim == 1
        assert Counter(tiers.tolist()) == TIER_COUNTS
        n_trials = len(tiers)
        assert (tiers[1:] != tiers[:-1]).sum() > n_trials / 2  # interleaved, not contiguous blocks
        unit_ids = load(rec / "meta/neurons/unit_ids.npy")
        n = len(unit_ids)
        neuron_counts.append(n)
        assert unit_ids.dtype.kind == "i" and len(np.unique(unit_ids)) == n
        coords = load(rec / "meta/neurons/cell_motor_coordinates.npy")
        assert coords.shape == (n, 3) and coords.dtype.kind == "f"
        assert np.all((coords[:, 2] >= 100) & (coords[:, 2] <= 400))
        for key in KEYS:
            assert sorted(p.name for p in (rec / "data" / key).iterdir()) == sorted(
                f"{i}.npy" for i in range(n_trials))
        shapes = {"videos": (36, 64, 300), "responses": (n, 300), "behavior": (2, 300), "pupil_center": (2, 300)}
        lengths = defaultdict(list)
        for i in range(n_trials):
            arrays = {key: load(rec / f"data/{key}/{i}.npy") for key in KEYS}
            arrays["expected"] = load(rec / f"truth/expected/{i}.npy")
            length = valid_length(arrays["responses"])
            for key, array in arrays.items():
                assert array.dtype == np.float32
                assert array.shape == shapes.get(key, shapes["responses"])
                assert np.isfinite(array[..., :length]).all() and np.isnan(array[..., length:]).all()
            assert np.all(arrays["responses"][:, :length] >= 0)
            video = arrays["videos"][..., :length]
            assert video.min() >= 0 and video.max() <= 255 and np.array_equal(video, np.rint(video))
            assert np.all(arrays["behavior"][1, :length] >= 0)
            lengths[tiers[i]].append(length)
        short = {tier: sum(x < 300 for x in ls) for tier, ls in lengths.items()}
        assert 0.10 <= sum(short.values()) / n_trials <= 0.20
        assert sum(count > 0 for count in short.values()) >= 4
        assert min(min(ls) for ls in lengths.values()) >= 200
        for key in KEYS:
            for stat in ("mean", "std", "min", "max", "median"):
                array = load(rec / f"meta/statistics/{key}/all/{stat}.npy")
                assert array.shape == {**shapes, "responses": (n, 300)}[key]
                assert np.allclose(array, array[..., :1])  # repeated along time
        train = np.flatnonzero(tiers == "train")
        responses = np.concatenate([load(rec / f"data/responses/{i}.npy") for i in train], axis=1)
        stored = load(rec / "meta/statistics/responses/all/mean.npy")[:, 0]
        assert np.allclose(stored, np.nanmean(responses, axis=1), rtol=1e-4)
        videos = np.concatenate([load(rec / f"data/videos/{i}.npy") for i in train], axis=2)
        assert 110 < np.nanmean(videos) < 145
    assert neuron_counts == [300, 345]


def test_repeats_share_frames_but_not_behaviour(recordings):
    for rec in recordings:
        by_clip = defaultdict(list)
        for trial in stimuli(rec):
            by_clip[trial["clip_id"]].append(trial["trial"])
        repeated = [trials for trials in by_clip.values() if len(trials) > 1]
        assert len(repeated) == 6 + 4 * 2 and all(len(t) == 10 for t in repeated)
        for trials in repeated[:6]:
            videos = [load(rec / f"data/videos/{i}.npy") for i in trials]
            behaviors = [load(rec / f"data/behavior/{i}.npy") for i in trials]
            common = min(valid_length(v) for v in videos)
            for video, beh in zip(videos[1:], behaviors[1:]):
                assert np.array_equal(video[..., :common], videos[0][..., :common])
                assert not np.allclose(beh[:, :common], behaviors[0][:, :common])
        kinds = {t["tier"]: t["kind"] for t in stimuli(rec)}
        assert kinds["live_test_bonus"] == "grating" and kinds["final_test_bonus"] == "dots"
        assert {kinds[t] for t in ("train", "oracle", "live_test_main", "final_test_main", "none")} == {"natural"}


def test_ceiling_is_calibrated_and_stimulus_driven(recordings):
    for rec in recordings:
        observed, expected = oracle_frames(rec, "data/responses"), oracle_frames(rec, "truth/expected")
        ceiling = correlation(expected, observed).mean()
        assert 0.35 <= ceiling <= 0.55, ceiling
        behavior = oracle_frames(rec, "data/behavior")
        design = np.column_stack([np.ones(behavior.shape[1]), behavior.T, behavior.T ** 2])

        def behaviour_fit(target):
            return (design @ np.linalg.lstsq(design, target.T, rcond=None)[0]).T

        # on single trials, the best behaviour-only model is far below the true model
        behaviour_only = correlation(behaviour_fit(observed), observed).mean()
        assert behaviour_only < 0.5 * ceiling, (behaviour_only, ceiling)
        # without noise: the expected response is mostly locked to the stimulus, not to behaviour
        stimulus_locked = correlation(expected, oracle_frames(rec, "truth/expected", leave_one_out=True)).mean()
        behaviour_part = correlation(expected, behaviour_fit(expected)).mean()
        assert behaviour_part < 0.4 * stimulus_locked, (behaviour_part, stimulus_locked)
        # from the data alone: the other repeats predict a trial far better than behaviour does
        repeat_average = correlation(observed, oracle_frames(rec, "data/responses", leave_one_out=True)).mean()
        assert repeat_average > 2 * behaviour_only, (repeat_average, behaviour_only)
        print(f"{rec.name}: ceiling {ceiling:.3f}, behaviour-only {behaviour_only:.3f}, other repeats "
              f"{repeat_average:.3f}; expected ~ behaviour {behaviour_part:.3f}, ~ stimulus {stimulus_locked:.3f}")
        rates = load(rec / "truth/neurons/baseline_rate.npy") + load(rec / "truth/neurons/amplitude.npy")
        assert 1.0 < rates.mean() < 8.0


def test_same_seed_same_files(tmp_path):
    """Same seed, same bytes, whether the recordings are written one after another or by two workers."""
    small = dict(recordings=2, neurons=20, train_minutes=0.5, repeats=2, oracle_clips=1, test_clips=1,
                 progress=False)
    first = synthesize(tmp_path / "a", seed=3, **small)
    second = synthesize(tmp_path / "b", seed=3, workers=2, **small)
    other = synthesize(tmp_path / "c", seed=4, **small)
    for a, b, c in zip(first, second, other):
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        for f in files:
            assert (a / f).read_bytes() == (b / f).read_bytes(), f
        assert (a / "data/responses/0.npy").read_bytes() != (c / "data/responses/0.npy").read_bytes()


def test_truth_is_consistent(recordings):
    for rec in recordings:
        truth = {p.stem: load(p) for p in (rec / "truth/neurons").glob("*.npy")}
        n = len(load(rec / "meta/neurons/unit_ids.npy"))
        for key in ("rf_center", "rf_sigma", "spatial_period", "orientation_deg", "preferred_direction_deg",
                    "osi", "dsi", "tuning_curve", "is_complex", "running_gain", "pupil_gain", "eye_gain",
                    "calcium_tau"):
            assert len(truth[key]) == n, key
        assert truth["tuning_curve"].shape == (n, 16) and truth["tuning_directions_deg"].shape == (16,)
        assert truth["is_complex"].dtype == bool and 0.3 < truth["is_complex"].mean() < 0.7
        x, y = truth["rf_center"].T
        assert np.all((x > 0) & (x < 63) & (y > 0) & (y < 35))
        assert np.all((truth["rf_sigma"] >= 2.5) & (truth["rf_sigma"] <= 5))
        assert np.all((truth["osi"] >= 0) & (truth["osi"] <= 1) & (truth["dsi"] >= 0) & (truth["dsi"] <= 1))
        orientation, preferred = truth["orientation_deg"], truth["preferred_direction_deg"]
        assert np.all((orientation >= 0) & (orientation < 180) & (preferred >= 0) & (preferred < 360))
        offset = (preferred - orientation) % 360
        assert np.all(np.isclose(offset, 0, atol=1e-3) | np.isclose(offset, 180, atol=1e-3))
        assert np.all(truth["tuning_curve"] > 0) and np.ptp(truth["eye_gain"]) == 0
        theta = np.deg2rad(truth["tuning_directions_deg"])
        curve = truth["tuning_curve"]
        peak = truth["tuning_directions_deg"][curve.argmax(1)]
        direction_error = np.abs((peak - preferred + 180) % 360 - 180)
        selective = truth["dsi"] > 0.2
        assert selective.sum() > 10 and np.all(direction_error[selective] <= 22.5)
        vector_orientation = np.rad2deg(np.angle(curve @ np.exp(2j * theta))) / 2 % 180
        orientation_error = np.abs((vector_orientation - orientation + 90) % 180 - 90)
        tuned = truth["osi"] > 0.2
        assert tuned.mean() > 0.5 and np.all(orientation_error[tuned] < 12)
        ds = truth["is_direction_selective"]
        assert np.median(truth["dsi"][ds]) > 3 * np.median(truth["dsi"][~ds])
        readme = (rec / "truth/README.md").read_text()
        assert "(cos θ, −sin θ)" in readme and "90° = upward" in readme
        recording = json.loads((rec / "truth/recording.json").read_text())
        assert np.isclose(recording["eye_gain"], truth["eye_gain"][0])


def test_tuning_matches_rendered_gratings():
    from twinserve.training.virtual_mouse import behavior, neurons, stimuli, tuning
    rng = np.random.default_rng(0)
    pop = neurons.sample_population(rng, 12, behavior.sample_animal(rng).eye_center)
    truth = tuning.true_tuning(pop)
    rest = np.tile(pop.behavior_mean, (tuning.PRESENTATION_FRAMES, 1))
    eye = np.tile(pop.eye_center, (tuning.PRESENTATION_FRAMES, 1))
    for d in (0, 5, 12):
        direction = tuning.TUNING_DIRECTIONS_DEG[d]
        for n in range(len(pop)):
            video = stimuli.drifting_grating(direction, pop.spatial_period[n], truth["tuning_tf_hz"][n],
                                             tuning.PRESENTATION_FRAMES)
            rates = neurons.expected_rates(pop, video, rest, eye)[tuning.SETTLE_FRAMES:, n].mean()
            assert np.isclose(rates, truth["tuning_curve"][n, d], rtol=1e-4)


def test_grating_drifts_toward_convention():
    from twinserve.training.virtual_mouse.stimuli import drifting_grating
    up = drifting_grating(90.0, 16.0, 30 / 16, 2)  # 1 px per frame; 90° = upward = toward row 0
    assert np.allclose(up[1, :-1], up[0, 1:])
    assert np.allclose(up[0], up[0, :, :1])  # horizontal bars: constant along each row
    right = drifting_grating(0.0, 16.0, 30 / 16, 2)  # 0° = rightward = toward higher columns
    assert np.allclose(right[1, :, 1:], right[0, :, :-1])


def test_imaging_is_causal_and_unbiased():
    from twinserve.training.virtual_mouse import imaging
    rng = np.random.default_rng(0)
    rates = rng.gamma(2.0, 2.0, (1, 300, 4)).astype(np.float32)
    tau, mean_rate, noise = np.full(4, 0.3), np.full(4, 4.0), np.full(4, 0.5, np.float32)
    expected = imaging.expected_response(rates, tau, mean_rate, noise)
    later = rates.copy()
    later[:, 150:] += 20.0
    changed = imaging.expected_response(later, tau, mean_rate, noise)
    assert np.array_equal(expected[:, :150], changed[:, :150]) and not np.allclose(expected[:, 150:], changed[:, 150:])
    samples = np.stack([imaging.sample_response(rng, rates, tau, mean_rate, noise) for _ in range(400)])
    assert samples.min() >= 0
    assert abs(samples.mean() - expected.mean()) < 0.01 * expected.mean()


def test_streamed_reductions_match_numpy_in_memory(tmp_path):
    from twinserve.training.virtual_mouse.streaming import ColumnSum, column_variance, file_statistics
    rng = np.random.default_rng(0)
    rows = (rng.gamma(2.0, 1.0, (700, 33)) ** 3).astype(np.float32)
    blocks = [rows[:250], rows[250:250], rows[250:251], rows[251:]]
    total = ColumnSum()
    for block in blocks:
        total.add(block)
    assert np.array_equal(total.mean(), rows.mean(0))  # the same bits, not just close
    assert np.array_equal(column_variance(blocks, total.mean()), rows.var(0))
    lengths = [300, 250, 280]
    trials = [rng.normal(size=(33, 300)).astype(np.float32) for _ in lengths]
    paths = [tmp_path / f"{i}.npy" for i in range(len(trials))]
    for path, trial in zip(paths, trials):
        np.save(path, trial)
    values = np.concatenate([t[:, :n].T for t, n in zip(trials, lengths)]).astype(np.float64)
    functions = {"mean": np.mean, "std": np.std, "median": np.median}
    for block_bytes in (1, 2**30):  # two channels per block, or all at once
        streamed = file_statistics(paths, lengths, functions, block_bytes=block_bytes)
        for name, function in functions.items():
            assert np.array_equal(streamed[name], function(values, axis=0).astype(np.float32)), name


def test_sensorium_scale_flag(tmp_path, capsys):
    """`--scale sensorium`: SENSORIUM neuron counts (+1% per recording) and 60 minutes unless overridden;
    `--expected test` leaves the train tier's expected responses out; sizes are checked before any work."""
    from twinserve.cli import main as twin
    from twinserve.training.virtual_mouse.recording import Job
    from twinserve.training.virtual_mouse.writer import recording_bytes

    out = tmp_path / "set"
    assert twin(["data", "synth", "--out", str(out), "--scale", "sensorium", "--neurons", "100", "--train-minutes",
                 "0.5", "--recordings", "2", "--expected", "test", "--quiet"]) == 0
    assert [len(load(rec / "meta/neurons/unit_ids.npy")) for rec in sorted(out.iterdir())] == [100, 101]
    tiers = load(out / "virtual-mouse-0/meta/trials/tiers.npy")
    written = sorted(int(p.stem) for p in (out / "virtual-mouse-0/truth/expected").iterdir())
    assert written == np.flatnonzero(tiers != "train").tolist() and (tiers == "train").sum() == 3

    huge = 100_000  # recordings of the scale's default size (7,900 neurons +1% each, 60 minutes): no disk holds them
    assert twin(["data", "synth", "--out", str(tmp_path / "huge"), "--scale", "sensorium", "--recordings", str(huge),
                 "--quiet"]) == 2
    jobs = [Job(out=out, index=i, seed=0, n_neurons=round(7900 * (1 + 0.01 * i)), train_trials=360, trial_frames=300,
                repeats=10, oracle_clips=6, test_clips=2, variant=None) for i in range(huge)]
    needed = sum(recording_bytes(job)[0] for job in jobs) + recording_bytes(jobs[-1])[1]  # files + one scratch
    assert f"need about {needed / 1e9:.1f} GB" in capsys.readouterr().err
    assert not (tmp_path / "huge").exists()
