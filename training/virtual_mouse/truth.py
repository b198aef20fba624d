"""Ground truth written beside a virtual-mouse recording, in ``<recording>/truth/``."""
import json

import numpy as np

from .family import RF_FAMILIES, Variant
from .receptive_fields import spatial_filters, temporal_kernels
from .stimuli import HEIGHT, WIDTH
from .tuning import true_tuning

README = """# Ground truth of a virtual-mouse recording

Everything here is known exactly because the recording is simulated (`training/virtual_mouse`).
Neuron index n is row n of `data/responses/<trial>.npy` (unit id `meta/neurons/unit_ids.npy[n]`).

Coordinates: screen/retina pixels of the 36×64 frame, x = column (0 = left), y = row (0 = top).
Angle convention: a direction θ means drift toward (cos θ, −sin θ) in (x, y), i.e. 0° = rightward,
90° = upward on screen; orientation = direction mod 180° (the axis of motion, normal to the bars).

## expected/<trial>.npy
float32 (N, T): the exact expected observed response of that trial (same units and NaN padding as
`data/responses`), given its video, behaviour and eye movements: responses = expected + zero-mean
noise (spiking and fluorescence). Written for every trial, or (`twin data synth --expected test`) for
all but the train tier's, or (`--expected none`) for none. Per neuron, the single-trial Pearson correlation of responses with
`expected` (oracle tier, frames ≥ 50) is the ceiling any model of the data can reach.

## neurons/<key>.npy (first axis = neuron)
- `rf_family` (N,) int: index into `rf_families` of `recording.json` (gabor_simple, gabor_complex,
  center_surround, multi_subunit, weakly_tuned, untuned; see `variant.json` for the mix).
- `rf_center` (N, 2) [x, y] px: centre of the receptive field's Gaussian envelope (may lie off screen).
- `rf_sigma` (N,) px: envelope standard deviation (the centre's for a difference of Gaussians).
  `spatial_period` (N,) px: carrier period (a DoG's preferred period).
- `subunits` (N, 3, 3): [dx px, dy px, dθ deg] of a multi-subunit neuron's extra Gabor subunits (else 0).
- `orientation_deg` (N,) [0, 180): direction of the carrier's wave vector mod 180.
- `phase` (N,) rad: simple-cell carrier phase.  `is_complex` (N,) bool: energy model (else simple:
  rectified square of one linear filter).  `is_direction_selective` (N,) bool, `direction_weight` (N,):
  signed weight of the quadrature temporal path (space–time inseparable filter; 0 = not DS).
- `spatial_filters` (2, N, 36, 64): the zero-mean even and odd spatial filters (retinal contrast units).
- `temporal_kernels` (N, 2, 12): causal kernels [k_a, k_b], index = lag in frames (0 = same frame).
  `latency` (N,) frames, `kernel_freq` (N,) cycles/frame: their envelope peak and carrier.
- `baseline_rate` (N,) Hz; `amplitude` (N,) Hz: evoked rate at x = 1, the mean drive on the training
  movies (x = drive / drive_norm; `drive_norm` (N,) is the mean drive on the train tier);
  `max_rate` (N,) Hz: soft ceiling of the evoked rate.
- `exponent` (N,): power p of the static nonlinearity (rectified u0^p, or energy^(p/2)).
- `semi_saturation` (N,): RMS contrast of contrast normalisation: drive = response / (semi_saturation²
  + normalization·E), E = recent local mean squared contrast in a Gaussian pool 1.5 × rf_sigma wide;
  `normalization` (N,) is 1 for neurons with divisive normalisation, 0 without.
- `running_gain`, `pupil_gain` (N,): rate × exp(running_gain·z_run + pupil_gain·z_pupil), with
  behaviour z-scored by the train-tier mean/std (`recording.json`, = meta/statistics/behavior).
- `eye_gain` (N,) retinal px per eye-camera px, one value for the whole eye (repeated per neuron):
  the retinal image is the screen shifted by eye_gain·(pupil_center − eye_center) [columns, rows]
  (bilinear, grey beyond the screen edge); eye_center is in `recording.json`.
- `calcium_tau` (N,) s: calcium decay time constant.
- `noise_std` (N,): std of the fluorescence noise added to each 8 Hz imaging sample (Gamma, shape 4,
  mean 2·noise_std, so the expected response includes that offset); chosen so that the single-trial
  correlation of responses with `expected` on the oracle tier (frames ≥ 50) is about `reliability` (N,).
- `tuning_curve` (N, 16) Hz at `tuning_directions_deg` (16,): mean expected rate to full-contrast
  drifting gratings at the neuron's `spatial_period` and `tuning_tf_hz` (N,), mean behaviour, eye at
  rest. In steady state the expected response is affine in the rate r:
  r / 30 / (1 − exp(−1 / (30·calcium_tau))) + 2·noise_std.
- `osi`, `dsi` (N,): |Σ r e^{2iθ}| / Σ r and |Σ r e^{iθ}| / Σ r over the 16 directions.
- `preferred_direction_deg` (N,) [0, 360): orientation_deg or orientation_deg + 180, whichever drives
  the neuron more (meaningful for DS neurons; for others the two are nearly equal).

## stimuli.json
`trials`: per trial {trial, tier, kind (natural | grating | dots), clip_id, valid_frames, key, params}:
`key` seeds the generator (numpy default_rng); repeats share clip_id and frames. Natural params list
the scenes (start frame, length, mean luminance, RMS contrast at start/end, mean pan velocity px/frame),
grating params the blocks (start, frames, direction_deg, period_px, tf_hz, phase), dot params the
dots (start, frames, x, y, polarity ±1; Gaussian sigma_px).

## variant.json
The distributions this mouse was drawn from (`training/virtual_mouse/family.py`): "default" is the
original virtual mouse, "family-<k>" member k of the family of virtual mice.

## recording.json
Recording-wide truth: the RF family names, eye_gain, eye_center [x, y] (eye-camera px), behaviour normalisation
([pupil size, running speed] mean and std over the train tier), frame rate, imaging rate and the
animal's behavioural traits.

Observation model (units: calcium in spikes, i.e. a spike adds 1 and decays with calcium_tau):
Poisson spikes at 30 Hz → calcium (starting at the steady state of baseline_rate + amplitude) → 8 Hz
imaging samples (mean over 125 ms) + Gamma fluorescence noise → 30 Hz by linear interpolation lagged by
one imaging period, so response frame t depends only on frames ≤ t.

Rate model: rate(t) = exp(running_gain·z_run + pupil_gain·z_pupil) · (baseline_rate + max_rate ·
tanh(amplitude · x(t) / max_rate)) Hz, x = drive / drive_norm. The drive is the rectified power
(simple) or quadrature energy (complex) of the spatial filters applied to the eye-shifted retinal
contrast image (frame − 128) / 128, then the temporal kernels, divided by semi_saturation² + E
(contrast normalisation).
"""


def neuron_truth(pop):
    """Per-neuron truth arrays ``{key: (N, ...)}``."""
    n = len(pop)
    return {"rf_family": pop.rf_family.astype(np.int8), "subunits": pop.subunits.astype(np.float32),
            "exponent": pop.exponent.astype(np.float32), "normalization": pop.normalization.astype(np.float32),
            "rf_center": pop.rf_center.astype(np.float32), "rf_sigma": pop.rf_sigma.astype(np.float32),
            "spatial_period": pop.spatial_period.astype(np.float32),
            "orientation_deg": pop.orientation_deg.astype(np.float32), "phase": pop.phase.astype(np.float32),
            "is_complex": pop.is_complex.astype(bool), "is_direction_selective": pop.direction_weight != 0,
            "direction_weight": pop.direction_weight.astype(np.float32),
            "spatial_filters": spatial_filters(pop).reshape(2, n, HEIGHT, WIDTH),
            "temporal_kernels": temporal_kernels(pop), "latency": pop.latency.astype(np.float32),
            "kernel_freq": pop.kernel_freq.astype(np.float32), "baseline_rate": pop.baseline.astype(np.float32),
            "amplitude": pop.amplitude.astype(np.float32),
            "max_rate": pop.max_rate.astype(np.float32), "semi_saturation": pop.semi_saturation.astype(np.float32),
            "drive_norm": pop.drive_norm.astype(np.float32),
            "running_gain": pop.running_gain.astype(np.float32), "pupil_gain": pop.pupil_gain.astype(np.float32),
            "eye_gain": np.full(n, pop.eye_gain, np.float32), "calcium_tau": pop.calcium_tau.astype(np.float32),
            "reliability": pop.reliability.astype(np.float32), "noise_std": pop.noise_std.astype(np.float32),
            **true_tuning(pop)}


def write_truth(root, rec, variant=Variant()):
    """Write the truth of ``rec`` (a ``writer.Recording``) under ``root``; ``expected/`` comes with the data."""
    (root / "neurons").mkdir(parents=True, exist_ok=True)
    for key, array in neuron_truth(rec.population).items():
        np.save(root / "neurons" / f"{key}.npy", array)
    clips = {c["clip_id"]: c for c in rec.clips}
    trials = [{**t, "key": clips[t["clip_id"]]["key"], "params": clips[t["clip_id"]]["params"]}
              for t in rec.trials]
    (root / "stimuli.json").write_text(json.dumps({"trials": trials}, indent=1))
    pop = rec.population
    recording = {"name": rec.name, "n_neurons": len(pop), "fps": 30, "imaging_hz": 8,
                 "variant": variant.name, "rf_families": list(RF_FAMILIES),
                 "eye_gain": pop.eye_gain, "eye_center": pop.eye_center.tolist(),
                 "behavior_keys": ["pupil_size", "running_speed"],
                 "behavior_mean": pop.behavior_mean.tolist(), "behavior_std": pop.behavior_std.tolist(),
                 "animal": {k: np.asarray(v).tolist() for k, v in vars(rec.animal).items()}}
    (root / "recording.json").write_text(json.dumps(recording, indent=1))
    (root / "variant.json").write_text(variant.to_json())
    (root / "README.md").write_text(README)
