"""Observation model: spikes → calcium → noisy 8 Hz imaging → causal 30 Hz responses.

Per neuron and trial, with rates λ ``(B, T, N)`` in Hz at 30 Hz frames:

1. spike counts ``s(t) ~ Poisson(λ(t) / 30)``;
2. calcium ``c(t) = exp(−1 / (30 τ)) · c(t−1) + s(t)`` with per-neuron ``τ`` (s); before the trial the
   calcium sits at the steady state of the neuron's mean rate, ``c(−1) = r̄/30 / (1 − exp(−1/(30 τ)))``;
3. imaging samples at 8 Hz: sample k is the mean of c over ``[k/8, (k+1)/8)`` s, plus fluorescence
   noise ``ξ ~ Gamma(NOISE_SHAPE, noise_std / √NOISE_SHAPE)`` (≥ 0, mean ``√NOISE_SHAPE · noise_std``);
4. back to 30 Hz by linear interpolation, lagged by one imaging period: sample k is placed at
   ``(k+2)/8`` s (its window's end plus 125 ms) and frame t is read at its own end, ``(t+1)/30`` s.
   Two pre-trial samples placed at 0 and 1/8 s hold the pre-trial calcium (plus noise).

So response frame t depends only on spikes of frames ≤ t (causal). Steps 2–4 are linear, so the exact
expected response is the pipeline applied to ``λ / 30`` with ξ replaced by its mean. Everything is ≥ 0.
"""
import numpy as np

FPS = 30
IMAGING_HZ = 8
NOISE_SHAPE = 4.0


def sample_count(n_frames):
    """Imaging samples ``K + 2`` of a trial of ``n_frames`` frames: 2 pre-trial, then K at 8 Hz."""
    return n_frames * IMAGING_HZ // FPS + 2


def readout_matrices(n_frames):
    """``average (K, T)``: imaging samples from calcium; ``interp (T, K + 2)``: frames from the 2 pre-trial
    samples followed by the K imaging samples. Both rows sum to 1; ``interp`` is causal (see module)."""
    n_samples = n_frames * IMAGING_HZ // FPS
    frame_edges = np.arange(n_frames + 1) / FPS
    window_edges = np.arange(n_samples + 1) / IMAGING_HZ
    overlap = np.clip(np.minimum(frame_edges[None, 1:], window_edges[1:, None])
                      - np.maximum(frame_edges[None, :-1], window_edges[:-1, None]), 0, None)
    read_at = np.arange(1, n_frames + 1) / FPS * IMAGING_HZ  # in imaging periods; sample j sits at j
    left = np.floor(read_at).astype(int)
    weight = read_at - left
    interp = np.zeros((n_frames, n_samples + 2))
    interp[np.arange(n_frames), left] += 1 - weight
    interp[np.arange(n_frames), np.minimum(left + 1, n_samples + 1)] += weight
    return (overlap * IMAGING_HZ).astype(np.float32), interp.astype(np.float32)


def calcium_decay(tau):
    """Per-frame decay factor ``(N,)`` of calcium with time constant ``tau (N,)`` seconds."""
    return np.exp(-1.0 / (FPS * np.asarray(tau, dtype=np.float64)))


def initial_calcium(tau, mean_rate):
    """Pre-trial calcium ``(N,)``: steady state of ``mean_rate (N,)`` Hz."""
    return np.asarray(mean_rate) / FPS / (1 - calcium_decay(tau))


def imaging_samples(counts, tau, mean_rate):
    """Noise-free samples ``(B, K + 2, N)`` (2 pre-trial, then K at 8 Hz) from counts ``(B, T, N)``."""
    decay = calcium_decay(tau).astype(np.float32)
    previous = initial = initial_calcium(tau, mean_rate).astype(np.float32)
    trace = np.empty(counts.shape, np.float32)
    for t in range(counts.shape[1]):
        previous = trace[:, t] = decay * previous + counts[:, t]
    average, _ = readout_matrices(counts.shape[1])
    pre_trial = np.broadcast_to(initial, (len(counts), 2, len(initial)))
    return np.concatenate([pre_trial, np.matmul(average, trace)], axis=1)


def to_frames(samples, n_frames):
    """30 Hz responses ``(B, T, N)`` from imaging samples ``(B, K + 2, N)``."""
    return np.matmul(readout_matrices(n_frames)[1], samples)


def noise_mean(noise_std):
    """Mean ``(N,)`` of the fluorescence noise with std ``noise_std (N,)``."""
    return np.sqrt(NOISE_SHAPE) * np.asarray(noise_std, np.float32)


def expected_response(rates, tau, mean_rate, noise_std):
    """Exact expected responses ``(B, T, N)`` for rates λ ``(B, T, N)`` Hz (no sampling)."""
    samples = imaging_samples(np.asarray(rates, np.float32) / FPS, tau, mean_rate)
    return (to_frames(samples, rates.shape[1]) + noise_mean(noise_std)).astype(np.float32)


def spike_samples(rng, rates, tau, mean_rate):
    """Noise-free imaging samples ``(B, K + 2, N)`` of one draw of Poisson spikes at rates λ ``(B, T, N)`` Hz."""
    counts = rng.poisson(np.asarray(rates, np.float64) / FPS).astype(np.float32)
    return imaging_samples(counts, tau, mean_rate)


def add_noise(rng, samples, noise_std, n_frames):
    """30 Hz responses ``(B, T, N)`` from samples ``(B, K + 2, N)`` plus Gamma fluorescence noise."""
    noise = rng.gamma(NOISE_SHAPE, 1.0, samples.shape).astype(np.float32) * (noise_std / np.sqrt(NOISE_SHAPE))
    return to_frames(samples + noise.astype(np.float32, copy=False), n_frames).astype(np.float32)


def sample_response(rng, rates, tau, mean_rate, noise_std):
    """One noisy observation ``(B, T, N)`` of rates λ ``(B, T, N)`` Hz: Poisson spikes, Gamma noise.

    All spikes are drawn before any noise: a recording written trial by trial draws the spikes of
    every trial (``spike_samples``) before the noise of any (``add_noise``) to keep this stream.
    """
    return add_noise(rng, spike_samples(rng, rates, tau, mean_rate), noise_std, rates.shape[1])


def poisson_variance_gain(tau, n_frames, skip):
    """``(N,)``: mean over frames ≥ ``skip`` of Σ_s H[t, s]², H = response to one spike at frame s."""
    average, interp = readout_matrices(n_frames)
    readout = interp[:, 2:] @ average  # (T, T)
    lag = np.subtract.outer(np.arange(n_frames), np.arange(n_frames))
    causal, steps = lag >= 0, np.maximum(lag, 0)
    gains = []
    for decay in calcium_decay(tau):
        impulse = readout @ np.where(causal, (decay ** np.arange(n_frames))[steps], 0.0)  # decay ** lag
        gains.append((impulse[skip:] ** 2).sum(1).mean())
    return np.array(gains)


def noise_std_for_reliability(signal, mean_rate, tau, reliability, n_frames, skip):
    """Fluorescence noise std ``(N,)`` that brings each neuron's single-trial correlation with its
    expected response to ``reliability (N,)``.

    ``signal (N,)``: variance of the noise-free expected responses over the calibration frames (frames
    ≥ ``skip``); ``mean_rate (N,)``: their mean rate in Hz. Solves ρ² = S / (S + P + g σ²), with S the
    signal variance, P the Poisson variance and g the mean of Σ_j interp[t, j]² (noise kept by interpolation).
    """
    poisson = poisson_variance_gain(tau, n_frames, skip) * mean_rate / FPS
    interp = readout_matrices(n_frames)[1]
    kept = (interp[skip:] ** 2).sum(1).mean()
    needed = signal * (1 / np.asarray(reliability) ** 2 - 1) - poisson
    return np.sqrt(np.maximum(needed, 0.0) / kept).astype(np.float32)
