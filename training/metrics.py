"""Per-neuron accuracy metrics of the SENSORIUM papers, NaN-safe, numpy only.

Every function takes trials as sequences of arrays of shape (T_i, N): time first, one column per
neuron, trials of different lengths allowed. The first ``burn_in`` frames of every trial are
excluded (paper 000, sec. 4). NaN anywhere (padding, a skipped trial) removes that sample.

- single-trial correlation (paper 000, eq. 1): Pearson over all frames of all trials;
- correlation to average (paper 000, eq. 2): Pearson of responses and predictions each averaged
  over repeats of the same clip;
- FEVE (paper 002, Cadena et al. 2019): fraction of explainable variance explained;
- CC_norm (paper 003 Methods, Schoppe et al. 2016): correlation of the repeat averages divided by
  its upper bound CC_max given the trial-to-trial variability.

Repeat-based metrics take ``groups``: a list of lists of trial indices, one list per clip.

The ``*_official`` variants score as the SENSORIUM 2023 scorer does (neuralpredictors'
``measures.np_functions.corr``): population standard deviations plus ε = 1e-8 in the denominator,
and a neuron whose correlation is NaN counts as 0. A constant prediction thus scores 0 and stays in
the mean over neurons, where `pearson` gives NaN and `summarize` leaves the neuron out.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

BURN_IN = 50
OFFICIAL_EPS = 1e-8  # neuralpredictors' corr: added to each standard deviation

Trials = Sequence[np.ndarray]


def pearson(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Per-column Pearson correlation of x, y (S, N), ignoring samples where either is NaN → (N,).

    A column with no variance or fewer than two samples gives NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    valid = np.isfinite(x) & np.isfinite(y)
    count = valid.sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_x = np.where(valid, x, 0).sum(0) / count
        mean_y = np.where(valid, y, 0).sum(0) / count
        dx = np.where(valid, x - mean_x, 0)
        dy = np.where(valid, y - mean_y, 0)
        denominator = np.sqrt((dx**2).sum(0) * (dy**2).sum(0))
        r = (dx * dy).sum(0) / denominator
    return np.where((count > 1) & (denominator > 0), r, np.nan)


def official_corr(x: np.ndarray, y: np.ndarray, eps: float = OFFICIAL_EPS) -> np.ndarray:
    """Per-column correlation of x, y (S, N) as neuralpredictors' ``corr(x, y, axis=0)`` → (N,), NaN → 0:
    mean over samples of (x - x̄)(y - ȳ) / ((σx + ε)(σy + ε)), σ the standard deviation with ddof=0."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    dx, dy = x - x.mean(0), y - y.mean(0)
    with np.errstate(invalid="ignore"):
        r = (dx * dy).mean(0) / ((np.sqrt((dx**2).mean(0)) + eps) * (np.sqrt((dy**2).mean(0)) + eps))
    return np.nan_to_num(r, nan=0.0)


def _without_padding(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop the samples (rows of x, y (S, N)) that are NaN for every neuron in either: padding, or a
    model's first frames before its receptive field is full. Any other NaN stays (→ 0 for its neuron)."""
    keep = ~(np.isnan(x).all(1) | np.isnan(y).all(1))
    return x[keep], y[keep]


def _stack(trials: Trials, burn_in: int) -> np.ndarray:
    """Concatenate trials after the burn-in → (S, N)."""
    return np.concatenate([np.asarray(t, dtype=np.float64)[burn_in:] for t in trials], axis=0)


def _check_pair(responses: Trials, predictions: Trials) -> None:
    if len(responses) != len(predictions) or len(responses) == 0:
        raise ValueError(f"need the same non-zero number of response and prediction trials, "
                         f"got {len(responses)} and {len(predictions)}")
    for i, (r, p) in enumerate(zip(responses, predictions)):
        if np.shape(r) != np.shape(p):
            raise ValueError(f"trial {i}: responses {np.shape(r)} vs predictions {np.shape(p)}")


def single_trial_correlation(responses: Trials, predictions: Trials, burn_in: int = BURN_IN) -> np.ndarray:
    """Correlation over all frames of all single trials, per neuron → (N,)."""
    _check_pair(responses, predictions)
    return pearson(_stack(responses, burn_in), _stack(predictions, burn_in))


def single_trial_correlation_official(responses: Trials, predictions: Trials, burn_in: int = BURN_IN) -> np.ndarray:
    """`single_trial_correlation` as the official scorer computes it (`official_corr`), per neuron → (N,)."""
    _check_pair(responses, predictions)
    return official_corr(*_without_padding(_stack(responses, burn_in), _stack(predictions, burn_in)))


def repeat_stack(trials: Trials, group: Sequence[int], burn_in: int = BURN_IN) -> np.ndarray:
    """The repeats of one clip, cut to their common valid length → (K, T, N).

    A repeat that is entirely NaN (a skipped trial) is dropped; NaN-padded tails are cut.
    """
    kept = [np.asarray(trials[i], dtype=np.float64)[burn_in:] for i in group]
    kept = [t for t in kept if np.isfinite(t).any()]
    if not kept:
        return np.empty((0, 0, np.shape(trials[group[0]])[-1]))
    length = min(int(np.isfinite(t).all(1).sum()) for t in kept)
    return np.stack([t[:length] for t in kept])


def _repeat_means(responses: Trials, predictions: Trials, groups, burn_in: int):
    """Repeat-averaged responses and predictions, clips concatenated → two (S, N) arrays."""
    _check_pair(responses, predictions)
    mean_r, mean_p = [], []
    for group in groups:
        r = repeat_stack(responses, group, burn_in)
        p = repeat_stack(predictions, group, burn_in)
        length = min(r.shape[1], p.shape[1])
        if len(r) and len(p) and length:
            mean_r.append(r[:, :length].mean(0))
            mean_p.append(p[:, :length].mean(0))
    if not mean_r:
        raise ValueError("no repeated clip has valid frames after the burn-in")
    return np.concatenate(mean_r), np.concatenate(mean_p)


def correlation_to_average(responses: Trials, predictions: Trials, groups, burn_in: int = BURN_IN) -> np.ndarray:
    """Correlation of repeat-averaged responses with repeat-averaged predictions → (N,)."""
    return pearson(*_repeat_means(responses, predictions, groups, burn_in))


def correlation_to_average_official(responses: Trials, predictions: Trials, groups,
                                    burn_in: int = BURN_IN) -> np.ndarray:
    """`correlation_to_average` as the official scorer computes it (`official_corr`) → (N,)."""
    return official_corr(*_without_padding(*_repeat_means(responses, predictions, groups, burn_in)))


def _paired_repeats(responses: Trials, predictions: Trials, groups, burn_in: int):
    """Per clip, responses and predictions of the trials valid in both → lists of (K, T, N)."""
    _check_pair(responses, predictions)
    pairs = []
    for group in groups:
        kept = [i for i in group
                if np.isfinite(np.asarray(responses[i])[burn_in:]).any()
                and np.isfinite(np.asarray(predictions[i])[burn_in:]).any()]
        if len(kept) < 2:
            continue
        r, p = repeat_stack(responses, kept, burn_in), repeat_stack(predictions, kept, burn_in)
        length = min(r.shape[1], p.shape[1])
        if length:
            pairs.append((r[:, :length], p[:, :length]))
    if not pairs:
        raise ValueError("FEVE and CC_norm need at least one clip with two or more valid repeats")
    return pairs


def fraction_explainable_variance(responses: Trials, groups, burn_in: int = BURN_IN) -> np.ndarray:
    """Explainable fraction of the response variance, 1 - noise variance / total variance → (N,)."""
    return _variances(_paired_repeats(responses, responses, groups, burn_in))[2]


def _variances(pairs):
    """(noise variance, total variance, explainable fraction, mse) per neuron from paired repeats."""
    noise = np.concatenate([r.var(0, ddof=1) for r, _ in pairs]).mean(0)
    everything = np.concatenate([r.reshape(-1, r.shape[-1]) for r, _ in pairs])
    total = everything.var(0, ddof=1)
    mse = np.concatenate([((r - p) ** 2).reshape(-1, r.shape[-1]) for r, p in pairs]).mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return noise, total, 1 - noise / total, mse


def fev_e(responses: Trials, predictions: Trials, groups, burn_in: int = BURN_IN) -> np.ndarray:
    """Fraction of explainable variance explained, per neuron → (N,).

    FEVE = 1 - (MSE - noise variance) / (total variance - noise variance), with the noise variance
    the mean over clips and frames of the variance across repeats (paper 002).
    """
    noise, total, _, mse = _variances(_paired_repeats(responses, predictions, groups, burn_in))
    with np.errstate(invalid="ignore", divide="ignore"):
        return 1 - (mse - noise) / (total - noise)


def cc_max(responses: Trials, groups, burn_in: int = BURN_IN) -> np.ndarray:
    """Upper bound of the correlation to the repeat average (Schoppe et al. 2016) → (N,).

    CC_max = sqrt((K·Var(r̄) - mean_k Var(r_k)) / ((K - 1)·Var(r̄))), variances over time, r̄ the
    average over K repeats; clips are concatenated in time, using the smallest repeat count.
    """
    pairs = _paired_repeats(responses, responses, groups, burn_in)
    repeats = min(len(r) for r, _ in pairs)
    stacked = np.concatenate([r[:repeats] for r, _ in pairs], axis=1)  # (K, S, N)
    var_mean = stacked.mean(0).var(0, ddof=1)
    mean_var = stacked.var(1, ddof=1).mean(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = (repeats * var_mean - mean_var) / ((repeats - 1) * var_mean)
    return np.sqrt(np.where(ratio > 0, ratio, np.nan))


def cc_norm(responses: Trials, predictions: Trials, groups, burn_in: int = BURN_IN) -> np.ndarray:
    """Correlation to average normalised by its upper bound: CC_abs / CC_max → (N,)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return correlation_to_average(responses, predictions, groups, burn_in) / cc_max(responses, groups, burn_in)


def summarize(per_neuron: dict[str, np.ndarray], responses: Trials | None = None, groups=None,
              burn_in: int = BURN_IN, min_fev: float = 0.15) -> dict[str, float]:
    """Mean over neurons of each per-neuron metric, ignoring NaN.

    FEVE is averaged over neurons whose explainable fraction exceeds ``min_fev`` (paper 002) when
    the responses and repeat groups are given.
    """
    summary = {}
    for name, values in per_neuron.items():
        values = np.asarray(values, dtype=np.float64)
        if name == "fev_e" and responses is not None and groups:
            values = values[fraction_explainable_variance(responses, groups, burn_in) > min_fev]
        finite = values[np.isfinite(values)]
        summary[name] = float(finite.mean()) if finite.size else float("nan")
    return summary
