"""The batched fits of the tuning and RF experiments against scipy's `curve_fit`, one neuron at a time
(what the experiments ran before), on curves and maps with known parameters plus noise.

Tolerances (where scipy's fit did not fail): the batched fit's residual sum of squares (RSS) is at most
0.1% above scipy's on every curve or map whose peak stands 3 noise SDs above its floor; on the others
(noise: many local fits, neither one right) at most 20% above on any one and 1% above in total. Where
the peak stands 10 noise SDs above the floor, the preferred orientation agrees within 2°, the preferred
direction too where one peak is 1.5 times the other, the RF centre within 0.1 px, its width within 2%
and the R² within 0.001.
"""

import numpy as np
import pytest

from twinserve.benchmarks.scipy_fits import gaussians_one_by_one, von_mises_one_by_one
from twinserve.clients.experiments.fits import fit
from twinserve.clients.experiments.rf import fit_centres, fit_gaussians, gaussian_2d
from twinserve.clients.experiments.tuning import (fit_von_mises, orientation_error, preferred_directions,
                                                  two_peak_von_mises)
from twinserve.clients.stimuli import HEIGHT, WIDTH, directions

NOISE = 0.05
CASES = 16  # curves or maps of each kind


def _rss_checks(batched: np.ndarray, scipy: np.ndarray, peaked: np.ndarray) -> None:
    """Where scipy's fit did not fail (`scipy` finite)."""
    done = np.isfinite(scipy)
    assert done.mean() > 0.9
    batched, scipy, peaked = batched[done], scipy[done], peaked[done]
    ratio = batched / scipy
    assert np.all(ratio[peaked] <= 1.001), (np.flatnonzero(peaked & (ratio > 1.001)), ratio.max())
    assert np.all(ratio[~peaked] <= 1.2), ratio[~peaked].max()
    assert batched[~peaked].sum() <= 1.01 * scipy[~peaked].sum()


def test_batched_von_mises_fits_match_scipy_one_by_one():
    rng = np.random.default_rng(0)
    angles = directions(16)
    theta = np.deg2rad(angles)
    # Kinds: two peaks, one peak (second amplitude at its bound 0), untuned (flat), narrow peaks
    # (kappa near its bound 50), broad peaks (kappa near its bound 0.05).
    kinds = np.repeat(np.arange(5), CASES)
    n = len(kinds)
    first = np.where(kinds == 2, 0.0, rng.uniform(0.5, 3, n))
    second = np.select([kinds == 1, kinds == 2], [0.0, 0.0], rng.uniform(0, 1, n) * first)
    kappa = np.select([kinds == 3, kinds == 4], [rng.uniform(20, 50, n), rng.uniform(0.05, 0.3, n)],
                      rng.uniform(0.5, 6, n))
    mu = rng.uniform(0, 2 * np.pi, n)
    curves = two_peak_von_mises(theta, rng.uniform(0, 2, n)[:, None], first[:, None], second[:, None],
                                kappa[:, None], mu[:, None]) + rng.normal(0, NOISE, (n, 16))

    params, rss = fit_von_mises(curves, angles)
    reference = von_mises_one_by_one(curves, angles)  # NaN where scipy gave up (maxfev)
    scipy_rss = ((two_peak_von_mises(theta, *reference.T[:, :, None]) - curves) ** 2).sum(1)
    np.testing.assert_allclose(((two_peak_von_mises(theta, *params.T[:, :, None]) - curves) ** 2).sum(1), rss,
                               rtol=1e-9)  # the params returned are the ones fitted
    # The peak rises above the floor in the sampled curve (a narrow one may fall between directions).
    peak_height = (two_peak_von_mises(theta, 0, first[:, None], second[:, None], kappa[:, None], mu[:, None])
                   - two_peak_von_mises(theta, 0, 0, 0, 1, 0)).ptp(1)
    tuned = peak_height > 10 * NOISE
    _rss_checks(rss, scipy_rss, peak_height > 3 * NOISE)

    found = preferred_directions(curves, angles)
    b, s = reference[:, 1], reference[:, 2]
    expected = np.rad2deg(np.where(b >= s, reference[:, 4], reference[:, 4] + np.pi)) % 360
    assert tuned.sum() > 2 * CASES and (kinds[tuned] == 1).any() and (kinds[tuned] == 3).any()
    tuned &= np.isfinite(expected)
    assert orientation_error(found, expected)[tuned].max() < 2
    directional = tuned & (np.maximum(first, second) > 1.5 * np.minimum(first, second))
    assert np.abs((found - expected + 180) % 360 - 180)[directional].max() < 2


def test_batched_gaussian_fits_match_scipy_one_by_one():
    rng = np.random.default_rng(1)
    # Kinds: inside the map, centre past the edge (near the bound), none (flat noise), tiny (sigma
    # near its bound 0.5), wide.
    kinds = np.repeat(np.arange(5), CASES)
    n = len(kinds)
    x0 = np.where(kinds == 1, rng.choice([-6.0, WIDTH + 5.0], n), rng.uniform(5, WIDTH - 5, n))
    y0 = rng.uniform(5, HEIGHT - 5, n)
    sigma = np.select([kinds == 3, kinds == 4], [rng.uniform(0.6, 1.0, n), rng.uniform(8, 15, n)],
                      rng.uniform(1.5, 6, n))
    amplitude = np.where(kinds == 2, 0.0, rng.uniform(0.5, 2, n))
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH]
    blobs = np.stack([gaussian_2d((cols, rows), a, x, y, s, 0) for a, x, y, s in zip(amplitude, x0, y0, sigma)])
    maps = blobs + rng.uniform(-1, 1, (n, 1, 1)) + rng.normal(0, NOISE, (n, HEIGHT, WIDTH))

    params, rss = fit_gaussians(maps)
    reference = gaussians_one_by_one(maps)
    scipy_residual = gaussian_2d((cols.ravel(), rows.ravel()), *reference.T[:, :, None]) - maps.reshape(n, -1)
    scipy_rss = (scipy_residual**2).sum(1)
    _rss_checks(rss, scipy_rss, blobs.max((1, 2)) > 3 * NOISE)

    clear = (blobs.max((1, 2)) > 10 * NOISE) & np.isfinite(reference).all(1)  # the blob as seen in the map
    assert clear.sum() > 2 * CASES and (kinds[clear] == 1).any() and (kinds[clear] == 3).any()
    np.testing.assert_allclose(params[clear, 1:3], reference[clear, 1:3], atol=0.1)
    np.testing.assert_allclose(params[clear, 3], reference[clear, 3], rtol=0.02)
    centres = fit_centres(maps)
    np.testing.assert_array_equal(centres[:, :3], params[:, 1:4])
    scipy_r2 = 1 - scipy_residual.var(1) / maps.reshape(n, -1).var(1)  # as the experiment reports it
    np.testing.assert_allclose(centres[clear, 3], scipy_r2[clear], atol=1e-3)


def test_fit_keeps_the_best_start_and_leaves_non_finite_rows_out():
    x = np.linspace(-3, 3, 25)

    def model(params, jacobian):
        """y = a (x - b)²: a second minimum in b for data with two dips."""
        a, b = params[:, [0]], params[:, [1]]
        prediction = a * (x - b) ** 2
        return (prediction, np.stack([(x - b) ** 2, -2 * a * (x - b)], axis=1)) if jacobian else prediction

    data = np.stack([0.5 * (x - 1.0) ** 2, 2.0 * (x + 2.0) ** 2, np.full_like(x, np.nan)])
    starts = np.array([[[1.0, 0.5]] * 3, [[1.0, -1.5]] * 3])  # (S, N, K): near each data's own b
    params, rss = fit(model, data, starts, (0.0, -5.0), (10.0, 5.0))
    np.testing.assert_allclose(params[:2], [[0.5, 1.0], [2.0, -2.0]], atol=1e-6)
    assert np.all(rss[:2] < 1e-12) and np.isnan(params[2]).all() and np.isnan(rss[2])
    bounded, _ = fit(model, data[:1], starts[:1, :1], (0.0, -5.0), (10.0, 0.5))  # b held at its bound
    assert bounded[0, 1] == 0.5
    with pytest.raises(ValueError, match="starts"):
        fit(model, data, starts[:, :2], (0.0, -5.0), (10.0, 5.0))
