"""`twin experiment mei`: most exciting inputs by gradient ascent on the local PyTorch twin.

One short movie per chosen neuron (all optimised together as one batch), R + `extra` frames, starting
from grey plus a little seeded noise. Each step: the gradient of the neuron's mean predicted response
over the output frames, smoothed spatially with a Gaussian of `smooth_px`, an Adam step, then the
constraints — the movie's deviation from grey projected onto an L2 ball of radius `rms` · √(pixels),
and the pixels clipped to [0, 255]. Behaviour and pupil position are held at the recording's means.
Needs torch (the `train` extra) and a run folder, not a server: it lives with the trainer, and
`twin experiment mei` reaches it through the composition root.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from twinserve.contract import BEHAVIOR_CHANNELS, GREY, PIXEL_RANGE, PUPIL_CHANNELS


def _blur(gradient, sigma: float):
    """Spatial Gaussian blur of (B, T, H, W)."""
    import torch
    import torch.nn.functional as F

    if sigma <= 0:
        return gradient
    radius = int(3 * sigma)
    offsets = torch.arange(-radius, radius + 1, dtype=gradient.dtype, device=gradient.device)
    kernel = torch.exp(-offsets**2 / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    batch, frames, height, width = gradient.shape
    flat = gradient.reshape(batch * frames, 1, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return flat.reshape(batch, frames, height, width)


def run_mei(run: str | Path, recording: str, neurons: list[int], out: str | Path, steps: int = 200,
            extra: int = 10, rms: float = 40.0, smooth_px: float = 1.0, learning_rate: float = 2.0,
            seed: int = 0, progress: bool = True, device: str = "auto") -> dict:
    """Optimise one movie per neuron on `device` (auto, cpu, cuda[:i]) → summary; writes mei.npy
    (neurons, T, H, W), mei.json, mei.png."""
    import torch
    from tqdm import tqdm

    from .checkpoint import load_run
    from .distributed import resolve_device

    device = resolve_device(device)
    twin, _ = load_run(run)
    twin.to(device).eval().requires_grad_(False)
    if recording not in twin.heads:
        raise KeyError(f"unknown recording {recording!r}; this twin knows {sorted(twin.heads)}")
    head = twin.heads[recording]
    count = head.response_scale.shape[0]
    if not neurons or min(neurons) < 0 or max(neurons) >= count:
        raise ValueError(f"neurons must be indices in [0, {count}), got {neurons}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frames = twin.offset + 1 + extra
    generator = torch.Generator().manual_seed(seed)
    video = (GREY + 2.0 * torch.randn(len(neurons), frames, *twin.frame_shape, generator=generator)).to(device)
    video.requires_grad_(True)
    behavior = head.behavior_mean.expand(len(neurons), frames, BEHAVIOR_CHANNELS)
    pupil = head.pupil_mean.expand(len(neurons), frames, PUPIL_CHANNELS)
    index, rows = torch.tensor(neurons, device=device), torch.arange(len(neurons), device=device)
    budget = rms * np.sqrt(frames * int(np.prod(twin.frame_shape)))
    optimizer = torch.optim.Adam([video], lr=learning_rate)
    history = []
    for _ in tqdm(range(steps), disable=not progress, desc="MEI", unit="step"):
        responses = twin(recording, video, behavior, pupil)  # (B, T', N)
        drive = responses[rows, :, index].mean(1)  # (B,)
        optimizer.zero_grad()
        (-drive.sum()).backward()
        video.grad = _blur(video.grad, smooth_px)
        optimizer.step()
        with torch.no_grad():
            deviation = video - GREY
            norms = deviation.flatten(1).norm(dim=1).clamp(min=1e-6)
            video.copy_((GREY + deviation * (budget / norms).clamp(max=1.0)[:, None, None, None]).clamp(*PIXEL_RANGE))
        history.append(drive.detach().cpu().numpy().tolist())
    with torch.no_grad():
        final = twin(recording, video, behavior, pupil)[rows, :, index].mean(1).cpu().numpy()
        grey = twin(recording, torch.full_like(video, GREY), behavior, pupil)[rows, :, index].mean(1).cpu().numpy()
    meis = video.detach().cpu().numpy()
    np.save(out / "mei.npy", meis)
    summary = {"recording": recording, "neurons": neurons, "steps": steps, "frames": frames, "rms_budget": rms,
               "smooth_px": smooth_px, "seed": seed, "response": final.tolist(), "response_to_grey": grey.tolist(),
               "rms_contrast": (meis - GREY).reshape(len(neurons), -1).std(1).tolist()}
    (out / "mei.json").write_text(json.dumps({**summary, "history": history}, indent=1))
    plot_meis(meis, summary, np.array(history), out / "mei.png")
    return summary


def plot_meis(meis: np.ndarray, summary: dict, history: np.ndarray, path: Path) -> None:
    """The last frame of each MEI (the one the response is read at) and the ascent curves."""
    from .plots import plt

    shown = min(len(meis), 8)
    figure, axes = plt.subplots(1, shown + 1, figsize=(2.6 * (shown + 1), 2.4), constrained_layout=True)
    axes = np.atleast_1d(axes)
    for axis, mei, neuron in zip(axes, meis, summary["neurons"]):
        axis.imshow(mei[-1], cmap="gray", vmin=PIXEL_RANGE[0], vmax=PIXEL_RANGE[1])
        axis.set_title(f"neuron {neuron}", fontsize=8)
        axis.axis("off")
    axes[-1].plot(history)
    axes[-1].set(xlabel="step", ylabel="mean response")
    figure.savefig(path, dpi=110)
    plt.close(figure)
