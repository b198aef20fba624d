"""Metrics against independent numpy computations and known answers."""

import numpy as np
import pytest

from twinserve.training import metrics

BURN = metrics.BURN_IN


def repeated_data(clips=3, repeats=10, frames=120, neurons=5, noise=1.0, seed=0):
    """Trials (T, N) of `clips` clips × `repeats` repeats: a clip signal plus independent noise."""
    rng = np.random.default_rng(seed)
    signals = [rng.gamma(2.0, 1.0, size=(frames, neurons)) for _ in range(clips)]
    trials, expected, groups = [], [], []
    for c, signal in enumerate(signals):
        groups.append(list(range(len(trials), len(trials) + repeats)))
        for _ in range(repeats):
            trials.append(signal + noise * rng.standard_normal(signal.shape))
            expected.append(signal.copy())
    return trials, expected, groups


def test_single_trial_correlation_matches_numpy_corrcoef():
    trials, expected, _ = repeated_data()
    rng = np.random.default_rng(1)
    predictions = [e + rng.standard_normal(e.shape) for e in expected]
    got = metrics.single_trial_correlation(trials, predictions)
    r = np.concatenate([t[BURN:] for t in trials])
    p = np.concatenate([t[BURN:] for t in predictions])
    want = [np.corrcoef(r[:, n], p[:, n])[0, 1] for n in range(r.shape[1])]
    np.testing.assert_allclose(got, want, rtol=1e-10)


def test_perfect_prediction_scores_one():
    trials, _, groups = repeated_data(noise=0.0)
    np.testing.assert_allclose(metrics.single_trial_correlation(trials, trials), 1.0)
    np.testing.assert_allclose(metrics.correlation_to_average(trials, trials, groups), 1.0)
    np.testing.assert_allclose(metrics.cc_norm(trials, trials, groups), 1.0)
    noisy, _, groups = repeated_data(noise=0.5)
    np.testing.assert_allclose(metrics.single_trial_correlation(noisy, noisy), 1.0)


def test_correlations_unchanged_by_positive_affine_maps():
    trials, expected, groups = repeated_data()
    rng = np.random.default_rng(2)
    predictions = [e + 0.5 * rng.standard_normal(e.shape) for e in expected]
    mapped = [3.0 * p + 7.0 for p in predictions]
    for name in ("correlation_to_average", "cc_norm"):
        f = getattr(metrics, name)
        np.testing.assert_allclose(f(trials, mapped, groups), f(trials, predictions, groups), rtol=1e-10)
    np.testing.assert_allclose(metrics.single_trial_correlation(trials, mapped),
                               metrics.single_trial_correlation(trials, predictions), rtol=1e-10)
    flipped = metrics.single_trial_correlation(trials, [-p for p in predictions])
    np.testing.assert_allclose(flipped, -metrics.single_trial_correlation(trials, predictions), rtol=1e-10)


def test_nan_trials_and_padding_are_skipped():
    trials, expected, groups = repeated_data()
    rng = np.random.default_rng(3)
    predictions = [e + rng.standard_normal(e.shape) for e in expected]
    base = metrics.single_trial_correlation(trials, predictions)
    nan_trial = np.full_like(trials[0], np.nan)
    with_nan = metrics.single_trial_correlation(trials + [trials[0]], predictions + [nan_trial])
    np.testing.assert_allclose(with_nan, base, rtol=1e-10)
    padded_r = [np.concatenate([t, np.full((20, t.shape[1]), np.nan)]) for t in trials]
    padded_p = [np.concatenate([p, np.full((20, p.shape[1]), np.nan)]) for p in predictions]
    np.testing.assert_allclose(metrics.single_trial_correlation(padded_r, padded_p), base, rtol=1e-10)
    np.testing.assert_allclose(metrics.correlation_to_average(padded_r, padded_p, groups),
                               metrics.correlation_to_average(trials, predictions, groups), rtol=1e-10)
    skipped = [nan_trial if i == 0 else p for i, p in enumerate(predictions)]
    assert np.all(np.isfinite(metrics.fev_e(trials, skipped, groups)))


def test_burn_in_frames_are_ignored():
    trials, expected, groups = repeated_data()
    changed = [e.copy() for e in expected]
    for c in changed:
        c[:BURN] = 1e6
    np.testing.assert_allclose(metrics.single_trial_correlation(trials, changed),
                               metrics.single_trial_correlation(trials, expected))
    np.testing.assert_allclose(metrics.cc_norm(trials, changed, groups), metrics.cc_norm(trials, expected, groups))


def test_correlation_to_average_matches_numpy():
    trials, expected, groups = repeated_data()
    rng = np.random.default_rng(4)
    predictions = [e + rng.standard_normal(e.shape) for e in expected]
    mean_r = np.concatenate([np.mean([trials[i][BURN:] for i in g], 0) for g in groups])
    mean_p = np.concatenate([np.mean([predictions[i][BURN:] for i in g], 0) for g in groups])
    want = [np.corrcoef(mean_r[:, n], mean_p[:, n])[0, 1] for n in range(mean_r.shape[1])]
    np.testing.assert_allclose(metrics.correlation_to_average(trials, predictions, groups), want, rtol=1e-10)


def test_fev_e_matches_loop_definition_and_known_answer():
    trials, expected, groups = repeated_data(repeats=6, noise=0.8)
    rng = np.random.default_rng(5)
    predictions = [e + 0.3 * rng.standard_normal(e.shape) for e in expected]
    got = metrics.fev_e(trials, predictions, groups)
    for n in range(trials[0].shape[1]):
        r = np.array([[trials[i][BURN:, n] for i in g] for g in groups])  # (clips, K, T)
        p = np.array([[predictions[i][BURN:, n] for i in g] for g in groups])
        noise = r.var(1, ddof=1).mean()
        total = r.ravel().var(ddof=1)
        mse = ((r - p) ** 2).mean()
        assert got[n] == pytest.approx(1 - (mse - noise) / (total - noise), rel=1e-10)
    # Predicting the repeat average: MSE = noise·(K-1)/K, so FEVE = 1 + noise / (K (total - noise)).
    averages = [np.mean([trials[j] for j in g], 0) for g in groups for _ in g]
    r = np.array([[trials[i][BURN:] for i in g] for g in groups])
    noise = r.var(1, ddof=1).mean((0, 1))
    total = r.reshape(-1, r.shape[-1]).var(0, ddof=1)
    np.testing.assert_allclose(metrics.fev_e(trials, averages, groups), 1 + noise / (6 * (total - noise)), rtol=1e-10)


def test_cc_norm_of_true_signal_is_near_one_despite_noise():
    trials, expected, groups = repeated_data(clips=4, repeats=10, frames=400, noise=1.5)
    cc_abs = metrics.correlation_to_average(trials, expected, groups)
    normalized = metrics.cc_norm(trials, expected, groups)
    assert np.all(cc_abs < 0.97)
    np.testing.assert_allclose(normalized, 1.0, atol=0.05)


def test_mismatched_trials_raise():
    trials, expected, groups = repeated_data()
    with pytest.raises(ValueError, match="same non-zero number"):
        metrics.single_trial_correlation(trials, expected[:-1])
    with pytest.raises(ValueError, match="trial 0"):
        metrics.single_trial_correlation(trials, [e[:, :2] for e in expected])
