"""The official scoring mode against an independent, per-neuron re-implementation of neuralpredictors'
`corr` (ε = 1e-8 added to population standard deviations, NaN counted as 0), as SENSORIUM 2023 scores."""

import numpy as np

from twinserve.training import metrics
from twinserve.training.evaluate import score

from test_metrics import BURN, repeated_data

EPS = 1e-8


def reference_corr(a: np.ndarray, b: np.ndarray) -> float:
    """One neuron: mean of the product of the two standardised series, each divided by (std + ε)."""
    za = (a - np.mean(a)) / (np.std(a) + EPS)
    zb = (b - np.mean(b)) / (np.std(b) + EPS)
    value = float(np.mean(za * zb))
    return 0.0 if np.isnan(value) else value


def reference_single_trial(responses, predictions) -> list[float]:
    return [reference_corr(np.concatenate([r[BURN:, n] for r in responses]),
                           np.concatenate([p[BURN:, n] for p in predictions]))
            for n in range(responses[0].shape[1])]


def reference_to_average(responses, predictions, groups) -> list[float]:
    result = []
    for n in range(responses[0].shape[1]):
        r = np.concatenate([sum(responses[i][BURN:, n] for i in g) / len(g) for g in groups])
        p = np.concatenate([sum(predictions[i][BURN:, n] for i in g) / len(g) for g in groups])
        result.append(reference_corr(r, p))
    return result


def predictions_with_degenerate_neurons(expected, seed=0):
    """Noisy predictions; neuron 0 constant everywhere, neuron 1 constant in every trial but one,
    neuron 2 varying by about ε only (where ε matters)."""
    rng = np.random.default_rng(seed)
    predictions = [e + rng.standard_normal(e.shape) for e in expected]
    for i, p in enumerate(predictions):
        p[:, 0] = 0.5
        p[:, 1] = 2.0 if i else 2.5
        p[:, 2] = 1.0 + 1e-8 * (p[:, 3] - 1.0)
    return predictions


def test_official_correlations_match_the_independent_implementation():
    trials, expected, groups = repeated_data(clips=3, repeats=4, frames=110, neurons=6)
    predictions = predictions_with_degenerate_neurons(expected)
    single = metrics.single_trial_correlation_official(trials, predictions)
    np.testing.assert_allclose(single, reference_single_trial(trials, predictions), rtol=0, atol=1e-6)
    average = metrics.correlation_to_average_official(trials, predictions, groups)
    np.testing.assert_allclose(average, reference_to_average(trials, predictions, groups), rtol=0, atol=1e-6)
    assert single[0] == average[0] == 0  # a constant prediction counts, as 0
    ours = metrics.single_trial_correlation(trials, predictions)
    assert np.isnan(ours[0]) and np.isfinite(ours[1:]).all()
    assert abs(single[2]) < 0.9 * abs(ours[2])  # ε shrinks the correlation of a nearly constant prediction
    np.testing.assert_allclose(single[3:], ours[3:], atol=1e-6)  # elsewhere ε changes nothing visible


def test_official_scores_count_constant_neurons_in_the_mean():
    trials, expected, groups = repeated_data(clips=2, repeats=3, frames=100, neurons=5)
    predictions = predictions_with_degenerate_neurons(expected, seed=1)
    per_neuron, summary = score(trials, predictions, groups)
    for name in ("single_trial_correlation", "correlation_to_average"):
        assert summary[f"{name}_official"] == np.mean(per_neuron[f"{name}_official"])
        assert np.isnan(per_neuron[name][0])
        assert summary[name] == np.nanmean(per_neuron[name]) != summary[f"{name}_official"]
    np.testing.assert_allclose(summary["single_trial_correlation_official"],
                               np.mean(reference_single_trial(trials, predictions)), atol=1e-6)


def test_official_scores_drop_padding_but_count_other_nan_as_zero():
    trials, expected, groups = repeated_data(clips=2, repeats=3, frames=100, neurons=4)
    predictions = [e + np.random.default_rng(2).standard_normal(e.shape) for e in expected]
    base = metrics.single_trial_correlation_official(trials, predictions)
    padded_r = [np.concatenate([t, np.full((15, t.shape[1]), np.nan)]) for t in trials]
    padded_p = [np.concatenate([p, np.full((15, p.shape[1]), np.nan)]) for p in predictions]
    np.testing.assert_allclose(metrics.single_trial_correlation_official(padded_r, padded_p), base, rtol=1e-12)
    np.testing.assert_allclose(metrics.correlation_to_average_official(padded_r, padded_p, groups),
                               metrics.correlation_to_average_official(trials, predictions, groups), rtol=1e-12)
    holes = [p.copy() for p in predictions]
    holes[0][BURN + 3, 2] = np.nan
    got = metrics.single_trial_correlation_official(trials, holes)
    assert got[2] == 0
    np.testing.assert_allclose(np.delete(got, 2), np.delete(base, 2), rtol=1e-12)


def test_the_table_shows_the_official_correlations_only_when_asked(capsys):
    from twinserve.training.cli import print_metrics

    results = {"mouse": {"oracle": {"single_trial_correlation": 0.31, "single_trial_correlation_official": 0.27,
                                    "correlation_to_average": 0.52, "correlation_to_average_official": 0.49}}}
    print_metrics(results)
    plain = capsys.readouterr().err
    assert "0.310" in plain and "0.270" not in plain and "single*" not in plain
    print_metrics(results, official=True)
    header, row, note = capsys.readouterr().err.splitlines()
    assert header.split()[2:6] == ["single", "to_avg", "single*", "to_avg*"]
    assert row.split()[2:6] == ["0.310", "0.520", "0.270", "0.490"] and note.startswith("* official")
