"""The twin: a causal core shared by all recordings (any registered `Core`), one head per recording.

Shapes: B batch, T input frames, H×W pixels (`frame_shape`), C feature channels, N neurons of a
recording; offset = `contract.output_offset(receptive_field)` (R - 1 for a receptive field of R
frames, 0 for unbounded memory); a clip of T frames gives T' = T - offset output frames, output
frame j predicting the responses at input frame j + offset (causal: it sees only frames ≤ that one).

All normalisation lives in the model: it takes raw pixels and raw behaviour and returns responses in
the recording's raw units, so an exported graph needs no client-side preprocessing.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from twinserve.contract import BEHAVIOR_CHANNELS, DEFAULT_FRAME_SHAPE, PUPIL_CHANNELS, output_offset

from .cores import Core, build_core, cell_offset, core_margin
from .data import Trial

# The twin config's head settings (`Head`); every other key is the core's.
CENTRED_SHIFT = "centred_shift"
SHIFT_INPUT = "shift_input"
CELL_CENTRES = "cell_centres"
HEAD_SETTINGS = (CENTRED_SHIFT, SHIFT_INPUT, CELL_CENTRES)


def twin_config(config: dict) -> dict:
    """A twin's config (`Twin`) with its defaults filled in, as a run records it."""
    return {"core": "factorized", CENTRED_SHIFT: True, SHIFT_INPUT: True, CELL_CENTRES: True, **config}


def screen_share(margin: int, height: int, width: int) -> np.ndarray:
    """The screen's share (x, y) of a feature map of height × width cells that reaches `margin` cells
    beyond each screen edge: 1 without a margin → (2,). Its inverse is how far the map reaches in
    screen coordinates."""
    return np.array([(width - 2 * margin) / width, (height - 2 * margin) / height])


def map_grid(grid: torch.Tensor, margin: int, height: int, width: int, offset: torch.Tensor) -> torch.Tensor:
    """Readout positions in screen coordinates (..., 2) → grid_sample coordinates (align_corners=False)
    on a feature map of height × width cells that reaches `margin` cells beyond each screen edge,
    clamped to the map's edges. offset (2,): where a screen position's cell lies on the map relative
    to grid_sample's convention, in screen units (`cores.cell_offset`)."""
    grid = grid + offset
    if margin:
        grid = grid * grid.new_tensor(screen_share(margin, height, width))
    return grid.clamp(-1, 1)


def translate(video: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Every frame moved by its own shift: video (B, T, H, W), shift (B, T, 2) x, y in screen grid
    coordinates (2 / W per column, 2 / H per row) → (B, T, H, W) whose pixel p shows the frame at
    p + shift, bilinearly, and zero (the normalised mean luminance) where that leaves the frame:
    grid_sample's bilinear sampling (align_corners=False, zero padding) of a translated grid, done
    as two 1-D interpolations of gathered columns and rows (half the time of grid_sample's
    backward here) and exact at shift zero."""
    batch, frames, height, width = video.shape
    pixels = shift.float().reshape(batch * frames, 2) * shift.new_tensor([width / 2, height / 2], dtype=torch.float32)
    moved = _moved_along(video.reshape(batch * frames, height, width), pixels[:, 0], axis=2)
    return _moved_along(moved, pixels[:, 1], axis=1).reshape(batch, frames, height, width)


def _moved_along(frames: torch.Tensor, pixels: torch.Tensor, axis: int) -> torch.Tensor:
    """frames (M, H, W) moved along `axis` (1: rows, 2: columns) by pixels (M,): element i becomes
    the linear interpolation at i + pixels, zero beyond the frame."""
    size = frames.shape[axis]
    whole = pixels.floor()
    fraction = (pixels - whole).reshape(-1, 1, 1).to(frames.dtype)
    shape = (-1, 1, size) if axis == 2 else (-1, size, 1)
    first = (torch.arange(size, device=frames.device) + whole.long()[:, None]).reshape(shape)  # (M, 1, W) or (M, H, 1)

    def taken(index: torch.Tensor) -> torch.Tensor:
        inside = ((index >= 0) & (index < size)).to(frames.dtype)
        return frames.gather(axis, index.clamp(0, size - 1).expand_as(frames)) * inside

    return taken(first) * (1 - fraction) + taken(first + 1) * fraction


class GaussianReadout(nn.Module):
    """Per neuron a learned position on the feature map, read by bilinear sampling, then a weighted
    sum over channels plus a bias.

    Positions are in screen coordinates, grid_sample's convention: x (column) and y (row) in [-1, 1]
    from edge to edge of the screen. A core with a margin (`cores.core_margin`) computes its maps
    `margin` cells beyond each screen edge, and there a readout may sit beyond ±1: a receptive field
    centred off screen. offset (x, y): where a position's cell lies on the maps relative to
    grid_sample's convention (`cores.cell_offset`), so that a position is where on the screen the cell
    it reads is centred. During training the read position is jittered by a learned Gaussian
    (neuralpredictors' Gaussian readout).
    features (B, C, T, H' + 2·margin, W' + 2·margin), shift (B, T, 2) → (B, T, N)
    """

    def __init__(self, channels: int, neurons: int, margin: int = 0, offset: tuple[float, float] = (0.0, 0.0)):
        super().__init__()
        self.margin = margin
        self.register_buffer("offset", torch.tensor(offset, dtype=torch.float32), persistent=False)
        self.position = nn.Parameter(torch.zeros(neurons, 2))
        self.log_sigma = nn.Parameter(torch.full((neurons, 2), float(np.log(0.1))))
        self.weight = nn.Parameter(torch.full((channels, neurons), 1.0 / channels))
        self.bias = nn.Parameter(torch.zeros(neurons))

    def forward(self, features: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
        batch, channels, frames, height, width = features.shape
        position = self.position
        if self.training:
            position = position + torch.randn_like(position) * self.log_sigma.exp()
        grid = map_grid(position[None] + shift.reshape(batch * frames, 1, 2), self.margin, height, width,
                        self.offset)  # (B·T, N, 2)
        flat = features.transpose(1, 2).reshape(batch * frames, channels, height, width)
        sampled = F.grid_sample(flat, grid[:, None], align_corners=False, padding_mode="border").squeeze(2)  # (B·T, C, N)
        # Multiply and sum rather than einsum: ONNX Runtime's Einsum is ~2.5× slower here.
        out = (sampled * self.weight).sum(1) + self.bias
        return out.reshape(batch, frames, -1)


class Head(nn.Module):
    """Everything specific to one recording: input normalisation, pupil-position shifter, Gaussian
    readout, behavioural gain modulator and the output scale of its neurons. margin: the core's
    (`cores.core_margin`); offset: where its cells lie (`cores.cell_offset`, `GaussianReadout`).

    centred_shift: the shifter moves every readout by its output less its output at the recording's
    mean pupil position, so a readout's position is where its neuron looks at the mean eye position
    (where in-silico experiments put the eye). Without it (runs written before it) the shifter's
    output itself is added, which can hold an offset shared by every readout (family-57: 7.6 px at
    the mean eye, and its in-silico RFs 16 px off; README).

    shift_input: the shift moves each input frame before the core (`retina`), as the eye moves the
    image on the retina, and the readouts stay where they are. A neuron responds to what its retina
    saw over its latency and temporal kernel, so moving its readout by the eye position of the
    output frame lags behind every saccade (the shifters of such twins learned only 0.5–0.8 of the
    true shift; README). Without it (runs written before it, and heads on a frozen core, whose cached
    input must not change as the shifter trains) the readouts move instead.
    """

    def __init__(self, channels: int, neurons: int, margin: int = 0, centred_shift: bool = True,
                 shift_input: bool = True, offset: tuple[float, float] = (0.0, 0.0)):
        super().__init__()
        self.centred_shift, self.shift_input = centred_shift, shift_input
        behavior, pupil = (BEHAVIOR_CHANNELS,), (PUPIL_CHANNELS,)
        for name, size in [("video_mean", ()), ("video_std", ()), ("behavior_mean", behavior),
                           ("behavior_std", behavior), ("pupil_mean", pupil), ("pupil_std", pupil),
                           ("response_scale", (neurons,))]:
            self.register_buffer(name, torch.ones(size) if "std" in name or "scale" in name else torch.zeros(size))
        self.shifter = nn.Sequential(nn.Linear(PUPIL_CHANNELS, 5), nn.Tanh(), nn.Linear(5, 2), nn.Tanh())
        nn.init.zeros_(self.shifter[2].weight)
        nn.init.zeros_(self.shifter[2].bias)
        self.readout = GaussianReadout(channels, neurons, margin, offset)
        self.modulator = nn.Linear(BEHAVIOR_CHANNELS, neurons)
        nn.init.zeros_(self.modulator.weight)
        nn.init.zeros_(self.modulator.bias)

    def initialize(self, statistics: dict, positions: np.ndarray | None = None) -> None:
        """Set normalisation from the recording's statistics and the readout from the data.

        statistics: `Recording.statistics`; positions (N, 2) in [-1, 1] grid coordinates.
        Responses are scaled by their standard deviation (floored at 1% of the mean), and the
        readout bias starts at each neuron's mean scaled response.
        """
        def tensor(value):
            return torch.as_tensor(np.asarray(value, dtype=np.float32))

        std = statistics["responses"]["std"]
        scale = np.maximum(std, 0.01 * std.mean())
        self.video_mean.copy_(tensor(statistics["videos"]["mean"]))
        self.video_std.copy_(tensor(max(statistics["videos"]["std"], 1e-3)))
        for key, prefix in [("behavior", "behavior"), ("pupil_center", "pupil")]:
            getattr(self, f"{prefix}_mean").copy_(tensor(statistics[key]["mean"]))
            getattr(self, f"{prefix}_std").copy_(tensor(np.maximum(statistics[key]["std"], 1e-3)))
        self.response_scale.copy_(tensor(scale))
        mean_rate = np.clip(statistics["responses"]["mean"] / scale, 1e-3, None)
        with torch.no_grad():
            self.readout.bias.copy_(tensor(np.where(mean_rate >= 1, mean_rate - 1, np.log(mean_rate))))
            if positions is not None:
                self.readout.position.copy_(tensor(positions))

    def normalize(self, video, behavior, pupil_center):
        """Raw inputs → standardised: video (B, T, H, W), behavior (B, T, 2), pupil_center (B, T, 2)."""
        return ((video - self.video_mean) / self.video_std,
                (behavior - self.behavior_mean) / self.behavior_std,
                (pupil_center - self.pupil_mean) / self.pupil_std)

    def eye_shift(self, pupil_center: torch.Tensor) -> torch.Tensor:
        """Normalised pupil centre (B, T, 2) → where each frame's retina sees the screen, (B, T, 2) in
        screen grid coordinates, relative to the mean eye position when `centred_shift`."""
        shift = self.shifter(pupil_center)
        if self.centred_shift:
            shift = shift - self.shifter(torch.zeros_like(pupil_center[..., :1, :]))  # normalised pupil 0: the mean
        return shift

    def retina(self, video: torch.Tensor, pupil_center: torch.Tensor) -> torch.Tensor:
        """Normalised video and pupil centre (B, T, H, W), (B, T, 2) → the retinal image of every frame,
        (B, T, H, W): the screen moved by that frame's `eye_shift`."""
        return translate(video, self.eye_shift(pupil_center))

    def forward(self, features: torch.Tensor, behavior: torch.Tensor, pupil_center: torch.Tensor) -> torch.Tensor:
        """Core features (B, C, T', H', W') and normalised behaviour and pupil centre (B, T', 2) of the
        same output frames → positive rates in units of `response_scale`, (B, T', N)."""
        if self.shift_input:
            shift = pupil_center.new_zeros(pupil_center.shape)  # the core's input was moved instead (`retina`)
        else:
            shift = self.eye_shift(pupil_center)
        drive = self.readout(features, shift)
        return (F.elu(drive) + 1) * torch.exp(self.modulator(behavior))


class Twin(nn.Module):
    """A shared causal core, built by name from the core registry, + one `Head` per recording.

    config: {"core": registered core name, **its settings} (`Preset.model_config()`; without "core":
    "factorized", as runs written before the registry), and optionally "centred_shift", "shift_input"
    (`Head`) and "cell_centres" (readouts placed by where the core's cells lie, `cores.cell_offset`;
    without it a readout at a screen position reads the cell grid_sample's convention puts there,
    (S - 1) / 2 pixels up and left of that position), each True by default and False for runs
    written before it (`checkpoint.read_config`);
    neurons: recording name → neuron count; frame_shape: (H, W) of the frames the twin takes.
    """

    def __init__(self, config: dict, neurons: dict[str, int], frame_shape: tuple[int, int] = DEFAULT_FRAME_SHAPE):
        super().__init__()
        self.config = twin_config(config)
        self.frame_shape = tuple(frame_shape)
        settings = {k: v for k, v in self.config.items() if k not in ("core", *HEAD_SETTINGS)}
        self.core: Core = build_core(self.config["core"], 1 + BEHAVIOR_CHANNELS, self.frame_shape, **settings)
        margin, centred, shift_input = (core_margin(self.core), bool(self.config[CENTRED_SHIFT]),
                                        bool(self.config[SHIFT_INPUT]))
        offset = cell_offset(self.core, self.frame_shape) if self.config[CELL_CENTRES] else (0.0, 0.0)
        self.heads = nn.ModuleDict({name: Head(self.core.out_channels, n, margin, centred, shift_input, offset)
                                    for name, n in neurons.items()})
        self.core_frozen = False

    def freeze_core(self) -> None:
        """Fix the core: no gradients, and its normalisation statistics stay as they are (eval mode
        even while the heads train). For a core transferred from another run."""
        self.core.requires_grad_(False)
        self.core_frozen = True
        self.core.eval()

    def train(self, mode: bool = True) -> "Twin":
        super().train(mode)
        if self.core_frozen:
            self.core.eval()
        return self

    @property
    def receptive_field(self) -> int | None:
        """Frames an output depends on; None for a core with unbounded memory."""
        return self.core.receptive_field

    @property
    def offset(self) -> int:
        """Input frames before a clip's first output (`contract.output_offset`)."""
        return output_offset(self.core.receptive_field)

    def _readout_flops(self) -> int:
        """FLOPs of every head's readout channel sums on one output frame: 2 · neurons · C."""
        return 2 * sum(head.response_scale.numel() for head in self.heads.values()) * self.core.out_channels

    def clip_flops(self, frames: int) -> float:
        """FLOPs (2 × multiply-adds) of the core and every head's readout on a clip of `frames` frames."""
        return self.core.flops(self.frame_shape, frames) + self._readout_flops() * (frames - self.offset)

    def step_flops(self) -> float:
        """FLOPs of the core and every head's readout on one streamed frame."""
        return self.core.step_flops(self.frame_shape) + self._readout_flops()

    def rates(self, recording: str, video: torch.Tensor, behavior: torch.Tensor,
              pupil_center: torch.Tensor) -> torch.Tensor:
        """Raw video (B, T, H, W), behavior (B, T, 2), pupil_center (B, T, 2) → rates (B, T - offset, N)
        in units of the recording's response scale (the scale the Poisson loss works in)."""
        features = self.features(recording, video, behavior, pupil_center)  # checks the recording before its head is looked up
        return self.heads[recording](*features)

    def features(self, recording: str, video: torch.Tensor, behavior: torch.Tensor, pupil_center: torch.Tensor):
        """Raw inputs as in `rates` → what the recording's head reads: core features (B, C, T', H', W'),
        normalised behavior and pupil_center (B, T', 2) of the output frames, T' = T - offset."""
        if recording not in self.heads:
            raise KeyError(f"unknown recording {recording!r}; this twin knows {sorted(self.heads)}")
        if video.shape[1] <= self.offset:
            raise ValueError(f"need at least {self.offset + 1} frames, got {video.shape[1]}")
        core_input, behavior, pupil_center = self.core_input(recording, video, behavior, pupil_center)
        return self.core(core_input), behavior[:, self.offset:], pupil_center[:, self.offset:]

    def trial_features(self, recording: str, trial: Trial):
        """One whole trial (`data.Trial`: raw numpy, time first) as a batch of one on the twin's device
        → `features` of it: core features (1, C, T', H', W'), behavior and pupil_center (1, T', 2)."""
        device = next(self.parameters()).device
        inputs = [torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None].to(device)
                  for a in (trial.video, trial.behavior, trial.pupil_center)]
        return self.features(recording, *inputs)

    def core_input(self, recording: str, video: torch.Tensor, behavior: torch.Tensor, pupil_center: torch.Tensor):
        """Raw inputs as in `rates` → (core input (B, 1 + 2, T, H, W): normalised video and behaviour
        maps, normalised behavior (B, T, 2), normalised pupil_center (B, T, 2))."""
        head = self.heads[recording]
        video, behavior, pupil_center = head.normalize(video, behavior, pupil_center)
        if head.shift_input:
            video = head.retina(video, pupil_center)
        height, width = video.shape[-2:]
        behavior_maps = behavior.transpose(1, 2)[..., None, None].expand(-1, -1, -1, height, width)
        return torch.cat([video[:, None], behavior_maps], dim=1), behavior, pupil_center

    def forward(self, recording: str, video: torch.Tensor, behavior: torch.Tensor,
                pupil_center: torch.Tensor) -> torch.Tensor:
        """Raw inputs as in `rates` → predicted responses (B, T - offset, N) in the recording's raw units."""
        return self.rates(recording, video, behavior, pupil_center) * self.heads[recording].response_scale
